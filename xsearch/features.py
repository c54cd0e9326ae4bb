"""Feature matrices for the estimators: from experience records (one row per past run) and from
candidate configurations of a new search (one row per candidate), with the same columns.

A row describes *what is asked* before any training happens: the task's meta-features, the
model's meta-data, the fine-tuning method and hyperparameters, and the hardware. Outcomes
(metrics, runtime, energy, status) are never features.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

# ---- feature lists (record column names) --------------------------------------------------------
TASK_NUMERIC = [
    "task_n_train", "task_n_eval", "task_n_classes", "task_class_entropy", "task_class_prob_min",
    "task_class_prob_max", "task_imbalance_ratio", "task_chars_mean", "task_chars_std", "task_chars_cv",
    "task_tokens_mean", "task_tokens_std", "task_tokens_cv", "task_type_token_ratio", "task_landmarker_score",
    # Generative data (question answering, causal LM): NaN for classification records, so an
    # estimator trained on classification alone never sees them (unobserved features are dropped).
    "task_prompt_tokens_mean", "task_context_tokens_mean", "task_question_tokens_mean", "task_answer_tokens_mean",
    "task_answer_chars_mean", "task_question_context_overlap", "task_answer_in_context",
]
TASK_CATEGORICAL = ["task_type"]
MODEL_NUMERIC = ["model_n_params", "model_n_layers", "model_hidden_size", "model_n_heads",
                 "model_vocab_size", "model_max_positions"]
MODEL_CATEGORICAL = ["model_name", "model_type", "model_kind"]
CONFIG_NUMERIC = ["peft_lora_r", "peft_lora_alpha", "peft_lora_dropout", "ft_trainable_layers",
                  "train_learning_rate", "train_epochs", "train_batch_size", "train_grad_accum_steps",
                  "train_effective_batch_size", "train_warmup_ratio", "train_weight_decay",
                  "train_max_seq_length", "train_max_steps"]
CONFIG_CATEGORICAL = ["ft_method", "train_lr_scheduler", "train_precision", "train_optimizer"]
HW_NUMERIC = ["hw_gpu_count", "hw_gpu_memory_gb", "hw_cpu_cores", "hw_ram_gb"]
HW_CATEGORICAL = ["hw_accelerator", "hw_gpu_name"]

# Derived features: scale-free quantities that let the estimators generalise to tasks and
# models they have not seen (compute and memory grow with these products, not with any one column).
DERIVED_NUMERIC = ["log_lr", "log_n_params", "log_n_train", "ft_layers_frac", "log_work", "log_act_memory",
                   "act_memory_per_gb", "seq_over_tokens", "log_mem_need_gb", "mem_need_per_gb", "seq_over_positions"]

NUMERIC_FEATURES = TASK_NUMERIC + MODEL_NUMERIC + CONFIG_NUMERIC + HW_NUMERIC + DERIVED_NUMERIC
CATEGORICAL_FEATURES = TASK_CATEGORICAL + MODEL_CATEGORICAL + CONFIG_CATEGORICAL + HW_CATEGORICAL
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES

#: Record columns that make up the raw input of a row (everything the derived features need).
INPUT_COLUMNS = TASK_NUMERIC + TASK_CATEGORICAL + MODEL_NUMERIC + MODEL_CATEGORICAL + CONFIG_NUMERIC \
    + CONFIG_CATEGORICAL + HW_NUMERIC + HW_CATEGORICAL

#: model_* columns that describe a model independently of the run (looked up by model_name).
MODEL_META_COLUMNS = MODEL_NUMERIC + ["model_type", "model_kind"]


def _missing(v: Any) -> bool:
    return v is None or (not isinstance(v, (str, list, tuple, dict)) and bool(pd.isna(v)))


def _num(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").astype(float)


def _log(s: pd.Series) -> pd.Series:
    s = _num(s)
    return np.log(s.where(s > 0))


def feature_matrix(rows: pd.DataFrame) -> pd.DataFrame:
    """The estimators' input: numeric columns as float (NaN = unknown), categoricals as str/None.

    Accepts experience records or candidate rows; missing columns are treated as unknown.
    """
    df = pd.DataFrame(index=rows.index)
    for c in INPUT_COLUMNS:
        df[c] = rows[c] if c in rows.columns else None
    for c in TASK_NUMERIC + MODEL_NUMERIC + CONFIG_NUMERIC + HW_NUMERIC:
        df[c] = _num(df[c])
    for c in CATEGORICAL_FEATURES:
        df[c] = df[c].astype(object).map(lambda v: None if _missing(v) else str(v).lower())

    method = df["ft_method"]
    # LoRA hyperparameters only mean something for LoRA-like methods, layer counts only for partial
    # freezing: captured records fill them for every run, candidate configs leave them None.
    is_partial = method == "partial"
    df.loc[~is_partial, "ft_trainable_layers"] = np.nan
    no_lora = method.isin(["full", "partial", "frozen"])
    for c in ("peft_lora_r", "peft_lora_alpha", "peft_lora_dropout"):
        df.loc[no_lora, c] = np.nan
    # Effective batch = batch x accumulation (x world size, 1 for candidates) when not given.
    eff = df["train_batch_size"] * df["train_grad_accum_steps"].fillna(1.0)
    df["train_effective_batch_size"] = df["train_effective_batch_size"].fillna(eff)

    df["log_lr"] = _log(df["train_learning_rate"])
    df["log_n_params"] = _log(df["model_n_params"])
    df["log_n_train"] = _log(df["task_n_train"])
    frac = df["ft_trainable_layers"] / df["model_n_layers"]
    df["ft_layers_frac"] = np.where(is_partial, frac, np.where(method.notna(), 1.0, np.nan))
    seq = df["train_max_seq_length"].fillna(df["task_tokens_mean"])
    tokens = np.minimum(seq, df["task_tokens_mean"].fillna(seq))
    # Work ~ examples x epochs x tokens per example x parameters (the FLOPs of a forward/backward pass).
    steps_examples = df["task_n_train"] * df["train_epochs"]
    max_steps_examples = df["train_max_steps"] * df["train_effective_batch_size"]
    steps_examples = steps_examples.fillna(max_steps_examples)
    df["log_work"] = _log(steps_examples * tokens * df["model_n_params"])
    # Activation memory ~ batch x sequence x hidden x layers: what makes big batch x long sequence OOM.
    act = df["train_batch_size"] * seq * df["model_hidden_size"] * df["model_n_layers"]
    df["log_act_memory"] = _log(act)
    # Memory of the device that holds the activations: the GPU, else (CPU training) system RAM.
    mem = df["hw_gpu_memory_gb"].where(df["hw_gpu_memory_gb"] > 0, df["hw_ram_gb"])
    df["act_memory_per_gb"] = _log(act / mem)
    df["seq_over_tokens"] = seq / df["task_tokens_mean"]
    # Training memory in GB, weights + optimizer state + activations, so that a model's size and a
    # batch x sequence product add up the way they do on the device (a 7B model runs out of memory
    # at batch 1, a small one only at a large batch x sequence). Bytes per parameter: fp32 weights (4)
    # + gradients and Adam moments (12) for the trained fraction. Activations per layer ~
    # s*b*h*(34 + 5*heads*s/h) bytes (Korthikanti et al. 2022); heads default to h/64.
    trained = np.where(method == "full", 1.0, np.where(is_partial, df["ft_layers_frac"].fillna(0.5), 0.02))
    weights = df["model_n_params"] * (4.0 + 12.0 * trained)
    heads = df["model_n_heads"].fillna(df["model_hidden_size"] / 64.0)
    act_bytes = df["train_batch_size"] * seq * df["model_n_layers"] \
        * (34.0 * df["model_hidden_size"] + 5.0 * heads * seq)
    need_gb = (weights + act_bytes) / 1e9
    df["log_mem_need_gb"] = _log(need_gb)
    df["mem_need_per_gb"] = _log(need_gb / mem)
    # A sequence longer than the model's position table fails (or is silently truncated).
    df["seq_over_positions"] = df["train_max_seq_length"] / df["model_max_positions"]
    return df[FEATURES]


# ---- model meta-data --------------------------------------------------------------------------
def model_meta_from(experiences: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """model_* meta-data per model_name from past records (the most common value of each column)."""
    out: dict[str, dict[str, Any]] = {}
    if experiences is None or len(experiences) == 0 or "model_name" not in experiences.columns:
        return out
    cols = [c for c in MODEL_META_COLUMNS if c in experiences.columns]
    for name, g in experiences.groupby("model_name", dropna=True):
        meta: dict[str, Any] = {}
        for c in cols:
            vals = g[c].dropna()
            if len(vals):
                v = vals.mode().iloc[0]
                meta[c] = v.item() if hasattr(v, "item") else v
        out[str(name)] = meta
    return out


def candidate_rows(configs: list[dict], task_features: Mapping[str, Any], hardware: Mapping[str, Any],
                   model_meta: Mapping[str, Mapping[str, Any]] | None = None, *,
                   experiences: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows for ``Estimators.predict``: one per candidate config, in record columns.

    ``task_features``: the new task's task_* meta-features (e.g. ``xlog.taskfeatures.compute_task_features``).
    ``hardware``: hw_* of this machine (e.g. ``xlog.hardware.probe_hardware()``).
    ``model_meta``: model_* columns per model_name (e.g. from the model config); for models it does
    not cover, the meta-data of past records of that model (``experiences``) is used, and a model
    never seen keeps NaN model features (the estimators treat them as unknown).
    """
    meta: dict[str, dict[str, Any]] = model_meta_from(experiences)
    for name, m in (model_meta or {}).items():
        meta.setdefault(str(name), {}).update({k: v for k, v in m.items() if v is not None})
    task = {k: v for k, v in task_features.items() if k.startswith("task_")}
    hw = {k: v for k, v in hardware.items() if k.startswith("hw_")}
    rows = []
    for cfg in configs:
        row: dict[str, Any] = dict(task)
        row.update(hw)
        row.update(meta.get(str(cfg.get("model_name")), {}))
        row.update(cfg)
        if row.get("train_max_seq_length") is None and task_features.get("train_max_seq_length") is not None:
            row["train_max_seq_length"] = task_features["train_max_seq_length"]
        rows.append(row)
    df = pd.DataFrame(rows, index=pd.RangeIndex(len(rows)))
    for c in INPUT_COLUMNS:
        if c not in df.columns:
            df[c] = None
    return df


def task_features_of(experiences: pd.DataFrame, task_name: str) -> dict[str, Any]:
    """The task_* meta-features of a past task (median over its records), e.g. to replay it."""
    g = experiences[experiences["task_name"] == task_name]
    out: dict[str, Any] = {"task_name": task_name}
    for c in TASK_NUMERIC:
        if c in g.columns:
            v = _num(g[c]).median()
            out[c] = None if pd.isna(v) else float(v)
    if "task_type" in g.columns and g["task_type"].notna().any():
        out["task_type"] = g["task_type"].dropna().mode().iloc[0]
    return out
