"""Classifying how a run ended, from the exception that ended it."""
from __future__ import annotations

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
