"""Failures are experience: runs that raise, run out of memory or are killed still leave a record."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainerCallback

import tiny
from xlog import LocalStore, XLogCallback
from xlog import schema as S

HERE = Path(__file__).resolve().parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XLOG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLOG_ENERGY", "0")
    return tmp_path / "home"


def the_record(home: Path) -> dict:
    recs = LocalStore(home).records()
    assert len(recs) == 1, recs
    assert S.validate_record(recs[0]) == []
    return recs[0]


class RaiseAt(TrainerCallback):
    """Raises a given exception after some real training steps."""

    def __init__(self, exc: BaseException, step: int = 4):
        self.exc, self.step = exc, step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise self.exc


def _trainer(tmp_path, *callbacks, **kw):
    train, evald = tiny.classification_datasets()
    return Trainer(model=tiny.bert_classifier(), args=tiny.training_args(tmp_path / "o", logging_steps=2, **kw),
                   train_dataset=train, eval_dataset=evald, processing_class=tiny.tokenizer(),
                   compute_metrics=tiny.compute_metrics, callbacks=[XLogCallback(task_name="t"), *callbacks])


def test_exception_is_recorded_with_partial_metrics(home, tmp_path):
    trainer = _trainer(tmp_path, RaiseAt(ValueError("loss exploded at step 4")))
    with pytest.raises(ValueError, match="exploded"):
        trainer.train()
    r = the_record(home)
    assert (r["status"], r["error_type"]) == ("failed", "ValueError")
    assert r["error_message"] == "loss exploded at step 4"
    assert r["outcome_steps_completed"] == 4 and r["outcome_train_loss"] > 0  # last logged loss
    assert r["model_type"] == "bert" and r["task_n_train"] == 150 and r["train_learning_rate"] == 1e-3


def test_torch_out_of_memory_error_is_oom(home, tmp_path):
    # torch raises torch.OutOfMemoryError for CUDA OOM; here it comes from inside a real run.
    trainer = _trainer(tmp_path, RaiseAt(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 1))
    with pytest.raises(torch.OutOfMemoryError):
        trainer.train()
    r = the_record(home)
    assert (r["status"], r["error_type"]) == ("oom", "OutOfMemoryError")


def test_exception_caught_by_user_code_is_still_recorded(home, tmp_path):
    trainer = _trainer(tmp_path, RaiseAt(RuntimeError("boom")))
    try:
        trainer.train()
    except RuntimeError:
        pass  # a sweep script that carries on with the next configuration
    assert the_record(home)["status"] == "failed"


def test_keyboard_interrupt_is_interrupted(home, tmp_path):
    trainer = _trainer(tmp_path, RaiseAt(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    r = the_record(home)
    assert (r["status"], r["error_type"]) == ("interrupted", "KeyboardInterrupt")


def test_failure_before_train_begin_is_recorded(home, tmp_path):
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            raise OSError("cannot read shard 3")
    trainer = Trainer(model=tiny.bert_classifier(), args=tiny.training_args(tmp_path / "o"), train_dataset=Broken(),
                      callbacks=[XLogCallback()])
    with pytest.raises(OSError):
        trainer.train()
    r = the_record(home)
    assert r["status"] == "failed" and r["error_type"] == "OSError" and r["model_type"] == "bert"


def _spawn(mode: str, tmp_path: Path, **env) -> subprocess.Popen:
    e = dict(os.environ, XLOG_HOME=str(tmp_path / "home"), XLOG_ENERGY="0", **env)
    return subprocess.Popen([sys.executable, str(HERE / "failing_run.py"), mode, str(tmp_path)], env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_real_host_oom_in_subprocess(tmp_path):
    p = _spawn("oom", tmp_path)
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0, out
    r = the_record(tmp_path / "home")
    assert r["status"] == "oom" and r["error_type"] == "RuntimeError", out[-2000:]
    assert "can't allocate memory" in r["error_message"]
    assert r["task_n_train"] == 4096 and r["train_batch_size"] == 4096


def _wait_started(p: subprocess.Popen, tmp_path: Path) -> None:
    deadline = time.monotonic() + 240
    while not (tmp_path / "started").exists():
        if p.poll() is not None:
            pytest.fail(f"training exited early: {p.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            p.kill()
            pytest.fail("training did not start")
        time.sleep(0.2)


@pytest.mark.parametrize("env,status", [({}, "interrupted"), ({"XLOG_SIGTERM_STATUS": "timeout"}, "timeout")])
def test_sigterm_in_subprocess(tmp_path, env, status):
    p = _spawn("wait", tmp_path, **env)
    _wait_started(p, tmp_path)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=120)
    assert p.returncode == -signal.SIGTERM  # the default disposition is kept: the process still dies
    r = the_record(tmp_path / "home")
    assert (r["status"], r["error_type"]) == (status, "SIGTERM")
    assert r["outcome_steps_completed"] >= 3 and r["task_name"] == "fail"


def test_sigint_in_subprocess(tmp_path):
    p = _spawn("wait", tmp_path)
    _wait_started(p, tmp_path)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    assert p.returncode != 0
    r = the_record(tmp_path / "home")
    assert (r["status"], r["error_type"]) == ("interrupted", "KeyboardInterrupt")


# ---- divergence: a NaN/inf or exploding loss is a failure, not a poor completed run ----------------
def test_exploding_loss_is_failed_diverged_and_counts_as_failure(home, tmp_path):
    from xsearch.estimators import failure_target, records_frame
    torch.manual_seed(0)  # the model's initial weights: a reproducible explosion
    train, evald = tiny.classification_datasets()
    cb = XLogCallback(task_name="t", stop_on_divergence=True)
    trainer = Trainer(model=tiny.bert_classifier(), args=tiny.training_args(tmp_path / "o", learning_rate=1e3,
                                                                           logging_steps=1),
                      train_dataset=train, eval_dataset=evald, processing_class=tiny.tokenizer(),
                      compute_metrics=tiny.compute_metrics, callbacks=[cb])
    trainer.train()
    r = the_record(home)
    assert (r["status"], r["error_type"]) == ("failed", "Diverged")
    assert "exploded" in r["error_message"] and "stopped there (stop_on_divergence)" in r["error_message"]
    assert r["outcome_steps_completed"] < 10  # stopped early instead of training on
    assert failure_target(records_frame([r])).tolist() == [1.0]  # the estimators learn it as a failure


class CorruptWeights(TrainerCallback):
    """Turns the classifier's weights into NaN after a few steps, as an overflow would."""

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == 3:
            with torch.no_grad():
                model.classifier.weight.fill_(float("nan"))


def test_nan_loss_hidden_by_the_trainer_is_failed_diverged(home, tmp_path):
    # The Trainer's logging_nan_inf_filter (on by default) logs NaN steps as the window's average:
    # the end-of-training check of the trainable parameters still sees the divergence.
    trainer = _trainer(tmp_path, CorruptWeights())
    trainer.train()
    r = the_record(home)
    assert (r["status"], r["error_type"]) == ("failed", "Diverged")
    assert "NaN or infinity" in r["error_message"] and r["outcome_steps_completed"] == 10


def test_nan_loss_in_the_logs_is_failed_diverged(home, tmp_path):
    trainer = _trainer(tmp_path, CorruptWeights(), logging_nan_inf_filter=False, eval_strategy="epoch")
    trainer.train()
    r = the_record(home)
    assert (r["status"], r["error_type"]) == ("failed", "Diverged")
    assert r["error_message"].startswith("the training loss became nan at step 4")
