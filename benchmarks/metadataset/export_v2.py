"""Export meta-dataset v2: the harness's records, with what the harness measured beside each run
(``<cache>/v2/curves/<record_id>.json``: learning curve, training CPU time, load average) merged
into the record fields that hold them (``curve``, ``train_cpu_time_s``, ``hw_load_avg``) where the
record lacks them, to ``benchmarks/data/metadataset_v2.parquet`` (validated, written atomically)
and the v2 section of ``DATASHEET.md`` (counts, totals, per task / model / method, repeat-run noise).
Re-runnable at any time, also while the harness runs.

usage: python benchmarks/metadataset/export.py --version 2 [--home DIR] [--out DIR] [--cache DIR]
"""
from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from export import _hours, _table, harness_records, write_records, write_section

HERE = Path(__file__).resolve().parent
VERSION = "metadataset-v2"
FILE_NAME = "metadataset_v2.parquet"
MAX_CURVE_POINTS = 200  # the record schema's bound (xlog keeps at most 200 points)


def sidecar(cache: Path, record_id: str) -> dict[str, Any] | None:
    path = Path(cache) / "v2" / "curves" / f"{record_id}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def curve_points(side: dict[str, Any]) -> list[dict[str, Any]]:
    """The sidecar's curve as record ``curve`` points (step order), at most MAX_CURVE_POINTS: the
    first and last point of each metric and evenly spaced ones between."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in side.get("eval") or []:
        for name in ("eval_f1", "eval_accuracy", "eval_loss"):
            if name in p:
                series.setdefault(("eval", name), []).append(_point(p, "eval", name, p[name]))
    for p in side.get("loss") or []:
        series.setdefault(("train", "loss"), []).append(_point(p, "train", "loss", p.get("loss")))
    total = sum(len(v) for v in series.values())
    if total > MAX_CURVE_POINTS:
        share = max(2, MAX_CURVE_POINTS // max(len(series), 1))
        series = {k: _thin(v, share) for k, v in series.items()}
    out = [p for v in series.values() for p in v]
    out.sort(key=lambda p: (p["step"], p["kind"] != "train", p["name"]))
    return out


def _point(p: dict[str, Any], kind: str, name: str, value: Any) -> dict[str, Any]:
    v = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    return {"step": int(p["step"]), "epoch": float(p.get("epoch") or 0.0), "elapsed_s": max(float(p.get("elapsed_s") or 0.0), 0.0),
            "kind": kind, "name": name, "value": v}


def _thin(points: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    if len(points) <= n:
        return points
    idx = sorted({round(i * (len(points) - 1) / (n - 1)) for i in range(n)})
    return [points[i] for i in idx]


def merge(rec: dict[str, Any], side: dict[str, Any] | None, fields: set[str]) -> dict[str, Any]:
    """The record with the harness's measurements in the fields the record has left empty."""
    if side is None:
        return rec
    rec = dict(rec)
    cpu = side.get("train_cpu_time_s")
    if cpu is None or rec.get("status") in ("oom", "timeout"):
        # No training began, or it was cut: the whole process's CPU time (wait4) is what it used.
        cpu = side.get("process_cpu_time_s") if cpu is None else max(cpu, 0.0)
    load = side.get("hw_load_avg")
    if "curve" in fields and not rec.get("curve"):
        pts = curve_points(side)
        rec["curve"] = pts or None
    if "train_cpu_time_s" in fields and rec.get("train_cpu_time_s") is None and cpu is not None:
        rec["train_cpu_time_s"] = float(cpu)
    if "hw_load_avg" in fields and rec.get("hw_load_avg") is None and load is not None:
        rec["hw_load_avg"] = float(load)
    if "train_cpu_time_s" not in fields or "hw_load_avg" not in fields:
        # An older schema: keep the figures as extra metrics rather than lose them.
        m = dict(rec.get("outcome_metrics") or {})
        if cpu is not None:
            m["harness_train_cpu_time_s"] = float(cpu)
        if load is not None:
            m["harness_load_avg"] = float(load)
        rec["outcome_metrics"] = m
    return rec


def export_v2(home: Path, out: Path, cache: Path) -> Path:
    """Write ``metadataset_v2.parquet`` and the v2 datasheet section; returns the Parquet path."""
    from xlog import schema as S
    fields = set(S.field_names())
    recs = [merge(r, sidecar(cache, r["record_id"]), fields) for r in harness_records(Path(home), VERSION)]
    path = write_records(recs, out / FILE_NAME)
    manifest_path = Path(cache) / "v2" / "tasks" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    sides = {r["record_id"]: sidecar(cache, r["record_id"]) or {} for r in recs}
    write_section(out / "DATASHEET.md", datasheet(recs, manifest, sides), v2=True)
    return path


