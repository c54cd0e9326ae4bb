"""The subprocess evaluator: each candidate is a real fine-tuning in its own process, with a time
limit and a memory limit, so that a crash, an OOM or a hang ends that candidate, not the search.

Processes are forked from a fork server (``python -m xsearch.worker --serve``) that has already
imported torch/transformers: a candidate starts in well under a second instead of ~7 s of imports,
and the caller's ``__main__`` is never re-imported (unlike multiprocessing's spawn/forkserver). The outcome is read back from the candidate's record in
the store (the record id is chosen here and handed to the worker). At the time limit the process
gets SIGTERM with ``XLOG_SIGTERM_STATUS=timeout`` (so xlog records a timeout), then SIGKILL after a
grace period; a process that dies without a record gets a minimal schema-valid stand-in record
(status timeout / oom / failed, with its config) so that no experience is lost.
"""
from __future__ import annotations

import json
import logging
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Protocol

from xlog import __version__ as XLOG_VERSION
from xlog import schema as S
from xlog.privacy import scrub_text
from xlog.store import BadRecordFile, LocalStore, read_and_validate

from .space import SearchSpace, config_key
from .tasks import objective_of

log = logging.getLogger("xsearch.evaluator")
# "interrupted" runs may be run again; "pruned" ones were stopped on purpose (xsearch.curves).
FINISHED = ("completed", "failed", "oom", "timeout", "pruned")
_OOM_MARKERS = ("can't allocate memory", "cannot allocate memory", "out of memory", "memoryerror",
                "std::bad_alloc", "memory allocation of")


MAX_SILENT_DEATHS = 3


class EvaluatorError(RuntimeError):
    """The evaluator cannot run candidates at all (as opposed to a candidate failing)."""


@dataclass
class Outcome:
    """What one evaluation of a candidate gave."""

    config: dict[str, Any]
    status: str
    quality: float | None = None  # signed: the search maximises it (a loss is negated)
    metrics: dict[str, float] = field(default_factory=dict)
    runtime_s: float | None = None  # training + evaluation time the record logs
    wall_s: float = 0.0  # budget charged for this evaluation (wall clock, or logged time in replay)
    energy_kwh: float | None = None
    record_id: str | None = None
    error: str | None = None
    from_journal: bool = False
    trainable_params: float | None = None  # ft_trainable_params of the record (the params cost of a front)
    stopped_at: float | None = None  # pruned: the fraction of training done when it was stopped

    @property
    def key(self) -> str:
        return config_key(self.config)

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.quality is not None

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], config: Mapping[str, Any], wall_s: float | None = None,
                    objective: tuple[str, bool] | None = None) -> "Outcome":
        """The outcome a record tells. ``quality`` is the *signed* objective, which the search
        maximises: the objective metric when greater is better, its negation otherwise (a loss).
        ``objective`` = (metric, greater is better); by default the one of the record's task type
        (eval_f1 for classification and question answering, eval_loss for causal LM), else the
        record's own primary metric and direction."""
        metrics = rec.get("outcome_metrics") or {}
        if isinstance(metrics, list):
            metrics = dict(metrics)
        metric, greater = objective or objective_of(rec.get("task_type")) or ("eval_f1", True)
        # The kind's objective is the search's: a record whose primary metric is another one
        # (accuracy, say) is read through its objective metric when it logged it.
        if metric in metrics:
            q = metrics[metric]
        elif rec.get("outcome_primary_metric") in (None, metric):
            q = rec.get("outcome_primary_value")
        else:  # another metric only: it counts in its own direction
            q = rec.get("outcome_primary_value")
            greater = rec.get("outcome_greater_is_better")
            greater = (not str(rec.get("outcome_primary_metric")).endswith(("loss", "perplexity"))
                       if greater is None else bool(greater))
        runtime = rec.get("outcome_total_runtime_s") or rec.get("outcome_train_runtime_s")
        if wall_s is None:
            wall_s = float(runtime or 0.0)
        q = float(q) if q is not None and math.isfinite(float(q)) else None
        if q is not None and not greater:
            q = -q
        stopped = None
        if rec.get("status") == "pruned" and rec.get("outcome_steps_completed") is not None and rec.get("train_max_steps"):
            stopped = min(float(rec["outcome_steps_completed"]) / float(rec["train_max_steps"]), 1.0)
        return cls(dict(config), str(rec.get("status")), q, {k: float(v) for k, v in metrics.items() if v is not None},
                   float(runtime) if runtime is not None else None, float(wall_s),
                   float(rec["energy_kwh"]) if rec.get("energy_kwh") is not None else None,
                   rec.get("record_id"), rec.get("error_message"), stopped_at=stopped,
                   trainable_params=float(rec["ft_trainable_params"]) if rec.get("ft_trainable_params") is not None else None)


