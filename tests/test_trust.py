"""A reader is safe from any single contributor (issue 14): each attack of the issue, played against
a directory remote and the local Hub server (real Parquet, real HTTP, real DuckDB), leaves a fresh
reader with every honest record intact and visible exactly once."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from xlog import schema as S
from xlog.cli import main as xlog_main
from xlog.intake import Limits, check_file, content_hash, content_hashes
from xlog.remotes import open_remote
from xlog.remotes import layout as L
from xlog.remotes.directory import DirectoryRemote, NotARegularFile
from xlog.remotes.sync import pull, push
from xlog.store import LocalStore
from xsearch import db
from xsearch.cli import main as xsearch_main

REPO = "lab/experience"


def _hostile(records: list[dict], month: str = "0000-00") -> tuple[str, bytes]:
    """A data file as a hostile client writes it: no validation, any folder (``0000-00`` sorts first)."""
    buf = io.BytesIO()
    pq.write_table(S.records_to_table(records), buf, compression="zstd")
    data = buf.getvalue()
    return L.data_path(1, month, data), data


def _put(shared: Path, path: str, data: bytes) -> None:
    (shared / path).parent.mkdir(parents=True, exist_ok=True)
    (shared / path).write_bytes(data)


def _rows(home: Path, sql: str = "SELECT * FROM experiences") -> list[dict]:
    return db.query(sql, home).to_pylist()


def _publish(remote, recs: list[dict]) -> str | None:
    """What an honest push sends (the same files, one commit), without a local store in between."""
    files = {p: data for p, (data, _) in L.plan_files(recs).items()}
    remote.ensure()
    return remote.commit(files, f"xlog push: {len(recs)} record(s)")


def _assert_intact(home: Path, recs: list[dict]) -> dict[str, dict]:
    """Every honest record visible exactly once, with its own content."""
    rows = _rows(home)
    ids = Counter(r["record_id"] for r in rows)
    assert all(ids[r["record_id"]] == 1 for r in recs), [r["record_id"] for r in recs if ids[r["record_id"]] != 1]
    by_id = {r["record_id"]: r for r in rows}
    for r in recs:
        assert by_id[r["record_id"]]["outcome_primary_value"] == r.get("outcome_primary_value")
    return by_id


# ---- poisoning by record id -----------------------------------------------------------------------------
def test_poisoning_by_record_id_on_a_directory_remote(tmp_path, make_records):
    shared = tmp_path / "shared"
    recs = make_records(400, seed=1)
    _publish(open_remote(str(shared)), recs)
    # Later, a hostile writer: a victim's id with altered content in the folder that sorts first; two
    # altered copies of another id in one file; an exact copy of a third, twice in one file.
    altered = dict(recs[0], outcome_primary_value=0.0001)
    p_conflict, data = _hostile([altered])
    _put(shared, p_conflict, data)
    p_mixed, data = _hostile([dict(recs[1], outcome_primary_value=0.0001), dict(recs[1], outcome_primary_value=0.2)])
    _put(shared, p_mixed, data)
    p_twice, data = _hostile([recs[2], recs[2]], month="0000-01")
    _put(shared, p_twice, data)
    assert p_conflict < min(p for p in DirectoryRemote(shared).list_files() if p.startswith("data/v1/2"))

    reader = tmp_path / "reader"
    r = CliRunner().invoke(xlog_main, ["--home", str(reader), "pull", "--remote", str(shared), "-q"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    # The report names the refused file and the file whose copy stands.
    victim_file = next(p for p in DirectoryRemote(shared).list_files() if p.startswith("data/v1/2") and
                       recs[0]["record_id"] in pq.read_table(shared / p, columns=["record_id"])["record_id"].to_pylist())
    line = next(l for l in r.output.splitlines() if p_conflict in l)
    assert f"conflict: record {recs[0]['record_id']} was accepted before in {victim_file}" in line, r.output
    assert p_mixed in r.output and "appears in this file with different contents" in r.output
    assert "2 quarantined" in r.output, r.output

    by_id = _assert_intact(reader, recs)
    assert len(by_id) == 400
    assert by_id[recs[0]["record_id"]]["source_file"] == victim_file
    # The refused rows are kept, with the reason naming the file.
    reasons = "\n".join(p.read_text() for p in LocalStore(reader).quarantine_dir.rglob("*.reason.txt"))
    assert p_conflict in reasons and p_mixed in reasons
    # Pulled again: nothing is fetched again, nothing changes.
    again = pull(open_remote(str(shared)), LocalStore(reader), progress=False)
    assert again.new_files == 0 and not again.quarantined
    assert len(_rows(reader)) == 400


def test_poisoning_by_record_id_on_the_hub(hub_env, tmp_path, make_records):
    recs = make_records(40, seed=1)
    commit = _publish(open_remote(REPO), recs)
    p_conflict, data = _hostile([dict(recs[0], outcome_primary_value=0.0001)])
    hub_env.put_file(REPO, p_conflict, data)  # committed after the victim, most likely in the same second
    p_twice, data = _hostile([recs[1], recs[1]], month="0000-01")
    hub_env.put_file(REPO, p_twice, data)
    store = LocalStore(tmp_path / "reader")
    got = pull(open_remote(REPO), store, progress=False)
    assert [p for p, _ in got.quarantined] == [p_conflict] and got.conflicts == 1
    assert got.new_records == 40
    by_id = _assert_intact(store.root, recs)
    assert len(by_id) == 40
    assert {r["source_commit"] for r in by_id.values()} == {commit}
    assert all(r["source_remote"] == f"hf://datasets/{REPO}" or REPO in r["source_remote"] for r in by_id.values())


def test_conflicts_across_remotes_first_committed_stands(tmp_path, make_records):
    recs = make_records(5, seed=7)
    first, second = tmp_path / "first", tmp_path / "second"
    src = LocalStore(tmp_path / "src")
    src.write_many(recs)
    push(open_remote(str(first)), src, progress=False)
    p, data = _hostile([dict(recs[0], task_name="changed"), recs[1]])
    _put(second, p, data)  # put in place later: its date is later
    reader = LocalStore(tmp_path / "reader")
    pull(open_remote(str(second)), reader, progress=False)
    pull(open_remote(str(first)), reader, progress=False)  # pulled last, committed first
    rows = {r["record_id"]: r for r in _rows(reader.root)}
    assert len(rows) == 5 and rows[recs[0]["record_id"]]["task_name"] == recs[0]["task_name"]
    [c] = _rows(reader.root, "SELECT * FROM conflicts")
    assert c["record_id"] == recs[0]["record_id"] and c["other_file"] == p and "first" in c["kept_remote"]
    # Dropping the first remote's files lets the other copy stand: the maintainer's choice, not a name's.
    con = db.connect(reader.root, exclude_sources=[f"file://{first.resolve()}"])
    after = {r["record_id"]: r for r in db.query("SELECT * FROM experiences", con=con).to_pylist()}
    assert set(after) == {recs[0]["record_id"], recs[1]["record_id"]}
    assert after[recs[0]["record_id"]]["task_name"] == "changed"


# ---- resource exhaustion ------------------------------------------------------------------------------
def test_row_and_byte_limits(tmp_path, make_records):
    shared = tmp_path / "shared"
    recs = make_records(30, seed=3)
    _publish(open_remote(str(shared)), recs)
    big = [dict(r, record_id=str(uuid.UUID(int=i + 1, version=4))) for i, r in
           enumerate(make_records(1, seed=4) * 5000)]
    p_big, data = _hostile(big, month="2025-01")
    _put(shared, p_big, data)
    limits = Limits(max_rows=1000)
    check = check_file(shared / p_big, p_big, limits=limits)
    assert check.problems == ["5000 rows, more than the reader's limit of 1000 per file"] and check.n_rows == 0
    store = LocalStore(tmp_path / "reader")
    got = pull(open_remote(str(shared)), store, progress=False, limits=limits)
    assert got.quarantined == [(p_big, "5000 rows, more than the reader's limit of 1000 per file")]
    _assert_intact(store.root, recs)
    assert len(_rows(store.root)) == 30
    # Bytes: refused from the listing's size, before anything is copied.
    small = Limits(max_bytes=len(data) - 1)
    got = pull(open_remote(str(shared)), LocalStore(tmp_path / "reader2"), progress=False, limits=small)
    assert got.quarantined == [(p_big, f"{len(data)} bytes, more than the reader's limit of {len(data) - 1} per file")]
    # A directory remote never copies more than it was asked for, whatever the file grows to.
    dest = tmp_path / "copy"
    DirectoryRemote(shared).fetch(p_big, dest, max_bytes=100)
    assert dest.stat().st_size == 100


_MEASURE = r"""
import json, sys, tracemalloc
from pathlib import Path
import pyarrow as pa
import pyarrow.parquet as pq
from xlog.intake import check_file

