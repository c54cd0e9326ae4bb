"""Import your own run logs (CSV or JSON lines) with a column -> field mapping.

Each row becomes one record. Values are converted to the field's schema type; a row whose
values do not convert or validate is reported (file:line) and skipped, the others import."""
from __future__ import annotations

import csv
import difflib
import json
import math
import re
from collections import Counter
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any, Iterator, Mapping

from .. import schema as S
from ..privacy import scrub_name, scrub_text
from ..store import LocalStore
from . import ImportSummary, Problem, base_record, resolve_timezone, stable_record_id, write_records
from .modelfacts import fill_model_facts

KIND = "table"
METRIC_PREFIX = "outcome_metrics."
# Written by the importer itself: mapping a column onto them would misstate where the row came from.
_RESERVED = {"schema_version", "xlog_version", "source"}
_NAME_FIELDS = {"model_name", "task_name"}
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class TableImportError(ValueError):
    """The mapping or the file cannot be used at all (nothing was imported)."""


class _BadValue(ValueError):
    pass


def parse_assignments(items: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    """``["a=b", ...]`` -> ``{"a": "b"}``, with a clear error for malformed items."""
    out: dict[str, str] = {}
    for item in items:
        left, sep, right = item.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise TableImportError(f"{what} {item!r}: expected LEFT=RIGHT")
        out[left.strip()] = right.strip()
    return out


def _check_field(name: str) -> None:
    if name.startswith(METRIC_PREFIX):
        if not name[len(METRIC_PREFIX):]:
            raise TableImportError(f"{name!r}: give the metric name after {METRIC_PREFIX!r}")
        return
    names = S.field_names()
    if name in _RESERVED:
        raise TableImportError(f"{name!r} is set by the importer and cannot be mapped")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see `xlog schema --markdown`)"
        raise TableImportError(f"{name!r} is not a field of the record schema{hint}")


def _convert(f: S.Field, v: Any, tz: tzinfo, nonfinite: list[str]) -> Any:
    """A source value -> the field's type; None for empty; raises _BadValue."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    t = f.json_type
    if t == "string" and f.fmt == "date-time":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return datetime.fromtimestamp(float(v), tz=timezone.utc)   # Unix seconds
        try:
            dt = datetime.fromisoformat(str(v).strip().replace("Z", "+00:00"))
        except ValueError:
            raise _BadValue(f"{f.name}: {v!r} is not an ISO-8601 date-time or Unix time") from None
        return (dt if dt.tzinfo else dt.replace(tzinfo=tz)).astimezone(timezone.utc)
    if t == "string":
        s = str(v).strip()
        if f.enum is not None:
            if s.lower() in f.enum:
                return s.lower()
            if s not in f.enum:
                raise _BadValue(f"{f.name}: {s!r} is not one of {', '.join(map(str, f.enum))}")
            return s
        return scrub_name(s) if f.name in _NAME_FIELDS else scrub_text(s)
    if t in ("number", "integer"):
        if isinstance(v, bool):
            raise _BadValue(f"{f.name}: expected a number, got {v!r}")
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise _BadValue(f"{f.name}: {v!r} is not a number") from None
        if not math.isfinite(x):
            nonfinite.append(f"{f.name}={v}")
            return None
        if t == "integer":
            if x != int(x):
                raise _BadValue(f"{f.name}: {v!r} is not a whole number")
            return int(x)
        return x
    if t == "boolean":
        if isinstance(v, bool):
            return v
        s = str(v).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise _BadValue(f"{f.name}: {v!r} is not true/false")
    if t == "array":
        if isinstance(v, str):
            s = v.strip()
            if s.startswith("["):
                try:
                    v = json.loads(s)
                except ValueError:
                    raise _BadValue(f"{f.name}: {v!r} is not a JSON list") from None
            else:
                v = [p.strip() for p in re.split(r"[;,]", s) if p.strip()]
        if not isinstance(v, list):
            raise _BadValue(f"{f.name}: expected a list, got {v!r}")
        return [str(x) for x in v]
    if t == "object":
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                raise _BadValue(f"{f.name}: {v!r} is not a JSON object") from None
        if not isinstance(v, Mapping):
            raise _BadValue(f"{f.name}: expected an object of metric name -> number")
        out = {}
        for k, x in v.items():
            num = _convert(S.Field(f"{f.name}.{k}", "number", False, "", None, "", None, None, None, None),
                           x, tz, nonfinite)
            if num is not None:
                out[str(k)] = num
        return out or None
    raise _BadValue(f"{f.name}: unsupported type {t}")


def read_rows(path: Path, fmt: str | None = None) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """(columns, iterator of (line number, row)) of a CSV/TSV or JSON-lines file."""
    fmt = (fmt or {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                   ".json": "jsonl"}.get(path.suffix.lower(), "")).lower()
    if fmt not in ("csv", "tsv", "jsonl"):
        raise TableImportError(f"{path}: cannot tell the format from the extension; pass --format csv|tsv|jsonl")
    if fmt in ("csv", "tsv"):
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter="," if fmt == "csv" else "\t")
            columns = list(reader.fieldnames or [])
            rows = [(reader.line_num, dict(r)) for r in reader]
        if not columns:
            raise TableImportError(f"{path}: empty file or no header row")
        return columns, iter(rows)
    rows: list[tuple[int, Any]] = []
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):   # a JSON array of objects is accepted too
        try:
            rows = list(enumerate(json.loads(text), start=1))
        except ValueError as exc:
            raise TableImportError(f"{path}: not valid JSON ({exc})") from None
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except ValueError as exc:
                    rows.append((i, _BadValue(f"not a JSON line ({exc})")))
    columns: list[str] = []
    for _, r in rows:
        if isinstance(r, Mapping):
            columns.extend(k for k in r if k not in columns)
    return columns, iter(rows)


def import_table(path: str | Path, mapping: Mapping[str, str], store: LocalStore | None = None, *,
                 constants: Mapping[str, str] | None = None, fmt: str | None = None,
                 dry_run: bool = False, timezone_name: str = "UTC", model_facts: bool = True) -> ImportSummary:
    """Import a CSV/TSV/JSON-lines file; ``mapping`` is source column -> schema field (or
    ``outcome_metrics.<name>``), ``constants`` is schema field -> value for every row. With
    ``model_facts``, model columns a row leaves empty are filled from the shipped model table
    (xlog.importers.modelfacts) when its ``model_name`` is in it."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TableImportError(f"no such file: {p}")
    constants = dict(constants or {})
    if not mapping and not constants:
        raise TableImportError("give at least one --map COLUMN=FIELD")
    targets = Counter(mapping.values())
    dup = [t for t, n in targets.items() if n > 1]
    if dup:
        raise TableImportError(f"field(s) {', '.join(dup)} mapped from more than one column")
    for target in list(mapping.values()) + list(constants):
        _check_field(target)
    both = set(mapping.values()) & set(constants)
    if both:
        raise TableImportError(f"field(s) {', '.join(sorted(both))} both mapped and set")
    tz = resolve_timezone(timezone_name)
    columns, rows = read_rows(p, fmt)
    missing = [c for c in mapping if c not in columns]
    if missing:
        raise TableImportError(f"{p}: column(s) {', '.join(missing)} not in the file "
                               f"(columns: {', '.join(columns) or 'none'})")
    summary = ImportSummary(KIND, dry_run=dry_run)
    unmapped = [c for c in columns if c not in mapping]
    if unmapped:
        summary.warnings.append(Problem(str(p), f"column(s) not imported: {', '.join(unmapped)}"))
    by_name = {f.name: f for f in S.fields()}
    occurrences: Counter[str] = Counter()
    items: list[tuple[str, dict]] = []
    for line, row in rows:
        summary.read += 1
        where = f"{p}:{line}"
        if isinstance(row, Exception):
            summary.invalid.append(Problem(where, str(row)))
            continue
        if not isinstance(row, Mapping):
            summary.invalid.append(Problem(where, f"a JSON {type(row).__name__}, not an object"))
            continue
        # Infinity/NaN may be in the row (JSON lines written by Python): allow them in the key.
        key = json.dumps(row, sort_keys=True, separators=(",", ":"), default=str)
        occurrences[key] += 1   # identical rows stay distinct records, stably numbered
        try:
            rec = _row_record(row, mapping, constants, by_name, tz,
                              f"{p.name}\n{key}\n{occurrences[key]}")
        except _BadValue as exc:
            summary.invalid.append(Problem(where, str(exc)))
            continue
        if model_facts:
            fill_model_facts(rec)   # never overwrites a value the row gave
        items.append((where, rec))
    write_records(items, store or LocalStore(), summary)
    return summary


