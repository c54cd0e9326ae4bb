"""A constructed store that reproduces the hard cases of real shared experience, for choosing the
search's settings without touching the data sets it is reported on (docs/race.md):
- a failure base rate of about 70% (out of memory, divergence, time limits, unrelated crashes);
- tasks whose F1 scales differ up to tenfold (each task's F1 is multiplied by a factor in [0.1, 1]);
- runs on two kinds of hardware (an 80 GB and a 16 GB GPU), so experience comes from other hardware.
Built from the simulator of tests/stores.py (random configurations per task, no shared grid)."""
from __future__ import annotations

import math
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import stores  # noqa: E402

SCALED = ("outcome_primary_value",)


def hard_records(n_tasks: int = 6, runs_per_task: int = 50, failure_rate: float = 0.7, seed: int = 0) -> list[dict[str, Any]]:
    """``runs_per_task`` runs on each of ``n_tasks`` tasks, about ``failure_rate`` of them failed."""
    rng = random.Random(seed)
    pool = stores.generate_records(n_tasks=n_tasks, runs_per_task=runs_per_task * 6, seed=seed)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in pool:
        by_task.setdefault(r["task_name"], []).append(r)
    out: list[dict[str, Any]] = []
    for i, (name, recs) in enumerate(sorted(by_task.items())):
        failed = [r for r in recs if r["status"] != "completed"]
        ok = [r for r in recs if r["status"] == "completed"]
        n_fail = min(len(failed), round(failure_rate * runs_per_task))
        chosen = rng.sample(failed, n_fail) + rng.sample(ok, min(len(ok), runs_per_task - n_fail))
        factor = 10 ** (-i / max(n_tasks - 1, 1))  # 1 ... 0.1: a tenfold spread of scales
        for r in chosen:
            r = dict(r)
            if r.get("outcome_primary_value") is not None:
                r["outcome_primary_value"] = float(r["outcome_primary_value"]) * factor
                m = dict(r.get("outcome_metrics") or {})
                for k in ("eval_f1", "eval_accuracy"):
                    if k in m and m[k] is not None and math.isfinite(m[k]):
                        m[k] = float(m[k]) * factor
                r["outcome_metrics"] = m
            out.append(r)
    return out
