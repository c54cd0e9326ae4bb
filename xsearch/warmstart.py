"""Warm start: move the search's initial sampling distribution using the experience of the most
similar past tasks. Successful runs pull probability towards their choices (in proportion to
task similarity x quality rank within their task); failed runs (failed, oom, timeout) push it
away from theirs. Every value keeps at least a floor probability, so the search still explores.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np
import pandas as pd

from xlog import schema as S

from .estimators import FAILED_STATUSES, metric_family

Distribution = dict[str, dict[Any, float]]

#: Task meta-features compared for similarity, and whether they are compared on a log scale
#: (sizes and ratios spanning orders of magnitude).
SIMILARITY_FEATURES: dict[str, bool] = {
    "task_n_train": True, "task_n_classes": True, "task_class_entropy": False, "task_class_prob_min": False,
    "task_class_prob_max": False, "task_imbalance_ratio": True, "task_chars_mean": True, "task_chars_cv": False,
    "task_tokens_mean": True, "task_tokens_cv": False, "task_type_token_ratio": False,
    "task_landmarker_score": False,
}
#: Task kinds: spellings of one kind that records may carry (user-given types may use underscores).
_KIND_ALIASES = {"text_classification": "text-classification", "classification": "text-classification",
                 "question_answering": "question-answering", "qa": "question-answering",
                 "causal_lm": "causal-lm", "clm": "causal-lm", "language-modeling": "causal-lm"}
#: Generative meta-features: compared only where both tasks have them (QA with QA, LM with LM).
GENERATIVE_FEATURES: dict[str, bool] = {
    "task_prompt_tokens_mean": True, "task_answer_tokens_mean": True, "task_context_tokens_mean": True,
    "task_question_tokens_mean": True, "task_answer_chars_mean": True, "task_question_context_overlap": False,
    "task_answer_in_context": False,
}


SIMILARITY_FEATURES.update(GENERATIVE_FEATURES)


def task_kind(task_type: Any) -> str | None:
    """The kind of a task type (aliases resolved, lower case), None when unknown."""
    if task_type is None or (isinstance(task_type, float) and math.isnan(task_type)) or not str(task_type).strip():
        return None
    t = str(task_type).strip().lower()
    return _KIND_ALIASES.get(t, t)


def _task_key(row: Mapping[str, Any]) -> str | None:
    name = row.get("task_name")
    return None if name is None or (isinstance(name, float) and math.isnan(name)) else str(name)


def _vector(values: Mapping[str, Any]) -> np.ndarray:
    out = np.full(len(SIMILARITY_FEATURES), np.nan)
    for j, (c, log) in enumerate(SIMILARITY_FEATURES.items()):
        v = values.get(c)
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isnan(v) or (log and v <= 0):
            continue
        out[j] = math.log(v) if log else v
    return out


def task_table(experiences: pd.DataFrame) -> pd.DataFrame:
    """One row per named past task: its meta-features (median over its records) and task_type."""
    if experiences is None or len(experiences) == 0 or "task_name" not in experiences.columns:
        return pd.DataFrame(columns=["task_type", *SIMILARITY_FEATURES])
    named = experiences[experiences["task_name"].notna()]
    rows = {}
    for name, g in named.groupby("task_name"):
        row: dict[str, Any] = {}
        for c in SIMILARITY_FEATURES:
            row[c] = pd.to_numeric(g[c], errors="coerce").median() if c in g.columns else np.nan
        types = g["task_type"].dropna() if "task_type" in g.columns else pd.Series([], dtype=object)
        row["task_type"] = types.mode().iloc[0] if len(types) else None
        rows[str(name)] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def similar_tasks(experiences: pd.DataFrame, task_features: Mapping[str, Any], k: int = 5) -> list[tuple[str, float]]:
    """The k past tasks most similar to a new one, as (task_name, similarity in (0, 1]), best first.

    Meta-features are put on a log scale where they span orders of magnitude and z-normalised over
    the past tasks; the distance is the root mean square difference over the features both tasks
    have, and similarity = 1 / (1 + distance). Only tasks of one kind are compared: when the new
    task declares a ``task_type``, past tasks of another kind are never similar (a causal-LM task
    teaches nothing about which configurations win on text classification, and their scores are
    on other metrics); past tasks with no declared type stay comparable. The new task's own name is
    excluded, so that re-running a task does not count its own records as "similar".
    """
    table = task_table(experiences)
    own = _task_key(task_features)
    if own is not None:
        table = table.drop(index=own, errors="ignore")
    new_kind = task_kind(task_features.get("task_type"))
    if new_kind is not None and len(table):
        kinds = table["task_type"].map(task_kind)
        table = table[kinds.isna() | (kinds == new_kind)]
    if len(table) == 0 or k <= 0:
        return []
    past = np.vstack([_vector(r) for _, r in table.iterrows()])
    new = _vector(task_features)
    both = np.vstack([past, new[None, :]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a feature no task has: all-NaN column
        mu, sd = np.nanmean(both, axis=0), np.nanstd(both, axis=0)
    # A feature constant across all tasks says nothing about similarity: scale 1 keeps it harmless.
    sd = np.where(np.isfinite(sd) & (sd > 1e-12), sd, 1.0)
    mu = np.where(np.isfinite(mu), mu, 0.0)
    z_past, z_new = (past - mu) / sd, (new - mu) / sd
    out = []
    for name, zp in zip(table.index, z_past):
        shared = ~np.isnan(zp) & ~np.isnan(z_new)
        if not shared.any():
            continue  # nothing to compare: no evidence either way
        d = float(np.sqrt(np.mean((zp[shared] - z_new[shared]) ** 2)))
        out.append((str(name), 1.0 / (1.0 + d)))
    out.sort(key=lambda x: (-x[1], x[0]))
    return out[:k]


def _match(value: Any, options: list[Any]) -> Any:
    """The option of a decision a record's value corresponds to, or None.

    Numbers map to the nearest option (on a log scale for positive values, e.g. learning rates)
    when they lie within half a step of the options' range; strings and booleans must be equal
    (strings case-insensitively)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return next((o for o in options if isinstance(o, str) and o.lower() == value.lower()), None)
    if isinstance(value, (bool, np.bool_)):
        return next((o for o in options if isinstance(o, (bool, np.bool_)) and bool(o) == bool(value)), None)
    nums = [o for o in options if isinstance(o, (int, float, np.integer, np.floating)) and not isinstance(o, bool)]
    if not nums:
        return None
    v = float(value)
    for o in nums:
        if math.isclose(float(o), v, rel_tol=1e-9, abs_tol=1e-12):
            return o
    use_log = v > 0 and all(float(o) > 0 for o in nums)
    f = (lambda x: math.log(float(x))) if use_log else float
    pos = sorted((f(o), o) for o in nums)
    xs = [p for p, _ in pos]
    if len(xs) == 1:
        return None  # a single option only matches itself
    half = min(b - a for a, b in zip(xs, xs[1:]) if b > a) / 2 if len(set(xs)) > 1 else 0.0
    fv = f(v)
    if fv < xs[0] - half or fv > xs[-1] + half:
        return None
    return min(pos, key=lambda p: abs(p[0] - fv))[1]


