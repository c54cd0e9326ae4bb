"""One search candidate, run in its own process: load the task data, build the model and the
fine-tuning method of a config, train with ``transformers.Trainer`` + ``XLogCallback`` (search id
set), evaluate (accuracy, macro F1; primary = eval_f1), and leave the record in the store.

Sentence-embedding models (a sentence-transformers folder with mean pooling, a
``sentence-transformers/`` Hub id, or ``pooling: mean`` in the space's model entry) are trained
with :class:`MeanPoolingForSequenceClassification`: the reading they were trained for (mean over
the tokens), then a linear classifier, instead of BERT's classification head, which reads a pooler
that sentence-embedding training never used and learns more slowly from it (in short runs it
predicted one class: macro F1 0.45 in the quick start).

The evaluator (xsearch/evaluator.py) starts it in a fork of a process that has already imported
torch and transformers (saving ~7 s per candidate), or as ``python -m xsearch.worker JOB.json``.
Heavy imports stay at module level on purpose: they are what the fork server preloads.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import transformers  # noqa: F401  (preloaded by the fork server)
# Imported here, not lazily: under a memory limit, mapping a library late can fail like an OOM.
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, PreTrainedModel, Trainer, TrainingArguments)
from transformers.modeling_outputs import SequenceClassifierOutput

from xlog.callback import XLogCallback
from xlog.modelfeatures import _layer_lists  # the same notion of "layer" the records use

from .space import (PROMPT_METHODS, STRUCTURE_DECISIONS, STRUCTURED_METHODS, SearchSpace, StructureError,
                    canonical_kinds, layer_indices, resolve_model_path)

try:  # energy metering starts inside the memory limit: load it beforehand
    import codecarbon  # noqa: F401
except ImportError:
    pass

__all__ = ["MeanPoolingForSequenceClassification", "apply_method", "build_model", "check_space_structures",
           "check_structure", "compute_metrics", "peft_config_for", "sentence_pooling", "run"]

log = logging.getLogger("xsearch.worker")
TINY_PREFIX = "tiny:"


class _SearchCallback(XLogCallback):
    """XLogCallback whose record id is chosen by the evaluator, so that the evaluator finds the
    record of its candidate (or writes a stand-in with that id if the process is killed)."""

    def __init__(self, record_id: str, **kw: Any):
        super().__init__(**kw)
        self.fixed_record_id = record_id

    def _open(self, *args: Any, **kw: Any) -> None:
        super()._open(*args, **kw)
        if self.record is not None:
            self.record["record_id"] = self.fixed_record_id


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


TINY_ARCHS = ("bert", "llama", "gpt2")


def parse_tiny(name: str) -> tuple[int, int]:
    """``tiny:bert-LxH`` (or ``tiny:llama-LxH``, ``tiny:gpt2-LxH``) -> (layers, hidden size)."""
    spec = name[len(TINY_PREFIX):]
    try:
        arch, dims = spec.split("-", 1)
        layers, hidden = (int(x) for x in dims.lower().split("x"))
    except ValueError:
        raise ValueError(f"tiny model {name!r}: expected tiny:<arch>-<layers>x<hidden>, e.g. tiny:bert-2x32") from None
    if arch not in TINY_ARCHS:
        raise ValueError(f"tiny model {name!r}: only {', '.join(TINY_ARCHS)} tiny models can be built")
    return layers, hidden


def tiny_config(name: str, vocab_size: int = 1000, n_labels: int = 2, pad_token_id: int = 0) -> Any:
    """The transformers config of a ``tiny:`` model (a BERT, Llama or GPT-2 built from scratch)."""
    from transformers import BertConfig, GPT2Config, LlamaConfig
    layers, hidden = parse_tiny(name)
    arch = name[len(TINY_PREFIX):].split("-", 1)[0]
    heads = max(1, hidden // 16)
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=512,
                           num_labels=n_labels, pad_token_id=pad_token_id)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=512,
                          num_labels=n_labels, pad_token_id=pad_token_id, bos_token_id=pad_token_id,
                          eos_token_id=pad_token_id)
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=2 * hidden, max_position_embeddings=512, num_labels=n_labels,
                      pad_token_id=pad_token_id)


def tiny_tokenizer(texts: list[str], vocab_size: int = 1000) -> Any:
    """A WordPiece tokenizer trained on the task's own texts (no download)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def build_model(cfg: dict[str, Any], spec: dict[str, Any], n_labels: int, train_texts: list[str]) -> tuple[Any, Any]:
    name = cfg["model_name"]
    if name.startswith(TINY_PREFIX):
        tok = tiny_tokenizer(train_texts)
        mcfg = tiny_config(name, tok.vocab_size, n_labels, tok.pad_token_id)
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(mcfg), tok
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


