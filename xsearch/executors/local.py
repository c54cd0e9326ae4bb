"""Candidates as processes on this machine: ``workers`` at once, forked from one server that
imported torch once (``SubprocessEvaluator``), each with its time and memory limits. On a machine
with GPUs each worker slot gets its own GPU(s) by default (``CUDA_VISIBLE_DEVICES``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from xlog.store import LocalStore

from ..evaluator import Outcome, SubprocessEvaluator
from ..space import Config, SearchSpace
from .base import ExecutorSettings, SlotExecutor


def visible_gpus() -> list[str]:
    """The GPUs this process may use (respects an inherited CUDA_VISIBLE_DEVICES)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch
        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch CUDA: no GPU
        return []


def gpu_slots(workers: int, gpus_per_candidate: float | None, gpus: list[str]) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each worker slot (None: leave the environment as it is).
    Default: one GPU per worker where there are GPUs; 0 hides the GPUs from candidates."""
    if not gpus:
        if gpus_per_candidate:
            raise ValueError(f"--gpus-per-candidate {gpus_per_candidate:g}: no GPU is visible on this machine")
        return [None] * workers
    if gpus_per_candidate is not None and float(gpus_per_candidate) != int(gpus_per_candidate):
        raise ValueError(f"--gpus-per-candidate {gpus_per_candidate:g}: local workers take whole GPUs")
    per = 1 if gpus_per_candidate is None else int(gpus_per_candidate)
    if per <= 0:
        return [""] * workers
    if per * workers > len(gpus):
        raise ValueError(f"{workers} workers x {per} GPU(s) per candidate need {per * workers} GPUs; "
                         f"{len(gpus)} visible ({','.join(gpus)})")
    return [",".join(gpus[i * per:(i + 1) * per]) for i in range(workers)]


class LocalExecutor(SlotExecutor):
    def __init__(self, settings: ExecutorSettings, *, task_dir: Path, space: SearchSpace, store: LocalStore,
                 search_id: str, task_name: str | None = None, seed: int = 0, energy: bool = True,
                 work_dir: Path | None = None, record_defaults: Mapping[str, Any] | None = None,
                 evaluator: SubprocessEvaluator | None = None):
        super().__init__(settings.workers, store, search_id, task_name, record_defaults)
        self.evaluator = evaluator or SubprocessEvaluator(
            task_dir, space, store, search_id, task_name=task_name, memory_limit_gb=settings.memory_gb,
            grace_s=settings.grace_s, energy=energy, seed=seed, work_dir=work_dir, record_defaults=record_defaults)
        self.grace_s = self.evaluator.grace_s
        self.gpus = gpu_slots(self.slots, settings.gpus_per_candidate, visible_gpus())
        self.gpus_per_candidate = float(len(self.gpus[0].split(","))) if self.gpus and self.gpus[0] else 0.0

    def warm_up(self) -> None:
        self.evaluator.warm_up()

    def _run(self, config: Config, timeout_s: float, slot: int,
             early_stop: Mapping[str, Any] | None = None) -> Outcome:
        gpu = self.gpus[slot]
        return self.evaluator.evaluate(config, timeout_s, env=None if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu},
                                       early_stop=early_stop)

    def close(self) -> None:
        super().close()
        self.evaluator.close()
