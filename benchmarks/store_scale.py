"""How the federated store scales: write, push, pull, DuckDB views and typical queries at N records.

For each N (default 10k, 100k, 1M) the script generates N schema-valid records with realistic
distributions (a few dozen tasks and models, 80% completed runs, OOM more likely for big batches,
log-normal run times, energy ~ time), writes them as the remote layout does (partitioned by
schema version and month, content-addressed files of at most 100k rows), pushes them to a local
Hub-compatible server in one commit, pulls them into a fresh XLOG_HOME, and times DuckDB view
creation and typical queries. Separately it times ``push`` of 10k records from a local store
(one file per run, as captured) to the server: the cost per 10k records of batching + commit.

    python benchmarks/store_scale.py [--sizes 10000 100000 1000000]

Prints a table and writes benchmarks/results/store_scale.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from xlog import schema as S  # noqa: E402
from xlog.remotes import layout as L  # noqa: E402

QUERIES = {
    "count": "SELECT count(*) FROM experiences",
    "task_best": "SELECT * FROM task_best ORDER BY task_name",
    "failure_rate_by_model": "SELECT * FROM failure_rates_by_model ORDER BY failure_rate DESC",
    "pareto_time": "SELECT task_name, count(*) AS front FROM pareto_time GROUP BY 1",
    "pareto_energy_one_task": "SELECT * FROM pareto_energy WHERE task_name = 'task_007'",
    "mean_f1_by_method": ("SELECT ft_method, avg(outcome_primary_value) AS f1 FROM completed_runs "
                          "GROUP BY 1"),
}


def generate(n: int, seed: int = 0) -> pa.Table:
    """N schema-v1 records as an Arrow table (columns not generated stay null)."""
    rng = np.random.default_rng(seed)
    schema = S.arrow_schema()
    n_tasks, models = 40, [f"org/model-{i:02d}" for i in range(25)]
    task = rng.integers(0, n_tasks, n)
    model = rng.integers(0, len(models), n)
    size = np.array([11e6 * (1.35 ** i) for i in range(len(models))])[model]
    batch = rng.choice([8, 16, 32, 64], n)
    method = rng.choice(["full", "lora", "partial"], n, p=[0.4, 0.45, 0.15])
    runtime = np.exp(rng.normal(np.log(size / 1e6) + 1.5, 0.6))
    p_oom = np.clip(0.02 + 0.002 * batch * size / 1e8, 0, 0.6)
    u = rng.random(n)
    status = np.where(u < p_oom, "oom", np.where(u < p_oom + 0.05, "failed",
                                                 np.where(u < p_oom + 0.06, "timeout", "completed")))
    done = status == "completed"
    f1 = np.clip(0.55 + 0.05 * np.log10(size / 1e7) - 0.04 * (task % 5) + rng.normal(0, 0.06, n), 0, 1)
    base = np.datetime64("2025-01-01T00:00:00", "us").astype(np.int64)
    created = base + rng.integers(0, 365 * 86400, n).astype(np.int64) * 1_000_000
    ids = [str(uuid.UUID(int=int(a) << 64 | int(b), version=4)) for a, b in
           zip(rng.integers(0, 2**63, n, dtype=np.uint64), rng.integers(0, 2**63, n, dtype=np.uint64))]
    error = np.where(status == "oom", "OutOfMemoryError", np.where(status == "failed", "RuntimeError",
                     np.where(status == "timeout", "TimeoutError", None)))
    cols = {
        "record_id": pa.array(ids), "schema_version": pa.array(np.ones(n, np.int64)),
        "created_at": pa.array(created, pa.timestamp("us", tz="UTC")),
        "xlog_version": pa.array(["0.1.0"] * n), "source": pa.array(["xlog"] * n),
        "status": pa.array(status), "error_type": pa.array(error.tolist(), pa.string()),
        "task_name": pa.array([f"task_{t:03d}" for t in task]), "task_type": pa.array(["text-classification"] * n),
        "task_n_train": pa.array(rng.integers(300, 50_000, n)), "task_n_classes": pa.array(2 + task % 6),
        "model_name": pa.array(np.array(models)[model]), "model_n_params": pa.array(size.astype(np.int64)),
        "ft_method": pa.array(method), "train_batch_size": pa.array(batch.astype(np.int64)),
        "train_learning_rate": pa.array(10 ** rng.uniform(-5.5, -3, n)),
        "outcome_primary_metric": pa.array(np.where(done, "eval_f1", None).tolist(), pa.string()),
        "outcome_primary_value": pa.array(np.where(done, np.round(f1, 4), np.nan), from_pandas=True),
        "outcome_greater_is_better": pa.array(np.where(done, True, None).tolist(), pa.bool_()),
        "outcome_total_runtime_s": pa.array(np.round(runtime * np.where(done, 1, rng.uniform(0.05, 1, n)), 3)),
        "energy_kwh": pa.array(np.round(runtime * 9e-5, 6)), "energy_source": pa.array(["codecarbon"] * n),
    }
    arrays = [cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_layout(table: pa.Table, root: Path) -> dict[str, bytes]:
    """Partition by month, sort by record id, content-address: what a push would produce."""
    months = pc.strftime(table.column("created_at"), format="%Y-%m")
    files: dict[str, bytes] = {}
    for month in sorted(set(months.to_pylist())):
        part = table.filter(pc.equal(months, month)).sort_by("record_id")
        for i in range(0, part.num_rows, L.ROWS_PER_FILE):
            buf = io.BytesIO()
            pq.write_table(part.slice(i, L.ROWS_PER_FILE), buf, compression="zstd")
            data = buf.getvalue()
            files[L.data_path(1, month, data)] = data
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "store_scale.json"))
    args = ap.parse_args()
    from hubserver import HubServer
    from conftest import synthetic_record
    import random
    os.environ.update(HF_TOKEN="hf_bench", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
    from xlog.remotes.hub import HubRemote
    from xlog.remotes.sync import pull, push
    from xlog.store import LocalStore
    from xsearch import db

    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": platform.python_version()}, "sizes": []}
    work = Path(tempfile.mkdtemp(prefix="xlog-scale-"))
    with HubServer() as hub:
        # Push batching cost per 10k captured records (one local file per run, as XLogCallback writes).
        store = LocalStore(work / "pusher")
        rng = random.Random(0)
        t_write, _ = timed(lambda: store.write_many([synthetic_record(rng) for _ in range(10_000)]))
        t_push, res = timed(lambda: push(HubRemote("bench/push", endpoint=hub.url), store, progress=False))
        results["push_10k"] = {"local_write_s": round(t_write, 2), "push_s": round(t_push, 2),
                               "files": res.uploaded_files, "commits": len(hub.commits("bench/push")) - 1}
        print(f"push of 10k captured records: {t_push:.2f} s ({res.uploaded_files} files, one commit); "
              f"writing them locally took {t_write:.2f} s")

        for n in args.sizes:
            row: dict = {"n": n}
            t, table = timed(lambda: generate(n, seed=n))
            row["generate_s"] = round(t, 2)
            layout_dir = work / f"layout-{n}"
            t, files = timed(lambda: write_layout(table, layout_dir))
            row["write_layout_s"], row["files"] = round(t, 2), len(files)
            row["bytes"] = sum(len(d) for d in files.values())
            del table
            repo = f"bench/scale-{n}"
            remote = HubRemote(repo, endpoint=hub.url)
            remote.ensure()
            t, _ = timed(lambda: remote.commit(files, f"{n} records"))
            row["upload_commit_s"] = round(t, 2)
            del files
            home = work / f"home-{n}"
            t, got = timed(lambda: pull(HubRemote(repo, endpoint=hub.url), LocalStore(home), progress=False))
            row["pull_s"], row["pulled_records"] = round(t, 2), got.new_records
            t, _ = timed(lambda: pull(HubRemote(repo, endpoint=hub.url), LocalStore(home), progress=False))
            row["pull_again_s"] = round(t, 3)
            t, con = timed(lambda: db.connect(home))
            row["connect_s"] = round(t, 3)
            row["queries_s"] = {}
            for name, sql in QUERIES.items():
                t, _ = timed(lambda: db.query(sql, con=con), repeat=3)
                row["queries_s"][name] = round(t, 3)
            assert db.query("SELECT count(*) FROM experiences", con=con).column(0)[0].as_py() == n
            results["sizes"].append(row)
            qs = "  ".join(f"{k}={v:.3f}" for k, v in row["queries_s"].items())
            print(f"N={n:>9,}  gen {row['generate_s']:>6.2f}s  layout {row['write_layout_s']:>6.2f}s "
                  f"({row['files']} files, {row['bytes'] / 1e6:.1f} MB)  upload {row['upload_commit_s']:>6.2f}s  "
                  f"pull {row['pull_s']:>6.2f}s (again {row['pull_again_s']:.3f}s)  connect {row['connect_s']:.3f}s\n"
                  f"             queries: {qs}", flush=True)
            shutil.rmtree(layout_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