small, big, rp_small, rp_big = sys.argv[1:5]
pool = pa.default_memory_pool()
check_file(Path(small), rp_small)  # warm up: lazy imports, caches
tracemalloc.start()
c = check_file(Path(big), rp_big)
python_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
arrow_peak = pool.max_memory()  # since the process started: the small file's check included
table = pq.read_table(big)  # for scale: the file read at once
print(json.dumps({"check": python_peak + arrow_peak, "python": python_peak, "arrow": arrow_peak,
                  "read_table": pool.max_memory(), "rows": c.n_rows, "accepted": len(c.accepted), "ok": c.ok}))
"""


def test_memory_stays_bounded_on_a_large_file(tmp_path, make_records):
    """1,600 rows of ~60 kB (95 MB once decoded, under 1 MB on disk): the check holds one batch at a
    time, not the file. Measured in a fresh process: the peak of Python's allocations (tracemalloc)
    plus the peak of Arrow's memory pool (allocator caches, which RSS would count, are not usage)."""
    rec = make_records(1, seed=5)[0] | {"peft_config_json": json.dumps({"note": "lorem ipsum " * 4900}),
                                        "error_message": "dolor sit amet " * 100}
    schema = S.arrow_schema()
    n, per = 1_600, 200
    decoded = 0
    big = tmp_path / "big.parquet"
    block = S.records_to_table([rec] * per)
    with pq.ParquetWriter(big, schema, compression="zstd") as w:
        for start in range(0, n, per):
            ids = pa.array([str(uuid.UUID(int=start + i + 1, version=4)) for i in range(per)])
            t = block.set_column(block.column_names.index("record_id"), schema.field("record_id"), ids)
            decoded += t.nbytes
            w.write_table(t)
    rp_big = L.data_path(1, "2025-01", big.read_bytes())
    small = tmp_path / "small.parquet"
    pq.write_table(S.records_to_table(make_records(10, seed=6)), small)
    rp_small = L.data_path(1, "2025-01", small.read_bytes())
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(small), str(big), rp_small, rp_big],
                         capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["ok"] and got["rows"] == n and got["accepted"] == n
    print(f"decoded size {decoded / 2**20:.0f} MiB, file {big.stat().st_size / 2**20:.1f} MiB, peak memory: "
          f"check_file {got['check'] / 2**20:.0f} MiB (Python {got['python'] / 2**20:.0f}, Arrow "
          f"{got['arrow'] / 2**20:.0f}), pyarrow.parquet.read_table {got['read_table'] / 2**20:.0f} MiB")
    assert decoded > 90 * 2**20
    assert got["read_table"] > decoded / 2  # the measure sees Arrow's memory
    assert got["check"] < decoded / 4, got


