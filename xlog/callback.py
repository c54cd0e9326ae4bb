"""``XLogCallback``: one line in a Trainer's callbacks list records every run as an experience record."""
from __future__ import annotations

import atexit
import functools
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from transformers import TrainerCallback

from . import __version__
from . import schema as S
from .energy import EnergyMeter
from .failure import DIVERGED, classify_exception, error_fields, loss_divergence, nonfinite_parameter
from .hardware import probe_hardware
from .modelfeatures import compute_model_features
from .peftfeatures import peft_structure_features
from .privacy import scrub_text, scrub_user_value
from .store import LocalStore
from .taskfeatures import DEFAULT_MAX_SAMPLE, data_kind, task_features_job
from .trainfeatures import compute_train_features

log = logging.getLogger("xlog")
_PRIMARY_CANDIDATES = ("eval_f1", "eval_f1_macro", "eval_macro_f1", "eval_accuracy", "eval_loss")
HEARTBEAT_S = 30.0  # default seconds between provisional-record updates at logging steps
FEATURES_JOIN_S = 60.0  # how long closing a record waits for the background feature probes
MAX_CURVE_POINTS = 200  # learning-curve points kept in a record (all metrics together)
PRUNED = "Pruned"  # error_type of a run stopped early on purpose (status pruned)
# Logged numbers that are not learning-curve metrics (timings, throughput, the epoch counter).
_NOT_CURVE = re.compile(r"(^epoch$|_runtime$|_per_second$|^total_flos$)")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _peak_rss_gb() -> float | None:
    try:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb * (1 if sys.platform != "darwin" else 1 / 1024) / 1e6
    except Exception:
        return None


def _cpu_time_s() -> float | None:
    """User + system CPU seconds of this process (all threads) and of its waited-for children."""
    try:
        import resource
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    except Exception:
        return None


def _load_avg() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


class _Series:
    """One metric's curve points, bounded: every ``stride``-th logged point is kept, and when the
    buffer fills, every other kept point is dropped and the stride doubles (so the kept points stay
    evenly spaced in logging order); the latest point is always known. O(1) per point."""

    __slots__ = ("points", "stride", "seen", "last", "buffer")

    def __init__(self, buffer: int = 2 * MAX_CURVE_POINTS) -> None:
        self.points: list[dict[str, Any]] = []
        self.stride, self.seen = 1, 0
        self.last: dict[str, Any] | None = None
        self.buffer = max(int(buffer), 4)

    def add(self, point: dict[str, Any]) -> None:
        if self.seen % self.stride == 0:
            self.points.append(point)
            if len(self.points) >= self.buffer:
                self.points = self.points[::2]
                self.stride *= 2
        self.seen += 1
        self.last = point

    def all(self) -> list[dict[str, Any]]:
        if self.last is not None and (not self.points or self.points[-1] is not self.last):
            return self.points + [self.last]
        return list(self.points)


