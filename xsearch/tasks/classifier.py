"""The models and metrics of text classification (imported by the worker, not by the search's
driver): tiny BERTs, pretrained models with their own head, and sentence-embedding encoders with
mean pooling; accuracy and macro F1.

Sentence-embedding models (a sentence-transformers folder with mean pooling, a
``sentence-transformers/`` Hub id, or ``pooling: mean`` in the space's model entry) are trained
with :class:`MeanPoolingForSequenceClassification`: the reading they were trained for (mean over
the tokens), then a linear classifier, instead of BERT's classification head, which reads a pooler
that sentence-embedding training never used and learns more slowly from it (in short runs it
predicted one class: macro F1 0.45 in the quick start).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
# Imported here, not lazily: under a memory limit, mapping a library late can fail like an OOM.
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer,
                          PreTrainedModel)
from transformers.modeling_outputs import SequenceClassifierOutput

from ..space import resolve_model_path
from .tiny import TINY_PREFIX, parse_tiny, wordpiece_tokenizer

__all__ = ["MeanPoolingForSequenceClassification", "build_model", "compute_metrics", "sentence_pooling"]


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    preds = np.argmax(logits, axis=-1)
    return {"accuracy": float(accuracy_score(labels, preds)),
            "f1": float(f1_score(labels, preds, average="macro"))}


# ---- models --------------------------------------------------------------------------------------
class MeanPoolingForSequenceClassification(PreTrainedModel):
    """A pretrained encoder (any ``AutoModel``) + mean pooling over the tokens (attention mask) +
    dropout + a linear classifier: the head that suits sentence-embedding models such as
    all-MiniLM-L6-v2, whose BERT pooler their training never used (it is dropped). Build it with
    :meth:`from_encoder`.

    It is a ``PreTrainedModel`` (``model.config`` is the encoder's, with ``num_labels``), so
    ``Trainer``, ``XLogCallback`` (architecture, sizes, trainable parameters), partial freezing
    (``base_model`` is the encoder) and ``peft`` with ``task_type=SEQ_CLS`` (the head, named
    ``classifier``, is trained in full through ``modules_to_save``) work as with the model's own
    classification class. ``config.classifier_pooling`` is ``mean`` or ``cls`` (first token).
    """

    config_class = AutoConfig  # the encoder's own config class (save_pretrained/from_pretrained round trip)
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    # Attention runs in the encoder, which chose its implementation when it was loaded.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: Any, encoder: Any = None) -> None:
        super().__init__(config)
        if encoder is None:
            encoder = AutoModel.from_config(config)
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused by sentence-embedding training, and by this head
        self.backbone = encoder
        hidden = int(getattr(config, "hidden_size", None) or getattr(config, "d_model"))
        drop = getattr(config, "classifier_dropout", None)
        drop = drop if drop is not None else getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(float(drop if drop is not None else 0.1))
        self.classifier = nn.Linear(hidden, int(config.num_labels))
        for module in self.backbone.modules():  # post_init must not re-initialise pretrained weights
            module._is_hf_initialized = True
        self.post_init()

    def _init_weights(self, module: Any) -> None:
        if module is self.classifier:
            std = float(getattr(self.config, "initializer_range", 0.02) or 0.02)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_encoder(cls, path: str, num_labels: int, pooling: str = "mean",
                     **kw: Any) -> "MeanPoolingForSequenceClassification":
        """Load the pretrained encoder at ``path`` (a directory or a Hub id) and add the head."""
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling {pooling!r}: expected 'mean' or 'cls'")
        encoder = AutoModel.from_pretrained(path, **kw)
        config = encoder.config
        config.num_labels = int(num_labels)
        config.classifier_pooling = pooling
        return cls(config, encoder)

    def forward(self, input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None,
                labels: Any = None, inputs_embeds: Any = None, return_dict: Any = None,
                **kwargs: Any) -> SequenceClassifierOutput:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                            return_dict=True, **extra)
        hidden = out.last_hidden_state
        if getattr(self.config, "classifier_pooling", "mean") == "cls":
            pooled = hidden[:, 0]
        else:
            if attention_mask is None:
                attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def sentence_pooling(name: str, path: str, spec: dict[str, Any]) -> str | None:
    """The pooling a sentence-embedding model was trained with (``mean`` or ``cls``), else None
    (the model's own classification head is used). Order: the space's ``pooling`` entry
    (``mean``, ``cls``, or ``head`` for the model's own head), the sentence-transformers pooling
    config in the model's folder, a ``sentence-transformers/`` Hub id (mean)."""
    given = spec.get("pooling")
    if given is not None:
        given = str(given).lower()
        if given not in ("mean", "cls", "head"):
            raise ValueError(f"model {name!r}: pooling {given!r}; expected mean, cls or head")
        return None if given == "head" else given
    pooling_cfg = Path(path) / "1_Pooling" / "config.json"
    if pooling_cfg.is_file():
        try:
            modes = json.loads(pooling_cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            modes = {}
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
        if modes.get("pooling_mode_cls_token"):
            return "cls"
        return None
    return "mean" if name.startswith("sentence-transformers/") else None


def build_model(cfg: Mapping[str, Any], spec: Mapping[str, Any], n_labels: int, train_texts: list[str]) -> tuple[Any, Any]:
    """(classifier, tokenizer) for a config: a tiny BERT built from a config (``tiny:bert-LxH``), a
    sentence-embedding encoder + mean pooling, or the model's own classification head."""
    name = cfg["model_name"]
    if name.startswith(TINY_PREFIX):
        from transformers import BertConfig, BertForSequenceClassification
        _, layers, hidden = parse_tiny(name, ("bert",))
        tok = wordpiece_tokenizer(train_texts)
        mcfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=max(1, hidden // 16), intermediate_size=2 * hidden,
                          max_position_embeddings=512, num_labels=n_labels, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        return BertForSequenceClassification(mcfg), tok
    path = resolve_model_path(name, spec)
    if path != name:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local copy: never reach for the network
    tok = AutoTokenizer.from_pretrained(path)
    pooling = sentence_pooling(name, path, spec)
    if pooling is not None:
        model = MeanPoolingForSequenceClassification.from_encoder(path, n_labels, pooling=pooling)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=n_labels)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
    return model, tok
