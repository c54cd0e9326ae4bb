"""`xlog import autogoal` on the sample of the XAutoLM experience store (tests/fixtures/autogoal_store)."""
from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from xlog import __version__
from xlog import schema as S
from xlog.cli import main as xlog_main
from xlog.importers.autogoal import GIB_TO_GB, MODEL_ALIASES, import_autogoal
from xlog.privacy import find_leaks
from xlog.store import LocalStore

FIXTURE = Path(__file__).parent / "fixtures" / "autogoal_store"
N_FILES = 30


def _source(name_prefix: str) -> tuple[Path, dict]:
    """The fixture file whose name starts with a time + uuid prefix, and its parsed JSON."""
    (path,) = [p for p in FIXTURE.rglob("*.json") if p.name.startswith(name_prefix)]
    return path, json.loads(path.read_text())


def _hp(src: dict) -> tuple[str, dict]:
    (step,) = src["algorithms"]
    (cls, params), = step.items()
    return cls, {k: v["value"] for k, v in params.items()}


def _record_for(store: LocalStore, src: dict) -> dict:
    alias = next(iter(_hp(src)[1]["inner_model"]))
    matches = [r for r in store.records()
               if r["created_at"] == datetime.fromisoformat(src["timestamp"]).replace(tzinfo=timezone.utc)
               and r["model_name"] == MODEL_ALIASES[alias][0]]
    assert len(matches) == 1, matches
    return matches[0]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[LocalStore, object]:
    store = LocalStore(tmp_path_factory.mktemp("xlog_home"))
    summary = import_autogoal(FIXTURE, store)
    return store, summary


def test_fixture_store_counts(imported):
    store, summary = imported
    assert summary.read == N_FILES
    assert summary.invalid == []
    # 9 failed evaluations are logged twice by AutoGOAL (error, then -inf score a second later):
    # the twins fold into the error record.
    assert summary.merged == 9
    assert summary.imported == N_FILES - 9 == len(store.files())
    assert summary.by_status == {"completed": 1, "failed": 9, "oom": 6, "timeout": 5}
    assert summary.failures == 20
    recs = store.records()
    assert Counter(r["status"] for r in recs) == Counter(summary.by_status)
    for r in recs:
        assert S.validate_record(r) == [], r["record_id"]
        assert find_leaks(r) == [], r
        assert r["source"] == "import:autogoal" and r["xlog_version"] == __version__
        assert r["energy_source"] == "none" and r["task_name"] == "ag_news"
        # never a non-finite number, never a score on a failure
        for k, v in r.items():
            if isinstance(v, float):
                assert math.isfinite(v), k
        if r["status"] != "completed":
            assert r["outcome_primary_value"] is None and r["outcome_metrics"] is None


def test_successful_partial_record_field_by_field(imported):
    store, _ = imported
    path, src = _source("00_37_53")
    cls, hp = _hp(src)
    assert cls == "PartialFineTuneLLMEmbeddingClassifier"
    r = _record_for(store, src)
    assert r["status"] == "completed" and r["error_type"] is None and r["error_message"] is None
    assert r["created_at"] == datetime(2024, 10, 30, 0, 37, 53, tzinfo=timezone.utc)
    assert r["model_name"] == "google/electra-small-discriminator"
    assert r["model_type"] == "electra" and r["model_kind"] == "encoder"
    assert r["model_objective"] == "sequence-classification"
    assert r["ft_method"] == "partial" and r["peft_type"] is None
    assert r["outcome_primary_metric"] == "f1" and r["outcome_greater_is_better"] is True
    assert r["outcome_primary_value"] == src["f1"]
    assert r["outcome_metrics"] == {"f1": src["f1"], "accuracy": src["accuracy"]}
    assert r["outcome_total_runtime_s"] == src["evaluation_time"]
    assert r["outcome_eval_runtime_s"] is None
    assert r["train_learning_rate"] == hp["learning_rate"]
    assert r["train_batch_size"] == hp["batch_size"]
    assert r["train_grad_accum_steps"] == hp["gradient_accumulation_steps"]
    assert r["train_effective_batch_size"] == hp["batch_size"] * hp["gradient_accumulation_steps"]
    assert r["train_epochs"] == hp["epochs"] and r["train_warmup_steps"] == hp["warmup_steps"]
    assert r["train_weight_decay"] == hp["weight_decay"] and r["train_lr_scheduler"] == hp["lr_scheduler"]
    assert r["train_max_seq_length"] == hp["max_length"] and r["train_optimizer"] == hp["optimizer"]
    # gradient clipping was off in this run: its max norm is not a training setting then
    assert hp["use_gradient_clipping"] is False and r["train_max_grad_norm"] is None
    config = json.loads(r["ft_config_json"])
    assert config["autogoal_class"] == cls
    assert config["inner_model"] == "WORD_EMB_Google_Electra_Small_Discriminator"
    assert {k: v for k, v in config.items() if k in hp and k != "inner_model"} == \
        {k: v for k, v in hp.items() if k != "inner_model"}
    # task meta-features, by position (TextClassificationFeatureExtractor)
    f = src["dataset_features"]
    assert r["task_type"] == "text-classification"
    assert (r["task_n_train"], r["task_n_classes"]) == (int(f[0]), int(f[1])) == (120000, 4)
    assert r["task_class_entropy"] == f[2]
    assert (r["task_class_prob_min"], r["task_class_prob_max"]) == (f[3], f[4])
    assert r["task_imbalance_ratio"] == pytest.approx(f[4] / f[3]) == pytest.approx(1 / f[5])
    assert (r["task_chars_mean"], r["task_chars_std"], r["task_chars_cv"]) == (f[6], f[7], f[8])
    assert r["task_landmarker_score"] == f[9] and r["task_landmarker_name"].startswith("autogoal:")
    assert r["task_tokens_mean"] is None and r["task_type_token_ratio"] is None
    # system features: [physical cores, logical cores, max GHz, RAM GiB, GPU GiB (0 = not probed)]
    s = src["system_features"]
    assert r["hw_cpu_cores"] == int(s[1]) == 16
    assert r["hw_ram_gb"] == pytest.approx(s[3] * GIB_TO_GB, abs=1e-3)
    assert s[4] == 0 and r["hw_gpu_memory_gb"] is None and r["hw_gpu_name"] is None


