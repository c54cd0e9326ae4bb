"""Learning curves for early stopping: predict a run's final metric, with its uncertainty, from
its partial curve, and decide whether a running candidate can still beat the incumbent.

Two ways to decide, the first that applies:

* **learned** (``CurveModel``): from the completed curves in the store, one least-squares line per
  fraction-of-training bucket (``n_buckets`` equal buckets of [0, 1)) maps the metric at that
  point of training to the final metric, with the residual spread. A linear map from the metric
  now to the metric at the end is task-relative in the way that matters here: it says how much a
  curve still gains, whatever level the task's scores sit at (as the quality estimator compares
  runs within a task). A bucket is used once ``min_curves`` curves back it. The candidate stops
  when even the optimistic end of the prediction (mean + ``z`` x sd, sd inflated for few curves)
  stays below the incumbent at ``patience`` evaluations in a row: less than ~1 % chance (``z`` =
  2.326) to beat it at each, confirmed by the next evaluation (``patience`` = 2), because a
  candidate is asked at every evaluation (a 5 % risk asked ten times is not 5 %) and one
  evaluation on a small set can dip. Chosen on half of meta-dataset v2's tasks among z 1.645 /
  2.326 x patience 1 / 2, reported on the other half (docs/race.md).
* **rules**, while no bucket is backed by enough experience: never before ``min_fraction`` of
  training (50 %); then stop when the best value so far is below the incumbent by more than
  ``k`` x the curve's observed noise (median absolute change between evaluations, at least
  ``min_noise``) and the curve has flattened: extrapolating its last rise (if any) to the end of
  training still leaves it that far below.

All of it works on *signed* values, as the search's quality is (``xsearch.tasks``): the metric
when greater is better, its negation otherwise (a causal LM's ``eval_loss``), so "below the
incumbent" always means worse. ``StopSpec.greater_is_better`` / ``CurveModel.greater_is_better``
say which; messages show the metric as logged.

Never: before the first evaluation, at or after the end of training, without an incumbent
(``StopSpec.incumbent`` None: the search tells no candidate to stop before its first few
candidates have finished), or on a metric the curve does not hold.

The same ``should_stop`` runs in the worker (at each evaluation of a live candidate) and in the
replay (``replay_stop``: walk a logged curve's evaluations and stop where the live run would
have; the stopped candidate costs the time logged at that point).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["CurveModel", "StopPoint", "StopSpec", "curve_points", "eval_series", "replay_stop", "should_stop"]

OBJECTIVE = "eval_f1"  # the search's objective (what Outcome.quality holds)


def curve_points(value: Any) -> list[dict[str, Any]]:
    """A record's ``curve`` as a list of point dicts, whichever reader produced it (a list, a numpy
    array of dicts from DuckDB/pandas, None or NaN)."""
    if value is None or isinstance(value, float):
        return []
    try:
        return [dict(p) for p in value if isinstance(p, Mapping)]
    except TypeError:
        return []


def eval_series(points: Iterable[Mapping[str, Any]], metric: str = OBJECTIVE,
                max_steps: float | None = None,
                greater_is_better: bool = True) -> list[tuple[float, float, float | None, int]]:
    """(fraction of training, signed value, elapsed seconds, step) of one evaluation metric, in
    step order. ``fraction`` is step / ``max_steps`` (the planned steps); without it, the last
    step. The value is negated when lower is better (the search's signed quality)."""
    sign = 1.0 if greater_is_better else -1.0
    pts = sorted((p for p in points if p.get("kind") == "eval" and p.get("name") == metric
                  and isinstance(p.get("value"), (int, float)) and math.isfinite(float(p["value"]))),
                 key=lambda p: int(p.get("step") or 0))
    if not pts:
        return []
    total = float(max_steps) if max_steps and max_steps > 0 else float(max(int(p.get("step") or 0) for p in pts) or 1)
    out = []
    for p in pts:
        el = p.get("elapsed_s")
        out.append((min(int(p.get("step") or 0) / total, 1.0), sign * float(p["value"]),
                    float(el) if isinstance(el, (int, float)) and math.isfinite(float(el)) else None,
                    int(p.get("step") or 0)))
    return out


@dataclass(frozen=True)
class BucketFit:
    """final = intercept + slope x value-at-this-fraction, residual sd, over ``n`` curves."""

    intercept: float
    slope: float
    resid_sd: float
    n: int


class CurveModel:
    """Predicts the final value of ``metric`` from its value at a fraction of training (module
    docstring), both signed (negated when ``greater_is_better`` is false: a loss). scikit-learn's
    conventions: ``__init__`` stores parameters, ``fit`` learns ``buckets_``;
    ``to_dict``/``from_dict`` carry it to a worker in the candidate's job."""

    def __init__(self, metric: str = OBJECTIVE, n_buckets: int = 10, min_curves: int = 8, min_sd: float = 0.01,
                 greater_is_better: bool = True):
        self.metric, self.n_buckets, self.min_curves, self.min_sd = metric, int(n_buckets), int(min_curves), float(min_sd)
        self.greater_is_better = bool(greater_is_better)
        self.buckets_: dict[int, BucketFit] = {}
        self.n_curves_ = 0

    def bucket(self, fraction: float) -> int:
        return min(max(int(fraction * self.n_buckets), 0), self.n_buckets - 1)

    def fit(self, records: Any) -> "CurveModel":
        """Learn from completed records with a curve of ``metric`` that reaches the end of training
        (a list of record dicts or a DataFrame of the store). Pruned, failed and curve-less records
        are left out: they have no final value to learn."""
        rows = records.to_dict("records") if hasattr(records, "to_dict") else list(records)
        pairs: dict[int, list[tuple[float, float]]] = {}
        n = 0
        for rec in rows:
            if rec.get("status") != "completed":
                continue
            series = eval_series(curve_points(rec.get("curve")), self.metric, _num(rec.get("train_max_steps")),
                                 self.greater_is_better)
            if len(series) < 2 or series[-1][0] < 0.95:
                continue
            final = series[-1][1]
            n += 1
            at: dict[int, float] = {}
            for f, v, _, _ in series[:-1]:
                if f < 1.0:
                    at[self.bucket(f)] = v  # the last evaluation in each bucket
            for b, v in at.items():
                pairs.setdefault(b, []).append((v, final))
        self.n_curves_ = n
        self.buckets_ = {}
        for b, pts in pairs.items():
            if len(pts) < self.min_curves:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            sxx = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 1e-12 else 0.0
            intercept = my - slope * mx
            resid = sum((y - intercept - slope * x) ** 2 for x, y in pts) / max(len(pts) - 2, 1)
            self.buckets_[b] = BucketFit(intercept, slope, math.sqrt(resid), len(pts))
        return self

    @property
    def is_fitted(self) -> bool:
        return bool(self.buckets_)

    def predict(self, fraction: float, value: float) -> tuple[float, float, int] | None:
        """(mean, sd, curves behind it) of the final signed value from the signed ``value`` now, or
        None where no bucket is learned."""
        fit = self.buckets_.get(self.bucket(fraction))
        if fit is None:
            return None
        sd = max(fit.resid_sd, self.min_sd) * math.sqrt(1.0 + 1.0 / fit.n)  # few curves: wider
        return fit.intercept + fit.slope * value, sd, fit.n

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "n_buckets": self.n_buckets, "min_curves": self.min_curves,
                "min_sd": self.min_sd, "greater_is_better": self.greater_is_better, "n_curves": self.n_curves_,
                "buckets": {str(b): asdict(f) for b, f in sorted(self.buckets_.items())}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "CurveModel":
        m = cls(doc.get("metric", OBJECTIVE), int(doc.get("n_buckets", 10)), int(doc.get("min_curves", 8)),
                float(doc.get("min_sd", 0.01)), bool(doc.get("greater_is_better", True)))
        m.n_curves_ = int(doc.get("n_curves", 0))
        m.buckets_ = {int(b): BucketFit(**f) for b, f in (doc.get("buckets") or {}).items()}
        return m


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class StopSpec:
    """What a running candidate needs to decide, at each evaluation, whether to stop (it travels
    in the candidate's job as ``to_dict``). ``incumbent``: the signed value of ``metric`` to beat
    (the search's quality: the metric, negated when ``greater_is_better`` is false); None:
    evaluate ``evals_per_epoch`` times per epoch (the curve is recorded) but never stop.
    ``model``: a ``CurveModel.to_dict`` of the same metric and direction (None: rules only)."""

    incumbent: float | None = None
    metric: str = OBJECTIVE
    greater_is_better: bool = True
    model: Mapping[str, Any] | None = None
    evals_per_epoch: int = 4
    z: float = 2.326
    patience: int = 2
    k: float = 2.0
    min_fraction: float = 0.5
    min_noise: float = 0.01
    extra: dict[str, Any] = field(default_factory=dict)  # provenance (e.g. the incumbent's record)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> "StopSpec":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (doc or {}).items() if k in known})

    def shown(self, value: float) -> float:
        """A signed value as the metric is logged (for messages)."""
        return value if self.greater_is_better else -value


def should_stop(spec: StopSpec, series: Sequence[tuple[float, float, Any, Any]],
                model: CurveModel | None = None) -> str | None:
    """Why the candidate should stop now (None: go on), from its ``eval_series`` so far (signed
    values, in the direction ``spec.greater_is_better`` says): only when the verdict is "stop" at
    this evaluation and the ``patience - 1`` before it."""
    if spec.incumbent is None or not series:
        return None
    if model is None and spec.model:
        model = CurveModel.from_dict(spec.model)
    why = _stop_here(spec, series, model)
    patience = max(int(spec.patience), 1)
    if why is None or patience == 1:
        return why
    if len(series) < patience or any(_stop_here(spec, series[:-back], model) is None for back in range(1, patience)):
        return None
    return f"{why} (at {patience} evaluations in a row)"


def _stop_here(spec: StopSpec, series: Sequence[tuple[float, float, Any, Any]],
               model: CurveModel | None) -> str | None:
    """The verdict at the last evaluation of ``series`` alone."""
    f, v = series[-1][0], series[-1][1]
    if f >= 1.0:
        return None  # training is over anyway
    inc = float(spec.incumbent)
    learned = model.predict(f, v) if model is not None else None
    if learned is not None:
        mu, sd, n = learned
        if mu + spec.z * sd < inc:
            return (f"learning curve at {f:.0%} of training: {spec.metric} {spec.shown(v):.4f}; predicted final "
                    f"{spec.shown(mu):.4f} +- {sd:.4f} (learned from {n} curves) cannot reach the incumbent's "
                    f"{spec.shown(inc):.4f}")
        return None
    if f < spec.min_fraction:
        return None
    values = [s[1] for s in series]
    diffs = [abs(b - a) for a, b in zip(values, values[1:])]
    noise = max(sorted(diffs)[len(diffs) // 2] if diffs else 0.0, spec.min_noise)
    best = max(values)
    if inc - best <= spec.k * noise:
        return None
    rise = 0.0
    if len(series) >= 2 and f > series[-2][0]:
        rise = max((v - series[-2][1]) / (f - series[-2][0]), 0.0) * (1.0 - f)
    if max(best, v + rise) + spec.k * noise >= inc:
        return None  # still rising: it may get there
    return (f"learning curve at {f:.0%} of training: best {spec.metric} so far {spec.shown(best):.4f}, worse than "
            f"the incumbent's {spec.shown(inc):.4f} by more than {spec.k:g} x its noise ({noise:.4f}) and flat (rule: no learned curve model "
            "for this point of training yet)")


@dataclass(frozen=True)
class StopPoint:
    """Where a replayed candidate stops: its fraction of training, step, the time logged up to
    that evaluation, the metric's signed value there (the search's quality), and why."""

    fraction: float
    step: int
    elapsed_s: float | None
    value: float
    reason: str


def replay_stop(record: Mapping[str, Any], spec: StopSpec, model: CurveModel | None = None) -> StopPoint | None:
    """Where a run logged as ``record`` would have been stopped under ``spec``: its evaluations are
    walked in order and ``should_stop`` asked at each, as the worker asks live (None: it runs to
    its end, or its record has no curve of the metric)."""
    if spec.incumbent is None:
        return None
    series = eval_series(curve_points(record.get("curve")), spec.metric, _num(record.get("train_max_steps")),
                         spec.greater_is_better)
    if model is None and spec.model:
        model = CurveModel.from_dict(spec.model)
    for i in range(len(series)):
        why = should_stop(spec, series[: i + 1], model)
        if why is not None:
            f, v, el, step = series[i]
            return StopPoint(f, step, el, v, why)
    return None