def apply_method(model: Any, cfg: dict[str, Any], spec: dict[str, Any], method_spec: dict[str, Any]) -> Any:
    """Full fine-tuning, LoRA, partial freezing (top N layers + head), or another peft method."""
    method = str(cfg["ft_method"]).lower()
    if method == "full":
        return model
    if method == "partial":
        n = int(cfg.get("ft_trainable_layers") or 1)
        for p in model.parameters():
            p.requires_grad = False
        layer_lists = _layer_lists(model.base_model if hasattr(model, "base_model") else model)
        if not layer_lists:
            raise ValueError(f"partial fine-tuning: no layer list found in {type(model).__name__}")
        blocks = max(layer_lists, key=len)
        for block in list(blocks)[-n:]:
            for p in block.parameters():
                p.requires_grad = True
        prefix = getattr(model, "base_model_prefix", "") + "."
        for pname, p in model.named_parameters():
            # The classification head (outside the base model) and the pooler always train.
            if not pname.startswith(prefix) or ".pooler." in pname:
                p.requires_grad = True
        return model
    import peft
    check_structure(model, cfg, int(cfg.get("train_max_seq_length") or 0))
    structured = peft_config_for(model, cfg, spec, method_spec)
    if structured is not None:
        return peft.get_peft_model(model, structured)
    if method == "lora":
        targets = spec.get("lora_target_modules")
        conf = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=int(cfg["peft_lora_r"]),
                               lora_alpha=float(cfg.get("peft_lora_alpha") or 2 * int(cfg["peft_lora_r"])),
                               lora_dropout=float(cfg.get("peft_lora_dropout") or 0.0),
                               target_modules=list(targets) if targets else None)
    else:  # any other peft type, with keyword arguments from the space's `methods:` section
        conf = peft.get_peft_config({"peft_type": method.upper(), "task_type": "SEQ_CLS", **method_spec})
    return peft.get_peft_model(model, conf)


# ---- PEFT structures -------------------------------------------------------------------------------------
def _structure_set(cfg: dict[str, Any]) -> bool:
    return any(cfg.get(k) is not None for k in STRUCTURE_DECISIONS)


def _model_kinds(model: Any) -> tuple[str, list[int], dict[str, tuple[str, ...]]]:
    """(layer list name, layer indices, kinds of the first block's modules) of a (base) model."""
    from xlog.peftfeatures import block_modules, layer_blocks
    list_name, blocks = layer_blocks(model)
    if not blocks:
        return "", [], {}
    return list_name, [i for i, _, _ in blocks], block_modules(blocks[0][2])


