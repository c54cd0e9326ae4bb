"""The DuckDB layer: experiences over local + pulled files, schema versions, helper views, read-only SQL."""
from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from xlog import schema as S
from xlog.remotes import layout as L
from xlog.remotes import open_remote
from xlog.remotes.sync import pull
from xlog.store import LocalStore
from xsearch import db
from xsearch.cli import main as xsearch_main


def _n(sql: str, home) -> int:
    return db.query(sql, home).column(0)[0].as_py()


def test_empty_store_has_the_view_with_v1_columns(tmp_path):
    con = db.connect(tmp_path / "empty")
    rel = con.sql("SELECT * FROM experiences")
    assert set(S.field_names()) <= set(rel.columns)
    assert _n("SELECT count(*) FROM experiences", tmp_path / "empty") == 0
    for view in ("task_best", "failures_by_cause", "failure_rates_by_model", "pareto_time", "pareto_energy"):
        assert db.query(f"SELECT * FROM {view}", tmp_path / "empty").num_rows == 0


def test_two_schema_versions_and_dedup(tmp_path, make_records):
    """Local v1 records + a pulled file from an older writer (optional columns missing) + a pulled
    file from a newer writer (schema_version 2 with an extra column), one record in both places."""
    home = LocalStore(tmp_path / "home")
    local = make_records(5, seed=1)
    home.write_many(local)
    shared = tmp_path / "shared"
    # An older writer: only a few v1 columns.
    old = make_records(3, seed=2)
    cols = ["record_id", "schema_version", "created_at", "xlog_version", "source", "status", "task_name",
            "model_name", "outcome_primary_value", "outcome_primary_metric"]
    t_old = S.records_to_table(old).select(cols)
    # A newer writer: version 2 adds a column this client does not know.
    new = make_records(2, seed=3)
    t_new = S.records_to_table(new + [local[0]])
    t_new = t_new.set_column(t_new.column_names.index("schema_version"), "schema_version",
                             pa.array([2] * 3, pa.int64()))
    t_new = t_new.append_column("train_new_knob", pa.array([0.5, 0.25, 0.75]))
    for version, table in ((1, t_old), (2, t_new)):
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()
        path = shared / L.data_path(version, "2025-03", data)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    got = pull(open_remote(str(shared)), home, progress=False)
    assert got.new_records == 6 and not got.quarantined
    assert _n("SELECT count(*) FROM experiences", home.root) == 5 + 3 + 2
    assert _n("SELECT count(DISTINCT record_id) FROM experiences", home.root) == 10
    rows = db.query("SELECT record_id, schema_version, train_new_knob, train_batch_size FROM experiences",
                    home.root).to_pylist()
    by_id = {r["record_id"]: r for r in rows}
    assert by_id[local[0]["record_id"]]["schema_version"] == 1  # the local copy wins
    assert {by_id[r["record_id"]]["train_new_knob"] for r in new} == {0.5, 0.25}
    assert all(by_id[r["record_id"]]["train_batch_size"] is None for r in old)  # absent in the old file
    assert _n("SELECT count(*) FROM experiences WHERE schema_version = 2", home.root) == 2


def test_newer_version_with_invalid_known_column_is_quarantined(tmp_path, make_records):
    t = S.records_to_table(make_records(1, seed=4))
    t = t.set_column(t.column_names.index("schema_version"), "schema_version", pa.array([3], pa.int64()))
    t = t.set_column(t.column_names.index("status"), "status", pa.array(["weird"]))
    buf = io.BytesIO()
    pq.write_table(t, buf)
    shared = tmp_path / "shared"
    path = shared / L.data_path(3, "2025-03", buf.getvalue())
    path.parent.mkdir(parents=True)
    path.write_bytes(buf.getvalue())
    with pytest.warns(UserWarning):
        got = pull(open_remote(str(shared)), LocalStore(tmp_path / "h"), progress=False)
    assert len(got.quarantined) == 1 and "weird" in got.quarantined[0][1]


def test_helper_views_match_python(tmp_path, make_records):
    home = LocalStore(tmp_path / "h")
    recs = make_records(120, seed=5)
    home.write_many(recs)
    done = [r for r in recs if r["status"] == "completed"]
    best = {}
    for r in done:
        k = r["task_name"]
        if k not in best or r["outcome_primary_value"] > best[k]["outcome_primary_value"]:
            best[k] = r
    got = {r["task_name"]: r["record_id"] for r in db.query("SELECT * FROM task_best", home.root).to_pylist()}
    assert got == {k: r["record_id"] for k, r in best.items()}
    # Pareto front (quality up, time down), brute force.
    front = {r["record_id"] for r in done if not any(
        o["task_name"] == r["task_name"] and o["outcome_total_runtime_s"] <= r["outcome_total_runtime_s"]
        and o["outcome_primary_value"] >= r["outcome_primary_value"]
        and (o["outcome_total_runtime_s"] < r["outcome_total_runtime_s"]
             or o["outcome_primary_value"] > r["outcome_primary_value"]) for o in done)}
    assert set(db.query("SELECT record_id FROM pareto_time", home.root).column(0).to_pylist()) == front
    fails = db.query("SELECT status, sum(n_runs) AS n FROM failures_by_cause GROUP BY 1", home.root).to_pylist()
    assert {f["status"]: f["n"] for f in fails} == {s: sum(r["status"] == s for r in recs)
                                                   for s in {r["status"] for r in recs} - {"completed"}}


@pytest.mark.parametrize("sql", [
    "DELETE FROM experiences", "CREATE TABLE t AS SELECT 1", "DROP VIEW experiences",
    "COPY (SELECT 1) TO 'out.csv'", "ATTACH 'other.db'", "INSTALL httpfs", "LOAD httpfs",
    "SET enable_external_access = true", "SELECT 1; DROP VIEW experiences",
    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/hostname')", "SELECT * FROM glob('/etc/*')",
])
def test_writes_and_outside_reads_are_refused(tmp_path, make_records, sql):
    home = LocalStore(tmp_path / "h")
    home.write_many(make_records(2, seed=6))
    with pytest.raises(db.ReadOnlyQueryError):
        db.query(sql, home.root)
    assert _n("SELECT count(*) FROM experiences", home.root) == 2


def test_sql_cli_formats(tmp_path, make_records):
    home = LocalStore(tmp_path / "h")
    home.write_many(make_records(4, seed=7))
    run = CliRunner().invoke
    r = run(xsearch_main, ["sql", "SELECT count(*) AS n FROM experiences", "--home", str(home.root)])
    assert r.exit_code == 0 and "(1 row)" in r.output and "4" in r.output
    r = run(xsearch_main, ["sql", "SELECT record_id, created_at, outcome_metrics FROM experiences",
                           "--home", str(home.root), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 4
    r = run(xsearch_main, ["sql", "SELECT status FROM experiences", "--home", str(home.root), "--csv"])
    assert r.exit_code == 0 and r.output.splitlines()[0] == "status" and len(r.output.splitlines()) == 5
    r = run(xsearch_main, ["sql", "DROP VIEW experiences", "--home", str(home.root)])
    assert r.exit_code == 1 and "read-only" in r.output
