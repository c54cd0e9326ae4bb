"""The DuckDB layer: experiences over local + pulled files, schema versions, helper views, read-only SQL."""
from __future__ import annotations

import io
import json

import duckdb
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


# ---- issue 12, item 1: read-only by construction, bounded in time and memory ---------------------
def _snapshot(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _store_with_ledger(tmp_path, make_records, n=3):
    home = LocalStore(tmp_path / "h")
    home.write_many(make_records(n, seed=11))
    (home.root / "ledger.sqlite").write_bytes(b"SQLite format 3\x00 pretend ledger")
    db.connect(home.root)  # the first connection writes the store's validation cache (validated.json)
    return home


def test_explain_analyze_copy_probe_writes_nothing(tmp_path, make_records):
    """The probe of issue 12: EXPLAIN ANALYZE COPY ... TO the ledger (or a record) ran the COPY."""
    home = _store_with_ledger(tmp_path, make_records)
    record = home.files()[0]
    before = _snapshot(home.root)
    probes = [
        f"EXPLAIN ANALYZE COPY (SELECT 'x') TO '{home.root}/ledger.sqlite'",
        f"EXPLAIN ANALYZE COPY (SELECT * FROM experiences LIMIT 1) TO '{record}' (FORMAT parquet)",
        f"COPY (SELECT * FROM experiences LIMIT 1) TO '{record}' (FORMAT parquet)",
        f"/* hi */ explain -- there\n analyze /* and here */ COPY (SELECT 'x') TO '{home.root}/ledger.sqlite'",
        f"EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 'x') TO '{home.root}/ledger.sqlite'",
        f"EXPLAIN ANALYZE EXPLAIN ANALYZE COPY (SELECT 'x') TO '{home.root}/ledger.sqlite'",
        f"SELECT 1; COPY (SELECT 'x') TO '{home.root}/ledger.sqlite'",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    ]
    for sql in probes:
        with pytest.raises(db.ReadOnlyQueryError):
            db.query(sql, home.root)
    r = CliRunner().invoke(xsearch_main, ["sql", probes[0], "--home", str(home.root)])
    assert r.exit_code == 1 and "read-only" in r.output, r.output
    assert _snapshot(home.root) == before  # byte-identical, and no new file


@pytest.mark.parametrize("sql", [
    "COPY (SELECT 1) TO '{home}/records/x.csv'", "COPY experiences TO '{home}/out.parquet'",
    "ATTACH '{home}/other.db'", "ATTACH ':memory:' AS m", "DETACH m", "INSTALL json", "LOAD json", "FORCE INSTALL httpfs",
    "SET memory_limit = '100GB'", "SET GLOBAL lock_configuration = false", "RESET memory_limit", "PRAGMA threads = 8",
    "PRAGMA version", "CALL pragma_version()", "CALL checkpoint()",
    "CREATE VIEW x AS SELECT 1", "CREATE MACRO m(a) AS a", "CREATE SECRET s (TYPE s3)",
    "INSERT INTO experiences (record_id) VALUES ('x')", "UPDATE experiences SET status = 'x'", "DELETE FROM experiences",
    "ALTER VIEW experiences RENAME TO e", "VACUUM", "CHECKPOINT", "EXPORT DATABASE '{home}/dump'", "USE memory",
    "PIVOT experiences ON status", "BEGIN TRANSACTION", "PREPARE p AS SELECT 1",
    "SELECT 1; SELECT 2", "SELECT 1;;SELECT 2", "WITH a AS (SELECT 1) SELECT * FROM a; DROP VIEW experiences",
    "EXPLAIN SELECT 1; DROP VIEW experiences", "EXPLAIN DELETE FROM experiences", "EXPLAIN ANALYZE DROP VIEW experiences",
    "WITH a AS (SELECT 1) INSERT INTO experiences (record_id) SELECT 'x'", "",
    "SELECT * FROM read_text('{home}/ledger.sqlite')", "SELECT * FROM read_blob('{home}/ledger.sqlite')",
    "SELECT * FROM read_csv('{home}/ledger.sqlite')", "SELECT * FROM glob('{home}/*')",
    "SELECT * FROM glob('{home}/records/*/*')", "SELECT * FROM read_parquet('{home}/records/*/*.parquet')",
    "SELECT * FROM read_text('/etc/hostname')", "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM glob('/etc/*')",
])
def test_everything_but_reading_the_store_is_refused(tmp_path, make_records, sql):
    home = _store_with_ledger(tmp_path, make_records, n=2)
    before = _snapshot(home.root)
    con = db.connect(home.root)
    with pytest.raises(db.ReadOnlyQueryError):
        db.query(sql.format(home=home.root), con=con)
    assert db.query("SELECT count(*) FROM experiences", con=con).column(0)[0].as_py() == 2
    assert _snapshot(home.root) == before


def test_the_query_table_function_runs_no_other_statement(tmp_path, make_records):
    home = _store_with_ledger(tmp_path, make_records, n=2)
    before = _snapshot(home.root)
    with pytest.raises((db.ReadOnlyQueryError, duckdb.ParserException)):  # DuckDB's query() takes only a SELECT
        db.query(f"SELECT * FROM query('COPY (SELECT 1) TO ''{home.root}/q.csv''')", home.root)
    assert _snapshot(home.root) == before


@pytest.mark.parametrize("sql", [
    "SELECT count(*) FROM experiences", "select count(*) from experiences;", "FROM experiences SELECT count(*)",
    "/* a comment */ WITH a AS (SELECT * FROM experiences) SELECT count(*) FROM a -- trailing",
    "EXPLAIN SELECT count(*) FROM experiences", "EXPLAIN ANALYZE SELECT count(*) FROM task_best",
    "explain (analyze) (SELECT count(*) FROM experiences)", "EXPLAIN -- c\n ANALYZE /* d */ SELECT 1 -- e", "DESCRIBE experiences", "SUMMARIZE SELECT status FROM experiences",
    "SELECT * FROM (PIVOT experiences ON status IN ('completed', 'failed') USING count(*) GROUP BY task_name)",
])
def test_reading_queries_still_work(tmp_path, make_records, sql):
    home = LocalStore(tmp_path / "h")
    home.write_many(make_records(3, seed=12))
    assert db.query(sql, home.root).num_rows >= 1


_FOREVER = "SELECT count(*) FROM range(1000000000000)"  # range(1e12): 1e12 is a DOUBLE, which range() refuses


def test_a_query_that_runs_forever_is_stopped_and_the_connection_stays_usable(tmp_path, make_records):
    home = LocalStore(tmp_path / "h")
    home.write_many(make_records(2, seed=13))
    con = db.connect(home.root)
    with pytest.raises(db.QueryLimitError, match="time limit"):
        db.query(_FOREVER, con=con, timeout_s=0.5)
    assert db.query("SELECT count(*) FROM experiences", con=con).column(0)[0].as_py() == 2
    r = CliRunner().invoke(xsearch_main, ["sql", _FOREVER, "--home", str(home.root), "--timeout", "0.5"])
    assert r.exit_code == 1 and "time limit" in r.output and "--timeout" in r.output, r.output


def test_a_query_is_bounded_in_memory(tmp_path, make_records):
    home = LocalStore(tmp_path / "h")
    home.write_many(make_records(2, seed=14))
    big = "SELECT count(*) FROM (SELECT i % 5000000 AS k, count(*) FROM range(10000000) r(i) GROUP BY 1)"
    con = db.connect(home.root, memory_limit="32MB")
    with pytest.raises(db.QueryLimitError, match="memory"):
        db.query(big, con=con)
    assert db.query("SELECT count(*) FROM experiences", con=con).column(0)[0].as_py() == 2
    r = CliRunner().invoke(xsearch_main, ["sql", big, "--home", str(home.root), "--memory-limit", "32MB"])
    assert r.exit_code == 1 and "memory" in r.output and "--memory-limit" in r.output, r.output
    with pytest.raises(ValueError):
        db.query("SELECT 1", con=con, memory_limit="2GB")  # a connection's memory limit is fixed when it opens


# ---- issue 12, item 5: invalid local files never reach the views -----------------------------------
def _write_invalid(store: LocalStore, make_records) -> dict[str, str]:
    """Three invalid record files written behind the store's back: {file name: what is wrong}."""
    bad = {}
    for i, (col, arr, why) in enumerate([("train_learning_rate", pa.array(["fast"]), "train_learning_rate"),
                                         ("outcome_primary_value", pa.array([float("inf")]), "finite"),
                                         ("status", pa.array(["weird"]), "weird")]):
        rec = make_records(1, seed=100 + i, status="completed", outcome_primary_metric="eval_f1",
                           outcome_primary_value=0.5, error_type=None, error_message=None)[0]
        t = S.records_to_table([rec])
        t = t.set_column(t.column_names.index(col), col, arr)
        path = store.path_for(rec)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, path)
        bad[path.name] = why
    return bad


