"""Estimators: fit/predict on constructed stores with a known structure, task-relative quality
(tasks whose F1 scales differ tenfold), quality_sd and fail_runtime_s, persistence, grouped
cross-validation that never leaks a held-out group and reports per group against baselines, a
failure-heavy store, and real records of tiny Trainer runs."""
from __future__ import annotations

import json
import math
import random
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import stores
from xsearch.cli import main as xsearch_main
from scipy.stats import spearmanr

from xsearch.estimators import (PREDICTION_COLUMNS, Estimators, format_report, grouped_cv_report, grouped_folds,
                                load_experiences, records_frame, relative_quality, task_keys)
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
    # Relative quality: a percentile within the task, so predictions stay near (0, 1).
    assert fitted.quality_target == "rank" and pred["quality"].between(-0.25, 1.25).all()


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
    # The absolute metric: a task-relative one has no per-task level left to leak.
    kw = {"targets": ["quality"], "quality_target": "absolute", "baselines": False}
    honest = grouped_cv_report(exp, group_by="task_name", n_splits=5, **kw)["targets"]["quality"]

    def leaky(df):  # rows shuffled into folds regardless of their task
        idx = np.random.default_rng(0).permutation(len(df))
        return [(np.setdiff1d(idx, part), part) for part in np.array_split(idx, 5)]

    leaked = grouped_cv_report(exp, group_by="task_name", splitter=leaky, **kw)["targets"]["quality"]
    assert leaked["model"]["mae"] < 0.3 * leaked["mean"]["mae"]   # leakage: the task is recognised
    assert honest["model"]["mae"] > 0.7 * honest["mean"]["mae"]   # held out: nothing to recognise


def test_loss_only_store_negates_quality():
    recs = stores.lm_task_records(20, random.Random(2), datetime(2025, 1, 1, tzinfo=timezone.utc))
    exp = records_frame(recs)
    est = Estimators().fit(exp)
    assert est.quality_metric == "loss" and est.quality_sign == -1.0
    # The lowest loss has the highest relative quality.
    y = est.targets(exp)["quality"]
    loss = pd.to_numeric(exp["outcome_primary_value"], errors="coerce")
    assert spearmanr(y[y.notna()], loss[y.notna()]).statistic == pytest.approx(-1.0)
    assert (Estimators(quality_target="absolute").fit(exp).predict(exp)["quality"] < 0).all()  # -loss
    # One task cannot hold a task out: quality_sd is the target's own spread.
    assert est.quality_sd_source_ == "target-spread" and est.quality_sd_ == pytest.approx(float(np.std(y.dropna())))


def test_quality_is_learned_per_metric_family_and_never_mixes_them(experiences, tmp_path, monkeypatch):
    from xsearch.errors import XSearchError
    from xsearch.estimators import MixedMetricFamilies, quality_direction, quality_family
    # Asking for an F1 and a loss at once is refused, with what to do instead.
    for mixed in (["f1", "loss"], "eval_f1,eval_loss", ("accuracy", "f1")):
        with pytest.raises(MixedMetricFamilies, match="per metric family") as err:
            Estimators(quality_metric=mixed)
        assert isinstance(err.value, XSearchError)
    with pytest.raises(MixedMetricFamilies):
        grouped_cv_report(experiences, quality_metric="f1+loss")
    assert quality_family(["eval_f1", "f1"]) == "f1"  # one family, two spellings
    monkeypatch.setenv("XLOG_HOME", str(tmp_path / "home"))
    res = CliRunner().invoke(xsearch_main, ["estimators", "--quality-metric", "f1,loss"])
    assert res.exit_code == 2 and "per metric family" in res.output and "Traceback" not in res.output
    # The loss family of the mixed store: only the causal-LM runs teach it, lowest loss best.
    est = Estimators(quality_metric="eval_loss").fit(experiences)
    assert est.quality_metric == "loss" and est.quality_sign == -1.0 and est.skipped_families_ == {}  # all log a loss
    y = est.targets(experiences)["quality"]
    lm = (experiences["task_name"] == "lm_corpus") & (experiences["status"] == "completed")
    # Every completed run that logged an eval_loss teaches it (ranked within its own task).
    has_loss = (experiences["status"] == "completed") & experiences["outcome_metrics"].map(
        lambda m: any((x["name"] if isinstance(x, dict) else x[0]) == "eval_loss" for x in (m if m is not None else [])))
    assert y.notna().equals(has_loss)
    loss = pd.to_numeric(experiences["outcome_primary_value"], errors="coerce")
    assert spearmanr(y[lm & y.notna()], loss[lm & y.notna()]).statistic == pytest.approx(-1.0)
    # The F1 estimators skip the loss-scored runs and say so.
    f1 = Estimators().fit(experiences)
    assert f1.quality_metric == "f1" and f1.skipped_families_ == {"loss": int(lm.sum())}
    assert f1.describe()["quality_skipped_families"] == {"loss": int(lm.sum())}
    # A perplexity (or loss) is lower-is-better by its name, whatever old records said.
    ppl = records_frame([{"status": "completed", "outcome_primary_metric": "eval_perplexity",
                          "outcome_primary_value": v, "outcome_greater_is_better": True} for v in (3.0, 9.0)])
    assert quality_direction(ppl, "perplexity") == -1.0


