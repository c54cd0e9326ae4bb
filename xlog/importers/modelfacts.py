"""Facts about published models (size, shape, kind) from a table shipped with xlog, so that an
importer can fill the model columns a source leaves empty and a record says more than a name.

The table is ``model_facts.csv`` beside this module: one row per Hugging Face Hub model id, the
figures of the model's published ``config.json`` (``model_n_params`` counted from that config), and
a ``source`` cell saying where each figure comes from. An empty cell is a figure not known for
certain. docs/import.md says how to add a model."""
from __future__ import annotations

import csv
import io
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, MutableMapping

__all__ = ["FACT_FIELDS", "HEAD_OBJECTIVES", "MODEL_KINDS", "TABLE_COLUMNS", "ModelTableError",
           "fill_model_facts", "head_architecture", "model_facts", "model_row", "model_table",
           "resolve_model_id"]

TABLE_FILE = "model_facts.csv"
# Record fields the table fills (a source value always wins over the table).
FACT_FIELDS = ("model_type", "model_kind", "model_n_params", "model_n_layers", "model_hidden_size",
               "model_n_heads", "model_vocab_size", "model_max_positions")
_INT_FIELDS = frozenset(FACT_FIELDS[2:])
TABLE_COLUMNS = ("model_id", "model_type", "model_kind", "architecture", *FACT_FIELDS[2:], "source")
MODEL_KINDS = ("encoder", "decoder", "encoder-decoder")

# Prefixes AutoGOAL puts before a model's name in its algorithm aliases (WORD_EMB_Bert_Base_Uncased).
_ALIAS_PREFIX_RE = re.compile(r"^(?:WORD_EMB|TEXT_GEN|TEXT_CLASS|TOKEN_CLASS|SEQ_CLASS)_")

# The class transformers' Auto classes build for a model type, per training objective (the names in
# transformers' MODEL_FOR_*_MAPPING_NAMES; None: no such class). Every model_type of the table is here.
HEAD_OBJECTIVES = ("sequence-classification", "causal-lm", "seq2seq-lm", "masked-lm", "token-classification")
_HEAD_CLASSES: dict[str, tuple[str | None, ...]] = {
    "albert": ("AlbertForSequenceClassification", None, None, "AlbertForMaskedLM", "AlbertForTokenClassification"),
    "bart": ("BartForSequenceClassification", "BartForCausalLM", "BartForConditionalGeneration",
             "BartForConditionalGeneration", None),
    "bert": ("BertForSequenceClassification", "BertLMHeadModel", None, "BertForMaskedLM", "BertForTokenClassification"),
    "bloom": ("BloomForSequenceClassification", "BloomForCausalLM", None, None, "BloomForTokenClassification"),
    "deberta": ("DebertaForSequenceClassification", None, None, "DebertaForMaskedLM",
                "DebertaForTokenClassification"),
    "deberta-v2": ("DebertaV2ForSequenceClassification", None, None, "DebertaV2ForMaskedLM",
                   "DebertaV2ForTokenClassification"),
    "deepseek_v2": ("DeepseekV2ForSequenceClassification", "DeepseekV2ForCausalLM", None, None, None),
    "distilbert": ("DistilBertForSequenceClassification", None, None, "DistilBertForMaskedLM",
                   "DistilBertForTokenClassification"),
    "electra": ("ElectraForSequenceClassification", "ElectraForCausalLM", None, "ElectraForMaskedLM",
                "ElectraForTokenClassification"),
    "falcon": ("FalconForSequenceClassification", "FalconForCausalLM", None, None, "FalconForTokenClassification"),
    "gemma": ("GemmaForSequenceClassification", "GemmaForCausalLM", None, None, "GemmaForTokenClassification"),
    "gpt2": ("GPT2ForSequenceClassification", "GPT2LMHeadModel", None, None, "GPT2ForTokenClassification"),
    "gpt_neox": ("GPTNeoXForSequenceClassification", "GPTNeoXForCausalLM", None, None,
                 "GPTNeoXForTokenClassification"),
    "llama": ("LlamaForSequenceClassification", "LlamaForCausalLM", None, None, "LlamaForTokenClassification"),
    "mistral": ("MistralForSequenceClassification", "MistralForCausalLM", None, None,
                "MistralForTokenClassification"),
    "mixtral": ("MixtralForSequenceClassification", "MixtralForCausalLM", None, None,
                "MixtralForTokenClassification"),
    "mpnet": ("MPNetForSequenceClassification", None, None, "MPNetForMaskedLM", "MPNetForTokenClassification"),
    "opt": ("OPTForSequenceClassification", "OPTForCausalLM", None, None, None),
    "phi": ("PhiForSequenceClassification", "PhiForCausalLM", None, None, "PhiForTokenClassification"),
    "phi3": ("Phi3ForSequenceClassification", "Phi3ForCausalLM", None, None, "Phi3ForTokenClassification"),
    "qwen2": ("Qwen2ForSequenceClassification", "Qwen2ForCausalLM", None, None, "Qwen2ForTokenClassification"),
    "roberta": ("RobertaForSequenceClassification", "RobertaForCausalLM", None, "RobertaForMaskedLM",
                "RobertaForTokenClassification"),
    "t5": ("T5ForSequenceClassification", None, "T5ForConditionalGeneration", None, "T5ForTokenClassification"),
    "xlm-roberta": ("XLMRobertaForSequenceClassification", "XLMRobertaForCausalLM", None, "XLMRobertaForMaskedLM",
                    "XLMRobertaForTokenClassification"),
    "xlnet": ("XLNetForSequenceClassification", "XLNetLMHeadModel", None, None, "XLNetForTokenClassification"),
}


