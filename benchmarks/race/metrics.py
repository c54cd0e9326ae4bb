"""Figures of the race from the contestants' traces: anytime normalised regret, error rate, mean
evaluation time, configurations on or above the zero-shot Pareto front, energy, time to reach the
zero-shot search's final best; per task (over seeds) and aggregated (median over tasks); targets.
"""
from __future__ import annotations

import math
from statistics import median, median_low
from typing import Any, Iterable, Mapping

import numpy as np

from .pool import TaskPool, Trace

REPORT_FRACTIONS = (0.10, 0.25, 0.50, 1.00)
CURVE_POINTS = 101


def best_by(trace: Trace, t: float) -> float | None:
    """Best quality among the evaluations that ended by budget second ``t``."""
    qs = [s.quality for s in trace.steps if s.quality is not None and s.t_end <= t + 1e-9]
    return max(qs) if qs else None


def regret_curve(trace: Trace, pool: TaskPool, fractions: Iterable[float]) -> list[float]:
    return [pool.regret(best_by(trace, f * trace.budget_s)) for f in fractions]


def time_to_reach(trace: Trace, target: float | None) -> float:
    """Fraction of the budget after which the best-so-far quality is >= target (inf: never)."""
    if target is None:
        return 0.0
    for s in trace.steps:
        if s.quality is not None and s.quality >= target - 1e-12:
            return s.t_end / trace.budget_s
    return math.inf


def pareto_points(traces: Iterable[Trace]) -> list[tuple[float, float]]:
    """(quality, cost) of the non-dominated completed evaluations (quality up, runtime down)."""
    pts = {(s.quality, s.cost_s) for t in traces for s in t.steps if s.quality is not None}
    return [p for p in pts if not any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in pts)]


def on_or_above(trace: Trace, front: list[tuple[float, float]]) -> int:
    """Distinct completed configurations of the trace that no point of ``front`` strictly dominates."""
    keys = set()
    for s in trace.steps:
        if s.quality is None:
            continue
        if not any(f[0] >= s.quality and f[1] <= s.cost_s and (f[0] > s.quality or f[1] < s.cost_s) for f in front):
            keys.add(s.key)
    return len(keys)


def unspent_with_candidates(trace: Trace, pool: TaskPool) -> float:
    """Budget fraction a run left unspent although an unevaluated pool config would have fitted
    in it (0 when it spent the budget or nothing was left that fitted)."""
    left = trace.budget_s - trace.used_s
    done = {s.key for s in trace.steps}
    fits = any(e.cost_s <= left for k, e in pool.entries.items() if k not in done)
    return max(left, 0.0) / trace.budget_s if fits and trace.budget_s > 0 else 0.0


def pruning(trace: Trace, pool: TaskPool) -> tuple[int, int, float]:
    """Early stopping in one run: (runs stopped, stopped runs whose logged final quality would
    have beaten the best found before them (wrong stops), budget seconds saved by stopping)."""
    n = wrong = 0
    saved, best = 0.0, None
    for s in trace.steps:
        if s.status == "pruned":
            n += 1
            entry = pool.entries.get(s.key)
            if entry is not None:
                saved += max(entry.cost_s - s.cost_s, 0.0)
                if entry.ok and entry.quality is not None and (best is None or entry.quality > best):
                    wrong += 1
        elif s.quality is not None:
            best = s.quality if best is None else max(best, s.quality)
    return n, wrong, saved


def _early_error_rate(traces: list[Trace], fraction: float) -> float | None:
    early = [s for t in traces for s in t.evaluations if s.t_end <= fraction * t.budget_s + 1e-9]
    return sum(1 for s in early if s.error) / len(early) if early else None


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else None


def _median(xs: Iterable[float | None]) -> float | None:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(median(xs)) if xs else None