def test_relative_quality_within_groups():
    v = pd.Series([0.9, 0.8, 0.7, 0.1, 0.2, np.nan, 0.5, 0.5])
    g = pd.Series(["a", "a", "a", "b", "b", "b", "c", "d"])
    r = relative_quality(v, g, "rank")
    assert r[:3].tolist() == pytest.approx([5 / 6, 3 / 6, 1 / 6])   # (rank - 0.5) / n
    assert r[3:5].tolist() == pytest.approx([0.25, 0.75])
    assert r[5:].isna().all()  # no value; tasks c and d have one completed run: nothing to rank against
    z = relative_quality(v, g, "zscore")
    assert z[:3].mean() == pytest.approx(0.0) and z[:3].std(ddof=0) == pytest.approx(1.0)
    assert relative_quality(pd.Series([0.4, 0.4]), pd.Series(["a", "a"]), "zscore").tolist() == [0.0, 0.0]
    assert relative_quality(v, g, "absolute")[:5].tolist() == v[:5].tolist()
    with pytest.raises(ValueError, match="unknown quality target"):
        relative_quality(v, g, "percent")
    # Records without a task name are grouped by their task meta-features, not lumped together.
    df = records_frame([{"task_name": None, "task_n_train": 100}, {"task_name": None, "task_n_train": 200},
                        {"task_name": "t", "task_n_train": 100}])
    keys = task_keys(df)
    assert keys[2] == "t" and keys[0] != keys[1]


def _tenfold_records(seed: int = 0) -> list[dict]:
    """Tasks whose F1 scales differ tenfold: four of eight tasks (two small, two large) score a
    tenth of what the simulator gives them, which no meta-feature reveals."""
    recs = stores.generate_records(n_tasks=8, runs_per_task=25, seed=seed)
    names = sorted({r["task_name"] for r in recs})
    low = set(names[::2][:2] + names[1::2][:2])
    for r in recs:
        if r["task_name"] in low and r["status"] == "completed":
            q = r["outcome_primary_value"] * 0.1
            r.update(outcome_primary_value=q, outcome_metrics={"eval_f1": q})
    return recs


def test_relative_quality_ranks_within_each_task_when_scales_differ_tenfold():
    exp = records_frame(_tenfold_records())
    tasks = task_keys(exp)
    rel = Estimators().targets(exp)["quality"]
    absolute = Estimators(quality_target="absolute").targets(exp)["quality"]
    ok = rel.notna()
    assert ok.sum() > 100 and absolute.notna().sum() == ok.sum()
    # Each run's standing within its own task (what a search needs to rank one task's candidates).
    standing = absolute[ok].groupby(tasks[ok]).rank(pct=True)
    assert spearmanr(rel[ok], standing).statistic > 0.99
    assert spearmanr(absolute[ok], standing).statistic < 0.6   # ranks tasks, not runs within them
    best = absolute[ok].groupby(tasks[ok]).max()
    assert (best < absolute[ok].median()).sum() == 4   # each 10x-smaller task's best run looks bad pooled
    assert (rel[ok].groupby(tasks[ok]).max() > 0.9).all()   # relative: every task's best run is on top
    # Held out, the relative estimator predicts each unseen task's own ranking (not its scale).
    rep = grouped_cv_report(exp, group_by="task_name", n_splits=4, targets=["quality", "quality_sd"],
                            baselines=False)
    q = rep["targets"]["quality"]
    assert rep["quality_target"] == "rank" and q["over_groups"]["model"]["spearman_within_task"] > 0.4
    assert q["model"]["mae"] < q["mean"]["mae"]


