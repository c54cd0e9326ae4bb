"""The meta-dataset v2 harness: configurations sampled at random from ``space_v2.yaml`` per task
(seeded, ``v2.yaml``), each fine-tuned for real with a learning curve (``trainer_v2.py``), one
run at a time, in a process forked from this one (torch is imported once), under a memory limit,
a CPU-time limit (``timeout`` means "needed more than N CPU seconds", whatever the load) and a
generous wall-clock limit.

- Resumable: a (task, search_id) pair with a finished record (completed / failed / oom / timeout)
  in the harness's store is skipped; an ``interrupted`` one is run again. ``search_id`` =
  ``metadataset-v2:<config hash>`` (repeat runs: ``metadataset-v2:rep<k>-<hash>#<i>``).
- Round robin in chunks (``v2.yaml`` ``chunk``): each round gives every task (in ``order``) its
  next ``chunk`` (4) sampled configurations, up to ``runs_per_task``, so that a partial meta-dataset has many
  tasks with equal pools for leave-one-task-out evaluation.
- Beside each record, ``<cache>/v2/curves/<record_id>.json`` holds the learning curve, the
  training CPU time (user + system, all threads), the process's CPU time (``wait4``) and the load
  average; ``export.py --version 2`` merges them into the exported records.

usage: see ``python benchmarks/metadataset/run.py --version 2 --help`` and docs/metadataset.md.
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
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from models import DEFAULT_CACHE, model_specs  # noqa: E402
from tasks import TaskSpec, load_specs, prepare_tasks  # noqa: E402

log = logging.getLogger("metadataset.v2")
VERSION = "metadataset-v2"
FINISHED = ("completed", "failed", "oom", "timeout")
SETTINGS_FILE = HERE / "v2.yaml"
SPACE_FILE = HERE / "space_v2.yaml"


def load_settings(path: Path = SETTINGS_FILE) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def load_space(cache: Path = DEFAULT_CACHE) -> Any:
    """space_v2.yaml with the model paths of this cache."""
    from xsearch.space import SearchSpace
    doc = yaml.safe_load(SPACE_FILE.read_text(encoding="utf-8"))
    local = model_specs(cache)
    doc["models"] = {name: local.get(name, spec) for name, spec in doc["models"].items()}
    return SearchSpace.from_dict(doc)


def config_hash(cfg: dict[str, Any]) -> str:
    from xsearch.space import config_key
    return hashlib.sha1(config_key(cfg).encode()).hexdigest()[:8]


def full_config(space: Any, partial: dict[str, Any]) -> dict[str, Any]:
    """A point of the space from the decisions given (inactive ones None); ValueError if not one."""
    cfg = {name: None for name in space.names}
    cfg.update(partial)
    for p in space.parameters:
        if not p.active(cfg):
            cfg[p.name] = None
        elif isinstance(cfg[p.name], float):
            cfg[p.name] = p.snap(cfg[p.name])
    problems = space.validate_config(cfg)
    if problems:
        raise ValueError(f"not a point of space_v2.yaml: {problems}")
    return cfg


def task_specs(settings: dict[str, Any]) -> list[TaskSpec]:
    """tasks.yaml's tasks with v2's subsample sizes, in v2's fill order."""
    t = settings["tasks"]
    specs = [replace(s, max_train=int(t["max_train"]), max_eval=int(t["max_eval"])) for s in load_specs()]
    order = list(t.get("order") or [])
    unknown = set(order) - {s.name for s in specs}
    if unknown:
        raise ValueError(f"v2.yaml: unknown tasks in order: {sorted(unknown)}")
    rank = {name: i for i, name in enumerate(order)}
    return sorted(specs, key=lambda s: rank.get(s.name, len(order)))


