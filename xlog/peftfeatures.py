"""The structure of a PEFT model, read from the model itself: which layers carry adapters, on which
kinds of module, with which ranks, and how many trainable parameters each kind holds.

Comparable across architectures and across whoever built the model: module names are mapped to
abstract *kinds* (``KINDS``), layers to indices in the model's stack of transformer blocks, and the
layer set to a canonical pattern name (``layer_pattern``). A LoRA on ``query``/``value`` of every
layer of a BERT and one on ``q_proj``/``v_proj`` of every layer of a Llama both record
``peft_module_kinds = "attn_q+attn_v"`` and ``peft_layer_pattern = "all"``, whether the config
named modules by suffix, by full name, by regex, with ``layers_to_transform`` or not.

``xsearch`` builds PEFT configs from the same kinds (``module_kinds``, ``block_modules``), so a
searched structure and a hand-written one give the same record columns.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

from .modelfeatures import _layer_lists, unwrap

__all__ = ["KINDS", "ADAPTER_KINDS", "ATTN_KINDS", "FFN_KINDS", "module_kinds", "block_modules", "layer_blocks",
           "layer_pattern", "layers_text", "parse_layers", "kinds_text", "peft_structure_features"]

#: Abstract kinds, in their canonical order. ``prompt``: virtual tokens at the input (prompt tuning,
#: P-tuning); ``prefix``: virtual keys/values in every layer (prefix tuning); ``other``: an adapted
#: module of no known kind (e.g. an embedding).
ATTN_KINDS = ("attn_q", "attn_k", "attn_v", "attn_o")
FFN_KINDS = ("ffn_in", "ffn_out")
ADAPTER_KINDS = ATTN_KINDS + FFN_KINDS
KINDS = ADAPTER_KINDS + ("prompt", "prefix", "other")

# Leaf names of linear layers by kind. Fused query/key/value projections (GPT-2's c_attn, Falcon's
# query_key_value, Phi-3's qkv_proj) are all three kinds at once; Phi-3's gate_up_proj both ffn_in.
_ATTN_LEAF = {
    "query": ("attn_q",), "q_proj": ("attn_q",), "q": ("attn_q",), "q_lin": ("attn_q",), "wq": ("attn_q",),
    "key": ("attn_k",), "k_proj": ("attn_k",), "k": ("attn_k",), "k_lin": ("attn_k",), "wk": ("attn_k",),
    "value": ("attn_v",), "v_proj": ("attn_v",), "v": ("attn_v",), "v_lin": ("attn_v",), "wv": ("attn_v",),
    "c_attn": ATTN_KINDS[:3], "query_key_value": ATTN_KINDS[:3], "qkv_proj": ATTN_KINDS[:3],
    "qkv": ATTN_KINDS[:3], "wqkv": ATTN_KINDS[:3], "in_proj": ATTN_KINDS[:3],
    "o_proj": ("attn_o",), "out_proj": ("attn_o",), "o": ("attn_o",), "out_lin": ("attn_o",),
    "wo": ("attn_o",), "c_proj": ("attn_o",), "dense": ("attn_o",), "proj": ("attn_o",),
}
_FFN_LEAF = {
    "gate_proj": ("ffn_in",), "up_proj": ("ffn_in",), "gate_up_proj": ("ffn_in",), "fc1": ("ffn_in",),
    "c_fc": ("ffn_in",), "wi": ("ffn_in",), "wi_0": ("ffn_in",), "wi_1": ("ffn_in",), "lin1": ("ffn_in",),
    "w1": ("ffn_in",), "w3": ("ffn_in",), "dense_h_to_4h": ("ffn_in",),
    "down_proj": ("ffn_out",), "fc2": ("ffn_out",), "c_proj": ("ffn_out",), "wo": ("ffn_out",),
    "lin2": ("ffn_out",), "w2": ("ffn_out",), "dense_4h_to_h": ("ffn_out",),
}
_ATTN_CONTEXT = re.compile(r"(attn|attention)", re.IGNORECASE)
_FFN_CONTEXT = re.compile(r"(mlp|ffn|feed_forward|feedforward|densereludense)", re.IGNORECASE)


def module_kinds(rel_name: str) -> tuple[str, ...]:
    """The kinds of a module from its name relative to its transformer block, e.g.
    ``attention.self.query`` -> (attn_q,), ``intermediate.dense`` -> (ffn_in,), ``output.dense``
    (BERT's feed-forward output) -> (ffn_out,), ``attn.c_attn`` -> (attn_q, attn_k, attn_v); ()
    when unknown (layer norms, embeddings)."""
    parts = rel_name.split(".")
    leaf = parts[-1].lower()
    context = ".".join(parts[:-1])
    if _ATTN_CONTEXT.search(context):
        # BERT: attention.self.{query,key,value}, attention.output.dense
        return _ATTN_LEAF.get(leaf, ())
    if _FFN_CONTEXT.search(context):
        return _FFN_LEAF.get(leaf, ())
    if rel_name in ("intermediate.dense",) or context.endswith("intermediate"):
        return ("ffn_in",)
    if rel_name == "output.dense":  # BERT-like: the feed-forward's output (attention's is attention.output.dense)
        return ("ffn_out",)
    if leaf in ("q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "qkv_proj", "c_attn"):
        return _ATTN_LEAF[leaf]
    if leaf in ("gate_proj", "up_proj", "down_proj", "fc1", "fc2", "c_fc"):
        return _FFN_LEAF[leaf]
    return ()


def layer_blocks(model: Any) -> tuple[str, list[tuple[int, str, Any]]]:
    """The transformer blocks of a (base) model as (layer index, full module name, block), numbered
    across every block stack in order (encoder then decoder), and the stack's attribute name
    (``layer``, ``layers``, ``h``, ``block``) of the longest stack."""
    lists = _layer_lists(model)
    if not lists:
        return "", []
    names = {id(m): n for n, m in model.named_modules()}
    blocks, i = [], 0
    for ml in lists:
        for j, block in enumerate(ml):
            blocks.append((i, f"{names.get(id(ml), '')}.{j}".lstrip("."), block))
            i += 1
    longest = max(lists, key=len)
    return names.get(id(longest), "").split(".")[-1], blocks


def block_modules(block: Any) -> dict[str, tuple[str, ...]]:
    """Linear-like modules of one transformer block that have a kind: relative name -> kinds."""
    out = {}
    for name, mod in block.named_modules():
        if not name or not hasattr(mod, "weight") or list(mod.children()):
            continue
        w = getattr(mod, "weight", None)
        if getattr(w, "ndim", 0) != 2:
            continue  # layer norms and biases have 1-d weights
        kinds = module_kinds(name)
        if kinds:
            out[name] = kinds
    return out


def kinds_text(kinds: Iterable[str]) -> str | None:
    """Kinds as the canonical ``+``-joined string, in ``KINDS`` order (e.g. ``attn_q+attn_v``)."""
    ks = set(kinds)
    unknown = ks - set(KINDS)
    if unknown:
        raise ValueError(f"unknown module kind(s) {sorted(unknown)}; kinds are {list(KINDS)}")
    return "+".join(k for k in KINDS if k in ks) or None


def layers_text(indices: Iterable[int]) -> str | None:
    """Layer indices as compact ranges: [0, 1, 2, 4, 6, 7] -> ``0-2,4,6-7``."""
    idx = sorted(set(int(i) for i in indices))
    if not idx:
        return None
    parts, start, prev = [], idx[0], idx[0]
    for i in idx[1:] + [None]:  # type: ignore[list-item]
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def parse_layers(text: str | None) -> list[int]:
    """The inverse of ``layers_text``."""
    out: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def layer_pattern(indices: Iterable[int], n_layers: int) -> str | None:
    """The canonical name of a set of adapted layers out of ``n_layers`` (first match wins):
    ``all``; ``top_half`` / ``bottom_half`` (the last / first ``n_layers // 2`` layers);
    ``every_other`` (every second layer counted down from the last one); ``top_<k>`` /
    ``bottom_<k>`` (the last / first k layers); ``custom`` (anything else); None for no layer."""
    s = sorted(set(int(i) for i in indices))
    n = int(n_layers)
    if not s:
        return None
    if s == list(range(n)):
        return "all"
    half = n // 2
    if half and s == list(range(n - half, n)):
        return "top_half"
    if half and s == list(range(half)):
        return "bottom_half"
    if n >= 3 and s == list(range(n - 1, -1, -2))[::-1]:
        return "every_other"
    if s == list(range(n - len(s), n)):
        return f"top_{len(s)}"
    if s == list(range(len(s))):
        return f"bottom_{len(s)}"
    return "custom"


def _adapter_name(model: Any) -> str:
    name = getattr(model, "active_adapter", "default")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else "default"
    return str(name)


def peft_structure_features(model: Any) -> dict[str, Any]:
    """The ``peft_*`` structure columns of a PEFT model (empty for a model without PEFT)."""
    if model is None:
        return {}
    outer = getattr(model, "module", model)
    base, cfg = unwrap(model)
    if cfg is None:
        return {}
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # a peft model without peft importable cannot happen; be safe anyway
        return {}
    adapter = _adapter_name(outer)
    _, blocks = layer_blocks(base)
    n_layers = len(blocks)
    where: dict[int, tuple[int, str]] = {}
    for i, _, block in blocks:
        for rel, mod in block.named_modules():
            where[id(mod)] = (i, rel)

    layers: set[int] = set()
    kinds_seen: set[str] = set()
    ranks: dict[str, int] = {}
    params: dict[str, float] = {}
    n_modules = 0
    counted: set[int] = set()
    for _, mod in base.named_modules():
        if not isinstance(mod, BaseTunerLayer):
            continue
        n_modules += 1
        loc = where.get(id(mod))
        kinds: tuple[str, ...] = ("other",)
        if loc is not None:
            kinds = module_kinds(loc[1]) or ("other",)
            layers.add(loc[0])
        kinds_seen.update(kinds)
        r = getattr(mod, "r", None)
        if isinstance(r, dict) and r.get(adapter) is not None:
            for k in kinds:
                ranks[k] = max(ranks.get(k, 0), int(r[adapter]))
        own = [p for p in mod.parameters() if p.requires_grad and id(p) not in counted]
        counted.update(id(p) for p in own)
        n = sum(p.numel() for p in own)
        for k in kinds:  # a fused module's parameters are shared equally among its kinds
            params[k] = params.get(k, 0.0) + n / len(kinds)

    ptype = getattr(getattr(cfg, "peft_type", None), "value", getattr(cfg, "peft_type", None))
    is_prompt = bool(getattr(cfg, "is_prompt_learning", False))
    prompt_params = 0
    if is_prompt:
        enc = getattr(outer, "prompt_encoder", None)
        if enc is not None:
            for p in enc.parameters():
                if p.requires_grad and id(p) not in counted:
                    counted.add(id(p))
                    prompt_params += p.numel()
        if str(ptype) == "PREFIX_TUNING":
            kinds_seen.add("prefix")
            n_total = int(getattr(cfg, "num_layers", 0) or n_layers)
            layers.update(range(n_total))
            n_layers = max(n_layers, n_total)
            params["prefix"] = params.get("prefix", 0.0) + prompt_params
        else:
            kinds_seen.add("prompt")
            params["prompt"] = params.get("prompt", 0.0) + prompt_params
    head = other = 0
    for name, p in outer.named_parameters():
        if p.requires_grad and id(p) not in counted:
            counted.add(id(p))
            if "modules_to_save" in name:
                head += p.numel()
            else:
                other += p.numel()
    if head:
        params["head"] = float(head)
    if other:
        params["other_trainable"] = float(other)

    def rank_of(group: tuple[str, ...]) -> int | None:
        rs = [ranks[k] for k in group if k in ranks]
        return max(rs) if rs else None
    nv = getattr(cfg, "num_virtual_tokens", None)
    dora = getattr(cfg, "use_dora", None)
    rslora = getattr(cfg, "use_rslora", None)
    return {
        "peft_layers": layers_text(layers),
        "peft_n_layers": len(layers),
        "peft_layers_fraction": (len(layers) / n_layers) if n_layers else None,
        "peft_layer_pattern": layer_pattern(layers, n_layers) if n_layers else None,
        "peft_module_kinds": kinds_text(kinds_seen),
        "peft_n_adapted_modules": n_modules,
        "peft_rank_attn": rank_of(ATTN_KINDS),
        "peft_rank_ffn": rank_of(FFN_KINDS),
        "peft_rank_by_kind": {k: float(ranks[k]) for k in KINDS if k in ranks} or None,
        "peft_params_by_kind": {k: float(v) for k, v in params.items() if v} or None,
        "peft_use_dora": bool(dora) if isinstance(dora, bool) else None,
        "peft_use_rslora": bool(rslora) if isinstance(rslora, bool) else None,
        "peft_num_virtual_tokens": int(nv) if is_prompt and isinstance(nv, int) else None,
    }