def test_quality_sd_and_fail_runtime_are_predicted(experiences, fitted):
    assert fitted.quality_sd_source_ == "grouped-cv" and 0.05 < fitted.quality_sd_ < 0.29  # 0.29: knows nothing
    assert fitted.fail_runtime_source_ == "regressor"
    task = stores.new_task_features(small=False, seed=5)
    large = stores.MODELS[4]
    rows = candidate_rows([_cfg(large, "full", 3e-5, batch=128, seq=512), _cfg(large, "lora", 5e-4, batch=8, seq=64)],
                          task, T4)
    pred = fitted.predict(rows)
    assert (pred["quality_sd"] == fitted.quality_sd_).all()
    # Out of memory: it fails within seconds of starting, long before a run would have finished.
    assert pred.loc[0, "p_oom"] > 0.5 and pred.loc[0, "fail_runtime_s"] < 0.2 * pred.loc[0, "runtime_s"]
    assert np.isfinite(pred["fail_runtime_s"]).all() and (pred["fail_runtime_s"] > 0).all()
    # Few failures with a runtime: the median ratio to the predicted runtime of a completed run.
    recs = [r for r in stores.generate_records(n_tasks=3, runs_per_task=15, seed=6)]
    failed = [r for r in recs if r["status"] in ("failed", "timeout")][:3]
    done = [r for r in recs if r["status"] == "completed"]
    est = Estimators().fit(records_frame(done + failed))
    assert est.fail_runtime_source_ == "ratio" and est.fail_runtime_ratio_ > 0
    p = est.predict(records_frame(done[:3]))
    assert p["fail_runtime_s"].to_numpy() == pytest.approx(est.fail_runtime_ratio_ * p["runtime_s"].to_numpy())
    # No failure logged a runtime: unknown, not zero.
    est = Estimators().fit(records_frame(done))
    assert est.predict(records_frame(done[:3]))["fail_runtime_s"].isna().all()
    assert "fail_runtime_s" not in est.fitted_targets and "quality_sd" in est.fitted_targets


def test_report_per_group_with_baselines(experiences):
    rep = grouped_cv_report(experiences, group_by="task_name", n_splits=0)
    tasks = sorted(set(experiences["task_name"]))
    assert rep["n_splits"] == len(tasks)  # 0: leave one task out
    for t in ("quality", "runtime_s", "fail_runtime_s", "p_fail", "p_oom"):
        entry = rep["targets"][t]
        for p in ("model", "per_model", "linear", "mean"):
            assert p in entry and p in entry["over_groups"]
        groups = entry["groups"]
        assert [g["group"] for g in groups] == sorted(g["group"] for g in groups)
        assert sum(g["n"] for g in groups) == entry["n"]
        key = "roc_auc" if t.startswith("p_") else "spearman_within_task"
        vals = [g["model"][key] for g in groups if g["model"][key] is not None]
        assert entry["over_groups"]["model"][key] == pytest.approx(np.mean(vals))
        assert entry["over_groups"]["model"][f"{key}_min"] == pytest.approx(min(vals))
    pf = rep["targets"]["p_fail"]
    assert {g["group"] for g in pf["groups"]} == set(tasks)
    # The estimators beat the per-model failure rate and the mean on every held-out task's mean.
    assert pf["over_groups"]["model"]["roc_auc"] > pf["over_groups"]["per_model"]["roc_auc"] + 0.1
    assert pf["mean"]["roc_auc"] == 0.5  # a constant ranks nothing, whatever pooling folds would say
    q = rep["targets"]["quality"]
    assert q["over_groups"]["model"]["spearman_within_task"] > q["over_groups"]["per_model"]["spearman_within_task"]
    assert 0.4 < q["model"]["within_1sd"] < 0.95   # quality_sd is an honest spread
    text = format_report(rep)
    assert "pooled" in text and "groups" in text and "per_model" in text and "linear" in text
    assert all(t in text for t in tasks if len(t) <= 34)
    assert "held-out task_name" in text and "held-out task_name" not in format_report(rep, per_group=False)
    # Holding out models: a held-out model is always new to the per-model baseline.
    rep = grouped_cv_report(experiences, group_by="model_name", n_splits=0, targets=["p_fail"])
    assert rep["targets"]["p_fail"]["per_model"]["roc_auc"] == 0.5
    assert len(rep["targets"]["p_fail"]["groups"]) == len(set(experiences["model_name"]))


