"""Push local records to a remote and pull (mirror) a remote into the local store root.

Push: validate the records not yet in the ledger, then plan from what the remote holds: list
its files and read the record ids of the data files in the records' partitions that the ledger
does not know yet (only the ``record_id`` column; each file once, remembered in the ledger), so
a record already on the remote is never sent again, whether the ledger was lost, corrupt, or
another home pushed the same record. Scrub private data from the copies to publish
(``privacy.scrub_record``; local files are never modified), encode the remaining records into
content-addressed files (see ``layout``), record the plan as pending, send everything in ONE
commit, then mark the records pushed. ``PushResult`` says what was sent and what was already there.

Pull: download the data files the mirror lacks, first committed first (``Remote.file_origins``:
the position of the commit in the remote's history, else its date; never the file's name), check
each one as a reader must (``xlog.intake.check_file``: size, the hash in its name, rows, schema,
bounds, string lengths, privacy, duplicate ids, and conflicts with the records already accepted),
and move what stands into ``$XLOG_HOME/remotes/<slug>/`` atomically. A record is its id *and* its
content: a later copy of an accepted id with other content is a conflict, refused and reported
with both files named; an identical copy is the same record. Refused rows (a whole file when
nothing of it stands) go to the store's quarantine folder (``LocalStore.quarantine``) with the
reason, are remembered, never loaded, never fatal. The mirror keeps, per file, where it came from
(``.xlog-pull.json``: commit, date, pull request, order of arrival) and which records it holds
(``.xlog-index.arrow``: id and content hash), which ``xsearch.db`` reads for provenance and
deduplication; a file the remote no longer holds leaves the mirror.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa
import pyarrow.feather as feather

from .. import schema as S
from ..errors import StoreNotWritableError
from ..intake import FileCheck, Limits, check_file, copy_rows
from ..ledger import Ledger
from ..privacy import scrub_record
from ..store import BadRecordFile, LocalStore, read_and_validate
from . import Remote, RemoteError, RemoteNotFoundError
from . import layout as L
from .directory import NotARegularFile

REMOTES_DIR = "remotes"
STATE_FILE = ".xlog-pull.json"
INDEX_FILE = ".xlog-index.arrow"  # Arrow IPC: record_id and content hash of every accepted row, per file
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
    # Your pull requests closed without merging: PR number -> your records in them that are not on
    # the remote (sent again by ``resend_closed``; then in ``resent_records`` too).
    closed_unmerged: dict[int, int] = field(default_factory=dict)
    resent_records: int = 0
    invalid: list[str] = field(default_factory=list)  # quarantined local files
    scrubbed: list[str] = field(default_factory=list)  # "record <id>: <field>: ..." scrubbed in the pushed copy
    commit: str | None = None
    dry_run: bool = False


@dataclass
class PullResult:
    remote: str
    mirror: Path
    new_files: int = 0
    new_records: int = 0  # distinct records the new files add to the mirror
    up_to_date_files: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): files or rows refused
    refused_records: int = 0  # rows refused (whole files included)
    conflicts: int = 0  # rows refused because another copy of their id, with other content, stands
    removed_files: int = 0  # files the remote no longer holds, removed from the mirror
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): not regular files, never read


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
         resend_closed: bool = False, log: Callable[[str], None] = lambda s: None) -> PushResult:
    """Publish the local records that are not yet on ``remote`` (see the module docstring).

    On a Hub dataset, records this user pushed through a pull request that a maintainer closed
    without merging are not on the remote: the push says so (``closed_unmerged``) and, with
    ``resend_closed``, sends them again (in a new pull request)."""
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
        closed = _closed_unmerged(remote, ledger, log)
        for num, ids_by_file in closed.items():
            ids = {rid for rids in ids_by_file.values() for rid in rids}
            result.closed_unmerged[num] = len(ids)
            if resend_closed:
                pushed -= ids
                result.resent_records += len(ids)
                if not dry_run:
                    ledger.forget_files(remote.key, ids_by_file)
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


def _closed_unmerged(remote: Remote, ledger: Ledger, log: Callable[[str], None]) -> dict[int, dict[str, list[str]]]:
    """For each of this user's push PRs closed without merging: its data files that the ledger
    counts as pushed but main does not hold -> their record ids (Hub remotes only)."""
    finder = getattr(remote, "closed_push_prs", None)
    if finder is None:
        return {}
    try:
        prs = finder()
        if not prs:
            return {}
        there = set(remote.list_files_at("main"))
        mine = remote.my_open_pr()  # a file sent again sits in the open PR under the same name
        if mine is not None:
            there |= set(remote.list_files_at(mine.ref))
        out: dict[int, dict[str, list[str]]] = {}
        for pr in prs:
            ids = ledger.ids_in_files(remote.key, [p for p in remote.list_files_at(pr.ref) if p not in there])
            if ids:
                out[pr.num] = ids
        return out
    except RemoteError as exc:  # never a reason to fail a push: what it sends is planned from main
        log(f"could not check your closed pull requests on {remote.key} ({exc})")
        return {}


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
        state = json.loads((mirror / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        state = {}
    state.setdefault("quarantined", {})
    state.setdefault("files", {})
    state.setdefault("next_seq", 1 + max((int(f.get("seq", 0)) for f in state["files"].values()), default=0))
    return state


def _save_state(mirror: Path, state: dict) -> None:
    tmp = mirror / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, mirror / STATE_FILE)


class _Index:
    """The mirror's index: which record (id, content hash) each accepted file holds. Pull checks new
    files against it (conflicts) and ``xsearch.db`` reads it (the hashes, for deduplication)."""

    def __init__(self, mirror: Path):
        self.path = mirror / INDEX_FILE
        self.files: list[str] = []
        self.ids: list[str] = []
        self.hashes: list[str] = []
        try:
            t = feather.read_table(self.path, columns=["file", "record_id", "content_hash"])
            self.files, self.ids, self.hashes = (t.column(c).to_pylist() for c in ("file", "record_id", "content_hash"))
        except (OSError, pa.ArrowException, KeyError):
            pass  # none yet (or unreadable): rebuilt from the files the state lists, see pull
        self.seen: dict[str, str] = {}
        self.where: dict[str, str] = {}
        self._build()

    def _build(self) -> None:
        self.seen, self.where = {}, {}
        for f, rid, h in zip(self.files, self.ids, self.hashes):
            self.seen.setdefault(rid, h)
            self.where.setdefault(rid, f)

    def add(self, file: str, entries: list[dict]) -> None:
        for e in entries:
            self.files.append(file)
            self.ids.append(e["record_id"])
            self.hashes.append(e["content_hash"])
            self.seen.setdefault(e["record_id"], e["content_hash"])
            self.where.setdefault(e["record_id"], file)

    def drop(self, files: set[str]) -> None:
        keep = [i for i, f in enumerate(self.files) if f not in files]
        self.files, self.ids, self.hashes = ([xs[i] for i in keep] for xs in (self.files, self.ids, self.hashes))
        self._build()

    def save(self) -> None:
        table = pa.table({"file": pa.array(self.files, pa.string()), "record_id": pa.array(self.ids, pa.string()),
                          "content_hash": pa.array(self.hashes, pa.string())})
        tmp = self.path.with_name(self.path.name + ".tmp")
        feather.write_feather(table, tmp, compression="zstd")
        os.replace(tmp, self.path)


@dataclass
class MirrorInfo:
    """What a mirror knows about its files, for readers (``xsearch.db``): the remote it mirrors,
    per data file where it came from (``commit``, ``date``, ``pr``, ``seq``: order of arrival, first
    committed first) and the index (an Arrow table of ``file``, ``record_id``, ``content_hash``)."""
    remote: str
    files: dict[str, dict]
    index: pa.Table


def read_mirror(mirror: Path) -> MirrorInfo:
    """The provenance and index of a mirror folder (empty for a mirror written by an older xlog)."""
    state = _load_state(mirror)
    try:
        index = feather.read_table(mirror / INDEX_FILE, columns=["file", "record_id", "content_hash"])
    except (OSError, pa.ArrowException, KeyError):
        index = pa.table({"file": pa.array([], pa.string()), "record_id": pa.array([], pa.string()),
                          "content_hash": pa.array([], pa.string())})
    return MirrorInfo(remote=str(state.get("remote") or mirror.name), files=state["files"], index=index)


def _some(problems: list[str], n: int = 10) -> str:
    return "; ".join(problems[:n]) + (f" (+{len(problems) - n} more)" if len(problems) > n else "")


def _commit_positions(remote: Remote) -> dict[str, int]:
    """commit id -> its position in the remote's history (0 = oldest), where the remote can say;
    dates alone cannot order two commits made in the same second."""
    api, repo_id = getattr(remote, "api", None), getattr(remote, "repo_id", None)
    if api is None or repo_id is None:
        return {}
    try:
        commits = api.list_repo_commits(repo_id, repo_type="dataset")  # newest first
    except Exception:  # an older server without the endpoint: dates then the order of arrival decide
        return {}
    return {c.commit_id: len(commits) - 1 - i for i, c in enumerate(commits)}


def _origins(remote: Remote, paths: list[str], log: Callable[[str], None]) -> dict[str, dict]:
    """Where each new file came from (commit, date, PR), where the remote knows (``Remote.file_origins``)."""
    get = getattr(remote, "file_origins", None)
    if get is None or not paths:
        return {}
    try:
        origins = dict(get(paths) or {})
    except RemoteError as exc:
        log(f"could not learn where the new files of {remote.key} come from ({exc}); they are ordered by arrival")
        return {}
    if any(o.get("commit") for o in origins.values()):
        positions = _commit_positions(remote)
        for o in origins.values():
            if o.get("commit") in positions:
                o["position"] = positions[o["commit"]]
    return origins


def _order(paths: list[str], origins: Mapping[str, dict]) -> list[str]:
    """First committed first: by position in the remote's history, else commit date (a directory
    remote: when the file was put in place), files the remote says nothing about last. Never by
    name alone: a path that sorts first (``data/v1/0000-00/...``) gains nothing."""
    def key(p: str) -> tuple:
        o = origins.get(p) or {}
        pos = o.get("position")
        return (pos is None, pos if pos is not None else 0, o.get("date") is None, str(o.get("date") or ""), p)
    return sorted(paths, key=key)


def _fetch(remote: Remote, path: str, dest: Path, limits: Limits) -> None:
    from .directory import DirectoryRemote
    if isinstance(remote, DirectoryRemote):
        remote.fetch(path, dest, max_bytes=limits.max_bytes + 1)  # one byte over: check_file says "too big"
    else:
        remote.fetch(path, dest)


def _quarantine_rows(store: LocalStore, staged: Path, rows: list[int], mirror: Path, p: str, reason: str,
                     limits: Limits) -> None:
    """Set the refused rows of a file aside in the store's quarantine folder (with the reason)."""
    aside = mirror / ".incoming" / "refused" / p
    copy_rows(staged, rows, aside, limits=limits, keep_dictionaries=True)
    store.quarantine(aside, reason)


