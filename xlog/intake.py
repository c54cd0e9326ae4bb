"""What a reader accepts from a file it did not write: the checks every pulled (or reviewed) file
passes, streaming, in bounded memory.

``check_file(path, remote_path)`` looks at a Parquet file of records in this order, and stops at the
first file-level problem:

1. its size on disk (``Limits.max_bytes``), before reading anything;
2. the hash its name promises (``data/v1/<YYYY-MM>/<sha256[:32]>.parquet``), streaming;
3. its Parquet footer: the number of rows (``Limits.max_rows``) and the uncompressed size
   (``Limits.max_uncompressed_bytes``: a small compressed file cannot hide gigabytes), and the
   column types (a wrong type makes every row unreadable);
4. its rows, ``Limits.batch_rows`` at a time (``ParquetFile.iter_batches``): the schema (types,
   required fields, enums, formats), the bounds and size limits of ``schema/record_v1.json``, the
   reader's string limit (``Limits.max_string_chars``, also on columns this client does not know),
   the privacy scan (``xlog.privacy``: paths, e-mail addresses, URLs, tokens), duplicate ids in the
   file, and conflicts with the records already accepted (``seen``).

Rows are checked per Arrow batch with Arrow compute kernels; only the rows those kernels flag are
turned into Python dicts and given to ``xlog.schema.validate_record``, which has the last word and
writes the message. A bad row is refused on its own (``FileCheck.quarantined``): the other rows of
the file stand.

Record identity is the record id *and* the content (``content_hash``). A second copy of an id with
the same content is harmless (it is one record); with other content it is a conflict: the copy
already accepted stands and the new one is refused. Inside one file, an id that comes with two
different contents has no first copy: every copy of it is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import schema as S
from .privacy import leak_message, scrub_value

__all__ = ["Limits", "FileCheck", "PROVENANCE_FIELDS", "batch_rows", "content_hash", "content_hashes", "check_file",
           "copy_rows"]

# Fields that say who shared a record or how, not what happened in the run: a push may set the
# contributor on its copies, so two copies that differ only there are the same record.
PROVENANCE_FIELDS = frozenset({"contributor"})
_ROWS_PER_PUSHED_FILE = 100_000  # xlog.remotes.layout.ROWS_PER_FILE: what an honest push writes


@dataclass(frozen=True)
class Limits:
    """Per-file limits, enforced while streaming (so memory stays bounded whatever the file)."""
    max_rows: int = _ROWS_PER_PUSHED_FILE  # an honest push writes at most this many rows per file
    max_bytes: int = 64 * 2**20  # on disk (compressed)
    max_uncompressed_bytes: int = 1024 * 2**20  # the footer's uncompressed size of all column chunks
    max_string_chars: int = 65_536  # any single string cell (the schema's longest field, peft_config_json)
    batch_rows: int = 8_192  # rows validated per batch at most ...
    batch_bytes: int = 8 * 2**20  # ... and fewer when rows are large: about this many bytes decoded per batch


@dataclass
class FileCheck:
    """The verdict on one file. ``accepted`` holds one small dict per row that stands: ``record_id``,
    ``content_hash`` and ``row`` (its index in the file), never the row's data (memory stays bounded:
    ``copy_rows`` copies the rows themselves)."""
    path: str  # remote-relative path
    n_rows: int = 0
    accepted: list[dict] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (record_id or '?', reason)
    problems: list[str] = field(default_factory=list)  # file-level: nothing of the file is accepted
    refused_rows: list[int] = field(default_factory=list)  # row indices of ``quarantined``
    known: int = 0  # accepted rows whose id and content were already in ``seen`` (the same record)
    duplicates: int = 0  # accepted rows repeating an earlier row of this file exactly

    @property
    def ok(self) -> bool:
        """No file-level problem and no refused row."""
        return not self.problems and not self.quarantined

    @property
    def new_records(self) -> int:
        """Distinct records this file adds to what was ``seen``."""
        return len(self.accepted) - self.known - self.duplicates

    def summary(self, n: int = 5) -> str:
        """One line: the file-level problems, or the refused rows (the first ``n`` reasons)."""
        if self.problems:
            return "; ".join(self.problems)
        reasons = [r for _, r in self.quarantined]
        more = f" (+{len(reasons) - n} more)" if len(reasons) > n else ""
        return f"{len(reasons)} of {self.n_rows} row(s) refused: " + "; ".join(reasons[:n]) + more


# ---- content hash ------------------------------------------------------------------------------------
# The canonical form, computed column by column with Arrow kernels: for each non-null field, in name
# order, "name:" + the value's canonical text, joined by "\x1e"; the SHA-256 of that. Canonical
# text: a string as "s<length>:<value>" (a value over 64 characters as "h" + its SHA-256, so a
# string repeated over many rows is hashed once); a "number" field (or any float column) as the
# IEEE-754 bits of its float64 value; an integer as "i<value>"; a timestamp as "t<microseconds since
# the epoch, UTC>"; a boolean as "btrue"/"bfalse"; a list or a metrics list as "j" + the SHA-256 of
# its canonical JSON (metrics as [name, value] pairs sorted by name). The same record gives the same
# text whoever wrote the file: column order, a missing all-null column, integer-typed float
# columns, timestamp units, and metrics as a map or as (name, value) structs do not change it.
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LONG = 64


def _types() -> dict[str, str]:
    return {f.name: f.json_type for f in S.fields()}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _float(x: Any) -> Any:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x


def _metric_pairs(v: Any) -> list:
    if isinstance(v, Mapping):
        return sorted([str(k), _float(x)] for k, x in v.items())
    return sorted([str(x["name"]), _float(x.get("value"))] if isinstance(x, Mapping)
                  else [str(x[0]), _float(x[1])] for x in v)


def _json_text(v: Any, metrics: bool) -> str | None:
    if v is None:
        return None
    return "j" + _sha(json.dumps(_metric_pairs(v) if metrics else v, separators=(",", ":"), ensure_ascii=False,
                                 default=str))


def _string_text(values: pa.Array) -> pa.Array:
    """Strings -> "s<length>:<value>", or "h<sha256>" past ``_LONG`` characters (each distinct value
    of a dictionary once)."""
    if pa.types.is_dictionary(values.type):
        return _string_text(values.dictionary.cast(pa.string())).take(values.indices)
    values = values.cast(pa.string())
    lengths = pc.utf8_length(values)
    long = pc.fill_null(pc.greater(lengths, _LONG), False)
    text = pc.binary_join_element_wise("s", pc.cast(lengths, pa.string()), ":", values, "")
    if pc.any(long).as_py():
        idx = _rows_of(long)
        hashed = pa.array(["h" + _sha(v) for v in values.take(pa.array(idx, pa.int64())).to_pylist()], pa.string())
        mask = long
        text = pc.replace_with_mask(text, mask, hashed)
    return text


def _float_text(values: pa.Array) -> pa.Array:
    """float64 values as the decimal text of their IEEE-754 bits: exact, stable across versions."""
    values = pc.cast(values, pa.float64())
    bits = values.view(pa.int64()) if values.offset == 0 else pc.cast(values, pa.float64()).view(pa.int64())
    return pc.binary_join_element_wise("f", pc.cast(bits, pa.string()), "")


def _column_text(name: str, col: pa.Array, types: Mapping[str, str]) -> pa.Array:
    """One column as canonical text (null where the value is null)."""
    t, typ = types.get(name), col.type
    if pa.types.is_null(typ):
        return pa.nulls(len(col), pa.string())
    if _is_string(typ):
        return _string_text(col)
    if pa.types.is_timestamp(typ):
        micros = pc.cast(pc.cast(col, pa.timestamp("us", tz=typ.tz), safe=False), pa.int64())
        return pc.binary_join_element_wise("t", pc.cast(micros, pa.string()), "")
    if pa.types.is_boolean(typ):
        return pc.binary_join_element_wise("b", pc.cast(col, pa.string()), "")
    if pa.types.is_floating(typ) or (pa.types.is_integer(typ) and t == "number"):
        return _float_text(col)
    if pa.types.is_integer(typ):
        return pc.binary_join_element_wise("i", pc.cast(pc.cast(col, pa.int64()), pa.string()), "")
    if _metric_parts(col) is not None:
        return _metrics_text(col)
    return pa.array([_json_text(v, t == "object") for v in col.to_pylist()], pa.string())


def _metrics_text(col: pa.Array) -> pa.Array:
    """A metrics column (a list of (name, value) structs, or a map) as "m" + its entries sorted by
    name, each "<name text>=<value text>", joined by "\x1f"; an empty list is "m"."""
    col = _as_pairs(col)
    names, values, parents = _metric_parts(col)  # type: ignore[misc]
    if pa.types.is_dictionary(names.type):
        names = names.dictionary.cast(pa.string()).take(names.indices)
    names = names.cast(pa.string())
    value_text = pc.fill_null(_float_text(values) if pa.types.is_floating(values.type) or pa.types.is_integer(values.type)
                              else pa.array([None if v is None else repr(v) for v in values.to_pylist()], pa.string()),
                              "n")
    items = pc.binary_join_element_wise(pc.fill_null(_string_text(names), "n"), "=", value_text, "")
    order = pc.sort_indices(pa.table({"p": parents, "n": names}), sort_keys=[("p", "ascending"), ("n", "ascending")])
    lengths = pc.fill_null(pc.list_value_length(col), 0).cast(pa.int32())
    offsets = pa.concat_arrays([pa.array([0], pa.int32()), pc.cumulative_sum(lengths).cast(pa.int32())])
    lists = pa.ListArray.from_arrays(offsets, items.take(order), mask=pc.is_null(col))
    return pc.binary_join_element_wise("m", pc.binary_join(lists, "\x1f"), "")


def content_hashes(table: pa.Table | pa.RecordBatch) -> list[str]:
    """``content_hash`` of every row of an Arrow table or batch (vectorised: column by column)."""
    if table.num_rows == 0:
        return []
    types = _types()
    parts = []
    for name in sorted(n for n in table.column_names if n not in PROVENANCE_FIELDS):
        text = _column_text(name, _array(table.column(name)), types)
        parts.append(pc.binary_join_element_wise(name + ":", text, ""))  # null stays null
    if not parts:
        return [_sha("")] * table.num_rows
    rows = pc.binary_join_element_wise(*parts, "\x1e", null_handling="skip")
    return [hashlib.sha256(r.encode("utf-8", "surrogatepass")).hexdigest()[:32] for r in rows.to_pylist()]


def content_hash(row: Mapping[str, Any]) -> str:
    """A stable hash of a record's content: identical records give the same hash whoever wrote them
    (see the canonical form above); ``PROVENANCE_FIELDS`` are left out. First 32 hex digits of a SHA-256."""
    types = _types()
    known = {f.name for f in S.fields()}
    rec = {k: v for k, v in row.items() if k in known}
    table = S.records_to_table([rec])
    table = table.select([n for n in table.column_names if n in row])
    for k, v in row.items():  # a field of a newer version: Arrow's own type for it
        if k not in known and v is not None:
            table = table.append_column(k, pa.array([_float(v) if types.get(k) == "number" else v]))
    return content_hashes(table)[0]


# ---- vectorised checks ---------------------------------------------------------------------------------
def _rows_of(mask: pa.Array | pa.ChunkedArray) -> list[int]:
    """Row indices where a boolean mask is true (nulls count as false)."""
    mask = pc.fill_null(mask, False)
    return pc.indices_nonzero(mask).to_pylist() if hasattr(pc, "indices_nonzero") else \
        [i for i, x in enumerate(mask.to_pylist()) if x]


def _flag(out: set[int], mask: Any) -> None:
    out.update(_rows_of(mask))


def _parents(col: pa.Array, mask_on_values: Any) -> list[int]:
    """Rows (of a list column) that hold a flagged value."""
    parents = pc.list_parent_indices(col)
    return sorted(set(pc.filter(parents, pc.fill_null(mask_on_values, False)).to_pylist()))


def _array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One array for a column (a batch's column has one chunk: no copy)."""
    if isinstance(col, pa.ChunkedArray):
        return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    return col