# ---- the datasheet ---------------------------------------------------------------------------------
def _cpu(r: dict[str, Any], side: dict[str, Any]) -> float | None:
    v = r.get("train_cpu_time_s")
    if v is None:
        v = (r.get("outcome_metrics") or {}).get("harness_train_cpu_time_s")
    return float(v) if v is not None else None


def _wall(r: dict[str, Any]) -> float | None:
    v = r.get("outcome_total_runtime_s")
    return float(v) if v is not None else None


def _cv(xs: list[float]) -> float | None:
    return statistics.pstdev(xs) / statistics.mean(xs) if len(xs) > 1 and statistics.mean(xs) > 0 else None


def _f(v: Any, nd: int = 1) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


# A training loss that rises this far above its first logged value has blown up, whatever the run
# then did: reported descriptively (xlog's own rule, failure.loss_divergence, waits for NaN/inf or 1e4x).
BLOWUP_RATIO = 10.0


def loss_peak_ratio(r: dict[str, Any]) -> float | None:
    """Highest logged training loss over the first one (None without two training-loss points)."""
    from xsearch.curves import curve_points
    losses = [float(p["value"]) for p in curve_points(r.get("curve"))
              if p.get("kind") == "train" and p.get("name") == "loss" and p.get("value") is not None]
    if len(losses) < 2 or not losses[0] > 0:
        return None
    return max(losses) / losses[0]


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    import pandas as pd
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def datasheet(recs: list[dict[str, Any]], manifest: dict[str, Any], sides: dict[str, dict[str, Any]]) -> str:
    settings = yaml.safe_load((HERE / "v2.yaml").read_text(encoding="utf-8"))
    target = int(settings["runs_per_task"])
    n = len(recs)
    status = Counter(r["status"] for r in recs)
    diverged = sum(1 for r in recs if r.get("error_type") == "Diverged")
    blown = [r for r in recs if (q := loss_peak_ratio(r)) is not None and q >= BLOWUP_RATIO]
    blown_f1 = [float(r["outcome_primary_value"]) for r in blown if r.get("outcome_primary_value") is not None]
    rep = [r for r in recs if ":rep" in str(r.get("search_id"))]
    sampled = [r for r in recs if r not in rep]
    wall = [w for r in recs if (w := _wall(r)) is not None]
    cpu = [c for r in recs if (c := _cpu(r, sides.get(r["record_id"], {}))) is not None]
    loads = [float(r["hw_load_avg"]) if r.get("hw_load_avg") is not None else (r.get("outcome_metrics") or {}).get("harness_load_avg")
             for r in recs]
    loads = [x for x in loads if x is not None]
    with_curve = sum(1 for r in recs if r.get("curve"))
    energy = sum(float(r.get("energy_kwh") or 0.0) for r in recs)
    starts = [r["created_at"] for r in recs if r.get("created_at") is not None]
    ends = [r.get("ended_at") or r["created_at"] for r in recs if r.get("created_at") is not None]
    span = _hours((max(ends) - min(starts)).total_seconds()) if starts else "-"
    order = settings["tasks"].get("order") or []
    per_task = Counter(r.get("task_name") for r in sampled)
    complete = [t for t in order if per_task.get(t, 0) >= target]
    cores = Counter(str(r.get("hw_cpu_cores")) for r in recs)
    pairs = [(w, c) for r in recs if r.get("status") == "completed"
             and (w := _wall(r)) is not None and (c := _cpu(r, sides.get(r["record_id"], {}))) is not None]

    parts = [f"""# Datasheet: xlog meta-dataset v2 (`{FILE_NAME}`)

Generated by `benchmarks/metadataset/export.py --version 2` on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; do not edit by hand.

## What was run
- **Harness**: `python benchmarks/metadataset/run.py --version 2` (`run_v2.py`, `trainer_v2.py`; docs/metadataset.md).
  Real `transformers.Trainer` fine-tunings with `XLogCallback`, one at a time in a process forked
  from the harness, at `nice -n 10` (the priority of the other work on the machine: at 19 it
  starved beside it), each with a memory limit of {settings['memory_limit_gb']:g} GiB (address space; beyond it
  the run is `oom`) and a time limit of {settings.get('cpu_limit_s')} CPU seconds (`timeout`; the CPU time a
  run uses does not grow with the load, its wall time does), plus a wall-clock safety net of
  {settings['timeout_s']} s. The first runs (before 16:55 UTC) had a wall-clock limit of 240 s instead.
- **Configurations**: sampled at random per task (seeded by the task's name) from `space_v2.yaml`:
  5 models (all-MiniLM-L6-v2, its first 3 layers, SmolLM2-135M-Instruct, its first 8 layers, and
  `tiny:bert-2x64` trained from scratch), full / LoRA / partial fine-tuning, learning rate 1e-5 to
  1e-1 (17 values, log), 1-4 epochs, batch 4-64, max length 32-256, LoRA rank 2-64, alpha 4-128,
  dropout 0-0.2, partial top 1-6 layers, warmup 0-0.2, weight decay 0-0.1, linear / cosine /
  constant schedules; sampling weights in `v2.yaml` (cheap models more often). No shared grid:
  transfer must generalise across configurations. `search_id` = `{VERSION}:<config hash>`.
- **Tasks**: the 17 tasks of `tasks.yaml` with smaller subsamples ({settings['tasks']['max_train']} train /
  {settings['tasks']['max_eval']} eval texts), run round robin in `v2.yaml`'s order, {settings.get('chunk', target)} sampled
  configurations per task and round, up to {target} per task.
- **Learning curves**: evaluation and training-loss logging every 1/{settings['evals_per_epoch']} epoch; the record's
  `curve` holds them (up to the failure for failed runs).
- **Runtimes that mean something**: `train_cpu_time_s` (user + system CPU time of the run, all
  threads, from train begin; for `oom`/`timeout` runs the process's CPU time from `wait4`) and
  `hw_load_avg` (mean 1-minute load average during the run) beside the wall times. The machine
  (2 cores) was shared with other work while the harness ran: compare wall time with the load.
- **Threads**: one torch thread per run since 17:50 UTC on 2026-11-27 (`torch_threads`); the runs before used 2.
  Since 21:16 UTC two harness processes ran side by side, one per half of the tasks (`--tasks`),
  one run each at a time: two one-thread runs on the two cores (the CPU time of a one-thread run
  hardly depends on what runs beside it; its wall time does).
- **Repeat runs**: {len(settings['repeats']['configs'])} configurations run {settings['repeats']['times']} times each on
  `{settings['repeats']['task']}` (`search_id` `{VERSION}:rep<k>-<hash>#<i>`): the noise that remains (table below).
  The race uses the first run of each.

## Totals
- records: **{n}** ({len(sampled)} sampled configurations + {len(rep)} repeat runs); tasks with >= {target} runs:
  **{len(complete)}** of 17 ({', '.join(complete) or 'none yet'}); runs per task: {dict(per_task)}
- status: {', '.join(f'{k} {v}' for k, v in status.most_common())} (of the failed, {diverged} diverged)
- records with a learning curve: {with_curve}
- training loss blown up (risen to >= {BLOWUP_RATIO:g} x its first logged value): {len(blown)} runs, learning rates
  {_f(min((float(r["train_learning_rate"]) for r in blown), default=None), 4)}-{_f(max((float(r["train_learning_rate"]) for r in blown), default=None), 4)}, median eval F1 {_f(statistics.median(blown_f1) if blown_f1 else None, 3)}
  (statuses {dict(Counter(r["status"] for r in blown))}). A run is `failed` as diverged only by xlog's rule (a NaN/inf
  loss, or 1e4 x the first): {diverged} here; the Trainer's gradient clipping (1.0) keeps blown-up losses finite
- logged wall time (`outcome_total_runtime_s`), summed: {_hours(sum(wall))}; median {_f(statistics.median(wall) if wall else None)} s per run
- training CPU time, summed: {_hours(sum(cpu))}; median {_f(statistics.median(cpu) if cpu else None)} s per run
- load average during the runs: median {_f(statistics.median(loads) if loads else None, 2)}, max {_f(max(loads) if loads else None, 2)} (cores: {dict(cores)})
- completed runs, Spearman rank correlation of wall time and CPU time: {_f(_spearman([p[0] for p in pairs], [p[1] for p in pairs]), 3)}
- harness wall clock, first record start to last record end: {span}
- energy (codecarbon estimate): {energy:.4f} kWh
"""]
    rows = []
    for t in order:
        rs = [r for r in recs if r.get("task_name") == t]
        if not rs:
            continue
        st = Counter(r["status"] for r in rs)
        best = max((r["outcome_primary_value"] for r in rs if r.get("status") == "completed"
                    and r.get("outcome_primary_value") is not None), default=None)
        c = [x for r in rs if (x := _cpu(r, sides.get(r["record_id"], {}))) is not None]
        m = manifest.get(t, {})
        rows.append([t, m.get("n_train", "-"), m.get("n_eval", "-"), m.get("n_classes", "-"), len(rs),
                     st.get("completed", 0), st.get("oom", 0), st.get("failed", 0), st.get("timeout", 0),
                     _f(best, 3), _f(statistics.median(c) if c else None)])
    parts.append("## By task\n" + _table(["task", "n_train", "n_eval", "classes", "records", "completed", "oom",
                                           "failed", "timeout", "best eval F1", "median CPU s"], rows))
    rows = []
    for key, label in (("model_name", "model"), ("ft_method", "method")):
        for v in sorted({str(r.get(key)) for r in recs}):
            rs = [r for r in recs if str(r.get(key)) == v]
            st = Counter(r["status"] for r in rs)
            w = [x for r in rs if (x := _wall(r)) is not None]
            c = [x for r in rs if (x := _cpu(r, sides.get(r["record_id"], {}))) is not None]
            f1 = [r["outcome_primary_value"] for r in rs if r.get("status") == "completed" and r.get("outcome_primary_value") is not None]
            rows.append([f"{label}: {v}", len(rs), ", ".join(f"{k} {n_}" for k, n_ in st.most_common()),
                         _f(statistics.median(f1) if f1 else None, 3), _f(statistics.median(w) if w else None),
                         _f(statistics.median(c) if c else None)])
    parts.append("## By model and method\n" + _table(["", "records", "status", "median F1 (completed)",
                                                       "median wall s", "median CPU s"], rows))
    rows = []
    # Runs before one thread per run (their sidecar does not say) used torch's default: every core.
    threads = {r["record_id"]: sides.get(r["record_id"], {}).get("torch_threads") or r.get("hw_cpu_cores") for r in rep}
    groups = sorted({(str(r["search_id"]).split("#")[0], threads[r["record_id"]]) for r in rep}, key=str)
    for sid_base, th in groups:
        rs = [r for r in rep if str(r["search_id"]).split("#")[0] == sid_base and threads[r["record_id"]] == th]
        w = [x for r in rs if (x := _wall(r)) is not None]
        c = [x for r in rs if (x := _cpu(r, sides.get(r["record_id"], {}))) is not None]
        f1 = [r.get("outcome_primary_value") for r in rs]
        ld = [x for r in rs if (x := r.get("hw_load_avg") or (r.get("outcome_metrics") or {}).get("harness_load_avg")) is not None]
        r0 = rs[0]
        desc = (f"{str(r0.get('model_name')).split('/')[-1]} {r0.get('ft_method')} lr {float(r0.get('train_learning_rate')):.2g} "
                f"ep {r0.get('train_epochs'):g} bs {r0.get('train_batch_size')}")
        rows.append([sid_base.split(":")[1], desc, th, len(rs), ", ".join(_f(x, 0) for x in w), _f(_cv(w), 3),
                     ", ".join(_f(x, 0) for x in c), _f(_cv(c), 3), ", ".join(_f(x, 2) for x in ld),
                     ", ".join(_f(x, 3) for x in f1)])
    parts.append("## Repeat runs: the noise that remains\nThe same configuration on the same task, run again "
                 "later by the same harness (CV = standard deviation / mean), by torch threads per run: with 2 "
                 "threads on 2 shared cores the CPU time grew with the load too (idle OpenMP threads spin while "
                 "their peer waits for a core), hence one thread per run since 17:50 UTC.\n"
                 + (_table(["repeat", "configuration", "threads", "runs", "wall s", "wall CV", "CPU s", "CPU CV", "load avg",
                            "eval F1"], rows) if rows else "(no repeat runs yet)"))
    parts.append(f"""## Reading it
```python
import pandas as pd
df = pd.read_parquet("benchmarks/data/{FILE_NAME}")
df[["task_name", "model_name", "ft_method", "status", "outcome_primary_value", "train_cpu_time_s", "hw_load_avg"]]
```
or with DuckDB (`curves` view of `schema/views.sql` for the learning curves), or
`python benchmarks/search_race.py --v2` (the race on v2).
""")
    return "\n\n".join(parts) + "\n"
