"""Honest evaluation of the estimators: cross-validation that holds out whole groups (tasks or
models), figures per held-out group and pooled, against simple baselines.

Every record is predicted by estimators fitted without any record of its group. For each
estimator the report gives, pooled over all held-out rows and per held-out group (with the mean
and the minimum over groups):

- quality, runtime, fail_runtime, energy: Spearman rank correlation (within the group, and within
  each task of it: what a search ranking one task's candidates needs) and MAE in the target's
  units (quality: relative units, e.g. percentile points);
- p_fail, p_oom: ROC-AUC (None for a group whose held-out runs all failed or all succeeded) and
  the Brier score.

Baselines, fitted on the same training fold: ``per_model`` (the training fold's mean target of the
candidate's ``model_name``, e.g. its failure rate, else the overall mean), ``linear`` (a plain
logistic regression for the failure targets, a ridge regression for the others, on the same
features: one-hot categoricals, standardised numerics, median imputation with missing-value
indicators) and ``mean`` (the training fold's mean: no ranking at all).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from .estimators import PREDICTION_COLUMNS, QUALITY_TARGETS, Estimators, choose_quality_metric, \
    quality_direction, quality_family, task_keys
from .features import CATEGORICAL_FEATURES, NUMERIC_FEATURES

__all__ = ["grouped_folds", "grouped_cv_report", "format_report", "PREDICTORS"]

REGRESSION_TARGETS = ("quality", "runtime_s", "fail_runtime_s", "energy_kwh")
CLASSIFICATION_TARGETS = ("p_fail", "p_oom")
LOG_TARGETS = ("runtime_s", "fail_runtime_s", "energy_kwh")  # learned (and baselined) on a log scale
PREDICTORS = ("model", "per_model", "linear", "mean")
MIN_RANK_ROWS = 4  # rows a task needs before a Spearman within it means anything


def _group_labels(experiences: pd.DataFrame, group_by: str) -> pd.Series:
    if group_by not in experiences.columns:
        raise ValueError(f"cannot group by {group_by!r}: not a column of the experiences")
    return experiences[group_by].astype(object).map(lambda v: "<none>" if v is None or pd.isna(v) else str(v))


def grouped_folds(experiences: pd.DataFrame, group_by: str = "task_name",
                  n_splits: int | None = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train positions, test positions) per fold; each group is in the test part of exactly one
    fold and never in the training part of that fold. ``n_splits`` 0 or None: one fold per group
    (leave one group out)."""
    from sklearn.model_selection import GroupKFold
    groups = _group_labels(experiences, group_by).to_numpy()
    n_groups = len(set(groups))
    if n_groups < 2:
        raise ValueError(f"grouped cross-validation needs at least 2 distinct {group_by} values, found {n_groups}")
    k = n_groups if not n_splits else min(n_splits, n_groups)
    return [(tr, te) for tr, te in GroupKFold(n_splits=k).split(np.zeros(len(groups)), groups=groups)]


# ---- baselines -----------------------------------------------------------------------------------
def _per_model(names_tr: np.ndarray, y_tr: np.ndarray, names_te: np.ndarray) -> np.ndarray:
    """The training mean of each model_name (a failure rate for 0/1 targets), else the overall mean."""
    means = pd.Series(y_tr).groupby(names_tr).mean().to_dict()
    overall = float(np.mean(y_tr))
    return np.array([means.get(n, overall) for n in names_te], dtype=float)


