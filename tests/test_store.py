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


# ---- bounds (issue 12, item 3): physically meaningful limits, enforced at write and validate ----
YEAR_S = 365.25 * 24 * 3600
OUT_OF_BOUNDS = {  # example -> (fields, field the problem names)
    "F1 = 5": (dict(outcome_metrics={"eval_f1": 5.0, "eval_loss": 0.3}), "outcome_metrics[eval_f1]"),
    "accuracy in percent": (dict(outcome_metrics={"eval_accuracy": 88.5}), "outcome_metrics[eval_accuracy]"),
    "primary F1 = 5": (dict(outcome_primary_metric="eval_f1", outcome_primary_value=5.0), "outcome_primary_value"),
    "n_params = 9e18": (dict(model_n_params=9 * 10**18), "model_n_params"),
    "negative runtime": (dict(outcome_train_runtime_s=-3.0), "outcome_train_runtime_s"),
    "runtime over a year": (dict(outcome_total_runtime_s=2 * YEAR_S), "outcome_total_runtime_s"),
    "1e9 kWh": (dict(energy_kwh=1e9), "energy_kwh"),
    "fraction 1.5": (dict(ft_trainable_fraction=1.5), "ft_trainable_fraction"),
    "negative count": (dict(task_n_train=-1), "task_n_train"),
    "10 MB task_name": (dict(task_name="a" * 10_000_000), "task_name"),
    "long error message": (dict(error_message="x" * 5000), "error_message"),
    "long module name": (dict(peft_target_modules=["q", "v" * 1000]), "peft_target_modules"),
}


@pytest.mark.parametrize("example", list(OUT_OF_BOUNDS))
def test_out_of_bounds_records_are_refused_at_write(tmp_path, example):
    fields, name = OUT_OF_BOUNDS[example]
    store = LocalStore(tmp_path)
    with pytest.raises(S.ValidationError) as e:
        store.write(record(**fields))
    assert f"{name}:" in str(e.value)
    assert len(str(e.value)) < 1000  # the message names the problem; it does not echo 10 MB
    assert store.files() == []


def test_out_of_bounds_files_fail_validate_naming_file_record_and_field(tmp_path):
    from click.testing import CliRunner

    from xlog.cli import main
    files = {}
    for i, (example, (fields, name)) in enumerate(OUT_OF_BOUNDS.items()):
        rec = record(**fields)
        path = tmp_path / f"case{i}.parquet"
        pq.write_table(S.records_to_table([rec]), path)  # planted: not through LocalStore.write
        files[path] = (name, rec["record_id"][:8])
    res = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert res.exit_code == 1
    assert f"0 valid, {len(files)} invalid" in res.output
    blocks = res.output.split("INVALID ")[1:]
    for path, (name, rid) in files.items():
        [block] = [b for b in blocks if b.startswith(str(path))]
        assert f"row 0 (record {rid}): {name}:" in block, block
        assert "not a readable Parquet file" not in block  # a schema problem is called one


def test_bounds_keep_what_is_meaningful():
    ok = [dict(outcome_metrics={"eval_loss": 5.0, "eval_bleu": 35.2, "eval_f1": 1.0, "eval_accuracy": 0.0}),
          dict(outcome_primary_metric="eval_loss", outcome_primary_value=7.5),
          dict(outcome_primary_metric="eval_perplexity", outcome_primary_value=120.0),
          dict(outcome_primary_metric="eval_f1", outcome_primary_value=0.93),
          dict(model_n_params=70 * 10**9, outcome_total_runtime_s=30 * 24 * 3600.0, energy_kwh=5e4),
          dict(task_name="n" * 256, outcome_train_loss=-0.5)]
    for fields in ok:
        assert S.validate_record(record(**fields)) == [], fields


def test_every_field_has_bounds_in_the_json_schema():
    doc = S.load_json_schema(1)
    for name, p in doc["properties"].items():
        types = p["type"] if isinstance(p["type"], list) else [p["type"]]
        if p.get("unit") in ("fraction", "probability"):
            assert (p.get("minimum"), p.get("maximum")) == (0, 1), name
        if ("integer" in types or "number" in types) and name not in (
                "schema_version", "train_seed", "outcome_primary_value", "outcome_train_loss"):
            assert p.get("minimum") is not None and p.get("maximum") is not None, name
        if "string" in types and "enum" not in p and p.get("format") != "date-time":
            assert p.get("maxLength"), name
    assert doc["properties"]["model_n_params"]["maximum"] == 1e13
    assert doc["properties"]["outcome_total_runtime_s"]["maximum"] == YEAR_S
    table = S.markdown_table()  # the README's table shows the bounds
    assert "| `ft_trainable_fraction` | number | fraction | [0, 1] |" in table
    assert "| `task_name` | string |  | <= 256 chars |" in table


def test_derived_validator_agrees_with_a_json_schema_implementation():
    """The validator is derived from the JSON Schema: a reference implementation of the standard
    gives the same verdict on every bound example (and on valid records)."""
    jsonschema = pytest.importorskip("jsonschema")
    import json
    doc = S.load_json_schema(1)
    check = jsonschema.Draft202012Validator(doc)
    cases = [fields for fields, _ in OUT_OF_BOUNDS.values()]
    cases += [dict(outcome_primary_metric="eval_loss", outcome_primary_value=7.5),
              dict(outcome_metrics={"eval_bleu": 35.0, "eval_exact_match": 0.5}), {}]
    for fields in cases:
        rec = record(**fields)
        as_json = json.loads(json.dumps({k: v for k, v in rec.items() if v is not None}, default=str))
        ours = S.validate_record(rec) == []
        theirs = check.is_valid(as_json)
        assert ours == theirs, (fields, S.validate_record(rec), [e.message for e in check.iter_errors(as_json)])


def test_private_data_is_scrubbed_at_write(tmp_path, caplog):
    store = LocalStore(tmp_path)
    rec = record(task_name="x@y.org", contributor="me@host.com", task_domain="./secret/dir",
                 error_message="cannot open ../x/y/secret.txt", hw_cpu_model="Xeon token=abcdef123456")
    path = store.write(rec)
    [back] = store.records()
    assert back["task_name"] is None and back["contributor"] is None  # nothing public was left
    assert back["task_domain"] == "dir" and back["error_message"] == "cannot open <path>/secret.txt"
    assert back["hw_cpu_model"] == "Xeon token=<token>"
    raw = path.read_bytes()
    for needle in (b"y.org", b"host.com", b"./secret", b"../x", b"abcdef123456"):
        assert needle not in raw, needle
    assert "task_name" in caplog.text and "contributor" in caplog.text  # said so, field by field
