"""``XLogCallback``: one line in a Trainer's callbacks list records every run as an experience record."""
from __future__ import annotations

import atexit
import functools
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from transformers import TrainerCallback

from . import __version__
from . import schema as S
from .energy import EnergyMeter
from .failure import classify_exception, error_fields
from .hardware import probe_hardware
from .modelfeatures import compute_model_features
from .privacy import scrub_text, scrub_user_value
from .store import LocalStore
from .taskfeatures import DEFAULT_MAX_SAMPLE, compute_task_features
from .trainfeatures import compute_train_features

log = logging.getLogger("xlog")
_PRIMARY_CANDIDATES = ("eval_f1", "eval_f1_macro", "eval_macro_f1", "eval_accuracy", "eval_loss")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _peak_rss_gb() -> float | None:
    try:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb * (1 if sys.platform != "darwin" else 1 / 1024) / 1e6
    except Exception:
        return None


def _find_trainer() -> Any:
    """The Trainer under construction, found in the caller frames of ``on_init_end``."""
    try:
        from transformers import Trainer
    except ImportError:
        return None
    frame = inspect.currentframe()
    try:
        while frame is not None:
            obj = frame.f_locals.get("self")
            if isinstance(obj, Trainer):
                return obj
            frame = frame.f_back
    finally:
        del frame
    return None


