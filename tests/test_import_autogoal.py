"""`xlog import autogoal` on the sample of the XAutoLM experience store (tests/fixtures/autogoal_store:
30 ag_news files, and 3 generative DROP files under drop/ that only the model-facts tests import)."""
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
from xlog.importers import modelfacts
from xlog.importers.autogoal import GIB_TO_GB, MODEL_ALIASES, import_autogoal
from xlog.importers.modelfacts import model_facts, model_row, model_table, resolve_model_id
from xlog.privacy import find_leaks
from xlog.store import LocalStore

FIXTURE = Path(__file__).parent / "fixtures" / "autogoal_store"
AG_NEWS = FIXTURE / "ag_news"   # the 30-file text-classification sample
DROP = FIXTURE / "drop"         # 3 generative records
N_FILES = 30


def _source(name_prefix: str) -> tuple[Path, dict]:
    """The fixture file whose name starts with a time + uuid prefix, and its parsed JSON."""
    (path,) = [p for p in FIXTURE.rglob("*.json") if p.name.startswith(name_prefix)]
    return path, json.loads(path.read_text())


def _hp(src: dict) -> tuple[str, dict]:
    (step,) = src["algorithms"]
    (cls, params), = step.items()
    return cls, {k: v["value"] for k, v in params.items()}


def _hub_id(alias: str) -> str:
    return MODEL_ALIASES[alias][0] if alias in MODEL_ALIASES else resolve_model_id(alias)


def _record_for(store: LocalStore, src: dict) -> dict:
    alias = next(iter(_hp(src)[1]["inner_model"]))
    matches = [r for r in store.records()
               if r["created_at"] == datetime.fromisoformat(src["timestamp"]).replace(tzinfo=timezone.utc)
               and r["model_name"] == _hub_id(alias)]
    assert len(matches) == 1, matches
    return matches[0]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[LocalStore, object]:
    store = LocalStore(tmp_path_factory.mktemp("xlog_home"))
    summary = import_autogoal(AG_NEWS, store)
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
    assert r["model_architecture"] == "ElectraForSequenceClassification"
    # published facts of google/electra-small-discriminator (config.json), from the shipped table
    assert (r["model_n_layers"], r["model_hidden_size"], r["model_n_heads"]) == (12, 256, 4)
    assert (r["model_vocab_size"], r["model_max_positions"]) == (30522, 512)
    assert r["model_n_params"] == model_table()["google/electra-small-discriminator"]["model_n_params"]
    assert 13_000_000 < r["model_n_params"] < 14_000_000
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
    assert r["model_name"] == "microsoft/phi-2" and r["model_kind"] == "decoder" and r["model_type"] == "phi"
    # AutoGOAL-contrib's *GenLLMClassifier subclasses *LLMEmbeddingClassifier: a decoder with a
    # sequence-classification head (AutoModelForSequenceClassification)
    assert r["model_objective"] == "sequence-classification"
    assert r["model_architecture"] == "PhiForSequenceClassification"
    assert (r["model_n_params"], r["model_n_layers"], r["model_hidden_size"], r["model_n_heads"],
            r["model_vocab_size"], r["model_max_positions"]) == (2_779_683_840, 32, 2560, 32, 51200, 2048)
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
    # no finite evaluation_time in the source, but the message says how long the run lasted
    srcs = [json.loads(p.read_text()) for p in AG_NEWS.rglob("*.json")]
    timed_out = [s for s in srcs if (s["error"] or "").startswith("Exceeded allowed time")]
    assert len(timed_out) == 5 and all(s["evaluation_time"] is None for s in timed_out)
    assert all("terminated after 5400.0 seconds" in s["error"] for s in timed_out)
    assert [r["outcome_total_runtime_s"] for r in timeouts] == [5400.0] * 5
    # other failures state no runtime: none is made up
    assert all(r["outcome_total_runtime_s"] is None for r in store.records() if r["status"] in ("oom", "failed"))
    _, src = _source("01_56_34")
    assert "/home/" in src["error"]
    r = _record_for(store, src)
    assert r["status"] == "failed" and r["error_type"] is None   # AutoGOAL keeps no exception class
    assert "/home/" not in r["error_message"] and "<path>" in r["error_message"]


