"""One search candidate, run in its own process: load the task data, build the model and the
fine-tuning method of a config through the search's task kind (``xsearch.tasks``: text
classification, question answering, causal LM), train with ``transformers.Trainer`` +
``XLogCallback`` (search id set; task type, primary metric and direction from the kind), evaluate,
and leave the record in the store.

The evaluator (xsearch/evaluator.py) starts it in a fork of a process that has already imported
torch and transformers (saving ~7 s per candidate), or as ``python -m xsearch.worker JOB.json``.
Heavy imports stay at module level on purpose: they are what the fork server preloads.
"""
from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import transformers  # noqa: F401  (preloaded by the fork server)
from transformers import TrainingArguments

from xlog.callback import XLogCallback

from .curves import CurveModel, StopSpec, eval_series, should_stop
from .data import TaskData
from .tasks import get_task_kind
# The kinds' modules (and what they import) are preloaded by the fork server too: a candidate
# that maps a library late, under a memory limit, can fail like an OOM.
from .tasks import generative as _generative  # noqa: F401
from .tasks.classifier import MeanPoolingForSequenceClassification, build_model, compute_metrics, sentence_pooling
from .tasks.methods import apply_method, check_space_structures, check_structure, peft_config_for
from .tasks.tiny import TINY_PREFIX, tiny_config

try:  # energy metering starts inside the memory limit: load it beforehand
    import codecarbon  # noqa: F401
except ImportError:
    pass

__all__ = ["MeanPoolingForSequenceClassification", "apply_method", "build_model", "check_space_structures",
           "check_structure", "compute_metrics", "peft_config_for", "sentence_pooling", "run", "TINY_PREFIX",
           "tiny_config"]

log = logging.getLogger("xsearch.worker")


class _SearchCallback(XLogCallback):
    """XLogCallback whose record id is chosen by the evaluator, so that the evaluator finds the
    record of its candidate (or writes a stand-in with that id if the process is killed). With an
    early-stopping spec it asks at each evaluation whether the candidate can still beat the
    incumbent (``xsearch.curves.should_stop``) and prunes it if not."""

    def __init__(self, record_id: str, early_stop: StopSpec | None = None, **kw: Any):
        super().__init__(**kw)
        self.fixed_record_id = record_id
        self.early_stop = early_stop
        self._curve_model = CurveModel.from_dict(early_stop.model) if early_stop and early_stop.model else None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        control = super().on_evaluate(args, state, control, metrics=metrics, **kwargs) or control
        spec = self.early_stop
        if spec is not None and spec.incumbent is not None and self.record is not None and not self._closed:
            # Signed values (a loss negated), as the incumbent's quality is.
            series = eval_series(self.curve(), spec.metric, getattr(state, "max_steps", None), spec.greater_is_better)
            why = should_stop(spec, series, self._curve_model)
            if why is not None:
                self.prune(why, control)
        return control

    def _open(self, *args: Any, **kw: Any) -> None:
        super()._open(*args, **kw)
        if self.record is not None:
            self.record["record_id"] = self.fixed_record_id


# ---- resource limits and supervision ---------------------------------------------------------------
def apply_memory_limit(limit_bytes: int | None) -> None:
    """Cap this process's memory: address space on CPU (an allocation beyond it fails with torch's
    "DefaultCPUAllocator: can't allocate memory", which xlog records as `oom`), the CUDA caching
    allocator's share of the device on GPU (RLIMIT_AS would break CUDA's large mappings)."""
    if not limit_bytes:
        return
    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_bytes / total))
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    new_hard = hard if hard != resource.RLIM_INFINITY and hard < limit_bytes else limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (min(limit_bytes, new_hard), new_hard))


def _vm_size_gib() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def watch_parent(pid: int | None, interval: float = 1.0) -> None:
    """End this candidate (recorded as interrupted) if the search that started it dies, so that a
    killed search leaves no orphan training behind (and a resumed one does not race with it)."""
    if not pid:
        return

    def loop() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.environ["XLOG_SIGTERM_STATUS"] = "interrupted"
                os.kill(os.getpid(), signal.SIGTERM)
                return
            except PermissionError:
                pass
    threading.Thread(target=loop, name="xsearch-parent-watch", daemon=True).start()


