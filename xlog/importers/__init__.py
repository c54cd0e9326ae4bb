"""Importers: bring existing experience stores (AutoGOAL/XAutoLM JSON, CSV/JSON-lines logs) into
the record schema. Each importer turns its source into schema-valid records with a stable id
(a UUID5 of the source), so importing the same source twice adds nothing."""
from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import timezone, tzinfo
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .. import __version__
from .. import schema as S
from ..store import LocalStore

# Fixed namespace for the UUID5 ids of imported records: the same source key always gives the
# same record_id, on every machine, so re-imports and imports by two people deduplicate.
IMPORT_NAMESPACE = uuid.UUID("5b0f6c1e-8a4f-5d0e-9a55-7c1c3f1e0a01")


def stable_record_id(kind: str, key: str) -> str:
    """UUID5 of ``import:<kind>`` and a stable key of the source item."""
    return str(uuid.uuid5(IMPORT_NAMESPACE, f"import:{kind}\n{key}"))


def resolve_timezone(name: str) -> tzinfo:
    """A time zone by IANA name (``UTC``, ``Europe/Madrid``); ValueError for an unknown name."""
    if name.strip().upper() in ("UTC", "Z"):
        return timezone.utc
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as UTC or Europe/Madrid)") from None


def content_hash(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def finite(v: Any) -> float | None:
    """The value as a float if it is a finite number, else None (never inf/nan in a record)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def base_record(kind: str, record_id: str) -> dict[str, Any]:
    """The identity fields every imported record shares; the importer fills the rest."""
    return {"record_id": record_id, "schema_version": S.CURRENT_VERSION, "xlog_version": __version__,
            "source": f"import:{kind}", "energy_source": "none"}


def json_compact(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass
class Problem:
    """One source item that could not be imported, with where it is and why."""
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ImportSummary:
    """What an import did (or, with dry_run, would do)."""
    kind: str
    dry_run: bool = False
    read: int = 0                     # source items looked at
    imported: int = 0                 # new records written (or that would be written)
    already_present: int = 0          # records whose id is already in the store
    merged: int = 0                   # duplicate source items folded into another record
    invalid: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)   # of the imported records
    record_ids: list[str] = field(default_factory=list)       # ids of imported records

    @property
    def failures(self) -> int:
        """Imported records that are failures (status other than completed)."""
        return sum(n for s, n in self.by_status.items() if s != "completed")

    def line(self) -> str:
        verb = "would import" if self.dry_run else "imported"
        statuses = ", ".join(f"{s} {n}" for s, n in sorted(self.by_status.items()))
        parts = [f"{verb} {self.imported} record(s)" + (f" ({statuses})" if statuses else ""),
                 f"{self.failures} failure(s) as experience",
                 f"skipped {self.already_present} already present"]
        if self.merged:
            parts.append(f"merged {self.merged} duplicate(s)")
        parts.append(f"{len(self.invalid)} invalid")
        return f"import {self.kind}: " + ", ".join(parts) + f" ({self.read} read)"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dry_run": self.dry_run, "read": self.read, "imported": self.imported,
                "already_present": self.already_present, "merged": self.merged,
                "failures": self.failures, "by_status": dict(self.by_status),
                "invalid": [str(p) for p in self.invalid], "warnings": [str(p) for p in self.warnings]}


def write_records(items: Iterable[tuple[str, Mapping[str, Any]]], store: LocalStore,
                  summary: ImportSummary) -> None:
    """Validate and write (where, record) pairs; records already in the store are skipped."""
    seen: set[str] = set()
    for where, rec in items:
        rid = rec["record_id"]
        if rid in seen or store.exists(rid):
            summary.already_present += 1
            continue
        problems = S.validate_record(rec)
        if problems:
            summary.invalid.append(Problem(where, "record does not validate: " + "; ".join(problems)))
            continue
        if not summary.dry_run:
            store.write(rec)
        seen.add(rid)
        summary.imported += 1
        summary.record_ids.append(rid)
        summary.by_status[rec["status"]] = summary.by_status.get(rec["status"], 0) + 1
