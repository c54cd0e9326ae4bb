"""``xlog compact``: rewrite each partition's many small files into few files of bounded size.

Every push adds at least one small file per month partition, and the Hub caps a repo at 100k
files and a folder at 10k entries. Compaction replaces a partition's small files by a few files
of at most ``max_file_bytes`` (and at most the reader's row limit), in the readers' layout
(``data/v<version>/<YYYY-MM>/<sha256[:32]>.parquet``: names stay content hashes).

Never losing or duplicating a record:
* only files a reader accepts in full are rewritten; a file with a refused row, a file-level
  problem, or a record id that conflicts anywhere on the store stays as it is (so the
  first-committed copy of a conflicting id keeps its own commit: provenance decides conflicts);
* copies of one record (same id and content hash, e.g. pushed twice) become one row;
* before anything is written, the new files are checked as a reader would and their set of
  (record id, content hash) must equal the old files' set, with one row per pair; after the
  commit the new files are read back from the remote and checked again (a mismatch restores
  the old files and fails loudly).

On the Hub the whole compaction is ONE commit (``create_commit`` with the deletions and the
additions, ``parent_commit`` set: a push or merge landing meanwhile makes it fail cleanly, to be
run again). On a directory the new files are written first (atomically, one by one), checked,
and only then the old ones removed: a crash in between leaves identical copies, which readers
count once and the next run removes.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from . import schema as S
from .intake import Limits
from .maintain import MaintainError, StoreIndex, check_data_file
from .remotes import Remote
from .remotes import layout as L

__all__ = ["PartitionPlan", "CompactPlan", "compact", "DEFAULT_MAX_FILE_MB"]

DEFAULT_MAX_FILE_MB = 32.0
DESCRIPTION_LINES = 1000  # replaced files listed in the commit description (provenance of the old files)


@dataclass
class PartitionPlan:
    folder: str
    old: list[str]  # files to replace
    rows_before: int
    bytes_before: int
    records: int  # distinct (record id, content hash) pairs: the rows after
    files_after_estimate: int
    rows_per_file: int = 100_000  # rows per new file, from the bytes a row takes (estimated)
    new: dict[str, int] = field(default_factory=dict)  # path -> rows (once built)
    bytes_after: int = 0


@dataclass
class CompactPlan:
    remote: str
    partitions: list[PartitionPlan] = field(default_factory=list)
    untouched: list[tuple[str, str]] = field(default_factory=list)  # (path, why it stays as it is)
    data_files_before: int = 0
    folders: int = 0
    max_folder_entries: int = 0
    applied: bool = False
    commit: str | None = None

    @property
    def files_replaced(self) -> int:
        return sum(len(p.old) for p in self.partitions)

    @property
    def files_after(self) -> int:
        made = sum(len(p.new) if p.new else p.files_after_estimate for p in self.partitions)
        return self.data_files_before - self.files_replaced + made

    def lines(self) -> list[str]:
        head = "compacted" if self.applied else "dry run: would compact"
        out = [f"{head} {self.remote}: {self.data_files_before} -> {self.files_after} data file(s) in "
               f"{self.folders} partition(s) (largest folder: {self.max_folder_entries} entries before)"]
        for p in self.partitions:
            after = len(p.new) if p.new else p.files_after_estimate
            out.append(f"  {p.folder}  {len(p.old)} -> {after} file(s), {p.rows_before} -> {p.records} row(s), "
                       f"{p.bytes_before / 1e6:.2f} MB"
                       + (f" -> {p.bytes_after / 1e6:.2f} MB" if p.bytes_after else ""))
        for path, why in self.untouched[:20]:
            out.append(f"  kept as is: {path}: {why}")
        if len(self.untouched) > 20:
            out.append(f"  kept as is: ... and {len(self.untouched) - 20} more file(s)")
        if not self.partitions:
            out.append("  nothing to compact: no partition has several small files a reader accepts in full")
        if self.applied and self.commit:
            out.append(f"  commit {self.commit[:12]}")
        return out


def _plan(index: StoreIndex, listing: dict[str, int], max_bytes: int) -> CompactPlan:
    plan = CompactPlan(remote=index.remote.key)
    _, _, troubled = index.accepted()
    folders: dict[str, list[str]] = defaultdict(list)
    for p in listing:
        if p.startswith(L.DATA_DIR + "/"):
            folders[p.rsplit("/", 1)[0] + "/"].append(p)
    plan.data_files_before = sum(len(v) for v in folders.values())
    plan.folders = len(folders)
    plan.max_folder_entries = max((len(v) for v in folders.values()), default=0)
    for folder, paths in sorted(folders.items()):
        small = []
        for p in sorted(paths, key=lambda p: (index.origins.get(p, {}).get("date") or "~", p)):
            v = index.files.get(p)
            if v is None:
                plan.untouched.append((p, "not checked"))
            elif not L.is_data_path(p):
                plan.untouched.append((p, "outside the data layout"))
            elif not v.ok:
                plan.untouched.append((p, "a reader does not accept all of it: " + v.summary(1)))
            elif any(rid in troubled for rid, _ in v.pairs):
                plan.untouched.append((p, "holds a record id that conflicts elsewhere on the store (review it; "
                                          "its commit decides which copy stands)"))
            elif v.size < max_bytes:
                small.append(p)
        if len(small) < 2:
            continue
        size = sum(index.files[p].size for p in small)
        records = len({pair for p in small for pair in index.files[p].pairs})
        # A file is mostly fixed overhead (the footer of ~200 columns) until it holds thousands of
        # rows: count that overhead once, as the rewrite will.
        overhead = int(0.9 * min(index.files[p].size for p in small))
        payload = size - overhead * len(small) + overhead
        estimate = max(1, math.ceil(payload / max_bytes), math.ceil(records / index.limits.max_rows))
        if estimate >= len(small):
            continue
        rows = sum(index.files[p].n_rows for p in small)
        per_row = max(50.0, (payload - overhead) / max(1, rows))
        rows_per_file = max(1, min(index.limits.max_rows, int((max_bytes - overhead) / per_row)))
        rows_per_file = math.ceil(records / math.ceil(records / rows_per_file))  # balanced: no small last file
        plan.partitions.append(PartitionPlan(folder, small, rows, size, records, estimate, rows_per_file))
    return plan


def _encode_partition(local: Path, part: PartitionPlan, index: StoreIndex, max_bytes: int, staged: Path
                      ) -> dict[str, int]:
    """Write the partition's records to ``staged`` (remote-relative paths): one row per (id, content
    hash), files of at most ``max_bytes`` and the reader's row limit, each sorted by record id.
    Streams: one output file's rows in memory at a time. Returns path -> rows."""
    _, version_dir, month = part.folder.strip("/").split("/")
    version = int(version_dir[1:])
    out: dict[str, int] = {}
    taken: set[tuple[str, str]] = set()
    pending: list[dict] = []

    def write(chunk: list[dict]) -> None:
        data = L.encode(chunk, version)
        if len(data) > max_bytes and len(chunk) > 1:  # over the bound: halve until each half fits
            write(chunk[:len(chunk) // 2])
            write(chunk[len(chunk) // 2:])
            return
        path = L.data_path(version, month, data)
        (staged / path).parent.mkdir(parents=True, exist_ok=True)
        (staged / path).write_bytes(data)
        out[path] = len(chunk)

    for p in part.old:  # first committed first: its copy of a repeated record is the one kept
        rows = S.table_to_records(pq.read_table(local / p))
        pairs = index.files[p].pairs
        if len(rows) != len(pairs) or any(r["record_id"] != rid for r, (rid, _) in zip(rows, pairs)):
            raise MaintainError(f"{p} changed since it was checked; run the compaction again")
        for rec, pair in zip(rows, pairs):
            if pair not in taken:
                taken.add(pair)
                pending.append(rec)
            if len(pending) >= part.rows_per_file:
                write(pending)
                pending = []
    if pending:
        write(pending)
    return out


def _verify(files: dict[str, Path], expected: set[tuple[str, str]], limits: Limits, when: str) -> None:
    """The new files, read as a reader would, hold exactly ``expected``, one row per pair."""
    got: list[tuple[str, str]] = []
    for p, local in files.items():
        v = check_data_file(local, p, local.stat().st_size, limits)
        if not v.ok:
            raise MaintainError(f"compaction aborted {when}: the new file {p} would not be accepted by a reader: "
                                + v.summary())
        got.extend(v.pairs)
    if len(got) != len(set(got)) or set(got) != expected:
        lost, extra = len(expected - set(got)), len(set(got) - expected)
        raise MaintainError(f"compaction aborted {when}: the new files hold {len(got)} row(s) for {len(expected)} "
                            f"record(s) ({lost} missing, {extra} unexpected, {len(got) - len(set(got))} duplicated)")


def compact(remote: Remote, home: Path, *, apply: bool = False, max_file_mb: float = DEFAULT_MAX_FILE_MB,
            limits: Limits = Limits(), log: Callable[[str], None] = lambda s: None) -> CompactPlan:
    """Plan (and with ``apply``, carry out) a compaction of ``remote`` (see the module docstring)."""
    from .remotes.directory import DirectoryRemote
    from .remotes.hub import HubRemote
    if not isinstance(remote, (HubRemote, DirectoryRemote)):
        raise MaintainError(f"cannot compact {remote.key}: only Hub datasets and directories are supported")
    max_bytes = int(max_file_mb * 2**20)
    if max_bytes < 4096:
        raise MaintainError(f"--max-file-mb {max_file_mb} is too small: files need at least a few kB")
    if max_bytes > limits.max_bytes:
        raise MaintainError(f"--max-file-mb {max_file_mb} is more than readers accept per file "
                            f"({limits.max_bytes / 2**20:g} MB): they would refuse the compacted files")
    parent = remote.head() if isinstance(remote, HubRemote) else None
    listing = remote.list_files()
    index = StoreIndex(remote, home, limits)
    index.update(listing, log=log)
    plan = _plan(index, listing, max_bytes)
    if not apply or not plan.partitions:
        return plan
    with tempfile.TemporaryDirectory() as tmp:
        local, staged = Path(tmp) / "old", Path(tmp) / "new"
        index.update(listing, keep=local, only=[p for part in plan.partitions for p in part.old], log=log)
        expected: set[tuple[str, str]] = set()
        for part in plan.partitions:
            part.new = _encode_partition(local, part, index, max_bytes, staged)
            part.bytes_after = sum((staged / p).stat().st_size for p in part.new)
            expected |= {pair for p in part.old for pair in index.files[p].pairs}
        new_files = {p: staged / p for part in plan.partitions for p in part.new}
        _verify(new_files, expected, limits, "before committing (nothing was changed)")
        old = [p for part in plan.partitions for p in part.old if p not in new_files]
        add: dict[str, Path | bytes] = dict(new_files)
        if L.CARD_PATH not in listing:  # keep the dataset card (configs) valid for the Hub viewer
            add[L.CARD_PATH] = L.card(getattr(remote, "repo_id", None) or Path(str(getattr(remote, "root", ""))).name
                                      ).encode()
        message = (f"xlog compact: {plan.files_replaced} file(s) -> {len(new_files)} in {len(plan.partitions)} "
                   f"partition(s), {len(expected)} record(s)")
        if isinstance(remote, HubRemote):
            from .remotes.hub import RemoteChangedError
            try:
                plan.commit = remote.replace(add, old, message, _description(index, old), parent_commit=parent)
            except RemoteChangedError as exc:
                # A retry after a lost answer meets its own landed commit: that is success, if main
                # holds exactly the planned files now (the read-back below checks their content).
                now = remote.list_files()
                if any(p not in now for p in new_files) or any(p in now for p in old):
                    raise MaintainError(f"{exc}: nothing was changed; run the compaction again") from exc
                plan.commit = remote.head()
        else:
            _replace_in_directory(remote, add, old)
        plan.applied = True
        _read_back(remote, new_files, old, expected, limits, Path(tmp) / "back", local)
    index.update(remote.list_files(), log=log)  # the new files' verdicts, for the next review or compaction
    return plan


def _description(index: StoreIndex, old: list[str]) -> str:
    """The replaced files and where each came from: the provenance the compacted files no longer carry."""
    lines = ["Files replaced (path, commit, date, PR) — their records are in the new files unchanged:", ""]
    for p in old[:DESCRIPTION_LINES]:
        o = index.origins.get(p, {})
        lines.append(f"- {p} {str(o.get('commit') or '')[:12]} {o.get('date') or ''}"
                     + (f" #{o['pr']}" if o.get("pr") else ""))
    if len(old) > DESCRIPTION_LINES:
        lines.append(f"- ... and {len(old) - DESCRIPTION_LINES} more")
    return "\n".join(lines)


def _replace_in_directory(remote: Any, add: dict[str, Path | bytes], old: list[str]) -> None:
    """New files first (each written atomically), checked on disk, then the old ones removed."""
    from .remotes.directory import write_shared
    root: Path = remote.root
    for p, src in add.items():
        write_shared(root / p, src if isinstance(src, bytes) else src.read_bytes())
    for p, src in add.items():
        if (root / p).read_bytes() != (src if isinstance(src, bytes) else src.read_bytes()):
            raise MaintainError(f"compaction aborted: {root / p} does not hold what was written; the old files "
                                "are all still there")
    for p in old:
        try:
            os.unlink(root / p)
        except FileNotFoundError:
            pass  # removed meanwhile (another compaction): the records are in the new files


def _read_back(remote: Remote, new_files: dict[str, Path], old: list[str], expected: set[tuple[str, str]],
               limits: Limits, tmp: Path, local_old: Path) -> None:
    """After the commit: the new files are there and hold every record, the old ones are gone."""
    listing = remote.list_files()
    problems = [f"{p} is missing" for p in new_files if p not in listing]
    problems += [f"{p} is still there" for p in old if p in listing]
    if not problems:
        paths = {}
        for p in new_files:
            dest = tmp / p
            dest.parent.mkdir(parents=True, exist_ok=True)
            remote.fetch(p, dest)
            paths[p] = dest
        try:
            _verify(paths, expected, limits, "after the commit")
        except MaintainError as exc:
            problems.append(str(exc))
    if not problems:
        return
    # Put the old files back (byte-identical copies of what was there) and take the new ones away.
    restore: dict[str, Path | bytes] = {p: local_old / p for p in old}
    from .remotes.hub import HubRemote
    if isinstance(remote, HubRemote):
        remote.replace(restore, [p for p in new_files if p in listing and p not in restore],
                       "xlog compact: restore the files of a compaction that failed its check")
    else:
        _replace_in_directory(remote, restore, [p for p in new_files if p not in restore])
    raise MaintainError("compaction failed its check after the commit and was undone: " + "; ".join(problems[:5]))