def _targets(cfg: dict[str, Any], spec: dict[str, Any], rels: dict[str, tuple[str, ...]],
             model: Any) -> tuple[list[str], set[str]]:
    """Module names (relative to a block) of the config's kinds, and the kinds asked for."""
    from xlog.peftfeatures import module_kinds
    given = cfg.get("peft_module_kinds")
    if given is None and spec.get("lora_target_modules"):
        given = "+".join(k for t in spec["lora_target_modules"] for k in module_kinds(str(t))) or None
    wanted = set(canonical_kinds(given or "attn_q+attn_v").split("+"))
    if given is None:  # LoRA's usual default; a fused projection (GPT-2's c_attn) is taken whole
        wanted |= {k for ks in rels.values() if set(ks) & wanted for k in ks}
    arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    targets = [rel for rel, ks in rels.items() if set(ks) <= wanted]
    fused = sorted(rel for rel, ks in rels.items() if set(ks) & wanted and not set(ks) <= wanted)
    if fused:
        rel = fused[0]
        raise StructureError(f"{arch}: module {rel} fuses {'+'.join(rels[rel])}; peft_module_kinds "
                             f"{canonical_kinds(sorted(wanted))} takes only part of it (choose all of its kinds)")
    missing = wanted - {k for rel in targets for k in rels[rel]}
    if missing:
        have = canonical_kinds(sorted({k for ks in rels.values() for k in ks})) if rels else "none"
        raise StructureError(f"{arch} has no module of kind {', '.join(sorted(missing))} "
                             f"(its blocks have {have})")
    return targets, wanted


def check_structure(model: Any, cfg: dict[str, Any], max_seq_length: int = 0) -> None:
    """Raise ``StructureError`` (before any training) when ``model`` cannot take the config's PEFT
    structure: layers beyond its depth, a module kind it lacks or fuses with another one, prefix
    tuning (no sequence-classification model of transformers takes the past key values it
    needs), virtual tokens that push the sequence beyond the model's positions."""
    method = str(cfg.get("ft_method")).lower()
    arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if method == "prefix_tuning":
        raise StructureError(f"prefix_tuning: {arch} sequence classification does not take past key values, which "
                             "prefix tuning needs (peft supports it for causal-LM heads); use prompt_tuning or lora")
    if method in PROMPT_METHODS:
        n_virtual = int(cfg.get("peft_num_virtual_tokens") or 8)
        conf = getattr(model, "config", None)
        max_pos = getattr(conf, "max_position_embeddings", None) or getattr(conf, "n_positions", None)
        if max_pos and max_seq_length and n_virtual + max_seq_length > int(max_pos):
            raise StructureError(f"{method}: {n_virtual} virtual tokens + train_max_seq_length {max_seq_length} "
                                 f"exceed the {max_pos} positions of {arch}")
        return
    if method not in STRUCTURED_METHODS or not _structure_set(cfg):
        if method in ("full", "partial") and (cfg.get("peft_layer_pattern") or cfg.get("peft_module_kinds")):
            raise StructureError(f"{method} fine-tuning has no PEFT structure; condition peft_layer_pattern and "
                                 "peft_module_kinds on ft_method lora/ia3")
        return
    list_name, layers, rels = _model_kinds(model)
    if not layers:
        raise StructureError(f"{arch}: no list of transformer layers found to place adapters in")
    layer_indices(str(cfg.get("peft_layer_pattern") or "all"), len(layers))
    targets, wanted = _targets(cfg, {}, rels, model) if cfg.get("peft_module_kinds") else ([], set())
    lora_only = cfg.get("peft_rank_ffn") is not None or cfg.get("peft_use_dora") or cfg.get("peft_use_rslora")
    if method == "ia3" and lora_only:
        raise StructureError("ia3 has no rank, DoRA or rsLoRA: condition peft_rank_ffn, peft_use_dora and "
                             "peft_use_rslora on ft_method lora")
    if cfg.get("peft_rank_ffn") is not None and wanted and not wanted & {"ffn_in", "ffn_out"}:
        raise StructureError("peft_rank_ffn is set but peft_module_kinds has no feed-forward kind")


