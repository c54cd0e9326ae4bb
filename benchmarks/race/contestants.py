"""The contestants of the race. Each is prepared once per held-out task (``prepare``: fitting,
similarity, warm start; it sees only ``HeldOut``, i.e. other tasks' experience) and then run once
per seed (``run``: cheap), returning a ``Trace``. All of them draw only from the task's pool,
evaluate through ``TaskPool.evaluate`` (the replay evaluator) and stop when less than
``MIN_CANDIDATE_S`` of the budget is left or the pool is exhausted.

- ``random``: a uniformly random order of the pool.
- ``zero-shot``: xsearch's evolutionary search from the uniform distribution, no estimators.
- ``optuna-tpe``: Optuna's TPE sampler (default settings) over the same categorical decisions;
  each suggestion is mapped to the nearest not-yet-evaluated pool config (fewest differing
  decisions, ties broken at random), and the config actually evaluated is what TPE is told.
- ``knn``: the memory-based warm start: first the best logged config of each of the k most
  similar other tasks (most similar first), then random.
- ``xsearch``: the evolutionary search warm-started from the k most similar other tasks, with
  estimator-guided skipping (predicted failure / clearly worse / overrun), estimators fitted on
  the other tasks only.

On data with learning curves (meta-dataset v2, ``v2_contestants``) also:
- ``xsearch-es``: xsearch with early stopping, replayed from the logged curves by xsearch's own
  replay evaluator (``SearchSettings.early_stop``; the curve model is fitted on the other tasks).
- ``optuna-tpe-pruned``: TPE with Optuna's ``MedianPruner`` (defaults), told each logged
  evaluation of the candidate's curve as an intermediate value; a pruned trial costs the time
  logged up to its last reported evaluation.
- ``expert``: the configuration a practitioner would pick from published recipes (``RECIPES``,
  each with its source), mapped to the nearest configuration of the pool; then the next recipe.
"""
from __future__ import annotations

import logging
import random
import zlib
from typing import Any, Callable, Protocol

import pandas as pd

from xsearch.runner import run_loop
from xsearch.search import SearchSettings
from xsearch.space import Config, SearchSpace, config_key

from .pool import MIN_CANDIDATE_S, HeldOut, Step, TaskPool, Trace

K_SIMILAR = 5  # the xsearch default (run_search's k_similar)
TPE_FAILURE_VALUE = 0.0  # failed runs are told to TPE as the worst F1 so that it learns to avoid them


def objective(pool: TaskPool) -> tuple[str, bool]:
    """(metric, greater is better) the held-out task is scored on: its task kind's objective (known
    before any run: eval_f1 for classification and QA, eval_loss for causal LM)."""
    from xsearch.tasks import objective_of
    types = [e for e in (r.get("task_type") for runs in pool.evaluator.index.values() for r in runs[:1]) if e]
    found = objective_of(max(set(types), key=types.count)) if types else None
    return found or ("eval_f1", True)


def signed_value(rec: dict[str, Any]) -> float:
    """A logged run's primary value oriented so that higher is better (a loss negated); -inf without one."""
    from xlog import schema as S
    v = pd.to_numeric(pd.Series([rec.get("outcome_primary_value")]), errors="coerce").iloc[0]
    if pd.isna(v):
        return float("-inf")
    gib = rec.get("outcome_greater_is_better")
    lower = S.lower_is_better(rec.get("outcome_primary_metric")) or (gib is not None and not pd.isna(gib) and not gib)
    return -float(v) if lower else float(v)


def seed_for(task: str, seed: int) -> int:
    """A stable integer seed per (task, seed) so that seeds differ across tasks."""
    return zlib.crc32(f"{task}:{seed}".encode())


class Contestant(Protocol):
    name: str

    def prepare(self, held: HeldOut, pool: TaskPool) -> None: ...

    def run(self, pool: TaskPool, budget_s: float, seed: int) -> Trace: ...


