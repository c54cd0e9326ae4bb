"""The generative meta-dataset harness: fine-tune every (task, configuration) pair of
gen_tasks.yaml x gen_grid.yaml for real (question answering on SQuAD article groups, causal-LM
fine-tuning on plain and instruction text) through the xsearch subprocess evaluator (Trainer +
XLogCallback in a forked worker, with time and memory limits), one run at a time, and export the
records to ``benchmarks/data/metadataset_generative.parquet`` after every run.

- Resumable: a pair with a finished record (completed / failed / oom / timeout) in the harness's
  store is skipped; an ``interrupted`` one is run again. A pair is (``task_name``, ``search_id`` =
  ``metadataset-gen-v1:<config id>-<config hash>``).
- Round-robin order (as run.py): every round gives every task one configuration, so a partial
  run already covers every task; after k rounds every task has k runs.
- Records go to the harness's own XLOG_HOME (default ``<cache>/gen_home``).

usage (from the repository root, in the background, lowest CPU priority):
    nohup nice -n 19 python benchmarks/metadataset/run_generative.py > ~/.cache/xlog-metadataset/generative.log 2>&1 &
options: --data-dir DIR (default ../shared/datasets) --cache DIR (default ~/.cache/xlog-metadataset)
    --memory-limit-gb 6 --timeout-s 900 --max-runs N --tasks a,b --configs g01,g02 --dry-run
    --sample-grid N (write gen_grid.yaml: N configurations drawn from gen_space.yaml, seed 0; once)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from models import DEFAULT_CACHE  # noqa: E402
from run import plan  # noqa: E402

log = logging.getLogger("metadataset-generative")
VERSION = "metadataset-gen-v1"
FINISHED = ("completed", "failed", "oom", "timeout")
TASKS_FILE, SPACE_FILE, GRID_FILE = HERE / "gen_tasks.yaml", HERE / "gen_space.yaml", HERE / "gen_grid.yaml"


def load_space(task_type: str | None = None) -> Any:
    from xsearch.space import SearchSpace
    doc = yaml.safe_load(SPACE_FILE.read_text(encoding="utf-8"))
    if task_type:
        doc["task_type"] = task_type
    return SearchSpace.from_dict(doc)


def load_tasks() -> list[dict[str, Any]]:
    doc = yaml.safe_load(TASKS_FILE.read_text(encoding="utf-8"))
    d = doc.get("defaults") or {}
    out = [{**d, **t} for t in doc["tasks"]]
    if len({t["name"] for t in out}) != len(out):
        raise ValueError(f"{TASKS_FILE}: duplicate task names")
    return out


def sample_grid(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` distinct configurations drawn at random from the space, every decision uniform except
    the fine-tuning method, which takes LoRA, partial and full in turn (a sample of 8 drawn
    uniformly can miss a method altogether)."""
    from xsearch.space import config_key
    space = load_space()
    methods = list(space.param("ft_method").values)
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        dist = space.uniform()
        dist["ft_method"] = {m: float(m == methods[len(out) % len(methods)]) for m in methods}
        cfg = space.sample(dist, rng)
        key = config_key(cfg)
        if key not in seen:
            seen.add(key)
            out.append({k: v for k, v in cfg.items() if v is not None})
    return out


def write_grid(n: int, seed: int = 0) -> None:
    lines = [f"# {n} configurations drawn at random (seed {seed}; methods in turn) from gen_space.yaml by",
             f"# `python benchmarks/metadataset/run_generative.py --sample-grid {n}`; every task runs each one.",
             "configs:"]
    for i, cfg in enumerate(sample_grid(n, seed), 1):  # YAML flow style: 3.0e-05 reads back as a float
        lines.append("  - " + yaml.safe_dump({"id": f"g{i:02d}", **cfg}, default_flow_style=True, sort_keys=False,
                                             width=10_000).strip())
    GRID_FILE.write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_grid(space: Any) -> list[dict[str, Any]]:
    from xsearch.space import config_key
    doc = yaml.safe_load(GRID_FILE.read_text(encoding="utf-8"))
    out = []
    for entry in doc["configs"]:
        entry = dict(entry)
        cid = entry.pop("id")
        cfg = {name: None for name in space.names}
        cfg.update(entry)
        problems = space.validate_config(cfg)
        if problems:
            raise ValueError(f"gen_grid.yaml {cid}: not a point of gen_space.yaml: {problems}")
        digest = hashlib.sha1(config_key(cfg).encode()).hexdigest()[:8]
        out.append({"id": cid, "search_id": f"{VERSION}:{cid}-{digest}", "config": cfg})
    return out


