"""One meta-dataset v2 run, in a forked process: the xsearch worker's model building and
fine-tuning methods, trained by ``transformers.Trainer`` with ``XLogCallback`` (the record), an
evaluation every 1/N epoch (the learning curve) and a :class:`CurveRecorder` that keeps the curve,
the CPU time and the machine load beside the record (``<curves>/<record_id>.json``), written at
every evaluation so that a run that fails keeps its curve up to the failure.

Heavy imports are at module level on purpose: the harness imports this module once and forks a
process per run (no ~7 s of imports per run).
"""
from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import transformers
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from xlog.callback import XLogCallback
from xsearch.worker import apply_memory_limit, apply_method, build_model, compute_metrics

log = logging.getLogger("metadataset.trainer_v2")
CURVE_METRICS = ("eval_f1", "eval_accuracy", "eval_loss")


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(tmp, path)


class FixedIdCallback(XLogCallback):
    """XLogCallback whose record id the harness chose, so that it finds the run's record (or
    writes a stand-in with that id when the process dies first)."""

    def __init__(self, record_id: str, **kw: Any):
        super().__init__(**kw)
        self.fixed_record_id = record_id

    def _open(self, *args: Any, **kw: Any) -> None:
        super()._open(*args, **kw)
        if self.record is not None:
            self.record["record_id"] = self.fixed_record_id


class CurveRecorder(TrainerCallback):
    """Keeps the learning curve (each evaluation's metrics, the training loss at the logging
    steps, with step, epoch, elapsed wall seconds and CPU seconds since training began) and the
    1-minute load average at each evaluation. Costs nothing between logging steps."""

    def __init__(self, path: Path, record_id: str):
        self.path = Path(path)
        self.doc: dict[str, Any] = {"record_id": record_id, "eval": [], "loss": [], "load_avg": []}
        self._t0 = time.monotonic()
        self._cpu0 = cpu_seconds()

    def _point(self, state: Any) -> dict[str, Any]:
        return {"step": int(state.global_step), "epoch": float(state.epoch or 0.0),
                "elapsed_s": round(time.monotonic() - self._t0, 3), "cpu_s": round(cpu_seconds() - self._cpu0, 3)}

    def _save(self) -> None:
        self.doc["train_cpu_time_s"] = round(cpu_seconds() - self._cpu0, 3)
        self.doc["train_wall_s"] = round(time.monotonic() - self._t0, 3)
        loads = self.doc["load_avg"]
        self.doc["hw_load_avg"] = round(sum(loads) / len(loads), 3) if loads else None
        write_json_atomic(self.path, self.doc)

    def on_train_begin(self, args, state, control, **kw):
        self._t0, self._cpu0 = time.monotonic(), cpu_seconds()
        self.doc["load_avg"].append(round(os.getloadavg()[0], 2))
        self._save()
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)):
            self.doc["loss"].append({**self._point(state), "loss": float(loss) if math.isfinite(loss) else None})
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        point = self._point(state)
        for k in CURVE_METRICS:
            v = (metrics or {}).get(k)
            point[k] = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
        self.doc["eval"].append(point)
        self.doc["load_avg"].append(round(os.getloadavg()[0], 2))
        self._save()
        return control

    def on_train_end(self, args, state, control, **kw):
        self.doc["load_avg"].append(round(os.getloadavg()[0], 2))
        self._save()
        return control


def limit_cpu(seconds: float) -> None:
    """A time limit in CPU seconds (all threads), which contention does not eat into: past it the
    run gets SIGXCPU, handled as the time limit (XLogCallback records ``timeout``); 30 s later the
    kernel kills it (the harness then writes the stand-in record)."""
    def on_xcpu(signum: int, frame: Any) -> None:
        os.environ["XLOG_SIGTERM_STATUS"] = "timeout"
        os.kill(os.getpid(), signal.SIGTERM)
    signal.signal(signal.SIGXCPU, on_xcpu)
    soft = int(math.ceil(cpu_seconds() + seconds))
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 30))