def _linear(X_tr: pd.DataFrame, y_tr: np.ndarray, X_te: pd.DataFrame, classify: bool) -> np.ndarray:
    """A plain linear model on the estimators' features (the baseline a boosted model must beat)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    if classify and len(np.unique(y_tr)) < 2:
        return np.full(len(X_te), (y_tr.sum() + 0.5) / (len(y_tr) + 1.0))
    num = [c for c in NUMERIC_FEATURES if X_tr[c].notna().any()]
    cat = [c for c in CATEGORICAL_FEATURES if X_tr[c].notna().any()]
    parts = []
    if num:
        parts.append(("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()), num))
    if cat:
        parts.append(("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="<none>"),
                                           OneHotEncoder(handle_unknown="ignore")), cat))
    if not parts:
        return np.full(len(X_te), float(np.mean(y_tr)))
    last = LogisticRegression(max_iter=2000) if classify else Ridge(alpha=1.0)
    model = make_pipeline(ColumnTransformer(parts), last)
    cols = num + cat
    prep = lambda X: X[cols].astype({c: object for c in cat})  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny folds
        model.fit(prep(X_tr), y_tr.astype(int) if classify else y_tr)
        if classify:
            return model.predict_proba(prep(X_te))[:, 1]
        # A line extrapolates without bound; any user would clip it to the values seen.
        return np.clip(model.predict(prep(X_te)), y_tr.min(), y_tr.max())


# ---- figures -----------------------------------------------------------------------------------
def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def _within(pred: np.ndarray, y: np.ndarray, groups: np.ndarray, min_size: int = MIN_RANK_ROWS) -> float | None:
    """Mean Spearman within each group of ``groups`` that has ``min_size`` rows."""
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


def _regression_figures(pred: np.ndarray, y: np.ndarray, tasks: np.ndarray) -> dict[str, float | None]:
    ok = ~np.isnan(pred)
    if not ok.any():
        return {"spearman": None, "spearman_within_task": None, "mae": None}
    return {"spearman": _spearman(pred[ok], y[ok]), "spearman_within_task": _within(pred[ok], y[ok], tasks[ok]),
            "mae": float(np.mean(np.abs(pred[ok] - y[ok])))}


def _classification_figures(pred: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    ok = ~np.isnan(pred)
    if not ok.any():
        return {"roc_auc": None, "brier": None}
    return {"roc_auc": _auc(y[ok], pred[ok]), "brier": float(np.mean((pred[ok] - y[ok]) ** 2))}


def _over_groups(per_group: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and minimum of each figure over the groups where it is defined, and their number."""
    out: dict[str, dict[str, Any]] = {}
    for p in PREDICTORS:
        figs: dict[str, Any] = {}
        keys = per_group[0][p].keys() if per_group and p in per_group[0] else []
        for k in keys:
            vals = [g[p][k] for g in per_group if g[p].get(k) is not None]
            figs[k] = float(np.mean(vals)) if vals else None
            figs[f"{k}_min"] = float(np.min(vals)) if vals else None
            figs[f"{k}_groups"] = len(vals)
        out[p] = figs
    return out