def _row_record(row: Mapping[str, Any], mapping: Mapping[str, str], constants: Mapping[str, str],
                by_name: dict[str, S.Field], tz: tzinfo, key: str) -> dict[str, Any]:
    nonfinite: list[str] = []
    values: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    pairs = [(target, row.get(col)) for col, target in mapping.items()] + list(constants.items())
    for target, raw in pairs:
        if target.startswith(METRIC_PREFIX):
            f = S.Field(target, "number", False, "", None, "", None, None, None, None)
            v = _convert(f, raw, tz, nonfinite)
            if v is not None:
                metrics[target[len(METRIC_PREFIX):]] = v
            continue
        v = _convert(by_name[target], raw, tz, nonfinite)
        if v is not None:
            values[target] = v
    if metrics:
        values["outcome_metrics"] = {**(values.get("outcome_metrics") or {}), **metrics}
    rid = values.pop("record_id", None)
    if rid is not None and not _UUID_RE.match(str(rid)):
        raise _BadValue(f"record_id: {rid!r} is not a UUID (leave it unmapped to derive a stable id)")
    rec = base_record(KIND, rid or stable_record_id(KIND, key))
    rec.update(values)
    for req in ("created_at", "status"):
        if rec.get(req) is None:
            raise _BadValue(f"{req} is empty: map a column to it or give --set {req}=...")
    if "energy_source" not in values and any(rec.get(k) is not None for k in by_name if k.startswith("energy_")
                                             and k != "energy_source"):
        rec["energy_source"] = "imported"
    metric = rec.get("outcome_primary_metric")
    if rec.get("outcome_primary_value") is None and metric and rec.get("outcome_metrics", {}).get(metric) is not None:
        rec["outcome_primary_value"] = rec["outcome_metrics"][metric]
    score_names = {"outcome_primary_value", f"{METRIC_PREFIX}{metric}"}
    if rec["status"] == "completed" and rec.get("outcome_primary_value") is None \
            and any(n.split("=")[0] in score_names for n in nonfinite):
        # A completed run with an infinite/NaN score produced no score: a failure of unknown cause.
        rec.update(status="failed", error_type=rec.get("error_type") or "NoScore",
                   error_message=rec.get("error_message") or f"non-finite score in the source ({', '.join(nonfinite)})")
    return rec
