"""Estimators learned from the experience store: for a candidate row (task meta-features, model,
method, hyperparameters, hardware) predict its quality, runtime, energy and probability of failing.

Prediction columns (``PREDICTION_COLUMNS``; NaN where an estimator is not fitted):

- ``quality``: **relative** quality, higher is better, comparable only between candidates of one
  task. Real shared experience scores every task on its own scale (macro F1 0.04-0.25 on one task,
  0.33-0.93 on another), so an absolute metric pooled over tasks teaches mostly which task a row
  comes from. The target is therefore made relative within each (task, metric family) group: by
  default the percentile rank of the run among that task's completed runs, ``(rank - 0.5) / n`` in
  (0, 1) (``quality_target="rank"``; ``"zscore"`` standardises within the task, ``"absolute"`` keeps
  the oriented metric as before). A task needs at least 2 completed runs to teach quality. Quality
  is learned for one metric family (``quality_metric``, default the most common primary metric
  family, e.g. ``f1``), oriented so that higher is better (a loss is negated before ranking); rows
  of other families (a causal-LM task scoring ``eval_loss`` beside F1 tasks) are never mixed in,
  they teach cost and failure only. A family named as a loss, perplexity or error rate is always
  lower-is-better. Asking for several families at once (``quality_metric=["f1", "loss"]``) raises
  ``MixedMetricFamilies``: fit one ``Estimators`` per family (e.g. ``quality_metric="loss"`` for a
  causal-LM search). A search maps ``quality`` to its task's own scale by calibrating against the
  task's own results as they arrive.
- ``quality_sd``: the spread of ``quality`` (one number per fitted estimator, same units): the root
  mean square residual of a grouped cross-validation inside ``fit`` that holds out whole tasks
  (when at least 3 tasks teach quality), else the standard deviation of the target itself (what a
  prediction that knows nothing would miss by).
- ``runtime_s``, ``energy_kwh``: of a completed run, learned on a log scale from completed runs.
- ``fail_runtime_s``: seconds a run that fails takes before it fails (a failure costs its time):
  a log-scale regressor on failed / oom / timeout records that logged a runtime; with fewer than
  ``min_rows`` of them, the median ratio of their runtime to the predicted ``runtime_s`` times the
  predicted ``runtime_s``; NaN when no failure logged a runtime.
- ``p_fail``, ``p_oom``: probability of status failed / oom / timeout (resp. oom), Platt-calibrated
  on out-of-group predictions of the same inner cross-validation (boosted trees on a few hundred
  records are overconfident). Interrupted runs (stopped by a person or the machine, not by the
  configuration) are left out, and so are pruned runs (stopped early on purpose by a search's
  early stopping: not a failure of their configuration).

Pruned runs teach no target: their F1 at the stopping point is not a final value (quality learns
from completed runs only; a partial value is not used, not even as a lower bound), and their time
is not a full run's (runtime learns from completed runs only).

The honest evaluation (grouped cross-validation, per held-out group, against baselines) is in
``xsearch.estimator_report``; ``grouped_cv_report``, ``format_report`` and ``grouped_folds`` are
importable from here too.
"""
from __future__ import annotations

import json
import math
import platform
import logging
import re
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from xlog import __version__
from xlog import schema as S

from .errors import XSearchError
from .features import CATEGORICAL_FEATURES, FEATURES, MODEL_META_COLUMNS, feature_matrix, model_meta_from

__all__ = [
    "FAILED_STATUSES", "PREDICTION_COLUMNS", "QUALITY_TARGETS", "Estimators", "records_frame", "load_experiences",
    "default_path", "metric_family", "metric_families", "quality_family", "MixedMetricFamilies",
    "choose_quality_metric", "quality_direction", "quality_target",
    "relative_quality", "task_keys", "runtime_target", "fail_runtime_target", "energy_target", "failure_target",
    "grouped_folds", "grouped_cv_report", "format_report",
]

logger = logging.getLogger("xsearch.estimators")
FAILED_STATUSES = ("failed", "oom", "timeout")
PREDICTION_COLUMNS = ["quality", "quality_sd", "runtime_s", "fail_runtime_s", "energy_kwh", "p_fail", "p_oom"]
QUALITY_TARGETS = ("rank", "zscore", "absolute")
FORMAT_VERSION = 2  # 2: task-relative quality, quality_sd, fail_runtime_s
MAX_CATEGORIES = 250  # HistGradientBoosting handles at most 255 bins per categorical feature
MIN_TASK_RUNS = 2  # completed runs a task needs before its runs can be ranked against each other


