"""The GPU paths: hardware fields and NVML energy on a real CUDA run, a real CUDA out-of-memory
error recorded as ``oom``, and the evaluator's GPU memory cap. Skipped without a CUDA GPU (CI has
none); run ``pytest tests/test_gpu.py`` on a GPU machine."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Trainer

import tiny
from xlog import LocalStore, XLogCallback
from xlog import schema as S

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

HERE = Path(__file__).resolve().parent


def only_record(home: Path) -> dict:
    recs = LocalStore(home).records()
    assert len(recs) == 1, recs
    assert S.validate_record(recs[0]) == []
    return recs[0]


def test_cuda_run_records_gpu_hardware_and_nvml_energy(tmp_path, monkeypatch):
    monkeypatch.setenv("XLOG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLOG_COUNTRY_ISO_CODE", "FRA")
    train, ev = tiny.classification_datasets(n=400, max_length=64)
    # Long enough (a few seconds) for the energy counters to move and codecarbon to start.
    args = tiny.training_args(tmp_path / "o", use_cpu=False, max_steps=1500, per_device_train_batch_size=8,
                              learning_rate=1e-4)
    trainer = Trainer(model=tiny.bert_classifier(), args=args, train_dataset=train, eval_dataset=ev,
                      processing_class=tiny.tokenizer(), compute_metrics=tiny.compute_metrics,
                      callbacks=[XLogCallback(task_name="gpu")])
    trainer.train()
    trainer.evaluate()
    r = only_record(tmp_path / "home")
    assert r["status"] == "completed"
    assert r["hw_gpu_count"] == torch.cuda.device_count() >= 1
    assert r["hw_gpu_name"] == torch.cuda.get_device_name(0)
    total_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    assert abs(r["hw_gpu_memory_gb"] - total_gb) / total_gb < 0.1, (r["hw_gpu_memory_gb"], total_gb)
    assert r["hw_gpu_driver"] and r["hw_cuda_version"] == torch.version.cuda
    assert 0 < r["outcome_peak_gpu_memory_gb"] < total_gb
    assert r["energy_source"] in ("nvml", "codecarbon+nvml"), (r["energy_source"], r.get("energy_measured_s"))
    assert r["energy_gpu_kwh"] > 0 and r["energy_kwh"] >= r["energy_gpu_kwh"]
    assert r["energy_measured_s"] > 1
    print({k: r[k] for k in ("hw_gpu_name", "hw_gpu_memory_gb", "outcome_peak_gpu_memory_gb", "energy_source",
                             "energy_kwh", "energy_gpu_kwh", "energy_measured_s", "outcome_total_runtime_s")})


def test_real_cuda_out_of_memory_is_recorded_as_oom(tmp_path):
    env = dict(os.environ, XLOG_HOME=str(tmp_path / "home"), XLOG_ENERGY="0")
    p = subprocess.run([sys.executable, str(HERE / "failing_run.py"), "cuda-oom", str(tmp_path)], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert p.returncode != 0, p.stdout[-3000:]
    r = only_record(tmp_path / "home")
    assert r["status"] == "oom", (r["status"], r["error_type"], r["error_message"], p.stdout[-3000:])
    assert r["error_type"] == "OutOfMemoryError" and "CUDA out of memory" in r["error_message"]
    assert r["hw_gpu_name"] and r["train_batch_size"] == 512


def test_evaluator_gpu_memory_cap_turns_into_a_recorded_oom(tmp_path):
    from xsearch.data import load_task
    from xsearch.evaluator import SubprocessEvaluator, find_record
    from xsearch.space import SearchSpace
    task = load_task(tiny.SMS, max_train=150, max_eval=80)
    task.save(tmp_path / "task")
    ev = SubprocessEvaluator(tmp_path / "task", SearchSpace.load(HERE / "data" / "tiny_space.yaml"),
                             LocalStore(tmp_path / "store"), "gpu-search", task_name=task.name, energy=True,
                             grace_s=5, work_dir=tmp_path / "runs")
    base = dict(model_name="tiny:bert-2x32", ft_method="full", peft_lora_r=None, peft_lora_alpha=None,
                ft_trainable_layers=None, train_learning_rate=1e-3, train_epochs=1, train_batch_size=32,
                train_max_seq_length=64)
    try:
        ok = ev.evaluate(base, timeout_s=300)
        assert ok.status == "completed", ok.error
        rec = find_record(ev.store, ok.record_id)
        assert rec["hw_gpu_name"] and rec["outcome_peak_gpu_memory_gb"] > 0  # it really ran on the GPU
        # 2 x 2048-wide layers: 0.28 GB of weights, then 0.84 GB of gradients and Adam states.
        ev.memory_limit_gb = 0.5
        out = ev.evaluate(dict(base, model_name="tiny:bert-2x2048", train_batch_size=16), timeout_s=300)
        assert out.status == "oom", (out.status, out.error)
        rec = find_record(ev.store, out.record_id)
        assert rec["status"] == "oom" and rec["error_type"] == "OutOfMemoryError"
        ev.memory_limit_gb = None
        again = ev.evaluate(base, timeout_s=300)  # the evaluator is still usable
        assert again.status == "completed", again.error
    finally:
        ev.close()
