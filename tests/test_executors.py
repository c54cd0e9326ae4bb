"""Parallel and distributed evaluations with real processes: a local worker pool, a real local
Ray cluster, submitit's local executor (the slurm executor's code path), and a driver killed
with two candidates in flight then resumed."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from xlog.store import LocalStore
from xsearch.runner import own_records, run_search

REPO = Path(__file__).resolve().parent.parent
SMS = REPO / "examples" / "data" / "sms_spam_600.parquet"
TINY = Path(__file__).parent / "data" / "tiny_space.yaml"


def _search(tmp_path: Path, **kw):
    opts = dict(data=str(SMS), space_path=str(TINY), out_dir=str(tmp_path / "out"), store_root=str(tmp_path / "home"),
                seed=2, max_train=120, max_eval=60, energy=False)
    opts.update(kw)
    return run_search(**opts)


def _once(result, home: Path) -> list[dict]:
    """The search's records: exactly one per evaluation, none twice."""
    recs = own_records(LocalStore(home), result.search_id)
    ids = [r["record_id"] for r in recs]
    assert len(ids) == len(set(ids))
    assert set(ids) == {e.outcome.record_id for e in result.evaluations}
    return recs


def test_two_local_workers_run_candidates_at_once(tmp_path):
    result, paths = _search(tmp_path, budget_s=60.0, workers=2, max_evals=4, max_candidate_s=20.0)
    assert result.workers == 2 and len(result.evaluations) >= 3
    assert result.used_s <= 60.0  # the wall budget is wall time
    assert result.compute_s > 0
    recs = _once(result, tmp_path / "home")
    spans = sorted((r["created_at"], r["ended_at"]) for r in recs if r.get("ended_at"))
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "no two candidates ran at the same time"
    keys = [e.outcome.key for e in result.evaluations]
    assert len(keys) == len(set(keys))  # no two slots ran the same configuration
    assert json.loads(paths["summary"].read_text())["evaluations"] == len(result.evaluations)