# ---- loading --------------------------------------------------------------------------------
def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records (dicts) as a DataFrame with every schema column, even when there are none."""
    df = pd.DataFrame(list(records))
    missing = [n for n in S.field_names() if n not in df.columns]
    if missing:
        df = pd.concat([df, pd.DataFrame({n: [None] * len(df) for n in missing}, index=df.index, dtype=object)], axis=1)
    return df


def load_experiences(home: str | Path | None = None, exclude_sources: Sequence[str] = ()) -> pd.DataFrame:
    """All experience records under an XLOG_HOME (one row per run, record columns): the local
    store and every pulled mirror, through the DuckDB ``experiences`` view of ``xsearch.db``,
    less the files of the sources ``exclude_sources`` matches (``xsearch.db.source_matches``)."""
    from . import db
    # Our own query over the whole store: no time limit (the limits are for untrusted SQL).
    if not exclude_sources:
        return db.to_pandas("SELECT * FROM experiences", home, timeout_s=None)
    con = db.connect(home, exclude_sources=list(exclude_sources))
    try:
        return db.to_pandas("SELECT * FROM experiences", con=con, timeout_s=None)
    finally:
        con.close()


def default_path(home: str | Path | None = None) -> Path:
    """Where ``xsearch estimators --fit`` saves by default: HOME/estimators/estimators.joblib."""
    from xlog.store import LocalStore
    return LocalStore(home).root / "estimators" / "estimators.joblib"


# ---- targets --------------------------------------------------------------------------------
def _metrics_dict(v: Any) -> dict[str, float]:
    """outcome_metrics as a dict, whichever way the reader returned the list of (name, value) structs."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return {}
    if isinstance(v, Mapping):
        return dict(v)
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        out = {}
        for item in v:
            if isinstance(item, Mapping) and "name" in item:
                out[item["name"]] = item.get("value")
            elif isinstance(item, Mapping) and "key" in item:
                out[item["key"]] = item.get("value")
            elif isinstance(item, (list, tuple)) and len(item) == 2:
                out[item[0]] = item[1]
        return out
    return {}


def metric_family(name: Any) -> str | None:
    """``eval_f1`` -> ``f1``: the metric without the Trainer's prefix."""
    if not isinstance(name, str) or not name:
        return None
    return name[5:] if name.startswith("eval_") else name


class MixedMetricFamilies(XSearchError, ValueError):
    """Quality asked for over several metric families at once (e.g. an F1 and a loss)."""


def quality_family(metric: Any) -> str | None:
    """The one metric family a quality estimator is asked to learn: ``eval_f1`` and ``f1`` -> ``f1``.
    Several families (a list, or names joined by ``,`` / ``+`` / ``|``) raise ``MixedMetricFamilies``:
    quality is learned per family, so that an F1 is never compared with a loss."""
    if metric is None:
        return None
    names = [metric] if isinstance(metric, str) else list(metric)
    parts = [p.strip() for n in names for p in re.split(r"[,+|]", str(n)) if p.strip()]
    fams = list(dict.fromkeys(metric_family(p) for p in parts))
    if len(fams) > 1:
        raise MixedMetricFamilies(
            f"quality is learned per metric family and never mixes them: got {', '.join(fams)}. Scores on "
            "different metrics (an F1 and a loss, say) are not on one scale, not even after ranking within a "
            "task (which direction is better differs); fit one Estimators per family "
            f"(Estimators(quality_metric={fams[0]!r}), ...)")
    return fams[0] if fams else None


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def choose_quality_metric(experiences: pd.DataFrame) -> str | None:
    """The most common primary metric family among completed runs with a value."""
    ok = (_column(experiences, "status") == "completed") & _column(experiences, "outcome_primary_value").notna()
    fams = [metric_family(m) for m in _column(experiences, "outcome_primary_metric")[ok]]
    counts = Counter(f for f in fams if f)
    return counts.most_common(1)[0][0] if counts else None


