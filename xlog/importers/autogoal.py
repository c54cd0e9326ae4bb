"""Import an AutoGOAL / XAutoLM experience store (one JSON file per evaluated pipeline,
``<store>/<alias>/<YYYY-MM-DD>/<HH_MM_SS>-<uuid>.json``) into schema-valid records.

Only what the source holds is mapped, plus the published facts of the model it names (size and
shape, from the shipped model table, xlog.importers.modelfacts); everything else stays null. The
mapping (positions of the feature vectors, model aliases, hyperparameters) is documented in
docs/import.md."""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ..privacy import scrub_name, scrub_text
from ..schema import is_score, rescale_scores
from ..store import LocalStore
from . import (ImportSummary, Problem, base_record, content_hash, finite, json_compact,
               resolve_timezone, stable_record_id, write_records)
from .modelfacts import fill_model_facts, head_architecture, resolve_model_id

KIND = "autogoal"
GIB_TO_GB = 1024 ** 3 / 1e9   # AutoGOAL reports memory in GiB; the schema's _gb fields are 1e9 bytes

# AutoGOAL model aliases -> (Hub model id, config.model_type, model_kind). An alias is built from
# the Hub id by capitalising its words and joining them with "_", which loses case and
# punctuation. Aliases listed here are pinned; any other alias is matched by name against the
# model table (modelfacts.resolve_model_id: letters and digits only, a unique match or none), and
# an alias that matches nothing is kept as the model name, with its model columns null.
MODEL_ALIASES: dict[str, tuple[str, str, str]] = {
    "TEXT_GEN_Gpt2_Xl": ("gpt2-xl", "gpt2", "decoder"),
    "TEXT_GEN_Microsoft_Phi_2": ("microsoft/phi-2", "phi", "decoder"),
    "TEXT_GEN_Mistralai_Mistral_7B_Instruct_V01": ("mistralai/Mistral-7B-Instruct-v0.1", "mistral", "decoder"),
    "TEXT_GEN_Mistralai_Mistral_7B_Instruct_V02": ("mistralai/Mistral-7B-Instruct-v0.2", "mistral", "decoder"),
    "TEXT_GEN_Google_T5_T5_Base": ("google-t5/t5-base", "t5", "encoder-decoder"),
    "TEXT_GEN_Google_T5_T5_3B": ("google-t5/t5-3b", "t5", "encoder-decoder"),
    "TEXT_GEN_Google_T5_T5_11B": ("google-t5/t5-11b", "t5", "encoder-decoder"),
    "WORD_EMB_Bert_Large_Uncased": ("bert-large-uncased", "bert", "encoder"),
    "WORD_EMB_Bert_Large_Cased": ("bert-large-cased", "bert", "encoder"),
    "WORD_EMB_Roberta_Base": ("roberta-base", "roberta", "encoder"),
    "WORD_EMB_Xlm_Roberta_Large": ("xlm-roberta-large", "xlm-roberta", "encoder"),
    "WORD_EMB_Albert_Xlarge_V1": ("albert-xlarge-v1", "albert", "encoder"),
    "WORD_EMB_Distilbert_Base_Multilingual_Cased": ("distilbert-base-multilingual-cased", "distilbert", "encoder"),
    "WORD_EMB_Google_Electra_Small_Discriminator": ("google/electra-small-discriminator", "electra", "encoder"),
    "WORD_EMB_Pysentimiento_Robertuito_Base_Uncased": ("pysentimiento/robertuito-base-uncased", "roberta", "encoder"),
    "WORD_EMB_Plantl_Gob_Es_Roberta_Base_Bne": ("PlanTL-GOB-ES/roberta-base-bne", "roberta", "encoder"),
}