def peft_config_for(model: Any, cfg: dict[str, Any], spec: dict[str, Any], method_spec: dict[str, Any]) -> Any:
    """The ``peft`` config of a config's structure decisions (None when the config decides no
    structure and the method is LoRA: the space's ``lora_target_modules`` path then).

    LoRA: ``target_modules`` are the block-relative names of the chosen kinds, with
    ``layers_to_transform``/``layers_pattern`` for the layers, ``exclude_modules`` for names that end
    like a target (BERT's attention.output.dense ends like its feed-forward output.dense),
    ``rank_pattern`` for ``peft_rank_ffn``, and ``use_dora``/``use_rslora``. IA3 (no
    ``layers_to_transform``): per-layer module names, the feed-forward outputs as
    ``feedforward_modules``. Prompt tuning / P-tuning: ``num_virtual_tokens``."""
    import re

    import peft
    method = str(cfg.get("ft_method")).lower()
    extra = dict(method_spec or {})
    if method in PROMPT_METHODS:
        n_virtual = int(cfg.get("peft_num_virtual_tokens") or extra.pop("num_virtual_tokens", 8))
        cls = {"prompt_tuning": peft.PromptTuningConfig, "p_tuning": peft.PromptEncoderConfig,
               "prefix_tuning": peft.PrefixTuningConfig}[method]
        return cls(task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=n_virtual, **extra)
    if method not in STRUCTURED_METHODS or (method == "lora" and not _structure_set(cfg)):
        return None
    list_name, layers, rels = _model_kinds(model)
    idx = layer_indices(str(cfg.get("peft_layer_pattern") or "all"), len(layers))
    targets, _ = _targets(cfg, spec, rels, model)
    if method == "ia3":
        names = [f"{list_name}.{i}.{rel}" for i in idx for rel in targets]
        ffn = [f"{list_name}.{i}.{rel}" for i in idx for rel in targets if "ffn_out" in rels[rel]]
        return peft.IA3Config(task_type=peft.TaskType.SEQ_CLS, target_modules=names, feedforward_modules=ffn, **extra)
    r = int(cfg.get("peft_lora_r") or 8)
    excludes = sorted(rel for rel in rels if rel not in targets and any(rel.endswith("." + t) for t in targets))
    rank_ffn = cfg.get("peft_rank_ffn")
    rank_pattern = {rf"{re.escape(list_name)}\.\d+\.{re.escape(rel)}": int(rank_ffn)
                    for rel in targets if rank_ffn is not None and set(rels[rel]) & {"ffn_in", "ffn_out"}}
    return peft.LoraConfig(
        task_type=peft.TaskType.SEQ_CLS, r=r, lora_alpha=float(cfg.get("peft_lora_alpha") or 2 * r),
        lora_dropout=float(cfg.get("peft_lora_dropout") or 0.0), target_modules=targets,
        exclude_modules=excludes or None, layers_to_transform=idx, layers_pattern=list_name,
        rank_pattern=rank_pattern, use_dora=bool(cfg.get("peft_use_dora")),
        use_rslora=bool(cfg.get("peft_use_rslora")), **extra)


def _skeleton(name: str, spec: dict[str, Any]) -> Any:
    """The model of a space entry without its weights (on the meta device): its config and module
    tree are what a structure check needs."""
    if name.startswith(TINY_PREFIX):
        mcfg = tiny_config(name)
    else:
        path = resolve_model_path(name, spec)
        mcfg = AutoConfig.from_pretrained(path)
        mcfg.num_labels = 2
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(mcfg)