def quality_direction(experiences: pd.DataFrame, metric: str) -> float:
    """+1 when higher values of the metric are better, -1 when lower are: a family named as a loss,
    perplexity or error rate is always -1 (whatever an old record's ``outcome_greater_is_better``
    says: transformers' default calls a perplexity better when higher); other families follow the
    majority of their records' ``outcome_greater_is_better``, else +1."""
    if S.lower_is_better(metric):
        return -1.0
    fam = _column(experiences, "outcome_primary_metric").map(metric_family)
    gib = _column(experiences, "outcome_greater_is_better")[fam == metric].dropna()
    if len(gib):
        return 1.0 if gib.astype(bool).mean() >= 0.5 else -1.0
    return 1.0


def metric_families(experiences: pd.DataFrame) -> Counter:
    """Completed runs with a primary value per primary metric family."""
    ok = (_column(experiences, "status") == "completed") & _column(experiences, "outcome_primary_value").notna()
    return Counter(f for f in _column(experiences, "outcome_primary_metric")[ok].map(metric_family) if f)


def quality_target(experiences: pd.DataFrame, metric: str | None, sign: float = 1.0) -> pd.Series:
    """Oriented quality per row: the metric from outcome_metrics (eval_<metric>) or the primary
    value when the primary metric is of that family; NaN for failed runs and other metrics."""
    out = pd.Series(np.nan, index=experiences.index, dtype=float)
    if metric is None or len(experiences) == 0:
        return out
    status = _column(experiences, "status")
    fam = _column(experiences, "outcome_primary_metric").map(metric_family)
    primary = pd.to_numeric(_column(experiences, "outcome_primary_value"), errors="coerce")
    metrics = _column(experiences, "outcome_metrics").map(_metrics_dict)
    for idx in experiences.index:
        if status[idx] != "completed":
            continue
        m = metrics[idx]
        v = m.get(f"eval_{metric}", m.get(metric))
        if v is None and fam[idx] == metric:
            v = primary[idx]
        if v is not None and not pd.isna(v) and math.isfinite(float(v)):
            out[idx] = sign * float(v)
    return out


def task_keys(experiences: pd.DataFrame) -> pd.Series:
    """The task each record belongs to: its ``task_name``, else a fingerprint of its task
    meta-features (records without a name are not all one task)."""
    name = _column(experiences, "task_name").astype(object)
    fp_cols = ["task_type", "task_n_train", "task_n_classes", "task_chars_mean"]
    fp = pd.Series(["|".join(str(_column(experiences, c)[i]) for c in fp_cols) for i in experiences.index],
                   index=experiences.index, dtype=object)
    return name.where(name.notna() & (name.astype(str) != ""), "<unnamed " + fp + ">").astype(str)


def relative_quality(values: pd.Series, groups: pd.Series, kind: str = "rank",
                     min_runs: int = MIN_TASK_RUNS) -> pd.Series:
    """``values`` (oriented, higher is better; NaN = no value) made relative within each group:
    ``rank``: percentile ``(rank - 0.5) / n`` in (0, 1), ties averaged; ``zscore``: (v - mean) /
    std (0 when every run scored the same); ``absolute``: unchanged. Groups with fewer than
    ``min_runs`` values are NaN: one run has nothing to be ranked against."""
    if kind not in QUALITY_TARGETS:
        raise ValueError(f"unknown quality target {kind!r}; choose from {QUALITY_TARGETS}")
    v = pd.to_numeric(values, errors="coerce").astype(float)
    ok = v.notna()
    counts = groups[ok].map(groups[ok].value_counts())
    ok &= counts.reindex(v.index).fillna(0) >= min_runs
    out = pd.Series(np.nan, index=v.index, dtype=float)
    if not ok.any():
        return out
    vv, gg = v[ok], groups[ok]
    if kind == "rank":
        out[ok] = (vv.groupby(gg).rank(method="average") - 0.5) / vv.groupby(gg).transform("count")
    elif kind == "zscore":
        sd = vv.groupby(gg).transform(lambda x: x.std(ddof=0))
        out[ok] = ((vv - vv.groupby(gg).transform("mean")) / sd.where(sd > 0)).fillna(0.0)
    else:
        out[ok] = vv
    return out


def _runtime(experiences: pd.DataFrame) -> pd.Series:
    total = pd.to_numeric(_column(experiences, "outcome_total_runtime_s"), errors="coerce")
    train = pd.to_numeric(_column(experiences, "outcome_train_runtime_s"), errors="coerce")
    ev = pd.to_numeric(_column(experiences, "outcome_eval_runtime_s"), errors="coerce").fillna(0.0)
    return total.fillna(train + ev).astype(float)