def test_sql_first_quarantines_invalid_local_files(tmp_path, make_records):
    from xsearch.estimators import Estimators, load_experiences
    store = LocalStore(tmp_path / "h")
    good = make_records(40, seed=15)
    store.write_many(good)
    bad = _write_invalid(store, make_records)
    with pytest.warns(UserWarning, match="quarantined"):
        r = CliRunner().invoke(xsearch_main, ["sql", "SELECT count(*) AS n FROM experiences", "--home",
                                              str(store.root), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output[r.output.index("["):]) == [{"n": 40}]
    for name, why in bad.items():
        assert not any(p.name == name for p in store.files())
        (moved,) = store.quarantine_dir.rglob(name)
        assert why in moved.with_name(name + ".reason.txt").read_text()
    types = dict(db.query("SELECT column_name, column_type FROM (DESCRIBE experiences)", store.root)
                 .to_pandas().itertuples(index=False))
    assert types["train_learning_rate"] == "DOUBLE" and types["outcome_primary_value"] == "DOUBLE"
    assert types["status"] == "VARCHAR"
    assert set(db.query("SELECT record_id FROM experiences", store.root).column(0).to_pylist()) == \
        {r["record_id"] for r in good}
    Estimators().fit(load_experiences(store.root))


def test_local_files_are_validated_once(tmp_path, make_records, monkeypatch):
    import xlog.store as xstore
    store = LocalStore(tmp_path / "h")
    store.write_many(make_records(5, seed=16))
    assert _n("SELECT count(*) FROM experiences", store.root) == 5
    calls = []
    real = xstore.read_and_validate
    monkeypatch.setattr(xstore, "read_and_validate", lambda p: calls.append(p) or real(p))
    assert _n("SELECT count(*) FROM experiences", store.root) == 5
    assert calls == []  # remembered across connections (and processes: the cache is a file in the store)
    new = make_records(1, seed=17)[0]
    store.write(new)
    assert _n("SELECT count(*) FROM experiences", store.root) == 6
    assert [p.name for p in calls] == [f"{new['record_id']}.parquet"]
    # A file rewritten in place (other size / mtime) is validated again, and quarantined if now invalid.
    t = S.records_to_table([new])
    t = t.set_column(t.column_names.index("status"), "status", pa.array(["weird"]))
    pq.write_table(t, store.path_for(new))
    with pytest.warns(UserWarning, match="quarantined"):
        assert _n("SELECT count(*) FROM experiences", store.root) == 5