def test_reimport_adds_nothing(imported):
    store, first = imported
    before = sorted(p.name for p in store.files())
    again = import_autogoal(AG_NEWS, store)
    assert again.imported == 0 and again.already_present == first.imported
    # the ids depend on the store layout below the alias, not on the folder the import points at
    sub = import_autogoal(AG_NEWS / "2024-10-30", store)
    assert sub.imported == 0 and sub.already_present > 0
    assert sorted(p.name for p in store.files()) == before


def test_keep_twins_and_dry_run(tmp_path):
    store = LocalStore(tmp_path / "home")
    dry = import_autogoal(AG_NEWS, store, dry_run=True, keep_twins=True)
    assert dry.imported == N_FILES and store.files() == []
    summary = import_autogoal(AG_NEWS, store, keep_twins=True)
    assert summary.imported == N_FILES and summary.merged == 0
    assert Counter(r["error_type"] for r in store.records())["NoScore"] == 14


def test_malformed_and_unknown_files_are_reported_and_skipped(tmp_path):
    src = tmp_path / "store"
    shutil.copytree(AG_NEWS, src / "ag_news")
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
    assert r["outcome_metrics"] == {"f1": 0.875}  # a phase time is a runtime, not a quality metric
    assert r["outcome_train_runtime_s"] == 790.0
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
    assert first["task_type"] == "question-answering" and first["task_name"] is None
    assert (first["task_n_train"], first["task_chars_mean"], first["task_chars_std"]) == (5000, 812.0, 203.0)
    assert first["task_chars_cv"] == pytest.approx(203.0 / 812.0)
    assert (first["task_answer_chars_mean"], first["task_answer_chars_std"]) == (120.0, 40.0)
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
    import_autogoal(AG_NEWS / "2024-10-30", store, timezone_name="Europe/Madrid")
    (r,) = [x for x in store.records() if x["model_name"] == "google/electra-small-discriminator"]
    # 00:37:53 in Madrid (CET, UTC+1 after 27 October 2024) is 23:37:53 UTC the day before
    assert r["created_at"] == datetime(2024, 10, 29, 23, 37, 53, tzinfo=timezone.utc)


def _expected_rates_from_source() -> dict[str, tuple[int, int]]:
    """Per model alias: (evaluations, CUDA OOMs), read straight from the JSON files. An evaluation
    AutoGOAL logged twice (error, then a no-score twin of the same pipeline) counts once."""
    srcs = [json.loads(p.read_text()) for p in sorted(AG_NEWS.rglob("*.json"))]
    errors = [s for s in srcs if s["error"]]
    out: dict[str, list[int]] = {}
    for s in srcs:
        twin = not s["error"] and not (s["f1"] is not None and math.isfinite(s["f1"])) and any(
            e["algorithms"] == s["algorithms"] and 0 <= (datetime.fromisoformat(s["timestamp"])
                                                         - datetime.fromisoformat(e["timestamp"])).total_seconds() <= 5
            for e in errors)
        if twin:
            continue
        hub_id = _hub_id(next(iter(_hp(s)[1]["inner_model"])))
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
        import_autogoal(AG_NEWS, LocalStore(tmp_path / "home"), timezone_name="Mars/Olympus")
    res = CliRunner().invoke(xlog_main, ["--home", str(tmp_path / "h"), "import", "autogoal", str(AG_NEWS),
                                         "--timezone", "Mars/Olympus"])
    assert res.exit_code == 1 and "unknown time zone" in res.output and "Traceback" not in res.output


# ---- model facts --------------------------------------------------------------------------------

