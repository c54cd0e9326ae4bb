"""Estimators: fit/predict on constructed stores with a known structure, persistence, grouped
cross-validation that never leaks a held-out group, and real records of tiny Trainer runs."""
from __future__ import annotations

import json
import math
import random
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import stores
from xsearch.cli import main as xsearch_main
from xsearch.estimators import (PREDICTION_COLUMNS, Estimators, format_report, grouped_cv_report, grouped_folds,
                                load_experiences, records_frame)
from xsearch.features import FEATURES, candidate_rows, feature_matrix

T4 = {k: v for k, v in stores.HARDWARE[1].items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A constructed store: 6 classification tasks x 30 runs and a causal-LM task (eval_loss)."""
    root = tmp_path_factory.mktemp("xlog_home")
    stores.build_store(root, n_tasks=6, runs_per_task=30, seed=3, lm_runs=12)
    return root


@pytest.fixture(scope="module")
def experiences(home):
    return load_experiences(home)


@pytest.fixture(scope="module")
def fitted(experiences):
    return Estimators().fit(experiences)


def _cfg(model: stores.Model, method: str, lr: float, batch: int = 16, seq: int = 128, epochs: float = 3.0) -> dict:
    cfg = {"model_name": model.name, "ft_method": method, "peft_lora_r": None, "peft_lora_alpha": None,
           "peft_lora_dropout": None, "ft_trainable_layers": None, "train_learning_rate": lr, "train_epochs": epochs,
           "train_batch_size": batch, "train_warmup_ratio": 0.06, "train_weight_decay": 0.01,
           "train_lr_scheduler": "linear", "train_max_seq_length": seq}
    if method == "lora":
        cfg.update(peft_lora_r=8, peft_lora_alpha=16.0, peft_lora_dropout=0.05)
    if method == "partial":
        cfg["ft_trainable_layers"] = 2
    return cfg


def test_store_is_read_through_duckdb_with_every_record(home, experiences):
    assert len(experiences) == 6 * 30 + 12
    assert set(experiences["status"]) >= {"completed", "oom", "failed"}
    assert list(feature_matrix(experiences).columns) == FEATURES


def test_fit_learns_each_target_and_orients_quality(experiences, fitted):
    assert fitted.is_fitted
    assert fitted.fitted_targets == PREDICTION_COLUMNS
    assert fitted.quality_metric == "f1" and fitted.quality_sign == 1.0
    # The causal-LM runs report eval_loss only: they teach cost and failure, not F1 quality.
    lm = experiences["task_name"] == "lm_corpus"
    completed_cls = ((experiences["status"] == "completed") & ~lm).sum()
    assert fitted.n_rows["quality"] == completed_cls
    assert fitted.n_rows["p_fail"] == len(experiences)
    pred = fitted.predict(experiences)
    assert list(pred.columns) == PREDICTION_COLUMNS and pred.index.equals(experiences.index)
    assert np.isfinite(pred.to_numpy()).all()
    assert ((pred["p_fail"] >= 0) & (pred["p_fail"] <= 1)).all()
    assert (pred["runtime_s"] > 0).all() and (pred["energy_kwh"] > 0).all()


def test_predictions_follow_the_known_structure_on_a_new_task(experiences, fitted):
    """A task no record comes from: the estimators transfer the simulator's structure to it."""
    task = stores.new_task_features(small=True, seed=11)
    base, large = stores.MODELS[3], stores.MODELS[4]
    configs = [
        _cfg(base, "lora", 5e-4), _cfg(base, "full", 5e-4),          # small task: LoRA beats full
        _cfg(large, "lora", 5e-4, batch=8, seq=64),                  # fits in 16 GB
        _cfg(large, "full", 3e-5, batch=128, seq=512),               # runs out of memory
        _cfg(base, "lora", 5e-4, epochs=1.0), _cfg(base, "lora", 5e-4, epochs=5.0),
    ]
    rows = candidate_rows(configs, task, T4)
    pred = fitted.predict(rows)
    assert pred.loc[0, "quality"] > pred.loc[1, "quality"] + 0.03
    assert pred.loc[3, "p_oom"] > 0.5 > pred.loc[2, "p_oom"]
    assert pred.loc[3, "p_fail"] > pred.loc[2, "p_fail"]
    assert pred.loc[5, "runtime_s"] > 1.5 * pred.loc[4, "runtime_s"]  # truth: x3.6
    assert pred.loc[5, "energy_kwh"] > pred.loc[4, "energy_kwh"]


def test_model_meta_comes_from_past_records_or_stays_unknown(experiences, fitted):
    task = stores.new_task_features(small=True)
    seen = _cfg(stores.MODELS[3], "lora", 5e-4)
    unseen = dict(seen, model_name="someone/never-seen-model")
    rows = candidate_rows([seen, unseen], task, T4, experiences=experiences)
    assert rows.loc[0, "model_n_params"] == stores.MODELS[3].n_params
    assert pd.isna(rows.loc[1, "model_n_params"])
    # Without experiences the estimators fill the meta-data of models they were trained on.
    bare = candidate_rows([seen, unseen], task, T4)
    assert pd.isna(bare.loc[0, "model_n_params"])
    pred_bare, pred_rows = fitted.predict(bare), fitted.predict(rows)
    assert pred_bare.loc[0, "runtime_s"] == pytest.approx(pred_rows.loc[0, "runtime_s"])
    assert np.isfinite(pred_bare.loc[1, ["quality", "runtime_s", "p_fail"]].astype(float)).all()
    # Explicit model_meta (e.g. read from the model's config) wins for a model never seen.
    meta = {"someone/never-seen-model": {"model_n_params": 5_000_000, "model_n_layers": 4, "model_hidden_size": 256}}
    with_meta = candidate_rows([unseen], task, T4, model_meta=meta)
    assert with_meta.loc[0, "model_n_params"] == 5_000_000


def test_empty_or_tiny_experience_is_not_fitted_and_predicts_nan():
    rows = candidate_rows([_cfg(stores.MODELS[0], "lora", 5e-4)], stores.new_task_features(), T4)
    for exp in (records_frame([]), records_frame(stores.generate_records(n_tasks=1, runs_per_task=3))):
        est = Estimators().fit(exp)
        assert not est.is_fitted and est.fitted_targets == []
        pred = est.predict(rows)
        assert list(pred.columns) == PREDICTION_COLUMNS and len(pred) == 1
        assert pred.isna().all().all()


def test_one_class_failure_gives_a_small_smoothed_rate():
    recs = [r for r in stores.generate_records(n_tasks=2, runs_per_task=20, seed=5) if r["status"] == "completed"]
    est = Estimators().fit(records_frame(recs))
    p = est.predict(records_frame(recs))["p_fail"]
    assert (p > 0).all() and (p < 0.05).all()


def test_save_and_load_round_trip(tmp_path, experiences, fitted):
    path = fitted.save(tmp_path / "est" / "estimators.joblib")
    side = json.loads(Estimators.sidecar_path(path).read_text())
    assert side["fitted_targets"] == PREDICTION_COLUMNS and side["quality_metric"] == "f1"
    assert "train_learning_rate" in side["features"] and side["sklearn_version"]
    again = Estimators.load(path)
    pd.testing.assert_frame_equal(again.predict(experiences.head(20)), fitted.predict(experiences.head(20)))
    with pytest.raises(FileNotFoundError):
        Estimators.load(tmp_path / "missing.joblib")
    import joblib
    joblib.dump({"not": "estimators"}, tmp_path / "other.joblib")
    with pytest.raises(ValueError, match="does not hold xsearch estimators"):
        Estimators.load(tmp_path / "other.joblib")


def test_grouped_cv_holds_out_whole_groups(experiences):
    for group_by in ("task_name", "model_name"):
        rep = grouped_cv_report(experiences, group_by=group_by, n_splits=3)
        tested = []
        for fold in rep["folds"]:
            # train_groups are read back from what the fitted estimators saw.
            assert not set(fold["train_groups"]) & set(fold["test_groups"])
            tested += fold["test_groups"]
        assert sorted(tested) == sorted(set(experiences[group_by].astype(str)))
        for tr, te in grouped_folds(experiences, group_by, 3):
            assert not set(experiences[group_by].iloc[tr]) & set(experiences[group_by].iloc[te])
        q = rep["targets"]["quality"]
        assert q["model"]["mae"] < q["mean"]["mae"]
        assert rep["targets"]["runtime_s"]["model"]["spearman"] > 0.8
        assert rep["targets"]["p_oom"]["model"]["roc_auc"] > 0.8
        text = format_report(rep)
        assert f"whole {group_by} groups" in text and "roc_auc" in text


def _fingerprint_records(seed: int = 0) -> list[dict]:
    """Each task's F1 is a random number that no feature explains: only a model that has seen the
    task (through leakage) can predict it, by recognising the task's meta-features."""
    rng = random.Random(seed)
    recs = [r for r in stores.generate_records(n_tasks=10, runs_per_task=12, seed=seed) if r["status"] == "completed"]
    level = {}
    for r in recs:
        q = level.setdefault(r["task_name"], rng.uniform(0.3, 0.95)) + rng.gauss(0, 0.005)
        r.update(outcome_primary_value=q, outcome_metrics={"eval_f1": q})
    return recs


def test_grouped_cv_would_detect_leakage(tmp_path):
    stores.build_store(tmp_path, records=_fingerprint_records())
    exp = load_experiences(tmp_path)
    honest = grouped_cv_report(exp, group_by="task_name", n_splits=5, targets=["quality"])["targets"]["quality"]

    def leaky(df):  # rows shuffled into folds regardless of their task
        idx = np.random.default_rng(0).permutation(len(df))
        return [(np.setdiff1d(idx, part), part) for part in np.array_split(idx, 5)]

    leaked = grouped_cv_report(exp, group_by="task_name", splitter=leaky, targets=["quality"])["targets"]["quality"]
    assert leaked["model"]["mae"] < 0.3 * leaked["mean"]["mae"]   # leakage: the task is recognised
    assert honest["model"]["mae"] > 0.7 * honest["mean"]["mae"]   # held out: nothing to recognise


def test_loss_only_store_negates_quality():
    recs = stores.lm_task_records(20, random.Random(2), datetime(2025, 1, 1, tzinfo=timezone.utc))
    est = Estimators().fit(records_frame(recs))
    assert est.quality_metric == "loss" and est.quality_sign == -1.0
    q = est.predict(records_frame(recs))["quality"]
    assert (q < 0).all()  # -loss: higher is better


def test_cli_report_fit_and_errors(tmp_path):
    home = tmp_path / "home"
    stores.build_store(home, n_tasks=3, runs_per_task=12, seed=4)
    runner = CliRunner()
    res = runner.invoke(xsearch_main, ["estimators", "--home", str(home)])
    assert res.exit_code == 0 and "usable rows" in res.output
    out = tmp_path / "rep.json"
    res = runner.invoke(xsearch_main, ["estimators", "--home", str(home), "--report", "--group-by", "model_name",
                                       "--splits", "3", "--json", "--report-out", str(out)])
    assert res.exit_code == 0, res.output
    reports = json.loads(res.output)
    assert reports == json.loads(out.read_text()) and reports[0]["group_by"] == "model_name"
    res = runner.invoke(xsearch_main, ["estimators", "--home", str(home), "--fit", "--out", str(tmp_path / "e.joblib")])
    assert res.exit_code == 0, res.output
    assert Estimators.load(tmp_path / "e.joblib").is_fitted
    empty = tmp_path / "empty"
    res = runner.invoke(xsearch_main, ["estimators", "--home", str(empty), "--report"])
    assert res.exit_code != 0 and "at least 2 distinct task_name" in res.output
    res = runner.invoke(xsearch_main, ["estimators", "--home", str(empty), "--fit"])
    assert res.exit_code != 0 and "too little experience" in res.output


# ---- real records of tiny Trainer runs ----------------------------------------------------------
@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    """Real runs captured by XLogCallback: full, partial freezing and LoRA, several learning rates."""
    import tiny
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer

    from xlog import XLogCallback
    mp = pytest.MonkeyPatch()
    mp.setenv("XLOG_ENERGY", "0")
    root = tmp_path_factory.mktemp("real_home")
    train, ev = tiny.classification_datasets(80)
    try:
        for i, (method, lr, bs) in enumerate([("full", 1e-3, 16), ("partial", 1e-3, 16), ("lora", 5e-3, 16),
                                              ("full", 1e-4, 32)]):
            model = tiny.bert_classifier()
            if method == "partial":
                for p in model.bert.embeddings.parameters():
                    p.requires_grad = False
            if method == "lora":
                model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                         target_modules=["query", "value"]))
            args = tiny.training_args(root / f"run{i}", learning_rate=lr, per_device_train_batch_size=bs,
                                      eval_strategy="epoch")
            Trainer(model=model, args=args, train_dataset=train, eval_dataset=ev, compute_metrics=tiny.compute_metrics,
                    callbacks=[XLogCallback(task_name="sms_tiny", model_name="tiny-bert", store=root)]).train()
    finally:
        mp.undo()
    return root