def _is_string(t: pa.DataType) -> bool:
    """A string type, or a dictionary of strings (how ``check_file`` reads every string column)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _per_row(values: pa.Array, fn) -> pa.Array:
    """``fn`` (an Arrow kernel) of every value; on a dictionary array it runs once per distinct value
    and is spread to the rows by the indices (no string is materialised per row)."""
    if pa.types.is_dictionary(values.type):
        return fn(values.dictionary).take(values.indices)
    return fn(values)


def _length(values: pa.Array) -> pa.Array:
    return _per_row(values, pc.utf8_length)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def _item_problems(items: pa.Array, item_fields: tuple) -> pa.Array:
    """Per item of a list of structs (a learning curve's points): whether it breaks its item schema
    (a required property missing, a string over its length or outside its enum, a number below its
    minimum or not finite), as ``schema._check_item`` judges one point."""
    flagged = pa.array([False] * len(items), pa.bool_())
    names = {items.type.field(i).name for i in range(items.type.num_fields)}
    for p in item_fields:
        if p.name not in names:
            if p.required:
                flagged = pc.or_(flagged, pc.is_valid(items))
            continue
        v = pc.struct_field(items, p.name)
        if pa.types.is_dictionary(v.type):
            v = v.dictionary_decode()
        hit = pc.is_null(v) if p.required else pa.array([False] * len(items), pa.bool_())
        if p.json_type == "string" and _is_string(v.type):
            if p.max_length is not None:
                hit = pc.or_(hit, pc.fill_null(pc.greater(pc.utf8_length(v), p.max_length), False))
            if p.enum is not None:
                hit = pc.or_(hit, pc.fill_null(pc.invert(pc.is_in(v, value_set=pa.array(list(p.enum), pa.string()))),
                                               False))
        elif p.json_type in ("integer", "number") and (pa.types.is_integer(v.type) or pa.types.is_floating(v.type)):
            if pa.types.is_floating(v.type):
                hit = pc.or_(hit, pc.fill_null(pc.invert(pc.is_finite(v)), False))
            if p.minimum is not None:
                hit = pc.or_(hit, pc.fill_null(pc.less(v, p.minimum), False))
        flagged = pc.or_(flagged, hit)
    return pc.and_(flagged, pc.is_valid(items))


def _bounds_mask(values: Any, lo: float | None, hi: float | None) -> Any:
    m = None
    if lo is not None:
        m = pc.less(values, lo)
    if hi is not None:
        h = pc.greater(values, hi)
        m = h if m is None else pc.or_(m, h)
    return m


def _as_pairs(col: pa.Array) -> pa.Array:
    """A map column (files from before the metrics became a list) as a list of (name, value) structs."""
    if pa.types.is_map(col.type):
        t = col.type
        return col.cast(pa.list_(pa.struct([("name", t.key_type), ("value", t.item_type)])))
    return col


def _metric_parts(col: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array] | None:
    """(names, values, parent rows) of a metrics column: a list of (name, value) structs or a map."""
    col = _as_pairs(col)
    t = col.type
    if _is_list(t) and pa.types.is_struct(t.value_type) and t.value_type.get_field_index("name") >= 0 \
            and t.value_type.get_field_index("value") >= 0:
        flat = pc.list_flatten(col)
        return pc.struct_field(flat, "name"), pc.struct_field(flat, "value"), pc.list_parent_indices(col)
    return None


def _suspect_rows(batch: pa.Table) -> set[int]:
    """Rows that may break the schema (a superset of what ``validate_record`` refuses, for the rows of
    known versions and of newer versions read as the current one). Vectorised."""
    bad: set[int] = set()
    n = batch.num_rows
    versions = batch.column("schema_version")
    _flag(bad, pc.is_null(versions))
    _flag(bad, pc.less(versions, 1))
    newer = pc.fill_null(pc.greater(versions, S.CURRENT_VERSION), False)
    known = {f.name for f in S.fields()}
    for name in batch.column_names:
        if name not in known:  # a column this client does not know: fine only in rows of newer versions
            _flag(bad, pc.invert(newer))
    for f in S.fields():
        if f.name not in batch.column_names:
            if f.required:
                return set(range(n))
            continue
        col = _array(batch.column(f.name))
        t = col.type
        if f.required:
            _flag(bad, pc.is_null(col))
        if pa.types.is_null(t):
            continue
        if f.json_type == "string":
            if pa.types.is_timestamp(t):
                if t.tz is None:  # naive timestamps are refused by the schema
                    _flag(bad, pc.is_valid(col))
                continue
            if f.enum is not None:
                allowed = pa.array(list(f.enum), pa.string())
                _flag(bad, pc.and_(pc.is_valid(col), pc.invert(pc.fill_null(
                    _per_row(col, lambda d: pc.is_in(d.cast(pa.string()), value_set=allowed)), False))))
            if f.fmt == "uuid":
                _flag(bad, pc.invert(_per_row(col, lambda d: pc.match_substring_regex(
                    d, r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"))))
            if f.max_length is not None:
                _flag(bad, pc.greater(_length(col), f.max_length))
        elif f.json_type in ("integer", "number"):
            if f.json_type == "number" and pa.types.is_floating(t):
                _flag(bad, pc.invert(pc.is_finite(col)))
            m = _bounds_mask(col, f.minimum, f.maximum)
            if m is not None:
                _flag(bad, m)
        elif f.json_type == "array" and _is_list(t):
            if f.max_items is not None:
                _flag(bad, pc.greater(pc.list_value_length(col), f.max_items))
            items = pc.list_flatten(col)
            bad.update(_parents(col, pc.is_null(items)))
            if f.item_max_length is not None and _is_string(items.type):
                bad.update(_parents(col, pc.greater(_length(items), f.item_max_length)))
            if f.item_fields and pa.types.is_struct(items.type):
                bad.update(_parents(col, _item_problems(items, f.item_fields)))
        elif f.json_type == "object":
            col = _as_pairs(col)
            parts = _metric_parts(col)
            if parts is None:
                _flag(bad, pc.is_valid(col))
                continue
            names, values, parents = parts
            if f.max_items is not None:
                _flag(bad, pc.greater(pc.list_value_length(col), f.max_items))
            flagged = pc.is_null(names)
            if f.key_max_length is not None:
                flagged = pc.or_(flagged, pc.fill_null(pc.greater(_length(names), f.key_max_length), False))
            if pa.types.is_floating(values.type):
                flagged = pc.or_(flagged, pc.fill_null(pc.invert(pc.is_finite(values)), False))
            for pattern, lo, hi, _ in f.key_bounds:
                m = _bounds_mask(values, lo, hi)
                if m is not None:
                    hit = pc.and_(pc.fill_null(_per_row(names, lambda d, pat=pattern: pc.match_substring_regex(d, pat)),
                                               False), pc.fill_null(m, False))
                    flagged = pc.or_(flagged, hit)
            bad.update(pc.filter(parents, flagged).to_pylist())
    for rule in S.rules():
        if not all(name in batch.column_names for name, _ in rule.when):
            continue
        cond = None
        for name, pattern in rule.when:
            col = batch.column(name)
            if not _is_string(col.type):
                cond = None
                break
            m = pc.fill_null(_per_row(_array(col), lambda d, pat=pattern: pc.match_substring_regex(d, pat)), False)
            cond = m if cond is None else pc.and_(cond, m)
        if cond is None:
            continue
        for name, lo, hi in rule.then:
            if name in batch.column_names and not pa.types.is_null(batch.column(name).type):
                m = _bounds_mask(batch.column(name), lo, hi)
                if m is not None:
                    _flag(bad, pc.and_(cond, pc.fill_null(m, False)))
    return bad


def _strings(col: pa.Array) -> tuple[pa.Array, pa.Array | None, str] | None:
    """(string values, their parent rows or None for a plain column, how privacy scans them)."""
    t = col.type
    if _is_string(t):
        return col, None, "value"
    if _is_list(t) and _is_string(t.value_type):
        return pc.list_flatten(col), pc.list_parent_indices(col), "list"
    parts = _metric_parts(col)
    if parts is not None and _is_string(parts[0].type):
        return parts[0], parts[2], "names"
    return None


def _long_strings(batch: pa.Table, limit: int) -> dict[int, str]:
    """Rows with a string cell (or list item, metric name) over the reader's limit, and why."""
    out: dict[int, str] = {}
    for name in batch.column_names:
        got = _strings(_array(batch.column(name)))
        if got is None:
            continue
        values, parents, _ = got
        lengths = _length(values)
        over = pc.fill_null(pc.greater(lengths, limit), False)
        for i in _rows_of(over):
            row = i if parents is None else parents[i].as_py()
            out.setdefault(row, f"{name}: a string of {lengths[i].as_py()} characters, longer than the "
                                f"reader's limit {limit}")
    return out


def _leaks(batch: pa.Table, skip: set[int], limit: int) -> dict[int, str]:
    """Rows holding private data (a path, e-mail address, URL, token), each distinct value scanned once.
    This machine's user and host names are not looked for: they say nothing about a file written
    elsewhere."""
    out: dict[int, str] = {}
    for name in batch.column_names:
        got = _strings(_array(batch.column(name)))
        if got is None:
            continue
        values, parents, how = got
        distinct = values.dictionary if pa.types.is_dictionary(values.type) else pc.unique(values)
        distinct = pc.filter(distinct, pc.fill_null(pc.less_equal(pc.utf8_length(distinct), limit), False))
        leaking: dict[str, tuple[str, ...]] = {}
        for v in distinct.to_pylist():
            if v is None:
                continue
            probe = v if how == "value" else [v] if how == "list" else {v: 0.0}
            kinds = scrub_value(name, probe, identity=False)[1]
            if kinds:
                leaking[v] = kinds
        if not leaking:
            continue
        value_set = pa.array(list(leaking), pa.string())
        hits = _per_row(values, lambda d: pc.is_in(d.cast(pa.string()), value_set=value_set))
        for i in _rows_of(hits):
            row = i if parents is None else parents[i].as_py()
            if row not in skip and row not in out:
                v = values[i].as_py()
                out[row] = leak_message(name, leaking[v])
    return out


def _row_problems(row: Mapping[str, Any]) -> list[str]:
    """``validate_record``'s verdict; a row of a newer version is read as the current version on the
    columns this client knows (schema versions only add optional fields)."""
    version = row.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > S.CURRENT_VERSION:
        known = set(S.field_names())
        sub = {k: v for k, v in row.items() if k in known}
        sub["schema_version"] = S.CURRENT_VERSION
        return [f"(read as schema v{S.CURRENT_VERSION}) {p}" for p in S.validate_record(sub)]
    return S.validate_record(row)


def _column_problems(schema: pa.Schema) -> list[str]:
    """Column types that no row of the file can satisfy (checked on the footer, before any row)."""
    if "schema_version" not in schema.names:
        return ["schema_version: column is missing"]
    problems = []
    expected = S.arrow_schema()
    got_version = schema.field("schema_version").type
    if not pa.types.is_integer(got_version):
        problems.append(f"schema_version: column type {got_version} is not an integer")
    for name in schema.names:
        if name in expected.names and not S.compatible_type(_plain_type(schema.field(name).type),
                                                            expected.field(name).type):
            problems.append(f"{name}: column type {schema.field(name).type} does not match the schema type "
                            f"{expected.field(name).type}")
    return problems


def _plain_type(t: pa.DataType) -> pa.DataType:
    """A type with its dictionaries replaced by their value types (a file may store them so)."""
    if pa.types.is_dictionary(t):
        return _plain_type(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(pa.field(t.value_field.name, _plain_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _plain_type(f.type)) for f in t])
    return t


def _dictionary_paths(schema: pa.Schema, nested: bool = True) -> list[str]:
    """The string columns (and list items, metric names) to read as dictionaries: a string repeated
    over many rows (the cheapest way to blow up a small compressed file) is then held once."""
    paths = []
    for f in schema:
        t = f.type
        if _is_string(t):
            paths.append(f.name)
        elif nested and (pa.types.is_list(t) or pa.types.is_large_list(t)):
            v = t.value_field
            if _is_string(v.type):
                paths.append(f"{f.name}.list.{v.name}")
            elif pa.types.is_struct(v.type) and v.type.get_field_index("name") >= 0 \
                    and _is_string(v.type.field("name").type):
                paths.append(f"{f.name}.list.{v.name}.name")
    return paths


def _open(path: Path, nested: bool = True) -> pq.ParquetFile:
    """The file, with its string columns read as dictionaries (``_dictionary_paths``)."""
    plain = pq.ParquetFile(path)
    paths = _dictionary_paths(plain.schema_arrow, nested)
    return pq.ParquetFile(path, read_dictionary=paths) if paths else plain


def _file_hash_problem(path: Path, remote_path: str) -> str | None:
    from .remotes import layout as L
    want = L.content_hash(remote_path)
    if not want:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if not h.hexdigest().startswith(want):
        return f"content hash {h.hexdigest()[:32]} does not match the name (corrupt or tampered)"
    return None


def _footer_problems(pf: pq.ParquetFile, limits: Limits) -> list[str]:
    md = pf.metadata
    problems = []
    if md.num_rows > limits.max_rows:
        problems.append(f"{md.num_rows} rows, more than the reader's limit of {limits.max_rows} per file")
    uncompressed = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    if uncompressed > limits.max_uncompressed_bytes:
        problems.append(f"{uncompressed} bytes once uncompressed, more than the reader's limit of "
                        f"{limits.max_uncompressed_bytes}")
    return problems


def check_file(path: Path, remote_path: str, *, limits: Limits = Limits(),
               seen: Mapping[str, str] | None = None, origin: Mapping[str, str] | None = None) -> FileCheck:
    """Check one record file (see the module docstring). ``seen``: record_id -> content hash of the
    records already accepted; ``origin``: record_id -> where that accepted copy is (named in a
    conflict's reason). Never raises for what is in the file; I/O errors on ``path`` propagate."""
    seen = seen or {}
    origin = origin or {}
    check = FileCheck(path=remote_path)
    size = os.stat(path).st_size
    if size > limits.max_bytes:
        check.problems.append(f"{size} bytes, more than the reader's limit of {limits.max_bytes} per file")
        return check
    problem = _file_hash_problem(path, remote_path)
    if problem:
        check.problems.append(problem)
        return check
    try:
        pf = pq.ParquetFile(path)
        check.problems.extend(_footer_problems(pf, limits))
        if not check.problems:
            check.problems.extend(_column_problems(pf.schema_arrow))
    except (pa.ArrowException, OSError, ValueError) as exc:
        check.problems.append(f"not a readable Parquet file ({type(exc).__name__}: {exc})")
        return check
    if check.problems:
        return check
    in_file: dict[str, str] = {}  # record_id -> content hash of its first copy in this file
    mixed: set[str] = set()  # ids with two different contents in this file
    for nested in (True, False):
        kept: list[dict] = []
        refused: dict[int, tuple[str, str]] = {}
        start = 0
        try:
            for batch in _batches(_open(path, nested), limits):
                if start + batch.num_rows > limits.max_rows:  # the footer lied: stop reading
                    check.problems.append(f"more than the reader's limit of {limits.max_rows} rows per file")
                    return check
                _check_batch(batch, start, limits, refused, kept)
                start += batch.num_rows
            break
        except pa.ArrowNotImplementedError:
            if not nested:
                raise
            continue  # pyarrow cannot read that nested column as a dictionary here: read it plainly
        except (pa.ArrowException, OSError, ValueError) as exc:
            check.problems.append(f"not a readable Parquet file ({type(exc).__name__}: {exc})")
            return check
    check.n_rows = start
    for entry in kept:
        rid, h = entry["record_id"], entry["content_hash"]
        if in_file.setdefault(rid, h) != h:
            mixed.add(rid)
    for entry in kept:
        rid, h, i = entry["record_id"], entry["content_hash"], entry["row"]
        if rid in mixed:
            refused[i] = (rid, f"{S.row_label(i, rid)}: conflict: record {rid} appears in this file with different "
                               "contents; none of its copies is accepted")
        elif rid in seen and seen[rid] != h:
            where = f" in {origin[rid]}" if rid in origin else ""
            refused[i] = (rid, f"{S.row_label(i, rid)}: conflict: record {rid} was accepted before{where} with "
                               "other content; the first copy stands")
        else:
            check.accepted.append(entry)
    firsts: set[str] = set()
    for entry in check.accepted:
        rid = entry["record_id"]
        if rid in seen:
            check.known += 1
        elif rid in firsts:
            check.duplicates += 1
        firsts.add(rid)
    for i in sorted(refused):
        check.refused_rows.append(i)
        check.quarantined.append(refused[i])
    return check


def batch_rows(pf: pq.ParquetFile, limits: Limits) -> int:
    """Rows per batch: ``limits.batch_rows``, fewer when the footer says rows are large, so that a
    batch decodes to about ``limits.batch_bytes`` (memory is bounded in bytes, not only in rows)."""
    md = pf.metadata
    if md.num_rows <= 0:
        return limits.batch_rows
    per_row = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups)) / md.num_rows
    return max(16, min(limits.batch_rows, int(limits.batch_bytes / max(per_row, 1.0))))


