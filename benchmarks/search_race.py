"""The search race: leave-one-task-out with the replay evaluator, on every data set in one run.

Data sets (default: the meta-dataset, the shipped XAutoLM AG News store and the generative
meta-dataset, whose question-answering and causal-LM tasks race as two data sets, one per kind):
each task of a data set is held out in turn. Its logged runs are the candidate pool and the ground truth: a candidate
is answered by its logged run, the time charged is the logged runtime, a failed/oom/timeout run
costs its logged runtime (or an imputed one, see xsearch.replay) and is an error. The budget is
simulated seconds: ``--budget-fraction`` x the time the task's whole pool took, failures included.
Five contestants, same budget, same pool, ``--seeds`` seeds each: random search, the evolutionary
search with no experience (zero-shot), Optuna's TPE sampler, a kNN warm start (the memory-based
XAutoLM baseline) and xsearch in full (seeds from similar tasks, warm start, estimators that order
candidates). Everything that learns from experience sees only the OTHER tasks' records (of every
data set given); it is fitted once per held-out task, not per seed. See docs/race.md.

    python benchmarks/search_race.py [--data FILE_OR_STORE [--space SPACE|auto]]... [--seeds 20]
    python benchmarks/search_race.py --v2 [--metadataset benchmarks/data/metadataset_v2.parquet]

``--v2`` (or ``--metadataset FILE``) races on meta-dataset v2 (configurations sampled per task,
learning curves) with the v2 contestants: the five above, xsearch with early stopping, TPE with
Optuna's median pruner and the expert default (race/contestants.py), and reports the runtime
estimator's leave-one-task-out Spearman (race/runtime.py).

Prints the tables, writes benchmarks/results/search_race_<data set>.json and an anytime plot each.

Multi-objective figure (``--mo-seeds``, 0 skips it): the hypervolume of the (quality, trainable
parameters) front reached at 25% and 100% of the budget, xsearch (objective quality-vs-params)
against random, zero-shot and Optuna's multi-objective samplers (MOTPE, NSGA-II), on every data set
whose records log trainable parameters (race/multiobjective.py); writes
search_race_<data set>_hypervolume.json and .png.
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

from race.contestants import default_contestants, v2_contestants  # noqa: E402
from race.metrics import REPORT_FRACTIONS, aggregate, pooled_error_rate, targets, targets_v2, task_summary  # noqa: E402
from race.pool import HeldOut, TaskPool, Trace, hold_out, load_records  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "metadataset_v1.parquet"
SPACE = REPO / "benchmarks" / "metadataset" / "space.yaml"
GENERATIVE = REPO / "benchmarks" / "data" / "metadataset_generative.parquet"
GEN_SPACE = REPO / "benchmarks" / "metadataset" / "gen_space.yaml"
EXTERNAL = REPO / "benchmarks" / "data" / "xautolm_dev" / "experience_store"
DATA_V2 = REPO / "benchmarks" / "data" / "metadataset_v2.parquet"
SPACE_V2 = REPO / "benchmarks" / "metadataset" / "space_v2.yaml"
RESULTS_DIR = REPO / "benchmarks" / "results"


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
             progress: bool = False, extra_experience: list[Mapping[str, Any]] = ()
             ) -> tuple[dict[str, Any], dict[str, dict[str, list[Trace]]]]:
    """Run the race over the tasks of ``records``; returns (result document, traces per task and
    contestant). ``extra_experience``: records of other data sets, which every held-out task may
    learn from too (their tasks are never held out here)."""
    from xsearch.estimators import records_frame
    exp = records_frame(list(records) + list(extra_experience))
    own_tasks = {str(r.get("task_name")) for r in records if r.get("task_name") is not None}
    contestants = contestants if contestants is not None else default_contestants()
    names = [c.name for c in contestants]
    all_tasks = sorted(own_tasks)
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
        if exp["task_name"].dropna().nunique() < 2:
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
        "meta": {"n_records": len(records), "n_extra_experience": len(extra_experience), "n_tasks": len(per_task), "tasks": sorted(per_task),
                 "excluded_tasks": excluded, "seeds": seeds, "budget_fraction": budget_fraction,
                 "min_pool": min_pool, "contestants": names, "report_fractions": list(REPORT_FRACTIONS),
                 "timing_s": {n: {k: round(v, 2) for k, v in d.items()} for n, d in timing.items()}},
        "aggregate": agg, "pooled_error_rate": pooled,
        "targets": {**(targets(agg, pooled, per_task) if {"xsearch", "zero-shot"} <= set(names) else {}),
                    **(targets_v2(agg) if "expert" in names else {})},
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
    width = max([12] + [len(n) for n in names])
    head = (f"{'contestant':<{width}} " + " ".join(f"{'R@' + str(int(f * 100)) + '%':>6}" for f in REPORT_FRACTIONS)
            + f" {'err':>6} {'err25':>6} {'evals':>6} {'eval_s':>7} {'pareto':>6} {'kWh':>8} {'t->zs':>6}")
    lines = [f"Median over {result['meta']['n_tasks']} held-out tasks ({result['meta']['seeds']} seeds each; "
             f"R = normalised regret, err = error rate, err25 = error rate in the first 25% of the budget, "
             f"t->zs = budget fraction to reach zero-shot's final best)",
             head, "-" * len(head)]
    for n in names:
        a = agg[n]
        lines.append(f"{n:<{width}} " + " ".join(f"{_f(a['regret_at'][f'{f:.2f}']):>6}" for f in REPORT_FRACTIONS)
                     + f" {_f(a['error_rate'], 3):>6} {_f(a['error_rate_first_25pct'], 3):>6}"
                     f" {_f(a['evaluations_per_seed'], 1):>6}"
                     f" {_f(a['mean_eval_s'], 1):>7} {_f(a['pareto_count'], 1):>6} {_f(a['energy_kwh'], 5):>8}"
                     f" {_f(a['time_to_zero_shot_best']):>6}")
    lines.append("pooled error rate (all tasks, all seeds): "
                 + ", ".join(f"{n} {result['pooled_error_rate'][n]:.3f}" for n in names))
    stoppers = [n for n in names if any(t.get(n, {}).get("pruned_per_seed") for t in result["per_task"].values())]
    if stoppers:
        # Mean over tasks (the median task of a rare event is 0): stopped runs, wrong stops (the run
        # would have become the best so far), budget saved.
        def mean_of(n: str, k: str) -> float:
            vals = [t[n][k] for t in result["per_task"].values() if n in t and t[n].get(k) is not None]
            return sum(vals) / len(vals) if vals else 0.0
        lines.append("early stopping (mean over tasks, per seed): " + ", ".join(
            f"{n} {mean_of(n, 'pruned_per_seed'):.2f} stopped / {mean_of(n, 'wrongly_pruned_per_seed'):.2f} wrongly"
            f" / {mean_of(n, 'pruning_saved_fraction'):.3f} of the budget saved" for n in stoppers))
    lines.append("")
    lines.append("Per task: mean regret at 25% / 100% of the budget (pool = logged configs, errors = failing ones)")
    head2 = f"{'task':<26} {'pool':>4} {'err':>3} {'budget_s':>8} " + " ".join(f"{n[:13]:>13}" for n in names)
    lines += [head2, "-" * len(head2)]
    for task, t in result["per_task"].items():
        cells = " ".join(f"{_f(t[n]['regret_at']['0.25'])}/{_f(t[n]['regret_at']['1.00'])}".rjust(13) for n in names)
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


def load_dataset(path: str | Path) -> list[dict[str, Any]]:
    """Records of a data set: a record Parquet file, or a folder of AutoGOAL/XAutoLM JSON
    experiences (imported with ``xlog import autogoal`` into a temporary store). Tasks whose
    meta-features are identical (the same data searched twice) are merged under one name, so that
    one can never be held out while the other teaches the contestants."""
    if str(path) == "constructed":
        from race.constructed import hard_records
        return hard_records()
    path = Path(path)
    if path.is_dir():
        import tempfile

        from xlog.importers.autogoal import import_autogoal
        from xlog.store import LocalStore
        with tempfile.TemporaryDirectory(prefix="race-import-") as tmp:
            store = LocalStore(tmp)
            import_autogoal(path, store)
            records = store.records()
    else:
        records = load_records(path)
    return merge_same_tasks(records)


SAME_TASK_FEATURES = ("task_type", "task_n_train", "task_n_classes", "task_class_entropy", "task_chars_mean")


def merge_same_tasks(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records whose tasks have the same meta-features get the shortest of those task names."""
    def sig(r: Mapping[str, Any]) -> tuple | None:
        vals = tuple(round(float(v), 6) if isinstance(v, (int, float)) else v for v in (r.get(c) for c in SAME_TASK_FEATURES))
        return None if any(v is None for v in vals[1:3]) else vals
    names: dict[tuple, set[str]] = {}
    for r in records:
        if r.get("task_name") is not None and sig(r) is not None:
            names.setdefault(sig(r), set()).add(str(r["task_name"]))
    rename = {n: min(group, key=lambda x: (len(x), x)) for group in names.values() if len(group) > 1 for n in group}
    for r in records:
        if r.get("task_name") in rename:
            r["task_name"] = rename[r["task_name"]]
    return records


