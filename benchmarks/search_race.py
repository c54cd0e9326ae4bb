"""The search race: leave-one-task-out over the meta-dataset with the replay evaluator.

Each task of the meta-dataset is held out in turn. Its logged runs (the fixed grid, as far as it
was run) are the candidate pool and the ground truth: a candidate is answered by its logged run,
the time charged is the logged runtime, a failed/oom/timeout run costs its logged runtime and is
an error. The budget is simulated seconds: ``--budget-fraction`` x the time the task's whole grid
took. Five contestants, same budget, same pool, ``--seeds`` seeds each: random search, the
evolutionary search with no experience (zero-shot), Optuna's TPE sampler, a kNN warm start (the
memory-based XAutoLM baseline) and xsearch in full (warm start + estimator-guided skipping).
Everything that learns from experience (estimators, warm start, kNN) sees only the OTHER tasks'
records; it is fitted once per held-out task, not per seed. See docs/race.md.

    python benchmarks/search_race.py [--data benchmarks/data/metadataset_v1.parquet] [--seeds 20]

Prints the tables, writes benchmarks/results/search_race.json and search_race_anytime.png.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from race.contestants import default_contestants  # noqa: E402
from race.metrics import REPORT_FRACTIONS, aggregate, pooled_error_rate, targets, task_summary  # noqa: E402
from race.pool import HeldOut, TaskPool, Trace, hold_out, load_records  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "metadataset_v1.parquet"
SPACE = REPO / "benchmarks" / "metadataset" / "space.yaml"
RESULTS = REPO / "benchmarks" / "results" / "search_race.json"
PLOT = REPO / "benchmarks" / "results" / "search_race_anytime.png"


class LeakError(AssertionError):
    """A contestant saw a record of the held-out task."""


def check_no_leak(task: str, held: HeldOut, contestants: Iterable[Any]) -> dict[str, Any]:
    """The held-out task is in nothing a contestant learned from (raises LeakError otherwise)."""
    if (held.experience["task_name"] == task).any():
        raise LeakError(f"experience of held-out task {task} contains its own records")
    info: dict[str, Any] = {}
    for c in contestants:
        fitted = list(getattr(c, "fitted_on", []) or [])
        similar = [n for n, _ in getattr(c, "similar", []) or []]
        if task in fitted or task in similar:
            raise LeakError(f"{c.name}: held-out task {task} among its training/similar tasks")
        if fitted or similar:
            info[c.name] = {"estimators_trained_on_tasks": len(fitted), "similar_tasks": similar}
    return info


def run_race(records: list[Mapping[str, Any]], space: Any, seeds: int = 20, budget_fraction: float = 0.5,
             tasks: list[str] | None = None, min_pool: int = 3, contestants: list[Any] | None = None,
             progress: bool = False) -> tuple[dict[str, Any], dict[str, dict[str, list[Trace]]]]:
    """Run the race; returns (result document, traces per task and contestant)."""
    from xsearch.estimators import records_frame
    exp = records_frame(records)
    contestants = contestants if contestants is not None else default_contestants()
    names = [c.name for c in contestants]
    all_tasks = sorted(str(t) for t in exp["task_name"].dropna().unique())
    tasks = all_tasks if tasks is None else tasks
    unknown = sorted(set(tasks) - set(all_tasks))
    if unknown:
        raise ValueError(f"no records of task(s) {unknown}; the meta-dataset has {all_tasks}")
    per_task: dict[str, Any] = {}
    all_traces: dict[str, dict[str, list[Trace]]] = {}
    excluded: dict[str, str] = {}
    timing = {n: {"prepare_s": 0.0, "run_s": 0.0} for n in names}
    for task in tasks:
        pool = TaskPool(records, space, task)
        if len(pool) < min_pool or pool.best_quality is None:
            excluded[task] = f"{len(pool)} logged configs ({sum(1 for e in pool.entries.values() if e.ok)} completed)"
            continue
        if len(all_tasks) < 2:
            raise ValueError("leave-one-task-out needs at least 2 tasks")
        held = hold_out(exp, task)
        budget = budget_fraction * pool.grid_time_s
        traces: dict[str, list[Trace]] = {}
        for c in contestants:
            t0 = time.perf_counter()
            c.prepare(held, pool)
            t1 = time.perf_counter()
            traces[c.name] = [c.run(pool, budget, s) for s in range(seeds)]
            timing[c.name]["prepare_s"] += t1 - t0
            timing[c.name]["run_s"] += time.perf_counter() - t1
        leak_info = check_no_leak(task, held, contestants)
        summary = task_summary(pool, traces)
        per_task[task] = {
            "pool_size": len(pool), "pool_errors": pool.n_errors, "best_quality": pool.best_quality,
            "worst_quality": pool.worst_quality, "grid_time_s": pool.grid_time_s, "budget_s": budget,
            "experience_records": int(len(held.experience)), "learned_from": leak_info, **summary}
        all_traces[task] = traces
        if progress:
            r = {n: summary[n]["regret_at"]["0.25"] for n in names}
            print(f"  {task:<28} pool {len(pool):>2}  budget {budget:7.0f} s  regret@25%: "
                  + "  ".join(f"{n} {v:.2f}" for n, v in r.items()), flush=True)
    if not per_task:
        raise ValueError(f"no task has at least {min_pool} logged configurations with a completed run "
                         f"(excluded: {excluded})")
    agg = aggregate({t: {n: v[n] for n in names} for t, v in per_task.items()}, names)
    pooled = {n: pooled_error_rate(tr for t in all_traces.values() for tr in t[n]) for n in names}
    result = {
        "meta": {"n_records": len(records), "n_tasks": len(per_task), "tasks": sorted(per_task),
                 "excluded_tasks": excluded, "seeds": seeds, "budget_fraction": budget_fraction,
                 "min_pool": min_pool, "contestants": names, "report_fractions": list(REPORT_FRACTIONS),
                 "timing_s": {n: {k: round(v, 2) for k, v in d.items()} for n, d in timing.items()}},
        "aggregate": agg, "pooled_error_rate": pooled,
        "targets": targets(agg, pooled) if {"xsearch", "zero-shot"} <= set(names) else {},
        "per_task": per_task,
    }
    return result, all_traces


def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "never"
    return f"{v:.{nd}f}"


def format_tables(result: Mapping[str, Any]) -> str:
    agg, names = result["aggregate"], result["meta"]["contestants"]
    head = (f"{'contestant':<12} " + " ".join(f"{'R@' + str(int(f * 100)) + '%':>6}" for f in REPORT_FRACTIONS)
            + f" {'err':>6} {'evals':>6} {'eval_s':>7} {'pareto':>6} {'kWh':>8} {'t->zs':>6}")
    lines = [f"Median over {result['meta']['n_tasks']} held-out tasks ({result['meta']['seeds']} seeds each; "
             f"R = normalised regret, err = error rate, t->zs = budget fraction to reach zero-shot's final best)",
             head, "-" * len(head)]
    for n in names:
        a = agg[n]
        lines.append(f"{n:<12} " + " ".join(f"{_f(a['regret_at'][f'{f:.2f}']):>6}" for f in REPORT_FRACTIONS)
                     + f" {_f(a['error_rate'], 3):>6} {_f(a['evaluations_per_seed'], 1):>6}"
                     f" {_f(a['mean_eval_s'], 1):>7} {_f(a['pareto_count'], 1):>6} {_f(a['energy_kwh'], 5):>8}"
                     f" {_f(a['time_to_zero_shot_best']):>6}")
    lines.append("pooled error rate (all tasks, all seeds): "
                 + ", ".join(f"{n} {result['pooled_error_rate'][n]:.3f}" for n in names))
    lines.append("")
    lines.append("Per task: mean regret at 25% / 100% of the budget (pool = logged configs, errors = failing ones)")
    head2 = f"{'task':<26} {'pool':>4} {'err':>3} {'budget_s':>8} " + " ".join(f"{n[:11]:>11}" for n in names)
    lines += [head2, "-" * len(head2)]
    for task, t in result["per_task"].items():
        cells = " ".join(f"{_f(t[n]['regret_at']['0.25'])}/{_f(t[n]['regret_at']['1.00'])}".rjust(11) for n in names)
        lines.append(f"{task[:26]:<26} {t['pool_size']:>4} {t['pool_errors']:>3} {t['budget_s']:>8.0f} {cells}")
    if result.get("targets"):
        lines.append("")
        lines.append("Targets (median held-out task):")
        for k, v in result["targets"].items():
            extra = {kk: vv for kk, vv in v.items() if kk not in ("met", "says")}
            lines.append(f"  [{'MET' if v['met'] else 'MISSED'}] {k}: " + json.dumps(_jsonable(extra)))
    if result["meta"]["excluded_tasks"]:
        lines.append(f"excluded (pool < {result['meta']['min_pool']}): {result['meta']['excluded_tasks']}")
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    """JSON without NaN/Infinity: infinity ('never reached') becomes the string "inf"."""
    if isinstance(x, float):
        if math.isinf(x):
            return "inf"
        return None if math.isnan(x) else round(x, 6)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item"):
        return _jsonable(x.item())
    return x


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA), help="meta-dataset Parquet file (records)")
    ap.add_argument("--space", default=str(SPACE), help="search space that maps records to configs")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budget-fraction", type=float, default=0.5,
                    help="budget = this x the logged time of the task's whole grid")
    ap.add_argument("--tasks", default=None, help="comma-separated held-out tasks (default: all)")
    ap.add_argument("--min-pool", type=int, default=3, help="tasks with fewer logged configs are left out")
    ap.add_argument("--ablations", action="store_true",
                    help="also run xsearch with only its warm start and with only its estimators")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--plot", default=str(PLOT))
    args = ap.parse_args(argv)

    from xsearch.space import SearchSpace
    t0 = time.perf_counter()
    records = load_records(args.data)
    space = SearchSpace.load(args.space)
    tasks = args.tasks.split(",") if args.tasks else None
    print(f"{len(records)} records from {args.data}; {args.seeds} seeds; budget = {args.budget_fraction:g} x grid time",
          flush=True)
    result, _ = run_race(records, space, seeds=args.seeds, budget_fraction=args.budget_fraction, tasks=tasks,
                         min_pool=args.min_pool, contestants=default_contestants(args.ablations), progress=True)
    elapsed = time.perf_counter() - t0
    try:
        data_name = str(Path(args.data).resolve().relative_to(REPO))
    except ValueError:
        data_name = Path(args.data).name
    result["meta"].update(data=data_name, space=Path(args.space).name, elapsed_s=round(elapsed, 1))
    import os
    result["meta"]["cpu_cores"] = os.cpu_count()
    print()
    print(format_tables(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(result), indent=1) + "\n", encoding="utf-8")
    from race.plot import plot_anytime
    png = plot_anytime(result, Path(args.plot))
    print(f"\nwrote {out} and {png} in {elapsed:.0f} s")
    return result


if __name__ == "__main__":
    main()