def _quality_rank(group: pd.DataFrame) -> pd.Series:
    """Rank of each completed run's primary value among the task's runs scored on the same metric
    family, in (0, 1], best = 1: a loss is ranked lower-is-better (by name, else by the record's
    ``outcome_greater_is_better``) and never against an F1."""
    v = pd.to_numeric(group["outcome_primary_value"], errors="coerce")
    metric = group["outcome_primary_metric"] if "outcome_primary_metric" in group.columns \
        else pd.Series([None] * len(group), index=group.index, dtype=object)
    fam = metric.map(lambda m: metric_family(m) or "?")
    gib = group["outcome_greater_is_better"] if "outcome_greater_is_better" in group.columns \
        else pd.Series([None] * len(group), index=group.index, dtype=object)
    up = [False if S.lower_is_better(f) else (True if g is None or pd.isna(g) else bool(g))
          for f, g in zip(fam, gib)]
    v = v.where(pd.Series(up, index=group.index), -v)
    return v.groupby(fam).rank(pct=True, method="average")


def warm_start(distribution: Mapping[str, Mapping[Any, float]], experiences: pd.DataFrame | None,
               task_features: Mapping[str, Any], k: int = 5, strength: float = 2.0,
               floor: float = 0.02) -> Distribution:
    """A new distribution moved by the experience of the k most similar past tasks.

    For each decision, successful runs of a similar task add similarity x quality rank to the
    "pull" of the value they used, failed runs (failed/oom/timeout) add similarity to its "push".
    Each value's probability is multiplied by exp(strength x (c_pull x pull share - c_push x push
    share)), where the shares are normalised over the decision's values and c = mass / (mass + 1)
    damps decisions with little evidence; then every value is kept >= ``floor`` (exploration).
    Decisions or values the experience never used are only renormalised. With no experience the
    distribution comes back unchanged (a copy).
    """
    out: Distribution = {d: dict(p) for d, p in distribution.items()}
    if experiences is None or len(experiences) == 0:
        return out
    sims = dict(similar_tasks(experiences, task_features, k))
    if not sims:
        return out
    exp = experiences[experiences["task_name"].astype(object).isin(list(sims))]
    weights_pull = pd.Series(0.0, index=exp.index)
    weights_push = pd.Series(0.0, index=exp.index)
    for name, g in exp.groupby("task_name"):
        s = sims[str(name)]
        ok = (g["status"] == "completed") & pd.to_numeric(g["outcome_primary_value"], errors="coerce").notna()
        if ok.any():
            weights_pull[g.index[ok]] = s * _quality_rank(g[ok])
        bad = g["status"].isin(FAILED_STATUSES)
        weights_push[g.index[bad]] = s
    for decision, probs in out.items():
        if decision not in exp.columns or not probs:
            continue
        options = list(probs)
        pull = dict.fromkeys(options, 0.0)
        push = dict.fromkeys(options, 0.0)
        for idx, value in exp[decision].items():
            wp, wn = weights_pull[idx], weights_push[idx]
            if wp == 0 and wn == 0:
                continue
            o = _match(value, options)
            if o is None:
                continue
            pull[o] += wp
            push[o] += wn
        mass_pull, mass_push = sum(pull.values()), sum(push.values())
        if mass_pull == 0 and mass_push == 0:
            continue
        c_pull, c_push = mass_pull / (mass_pull + 1.0), mass_push / (mass_push + 1.0)
        new = {}
        for o in options:
            share_pull = pull[o] / mass_pull if mass_pull else 0.0
            share_push = push[o] / mass_push if mass_push else 0.0
            new[o] = max(float(probs[o]), 0.0) * math.exp(strength * (c_pull * share_pull - c_push * share_push))
        out[decision] = _with_floor(new, floor)
    return out