def downsample(points: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most ``n`` of ``points``: the first, the last and evenly spaced ones between."""
    if len(points) <= n:
        return list(points)
    if n <= 1:
        return points[-1:] if n == 1 else []
    idx = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in idx]


def bounded_curve(series: Mapping[tuple[str, str], list[dict[str, Any]]],
                  max_points: int = MAX_CURVE_POINTS) -> list[dict[str, Any]]:
    """The curve of a record from each metric's points: at most ``max_points`` in all, shared
    between the metrics (a short series leaves its unused share to the others), in step order."""
    out: list[dict[str, Any]] = []
    left, todo = max_points, sorted(series.items(), key=lambda kv: len(kv[1]))
    for i, (_, pts) in enumerate(todo):
        share = max(left // (len(todo) - i), 2) if left >= 2 else left
        kept = downsample(pts, share)
        out.extend(kept)
        left -= len(kept)
    order = {"train": 0, "eval": 1}
    out.sort(key=lambda p: (p["step"], order.get(p["kind"], 2), p["name"]))
    return out[:max_points]


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


_OBJECTIVE_TASKS = {"sequence-classification": "text-classification", "seq2seq-lm": "seq2seq"}


def _infer_task_type(objective: str | None, train_dataset: Any) -> str | None:
    """The task type when the user gave none: question answering when the data has question and
    answer columns and the model generates (or is an extractive QA head), else from the model head."""
    if objective in ("causal-lm", "seq2seq-lm", "question-answering") and data_kind(train_dataset):
        return data_kind(train_dataset)
    return _OBJECTIVE_TASKS.get(objective, objective) if objective else None


class XLogCallback(TrainerCallback):
    """Records task, model, PEFT, hyperparameter, hardware, outcome and energy features of a
    ``transformers.Trainer`` run (successful or not) as one row in the local xlog store.

    Add it with one line: ``Trainer(..., callbacks=[XLogCallback()])``. Every argument is optional.
    The same line records classification, question answering and causal-LM runs: the task type
    comes from the model head and the data (question and answer columns: ``question-answering``),
    and generative data gets its own meta-features (prompt, context, question and answer lengths in
    tokens, question-context overlap; from the text columns, or from the -100 mask of the labels of
    pre-tokenized data), never its text.

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
            accuracy, loss). greater_is_better: its direction (default: False for a loss, perplexity
            or error rate, else the Trainer's ``greater_is_better``, else True).
        energy: measure energy (codecarbon offline tracker and NVML counters when available).
        country_iso_code: grid for CO2 (default: ``$XLOG_COUNTRY_ISO_CODE`` or USA).
        max_seq_length: the maximum sequence length your preprocessing uses, if the data is not
            pre-tokenized (the Trainer does not know it).
        model_name: a public name for the model if ``config._name_or_path`` is a local path.
        stop_on_divergence: stop training (``control.should_training_stop``) as soon as a logged loss
            shows the run diverged (NaN/inf, or above 1e4 x the first logged loss). Off by default: the
            run is recorded as ``failed``/``Diverged`` either way.
        heartbeat_s: at most this often (seconds) the provisional record is updated at a logging step
            with the latest numbers, so that a run killed with SIGKILL keeps them (default 30; every
            evaluation updates it too).

    The record keeps the learning curve (``curve``): each evaluation's metrics and the training loss
    at the logged steps, with step, epoch and elapsed seconds, at most ``max_curve_points`` (200) points
    (collected in ``on_log``/``on_evaluate`` only: nothing is added to a training step). It also
    keeps the process's CPU time (``train_cpu_time_s``) and the machine's mean load
    (``hw_load_avg``). :meth:`prune` stops a run early on purpose (status ``pruned``).

    Life cycle: at train begin a provisional record is opened under ``$XLOG_HOME/provisional/``
    (invisible to queries); features that take time (task meta-features, hardware, energy metering)
    are computed in a background thread while training starts. At the end (or on an exception,
    SIGTERM, Ctrl-C, exit) the final record is written atomically and the provisional one removed. A
    process killed outright (SIGKILL, the out-of-memory killer) leaves the provisional record, which
    the next ``xlog``/``xsearch`` command on the machine turns into a record (``LocalStore.close_orphans``).
    """

    def __init__(self, task_name: str | None = None, task_type: str | None = None, language: str | None = None,
                 domain: str | None = None, contributor: str | None = None, search_id: str | None = None,
                 store: str | os.PathLike | LocalStore | None = None, text_column: str | None = None,
                 label_column: str | None = None, max_sample: int = DEFAULT_MAX_SAMPLE,
                 primary_metric: str | None = None, greater_is_better: bool | None = None,
                 energy: bool = True, country_iso_code: str | None = None, max_seq_length: int | None = None,
                 model_name: str | None = None, extra_secrets: tuple[str, ...] = (),
                 stop_on_divergence: bool = False, heartbeat_s: float = HEARTBEAT_S,
                 max_curve_points: int = MAX_CURVE_POINTS):
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
        self.stop_on_divergence = bool(stop_on_divergence)
        self.heartbeat_s = float(heartbeat_s)
        self.max_curve_points = max(int(max_curve_points), 2)
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
        # Life cycle: the feature probes that run in the background, and the provisional record.
        self._job: Callable[[], dict[str, Any]] | None = None
        self._bg: threading.Thread | None = None
        self._beat_lock = threading.RLock()  # reentrant: a SIGTERM handler may close mid-write
        self._last_beat = 0.0
        self._store_warned = False
        # Divergence: the first logged training loss, and why the run diverged (None while it has not).
        self._first_loss: float | None = None
        self._diverged: str | None = None
        self._stopped_early = False
        self._warned_metrics: set[str] = set()
        # Learning curve (per (kind, metric) series), CPU time and load samples of the open run.
        self._series: dict[tuple[str, str], _Series] = {}
        self._cpu0: float | None = None
        self._loads: list[float] = []
        self._pruned: str | None = None

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
        # After _open (which a subclass may extend, e.g. to fix the record id): the provisional
        # record, then the slow feature probes, in a background thread.
        self._start_background()
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return control
        # Only at logging steps: keep the latest numbers, check the loss, nothing more.
        self._last_logs.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        if not self._active or self.record is None or self._closed:
            return control
        if "loss" in logs:
            self._add_points(state, "train", {"loss": logs["loss"]})
        if self._diverged is None:
            step = getattr(state, "global_step", None)
            why = loss_divergence(logs.get("loss"), self._first_loss, step) or \
                loss_divergence(logs.get("train_loss"), None, step, "mean training loss")
            loss = logs.get("loss")
            if why is None and self._first_loss is None and isinstance(loss, (int, float)) and not isinstance(loss, bool):
                self._first_loss = float(loss)
            if why is not None:
                self._set_diverged(why, state)
        self._maybe_stop(control)
        if time.monotonic() - self._last_beat >= self.heartbeat_s:
            self._heartbeat(state, wait=False)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self._active or not metrics:
            return control
        if self._diverged is None and self.record is not None:
            # Only a NaN/inf evaluation loss (first_loss=None): its scale is not the training loss's.
            why = loss_divergence(metrics.get("eval_loss"), None, getattr(state, "global_step", None), "evaluation loss")
            if why is not None:
                self._set_diverged(why, state, beat=False)
            self._maybe_stop(control)
        self._eval_metrics = self._score_fractions({
            k: float(v) for k, v in metrics.items() if k != "epoch"
            and isinstance(v, (int, float)) and not isinstance(v, bool) and S.finite_or_none(v) is not None})
        if self.record is not None:
            self._add_points(state, "eval", {k: v for k, v in self._eval_metrics.items() if not _NOT_CURVE.search(k)})
        if self._closed and self.record is not None:
            # An evaluate() after training updates the outcome of the record already written.
            with self._lock:
                self._fill_outcome(state)
                self._apply_divergence()
                self._write()
        elif self.record is not None:
            self._heartbeat(state, wait=False)
        return control

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._active and self.record is not None and not self._closed:
            if self._diverged is None:  # what the Trainer's NaN filter may have hidden from the logs
                name = nonfinite_parameter(model if model is not None else getattr(self._trainer, "model", None))
                if name is not None:
                    self._diverged = f"trainable parameters hold NaN or infinity at the end of training (e.g. {name})"
                    log.warning("xlog: the run diverged: %s", self._diverged)
            if self._pruned is not None:
                self._close("pruned", state=state, message=self._pruned, error_type=PRUNED)
            else:
                self._close("completed", state=state)
        return control

    # ---- learning curve and early stopping ---------------------------------------------------
    def _add_points(self, state: Any, kind: str, values: Mapping[str, Any]) -> None:
        """Append one point per metric (at a logging step or an evaluation, never per training step)."""
        step = int(getattr(state, "global_step", 0) or 0)
        epoch = S.finite_or_none(getattr(state, "epoch", None))
        elapsed = time.monotonic() - self._t0 if self._t0 is not None else None
        for name, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            point = {"step": step, "epoch": epoch, "elapsed_s": elapsed, "kind": kind, "name": str(name),
                     "value": S.finite_or_none(v)}
            series = self._series.get((kind, str(name)))
            if series is None:
                series = self._series[(kind, str(name))] = _Series(2 * self.max_curve_points)
            series.add(point)

    def curve(self) -> list[dict[str, Any]]:
        """The learning curve so far, bounded (what the record's ``curve`` field holds)."""
        return bounded_curve({k: s.all() for k, s in self._series.items()}, self.max_curve_points)

    def prune(self, reason: str, control: Any = None) -> None:
        """Stop this run early on purpose (e.g. it cannot beat the best run so far): training stops
        at the end of the current step and the record is closed with status ``pruned``, error type
        ``Pruned`` and ``reason`` as its message, with the partial curve and the time it used. A run
        that diverged stays ``failed``."""
        if self._closed or self.record is None:
            return
        self._pruned = str(reason)
        if control is not None:
            control.should_training_stop = True
        log.info("xlog: pruning the run: %s", reason)

    # ---- divergence and metrics ------------------------------------------------------------
    def _set_diverged(self, why: str, state: Any, beat: bool = True) -> None:
        self._diverged = why
        log.warning("xlog: the run diverged: %s; it will be recorded as failed (%s)%s", why, DIVERGED,
                    "; stopping training (stop_on_divergence)" if self.stop_on_divergence else "")
        if beat:
            self._heartbeat(state, wait=False)  # a run killed from now on is still recorded as diverged

    def _maybe_stop(self, control: Any) -> None:
        if self._diverged is not None and self.stop_on_divergence and not self._closed:
            control.should_training_stop = True
            self._stopped_early = True

    def _apply_divergence(self) -> None:
        """A completed record of a diverged run becomes failed/Diverged (after a late evaluate)."""
        rec = self.record
        if rec is not None and self._diverged and rec.get("status") == "completed":
            rec.update(status="failed", error_type=DIVERGED, error_message=scrub_text(self._diverged)[:2000])

    def _score_fractions(self, metrics: dict[str, float]) -> dict[str, float]:
        """Scores (F1, accuracy, exact match, precision, recall) are fractions in the record: an obvious
        percentage is rescaled, a value still out of bounds left out, each with a warning, so that the
        record stays valid and the run is kept (``xlog.schema.rescale_scores``)."""
        out, notes = S.rescale_scores(metrics)
        for name, msg in notes:
            self._warn_metric(name, f"xlog: {msg}")
        return out

    def _warn_metric(self, name: str, msg: str) -> None:
        if name not in self._warned_metrics:  # once per metric and run, not at every evaluation
            self._warned_metrics.add(name)
            warnings.warn(msg, UserWarning, stacklevel=3)
            log.warning(msg)

    # ---- record life cycle ----------------------------------------------------------------
    def _open(self, args, state, model, tokenizer, train_dl, eval_dl) -> None:
        self._t0 = time.monotonic()
        self._closed = False
        self._first_loss, self._diverged, self._stopped_early = None, None, False
        self._series, self._pruned, self._cpu0 = {}, None, _cpu_time_s()
        self._loads = [x for x in (_load_avg(),) if x is not None]
        self._bg, self._job, self._last_beat = None, None, 0.0
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
        # Model and hyperparameters (milliseconds) now; task meta-features and hardware later, in a
        # background thread (see _start_background), after what must be read on this thread is read.
        for fn in (lambda: compute_model_features(model, self.model_name), lambda: peft_structure_features(model),
                   lambda: compute_train_features(args, state, rec.get("model_dtype"))):
            try:
                rec.update({k: v for k, v in fn().items() if k in rec})
            except Exception as exc:
                log.warning("xlog: a feature probe failed (%s: %s); its fields stay null", type(exc).__name__, exc)
        try:
            task_job = task_features_job(train_ds, eval_ds, tokenizer, self.text_column, self.label_column,
                                         self.max_sample)
        except Exception as exc:
            log.warning("xlog: a feature probe failed (%s: %s); its fields stay null", type(exc).__name__, exc)
            task_job = dict
        device = self._device_type(model, args)

        def job() -> dict[str, Any]:
            out: dict[str, Any] = {}
            for fn in (task_job, lambda: probe_hardware(device)):
                try:
                    out.update(fn())
                except Exception as exc:
                    log.warning("xlog: a feature probe failed (%s: %s); its fields stay null", type(exc).__name__, exc)
            return out
        self._job = job
        if self.max_seq_length:
            rec["train_max_seq_length"] = int(self.max_seq_length)
        rec.update({k: v for k, v in self.user.items() if v})
        if not rec.get("task_type"):
            rec["task_type"] = _infer_task_type(rec.get("model_objective"), train_ds)
        try:
            import torch
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        except Exception:
            pass

    def _merge_features(self, feats: Mapping[str, Any]) -> None:
        rec = self.record
        if rec is None:
            return
        feats = {k: v for k, v in feats.items() if k in rec}
        if self.max_seq_length:
            feats.pop("train_max_seq_length", None)  # the user's value wins over the sampled one
        rec.update(feats)

    def _start_background(self) -> None:
        """Open the provisional record, then run the feature probes, off the training thread."""
        job, self._job = self._job, None

        def run() -> None:
            self._beat()
            if job is not None:
                self._merge_features(job())
                self._beat()
        self._bg = threading.Thread(target=run, name="xlog-features", daemon=True)
        self._bg.start()

    def _finish_background(self) -> None:
        """Wait for the feature probes (or run them here if they never started) before closing."""
        bg = self._bg
        if bg is not None and bg is not threading.current_thread():
            bg.join(FEATURES_JOIN_S)
            if bg.is_alive():
                log.warning("xlog: the feature probes did not finish within %.0f s; their fields stay null",
                            FEATURES_JOIN_S)
        job, self._job = self._job, None
        if job is not None:  # the run failed before train begin: no background thread was started
            self._merge_features(job())

    def _heartbeat(self, state: Any, wait: bool) -> None:
        """Update the provisional record with the latest numbers (at evaluations and logging steps)."""
        if self.record is None or self._closed:
            return
        self._last_beat = time.monotonic()  # the first logging step always writes, then every heartbeat_s
        try:
            self._fill_outcome(state)
        except Exception:
            pass
        self._beat(wait=wait)

    def _beat(self, wait: bool = True) -> None:
        """Write the provisional record as known now; a store that cannot be written is reported once."""
        if not self._beat_lock.acquire(timeout=5 if wait else 0):
            return  # another thread is writing it right now
        try:
            rec = self.record
            if rec is None or self._closed:
                return
            rec["outcome_peak_rss_gb"] = _peak_rss_gb()
            self.store.write_provisional(dict(rec), elapsed_s=time.monotonic() - self._t0 if self._t0 else None,
                                         diverged=self._diverged)
        except Exception as exc:
            if not self._store_warned:
                self._store_warned = True
                log.warning("xlog: cannot write the provisional record in %s (%s: %s): if this process is killed "
                            "(SIGKILL, out of memory) the run leaves no record", self.store.root,
                            type(exc).__name__, exc)
        finally:
            self._beat_lock.release()

    def _discard_provisional(self, record_id: str) -> None:
        got = self._beat_lock.acquire(timeout=5)  # after a background write in flight, never before
        try:
            self.store.discard_provisional(record_id)
        except OSError as exc:
            log.warning("xlog: could not remove the provisional record %s (%s)", record_id, exc)
        finally:
            if got:
                self._beat_lock.release()

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
            rec["outcome_greater_is_better"] = self._greater_is_better(primary)
        rec["outcome_train_loss"] = S.finite_or_none(logs.get("train_loss", logs.get("loss")))
        rt = logs.get("train_runtime")
        rec["outcome_train_runtime_s"] = S.finite_or_none(rt) if rt is not None else (
            time.monotonic() - self._t0 if self._t0 else None)
        rec["outcome_train_samples_per_s"] = S.finite_or_none(logs.get("train_samples_per_second"))
        rec["outcome_eval_runtime_s"] = S.finite_or_none(metrics.get("eval_runtime"))
        # Curve, CPU time and load: sampled here (heartbeats, evaluations, close), never per step.
        rec["curve"] = self.curve() or None
        cpu = _cpu_time_s()
        if cpu is not None and self._cpu0 is not None:
            rec["train_cpu_time_s"] = max(cpu - self._cpu0, 0.0)
        load = _load_avg()
        if load is not None:
            self._loads.append(load)
        if self._loads:
            rec["hw_load_avg"] = sum(self._loads) / len(self._loads)

    def _greater_is_better(self, primary: str) -> bool:
        """The primary metric's direction: the user's ``greater_is_better``; for a metric named as a
        loss, perplexity or error rate, False (TrainingArguments fills ``greater_is_better = not
        name.endswith("loss")`` itself, which would call a perplexity better when higher); else the
        Trainer's ``greater_is_better`` for its ``metric_for_best_model``; else True."""
        if self.greater_is_better is not None:
            return bool(self.greater_is_better)
        if S.lower_is_better(primary):
            return False
        args = getattr(self._trainer, "args", None)
        wanted = getattr(args, "metric_for_best_model", None) if args is not None else None
        if wanted and getattr(args, "greater_is_better", None) is not None and primary in (wanted, f"eval_{wanted}"):
            return bool(args.greater_is_better)
        return True

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
        if self.record is None or self._closed:
            return
        self._finish_background()  # outside the lock: the probes' thread never waits for it
        with self._lock:
            if self.record is None or self._closed:
                return
            self._closed = True
            rec = self.record
            if self._diverged and status in ("completed", "interrupted", "pruned"):
                # A diverged run is a failure of its configuration, however it ended.
                how = ("training was stopped there (stop_on_divergence)" if self._stopped_early and status == "completed"
                       else "training then ran to its end" if status == "completed"
                       else "then the run was pruned" if status == "pruned"
                       else f"then the run was interrupted ({message or (type(exc).__name__ if exc else 'exit')})")
                status, exc, error_type, message = "failed", None, DIVERGED, f"{self._diverged}; {how}"
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
            try:
                self._write()
            finally:
                # Written, or kept in quarantine, or impossible to keep: either way the run is closed,
                # and its provisional record must not become an "interrupted" record later.
                self._discard_provisional(rec["record_id"])

    def _write(self) -> None:
        rec = self.record
        assert rec is not None
        try:
            self.record_path = self.store.write(rec)
            log.info("xlog: recorded run %s (%s) in %s", rec["record_id"], rec["status"], self.record_path)
        except Exception as exc:
            # Never lose the run: keep it as JSON in the quarantine folder for `xlog validate`.
            self.record_path = None
            dump = self.store.quarantine_dir / f"{rec['record_id']}.json"
            try:
                dump.parent.mkdir(parents=True, exist_ok=True)
                dump.write_text(json.dumps(rec, default=str, indent=1), encoding="utf-8")
            except OSError as dump_exc:
                log.error("xlog: could not write the record (%s: %s), nor keep a copy in %s (%s: %s): this run "
                          "is not recorded", type(exc).__name__, exc, self.store.quarantine_dir,
                          type(dump_exc).__name__, dump_exc)
                return
            log.error("xlog: could not write the record (%s: %s); kept as %s (see `xlog validate`)",
                      type(exc).__name__, exc, dump)

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
