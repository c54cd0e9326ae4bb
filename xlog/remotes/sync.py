"""Push local records to a remote and pull (mirror) a remote into the local store root.

Push: validate the records not yet in the ledger, then plan from what the remote holds: list
its files and read the record ids of the data files in the records' partitions that the ledger
does not know yet (only the ``record_id`` column; each file once, remembered in the ledger), so
a record already on the remote is never sent again, whether the ledger was lost, corrupt, or
another home pushed the same record. Scrub private data from the copies to publish
(``privacy.scrub_record``; local files are never modified), encode the remaining records into
content-addressed files (see ``layout``), record the plan as pending, send everything in ONE
commit, then mark the records pushed. ``PushResult`` says what was sent and what was already there.

Pull: download the data files the mirror lacks, verify each against the hash in its name, the
schema (bounds and string lengths included) and the privacy check, and move it into
``$XLOG_HOME/remotes/<slug>/`` atomically; a bad file is quarantined (``LocalStore.quarantine``)
with the reason naming its rows and fields, and remembered, never loaded, never fatal.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq

from .. import schema as S
from ..errors import StoreNotWritableError
from ..ledger import Ledger
from ..privacy import scrub_record, table_leaks
from ..store import BadRecordFile, LocalStore, read_and_validate
from . import Remote, RemoteError, RemoteNotFoundError
from . import layout as L

REMOTES_DIR = "remotes"
STATE_FILE = ".xlog-pull.json"
KEEP = object()  # contributor: keep each record's own value


@dataclass
class PushResult:
    remote: str
    new_records: int = 0  # records sent by this push (a dry run: that it would send)
    files: dict[str, int] = field(default_factory=dict)  # path -> number of records, of the files planned
    uploaded_files: int = 0  # files sent
    uploaded_records: int = 0  # records in the files sent
    already_on_remote: int = 0  # planned files found on the remote already (identical content)
    already_on_remote_records: int = 0  # local records not in the ledger found on the remote: not sent
    remote_files_read: int = 0  # remote data files whose record ids were read to plan this push
    recovered_records: int = 0  # records of a pending push confirmed on the remote
    invalid: list[str] = field(default_factory=list)  # quarantined local files
    scrubbed: list[str] = field(default_factory=list)  # "record <id>: <field>: ..." scrubbed in the pushed copy
    commit: str | None = None
    dry_run: bool = False


@dataclass
class PullResult:
    remote: str
    mirror: Path
    new_files: int = 0
    new_records: int = 0
    up_to_date_files: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="rec", disable=not enabled or total < 1000, leave=False)


def _read_one(store: LocalStore, path: Path, result: PushResult) -> list[dict]:
    try:
        table = read_and_validate(path)
    except FileNotFoundError:
        return []
    except BadRecordFile as exc:  # unreadable or invalid: keep it out of the remote, keep the file
        store.quarantine(path, f"not pushed: {exc}")
        result.invalid.append(path.name)
        return []
    return S.table_to_records(table)


def _read_candidates(store: LocalStore, pushed: set[str], progress: bool, result: PushResult,
                     chunk: int = 2000) -> list[dict]:
    """Read and validate the unpushed local files. Files are read a chunk at a time as one
    table (per-file overhead dominates for one-row files); a chunk that fails to read or
    validate is re-read file by file so that only the bad files are quarantined."""
    import duckdb
    files = [p for p in store.files() if p.stem not in pushed]
    records: list[dict] = []
    with _progress_bar(len(files), "validating", progress) as bar:
        for i in range(0, len(files), chunk):
            part = files[i:i + chunk]
            try:
                # DuckDB reads many small Parquet files several times faster than pyarrow here.
                listing = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in part) + "]"
                table = duckdb.connect().sql(f"SELECT * FROM read_parquet({listing})").to_arrow_table()
                if S.validate_table(table):
                    raise ValueError("invalid rows")
                rows = S.table_to_records(table)
            except Exception:  # includes a file removed meanwhile, another version, a corrupt file
                rows = [r for p in part for r in _read_one(store, p, result)]
            records.extend(r for r in rows if r["record_id"] not in pushed)
            bar.update(len(part))
    return records


def _scrub_for_push(records: list[dict], result: PushResult, log: Callable[[str], None]) -> list[dict]:
    """The copies to publish, scrubbed of private data (the local files stay as they are). A
    record that would still be invalid after scrubbing is left out, and said so."""
    out = []
    for r in records:
        clean, problems = scrub_record(r)
        if not problems:
            out.append(r)
            continue
        rid = str(r.get("record_id"))[:8]
        result.scrubbed.extend(f"record {rid}: {p}" for p in problems)
        for p in problems:
            log(f"record {rid}: {p}: scrubbed in the pushed copy")
        invalid = S.validate_record(clean)
        if invalid:  # e.g. a scrubbed name now longer than allowed: publish nothing of it
            log(f"record {rid}: not pushed: invalid once scrubbed: " + _some(invalid))
            continue
        out.append(clean)
    return out


def _on_remote(remote: Remote, ledger: Ledger, listing: dict[str, int], records: list[dict],
               progress: bool, result: PushResult, log: Callable[[str], None]) -> set[str]:
    """The ids among ``records`` that the remote already holds. Reads the record ids of the data
    files in the records' partitions that the ledger does not know (once: they are remembered)."""
    prefixes = {L.partition_dir(int(r["schema_version"]), r.get("created_at")) for r in records}
    known = ledger.known_files(remote.key)
    unknown = {p: n for p, n in listing.items()
               if L.is_data_path(p) and p not in known and p.rsplit("/", 1)[0] + "/" in prefixes}
    if unknown:
        if len(unknown) >= 20:
            log(f"reading the record ids of {len(unknown)} file(s) on {remote.key} that the ledger does not know")
        read: dict[str, list[str] | None] = {}
        paths = sorted(unknown)
        with _progress_bar(len(paths), "checking the remote", progress and len(paths) >= 20) as bar:
            for i in range(0, len(paths), 50):  # remembered in batches: an interrupted read is not redone
                part = remote.read_record_ids({p: unknown[p] for p in paths[i:i + 50]})
                ledger.record_files(remote.key, part)
                read.update(part)
                bar.update(len(paths[i:i + 50]))
        result.remote_files_read = len(read)
        wanted = {r["record_id"] for r in records}
        return wanted & {rid for ids in read.values() for rid in ids or ()}
    return set()  # every file in those partitions is known: their ids were in the ledger already


