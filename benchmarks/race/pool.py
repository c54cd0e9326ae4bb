"""The ground truth of one race: the held-out task's logged runs as a finite candidate pool, and
the experience a contestant may learn from (every OTHER task's records, never the held-out one).

Every contestant evaluates candidates through the same ``xsearch.replay.ReplayEvaluator``: the
logged run answers, the time charged is its logged runtime, a failed/oom/timeout run costs its
logged runtime and is an error, and a run that does not fit in what is left of the budget is cut
at the budget's end (it charges the rest of the budget and gives nothing: the budget is over).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from xsearch.evaluator import Outcome
from xsearch.features import task_features_of
from xsearch.replay import ReplayEvaluator
from xsearch.space import Config, SearchSpace, config_key

#: Logged statuses that count as a failed evaluation (errors).
ERROR_STATUSES = ("failed", "oom", "timeout")
#: No candidate is started with less than this much budget left (same rule for every contestant).
MIN_CANDIDATE_S = 1.0


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The meta-dataset's records (schema-aware read: metrics as dicts, timestamps as datetimes)."""
    import pyarrow.parquet as pq

    from xlog import schema as S
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no meta-dataset at {path} (run benchmarks/metadataset/export.py)")
    return S.table_to_records(pq.read_table(path))


@dataclass(frozen=True)
class Entry:
    """One logged configuration of the held-out task, as the replay evaluator answers it."""

    config: Config
    key: str
    status: str
    quality: float | None
    cost_s: float
    energy_kwh: float
    trainable_params: float | None = None  # the record's ft_trainable_params (the multi-objective race's cost)

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.quality is not None


@dataclass(frozen=True)
class Step:
    """One evaluation in a contestant's run: what it cost and gave, and when it ended (budget seconds)."""

    key: str
    # the logged status; "cut" when the budget ended during the run; "pruned" when early stopping
    # (replayed from the logged learning curve) stopped it: it cost its time up to the stop and
    # gives no final model (no quality), and it is not an error
    status: str
    quality: float | None
    cost_s: float
    energy_kwh: float
    t_end: float

    @property
    def cut(self) -> bool:
        return self.status == "cut"

    @property
    def error(self) -> bool:
        return self.status in ERROR_STATUSES


@dataclass
class Trace:
    """A contestant's run on one held-out task with one seed."""

    contestant: str
    task: str
    seed: int
    budget_s: float
    steps: list[Step] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    stop_reason: str = ""

    @property
    def used_s(self) -> float:
        return self.steps[-1].t_end if self.steps else 0.0

    @property
    def evaluations(self) -> list[Step]:
        """Finished evaluations (a run cut by the end of the budget is not one)."""
        return [s for s in self.steps if not s.cut]