def test_estimators_accept_real_records(real_home, experiences):
    real = load_experiences(real_home)
    assert len(real) == 4 and set(real["ft_method"]) == {"full", "partial", "lora"}
    assert set(real["model_name"]) == {"tiny-bert"}
    assert (real["status"] == "completed").all()
    # Real records alone (few rows: a lower threshold) and mixed with the constructed store.
    est = Estimators(min_rows=4).fit(real)
    assert est.quality_metric == "f1"
    assert {"quality", "runtime_s", "p_fail"} <= set(est.fitted_targets)
    assert "energy_kwh" not in est.fitted_targets  # XLOG_ENERGY=0: no energy was measured, none is learned
    pred = est.predict(real)
    assert np.isfinite(pred[["quality", "runtime_s", "p_fail"]].to_numpy()).all()

    mixed = Estimators().fit(pd.concat([experiences, real], ignore_index=True))
    assert mixed.fitted_targets == PREDICTION_COLUMNS
    # Candidate rows from the real task's own meta-features and this machine's hardware.
    import tiny
    from xlog.hardware import probe_hardware
    from xlog.taskfeatures import compute_task_features
    train, ev = tiny.classification_datasets(80)
    task = compute_task_features(train, ev, tiny.tokenizer())
    model_name = real["model_name"].iloc[0]
    cfgs = [dict(_cfg(stores.MODELS[0], m, lr), model_name=model_name) for m, lr in (("full", 1e-3), ("lora", 5e-3))]
    rows = candidate_rows(cfgs, task, probe_hardware(), experiences=real)
    assert rows.loc[0, "model_n_params"] == real["model_n_params"].iloc[0]
    pred = mixed.predict(rows)
    assert np.isfinite(pred.to_numpy()).all()
    assert all(0 <= p <= 1 for p in pred["p_fail"]) and not math.isnan(pred.loc[0, "quality"])