def task_summary(pool: TaskPool, traces: Mapping[str, list[Trace]], zero_shot: str = "zero-shot") -> dict[str, Any]:
    """Per-contestant figures on one task (means over seeds; error rate pooled over seeds)."""
    grid = np.linspace(0.0, 1.0, CURVE_POINTS)
    zs = traces.get(zero_shot, [])
    front = pareto_points(zs)
    # Zero-shot's final best on the task: the median seed's (a seed that completed nothing counts
    # as -inf; if that is the median, the target is "nothing", reached at once).
    finals = [best_by(t, math.inf) for t in zs]
    zs_target = median_low([-math.inf if q is None else q for q in finals]) if finals else -math.inf
    zs_target = None if zs_target == -math.inf else zs_target
    out: dict[str, Any] = {}
    for name, ts in traces.items():
        evals = [s for t in ts for s in t.evaluations]
        n_err = sum(1 for s in evals if s.error)
        curves = np.array([regret_curve(t, pool, grid) for t in ts])
        reach = [time_to_reach(t, zs_target) for t in ts]
        unspent = [unspent_with_candidates(t, pool) for t in ts]
        pr = [pruning(t, pool) for t in ts]
        skipped: dict[str, int] = {}
        for t in ts:
            for k, v in t.skipped.items():
                skipped[k] = skipped.get(k, 0) + v
        out[name] = {
            "regret_at": {f"{f:.2f}": _mean([pool.regret(best_by(t, f * t.budget_s)) for t in ts])
                          for f in REPORT_FRACTIONS},
            "curve": [float(x) for x in curves.mean(axis=0)],
            "error_rate": n_err / len(evals) if evals else 0.0,
            # Where the budget is half the grid and most of the pool fails, any search that spends
            # the budget ends with a high error rate; early errors show who avoids failures.
            "error_rate_first_25pct": _early_error_rate(ts, 0.25),
            "errors_per_seed": n_err / len(ts),
            "evaluations_per_seed": len(evals) / len(ts),
            "mean_eval_s": _mean([s.cost_s for s in evals]),
            "cut_per_seed": sum(1 for t in ts for s in t.steps if s.cut) / len(ts),
            "pareto_count": _mean([on_or_above(t, front) for t in ts]),
            "energy_kwh": _mean([sum(s.energy_kwh for s in t.steps) for t in ts]),
            "used_fraction": _mean([t.used_s / t.budget_s for t in ts]),
            # Budget left unspent at the end while the pool still had a run that fitted in it.
            "unspent_with_candidates_max": max(unspent) if unspent else 0.0,
            "seeds_unspent_over_10pct": sum(1 for u in unspent if u > 0.10),
            "time_to_zero_shot_best": float(np.median(reach)),
            "reached_zero_shot_best": sum(1 for r in reach if r <= 1.0) / len(reach),
            "skipped_per_seed": {k: v / len(ts) for k, v in sorted(skipped.items())},
            # Early stopping: runs stopped, wrong stops (the run would have become the best so far),
            # and the budget fraction it saved (logged cost - charged cost of the stopped runs).
            "pruned_per_seed": sum(p[0] for p in pr) / len(ts),
            "wrongly_pruned_per_seed": sum(p[1] for p in pr) / len(ts),
            "pruning_saved_fraction": _mean([p[2] / t.budget_s for p, t in zip(pr, ts) if t.budget_s > 0]),
            "stop_reasons": {r: sum(1 for t in ts if t.stop_reason == r) for r in sorted({t.stop_reason for t in ts})},
        }
    out["_zero_shot_final_best"] = zs_target
    out["_zero_shot_front"] = sorted(front)
    return out


AGG_KEYS = ("error_rate", "error_rate_first_25pct", "mean_eval_s", "pareto_count", "energy_kwh", "evaluations_per_seed", "errors_per_seed",
            "time_to_zero_shot_best", "reached_zero_shot_best", "used_fraction", "pruned_per_seed",
            "wrongly_pruned_per_seed", "pruning_saved_fraction")
PEERS = ("random", "zero-shot", "optuna-tpe", "knn")


