"""The remote layout: partitioned, content-addressed Parquet files plus a dataset card.

::

    README.md                                   dataset card; YAML ``configs`` point at data/
    data/v<schema_version>/<YYYY-MM>/<sha256[:32]>.parquet

Records are partitioned by schema version (one Arrow schema per folder, so each folder reads
as one table) and by the month of ``created_at`` (so the store can grow to millions of records
without huge folders). A file's name is the SHA-256 of its bytes: the same records encode to
the same bytes, so pushing them again adds nothing, and a downloaded file can be verified.
A push plans its files from the records the remote does not hold yet (``sync``), so one new
record becomes one small new file, not a re-upload of its month.
"""
from __future__ import annotations

import hashlib
import io
import re
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from .. import schema as S

DATA_DIR = "data"
CARD_PATH = "README.md"
ROWS_PER_FILE = 100_000  # keeps files well under the Hub's recommended size
_DATA_RE = re.compile(r"^data/v(\d+)/(\d{4}-\d{2})/([0-9a-f]{32})\.parquet$")


def is_data_path(path: str) -> bool:
    return _DATA_RE.match(path) is not None


def content_hash(path: str) -> str | None:
    """The hash prefix a data file's name promises (None for other files)."""
    m = _DATA_RE.match(path)
    return m.group(3) if m else None


def _month(created: Any) -> str:
    if isinstance(created, str):
        created = datetime.fromisoformat(created.replace("Z", "+00:00"))
    if created is None:
        created = datetime.now(timezone.utc)
    return created.astimezone(timezone.utc).strftime("%Y-%m")


def encode(records: list[Mapping[str, Any]], version: int) -> bytes:
    """Deterministic Parquet bytes for records of one schema version (sorted by record id)."""
    table = S.records_to_table(sorted(records, key=lambda r: r["record_id"]), version)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def data_path(version: int, month: str, data: bytes) -> str:
    return f"{DATA_DIR}/v{version}/{month}/{hashlib.sha256(data).hexdigest()[:32]}.parquet"


def partition_dir(version: int, created_at: Any) -> str:
    """The folder (with a trailing slash) that holds the records of this version and creation time."""
    return f"{DATA_DIR}/v{version}/{_month(created_at)}/"


def plan_files(records: Iterable[Mapping[str, Any]], rows_per_file: int = ROWS_PER_FILE
               ) -> dict[str, tuple[bytes, list[str]]]:
    """Group records by (schema version, month) into files: path -> (bytes, record ids)."""
    groups: dict[tuple[int, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(int(r["schema_version"]), _month(r.get("created_at")))].append(r)
    out: dict[str, tuple[bytes, list[str]]] = {}
    for (version, month), recs in sorted(groups.items()):
        recs = sorted(recs, key=lambda r: r["record_id"])
        for i in range(0, len(recs), rows_per_file):
            chunk = recs[i:i + rows_per_file]
            data = encode(chunk, version)
            out[data_path(version, month, data)] = (data, [r["record_id"] for r in chunk])
    return out


def validate_for_read(table: pa.Table) -> list[str]:
    """Validate a table that arrived from a remote, accepting newer schema versions.

    Rows written with a schema version this client knows are validated in full. Rows from a
    *newer* writer are validated on the columns this client knows (as the current version:
    schema versions only add optional fields), and their extra columns are kept in the file;
    readers see them through DuckDB's ``union_by_name``. A file with an unknown older
    version, a wrong column type or an invalid value is rejected.
    """
    if "schema_version" not in table.column_names:
        return ["schema_version: column is missing"]
    versions = {v for v in table.column("schema_version").to_pylist()}
    if any(v is None for v in versions):
        return ["schema_version: missing in some rows"]
    newest = S.CURRENT_VERSION
    if all(int(v) <= newest for v in versions):
        return S.validate_table(table)
    known = [n for n in S.field_names(newest) if n in table.column_names]
    sub = table.select(known)
    sub = sub.set_column(sub.column_names.index("schema_version"), "schema_version",
                         pa.array([newest] * len(sub), pa.int64()))
    return [f"(read as schema v{newest}) {p}" for p in S.validate_table(sub)]


def card(repo_name: str) -> str:
    """The dataset card: YAML ``configs`` let the Hub viewer and ``datasets.load_dataset`` read data/."""
    versions = "\n".join(
        f"- config_name: v{v}\n  data_files:\n  - split: train\n    path: data/v{v}/*/*.parquet"
        for v in range(1, S.CURRENT_VERSION + 1))
    return f"""---
pretty_name: {repo_name} (xlog fine-tuning experience)
tags:
- xlog
- fine-tuning
- automl
- experience-records
configs:
- config_name: default
  data_files:
  - split: train
    path: data/v{S.CURRENT_VERSION}/*/*.parquet
{versions}
---

# {repo_name}

Fine-tuning experience records published with [xlog](https://pypi.org/project/xlog-xsearch/):
one row per training run (model, fine-tuning method, hyperparameters, task meta-features,
hardware, outcome, time and energy, and how failed runs failed). No raw text, paths, user or
host names are stored.

Layout: `data/v<schema version>/<YYYY-MM>/<sha256>.parquet`; each file's name is the hash of
its content. Records are unique by `record_id`.

```python
from datasets import load_dataset
ds = load_dataset("{repo_name}", split="train")
```

```bash
xsearch pull --remote {repo_name}
xsearch sql "SELECT model_name, count(*) FROM experiences GROUP BY 1"
```
"""
