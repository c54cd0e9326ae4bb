"""The record life cycle survives SIGKILL: a provisional record is opened at train begin and closed
at the end; one left by a killed process is turned into a record by the next command."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from transformers import Trainer, TrainerCallback

import tiny
from xlog import LocalStore, XLogCallback
from xlog import schema as S
from xlog.store import KILLED_ERROR_TYPE, KILLED_MESSAGE

HERE = Path(__file__).resolve().parent


def _env(home: Path, **extra) -> dict:
    return dict(os.environ, XLOG_HOME=str(home), XLOG_ENERGY="0", HF_HUB_OFFLINE="1", **extra)


def _xlog_ls(home: Path) -> list[dict]:
    p = subprocess.run([sys.executable, "-m", "xlog.cli", "ls", "--json"], env=_env(home), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def _provisional(home: Path) -> list[dict]:
    out = []
    for f in sorted((home / "provisional").glob("*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (FileNotFoundError, ValueError):
            pass  # replaced between listing and reading
    return out


def test_sigkill_during_training_leaves_one_interrupted_record(tmp_path):
    home = tmp_path / "home"
    p = subprocess.Popen([sys.executable, str(HERE / "failing_run.py"), "wait", str(tmp_path)],
                         env=_env(home, FAILING_RUN_HEARTBEAT_S="0"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        # Wait until the provisional record holds the background features and a logged loss.
        deadline = time.monotonic() + 240
        while True:
            docs = _provisional(home)
            rec = docs[0]["record"] if docs else {}
            if rec.get("task_n_train") and rec.get("hw_cpu_cores") and (rec.get("outcome_steps_completed") or 0) >= 5:
                break
            if p.poll() is not None:
                pytest.fail(f"training exited early: {p.stdout.read()[-3000:]}")
            assert time.monotonic() < deadline, "no provisional record with features and a logged loss"
            time.sleep(0.2)
        assert docs[0]["pid"] == p.pid
        # A live run's provisional record is left alone, and invisible to ls and to SQL.
        assert _xlog_ls(home) == []
        q = subprocess.run([sys.executable, "-m", "xsearch.cli", "sql", "SELECT count(*) AS n FROM experiences",
                            "--json"], env=_env(home), capture_output=True, text=True, timeout=300)
        assert q.returncode == 0 and json.loads(q.stdout) == [{"n": 0}], q.stdout + q.stderr
        assert len(_provisional(home)) == 1

        p.kill()  # SIGKILL, as the kernel's out-of-memory killer sends: no handler runs
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -9
    assert LocalStore(home).files() == []  # nothing written by the dead process itself

    recs = _xlog_ls(home)  # the next command closes the orphan
    assert len(recs) == 1, recs
    r = recs[0]
    assert (r["status"], r["error_type"], r["error_message"]) == ("interrupted", KILLED_ERROR_TYPE, KILLED_MESSAGE)
    assert r["task_name"] == "fail" and r["task_n_train"] == 150 and r["model_type"] == "bert"
    assert r["train_learning_rate"] == 1e-3 and r["hw_cpu_cores"] >= 1
    assert r["outcome_steps_completed"] >= 5 and r["outcome_train_loss"] > 0
    assert r["outcome_total_runtime_s"] > 0 and r["ended_at"] >= r["created_at"]
    assert r["energy_source"] == "none"
    assert S.validate_record(LocalStore(home).records()[0]) == []
    assert _provisional(home) == []

    # A second command (xsearch this time) does not duplicate it.
    q = subprocess.run([sys.executable, "-m", "xsearch.cli", "sql",
                        "SELECT record_id, status, error_type FROM experiences", "--json"],
                       env=_env(home), capture_output=True, text=True, timeout=300)
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout) == [{"record_id": r["record_id"], "status": "interrupted", "error_type": "Killed"}]
    assert [x["record_id"] for x in _xlog_ls(home)] == [r["record_id"]]


# ---- close_orphans from Python: who owns a provisional record --------------------------------------
def _rec(**kw) -> dict:
    rec = {name: None for name in S.field_names()}
    rec.update(record_id=S.new_record_id(), schema_version=S.CURRENT_VERSION, created_at=datetime.now(timezone.utc),
               xlog_version="0.1.0", source="xlog", status="interrupted", task_name="t", model_type="bert",
               train_batch_size=8, outcome_steps_completed=12)
    rec.update(kw)
    return rec


def _edit(store: LocalStore, record_id: str, **changes) -> None:
    path = store.provisional_dir / f"{record_id}.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_provisional_record_of_a_live_process_is_left_alone(tmp_path):
    store = LocalStore(tmp_path)
    rec = _rec()
    store.write_provisional(rec, elapsed_s=3.0)
    assert store.close_orphans() == [] and store.records() == []
    assert (store.provisional_dir / f"{rec['record_id']}.json").is_file()


def test_reused_pid_is_an_orphan(tmp_path):
    # The pid is alive (this process) but started at another time: the run's process is gone.
    store = LocalStore(tmp_path)
    rec = _rec()
    store.write_provisional(rec, elapsed_s=42.0)
    _edit(store, rec["record_id"], process_start="ticks:1")
    assert store.close_orphans() == [rec["record_id"]]
    r = store.get(rec["record_id"])
    assert (r["status"], r["error_type"]) == ("interrupted", "Killed")
    assert r["outcome_total_runtime_s"] == 42.0 and r["outcome_steps_completed"] == 12 and r["train_batch_size"] == 8
    assert r["energy_source"] == "none" and r["ended_at"] is not None
    assert not any(store.provisional_dir.iterdir())
    assert store.close_orphans() == [] and len(store.records()) == 1


def test_dead_pid_orphan_and_other_machines(tmp_path):
    store = LocalStore(tmp_path)
    mine, theirs = _rec(), _rec()
    for rec in (mine, theirs):
        store.write_provisional(rec, elapsed_s=1.0)
        _edit(store, rec["record_id"], pid=_dead_pid())
    _edit(store, theirs["record_id"], machine="another-machine")  # a store shared with another host
    assert store.close_orphans() == [mine["record_id"]]
    assert (store.provisional_dir / f"{theirs['record_id']}.json").is_file()


def test_rebooted_machine_closes_orphans(tmp_path):
    store = LocalStore(tmp_path)
    rec = _rec()
    store.write_provisional(rec)
    _edit(store, rec["record_id"], boot_id="a-previous-boot")
    assert store.close_orphans() == [rec["record_id"]]


def test_orphan_whose_final_record_exists_is_only_removed(tmp_path):
    # Killed after writing its final record but before removing the provisional one.
    store = LocalStore(tmp_path)
    rec = _rec(status="completed")
    store.write(rec)
    store.write_provisional(rec)
    _edit(store, rec["record_id"], pid=_dead_pid())
    assert store.close_orphans() == []
    assert store.get(rec["record_id"])["status"] == "completed" and not any(store.provisional_dir.iterdir())


def test_diverged_then_killed_is_a_divergence(tmp_path):
    store = LocalStore(tmp_path)
    rec = _rec()
    store.write_provisional(rec, diverged="the training loss became nan at step 7")
    _edit(store, rec["record_id"], pid=_dead_pid())
    store.close_orphans()
    r = store.get(rec["record_id"])
    assert (r["status"], r["error_type"]) == ("failed", "Diverged")
    assert r["error_message"].startswith("the training loss became nan at step 7; then the process ended")


def test_unreadable_provisional_file_is_quarantined(tmp_path):
    store = LocalStore(tmp_path)
    store.provisional_dir.mkdir(parents=True)
    (store.provisional_dir / "junk.json").write_text("{not json")
    with pytest.warns(UserWarning, match="quarantined"):
        assert store.close_orphans() == []
    assert not (store.provisional_dir / "junk.json").exists()
    assert list(store.quarantine_dir.rglob("junk.json"))


# ---- the callback's side: opened at train begin, removed at the end -----------------------------------
class SeeProvisional(TrainerCallback):
    def __init__(self, store: LocalStore):
        self.store, self.seen = store, []

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 2:
            # The heartbeat rewrites the file from a background thread (temp file + rename): skip its temp.
            self.seen = sorted(p.name for p in self.store.provisional_dir.glob("*.json") if not p.name.startswith("."))


def test_callback_opens_and_closes_the_provisional_record(tmp_path, monkeypatch):
    monkeypatch.setenv("XLOG_ENERGY", "0")
    store = LocalStore(tmp_path / "home")
    cb = XLogCallback(store=store)
    see = SeeProvisional(store)
    train, _ = tiny.classification_datasets()
    Trainer(model=tiny.bert_classifier(), args=tiny.training_args(tmp_path / "o"), train_dataset=train,
            processing_class=tiny.tokenizer(), callbacks=[cb, see]).train()
    rec = store.records()[0]
    assert see.seen == [f"{rec['record_id']}.json"]  # open during training
    assert not any(store.provisional_dir.iterdir())  # closed at the end
    assert rec["status"] == "completed"


def test_read_only_store_says_nothing_was_kept(tmp_path, monkeypatch, caplog):
    # A store root below a regular file cannot be created (even by root): nothing can be written.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("XLOG_ENERGY", "0")
    store = LocalStore(blocker / "home")
    train, _ = tiny.classification_datasets()
    with caplog.at_level(logging.WARNING, logger="xlog"):
        Trainer(model=tiny.bert_classifier(), args=tiny.training_args(tmp_path / "o"), train_dataset=train,
                processing_class=tiny.tokenizer(), callbacks=[XLogCallback(store=store)]).train()
    text = caplog.text
    assert "kept as" not in text
    assert "this run is not recorded" in text
    assert "cannot write the provisional record" in text and "leaves no record" in text
