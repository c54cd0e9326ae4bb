"""Fine-tuning methods, shared by every task kind: full, LoRA, partial freezing (top N layers),
IA3, prompt/P-tuning/prefix tuning, or any other ``peft`` type with keyword arguments from the
space's ``methods:`` section; and the PEFT *structure* of a config (which layers get adapters, on
which kinds of module, how large: ``peft_layer_pattern``, ``peft_module_kinds``, ``peft_rank_ffn``,
``peft_use_dora``/``peft_use_rslora``, ``peft_num_virtual_tokens``), built into a ``peft`` config
and checked against the model before any training.

The ``peft`` task type comes from the task kind: ``SEQ_CLS`` for classification (the classifier
trains in full through ``modules_to_save``), ``CAUSAL_LM`` for the generative kinds. Both take the
same structure decisions; prefix tuning only runs on causal LMs (it needs past key values, which
no sequence-classification model of transformers takes)."""
from __future__ import annotations

import logging
import re
from typing import Any, Mapping

from xlog.modelfeatures import _layer_lists  # the same notion of "layer" the records use

from ..space import (PROMPT_METHODS, STRUCTURE_DECISIONS, STRUCTURED_METHODS, SearchSpace, StructureError,
                     canonical_kinds, layer_indices, resolve_model_path)

__all__ = ["apply_method", "check_structure", "peft_config_for", "check_space_structures"]

log = logging.getLogger("xsearch.tasks.methods")


def apply_method(model: Any, cfg: Mapping[str, Any], spec: Mapping[str, Any], method_spec: Mapping[str, Any],
                 *, peft_task_type: str = "SEQ_CLS", train_head: bool = True) -> Any:
    """Full fine-tuning, LoRA, partial freezing (top N layers, + the head when ``train_head``), or
    another peft method, with the config's PEFT structure where it decides one (checked first:
    ``StructureError`` before any training). ``peft_task_type``: ``SEQ_CLS`` (the classifier trains
    in full through ``modules_to_save``) or ``CAUSAL_LM``. Causal LMs keep their LM head frozen
    under partial freezing (``train_head=False``): it is usually tied to the input embeddings
    (SmolLM2, GPT-2), so training it would train the whole vocabulary's embeddings, not a head."""
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
        if train_head:
            prefix = getattr(model, "base_model_prefix", "") + "."
            for pname, p in model.named_parameters():
                # The classification head (outside the base model) and the pooler always train.
                if not pname.startswith(prefix) or ".pooler." in pname:
                    p.requires_grad = True
        return model
    import peft
    check_structure(model, cfg, int(cfg.get("train_max_seq_length") or 0), peft_task_type=peft_task_type)
    structured = peft_config_for(model, cfg, spec, method_spec, peft_task_type=peft_task_type)
    if structured is not None:
        return peft.get_peft_model(model, structured)
    if method == "lora":
        targets = spec.get("lora_target_modules")
        conf = peft.LoraConfig(task_type=getattr(peft.TaskType, peft_task_type), r=int(cfg["peft_lora_r"]),
                               lora_alpha=float(cfg.get("peft_lora_alpha") or 2 * int(cfg["peft_lora_r"])),
                               lora_dropout=float(cfg.get("peft_lora_dropout") or 0.0),
                               target_modules=list(targets) if targets else None)
    else:  # any other peft type, with keyword arguments from the space's `methods:` section
        conf = peft.get_peft_config({"peft_type": method.upper(), "task_type": peft_task_type, **method_spec})
    return peft.get_peft_model(model, conf)


# ---- PEFT structures -------------------------------------------------------------------------------------
def _structure_set(cfg: Mapping[str, Any]) -> bool:
    return any(cfg.get(k) is not None for k in STRUCTURE_DECISIONS)


def _arch(model: Any) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


def _model_kinds(model: Any) -> tuple[str, list[int], dict[str, tuple[str, ...]]]:
    """(layer list name, layer indices, kinds of the first block's modules) of a (base) model."""
    from xlog.peftfeatures import block_modules, layer_blocks
    list_name, blocks = layer_blocks(model)
    if not blocks:
        return "", [], {}
    return list_name, [i for i, _, _ in blocks], block_modules(blocks[0][2])


def _targets(cfg: Mapping[str, Any], spec: Mapping[str, Any], rels: dict[str, tuple[str, ...]],
             model: Any) -> tuple[list[str], set[str]]:
    """Module names (relative to a block) of the config's kinds, and the kinds asked for."""
    from xlog.peftfeatures import module_kinds
    given = cfg.get("peft_module_kinds")
    if given is None and spec.get("lora_target_modules"):
        given = "+".join(k for t in spec["lora_target_modules"] for k in module_kinds(str(t))) or None
    wanted = set(canonical_kinds(given or "attn_q+attn_v").split("+"))
    if given is None:  # LoRA's usual default; a fused projection (GPT-2's c_attn) is taken whole
        wanted |= {k for ks in rels.values() if set(ks) & wanted for k in ks}
    arch = _arch(model)
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


def check_structure(model: Any, cfg: Mapping[str, Any], max_seq_length: int = 0, *,
                    peft_task_type: str = "SEQ_CLS") -> None:
    """Raise ``StructureError`` (before any training) when ``model`` cannot take the config's PEFT
    structure: layers beyond its depth, a module kind it lacks or fuses with another one, prefix
    tuning of a classifier (no sequence-classification model of transformers takes the past key
    values it needs; causal LMs do), virtual tokens that push the sequence beyond the model's
    positions."""
    method = str(cfg.get("ft_method")).lower()
    arch = _arch(model)
    if method == "prefix_tuning" and peft_task_type != "CAUSAL_LM":
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