def runtime_target(experiences: pd.DataFrame) -> pd.Series:
    """Wall time of completed runs (total, else training + evaluation)."""
    rt = _runtime(experiences)
    return rt.where((_column(experiences, "status") == "completed") & (rt > 0))


def fail_runtime_target(experiences: pd.DataFrame) -> pd.Series:
    """Wall time of failed / oom / timeout runs that logged one (until they failed)."""
    rt = _runtime(experiences)
    return rt.where(_column(experiences, "status").isin(list(FAILED_STATUSES)) & (rt > 0))


def energy_target(experiences: pd.DataFrame) -> pd.Series:
    """Measured energy of completed runs (runs without an energy meter are unknown, not zero)."""
    kwh = pd.to_numeric(_column(experiences, "energy_kwh"), errors="coerce").astype(float)
    src = _column(experiences, "energy_source")
    measured = src.notna() & (src != "none")
    return kwh.where((_column(experiences, "status") == "completed") & measured & (kwh > 0))


def failure_target(experiences: pd.DataFrame, statuses: Iterable[str] = FAILED_STATUSES) -> pd.Series:
    """1.0 for runs that failed with one of ``statuses``, 0.0 for other failures or completed runs,
    NaN for interrupted runs (a person or the machine stopped them, not the configuration) and for
    pruned runs (stopped early on purpose by a search: not an outcome of their configuration)."""
    status = _column(experiences, "status")
    y = status.isin(list(statuses)).astype(float)
    known = status.isin(["completed", *FAILED_STATUSES])
    return y.where(known)


# ---- encoding -------------------------------------------------------------------------------
class _Encoder:
    """Features as a float matrix; categorical columns as codes of the categories seen in
    training (unknown or rare categories become NaN, which the trees treat as missing).
    Features never observed in training are left out (they carry nothing to learn from)."""

    def __init__(self) -> None:
        self.categories: dict[str, list[str]] = {}
        self.columns: list[str] = []

    def fit(self, X: pd.DataFrame) -> "_Encoder":
        for c in CATEGORICAL_FEATURES:
            counts = X[c].dropna().value_counts()
            self.categories[c] = sorted(counts.index[:MAX_CATEGORIES].tolist())
        self.columns = [c for c in FEATURES if (self.categories[c] if c in self.categories else X[c].notna().any())]
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(X), len(self.columns)), dtype=float)
        for j, c in enumerate(self.columns):
            if c in self.categories:
                lookup = {v: float(i) for i, v in enumerate(self.categories[c])}
                out[:, j] = X[c].map(lambda v: lookup.get(v, np.nan)).to_numpy(dtype=float)
            else:
                out[:, j] = X[c].to_numpy(dtype=float)
        return out

    @property
    def categorical_mask(self) -> np.ndarray:
        return np.array([c in CATEGORICAL_FEATURES for c in self.columns], dtype=bool)


def _fit_on(model: Any, X: np.ndarray, y: np.ndarray) -> Any:
    """``model.fit`` on a subset of the training rows. A feature all-missing in the subset (e.g. a
    column only completed runs have, for a model of failures) becomes a constant the trees never
    split on: scikit-learn's binning cannot handle a column with no value at all."""
    empty = np.isnan(X).all(axis=0)
    if empty.any():
        X = X.copy()
        X[:, empty] = 0.0
    return model.fit(X, y)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


class _Platt:
    """A classifier whose probabilities pass through sigmoid(slope * logit(p) + intercept)."""

    def __init__(self, model: Any, slope: float, intercept: float) -> None:
        self.model, self.slope, self.intercept = model, slope, intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-(self.slope * _logit(self.model.predict_proba(X)[:, 1]) + self.intercept)))
        return np.column_stack([1 - p, p])


