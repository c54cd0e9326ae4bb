"""Candidates as SLURM jobs through submitit (``pip install xlog-xsearch[slurm]``): partition,
time limit from the candidate's timeout, GPUs, CPUs and memory per candidate from the executor's
settings. Each job runs one candidate (``remote.run_candidate``) and returns its record as
Parquet bytes, which the driver writes into its store exactly once. Where there is no SLURM,
submitit's local executor runs the same code path (``slurm_cluster="local"``, or automatically)."""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Mapping

from xlog import schema as S
from xlog.store import LocalStore

from ..errors import MissingExtraError
from ..evaluator import Outcome, candidate_job
from ..space import Config, SearchSpace
from .base import ExecutorSettings, SlotExecutor, import_record_bytes
from .remote import run_candidate, task_files


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise MissingExtraError("the slurm executor needs submitit: pip install 'xlog-xsearch[slurm]'") from None
    return submitit


class SlurmExecutor(SlotExecutor):
    def __init__(self, settings: ExecutorSettings, *, task_dir: Path, space: SearchSpace, store: LocalStore,
                 search_id: str, task_name: str | None = None, seed: int = 0, energy: bool = True,
                 work_dir: Path | None = None, record_defaults: Mapping[str, Any] | None = None):
        super().__init__(settings.workers, store, search_id, task_name, record_defaults)
        submitit = _submitit()
        self.settings, self.space, self.seed, self.energy = settings, space, seed, energy
        folder = Path(settings.slurm_folder or (Path(work_dir or ".") / "submitit")).resolve()
        cluster = settings.slurm_cluster or (None if shutil.which("sbatch") else "local")
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        self.cluster = self.executor.cluster
        self._files = task_files(task_dir)
        self._jobs: dict[int, Any] = {}
        self.gpus_per_candidate = float(settings.gpus_per_candidate or 0)  # SLURM jobs get GPUs only when asked

    def _params(self, timeout_s: float) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {"timeout_min": max(1, math.ceil((timeout_s + 2 * s.grace_s + 60) / 60)),
                                  "cpus_per_task": max(1, int(math.ceil(s.cpus_per_candidate)))}
        if s.gpus_per_candidate:
            params["gpus_per_node"] = int(s.gpus_per_candidate)
        if s.memory_gb:
            params["mem_gb"] = s.memory_gb
        if s.slurm_partition:
            params["slurm_partition"] = s.slurm_partition
        return params

    def _run(self, config: Config, timeout_s: float, slot: int,
             early_stop: Mapping[str, Any] | None = None) -> Outcome:
        job = candidate_job(config, self.space, S.new_record_id(), search_id=self.search_id,
                            task_name=self.task_name, seed=self.seed, energy=self.energy, memory_limit_gb=None,
                            early_stop=early_stop)
        self.executor.update_parameters(**self._params(timeout_s))
        sjob = self.executor.submit(run_candidate, job, self._files, timeout_s, self.settings.grace_s,
                                    self.record_defaults)
        self._jobs[slot] = sjob
        try:
            result = sjob.result()  # raises when the job failed or was cancelled
        finally:
            self._jobs.pop(slot, None)
        rec = import_record_bytes(self.store, result["record"])
        return Outcome.from_record(rec, config, wall_s=float(result["wall_s"]))

    def cancel_in_flight(self) -> None:
        for sjob in list(self._jobs.values()):
            try:
                sjob.cancel()  # scancel (or, for submitit's local executor, the job's process)
            except Exception:
                pass

    def close(self) -> None:
        self.cancel_in_flight()
        super().close()