def _batches(pf: pq.ParquetFile, limits: Limits) -> Iterator[pa.Table]:
    """Batches that never span two row groups (each row group has its own dictionaries)."""
    size = batch_rows(pf, limits)
    for rg in range(pf.metadata.num_row_groups):
        for batch in pf.iter_batches(batch_size=size, row_groups=[rg]):
            yield pa.Table.from_batches([batch])


def _check_batch(batch: pa.Table, start: int, limits: Limits, refused: dict[int, tuple[str, str]],
                 kept: list[dict]) -> None:
    """Sort the rows of one batch into ``refused`` (index in the file -> (id, reason)) and ``kept``."""
    ids = batch.column("record_id").to_pylist() if "record_id" in batch.column_names else [None] * batch.num_rows
    reasons: dict[int, str] = {}
    suspects = _suspect_rows(batch)  # the schema's own limits (and their messages) come first
    if suspects:
        idx = sorted(suspects)
        rows = S.table_to_records(batch.take(pa.array(idx, pa.int64())))
        for i, row in zip(idx, rows):
            problems = _row_problems(row)
            if problems:
                more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
                reasons[i] = "; ".join(problems[:3]) + more
    for i, why in _long_strings(batch, limits.max_string_chars).items():  # e.g. a column this client does not know
        reasons.setdefault(i, why)
    reasons.update(_leaks(batch, set(reasons), limits.max_string_chars))
    good = [i for i in range(batch.num_rows) if i not in reasons]
    if len(good) == batch.num_rows:  # the usual case: no copy of the batch
        hashes = content_hashes(batch)
    else:
        hashes = content_hashes(batch.take(pa.array(good, pa.int64()))) if good else []
    for i, why in reasons.items():
        rid = ids[i] if isinstance(ids[i], str) and ids[i] else "?"
        refused[start + i] = (rid, f"{S.row_label(start + i, ids[i])}: {why}")
    for i, h in zip(good, hashes):
        kept.append({"record_id": ids[i], "content_hash": h, "row": start + i})


