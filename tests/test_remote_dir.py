"""The directory remote: same layout and guarantees as the Hub remote, on a shared disk."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from xlog.ledger import Ledger
from xlog.remotes import RemoteError, open_remote
from xlog.remotes import layout as L
from xlog.remotes.directory import DirectoryRemote
from xlog.remotes.sync import pull, push
from xlog.store import LocalStore, QuarantineWarning


def _ids(root: Path) -> Counter:
    ids: Counter = Counter()
    for p in root.rglob("*.parquet"):
        assert not p.name.startswith("."), f"temporary file left behind: {p}"
        ids.update(pq.read_table(p).column("record_id").to_pylist())
    return ids


def test_spec_parsing(tmp_path):
    assert isinstance(open_remote(f"file://{tmp_path}"), DirectoryRemote)
    assert isinstance(open_remote(str(tmp_path)), DirectoryRemote)
    assert open_remote("./shared/store").kind == "directory"
    assert open_remote("lab/experience").kind == "hub"
    assert open_remote("hf://datasets/lab/experience").kind == "hub"
    with pytest.raises(RemoteError, match="only dataset repos"):
        open_remote("hf://lab/model")


def test_round_trip_and_idempotence(tmp_path, make_records):
    shared = tmp_path / "shared"
    src = LocalStore(tmp_path / "a")
    src.write_many(make_records(12, seed=1))
    res = push(open_remote(str(shared)), src, progress=False)
    assert res.uploaded_files == len(res.files) and (shared / "README.md").is_file()
    assert all(L.is_data_path(p.relative_to(shared).as_posix()) for p in shared.rglob("*.parquet"))
    before = sorted(shared.rglob("*"))
    assert push(open_remote(str(shared)), src, progress=False).new_records == 0
    Ledger(src.root).path.unlink()
    assert push(open_remote(str(shared)), src, progress=False).uploaded_files == 0
    assert sorted(shared.rglob("*")) == before
    got = pull(open_remote(str(shared)), LocalStore(tmp_path / "b"), progress=False)
    assert got.new_records == 12 and _ids(got.mirror / "data") == _ids(shared)


def test_concurrent_writers(tmp_path, make_records):
    shared = tmp_path / "shared"
    homes = []
    for i in range(4):
        s = LocalStore(tmp_path / f"h{i}")
        s.write_many(make_records(20, seed=50 + i))
        homes.append(s)
    procs = [subprocess.Popen([sys.executable, "-c", "from xlog.cli import main; main()", "push", "--remote",
                               f"file://{shared}", "-q"], env={**os.environ, "XLOG_HOME": str(homes[i % 4].root)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(8)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert _ids(shared) == Counter({r["record_id"]: 1 for h in homes for r in h.records()})


def test_push_that_dies_midway_is_resumed(tmp_path, make_records, monkeypatch):
    shared = tmp_path / "shared"
    src = LocalStore(tmp_path / "a")
    recs = make_records(30, seed=3)
    src.write_many(recs)
    real = DirectoryRemote._write_atomic
    calls = {"n": 0}

    def dying_write(self, rel, data):  # the disk fills up after the second file
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(28, "No space left on device")
        real(self, rel, data)
    monkeypatch.setattr(DirectoryRemote, "_write_atomic", dying_write)
    with pytest.raises(RemoteError, match="No space left"):
        push(open_remote(str(shared)), src, progress=False)
    key = open_remote(str(shared)).key
    assert Ledger(src.root).count(key) == 0  # nothing confirmed yet
    landed = _ids(shared)
    assert 0 < landed.total() < 30
    monkeypatch.setattr(DirectoryRemote, "_write_atomic", real)
    res = push(open_remote(str(shared)), src, progress=False)
    assert res.recovered_records == landed.total()
    assert _ids(shared) == Counter({r["record_id"]: 1 for r in recs})
    assert Ledger(src.root).count(key) == 30


def test_missing_directory_on_pull(tmp_path):
    with pytest.raises(RemoteError, match="does not exist"):
        pull(open_remote(str(tmp_path / "nowhere")), LocalStore(tmp_path / "b"), progress=False)


# ---- issue 12, items 2 and 3: private data and bounds are checked again at push and pull -------

def _plant(store: LocalStore, rec: dict) -> Path:
    """Put a record file in the store as a hand edit or an older writer would: not through write()."""
    from xlog import schema as S
    path = store.path_for(rec)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(S.records_to_table([rec]), path)
    return path


def test_push_scrubs_a_leak_planted_after_capture(tmp_path, make_records):
    shared = tmp_path / "shared"
    src = LocalStore(tmp_path / "a")
    src.write_many(make_records(3, seed=7))
    [leaky] = make_records(1, seed=8, task_name="x@y.org", contributor="me@host.com",
                           error_message="cannot open ./secret/dir/file.txt")
    planted = _plant(src, leaky)
    before = planted.read_bytes()
    logged: list[str] = []
    res = push(open_remote(str(shared)), src, progress=False, log=logged.append)
    assert res.new_records == 4 and res.invalid == []
    rid = leaky["record_id"][:8]
    assert {s.split(": ")[1] for s in res.scrubbed} == {"task_name", "contributor", "error_message"}
    assert all(s.startswith(f"record {rid}: ") for s in res.scrubbed)
    assert any("task_name" in line and "scrubbed in the pushed copy" in line for line in logged)
    blob = b"".join(p.read_bytes() for p in shared.rglob("*.parquet"))
    for needle in (b"x@y.org", b"host.com", b"secret/dir"):
        assert needle not in blob, needle
    [pushed] = [r for p in shared.rglob("*.parquet") for r in pq.read_table(p).to_pylist()
                if r["record_id"] == leaky["record_id"]]
    assert pushed["task_name"] is None and pushed["contributor"] is None
    assert pushed["error_message"] == "cannot open <path>/file.txt"
    assert planted.read_bytes() == before  # the local file is never modified
    # What was published passes the receiving side's checks.
    got = pull(open_remote(str(shared)), LocalStore(tmp_path / "b"), progress=False)
    assert got.new_records == 4 and got.quarantined == []


def test_push_refuses_out_of_bounds_records(tmp_path, make_records):
    shared = tmp_path / "shared"
    src = LocalStore(tmp_path / "a")
    src.write_many(make_records(2, seed=9))
    bad = {"f1": dict(outcome_metrics={"eval_f1": 5.0}), "params": dict(model_n_params=9 * 10**18),
           "runtime": dict(outcome_total_runtime_s=-1.0), "name": dict(task_name="n" * 10_000_000)}
    planted = {k: make_records(1, seed=10 + i)[0] | v for i, (k, v) in enumerate(bad.items())}
    for rec in planted.values():
        _plant(src, rec)
    with pytest.warns(QuarantineWarning):
        res = push(open_remote(str(shared)), src, progress=False)
    assert res.new_records == 2 and len(res.invalid) == 4
    on_remote = _ids(shared)
    assert not any(r["record_id"] in on_remote for r in planted.values())
    reasons = "\n".join(p.read_text() for p in src.quarantine_dir.rglob("*.reason.txt"))
    for field in ("outcome_metrics[eval_f1]", "model_n_params", "outcome_total_runtime_s", "task_name"):
        assert f"{field}:" in reasons, field


def test_pull_quarantines_leaks_and_out_of_bounds_files(tmp_path, make_records):
    shared = tmp_path / "shared"
    good = make_records(3, seed=11)
    cases = {"private": (dict(task_name="x@y.org"), "task_name: looks like private data (e-mail address)"),
             "relative path": (dict(error_message="at ../x/y"), "error_message: looks like private data (path)"),
             "F1 = 5": (dict(outcome_metrics={"eval_f1": 5.0}), "outcome_metrics[eval_f1]: 5.0 is above the maximum 1"),
             "n_params": (dict(model_n_params=9 * 10**18), "model_n_params: 9000000000000000000 is above the maximum"),
             "long name": (dict(task_name="n" * 100_000), "task_name: 100000 characters, longer than the maximum 256")}
    files = {}
    for i, (case, (fields, why)) in enumerate(cases.items()):
        rec = make_records(1, seed=20 + i)[0] | fields
        data = L.encode([rec], 1)  # written by someone else's (older, or hostile) client
        path = L.data_path(1, "2025-01", data)
        (shared / path).parent.mkdir(parents=True, exist_ok=True)
        (shared / path).write_bytes(data)
        files[path] = (rec["record_id"][:8], why)
    data = L.encode(good, 1)
    (shared / L.data_path(1, "2025-02", data)).parent.mkdir(parents=True)
    (shared / L.data_path(1, "2025-02", data)).write_bytes(data)
    store = LocalStore(tmp_path / "b")
    with pytest.warns(QuarantineWarning):
        res = pull(open_remote(str(shared)), store, progress=False)
    assert res.new_records == 3 and res.new_files == 1
    assert {p for p, _ in res.quarantined} == set(files)
    for path, reason in res.quarantined:
        rid, why = files[path]
        assert f"row 0 (record {rid}): {why}" in reason, reason
        kept = next(store.quarantine_dir.rglob(Path(path).name + ".reason.txt")).read_text()
        assert path in kept and why in kept  # the file and the field, kept with the file
    assert [p.relative_to(res.mirror).as_posix() for p in res.mirror.rglob("*.parquet")] == \
        [L.data_path(1, "2025-02", data)]  # the mirror holds only the good file
    assert pull(open_remote(str(shared)), store, progress=False).new_files == 0  # remembered, not re-fetched