# Every inner-model alias of the two XAutoLM stores in the workspace (../shared/fixtures/xautolm_dev,
# 37 aliases, and xautolm_generative, 24) -> the Hub id the importer must give it.
STORE_ALIASES = {
    "TEXT_GEN_Facebook_Bart_Base": "facebook/bart-base", "TEXT_GEN_Facebook_Bart_Large": "facebook/bart-large",
    "TEXT_GEN_Google_Flan_T5_Base": "google/flan-t5-base", "TEXT_GEN_Google_Flan_T5_Large": "google/flan-t5-large",
    "TEXT_GEN_Google_Flan_T5_Xl": "google/flan-t5-xl", "TEXT_GEN_Google_Flan_T5_Xxl": "google/flan-t5-xxl",
    "TEXT_GEN_Google_T5_T5_11B": "google-t5/t5-11b", "TEXT_GEN_Google_T5_T5_3B": "google-t5/t5-3b",
    "TEXT_GEN_Google_T5_T5_Base": "google-t5/t5-base", "TEXT_GEN_Google_T5_T5_Large": "google-t5/t5-large",
    "TEXT_GEN_Gpt2": "gpt2", "TEXT_GEN_Gpt2_Medium": "gpt2-medium", "TEXT_GEN_Gpt2_Xl": "gpt2-xl",
    "TEXT_GEN_Microsoft_Phi_2": "microsoft/phi-2",
    "TEXT_GEN_Microsoft_Phi_3_Medium_4K_Instruct": "microsoft/Phi-3-medium-4k-instruct",
    "TEXT_GEN_Microsoft_Phi_3_Mini_4K_Instruct": "microsoft/Phi-3-mini-4k-instruct",
    "TEXT_GEN_Microsoft_Phi_35_Mini_Instruct": "microsoft/Phi-3.5-mini-instruct",
    "TEXT_GEN_Microsoft_Phi_4": "microsoft/phi-4",
    "TEXT_GEN_Microsoft_Phi_4_Mini_Instruct": "microsoft/Phi-4-mini-instruct",
    "TEXT_GEN_Mistralai_Mistral_7B_Instruct_V01": "mistralai/Mistral-7B-Instruct-v0.1",
    "TEXT_GEN_Mistralai_Mistral_7B_Instruct_V02": "mistralai/Mistral-7B-Instruct-v0.2",
    "TEXT_GEN_Mistralai_Mistral_7B_V01": "mistralai/Mistral-7B-v0.1",
    "TEXT_GEN_Mistralai_Mistral_Nemo_Base_2407": "mistralai/Mistral-Nemo-Base-2407",
    "TEXT_GEN_Mistralai_Mixtral_8X7B_Instruct_V01": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "TEXT_GEN_Deepseek_Ai_Deepseek_R1_Distill_Llama_8B": "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    "TEXT_GEN_Deepseek_Ai_Deepseek_R1_Distill_Qwen_7B": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    "TEXT_GEN_Deepseek_Ai_Deepseek_V2_Lite": "deepseek-ai/DeepSeek-V2-Lite",
    "TEXT_GEN_Meta_Llama_Llama_31_8B_Instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "TEXT_GEN_Meta_Llama_Llama_32_1B": "meta-llama/Llama-3.2-1B",
    "TEXT_GEN_Meta_Llama_Llama_32_1B_Instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "TEXT_GEN_Meta_Llama_Llama_32_3B": "meta-llama/Llama-3.2-3B",
    "TEXT_GEN_Meta_Llama_Llama_32_3B_Instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "WORD_EMB_Albert_Base_V1": "albert-base-v1", "WORD_EMB_Albert_Xlarge_V1": "albert-xlarge-v1",
    "WORD_EMB_Albert_Xxlarge_V1": "albert-xxlarge-v1", "WORD_EMB_Bert_Base_Cased": "bert-base-cased",
    "WORD_EMB_Bert_Large_Cased": "bert-large-cased", "WORD_EMB_Bert_Large_Uncased": "bert-large-uncased",
    "WORD_EMB_Distilbert_Base_Cased": "distilbert-base-cased",
    "WORD_EMB_Distilbert_Base_Multilingual_Cased": "distilbert-base-multilingual-cased",
    "WORD_EMB_Distilbert_Base_Uncased": "distilbert-base-uncased",
    "WORD_EMB_Google_Electra_Base_Discriminator": "google/electra-base-discriminator",
    "WORD_EMB_Google_Electra_Large_Discriminator": "google/electra-large-discriminator",
    "WORD_EMB_Google_Electra_Small_Discriminator": "google/electra-small-discriminator",
    "WORD_EMB_Microsoft_Deberta_Base": "microsoft/deberta-base",
    "WORD_EMB_Microsoft_Deberta_V3_Base": "microsoft/deberta-v3-base",
    "WORD_EMB_Microsoft_Mdeberta_V3_Base": "microsoft/mdeberta-v3-base",
    "WORD_EMB_Plantl_Gob_Es_Roberta_Base_Bne": "PlanTL-GOB-ES/roberta-base-bne",
    "WORD_EMB_Pysentimiento_Robertuito_Base_Uncased": "pysentimiento/robertuito-base-uncased",
    "WORD_EMB_Roberta_Base": "roberta-base", "WORD_EMB_Roberta_Large": "roberta-large",
    "WORD_EMB_Xlm_Roberta_Base": "xlm-roberta-base", "WORD_EMB_Xlm_Roberta_Large": "xlm-roberta-large",
}
SHAPE = ("model_type", "model_kind", "model_n_layers", "model_hidden_size", "model_n_heads", "model_vocab_size")
NUMBERS = ("model_n_params", "model_n_layers", "model_hidden_size", "model_n_heads", "model_vocab_size",
           "model_max_positions")