# ---- the job ------------------------------------------------------------------------------------------
def run(job: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one candidate; returns what the record says (also written to the store)."""
    os.environ["XLOG_HOME"] = job["store"]
    os.environ["XLOG_SIGTERM_STATUS"] = "timeout"  # the evaluator sends SIGTERM only at the time limit
    if not job.get("energy", True):
        os.environ["XLOG_ENERGY"] = "0"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    watch_parent(job.get("parent_pid"))
    cfg = job["config"]
    kind = get_task_kind(job.get("task_type"))
    task = TaskData.from_dir(Path(job["data_dir"]), kind.name, job.get("task_name") or "")
    transformers.set_seed(int(job.get("seed", 0)))
    spec = job.get("model_spec") or {}

    model, tok = kind.build_model(cfg, spec, task)
    model = kind.apply_method(model, cfg, spec, job.get("method_spec") or {})
    train_ds, eval_ds = kind.datasets(task, tok, cfg)
    max_len = int(cfg.get("train_max_seq_length") or 128)

    warmup = float(cfg.get("train_warmup_ratio") or 0.0)
    stop = StopSpec.from_dict(job["early_stop"]) if job.get("early_stop") else None
    schedule: dict[str, Any] = {"eval_strategy": "epoch", "logging_strategy": "epoch"}
    if stop is not None and stop.evals_per_epoch > 1:
        # Early stopping needs a curve: evaluate (and log the loss) several times per epoch.
        batch = int(cfg.get("train_batch_size") or 16)
        steps_per_epoch = max(-(-len(train_ds) // batch), 1)
        every = max(steps_per_epoch // int(stop.evals_per_epoch), 1)
        schedule = {"eval_strategy": "steps", "eval_steps": every, "logging_strategy": "steps", "logging_steps": every}
    arguments = dict(
        output_dir=str(Path(job["output_dir"])), num_train_epochs=float(cfg.get("train_epochs") or 1),
        per_device_train_batch_size=int(cfg.get("train_batch_size") or 16),
        per_device_eval_batch_size=64, learning_rate=float(cfg.get("train_learning_rate") or 5e-5),
        weight_decay=float(cfg.get("train_weight_decay") or 0.0), warmup_steps=warmup,
        lr_scheduler_type=str(cfg.get("train_lr_scheduler") or "linear"), **schedule,
        save_strategy="no", report_to=[], disable_tqdm=True,
        seed=int(job.get("seed", 0)), use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
    arguments.update(kind.training_arguments(cfg))
    args = TrainingArguments(**arguments)
    callback = _SearchCallback(
        job["record_id"], early_stop=stop, task_name=job.get("task_name"), search_id=job["search_id"],
        store=job["store"], max_seq_length=max_len, model_name=cfg["model_name"], energy=job.get("energy", True),
        **kind.callback_kwargs(task))
    trainer = kind.trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, tokenizer=tok,
                           callbacks=[callback], task=task, cfg=cfg, options=job.get("task_options") or {})
    log.info("address space before training: %.2f GiB; memory limit: %s", _vm_size_gib(),
             f"{job['memory_limit_bytes'] / 2**30:.2f} GiB" if job.get("memory_limit_bytes") else "none")
    apply_memory_limit(job.get("memory_limit_bytes"))
    trainer.train()
    rec = callback.record or {}
    return {"record_id": rec.get("record_id"), "status": rec.get("status"),
            "quality": kind.signed(rec.get("outcome_primary_value"))}


def child_main(job_path: str, log_path: str) -> None:
    """Entry point in the candidate process: output to a log file, then run the job."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    # Per-candidate environment (e.g. CUDA_VISIBLE_DEVICES of its GPU slot), set before torch
    # touches CUDA: the fork server imported torch but never initialised CUDA.
    os.environ.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
    result = run(job)
    Path(job["result_path"]).write_text(json.dumps(result), encoding="utf-8")


def serve() -> None:
    """A fork server: torch/transformers are imported once (above); each job is a fork of this
    process. Protocol on stdin/stdout, one line each: ``run JOB LOG`` -> ``pid N``; when a job's
    process ends -> ``exit N CODE`` (CODE < 0: killed by signal -CODE). Exits when stdin closes."""
    import select
    import traceback
    # The protocol gets a private copy of stdout; fd 1 goes to stderr so that a library printing
    # to stdout cannot corrupt it.
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(proto_fd, "w", buffering=1)
    print("ready", file=out, flush=True)
    children: set[int] = set()
    buf = b""
    stdin_fd = sys.stdin.fileno()
    open_ = True
    while open_ or children:
        ready, _, _ = select.select([stdin_fd] if open_ else [], [], [], 0.1)
        if ready:
            chunk = os.read(stdin_fd, 65536)
            if not chunk:
                open_ = False  # the search is gone: its candidates end by their own watchdog
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode().split(" ")
                if len(parts) != 3 or parts[0] != "run":
                    continue
                pid = os.fork()
                if pid == 0:  # the candidate
                    code = 0
                    try:
                        os.close(proto_fd)
                        devnull = os.open(os.devnull, os.O_RDONLY)
                        os.dup2(devnull, 0)
                        child_main(parts[1], parts[2])
                    except BaseException:
                        traceback.print_exc()
                        code = 1
                    finally:
                        try:
                            sys.stdout.flush()
                            sys.stderr.flush()
                        finally:
                            os._exit(code)
                children.add(pid)
                print(f"pid {pid}", file=out, flush=True)
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                print(f"exit {pid} {code}", file=out, flush=True)


if __name__ == "__main__":  # python -m xsearch.worker --serve | JOB.json [LOG]
    if len(sys.argv) < 2:
        sys.exit("usage: python -m xsearch.worker --serve | JOB.json [LOG]")
    if sys.argv[1] == "--serve":
        serve()
    else:
        child_main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.devnull)
