"""The ledger of pushed records: which record ids are on which remote, and pushes in flight.

It lives in ``$XLOG_HOME/ledger.sqlite``. A push first records its plan as *pending*
(remote file path -> record ids), then commits, then moves the ids to *pushed* in one SQLite
transaction. A push that dies between the commit and the ledger update leaves a pending entry;
the next push asks the remote which of those files exist and marks only their records pushed,
so nothing is ever marked pushed that is not on the remote, and nothing is uploaded twice.

The ledger is a cache of what the remote holds, never the only copy of that knowledge: a push
lists the remote's files and reads the record ids of the data files it does not know yet
(``known_files`` / ``record_files``), so a lost ledger is rebuilt from the remote. A corrupt
ledger is moved aside (``ledger.sqlite.corrupt-<UTC time>``) with a ``LedgerRecoveredWarning``
and a new one is started. A store root where the ledger or its lock files cannot be written
raises ``StoreNotWritableError``.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

from .errors import LedgerError, StoreNotWritableError

LEDGER_FILE = "ledger.sqlite"
LOCK_DIR = ".locks"
T = TypeVar("T")
log = logging.getLogger("xlog")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pushed (
    remote TEXT NOT NULL, record_id TEXT NOT NULL, path TEXT NOT NULL, pushed_at TEXT NOT NULL,
    PRIMARY KEY (remote, record_id));
CREATE TABLE IF NOT EXISTS pending (
    remote TEXT NOT NULL, path TEXT NOT NULL, record_ids TEXT NOT NULL, started_at TEXT NOT NULL,
    PRIMARY KEY (remote, path));
CREATE TABLE IF NOT EXISTS remote_files (
    remote TEXT NOT NULL, path TEXT NOT NULL, n_records INTEGER NOT NULL, seen_at TEXT NOT NULL,
    PRIMARY KEY (remote, path));
"""
# SQLite's own words for a file that is not (or no longer) a usable database.
_CORRUPT = ("file is not a database", "malformed", "corrupt", "not a database")
# ... and for a database it cannot open or write (a read-only or full disk, a folder in the way).
_UNWRITABLE = ("unable to open database", "readonly database", "read-only", "disk i/o error",
               "database or disk is full")