# The fine-tuning step of a pipeline: AutoGOAL-contrib's class name tells the method.
_FT_CLASS_RE = re.compile(r"^(?P<method>Lora|PartialFineTune|FineTune)(?P<rest>\w*)$")
_FT_METHODS = {"Lora": "lora", "PartialFineTune": "partial", "FineTune": "full"}
# AutoGOAL-contrib (autogoal_transformers/_manual.py): every *Classifier fine-tuner, the
# *GenLLMClassifier ones on TEXT_GEN_ models included (they subclass the *LLMEmbeddingClassifier
# ones), loads AutoModelForSequenceClassification; the *GenLLMTask ones load AutoModelForCausalLM,
# or AutoModelForSeq2SeqLM for an encoder-decoder.
_GEN_TASK_OBJECTIVE = {"decoder": "causal-lm", "encoder-decoder": "seq2seq-lm"}

# Hyperparameters with a dedicated schema column (all of them also stay in the JSON config).
_HP_COLUMNS = {"learning_rate": ("train_learning_rate", float), "batch_size": ("train_batch_size", int),
               "gradient_accumulation_steps": ("train_grad_accum_steps", int),
               "epochs": ("train_epochs", float), "warmup_steps": ("train_warmup_steps", int),
               "weight_decay": ("train_weight_decay", float), "lr_scheduler": ("train_lr_scheduler", str),
               "max_length": ("train_max_seq_length", int), "lora_r": ("peft_lora_r", int),
               "lora_alpha": ("peft_lora_alpha", float), "lora_dropout": ("peft_lora_dropout", float)}
# AutoGOAL-contrib builds its optimizers from torch.optim; name them like TrainingArguments does
# where the two coincide, keep AutoGOAL's name otherwise.
_OPTIMIZERS = {"adamw": "adamw_torch", "sgd": "sgd", "adagrad": "adagrad", "adam": "adam"}

# TextClassificationFeatureExtractor (10 values, the `meta` vector of newer records):
# instances, classes, class entropy (bits), min class prob, max class prob, imbalance ratio
# (min/max: AutoGOAL's is the inverse of ours), mean/std/cv of document length in characters,
# decision-tree landmarker accuracy (TF-IDF -> SVD(100) -> depth-5 tree, 5-fold stratified CV).
_TEXT_CLS_10 = ("task_n_train", "task_n_classes", "task_class_entropy", "task_class_prob_min",
                "task_class_prob_max", None, "task_chars_mean", "task_chars_std", "task_chars_cv",
                "task_landmarker_score")
_TEXT_CLS_LANDMARKER = "autogoal:tfidf-svd100-decision-tree-d5-cv5-accuracy"
# The oldest variant (21 values): the 10 above for train (landmarker on document lengths only,
# on a 1000-example sample), the first 9 for test, then 2 ratios.
_TEXT_CLS_LANDMARKER_OLD = "autogoal:doc-length-decision-tree-d5-cv5-accuracy"
# GenerativeTaskFeatureExtractor (11 values): samples, prompt chars mean/std, prompt TTR
# (stop words removed), target chars mean/std, target TTR, target/prompt length ratio, vocabulary
# novelty, prompt-target cosine similarity, ROUGE-L F1. Samples, prompt and target lengths have a
# column (the TTRs remove stop words, ours does not: not the same feature).
_GEN_11 = ("task_n_train", "task_chars_mean", "task_chars_std", None, "task_answer_chars_mean",
           "task_answer_chars_std")
# XAutoLM's generative experiments (DROP, SQuAD) are question answering: the model generates the
# answer from the passage and the question.
_GEN_TASK_TYPE = "question-answering"

_OOM_RE = re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|"
                     r"can't allocate memory|cannot allocate memory", re.IGNORECASE)
_TIMEOUT_RE = re.compile(r"Exceeded allowed time for execution|timed? ?out\b|TimeoutError", re.IGNORECASE)
# An error message that states how long the run lasted before it was stopped, e.g. AutoGOAL's
# "Exceeded allowed time for execution. The process was terminated after 5400.0 seconds."
_ELAPSED_RE = re.compile(r"\b(?:terminated|killed|stopped|aborted|interrupted|cancel+ed|timed out)\s+after\s+"
                         r"(?P<s>\d+(?:\.\d+)?)\s*(?:s|secs?|seconds?)\b", re.IGNORECASE)
