"""The replay evaluator: answers candidates from logged records of one task instead of training.

Each logged run is mapped to the point of the search space it corresponds to
(``SearchSpace.config_from_record``); asking for a config returns its logged outcome, and the time
"spent" is the logged runtime (so a budget is consumed as the real run consumed it). A failed run
costs its logged runtime too; one that logged none (many stores only time successful runs) costs
an imputed time: the median logged runtime of the task's runs with the same status, else half the
median runtime of its completed runs (a failure usually ends before a success would have;
``failure_cost_s`` sets one figure instead; ``imputed`` lists the configs charged so). Configs
that were never logged raise ``NotLogged``. Used by benchmarks and tests to compare search strategies
on the same ground truth at no training cost.

Early stopping is replayed from the logged learning curves: given ``early_stop`` (a
``xsearch.curves.StopSpec`` dict, as the search hands a live worker), a completed run whose
curve would have been stopped at some evaluation is answered as ``pruned``, costing the time
logged up to that evaluation (its ``elapsed_s``, plus ``overhead_s``); a run without a curve
runs to its logged end. Only runs that were not themselves pruned are replayed (a pruned log
has no end to replay).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Mapping

import pandas as pd

from .curves import CurveModel, StopPoint, StopSpec, replay_stop
from .evaluator import FINISHED, Outcome
from .space import SearchSpace, config_key

REPLAYED = tuple(s for s in FINISHED if s != "pruned")


class NotLogged(LookupError):
    """No logged run of the task matches the config."""


class ReplayEvaluator:
    """Answers from logged records (a list of dicts or a DataFrame of the store).

    Args:
        records: experience records; only those of ``task_name`` (when given) with a finished status are used.
        space: maps each record to a config. overhead_s: time charged on top of each logged runtime
            (process start-up, which records do not log).
    """

    grace_s = 0.0

    def __init__(self, records: Iterable[Mapping[str, Any]] | pd.DataFrame, space: SearchSpace,
                 task_name: str | None = None, overhead_s: float = 0.0, failure_cost_s: float | None = None):
        if isinstance(records, pd.DataFrame):
            records = records.to_dict("records")
        self.space, self.overhead_s = space, overhead_s
        self.index: dict[str, list[dict]] = defaultdict(list)
        for rec in records:
            if task_name is not None and rec.get("task_name") != task_name:
                continue
            if rec.get("status") not in REPLAYED:
                continue
            cfg = space.config_from_record(rec)
            if cfg is not None:
                self.index[config_key(cfg)].append(dict(rec))
        for runs in self.index.values():
            runs.sort(key=lambda r: str(r.get("created_at")))
        self.failure_cost_s = failure_cost_s
        self.imputed_cost_s = self._imputed_costs()
        self.imputed: set[str] = set()
        self.calls = 0
        self.pruned: dict[str, StopPoint] = {}  # config key -> where early stopping stopped it
        self._models: dict[str, CurveModel] = {}

    def _imputed_costs(self) -> dict[str, float]:
        """Imputed seconds per failure status (see the module docstring)."""
        logged: dict[str, list[float]] = defaultdict(list)
        for runs in self.index.values():
            rt = _runtime(runs[0])
            if rt is not None:
                logged[str(runs[0].get("status"))].append(rt)
        done = logged.get("completed")
        fallback = 0.5 * float(pd.Series(done).median()) if done else 0.0
        return {st: float(pd.Series(logged[st]).median()) if logged.get(st) else fallback
                for st in REPLAYED if st != "completed"}

    def __len__(self) -> int:
        return len(self.index)

    def configs(self) -> list[dict[str, Any]]:
        """The configs this evaluator can answer."""
        out = []
        for runs in self.index.values():
            cfg = self.space.config_from_record(runs[0])
            if cfg is not None:
                out.append(cfg)
        return out

    def stop_point(self, rec: Mapping[str, Any], early_stop: Mapping[str, Any] | None) -> StopPoint | None:
        """Where early stopping under ``early_stop`` stops the logged run ``rec`` (None: it does not)."""
        if not early_stop or rec.get("status") != "completed":
            return None
        spec = StopSpec.from_dict(early_stop)
        model = None
        if spec.model:
            key = repr(sorted(spec.model.items()))
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = CurveModel.from_dict(spec.model)
        return replay_stop(rec, spec, model)

    def evaluate(self, config: dict[str, Any], timeout_s: float,
                 early_stop: Mapping[str, Any] | None = None) -> Outcome:
        runs = self.index.get(config_key(config))
        if not runs:
            raise NotLogged(f"no logged run for {config_key(config)}")
        self.calls += 1
        rec = runs[0]
        stop = self.stop_point(rec, early_stop)
        if stop is not None and stop.elapsed_s is not None:
            cost = stop.elapsed_s + self.overhead_s
            if cost <= timeout_s:
                self.pruned[config_key(config)] = stop
                return Outcome(dict(config), "pruned", stop.value, {}, stop.elapsed_s, cost, None,
                               rec.get("record_id"), stop.reason, stopped_at=stop.fraction)
        out = Outcome.from_record(rec, config)
        runtime = out.runtime_s
        if runtime is None and out.status != "completed":
            # A failure costs time even where the store did not log it.
            runtime = self.failure_cost_s if self.failure_cost_s is not None \
                else self.imputed_cost_s.get(out.status, 0.0)
            self.imputed.add(config_key(config))
        cost = (runtime or 0.0) + self.overhead_s
        if cost > timeout_s:
            # The logged run would not have finished in the time this candidate is given.
            return Outcome(dict(config), "timeout", None, {}, out.runtime_s, max(timeout_s, 0.0),
                           None, rec.get("record_id"), "replayed run exceeds the candidate's time limit")
        out.wall_s = cost
        return out

    def close(self) -> None:
        return None


def _runtime(rec: Mapping[str, Any]) -> float | None:
    v = rec.get("outcome_total_runtime_s") or rec.get("outcome_train_runtime_s")
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if v == v and v >= 0 else None