def test_oom_record_field_by_field(imported):
    store, _ = imported
    _, src = _source("08_39_32")
    cls, hp = _hp(src)
    assert cls == "LoraGenLLMClassifier" and src["error"].startswith("CUDA out of memory")
    r = _record_for(store, src)
    assert r["status"] == "oom" and r["error_type"] == "OutOfMemoryError"
    assert r["error_message"].startswith("CUDA out of memory. Tried to allocate 160.00 MiB")
    assert r["model_name"] == "microsoft/phi-2" and r["model_kind"] == "decoder"
    assert r["model_objective"] is None   # how the generative classifier's head works is not recorded
    assert r["ft_method"] == "lora" and r["peft_type"] == "LORA"
    assert (r["peft_lora_r"], r["peft_lora_alpha"], r["peft_lora_dropout"]) == \
        (hp["lora_r"], hp["lora_alpha"], hp["lora_dropout"])
    assert r["peft_target_modules"] is None
    config = json.loads(r["ft_config_json"])
    for k in ("lora_bias", "init_lora_weights", "fan_in_fan_out", "model_save", "class_weighted_loss"):
        assert config[k] == hp[k]
    assert r["outcome_total_runtime_s"] is None and r["outcome_primary_metric"] is None


def test_full_finetune_failure_without_score(imported):
    """A full fine-tune that AutoGOAL logged with F1 -inf / time inf and no error (no twin)."""
    store, _ = imported
    _, src = _source("16_52_29")
    cls, hp = _hp(src)
    assert cls == "FineTuneLLMEmbeddingClassifier"
    assert src["error"] is None and src["f1"] == -math.inf and src["evaluation_time"] == math.inf
    r = _record_for(store, src)
    assert r["ft_method"] == "full" and r["model_name"] == "bert-large-cased" and r["peft_type"] is None
    assert r["status"] == "failed" and r["error_type"] == "NoScore"
    assert "f1=-inf" in r["error_message"]
    assert r["outcome_primary_value"] is None and r["outcome_total_runtime_s"] is None
    assert r["train_learning_rate"] == hp["learning_rate"] and r["train_batch_size"] == hp["batch_size"]
    assert json.loads(r["ft_config_json"])["dropout_rate"] == hp["dropout_rate"]


def test_timeout_and_scrubbed_error(imported):
    store, _ = imported
    timeouts = [r for r in store.records() if r["status"] == "timeout"]
    assert len(timeouts) == 5
    assert all(r["error_message"].startswith("Exceeded allowed time") for r in timeouts)
    _, src = _source("01_56_34")
    assert "/home/" in src["error"]
    r = _record_for(store, src)
    assert r["status"] == "failed" and r["error_type"] is None   # AutoGOAL keeps no exception class
    assert "/home/" not in r["error_message"] and "<path>" in r["error_message"]


