"""Model meta-features and fine-tuning method detection from ``model.config`` and the module tree."""
from __future__ import annotations

import json
import re
from typing import Any

from .privacy import scrub_name, scrub_text

_OBJECTIVES = [  # class-name suffix -> objective of the head being trained
    ("ForSequenceClassification", "sequence-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMultipleChoice", "multiple-choice"),
    ("ForConditionalGeneration", "seq2seq-lm"),
    ("ForSeq2SeqLM", "seq2seq-lm"),
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),
    ("ForMaskedLM", "masked-lm"),
    ("ForPreTraining", "pretraining"),
]
_LAYER_LIST_RE = re.compile(r"(^|\.)(layer|layers|h|block|blocks)$")


def _first_attr(obj: Any, *names: str) -> Any:
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return v
    return None


def unwrap(model: Any) -> tuple[Any, Any]:
    """(base transformers model, peft config or None) for plain, PEFT and DDP-wrapped models."""
    model = getattr(model, "module", model)  # DistributedDataParallel / DataParallel
    peft_config = None
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        name = getattr(model, "active_adapter", "default")
        if isinstance(name, (list, tuple)):
            name = name[0]
        peft_config = model.peft_config.get(name) or next(iter(model.peft_config.values()))
        model = model.get_base_model()
    return model, peft_config


def _model_kind(config: Any) -> str | None:
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    mt = getattr(config, "model_type", None)
    try:
        from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                            MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    except ImportError:
        return None
    # Encoders such as BERT also have a causal-LM head class, so the masked-LM mapping decides first.
    if mt in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    return None


def _layer_lists(model: Any) -> list[Any]:
    """The ModuleLists that hold transformer blocks (outermost only)."""
    import torch.nn as nn
    found: list[tuple[str, Any]] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and _LAYER_LIST_RE.search(name):
            if not any(name.startswith(p + ".") for p, _ in found):
                found.append((name, mod))
    return [m for _, m in found]


def _objective_of(class_name: str) -> str | None:
    return next((obj for suffix, obj in _OBJECTIVES if class_name.endswith(suffix)), None)


def model_objective(model: Any) -> str | None:
    """The training objective of a model's head (``causal-lm``, ``seq2seq-lm``, ``masked-lm``,
    ``sequence-classification``, ...): from its class name, else from ``config.architectures``
    (a custom wrapper around a Hub model), else from the model kind (a decoder without a known
    head generates: ``causal-lm``)."""
    found = _objective_of(type(model).__name__)
    config = getattr(model, "config", None)
    if found is None and config is not None:
        for arch in getattr(config, "architectures", None) or []:
            found = found or _objective_of(str(arch))
        if found is None and _model_kind(config) == "decoder" and hasattr(model, "generate") \
                and getattr(model, "can_generate", lambda: False)():
            found = "causal-lm"
    return found


def compute_model_features(model: Any, model_name: str | None = None) -> dict[str, Any]:
    """Architecture, size and fine-tuning-method features of a (possibly PEFT-wrapped) model."""
    out: dict[str, Any] = {}
    if model is None:
        return out
    outer = getattr(model, "module", model)
    base, peft_config = unwrap(model)
    config = getattr(base, "config", None)
    name = model_name or getattr(peft_config, "base_model_name_or_path", None) or getattr(config, "_name_or_path", None)
    out["model_name"] = scrub_name(name)
    out["model_architecture"] = type(base).__name__
    if config is not None:
        tc = config.get_text_config() if hasattr(config, "get_text_config") else config
        out["model_type"] = getattr(config, "model_type", None) or None
        n_layers = _first_attr(tc, "num_hidden_layers", "n_layer", "num_layers")
        if getattr(tc, "is_encoder_decoder", False) and getattr(tc, "num_decoder_layers", None):
            n_layers = (n_layers or 0) + tc.num_decoder_layers
        out["model_n_layers"] = int(n_layers) if n_layers else None
        hs = _first_attr(tc, "hidden_size", "d_model", "n_embd")
        out["model_hidden_size"] = int(hs) if hs else None
        nh = _first_attr(tc, "num_attention_heads", "n_head", "num_heads")
        out["model_n_heads"] = int(nh) if nh else None
        vs = getattr(tc, "vocab_size", None)
        out["model_vocab_size"] = int(vs) if vs else None
        mp = _first_attr(tc, "max_position_embeddings", "n_positions", "n_ctx")
        out["model_max_positions"] = int(mp) if mp else None
        out["model_kind"] = _model_kind(config)
    out["model_objective"] = model_objective(base)

    adapter_names = list(getattr(outer, "peft_config", {}) or {})
    total = trainable = base_total = 0
    dtype = None
    for pname, p in outer.named_parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
        if not any(f".{a}." in pname or pname.endswith(f".{a}") for a in adapter_names):
            base_total += n
        if dtype is None:
            dtype = str(p.dtype).replace("torch.", "")
    out["model_n_params"] = base_total
    out["model_dtype"] = dtype
    out["ft_trainable_params"] = trainable
    out["ft_trainable_fraction"] = trainable / total if total else None

    layers = _layer_lists(base)
    if layers:
        out["ft_trainable_layers"] = sum(
            1 for ml in layers for block in ml if any(p.requires_grad for p in block.parameters()))
    if peft_config is not None:
        pt = getattr(peft_config, "peft_type", None)
        pt = getattr(pt, "value", pt)
        out["peft_type"] = str(pt) if pt else None
        out["ft_method"] = str(pt).lower() if pt else "other"
        r = getattr(peft_config, "r", None)
        out["peft_lora_r"] = int(r) if isinstance(r, int) else None
        a = getattr(peft_config, "lora_alpha", None)
        out["peft_lora_alpha"] = float(a) if isinstance(a, (int, float)) else None
        d = getattr(peft_config, "lora_dropout", None)
        out["peft_lora_dropout"] = float(d) if isinstance(d, (int, float)) else None
        tm = getattr(peft_config, "target_modules", None)
        if isinstance(tm, str):
            tm = [tm]
        out["peft_target_modules"] = sorted(str(x) for x in tm) if tm else None
        out["peft_config_json"] = peft_config_json(peft_config)
    elif total and trainable == total:
        out["ft_method"] = "full"
    elif trainable == 0:
        out["ft_method"] = "frozen"
    else:
        out["ft_method"] = "partial"
    return out


def peft_config_json(peft_config: Any) -> str | None:
    """The PEFT config as JSON with sets made lists and paths reduced to base names."""
    try:
        d = peft_config.to_dict()
    except Exception:
        return None

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (set, frozenset, list, tuple)):
            items = [clean(x) for x in v]
            return sorted(items, key=str) if isinstance(v, (set, frozenset)) else items
        if hasattr(v, "value"):
            return v.value
        if isinstance(v, str):
            return scrub_text(v)
        if v is None or isinstance(v, (int, float, bool)):
            return v
        return scrub_text(str(v))
    d = clean(d)
    if d.get("base_model_name_or_path"):
        d["base_model_name_or_path"] = scrub_name(peft_config.base_model_name_or_path)
    return json.dumps(d, sort_keys=True)