DATASETS = [(DATA, str(SPACE)), (EXTERNAL, "auto"), (GENERATIVE, str(GEN_SPACE))]


def tasks_by_kind(records: list[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The data set's task names per task kind (the most common task_type of each task's records)."""
    from collections import Counter
    seen: dict[str, Counter] = {}
    for r in records:
        if r.get("task_name") is not None:
            seen.setdefault(str(r["task_name"]), Counter())[str(r.get("task_type") or "?")] += 1
    out: dict[str, list[str]] = {}
    for task, kinds in sorted(seen.items()):
        out.setdefault(kinds.most_common(1)[0][0], []).append(task)
    return out


def run_mo(label: str, d: Any, recs: list[dict[str, Any]], space: Any, extra: list[dict[str, Any]],
           tasks: list[str] | None, args: Any, out_dir: Path, results: dict[str, Any]) -> None:
    """The multi-objective race of one data set (skipped, with the reason, when no task's records
    log trainable parameters)."""
    from race.multiobjective import format_mo_table, run_mo_race
    from race.plot import plot_hypervolume
    print(f"\n== {label}: multi-objective race (quality vs trainable parameters), {args.mo_seeds} seeds", flush=True)
    t1 = time.perf_counter()
    try:
        from race.multiobjective import mo_contestants
        result = run_mo_race(recs, space, seeds=args.mo_seeds, budget_fraction=args.budget_fraction, tasks=tasks,
                             min_pool=args.min_pool, progress=True, extra_experience=extra,
                             contestants=mo_contestants(args.ablations))
    except ValueError as exc:
        print(f"  skipped: {exc}")
        return
    import os
    result["meta"].update(data=label, elapsed_s=round(time.perf_counter() - t1, 1), cpu_cores=os.cpu_count())
    print()
    print(format_mo_table(result))
    out = out_dir / f"search_race_{label}_hypervolume.json"
    out.write_text(json.dumps(_jsonable(result), indent=1) + "\n", encoding="utf-8")
    png = plot_hypervolume(result, out_dir / f"search_race_{label}_hypervolume.png", label)
    print(f"\nwrote {out} and {png}")
    results[f"{label}:hypervolume"] = result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", action="append", default=None,
                    help="a record Parquet file, a folder of AutoGOAL/XAutoLM JSON experiences, or 'constructed' "
                         "(the hard constructed store settings are chosen on); repeat for several data sets "
                         "(default: the meta-dataset, the shipped XAutoLM AG News store and the generative "
                         "meta-dataset, where it has been exported)")
    ap.add_argument("--space", action="append", default=None,
                    help="the space of each --data, in order: a space file, or 'auto' for every logged value "
                         "of the record decisions (default: the meta-dataset's space.yaml for it, else auto)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budget-fraction", type=float, default=0.5,
                    help="budget = this x the logged time of the task's whole grid")
    ap.add_argument("--tasks", default=None, help="comma-separated held-out tasks (default: all)")
    ap.add_argument("--min-pool", type=int, default=3, help="tasks with fewer logged configs are left out")
    ap.add_argument("--no-cross-experience", action="store_true",
                    help="learn only from the held-out task's own data set (default: from every data set given)")
    ap.add_argument("--ablations", action="store_true",
                    help="also run xsearch with only its warm start and with only its estimators")
    ap.add_argument("--mo-seeds", type=int, default=10,
                    help="seeds of the multi-objective (hypervolume) race per task; 0 skips it")
    ap.add_argument("--mo-only", action="store_true", help="run only the multi-objective race")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
    ap.add_argument("--v2", action="store_true",
                    help="race on meta-dataset v2 (learning curves) with the v2 contestants (early-stopping xsearch, "
                         "TPE with the median pruner, the expert default) and report the runtime estimator")
    ap.add_argument("--metadataset", default=None,
                    help=f"the v2 meta-dataset file (implies --v2; default {DATA_V2.relative_to(REPO)})")
    ap.add_argument("--charge", choices=("cpu", "wall"), default="cpu",
                    help="v2: charge runs their CPU seconds (default; the load of the shared machine does not "
                         "inflate them) or their logged wall seconds")
    args = ap.parse_args(argv)
    if args.v2 or args.metadataset:
        return main_v2(args)

    from xsearch.space import SearchSpace
    t0 = time.perf_counter()
    datas = args.data or [str(d) for d, _ in DATASETS if Path(d).exists()]
    spaces = args.space or [next((s for d, s in DATASETS if str(d) == x), "auto") for x in datas]
    if len(spaces) != len(datas):
        ap.error(f"give one --space per --data ({len(datas)} data sets, {len(spaces)} spaces)")
    loaded = []
    for d, sp in zip(datas, spaces):
        recs = load_dataset(d)
        space = SearchSpace.from_records(recs, name="logged") if sp == "auto" else SearchSpace.load(sp)
        p = Path(d)
        label = p.parent.name if p.name == "experience_store" else p.stem if str(d) != "constructed" else "constructed"
        loaded.append((label, d, recs, space, sp))
    tasks = args.tasks.split(",") if args.tasks else None
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    runs = []
    for label, d, recs, space, sp in loaded:
        kinds = tasks_by_kind(recs)
        # A data set of several task kinds (the generative one: question answering and causal LM)
        # races each kind on its own: one task of the kind is held out at a time, and the summary
        # of a kind is never pooled with another kind's (F1 regret beside loss regret).
        for kind, kind_tasks in kinds.items():
            runs.append((label if len(kinds) == 1 else f"{label}_{kind}", d, recs, space, sp, kind_tasks))
    for label, d, recs, space, sp, kind_tasks in runs:
        extra = [] if args.no_cross_experience else [r for _, d2, rs, _, _ in loaded if d2 != d for r in rs]
        mine = kind_tasks if tasks is None else [t for t in tasks if t in kind_tasks]
        if mine == []:
            continue
        if args.mo_seeds > 0:
            run_mo(label, d, recs, space, extra, mine, args, out_dir, results)
        if args.mo_only:
            continue
        print(f"\n== {label}: {len(recs)} records from {d} ({len(mine)} tasks held out in turn; +{len(extra)} "
              f"records of other data sets as experience); {args.seeds} seeds; budget = {args.budget_fraction:g} "
              "x grid time", flush=True)
        t1 = time.perf_counter()
        result, _ = run_race(recs, space, seeds=args.seeds, budget_fraction=args.budget_fraction, tasks=mine,
                             min_pool=args.min_pool, contestants=default_contestants(args.ablations), progress=True,
                             extra_experience=extra)
        try:
            data_name = str(Path(d).resolve().relative_to(REPO))
        except ValueError:
            data_name = Path(d).name
        import os
        result["meta"].update(data=data_name, space=Path(sp).name if sp != "auto" else "auto: " + ", ".join(space.names),
                              elapsed_s=round(time.perf_counter() - t1, 1), cpu_cores=os.cpu_count())
        print()
        print(format_tables(result))
        out = out_dir / f"search_race_{label}.json"
        out.write_text(json.dumps(_jsonable(result), indent=1) + "\n", encoding="utf-8")
        from race.plot import plot_anytime
        png = plot_anytime(result, out_dir / f"search_race_{label}_anytime.png")
        print(f"\nwrote {out} and {png}")
        results[label] = result
    print(f"\nrace done in {time.perf_counter() - t0:.0f} s")
    return results


def load_v2(path: str | Path, charge: str = "cpu") -> list[dict[str, Any]]:
    """Meta-dataset v2's records, less the repeat runs after the first of each (they measure the
    noise; a configuration counts once, as the replay answers it). ``charge="cpu"``: every time a
    run logged (its runtime, its curve's elapsed seconds) becomes CPU seconds, scaled by the run's
    CPU / wall ratio, so that a run costs what it needs and not what the load of the machine made
    it take; the budget, the replay and everything learned from experience then count CPU seconds."""
    import re
    recs = [r for r in load_records(path) if not re.search(r"#([2-9]|\d{2,})$", str(r.get("search_id") or ""))]
    if charge == "wall":
        return recs
    if charge != "cpu":
        raise ValueError(f"charge must be 'cpu' or 'wall', not {charge!r}")
    out = []
    for r in recs:
        cpu, wall = r.get("train_cpu_time_s"), r.get("outcome_total_runtime_s")
        if cpu is not None and wall:
            r = dict(r)
            ratio = float(cpu) / float(wall)
            r["outcome_total_runtime_s"] = float(cpu)
            for k in ("outcome_train_runtime_s", "outcome_eval_runtime_s"):
                if r.get(k) is not None:
                    r[k] = float(r[k]) * ratio
            if r.get("curve"):
                r["curve"] = [dict(p, elapsed_s=None if p.get("elapsed_s") is None else float(p["elapsed_s"]) * ratio)
                              for p in r["curve"]]
        out.append(r)
    return out


def main_v2(args: argparse.Namespace) -> dict[str, Any]:
    """The race on meta-dataset v2 (one data set, the v2 contestants) and the runtime estimator."""
    from race.plot import plot_anytime
    from race.runtime import format_runtime, runtime_report
    from xsearch.space import SearchSpace
    t0 = time.perf_counter()
    path = Path(args.metadataset or DATA_V2)
    recs = load_v2(path, args.charge)
    space_file = (args.space or [str(SPACE_V2)])[0]
    space = SearchSpace.from_records(recs, name="logged") if space_file == "auto" else SearchSpace.load(space_file)
    tasks = args.tasks.split(",") if args.tasks else None
    counts: dict[str, int] = {}
    for r in recs:
        counts[str(r.get("task_name"))] = counts.get(str(r.get("task_name")), 0) + 1
    print(f"\n== metadataset_v2: {len(recs)} records from {path} ({len(counts)} tasks: "
          + ", ".join(f"{t} {n}" for t, n in sorted(counts.items())) + f"); {args.seeds} seeds; "
          f"budget = {args.budget_fraction:g} x pool time, charged in {args.charge} seconds", flush=True)
    result, _ = run_race(recs, space, seeds=args.seeds, budget_fraction=args.budget_fraction, tasks=tasks,
                         min_pool=args.min_pool, contestants=v2_contestants(args.ablations), progress=True)
    rt = runtime_report(load_v2(path, "wall"))  # as logged: the wall time, and the CPU time beside it
    import os
    try:
        data_name = str(path.resolve().relative_to(REPO))
    except ValueError:
        data_name = path.name
    result["meta"].update(data=data_name, space=Path(space_file).name, runs_per_task=counts, charge=args.charge,
                          elapsed_s=round(time.perf_counter() - t0, 1), cpu_cores=os.cpu_count())
    result["runtime_estimator"] = rt
    from race.contestants import RECIPES
    result["meta"]["expert_recipes"] = RECIPES
    print()
    print(format_tables(result))
    print()
    print(format_runtime(rt))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "search_race_metadataset_v2.json"
    out.write_text(json.dumps(_jsonable(result), indent=1) + "\n", encoding="utf-8")
    png = plot_anytime(result, out_dir / "search_race_metadataset_v2_anytime.png")
    print(f"\nwrote {out} and {png}\nrace done in {time.perf_counter() - t0:.0f} s")
    return {"metadataset_v2": result}


if __name__ == "__main__":
    main()
