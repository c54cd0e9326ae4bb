"""Parallel evaluations: the same fixed list of candidates with 1 and 2 local workers, on a local
Ray cluster with 2 CPUs and (optionally) through the slurm executor on submitit's local executor.

Every contestant runs the runner's own pieces (``xsearch.executors.make_executor`` +
``xsearch.search.EvolutionarySearch(candidates=...)`` + ``xsearch.runner.ParallelLoop`` with a
budget far larger than needed and ``max_evals = len(candidates)``), so each one evaluates exactly
the same candidates (real Trainer fine-tunings of tiny BERT models built from a config, on a
stratified sample of the shipped SMS-spam data), each into a store of its own.

What is reported per contestant:
- start-up s: building the executor until it can take a candidate (local: the fork server's
  torch import; ray: ``ray.init`` of a local cluster + ``ray.put`` of the task data; slurm:
  submitit's set-up);
- search wall s: ``ParallelLoop.run`` from the first ask to the last outcome (what the wall budget
  is charged in a search), and total wall s = start-up + search + close;
- records: records of the search in the store, distinct record ids, and candidates covered (each
  must be exactly once), with their statuses;
- peak overlap: the most candidates whose logged training intervals (created_at..ended_at of the
  records) overlap;
- compute s: the sum of the candidates' own wall times as the executor saw them
  (``SearchResult.compute_s``), and logged s: the sum of ``outcome_total_runtime_s`` (the Trainer's
  training + evaluation as the records log it);
- speed-up: search wall of ``local x1`` / search wall of the contestant (and the same on totals);
- overhead/cand s: ``(search wall x workers - logged s) / candidates``, the slot-seconds each
  candidate costs beyond its logged training + evaluation (process start, imports, model building,
  tokenisation, record transfer, idle slots at the end of the list). Ray's (or SLURM's) per-task
  overhead is its overhead/cand minus that of ``local x<same workers>``; its start-up is
  reported on its own.

All candidates run with one torch thread (OMP_NUM_THREADS=1, as Ray gives a 1-CPU task), so that
the work per candidate is the same for every contestant and N workers use N cores.

usage: python benchmarks/parallel.py [--workers 2] [--no-slurm] [--out benchmarks/results/parallel.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

DATA = REPO / "examples" / "data" / "sms_spam_600.parquet"
SPACE = REPO / "tests" / "data" / "tiny_space.yaml"


def candidates() -> list[dict[str, Any]]:
    """The fixed list: 2 tiny models x (full, LoRA, partial, a second full at another learning
    rate/batch size), 40 epochs each (a few seconds of training on a CPU); every value is one of
    tests/data/tiny_space.yaml."""
    out = []
    for model in ("tiny:bert-2x32", "tiny:bert-1x16"):
        base = dict(model_name=model, ft_method="full", peft_lora_r=None, peft_lora_alpha=None,
                    ft_trainable_layers=None, train_learning_rate=1e-3, train_epochs=40, train_batch_size=16,
                    train_max_seq_length=64)
        out += [dict(base),
                dict(base, ft_method="lora", peft_lora_r=4, peft_lora_alpha=8, train_learning_rate=3e-3),
                dict(base, ft_method="partial", ft_trainable_layers=1),
                dict(base, train_learning_rate=3e-3, train_batch_size=32)]
    return out


def peak_overlap(records: list[dict]) -> int:
    events = []
    for r in records:
        if r.get("created_at") is not None and r.get("ended_at") is not None:
            events += [(r["created_at"], 1), (r["ended_at"], -1)]
    peak = cur = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):
        cur += d
        peak = max(peak, cur)
    return peak


def run_contestant(name: str, executor: str, workers: int, task: Any, task_dir: Path, space: Any,
                   cands: list[dict], root: Path) -> dict[str, Any]:
    from xlog.store import LocalStore
    from xsearch.executors import ExecutorSettings, make_executor
    from xsearch.runner import ParallelLoop
    from xsearch.search import EvolutionarySearch, SearchSettings
    from xsearch.space import config_key

    work = root / name.replace(" ", "-")
    store = LocalStore(work / "store")
    search_id = f"bench-parallel-{name.replace(' ', '-')}"
    settings = ExecutorSettings(workers=workers, cpus_per_candidate=1.0,
                                slurm_cluster="local" if executor == "slurm" else None,
                                slurm_folder=str(work / "submitit") if executor == "slurm" else None)
    defaults = {"task_type": "text-classification", "task_n_train": len(task.train), "task_n_eval": len(task.eval)}
    print(f"[{name}] starting ...", flush=True)
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    ex = make_executor(executor, settings, task_dir=task_dir, space=space, store=store, search_id=search_id,
                       task_name=task.name, seed=0, energy=False, work_dir=work / "runs", record_defaults=defaults)
    getattr(ex, "warm_up", lambda: None)()
    startup = time.monotonic() - t0
    # No early stopping: which run is stopped depends on the incumbent when it is asked, i.e. on the
    # order runs finish, which the engines change; every engine must train the same work.
    ss = SearchSettings(budget_s=3600.0, max_evals=len(cands), population=4, seed=0, max_candidate_s=600.0,
                        early_stop=False)
    search = EvolutionarySearch(space, ss, candidates=cands)
    per_gpu = 1.0 if any(g for g in getattr(ex, "gpus", []) if g) else 0.0
    loop = ParallelLoop(search, ex, ss, search_id, gpus_per_candidate=per_gpu, poll_s=0.1)
    t1 = time.monotonic()
    try:
        res = loop.run()
        search_wall = time.monotonic() - t1
    finally:
        t2 = time.monotonic()
        ex.close()
        close_s = time.monotonic() - t2
    recs = [r for r in store.records() if r.get("search_id") == search_id]
    ids = {r["record_id"] for r in recs}
    keys = [config_key(space.config_from_record(r) or {}) for r in recs]
    wanted = {config_key(c) for c in cands}
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in recs:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        if r.get("error_type"):
            errors[r["error_type"]] = errors.get(r["error_type"], 0) + 1
    logged = sum(float(r.get("outcome_total_runtime_s") or 0.0) for r in recs)
    row = {
        "contestant": name, "executor": executor, "workers": workers, "candidates": len(cands),
        "startup_s": startup, "search_wall_s": search_wall, "close_s": close_s,
        "total_wall_s": startup + search_wall + close_s,
        "records": len(recs), "distinct_record_ids": len(ids), "record_files": len(store.files()),
        "candidates_covered": len(set(keys) & wanted), "each_once": len(recs) == len(ids) == len(set(keys)) == len(cands)
        and set(keys) == wanted, "statuses": statuses, "error_types": errors, "stop_reason": res.stop_reason,
        "peak_overlap": peak_overlap(recs), "compute_s": res.compute_s, "logged_s": logged,
        "overhead_per_candidate_s": (search_wall * workers - logged) / len(cands),
        "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0],
        "mean_quality": (sum(o.quality for o in res.outcomes if o.quality is not None)
                         / max(1, sum(1 for o in res.outcomes if o.quality is not None))),
    }
    print(f"[{name}] {search_wall:.1f} s for {len(recs)} records ({statuses}); start-up {startup:.1f} s; "
          f"1-min load average {row['load_1min_before']:.1f} -> {row['load_1min_after']:.1f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2, help="workers of the parallel contestants (default 2)")
    ap.add_argument("--max-train", type=int, default=150)
    ap.add_argument("--max-eval", type=int, default=80)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-slurm", action="store_true", help="skip the slurm executor on submitit's local executor")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "parallel.json")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # before torch is imported anywhere: one thread per candidate
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging
    logging.basicConfig(level=logging.WARNING)

    from xsearch.data import load_task
    from xsearch.space import SearchSpace
    cands = candidates()
    space = SearchSpace.load(SPACE)
    cores = os.cpu_count() or 1
    contestants = [("local x1", "local", 1), (f"local x{a.workers}", "local", a.workers)]
    if not a.no_ray:
        contestants.append((f"ray x{a.workers}", "ray", a.workers))
    if not a.no_slurm:
        contestants.append((f"slurm(local) x{a.workers}", "slurm", a.workers))
    rows = []
    with tempfile.TemporaryDirectory(prefix="xsearch-bench-parallel-") as tmp:
        root = Path(tmp)
        task = load_task(DATA, max_train=a.max_train, max_eval=a.max_eval, seed=0)
        task.save(root / "task")
        for name, executor, workers in contestants:
            rows.append(run_contestant(name, executor, workers, task, root / "task", space, cands, root))
    base = rows[0]
    by_workers = {r["workers"]: r for r in rows if r["executor"] == "local"}
    for r in rows:
        r["speedup_search"] = base["search_wall_s"] / r["search_wall_s"]
        r["speedup_total"] = base["total_wall_s"] / r["total_wall_s"]
        local = by_workers.get(r["workers"])
        r["extra_overhead_per_candidate_s"] = (r["overhead_per_candidate_s"] - local["overhead_per_candidate_s"]
                                               if local is not None and r["executor"] != "local" else None)

    hdr = ("contestant", "start-up s", "search s", "total s", "records", "completed", "each once", "peak overlap",
           "compute s", "logged s", "speed-up", "speed-up tot", "overhead/cand s", "vs local s", "load")
    lines = [" | ".join(hdr), " | ".join("---" for _ in hdr)]
    for r in rows:
        extra = r["extra_overhead_per_candidate_s"]
        lines.append(" | ".join([
            r["contestant"], f"{r['startup_s']:.1f}", f"{r['search_wall_s']:.1f}", f"{r['total_wall_s']:.1f}",
            f"{r['records']}/{r['candidates']}", str(r["statuses"].get("completed", 0)),
            "yes" if r["each_once"] else "NO", str(r["peak_overlap"]),
            f"{r['compute_s']:.1f}", f"{r['logged_s']:.1f}", f"{r['speedup_search']:.2f}x",
            f"{r['speedup_total']:.2f}x", f"{r['overhead_per_candidate_s']:.1f}",
            "-" if extra is None else f"{extra:+.1f}", f"{r['load_1min_before']:.1f}-{r['load_1min_after']:.1f}"]))
    note = (f"{len(cands)} candidates (tiny BERT models, 40 epochs, {len(task.train)} train / "
            f"{len(task.eval)} validation rows of sms_spam_600), one torch thread each; this machine has "
            f"{cores} CPU core(s): {min(a.workers, cores)} workers on {cores} cores is the ceiling of the speed-up. "
            "The CPU is shared with other work, so the times are indicative.")
    print()
    print("\n".join(lines))
    print()
    print(note)
    print("speed-up = search wall of local x1 / search wall; speed-up tot = the same with start-up and close; "
          "overhead/cand = (search wall x workers - logged training+evaluation s) / candidates; "
          "vs local = overhead/cand minus that of local with the same workers (the engine's per-task overhead: "
          "a Ray task or submitit job starts a fresh Python that imports torch for its candidate, where local "
          "workers fork a server that imported it once); load = 1-min load average before-after.")
    for r in rows:
        if r["error_types"]:
            lost = " (ExecutorError: the engine lost the candidate, e.g. its worker process was killed; it is " \
                "still recorded once)" if "ExecutorError" in r["error_types"] else ""
            print(f"{r['contestant']}: records with errors {r['error_types']}{lost}")
    import torch
    doc = {
        "benchmark": "parallel", "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_cores": cores, "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "gpus": torch.cuda.device_count(), "shared_cpu": True},
        "settings": {"workers": a.workers, "n_train": len(task.train), "n_eval": len(task.eval),
                     "threads_per_candidate": 1, "energy": False},
        "candidates": cands, "note": note, "rows": rows, "table": lines,
    }
    try:
        import ray
        doc["machine"]["ray"] = ray.__version__
    except ImportError:
        pass
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
