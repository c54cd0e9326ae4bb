"""The runtime estimator on a meta-dataset, leave one task out: xsearch's ``runtime_s`` estimator
(``xsearch.estimator_report.grouped_cv_report``, one fold per task), fitted on every other task
and scored on the held-out task's completed runs by Spearman rank correlation (pooled over all
held-out rows, and within each task).

It learns what the records give it: the wall time (``outcome_total_runtime_s``). On data that
also logged the CPU time (``train_cpu_time_s``, meta-dataset v2), the same estimator is also
fitted on the CPU time (passed to it as the runtime), which contention on a shared machine
distorts far less: both figures are reported, each saying which time it learned.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import pandas as pd


def _scores(exp: pd.DataFrame) -> dict[str, Any]:
    from xsearch.estimator_report import grouped_cv_report
    rep = grouped_cv_report(exp, group_by="task_name", n_splits=None, targets=["runtime_s"], baselines=False)
    entry = rep["targets"]["runtime_s"]
    model = entry.get("model") or {}
    return {"spearman": model.get("spearman"), "spearman_within_task": model.get("spearman_within_task"),
            "per_model_baseline_spearman": (entry.get("per_model") or {}).get("spearman"),
            "over_tasks": entry.get("over_groups"), "n_rows": entry.get("n", 0),
            "n_completed": int(exp["status"].eq("completed").sum()), "n_tasks": int(exp["task_name"].nunique())}


def runtime_report(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Leave-one-task-out Spearman of the runtime estimator, on wall time and (where logged) CPU time."""
    from xsearch.estimators import records_frame
    exp = records_frame(list(records))
    out: dict[str, Any] = {"wall": {"learns": "outcome_total_runtime_s (wall seconds)", **_scores(exp)}}
    if "train_cpu_time_s" in exp.columns and exp["train_cpu_time_s"].notna().any():
        cpu = exp.copy()
        # The estimator reads the runtime from these columns: give it the CPU time instead.
        cpu["outcome_total_runtime_s"] = pd.to_numeric(cpu["train_cpu_time_s"], errors="coerce")
        cpu["outcome_train_runtime_s"] = None
        cpu["outcome_eval_runtime_s"] = None
        out["cpu"] = {"learns": "train_cpu_time_s (CPU seconds, all threads)", **_scores(cpu)}
    return out


def format_runtime(rep: Mapping[str, Any]) -> str:
    lines = ["Runtime estimator, leave one task out (Spearman of predicted vs logged, completed runs):"]
    for k, v in rep.items():
        f = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        lines.append(f"  learns {v['learns']}: pooled {f(v['spearman'])}, within task {f(v['spearman_within_task'])} "
                     f"(per-model baseline {f(v['per_model_baseline_spearman'])}; {v['n_completed']} runs, {v['n_tasks']} tasks)")
    return "\n".join(lines)