def test_model_table_ships_with_the_package_and_every_row_is_well_formed():
    from importlib import resources
    assert resources.files("xlog.importers").joinpath("model_facts.csv").is_file()
    table = model_table()
    assert len(table) >= 100
    for mid, row in table.items():
        assert row["model_id"] == mid and mid.strip() == mid and " " not in mid
        assert row["model_kind"] in ("encoder", "decoder", "encoder-decoder"), mid
        assert row["model_type"] and row["source"] and "config.json" in row["source"], mid
        for f in NUMBERS:
            assert row[f] is None or (isinstance(row[f], int) and row[f] > 0), (mid, f)
        for f in ("model_n_layers", "model_hidden_size", "model_n_heads", "model_vocab_size"):
            assert row[f] is not None, (mid, f)   # the config figures every row must have
        # a parameter count is at least the token embedding
        assert row["model_n_params"] is None or row["model_n_params"] > row["model_vocab_size"] * 128, mid
        # every model type has its head classes for model_architecture
        assert modelfacts.head_architecture(row["model_type"], "sequence-classification"), mid
        assert model_facts(mid)["model_kind"] == row["model_kind"]
    # resolving is unambiguous for every id of the table (exact, and from its name part alone)
    assert all(resolve_model_id(mid) == mid for mid in table)
    assert all(resolve_model_id(mid.upper()) == mid for mid in table)