def test_reimport_adds_nothing(imported):
    store, first = imported
    before = sorted(p.name for p in store.files())
    again = import_autogoal(FIXTURE, store)
    assert again.imported == 0 and again.already_present == first.imported
    # the ids depend on the store layout below the alias, not on the folder the import points at
    sub = import_autogoal(FIXTURE / "ag_news" / "2024-10-30", store)
    assert sub.imported == 0 and sub.already_present > 0
    assert sorted(p.name for p in store.files()) == before


def test_keep_twins_and_dry_run(tmp_path):
    store = LocalStore(tmp_path / "home")
    dry = import_autogoal(FIXTURE, store, dry_run=True, keep_twins=True)
    assert dry.imported == N_FILES and store.files() == []
    summary = import_autogoal(FIXTURE, store, keep_twins=True)
    assert summary.imported == N_FILES and summary.merged == 0
    assert Counter(r["error_type"] for r in store.records())["NoScore"] == 14


def test_malformed_and_unknown_files_are_reported_and_skipped(tmp_path):
    src = tmp_path / "store"
    shutil.copytree(FIXTURE, src)
    day = src / "ag_news" / "2024-10-31"
    day.mkdir()
    (day / "00_00_01-broken.json").write_text('{"algorithms": [', encoding="utf-8")
    _, good = _source("00_37_53")
    unknown = dict(good, dataset_feature_extractor_name="ImageFeatureExtractor")
    (day / "00_00_02-unknown-extractor.json").write_text(json.dumps(unknown), encoding="utf-8")
    short = dict(good, dataset_features=good["dataset_features"][:7])
    (day / "00_00_03-short-vector.json").write_text(json.dumps(short), encoding="utf-8")
    (day / "00_00_04-array.json").write_text("[1, 2]", encoding="utf-8")
    sklearn = dict(good, algorithms=[{"LogisticRegression": {"C": {"value": 1.0}}}])
    (day / "00_00_05-no-finetuning.json").write_text(json.dumps(sklearn), encoding="utf-8")

    store = LocalStore(tmp_path / "home")
    summary = import_autogoal(src, store)
    assert summary.imported == N_FILES - 9
    reasons = {Path(p.where).name: p.reason for p in summary.invalid}
    assert set(reasons) == {"00_00_01-broken.json", "00_00_02-unknown-extractor.json",
                            "00_00_03-short-vector.json", "00_00_04-array.json", "00_00_05-no-finetuning.json"}
    assert "not JSON" in reasons["00_00_01-broken.json"]
    assert "ImageFeatureExtractor" in reasons["00_00_02-unknown-extractor.json"]
    assert "length 7" in reasons["00_00_03-short-vector.json"]
    assert "not an object" in reasons["00_00_04-array.json"]
    assert "LogisticRegression" in reasons["00_00_05-no-finetuning.json"]
    assert all(str(day) in p.where for p in summary.invalid)

    # the CLI reports each skipped file with its path and ends with the summary line
    result = CliRunner().invoke(xlog_main, ["--home", str(tmp_path / "home2"), "import", "autogoal", str(src)])
    assert result.exit_code == 0, result.output
    assert f"skipped {day / '00_00_01-broken.json'}: not JSON" in result.stderr
    assert "imported 21 record(s)" in result.stdout and "5 invalid" in result.stdout
    assert "20 failure(s) as experience" in result.stdout


def test_newer_record_variant_successful_lora(tmp_path):
    """Newer XAutoLM records: `task_features` {meta, semantic} and a `metrics` list. The sample
    store has no successful LoRA run, so this one is built from its LoRA record 08_36_03."""
    _, src = _source("08_36_03")
    newer = {k: v for k, v in src.items() if k not in ("dataset_features", "f1", "accuracy", "evaluation_time")}
    newer.update(error=None, task_features={"meta": src["dataset_features"], "semantic": None},
                 metrics=[{"name": "F1", "maximize": True, "value": 0.875},
                          {"name": "Evaluation Time", "maximize": False, "value": 812.5},
                          {"name": "time_train_mean_seconds", "maximize": False, "value": 790.0}])
    d = tmp_path / "store" / "ag_news" / "2025-02-01"
    d.mkdir(parents=True)
    (d / "10_00_00-0000.json").write_text(json.dumps(newer), encoding="utf-8")
    store = LocalStore(tmp_path / "home")
    summary = import_autogoal(tmp_path / "store", store)
    assert summary.imported == 1 and summary.invalid == []
    (r,) = store.records()
    _, hp = _hp(src)
    assert r["status"] == "completed" and r["ft_method"] == "lora" and r["model_name"] == "gpt2-xl"
    assert r["outcome_primary_metric"] == "f1" and r["outcome_primary_value"] == 0.875
    assert r["outcome_total_runtime_s"] == 812.5
    assert r["outcome_metrics"] == {"f1": 0.875, "time_train_mean_seconds": 790.0}
    assert (r["peft_lora_r"], r["peft_lora_alpha"], r["peft_lora_dropout"]) == \
        (hp["lora_r"], hp["lora_alpha"], hp["lora_dropout"])
    assert r["task_n_train"] == 120000 and r["task_landmarker_score"] == src["dataset_features"][9]


