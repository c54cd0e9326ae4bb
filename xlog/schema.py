"""The record schema: loaded from the canonical JSON Schema in ``schema/``; Arrow schema and
validator are derived from it so that there is one source of truth."""
from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Mapping

import pyarrow as pa

CURRENT_VERSION = 1
METRIC_STRUCT = pa.struct([("name", pa.string()), ("value", pa.float64())])
STATUSES = ("completed", "failed", "oom", "timeout", "interrupted", "pruned")
# Statuses that are failures of a run's configuration (``pruned`` and ``interrupted`` are not).
FAILURE_STATUSES = ("failed", "oom", "timeout")


@dataclass(frozen=True)
class Field:
    name: str
    json_type: str  # string | integer | number | boolean | array | object
    required: bool
    description: str
    unit: str | None
    group: str
    fmt: str | None
    enum: tuple | None
    minimum: float | None
    maximum: float | None
    # Size limits (JSON Schema maxLength; maxItems of arrays and maxProperties of objects; the
    # maxLength of array items and of property names) and, for objects, bounds of the values
    # whose name matches a pattern (patternProperties), as (pattern, minimum, maximum, why).
    max_length: int | None = None
    max_items: int | None = None
    item_max_length: int | None = None
    key_max_length: int | None = None
    key_bounds: tuple[tuple[str, float | None, float | None, str], ...] = ()
    # Arrays of objects (the learning curve): the items' properties, in order.
    item_fields: tuple["ItemField", ...] = ()


@dataclass(frozen=True)
class ItemField:
    """One property of the objects in an array field (e.g. a learning-curve point)."""

    name: str
    json_type: str  # string | integer | number
    required: bool
    minimum: float | None = None
    enum: tuple | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class Rule:
    """A record-level rule (JSON Schema ``if``/``then`` in ``allOf``): when every property of
    ``when`` is present and matches, the bounds of ``then`` apply. Only the keywords the schema
    uses are supported (``pattern`` in ``if``; ``minimum``/``maximum`` in ``then``)."""
    description: str
    when: tuple[tuple[str, str], ...]  # (field, pattern)
    then: tuple[tuple[str, float | None, float | None], ...]  # (field, minimum, maximum)


@lru_cache(maxsize=None)
def load_json_schema(version: int = CURRENT_VERSION) -> dict:
    """Return the JSON Schema document of a record schema version."""
    path = resources.files("xlog.schema_files").joinpath(f"record_v{version}.json")
    if not path.is_file():
        raise ValueError(f"unknown record schema version {version}")
    return json.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def fields(version: int = CURRENT_VERSION) -> tuple[Field, ...]:
    doc = load_json_schema(version)
    required = set(doc.get("required", []))
    out = []
    for name, p in doc["properties"].items():
        types = p["type"] if isinstance(p["type"], list) else [p["type"]]
        json_type = next(t for t in types if t != "null")
        enum = tuple(e for e in p["enum"] if e is not None) if "enum" in p else None
        items = p.get("items") or {}
        key_bounds = tuple((pat, sub.get("minimum"), sub.get("maximum"), sub.get("description", ""))
                           for pat, sub in (p.get("patternProperties") or {}).items())
        item_fields = tuple(_item_field(n, sub, n in set(items.get("required", [])))
                            for n, sub in (items.get("properties") or {}).items()) if items.get("type") == "object" else ()
        out.append(Field(name, json_type, name in required, p.get("description", ""),
                         p.get("unit"), p.get("group", ""), p.get("format"), enum,
                         p.get("minimum"), p.get("maximum"),
                         max_length=p.get("maxLength"), max_items=p.get("maxItems", p.get("maxProperties")),
                         item_max_length=items.get("maxLength"),
                         key_max_length=(p.get("propertyNames") or {}).get("maxLength"),
                         key_bounds=key_bounds, item_fields=item_fields))
    return tuple(out)