def peft_config_for(model: Any, cfg: Mapping[str, Any], spec: Mapping[str, Any], method_spec: Mapping[str, Any],
                    *, peft_task_type: str = "SEQ_CLS") -> Any:
    """The ``peft`` config of a config's structure decisions (None when the config decides no
    structure and the method is LoRA: the space's ``lora_target_modules`` path then), for the
    task kind's ``peft_task_type`` (``SEQ_CLS`` or ``CAUSAL_LM``).

    LoRA: ``target_modules`` are the block-relative names of the chosen kinds, with
    ``layers_to_transform``/``layers_pattern`` for the layers, ``exclude_modules`` for names that end
    like a target (BERT's attention.output.dense ends like its feed-forward output.dense),
    ``rank_pattern`` for ``peft_rank_ffn``, and ``use_dora``/``use_rslora``. IA3 (no
    ``layers_to_transform``): per-layer module names, the feed-forward outputs as
    ``feedforward_modules``. Prompt tuning / P-tuning / prefix tuning: ``num_virtual_tokens``."""
    import peft
    task_type = getattr(peft.TaskType, peft_task_type)
    method = str(cfg.get("ft_method")).lower()
    extra = dict(method_spec or {})
    if method in PROMPT_METHODS:
        n_virtual = int(cfg.get("peft_num_virtual_tokens") or extra.pop("num_virtual_tokens", 8))
        extra.pop("num_virtual_tokens", None)
        cls = {"prompt_tuning": peft.PromptTuningConfig, "p_tuning": peft.PromptEncoderConfig,
               "prefix_tuning": peft.PrefixTuningConfig}[method]
        return cls(task_type=task_type, num_virtual_tokens=n_virtual, **extra)
    if method not in STRUCTURED_METHODS or (method == "lora" and not _structure_set(cfg)):
        return None
    list_name, layers, rels = _model_kinds(model)
    idx = layer_indices(str(cfg.get("peft_layer_pattern") or "all"), len(layers))
    targets, _ = _targets(cfg, spec, rels, model)
    if method == "ia3":
        names = [f"{list_name}.{i}.{rel}" for i in idx for rel in targets]
        ffn = [f"{list_name}.{i}.{rel}" for i in idx for rel in targets if "ffn_out" in rels[rel]]
        return peft.IA3Config(task_type=task_type, target_modules=names, feedforward_modules=ffn, **extra)
    r = int(cfg.get("peft_lora_r") or 8)
    excludes = sorted(rel for rel in rels if rel not in targets and any(rel.endswith("." + t) for t in targets))
    rank_ffn = cfg.get("peft_rank_ffn")
    rank_pattern = {rf"{re.escape(list_name)}\.\d+\.{re.escape(rel)}": int(rank_ffn)
                    for rel in targets if rank_ffn is not None and set(rels[rel]) & {"ffn_in", "ffn_out"}}
    return peft.LoraConfig(
        task_type=task_type, r=r, lora_alpha=float(cfg.get("peft_lora_alpha") or 2 * r),
        lora_dropout=float(cfg.get("peft_lora_dropout") or 0.0), target_modules=targets,
        exclude_modules=excludes or None, layers_to_transform=idx, layers_pattern=list_name,
        rank_pattern=rank_pattern, use_dora=bool(cfg.get("peft_use_dora")),
        use_rslora=bool(cfg.get("peft_use_rslora")), **extra)


def _skeleton(name: str, spec: Mapping[str, Any], peft_task_type: str) -> Any:
    """The model of a space entry without its weights (on the meta device), with the head of the
    task kind: its config and module tree are what a structure check needs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from .tiny import LM_POSITIONS, TINY_PREFIX, tiny_config
    causal = peft_task_type == "CAUSAL_LM"
    if name.startswith(TINY_PREFIX):
        mcfg = tiny_config(name, allowed=("llama", "gpt2"), max_positions=LM_POSITIONS) if causal else tiny_config(name)
    else:
        mcfg = AutoConfig.from_pretrained(resolve_model_path(name, spec))
        mcfg.num_labels = 2
    with torch.device("meta"):
        if causal:
            return AutoModelForCausalLM.from_config(mcfg)
        return AutoModelForSequenceClassification.from_config(mcfg)


def check_space_structures(space: SearchSpace) -> None:
    """Every structure value of ``space`` against every model it can be combined with (with the
    head of the space's task kind), before the search starts: a value no model can take raises
    ``StructureError`` naming model and value."""
    from ..errors import XSearchError
    from . import get_task_kind
    peft_task_type = get_task_kind(space.task_type).peft_task_type
    methods = space.param("ft_method").values
    structure = [p for p in space.parameters if p.name in STRUCTURE_DECISIONS or p.name == "ft_method"]
    if not any(p.name in STRUCTURE_DECISIONS for p in structure) and not set(methods) & set(PROMPT_METHODS):
        return
    max_seq = max((int(v) for v in space.param("train_max_seq_length").values), default=0) \
        if "train_max_seq_length" in space.names else 0
    for name in space.param("model_name").values:
        try:
            model = _skeleton(str(name), space.model_spec(str(name)), peft_task_type)
        except (OSError, ValueError, XSearchError) as exc:
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
                        check_structure(model, cfg, max_seq, peft_task_type=peft_task_type)
                        if method in STRUCTURED_METHODS and p.name != "ft_method":
                            peft_config_for(model, dict(cfg, peft_lora_r=8), space.model_spec(str(name)), {},
                                            peft_task_type=peft_task_type)
                    except StructureError as exc:
                        what = "" if p.name == "ft_method" else f", {p.name}={v!r}"
                        raise StructureError(f"space {space.name}: model {name} with ft_method {method}{what}: "
                                             f"{exc}") from None