class ModelTableError(ValueError):
    """The shipped model table is malformed (a packaging or editing mistake)."""


def _norm(s: str) -> str:
    """Lower case, letters and digits only: ``Llama-3.2-1B`` and ``Llama_32_1B`` meet."""
    return re.sub(r"[^0-9a-z]", "", s.lower())


def _base(model_id: str) -> str:
    return model_id.rsplit("/", 1)[-1]


def _parse_row(row: Mapping[str, str], line: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col in TABLE_COLUMNS:
        raw = (row.get(col) or "").strip()
        if col in _INT_FIELDS:
            if not raw:
                out[col] = None
                continue
            if not raw.isdigit() or int(raw) <= 0:
                raise ModelTableError(f"{TABLE_FILE}:{line}: {col} {raw!r} is not a positive whole number")
            out[col] = int(raw)
        else:
            out[col] = raw or None
    if not out["model_id"]:
        raise ModelTableError(f"{TABLE_FILE}:{line}: empty model_id")
    if out["model_kind"] not in MODEL_KINDS:
        raise ModelTableError(f"{TABLE_FILE}:{line}: model_kind {out['model_kind']!r} is not one of {MODEL_KINDS}")
    if not out["source"]:
        raise ModelTableError(f"{TABLE_FILE}:{line}: every row needs a source")
    return out


@lru_cache(maxsize=1)
def model_table() -> dict[str, dict[str, Any]]:
    """The shipped table: Hub model id -> its row (typed; None for an empty cell)."""
    text = resources.files(__package__).joinpath(TABLE_FILE).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != TABLE_COLUMNS:
        raise ModelTableError(f"{TABLE_FILE}: columns {reader.fieldnames} (expected {list(TABLE_COLUMNS)})")
    table: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for row in reader:
        parsed = _parse_row(row, reader.line_num)
        if parsed["model_id"].lower() in seen:   # Hub ids are case-insensitive
            raise ModelTableError(f"{TABLE_FILE}:{reader.line_num}: {parsed['model_id']} listed twice")
        seen.add(parsed["model_id"].lower())
        table[parsed["model_id"]] = parsed
    return table


@lru_cache(maxsize=1)
def _indexes() -> tuple[dict[str, str], dict[str, set[str]], dict[str, set[str]]]:
    """(lower-case id -> id, lower-case base name -> ids, normalised id or base name -> ids)."""
    exact: dict[str, str] = {}
    base: dict[str, set[str]] = {}
    norm: dict[str, set[str]] = {}
    for mid in model_table():
        exact[mid.lower()] = mid
        base.setdefault(_base(mid).lower(), set()).add(mid)
        for key in {_norm(mid), _norm(_base(mid))}:
            norm.setdefault(key, set()).add(mid)
    return exact, base, norm


def resolve_model_id(name: str | None) -> str | None:
    """The table's model id for ``name``, or None when it is unknown or ambiguous.

    Tried in order, the first unique match wins (a match on two ids is ambiguous and ends the
    search with None): the id itself (any case); for ``org/name``, the name part against the
    table's (a Hub id whose organisation was renamed, e.g. ``google-bert/bert-base-uncased``);
    then letters and digits only, lower case, with an AutoGOAL prefix (``WORD_EMB_``,
    ``TEXT_GEN_``) removed, against each id with and without its organisation
    (``TEXT_GEN_Microsoft_Phi_2`` -> ``microsoft/phi-2``, ``WORD_EMB_Bert_Large_Uncased`` ->
    ``bert-large-uncased``)."""
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip()
    exact, base, norm = _indexes()
    if name.lower() in exact:
        return exact[name.lower()]
    if "/" in name:
        hits = base.get(_base(name).lower(), set())
        if len(hits) == 1:
            return next(iter(hits))
        if hits:
            return None
    key = _norm(_ALIAS_PREFIX_RE.sub("", name))
    hits = norm.get(key, set()) if key else set()
    return next(iter(hits)) if len(hits) == 1 else None


def model_row(name: str | None) -> dict[str, Any] | None:
    """The whole table row (with ``architecture`` of the published checkpoint and ``source``)."""
    mid = resolve_model_id(name)
    return dict(model_table()[mid]) if mid else None


def model_facts(name: str | None) -> dict[str, Any]:
    """The record fields the table knows for ``name`` (a Hub id or an AutoGOAL alias); empty
    cells are left out, and an unknown or ambiguous name gives ``{}``."""
    row = model_row(name)
    if row is None:
        return {}
    return {f: row[f] for f in FACT_FIELDS if row.get(f) is not None}


def head_architecture(model_type: str | None, objective: str | None) -> str | None:
    """The class transformers' Auto class for ``objective`` (one of HEAD_OBJECTIVES) builds for
    ``model_type``; None when either is unknown or transformers has no such class."""
    classes = _HEAD_CLASSES.get(model_type or "")
    if classes is None or objective not in HEAD_OBJECTIVES:
        return None
    return classes[HEAD_OBJECTIVES.index(objective)]


def fill_model_facts(rec: MutableMapping[str, Any], name: str | None = None) -> list[str]:
    """Fill the model fields of ``rec`` that are empty from the table entry of ``name`` (default:
    ``rec["model_name"]``); never overwrites a value. Returns the fields filled."""
    facts = model_facts(rec.get("model_name") if name is None else name)
    filled = [f for f, v in facts.items() if rec.get(f) is None]
    for f in filled:
        rec[f] = facts[f]
    return filled
