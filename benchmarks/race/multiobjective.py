"""The multi-objective race: quality against trainable parameters. Each contestant's run on a
held-out task is scored by the hypervolume of the (quality, trainable parameters) front it has
found at 25% and 100% of the budget, normalised by the hypervolume of the front of the task's
whole pool (1 = it found the whole front). Same pools, budgets, replay evaluator and
leave-one-task-out split as the single-objective race (``race.pool``).

Hypervolume in (quality up, log10 trainable parameters down): parameters span orders of
magnitude (a LoRA of a few hundred thousand against a full fine-tuning of a hundred million), so
a linear axis would reward nothing but the cheapest point. Reference point: the worst completed
quality of the task's pool and 0.05 decades above its largest trainable-parameter count.

Contestants: ``random``; ``zero-shot`` and ``xsearch`` (the evolutionary search with
``objective="quality-vs-params"``, without and with experience); Optuna's multi-objective samplers
``optuna-motpe`` (TPE with two objectives) and ``optuna-nsga2`` (NSGA-II, population 8: its default
of 50 would leave it random within these budgets), mapped to the pool as ``optuna-tpe`` is.
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterable, Mapping

import numpy as np

from xsearch.space import Config

from .contestants import (K_SIMILAR, TPE_FAILURE_VALUE, Evolutionary, OptunaTPE, RandomSearch, nearest_pool_proposer,
                          run_in_order, seed_for)
from .pool import Step, TaskPool, Trace

MO_FRACTIONS = (0.25, 1.00)
MO_CURVE_POINTS = 21
OBJECTIVE = "quality-vs-params"


def front_points(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated (quality, cost) points, quality up and cost down, cheapest first."""
    out: list[tuple[float, float]] = []
    best = -math.inf
    for q, c in sorted(set(points), key=lambda p: (p[1], -p[0])):
        if q > best:
            out.append((q, c))
            best = q
    return out


def hypervolume(points: Iterable[tuple[float, float]], ref_quality: float, ref_cost: float) -> float:
    """Area dominated by ``points`` (quality up, cost down) and bounded by the reference point."""
    hv, prev_q = 0.0, ref_quality
    for q, c in front_points(p for p in points if p[0] > ref_quality and p[1] < ref_cost):
        hv += (ref_cost - c) * (q - prev_q)
        prev_q = q
    return hv


class ParetoScale:
    """The hypervolume scale of one task: reference point and the hypervolume of its whole pool."""

    def __init__(self, pool: TaskPool):
        self.pool = pool
        pts = [(e.quality, math.log10(e.trainable_params)) for e in pool.entries.values()
               if e.ok and e.trainable_params and e.trainable_params > 0]
        self.n_points = len(pts)
        if not pts:
            self.ref_quality = self.ref_cost = self.total = math.nan
            return
        self.ref_quality = min(q for q, _ in pts)
        self.ref_cost = max(c for _, c in pts) + 0.05
        self.total = hypervolume(pts, self.ref_quality, self.ref_cost)
        self.front = front_points(pts)

    @property
    def usable(self) -> bool:
        return self.n_points >= 2 and self.total > 0

    def points(self, trace: Trace, t: float) -> list[tuple[float, float]]:
        """(quality, log10 params) of the trace's completed evaluations that ended by second ``t``."""
        out = []
        for s in trace.steps:
            e = self.pool.entries.get(s.key)
            if s.quality is not None and s.t_end <= t + 1e-9 and e is not None and e.trainable_params:
                out.append((s.quality, math.log10(e.trainable_params)))
        return out

    def normalised(self, trace: Trace, fraction: float) -> float:
        """Hypervolume found by ``fraction`` of the budget over the pool's (in [0, 1])."""
        return hypervolume(self.points(trace, fraction * trace.budget_s), self.ref_quality, self.ref_cost) / self.total