def run_in_order(name: str, pool: TaskPool, budget_s: float, seed: int,
                 propose: Callable[[set[str]], Config | None],
                 observe: Callable[[Config, Step], None] = lambda cfg, step: None) -> Trace:
    """The sequential loop shared by the non-evolutionary contestants."""
    trace = Trace(name, pool.task, seed, budget_s)
    done: set[str] = set()
    while budget_s - trace.used_s >= MIN_CANDIDATE_S:
        cfg = propose(done)
        if cfg is None:
            trace.stop_reason = "pool_exhausted"
            break
        step = pool.evaluate(cfg, budget_s - trace.used_s, trace.used_s)
        done.add(step.key)
        trace.steps.append(step)
        observe(cfg, step)
    else:
        trace.stop_reason = "time_budget"
    return trace


class RandomSearch:
    name = "random"

    def prepare(self, held: HeldOut, pool: TaskPool) -> None:
        pass

    def run(self, pool: TaskPool, budget_s: float, seed: int) -> Trace:
        order = pool.configs
        random.Random(seed_for(pool.task, seed)).shuffle(order)
        it = iter(order)
        return run_in_order(self.name, pool, budget_s, seed, lambda done: next(it, None))


class KnnWarmStart:
    """XAutoLM's memory-based baseline: the best configs of the k most similar tasks first."""

    name = "knn"

    def __init__(self, k: int = K_SIMILAR, per_task: int = 1):
        self.k, self.per_task = k, per_task
        self.first: list[Config] = []
        self.similar: list[tuple[str, float]] = []

    def prepare(self, held: HeldOut, pool: TaskPool) -> None:
        from xsearch.warmstart import similar_tasks
        exp = held.experience
        self.similar = similar_tasks(exp, held.features, k=self.k) if len(exp) else []
        keys, first = set(pool.keys), []
        for name, _ in self.similar:
            g = exp[(exp["task_name"] == name) & (exp["status"] == "completed")].copy()
            g["_q"] = [signed_value(r) for r in g.to_dict("records")]  # the lowest loss first
            taken = 0
            for rec in g.sort_values("_q", ascending=False).to_dict("records"):
                cfg = pool.space.config_from_record(rec)
                key = config_key(cfg) if cfg is not None else None
                if key in keys and key not in {config_key(c) for c in first}:
                    first.append(cfg)
                    taken += 1
                if taken >= self.per_task:
                    break
        self.first = first

    def run(self, pool: TaskPool, budget_s: float, seed: int) -> Trace:
        rest = pool.configs
        random.Random(seed_for(pool.task, seed)).shuffle(rest)
        order = iter(self.first + rest)

        def propose(done: set[str]) -> Config | None:
            return next((c for c in order if config_key(c) not in done), None)
        return run_in_order(self.name, pool, budget_s, seed, propose)


def eval_curve(rec: dict[str, Any], metric: str = "eval_f1", evals_per_epoch: int = 4) -> list[tuple[int, float, float]]:
    """(step index, elapsed seconds, value) of each logged evaluation of ``metric`` in the record's
    ``curve``, in order; the step index counts evaluations (1/``evals_per_epoch`` epoch each) so that
    runs with different batch sizes compare at the same point of training."""
    out = []
    for p in rec.get("curve") or []:
        if p.get("kind") != "eval" or p.get("name") != metric or p.get("value") is None:
            continue
        epoch = p.get("epoch")
        idx = int(round(float(epoch) * evals_per_epoch)) if epoch is not None else len(out) + 1
        if out and out[-1][0] >= idx:
            # The same point of training evaluated again (the final evaluation after a last step
            # that was not an evaluation step): the later one stands.
            out.pop()
            idx = max(idx, out[-1][0] + 1) if out else idx
        out.append((idx, float(p.get("elapsed_s") or 0.0), float(p["value"])))
    return out