def test_generative_extractor_and_older_system_layout(tmp_path):
    _, src = _source("00_37_53")
    meta = [5000.0, 812.0, 203.0, 0.31, 120.0, 40.0, 0.5, 0.16, 0.42, 0.61, 0.2]
    rec = dict(src, dataset_feature_extractor_name="GenerativeTaskFeatureExtractor",
               dataset_features=None, task_features={"meta": meta, "semantic": [0.1] * 384},
               system_features=[16.0, 251.5, 2.0, 160.0, 80.0])
    rec.pop("dataset_features")
    d = tmp_path / "store" / "squad" / "2025-03-01"
    d.mkdir(parents=True)
    (d / "09_00_00-1111.json").write_text(json.dumps(rec), encoding="utf-8")
    ambiguous = dict(rec, timestamp="2025-03-01 09:00:05", system_features=[8.0, 16.0, 2.0, 32.0, 16.0])
    (d / "09_00_05-2222.json").write_text(json.dumps(ambiguous), encoding="utf-8")
    store = LocalStore(tmp_path / "home")
    summary = import_autogoal(tmp_path / "store", store, task_name_from_alias=False)
    assert summary.imported == 2
    first, second = store.records()
    assert first["task_type"] == "text-generation" and first["task_name"] is None
    assert (first["task_n_train"], first["task_chars_mean"], first["task_chars_std"]) == (5000, 812.0, 203.0)
    assert first["task_chars_cv"] == pytest.approx(203.0 / 812.0)
    assert first["task_n_classes"] is None and first["task_type_token_ratio"] is None
    # older layout: [physical cores, RAM GiB, GPU count, total GPU GiB, GiB per GPU]
    assert first["hw_gpu_count"] == 2 and first["hw_accelerator"] == "cuda"
    assert first["hw_gpu_memory_gb"] == pytest.approx(80 * GIB_TO_GB, abs=1e-3)
    assert first["hw_ram_gb"] == pytest.approx(251.5 * GIB_TO_GB, abs=1e-3) and first["hw_cpu_cores"] is None
    # [8, 16, 2, 32, 16] fits both layouts: nothing mapped, a warning says so
    assert second["hw_ram_gb"] is None and second["hw_cpu_cores"] is None and second["hw_gpu_count"] is None
    assert any("09_00_05-2222.json" in w.where and "both" in w.reason for w in summary.warnings)


def test_timezone_option(tmp_path):
    store = LocalStore(tmp_path / "home")
    _, src = _source("00_37_53")
    import_autogoal(FIXTURE / "ag_news" / "2024-10-30", store, timezone_name="Europe/Madrid")
    (r,) = [x for x in store.records() if x["model_name"] == "google/electra-small-discriminator"]
    # 00:37:53 in Madrid (CET, UTC+1 after 27 October 2024) is 23:37:53 UTC the day before
    assert r["created_at"] == datetime(2024, 10, 29, 23, 37, 53, tzinfo=timezone.utc)


def _expected_rates_from_source() -> dict[str, tuple[int, int]]:
    """Per model alias: (evaluations, CUDA OOMs), read straight from the JSON files. An evaluation
    AutoGOAL logged twice (error, then a no-score twin of the same pipeline) counts once."""
    srcs = [json.loads(p.read_text()) for p in sorted(FIXTURE.rglob("*.json"))]
    errors = [s for s in srcs if s["error"]]
    out: dict[str, list[int]] = {}
    for s in srcs:
        twin = not s["error"] and not (s["f1"] is not None and math.isfinite(s["f1"])) and any(
            e["algorithms"] == s["algorithms"] and 0 <= (datetime.fromisoformat(s["timestamp"])
                                                         - datetime.fromisoformat(e["timestamp"])).total_seconds() <= 5
            for e in errors)
        if twin:
            continue
        hub_id = MODEL_ALIASES[next(iter(_hp(s)[1]["inner_model"]))][0]
        n = out.setdefault(hub_id, [0, 0])
        n[0] += 1
        n[1] += bool(s["error"] and "CUDA out of memory" in s["error"])
    return {k: tuple(v) for k, v in out.items()}