def check_space_structures(space: SearchSpace) -> None:
    """Every structure value of ``space`` against every model it can be combined with, before the
    search starts: a value no model can take raises ``StructureError`` naming model and value."""
    methods = space.param("ft_method").values
    structure = [p for p in space.parameters if p.name in STRUCTURE_DECISIONS or p.name == "ft_method"]
    if not any(p.name in STRUCTURE_DECISIONS for p in structure) and not set(methods) & set(PROMPT_METHODS):
        return
    max_seq = max((int(v) for v in space.param("train_max_seq_length").values), default=0) \
        if "train_max_seq_length" in space.names else 0
    for name in space.param("model_name").values:
        try:
            model = _skeleton(str(name), space.model_spec(str(name)))
        except (OSError, ValueError) as exc:
            log.warning("cannot check the PEFT structures of %s before the search (%s)", name, exc)
            continue
        for method in methods:
            base = {"model_name": name, "ft_method": method}
            # Each structure value on its own (with the others at their defaults): a value no
            # combination can use is an error of the space, caught before any training.
            for p in structure:
                if p.name != "ft_method" and not p.active(base):
                    continue
                for v in (p.values if p.name != "ft_method" else (method,)):
                    if v is None or v is False:
                        continue
                    cfg = dict(base, **{p.name: v})
                    if p.name == "peft_rank_ffn":
                        cfg["peft_module_kinds"] = next(k for k in dict(p.when).get("peft_module_kinds", ("ffn",)))
                    try:
                        check_structure(model, cfg, max_seq)
                        if method in STRUCTURED_METHODS and p.name != "ft_method":
                            peft_config_for(model, dict(cfg, peft_lora_r=8), space.model_spec(str(name)), {})
                    except StructureError as exc:
                        what = "" if p.name == "ft_method" else f", {p.name}={v!r}"
                        raise StructureError(f"space {space.name}: model {name} with ft_method {method}{what}: "
                                             f"{exc}") from None


# ---- resource limits and supervision ---------------------------------------------------------------
def apply_memory_limit(limit_bytes: int | None) -> None:
    """Cap this process's memory: address space on CPU (an allocation beyond it fails with torch's
    "DefaultCPUAllocator: can't allocate memory", which xlog records as `oom`), the CUDA caching
    allocator's share of the device on GPU (RLIMIT_AS would break CUDA's large mappings)."""
    if not limit_bytes:
        return
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total))
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    new_hard = hard if hard != resource.RLIM_INFINITY and hard < limit_bytes else limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (min(limit_bytes, new_hard), new_hard))


def _vm_size_gib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def watch_parent(pid: int | None, interval: float = 1.0) -> None:
    """End this candidate (recorded as interrupted) if the search that started it dies, so that a
    killed search leaves no orphan training behind (and a resumed one does not race with it)."""
    if not pid:
        return

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.environ["XLOG_SIGTERM_STATUS"] = "interrupted"
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass
    threading.Thread(target=loop, name="xsearch-parent-watch", daemon=True).start()