def _with_floor(p: Mapping[Any, float], floor: float) -> dict[Any, float]:
    """Normalise and mix with the uniform distribution so that every value has >= floor."""
    n = len(p)
    floor = min(floor, 0.5 / n)
    total = sum(p.values())
    base = {o: (v / total if total > 0 else 1.0 / n) for o, v in p.items()}
    return {o: floor + (1.0 - n * floor) * v for o, v in base.items()}


def seed_configs(experiences: pd.DataFrame, space: Any, similar: list[tuple[str, float]], n: int = 2,
                 among: list[Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The best completed configuration of each similar task (most similar first), as points of
    ``space`` (records that do not map to it are passed over), without repeats; at most ``n``.
    ``among``: only configs of this list count (e.g. the candidates a search is restricted to)."""
    from .space import config_key
    allowed = {config_key(c) for c in among} if among is not None else None
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    if experiences is None or len(experiences) == 0 or n <= 0:
        return out
    for name, _ in similar:
        g = experiences[(experiences["task_name"] == name) & (experiences["status"] == "completed")]
        g = g[pd.to_numeric(g["outcome_primary_value"], errors="coerce").notna()]
        if not len(g):
            continue
        order = _quality_rank(g).sort_values(ascending=False, kind="stable").index
        for rec in g.loc[order].to_dict("records"):
            cfg = space.config_from_record(rec)
            key = config_key(cfg) if cfg is not None else None
            if key is None or key in seen or (allowed is not None and key not in allowed):
                continue
            seen.add(key)
            out.append(cfg)
            break
        if len(out) >= n:
            break
    return out