# ---- absurd but schema-valid values (now outside the schema's bounds) -----------------------------------
def test_absurd_values_are_quarantined_with_the_file_named(tmp_path, make_records):
    shared = tmp_path / "shared"
    honest = make_records(5, seed=8)
    absurd = [make_records(1, seed=9)[0] | {"status": "completed", "outcome_primary_metric": "eval_f1",
                                            "outcome_primary_value": 5.0},
              make_records(1, seed=10)[0] | {"outcome_total_runtime_s": 1e12},
              make_records(1, seed=11)[0] | {"energy_kwh": 1e9}]
    p, data = _hostile(honest + absurd, month="2025-01")
    _put(shared, p, data)
    reader = tmp_path / "reader"
    r = CliRunner().invoke(xlog_main, ["--home", str(reader), "pull", "--remote", str(shared), "-q"])
    assert r.exit_code == 0, r.output
    line = next(l for l in r.output.splitlines() if l.startswith("quarantined"))
    assert p in line and "3 of 8 row(s) refused" in line
    for why in ("outcome_primary_value: 5.0 is above the maximum 1",
                "outcome_total_runtime_s: 1000000000000.0 is above the maximum 31557600",
                "energy_kwh: 1000000000.0 is above the maximum 1e6"):
        assert why in line, (why, line)
    rows = _rows(reader)
    assert sorted(r["record_id"] for r in rows) == sorted(r["record_id"] for r in honest)
    [kept] = [q for q in LocalStore(reader).quarantine_dir.rglob("*.parquet")]
    assert pq.read_table(kept).num_rows == 3 and p in Path(str(kept) + ".reason.txt").read_text()