# ---- the job ------------------------------------------------------------------------------------------
def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one candidate; returns what the record says (also written to the store)."""
    os.environ["XLOG_HOME"] = job["store"]
    os.environ["XLOG_SIGTERM_STATUS"] = "timeout"  # the evaluator sends SIGTERM only at the time limit
    if not job.get("energy", True):
        os.environ["XLOG_ENERGY"] = "0"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    watch_parent(job.get("parent_pid"))
    cfg = job["config"]
    data = Path(job["data_dir"])
    train_df = pd.read_parquet(data / "train.parquet")
    eval_df = pd.read_parquet(data / "eval.parquet")
    labels = json.loads((data / "labels.json").read_text(encoding="utf-8"))
    transformers.set_seed(int(job.get("seed", 0)))

    model, tok = build_model(cfg, job.get("model_spec") or {}, len(labels), train_df["text"].tolist())
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {v: i for i, v in enumerate(labels)}
    model = apply_method(model, cfg, job.get("model_spec") or {}, job.get("method_spec") or {})

    import datasets
    max_len = int(cfg.get("train_max_seq_length") or 128)

    def tokenize(batch: dict[str, list]) -> Any:
        return tok(batch["text"], truncation=True, max_length=max_len)
    train_ds = datasets.Dataset.from_pandas(train_df[["text", "label"]]).map(tokenize, batched=True)
    eval_ds = datasets.Dataset.from_pandas(eval_df[["text", "label"]]).map(tokenize, batched=True)

    warmup = float(cfg.get("train_warmup_ratio") or 0.0)
    args = TrainingArguments(
        output_dir=str(Path(job["output_dir"])), num_train_epochs=float(cfg.get("train_epochs") or 1),
        per_device_train_batch_size=int(cfg.get("train_batch_size") or 16),
        per_device_eval_batch_size=64, learning_rate=float(cfg.get("train_learning_rate") or 5e-5),
        weight_decay=float(cfg.get("train_weight_decay") or 0.0), warmup_steps=warmup,
        lr_scheduler_type=str(cfg.get("train_lr_scheduler") or "linear"), eval_strategy="epoch",
        save_strategy="no", logging_strategy="epoch", report_to=[], disable_tqdm=True,
        seed=int(job.get("seed", 0)), use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    callback = _SearchCallback(
        job["record_id"], task_name=job.get("task_name"), task_type="text-classification",
        search_id=job["search_id"], store=job["store"], text_column="text", label_column="label",
        max_seq_length=max_len, model_name=cfg["model_name"], primary_metric="eval_f1",
        greater_is_better=True, energy=job.get("energy", True))
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=compute_metrics, callbacks=[callback])
    log.info("address space before training: %.2f GiB; memory limit: %s", _vm_size_gib(),
             f"{job['memory_limit_bytes'] / 2**30:.2f} GiB" if job.get("memory_limit_bytes") else "none")
    apply_memory_limit(job.get("memory_limit_bytes"))
    trainer.train()
    rec = callback.record or {}
    return {"record_id": rec.get("record_id"), "status": rec.get("status"),
            "quality": rec.get("outcome_primary_value")}


def child_main(job_path: str, log_path: str) -> None:
    """Entry point in the candidate process: output to a log file, then run the job."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    # Per-candidate environment (e.g. CUDA_VISIBLE_DEVICES of its GPU slot), set before torch
    # touches CUDA: the fork server imported torch but never initialised CUDA.
    os.environ.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    result = run(job)
    Path(job["result_path"]).write_text(json.dumps(result), encoding="utf-8")


def serve() -> None:
    """A fork server: torch/transformers are imported once (above); each job is a fork of this
    process. Protocol on stdin/stdout, one line each: ``run JOB LOG`` -> ``pid N``; when a job's
    process ends -> ``exit N CODE`` (CODE < 0: killed by signal -CODE). Exits when stdin closes."""
    import select
    import traceback
    # The protocol gets a private copy of stdout; fd 1 goes to stderr so that a library printing
    # to stdout cannot corrupt it.
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(proto_fd, "w", buffering=1)
    print("ready", file=out, flush=True)
    children: set[int] = set()
    buf = b""
    stdin_fd = sys.stdin.fileno()
    open_ = True
    while open_ or children:
        ready, _, _ = select.select([stdin_fd] if open_ else [], [], [], 0.1)
        if ready:
            chunk = os.read(stdin_fd, 65536)
            if not chunk:
                open_ = False  # the search is gone: its candidates end by their own watchdog
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode().split(" ")
                if len(parts) != 3 or parts[0] != "run":
                    continue
                pid = os.fork()
                if pid == 0:  # the candidate
                    code = 0
                    try:
                        os.close(proto_fd)
                        devnull = os.open(os.devnull, os.O_RDONLY)
                        os.dup2(devnull, 0)
                        child_main(parts[1], parts[2])
                    except BaseException:
                        traceback.print_exc()
                        code = 1
                    finally:
                        try:
                            sys.stdout.flush()
                            sys.stderr.flush()
                        finally:
                            os._exit(code)
                children.add(pid)
                print(f"pid {pid}", file=out, flush=True)
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                print(f"exit {pid} {code}", file=out, flush=True)


if __name__ == "__main__":  # python -m xsearch.worker --serve | JOB.json [LOG]
    if len(sys.argv) < 2:
        sys.exit("usage: python -m xsearch.worker --serve | JOB.json [LOG]")
    if sys.argv[1] == "--serve":
        serve()
    else:
        child_main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.devnull)