def _item_field(name: str, p: Mapping[str, Any], required: bool) -> ItemField:
    types = p["type"] if isinstance(p["type"], list) else [p["type"]]
    json_type = next(t for t in types if t != "null")
    if json_type not in ("string", "integer", "number"):
        raise ValueError(f"array item property {name!r}: unsupported type {json_type!r}")
    return ItemField(name, json_type, required, p.get("minimum"),
                     tuple(p["enum"]) if "enum" in p else None, p.get("maxLength"))


_ITEM_ARROW = {"string": pa.string(), "integer": pa.int64(), "number": pa.float64()}


@lru_cache(maxsize=None)
def rules(version: int = CURRENT_VERSION) -> tuple[Rule, ...]:
    """The record-level rules of a schema version (its ``allOf`` of ``if``/``then``)."""
    out = []
    for r in load_json_schema(version).get("allOf", []):
        cond, then = r.get("if", {}), r.get("then", {})
        unsupported = (set(cond) - {"required", "properties"}) | (set(then) - {"properties"})
        if unsupported:
            raise ValueError(f"record schema v{version}: unsupported keyword(s) {sorted(unsupported)} in allOf")
        when = tuple((name, sub["pattern"]) for name, sub in cond.get("properties", {}).items())
        bounds = tuple((name, sub.get("minimum"), sub.get("maximum"))
                       for name, sub in then.get("properties", {}).items())
        out.append(Rule(r.get("description", ""), when, bounds))
    return tuple(out)


@lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _bounds_problem(name: str, v: Any, lo: float | None, hi: float | None, why: str = "") -> str | None:
    if lo is not None and v < lo:
        return f"{name}: {v!r} is below the minimum {_num(lo)}{why}"
    if hi is not None and v > hi:
        return f"{name}: {v!r} is above the maximum {_num(hi)}{why}"
    return None


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


def _show(v: Any, limit: int = 60) -> str:
    """``repr`` of a value, shortened: a message never carries a 10 MB string."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 5] + "...'" + f" ({len(v) if hasattr(v, '__len__') else len(r)} chars)"


def _num(v: float) -> str:
    """A bound as people write it: 1, 0.5, 1000, 31557600, 1e13."""
    f = float(v)
    if f >= 1e4 and math.log10(f).is_integer():
        return f"1e{int(math.log10(f))}"
    if f.is_integer() and abs(f) < 1e15:
        return str(int(f))
    return f"{f:.6g}"


def field_names(version: int = CURRENT_VERSION) -> list[str]:
    return [f.name for f in fields(version)]


def _arrow_type(f: Field) -> pa.DataType:
    if f.json_type == "string":
        return pa.timestamp("us", tz="UTC") if f.fmt == "date-time" else pa.string()
    if f.json_type == "integer":
        return pa.int64()
    if f.json_type == "number":
        return pa.float64()
    if f.json_type == "boolean":
        return pa.bool_()
    if f.json_type == "array":
        if f.item_fields:  # a list of structs (the learning curve): nested, as DuckDB and datasets read it
            return pa.list_(pa.struct([(i.name, _ITEM_ARROW[i.json_type]) for i in f.item_fields]))
        return pa.list_(pa.string())
    if f.json_type == "object":
        # A list of (name, value) structs rather than an Arrow map: every Parquet reader
        # (Hugging Face datasets and the Hub viewer included) understands it.
        return pa.list_(METRIC_STRUCT)
    raise ValueError(f"no Arrow type for JSON type {f.json_type!r} of field {f.name}")


@lru_cache(maxsize=None)
def arrow_schema(version: int = CURRENT_VERSION) -> pa.Schema:
    """The Arrow schema of a record version, with description and unit as field metadata."""
    return pa.schema(
        [pa.field(f.name, _arrow_type(f), nullable=not f.required,
                  metadata={"description": f.description, "unit": f.unit or ""})
         for f in fields(version)],
        metadata={"xlog.schema_version": str(version)},
    )


class ValidationError(ValueError):
    """A record or file does not match the schema; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], where: str = "record"):
        self.problems = problems
        super().__init__(f"{where} is not a valid xlog record: " + "; ".join(problems))