def nearest_pool_proposer(study: Any, pool: TaskPool, rng: random.Random,
                          pending: dict[str, Any]) -> Callable[[set[str]], Config | None]:
    """``propose(done)`` for an Optuna study racing on a pool: ask a trial (define-by-run, each
    conditional decision only where active), then take the pool's configuration not run yet that
    differs from it in the fewest decisions (ties at random); ``pending`` gets the trial and
    whether the pool held it exactly. None once the pool is run out."""
    space = pool.space

    def propose(done: set[str]) -> Config | None:
        fresh = [c for c in pool.configs if config_key(c) not in done]
        if not fresh:
            return None
        trial = study.ask()
        asked: Config = {}
        for p in space.parameters:
            asked[p.name] = trial.suggest_categorical(p.name, list(p.values)) if p.active(asked) else None
        dist = [sum(asked.get(n) != c.get(n) for n in space.names) for c in fresh]
        best = min(dist)
        cfg = rng.choice([c for c, d in zip(fresh, dist) if d == best])
        pending["trial"], pending["exact"] = trial, best == 0
        return cfg
    return propose


class OptunaTPE:
    """Optuna's TPE sampler (defaults) over the space's categorical decisions, mapped to the pool;
    with ``pruner=True``, also Optuna's MedianPruner over the logged learning curves."""

    name = "optuna-tpe"

    def __init__(self, pruner: bool = False, name: str | None = None):
        self.pruner = pruner
        self.name = name or ("optuna-tpe-pruned" if pruner else "optuna-tpe")

    def prepare(self, held: HeldOut, pool: TaskPool) -> None:
        import warnings

        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Told trials of configs TPE did not suggest (add_trial, enqueue_trial) are "experimental".
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    @staticmethod
    def _distributions(space: SearchSpace, cfg: Config) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution
        return {p.name: CategoricalDistribution(list(p.values)) for p in space.parameters if cfg.get(p.name) is not None}

    def run(self, pool: TaskPool, budget_s: float, seed: int) -> Trace:
        import optuna
        from optuna.trial import TrialState, create_trial
        space = pool.space
        rng = random.Random(seed_for(pool.task, seed) + 1)
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.TPESampler(seed=seed_for(pool.task, seed)),
                                    pruner=optuna.pruners.MedianPruner() if self.pruner else None)
        pending: dict[str, Any] = {}
        greater = objective(pool)[1]
        seen: list[float] = []

        def failure_value() -> float | None:
            # A score (F1) fails to 0, the worst it can be; a signed loss (negative, no floor) to the
            # worst value seen so far, or a failed trial while none is known.
            if greater:
                return TPE_FAILURE_VALUE
            return min(seen) if seen else None

        propose = nearest_pool_proposer(study, pool, rng, pending)

        def observe(cfg: Config, step: Step) -> None:
            if step.cut:
                study.tell(pending["trial"], state=TrialState.FAIL)
                return
            value = step.quality if step.quality is not None else failure_value()
            if step.quality is not None:
                seen.append(step.quality)
            if value is None:
                study.tell(pending["trial"], state=TrialState.FAIL)
                return
            if pending["exact"]:
                study.tell(pending["trial"], value)
            else:  # TPE learns from the config really evaluated, not from its suggestion
                study.tell(pending["trial"], state=TrialState.FAIL)
                params = {k: v for k, v in cfg.items() if v is not None}
                study.add_trial(create_trial(params=params, distributions=self._distributions(space, cfg),
                                             value=value))
        if not self.pruner:
            return run_in_order(self.name, pool, budget_s, seed, propose, observe)
        return self._run_pruned(pool, budget_s, seed, study, propose, pending)

    def _run_pruned(self, pool: TaskPool, budget_s: float, seed: int, study: Any,
                    propose: Callable[[set[str]], Config | None], pending: dict[str, Any]) -> Trace:
        """The TPE loop with the MedianPruner: the evaluated config is enqueued as its own trial
        (so that the pruner compares the curves of configs really run), its logged evaluations are
        reported in order, and the run stops at the first one the pruner prunes."""
        from optuna.trial import TrialState
        space = pool.space
        trace = Trace(self.name, pool.task, seed, budget_s)
        done: set[str] = set()
        while budget_s - trace.used_s >= MIN_CANDIDATE_S:
            cfg = propose(done)  # asks TPE for a trial and maps it to the pool (pending)
            if cfg is None:
                trace.stop_reason = "pool_exhausted"
                break
            trial = pending["trial"]
            if not pending["exact"]:
                study.tell(trial, state=TrialState.FAIL)  # the suggestion itself is not run
                study.enqueue_trial({k: v for k, v in cfg.items() if v is not None})
                trial = study.ask()
                for p in space.parameters:  # registers the enqueued values (define-by-run)
                    if cfg.get(p.name) is not None:
                        trial.suggest_categorical(p.name, list(p.values))
            left = budget_s - trace.used_s
            stopped = None
            entry = pool.entries[config_key(cfg)]
            if entry.ok:
                for idx, elapsed, value in eval_curve(pool.record(cfg)):
                    if elapsed >= entry.cost_s:
                        break  # the run's end: its final value is told below
                    trial.report(value, idx)
                    if trial.should_prune():
                        stopped = min(elapsed, entry.cost_s)
                        break
            if stopped is not None and stopped <= left:
                step = pool.pruned_step(cfg, stopped, trace.used_s + stopped)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                step = pool.evaluate(cfg, left, trace.used_s)
                if step.cut:
                    study.tell(trial, state=TrialState.FAIL)
                else:
                    study.tell(trial, step.quality if step.quality is not None else TPE_FAILURE_VALUE)
            done.add(step.key)
            trace.steps.append(step)
        else:
            trace.stop_reason = "time_budget"
        return trace