def test_every_bound_of_the_schema_is_enforced_at_intake(tmp_path, make_records):
    """The vectorised checks miss nothing ``validate_record`` refuses: one violation per row."""
    base = make_records(1, seed=12)[0]
    cases: dict[str, dict] = {}
    for f in S.fields():
        if f.json_type in ("integer", "number"):
            if f.maximum is not None:
                cases[f"{f.name} max"] = {f.name: (f.maximum * 10 + 1) if f.json_type == "number" else int(f.maximum) + 1}
            if f.minimum is not None:
                cases[f"{f.name} min"] = {f.name: f.minimum - 1}
        elif f.json_type == "string" and f.enum is not None:
            cases[f.name] = {f.name: "bogus"}
        elif f.json_type == "string" and f.max_length is not None and f.fmt is None:
            cases[f.name] = {f.name: "a" * (f.max_length + 1)}
        elif f.json_type == "array" and f.item_fields:  # a list of objects (the learning curve)
            point = {"step": 1, "epoch": 0.1, "elapsed_s": 1.0, "kind": "eval", "name": "eval_f1", "value": 0.5}
            cases[f"{f.name} items"] = {f.name: [point] * (f.max_items + 1)}
            for p in f.item_fields:
                if p.required:
                    cases[f"{f.name} item {p.name} missing"] = {f.name: [dict(point, **{p.name: None})]}
                if p.enum is not None:
                    cases[f"{f.name} item {p.name} enum"] = {f.name: [dict(point, **{p.name: "bogus"})]}
                if p.max_length is not None:
                    cases[f"{f.name} item {p.name} length"] = {f.name: [dict(point, **{p.name: "n" * (p.max_length + 1)})]}
                if p.minimum is not None:
                    cases[f"{f.name} item {p.name} min"] = {f.name: [dict(point, **{p.name: p.minimum - 1})]}
            cases[f"{f.name} item value infinite"] = {f.name: [dict(point, value=float("inf"))]}
        elif f.json_type == "array":
            cases[f"{f.name} items"] = {f.name: ["q"] * (f.max_items + 1)}
            cases[f"{f.name} item"] = {f.name: ["q" * (f.item_max_length + 1)]}
        elif f.json_type == "object":
            cases[f"{f.name} entries"] = {f.name: {f"m{i}": 0.0 for i in range(f.max_items + 1)}}
            cases[f"{f.name} name"] = {f.name: {"m" * (f.key_max_length + 1): 0.0}}
            if f.name == "outcome_metrics":  # the other maps (PEFT ranks/parameters per kind) hold counts
                cases[f"{f.name} score"] = {f.name: {"eval_accuracy": 1.5}}
    cases["record_id format"] = {"record_id": "not-a-uuid"}
    cases["f1 as a percentage"] = {"outcome_primary_metric": "eval_f1", "outcome_primary_value": 87.0}
    cases["infinite"] = {"train_learning_rate": float("inf")}
    cases["status"] = {"status": "stopped"}
    rows = []
    for i, (case, change) in enumerate(cases.items()):
        rec = dict(base, record_id=change.get("record_id", str(uuid.UUID(int=i + 1, version=4))), **{
            k: v for k, v in change.items() if k != "record_id"})
        assert S.validate_record(rec), case
        rows.append(rec)
    ok = make_records(3, seed=13)
    # Learning curves and the pruned status (issue 16) are accepted as such.
    ok[0] = dict(ok[0], status="pruned", error_type="Pruned", error_message="stopped early",
                 curve=[{"step": 5, "epoch": 0.5, "elapsed_s": 2.0, "kind": "eval", "name": "eval_f1", "value": 0.4},
                        {"step": 5, "epoch": 0.5, "elapsed_s": None, "kind": "train", "name": "loss", "value": None}])
    assert S.validate_record(ok[0]) == []
    path = tmp_path / "f.parquet"
    pq.write_table(S.records_to_table(rows + ok), path)
    check = check_file(path, "data/v1/2025-01/x.parquet")
    assert not check.problems
    assert sorted(check.refused_rows) == list(range(len(rows))), [
        c for i, c in enumerate(cases) if i not in check.refused_rows]
    assert sorted(e["record_id"] for e in check.accepted) == sorted(r["record_id"] for r in ok)