def _constant_within(pred: np.ndarray, has: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> bool:
    for _, te in folds:
        v = pred[te][has[te]]
        v = v[~np.isnan(v)]
        if len(v) and v.max() - v.min() > 1e-12:
            return False
    return True


# ---- the report ----------------------------------------------------------------------------------
def grouped_cv_report(experiences: pd.DataFrame, group_by: str = "task_name", n_splits: int | None = 5,
                      random_state: int = 0, targets: Iterable[str] | None = None,
                      splitter: Callable[[pd.DataFrame], list[tuple[np.ndarray, np.ndarray]]] | None = None,
                      quality_target: str = "rank", baselines: bool = True,
                      quality_metric: str | None = None) -> dict[str, Any]:
    """Cross-validation that holds out whole groups (``group_by``: ``task_name`` or ``model_name``).

    Returns, per estimator in ``targets`` (default all), the pooled figures of each predictor
    (``entry["model"]``, ``entry["per_model"]``, ``entry["linear"]``, ``entry["mean"]``), the
    figures per held-out group (``entry["groups"]``) and their mean and minimum over groups
    (``entry["over_groups"]``), plus the folds and what each fold's estimators were trained on.
    ``n_splits`` 0 or None holds out one group per fold. ``splitter`` replaces the grouped folds
    (only to show what leakage would look like). ``baselines=False`` skips the linear baseline
    (the slowest one). ``quality_metric``: the metric family quality is evaluated on (default the
    most common one; several families raise ``MixedMetricFamilies``: an F1 and a loss are never
    scored together)."""
    if quality_target not in QUALITY_TARGETS:
        raise ValueError(f"unknown quality target {quality_target!r}; choose from {QUALITY_TARGETS}")
    exp = experiences.reset_index(drop=True)
    groups = _group_labels(exp, group_by).to_numpy()
    tasks = task_keys(exp).to_numpy()
    models = _group_labels(exp, "model_name").to_numpy() if "model_name" in exp.columns \
        else np.array(["<none>"] * len(exp), dtype=object)
    folds = splitter(exp) if splitter else grouped_folds(exp, group_by, n_splits)
    # A name only: the same target in every fold, one metric family.
    metric = quality_family(quality_metric) or choose_quality_metric(exp)
    sign = quality_direction(exp, metric) if metric else 1.0
    wanted = [t for t in PREDICTION_COLUMNS if targets is None or t in set(targets)]
    evaluated = [t for t in (*REGRESSION_TARGETS, *CLASSIFICATION_TARGETS) if t in wanted]
    truth = {t: y.to_numpy(dtype=float) for t, y in
             Estimators(quality_metric=metric, quality_target=quality_target).targets(exp).items()}
    pred = {p: {t: np.full(len(exp), np.nan) for t in evaluated} for p in PREDICTORS}
    sd = np.full(len(exp), np.nan)
    fold_info = []
    import sklearn.ensemble  # noqa: F401  (loaded before the thread limit, see Estimators.fit)
    for i, (tr, te) in enumerate(folds):
        est = Estimators(quality_metric=metric, random_state=random_state, targets=targets,
                         quality_target=quality_target).fit(exp.iloc[tr])
        trained_on = set(est.training_groups.get(group_by, [])) if group_by in ("task_name", "model_name") \
            else set(groups[tr])
        fold_info.append({"fold": i, "n_train": int(len(tr)), "n_test": int(len(te)),
                          "train_groups": sorted(trained_on), "test_groups": sorted(set(groups[te])),
                          "fitted_targets": est.fitted_targets})
        p = est.predict(exp.iloc[te])
        if "quality_sd" in p:
            sd[te] = p["quality_sd"].to_numpy()
        X_tr = est.features(exp.iloc[tr]) if baselines else None
        X_te = est.features(exp.iloc[te]) if baselines else None
        # The baselines learn the targets the estimators learned: relative quality computed
        # within the training fold, blind to held-out runs of the same task (models held out).
        train_truth = est.targets(exp.iloc[tr])
        for t in evaluated:
            pred["model"][t][te] = p[t].to_numpy()
            y_tr = train_truth[t].to_numpy(dtype=float)
            ok = ~np.isnan(y_tr)
            if not ok.any():
                continue
            y_fit = np.log(y_tr[ok]) if t in LOG_TARGETS else y_tr[ok]
            back = np.exp if t in LOG_TARGETS else (lambda v: v)
            pred["mean"][t][te] = back(np.full(len(te), y_fit.mean()))
            pred["per_model"][t][te] = back(_per_model(models[tr][ok], y_fit, models[te]))
            if baselines and ok.sum() >= 2:
                with threadpool_limits(limits=1, user_api="openmp"):
                    pred["linear"][t][te] = back(_linear(X_tr[ok], y_fit, X_te, t in CLASSIFICATION_TARGETS))
    results: dict[str, Any] = {}
    for t in evaluated:
        has = ~np.isnan(truth[t]) & ~np.isnan(pred["model"][t])
        y = truth[t][has]
        classify = t in CLASSIFICATION_TARGETS
        entry: dict[str, Any] = {"n": int(has.sum())}
        if classify:
            entry["positives"] = int(y.sum())
        if not has.any():
            results[t] = entry
            continue
        figures = (lambda pr, yy, tk: _classification_figures(pr, yy)) if classify else _regression_figures
        for pname in PREDICTORS:
            entry[pname] = figures(pred[pname][t][has], y, tasks[has])
            if _constant_within(pred[pname][t], has, folds):
                # Constant within every fold (the mean; per-model when every held-out model is new):
                # pooling constants across folds "ranks" by fold, an artefact. It ranks nothing.
                entry[pname].update({k: (0.5 if k == "roc_auc" and v is not None else None)
                                     for k, v in entry[pname].items()
                                     if k in ("roc_auc", "spearman", "spearman_within_task")})
        if t == "quality" and not np.isnan(sd[has]).all():
            # Is quality_sd an honest spread? ~0.68 of held-out errors within one sd if it is.
            err = np.abs(pred["model"][t][has] - y)
            entry["model"]["quality_sd"] = float(np.nanmean(sd[has]))
            entry["model"]["within_1sd"] = float(np.mean(err <= sd[has]))
        per_group = []
        for g in sorted(set(groups[has])):
            m = groups[has] == g
            row: dict[str, Any] = {"group": g, "n": int(m.sum())}
            if classify:
                row["positives"] = int(y[m].sum())
            for pname in PREDICTORS:
                row[pname] = figures(pred[pname][t][has][m], y[m], tasks[has][m])
            per_group.append(row)
        entry["groups"] = per_group
        entry["over_groups"] = _over_groups(per_group)
        if classify:
            entry["groups_without_auc"] = [r["group"] for r in per_group if r["model"]["roc_auc"] is None]
        results[t] = entry
    return {"group_by": group_by, "n_splits": len(folds), "n_records": len(exp), "n_groups": len(set(groups)),
            "quality_metric": metric, "quality_sign": sign, "quality_target": quality_target,
            "targets": results, "folds": fold_info}


# ---- text --------------------------------------------------------------------------------------
def _f(v: Any) -> str:
    # Three significant digits for large and tiny values (energy MAEs are ~1e-4 kWh).
    if v is None:
        return "n/a"
    if abs(v) < 1e-9:
        return "0"  # float noise (e.g. the MAE of runs that all timed out at the same limit)
    return f"{v:.3g}" if abs(v) >= 100 or abs(v) < 0.01 else f"{v:.3f}"


FIGURES = {"quality": ("spearman_within_task", "spearman", "mae"), "runtime_s": ("spearman_within_task", "spearman", "mae"),
           "fail_runtime_s": ("spearman", "mae"), "energy_kwh": ("spearman_within_task", "spearman", "mae"),
           "p_fail": ("roc_auc", "brier"), "p_oom": ("roc_auc", "brier")}


def format_report(report: Mapping[str, Any], per_group: bool = True) -> str:
    """Plain-text tables of a grouped CV report: each figure pooled over held-out rows and as the
    mean (and minimum) over held-out groups, for the estimators and each baseline; then, with
    ``per_group``, the key figures of every held-out group."""
    q = report.get("quality_metric") or "none"
    sign = ", negated: lower is better" if report.get("quality_sign", 1.0) < 0 else ""
    kind = report.get("quality_target", "rank")
    qdesc = f"{q} relative within each task ({kind}{sign})" if kind != "absolute" else f"{q} (absolute{sign})"
    lines = [f"Grouped CV holding out whole {report['group_by']} groups: {report['n_groups']} groups, "
             f"{report['n_splits']} folds, {report['n_records']} records; quality = {qdesc}",
             "pooled = over all held-out rows; groups = mean over held-out groups [minimum] (groups with a figure)",
             f"{'target':<14} {'figure':<21} {'':<7}" + "".join(f"{p:>10}" for p in PREDICTORS) + f"  {'n'}"]
    for t, entry in report["targets"].items():
        if "model" not in entry:
            lines.append(f"{t:<14} {'(no data)':<21} {'':<7}" + " " * 10 * len(PREDICTORS) + f"  {entry['n']}")
            continue
        n = f"{entry['n']}" + (f" ({entry['positives']} positive)" if "positives" in entry else "")
        for k in FIGURES.get(t, ()):
            lines.append(f"{t:<14} {k:<21} {'pooled':<7}" + "".join(f"{_f(entry[p].get(k)):>10}" for p in PREDICTORS)
                         + f"  {n}")
            og = entry["over_groups"]
            k_groups = og["model"].get(f"{k}_groups", 0)
            lines.append(f"{'':<14} {'':<21} {'groups':<7}"
                         + "".join(f"{_f(og[p].get(k)):>10}" for p in PREDICTORS)
                         + f"  [{_f(og['model'].get(f'{k}_min'))}] ({k_groups})")
        if t == "quality" and "within_1sd" in entry["model"]:
            lines.append(f"{t:<14} {'quality_sd':<21} {'':<7}{_f(entry['model']['quality_sd']):>10}  "
                         f"held-out errors within 1 sd: {entry['model']['within_1sd']:.2f} (honest: ~0.68)")
        if entry.get("groups_without_auc"):
            lines.append(f"{'':<14} no ROC-AUC for {len(entry['groups_without_auc'])} group(s) whose held-out runs "
                         f"all {'failed or all succeeded' if t == 'p_fail' else 'hit or all missed OOM'}")
    if per_group:
        lines += ["", _group_table(report)]
    return "\n".join(lines)


def _group_table(report: Mapping[str, Any]) -> str:
    """One line per held-out group: failure AUC (model / per-model / linear), OOM AUC, quality and
    runtime Spearman within the group's tasks (model / per-model)."""
    tg = report["targets"]
    cols = [("p_fail", "roc_auc", ("model", "per_model", "linear")), ("p_oom", "roc_auc", ("model", "per_model")),
            ("quality", "spearman_within_task", ("model", "per_model")),
            ("runtime_s", "spearman_within_task", ("model", "per_model"))]
    cols = [c for c in cols if "groups" in tg.get(c[0], {})]
    by_group: dict[str, dict[str, Any]] = {}
    for t, _, _ in cols:
        for row in tg[t]["groups"]:
            by_group.setdefault(row["group"], {})[t] = row
    head = f"{'held-out ' + report['group_by']:<34} {'runs':>5} {'fail':>5}"
    for t, k, ps in cols:
        head += f"  {t + ' ' + ('auc' if k == 'roc_auc' else 'rho'):>{7 * len(ps)}}"
    sub = f"{'':<34} {'':>5} {'':>5}" + "".join("  " + "".join(f"{p[:6]:>7}" for p in ps) for _, _, ps in cols)
    lines = [head, sub]
    for g in sorted(by_group):
        rows = by_group[g]
        base = rows.get("p_fail") or next(iter(rows.values()))
        name = g if len(g) <= 34 else g[:31] + "..."
        line = f"{name:<34} {base['n']:>5} {str(base.get('positives', '')):>5}"
        for t, k, ps in cols:
            r = rows.get(t)
            line += "  " + "".join(f"{_f(r[p].get(k)) if r else '':>7}" for p in ps)
        lines.append(line)
    return "\n".join(lines)