class TaskPool:
    """The held-out task's logged runs, answered by xsearch's replay evaluator.

    ``records`` may hold every task's records: only ``task_name``'s finished runs that map to a
    point of ``space`` form the pool (the meta-dataset's fixed grid, as far as it was run).
    """

    def __init__(self, records: Iterable[Mapping[str, Any]] | pd.DataFrame, space: SearchSpace, task_name: str):
        self.task = task_name
        self.space = space
        self.evaluator = ReplayEvaluator(records, space, task_name=task_name)
        self.entries: dict[str, Entry] = {}
        for cfg in self.evaluator.configs():
            out = self.evaluator.evaluate(cfg, math.inf)
            self.entries[config_key(cfg)] = Entry(cfg, config_key(cfg), out.status, out.quality,
                                                  float(out.wall_s), float(out.energy_kwh or 0.0),
                                                  getattr(out, "trainable_params", None))
        self.evaluator.calls = 0
        ok = [e.quality for e in self.entries.values() if e.ok]
        self.best_quality: float | None = max(ok) if ok else None
        self.worst_quality: float | None = min(ok) if ok else None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def configs(self) -> list[Config]:
        return [dict(e.config) for e in self.entries.values()]

    @property
    def keys(self) -> list[str]:
        return list(self.entries)

    @property
    def grid_time_s(self) -> float:
        """Time to run every logged configuration of the task once (what an exhaustive search costs)."""
        return float(sum(e.cost_s for e in self.entries.values()))

    @property
    def n_errors(self) -> int:
        return sum(1 for e in self.entries.values() if e.status in ERROR_STATUSES)

    def regret(self, quality: float | None) -> float:
        """Normalised regret of a best-so-far quality: (best - q) / (best - worst) over the task's
        completed logged runs, in [0, 1]; 1 when nothing completed yet."""
        if quality is None or self.best_quality is None:
            return 1.0
        span = self.best_quality - (self.worst_quality or 0.0)
        if span <= 0:
            return 0.0 if quality >= self.best_quality else 1.0
        return min(1.0, max(0.0, (self.best_quality - quality) / span))

    def evaluate(self, cfg: Config, remaining_s: float, t_before: float) -> Step:
        """Evaluate through the replay evaluator with the rest of the budget as the time limit."""
        out = self.evaluator.evaluate(cfg, remaining_s)
        return self.step(cfg, out, float(out.wall_s), t_before + float(out.wall_s))

    def record(self, cfg: Config) -> dict[str, Any]:
        """The logged run that answers ``cfg`` (its learning curve, for contestants that stop early)."""
        return self.evaluator.index[config_key(cfg)][0]

    def pruned_step(self, cfg: Config, charged_s: float, t_end: float) -> Step:
        """A run stopped early after ``charged_s`` of its logged time."""
        entry = self.entries[config_key(cfg)]
        share = min(charged_s / entry.cost_s, 1.0) if entry.cost_s > 0 else 0.0
        return Step(entry.key, "pruned", None, charged_s, entry.energy_kwh * share, t_end)

    def step(self, cfg: Config, out: Outcome, charged_s: float, t_end: float) -> Step:
        """A step from a replayed outcome; a run charged less than its logged cost was cut by the
        budget, unless early stopping pruned it (``out.status == "pruned"``)."""
        if out.status == "pruned":
            return self.pruned_step(cfg, charged_s, t_end)
        entry = self.entries[config_key(cfg)]
        if charged_s + 1e-9 < entry.cost_s:
            share = charged_s / entry.cost_s if entry.cost_s > 0 else 0.0
            return Step(entry.key, "cut", None, charged_s, entry.energy_kwh * share, t_end)
        return Step(entry.key, entry.status, entry.quality if entry.ok else None, charged_s, entry.energy_kwh, t_end)


@dataclass
class HeldOut:
    """What a contestant may know when the race holds out ``task``: the task's meta-features
    (computed from its data, before any run), the hardware, and other tasks' experience."""

    task: str
    features: dict[str, Any]
    hardware: dict[str, Any]
    experience: pd.DataFrame  # records of every other task; never a record of ``task``


def hold_out(experiences: pd.DataFrame, task: str) -> HeldOut:
    """Split the meta-dataset for one held-out task (the only place the split happens)."""
    own = experiences[experiences["task_name"] == task]
    if len(own) == 0:
        raise ValueError(f"task {task!r} has no records")
    others = experiences[experiences["task_name"].astype(object).ne(task) | experiences["task_name"].isna()]
    features = task_features_of(experiences, task)  # task_* columns only: no outcome is read
    hw_cols = [c for c in experiences.columns if c.startswith("hw_")]
    hardware = {}
    for c in hw_cols:
        vals = own[c].dropna()
        if len(vals):
            v = vals.mode().iloc[0] if vals.map(lambda x: not isinstance(x, (list, dict))).all() else vals.iloc[0]
            hardware[c] = v.item() if hasattr(v, "item") else v
    return HeldOut(task, features, hardware, others.reset_index(drop=True))