class XLogCallback(TrainerCallback):
    """Records task, model, PEFT, hyperparameter, hardware, outcome and energy features of a
    ``transformers.Trainer`` run (successful or not) as one row in the local xlog store.

    Add it with one line: ``Trainer(..., callbacks=[XLogCallback()])``. Every argument is optional.

    Args:
        task_name, task_type, language, domain: describe the task (public, user-chosen strings:
            private data in them, such as an e-mail address or a path, is scrubbed with a
            ``PrivacyWarning``; at most 256 characters).
        contributor: optional public name for shared records (default: ``$XLOG_CONTRIBUTOR`` or anonymous).
        search_id: id of the search this run belongs to (default: ``$XLOG_SEARCH_ID``).
        store: store root directory or ``LocalStore`` (default: ``$XLOG_HOME`` or ``~/.cache/xlog``).
        text_column, label_column: dataset columns to describe (default: detected).
        max_sample: rows sampled for task meta-features (bounds their cost on large datasets).
        primary_metric: metric to report as primary (default: ``metric_for_best_model``, else F1,
            accuracy, loss). greater_is_better: its direction (default: inferred).
        energy: measure energy (codecarbon offline tracker and NVML counters when available).
        country_iso_code: grid for CO2 (default: ``$XLOG_COUNTRY_ISO_CODE`` or USA).
        max_seq_length: the maximum sequence length your preprocessing uses, if the data is not
            pre-tokenized (the Trainer does not know it).
        model_name: a public name for the model if ``config._name_or_path`` is a local path.
    """

    def __init__(self, task_name: str | None = None, task_type: str | None = None, language: str | None = None,
                 domain: str | None = None, contributor: str | None = None, search_id: str | None = None,
                 store: str | os.PathLike | LocalStore | None = None, text_column: str | None = None,
                 label_column: str | None = None, max_sample: int = DEFAULT_MAX_SAMPLE,
                 primary_metric: str | None = None, greater_is_better: bool | None = None,
                 energy: bool = True, country_iso_code: str | None = None, max_seq_length: int | None = None,
                 model_name: str | None = None, extra_secrets: tuple[str, ...] = ()):
        # User-given strings are public once pushed: scrubbed now (a PrivacyWarning says what
        # changed), as LocalStore.write, `xlog validate`, push and pull check them again.
        self.user = {k: scrub_user_value(k, v) for k, v in (
            ("task_name", task_name or os.environ.get("XLOG_TASK_NAME")), ("task_type", task_type),
            ("task_language", language), ("task_domain", domain))}
        self.contributor = scrub_user_value("contributor", contributor or os.environ.get("XLOG_CONTRIBUTOR"))
        self.search_id = scrub_user_value("search_id", search_id or os.environ.get("XLOG_SEARCH_ID"))
        self.store = store if isinstance(store, LocalStore) else LocalStore(store)
        self.text_column, self.label_column = text_column, label_column
        self.max_sample = max_sample
        self.primary_metric, self.greater_is_better = primary_metric, greater_is_better
        self.energy_enabled = energy and os.environ.get("XLOG_ENERGY", "1") != "0"
        self.country_iso_code = country_iso_code
        self.max_seq_length = max_seq_length
        self.model_name = model_name
        self.extra_secrets = tuple(extra_secrets)
        self.record: dict[str, Any] | None = None
        self.record_path: Path | None = None
        self._trainer: Any = None
        self._meter: EnergyMeter | None = None
        self._t0: float | None = None
        self._last_logs: dict[str, float] = {}
        self._eval_metrics: dict[str, float] = {}
        self._closed = False
        self._active = True
        self._prev_sigterm: Any = None
        self._lock = threading.RLock()

    # ---- Trainer events -------------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        trainer = _find_trainer()
        if trainer is not None and self._trainer is None:
            self._trainer = trainer
            self._wrap_train(trainer)
        if self.energy_enabled and self._meter is None and getattr(args, "process_index", 0) == 0:
            # codecarbon needs ~2 s to start; starting it with the Trainer (in a background
            # thread) means it is usually measuring by the time training begins.
            self._meter = EnergyMeter(country_iso_code=self.country_iso_code)
            self._meter.start()
            atexit.register(self._release_meter)
        return control

    def _release_meter(self) -> None:
        if self.record is None and self._meter is not None:
            self._meter.stop()

    def on_train_begin(self, args, state, control, model=None, processing_class=None,
                       train_dataloader=None, eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero:
            self._active = False  # only the main process writes
            return control
        if self.record is not None and not self._closed:
            return control  # a second train() call on the same open record
        self._open(args, state, model, processing_class, train_dataloader, eval_dataloader)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:  # only at logging steps: keep the latest numbers, nothing more
            self._last_logs.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self._active or not metrics:
            return control
        self._eval_metrics = {k: float(v) for k, v in metrics.items() if k != "epoch"
                              and isinstance(v, (int, float)) and not isinstance(v, bool) and S.finite_or_none(v) is not None}
        if self._closed and self.record is not None:
            # An evaluate() after training updates the outcome of the record already written.
            with self._lock:
                self._fill_outcome(state)
                self._write()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._active and self.record is not None and not self._closed:
            self._close("completed", state=state)
        return control

    # ---- record life cycle ----------------------------------------------------------------
    def _open(self, args, state, model, tokenizer, train_dl, eval_dl) -> None:
        self._t0 = time.monotonic()
        self._closed = False
        rec: dict[str, Any] = {name: None for name in S.field_names()}
        rec.update(record_id=S.new_record_id(), schema_version=S.CURRENT_VERSION, created_at=_now(),
                   xlog_version=__version__, source="xlog", contributor=self.contributor,
                   search_id=self.search_id, status="interrupted", error_type=None, error_message=None)
        self.record = rec
        self._install_exit_hooks()
        if self.energy_enabled:
            if self._meter is None:
                self._meter = EnergyMeter(country_iso_code=self.country_iso_code)
                self._meter.start()
            self._meter.mark_run_start()
        tr = self._trainer
        model = model if model is not None else getattr(tr, "model", None)
        tokenizer = tokenizer if tokenizer is not None else getattr(tr, "processing_class", None)
        train_ds = getattr(tr, "train_dataset", None) if tr is not None else None
        eval_ds = getattr(tr, "eval_dataset", None) if tr is not None else None
        if train_ds is None and train_dl is not None:
            train_ds = getattr(train_dl, "dataset", None)
        if eval_ds is None and eval_dl is not None:
            eval_ds = getattr(eval_dl, "dataset", None)
        # Each probe is isolated: a feature that cannot be computed stays null, training goes on.
        for fn in (lambda: compute_model_features(model, self.model_name),
                   lambda: compute_train_features(args, state, rec.get("model_dtype")),
                   lambda: compute_task_features(train_ds, eval_ds, tokenizer, self.text_column,
                                                 self.label_column, self.max_sample),
                   lambda: probe_hardware(self._device_type(model, args))):
            try:
                rec.update({k: v for k, v in fn().items() if k in rec})
            except Exception as exc:
                log.warning("xlog: a feature probe failed (%s: %s); its fields stay null", type(exc).__name__, exc)
        if self.max_seq_length:
            rec["train_max_seq_length"] = int(self.max_seq_length)
        rec.update({k: v for k, v in self.user.items() if v})
        if not rec.get("task_type") and rec.get("model_objective"):
            rec["task_type"] = {"sequence-classification": "text-classification",
                                "seq2seq-lm": "seq2seq"}.get(rec["model_objective"], rec["model_objective"])
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        except Exception:
            pass

    @staticmethod
    def _device_type(model: Any, args: Any) -> str | None:
        try:
            return next(model.parameters()).device.type
        except Exception:
            dev = getattr(args, "device", None)
            return getattr(dev, "type", None)

    def _fill_outcome(self, state: Any) -> None:
        rec = self.record
        assert rec is not None
        logs = dict(self._last_logs)
        metrics = dict(self._eval_metrics)
        if state is not None:  # the Trainer's own history has the final train metrics
            for entry in getattr(state, "log_history", []) or []:
                logs.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
            rec["outcome_steps_completed"] = int(state.global_step)
            rec["outcome_epochs_completed"] = S.finite_or_none(state.epoch) if state.epoch is not None else None
        rec["outcome_metrics"] = metrics or None
        primary = self._primary_name(metrics)
        if primary:
            rec["outcome_primary_metric"] = primary
            rec["outcome_primary_value"] = S.finite_or_none(metrics.get(primary))
            gib = self.greater_is_better
            if gib is None:
                args = getattr(self._trainer, "args", None)
                if args is not None and args.metric_for_best_model and getattr(args, "greater_is_better", None) is not None \
                        and primary.endswith(args.metric_for_best_model):
                    gib = bool(args.greater_is_better)
                else:
                    gib = not primary.endswith("loss")
            rec["outcome_greater_is_better"] = gib
        rec["outcome_train_loss"] = S.finite_or_none(logs.get("train_loss", logs.get("loss")))
        rt = logs.get("train_runtime")
        rec["outcome_train_runtime_s"] = S.finite_or_none(rt) if rt is not None else (
            time.monotonic() - self._t0 if self._t0 else None)
        rec["outcome_train_samples_per_s"] = S.finite_or_none(logs.get("train_samples_per_second"))
        rec["outcome_eval_runtime_s"] = S.finite_or_none(metrics.get("eval_runtime"))

    def _primary_name(self, metrics: Mapping[str, float]) -> str | None:
        wanted = self.primary_metric
        if not wanted:
            args = getattr(self._trainer, "args", None)
            wanted = getattr(args, "metric_for_best_model", None) if args is not None else None
        if wanted:
            for name in (wanted, f"eval_{wanted}"):
                if name in metrics:
                    return name
            return None  # the metric asked for was not computed: no primary value rather than a wrong one
        return next((m for m in _PRIMARY_CANDIDATES if m in metrics), None)

    def _close(self, status: str, exc: BaseException | None = None, state: Any = None,
               message: str | None = None, error_type: str | None = None) -> None:
        with self._lock:
            if self.record is None or self._closed:
                return
            self._closed = True
            rec = self.record
            state = state if state is not None else getattr(self._trainer, "state", None)
            try:
                self._fill_outcome(state)
            except Exception as e:
                log.warning("xlog: could not read the outcome (%s)", e)
            rec.update(error_fields(exc, status, message))
            if error_type:
                rec["error_type"] = error_type
            if exc is not None and self.extra_secrets:
                rec["error_message"] = scrub_text(rec["error_message"], self.extra_secrets)
            rec["ended_at"] = _now()
            rec["outcome_total_runtime_s"] = time.monotonic() - self._t0 if self._t0 else None
            rec["outcome_peak_rss_gb"] = _peak_rss_gb()
            try:
                import torch
                if torch.cuda.is_available():
                    rec["outcome_peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
            except Exception:
                pass
            if self._meter is not None:
                try:
                    rec.update(self._meter.stop())
                except Exception as e:
                    log.warning("xlog: energy meter failed (%s)", e)
                    rec["energy_source"] = "none"
            else:
                rec["energy_source"] = "none"
            self._uninstall_exit_hooks()
            self._write()

    def _write(self) -> None:
        rec = self.record
        assert rec is not None
        try:
            self.record_path = self.store.write(rec)
            log.info("xlog: recorded run %s (%s) in %s", rec["record_id"], rec["status"], self.record_path)
        except Exception as exc:
            # Never lose the run: keep it as JSON in the quarantine folder for `xlog validate`.
            dump = self.store.quarantine_dir / f"{rec['record_id']}.json"
            try:
                dump.parent.mkdir(parents=True, exist_ok=True)
                dump.write_text(json.dumps(rec, default=str, indent=1), encoding="utf-8")
            except OSError:
                pass
            log.error("xlog: could not write the record (%s: %s); kept as %s", type(exc).__name__, exc, dump)

    # ---- failures: the Trainer calls no callback when train() raises ------------------------
    def _wrap_train(self, trainer: Any) -> None:
        original = trainer.train
        cb = self

        @functools.wraps(original)
        def train(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                cb._on_exception(exc)
                raise
        trainer.train = train

    def _on_exception(self, exc: BaseException) -> None:
        if not self._active:
            return
        try:
            if self.record is None or self._closed:
                tr = self._trainer
                if tr is None or not getattr(getattr(tr, "state", None), "is_world_process_zero", True):
                    return
                if self.record is not None and self._closed:
                    return  # failed after the run was already recorded (e.g. in a later evaluate)
                # Failed before on_train_begin (e.g. building the dataloader): record what is known.
                self._open(tr.args, tr.state, tr.model, getattr(tr, "processing_class", None), None, None)
            self._close(classify_exception(exc), exc=exc)
        except Exception as e:  # recording must never mask the user's exception
            log.error("xlog: could not record the failure (%s: %s)", type(e).__name__, e)

    def _install_exit_hooks(self) -> None:
        atexit.register(self._at_exit)
        if threading.current_thread() is threading.main_thread():
            try:
                self._prev_sigterm = signal.getsignal(signal.SIGTERM)
                signal.signal(signal.SIGTERM, self._on_sigterm)
            except (ValueError, OSError):
                self._prev_sigterm = None
        if self._trainer is None:  # no train() wrapper: catch what reaches the top level
            prev = sys.excepthook

            def hook(tp, value, tb):
                self._on_exception(value)
                prev(tp, value, tb)
            sys.excepthook = hook

    def _uninstall_exit_hooks(self) -> None:
        try:
            atexit.unregister(self._at_exit)
        except Exception:
            pass
        if self._prev_sigterm is not None and threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                    signal.signal(signal.SIGTERM, self._prev_sigterm)
            except (ValueError, OSError):
                pass

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        prev = self._prev_sigterm
        # A supervisor that kills for a time limit says so (xsearch's evaluator sets this).
        status = os.environ.get("XLOG_SIGTERM_STATUS", "interrupted")
        status = status if status in S.STATUSES else "interrupted"
        self._close(status, message=f"terminated by signal {signal.Signals(signum).name}", error_type="SIGTERM")
        if callable(prev):
            prev(signum, frame)
        elif prev != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _at_exit(self) -> None:
        if self.record is not None and not self._closed:
            self._close("interrupted", message="the process exited during training", error_type="ProcessExit")