def test_every_alias_of_the_xautolm_stores_gets_its_facts():
    for alias, hub_id in STORE_ALIASES.items():
        assert resolve_model_id(alias) == hub_id, alias
        facts = model_facts(alias)
        assert all(facts.get(f) is not None for f in SHAPE), alias
        # all but RoBERTuito (max_position_embeddings not known for certain) have size and context
        if hub_id != "pysentimiento/robertuito-base-uncased":
            assert facts["model_n_params"] > 0 and facts["model_max_positions"] > 0, alias
    for alias, (hub_id, mtype, kind) in MODEL_ALIASES.items():   # pinned aliases agree with the table
        assert resolve_model_id(alias) == hub_id
        assert (model_facts(hub_id)["model_type"], model_facts(hub_id)["model_kind"]) == (mtype, kind), alias
    # spot checks against the published configs
    assert model_facts("TEXT_GEN_Microsoft_Phi_2")["model_n_params"] == 2_779_683_840
    assert model_facts("WORD_EMB_Bert_Large_Uncased") == {
        "model_type": "bert", "model_kind": "encoder", "model_n_params": 335_141_888, "model_n_layers": 24,
        "model_hidden_size": 1024, "model_n_heads": 16, "model_vocab_size": 30522, "model_max_positions": 512}
    t5 = model_facts("TEXT_GEN_Google_T5_T5_Base")   # encoder + decoder layers
    assert (t5["model_kind"], t5["model_n_layers"], t5["model_n_params"]) == ("encoder-decoder", 24, 222_903_552)
    llama = model_facts("TEXT_GEN_Meta_Llama_Llama_32_1B")
    assert (llama["model_n_params"], llama["model_n_layers"], llama["model_max_positions"]) == \
        (1_235_814_400, 16, 131072)
    assert "model_n_params" not in model_facts("WORD_EMB_Pysentimiento_Robertuito_Base_Uncased")
    assert model_row("gpt2")["architecture"] == "GPT2LMHeadModel"


def test_name_matching_rules(monkeypatch):
    # Hub ids in any case, and ids whose organisation was renamed on the Hub
    assert resolve_model_id("BERT-Base-Uncased") == "bert-base-uncased"
    assert resolve_model_id("google-bert/bert-base-uncased") == "bert-base-uncased"
    assert resolve_model_id("FacebookAI/roberta-base") == "roberta-base"
    assert resolve_model_id("openai-community/gpt2-xl") == "gpt2-xl"
    assert resolve_model_id("t5-base") == "google-t5/t5-base"
    assert resolve_model_id("Llama-3.2-1B") == "meta-llama/Llama-3.2-1B"
    # unknown names, fine-tunes and empty values stay unmapped
    for name in ("WORD_EMB_Acme_Unknown_Model", "someone/bert-base-uncased-finetuned-sst2", "bert", "", None,
                 "/home/user/models/ckpt-1"):
        assert resolve_model_id(name) is None and model_facts(name) == {}, name
    # two ids that normalise alike: ambiguous, so unmapped
    fake = {"acme/Model-1.5B": {"model_id": "acme/Model-1.5B"}, "acme/Model-15B": {"model_id": "acme/Model-15B"},
            "other/Model-1.5B": {"model_id": "other/Model-1.5B"}}
    modelfacts._indexes.cache_clear()
    monkeypatch.setattr(modelfacts, "model_table", lambda: fake)
    try:
        assert resolve_model_id("TEXT_GEN_Acme_Model_15B") is None
        assert resolve_model_id("acme/Model-15B") == "acme/Model-15B"      # exact id still wins
        assert resolve_model_id("third/Model-1.5B") is None                 # two orgs share the name
    finally:
        monkeypatch.undo()
        modelfacts._indexes.cache_clear()
    assert resolve_model_id("TEXT_GEN_Gpt2") == "gpt2"


def test_imported_records_carry_model_facts(imported):
    store, _ = imported
    recs = store.records()
    assert recs
    for r in recs:
        row = model_row(r["model_name"])
        assert row is not None, r["model_name"]
        for f in modelfacts.FACT_FIELDS:
            assert r[f] == row[f], (r["model_name"], f)
        assert r["model_objective"] == "sequence-classification" and r["model_architecture"].endswith(
            "ForSequenceClassification")


