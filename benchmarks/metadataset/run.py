"""The meta-dataset harness: fine-tune every (task, configuration) pair of tasks.yaml x grid.yaml
for real, through the xsearch subprocess evaluator (Trainer + XLogCallback in a forked worker,
with a time limit and a memory limit), one run at a time, and keep every record.

- Resumable: a pair that already has a finished record (completed / failed / oom / timeout) in
  the harness's store is not run again; an ``interrupted`` one is. The pair is identified by the
  record's ``task_name`` and its ``search_id`` = ``metadataset-v1:<config id>-<config hash>``.
- Ordered so that partial results are useful: round r gives task number t the configuration
  number (r + s*t) mod N (a Latin square; s coprime to N), so every round covers every task with a spread of
  configurations, and after k rounds every task has k runs.
- Records go to the harness's own XLOG_HOME (default ``<cache>/home``); ``export.py`` writes them
  to ``benchmarks/data/``. Energy is metered (codecarbon) like any run.

``--version 2`` runs the v2 harness instead (run_v2.py: configurations sampled per task, learning
curves); without it, this v1 harness, unchanged.

usage (from the repository root, in the background, lowest CPU priority):
    nohup nice -n 19 python benchmarks/metadataset/run.py > ~/.cache/xlog-metadataset/harness.log 2>&1 &
options: --data-dir DIR (default ../shared/datasets) --cache DIR (default ~/.cache/xlog-metadataset)
    --memory-limit-gb 6 --timeout-s 1500 --max-runs N --tasks a,b --configs c01,c02 --export-every 10
    --dry-run (print the plan and exit)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from models import DEFAULT_CACHE, prepare_all  # noqa: E402
from tasks import load_specs, prepare_tasks  # noqa: E402

log = logging.getLogger("metadataset")
VERSION = "metadataset-v1"
FINISHED = ("completed", "failed", "oom", "timeout")


def load_space(cache: Path) -> Any:
    """space.yaml with the model paths of this cache."""
    from xsearch.space import SearchSpace
    from models import model_specs
    doc = yaml.safe_load((HERE / "space.yaml").read_text(encoding="utf-8"))
    doc["models"] = model_specs(cache)
    return SearchSpace.from_dict(doc)


def load_grid(space: Any) -> list[dict[str, Any]]:
    """The fixed configurations, each a full point of the space, with ``id`` and ``search_id``."""
    from xsearch.space import config_key
    doc = yaml.safe_load((HERE / "grid.yaml").read_text(encoding="utf-8"))
    defaults = doc.get("defaults") or {}
    out = []
    for entry in doc["configs"]:
        entry = dict(entry)
        cid = entry.pop("id")
        entry.pop("why", None)
        entry.pop("expect", None)
        cfg = {name: None for name in space.names}
        cfg.update({k: v for k, v in defaults.items()})
        cfg.update(entry)
        for p in space.parameters:  # inactive decisions are None, whatever the defaults say
            if not p.active(cfg):
                cfg[p.name] = None
        problems = space.validate_config(cfg)
        if problems:
            raise ValueError(f"grid.yaml {cid}: not a point of space.yaml: {problems}")
        digest = hashlib.sha1(config_key(cfg).encode()).hexdigest()[:8]
        out.append({"id": cid, "search_id": f"{VERSION}:{cid}-{digest}", "config": cfg})
    if len({g["id"] for g in out}) != len(out):
        raise ValueError("grid.yaml: duplicate ids")
    return out


def plan(task_names: list[str], grid: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """All (task, config) pairs in Latin-square round-robin order: round r gives task t the config
    (r + stride * t) mod N, with a stride coprime to N that spreads one round over the whole grid
    (every model and method appears in the first rounds)."""
    import math
    n = len(grid)
    stride = max(1, round(n / 6))
    while math.gcd(stride, n) != 1:
        stride += 1
    order = []
    for r in range(n):
        for t, task in enumerate(task_names):
            order.append((task, grid[(r + stride * t) % n]))
    return order


def done_pairs(store: Any) -> set[tuple[str, str]]:
    done = set()
    for rec in store.records():
        if rec.get("status") in FINISHED and str(rec.get("search_id") or "").startswith(VERSION + ":"):
            done.add((rec.get("task_name"), rec["search_id"]))
    return done


def stand_in_defaults(task_dir: Path) -> dict[str, Any]:
    """task_* and hw_* fields for the evaluator's stand-in record of a run killed before xlog wrote
    one (computed here, once per task, with the same functions the callback uses)."""
    import datasets
    import pandas as pd
    from xlog.hardware import probe_hardware
    from xlog.taskfeatures import compute_task_features
    tr = datasets.Dataset.from_pandas(pd.read_parquet(task_dir / "train.parquet"))
    ev = datasets.Dataset.from_pandas(pd.read_parquet(task_dir / "eval.parquet"))
    out = dict(compute_task_features(tr, ev, None, "text", "label"))
    out.update(probe_hardware("cpu"))
    out["task_type"] = "text-classification"
    return out


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args or any(x.startswith("--version=") for x in args):
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--version", type=int, choices=(1, 2), default=1)
        known, rest = pre.parse_known_args(args)
        if known.version == 2:  # v2: sampled configurations with learning curves (run_v2.py)
            from run_v2 import main as main_v2
            return main_v2(rest)
        argv = rest
    ap = argparse.ArgumentParser(description="Build the xlog meta-dataset (real fine-tuning runs; "
                                             "--version 2 for v2, see run_v2.py).")
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--home", type=Path, default=None, help="XLOG_HOME of the harness (default <cache>/home)")
    ap.add_argument("--memory-limit-gb", type=float, default=6.0)
    ap.add_argument("--timeout-s", type=float, default=1500.0)
    ap.add_argument("--max-runs", type=int, default=None)
    ap.add_argument("--tasks", default=None, help="comma-separated task names (default: all of tasks.yaml)")
    ap.add_argument("--configs", default=None, help="comma-separated config ids (default: all of grid.yaml)")
    ap.add_argument("--export-every", type=int, default=10, help="export to benchmarks/data every N runs (0: never)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "data")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cache = a.cache.expanduser()
    home = (a.home or cache / "home").expanduser()
    os.environ["XLOG_HOME"] = str(home)
    os.environ.setdefault("XLOG_CONTRIBUTOR", "xlog-metadataset")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("XLOG_ENERGY", None)  # energy is part of the record: never switched off here

    from xlog.store import LocalStore
    from xsearch.evaluator import SubprocessEvaluator

    specs = load_specs()
    if a.tasks:
        wanted = set(a.tasks.split(","))
        unknown = wanted - {s.name for s in specs}
        if unknown:
            ap.error(f"unknown tasks {sorted(unknown)}")
        specs = [s for s in specs if s.name in wanted]
    space = load_space(cache)
    grid = load_grid(space)
    if a.configs:
        ids = set(a.configs.split(","))
        grid = [g for g in grid if g["id"] in ids]
    manifest = prepare_tasks(a.data_dir, cache, specs)
    (cache / "tasks" / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    store = LocalStore(home)
    done = done_pairs(store)
    todo = [(t, g) for t, g in plan([s.name for s in specs], grid) if (t, g["search_id"]) not in done]
    log.info("%d tasks x %d configs = %d pairs; %d done, %d to run; store %s", len(specs), len(grid),
             len(specs) * len(grid), len(specs) * len(grid) - len(todo), len(todo), home)
    if a.dry_run:
        for t, g in todo[: a.max_runs or len(todo)]:
            print(t, g["id"], g["search_id"])
        return 0
    if not todo:
        return 0
    prepare_all(cache, sorted({g["config"]["model_name"] for _, g in todo}))

    stop = {"now": False}

    def on_term(signum: int, frame: Any) -> None:  # finish cleanly: the running candidate is interrupted
        stop["now"] = True
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    first = specs[0].name
    evaluator = SubprocessEvaluator(Path(manifest[first]["dir"]), space, store, VERSION, task_name=first,
                                    memory_limit_gb=a.memory_limit_gb, energy=True, seed=0,
                                    work_dir=cache / "work")
    defaults_cache: dict[str, dict[str, Any]] = {}
    n_run, n_broken, t_start = 0, 0, time.monotonic()
    try:
        for task, g in todo:
            if a.max_runs is not None and n_run >= a.max_runs:
                break
            task_dir = Path(manifest[task]["dir"])
            if task not in defaults_cache:
                defaults_cache[task] = stand_in_defaults(task_dir)
            t0 = time.monotonic()
            try:  # one fork server serves every task: task and search are per call
                out = evaluator.evaluate(dict(g["config"]), a.timeout_s, task_dir=task_dir, task_name=task,
                                         search_id=g["search_id"], record_defaults=defaults_cache[task])
            except RuntimeError as exc:  # the fork server died: start a fresh one, the pair stays to do
                n_broken += 1
                log.warning("evaluator error on %s %s (%s); restarting the fork server", task, g["id"], exc)
                evaluator.close()
                if n_broken >= 3:
                    log.error("the evaluator failed 3 times in a row; stopping")
                    break
                continue
            n_broken = 0
            n_run += 1
            q = f"{out.quality:.3f}" if out.quality is not None else "-"
            log.info("run %d: %s %s %s -> %s f1=%s runtime=%.0fs wall=%.0fs energy=%s kWh record=%s", n_run, task,
                     g["id"], g["config"]["model_name"], out.status, q, out.runtime_s or 0.0,
                     time.monotonic() - t0, f"{out.energy_kwh:.2e}" if out.energy_kwh else "-", out.record_id)
            if a.export_every and n_run % a.export_every == 0:
                _export(home, a.out, cache)
    except KeyboardInterrupt:
        log.info("stopped after %d runs (%s)", n_run, "SIGTERM" if stop["now"] else "interrupt")
    finally:
        evaluator.close()
        if a.export_every:
            _export(home, a.out, cache)
    log.info("%d runs in %.0f s", n_run, time.monotonic() - t_start)
    return 0


def _export(home: Path, out: Path, cache: Path) -> None:
    try:
        from export import export
        export(home, out, cache)
    except Exception as exc:  # an export problem must never stop the runs
        log.warning("export failed: %s: %s", type(exc).__name__, exc)


if __name__ == "__main__":
    sys.exit(main())