def source_frame(spec: dict[str, Any], data_dir: Path) -> pd.DataFrame:
    """The rows a task is drawn from, in the columns its kind reads (with a ``split`` column)."""
    df = pd.read_parquet(data_dir / spec["file"])
    if spec["kind"] == "question-answering":
        a, b = spec["rows"]
        df = df.iloc[a:b]
        return pd.DataFrame({"context": df["context"], "question": df["question"], "answer": df["answer_text"],
                             "split": "train"}).reset_index(drop=True)
    if spec.get("splits"):
        df = df[df["split"].isin(spec["splits"])]
    if spec.get("instruct"):
        return pd.DataFrame({"prompt": [spec["instruct"].format(text=t) for t in df["text"]],
                             "response": df["label"].astype(str), "split": "train"}).reset_index(drop=True)
    return pd.DataFrame({"text": df[spec["text"]], "split": "train"}).reset_index(drop=True)


def prepare_tasks(data_dir: Path, cache: Path, specs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``<cache>/gen_tasks/<name>/{train,eval}.parquet`` through the task kind's own loader (the
    split a search would make: validation = whole held-out contexts for QA), and a manifest."""
    from xsearch.tasks import get_task_kind
    manifest = {}
    for spec in specs:
        d = cache / "gen_tasks" / spec["name"]
        src = d / "source.parquet"
        if not (d / "train.parquet").is_file():
            d.mkdir(parents=True, exist_ok=True)
            source_frame(spec, data_dir).to_parquet(src, index=False)
            task = get_task_kind(spec["kind"]).load(src, seed=int(spec["seed"]), max_train=int(spec["max_train"]),
                                                    max_eval=int(spec["max_eval"]))
            task.save(d)
            src.unlink()
        train, ev = pd.read_parquet(d / "train.parquet"), pd.read_parquet(d / "eval.parquet")
        sha = hashlib.sha256((d / "train.parquet").read_bytes() + (d / "eval.parquet").read_bytes()).hexdigest()
        manifest[spec["name"]] = {"dir": str(d), "kind": spec["kind"], "file": spec["file"],
                                  "n_train": len(train), "n_eval": len(ev), "columns": list(train.columns),
                                  "data_sha256": sha}
    return manifest


def stand_in_defaults(task_dir: Path, kind: str) -> dict[str, Any]:
    """task_* and hw_* fields for the evaluator's stand-in record of a run killed before xlog wrote one."""
    import datasets
    from xlog.hardware import probe_hardware
    from xlog.taskfeatures import compute_task_features
    tr = datasets.Dataset.from_pandas(pd.read_parquet(task_dir / "train.parquet"))
    ev = datasets.Dataset.from_pandas(pd.read_parquet(task_dir / "eval.parquet"))
    out = dict(compute_task_features(tr, ev, None))
    out.update(probe_hardware("cpu"))
    out["task_type"] = kind
    return out