class Evolutionary:
    """xsearch on the pool: zero-shot (uniform, no estimators) or in full (the best configs of the
    most similar tasks first, a warm-started distribution, estimators that order candidates),
    with xsearch's default settings (``settings`` overrides some, e.g. to choose them)."""

    def __init__(self, name: str, warm: bool, estimators: bool, k: int = K_SIMILAR, population: int = 4,
                 settings: dict[str, Any] | None = None, early_stop: bool | None = None):
        self.name, self.warm, self.use_estimators, self.k, self.population = name, warm, estimators, k, population
        self.overrides = dict(settings or {})
        # early_stop: None = xsearch's default; True/False set it (True also fits the curve model).
        self.early_stop = early_stop
        if early_stop is not None and has_early_stop():
            self.overrides["early_stop"] = early_stop
        self.curve_model: Any = None
        self.initial: dict | None = None
        self.seeds: list[Config] = []
        self.predictions: pd.DataFrame | None = None
        self.fitted_on: list[str] = []
        self.similar: list[tuple[str, float]] = []

    def prepare(self, held: HeldOut, pool: TaskPool) -> None:
        self.initial, self.seeds, self.predictions, self.fitted_on, self.similar = None, [], None, [], []
        exp = held.experience
        n_seeds = self.overrides.get("n_seeds", SearchSettings.n_seeds)
        if self.warm and len(exp):
            from xsearch.warmstart import seed_configs, similar_tasks, warm_start
            self.initial = pool.space.normalise(warm_start(pool.space.uniform(), exp, held.features, k=self.k))
            self.similar = similar_tasks(exp, held.features, k=self.k)
            self.seeds = seed_configs(exp, pool.space, self.similar, n=n_seeds, among=pool.configs)
        self.curve_model = None
        if self.early_stop and has_early_stop() and len(exp):
            from xsearch.curves import CurveModel
            metric, greater = objective(pool)  # the held-out task's objective, signed like its quality
            self.curve_model = CurveModel(metric, greater_is_better=greater).fit(exp)  # other tasks' curves only
        if self.use_estimators and len(exp):
            from xsearch.estimators import Estimators
            from xsearch.runner import experience_predictor
            from xsearch.estimators import metric_family
            # Once per held-out task, on the other tasks only; quality on the held-out task's own
            # metric family (an F1 for QA, a loss for causal LM: never the two mixed).
            est = Estimators(quality_metric=metric_family(objective(pool)[0])).fit(exp)
            if est.is_fitted:
                self.fitted_on = est.training_groups.get("task_name", [])
                pred = experience_predictor(est, exp, held.features, held.hardware)(pool.configs)
                pred.index = pool.keys
                self.predictions = pred

    def _predictor(self) -> Callable[[list[Config]], pd.DataFrame] | None:
        if self.predictions is None:
            return None
        table = self.predictions
        return lambda cfgs: table.loc[[config_key(c) for c in cfgs]].reset_index(drop=True)

    def run(self, pool: TaskPool, budget_s: float, seed: int) -> Trace:
        settings = SearchSettings(**{**dict(budget_s=budget_s, population=self.population,
                                            seed=seed_for(pool.task, seed), reserve_s=0.0,
                                            min_candidate_s=MIN_CANDIDATE_S, max_candidate_s=None), **self.overrides})
        logging.getLogger("xsearch.search").setLevel(logging.ERROR)
        # A frozen clock: the budget is simulated seconds, only the replayed runtimes count.
        result = run_loop(pool.space, pool.evaluator, settings, f"race-{self.name}",
                          initial_distribution=self.initial, predictor=self._predictor(),
                          candidates=pool.configs,  # only what the replay can answer
                          seeds=self.seeds, clock=lambda: 0.0, started_at=0.0,
                          **({"curve_model": self.curve_model} if self.curve_model is not None else {}))
        trace = Trace(self.name, pool.task, seed, budget_s, skipped=dict(result.skipped),
                      stop_reason=result.stop_reason)
        t = 0.0
        for ev in result.evaluations:
            t += ev.charged_s
            trace.steps.append(pool.step(ev.outcome.config, ev.outcome, ev.charged_s, t))
        return trace


