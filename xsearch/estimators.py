"""Estimators learned from the experience store: for a candidate row (task meta-features, model,
method, hyperparameters, hardware) predict its quality, runtime, energy and probability of failing.

Quality is the task's primary metric family (the most common one in the store, e.g. ``f1``),
oriented so that higher is better: for a family whose records say ``outcome_greater_is_better``
is False (a loss), the value is negated. Rows of other metric families train only the cost and
failure estimators. Runtime and energy are learned on a log scale from completed runs.
Failure = status failed/oom/timeout; interrupted runs (stopped by a person or the machine, not by
the configuration) are left out of the failure estimator.
"""
from __future__ import annotations

import json
import math
import platform
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from xlog import __version__
from xlog import schema as S

from .features import CATEGORICAL_FEATURES, FEATURES, MODEL_META_COLUMNS, feature_matrix, model_meta_from

FAILED_STATUSES = ("failed", "oom", "timeout")
PREDICTION_COLUMNS = ["quality", "runtime_s", "energy_kwh", "p_fail", "p_oom"]
FORMAT_VERSION = 1
MAX_CATEGORIES = 250  # HistGradientBoosting handles at most 255 bins per categorical feature


# ---- loading --------------------------------------------------------------------------------
def records_frame(records: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Records (dicts) as a DataFrame with every schema column, even when there are none."""
    df = pd.DataFrame(list(records))
    missing = [n for n in S.field_names() if n not in df.columns]
    if missing:
        df = pd.concat([df, pd.DataFrame({n: [None] * len(df) for n in missing}, index=df.index, dtype=object)], axis=1)
    return df


def load_experiences(home: str | Path | None = None) -> pd.DataFrame:
    """All experience records under an XLOG_HOME (one row per run, record columns): the local
    store and every pulled mirror, through the DuckDB ``experiences`` view of ``xsearch.db``."""
    from . import db
    return db.to_pandas("SELECT * FROM experiences", home)


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


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)


def choose_quality_metric(experiences: pd.DataFrame) -> str | None:
    """The most common primary metric family among completed runs with a value."""
    ok = (_column(experiences, "status") == "completed") & _column(experiences, "outcome_primary_value").notna()
    fams = [metric_family(m) for m in _column(experiences, "outcome_primary_metric")[ok]]
    counts = Counter(f for f in fams if f)
    return counts.most_common(1)[0][0] if counts else None


def quality_direction(experiences: pd.DataFrame, metric: str) -> float:
    """+1 when higher values of the metric are better, -1 when lower are (losses)."""
    fam = _column(experiences, "outcome_primary_metric").map(metric_family)
    gib = _column(experiences, "outcome_greater_is_better")[fam == metric].dropna()
    if len(gib):
        return 1.0 if gib.astype(bool).mean() >= 0.5 else -1.0
    return -1.0 if metric.endswith(("loss", "perplexity", "error", "mse", "mae")) else 1.0


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
        if v is not None and not pd.isna(v):
            out[idx] = sign * float(v)
    return out


def runtime_target(experiences: pd.DataFrame) -> pd.Series:
    """Wall time of completed runs (total, else training + evaluation)."""
    total = pd.to_numeric(_column(experiences, "outcome_total_runtime_s"), errors="coerce")
    train = pd.to_numeric(_column(experiences, "outcome_train_runtime_s"), errors="coerce")
    ev = pd.to_numeric(_column(experiences, "outcome_eval_runtime_s"), errors="coerce").fillna(0.0)
    rt = total.fillna(train + ev).astype(float)
    return rt.where((_column(experiences, "status") == "completed") & (rt > 0))


def energy_target(experiences: pd.DataFrame) -> pd.Series:
    """Measured energy of completed runs (runs without an energy meter are unknown, not zero)."""
    kwh = pd.to_numeric(_column(experiences, "energy_kwh"), errors="coerce").astype(float)
    src = _column(experiences, "energy_source")
    measured = src.notna() & (src != "none")
    return kwh.where((_column(experiences, "status") == "completed") & measured & (kwh > 0))


def failure_target(experiences: pd.DataFrame, statuses: Iterable[str] = FAILED_STATUSES) -> pd.Series:
    """1.0 for runs that failed with one of ``statuses``, 0.0 for other failures or completed runs,
    NaN for interrupted runs (a person or the machine stopped them, not the configuration)."""
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
    """

    def __init__(self, quality_metric: str | None = None, min_rows: int = 8, random_state: int = 0,
                 targets: Iterable[str] | None = None) -> None:
        self.quality_metric = quality_metric
        self.wanted = list(targets) if targets is not None else list(PREDICTION_COLUMNS)
        unknown = set(self.wanted) - set(PREDICTION_COLUMNS)
        if unknown:
            raise ValueError(f"unknown estimator(s) {sorted(unknown)}; choose from {PREDICTION_COLUMNS}")
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
        return [t for t in PREDICTION_COLUMNS if t in self.models]

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

    def targets(self, experiences: pd.DataFrame) -> dict[str, pd.Series]:
        """The training target of each estimator per record (NaN where a record cannot teach it)."""
        metric = self.quality_metric or choose_quality_metric(experiences)
        sign = quality_direction(experiences, metric) if metric else 1.0
        return {"quality": quality_target(experiences, metric, sign), "runtime_s": runtime_target(experiences),
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
        X = feature_matrix(exp)
        self.encoder = _Encoder().fit(X)
        Xa = self.encoder.transform(X)
        y_all = self.targets(exp)
        for name, transform in (("quality", None), ("runtime_s", np.log), ("energy_kwh", np.log)):
            if name not in self.wanted:
                continue
            y = y_all[name]
            ok = y.notna().to_numpy()
            self.n_rows[name] = int(ok.sum())
            if ok.sum() < self.min_rows:
                continue
            yt = y[ok].to_numpy(dtype=float)
            self.target_means[name] = float(yt.mean())
            model = self._regressor(int(ok.sum()))
            model.fit(Xa[ok], transform(yt) if transform else yt)
            self.models[name] = model
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
                model = self._classifier(int(ok.sum()))
                model.fit(Xa[ok], yt)
                self.models[name] = model
        return self

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

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Predictions per row (same index): quality, runtime_s, energy_kwh, p_fail, p_oom; NaN
        for every estimator that is not fitted."""
        out = pd.DataFrame(np.nan, index=rows.index, columns=PREDICTION_COLUMNS, dtype=float)
        if not self.is_fitted or len(rows) == 0:
            return out
        Xa = self.encoder.transform(feature_matrix(self._with_model_meta(rows)))
        with threadpool_limits(limits=1, user_api="openmp"):
            self._predict_into(out, Xa)
        return out

    def _predict_into(self, out: pd.DataFrame, Xa: np.ndarray) -> None:
        if "quality" in self.models:
            out["quality"] = self.models["quality"].predict(Xa)
        for name in ("runtime_s", "energy_kwh"):
            if name in self.models:
                out[name] = np.exp(self.models[name].predict(Xa))
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


# ---- honest evaluation: grouped cross-validation -------------------------------------------
def _group_labels(experiences: pd.DataFrame, group_by: str) -> pd.Series:
    if group_by not in experiences.columns:
        raise ValueError(f"cannot group by {group_by!r}: not a column of the experiences")
    return experiences[group_by].astype(object).map(lambda v: "<none>" if v is None or pd.isna(v) else str(v))


def grouped_folds(experiences: pd.DataFrame, group_by: str = "task_name",
                  n_splits: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train positions, test positions) per fold; each group is in the test part of exactly one
    fold and never in the training part of that fold."""
    from sklearn.model_selection import GroupKFold
    groups = _group_labels(experiences, group_by).to_numpy()
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError(f"grouped cross-validation needs at least 2 distinct {group_by} values, found {n_groups}")
    k = min(n_splits, n_groups)
    return [(tr, te) for tr, te in GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups)]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _within(pred: np.ndarray, y: np.ndarray, groups: np.ndarray, min_size: int = 5) -> float | None:
    vals = []
    for g in np.unique(groups):
        m = groups == g
        if m.sum() >= min_size:
            r = _spearman(pred[m], y[m])
            if r is not None:
                vals.append(r)
    return float(np.mean(vals)) if vals else None


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, p))