class LedgerRecoveredWarning(UserWarning):
    """The ledger was corrupt: it was moved aside and a new one started (rebuilt from the remote)."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _not_writable(path: Path, root: Path, exc: BaseException) -> StoreNotWritableError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, NotADirectoryError):
        reason = "a file is in the way where a folder should be"
    elif path.is_dir() and path.suffix:
        reason = "a folder is in the way"
    return StoreNotWritableError(
        f"cannot write {path}: {reason}. xlog keeps its ledger and locks in the store root {root}, which must be "
        "a writable folder: use --home or XLOG_HOME to choose another one")


class Ledger:
    """Pushed-record bookkeeping for one store root."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / LEDGER_FILE

    # --- opening, recovery ------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _not_writable(self.root, self.root, exc) from exc
        # Several processes may share one home: SQLite serialises writers, the timeout waits for them.
        con = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        try:
            con.executescript(_SCHEMA)
            if con.execute("PRAGMA user_version").fetchone()[0] < 1:
                # Ledgers written before remote_files existed: the files they pushed are known files.
                con.execute("BEGIN IMMEDIATE")
                try:
                    con.execute("INSERT OR IGNORE INTO remote_files SELECT remote, path, count(*), max(pushed_at) "
                                "FROM pushed GROUP BY remote, path")
                    con.execute("PRAGMA user_version = 1")
                    con.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        con.execute("ROLLBACK")
                    raise
        except BaseException:
            con.close()
            raise
        return con

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on an open ledger; a corrupt ledger is set aside once and ``fn`` re-run on a new one."""
        for attempt in range(2):
            con = None
            try:
                con = self._connect()
                return fn(con)
            except sqlite3.OperationalError as exc:  # locked, unopenable, read-only, disk full
                text = str(exc).lower()
                if any(s in text for s in _UNWRITABLE):
                    raise _not_writable(self.path, self.root, exc) from exc
                if any(s in text for s in _CORRUPT) and attempt == 0:
                    self._set_aside(exc)
                    continue
                raise LedgerError(f"the ledger {self.path} cannot be used: {exc}") from exc
            except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed": corrupt
                if attempt == 0:
                    self._set_aside(exc)
                    continue
                raise LedgerError(f"the ledger {self.path} is still unusable after it was rebuilt: {exc}") from exc
            finally:
                if con is not None:
                    con.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _set_aside(self, exc: BaseException) -> None:
        """Move a corrupt ledger (and its journal files) aside, under the ledger lock."""
        with self._lock_file("ledger-recovery"):
            try:
                con = sqlite3.connect(self.path, timeout=5)
                try:
                    if con.execute("PRAGMA quick_check").fetchall() == [("ok",)]:
                        return  # another process already replaced it with a working ledger
                finally:
                    con.close()
            except sqlite3.DatabaseError:
                pass
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
            dest = self.path.with_name(f"{LEDGER_FILE}.corrupt-{stamp}")
            try:
                for suffix in ("", "-journal", "-wal", "-shm"):
                    src = Path(str(self.path) + suffix)
                    if src.exists():
                        os.replace(src, str(dest) + suffix)
            except OSError as err:
                raise _not_writable(self.path, self.root, err) from err
        msg = (f"xlog: the ledger {self.path} was corrupt ({exc}); moved it to {dest.name} and started a new one. "
               "Pushes rebuild it from the files on the remote: nothing is uploaded twice")
        warnings.warn(msg, LedgerRecoveredWarning, stacklevel=4)
        log.warning(msg)

    @contextlib.contextmanager
    def _lock_file(self, name: str) -> Iterator[None]:
        d = self.root / LOCK_DIR
        path = d / f"{name}.lock"
        try:
            d.mkdir(parents=True, exist_ok=True)
            f = open(path, "a")
        except OSError as exc:
            raise _not_writable(path, self.root, exc) from exc
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def lock(self, remote_key: str) -> Iterator[None]:
        """Exclusive per-(home, remote) lock: two pushes from one home never plan the same records."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in remote_key)[-120:]
        with self._lock_file(f"push-{safe}"):
            yield

    # --- queries ------------------------------------------------------------------------
    def pushed_ids(self, remote_key: str) -> set[str]:
        """The record ids known to be on the remote (pushed from here, or read from its files)."""
        return self._run(lambda con: {r[0] for r in con.execute(
            "SELECT record_id FROM pushed WHERE remote = ?", (remote_key,))})

    def count(self, remote_key: str) -> int:
        return self._run(lambda con: con.execute(
            "SELECT count(*) FROM pushed WHERE remote = ?", (remote_key,)).fetchone()[0])

    def known_files(self, remote_key: str) -> set[str]:
        """Remote data files whose record ids are all in the ledger (or known to be unreadable)."""
        return self._run(lambda con: {r[0] for r in con.execute(
            "SELECT path FROM remote_files WHERE remote = ?", (remote_key,))})

    def ids_in_files(self, remote_key: str, paths: Iterable[str]) -> dict[str, list[str]]:
        """The record ids the ledger holds for each of ``paths`` (those it knows)."""
        paths = list(paths)

        def query(con: sqlite3.Connection) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for i in range(0, len(paths), 500):
                chunk = paths[i:i + 500]
                marks = ",".join("?" * len(chunk))
                for path, rid in con.execute(f"SELECT path, record_id FROM pushed WHERE remote = ? AND path IN ({marks})",
                                             (remote_key, *chunk)):
                    out.setdefault(path, []).append(rid)
            return out
        return self._run(query)

    def forget_files(self, remote_key: str, paths: Iterable[str]) -> None:
        """Forget remote files and the record ids pushed in them (a pull request closed without
        merging took them away): the next push sends those records again."""
        rows = [(remote_key, p) for p in paths]
        self._run(lambda con: self._transaction(con, [
            ("DELETE FROM pushed WHERE remote = ? AND path = ?", rows),
            ("DELETE FROM remote_files WHERE remote = ? AND path = ?", rows),
        ]))

    def pending(self, remote_key: str) -> dict[str, list[str]]:
        return self._run(lambda con: {p: json.loads(ids) for p, ids in con.execute(
            "SELECT path, record_ids FROM pending WHERE remote = ?", (remote_key,))})

    # --- updates ------------------------------------------------------------------------
    @staticmethod
    def _transaction(con: sqlite3.Connection, statements: list[tuple[str, list[tuple]]]) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            for sql, rows in statements:
                con.executemany(sql, rows)
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise

    def begin(self, remote_key: str, plan: Mapping[str, Iterable[str]]) -> None:
        """Record the files a push is about to commit (before anything is sent)."""
        rows = [(remote_key, p, json.dumps(sorted(ids)), _now()) for p, ids in plan.items()]
        self._run(lambda con: self._transaction(con, [("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)", rows)]))

    def confirm(self, remote_key: str, landed: Mapping[str, Iterable[str]], drop: Iterable[str] = ()) -> None:
        """Mark the records of files that are on the remote as pushed and forget those pending
        entries (plus the ``drop`` paths, which are known not to have landed), atomically."""
        now = _now()
        landed = {p: list(ids) for p, ids in landed.items()}
        drop = list(drop)
        self._run(lambda con: self._transaction(con, [
            ("INSERT OR IGNORE INTO pushed VALUES (?, ?, ?, ?)",
             [(remote_key, rid, p, now) for p, ids in landed.items() for rid in ids]),
            ("INSERT OR REPLACE INTO remote_files VALUES (?, ?, ?, ?)",
             [(remote_key, p, len(ids), now) for p, ids in landed.items()]),
            ("DELETE FROM pending WHERE remote = ? AND path = ?", [(remote_key, p) for p in [*landed, *drop]]),
        ]))

    def record_files(self, remote_key: str, files: Mapping[str, Iterable[str] | None]) -> None:
        """Remember remote data files read by a push (path -> record ids, None if unreadable):
        their ids count as on the remote, and the files are not read again."""
        now = _now()
        files = {p: (None if ids is None else list(ids)) for p, ids in files.items()}
        self._run(lambda con: self._transaction(con, [
            ("INSERT OR IGNORE INTO pushed VALUES (?, ?, ?, ?)",
             [(remote_key, rid, p, now) for p, ids in files.items() for rid in ids or ()]),
            ("INSERT OR REPLACE INTO remote_files VALUES (?, ?, ?, ?)",
             [(remote_key, p, -1 if ids is None else len(ids), now) for p, ids in files.items()]),
        ]))


__all__ = ["Ledger", "LedgerRecoveredWarning", "LEDGER_FILE"]