def pull(remote: Remote, store: LocalStore | None = None, *, progress: bool = True,
         log: Callable[[str], None] = lambda s: None, limits: Limits = Limits()) -> PullResult:
    """Mirror the remote's data files that are not here yet (see the module docstring)."""
    store = store or LocalStore()
    mirror = mirror_dir(store, remote)
    result = PullResult(remote=remote.key, mirror=mirror)
    with Ledger(store.root).lock("pull-" + remote.key):
        listing = remote.list_files()
        for p, why in sorted((getattr(remote, "skipped", None) or {}).items()):
            result.skipped.append((p, why))
            log(f"skipped {p} on {remote.key}: {why}")
        state = _load_state(mirror)
        state["remote"] = remote.key
        try:  # the mirror must be writable before anything is downloaded
            mirror.mkdir(parents=True, exist_ok=True)
            _save_state(mirror, state)
        except OSError as exc:
            raise StoreNotWritableError(f"cannot write the mirror {mirror}: {exc.strerror or exc}; the store root "
                                        f"{store.root} must be writable: use --home or XLOG_HOME to choose another "
                                        "one") from exc
        quarantined: dict[str, str] = state["quarantined"]
        files: dict[str, dict] = state["files"]
        index = _Index(mirror)
        wanted = [p for p in listing if L.is_data_path(p)]
        # A file the remote no longer holds (removed by its maintainer, or compacted) leaves the mirror.
        gone = {p for p in files if p not in listing}
        if gone:
            for p in gone:
                (mirror / p).unlink(missing_ok=True)
                files.pop(p, None)
            index.drop(gone)
            result.removed_files = len(gone)
            log(f"removed {len(gone)} file(s) that {remote.key} no longer holds from the mirror")
        # A file here that the state does not list (a mirror from an older xlog, or a pull that died) is
        # checked again like a new one, from the copy here.
        todo = [p for p in wanted if p not in quarantined and (p not in files or not (mirror / p).is_file())]
        result.up_to_date_files = len(wanted) - len(todo)
        origins = _origins(remote, todo, log)
        incoming = mirror / ".incoming"
        from tqdm.auto import tqdm
        for p in tqdm(_order(todo, origins), desc="pulling", unit="file", disable=not progress or len(todo) < 20,
                      leave=False):
            staged = incoming / p
            staged.parent.mkdir(parents=True, exist_ok=True)
            if listing[p] > limits.max_bytes:  # said by the listing: not even downloaded
                check = FileCheck(path=p, problems=[f"{listing[p]} bytes, more than the reader's limit of "
                                                    f"{limits.max_bytes} per file"])
            else:
                if (mirror / p).is_file():
                    os.replace(mirror / p, staged)
                else:
                    try:
                        _fetch(remote, p, staged, limits)
                    except NotARegularFile as exc:
                        result.skipped.append((p, str(exc)))
                        log(f"skipped {p} on {remote.key}: {exc}")
                        continue
                check = check_file(staged, p, limits=limits, seen=index.seen, origin=index.where)
            origin = origins.get(p) or {}
            where = f"{remote.key}/{p}" + (f" (commit {str(origin['commit'])[:12]})" if origin.get("commit") else "") \
                + (f" (pull request #{origin['pr']})" if origin.get("pr") else "")
            if check.problems or (check.quarantined and not check.accepted):  # nothing of it stands
                reason = check.summary()
                if staged.exists():
                    store.quarantine(staged, f"pulled from {where}: {reason}")
                quarantined[p] = reason
                result.quarantined.append((p, reason))
                result.refused_records += check.n_rows
                result.conflicts += sum("conflict:" in r for _, r in check.quarantined)
                _save_state(mirror, state)
                continue
            dest = mirror / p
            dest.parent.mkdir(parents=True, exist_ok=True)
            if check.quarantined:  # keep the rows that stand; set the others aside with the reason
                reason = check.summary()
                _quarantine_rows(store, staged, check.refused_rows, mirror, p, f"rows of {where}: {reason}", limits)
                copy_rows(staged, [e["row"] for e in check.accepted], incoming / ".kept.parquet", limits=limits)
                os.replace(incoming / ".kept.parquet", dest)
                staged.unlink()
                result.quarantined.append((p, reason))
                result.refused_records += len(check.quarantined)
                result.conflicts += sum("conflict:" in r for _, r in check.quarantined)
            else:
                os.replace(staged, dest)
            files[p] = {"seq": state["next_seq"], "seen": datetime.now(timezone.utc).isoformat(),
                        "commit": origin.get("commit"), "date": origin.get("date"), "pr": origin.get("pr"),
                        "rows": check.n_rows, "accepted": len(check.accepted), "refused": len(check.quarantined)}
            state["next_seq"] += 1
            index.add(p, check.accepted)
            result.new_files += 1
            result.new_records += check.new_records
            if result.new_files % 50 == 0:  # an interrupted pull keeps what it checked
                index.save()
                _save_state(mirror, state)
        if L.CARD_PATH in listing:
            try:
                staged = incoming / L.CARD_PATH
                staged.parent.mkdir(parents=True, exist_ok=True)
                remote.fetch(L.CARD_PATH, staged)
                os.replace(staged, mirror / L.CARD_PATH)
            except RemoteError as exc:
                log(f"dataset card not mirrored: {exc}")
        shutil.rmtree(incoming, ignore_errors=True)
        index.save()
        state["last_pull"] = datetime.now(timezone.utc).isoformat()
        _save_state(mirror, state)
    return result