# ---- the directory remote's file system ------------------------------------------------------------------
def test_symlinks_fifos_and_devices_on_a_directory_remote_are_skipped(tmp_path, make_records):
    shared = tmp_path / "shared"
    src = LocalStore(tmp_path / "src")
    recs = make_records(6, seed=14)
    src.write_many(recs)
    push(open_remote(str(shared)), src, progress=False)
    folder = shared / "data" / "v1" / "2025-01"
    folder.mkdir(parents=True, exist_ok=True)
    zero = folder / ("a" * 32 + ".parquet")
    os.symlink("/dev/zero", zero)
    fifo = folder / ("b" * 32 + ".parquet")
    os.mkfifo(fifo)
    os.symlink("/dev", shared / "data" / "v1" / "2099-01")  # a folder link: never walked
    reader = tmp_path / "reader"
    r = CliRunner().invoke(xlog_main, ["--home", str(reader), "pull", "--remote", str(shared), "-q"])
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert f"skipped data/v1/2025-01/{zero.name}" in r.output and "a symbolic link, not a regular file" in r.output
    assert f"skipped data/v1/2025-01/{fifo.name}" in r.output and "a FIFO, not a regular file" in r.output
    assert "skipped data/v1/2099-01" in r.output
    assert sorted(x["record_id"] for x in _rows(reader)) == sorted(x["record_id"] for x in recs)
    # Swapped in after the listing: the copy refuses it on the open file, without reading it.
    remote = DirectoryRemote(shared)
    for p in (zero, fifo):
        with pytest.raises(NotARegularFile):
            remote.fetch(p.relative_to(shared).as_posix(), tmp_path / "x")