_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _check_value(f: Field, v: Any) -> str | None:
    t = f.json_type
    if t == "string":
        if f.fmt == "date-time":
            if isinstance(v, datetime):
                if v.tzinfo is None:
                    return f"{f.name}: datetime must be timezone-aware (UTC)"
                return None
            if isinstance(v, str):
                try:
                    datetime.fromisoformat(v.replace("Z", "+00:00"))
                    return None
                except ValueError:
                    return f"{f.name}: {v!r} is not an ISO-8601 date-time"
            return f"{f.name}: expected a date-time, got {type(v).__name__}"
        if not isinstance(v, str):
            return f"{f.name}: expected a string, got {type(v).__name__}"
        if f.fmt == "uuid" and not _UUID_RE.match(v):
            return f"{f.name}: {_show(v)} is not a UUID"
    elif t == "integer":
        if isinstance(v, bool) or not isinstance(v, int):
            if not (hasattr(v, "dtype") and str(getattr(v, "dtype")).startswith(("int", "uint"))):
                return f"{f.name}: expected an integer, got {type(v).__name__} {v!r}"
    elif t == "number":
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{f.name}: expected a number, got {type(v).__name__} {v!r}"
        if not math.isfinite(float(v)):
            return f"{f.name}: {v!r} is not a finite number (store null for unknown values)"
    elif t == "boolean":
        if not isinstance(v, bool):
            return f"{f.name}: expected true/false, got {type(v).__name__} {v!r}"
    elif t == "array" and f.item_fields:
        if not isinstance(v, (list, tuple)):
            return f"{f.name}: expected a list of objects"
        if f.max_items is not None and len(v) > f.max_items:
            return f"{f.name}: {len(v)} items, more than the maximum {f.max_items}"
        for i, item in enumerate(v):
            p = _check_item(f, i, item)
            if p:
                return p
        return None
    elif t == "array":
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            return f"{f.name}: expected a list of strings"
    elif t == "object":
        items = v.items() if isinstance(v, Mapping) else _pairs(v) if isinstance(v, list) else None
        if items is None:
            return f"{f.name}: expected a mapping of metric name to number"
        for k, x in items:
            if not isinstance(k, str):
                return f"{f.name}: key {k!r} is not a string"
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x)):
                return f"{f.name}[{k}]: {x!r} is not a finite number"
    if f.enum is not None and v not in f.enum:
        return f"{f.name}: {_show(v)} is not one of {', '.join(map(str, f.enum))}"
    if t in ("integer", "number"):
        return _bounds_problem(f.name, v, f.minimum, f.maximum)
    if t == "string" and f.max_length is not None and isinstance(v, str) and len(v) > f.max_length:
        return f"{f.name}: {len(v)} characters, longer than the maximum {f.max_length}"
    if t == "array" and not f.item_fields:
        if f.max_items is not None and len(v) > f.max_items:
            return f"{f.name}: {len(v)} items, more than the maximum {f.max_items}"
        if f.item_max_length is not None:
            long = next((x for x in v if len(x) > f.item_max_length), None)
            if long is not None:
                return f"{f.name}: an item of {len(long)} characters, longer than the maximum {f.item_max_length}"
    if t == "object":
        pairs = list(items)
        if f.max_items is not None and len(pairs) > f.max_items:
            return f"{f.name}: {len(pairs)} entries, more than the maximum {f.max_items}"
        for k, x in pairs:
            if f.key_max_length is not None and len(k) > f.key_max_length:
                return f"{f.name}: a name of {len(k)} characters, longer than the maximum {f.key_max_length}"
            if x is None:
                continue
            for pattern, lo, hi, why in f.key_bounds:
                if _regex(pattern).search(k):
                    note = f" ({_lower_first(why).rstrip('.')})" if why else ""
                    p = _bounds_problem(f"{f.name}[{k}]", x, lo, hi, note)
                    if p:
                        return p
    return None