def _mean_or_none(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def grouped_cv_report(experiences: pd.DataFrame, group_by: str = "task_name", n_splits: int = 5,
                      random_state: int = 0, n_random: int = 20, targets: Iterable[str] | None = None,
                      splitter: Callable[[pd.DataFrame], list[tuple[np.ndarray, np.ndarray]]] | None = None
                      ) -> dict[str, Any]:
    """Cross-validation that holds out whole groups (tasks or models): every record is predicted
    by estimators trained without any record of its group. Figures are pooled over the folds:
    quality and cost (runtime, energy) Spearman rank correlation and MAE against a mean
    predictor (the training fold's mean) and a random ranker (random draws of training targets);
    failure and OOM ROC-AUC against random scores. ``splitter`` replaces the grouped folds
    (only to show what leakage would look like); ``targets`` limits the estimators evaluated."""
    exp = experiences.reset_index(drop=True)
    groups = _group_labels(exp, group_by).to_numpy()
    folds = splitter(exp) if splitter else grouped_folds(exp, group_by, n_splits)
    metric = choose_quality_metric(exp)  # a name only: the same target in every fold
    sign = quality_direction(exp, metric) if metric else 1.0
    truth = {t: y.to_numpy(dtype=float) for t, y in Estimators(quality_metric=metric).targets(exp).items()}
    pred = {t: np.full(len(exp), np.nan) for t in PREDICTION_COLUMNS}
    mean_pred = {t: np.full(len(exp), np.nan) for t in PREDICTION_COLUMNS}
    rng = np.random.default_rng(random_state)
    random_pred = {t: np.full((n_random, len(exp)), np.nan) for t in PREDICTION_COLUMNS}
    fold_info = []
    for i, (tr, te) in enumerate(folds):
        est = Estimators(quality_metric=metric, random_state=random_state, targets=targets).fit(exp.iloc[tr])
        trained_on = set(est.training_groups.get(group_by, [])) if group_by in ("task_name", "model_name") \
            else set(groups[tr])
        test_groups = set(groups[te])
        fold_info.append({"fold": i, "n_train": int(len(tr)), "n_test": int(len(te)),
                          "train_groups": sorted(trained_on), "test_groups": sorted(test_groups),
                          "fitted_targets": est.fitted_targets})
        p = est.predict(exp.iloc[te])
        for t in PREDICTION_COLUMNS:
            pred[t][te] = p[t].to_numpy()
            y_tr = truth[t][tr]
            y_tr = y_tr[~np.isnan(y_tr)]
            if len(y_tr):
                mean_pred[t][te] = y_tr.mean()
                random_pred[t][:, te] = rng.choice(y_tr, size=(n_random, len(te))) if t not in ("p_fail", "p_oom") \
                    else rng.random((n_random, len(te)))
    results: dict[str, Any] = {}
    for t in ("quality", "runtime_s", "energy_kwh"):
        ok = ~np.isnan(truth[t]) & ~np.isnan(pred[t])
        y, g = truth[t][ok], groups[ok]
        entry: dict[str, Any] = {"n": int(ok.sum())}
        if ok.sum():
            entry["model"] = {"spearman": _spearman(pred[t][ok], y), "spearman_within_group": _within(pred[t][ok], y, g),
                              "mae": float(np.mean(np.abs(pred[t][ok] - y)))}
            entry["mean"] = {"spearman": None, "spearman_within_group": None,
                             "mae": float(np.nanmean(np.abs(mean_pred[t][ok] - y)))}
            rp = random_pred[t][:, ok]
            entry["random"] = {"spearman": _mean_or_none([_spearman(r, y) for r in rp]),
                               "spearman_within_group": _mean_or_none([_within(r, y, g) for r in rp]),
                               "mae": float(np.nanmean(np.abs(rp - y)))}
        results[t] = entry
    for t in ("p_fail", "p_oom"):
        ok = ~np.isnan(truth[t]) & ~np.isnan(pred[t])
        y = truth[t][ok].astype(int)
        entry = {"n": int(ok.sum()), "positives": int(y.sum())}
        if ok.sum():
            entry["model"] = {"roc_auc": _auc(y, pred[t][ok])}
            entry["mean"] = {"roc_auc": _auc(y, mean_pred[t][ok]) if len(np.unique(y)) > 1 else None}
            entry["random"] = {"roc_auc": _mean_or_none([_auc(y, r) for r in random_pred[t][:, ok]])}
        results[t] = entry
    return {"group_by": group_by, "n_splits": len(folds), "n_records": len(exp), "n_groups": len(set(groups)),
            "quality_metric": metric, "quality_sign": sign, "targets": results, "folds": fold_info}


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text table of a grouped CV report."""
    def f(v: Any) -> str:
        # Three significant digits for large and tiny values (energy MAEs are ~1e-4 kWh).
        return "n/a" if v is None else (f"{v:.3g}" if abs(v) >= 100 or 0 < abs(v) < 0.01 else f"{v:.3f}")
    q = report.get("quality_metric") or "none"
    sign = " (negated: lower is better)" if report.get("quality_sign", 1.0) < 0 else ""
    lines = [f"Grouped CV holding out whole {report['group_by']} groups: {report['n_groups']} groups, "
             f"{report['n_splits']} folds, {report['n_records']} records; quality = {q}{sign}",
             f"{'target':<11} {'figure':<22} {'model':>9} {'mean':>9} {'random':>9} {'n':>6}"]
    for t, entry in report["targets"].items():
        if "model" not in entry:
            lines.append(f"{t:<11} {'(no data)':<22} {'':>9} {'':>9} {'':>9} {entry['n']:>6}")
            continue
        keys = ("roc_auc",) if t.startswith("p_") else ("spearman", "spearman_within_group", "mae")
        for k in keys:
            lines.append(f"{t:<11} {k:<22} {f(entry['model'].get(k)):>9} {f(entry['mean'].get(k)):>9} "
                         f"{f(entry['random'].get(k)):>9} {entry['n']:>6}")
    return "\n".join(lines)
