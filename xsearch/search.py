"""The search algorithm only: ``ask()`` gives the next candidate, ``tell(config, outcome)`` learns
from one. Budgets, evaluators, journals and reports belong to the runner (``xsearch.runner``).

A probabilistic evolutionary search of the AutoGOAL family: one categorical distribution per
decision of the space, moved towards the best candidates of every ``population`` outcomes told
(``learning_rate``), with ``exploration`` of the uniform distribution mixed in so that no value
becomes impossible. The initial distribution is uniform (zero-shot) or warm-started from the
most similar past tasks, and the first candidates can be *seeds*: the best configurations of
those tasks.

Estimators *order* candidates, they do not remove them. Among up to ``choose_from`` admissible
draws, the candidate with the highest expected improvement x (1 - p_fail) per expected second
runs first, where a failure costs its expected time to fail. Quality predictions are relative to
the task (comparable only within it); they are recalibrated online against this task's own
results (a linear map from predicted to observed quality once three runs completed), and the
failure probability is shifted by this task's observed failure rate. A hard skip is only for a
candidate that cannot fit what is left of the budget (by a runtime calibrated on this machine:
transferred runtimes only order candidates until a run of this search calibrates them), or whose calibrated failure probability is
near-certain (``p_fail_skip``) with enough records of its model behind it, or that is at least
as memory-hungry as a run of this search that ran out of memory. Every skip is logged with its
reason (``skip_log``).

Early stopping (``early_stop``): once ``early_stop_after`` candidates have finished and one
completed, every new candidate gets a ``StopSpec`` (``stop_spec``): the incumbent's quality and
the learning-curve model learned from the store (``xsearch.curves``); its worker then stops it
(status ``pruned``) when its curve cannot beat the incumbent. A pruned outcome costs its time,
is neither a failure (failure rates ignore it) nor an incumbent or elite member (it has no final
quality), and its time per epoch informs the cost model.
"""
from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from xlog.schema import finite_or_none

from .curves import OBJECTIVE, CurveModel, StopSpec
from .evaluator import Outcome
from .space import Config, Distribution, SearchSpace, config_key
from .tasks import objective_of

log = logging.getLogger("xsearch.search")

SKIP_REASONS = ("predicted_failure", "predicted_overrun", "predicted_energy_overrun", "not_logged")
FAILED = ("failed", "oom", "timeout")
#: What the incumbent means (``SearchSettings.objective``, ``xsearch run --objective``): the best
#: quality, or a point of the quality-vs-cost Pareto front (see ``incumbent_of``).
OBJECTIVES = ("quality", "quality-vs-params", "quality-vs-runtime", "quality-vs-energy")
#: The costs a front is drawn against: trainable parameters, runtime (s), energy (kWh).
COSTS = ("params", "runtime", "energy")


@dataclass(frozen=True)
class SearchSettings:
    """Knobs of the search and its budget (the manifest stores them with ``to_dict``)."""

    budget_s: float = 600.0
    energy_budget_kwh: float | None = None
    max_evals: int | None = None
    population: int = 4
    selection: float = 0.5  # fraction of a generation that pulls the distribution
    learning_rate: float = 0.3
    exploration: float = 0.1  # share of the uniform distribution always mixed in
    seed: int = 0
    # Hard skip for predicted failure only when near-certain and backed by enough records.
    p_fail_skip: float = 0.95
    min_fail_support: int = 5
    max_candidate_s: float | None = None
    reserve_s: float = 2.0  # kept back for writing the reports
    min_candidate_s: float = 5.0  # below this, no candidate is worth starting
    max_draws: int = 12  # draws per ask over an open space (a finite candidate list is drawn to exhaustion)
    # With quality predictions, up to this many admissible draws are ranked by expected gain per
    # expected second and the best runs (settings chosen on the constructed split: docs/race.md).
    choose_from: int = 8
    # Spread of a relative quality prediction when the estimators give none (``quality_sd``).
    quality_sd: float = 0.15
    # The best configurations of the most similar past tasks run first (at most this many).
    n_seeds: int = 2
    # A failing run's time as a share of a successful one's, when the estimators cannot tell.
    fail_time_fraction: float = 0.5
    # Pseudo-observations that hold the failure calibration near the estimators' prediction.
    fail_prior_n: float = 5.0
    max_idle_generations: int = 3
    # Early stopping of candidates whose learning curve cannot beat the incumbent (xsearch.curves):
    # never before this many candidates have finished; evaluations per epoch that give the curve.
    early_stop: bool = True
    early_stop_after: int = 3
    evals_per_epoch: int = 4
    # How sure a stop must be: StopSpec's z and patience (their defaults, chosen in benchmarks/es_settings.py).
    early_stop_z: float = StopSpec.z
    early_stop_patience: int = StopSpec.patience
    # What the incumbent means (OBJECTIVES). Two-objective: the cheapest run of the front whose
    # quality is within ``knee_tolerance`` of the best quality (``incumbent_of``); generations
    # then pull the distribution towards the front (non-dominated first), not only the best quality.
    objective: str = "quality"
    knee_tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r}: choose one of {', '.join(OBJECTIVES)}")
        if not (self.knee_tolerance >= 0 and math.isfinite(self.knee_tolerance)):
            raise ValueError(f"knee_tolerance must be a number >= 0, not {self.knee_tolerance!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "SearchSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in known})