def test_gpu_slots_give_each_worker_its_own_gpus():
    from xsearch.executors.local import gpu_slots
    assert gpu_slots(2, None, ["0", "1", "2", "3"]) == ["0", "1"]
    assert gpu_slots(2, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert gpu_slots(3, 0, ["0"]) == ["", "", ""]  # 0: candidates see no GPU
    assert gpu_slots(2, None, []) == [None, None]  # a CPU machine: environment untouched
    with pytest.raises(ValueError, match="need 4 GPUs"):
        gpu_slots(2, 2, ["0", "1"])
    with pytest.raises(ValueError, match="no GPU"):
        gpu_slots(1, 1, [])


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, object_store_memory=100 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_writes_each_record_once_into_the_drivers_store(ray_cluster, tmp_path):
    result, _ = _search(tmp_path, budget_s=150.0, workers=2, max_evals=3, max_candidate_s=40.0, executor="ray")
    assert len(result.evaluations) == 3
    recs = _once(result, tmp_path / "home")
    assert all(r["status"] in ("completed", "failed", "oom", "timeout") for r in recs)
    assert all(r["task_name"] == "sms_spam_600" and r["search_id"] == result.search_id for r in recs)


def _kill_first_ray_task(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first Ray worker process that runs a candidate of this test's cluster (its
    processes descend from this process; another cluster on the machine is left alone)."""
    import psutil
    me = psutil.Process(os.getpid())
    while not stop.is_set() and not killed:
        for p in me.children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if cmd.startswith("ray::_run_remote"):
                time.sleep(1.0)  # let it start its candidate
                try:
                    os.kill(p.pid, signal.SIGKILL)
                    killed.append(p.pid)
                except ProcessLookupError:
                    continue
                return
        time.sleep(0.2)


def test_a_killed_ray_worker_is_a_recorded_failure_and_the_search_goes_on(ray_cluster, tmp_path):
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_ray_task, args=(stop, killed), daemon=True)
    killer.start()
    try:
        result, _ = _search(tmp_path, budget_s=150.0, workers=1, max_evals=2, max_candidate_s=40.0, executor="ray")
    finally:
        stop.set()
        killer.join(timeout=5)
    assert killed, "no Ray task process was found to kill"
    lost = [e.outcome for e in result.evaluations if e.outcome.status == "failed"
            and "Executor" in str(_record(tmp_path, e.outcome.record_id).get("error_type"))]
    assert len(lost) == 1  # the killed candidate: recorded, once
    assert len(result.evaluations) == 2  # and the search went on
    _once(result, tmp_path / "home")


def _record(tmp_path: Path, record_id: str | None) -> dict:
    return next(r for r in LocalStore(tmp_path / "home").records() if r["record_id"] == record_id)


def test_slurm_executor_runs_a_candidate_through_submitit(tmp_path):
    pytest.importorskip("submitit")
    result, _ = _search(tmp_path, budget_s=150.0, max_evals=1, max_candidate_s=60.0, executor="slurm")
    assert len(result.evaluations) == 1
    recs = _once(result, tmp_path / "home")
    assert recs[0]["status"] in ("completed", "failed", "oom", "timeout")
    logs = list((tmp_path / "out" / "runs" / result.search_id / "submitit").glob("*_log.out"))
    assert logs, "submitit's job folder has no log: the candidate did not run as a submitit job"
    # Resuming with one executor option keeps the other as recorded (nothing left to run here:
    # max_evals is reached, so the resume only settles its options).
    man = tmp_path / "home" / "searches" / f"{result.search_id}.json"
    again, _ = _search(tmp_path, resume=result.search_id, workers=2, cpus_per_candidate=2.0)
    assert len(again.evaluations) == 1 and again.workers == 2
    assert json.loads(man.read_text())["options"]["executor"]["name"] == "slurm"  # not reset to local
    _search(tmp_path, resume=result.search_id, cpus_per_candidate=1.0)  # the default value, given
    assert json.loads(man.read_text())["options"]["executor"]["cpus_per_candidate"] == 1.0  # given: not the recorded 2
    _search(tmp_path, resume=result.search_id, executor="local", exclude_sources=["pr:7"])
    recorded = json.loads(man.read_text())["options"]
    assert recorded["executor"]["name"] == "local" and recorded["executor"]["workers"] == 2  # not reset to 1
    assert recorded["exclude_sources"] == ["pr:7"]  # given on resume: replaces the recorded (none)
    _search(tmp_path, resume=result.search_id)
    assert json.loads(man.read_text())["options"]["exclude_sources"] == ["pr:7"]  # not given: as recorded


def test_sigterm_to_the_driver_cancels_its_slurm_jobs(tmp_path):
    """``kill`` (or ``scancel``) of the driver cancels its SLURM jobs before it dies: they would
    otherwise run on, unseen (submitit's local executor stands in for SLURM: cancel = SIGINT)."""
    pytest.importorskip("submitit")
    import subprocess
    import sys

    import psutil
    out = tmp_path / "out"
    env = dict(os.environ, XLOG_HOME=str(tmp_path / "home"),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.Popen([sys.executable, "-m", "xsearch.cli", "run", "--data", str(SMS), "--space", str(TINY),
                             "--out", str(out), "--no-energy", "--plain", "--executor", "slurm", "--budget", "150s",
                             "--max-train", "120", "--max-candidate-time", "60s", "--seed", "2"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def jobs() -> list[int]:
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
            except psutil.Error:
                continue
            if "submitit" in cmd and str(out) in cmd:
                found.append(p.info["pid"])
        return found
    try:
        deadline = time.monotonic() + 90
        while not jobs() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert jobs(), "the search submitted no job"
        time.sleep(1.0)  # the job is running its candidate (a tiny one takes several seconds)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM  # it still ends as a SIGTERM'd process does
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 20
    while jobs() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not jobs(), "a job of the dead driver is still running"
    folder = next((out / "runs").glob("*/submitit"))
    assert list(folder.glob("*_submitted.pkl")) and not list(folder.glob("*_result.pkl"))  # cancelled, not finished


def test_missing_engine_names_its_extra(tmp_path, monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ray(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == "ray" or name.startswith("ray.")):
            raise ImportError("No module named 'ray'")
        return real(name, globals, locals, fromlist, level)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    from xsearch.errors import MissingExtraError
    with pytest.raises(MissingExtraError, match=r"xlog-xsearch\[ray\]"):
        _search(tmp_path, budget_s=30.0, executor="ray")


def test_killing_the_driver_with_two_candidates_in_flight_then_resume(tmp_path):
    from searchproc import kill_after, resume_and_check
    home, out = tmp_path / "home", tmp_path / "out"
    # Two finished, and (with two slots) the next two in flight when the driver is killed.
    man = kill_after(home, out, ["--budget", "150s", "--max-train", "120", "--seed", "4", "--workers", "2",
                                 "--max-candidate-time", "30s"], settle_s=1.5)
    resume_and_check(home, out, man)
    assert json.loads((home / "searches" / f"{man['search_id']}.json").read_text())["options"]["executor"]["workers"] == 2