class _Constant:
    """Stands in for a classifier when training saw one class only: the smoothed base rate."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        p = np.full(len(X), self.rate)
        return np.column_stack([1 - p, p])


# ---- the estimators -------------------------------------------------------------------------
class Estimators:
    """Quality, runtime, energy, failure and OOM estimators over the same feature rows.

    ``fit`` trains each estimator for which there are at least ``min_rows`` usable records; the
    others stay unfitted and predict NaN, so with an empty or tiny store the search runs zero-shot.
    ``quality_target`` chooses how quality is made relative within a task (module docstring).
    ``inner_folds`` is the number of folds of the grouped cross-validation inside ``fit`` (whole
    tasks held out; whole models when the records have fewer than 3 tasks) that measures
    ``quality_sd`` and calibrates ``p_fail`` / ``p_oom``; 0 skips it (``quality_sd`` is then the
    target's spread and the failure probabilities are the boosted trees' own).
    """

    def __init__(self, quality_metric: str | None = None, min_rows: int = 8, random_state: int = 0,
                 targets: Iterable[str] | None = None, quality_target: str = "rank",
                 inner_folds: int = 5) -> None:
        self.quality_metric = quality_family(quality_metric)
        self.wanted = list(targets) if targets is not None else list(PREDICTION_COLUMNS)
        unknown = set(self.wanted) - set(PREDICTION_COLUMNS)
        if unknown:
            raise ValueError(f"unknown estimator(s) {sorted(unknown)}; choose from {PREDICTION_COLUMNS}")
        if quality_target not in QUALITY_TARGETS:
            raise ValueError(f"unknown quality target {quality_target!r}; choose from {QUALITY_TARGETS}")
        self.quality_target = quality_target
        self.inner_folds = inner_folds
        self.quality_sign = 1.0
        self.min_rows = min_rows
        self.random_state = random_state
        self.models: dict[str, Any] = {}
        self.n_rows: dict[str, int] = {}
        self.target_means: dict[str, float] = {}
        self.model_meta: dict[str, dict[str, Any]] = {}
        self.training_groups: dict[str, list[str]] = {}
        self.n_experiences = 0
        self.encoder = _Encoder()

    # -- fitting --
    @property
    def is_fitted(self) -> bool:
        """Whether at least one estimator learned something (others predict NaN)."""
        return bool(self.models)

    @property
    def fitted_targets(self) -> list[str]:
        """The prediction columns that are not all NaN."""
        done = set(self.models)
        if getattr(self, "quality_sd_", None) is not None:
            done.add("quality_sd")
        if getattr(self, "fail_runtime_source_", None) is not None:
            done.add("fail_runtime_s")
        return [t for t in PREDICTION_COLUMNS if t in done]

    def _regressor(self, n: int):
        from sklearn.ensemble import HistGradientBoostingRegressor
        return HistGradientBoostingRegressor(
            max_iter=150, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=max(3, min(20, n // 15)),
            l2_regularization=1.0, categorical_features=self.encoder.categorical_mask,
            random_state=self.random_state)

    def _classifier(self, n: int):
        from sklearn.ensemble import HistGradientBoostingClassifier
        return HistGradientBoostingClassifier(
            max_iter=150, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=max(3, min(20, n // 15)),
            l2_regularization=1.0, categorical_features=self.encoder.categorical_mask,
            random_state=self.random_state)

    def _quality_setup(self, experiences: pd.DataFrame) -> tuple[str | None, float]:
        metric = self.quality_metric or choose_quality_metric(experiences)
        return metric, (quality_direction(experiences, metric) if metric else 1.0)

    def targets(self, experiences: pd.DataFrame) -> dict[str, pd.Series]:
        """The training target of each estimator per record (NaN where a record cannot teach it):
        ``quality`` relative within its task (``quality_target``), the others as measured."""
        metric, sign = self._quality_setup(experiences)
        q = relative_quality(quality_target(experiences, metric, sign), task_keys(experiences), self.quality_target)
        return {"quality": q, "runtime_s": runtime_target(experiences), "fail_runtime_s": fail_runtime_target(experiences),
                "energy_kwh": energy_target(experiences), "p_fail": failure_target(experiences),
                "p_oom": failure_target(experiences, ("oom",))}

    def usable_rows(self, experiences: pd.DataFrame) -> dict[str, int]:
        """How many records each estimator could learn from."""
        return {name: int(y.notna().sum()) for name, y in self.targets(experiences).items()}

    def fit(self, experiences: pd.DataFrame) -> "Estimators":
        """Train on experience records (one row per run); returns self."""
        # One OpenMP thread: these data sets are small, and on a busy machine OpenMP's spinning
        # threads make gradient boosting several times slower, not faster. (sklearn must be
        # imported first: the limit applies to OpenMP libraries already loaded.)
        import sklearn.ensemble  # noqa: F401
        with threadpool_limits(limits=1, user_api="openmp"):
            return self._fit(experiences)

    def _fit(self, experiences: pd.DataFrame) -> "Estimators":
        exp = experiences.reset_index(drop=True)
        self.models, self.n_rows, self.target_means = {}, {}, {}
        self.skipped_families_: dict[str, int] = {}
        self.quality_sd_, self.quality_sd_source_, self.quality_tasks_ = None, None, 0
        self.fail_runtime_source_, self.fail_runtime_ratio_ = None, None
        self.n_experiences = len(exp)
        self.model_meta = model_meta_from(exp)
        self.training_groups = {c: sorted(str(v) for v in _column(exp, c).dropna().unique())
                                for c in ("task_name", "model_name")}
        if len(exp) == 0:
            return self
        if self.quality_metric is None:
            self.quality_metric = choose_quality_metric(exp)
        if self.quality_metric is not None:
            self.quality_sign = quality_direction(exp, self.quality_metric)
            # Completed runs with no value of this family (e.g. causal-LM runs that log only a loss).
            no_value = quality_target(exp, self.quality_metric).isna()
            self.skipped_families_ = dict(metric_families(exp[no_value]))
            if self.skipped_families_ and "quality" in self.wanted:
                # Not an error: those runs still teach cost and failure, only their scores are left out.
                logger.info("quality is learned on %s only; completed runs scored on %s teach cost and failure but "
                            "not quality (metric families are never mixed)", self.quality_metric,
                            ", ".join(f"{f} ({n})" for f, n in sorted(self.skipped_families_.items())))
        X = feature_matrix(exp)
        self.encoder = _Encoder().fit(X)
        Xa = self.encoder.transform(X)
        y_all = self.targets(exp)
        for name, log in (("quality", False), ("runtime_s", True), ("fail_runtime_s", True), ("energy_kwh", True)):
            if name not in self.wanted:
                continue
            y = y_all[name]
            ok = y.notna().to_numpy()
            self.n_rows[name] = int(ok.sum())
            if ok.sum() < self.min_rows:
                continue
            yt = y[ok].to_numpy(dtype=float)
            self.target_means[name] = float(yt.mean())
            model = _fit_on(self._regressor(int(ok.sum())), Xa[ok], np.log(yt) if log else yt)
            self.models[name] = model
        if "quality" in self.models:
            tasks = task_keys(exp)[y_all["quality"].notna()]
            self.quality_tasks_ = int(tasks.nunique())
            if "quality_sd" in self.wanted:
                self._fit_quality_sd(Xa, y_all["quality"], task_keys(exp))
        if "fail_runtime_s" in self.wanted:
            self._fit_fail_runtime(Xa, y_all["fail_runtime_s"])
        self.calibration_ = {}
        for name in ("p_fail", "p_oom"):
            if name not in self.wanted:
                continue
            y = y_all[name]
            ok = y.notna().to_numpy()
            self.n_rows[name] = int(ok.sum())
            if ok.sum() < self.min_rows:
                continue
            yt = y[ok].to_numpy(dtype=int)
            self.target_means[name] = float(yt.mean())
            if yt.min() == yt.max():
                # One class only (e.g. nothing ever failed): the smoothed rate, not a certainty.
                self.models[name] = _Constant((yt.sum() + 0.5) / (len(yt) + 1.0))
            else:
                model = _fit_on(self._classifier(int(ok.sum())), Xa[ok], yt)
                self.models[name] = self._calibrated(name, model, Xa[ok], yt, exp[ok])
        return self

    @staticmethod
    def _inner_groups(rows: pd.DataFrame) -> tuple[str, np.ndarray] | None:
        """What the inner cross-validation holds out: whole tasks, else whole models, else nothing
        (with fewer than 3 of either, a held-out figure would be one group's anecdote)."""
        for by, labels in (("task_name", task_keys(rows)), ("model_name", _column(rows, "model_name").astype(str))):
            if labels.nunique() >= 3:
                return by, labels.to_numpy()
        return None

    def _calibrated(self, name: str, model: Any, X: np.ndarray, y: np.ndarray, rows: pd.DataFrame) -> Any:
        """Platt scaling of a failure classifier on out-of-group predictions. Boosted trees on a few
        hundred records are overconfident (held-out logit slopes of 0.2-0.75 on our data sets), and
        the search reads these probabilities as probabilities (expected cost, near-certain skips)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold
        inner = self._inner_groups(rows)
        if self.inner_folds < 2 or inner is None:
            return model
        held_out, groups = inner
        oof = np.full(len(y), np.nan)
        for tr, te in GroupKFold(n_splits=min(self.inner_folds, len(set(groups)))).split(X, groups=groups):
            if len(tr) < self.min_rows or y[tr].min() == y[tr].max():
                oof[te] = (y[tr].sum() + 0.5) / (len(tr) + 1.0)
            else:
                oof[te] = _fit_on(self._classifier(len(tr)), X[tr], y[tr]).predict_proba(X[te])[:, 1]
        z = _logit(oof)
        lr = LogisticRegression(C=1e4).fit(z[:, None], y)
        slope, intercept = float(lr.coef_[0][0]), float(lr.intercept_[0])
        if slope < 0.1:
            # A non-positive slope from a few inner folds is noise more often than a model that
            # ranks backwards: keep the ranking, damped hard, centred on the observed rate.
            slope = 0.1
            intercept = float(_logit(np.array([y.mean()]))[0] - slope * z.mean())
        self.calibration_[name] = {"slope": slope, "intercept": intercept, "held_out": held_out}
        return _Platt(model, slope, intercept)

    def _fit_quality_sd(self, Xa: np.ndarray, y: pd.Series, tasks: pd.Series) -> None:
        """``quality_sd_``: how far a quality prediction for an unseen task lands from the truth,
        measured the way the search uses it (every task predicted by a model that never saw it)."""
        from sklearn.model_selection import GroupKFold
        ok = y.notna().to_numpy()
        yt, g, Xq = y[ok].to_numpy(dtype=float), tasks[ok].to_numpy(), Xa[ok]
        n_tasks = len(set(g))
        if self.inner_folds >= 2 and n_tasks >= 3:
            resid = np.full(len(yt), np.nan)
            for tr, te in GroupKFold(n_splits=min(self.inner_folds, n_tasks)).split(Xq, groups=g):
                if len(tr) < self.min_rows:
                    continue
                model = _fit_on(self._regressor(len(tr)), Xq[tr], yt[tr])
                resid[te] = model.predict(Xq[te]) - yt[te]
            if np.isfinite(resid).any():
                self.quality_sd_ = float(np.sqrt(np.nanmean(resid ** 2)))
                self.quality_sd_source_ = "grouped-cv"
                return
        # Too few tasks to hold one out: the target's own spread, i.e. assume the prediction
        # knows no more than the mean does (wide, so the search explores rather than trusts).
        self.quality_sd_ = float(np.std(yt)) if len(yt) > 1 else None
        self.quality_sd_source_ = "target-spread" if self.quality_sd_ is not None else None

    def _fit_fail_runtime(self, Xa: np.ndarray, y: pd.Series) -> None:
        """``fail_runtime_s``: a regressor when enough failures logged their runtime (fitted in
        the loop of ``_fit``), else the median ratio of a failure's runtime to the predicted
        runtime of the same configuration had it completed."""
        ok = y.notna().to_numpy()
        if "fail_runtime_s" in self.models:
            self.fail_runtime_source_ = "regressor"
        elif ok.any() and "runtime_s" in self.models:
            pred_ok = np.exp(self.models["runtime_s"].predict(Xa[ok]))
            self.fail_runtime_ratio_ = float(np.median(y[ok].to_numpy(dtype=float) / pred_ok))
            self.fail_runtime_source_ = "ratio"

    # -- prediction --
    def _with_model_meta(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Rows whose unknown model_* cells are filled from the records of that model_name."""
        if not self.model_meta or "model_name" not in rows.columns:
            return rows
        raw = rows.copy()
        for c in MODEL_META_COLUMNS:
            known = raw["model_name"].map(lambda n: self.model_meta.get(str(n), {}).get(c))
            raw[c] = raw[c].where(raw[c].notna(), known) if c in raw.columns else known
        return raw

    def features(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The feature rows these estimators see for ``rows`` (model meta-data filled in from
        training records): the input any other model compared with them should get."""
        return feature_matrix(self._with_model_meta(rows))

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Predictions per row (same index), the columns of ``PREDICTION_COLUMNS`` (module
        docstring); NaN for every estimator that is not fitted."""
        out = pd.DataFrame(np.nan, index=rows.index, columns=PREDICTION_COLUMNS, dtype=float)
        if not self.is_fitted or len(rows) == 0:
            return out
        Xa = self.encoder.transform(self.features(rows))
        with threadpool_limits(limits=1, user_api="openmp"):
            self._predict_into(out, Xa)
        return out

    def _predict_into(self, out: pd.DataFrame, Xa: np.ndarray) -> None:
        if "quality" in self.models:
            out["quality"] = self.models["quality"].predict(Xa)
            if getattr(self, "quality_sd_", None) is not None:
                out["quality_sd"] = self.quality_sd_
        for name in ("runtime_s", "energy_kwh"):
            if name in self.models:
                out[name] = np.exp(self.models[name].predict(Xa))
        if "fail_runtime_s" in self.models:
            out["fail_runtime_s"] = np.exp(self.models["fail_runtime_s"].predict(Xa))
        elif getattr(self, "fail_runtime_source_", None) == "ratio":
            out["fail_runtime_s"] = self.fail_runtime_ratio_ * out["runtime_s"]
        for name in ("p_fail", "p_oom"):
            if name in self.models:
                out[name] = self.models[name].predict_proba(Xa)[:, 1]

    # -- persistence --
    def describe(self) -> dict[str, Any]:
        """What these estimators are (the JSON sidecar of a saved file)."""
        import sklearn
        return {
            "format": "xsearch-estimators", "format_version": FORMAT_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "xsearch_version": __version__, "sklearn_version": sklearn.__version__,
            "numpy_version": np.__version__, "pandas_version": pd.__version__,
            "python_version": platform.python_version(),
            "quality_metric": self.quality_metric, "quality_sign": self.quality_sign,
            "quality_skipped_families": getattr(self, "skipped_families_", {}),
            "quality_target": self.quality_target, "quality_tasks": getattr(self, "quality_tasks_", 0),
            "quality_sd": getattr(self, "quality_sd_", None), "quality_sd_source": getattr(self, "quality_sd_source_", None),
            "fail_runtime": getattr(self, "fail_runtime_source_", None),
            "fail_runtime_ratio": getattr(self, "fail_runtime_ratio_", None),
            "failure_calibration": getattr(self, "calibration_", {}),
            "fitted_targets": self.fitted_targets, "n_rows": self.n_rows, "n_experiences": self.n_experiences,
            "features": self.encoder.columns,
            "categorical_features": [c for c in self.encoder.columns if c in CATEGORICAL_FEATURES],
            "categories": self.encoder.categories, "training_groups": self.training_groups,
        }

    @staticmethod
    def sidecar_path(path: str | Path) -> Path:
        path = Path(path)
        return path.with_name(path.name + ".json")

    def save(self, path: str | Path) -> Path:
        """Write the estimators (joblib) and a JSON sidecar ``<path>.json`` describing them."""
        import joblib
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        joblib.dump(self, tmp)
        tmp.replace(path)
        self.sidecar_path(path).write_text(json.dumps(self.describe(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Estimators":
        """Read estimators written by ``save`` (a pickle: load only files you trust)."""
        import joblib
        import sklearn
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no estimators file at {path}")
        side = cls.sidecar_path(path)
        if side.is_file():
            meta = json.loads(side.read_text(encoding="utf-8"))
            if meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"{path}: estimators format {meta.get('format_version')} is not "
                                 f"{FORMAT_VERSION}; refit them with `xsearch estimators --fit`")
            if meta.get("sklearn_version") != sklearn.__version__:
                warnings.warn(f"{path} was saved with scikit-learn {meta.get('sklearn_version')}, this is "
                              f"{sklearn.__version__}; refit if predictions look wrong", UserWarning, stacklevel=2)
        obj = joblib.load(path)
        if not isinstance(obj, cls):
            raise ValueError(f"{path} does not hold xsearch estimators (found {type(obj).__name__})")
        return obj


# ---- honest evaluation lives in xsearch.estimator_report (it imports this module) ----------
_REPORT_NAMES = ("grouped_folds", "grouped_cv_report", "format_report")


def __getattr__(name: str) -> Any:
    # ``from xsearch.estimators import grouped_cv_report`` keeps working without a circular import.
    if name in _REPORT_NAMES:
        from . import estimator_report
        return getattr(estimator_report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
