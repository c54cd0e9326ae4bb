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
from xlog.store import LocalStore


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
