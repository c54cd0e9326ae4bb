"""Constructed experience stores for tests: schema-valid records from a simulator with a known
structure, written through ``LocalStore.write`` like captured runs.

The structure the tests can rely on:
- quality (macro F1) falls with the number of classes and rises with model size;
- on small tasks (n_train < 3000) LoRA beats full fine-tuning (full overfits), on large ones full
  is slightly better; each method has its own best learning rate (full 3e-5, partial 1e-4, LoRA 5e-4);
- runtime ~ parameters x examples x epochs x sequence length / GPU speed, energy ~ runtime x power;
- big batch x long sequence (x big model) runs out of GPU memory (status ``oom``), especially on
  the 16 GB GPU; full fine-tuning with a learning rate >= 1e-3 often diverges (``failed``);
  very long runs hit a 4 h limit (``timeout``).
"""
from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from xlog import schema as S
from xlog.store import LocalStore


@dataclass(frozen=True)
class Model:
    name: str
    model_type: str
    n_params: int
    n_layers: int
    hidden: int
    heads: int
    vocab: int
    max_positions: int


MODELS = (
    Model("google/bert_uncased_L-4_H-256_A-4", "bert", 11_170_000, 4, 256, 4, 30522, 512),
    Model("sentence-transformers/all-MiniLM-L6-v2", "bert", 22_713_000, 6, 384, 12, 30522, 512),
    Model("distilbert-base-uncased", "distilbert", 66_955_000, 6, 768, 12, 30522, 512),
    Model("bert-base-uncased", "bert", 109_482_000, 12, 768, 12, 30522, 512),
    Model("roberta-large", "roberta", 355_359_000, 24, 1024, 16, 50265, 514),
)

HARDWARE = (
    {"hw_accelerator": "cuda", "hw_gpu_name": "NVIDIA A100-SXM4-80GB", "hw_gpu_count": 1, "hw_gpu_memory_gb": 85.1,
     "hw_gpu_driver": "535.104.05", "hw_cuda_version": "12.1", "hw_cpu_model": "AMD EPYC 7763 64-Core Processor",
     "hw_cpu_cores": 32, "hw_ram_gb": 270.0, "_flops": 60e12, "_watts": 330.0},
    {"hw_accelerator": "cuda", "hw_gpu_name": "Tesla T4", "hw_gpu_count": 1, "hw_gpu_memory_gb": 15.8,
     "hw_gpu_driver": "525.85.12", "hw_cuda_version": "12.1", "hw_cpu_model": "Intel(R) Xeon(R) CPU @ 2.20GHz",
     "hw_cpu_cores": 8, "hw_ram_gb": 54.8, "_flops": 12e12, "_watts": 110.0},
)

LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3)
BATCH_SIZES = (8, 16, 32, 64, 128)
SEQ_LENGTHS = (64, 128, 256, 512)
EPOCHS = (1.0, 2.0, 3.0, 5.0)
METHODS = ("full", "lora", "partial")
BEST_LOG_LR = {"full": math.log10(3e-5), "partial": math.log10(1e-4), "lora": math.log10(5e-4)}
TIME_LIMIT_S = 4 * 3600.0