class OptunaMultiObjective(OptunaTPE):
    """Optuna's multi-objective samplers over the space's decisions (maximise quality, minimise
    log10 trainable parameters), suggestions mapped to the nearest unevaluated pool config."""

    def __init__(self, sampler: str = "tpe", population: int = 8):
        if sampler not in ("tpe", "nsga2"):
            raise ValueError(f"sampler {sampler!r}: tpe or nsga2")
        self.sampler, self.population = sampler, population
        self.name = "optuna-motpe" if sampler == "tpe" else "optuna-nsga2"

    def run(self, pool: TaskPool, budget_s: float, seed: int) -> Trace:
        import optuna
        from optuna.trial import TrialState, create_trial
        space = pool.space
        rng = random.Random(seed_for(pool.task, seed) + 1)
        s = seed_for(pool.task, seed)
        sampler = (optuna.samplers.TPESampler(seed=s) if self.sampler == "tpe"
                   else optuna.samplers.NSGAIISampler(population_size=self.population, seed=s))
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        known = [e.trainable_params for e in pool.entries.values() if e.trainable_params]
        worst_cost = math.log10(max(known)) + 1.0 if known else 1.0
        pending: dict[str, Any] = {}

        propose = nearest_pool_proposer(study, pool, rng, pending)

        def observe(cfg: Config, step: Step) -> None:
            if step.cut:
                study.tell(pending["trial"], state=TrialState.FAIL)
                return
            e = pool.entries[step.key]
            cost = math.log10(e.trainable_params) if e.trainable_params else worst_cost
            # A failure is told as the worst quality (as optuna-tpe does) at its own cost.
            values = [step.quality if step.quality is not None else TPE_FAILURE_VALUE, cost]
            if pending["exact"]:
                study.tell(pending["trial"], values)
            else:
                study.tell(pending["trial"], state=TrialState.FAIL)
                params = {k: v for k, v in cfg.items() if v is not None}
                study.add_trial(create_trial(params=params, distributions=self._distributions(space, cfg),
                                             values=values))
        return run_in_order(self.name, pool, budget_s, seed, propose, observe)


def mo_contestants(ablations: bool = False) -> list[Any]:
    """random, zero-shot, Optuna's MOTPE and NSGA-II, xsearch: the evolutionary ones optimise
    quality vs trainable parameters (knee incumbent, non-dominated elites). ``ablations`` adds
    xsearch with the single objective (``xs-quality-only``: does the objective matter?)."""
    settings = {"objective": OBJECTIVE}
    out = [RandomSearch(), Evolutionary("zero-shot", warm=False, estimators=False, settings=settings),
           OptunaMultiObjective("tpe"), OptunaMultiObjective("nsga2"),
           Evolutionary("xsearch", warm=True, estimators=True, k=K_SIMILAR, settings=settings)]
    if ablations:
        out.append(Evolutionary("xs-quality-only", warm=True, estimators=True, k=K_SIMILAR))
    return out


def mo_task_summary(scale: ParetoScale, traces: Mapping[str, list[Trace]]) -> dict[str, Any]:
    """Mean over seeds of the normalised hypervolume at the report fractions, and its curve."""
    grid = np.linspace(0.0, 1.0, MO_CURVE_POINTS)
    out: dict[str, Any] = {}
    for name, ts in traces.items():
        out[name] = {
            "hv_at": {f"{f:.2f}": float(np.mean([scale.normalised(t, f) for t in ts])) for f in MO_FRACTIONS},
            "curve": [float(np.mean([scale.normalised(t, f) for t in ts])) for f in grid],
            "front_size_at_end": float(np.mean([len(front_points(scale.points(t, t.budget_s))) for t in ts])),
        }
    return out


def mo_aggregate(per_task: Mapping[str, Mapping[str, Any]], names: list[str]) -> dict[str, Any]:
    """Median (and quartiles) over tasks of each contestant's mean hypervolume."""
    agg: dict[str, Any] = {}
    for n in names:
        rows = [t[n] for t in per_task.values() if n in t]
        curves = np.array([r["curve"] for r in rows])
        agg[n] = {
            "hv_median": {k: float(np.median([r["hv_at"][k] for r in rows])) for k in rows[0]["hv_at"]},
            "hv_mean": {k: float(np.mean([r["hv_at"][k] for r in rows])) for k in rows[0]["hv_at"]},
            "hv_q25": {k: float(np.quantile([r["hv_at"][k] for r in rows], 0.25)) for k in rows[0]["hv_at"]},
            "hv_q75": {k: float(np.quantile([r["hv_at"][k] for r in rows], 0.75)) for k in rows[0]["hv_at"]},
            "curve_median": [float(x) for x in np.median(curves, axis=0)],
            "curve_q25": [float(x) for x in np.quantile(curves, 0.25, axis=0)],
            "curve_q75": [float(x) for x in np.quantile(curves, 0.75, axis=0)],
        }
    return agg