class Evaluator(Protocol):
    """Runs candidates. An evaluator that can stop a candidate early also takes the keyword
    ``early_stop`` (a ``xsearch.curves.StopSpec`` as a dict, or None) in ``evaluate``."""

    def evaluate(self, config: dict[str, Any], timeout_s: float) -> Outcome: ...

    def close(self) -> None: ...


def find_record(store: LocalStore, record_id: str) -> dict | None:
    """The record with this id (None if absent; a corrupt file is quarantined by the store)."""
    for path in store.records_dir.glob(f"*/{record_id}.parquet"):
        try:
            return S.table_to_records(read_and_validate(path))[0]
        except BadRecordFile as exc:
            store.quarantine(path, str(exc))
    return None


def stand_in_record(record_id: str, config: Mapping[str, Any], status: str, error_type: str, message: str,
                    started: datetime, wall_s: float, search_id: str | None,
                    defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A minimal schema-valid record for a candidate whose process died before writing one."""
    rec: dict[str, Any] = {name: None for name in S.field_names()}
    known = set(rec)
    rec.update({k: v for k, v in (defaults or {}).items() if k in known})
    rec.update({k: v for k, v in config.items() if k in known and v is not None})
    if rec.get("train_epochs") is not None:
        rec["train_epochs"] = float(rec["train_epochs"])
    for k in ("train_learning_rate", "train_warmup_ratio", "train_weight_decay", "peft_lora_alpha", "peft_lora_dropout"):
        if rec.get(k) is not None:
            rec[k] = float(rec[k])
    if config.get("ft_method") == "lora":
        rec["peft_type"] = "LORA"
    rec.update(record_id=record_id, schema_version=S.CURRENT_VERSION, created_at=started,
               ended_at=datetime.now(timezone.utc), xlog_version=XLOG_VERSION, source="xsearch",
               search_id=search_id, status=status, error_type=error_type,
               error_message=scrub_text(message)[:2000] if message else None,
               outcome_total_runtime_s=float(wall_s), energy_source="none")
    problems = S.validate_record(rec)
    for p in problems:  # drop whatever a default got wrong rather than lose the record
        rec[p.split(":", 1)[0]] = None
    return rec


def candidate_job(config: Mapping[str, Any], space: SearchSpace, record_id: str, *, search_id: str | None,
                  task_name: str | None, seed: int = 0, energy: bool = True, memory_limit_gb: float | None = None,
                  env: Mapping[str, str] | None = None, early_stop: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a worker needs to run one candidate, less where its files go (the caller adds
    ``data_dir``, ``store``, ``output_dir``, ``result_path`` and ``parent_pid``). ``early_stop``: a
    ``xsearch.curves.StopSpec`` as a dict (evaluations per epoch, and when to stop), or None
    (one evaluation per epoch, never stopped)."""
    method = str(config.get("ft_method"))
    return {"config": dict(config), "search_id": search_id, "task_name": task_name, "record_id": record_id,
            "task_type": space.task_type, "task_options": dict(space.task_options),
            "model_spec": space.model_spec(config["model_name"]), "method_spec": space.methods.get(method, {}),
            "seed": seed, "memory_limit_bytes": int(memory_limit_gb * 2**30) if memory_limit_gb else None,
            "energy": energy, "env": dict(env or {}), "early_stop": dict(early_stop) if early_stop else None}


def died_record(record_id: str, config: Mapping[str, Any], timed_out: bool, code: int | None, log_path: Path,
                started: datetime, wall_s: float, timeout_s: float, search_id: str | None,
                defaults: Mapping[str, Any], memory_limited: bool) -> dict[str, Any]:
    """The stand-in record of a candidate whose process ended without writing one: a timeout, an
    out-of-memory death (markers in its log, or SIGKILL under a memory limit), or a crash."""
    tail = _log_tail(log_path)
    if timed_out:
        status, etype, msg = "timeout", "Timeout", f"no record: killed at the time limit of {timeout_s:.0f} s"
    elif any(m in tail.lower() for m in _OOM_MARKERS) or (code == -signal.SIGKILL and memory_limited):
        status, etype, msg = "oom", "OutOfMemory", f"process died out of memory (exit {code}): {tail[-500:]}"
    else:
        status, etype = "failed", "ProcessDied"
        last = [ln for ln in tail.strip().splitlines() if ln.strip()]
        msg = f"process exited with code {code} before recording: {last[-1] if last else ''}"
    return stand_in_record(record_id, config, status, etype, msg, started, wall_s, search_id, defaults)


def _log_tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


class SubprocessEvaluator:
    """Runs candidates as real Trainer fine-tunings in isolated processes.

    Args:
        task_dir: directory with train.parquet / eval.parquet / labels.json (``TaskData.save``).
        space: the search space (model loading specs, other peft methods' arguments).
        store: the xlog store the records go to. search_id: set on every record.
        memory_limit_gb: cap per candidate (address space on CPU, GPU memory share on CUDA); None = no cap.
        grace_s: seconds between SIGTERM and SIGKILL at the time limit.
        record_defaults: task_*/hw_* fields for stand-in records of candidates that died early.
    """

    def __init__(self, task_dir: Path, space: SearchSpace, store: LocalStore, search_id: str,
                 task_name: str | None = None, memory_limit_gb: float | None = None, grace_s: float = 5.0,
                 energy: bool = True, seed: int = 0, work_dir: Path | None = None,
                 record_defaults: Mapping[str, Any] | None = None):
        # Absolute paths: the fork server runs in work_dir, so relative ones would point elsewhere.
        self.task_dir, self.space = Path(task_dir).resolve(), space
        self.store = LocalStore(Path(store.root).resolve())
        self.search_id, self.task_name = search_id, task_name
        self.memory_limit_gb, self.grace_s = memory_limit_gb, grace_s
        self.energy, self.seed = energy, seed
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir).resolve() if work_dir else Path(tempfile.mkdtemp(prefix="xsearch-"))
        self._died_without_log = 0
        self.record_defaults = dict(record_defaults or {})
        self._server: subprocess.Popen | None = None
        # Several candidates may run at once (xsearch.executors.local): one lock serialises
        # submissions, one condition tells each waiter when its process exits.
        self._lock = threading.RLock()
        self._cond = threading.Condition()
        self._pids: queue.Queue[int | None] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._dead = False
        self._n = 0

    def warm_up(self) -> None:
        """Start the fork server now (it imports torch/transformers once, ~7 s)."""
        with self._lock:
            if self._server is not None and self._server.poll() is None and not self._dead:
                return
            self.work_dir.mkdir(parents=True, exist_ok=True)
            # The worker must import this very xsearch (an editable checkout or not installed at all).
            root = str(Path(__file__).resolve().parent.parent)
            path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
            env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONPATH=path)
            self._server = subprocess.Popen([sys.executable, "-m", "xsearch.worker", "--serve"], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
                                            bufsize=1, cwd=str(self.work_dir))
            self._pids = queue.Queue()
            self._exits = {}
            self._dead = False
            ready = threading.Event()
            server = self._server

            def pump() -> None:
                # Routes the server's lines: "pid N" answers the one submission in progress (they
                # are serialised), "exit N CODE" wakes whoever waits for N (several may run at once).
                assert server.stdout is not None
                for line in server.stdout:
                    line = line.strip()
                    if line == "ready":
                        ready.set()
                    elif line.startswith("pid "):
                        self._pids.put(int(line.split()[1]))
                    elif line.startswith("exit "):
                        _, pid, code = line.split()
                        with self._cond:
                            self._exits[int(pid)] = int(code)
                            self._cond.notify_all()
                with self._cond:
                    self._dead = True
                    self._cond.notify_all()
                self._pids.put(None)
                ready.set()
            threading.Thread(target=pump, name="xsearch-forkserver-reader", daemon=True).start()
            if not ready.wait(timeout=300) or self._dead:
                raise EvaluatorError(self._died_message())

    def _died_message(self) -> str:
        return (f"the xsearch fork server ({sys.executable} -m xsearch.worker --serve) died; worker logs are "
                f"in {self.work_dir}")

    def _start(self, job_path: Path, log_path: Path) -> int:
        """Ask the fork server for one candidate process; its pid."""
        self.warm_up()  # its start-up is not this candidate's cost
        with self._lock:
            assert self._server is not None and self._server.stdin is not None
            self._server.stdin.write(f"run {job_path} {log_path}\n")
            self._server.stdin.flush()
            try:
                pid = self._pids.get(timeout=60)
            except queue.Empty:
                pid = None
        if pid is None:
            raise EvaluatorError(self._died_message())
        return pid

    def _wait_exit(self, pid: int, timeout: float | None) -> int | None:
        """The exit code of candidate ``pid`` (None if still running after ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while pid not in self._exits:
                if self._dead:
                    raise EvaluatorError(self._died_message())
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(timeout=left if left is not None else 1.0)
            return self._exits.pop(pid)

    def evaluate(self, config: dict[str, Any], timeout_s: float, *, task_dir: Path | None = None,
                 task_name: str | None = None, search_id: str | None = None,
                 record_defaults: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                 early_stop: Mapping[str, Any] | None = None) -> Outcome:
        """Run one candidate. The keyword arguments replace the evaluator's task and search for this
        call only: one fork server can serve many tasks (the meta-dataset harness does). ``env``:
        environment variables of the candidate's process (e.g. ``CUDA_VISIBLE_DEVICES``).
        ``early_stop``: a ``StopSpec`` dict (``xsearch.curves``): the worker evaluates several times
        per epoch and stops the candidate (status ``pruned``) when its curve cannot win. Safe to
        call from several threads at once."""
        task_dir = Path(task_dir).resolve() if task_dir is not None else self.task_dir
        task_name = task_name if task_name is not None else self.task_name
        search_id = search_id if search_id is not None else self.search_id
        defaults = dict(record_defaults) if record_defaults is not None else self.record_defaults
        with self._lock:
            self._n += 1
            n = self._n
        cand_dir = self.work_dir / f"candidate-{n:04d}"
        cand_dir.mkdir(parents=True, exist_ok=True)
        record_id = S.new_record_id()
        job = candidate_job(config, self.space, record_id, search_id=search_id, task_name=task_name,
                            seed=self.seed, energy=self.energy, memory_limit_gb=self.memory_limit_gb, env=env,
                            early_stop=early_stop)
        job.update(data_dir=str(task_dir), store=str(self.store.root), output_dir=str(cand_dir / "trainer"),
                   result_path=str(cand_dir / "result.json"), parent_pid=os.getpid())
        job_path, log_path = cand_dir / "job.json", cand_dir / "worker.log"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        started = datetime.now(timezone.utc)
        pid = self._start(job_path, log_path)
        t0 = time.monotonic()
        code = self._wait_exit(pid, max(timeout_s, 0.0))
        timed_out = code is None
        if timed_out:
            log.info("candidate %s reached its time limit (%.0f s): SIGTERM", n, timeout_s)
            _signal(pid, signal.SIGTERM)
            code = self._wait_exit(pid, self.grace_s)
            if code is None:
                log.info("candidate %s ignored SIGTERM for %.0f s: SIGKILL", n, self.grace_s)
                _signal(pid, signal.SIGKILL)
                code = self._wait_exit(pid, None)
        wall = time.monotonic() - t0
        rec = find_record(self.store, record_id)
        if rec is None and not timed_out and not log_path.is_file():
            # The candidate died before it could even open its log: the evaluator itself is
            # broken (not this configuration), so nothing is recorded as experience.
            with self._lock:
                self._died_without_log += 1
                dead = self._died_without_log
            if dead >= MAX_SILENT_DEATHS:
                raise EvaluatorError(f"{MAX_SILENT_DEATHS} candidates in a row died before starting (exit {code}); "
                                     f"nothing was recorded for them. Check {self.work_dir} and the worker set-up.")
            return Outcome(config=dict(config), status="failed", wall_s=wall, error=f"worker exited with {code}")
        self._died_without_log = 0
        if rec is None:
            rec = died_record(record_id, config, timed_out, code, log_path, started, wall, timeout_s, search_id,
                              {**defaults, "task_name": task_name}, bool(self.memory_limit_gb))
            self.store.write(rec)
        return Outcome.from_record(rec, config, wall_s=wall)

    def close(self) -> None:
        if self._server is not None:
            if self._server.stdin is not None:
                self._server.stdin.close()  # the server exits when its input closes
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._server.kill()
            self._server = None
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def _signal(pid: int | None, sig: int) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