@dataclass
class Proposal:
    """A candidate to evaluate, with what was predicted for it and why it was chosen."""

    config: Config
    predicted: dict[str, float] = field(default_factory=dict)
    source: str = "sampled"  # seed | ranked | sampled

    @property
    def key(self) -> str:
        return config_key(self.config)


@dataclass(frozen=True)
class Skip:
    """A candidate the search did not run, and why (journalled in the manifest)."""

    config: Config
    reason: str
    predicted: dict[str, float]

    @property
    def key(self) -> str:
        return config_key(self.config)


def best_of(outcomes: Iterable[Outcome]) -> Outcome | None:
    ok = [o for o in outcomes if o.ok]
    return max(ok, key=lambda o: (o.quality, -(o.runtime_s or o.wall_s or 0.0))) if ok else None


def _cost(o: Outcome) -> float:
    return float(o.runtime_s if o.runtime_s is not None else o.wall_s)


def pareto_front(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """Completed outcomes not dominated in (quality up, runtime down, energy down when all have it)."""
    ok = [o for o in outcomes if o.ok]
    use_energy = bool(ok) and all(o.energy_kwh is not None for o in ok)

    def objs(o: Outcome) -> tuple[float, ...]:
        t = (-float(o.quality), _cost(o))  # type: ignore[arg-type]
        return t + ((float(o.energy_kwh),) if use_energy else ())  # type: ignore[arg-type]
    front = []
    for o in ok:
        a = objs(o)
        dominated = any(all(x <= y for x, y in zip(objs(p), a)) and objs(p) != a for p in ok if p is not o)
        if not dominated:
            front.append(o)
    # Identical objective vectors: keep one of each.
    seen, out = set(), []
    for o in sorted(front, key=lambda o: (_cost(o), -float(o.quality))):  # type: ignore[arg-type]
        if objs(o) not in seen:
            seen.add(objs(o))
            out.append(o)
    return out


def cost_of(o: Outcome, cost: str) -> float | None:
    """An outcome's cost: ``params`` (trainable parameters), ``runtime`` (s: the record's, else the
    wall time charged) or ``energy`` (kWh); None when unknown."""
    if cost == "params":
        v = getattr(o, "trainable_params", None)
    elif cost == "runtime":
        v = o.runtime_s if o.runtime_s is not None else o.wall_s
    elif cost == "energy":
        v = o.energy_kwh
    else:
        raise ValueError(f"cost {cost!r}: choose one of {', '.join(COSTS)}")
    return finite_or_none(v)


def objective_cost(objective: str) -> str | None:
    """``quality-vs-params`` -> ``params``; ``quality`` -> None."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    return None if objective == "quality" else objective.split("-vs-", 1)[1]


def front_2d(outcomes: Iterable[Outcome], cost: str) -> list[Outcome]:
    """Completed outcomes with a known ``cost`` not dominated in (quality up, cost down), cheapest
    first (one per objective vector)."""
    pts = sorted(((cost_of(o, cost), -float(o.quality), i, o) for i, o in enumerate(outcomes)  # type: ignore[arg-type]
                  if o.ok and cost_of(o, cost) is not None), key=lambda t: (t[0], t[1], t[2]))
    out, best = [], -math.inf
    for c, negq, _, o in pts:
        if -negq > best:  # strictly better than every cheaper (or equally cheap) point
            out.append(o)
            best = -negq
    return out


def incumbent_of(outcomes: Iterable[Outcome], objective: str = "quality", tolerance: float = 0.01) -> Outcome | None:
    """The run a search recommends. ``quality``: the best quality (ties: the fastest). Two
    objectives (quality vs a cost): the knee of the front read as "as good, for less": among the
    front's runs whose quality is within ``tolerance`` of the best quality, the cheapest one.
    Runs whose cost is unknown only count when no run has it (then: the best quality)."""
    outs = list(outcomes)
    cost = objective_cost(objective)
    if cost is None:
        return best_of(outs)
    front = front_2d(outs, cost)
    if not front:
        return best_of(outs)
    top = max(float(o.quality) for o in front)  # type: ignore[arg-type]
    near = [o for o in front if float(o.quality) >= top - tolerance]  # type: ignore[arg-type]
    return min(near, key=lambda o: cost_of(o, cost))  # type: ignore[arg-type,return-value]


def nondominated_order(outcomes: list[Outcome], cost: str) -> list[Outcome]:
    """Completed outcomes ordered by Pareto layer in (quality up, cost down), best quality first
    within a layer; runs without a known cost come after the layers, by quality."""
    rest = [o for o in outcomes if o.ok]
    ordered: list[Outcome] = []
    while True:
        layer = front_2d(rest, cost)
        if not layer:
            break
        ids = {id(o) for o in layer}
        ordered += sorted(layer, key=lambda o: -float(o.quality))  # type: ignore[arg-type]
        rest = [o for o in rest if id(o) not in ids]
    return ordered + sorted(rest, key=lambda o: -float(o.quality))  # type: ignore[arg-type]


def update_distribution(space: SearchSpace, dist: Distribution, elite: list[Config], learning_rate: float,
                        exploration: float) -> Distribution:
    """Move each decision towards the elite's values (only over elite members where it is active)."""
    new: Distribution = {}
    for p in space.parameters:
        old = dist[p.name]
        chosen = [c.get(p.name) for c in elite if p.active(c) and c.get(p.name) is not None]
        if not chosen:
            new[p.name] = dict(old)
            continue
        counts = Counter(chosen)
        new[p.name] = {v: (1 - learning_rate) * old.get(v, 0.0) + learning_rate * counts.get(v, 0) / len(chosen)
                       for v in p.values}
    return space.normalise(new, floor=exploration)


class OnlineCost:
    """Cost of candidates learned from this search's own finished runs: wall seconds per epoch
    (same model and method, else same model, else any model), and the start-up overhead records
    do not log."""

    def __init__(self) -> None:
        self.per_epoch: dict[tuple, list[float]] = {}
        self.lower_bounds: dict[tuple, list[float]] = {}  # from timeouts: the run cost at least this
        self.overheads: list[float] = []
        self.ooms: list[Config] = []

    def observe(self, o: Outcome) -> None:
        cfg = o.config
        if o.status == "oom":
            self.ooms.append(cfg)
        # A timeout is a lower bound of the run's cost: still the best estimate of its rate; a pruned
        # run's rate over the part of training it did is one too (start-up weighs more in it).
        pruned = o.status == "pruned" and bool(o.stopped_at)
        if o.status not in ("completed", "timeout") and not pruned:
            return
        epochs = float(cfg.get("train_epochs") or 1) * (float(o.stopped_at) if pruned else 1.0)  # type: ignore[arg-type]
        table = self.per_epoch if o.status == "completed" else self.lower_bounds
        for key in self._keys(cfg):
            table.setdefault(key, []).append(o.wall_s / epochs)
        if o.status == "completed" and o.runtime_s is not None and o.wall_s >= o.runtime_s:
            self.overheads.append(o.wall_s - o.runtime_s)

    @staticmethod
    def _keys(cfg: Config) -> list[tuple]:
        return [(cfg.get("model_name"), cfg.get("ft_method")), (cfg.get("model_name"),), ()]

    @property
    def overhead_s(self) -> float:
        return _median(self.overheads) if self.overheads else 3.0

    def wall_s(self, cfg: Config, any_model: bool = True) -> float | None:
        """Predicted wall seconds from the most specific finished runs: same model and method, else
        same model, else (``any_model``) any model."""
        keys = self._keys(cfg) if any_model else self._keys(cfg)[:2]
        rates = next((self.per_epoch[k] for k in keys if self.per_epoch.get(k)), None)
        if not rates:
            rates = self.lower_bounds.get(self._keys(cfg)[0])
        if not rates:
            return None
        return _median(rates) * float(cfg.get("train_epochs") or 1)

    def likely_oom(self, cfg: Config) -> bool:
        """At least as large (batch, sequence length) as a run of the same model+method that ran out of memory."""
        for bad in self.ooms:
            if bad.get("model_name") == cfg.get("model_name") and bad.get("ft_method") == cfg.get("ft_method") \
                    and _ge(cfg.get("train_batch_size"), bad.get("train_batch_size")) \
                    and _ge(cfg.get("train_max_seq_length"), bad.get("train_max_seq_length")):
                return True
        return False


def _ge(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a == b
    return float(a) >= float(b)


def _norm_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def expected_improvement(mu: float, sd: float, ref: float) -> float:
    """E[max(X - ref, 0)] for X ~ Normal(mu, sd)."""
    sd = max(sd, 1e-9)
    z = (mu - ref) / sd
    return (mu - ref) * _norm_cdf(z) + sd * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class _Union:
    """Membership in any of several containers (without copying them)."""

    def __init__(self, *parts: Any) -> None:
        self.parts = parts

    def __contains__(self, key: object) -> bool:
        return any(key in p for p in self.parts)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


@dataclass(frozen=True)
class QualityCalibration:
    """How predicted (task-relative) quality maps to this task's observed quality.

    ``mode``: ``relative`` (too few completed runs: compare predictions with the incumbent's
    prediction), ``calibrated`` (observed = intercept + slope x predicted, residual spread
    ``resid_sd``), or ``uninformative`` (the predictions rank this task's runs backwards)."""

    mode: str
    intercept: float = 0.0
    slope: float = 1.0
    resid_sd: float = 0.0
    n: int = 0


class EvolutionarySearch:
    """ask/tell search over ``space`` (or over the finite list ``candidates`` of its configs).

    ``predictor(configs) -> DataFrame`` comes from the estimators (columns ``quality`` (task-relative),
    ``quality_sd``, ``runtime_s``, ``fail_runtime_s``, ``energy_kwh``, ``p_fail``, ``fail_support``;
    NaN where unknown). ``seeds`` are configs to try first, in order (the best ones of similar tasks).
    """

    def __init__(self, space: SearchSpace, settings: SearchSettings, *,
                 initial_distribution: Distribution | None = None,
                 predictor: Callable[[list[Config]], pd.DataFrame] | None = None,
                 candidates: Iterable[Config] | None = None, seeds: Iterable[Config] = (),
                 curve_model: CurveModel | None = None):
        self.space, self.settings = space, settings
        self.curve_model = curve_model
        self.candidates = [dict(c) for c in candidates] if candidates is not None else None
        self.initial = space.normalise(initial_distribution or space.uniform(), floor=settings.exploration)
        self.dist = {k: dict(v) for k, v in self.initial.items()}
        self.predictor = predictor
        self.seeds = [dict(c) for c in seeds][: max(settings.n_seeds, 0)]
        self.rng = random.Random(settings.seed)
        self.results: dict[str, Outcome] = {}
        self.pending: dict[str, Proposal] = {}
        self.skipped: Counter = Counter()
        self.skip_log: list[Skip] = []
        self._skipped_keys: set[str] = set()  # every candidate skipped once (counted once)
        self._ruled_out: set[str] = set()  # skipped for good: predicted failures
        self._raw: dict[str, dict[str, float]] = {}  # the predictor's answers, per config key
        self.predicted: dict[str, dict[str, float]] = {}  # what was predicted when each candidate ran
        self.cost = OnlineCost()
        self.generation = 0
        self._batch: list[Outcome] = []

    # ---- predictions -----------------------------------------------------------------------
    def _raw_prediction(self, cfg: Config) -> dict[str, float]:
        key = config_key(cfg)
        if key not in self._raw:
            pred: dict[str, float] = {}
            if self.predictor is not None:
                try:
                    row = self.predictor([cfg]).iloc[0]
                    pred = {k: float(v) for k, v in row.items() if finite_or_none(v) is not None}
                except Exception as exc:  # a broken estimator must not stop the search
                    log.warning("estimators failed to predict (%s: %s); going on without them",
                                type(exc).__name__, exc)
                    self.predictor = None
            self._raw[key] = pred
        return self._raw[key]

    def predict(self, cfg: Config) -> dict[str, float]:
        """The estimators' prediction, with wall seconds and failure calibrated to this search."""
        pred = dict(self._raw_prediction(cfg))
        online = self.cost.wall_s(cfg, any_model=False)
        ratio, n_ratio = self._runtime_ratio()
        # ``wall_calibrated``: the wall time is known on this machine and task (this search's own
        # runs). Only then can it rule a candidate out; a transferred runtime (other hardware,
        # other data sizes) only orders candidates until a run calibrates it.
        if online is not None:
            pred["wall_s"] = online  # this machine, this task, this model: better than any transfer
            pred["wall_calibrated"] = 1.0
        elif "runtime_s" in pred:
            # Transferred runtimes are relative; this search's own runs calibrate them to this machine.
            pred["wall_s"] = pred["runtime_s"] * ratio + self.cost.overhead_s
            pred["wall_calibrated"] = float(n_ratio > 0)
        else:
            fallback = self.cost.wall_s(cfg)
            if fallback is not None:
                pred["wall_s"] = fallback
                pred["wall_calibrated"] = 1.0
        if "fail_runtime_s" in pred:
            pred["fail_wall_s"] = pred["fail_runtime_s"] * ratio + self.cost.overhead_s
        if "p_fail" in pred:
            p = _sigmoid(_logit(pred["p_fail"]) + self._fail_shift())
            pred["p_fail"], local = self._local_failure(cfg, p)
            pred["fail_support"] = pred.get("fail_support", 0.0) + local
        elif self.results:
            # No estimator: this task's own outcomes of the same model still tell failure apart.
            p, local = self._local_failure(cfg, self._base_rate())
            if local:
                pred["p_fail"] = p
        return pred

    def _runtime_ratio(self) -> tuple[float, int]:
        """Median of observed / predicted runtime over this search's completed candidates (1 if
        none), and how many runs it rests on. The median is taken of the logarithms (ratios are
        multiplicative: with two runs, 0.5x and 8x give 2x, not 4.25x)."""
        logs = []
        for key, o in self.results.items():
            p = self._raw.get(key, {}).get("runtime_s", 0.0)
            if o.status == "completed" and o.runtime_s and p > 0:
                logs.append(math.log(float(o.runtime_s) / p))
        return (math.exp(_median(logs)) if logs else 1.0), len(logs)

    def _fail_shift(self) -> float:
        """Logit shift that moves the predicted failure rate towards this task's observed one,
        held back by ``fail_prior_n`` pseudo-observations at the predicted rate."""
        ps, fails = [], 0
        for key, o in self.results.items():
            p = self._raw.get(key, {}).get("p_fail")
            if p is None or o.status not in ("completed", *FAILED):
                continue
            ps.append(p)
            fails += o.status in FAILED
        if not ps:
            return 0.0
        mean_p = sum(ps) / len(ps)
        k = self.settings.fail_prior_n
        observed = (fails + k * mean_p) / (len(ps) + k)
        return _logit(observed) - _logit(mean_p)

    def _base_rate(self) -> float:
        known = [o for o in self.results.values() if o.status != "pruned"]  # pruned: neither outcome
        fails = sum(o.status in FAILED for o in known)
        return (fails + 0.5) / (len(known) + 1.0)

    def _local_failure(self, cfg: Config, prior: float) -> tuple[float, float]:
        """The failure probability updated by this task's outcomes of the same model (weight 1
        for the same method, 0.5 for another), with ``fail_prior_n`` pseudo-observations at
        ``prior``; and the weight of that local evidence. Failures cluster by model (weights that
        do not load, memory, speed), so a model's own outcomes here say most about its next run."""
        w_sum = w_fail = 0.0
        for o in self.results.values():
            if o.status not in ("completed", *FAILED) or o.config.get("model_name") != cfg.get("model_name"):
                continue
            w = 1.0 if o.config.get("ft_method") == cfg.get("ft_method") else 0.5
            w_sum += w
            w_fail += w * (o.status in FAILED)
        k = self.settings.fail_prior_n
        return (w_fail + k * prior) / (w_sum + k), w_sum

    def calibration(self) -> QualityCalibration:
        """The current map from predicted to observed quality on this task (least squares over
        this search's completed runs that had a quality prediction)."""
        pts = [(self._raw[k]["quality"], float(o.quality)) for k, o in self.results.items()
               if o.ok and "quality" in self._raw.get(k, {})]
        if len(pts) < 3:
            return QualityCalibration("relative", n=len(pts))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx <= 1e-12:
            return QualityCalibration("relative", n=len(pts))
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
        if slope <= 0:
            return QualityCalibration("uninformative", n=len(pts))
        intercept = my - slope * mx
        resid = sum((y - intercept - slope * x) ** 2 for x, y in pts) / max(len(pts) - 2, 1)
        return QualityCalibration("calibrated", intercept, slope, math.sqrt(resid), len(pts))

    def gain_per_s(self, preds: list[Mapping[str, float]]) -> list[float]:
        """Expected improvement over the incumbent x (1 - p_fail), per expected second when every
        candidate has a cost prediction (a failure costs its expected time to fail)."""
        cal = self.calibration()
        inc = best_of(self.results.values())
        default_sd = self.settings.quality_sd
        if cal.mode == "calibrated" and inc is not None:
            ref = float(inc.quality)  # type: ignore[arg-type]
        else:
            done = [self._raw[k]["quality"] for k, o in self.results.items()
                    if o.ok and "quality" in self._raw.get(k, {})]
            qs = [p["quality"] for p in preds if "quality" in p]
            ref = max(done) if done else (min(qs) - default_sd if qs else 0.0)
        per_s = all(p.get("wall_s", 0.0) > 0 for p in preds)
        out = []
        for p in preds:
            sd = p.get("quality_sd", default_sd)
            if "quality" not in p or cal.mode == "uninformative":
                ei = 1.0  # nothing to tell candidates apart on quality: failure and cost decide
            elif cal.mode == "calibrated":
                mu = cal.intercept + cal.slope * p["quality"]
                ei = expected_improvement(mu, math.hypot(cal.slope * sd, cal.resid_sd), ref)
            else:
                ei = expected_improvement(p["quality"], sd, ref)
            pf = min(max(p.get("p_fail", 0.0), 0.0), 1.0)
            gain = ei * (1.0 - pf)
            if per_s:
                t_ok = p["wall_s"]
                t_fail = p.get("fail_wall_s", self.settings.fail_time_fraction * t_ok)
                gain /= max((1.0 - pf) * t_ok + pf * min(t_fail, t_ok), 1e-6)
            out.append(gain)
        return out

    # ---- admissibility -----------------------------------------------------------------------
    def hard_skip(self, cfg: Config, pred: Mapping[str, float], remaining_s: float,
                  remaining_kwh: float | None = None) -> str | None:
        """The reason a candidate must not run now, or None (estimators otherwise only order)."""
        s = self.settings
        if self.cost.likely_oom(cfg):
            return "predicted_failure"
        if pred.get("p_fail", 0.0) >= s.p_fail_skip and pred.get("fail_support", 0.0) >= s.min_fail_support:
            return "predicted_failure"
        if "wall_s" in pred and pred["wall_s"] > remaining_s and pred.get("wall_calibrated", 1.0):
            return "predicted_overrun"
        if remaining_kwh is not None and "energy_kwh" in pred and pred["energy_kwh"] > remaining_kwh:
            return "predicted_energy_overrun"
        return None

    def _skip(self, cfg: Config, reason: str, pred: Mapping[str, float]) -> None:
        key = config_key(cfg)
        if reason not in ("predicted_overrun", "predicted_energy_overrun"):
            self._ruled_out.add(key)
        if key not in self._skipped_keys:  # count candidates, not repeated draws
            self._skipped_keys.add(key)
            self.skipped[reason] += 1
            self.skip_log.append(Skip(dict(cfg), reason, dict(pred)))

    def not_available(self, cfg: Config, reason: str = "not_logged") -> None:
        """The caller could not evaluate a proposed candidate (e.g. a replay without its log)."""
        self.pending.pop(config_key(cfg), None)
        self._skip(cfg, reason, self.predicted.get(config_key(cfg), {}))

    # ---- ask / tell --------------------------------------------------------------------------
    def _propose(self, cfg: Config, pred: dict[str, float], source: str) -> Proposal:
        prop = Proposal(dict(cfg), pred, source)
        self.pending[prop.key] = prop
        self.predicted[prop.key] = pred
        return prop

    def _taken(self) -> _Union:
        # Predicted failures stay out. A predicted overrun is asked again at the next ask: the budget
        # only shrinks, but the prediction moves too (each run recalibrates transferred runtimes).
        return _Union(self.results, self.pending, self._ruled_out)

    def ask(self, remaining_s: float = math.inf, remaining_kwh: float | None = None) -> Proposal | None:
        """The next candidate to evaluate (not one evaluated or in flight), or None when no
        admissible candidate is left (a finite list) or none was found in ``max_draws`` draws."""
        taken = self._taken()
        while self.seeds:
            cfg = self.seeds.pop(0)
            if config_key(cfg) in taken:
                continue
            pred = self.predict(cfg)
            reason = self.hard_skip(cfg, pred, remaining_s, remaining_kwh)
            if reason:
                self._skip(cfg, reason, pred)
                continue
            return self._propose(cfg, pred, "seed")
        admissible: list[tuple[Config, dict[str, float]]] = []
        tried: set[str] = set()
        draws = len(self.candidates) if self.candidates is not None else self.settings.max_draws
        for _ in range(draws):
            if self.candidates is not None:
                cfg = self.space.sample(self.dist, self.rng, among=self.candidates, exclude=_Union(taken, tried))
            else:
                cfg = self.space.sample(self.dist, self.rng)
            key = config_key(cfg)
            if key in taken or key in tried:
                if self.candidates is not None:
                    break  # a repeat from the list: every listed candidate was drawn
                continue
            tried.add(key)
            pred = self.predict(cfg)
            reason = self.hard_skip(cfg, pred, remaining_s, remaining_kwh)
            if reason:
                self._skip(cfg, reason, pred)
                continue
            if self.predictor is None:
                return self._propose(cfg, pred, "sampled")  # nothing to rank with: the draw decides
            admissible.append((cfg, pred))
            if len(admissible) >= self.settings.choose_from:
                break
        if not admissible:
            return None
        scores = self.gain_per_s([p for _, p in admissible])
        cfg, pred = admissible[max(range(len(admissible)), key=scores.__getitem__)]
        return self._propose(cfg, pred, "ranked")

    def tell(self, config: Config, outcome: Outcome) -> None:
        """Learn from one finished candidate (in any order; also for outcomes of an earlier run)."""
        key = config_key(config)
        self.pending.pop(key, None)
        self.predicted.setdefault(key, self.predict(config))
        self.results[key] = outcome
        self.cost.observe(outcome)
        self._batch.append(outcome)
        if len(self._batch) >= self.settings.population:
            self._update(self._batch)
            self._batch = []

    def _update(self, members: list[Outcome]) -> None:
        s = self.settings
        self.generation += 1
        cost = objective_cost(s.objective)
        if cost is None:
            ok = sorted((o for o in members if o.ok), key=lambda o: -float(o.quality))  # type: ignore[arg-type]
        else:  # the generation's front first: cheap structures that hold their quality pull too
            ok = nondominated_order(members, cost)
        if ok:
            n_elite = max(1, math.ceil(s.selection * len(members)))
            self.dist = update_distribution(self.space, self.dist, [o.config for o in ok[:n_elite]],
                                            s.learning_rate, s.exploration)

    @property
    def incumbent(self) -> Outcome | None:
        return incumbent_of(self.results.values(), self.settings.objective, self.settings.knee_tolerance)

    def stop_spec(self) -> dict[str, Any] | None:
        """The early-stopping spec for the next candidate (``StopSpec.to_dict``): None when early
        stopping is off; without an incumbent value (and with one evaluation per epoch: extra
        evaluations cost time and nothing can be stopped) while fewer than ``early_stop_after``
        candidates have finished or none completed."""
        s = self.settings
        if not s.early_stop:
            return None
        # The incumbent's quality is signed (a loss negated): the curve is read the same way, on the
        # curve model's metric (fitted for this search's objective), else the space's task kind's.
        if self.curve_model is not None:
            metric, greater = self.curve_model.metric, self.curve_model.greater_is_better
        else:
            metric, greater = objective_of(self.space.task_type) or (OBJECTIVE, True)
        inc = self.incumbent
        if inc is None or len(self.results) < s.early_stop_after:
            return StopSpec(None, metric=metric, greater_is_better=greater, evals_per_epoch=1).to_dict()
        model = self.curve_model.to_dict() if self.curve_model is not None and self.curve_model.is_fitted else None
        return StopSpec(float(inc.quality), metric=metric, greater_is_better=greater,  # type: ignore[arg-type]
                        model=model, evals_per_epoch=s.evals_per_epoch, z=s.early_stop_z,
                        patience=s.early_stop_patience,
                        extra={"incumbent_record_id": inc.record_id}).to_dict()
