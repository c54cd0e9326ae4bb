"""What every executor shares: its settings, and a pool of slot threads that each run one
candidate at a time through a blocking call of the engine (a fork of the local server, a Ray task,
a SLURM job) and hand finished outcomes to ``wait``."""
from __future__ import annotations

import itertools
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from typing import Any, Mapping

from xlog import schema as S
from xlog.store import LocalStore

from ..evaluator import Outcome, find_record, stand_in_record
from ..space import Config

log = logging.getLogger("xsearch.executors")


@dataclass(frozen=True)
class ExecutorSettings:
    """Resources per candidate and where candidates run (the manifest stores ``to_dict``)."""

    workers: int = 1  # candidates in flight at once
    gpus_per_candidate: float | None = None  # None: 1 when this machine (or cluster) has GPUs, else 0
    cpus_per_candidate: float = 1.0
    memory_gb: float | None = None  # per candidate: the evaluator's cap locally, a reservation on Ray/SLURM
    grace_s: float = 5.0  # between SIGTERM and SIGKILL at a candidate's time limit
    ray_address: str | None = None  # None: start a local Ray cluster for the run; "auto"; "ray://host:port"
    slurm_partition: str | None = None
    slurm_folder: str | None = None  # submitit's log folder (default: under the search's output)
    slurm_cluster: str | None = None  # None: SLURM when available, else submitit's local executor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> "ExecutorSettings":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (doc or {}).items() if k in known})


class SlotExecutor:
    """``slots`` threads; ``_run(config, timeout_s, slot) -> Outcome`` is the engine's blocking call.
    An exception of the engine becomes a recorded failure of that candidate (``_failed``), never a
    crashed search."""

    def __init__(self, slots: int, store: LocalStore, search_id: str | None, task_name: str | None,
                 record_defaults: Mapping[str, Any] | None = None):
        self.slots = max(int(slots), 1)
        self.store, self.search_id, self.task_name = store, search_id, task_name
        self.record_defaults = dict(record_defaults or {})
        self._pool = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="xsearch-slot")
        self._free = queue.Queue()
        for i in range(self.slots):
            self._free.put(i)
        self._done: queue.Queue[tuple[int, Outcome]] = queue.Queue()
        self._tickets = itertools.count(1)
        self._in_flight: dict[int, Config] = {}
        self._lock = threading.Lock()

    def submit(self, config: Config, timeout_s: float, early_stop: Mapping[str, Any] | None = None) -> int:
        """Start one candidate; ``early_stop``: its ``xsearch.curves.StopSpec`` dict, if any."""
        slot = self._free.get_nowait()  # the runner never submits more than ``slots``
        ticket = next(self._tickets)
        with self._lock:
            self._in_flight[ticket] = dict(config)
        self._pool.submit(self._slot_main, ticket, dict(config), timeout_s, slot, early_stop)
        return ticket

    def _slot_main(self, ticket: int, config: Config, timeout_s: float, slot: int,
                   early_stop: Mapping[str, Any] | None = None) -> None:
        started = datetime.now(timezone.utc)
        try:
            out = self._run(config, timeout_s, slot, early_stop)
        except Exception as exc:  # the engine lost the candidate: a recorded failure
            log.warning("candidate %s was lost by the executor (%s: %s)", ticket, type(exc).__name__, exc)
            out = self._failed(config, started, exc)
        finally:
            self._free.put(slot)
        with self._lock:
            self._in_flight.pop(ticket, None)
        self._done.put((ticket, out))

    def _run(self, config: Config, timeout_s: float, slot: int,
             early_stop: Mapping[str, Any] | None = None) -> Outcome:
        raise NotImplementedError

    def _failed(self, config: Config, started: datetime, exc: BaseException) -> Outcome:
        """A stand-in record for a candidate whose engine failed (worker node died, task killed)."""
        oom = "memory" in f"{type(exc).__name__} {exc}".lower()
        status, etype = ("oom", "OutOfMemory") if oom else ("failed", "ExecutorError")
        wall = (datetime.now(timezone.utc) - started).total_seconds()
        rec = stand_in_record(S.new_record_id(), config, status, etype,
                              f"{type(exc).__name__}: {exc}"[:1500], started, wall, self.search_id,
                              {**self.record_defaults, "task_name": self.task_name})
        self.store.write(rec)
        return Outcome.from_record(rec, config, wall_s=wall)

    def wait(self, timeout: float | None = None) -> list[tuple[int, Outcome]]:
        out: list[tuple[int, Outcome]] = []
        try:
            out.append(self._done.get(timeout=timeout))
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def cancel(self, ticket: int) -> None:
        """Best effort; the candidate's outcome still arrives through ``wait``."""
        return None

    def cancel_in_flight(self) -> None:
        """Stop the candidates running elsewhere (Ray tasks, SLURM jobs) without waiting: the
        driver is going away. Local candidates need nothing: they watch the driver and record
        themselves as interrupted when it is gone."""
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def import_record_bytes(store: LocalStore, data: bytes) -> dict[str, Any]:
    """Write a record that travelled as Parquet bytes into the driver's store, exactly once (a
    record id already there is not written again); returns the record."""
    import io

    import pyarrow.parquet as pq
    recs = S.table_to_records(pq.read_table(io.BytesIO(data)))
    if len(recs) != 1:
        raise ValueError(f"a candidate's result holds {len(recs)} records, expected 1")
    rec = recs[0]
    if find_record(store, str(rec["record_id"])) is None:
        store.write(rec)
    return rec