def test_imported_store_queries_through_sql(imported):
    """Per-model OOM rates through xsearch's DuckDB layer (the `experiences` view and the
    `failure_rates_by_model` helper view, and the `xsearch sql` command)."""
    db = pytest.importorskip("xsearch.db")
    store, _ = imported
    expected = _expected_rates_from_source()
    assert sum(n for n, _ in expected.values()) == 21 and sum(o for _, o in expected.values()) == 6
    rows = db.query("SELECT model_name, count(*) AS n, count(*) FILTER (WHERE status = 'oom') AS n_oom, "
                    "avg(CASE WHEN status = 'oom' THEN 1.0 ELSE 0.0 END) AS oom_rate "
                    "FROM experiences GROUP BY model_name", home=store.root).to_pylist()
    got = {r["model_name"]: (r["n"], r["n_oom"]) for r in rows}
    assert got == expected
    rates = {r["model_name"]: r["oom_rate"] for r in rows}
    assert rates["microsoft/phi-2"] == 1.0 and rates["xlm-roberta-large"] == 0.5
    view = db.query("SELECT model_name, sum(n_runs) AS n, sum(n_oom) AS n_oom FROM failure_rates_by_model "
                    "GROUP BY model_name", home=store.root).to_pylist()
    assert {r["model_name"]: (r["n"], r["n_oom"]) for r in view} == expected
    # types survive: timestamps, maps, and no non-finite numbers anywhere
    (best,) = db.query("SELECT model_name, outcome_primary_value, metric(outcome_metrics, 'accuracy') AS acc, "
                       "outcome_total_runtime_s, created_at FROM experiences WHERE status = 'completed'",
                       home=store.root).to_pylist()
    _, src = _source("00_37_53")
    assert best["outcome_primary_value"] == src["f1"] and best["outcome_total_runtime_s"] == src["evaluation_time"]
    acc = best["acc"][0] if isinstance(best["acc"], list) else best["acc"]
    assert acc == src["accuracy"]
    assert best["created_at"] == datetime(2024, 10, 30, 0, 37, 53, tzinfo=timezone.utc)
    from xsearch.cli import main as xsearch_main
    res = CliRunner().invoke(xsearch_main, ["sql", "--json", "--home", str(store.root),
                                            "SELECT status, count(*) AS n FROM experiences GROUP BY status"])
    assert res.exit_code == 0, res.output
    assert {r["status"]: r["n"] for r in json.loads(res.stdout)} == {"completed": 1, "failed": 9, "oom": 6,
                                                                     "timeout": 5}


def test_imported_records_round_trip_through_push_and_pull(imported, tmp_path, hub_env):
    """Imported records publish to a Hub dataset (the local Hub-compatible server) and come back
    identical in another store's mirror."""
    from xlog.remotes import open_remote
    from xlog.remotes.sync import pull, push
    store, summary = imported
    remote = open_remote("someone/autogoal-experience")
    pushed = push(remote, store, progress=False)
    assert pushed.new_records == summary.imported and pushed.invalid == []
    assert push(remote, store, progress=False).new_records == 0   # a second push sends nothing
    other = LocalStore(tmp_path / "other_home")
    pulled = pull(open_remote("someone/autogoal-experience"), other, progress=False)
    assert pulled.new_records == summary.imported and pulled.quarantined == []
    import pyarrow.parquet as pq
    back = {}
    for f in pulled.mirror.rglob("*.parquet"):
        for r in S.table_to_records(pq.read_table(f)):
            back[r["record_id"]] = r
    assert set(back) == {r["record_id"] for r in store.records()}
    for r in store.records():
        b = back[r["record_id"]]
        assert S.validate_record(b) == []
        for k in ("status", "error_type", "error_message", "model_name", "ft_method", "ft_config_json",
                  "outcome_primary_value", "outcome_metrics", "task_landmarker_score", "created_at", "source"):
            assert b[k] == r[k], k


def test_unknown_timezone_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        import_autogoal(FIXTURE, LocalStore(tmp_path / "home"), timezone_name="Mars/Olympus")
    res = CliRunner().invoke(xlog_main, ["--home", str(tmp_path / "h"), "import", "autogoal", str(FIXTURE),
                                         "--timezone", "Mars/Olympus"])
    assert res.exit_code == 1 and "unknown time zone" in res.output and "Traceback" not in res.output