def make_task(name: str, small: bool, rng: random.Random, task_type: str = "text-classification") -> dict[str, Any]:
    """task_* meta-features of a synthetic classification task (small tasks: few, short texts)."""
    n_train = rng.randint(300, 2500) if small else rng.randint(10_000, 120_000)
    n_classes = rng.choice([2, 2, 3, 4, 6]) if small else rng.choice([2, 4, 5, 14])
    # A label distribution with some imbalance: geometric weights.
    decay = rng.uniform(0.5, 1.0)
    w = [decay ** i for i in range(n_classes)]
    probs = [x / sum(w) for x in w]
    chars = rng.uniform(60, 160) if small else rng.uniform(300, 1500)
    chars_cv = rng.uniform(0.4, 0.9)
    tokens = chars / rng.uniform(3.8, 4.6)
    return {
        "task_name": name, "task_type": task_type, "task_language": "en",
        "task_n_train": n_train, "task_n_eval": max(50, n_train // 5), "task_sample_size": min(n_train, 2000),
        "task_n_classes": n_classes,
        "task_class_entropy": float(-sum(p * math.log2(p) for p in probs)),
        "task_class_prob_min": min(probs), "task_class_prob_max": max(probs),
        "task_imbalance_ratio": max(probs) / min(probs),
        "task_chars_mean": chars, "task_chars_std": chars * chars_cv, "task_chars_cv": chars_cv,
        "task_tokens_mean": tokens, "task_tokens_std": tokens * chars_cv, "task_tokens_cv": chars_cv,
        "task_type_token_ratio": rng.uniform(0.25, 0.45) if small else rng.uniform(0.05, 0.2),
        "_offset": rng.gauss(0.0, 0.02),  # unobserved task difficulty
    }


def sample_config(model: Model, rng: random.Random) -> dict[str, Any]:
    """A random candidate configuration in record columns (inactive parameters None)."""
    method = rng.choice(METHODS)
    cfg: dict[str, Any] = {
        "model_name": model.name, "ft_method": method,
        "peft_lora_r": None, "peft_lora_alpha": None, "peft_lora_dropout": None, "ft_trainable_layers": None,
        "train_learning_rate": rng.choice(LEARNING_RATES), "train_epochs": rng.choice(EPOCHS),
        "train_batch_size": rng.choice(BATCH_SIZES), "train_warmup_ratio": rng.choice([0.0, 0.06, 0.1]),
        "train_weight_decay": rng.choice([0.0, 0.01, 0.1]), "train_lr_scheduler": rng.choice(["linear", "cosine", "constant"]),
        "train_max_seq_length": rng.choice(SEQ_LENGTHS),
    }
    if method == "lora":
        r = rng.choice([4, 8, 16, 32])
        cfg.update(peft_lora_r=r, peft_lora_alpha=float(r * rng.choice([1, 2])), peft_lora_dropout=rng.choice([0.0, 0.05, 0.1]))
    elif method == "partial":
        cfg["ft_trainable_layers"] = rng.choice([n for n in (1, 2, 4, 8) if n < model.n_layers] or [1])
    return cfg


def true_quality(task: dict, model: Model, cfg: dict) -> float:
    """Expected macro F1 of a configuration on a task (before noise and failures)."""
    small = task["task_n_train"] < 3000
    ceiling = 0.96 - 0.045 * math.log2(task["task_n_classes"]) - 0.03 * math.log10(task["task_imbalance_ratio"])
    capacity = 0.035 * math.log10(model.n_params / 1.1e8)
    method = cfg["ft_method"]
    method_effect = ({"full": -0.07, "lora": 0.0, "partial": -0.03} if small
                     else {"full": 0.01, "lora": -0.01, "partial": -0.03})[method]
    lr_penalty = 0.05 * (math.log10(cfg["train_learning_rate"]) - BEST_LOG_LR[method]) ** 2
    epochs_effect = 0.015 * math.log2(cfg["train_epochs"]) if small else 0.005 * math.log2(cfg["train_epochs"])
    truncation = 0.08 * max(0.0, 1.0 - cfg["train_max_seq_length"] / task["task_tokens_mean"])
    q = ceiling + task["_offset"] + capacity + method_effect - lr_penalty + epochs_effect - truncation
    return min(0.99, max(1.0 / task["task_n_classes"] * 0.8, q))


def memory_need_gb(model: Model, cfg: dict) -> float:
    """GPU memory a run needs: weights/optimizer state + activations (batch x sequence x width x depth)."""
    per_param = {"full": 16.0, "partial": 6.0, "lora": 4.5}[cfg["ft_method"]]
    b, s = cfg["train_batch_size"], cfg["train_max_seq_length"]
    # Activations per layer ~ s*b*(34*h + 5*heads*s) bytes (Korthikanti et al. 2022): attention
    # scores grow with the square of the sequence length.
    act = s * b * model.n_layers * (34 * model.hidden + 5 * model.heads * s) / 1e9
    if cfg["ft_method"] != "full":
        act *= 0.8
    return model.n_params * per_param / 1e9 + act


def runtime_s(task: dict, model: Model, hw: dict, cfg: dict) -> float:
    flops = 6.0 * model.n_params * task["task_n_train"] * cfg["train_epochs"] * cfg["train_max_seq_length"]
    flops *= {"full": 1.0, "partial": 0.8, "lora": 0.7}[cfg["ft_method"]]
    efficiency = 0.45 * cfg["train_batch_size"] / (cfg["train_batch_size"] + 16)
    return 25.0 + flops / (hw["_flops"] * efficiency)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def simulate_run(task: dict, model: Model, hw: dict, cfg: dict, rng: random.Random,
                 created_at: datetime, search_id: str | None = None) -> dict[str, Any]:
    """One schema-valid record: what XLogCallback would have written for this run."""
    rec: dict[str, Any] = {name: None for name in S.field_names()}
    rec.update({k: v for k, v in task.items() if not k.startswith("_")})
    rec.update({k: v for k, v in hw.items() if not k.startswith("_")})
    rec.update(cfg)
    rec.update(
        record_id=_uuid(rng), schema_version=S.CURRENT_VERSION, created_at=created_at, xlog_version="0.1.0",
        source="xlog", contributor=rng.choice(["lab-a", "lab-b", None]), search_id=search_id,
        model_type=model.model_type, model_architecture=f"{model.model_type.capitalize()}ForSequenceClassification",
        model_n_params=model.n_params, model_n_layers=model.n_layers, model_hidden_size=model.hidden,
        model_n_heads=model.heads, model_vocab_size=model.vocab, model_max_positions=model.max_positions,
        model_kind="encoder", model_objective="sequence-classification", model_dtype="float32",
        train_grad_accum_steps=1, train_effective_batch_size=cfg["train_batch_size"], train_world_size=1,
        train_optimizer="adamw_torch", train_precision="fp32", train_max_grad_norm=1.0,
        train_gradient_checkpointing=False, train_seed=rng.randint(0, 10_000),
        hw_platform="Linux-x86_64", hw_python_version="3.11.9", hw_torch_version="2.3.1",
        hw_transformers_version="4.44.2", hw_peft_version="0.12.0",
        energy_source="codecarbon", energy_country_iso_code="USA",
    )
    steps_per_epoch = math.ceil(task["task_n_train"] / cfg["train_batch_size"])
    rec["train_max_steps"] = int(steps_per_epoch * cfg["train_epochs"])
    rec["train_warmup_steps"] = int(rec["train_max_steps"] * (cfg["train_warmup_ratio"] or 0.0))
    if cfg["ft_method"] == "lora":
        rec["peft_type"] = "LORA"
        rec["peft_target_modules"] = ["query", "value"]
        trainable = int(2 * cfg["peft_lora_r"] * model.hidden * 2 * model.n_layers)
        rec["ft_trainable_layers"] = model.n_layers
    elif cfg["ft_method"] == "partial":
        trainable = int(model.n_params * cfg["ft_trainable_layers"] / model.n_layers * 0.8)
    else:
        trainable = model.n_params
        rec["ft_trainable_layers"] = model.n_layers
    rec["ft_trainable_params"] = trainable
    rec["ft_trainable_fraction"] = trainable / (model.n_params + (trainable if cfg["ft_method"] == "lora" else 0))

    need = memory_need_gb(model, cfg) * rng.uniform(0.95, 1.05)
    full_time = runtime_s(task, model, hw, cfg) * math.exp(rng.gauss(0.0, 0.1))
    diverge_p = {"full": 0.8 if cfg["train_learning_rate"] >= 1e-3 else 0.0,
                 "partial": 0.6 if cfg["train_learning_rate"] >= 2e-3 else 0.0,
                 "lora": 0.3 if cfg["train_learning_rate"] >= 5e-3 else 0.0}[cfg["ft_method"]]
    status = "completed"
    if need > 0.92 * hw["hw_gpu_memory_gb"]:
        status = "oom"
    elif full_time > TIME_LIMIT_S:
        status = "timeout"
    elif rng.random() < diverge_p:
        status = "failed"
    elif rng.random() < 0.02:
        status = "failed"  # unrelated crashes happen (data loader, disk, preemption)

    rec["status"] = status
    peak = min(need, hw["hw_gpu_memory_gb"] * 0.97)
    rec["outcome_peak_gpu_memory_gb"] = round(peak, 3)
    rec["outcome_peak_rss_gb"] = round(rng.uniform(2.5, 6.0), 3)
    watts = hw["_watts"] + 60.0
    if status == "completed":
        q = true_quality(task, model, cfg) + rng.gauss(0.0, 0.01)
        q = min(0.995, max(0.0, q))
        elapsed = full_time
        eval_rt = elapsed * 0.05
        rec.update(
            outcome_primary_metric="eval_f1", outcome_primary_value=q, outcome_greater_is_better=True,
            outcome_metrics={"eval_f1": q, "eval_accuracy": min(1.0, q + 0.02), "eval_loss": max(0.05, 1.2 - q),
                             "eval_runtime": eval_rt},
            outcome_train_loss=max(0.02, 1.0 - q), outcome_train_runtime_s=elapsed - eval_rt,
            outcome_eval_runtime_s=eval_rt, outcome_total_runtime_s=elapsed,
            outcome_train_samples_per_s=task["task_n_train"] * cfg["train_epochs"] / (elapsed - eval_rt),
            outcome_steps_completed=rec["train_max_steps"], outcome_epochs_completed=cfg["train_epochs"])
    else:
        elapsed = {"oom": rng.uniform(8.0, 40.0), "timeout": TIME_LIMIT_S,
                   "failed": full_time * rng.uniform(0.05, 0.6)}[status]
        frac = 0.0 if status == "oom" else min(1.0, elapsed / full_time)
        rec.update(outcome_train_runtime_s=elapsed, outcome_total_runtime_s=elapsed,
                   outcome_steps_completed=int(rec["train_max_steps"] * frac),
                   outcome_epochs_completed=cfg["train_epochs"] * frac)
        if status == "oom":
            rec.update(error_type="OutOfMemoryError",
                       error_message=f"CUDA out of memory. Tried to allocate {rng.uniform(0.5, 4):.2f} GiB")
        elif status == "timeout":
            rec.update(error_type="Timeout", error_message="terminated by SIGTERM after the time limit")
        else:
            rec.update(error_type="RuntimeError", error_message="loss became nan at step "
                       f"{rec['outcome_steps_completed']}", outcome_train_loss=None)
    kwh = elapsed * watts / 3.6e6 * math.exp(rng.gauss(0.0, 0.05))
    rec.update(energy_kwh=kwh, energy_gpu_kwh=kwh * hw["_watts"] / watts, energy_cpu_kwh=kwh * 0.12,
               energy_ram_kwh=kwh * (1 - 0.12 - hw["_watts"] / watts), energy_co2_kg=kwh * 0.38,
               energy_measured_s=elapsed)
    rec["ended_at"] = created_at + timedelta(seconds=elapsed)
    return rec


def lm_task_records(n_runs: int, rng: random.Random, start: datetime) -> list[dict]:
    """Runs of a causal-LM task whose primary metric is eval_loss (lower is better)."""
    out = []
    task = make_task("lm_corpus", small=False, rng=rng, task_type="causal-lm")
    model = MODELS[1]
    for i in range(n_runs):
        cfg = sample_config(model, rng)
        rec = simulate_run(task, model, HARDWARE[0], cfg, rng, start + timedelta(minutes=i))
        for k in ("task_n_classes", "task_class_entropy", "task_class_prob_min", "task_class_prob_max",
                  "task_imbalance_ratio"):
            rec[k] = None  # a language-modelling corpus has no labels
        rec.update(model_objective="causal-lm", model_architecture="BertLMHeadModel")
        if rec["status"] == "completed":
            loss = 4.0 - 2.0 * rec["outcome_primary_value"]
            rec.update(outcome_primary_metric="eval_loss", outcome_primary_value=loss, outcome_greater_is_better=False,
                       outcome_metrics={"eval_loss": loss, "eval_runtime": rec["outcome_eval_runtime_s"]})
        out.append(rec)
    return out


def generate_records(n_tasks: int = 8, runs_per_task: int = 40, seed: int = 0, models: tuple[Model, ...] = MODELS,
                     hardware: tuple[dict, ...] = HARDWARE, lm_runs: int = 0) -> list[dict]:
    """Records of ``runs_per_task`` random configurations on each of ``n_tasks`` tasks (half small,
    half large), spread over ``models`` and ``hardware``; optionally a causal-LM task."""
    rng = random.Random(seed)
    start = datetime(2025, 3, 1, tzinfo=timezone.utc)
    records = []
    for t in range(n_tasks):
        small = t % 2 == 0
        task = make_task(f"{'small' if small else 'large'}_task_{t:02d}", small, rng)
        for i in range(runs_per_task):
            model = rng.choice(models)
            hw = rng.choice(hardware)
            cfg = sample_config(model, rng)
            records.append(simulate_run(task, model, hw, cfg, rng, start + timedelta(hours=t, minutes=i)))
    if lm_runs:
        records.extend(lm_task_records(lm_runs, rng, start + timedelta(days=1)))
    return records


def build_store(root: str | Path, records: list[dict] | None = None, **kw: Any) -> LocalStore:
    """Write constructed records (default: ``generate_records(**kw)``) through LocalStore.write."""
    store = LocalStore(root)
    for rec in records if records is not None else generate_records(**kw):
        store.write(rec)
    return store


def new_task_features(small: bool = True, seed: int = 123, name: str = "new_task") -> dict[str, Any]:
    """Meta-features of a task that is in no constructed store (for warm start and prediction)."""
    task = make_task(name, small, random.Random(seed))
    return {k: v for k, v in task.items() if not k.startswith("_")}
