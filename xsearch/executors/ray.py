"""Candidates as Ray tasks (``pip install xlog-xsearch[ray]``). Each task declares its resources
(``num_cpus``, ``num_gpus``, ``memory``), runs one candidate in its own process on whichever node
Ray picks (``remote.run_candidate``), and returns the record as Parquet bytes, which the driver
writes into its store exactly once. A node that dies, or a task that Ray's memory monitor kills,
raises here and becomes a recorded failure (``oom`` for the memory monitor), not a crashed search.
With no ``ray_address`` a local Ray cluster is started for the run and shut down at the end."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from xlog import schema as S
from xlog.store import LocalStore

from ..errors import MissingExtraError
from ..evaluator import Outcome, candidate_job
from ..space import Config, SearchSpace
from .base import ExecutorSettings, SlotExecutor, import_record_bytes
from .remote import run_candidate, task_files


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MissingExtraError("the ray executor needs Ray: pip install 'xlog-xsearch[ray]'") from None
    return ray


def _run_remote(job: Mapping[str, Any], files: Mapping[str, bytes], timeout_s: float, grace_s: float,
                defaults: Mapping[str, Any]) -> dict[str, Any]:
    return run_candidate(job, files, timeout_s, grace_s, defaults)


class RayExecutor(SlotExecutor):
    def __init__(self, settings: ExecutorSettings, *, task_dir: Path, space: SearchSpace, store: LocalStore,
                 search_id: str, task_name: str | None = None, seed: int = 0, energy: bool = True,
                 work_dir: Path | None = None, record_defaults: Mapping[str, Any] | None = None):
        super().__init__(settings.workers, store, search_id, task_name, record_defaults)
        ray = _ray()
        self.settings, self.space, self.seed, self.energy = settings, space, seed, energy
        self.grace_s = settings.grace_s
        self._started_cluster = False
        if not ray.is_initialized():
            here = str(Path(__file__).resolve().parents[2])
            runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                p for p in (here, os.environ.get("PYTHONPATH", "")) if p), "TOKENIZERS_PARALLELISM": "false"}}
            if settings.ray_address:
                ray.init(address=settings.ray_address, runtime_env=runtime_env, log_to_driver=False)
            else:  # a local cluster for this run
                ray.init(num_cpus=max(int(settings.workers * settings.cpus_per_candidate), 1),
                         include_dashboard=False, object_store_memory=100 * 1024 * 1024,
                         runtime_env=runtime_env, log_to_driver=False)
                self._started_cluster = True
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per_gpu = settings.gpus_per_candidate if settings.gpus_per_candidate is not None else (1.0 if gpus else 0.0)
        options: dict[str, Any] = {"num_cpus": settings.cpus_per_candidate, "num_gpus": per_gpu, "max_retries": 0}
        if settings.memory_gb:
            options["memory"] = int(settings.memory_gb * 1e9)
        self._remote = ray.remote(_run_remote).options(**options)
        self._files = ray.put(task_files(task_dir))
        self._refs: dict[int, Any] = {}
        self.gpus_per_candidate = float(per_gpu)

    def _run(self, config: Config, timeout_s: float, slot: int,
             early_stop: Mapping[str, Any] | None = None) -> Outcome:
        ray = _ray()
        job = candidate_job(config, self.space, S.new_record_id(), search_id=self.search_id,
                            task_name=self.task_name, seed=self.seed, energy=self.energy,
                            memory_limit_gb=None, early_stop=early_stop)
        ref = self._remote.remote(job, self._files, timeout_s, self.grace_s, self.record_defaults)
        self._refs[slot] = ref
        try:
            result = ray.get(ref)
        finally:
            self._refs.pop(slot, None)
        rec = import_record_bytes(self.store, result["record"])
        return Outcome.from_record(rec, config, wall_s=float(result["wall_s"]))

    def cancel_in_flight(self) -> None:
        ray = _ray()
        for ref in list(self._refs.values()):
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass

    def close(self) -> None:
        self.cancel_in_flight()
        super().close()
        if self._started_cluster:
            _ray().shutdown()
