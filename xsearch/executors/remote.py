"""One candidate on a machine that need not share a disk with the driver (a Ray task, a SLURM
job): the task's data arrives as bytes, the candidate runs in its own process under its time
limit with a private store, and its experience record goes back as Parquet bytes, which the
driver writes into its store (``base.import_record_bytes``)."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

TASK_FILES = ("train.parquet", "eval.parquet", "labels.json")


def task_files(task_dir: Path) -> dict[str, bytes]:
    """The files of a saved task (``TaskData.save``) as bytes, to send to workers."""
    return {name: (Path(task_dir) / name).read_bytes() for name in TASK_FILES if (Path(task_dir) / name).is_file()}


def run_candidate(job: Mapping[str, Any], files: Mapping[str, bytes], timeout_s: float, grace_s: float = 5.0,
                  defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run ``job`` (``evaluator.candidate_job``) in a subprocess here; returns ``{"record":
    Parquet bytes, "wall_s", "exit_code", "host_pid"}``. A process that dies without a record gets
    a stand-in record (timeout / oom / failed), as with the local executor."""
    import pyarrow.parquet as pq

    from xlog import schema as S
    from xlog.store import LocalStore

    from ..evaluator import died_record, find_record
    with tempfile.TemporaryDirectory(prefix="xsearch-candidate-") as tmp:
        root = Path(tmp)
        data = root / "task"
        data.mkdir()
        for name, blob in files.items():
            (data / Path(name).name).write_bytes(blob)
        store = LocalStore(root / "home")
        full = dict(job, data_dir=str(data), store=str(store.root), output_dir=str(root / "trainer"),
                    result_path=str(root / "result.json"), parent_pid=os.getpid())
        job_path, log_path = root / "job.json", root / "worker.log"
        import json
        job_path.write_text(json.dumps(full), encoding="utf-8")
        here = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", XLOG_HOME=str(store.root),
                   PYTHONPATH=os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p))
        env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
        started = datetime.now(timezone.utc)
        t0 = time.monotonic()
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen([sys.executable, "-m", "xsearch.worker", str(job_path), str(log_path)],
                                    stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            timed_out = False
            try:
                code = proc.wait(timeout=max(timeout_s, 0.0))
            except subprocess.TimeoutExpired:
                timed_out = True
                proc.send_signal(signal.SIGTERM)  # the worker records a timeout (XLOG_SIGTERM_STATUS)
                try:
                    code = proc.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
        wall = time.monotonic() - t0
        rec = find_record(store, str(job["record_id"]))
        if rec is None:
            rec = died_record(str(job["record_id"]), job["config"], timed_out, code, log_path, started, wall,
                              timeout_s, job.get("search_id"), {**(defaults or {}), "task_name": job.get("task_name")},
                              bool(job.get("memory_limit_bytes")))
        buf = io.BytesIO()
        pq.write_table(S.records_to_table([rec]), buf)
        return {"record": buf.getvalue(), "wall_s": wall, "exit_code": code, "host_pid": os.getpid()}
