"""Classifying how a run ended: from the exception that ended it, or from its losses (divergence)."""
from __future__ import annotations

import math
from typing import Any

from .privacy import scrub_text

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory",
                "cuda error: out of memory", "failed to allocate")


def is_oom(exc: BaseException) -> bool:
    """True for CUDA/torch/host out-of-memory errors."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in msg for m in _OOM_MARKERS)


def classify_exception(exc: BaseException) -> str:
    """Record status for a run that ended with ``exc``."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "interrupted"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if is_oom(exc):
        return "oom"
    return "failed"


def error_fields(exc: BaseException | None, status: str, message: str | None = None) -> dict[str, Any]:
    if exc is None:
        return {"status": status, "error_type": None if status == "completed" else "Unknown",
                "error_message": scrub_text(message)}
    text = str(exc) or repr(exc)
    return {"status": status, "error_type": type(exc).__name__, "error_message": scrub_text(text)}


# ---- divergence: a run whose loss became NaN/inf or exploded is a failure (status failed) ---------
DIVERGED = "Diverged"  # error_type of a diverged run
DIVERGENCE_FACTOR = 1e4  # a logged training loss above this many times the first logged one has exploded


def loss_divergence(loss: Any, first_loss: float | None, step: int | None = None,
                    what: str = "training loss") -> str | None:
    """Why a logged loss says the run diverged (None if it does not): the loss is NaN or infinite, or
    it exceeds ``DIVERGENCE_FACTOR`` times the first logged (positive, finite) training loss."""
    if isinstance(loss, bool) or not isinstance(loss, (int, float)):
        return None
    at = f" at step {step}" if step is not None else ""
    if not math.isfinite(loss):
        return f"the {what} became {loss}{at}"
    if first_loss is not None and first_loss > 0 and loss > DIVERGENCE_FACTOR * first_loss:
        return (f"the {what} exploded to {loss:.4g}{at}, more than {DIVERGENCE_FACTOR:.0e} times "
                f"the first logged training loss ({first_loss:.4g})")
    return None


def nonfinite_parameter(model: Any) -> str | None:
    """Name of a trainable parameter holding NaN or infinity (None if all are finite, or unknown).

    One pass over the trainable parameters at the end of training: it sees a divergence that the
    Trainer hid from its logs (``logging_nan_inf_filter``, on by default, logs NaN steps as the
    window's average)."""
    if model is None:
        return None
    try:
        import torch
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.requires_grad and p.is_floating_point() and p.numel() and not bool(torch.isfinite(p).all()):
                    return name
    except Exception:
        return None
    return None