def _check_item(f: Field, i: int, item: Any) -> str | None:
    """The first problem of one object of an array field (e.g. a curve point), or None."""
    where = f"{f.name}[{i}]"
    if not isinstance(item, Mapping):
        return f"{where}: expected an object, got {type(item).__name__}"
    known = {p.name for p in f.item_fields}
    extra = next((k for k in item if k not in known), None)
    if extra is not None:
        return f"{where}: {extra!r} is not a property of its items ({', '.join(sorted(known))})"
    for p in f.item_fields:
        v = item.get(p.name)
        if v is None:
            if p.required:
                return f"{where}.{p.name}: required property is missing"
            continue
        if p.json_type == "string":
            if not isinstance(v, str):
                return f"{where}.{p.name}: expected a string, got {type(v).__name__}"
            if p.max_length is not None and len(v) > p.max_length:
                return f"{where}.{p.name}: {len(v)} characters, longer than the maximum {p.max_length}"
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or (
                p.json_type == "integer" and not isinstance(v, int)):
            return f"{where}.{p.name}: expected {'an integer' if p.json_type == 'integer' else 'a number'}, got {v!r}"
        elif not math.isfinite(float(v)):
            return f"{where}.{p.name}: {v!r} is not a finite number (store null for unknown values)"
        if p.enum is not None and v not in p.enum:
            return f"{where}.{p.name}: {_show(v)} is not one of {', '.join(map(str, p.enum))}"
        if p.minimum is not None and isinstance(v, (int, float)) and v < p.minimum:
            return f"{where}.{p.name}: {v!r} is below the minimum {_num(p.minimum)}"
    return None


def validate_record(rec: Mapping[str, Any], version: int | None = None) -> list[str]:
    """Return the list of problems of one record (empty when valid)."""
    problems: list[str] = []
    version = version or rec.get("schema_version") or CURRENT_VERSION
    try:
        fs = fields(int(version))
    except (ValueError, TypeError):
        return [f"schema_version: unknown version {version!r}"]
    known = {f.name for f in fs}
    for k in rec:
        if k not in known:
            problems.append(f"{k}: not a field of schema version {version}")
    for f in fs:
        v = rec.get(f.name)
        if v is None:
            if f.required:
                problems.append(f"{f.name}: required field is missing")
            continue
        p = _check_value(f, v)
        if p:
            problems.append(p)
    for rule in rules(int(version)):
        if all(isinstance(rec.get(name), str) and _regex(pat).search(rec[name]) for name, pat in rule.when):
            why = " (" + ", ".join(f"{name} {_show(rec[name])}" for name, _ in rule.when) + ": " \
                + _lower_first(rule.description).rstrip(".") + ")"
            for name, lo, hi in rule.then:
                v = rec.get(name)
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    p = _bounds_problem(name, v, lo, hi, why)
                    if p:
                        problems.append(p)
    return problems


def check_record(rec: Mapping[str, Any]) -> None:
    problems = validate_record(rec)
    if problems:
        raise ValidationError(problems, where=f"record {rec.get('record_id', '?')}")


def validate_table(table: pa.Table) -> list[str]:
    """Validate an Arrow table read from Parquet: column types and every row's values."""
    problems: list[str] = []
    if "schema_version" not in table.column_names:
        return ["schema_version: column is missing"]
    versions = set(table.column("schema_version").to_pylist())
    for version in versions:
        try:
            expected = arrow_schema(int(version))
        except (ValueError, TypeError):
            problems.append(f"schema_version: unknown version {version!r}")
            continue
        for name in table.column_names:
            if name not in expected.names:
                problems.append(f"{name}: not a field of schema version {version}")
                continue
            want = expected.field(name).type
            got = table.schema.field(name).type
            if not _compatible(got, want):
                problems.append(f"{name}: column type {got} does not match the schema type {want}")
    if problems:
        return problems
    for i, row in enumerate(table_to_records(table)):
        for p in validate_record(row):
            problems.append(f"{row_label(i, row.get('record_id'))}: {p}")
    return problems


def row_label(i: int, record_id: Any) -> str:
    """How problems name a row of a file: its index and record id (first 8 characters)."""
    return f"row {i} (record {str(record_id)[:8]})" if isinstance(record_id, str) and record_id else f"row {i}"