# ---- provenance ---------------------------------------------------------------------------------------------
def test_provenance_is_queryable_and_filterable(hub_env, tmp_path, make_records):
    from huggingface_hub import CommitOperationAdd, HfApi
    maint = LocalStore(tmp_path / "maint")
    mine = make_records(3, seed=15)
    maint.write_many(mine)
    first = push(open_remote(REPO), maint, progress=False).commit
    theirs = make_records(2, seed=16)
    p, data = _hostile(theirs, month="2025-02")
    api = HfApi(endpoint=hub_env.url, token="hf_test_token")
    pr = api.create_commit(REPO, [CommitOperationAdd(p, data)], commit_message="their records", repo_type="dataset",
                           create_pr=True).pr_num
    api.merge_pull_request(REPO, pr, repo_type="dataset")
    reader = LocalStore(tmp_path / "reader")
    local = make_records(1, seed=17)
    reader.write_many(local)
    pull(open_remote(REPO), reader, progress=False)
    rows = {r["record_id"]: r for r in _rows(reader.root, "SELECT * FROM provenance")}
    assert len(rows) == 6
    assert {rows[r["record_id"]]["source_commit"] for r in mine} == {first}
    assert {rows[r["record_id"]]["source_pr"] for r in theirs} == {pr}
    assert {rows[r["record_id"]]["source_file"] for r in theirs} == {p}
    assert rows[local[0]["record_id"]]["source_remote"] == "local"
    assert rows[local[0]["record_id"]]["source_file"].startswith("records/")
    like = _rows(reader.root, f"SELECT record_id FROM experiences WHERE source_file LIKE '{p[:20]}%'")
    assert {r["record_id"] for r in like} == {r["record_id"] for r in theirs}
    out = CliRunner().invoke(xsearch_main, ["sql", "--home", str(reader.root), "--json", "--exclude-source",
                                            f"pr:{pr}", "SELECT record_id FROM experiences"])
    assert out.exit_code == 0, out.output
    assert {r["record_id"] for r in json.loads(out.output)} == {r["record_id"] for r in mine + local}
    # The search learns from what the reader trusts: the same patterns on `xsearch run`.
    from xsearch.estimators import load_experiences
    from xsearch.runner import _experience_model
    trusted = {r["record_id"] for r in mine + local}
    assert set(load_experiences(reader.root, [f"pr:{pr}"])["record_id"]) == trusted
    exp, _ = _experience_model(reader.root, "xs-test", False, exclude_sources=[f"pr:{pr}"])
    assert set(exp["record_id"]) == trusted
    assert set(load_experiences(reader.root)["record_id"]) == trusted | {r["record_id"] for r in theirs}


# ---- the content hash ---------------------------------------------------------------------------------------
def test_content_hash_is_the_same_whoever_wrote_the_record(make_records):
    recs = make_records(4, seed=18)
    t = S.records_to_table(recs)
    want = [content_hash(r) for r in recs]
    assert content_hashes(t) == want
    # Another writer: other column order, no all-null columns, ms timestamps, metrics as a map,
    # an integer-typed float column, and a contributor name (provenance, not content).
    cols = [c for c in reversed(t.column_names) if t.column(c).null_count < t.num_rows]
    other = t.select(cols)
    for name in ("created_at", "ended_at"):
        other = other.set_column(other.column_names.index(name), name,
                                 other.column(name).cast(pa.timestamp("ms", tz="UTC")))
    metrics = [None if m is None else [(x["name"], x["value"]) for x in m] for m in t.column("outcome_metrics").to_pylist()]
    other = other.set_column(other.column_names.index("outcome_metrics"), "outcome_metrics",
                             pa.array(metrics, pa.map_(pa.string(), pa.float64())))
    other = other.append_column("contributor", pa.array(["someone"] * len(recs)))
    assert content_hashes(other) == want
    assert content_hash(dict(recs[0], train_batch_size=recs[0]["train_batch_size"] + 1)) != want[0]
    ints = S.records_to_table([dict(r, energy_kwh=None, outcome_total_runtime_s=float(int(r["outcome_total_runtime_s"])))
                               for r in recs])
    ints = ints.set_column(ints.column_names.index("outcome_total_runtime_s"), "outcome_total_runtime_s",
                           ints.column("outcome_total_runtime_s").cast(pa.int64()))
    assert content_hashes(ints) == [content_hash(dict(r, energy_kwh=None,
                                                       outcome_total_runtime_s=float(int(r["outcome_total_runtime_s"]))))
                                    for r in recs]
