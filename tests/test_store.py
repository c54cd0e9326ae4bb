"""The local store: atomic one-file-per-record writes, quarantine of corrupt files."""
from __future__ import annotations

import warnings
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xlog import LocalStore
from xlog import schema as S
from xlog.store import QuarantineWarning


def record(**kw) -> dict:
    r = {"record_id": S.new_record_id(), "schema_version": 1, "created_at": datetime.now(timezone.utc),
         "xlog_version": "0.1.0", "source": "xlog", "status": "completed", "model_name": "m",
         "outcome_metrics": {"eval_f1": 0.5}}
    r.update(kw)
    return r


def test_write_read_roundtrip(tmp_path):
    store = LocalStore(tmp_path)
    r = record(peft_target_modules=["query", "value"], task_n_train=10)
    path = store.write(r)
    assert path.parent.parent == store.records_dir and path.name == f"{r['record_id']}.parquet"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    [back] = store.records()
    assert back["record_id"] == r["record_id"] and back["outcome_metrics"] == {"eval_f1": 0.5}
    assert back["peft_target_modules"] == ["query", "value"] and back["task_n_train"] == 10
    assert store.get(r["record_id"][:8])["record_id"] == r["record_id"]
    meta = pq.read_schema(path).field("task_n_train").metadata
    assert meta[b"unit"] == b"examples"


def test_invalid_record_is_refused_and_nothing_written(tmp_path):
    store = LocalStore(tmp_path)
    with pytest.raises(S.ValidationError) as e:
        store.write(record(status="exploded", task_n_train="many", energy_kwh=float("nan"), bogus=1))
    msg = str(e.value)
    assert "status" in msg and "task_n_train" in msg and "energy_kwh" in msg and "bogus" in msg
    assert store.files() == []


def test_half_written_temporary_files_are_invisible(tmp_path):
    store = LocalStore(tmp_path)
    store.write(record())
    d = store.files()[0].parent
    (d / ".tmp-abc.parquet").write_bytes(b"PAR1 half")
    assert len(store.records()) == 1


def test_corrupt_and_invalid_files_are_quarantined_not_lost(tmp_path):
    store = LocalStore(tmp_path)
    good = store.write(record())
    bad = good.parent / "truncated.parquet"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    wrong = good.parent / "wrong.parquet"
    pq.write_table(pa.table({"schema_version": [1], "record_id": ["not-a-uuid"]}), wrong)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = store.records()
    assert len(recs) == 1  # never fatal: the good record still loads
    assert sum(issubclass(w.category, QuarantineWarning) for w in caught) == 2
    q = sorted(p.name for p in store.quarantine_dir.rglob("*") if p.is_file())
    assert q == ["truncated.parquet", "truncated.parquet.reason.txt", "wrong.parquet", "wrong.parquet.reason.txt"]
    reason = next(store.quarantine_dir.rglob("wrong.parquet.reason.txt")).read_text()
    assert "record_id" in reason and "not a UUID" in reason
    assert not bad.exists() and not wrong.exists()
    assert len(store.records()) == 1  # a second read finds nothing left to quarantine



def test_a_broken_install_quarantines_nothing(tmp_path, monkeypatch):
    """Regression: a stale editable install made the schema package unimportable, and every good
    record in a store was quarantined. An environment error must propagate and move no file."""
    from xlog.remotes import sync
    from xsearch.evaluator import find_record
    store = LocalStore(tmp_path)
    paths = [store.write(record()) for _ in range(3)]

    def broken(*a, **k):
        raise ModuleNotFoundError("No module named 'xlog.schema_files'")
    monkeypatch.setattr(S, "validate_table", broken)
    with pytest.raises(ModuleNotFoundError):
        store.records()
    with pytest.raises(ModuleNotFoundError):
        store.get(paths[0].stem)
    with pytest.raises(ModuleNotFoundError):
        find_record(store, paths[0].stem)
    with pytest.raises(ModuleNotFoundError):
        sync._read_one(store, paths[0], sync.PushResult(remote="r"))
    assert all(p.exists() for p in paths) and not store.quarantine_dir.exists()

def test_schema_has_description_and_unit_for_every_field():
    doc = S.load_json_schema(1)
    for name, p in doc["properties"].items():
        assert p["description"] and "unit" in p and p["group"], name
    arrow = S.arrow_schema(1)
    assert arrow.names == list(doc["properties"])
    assert arrow.field("energy_kwh").metadata[b"unit"] == b"kWh"
    for name in arrow.names:  # units in names agree with the declared unit
        unit = doc["properties"][name]["unit"]
        if name.endswith("_kwh"):
            assert unit == "kWh"
        if name.endswith("_s") and not name.endswith("_per_s"):
            assert unit == "s"
        if name.endswith("_gb"):
            assert unit == "GB"
    assert "| `energy_kwh` |" in S.markdown_table()