def compatible_type(got: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column of Arrow type ``got`` can hold the schema's type ``want`` (older writers)."""
    return _compatible(got, want)


def _compatible(got: pa.DataType, want: pa.DataType) -> bool:
    if got.equals(want) or pa.types.is_null(got):
        return True
    if pa.types.is_integer(want) and pa.types.is_integer(got):
        return True
    if pa.types.is_floating(want) and (pa.types.is_floating(got) or pa.types.is_integer(got)):
        return True
    if pa.types.is_timestamp(want) and pa.types.is_timestamp(got):
        return True
    if pa.types.is_string(want) and (pa.types.is_large_string(got) or pa.types.is_string(got)):
        return True
    if pa.types.is_list(want) and (pa.types.is_list(got) or pa.types.is_large_list(got)):
        return True
    if pa.types.is_list(want) and pa.types.is_struct(want.value_type) and pa.types.is_map(got):
        return True  # pre-release files stored outcome_metrics as a map: same pairs
    return False


def table_to_records(table: pa.Table) -> list[dict]:
    """Rows of an Arrow table as record dicts (maps become dicts)."""
    rows = table.to_pylist()
    objects = [f.name for f in fields(CURRENT_VERSION) if f.json_type == "object" and f.name in table.column_names]
    for row in rows:
        for k in objects:
            if row[k] is not None:
                row[k] = dict(_pairs(row[k]))
    return rows


def _pairs(v: list) -> list[tuple]:
    """(name, value) pairs from a list of {"name", "value"} structs or of 2-tuples."""
    return [(x["name"], x["value"]) if isinstance(x, Mapping) else tuple(x) for x in v]


def records_to_table(records: Iterable[Mapping[str, Any]], version: int = CURRENT_VERSION) -> pa.Table:
    """Build an Arrow table in the schema's column order; missing fields become null."""
    schema = arrow_schema(version)
    cols: dict[str, list] = {name: [] for name in schema.names}
    for rec in records:
        for name in schema.names:
            v = rec.get(name)
            if isinstance(v, str) and pa.types.is_timestamp(schema.field(name).type):
                v = datetime.fromisoformat(v.replace("Z", "+00:00"))
            if isinstance(v, Mapping):
                v = [{"name": str(k), "value": x} for k, x in v.items()]
            cols[name].append(v)
    return pa.table({n: pa.array(cols[n], type=schema.field(n).type) for n in schema.names}, schema=schema)


def finite_or_none(v: Any) -> float | None:
    """``v`` as a float if it is a finite number (or numeric string), else None: records hold
    null, never NaN or infinity, for values that are unknown."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def new_record_id() -> str:
    return str(uuid.uuid4())


def bounds_text(f: Field) -> str:
    """A field's bounds and size limits for people: ``[0, 1]``, ``>= 0``, ``<= 256 chars``."""
    parts = []
    if f.minimum is not None and f.maximum is not None:
        parts.append(f"[{_num(f.minimum)}, {_num(f.maximum)}]")
    elif f.minimum is not None:
        parts.append(f">= {_num(f.minimum)}")
    elif f.maximum is not None:
        parts.append(f"<= {_num(f.maximum)}")
    if f.max_length is not None and f.fmt != "uuid":
        parts.append(f"<= {f.max_length} chars")
    if f.json_type == "array" and f.item_fields:
        parts.append(f"<= {f.max_items} points" if f.max_items is not None else "")
    elif f.json_type == "array" and f.max_items is not None:
        parts.append(f"<= {f.max_items} items of <= {f.item_max_length} chars")
    if f.json_type == "object":
        if f.max_items is not None:
            parts.append(f"<= {f.max_items} entries, names <= {f.key_max_length} chars")
        for pattern, lo, hi, _ in f.key_bounds:
            parts.append(f"values whose name matches `{pattern}` in [{_num(lo)}, {_num(hi)}]")
    return "; ".join(parts)


def markdown_table(version: int = CURRENT_VERSION) -> str:
    """The field reference as a Markdown table, generated from the schema (used in the README)."""
    lines = ["| field | type | unit | bounds | description |", "|---|---|---|---|---|"]
    conditional = {name: r for r in rules(version) for name, _, _ in r.then}
    group = None
    for f in fields(version):
        if f.group != group:
            group = f.group
            lines.append(f"| **{group}** | | | | |")
        t = f.json_type + (" (" + f.fmt + ")" if f.fmt else "") + (", required" if f.required else "")
        desc = f.description + (" One of: " + ", ".join(f"`{e}`" for e in f.enum) + "." if f.enum else "")
        if f.name in conditional:
            desc += " " + conditional[f.name].description
        bounds = bounds_text(f).replace("|", "\\|")  # a pipe inside a table cell is escaped
        lines.append(f"| `{f.name}` | {t} | {f.unit or ''} | {bounds} | {desc.replace('|', '/')} |")
    return "\n".join(lines)


# ---- metric conventions ---------------------------------------------------------------------
_LOWER_IS_BETTER_RE = re.compile(r"(^|[_./-])(loss|perplexity|ppl|nll|error|err|wer|cer|mse|mae|rmse)([_./-]|$)",
                                 re.IGNORECASE)


def lower_is_better(metric: str | None) -> bool:
    """Whether a metric is named as something to minimise (a loss, perplexity, error rate, ...):
    ``eval_loss``, ``perplexity``, ``eval_wer``. Other names (F1, accuracy, BLEU, ...) are maximised."""
    return bool(metric) and bool(_LOWER_IS_BETTER_RE.search(str(metric)))


@lru_cache(maxsize=None)
def score_bounds(version: int = CURRENT_VERSION) -> tuple[tuple[re.Pattern, float, float], ...]:
    """(name pattern, minimum, maximum) of the metrics the schema bounds: scores (F1, accuracy,
    exact match, precision, recall) are fractions in [0, 1]."""
    field = next((f for f in fields(version) if f.name == "outcome_metrics"), None)
    return tuple((_regex(p), -math.inf if lo is None else lo, math.inf if hi is None else hi)
                 for p, lo, hi, _ in (field.key_bounds if field is not None else ()))


def is_score(metric: str) -> bool:
    """Whether the schema bounds a metric of this name to [0, 1] (F1, accuracy, exact match, ...)."""
    return any(p.search(metric) for p, lo, hi in score_bounds() if (lo, hi) == (0, 1))


def rescale_scores(metrics: Mapping[str, float], percent: Iterable[str] | None = None
                   ) -> tuple[dict[str, float], list[tuple[str, str]]]:
    """Metrics with scores made fractions, and (metric, message) notes of what changed.

    Scores are fractions in the record. A metric listed in ``percent`` (known to be on a 0-100 scale,
    e.g. decided over all records of one source task) is divided by 100; otherwise an obvious
    percentage (a score in (1, 100], e.g. the ``evaluate`` SQuAD metric's F1 = 88.5) is. A value
    within rounding error of a bound is clipped; a value still out of bounds is left out, so that
    the record stays valid and the run is kept. Never assumes a value in [0, 1] is a fraction when
    the caller knows its scale is a percentage."""
    known = set(percent or ())
    out = dict(metrics)
    notes: list[tuple[str, str]] = []
    for name, v in metrics.items():
        if v is None:
            continue
        for pattern, lo, hi in score_bounds():
            if not pattern.search(name):
                continue
            if name in known and (lo, hi) == (0, 1) and 0 <= v <= 100:
                out[name] = v / 100
                break
            if lo <= v <= hi:
                break
            if lo - 1e-9 <= v <= hi + 1e-9:
                out[name] = min(max(v, lo), hi)
            elif (lo, hi) == (0, 1) and 1 < v <= 100:
                out[name] = v / 100
                notes.append((name, f"metric {name} = {v:g} looks like a percentage; recorded as the fraction "
                                    f"{v / 100:g} (scores are fractions in [0, 1])"))
            else:
                del out[name]
                notes.append((name, f"metric {name} = {v:g} is outside [{lo:g}, {hi:g}] for a score and is left "
                                    "out of the record"))
            break
    return out, notes