def has_early_stop() -> bool:
    """Whether this xsearch has early stopping (``SearchSettings.early_stop``)."""
    import dataclasses
    return "early_stop" in {f.name for f in dataclasses.fields(SearchSettings)}


#: The expert default: what a practitioner picks from published recipes, in the order they would
#: try them (each mapped to the nearest configuration of the pool, see ``ExpertDefault``).
RECIPES: list[dict[str, Any]] = [
    {"source": "BERT (Devlin et al. 2019, appendix A.3: Adam lr 2e-5..5e-5, batch 16/32, 2-4 epochs; "
               "warmup 10%, weight decay 0.01, linear decay): full fine-tuning of the default small encoder",
     "config": {"model_name": "sentence-transformers/all-MiniLM-L6-v2", "ft_method": "full",
                "train_learning_rate": 2e-5, "train_batch_size": 32, "train_epochs": 3, "train_warmup_ratio": 0.1,
                "train_weight_decay": 0.01, "train_lr_scheduler": "linear", "train_max_seq_length": 128}},
    {"source": "LoRA (Hu et al. 2021, RoBERTa-base on GLUE: r 8, alpha 8, lr 5e-4, batch 16, warmup ratio "
               "0.06, linear; the PEFT docs' query/value targets), 3 epochs",
     "config": {"model_name": "sentence-transformers/all-MiniLM-L6-v2", "ft_method": "lora", "peft_lora_r": 8,
                "peft_lora_alpha": 8, "peft_lora_dropout": 0.1, "train_learning_rate": 5e-4, "train_batch_size": 16,
                "train_epochs": 3, "train_warmup_ratio": 0.06, "train_weight_decay": 0.01,
                "train_lr_scheduler": "linear", "train_max_seq_length": 128}},
]


#: How much a mismatch weighs in ``recipe_distance`` (other decisions: 1 at most each).
RECIPE_WEIGHTS = {"ft_method": 4.0, "model_name": 2.0, "train_learning_rate": 3.0}