def done_pairs(store: Any) -> set[tuple[str, str]]:
    return {(r.get("task_name"), r["search_id"]) for r in store.records()
            if r.get("status") in FINISHED and str(r.get("search_id") or "").startswith(VERSION + ":")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the generative meta-dataset (real fine-tuning runs).")
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--home", type=Path, default=None, help="XLOG_HOME of the harness (default <cache>/gen_home)")
    ap.add_argument("--memory-limit-gb", type=float, default=6.0)
    ap.add_argument("--timeout-s", type=float, default=900.0)
    ap.add_argument("--max-runs", type=int, default=None)
    ap.add_argument("--tasks", default=None)
    ap.add_argument("--configs", default=None)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "data")
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--sample-grid", type=int, default=None, metavar="N")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if a.sample_grid:
        write_grid(a.sample_grid)
        print(GRID_FILE.read_text(encoding="utf-8"))
        return 0

    cache = a.cache.expanduser()
    home = (a.home or cache / "gen_home").expanduser()
    os.environ["XLOG_HOME"] = str(home)
    os.environ.setdefault("XLOG_CONTRIBUTOR", "xlog-metadataset")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("XLOG_ENERGY", None)  # energy is part of the record

    from xlog.store import LocalStore
    from xsearch.evaluator import SubprocessEvaluator

    specs = load_tasks()
    if a.tasks:
        wanted = set(a.tasks.split(","))
        if wanted - {s["name"] for s in specs}:
            ap.error(f"unknown tasks {sorted(wanted - {s['name'] for s in specs})}")
        specs = [s for s in specs if s["name"] in wanted]
    grid = load_grid(load_space())
    if a.configs:
        grid = [g for g in grid if g["id"] in set(a.configs.split(","))]
    manifest = prepare_tasks(a.data_dir, cache, specs)
    (cache / "gen_tasks" / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    store = LocalStore(home)
    done = done_pairs(store)
    todo = [(t, g) for t, g in plan([s["name"] for s in specs], grid) if (t, g["search_id"]) not in done]
    log.info("%d tasks x %d configs = %d pairs; %d done, %d to run; store %s", len(specs), len(grid),
             len(specs) * len(grid), len(specs) * len(grid) - len(todo), len(todo), home)
    if a.dry_run:
        for t, g in todo[: a.max_runs or len(todo)]:
            print(t, g["id"], g["search_id"])
        return 0

    def on_term(signum: int, frame: Any) -> None:  # the running candidate is recorded as interrupted
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    kind_of = {s["name"]: s["kind"] for s in specs}
    evaluators: dict[str, Any] = {}
    defaults: dict[str, dict[str, Any]] = {}
    n_run, n_broken, t_start = 0, 0, time.monotonic()
    try:
        for task, g in todo:
            if a.max_runs is not None and n_run >= a.max_runs:
                break
            kind, task_dir = kind_of[task], Path(manifest[task]["dir"])
            if kind not in evaluators:  # one fork server per kind (the space says the kind)
                evaluators[kind] = SubprocessEvaluator(task_dir, load_space(kind), store, VERSION, task_name=task,
                                                       memory_limit_gb=a.memory_limit_gb, energy=True, seed=0,
                                                       work_dir=cache / "gen_work" / kind)
            if task not in defaults:
                defaults[task] = stand_in_defaults(task_dir, kind)
            t0 = time.monotonic()
            try:
                out = evaluators[kind].evaluate(dict(g["config"]), a.timeout_s, task_dir=task_dir, task_name=task,
                                                search_id=g["search_id"], record_defaults=defaults[task])
            except RuntimeError as exc:  # the fork server died: a fresh one next time; the pair stays to do
                n_broken += 1
                log.warning("evaluator error on %s %s (%s); restarting the fork server", task, g["id"], exc)
                evaluators.pop(kind).close()
                if n_broken >= 3:
                    log.error("the evaluator failed 3 times in a row; stopping")
                    break
                continue
            n_broken = 0
            n_run += 1
            q = f"{out.quality:.4f}" if out.quality is not None else "-"
            log.info("run %d: %s %s %s %s -> %s quality=%s runtime=%.0fs wall=%.0fs record=%s", n_run, task, g["id"],
                     g["config"]["model_name"], g["config"]["ft_method"], out.status, q, out.runtime_s or 0.0,
                     time.monotonic() - t0, out.record_id)
            if not a.no_export:
                _export(home, a.out, cache)
    except KeyboardInterrupt:
        # Stopped (SIGTERM, Ctrl-C): export and leave at once. Closing the evaluators would wait for
        # the running candidate; a candidate whose harness is gone ends itself within a second and
        # is recorded as interrupted (xsearch.worker.watch_parent), so a resumed harness runs it again
        # (a SIGTERM sent to the candidate itself would be recorded as a timeout: never do that).
        log.info("stopped after %d runs in %.0f s", n_run, time.monotonic() - t_start)
        if not a.no_export:
            _export(home, a.out, cache)
        logging.shutdown()
        os._exit(130)
    for ev in evaluators.values():
        ev.close()
    if not a.no_export:
        _export(home, a.out, cache)
    log.info("%d runs in %.0f s", n_run, time.monotonic() - t_start)
    return 0


def _export(home: Path, out: Path, cache: Path) -> None:
    try:
        from export_generative import export
        export(home, out, cache)
    except Exception as exc:  # an export problem must never stop the runs
        log.warning("export failed: %s: %s", type(exc).__name__, exc)


if __name__ == "__main__":
    sys.exit(main())
