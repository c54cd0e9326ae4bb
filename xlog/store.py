"""The local experience store: a directory of Parquet files, one record per captured run.

Layout under the root (``$XLOG_HOME``, default ``~/.cache/xlog``)::

    records/YYYY-MM/<record_id>.parquet   captured and imported runs (one row per file)
    provisional/<record_id>.json          runs in progress: the record as known so far, with the owning
                                          process (pid, start time, boot id); never read by queries,
                                          ``ls``, push or the SQL views, which read ``records/`` only
    quarantine/...                        files that failed to parse or validate, with a .reason.txt
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from . import schema as S
from .failure import DIVERGED
from .privacy import scrub_record

log = logging.getLogger("xlog")

RECORDS_DIR = "records"
QUARANTINE_DIR = "quarantine"
PROVISIONAL_DIR = "provisional"
KILLED_ERROR_TYPE = "Killed"
KILLED_MESSAGE = ("the process ended without closing its record (SIGKILL, e.g. the out-of-memory killer, "
                  "or a crash)")


class QuarantineWarning(UserWarning):
    """A store file could not be read or validated and was moved to the quarantine folder."""


def default_root() -> Path:
    """``$XLOG_HOME`` if set, else ``$XDG_CACHE_HOME/xlog`` or ``~/.cache/xlog``."""
    env = os.environ.get("XLOG_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "xlog"


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see either nothing or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Dot-prefixed temporary name in the same directory: readers skip it, and os.replace
    # within one file system is atomic.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write a Parquet file atomically (see ``write_atomic``)."""
    return write_atomic(path, lambda f: pq.write_table(table, f, compression="zstd"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def iter_parquet_files(directory: Path) -> Iterator[Path]:
    """Parquet files below a directory, skipping temporary (dot-prefixed) files."""
    if not directory.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".parquet") and not name.startswith("."):
                yield Path(dirpath) / name


class BadRecordFile(Exception):
    """This file (not the environment) is at fault: unreadable Parquet or an invalid record."""


# Errors that say the *file* is bad. Anything else (an ImportError from a broken install, a
# MemoryError, a bug) propagates: quarantining on it would move every good record aside.
_FILE_ERRORS = (pa.ArrowException, OSError, ValueError, TypeError, KeyError)


def read_and_validate(path: Path) -> pa.Table:
    """Read a Parquet file and validate it. Raises ``BadRecordFile`` when the file is at fault,
    ``FileNotFoundError`` when it vanished, and any other error unchanged."""
    S.fields()  # a schema that cannot load is the environment's fault: fail before touching files
    try:
        table = pq.read_table(path)
        problems = S.validate_table(table)
    except FileNotFoundError:
        raise
    except _FILE_ERRORS as exc:
        raise BadRecordFile(f"{type(exc).__name__}: {exc}") from exc
    if problems:
        raise BadRecordFile(str(S.ValidationError(problems, where=str(path.name))))
    return table


class LocalStore:
    """A directory of experience records."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()

    @property
    def records_dir(self) -> Path:
        return self.root / RECORDS_DIR

    @property
    def quarantine_dir(self) -> Path:
        return self.root / QUARANTINE_DIR

    @property
    def provisional_dir(self) -> Path:
        return self.root / PROVISIONAL_DIR

    def path_for(self, rec: Mapping[str, Any]) -> Path:
        created = rec.get("created_at")
        if isinstance(created, str):
            created = datetime.fromisoformat(created.replace("Z", "+00:00"))
        created = created or datetime.now(timezone.utc)
        return self.records_dir / created.strftime("%Y-%m") / f"{rec['record_id']}.parquet"

    def write(self, rec: Mapping[str, Any]) -> Path:
        """Scrub private data from a record's strings (with a warning naming each field), validate
        it (schema, bounds, string lengths) and write it atomically as its own Parquet file."""
        S.check_record(rec)  # scrubbing never makes an invalid record (say a 10 MB name) valid
        rec, scrubbed = scrub_record(rec)
        for line in scrubbed:
            log.warning("xlog: record %s: %s; scrubbed before it was stored", rec.get("record_id", "?"), line)
        if scrubbed:
            S.check_record(rec)
        table = S.records_to_table([rec], int(rec["schema_version"]))
        return write_parquet_atomic(table, self.path_for(rec))

    def exists(self, record_id: str) -> bool:
        return any(self.records_dir.glob(f"*/{record_id}.parquet"))

    def files(self) -> list[Path]:
        return list(iter_parquet_files(self.records_dir))

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move a bad file out of the way, keeping it and the reason (never deleting it)."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            rel = Path(path.name)
        dest = self.quarantine_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            dest = dest.with_name(f"{dest.stem}.{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}{dest.suffix}")
        shutil.move(str(path), dest)
        dest.with_name(dest.name + ".reason.txt").write_text(reason + "\n", encoding="utf-8")
        msg = f"xlog: quarantined {rel} -> {dest.relative_to(self.root)}: {reason}"
        warnings.warn(msg, QuarantineWarning, stacklevel=2)
        log.warning(msg)
        return dest

    def load_tables(self, directory: Path | None = None) -> list[pa.Table]:
        """Read every valid file; corrupt or invalid ones are quarantined with a warning."""
        tables = []
        for path in iter_parquet_files(directory or self.records_dir):
            try:
                tables.append(read_and_validate(path))
            except FileNotFoundError:
                continue  # removed by a concurrent process between listing and reading
            except BadRecordFile as exc:  # keep the file, out of the way, and skip it
                self.quarantine(path, str(exc))
        return tables

    def records(self) -> list[dict]:
        """All valid records, oldest first."""
        rows: list[dict] = []
        for t in self.load_tables():
            rows.extend(S.table_to_records(t))
        rows.sort(key=lambda r: (r.get("created_at") or datetime.min.replace(tzinfo=timezone.utc)))
        return rows

    def get(self, record_id: str) -> dict | None:
        """One record by id (a unique prefix of the id is accepted)."""
        matches = [p for p in iter_parquet_files(self.records_dir) if p.stem.startswith(record_id)]
        if len(matches) > 1:
            raise KeyError(f"record id prefix {record_id!r} is ambiguous ({len(matches)} records)")
        if not matches:
            return None
        try:
            table = read_and_validate(matches[0])
        except BadRecordFile as exc:
            self.quarantine(matches[0], str(exc))
            return None
        return S.table_to_records(table)[0]

    def write_many(self, records: Iterable[Mapping[str, Any]]) -> list[Path]:
        return [self.write(r) for r in records]

    # ---- provisional records: the life cycle of a run survives SIGKILL ----------------------------
    def write_provisional(self, rec: Mapping[str, Any], elapsed_s: float | None = None,
                          diverged: str | None = None) -> Path:
        """Open or update the provisional record of a run in progress, owned by this process.

        ``XLogCallback`` writes it at train begin (and at evaluations, at most every ``heartbeat_s`` at
        logging steps, and when the loss diverges), and removes it once the final record is written. If
        the process dies without closing it (SIGKILL, e.g. from the out-of-memory killer), the next
        ``close_orphans`` turns it into a record. It lives under ``provisional/``, which nothing that
        reads records (``records``, ``ls``, push, the DuckDB views) looks at.
        """
        import json
        doc = {"format": 1, **_process_identity(), "updated_at": datetime.now(timezone.utc).isoformat(),
               "elapsed_s": elapsed_s, "diverged": diverged,
               "record": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in rec.items()}}
        data = json.dumps(doc, default=str, separators=(",", ":")).encode()
        return write_bytes_atomic(self.provisional_dir / f"{rec['record_id']}.json", data)

    def discard_provisional(self, record_id: str) -> None:
        """Remove the provisional record of a run whose final record was written (or kept in quarantine)."""
        try:
            (self.provisional_dir / f"{record_id}.json").unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass  # never opened (a store that cannot be written) or already closed

    def close_orphans(self) -> list[str]:
        """Turn the provisional records of runs whose process is gone into records; returns their ids.

        A provisional record is an orphan when it was opened on this machine and its process is no
        longer running: the pid is not alive, is a zombie, or is alive but a different process (its
        start time differs: the pid was reused), or the machine has rebooted since (boot id). Provisional
        records of live processes, and of other machines sharing this store, are left alone. An orphan
        becomes a record with status ``interrupted`` and error type ``Killed`` (``KILLED_MESSAGE``), or
        ``failed``/``Diverged`` when its loss had already diverged, with whatever was known: features,
        configuration, the metrics of the last update, and the time elapsed up to it (``ended_at``).

        Cheap when there is nothing to do (one directory listing); safe when several commands run at
        once (the record is built only from the provisional file, so concurrent closers write the same
        file, and a run whose final record exists is never overwritten). Never raises for one bad file:
        an unreadable provisional file is quarantined, one that cannot be written (read-only store) is
        left for the next command. The ``xlog`` and ``xsearch`` commands call this when they start.
        """
        import json
        try:
            entries = sorted(e.path for e in os.scandir(self.provisional_dir)
                             if e.name.endswith(".json") and not e.name.startswith(".") and e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []
        closed: list[str] = []
        for name in entries:
            path = Path(name)
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                rec_in = doc["record"]
                record_id = str(rec_in["record_id"])
            except FileNotFoundError:
                continue  # closed by its run, or by a concurrent command, since the listing
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self._quarantine_provisional(path, f"unreadable provisional record ({type(exc).__name__}: {exc})")
                continue
            if _owner_state(doc) != "gone":
                continue
            if self.exists(record_id):  # closed normally; the process died before removing this file
                self.discard_provisional(record_id)
                continue
            rec = _orphan_record(doc)
            try:
                self.write(rec)
            except (S.ValidationError, ValueError, TypeError, pa.ArrowException) as exc:
                self._quarantine_provisional(path, f"{type(exc).__name__}: {exc}")
                continue
            except OSError as exc:
                log.warning("xlog: could not record the orphaned run %s (%s: %s); left in %s", record_id,
                            type(exc).__name__, exc, self.provisional_dir)
                continue
            self.discard_provisional(record_id)
            log.info("xlog: run %s ended without closing its record (killed?); recorded as %s (%s)",
                        record_id, rec["status"], rec["error_type"])
            closed.append(record_id)
        return closed

    def _quarantine_provisional(self, path: Path, reason: str) -> None:
        try:
            self.quarantine(path, reason)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("xlog: could not quarantine %s (%s): %s", path.name, exc, reason)


# ---- who owns a provisional record ------------------------------------------------------------------
_identity: dict[str, Any] = {}


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _boot_id() -> str | None:
    """Changes at every boot (Linux); else the boot time from psutil."""
    bid = _read("/proc/sys/kernel/random/boot_id")
    if bid:
        return bid
    try:
        import psutil
        return f"boot-time:{int(psutil.boot_time())}"
    except Exception:
        return None


def _process_state(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of a live process, None if there is no such process. The start time
    is the kernel's (clock ticks since boot, exact) on Linux, psutil's elsewhere."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is not None:
        rest = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and parentheses
        if len(rest) > 19:
            return rest[0], f"ticks:{rest[19]}"
    try:
        import psutil
        p = psutil.Process(pid)
        return ("Z" if p.status() == psutil.STATUS_ZOMBIE else "R"), f"time:{p.create_time():.0f}"
    except ImportError:
        return None if not _pid_exists(pid) else ("R", "")
    except Exception:
        return None


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True


def _machine() -> str:
    """An opaque key for this machine (host name and machine id, hashed: the file stays local anyway)."""
    import hashlib
    import socket
    mid = _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or ""
    return hashlib.sha256(f"{socket.gethostname()}\0{mid}".encode()).hexdigest()[:16]


def _process_identity() -> dict[str, Any]:
    """pid, process start time, boot id and machine of this process (computed once per process)."""
    pid = os.getpid()
    if _identity.get("pid") != pid:  # first call, or a forked child
        state = _process_state(pid)
        _identity.clear()
        _identity.update(pid=pid, process_start=state[1] if state else None, boot_id=_boot_id(), machine=_machine())
    return dict(_identity)


def _owner_state(doc: Mapping[str, Any]) -> str:
    """``alive``, ``gone`` or ``elsewhere`` (another machine sharing this store: not ours to judge)."""
    me = _process_identity()
    if doc.get("machine") != me["machine"]:
        return "elsewhere"
    if doc.get("boot_id") and me["boot_id"] and doc["boot_id"] != me["boot_id"]:
        return "gone"  # rebooted since
    try:
        pid = int(doc["pid"])
    except (KeyError, TypeError, ValueError):
        return "gone"
    state = _process_state(pid)
    if state is None or state[0] in ("Z", "X"):
        return "gone"
    if doc.get("process_start") and state[1] and state[1] != doc["process_start"]:
        return "gone"  # the pid now belongs to another process
    return "alive"


def _orphan_record(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The record of a run whose process died without closing it, from its provisional record only
    (so that concurrent closers build the same record)."""
    rec: dict[str, Any] = {name: None for name in S.field_names()}
    rec.update({k: v for k, v in doc["record"].items() if k in rec})
    for f in S.fields():
        if f.fmt == "date-time" and isinstance(rec.get(f.name), str):
            try:
                rec[f.name] = datetime.fromisoformat(rec[f.name].replace("Z", "+00:00"))
            except ValueError:
                rec[f.name] = None
    try:
        rec["ended_at"] = datetime.fromisoformat(str(doc["updated_at"]))
    except (KeyError, ValueError):
        rec["ended_at"] = None
    elapsed = S.finite_or_none(doc.get("elapsed_s"))
    if elapsed is not None and elapsed >= 0:
        rec["outcome_total_runtime_s"] = elapsed
        if rec.get("outcome_train_runtime_s") is None:
            rec["outcome_train_runtime_s"] = elapsed
    if doc.get("diverged"):
        rec.update(status="failed", error_type=DIVERGED,
                   error_message=f"{doc['diverged']}; then {KILLED_MESSAGE}"[:2000])
    else:
        rec.update(status="interrupted", error_type=KILLED_ERROR_TYPE, error_message=KILLED_MESSAGE)
    if rec.get("energy_source") is None:
        rec["energy_source"] = "none"  # the meter's reading died with the process
    return rec


# ---- local record files validated once (xsearch.db reads only these) ------------------------------
VALIDATED_FILE = "validated.json"


_fingerprint: list[str] = []  # computed once per process: the validator this process loaded


def _validator_fingerprint() -> str:
    """Changes whenever what ``read_and_validate`` accepts may change: the schema documents and the
    modules that check records (a cached verdict from another validator is not trusted)."""
    import hashlib
    from importlib import resources

    if _fingerprint:
        return _fingerprint[0]
    h = hashlib.sha256()
    schema_dir = resources.files("xlog.schema_files")
    for name in sorted(p.name for p in schema_dir.iterdir() if p.name.endswith(".json")):
        h.update(name.encode() + b"\0" + schema_dir.joinpath(name).read_bytes())
    here = Path(__file__).resolve().parent
    for module in ("schema.py", "store.py", "privacy.py"):
        if (here / module).is_file():
            h.update(module.encode() + b"\0" + (here / module).read_bytes())
    _fingerprint.append(h.hexdigest())
    return _fingerprint[0]


def validated_record_files(store: LocalStore) -> list[Path]:
    """The local record files that pass ``read_and_validate``, checking each file once.

    A file that fails is quarantined with the reason, exactly as ``LocalStore.load_tables`` (``xlog ls``,
    push) does, and left out. Valid files are remembered by identity (path inside the store, size,
    mtime_ns) in ``$XLOG_HOME/validated.json``, together with a fingerprint of the validator (schema
    documents and checking code), so the next call, in any process, validates only new or rewritten
    files, and a changed schema or validator validates everything again. That file is only a cache:
    when it is missing, corrupt or cannot be written (a read-only store), files are validated again;
    a bad file that cannot be moved (read-only store) is left out with a warning.
    """
    import json

    cache_path = store.root / VALIDATED_FILE
    fingerprint = _validator_fingerprint()
    known: dict[str, list[int]] = {}
    try:
        doc = json.loads(cache_path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and doc.get("validator") == fingerprint and isinstance(doc.get("files"), dict):
            known = doc["files"]
    except (OSError, ValueError):
        pass
    good: list[Path] = []
    now: dict[str, list[int]] = {}
    for path in iter_parquet_files(store.records_dir):
        try:
            st = path.stat()
            key, ident = path.relative_to(store.root).as_posix(), [st.st_size, st.st_mtime_ns]
            if known.get(key) != ident:
                read_and_validate(path)
        except FileNotFoundError:
            continue  # removed by a concurrent process between listing and reading
        except BadRecordFile as exc:
            try:
                store.quarantine(path, str(exc))
            except FileNotFoundError:
                pass  # a concurrent process moved it first
            except OSError as move_exc:
                msg = f"xlog: left out {path.name} (invalid: {exc}); it could not be quarantined: {move_exc}"
                warnings.warn(msg, QuarantineWarning, stacklevel=2)
                log.warning(msg)
            continue
        now[key] = ident
        good.append(path)
    if now != known:
        try:
            data = json.dumps({"validator": fingerprint, "files": now}, separators=(",", ":")).encode()
            write_bytes_atomic(cache_path, data)
        except OSError:
            pass  # a read-only store: validate again next time
    return good