def test_unknown_alias_keeps_its_name_and_null_model_columns(tmp_path):
    _, src = _source("00_37_53")
    cls, _ = _hp(src)
    (step,) = src["algorithms"]
    params = dict(step[cls], inner_model={"value": {"WORD_EMB_Acme_Unknown_Model": {}}})
    rec = dict(src, algorithms=[{cls: params}])
    d = tmp_path / "store" / "ag_news" / "2025-01-01"
    d.mkdir(parents=True)
    (d / "00_00_00-0000.json").write_text(json.dumps(rec), encoding="utf-8")
    store = LocalStore(tmp_path / "home")
    assert import_autogoal(tmp_path / "store", store).imported == 1
    (r,) = store.records()
    assert r["model_name"] == "WORD_EMB_Acme_Unknown_Model"
    for f in modelfacts.FACT_FIELDS + ("model_architecture",):
        assert r[f] is None, f
    assert r["model_objective"] == "sequence-classification"   # from the AutoGOAL class, not the model


def test_generative_task_records_get_objective_and_facts(tmp_path):
    """XAutoLM's *GenLLMTask fine-tuners train a causal LM (decoder) or a seq2seq LM (encoder-decoder)."""
    store = LocalStore(tmp_path / "home")
    summary = import_autogoal(DROP, store)
    assert summary.read == 3 and summary.imported == 3 and summary.invalid == []
    recs = {r["model_name"]: r for r in store.records()}
    assert set(recs) == {"gpt2", "google-t5/t5-large", "meta-llama/Llama-3.2-1B"}
    gpt2, t5, llama = recs["gpt2"], recs["google-t5/t5-large"], recs["meta-llama/Llama-3.2-1B"]
    assert (gpt2["model_kind"], gpt2["model_objective"], gpt2["model_architecture"]) == \
        ("decoder", "causal-lm", "GPT2LMHeadModel")
    assert (gpt2["model_n_params"], gpt2["model_max_positions"]) == (124_439_808, 1024)
    assert gpt2["status"] == "completed" and gpt2["ft_method"] == "partial" and gpt2["task_type"] == "question-answering"
    assert (t5["model_kind"], t5["model_objective"], t5["model_architecture"]) == \
        ("encoder-decoder", "seq2seq-lm", "T5ForConditionalGeneration")
    assert (t5["model_n_layers"], t5["model_n_params"]) == (48, 737_668_096)
    assert llama["status"] == "failed" and llama["error_type"] == "NoScore" and llama["peft_type"] == "LORA"
    assert (llama["model_type"], llama["model_objective"], llama["model_n_params"]) == \
        ("llama", "causal-lm", 1_235_814_400)
    assert llama["outcome_total_runtime_s"] is None   # no error message, no runtime: nothing is made up
    for r in recs.values():
        assert S.validate_record(r) == [] and find_leaks(r) == []


@pytest.mark.parametrize("message, seconds", [
    ("Exceeded allowed time for execution. The process was terminated after 5400.0 seconds.", 5400.0),
    ("TimeoutError: job killed after 120 s", 120.0),
    ("Evaluation timed out after 30 seconds", 30.0),
    ("Exceeded allowed time for execution.", None),          # no figure
    ("CUDA out of memory. Tried to allocate 160.00 MiB", None),
    ("step 3 took 12 seconds, then failed", None),            # a duration, but not the run's
])
def test_runtime_from_error_message(tmp_path, message, seconds):
    _, src = _source("00_37_53")
    rec = dict(src, error=message, f1=-math.inf, accuracy=-math.inf, evaluation_time=None)
    d = tmp_path / "store" / "ag_news" / "2025-01-01"
    d.mkdir(parents=True)
    (d / "00_00_00-0000.json").write_text(json.dumps(rec), encoding="utf-8")
    store = LocalStore(tmp_path / "home")
    import_autogoal(tmp_path / "store", store)
    (r,) = store.records()
    assert r["outcome_total_runtime_s"] == seconds
    # a finite evaluation_time in the record wins over the message
    rec2 = dict(rec, evaluation_time=4321.5, timestamp="2025-01-01 00:10:00")
    (d / "00_10_00-0001.json").write_text(json.dumps(rec2), encoding="utf-8")
    import_autogoal(tmp_path / "store", store)
    assert {x["outcome_total_runtime_s"] for x in store.records()} == {seconds, 4321.5}