def recipe_distance(space: SearchSpace, recipe: Config, cfg: Config) -> float:
    """How far a pool configuration is from a recipe, as a practitioner would judge it: the method
    first, then the model (half as far within a family: a layer-truncated variant of the
    recipe's model) and the learning rate (on a log scale over the space's range); every other
    decision counts up to 1 (numbers by their distance over the space's range, others by mismatch)."""
    import math
    d = 0.0
    for p in space.parameters:
        want, got = recipe.get(p.name), cfg.get(p.name)
        if want is None:
            continue
        w = RECIPE_WEIGHTS.get(p.name, 1.0)
        if p.name == "model_name":
            same_family = str(want).split("@")[0] == str(got).split("@")[0]
            d += 0.0 if want == got else (0.5 * w if same_family else w)
            continue
        if got is None:
            d += w
            continue
        nums = [v for v in p.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if isinstance(want, (int, float)) and isinstance(got, (int, float)) and len(nums) > 1:
            f = (lambda x: math.log(max(float(x), 1e-12))) if p.log or p.name == "train_learning_rate" else float
            lo, hi = f(min(nums)), f(max(nums))
            d += w * min(abs(f(want) - f(got)) / ((hi - lo) or 1.0), 1.0)
        else:
            d += w * float(want != got)
    return d


class ExpertDefault:
    """The expert default: each recipe of ``RECIPES`` in turn, as the nearest not-yet-run pool
    configuration; no search beyond the recipes (what a practitioner does without a tuner)."""

    name = "expert"

    def __init__(self, recipes: list[dict[str, Any]] | None = None):
        self.recipes = recipes if recipes is not None else RECIPES

    def prepare(self, held: HeldOut, pool: TaskPool) -> None:
        pass

    def picks(self, pool: TaskPool) -> list[Config]:
        chosen: list[Config] = []
        for r in self.recipes:
            rest = [c for c in pool.configs if config_key(c) not in {config_key(x) for x in chosen}]
            if rest:  # ties: the pool's order (deterministic)
                chosen.append(min(rest, key=lambda c: recipe_distance(pool.space, r["config"], c)))
        return chosen

    def run(self, pool: TaskPool, budget_s: float, seed: int) -> Trace:
        order = iter(self.picks(pool))
        trace = run_in_order(self.name, pool, budget_s, seed, lambda done: next(order, None))
        if trace.stop_reason == "pool_exhausted":
            trace.stop_reason = "recipes_done"
        return trace


def v2_contestants(ablations: bool = False) -> list[Any]:
    """The race on data with learning curves (meta-dataset v2): today's five (xsearch without early
    stopping), xsearch with early stopping, TPE with the median pruner, and the expert default."""
    es = has_early_stop()
    out = [RandomSearch(), Evolutionary("zero-shot", warm=False, estimators=False, early_stop=False if es else None),
           OptunaTPE(), OptunaTPE(pruner=True), KnnWarmStart(), ExpertDefault(),
           Evolutionary("xsearch", warm=True, estimators=True, early_stop=False if es else None)]
    if es:
        out.append(Evolutionary("xsearch-es", warm=True, estimators=True, early_stop=True))
    if ablations:
        out += [Evolutionary("xs-warm-only", warm=True, estimators=False, early_stop=False if es else None),
                Evolutionary("xs-est-only", warm=False, estimators=True, early_stop=False if es else None)]
    return out


def default_contestants(ablations: bool = False) -> list[Any]:
    """The five contestants of the issue; ``ablations`` adds xsearch with only its warm start
    and xsearch with only its estimators (to tell which part helps)."""
    out = [RandomSearch(), Evolutionary("zero-shot", warm=False, estimators=False), OptunaTPE(),
           KnnWarmStart(), Evolutionary("xsearch", warm=True, estimators=True)]
    if ablations:
        out += [Evolutionary("xs-warm-only", warm=True, estimators=False),
                Evolutionary("xs-est-only", warm=False, estimators=True)]
    return out