def push(remote: Remote, store: LocalStore | None = None, *, private: bool = False, dry_run: bool = False,
         contributor: Any = KEEP, progress: bool = True, rows_per_file: int = L.ROWS_PER_FILE,
         log: Callable[[str], None] = lambda s: None) -> PushResult:
    """Publish the local records that are not yet on ``remote`` (see the module docstring)."""
    store = store or LocalStore()
    ledger = Ledger(store.root)
    result = PushResult(remote=remote.key, dry_run=dry_run)
    with ledger.lock(remote.key):
        listing: dict[str, int] | None = None
        if not dry_run:
            remote.ensure(private=private)
            pending = ledger.pending(remote.key)
            if pending:
                # A previous push died after planning: trust only what the remote really has.
                listing = remote.list_files()
                landed = [p for p in pending if p in listing]
                ledger.confirm(remote.key, {p: pending[p] for p in landed},
                               drop=[p for p in pending if p not in listing])
                result.recovered_records = sum(len(pending[p]) for p in landed)
                log(f"resumed an interrupted push: {len(landed)} of {len(pending)} file(s) had landed")
        pushed = ledger.pushed_ids(remote.key)
        records = _read_candidates(store, pushed, progress, result)
        if records:
            if listing is None:
                listing = _listing(remote, dry_run, log)
            there = _on_remote(remote, ledger, listing, records, progress, result, log)
            if there:
                records = [r for r in records if r["record_id"] not in there]
                result.already_on_remote_records = len(there)
        if contributor is not KEEP:
            records = [{**r, "contributor": contributor} for r in records]
        records = _scrub_for_push(records, result, log)
        plan = L.plan_files(records, rows_per_file)
        result.new_records = sum(len(ids) for _, ids in plan.values())
        result.files = {p: len(ids) for p, (_, ids) in plan.items()}
        if dry_run or not plan:
            return result
        assert listing is not None
        landed = {p: ids for p, (_, ids) in plan.items() if p in listing}
        if landed:  # identical files already there (another push of the same records raced us)
            ledger.confirm(remote.key, landed)
            result.already_on_remote = len(landed)
        to_send = {p: v for p, v in plan.items() if p not in listing}
        if not to_send:
            result.new_records = 0
            return result
        files = {p: data for p, (data, _) in to_send.items()}
        if L.CARD_PATH not in listing:
            name = getattr(remote, "repo_id", None) or Path(str(getattr(remote, "root", "records"))).name
            files[L.CARD_PATH] = L.card(name).encode()
        n = sum(len(ids) for _, ids in to_send.values())
        ledger.begin(remote.key, {p: ids for p, (_, ids) in to_send.items()})
        result.commit = remote.commit(files, f"xlog push: {n} record(s) in {len(to_send)} file(s)")
        ledger.confirm(remote.key, {p: ids for p, (_, ids) in to_send.items()})
        result.uploaded_files = len(to_send)
        result.uploaded_records = result.new_records = n
    return result


