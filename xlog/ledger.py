"""The ledger of pushed records: which record ids are on which remote, and pushes in flight.

It lives in ``$XLOG_HOME/ledger.sqlite``. A push first records its plan as *pending*
(remote file path -> record ids), then commits, then moves the ids to *pushed* in one SQLite
transaction. A push that dies between the commit and the ledger update leaves a pending entry;
the next push asks the remote which of those files exist and marks only their records pushed,
so nothing is ever marked pushed that is not on the remote, and nothing is uploaded twice.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping

LEDGER_FILE = "ledger.sqlite"
LOCK_DIR = ".locks"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pushed (
    remote TEXT NOT NULL, record_id TEXT NOT NULL, path TEXT NOT NULL, pushed_at TEXT NOT NULL,
    PRIMARY KEY (remote, record_id));
CREATE TABLE IF NOT EXISTS pending (
    remote TEXT NOT NULL, path TEXT NOT NULL, record_ids TEXT NOT NULL, started_at TEXT NOT NULL,
    PRIMARY KEY (remote, path));
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Ledger:
    """Pushed-record bookkeeping for one store root."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.path = self.root / LEDGER_FILE

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.root.mkdir(parents=True, exist_ok=True)
        # Several processes may share one home: SQLite serialises writers, the timeout waits for them.
        con = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        try:
            con.executescript(_SCHEMA)
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def lock(self, remote_key: str) -> Iterator[None]:
        """Exclusive per-(home, remote) lock: two pushes from one home never plan the same records."""
        d = self.root / LOCK_DIR
        d.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in remote_key)[-120:]
        with open(d / f"push-{safe}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def pushed_ids(self, remote_key: str) -> set[str]:
        with self._db() as con:
            return {r[0] for r in con.execute("SELECT record_id FROM pushed WHERE remote = ?", (remote_key,))}

    def count(self, remote_key: str) -> int:
        with self._db() as con:
            return con.execute("SELECT count(*) FROM pushed WHERE remote = ?", (remote_key,)).fetchone()[0]

    def begin(self, remote_key: str, plan: Mapping[str, Iterable[str]]) -> None:
        """Record the files a push is about to commit (before anything is sent)."""
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)",
                            [(remote_key, p, json.dumps(sorted(ids)), _now()) for p, ids in plan.items()])
            con.execute("COMMIT")

    def pending(self, remote_key: str) -> dict[str, list[str]]:
        with self._db() as con:
            return {p: json.loads(ids) for p, ids in
                    con.execute("SELECT path, record_ids FROM pending WHERE remote = ?", (remote_key,))}

    def confirm(self, remote_key: str, landed: Mapping[str, Iterable[str]], drop: Iterable[str] = ()) -> None:
        """Mark the records of files that are on the remote as pushed and forget those pending
        entries (plus the ``drop`` paths, which are known not to have landed), atomically."""
        now = _now()
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT OR IGNORE INTO pushed VALUES (?, ?, ?, ?)",
                            [(remote_key, rid, p, now) for p, ids in landed.items() for rid in ids])
            con.executemany("DELETE FROM pending WHERE remote = ? AND path = ?",
                            [(remote_key, p) for p in [*landed, *drop]])
            con.execute("COMMIT")