def copy_rows(src: Path, rows: list[int] | set[int], dest: Path, *, limits: Limits = Limits(),
              keep_dictionaries: bool = False) -> int:
    """Write the rows ``rows`` (indices) of a checked Parquet file to ``dest``, streaming, and return how
    many were written. Used to keep the accepted rows of a file, and to set the refused ones aside,
    without holding the file in memory. The rows keep the file's own schema; with
    ``keep_dictionaries`` (rows that were refused, whose strings may be huge) string columns stay
    dictionary-encoded, so no repeated string is expanded row by row."""
    wanted = set(rows)
    plain_schema = pq.ParquetFile(src).schema_arrow
    pf = _open(src, nested=False)
    schema = pf.schema_arrow if keep_dictionaries else plain_schema
    dest.parent.mkdir(parents=True, exist_ok=True)
    n = start = 0
    pending: list[pa.Table] = []
    size = 0
    with pq.ParquetWriter(dest, schema, compression="zstd") as writer:
        for batch in (b for t in _batches(pf, limits) for b in t.to_batches()):
            take = [i - start for i in range(start, start + batch.num_rows) if i in wanted]
            start += batch.num_rows
            if not take:
                continue
            part = pa.Table.from_batches([batch]).take(pa.array(take, pa.int64()))
            for i in range(0, part.num_rows, 64):  # expanded 64 rows at a time, written in row groups of
                piece = part.slice(i, 64)            # about limits.batch_bytes
                if not keep_dictionaries:
                    piece = piece.cast(schema)
                pending.append(piece)
                size += piece.nbytes
                n += piece.num_rows
                if size >= limits.batch_bytes:
                    writer.write_table(pa.concat_tables(pending))
                    pending, size = [], 0
        if pending:
            writer.write_table(pa.concat_tables(pending))
    return n