def test_drop_records_are_question_answering(tmp_path):
    """XAutoLM's DROP records: QA typed, scores kept as fractions, phase times as runtimes, and a
    failure (only an infinite F1 in a list of {name, maximize, value}) as a failed record."""
    store = LocalStore(tmp_path / "home")
    summary = import_autogoal(DROP, store)
    assert summary.warnings == []  # DROP logs fractions: nothing rescaled
    recs = {r["model_name"]: r for r in store.records()}
    for r in recs.values():
        assert r["task_type"] == "question-answering" and r["task_name"] == "drop"
    _, src = _source("02_09_45")
    metrics = {m["name"]: m["value"] for m in src["metrics"]}
    gpt2 = recs["gpt2"]
    assert gpt2["outcome_primary_metric"] == "f1" and gpt2["outcome_greater_is_better"] is True
    assert gpt2["outcome_primary_value"] == metrics["f1"]
    assert gpt2["outcome_metrics"] == {"f1": metrics["f1"], "exact_match": metrics["exact_match"]}
    assert gpt2["outcome_train_runtime_s"] == metrics["time_train_mean_seconds"]
    assert gpt2["outcome_eval_runtime_s"] == metrics["time_valid_mean_seconds"]
    meta = src["task_features"]["meta"]
    assert (gpt2["task_n_train"], gpt2["task_chars_mean"], gpt2["task_answer_chars_mean"]) == \
        (int(meta[0]), meta[1], meta[4])
    llama = recs["meta-llama/Llama-3.2-1B"]
    assert llama["status"] == "failed" and "f1=-inf" in llama["error_message"]
    assert llama["outcome_primary_value"] is None and llama["outcome_metrics"] is None


def test_squad_percent_scores_are_normalised_per_task(tmp_path):
    """The same system's SQuAD records log F1 and exact match on a 0-100 scale: every value of such a
    task is divided by 100, also a poor run's F1 of 0.8 (0.8 %), while DROP's fractions stay."""
    _, src = _source("02_09_45")

    def squad(ts: str, f1: float, em: float) -> dict:
        ms = [dict(m) for m in src["metrics"]]
        for m in ms:
            m["value"] = {"f1": f1, "exact_match": em}.get(m["name"], m["value"])
        return dict(src, alias="squad", timestamp=ts, metrics=ms)
    d = tmp_path / "store" / "squad" / "2025-06-01"
    d.mkdir(parents=True)
    for i, (f1, em) in enumerate([(86.5, 78.25), (0.8, 0.0), (42.0, 30.5)]):
        (d / f"10_00_0{i}-{i:04d}.json").write_text(json.dumps(squad(f"2025-06-01 10:00:0{i}", f1, em)))
    shutil.copytree(DROP, tmp_path / "store" / "drop")
    store = LocalStore(tmp_path / "home")
    summary = import_autogoal(tmp_path / "store", store)
    assert summary.imported == 6 and summary.invalid == []
    assert [w.where for w in summary.warnings] == ["squad"] and "0-100" in summary.warnings[0].reason
    by_task: dict[str, list] = {}
    for r in store.records():
        by_task.setdefault(r["task_name"], []).append(r)
    squad_f1 = sorted((r["outcome_metrics"]["f1"], r["outcome_metrics"]["exact_match"]) for r in by_task["squad"])
    assert squad_f1 == [pytest.approx((0.008, 0.0)), pytest.approx((0.42, 0.305)), pytest.approx((0.865, 0.7825))]
    assert all(r["outcome_primary_value"] == r["outcome_metrics"]["f1"] for r in by_task["squad"])
    _, drop_src = _source("02_09_45")
    drop_gpt2 = next(r for r in by_task["drop"] if r["model_name"] == "gpt2")
    assert drop_gpt2["outcome_primary_value"] == next(m["value"] for m in drop_src["metrics"] if m["name"] == "f1")
    for r in store.records():
        assert S.validate_record(r) == []