def run_job(job: dict[str, Any]) -> None:
    """Train and evaluate one configuration; the record goes to ``job['store']``."""
    os.environ["XLOG_HOME"] = job["store"]
    os.environ["XLOG_SIGTERM_STATUS"] = "timeout"  # the harness sends SIGTERM only at the time limit

    def stop(signum: int, frame: Any) -> None:  # SIGUSR1: the harness is stopping, not a timeout
        os.environ["XLOG_SIGTERM_STATUS"] = "interrupted"
        os.kill(os.getpid(), signal.SIGTERM)
    signal.signal(signal.SIGUSR1, stop)
    if job.get("torch_threads"):
        # One thread: on a shared machine, idle OpenMP threads spin while their peers wait for a
        # core, and the CPU time of the same run grew fourfold with the load (datasheet).
        torch.set_num_threads(int(job["torch_threads"]))
    if job.get("cpu_limit_s"):
        limit_cpu(float(job["cpu_limit_s"]))
    cfg = job["config"]
    data = Path(job["data_dir"])
    train_df = pd.read_parquet(data / "train.parquet")
    eval_df = pd.read_parquet(data / "eval.parquet")
    labels = json.loads((data / "labels.json").read_text(encoding="utf-8"))
    transformers.set_seed(int(job.get("seed", 0)))
    spec = job.get("model_spec") or {}
    model, tok = build_model(cfg, spec, len(labels), train_df["text"].tolist())
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {v: i for i, v in enumerate(labels)}
    model = apply_method(model, cfg, spec, {})

    import datasets
    max_len = int(cfg["train_max_seq_length"])

    def tokenize(batch: dict[str, list]) -> Any:
        return tok(batch["text"], truncation=True, max_length=max_len)
    train_ds = datasets.Dataset.from_pandas(train_df[["text", "label"]]).map(tokenize, batched=True)
    eval_ds = datasets.Dataset.from_pandas(eval_df[["text", "label"]]).map(tokenize, batched=True)

    batch = int(cfg["train_batch_size"])
    steps_per_epoch = math.ceil(len(train_ds) / batch)
    every = max(1, round(steps_per_epoch / int(job.get("evals_per_epoch", 4))))
    args = TrainingArguments(
        output_dir=str(job["output_dir"]), num_train_epochs=float(cfg["train_epochs"]),
        per_device_train_batch_size=batch, per_device_eval_batch_size=64,
        learning_rate=float(cfg["train_learning_rate"]), weight_decay=float(cfg.get("train_weight_decay") or 0.0),
        warmup_steps=float(cfg.get("train_warmup_ratio") or 0.0),  # transformers 5: a ratio < 1
        lr_scheduler_type=str(cfg["train_lr_scheduler"]),
        eval_strategy="steps", eval_steps=every, logging_strategy="steps", logging_steps=every,
        save_strategy="no", report_to=[], disable_tqdm=True, seed=int(job.get("seed", 0)),
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    xcb = FixedIdCallback(
        job["record_id"], task_name=job["task_name"], task_type="text-classification", search_id=job["search_id"],
        store=job["store"], text_column="text", label_column="label", max_seq_length=max_len,
        model_name=cfg["model_name"], primary_metric="eval_f1", greater_is_better=True, energy=job.get("energy", True))
    curve = CurveRecorder(Path(job["curve_path"]), job["record_id"])
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=compute_metrics,
                      callbacks=[curve, xcb])
    apply_memory_limit(job.get("memory_limit_bytes"))
    trainer.train()
    if trainer.state.global_step % every != 0:
        # The last step was not an evaluation step: the final metrics must be the final model's
        # (XLogCallback updates the record already written).
        trainer.evaluate()
        curve.on_train_end(args, trainer.state, trainer.control)


def child_main(job_path: Path, log_path: Path) -> int:
    """Entry point in the forked process: output to a log file, run the job, exit code."""
    # The fork inherits the harness's handlers: a run must die of SIGTERM/SIGINT like any process
    # (after XLogCallback, which chains to these, has recorded it).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True)
    try:
        run_job(json.loads(Path(job_path).read_text(encoding="utf-8")))
        return 0
    except BaseException:
        import traceback
        traceback.print_exc()
        return 1