_TIME_METRICS = {"evaluation_time", "evaluation_time_s", "eval_time"}
# Newer records also log the mean time of the training and validation phases (over cross-validation
# steps; one step when cross_val_steps is null): times, not quality metrics.
_PHASE_TIMES = {"time_train_mean_seconds": "outcome_train_runtime_s",
                "time_valid_mean_seconds": "outcome_eval_runtime_s"}
_DATE_DIR_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TWIN_WINDOW_S = 5.0


class SkipRecord(Exception):
    """A source file that cannot be imported; the message says why."""


def _value(v: Any) -> Any:
    """Unwrap AutoGOAL's ``{"value": x}`` hyperparameter encoding."""
    if isinstance(v, Mapping) and "value" in v:
        return v["value"]
    return v


def _algorithm_name(v: Any) -> tuple[str | None, Any]:
    """An algorithm-valued hyperparameter ``{"ALIAS": {params}}`` -> (alias, params)."""
    v = _value(v)
    if isinstance(v, Mapping) and len(v) == 1:
        (name, params), = v.items()
        return str(name), params
    if isinstance(v, str):
        return v, None
    return None, v


def _parse_time(ts: Any, tz: tzinfo) -> datetime:
    if not isinstance(ts, str):
        raise SkipRecord(f"timestamp missing or not a string ({ts!r})")
    try:
        dt = datetime.fromisoformat(ts.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SkipRecord(f"timestamp {ts!r} is not a date-time") from None
    if dt.tzinfo is None:
        # AutoGOAL writes datetime.now() without a zone: the machine's local time.
        dt = dt.replace(tzinfo=tz)
    return dt.astimezone(timezone.utc)


def _metric_name(name: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")


def _task_features(data: Mapping[str, Any], where: str) -> tuple[dict[str, Any], list[float] | None]:
    """Map the task meta-feature vector by position for the extractor the record names."""
    if "task_features" in data:
        tf = data["task_features"]
        if isinstance(tf, Mapping):
            meta, semantic = tf.get("meta"), tf.get("semantic")
        else:
            meta, semantic = tf, None
    elif "dataset_features" in data:
        meta, semantic = data["dataset_features"], None
    else:
        raise SkipRecord("neither `dataset_features` nor `task_features`: not an AutoGOAL experience record")
    extractor = data.get("dataset_feature_extractor_name")
    if meta is None or (isinstance(meta, list) and not meta):
        return {}, semantic
    if not isinstance(meta, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in meta):
        raise SkipRecord("task feature vector is not a list of numbers")
    out: dict[str, Any] = {}
    if extractor == "TextClassificationFeatureExtractor":
        if len(meta) not in (10, 21):
            raise SkipRecord(f"TextClassificationFeatureExtractor vector of length {len(meta)} (known: 10, 21)")
        for name, v in zip(_TEXT_CLS_10, meta[:10]):
            if name:
                out[name] = finite(v)
        pmin, pmax = finite(meta[3]), finite(meta[4])
        # Ours is most common over rarest (>= 1); AutoGOAL stores the inverse.
        out["task_imbalance_ratio"] = pmax / pmin if pmin and pmax is not None and pmin > 0 else None
        out["task_landmarker_name"] = _TEXT_CLS_LANDMARKER if len(meta) == 10 else _TEXT_CLS_LANDMARKER_OLD
        if len(meta) == 21 and finite(meta[10]) is not None:
            out["task_n_eval"] = int(meta[10])
        out["task_type"] = "text-classification"
    elif extractor == "GenerativeTaskFeatureExtractor":
        if len(meta) != 11:
            raise SkipRecord(f"GenerativeTaskFeatureExtractor vector of length {len(meta)} (known: 11)")
        for name, v in zip(_GEN_11, meta):
            if name:
                out[name] = finite(v)
        mean, std = out.get("task_chars_mean"), out.get("task_chars_std")
        out["task_chars_cv"] = std / mean if mean and std is not None else None
        out["task_type"] = _GEN_TASK_TYPE
    else:
        raise SkipRecord(f"unknown task feature extractor {extractor!r} for a vector of length {len(meta)}")
    for k in ("task_n_train", "task_n_classes", "task_n_eval"):
        if out.get(k) is not None:
            out[k] = int(round(out[k]))
    if out.get("task_n_train") is not None:
        # The extractors run on the whole training set, not on a sample.
        out["task_sample_size"] = out["task_n_train"]
    return {k: v for k, v in out.items() if v is not None}, semantic


def _system_features(data: Mapping[str, Any], where: str, summary: ImportSummary) -> dict[str, Any]:
    """Map the system feature vector to hw_ fields, only where its layout is certain.

    Two AutoGOAL versions write a 5-value vector under the same extractor name:
    newer: [physical cores, logical cores, max CPU GHz, RAM GiB, GPU memory GiB (0 = not probed)];
    older: [physical cores, RAM GiB, GPU count, total GPU GiB, GPU GiB per device].
    The layout is decided by internal consistency; when both or neither fit, nothing is mapped."""
    vec = data.get("system_features")
    name = data.get("system_feature_extractor_name")
    if not vec:
        return {}
    if name != "SystemFeatureExtractor" or not isinstance(vec, list) or len(vec) != 5 \
            or any(finite(x) is None for x in vec):
        summary.warnings.append(Problem(where, f"system features of {name!r} (length "
                                               f"{len(vec) if isinstance(vec, list) else '?'}) not mapped"))
        return {}
    v = [float(x) for x in vec]
    is_int = [x == int(x) and x >= 0 for x in v]
    newer = is_int[0] and is_int[1] and v[1] >= v[0] > 0 and v[3] > 0
    older = (is_int[0] and is_int[2] and v[1] > 0
             and ((v[2] == 0 and v[3] == 0 and v[4] == 0)
                  or (v[2] > 0 and math.isclose(v[3] / v[2], v[4], rel_tol=1e-3))))
    if newer == older:
        summary.warnings.append(Problem(where, f"system feature vector {vec} fits {'both' if newer else 'neither'} "
                                               "known layout; hardware fields left null"))
        return {}
    if newer:
        out = {"hw_cpu_cores": int(v[1]), "hw_ram_gb": round(v[3] * GIB_TO_GB, 3)}
        if v[4] > 0:
            out["hw_gpu_memory_gb"] = round(v[4] * GIB_TO_GB, 3)
        return out
    out = {"hw_ram_gb": round(v[1] * GIB_TO_GB, 3), "hw_gpu_count": int(v[2])}
    if v[2] > 0:
        out["hw_accelerator"] = "cuda"   # the older extractor counts devices with torch.cuda
        out["hw_gpu_memory_gb"] = round(v[4] * GIB_TO_GB, 3)
    return out


def _pipeline(data: Mapping[str, Any]) -> dict[str, Any]:
    """Model, method and hyperparameters from the fine-tuning step of ``algorithms``."""
    algs = data.get("algorithms")
    if not isinstance(algs, list) or not algs:
        raise SkipRecord("`algorithms` missing or empty")
    steps: list[tuple[str, Mapping[str, Any]]] = []
    for a in algs:
        if not isinstance(a, Mapping):
            raise SkipRecord("an entry of `algorithms` is not an object")
        for cls, params in a.items():
            steps.append((str(cls), params if isinstance(params, Mapping) else {}))
    ft = [(c, p) for c, p in steps if _FT_CLASS_RE.match(c) and "inner_model" in p]
    if len(ft) != 1:
        names = ", ".join(c for c, _ in steps)
        raise SkipRecord(f"expected one fine-tuning step (Lora*/PartialFineTune*/FineTune* with an inner_model), "
                         f"found {len(ft)} in [{names}]")
    cls, params = ft[0]
    method = _FT_METHODS[_FT_CLASS_RE.match(cls).group("method")]
    alias, inner_params = _algorithm_name(params["inner_model"])
    config: dict[str, Any] = {"autogoal_class": cls, "inner_model": alias}
    if inner_params:
        config["inner_model_params"] = {k: _value(x) for k, x in inner_params.items()}
    for k, x in params.items():
        if k == "inner_model":
            continue
        val = _value(x)
        if isinstance(val, Mapping):
            val = _algorithm_name(x)[0] or val
        config[k] = val
    others = [c for c, _ in steps if c != cls]
    if others:
        config["other_pipeline_steps"] = others

    out: dict[str, Any] = {"ft_method": method}
    hub = MODEL_ALIASES.get(alias or "")
    if hub:
        out["model_name"], out["model_type"], out["model_kind"] = hub
    else:
        model_id = resolve_model_id(alias)
        out["model_name"] = model_id or scrub_name(alias)
    fill_model_facts(out)   # size and shape from the shipped table; nothing for an unknown model
    if cls.endswith("Classifier"):
        out["model_objective"] = "sequence-classification"
    elif cls.endswith("Task"):
        out["model_objective"] = _GEN_TASK_OBJECTIVE.get(out.get("model_kind") or "")
    arch = head_architecture(out.get("model_type"), out.get("model_objective"))
    if arch:
        out["model_architecture"] = arch
    if method == "lora":
        out["peft_type"] = "LORA"
    for hp, (col, typ) in _HP_COLUMNS.items():
        val = config.get(hp)
        if val is None or isinstance(val, bool):
            continue
        num = finite(val) if typ is not str else None
        if typ is str:
            out[col] = str(val)
        elif num is not None and (typ is float or num == int(num)):
            out[col] = typ(num)   # a non-numeric or fractional value for an integer field stays in the JSON only
    opt = config.get("optimizer")
    if isinstance(opt, str):
        out["train_optimizer"] = _OPTIMIZERS.get(opt.lower(), opt)
    if config.get("use_gradient_clipping") is True and finite(config.get("gradient_clipping_max_norm")) is not None:
        out["train_max_grad_norm"] = float(config["gradient_clipping_max_norm"])
    # AutoGOAL-contrib fine-tuners train in one process on one device.
    out["train_world_size"] = 1
    if out.get("train_batch_size") and out.get("train_grad_accum_steps"):
        out["train_effective_batch_size"] = out["train_batch_size"] * out["train_grad_accum_steps"]
    if config.get("cross_val_steps") is None and data.get("cross_val_steps") is not None:
        config["cross_val_steps"] = data.get("cross_val_steps")
    out["ft_config_json"] = json_compact(config)
    return out


def _metrics(data: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, bool], list[str], list[str]]:
    """Finite metrics by normalised name, their direction, the names in source order, and the
    non-finite values seen (for the failure message)."""
    values: dict[str, float] = {}
    maximize: dict[str, bool] = {}
    order: list[str] = []
    nonfinite: list[str] = []

    def add(name: str, v: Any, up: bool | None) -> None:
        n = _metric_name(name)
        if not n or v is None:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return
        if not math.isfinite(float(v)):
            nonfinite.append(f"{n}={float(v)}")
            return
        if n not in values:
            order.append(n)
        values[n] = float(v)
        if up is not None:
            maximize[n] = up

    for key in ("f1", "accuracy", "evaluation_time"):
        if key in data:
            add(key, data.get(key), None if key == "evaluation_time" else True)
    ms = data.get("metrics")
    if isinstance(ms, list):
        for m in ms:
            if isinstance(m, Mapping) and "name" in m:
                add(m["name"], m.get("value"), bool(m["maximize"]) if "maximize" in m else None)
    return values, maximize, order, nonfinite


def _elapsed_from_error(error: Any) -> float | None:
    """Seconds the run lasted, when its error message states them ("terminated after 5400.0
    seconds"); None otherwise (no runtime is guessed)."""
    if not isinstance(error, str):
        return None
    m = _ELAPSED_RE.search(error)
    if m is None:
        return None
    v = float(m.group("s"))
    return v if math.isfinite(v) else None


def _outcome(data: Mapping[str, Any], percent: Iterable[str] = ()) -> dict[str, Any]:
    values, maximize, order, nonfinite = _metrics(data)
    out: dict[str, Any] = {}
    for n, col in _PHASE_TIMES.items():
        if values.get(n) is not None and values[n] >= 0:
            out[col] = values[n]
    runtime = next((values[n] for n in _TIME_METRICS if n in values), None)
    if runtime is not None and runtime >= 0:
        # AutoGOAL's evaluation time is the wall time of evaluating the pipeline (fine-tuning +
        # scoring), i.e. the whole run, not only its evaluation pass.
        out["outcome_total_runtime_s"] = runtime
    else:
        # A run stopped at AutoGOAL's time limit has no finite evaluation time, but its message
        # says how long it ran; a failure costs that time.
        elapsed = _elapsed_from_error(data.get("error"))
        if elapsed is not None:
            out["outcome_total_runtime_s"] = elapsed
    # Scores as fractions: a metric this source task logs on a 0-100 scale (``percent``, decided over
    # all of the task's records by import_autogoal) is divided by 100, an obvious percentage too.
    quality, _ = rescale_scores({n: v for n, v in values.items() if n not in _TIME_METRICS and n not in _PHASE_TIMES},
                                percent)
    if quality:
        out["outcome_metrics"] = quality
    primary = "f1" if "f1" in quality else next((n for n in order if n in quality and maximize.get(n)), None) \
        or ("accuracy" if "accuracy" in quality else None)
    if primary:
        out["outcome_primary_metric"] = primary
        out["outcome_primary_value"] = quality[primary]
        out["outcome_greater_is_better"] = maximize.get(primary, True)

    error = data.get("error")
    if error is not None and str(error).strip():
        text = str(error)
        if _OOM_RE.search(text):
            out.update(status="oom", error_type="OutOfMemoryError")
        elif _TIMEOUT_RE.search(text):
            out.update(status="timeout", error_type="TimeoutError")
        else:
            # AutoGOAL keeps only str(exception): the class is unknown.
            out.update(status="failed", error_type=None)
        out["error_message"] = scrub_text(text)
    elif primary is None:
        # AutoGOAL logs -inf F1 / inf time, with no error, for evaluations that produced no score.
        seen = ", ".join(nonfinite) if nonfinite else "no metric"
        out.update(status="failed", error_type="NoScore",
                   error_message=f"AutoGOAL logged no finite score ({seen}) and no error")
        for k in ("outcome_primary_metric", "outcome_primary_value", "outcome_greater_is_better"):
            out.pop(k, None)
    else:
        out["status"] = "completed"
    return out


def source_key(path: Path, root: Path) -> str:
    """``<alias>/<date>/<file>`` for files in AutoGOAL's layout (independent of which folder the
    import was pointed at), else the path relative to the import root."""
    parts = path.parts
    if len(parts) >= 3 and _DATE_DIR_RE.match(parts[-2]):
        return "/".join(parts[-3:])
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def convert(data: Mapping[str, Any], key: str, raw: bytes, *, task_name_from_alias: bool = True,
            tz: tzinfo = timezone.utc, contributor: str | None = None,
            summary: ImportSummary | None = None, percent: Iterable[str] | None = None) -> dict[str, Any]:
    """One AutoGOAL experience (parsed JSON) -> one record. Raises SkipRecord.

    ``percent``: metric names (normalised, e.g. ``f1``) known to be on a 0-100 scale for this
    record's task (see ``percent_scale_metrics``); without it, only values above 1 are taken for
    percentages."""
    summary = summary if summary is not None else ImportSummary(KIND)
    if not isinstance(data, Mapping):
        raise SkipRecord(f"top-level JSON is a {type(data).__name__}, not an object")
    rec = base_record(KIND, stable_record_id(KIND, f"{key}\n{content_hash(raw)}"))
    rec["created_at"] = _parse_time(data.get("timestamp"), tz)
    rec["contributor"] = contributor
    task, _semantic = _task_features(data, key)   # the semantic embedding has no column
    rec.update(task)
    rec.update(_system_features(data, key, summary))
    rec.update(_pipeline(data))
    rec.update(_outcome(data, percent or ()))
    alias = data.get("alias")
    if task_name_from_alias and isinstance(alias, str) and alias.strip():
        rec["task_name"] = scrub_name(alias.strip())
    return rec


def percent_scale_metrics(sources: Iterable[Mapping[str, Any]]) -> dict[str, set[str]]:
    """Per task alias, the score metrics (F1, accuracy, exact match, ...) logged on a 0-100 scale.

    XAutoLM logs F1 and exact match as fractions on DROP but in percent on SQuAD. A single value
    cannot tell a poor run in percent (F1 0.8 = 0.8 %) from a fraction, so the scale is decided per
    (task, metric) over every record of the import: a task whose finite values of a score exceed 1
    (and stay within 100) logs it in percent, every one of its values is divided by 100."""
    seen: dict[tuple[str, str], list[float]] = {}
    for data in sources:
        alias = str(data.get("alias") or "")
        values, _, _, _ = _metrics(data)
        for n, v in values.items():
            if n not in _TIME_METRICS and n not in _PHASE_TIMES and is_score(n):
                seen.setdefault((alias, n), []).append(v)
    out: dict[str, set[str]] = {}
    for (alias, n), vals in seen.items():
        if max(vals) > 1 and max(vals) <= 100 and min(vals) >= 0:
            out.setdefault(alias, set()).add(n)
    return out


def iter_json_files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
        return
    yield from sorted(p for p in path.rglob("*.json") if p.is_file() and not p.name.startswith("."))


def _is_twin(rec: dict, err: dict) -> bool:
    dt = (rec["created_at"] - err["created_at"]).total_seconds()
    return 0 <= dt <= TWIN_WINDOW_S


def import_autogoal(path: str | Path, store: LocalStore | None = None, *, task_name_from_alias: bool = True,
                    dry_run: bool = False, timezone_name: str = "UTC", contributor: str | None = None,
                    keep_twins: bool = False) -> ImportSummary:
    """Import every AutoGOAL experience JSON below ``path`` into ``store``.

    AutoGOAL's search logs a failing evaluation twice: once with the error, then (within a
    second) the same pipeline with F1 -inf and no error. Such a twin is folded into the error
    record (counted as merged) unless ``keep_twins``."""
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"no such file or directory: {root}")
    store = store or LocalStore()
    tz = resolve_timezone(timezone_name)
    summary = ImportSummary(KIND, dry_run=dry_run)
    converted: list[tuple[str, dict, str]] = []   # (where, record, pipeline signature)
    parsed: list[tuple[Path, bytes, Any]] = []
    for f in iter_json_files(root):
        summary.read += 1
        where = str(f)
        try:
            raw = f.read_bytes()
        except OSError as exc:
            summary.invalid.append(Problem(where, f"cannot read: {exc}"))
            continue
        try:
            # Python's json accepts AutoGOAL's bare -Infinity/Infinity/NaN tokens.
            parsed.append((f, raw, json.loads(raw.decode("utf-8"))))
        except (UnicodeDecodeError, ValueError) as exc:
            summary.invalid.append(Problem(where, f"not JSON ({exc})"))
    percent = percent_scale_metrics(d for _, _, d in parsed if isinstance(d, Mapping))
    for alias, names in sorted(percent.items()):
        summary.warnings.append(Problem(alias or "?", f"{', '.join(sorted(names))} logged on a 0-100 scale; "
                                                      "recorded as fractions"))
    for f, raw, data in parsed:
        where = str(f)
        try:
            alias = str(data.get("alias") or "") if isinstance(data, Mapping) else ""
            rec = convert(data, source_key(f, root), raw, task_name_from_alias=task_name_from_alias,
                          tz=tz, contributor=contributor, summary=summary, percent=percent.get(alias))
        except SkipRecord as exc:
            summary.invalid.append(Problem(where, str(exc)))
            continue
        sig = json_compact({"alias": data.get("alias"), "algorithms": data.get("algorithms")})
        converted.append((where, rec, sig))

    keep: list[tuple[str, dict]] = []
    errors_by_sig: dict[str, list[dict]] = {}
    for _, rec, sig in converted:
        if rec.get("error_type") != "NoScore" and rec["status"] != "completed":
            errors_by_sig.setdefault(sig, []).append(rec)
    for where, rec, sig in converted:
        if not keep_twins and rec.get("error_type") == "NoScore" \
                and any(_is_twin(rec, e) for e in errors_by_sig.get(sig, [])):
            summary.merged += 1
            continue
        keep.append((where, rec))
    write_records(keep, store, summary)
    return summary