def test_failure_heavy_store_beats_the_per_model_rate():
    """70% failures (as in real shared experience): held-out tasks' failures are still ranked, and
    the calibrated probabilities are probabilities (not the trees' overconfident 0s and 1s)."""
    rng = random.Random(0)
    recs = stores.generate_records(n_tasks=6, runs_per_task=50, seed=0, models=stores.MODELS[2:],
                                   hardware=stores.HARDWARE[1:])
    fails = [r for r in recs if r["status"] != "completed"]
    done = rng.sample([r for r in recs if r["status"] == "completed"], k=len(fails) * 3 // 7)
    exp = records_frame(fails + done)
    rep = grouped_cv_report(exp, group_by="task_name", n_splits=3, targets=["p_fail"])
    pf = rep["targets"]["p_fail"]
    assert pf["positives"] / pf["n"] == pytest.approx(0.7, abs=0.02)
    assert pf["over_groups"]["model"]["roc_auc_min"] > 0.75
    assert pf["over_groups"]["model"]["roc_auc"] > pf["over_groups"]["per_model"]["roc_auc"] + 0.15
    assert pf["model"]["brier"] < pf["mean"]["brier"]
    est = Estimators(targets=["p_fail"]).fit(exp)
    assert est.calibration_["p_fail"]["held_out"] == "task_name"
    p = est.predict(exp)["p_fail"]
    assert p.between(0.0, 1.0).all() and abs(p.mean() - 0.7) < 0.1


XAUTOLM = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "xautolm_dev" / "experience_store"


@pytest.mark.skipif(not XAUTOLM.is_dir(), reason="the XAutoLM AG News store is not in this checkout")
def test_real_failure_heavy_store_beats_the_per_model_rate(tmp_path):
    """The external XAutoLM store (one task, two search folders, 89% failures): holding out a whole
    folder, the failure estimator ranks the other folder's runs better than each model's failure rate."""
    from xlog.importers.autogoal import import_autogoal
    from xlog.store import LocalStore
    import_autogoal(XAUTOLM, LocalStore(tmp_path))
    exp = load_experiences(tmp_path)
    assert exp["task_name"].nunique() == 2 and (exp["status"] != "completed").mean() > 0.8
    pf = grouped_cv_report(exp, group_by="task_name", n_splits=0, targets=["p_fail"])["targets"]["p_fail"]
    assert pf["model"]["roc_auc"] > pf["per_model"]["roc_auc"] + 0.05
    assert pf["over_groups"]["model"]["roc_auc"] > pf["over_groups"]["per_model"]["roc_auc"] + 0.05


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
    assert {"model", "per_model", "linear", "mean", "groups", "over_groups"} <= set(reports[0]["targets"]["p_fail"])
    res = runner.invoke(xsearch_main, ["estimators", "--home", str(home), "--report", "--group-by", "task_name",
                                       "--splits", "0", "--quality-target", "zscore"])
    assert res.exit_code == 0, res.output
    assert "3 groups, 3 folds" in res.output and "relative within each task (zscore)" in res.output
    assert "held-out task_name" in res.output and "per_model" in res.output
    res = runner.invoke(xsearch_main, ["estimators", "--home", str(home), "--report", "--summary", "--splits", "1"])
    assert res.exit_code != 0 and "at least 2" in res.output
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
