"""`xlog import table`: a CSV / JSON-lines log of runs with a column -> field mapping."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from xlog import schema as S
from xlog.cli import main as xlog_main
from xlog.importers.table import TableImportError, import_table, parse_assignments
from xlog.privacy import find_leaks
from xlog.store import LocalStore

CSV = """\
run,when,model,method,lr,bs,lora_r,targets,f1,acc,status,error,secs,kwh,notes
a,2025-01-02T10:00:00,bert-base-uncased,lora,2e-5,16,8,query;value,0.81,0.85,completed,,120.5,0.012,first
b,2025-01-02T11:00:00,roberta-base,full,abc,16,,,0.70,0.80,completed,,99,,bad lr
c,2025-01-02T12:00:00,gpt2,full,1e-4,32,,,inf,,completed,,10,,no score
d,2025-01-02T13:00:00,gpt2,full,1e-4,64,,,,,OOM,CUDA out of memory in /home/someone/train.py,5,,
e,2025-01-02T14:00:00,gpt2,full,1e-4,64,,,0.5,,finished,,5,,bad status
"""

MAP = {"when": "created_at", "model": "model_name", "method": "ft_method", "lr": "train_learning_rate",
       "bs": "train_batch_size", "lora_r": "peft_lora_r", "targets": "peft_target_modules",
       "f1": "outcome_metrics.f1", "acc": "outcome_metrics.accuracy", "status": "status",
       "error": "error_message", "secs": "outcome_total_runtime_s", "kwh": "energy_kwh"}
SET = {"outcome_primary_metric": "f1", "task_name": "my_logs", "task_type": "text-classification"}


@pytest.fixture()
def csv_file(tmp_path) -> Path:
    p = tmp_path / "runs.csv"
    p.write_text(CSV, encoding="utf-8")
    return p


def _by_model_time(store: LocalStore) -> dict[str, dict]:
    return {r["created_at"].strftime("%H:%M"): r for r in store.records()}


def test_csv_import_with_mapping(csv_file, tmp_path):
    store = LocalStore(tmp_path / "home")
    summary = import_table(csv_file, MAP, store, constants=SET)
    assert summary.read == 5 and summary.imported == 3
    reasons = {p.where: p.reason for p in summary.invalid}
    assert reasons == {f"{csv_file}:3": "train_learning_rate: 'abc' is not a number",
                       f"{csv_file}:6": "status: 'finished' is not one of completed, failed, oom, timeout, interrupted, pruned"}
    assert any("run" in w.reason and "notes" in w.reason for w in summary.warnings)   # unmapped columns
    recs = _by_model_time(store)
    for r in recs.values():
        assert S.validate_record(r) == [] and find_leaks(r) == []
        assert r["source"] == "import:table" and r["task_name"] == "my_logs"
    a = recs["10:00"]
    assert a["created_at"] == datetime(2025, 1, 2, 10, 0, tzinfo=timezone.utc)
    assert (a["model_name"], a["ft_method"], a["train_learning_rate"], a["train_batch_size"]) == \
        ("bert-base-uncased", "lora", 2e-5, 16)
    assert a["peft_lora_r"] == 8 and a["peft_target_modules"] == ["query", "value"]
    assert a["outcome_metrics"] == {"f1": 0.81, "accuracy": 0.85}
    assert a["outcome_primary_metric"] == "f1" and a["outcome_primary_value"] == 0.81
    assert a["status"] == "completed" and a["outcome_total_runtime_s"] == 120.5
    assert a["energy_kwh"] == 0.012 and a["energy_source"] == "imported"
    # a "completed" row with an infinite score has no score: a failure of unknown cause
    c = recs["12:00"]
    assert c["status"] == "failed" and c["error_type"] == "NoScore" and c["outcome_primary_value"] is None
    assert c["outcome_metrics"] is None and c["energy_source"] == "none"
    d = recs["13:00"]
    assert d["status"] == "oom" and "/home/" not in d["error_message"] and "<path>/train.py" in d["error_message"]
    assert summary.by_status == {"completed": 1, "failed": 1, "oom": 1} and summary.failures == 2


def test_reimport_adds_nothing_and_ids_are_stable(csv_file, tmp_path):
    store = LocalStore(tmp_path / "home")
    first = import_table(csv_file, MAP, store, constants=SET)
    again = import_table(csv_file, MAP, store, constants=SET)
    assert again.imported == 0 and again.already_present == first.imported
    # appending a row imports only that row; the ids of the others do not move
    with csv_file.open("a", encoding="utf-8") as fh:
        fh.write("f,2025-01-03T09:00:00,gpt2,lora,1e-3,8,4,c_attn,0.66,0.7,completed,,30,,\n")
    third = import_table(csv_file, MAP, store, constants=SET)
    assert third.imported == 1 and third.already_present == 3
    assert sorted(third.record_ids + first.record_ids) == sorted(r["record_id"] for r in store.records())


def test_jsonl_with_typed_values_and_nonfinite(tmp_path):
    rows = [{"id": "5f0b7b4e-3c1d-4d2e-9f00-0a1b2c3d4e5f", "t": 1735819200, "m": "gpt2",
             "metrics": {"f1": 0.5, "loss": math.inf}, "ok": "completed", "gc": True},
            {"t": "2025-01-02T12:00:00+02:00", "m": "gpt2", "metrics": {"f1": -math.inf}, "ok": "completed",
             "gc": "no"},
            {"t": "2025-01-02T13:00:00", "m": "gpt2", "ok": "failed", "gc": "maybe"}]
    p = tmp_path / "runs.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n", encoding="utf-8")
    store = LocalStore(tmp_path / "home")
    summary = import_table(p, {"id": "record_id", "t": "created_at", "m": "model_name", "metrics": "outcome_metrics",
                               "ok": "status", "gc": "train_gradient_checkpointing"}, store,
                           constants={"outcome_primary_metric": "f1"})
    assert summary.imported == 2
    assert {p_.where.rsplit(":", 1)[1] for p_ in summary.invalid} == {"3", "4"}
    recs = {r["record_id"]: r for r in store.records()}
    first = recs["5f0b7b4e-3c1d-4d2e-9f00-0a1b2c3d4e5f"]   # a UUID in the source is kept
    assert first["created_at"] == datetime(2025, 1, 2, 12, 0, tzinfo=timezone.utc)   # Unix seconds
    assert first["outcome_metrics"] == {"f1": 0.5} and first["outcome_primary_value"] == 0.5
    assert first["train_gradient_checkpointing"] is True
    (second,) = [r for rid, r in recs.items() if rid != first["record_id"]]
    assert second["created_at"] == datetime(2025, 1, 2, 10, 0, tzinfo=timezone.utc)   # +02:00 -> UTC
    assert second["status"] == "failed" and second["error_type"] == "NoScore"
    assert second["train_gradient_checkpointing"] is False


@pytest.mark.parametrize("mapping,constants,message", [
    ({"model": "model_nam"}, {}, "did you mean model_name"),
    ({"modle": "model_name", "when": "created_at"}, {}, "column(s) modle not in the file"),
    ({"model": "model_name", "method": "model_name"}, {}, "mapped from more than one column"),
    ({"model": "xlog_version"}, {}, "set by the importer"),
    ({"model": "model_name"}, {"model_name": "x"}, "both mapped and set"),
    ({}, {}, "at least one --map"),
    ({"f1": "outcome_metrics."}, {}, "give the metric name"),
])
def test_mapping_errors(csv_file, tmp_path, mapping, constants, message):
    store = LocalStore(tmp_path / "home")
    with pytest.raises(TableImportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_table(csv_file, mapping, store, constants=constants)
    assert store.files() == []


def test_rows_without_required_fields_are_invalid(csv_file, tmp_path):
    summary = import_table(csv_file, {"model": "model_name", "when": "created_at"}, LocalStore(tmp_path / "h"))
    assert summary.imported == 0 and len(summary.invalid) == 5
    assert all("status is empty" in p.reason for p in summary.invalid)


def test_parse_assignments_and_unknown_format(tmp_path):
    assert parse_assignments(["a=b", " c = d "], "--map") == {"a": "b", "c": "d"}
    with pytest.raises(TableImportError, match="expected LEFT=RIGHT"):
        parse_assignments(["model_name"], "--map")
    p = tmp_path / "runs.txt"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(TableImportError, match="--format"):
        import_table(p, {"a": "model_name"}, LocalStore(tmp_path / "h"))


def test_cli_table(csv_file, tmp_path):
    home = tmp_path / "home"
    args = ["--home", str(home), "import", "table", str(csv_file)]
    for col, field in MAP.items():
        args += ["--map", f"{col}={field}"]
    args += ["--set", "outcome_primary_metric=f1"]
    runner = CliRunner()
    dry = runner.invoke(xlog_main, args + ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would import 3 record(s)" in dry.stdout and LocalStore(home).files() == []
    res = runner.invoke(xlog_main, args)
    assert res.exit_code == 0, res.output
    assert "imported 3 record(s)" in res.stdout and "2 invalid" in res.stdout
    assert f"skipped {csv_file}:3: train_learning_rate" in res.stderr
    bad = runner.invoke(xlog_main, ["--home", str(home), "import", "table", str(csv_file), "--map", "f1=outcome_f1"])
    assert bad.exit_code != 0 and "not a field of the record schema" in bad.output
    js = runner.invoke(xlog_main, args + ["--json"])
    assert json.loads(js.stdout)["already_present"] == 3


def test_model_columns_filled_from_the_model_table(tmp_path):
    """Model columns a row leaves empty come from the shipped table of model facts; a value the
    row gives is never overwritten, and an unknown model gets nothing."""
    from xlog.importers.modelfacts import model_facts
    p = tmp_path / "runs.csv"
    p.write_text("when,model,layers,kind,status\n"
                 "2025-01-02T10:00:00,bert-base-uncased,,,completed\n"
                 "2025-01-02T11:00:00,google-bert/bert-base-uncased,6,,completed\n"   # renamed Hub org
                 "2025-01-02T12:00:00,TEXT_GEN_Microsoft_Phi_2,,,oom\n"               # an AutoGOAL alias
                 "2025-01-02T13:00:00,my-own-model,,decoder,failed\n", encoding="utf-8")
    mapping = {"when": "created_at", "model": "model_name", "layers": "model_n_layers", "kind": "model_kind",
               "status": "status"}
    store = LocalStore(tmp_path / "home")
    summary = import_table(p, mapping, store)
    assert summary.imported == 4 and summary.invalid == []
    recs = _by_model_time(store)
    bert = model_facts("bert-base-uncased")
    assert bert["model_n_params"] == 109_482_240 and bert["model_n_layers"] == 12
    a = recs["10:00"]
    assert a["model_name"] == "bert-base-uncased"
    assert {f: a[f] for f in bert} == bert
    assert a["model_architecture"] is None and a["model_objective"] is None   # the head is the row's to say
    b = recs["11:00"]
    assert b["model_name"] == "google-bert/bert-base-uncased"   # the source's name is kept
    assert b["model_n_layers"] == 6 and b["model_hidden_size"] == 768   # the row's 6 wins; the rest filled
    c = recs["12:00"]
    assert c["model_name"] == "TEXT_GEN_Microsoft_Phi_2"
    assert (c["model_type"], c["model_kind"], c["model_n_params"]) == ("phi", "decoder", 2_779_683_840)
    d = recs["13:00"]
    assert d["model_kind"] == "decoder" and d["model_n_params"] is None and d["model_type"] is None
    for r in recs.values():
        assert S.validate_record(r) == []
    # opting out leaves the columns as the file has them
    store2 = LocalStore(tmp_path / "home2")
    import_table(p, mapping, store2, model_facts=False)
    assert all(r["model_n_params"] is None for r in store2.records())