def aggregate(per_task: Mapping[str, Mapping[str, Any]], contestants: list[str]) -> dict[str, Any]:
    """Median over tasks of every per-task figure; curves as median and quartiles over tasks."""
    out: dict[str, Any] = {}
    for name in contestants:
        rows = [t[name] for t in per_task.values() if name in t]
        if not rows:
            continue
        curves = np.array([r["curve"] for r in rows])
        entry: dict[str, Any] = {
            "tasks": len(rows),
            "regret_at": {f: _median(r["regret_at"][f] for r in rows) for f in rows[0]["regret_at"]},
            "curve_median": [float(x) for x in np.median(curves, axis=0)],
            "curve_q25": [float(x) for x in np.quantile(curves, 0.25, axis=0)],
            "curve_q75": [float(x) for x in np.quantile(curves, 0.75, axis=0)],
            "curve_mean": [float(x) for x in curves.mean(axis=0)],
        }
        for k in AGG_KEYS:
            vals = [r[k] for r in rows]
            # "never reached" (inf) is a value of the time to target; elsewhere None means "no
            # evaluation on that task" (e.g. no mean evaluation time) and is left out.
            entry[k] = float(np.median(vals)) if k == "time_to_zero_shot_best" else _median(vals)
        out[name] = entry
    return out


PEERS_V2 = ("random", "zero-shot", "optuna-tpe", "optuna-tpe-pruned", "knn", "expert")


def targets_v2(agg: Mapping[str, Any], ours: str = "xsearch-es", peers: tuple[str, ...] = PEERS_V2) -> dict[str, Any]:
    """The targets of issue 16 on the median held-out task: ``ours``' regret strictly lower than
    every peer's at 10%, 25% and 100% of the budget, and (with early stopping) zero-shot's final
    best reached within a quarter of the budget."""
    if ours not in agg:
        return {}
    a = agg[ours]
    out: dict[str, Any] = {}
    for f in ("0.10", "0.25", "1.00"):
        r = a["regret_at"][f]
        others = {p: agg[p]["regret_at"][f] for p in peers if p in agg}
        out[f"{ours}_lower_regret_than_every_peer_at_{int(round(float(f) * 100))}pct"] = {
            "met": bool(all(r < v for v in others.values())), "value": r, "peers": others,
            "says": "median over tasks of the mean over seeds of normalised regret; strictly lower than each peer"}
    t = a["time_to_zero_shot_best"]
    out[f"{ours}_reaches_zero_shot_best_within_25pct"] = {
        "met": bool(t <= 0.25), "value": t,
        "says": "median over tasks of the median over seeds of the budget fraction at which the best-so-far "
                "reaches zero-shot's final best (inf: never)"}
    return out


def pooled_error_rate(traces: Iterable[Trace]) -> float:
    evals = [s for t in traces for s in t.evaluations]
    return sum(1 for s in evals if s.error) / len(evals) if evals else 0.0


def targets(agg: Mapping[str, Any], pooled_errors: Mapping[str, float], per_task: Mapping[str, Any] | None = None,
            ours: str = "xsearch", zero_shot: str = "zero-shot", peers: tuple[str, ...] = PEERS) -> dict[str, Any]:
    """The targets of issue 11 on the median held-out task, with the margin of each."""
    a = agg[ours]
    out: dict[str, Any] = {}
    for f in ("0.25", "1.00"):
        r = a["regret_at"][f]
        others = {p: agg[p]["regret_at"][f] for p in peers if p in agg}
        out[f"lower_regret_than_every_peer_at_{int(float(f) * 100)}pct"] = {
            "met": bool(all(r < v for v in others.values())), "value": r, "peers": others,
            "ties_at_zero": sorted(p for p, v in others.items() if v == 0 and r == 0),
            "says": "median over tasks of the mean over seeds of normalised regret; strictly lower than each peer"}
    zs_err, our_err = agg[zero_shot]["error_rate"], a["error_rate"]
    out["error_rate_at_most_third_of_zero_shot"] = {
        "met": bool(our_err <= zs_err / 3 + 1e-12), "value": our_err, "zero_shot": zs_err, "threshold": zs_err / 3,
        "pooled": {ours: pooled_errors.get(ours), zero_shot: pooled_errors.get(zero_shot)},
        "says": "median over tasks of the error rate pooled over seeds (failed evaluations / evaluations)"}
    if per_task is not None:
        worst = max((t[ours]["unspent_with_candidates_max"] for t in per_task.values() if ours in t), default=0.0)
        n_bad = sum(t[ours]["seeds_unspent_over_10pct"] for t in per_task.values() if ours in t)
        out["never_more_than_10pct_unspent_with_candidates_left"] = {
            "met": bool(worst <= 0.10 + 1e-12), "value": worst, "runs_over": n_bad,
            "says": "largest budget fraction left unspent by any run while an unevaluated candidate still fitted"}
    return out
