"""Where candidates run: one small interface, three engines.

``submit(config, timeout_s) -> ticket``; ``wait(timeout) -> [(ticket, Outcome), ...]`` (the
candidates that finished, in any order); ``cancel(ticket)``; ``close()``; ``slots`` (how many
candidates may be in flight). Every outcome's experience record is in the driver's store, exactly
once, when ``wait`` returns it.

- ``local`` (``LocalExecutor``): ``workers`` processes on this machine, forked from one server
  that imported torch once; one GPU per worker by default on a machine with GPUs.
- ``ray`` (``RayExecutor``): each candidate is a Ray task on a Ray cluster; its record travels
  back as Parquet bytes (workers need not share a disk with the driver).
- ``slurm`` (``SlurmExecutor``): each candidate is a SLURM job through submitit (its local
  executor where there is no SLURM).
"""
from __future__ import annotations

from typing import Any, Protocol

from ..evaluator import Outcome
from ..space import Config

__all__ = ["Executor", "ExecutorSettings", "make_executor", "EXECUTORS"]

EXECUTORS = ("local", "ray", "slurm")

from .base import ExecutorSettings  # noqa: E402


class Executor(Protocol):
    slots: int

    def submit(self, config: Config, timeout_s: float) -> int: ...

    def wait(self, timeout: float | None = None) -> list[tuple[int, Outcome]]: ...

    def cancel(self, ticket: int) -> None: ...

    def close(self) -> None: ...


def make_executor(name: str, settings: ExecutorSettings, **context: Any) -> Executor:
    """The executor called ``name`` (``local``, ``ray`` or ``slurm``); ``context`` is what every
    executor needs to run a candidate (task_dir, space, store, search_id, task_name, ...)."""
    if name == "local":
        from .local import LocalExecutor
        return LocalExecutor(settings, **context)
    if name == "ray":
        from .ray import RayExecutor
        return RayExecutor(settings, **context)
    if name == "slurm":
        from .slurm import SlurmExecutor
        return SlurmExecutor(settings, **context)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