def _listing(remote: Remote, dry_run: bool, log: Callable[[str], None]) -> dict[str, int]:
    """The remote's files; a dry run treats a remote that does not exist yet as empty."""
    try:
        return remote.list_files()
    except RemoteNotFoundError:
        if not dry_run:
            raise
        return {}
    except RemoteError as exc:
        if not dry_run:
            raise
        log(f"could not check what {remote.key} holds ({exc}); counting every local record not in the ledger")
        return {}


def mirror_dir(store: LocalStore, remote: Remote) -> Path:
    return store.root / REMOTES_DIR / remote.slug


def _load_state(mirror: Path) -> dict:
    try:
        return json.loads((mirror / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"quarantined": {}}


def _save_state(mirror: Path, state: dict) -> None:
    tmp = mirror / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, mirror / STATE_FILE)


def _check_file(path: Path, remote_path: str) -> int:
    """Verify a downloaded data file; returns its number of rows or raises ValueError."""
    import hashlib
    want = L.content_hash(remote_path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if want and not h.hexdigest().startswith(want):
        raise ValueError(f"content hash {h.hexdigest()[:32]} does not match the name (corrupt or tampered)")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise ValueError(f"not a readable Parquet file ({type(exc).__name__}: {exc})") from exc
    problems = L.validate_for_read(table)
    if problems:
        raise ValueError("schema violations: " + _some(problems))
    # This machine's user and host names say nothing about a file written elsewhere: the check
    # is for what identifies anyone (paths, e-mail addresses, URLs, tokens).
    leaks = table_leaks(table, identity=False)
    if leaks:
        raise ValueError("private data: " + _some(leaks))
    return table.num_rows


def _some(problems: list[str], n: int = 10) -> str:
    return "; ".join(problems[:n]) + (f" (+{len(problems) - n} more)" if len(problems) > n else "")


def pull(remote: Remote, store: LocalStore | None = None, *, progress: bool = True,
         log: Callable[[str], None] = lambda s: None) -> PullResult:
    """Mirror the remote's data files that are not here yet (see the module docstring)."""
    store = store or LocalStore()
    mirror = mirror_dir(store, remote)
    result = PullResult(remote=remote.key, mirror=mirror)
    with Ledger(store.root).lock("pull-" + remote.key):
        listing = remote.list_files()
        state = _load_state(mirror)
        state["remote"] = remote.key
        try:  # the mirror must be writable before anything is downloaded
            mirror.mkdir(parents=True, exist_ok=True)
            _save_state(mirror, state)
        except OSError as exc:
            raise StoreNotWritableError(f"cannot write the mirror {mirror}: {exc.strerror or exc}; the store root "
                                        f"{store.root} must be writable: use --home or XLOG_HOME to choose another "
                                        "one") from exc
        quarantined: dict[str, str] = state.setdefault("quarantined", {})
        wanted = sorted(p for p in listing if L.is_data_path(p))
        todo = [p for p in wanted if p not in quarantined and not (mirror / p).is_file()]
        result.up_to_date_files = len(wanted) - len(todo)
        incoming = mirror / ".incoming"
        from tqdm.auto import tqdm
        for p in tqdm(todo, desc="pulling", unit="file", disable=not progress or len(todo) < 20, leave=False):
            staged = incoming / p
            staged.parent.mkdir(parents=True, exist_ok=True)
            remote.fetch(p, staged)
            try:
                rows = _check_file(staged, p)
            except ValueError as exc:
                reason = f"pulled from {remote.key}/{p}: {exc}"
                store.quarantine(staged, reason)
                quarantined[p] = str(exc)
                result.quarantined.append((p, str(exc)))
                _save_state(mirror, state)
                continue
            dest = mirror / p
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, dest)
            result.new_files += 1
            result.new_records += rows
        if L.CARD_PATH in listing:
            try:
                staged = incoming / L.CARD_PATH
                remote.fetch(L.CARD_PATH, staged)
                os.replace(staged, mirror / L.CARD_PATH)
            except RemoteError as exc:
                log(f"dataset card not mirrored: {exc}")
        shutil.rmtree(incoming, ignore_errors=True)
        state["last_pull"] = datetime.now(timezone.utc).isoformat()
        _save_state(mirror, state)
    return result