def sample_configs(space: Any, settings: dict[str, Any], task: str, n: int) -> list[dict[str, Any]]:
    """``n`` distinct configurations for ``task``, drawn from the space with v2.yaml's weights by a
    generator seeded with (seed, task): the same list on every machine, a different one per task."""
    from xsearch.space import config_key
    weights = settings.get("weights") or {}
    dist = space.normalise({name: {_typed(space, name, v): w for v, w in (weights.get(name) or {}).items()}
                            for name in space.names})
    rng = random.Random(f"{settings['seed']}:{task}")
    out, seen = [], set()
    for _ in range(100 * n):
        if len(out) == n:
            break
        cfg = space.sample(dist, rng)
        key = config_key(cfg)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def _typed(space: Any, name: str, value: Any) -> Any:
    # YAML keys of weights are strings or numbers; match them to the space's own values.
    for v in space.param(name).values:
        if v == value or str(v) == str(value):
            return v
    raise ValueError(f"v2.yaml weights: {name}={value!r} is not a value of the space")


def plan(space: Any, settings: dict[str, Any], tasks: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(task, search_id, config) in run order: rounds over the tasks in order, each round giving
    every task its next ``chunk`` sampled configurations, so that after r rounds every task has
    r x chunk runs (a partial meta-dataset has many tasks with equal pools); the repeat runs are
    spread over the first runs, one after every ``repeats.every`` sampled runs, so that the
    repeats of one configuration are minutes apart (the noise they measure includes the load)."""
    n = int(settings["runs_per_task"])
    chunk = int(settings.get("chunk") or n)
    per_task = {t: [(t, f"{VERSION}:{config_hash(c)}", c) for c in sample_configs(space, settings, t, n)] for t in tasks}
    sampled = [run for start in range(0, n, chunk) for t in tasks for run in per_task[t][start:start + chunk]]
    rep = settings.get("repeats") or {}
    extra = []
    if rep.get("task") in tasks:
        for i in range(1, int(rep.get("times", 3)) + 1):
            for k, partial in enumerate(rep.get("configs") or [], start=1):
                cfg = full_config(space, partial)
                extra.append((rep["task"], f"{VERSION}:rep{k}-{config_hash(cfg)}#{i}", cfg))
    every = max(1, int(rep.get("every", 5)))
    out = []
    for j, run in enumerate(sampled):
        if j % every == 0 and extra:
            out.append(extra.pop(0))
        out.append(run)
    return out + extra


def done_pairs(store: Any) -> set[tuple[str, str]]:
    return {(r.get("task_name"), r.get("search_id")) for r in store.records()
            if r.get("status") in FINISHED and str(r.get("search_id") or "").startswith(VERSION + ":")}


class Harness:
    """Forks one process per run and supervises it (time limit, stop on SIGTERM, stand-in record)."""

    def __init__(self, store: Any, space: Any, settings: dict[str, Any], cache: Path, timeout_s: float,
                 memory_limit_gb: float, cpu_limit_s: float | None = None):
        self.store, self.space, self.settings = store, space, settings
        self.timeout_s, self.memory_limit_gb, self.cpu_limit_s = timeout_s, memory_limit_gb, cpu_limit_s
        self.work = cache / "v2" / "work"
        self.curves = cache / "v2" / "curves"
        self.work.mkdir(parents=True, exist_ok=True)
        self.curves.mkdir(parents=True, exist_ok=True)
        self.child: int | None = None
        self.stopping = False
        self._defaults: dict[str, dict[str, Any]] = {}

    def stop(self) -> None:
        self.stopping = True
        if self.child is not None:
            try:
                os.kill(self.child, signal.SIGUSR1)  # recorded as interrupted (run again next time)
            except ProcessLookupError:
                pass

    def run_one(self, task: str, task_dir: Path, search_id: str, cfg: dict[str, Any], n: int) -> dict[str, Any]:
        """Run one configuration; returns its record (written to the store in every case)."""
        import trainer_v2  # heavy imports, once, before the first fork
        from xlog import schema as S
        from xsearch.evaluator import died_record, find_record
        record_id = S.new_record_id()
        cand = self.work / f"run-{n:05d}-{os.getpid()}"  # several harnesses (disjoint --tasks) may share a cache
        cand.mkdir(parents=True, exist_ok=True)
        curve_path = self.curves / f"{record_id}.json"
        job = {"config": cfg, "search_id": search_id, "task_name": task, "record_id": record_id,
               "model_spec": self.space.model_spec(cfg["model_name"]), "seed": 0, "energy": True,
               "memory_limit_bytes": int(self.memory_limit_gb * 2**30), "data_dir": str(task_dir),
               "store": str(self.store.root), "output_dir": str(cand / "trainer"), "curve_path": str(curve_path),
               "evals_per_epoch": int(self.settings.get("evals_per_epoch", 4)), "cpu_limit_s": self.cpu_limit_s,
               "torch_threads": self.settings.get("torch_threads")}
        job_path, log_path = cand / "job.json", cand / "worker.log"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        started = datetime.now(timezone.utc)
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the run
            code = 1
            try:
                code = trainer_v2.child_main(job_path, log_path)
            finally:
                os._exit(code)
        self.child = pid
        timed_out, killed_at = False, None
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            elapsed = time.monotonic() - t0
            if not timed_out and elapsed > self.timeout_s:
                timed_out, killed_at = True, elapsed
                os.kill(pid, signal.SIGTERM)
            elif timed_out and elapsed > killed_at + 15:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.child = None
        wall = time.monotonic() - t0
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        rec = find_record(self.store, record_id)
        if rec is None and self.stopping:
            # Stopped by the harness before xlog could record it: not experience of the
            # configuration (the pair is run again next time), so no stand-in record.
            self.store.discard_provisional(record_id)
            return {"record_id": record_id, "status": "interrupted", "outcome_total_runtime_s": wall}
        if rec is None:  # died before xlog could write: a stand-in record, so nothing is lost
            self.store.discard_provisional(record_id)
            if self.cpu_limit_s and usage.ru_utime + usage.ru_stime >= self.cpu_limit_s:
                timed_out = True  # killed by the kernel at the CPU-time limit
            rec = died_record(record_id, cfg, timed_out, code, log_path, started, wall, self.timeout_s, search_id,
                              {**self.stand_in_defaults(task, task_dir), "task_name": task}, True)
            self.store.write(rec)
        side = json.loads(curve_path.read_text(encoding="utf-8")) if curve_path.is_file() else {"record_id": record_id}
        side.update(process_cpu_time_s=round(usage.ru_utime + usage.ru_stime, 3), process_wall_s=round(wall, 3),
                    exit_code=code, task_name=task, search_id=search_id,
                    torch_threads=self.settings.get("torch_threads") or os.cpu_count())
        trainer_v2.write_json_atomic(curve_path, side)
        return rec

    def stand_in_defaults(self, task: str, task_dir: Path) -> dict[str, Any]:
        if task not in self._defaults:
            from run import stand_in_defaults
            self._defaults[task] = stand_in_defaults(task_dir)
        return self._defaults[task]


def _merge_manifest(path: Path, tasks: dict[str, Any]) -> None:
    """Add this harness's tasks to the manifest the export reads: harnesses on other halves of the
    tasks (``--tasks``) keep theirs (written whole, it held only the last harness's tasks)."""
    merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    merged.update(tasks)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(merged, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the xlog meta-dataset v2 (sampled configurations, learning curves).")
    ap.add_argument("--version", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--home", type=Path, default=None, help="XLOG_HOME of the harness (default <cache>/home-v2)")
    ap.add_argument("--memory-limit-gb", type=float, default=None, help="default: v2.yaml")
    ap.add_argument("--timeout-s", type=float, default=None, help="wall-clock limit per run (default: v2.yaml)")
    ap.add_argument("--cpu-limit-s", type=float, default=None, help="CPU-time limit per run (default: v2.yaml; 0: none)")
    ap.add_argument("--max-runs", type=int, default=None)
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: all, in v2.yaml's order)")
    ap.add_argument("--export-every", type=int, default=10, help="export to benchmarks/data every N runs (0: never)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "data")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    cache = a.cache.expanduser()
    home = (a.home or cache / "home-v2").expanduser()
    os.environ["XLOG_HOME"] = str(home)
    os.environ.setdefault("XLOG_CONTRIBUTOR", "xlog-metadataset")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.pop("XLOG_ENERGY", None)

    from xlog.store import LocalStore
    specs = task_specs(settings)
    if a.tasks:
        wanted = a.tasks.split(",")
        unknown = set(wanted) - {s.name for s in specs}
        if unknown:
            ap.error(f"unknown tasks {sorted(unknown)}")
        specs = [s for s in specs if s.name in wanted]
    space = load_space(cache)
    store = LocalStore(home)
    done = done_pairs(store)
    todo = [p for p in plan(space, settings, [s.name for s in specs]) if (p[0], p[1]) not in done]
    log.info("%d tasks, %d runs planned, %d done, %d to run; store %s", len(specs),
             len(plan(space, settings, [s.name for s in specs])), len(done), len(todo), home)
    if a.dry_run:
        for task, sid, cfg in todo[: a.max_runs or len(todo)]:
            print(task, sid, cfg["model_name"], cfg["ft_method"], cfg["train_learning_rate"], cfg["train_epochs"],
                  cfg["train_batch_size"], cfg["train_max_seq_length"])
        return 0
    manifest = prepare_tasks(a.data_dir, cache / "v2", specs)
    _merge_manifest(cache / "v2" / "tasks" / "manifest.json", manifest)
    if not todo:
        return 0
    from models import prepare_all
    prepare_all(cache, sorted({c["model_name"] for _, _, c in todo if not c["model_name"].startswith("tiny:")}))
    cpu_limit = a.cpu_limit_s if a.cpu_limit_s is not None else settings.get("cpu_limit_s")
    harness = Harness(store, space, settings, cache, a.timeout_s or float(settings["timeout_s"]),
                      a.memory_limit_gb or float(settings["memory_limit_gb"]),
                      float(cpu_limit) if cpu_limit else None)
    signal.signal(signal.SIGTERM, lambda signum, frame: harness.stop())
    n_run, t_start = 0, time.monotonic()
    try:
        for task, sid, cfg in todo:
            if harness.stopping or (a.max_runs is not None and n_run >= a.max_runs):
                break
            t0 = time.monotonic()
            rec = harness.run_one(task, Path(manifest[task]["dir"]), sid, cfg, len(done) + n_run + 1)
            n_run += 1
            q = rec.get("outcome_primary_value")
            log.info("run %d: %s %s %s %s lr=%.2g ep=%s bs=%s -> %s f1=%s runtime=%.0fs wall=%.0fs", n_run, task, sid,
                     cfg["model_name"], cfg["ft_method"], cfg["train_learning_rate"], cfg["train_epochs"],
                     cfg["train_batch_size"], rec.get("status"), f"{q:.3f}" if q is not None else "-",
                     rec.get("outcome_total_runtime_s") or 0.0, time.monotonic() - t0)
            if a.export_every and n_run % a.export_every == 0:
                _export(home, a.out, cache)
    except KeyboardInterrupt:
        harness.stop()
    finally:
        if a.export_every and n_run:
            _export(home, a.out, cache)
    log.info("%d runs in %.0f s%s", n_run, time.monotonic() - t_start, " (stopped)" if harness.stopping else "")
    return 0


def _export(home: Path, out: Path, cache: Path) -> None:
    try:
        from export import export_v2
        export_v2(home, out, cache)
    except Exception as exc:  # an export problem must never stop the runs
        log.warning("export failed: %s: %s", type(exc).__name__, exc)


if __name__ == "__main__":
    sys.exit(main())