def run_mo_race(records: list[Mapping[str, Any]], space: Any, seeds: int = 10, budget_fraction: float = 0.5,
                tasks: list[str] | None = None, min_pool: int = 3, contestants: list[Any] | None = None,
                progress: bool = False, extra_experience: list[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """Leave-one-task-out race on hypervolume (module docstring). Tasks whose pool has fewer than
    two completed runs with a logged trainable-parameter count are left out (``excluded_tasks``)."""
    from xsearch.estimators import records_frame

    from .pool import hold_out
    exp = records_frame(list(records) + list(extra_experience))
    contestants = contestants if contestants is not None else mo_contestants()
    names = [c.name for c in contestants]
    all_tasks = sorted({str(r.get("task_name")) for r in records if r.get("task_name") is not None})
    per_task: dict[str, Any] = {}
    excluded: dict[str, str] = {}
    for task in (tasks if tasks is not None else all_tasks):
        pool = TaskPool(records, space, task)
        scale = ParetoScale(pool)
        if len(pool) < min_pool or not scale.usable:
            excluded[task] = f"{len(pool)} logged configs, {scale.n_points} completed with trainable parameters"
            continue
        held = hold_out(exp, task)
        budget = budget_fraction * pool.grid_time_s
        traces = {}
        for c in contestants:
            c.prepare(held, pool)
            traces[c.name] = [c.run(pool, budget, s) for s in range(seeds)]
        summary = mo_task_summary(scale, traces)
        per_task[task] = {"pool_size": len(pool), "pool_front_size": len(scale.front), "budget_s": budget,
                          "pool_hypervolume": scale.total, **summary}
        if progress:
            print(f"  {task:<28} pool {len(pool):>2} front {len(scale.front)}  HV@25%: "
                  + "  ".join(f"{n} {summary[n]['hv_at']['0.25']:.2f}" for n in names), flush=True)
    if not per_task:
        raise ValueError(f"no task has {min_pool} logged configs with trainable parameters (excluded: {excluded})")
    return {"meta": {"n_tasks": len(per_task), "tasks": sorted(per_task), "excluded_tasks": excluded, "seeds": seeds,
                     "budget_fraction": budget_fraction, "contestants": names, "fractions": list(MO_FRACTIONS),
                     "objective": OBJECTIVE, "cost": "log10 trainable parameters"},
            "aggregate": mo_aggregate(per_task, names), "per_task": per_task}


def format_mo_table(result: Mapping[str, Any]) -> str:
    agg, names = result["aggregate"], result["meta"]["contestants"]
    lines = [f"Hypervolume of the (quality, trainable parameters) front, normalised by the pool's: median over "
             f"{result['meta']['n_tasks']} held-out tasks (mean over {result['meta']['seeds']} seeds each) [quartiles]",
             f"{'contestant':<14} {'HV@25%':>18} {'HV@100%':>18} {'mean@25%':>9} {'mean@100%':>9}"]
    for n in names:
        a = agg[n]
        cell = {k: f"{a['hv_median'][k]:.3f} [{a['hv_q25'][k]:.2f}-{a['hv_q75'][k]:.2f}]" for k in ("0.25", "1.00")}
        lines.append(f"{n:<14} {cell['0.25']:>18} {cell['1.00']:>18} {a['hv_mean']['0.25']:>9.3f} "
                     f"{a['hv_mean']['1.00']:>9.3f}")
    if result["meta"]["excluded_tasks"]:
        lines.append(f"excluded: {result['meta']['excluded_tasks']}")
    return "\n".join(lines)
