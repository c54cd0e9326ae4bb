"""PEFT structures: where adapters go, on which kinds of module, how large. Real tiny-model Trainer
runs through XLogCallback (BERT, Llama and GPT-2 built from configs), the same structure built by
the search and by hand gives the same columns, a tiny search writes a quality-vs-parameters
front, estimators and warm start use the structure, and what a model cannot take fails before
any training."""
from __future__ import annotations

import json
import math
import random
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

import tiny
from xlog import LocalStore, XLogCallback
from xlog import schema as S
from xlog.peftfeatures import layer_pattern, layers_text, parse_layers, peft_structure_features

REPO = Path(__file__).resolve().parent.parent
SMS = REPO / "examples" / "data" / "sms_spam_600.parquet"
STRUCTURE_COLUMNS = ["peft_type", "peft_layers", "peft_n_layers", "peft_layers_fraction", "peft_layer_pattern",
                     "peft_module_kinds", "peft_n_adapted_modules", "peft_rank_attn", "peft_rank_ffn",
                     "peft_rank_by_kind", "peft_params_by_kind", "peft_use_dora", "peft_use_rslora",
                     "peft_num_virtual_tokens", "ft_trainable_params", "ft_method"]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("XLOG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLOG_ENERGY", "0")
    return LocalStore()


@pytest.fixture(scope="module")
def data():
    return tiny.classification_datasets(n=24, max_length=16)


def tiny_model(name: str):
    from transformers import AutoModelForSequenceClassification

    from xsearch.worker import tiny_config
    import torch
    tok = tiny.tokenizer()
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(name, tok.vocab_size, 2, tok.pad_token_id))


def train(model, tmp_path, data, store) -> dict:
    """One real (1-step) Trainer run with the callback; returns its record."""
    from transformers import Trainer
    before = {r["record_id"] for r in store.records()}
    trainer = Trainer(model=model, args=tiny.training_args(tmp_path / f"out-{uuid.uuid4().hex[:6]}", max_steps=1,
                                                           per_device_train_batch_size=8, logging_steps=1),
                      train_dataset=data[0], processing_class=tiny.tokenizer(),
                      callbacks=[XLogCallback(task_name="sms_spam", max_seq_length=16)])
    trainer.train()
    rec = next(r for r in store.records() if r["record_id"] not in before)
    assert S.validate_record(rec) == []
    assert rec["status"] == "completed"
    return rec


def searched(name: str, **cfg):
    """A model with the PEFT structure of a search config, built as a search candidate is."""
    from xsearch.worker import apply_method
    return apply_method(tiny_model(name), dict(cfg, model_name=name, train_max_seq_length=24), {}, {})


# ---- capture: each kind and placement ------------------------------------------------------------------
CASES = [
    ("tiny:bert-4x32", dict(ft_method="lora", peft_lora_r=4, peft_layer_pattern="top_half",
                            peft_module_kinds="attn_q+attn_v"),
     dict(peft_type="LORA", peft_layers="2-3", peft_n_layers=2, peft_layers_fraction=0.5, peft_layer_pattern="top_half",
          peft_module_kinds="attn_q+attn_v", peft_n_adapted_modules=4, peft_rank_attn=4, peft_rank_ffn=None,
          peft_use_dora=False)),
    ("tiny:bert-4x32", dict(ft_method="lora", peft_lora_r=4, peft_layer_pattern="every_other",
                            peft_module_kinds="attn+ffn", peft_rank_ffn=2, peft_use_dora=True),
     dict(peft_layers="1,3", peft_layer_pattern="every_other", peft_n_adapted_modules=12, peft_rank_attn=4,
          peft_rank_ffn=2, peft_use_dora=True, peft_module_kinds="attn_q+attn_k+attn_v+attn_o+ffn_in+ffn_out")),
    ("tiny:bert-4x32", dict(ft_method="lora", peft_lora_r=4, peft_layer_pattern="all", peft_module_kinds="ffn_out"),
     # BERT's attention.output.dense ends like the feed-forward output.dense: it must stay out
     dict(peft_layers="0-3", peft_module_kinds="ffn_out", peft_n_adapted_modules=4, peft_rank_ffn=4)),
    ("tiny:llama-4x32", dict(ft_method="lora", peft_lora_r=8, peft_layer_pattern="bottom_half",
                             peft_module_kinds="attn+ffn", peft_rank_ffn=2, peft_use_rslora=True),
     dict(peft_layers="0-1", peft_layer_pattern="bottom_half", peft_n_adapted_modules=14, peft_rank_attn=8,
          peft_rank_ffn=2, peft_use_rslora=True)),
    ("tiny:gpt2-4x32", dict(ft_method="lora", peft_lora_r=4, peft_layer_pattern="top_1", peft_module_kinds="attn"),
     dict(peft_layers="3", peft_layer_pattern="top_1", peft_module_kinds="attn_q+attn_k+attn_v+attn_o",
          peft_n_adapted_modules=2)),  # c_attn (fused q, k, v) and attn.c_proj
    ("tiny:bert-4x32", dict(ft_method="ia3", peft_layer_pattern="top_half", peft_module_kinds="attn_k+attn_v+ffn_out"),
     dict(peft_type="IA3", ft_method="ia3", peft_layers="2-3", peft_module_kinds="attn_k+attn_v+ffn_out",
          peft_rank_attn=None, peft_use_dora=None, peft_n_adapted_modules=6)),
    ("tiny:llama-4x32", dict(ft_method="prompt_tuning", peft_num_virtual_tokens=5),
     dict(peft_type="PROMPT_TUNING", ft_method="prompt_tuning", peft_layers=None, peft_n_layers=0,
          peft_module_kinds="prompt", peft_num_virtual_tokens=5, peft_layer_pattern=None)),
]


@pytest.mark.parametrize("name, cfg, expected", CASES,
                         ids=[f"{c[0][5:]}-{c[1]['ft_method']}-{i}" for i, c in enumerate(CASES)])
def test_each_peft_kind_and_placement_is_captured(name, cfg, expected, store, tmp_path, data):
    rec = train(searched(name, **cfg), tmp_path, data, store)
    for k, v in expected.items():
        assert rec[k] == v, (k, rec[k], v)
    # Trainable parameters per kind add up to the run's trainable parameters (the head included).
    by_kind = rec["peft_params_by_kind"]
    assert by_kind and math.isclose(sum(by_kind.values()), rec["ft_trainable_params"], rel_tol=1e-9)
    assert by_kind.get("head", 0) > 0
    kinds = rec["peft_module_kinds"].split("+")
    assert set(kinds) <= set(by_kind)
    if rec["peft_rank_by_kind"]:
        assert set(rec["peft_rank_by_kind"]) == set(kinds)
    if rec["peft_layers"]:
        assert len(parse_layers(rec["peft_layers"])) == rec["peft_n_layers"]
        assert rec["peft_layers_fraction"] == rec["peft_n_layers"] / rec["model_n_layers"]


def test_same_structure_built_two_ways_gives_the_same_columns(store, tmp_path, data):
    """The search's config and a hand-written peft config (full module names, a regex rank
    pattern, no layers_to_transform) of the same structure record the same structure."""
    import peft
    by_search = train(searched("tiny:bert-4x32", ft_method="lora", peft_lora_r=4, peft_lora_alpha=8,
                               peft_layer_pattern="top_half", peft_module_kinds="attn_q+attn_v+ffn_in",
                               peft_rank_ffn=2), tmp_path, data, store)
    names = [f"bert.encoder.layer.{i}.{m}" for i in (2, 3)
             for m in ("attention.self.query", "attention.self.value", "intermediate.dense")]
    by_hand = train(peft.get_peft_model(tiny_model("tiny:bert-4x32"), peft.LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=names, rank_pattern={r"intermediate\.dense": 2})),
        tmp_path, data, store)
    for k in STRUCTURE_COLUMNS:
        assert by_search[k] == by_hand[k], (k, by_search[k], by_hand[k])
    assert by_search["peft_layer_pattern"] == "top_half" and by_search["peft_rank_ffn"] == 2
    # Llama, another spelling: a regex of the module names vs the search's layers_to_transform.
    a = peft_structure_features(searched("tiny:llama-4x32", ft_method="lora", peft_lora_r=4,
                                         peft_layer_pattern="top_2", peft_module_kinds="attn_q+attn_v"))
    b = peft_structure_features(peft.get_peft_model(tiny_model("tiny:llama-4x32"), peft.LoraConfig(
        task_type="SEQ_CLS", r=4, target_modules=r".*layers\.(2|3)\.self_attn\.(q|v)_proj")))
    assert a == b and a["peft_layer_pattern"] == "top_half"  # top 2 of 4 layers is the top half


def test_layer_descriptions():
    assert layers_text([0, 1, 2, 4, 6, 7]) == "0-2,4,6-7" and parse_layers("0-2,4,6-7") == [0, 1, 2, 4, 6, 7]
    assert [layer_pattern(x, 6) for x in ([0, 1, 2, 3, 4, 5], [3, 4, 5], [0, 1, 2], [1, 3, 5], [4, 5], [0], [0, 5])] \
        == ["all", "top_half", "bottom_half", "every_other", "top_2", "bottom_1", "custom"]


# ---- unsupported combinations: a clear error before any training ------------------------------------------
def _space(tmp_path, params: str, model: str = "tiny:bert-4x32") -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(f"""name: structure-test
parameters:
  model_name: {{values: ["{model}"]}}
{params}
  train_learning_rate: {{values: [3.0e-3]}}
  train_epochs: {{values: [1]}}
  train_batch_size: {{values: [16]}}
  train_max_seq_length: {{values: [32]}}
""", encoding="utf-8")
    return p


@pytest.mark.parametrize("params, model, message", [
    ("  ft_method: {values: [lora]}\n  peft_layer_pattern: {values: [all, top_8], when: {ft_method: lora}}",
     "tiny:bert-4x32", "top_8: the model has only 4 layers"),
    ("  ft_method: {values: [prefix_tuning, lora]}", "tiny:llama-2x32", "prefix_tuning: llama sequence classification"),
    ("  ft_method: {values: [lora]}\n  peft_module_kinds: {values: [attn_q+attn_v], when: {ft_method: lora}}",
     "tiny:gpt2-2x32", "fuses attn_q+attn_k+attn_v"),
    ("  ft_method: {values: [prompt_tuning]}\n"
     "  peft_num_virtual_tokens: {values: [600], when: {ft_method: prompt_tuning}}",
     "tiny:bert-2x32", "exceed the 512 positions"),
])
def test_unsupported_structures_fail_before_any_training(params, model, message, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from xsearch.cli import main
    from xsearch.runner import run_search
    from xsearch.space import StructureError
    home = tmp_path / "home"
    space = _space(tmp_path, params, model)
    with pytest.raises(StructureError, match=message.replace("+", r"\+")):
        run_search(data=str(SMS), budget_s=30, space_path=str(space), out_dir=str(tmp_path / "out"),
                   store_root=str(home), energy=False)
    assert not LocalStore(home).records()  # nothing ran
    res = CliRunner().invoke(main, ["run", "--space", str(space), "--home", str(home), "--budget", "30s",
                                    "--out", str(tmp_path / "out2"), "--plain"])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("params, message", [
    ("  ft_method: {values: [lora]}\n  peft_module_kinds: {values: [attn_q+mlp], when: {ft_method: lora}}",
     "unknown kind 'mlp'"),
    ("  ft_method: {values: [lora]}\n  peft_layer_pattern: {values: [middle], when: {ft_method: lora}}",
     "'middle' is not all, top_half"),
    ("  ft_method: {values: [lora]}\n  peft_module_kinds: {values: [attn, attn+ffn], when: {ft_method: lora}}\n"
     "  peft_rank_ffn: {values: [4], when: {ft_method: lora}}", "peft_rank_ffn: make it conditional"),
])
def test_malformed_structure_decisions_are_refused_when_the_space_is_read(params, message, tmp_path):
    from xsearch.space import SearchSpace, SpaceError
    with pytest.raises(SpaceError, match=message):
        SearchSpace.load(_space(tmp_path, params))


# ---- a tiny search over structures: the quality-vs-parameters front ----------------------------------------
@pytest.fixture(scope="module")
def structure_search(tmp_path_factory):
    from xsearch.runner import run_search
    root = tmp_path_factory.mktemp("structure-search")
    space = _space(root, """  ft_method: {values: [lora, ia3]}
  peft_layer_pattern: {values: [all, top_1], when: {ft_method: [lora, ia3]}}
  peft_module_kinds: {values: [attn_q+attn_v, attn+ffn], when: {ft_method: [lora, ia3]}}
  peft_lora_r: {values: [2, 8], when: {ft_method: lora}}""", "tiny:bert-2x32")
    result, paths = run_search(data=str(SMS), budget_s=80, max_evals=3, space_path=str(space),
                               out_dir=str(root / "out"), store_root=str(root / "home"), seed=1, max_train=40,
                               max_eval=24, energy=False, objective="quality-vs-params", population=2)
    return root, result, paths


def test_tiny_search_over_structures_writes_a_quality_vs_params_front(structure_search):
    from xsearch.search import front_2d, incumbent_of
    root, result, paths = structure_search
    assert result.used_s <= 80 and 2 <= len(result.evaluations) <= 3
    done = [o for o in result.outcomes if o.ok]
    assert done and all(o.trainable_params and o.trainable_params > 0 for o in done)
    front = pd.read_csv(paths["pareto_params_csv"])
    assert len(front) >= 1 and front["trainable_params"].is_monotonic_increasing
    assert front["eval_f1"].is_monotonic_increasing  # a cheaper point of a front is never better
    assert len(front) == len(front_2d(result.outcomes, "params"))
    for cost in ("params", "runtime", "energy"):
        assert paths[f"pareto_{cost}_png"].is_file() and paths[f"pareto_{cost}_csv"].is_file()
    assert paths["pareto_csv"].is_file() and paths["pareto_png"].is_file()  # the old report stays
    board = pd.read_csv(paths["leaderboard"])
    assert board["trainable_params"].notna().sum() == len(done)
    summary = json.loads(paths["summary"].read_text())
    assert summary["objective"] == "quality-vs-params" and len(summary["fronts"]["params"]) == len(front)
    from xsearch import db  # the same front from the shared records, with each point's structure
    view = db.to_pandas("SELECT * FROM pareto_params ORDER BY ft_trainable_params", root / "home")
    assert view["record_id"].tolist() == front["record_id"].tolist()
    assert view["peft_layer_pattern"].notna().all() and view["peft_module_kinds"].notna().all()
    inc = result.incumbent
    assert inc is incumbent_of(result.outcomes, "quality-vs-params", 0.01)
    assert board.loc[board["incumbent"], "record_id"].tolist() == [inc.record_id]
    # Every candidate's record describes the structure it ran.
    # Every candidate's record describes the structure it ran, and maps back to its config (resume
    # and replay read configs from records): top_1 of this 2-layer model is recorded as its top_half.
    from xsearch.space import SearchSpace, layer_indices
    space = SearchSpace.load(root / "space.yaml")
    recs = {r["record_id"]: r for r in LocalStore(root / "home").records()}
    for o in result.outcomes:
        r = recs[o.record_id]
        assert parse_layers(r["peft_layers"]) == layer_indices(o.config["peft_layer_pattern"], 2)
        assert r["peft_module_kinds"] == o.config["peft_module_kinds"]
        assert space.config_from_record(r) == o.config


def test_incumbent_definitions():
    from xsearch.evaluator import Outcome
    from xsearch.search import front_2d, incumbent_of
    outs = [Outcome({"i": i}, "completed", q, runtime_s=t, trainable_params=p)
            for i, (q, p, t) in enumerate([(0.90, 1e6, 10), (0.895, 1e4, 50), (0.80, 1e3, 5), (0.85, 1e5, 60)])]
    outs.append(Outcome({"i": 9}, "failed", None, runtime_s=1, trainable_params=10))
    assert incumbent_of(outs, "quality").config == {"i": 0}
    assert incumbent_of(outs, "quality-vs-params").config == {"i": 1}  # within 0.01 of the best, 100x smaller
    assert incumbent_of(outs, "quality-vs-params", tolerance=0.001).config == {"i": 0}
    assert incumbent_of(outs, "quality-vs-runtime").config == {"i": 0}
    assert [o.config["i"] for o in front_2d(outs, "params")] == [2, 1, 0]  # 3 is dominated by 1
    assert incumbent_of(outs, "quality-vs-energy").config == {"i": 0}  # no energy known: the best quality
    with pytest.raises(ValueError, match="objective"):
        incumbent_of(outs, "quality-vs-money")


# ---- estimators and warm start read the structure --------------------------------------------------------------
def _records(task: str, n: int, rng: random.Random, good: str, n_layers: int = 6) -> list[dict]:
    """LoRA runs of one task: the ``good`` layer pattern scores high, the others low."""
    out = []
    for i in range(n):
        pattern = rng.choice(["all", "top_half", "every_other"])
        layers = {"all": list(range(n_layers)), "top_half": list(range(n_layers // 2, n_layers)),
                  "every_other": list(range(1, n_layers, 2))}[pattern]
        kinds = rng.choice(["attn_q+attn_v", "attn_q+attn_k+attn_v+attn_o+ffn_in+ffn_out"])
        q = (0.85 if pattern == good else 0.6) + rng.uniform(-0.03, 0.03)
        failed = rng.random() < 0.15
        rec = {"record_id": str(uuid.uuid4()), "schema_version": 1, "created_at": datetime.now(timezone.utc),
               "xlog_version": "0.1.0", "source": "xlog", "status": "failed" if failed else "completed",
               "task_name": task, "task_type": "text-classification", "task_n_train": 500 + 10 * n,
               "task_n_classes": 2, "task_chars_mean": 80.0, "model_name": "sentence-transformers/all-MiniLM-L6-v2",
               "model_n_layers": n_layers, "model_hidden_size": 384, "model_n_params": 22_700_000,
               "ft_method": "lora", "peft_type": "LORA", "peft_lora_r": rng.choice([4, 8, 16]),
               "peft_layers": layers_text(layers), "peft_n_layers": len(layers),
               # a "top_3" from another tool is the same layers as top_half: it must count as top_half
               "peft_layer_pattern": "top_3" if pattern == "top_half" and i % 2 else layer_pattern(layers, n_layers),
               "peft_layers_fraction": len(layers) / n_layers, "peft_module_kinds": kinds, "peft_use_dora": False,
               "train_learning_rate": 1e-4, "train_epochs": 1.0, "train_batch_size": 16,
               "outcome_total_runtime_s": 30.0 + rng.uniform(0, 10), "ft_trainable_params": 10_000 * len(layers)}
        if not failed:
            rec.update(outcome_primary_metric="eval_f1", outcome_primary_value=round(q, 4),
                       outcome_greater_is_better=True)
        assert S.validate_record(rec) == [], S.validate_record(rec)
        out.append(rec)
    return out


def test_estimators_and_warm_start_use_structure_columns():
    from xsearch.estimators import Estimators, records_frame
    from xsearch.features import candidate_rows
    from xsearch.space import default_space
    from xsearch.warmstart import warm_start
    rng = random.Random(0)
    recs = []
    for t in range(4):
        recs += _records(f"task{t}", 24, rng, good="top_half")
    exp = records_frame(recs)
    est = Estimators(min_rows=8, inner_folds=0).fit(exp)
    assert "quality" in est.fitted_targets
    for f in ("peft_layers_fraction", "peft_n_layers", "kind_ffn_in", "kind_attn_q", "log_trainable_fraction_est",
              "peft_layer_pattern"):
        assert f in est.encoder.columns, f
    space = default_space()
    base = {"model_name": "sentence-transformers/all-MiniLM-L6-v2", "ft_method": "lora", "peft_lora_r": 8,
            "peft_lora_alpha": 16, "peft_lora_dropout": 0.0, "peft_module_kinds": "attn_q+attn_v",
            "peft_use_dora": False,
            "train_learning_rate": 1e-4, "train_epochs": 1, "train_batch_size": 16}
    cands = [dict(base, peft_layer_pattern=p) for p in ("all", "top_half", "every_other")]
    pred = est.predict(candidate_rows(cands, {"task_type": "text-classification", "task_n_train": 700,
                                              "task_n_classes": 2, "task_chars_mean": 80.0}, {}, experiences=exp))
    assert pred["quality"].notna().all()
    assert pred["quality"].idxmax() == 1  # top_half is what succeeded on every similar task
    # Warm start: similar tasks' successes pull the structure decisions (top_3 of 6 counts as top_half).
    uniform = space.uniform()
    warmed = warm_start(uniform, exp, {"task_name": "new", "task_type": "text-classification", "task_n_train": 700,
                                       "task_n_classes": 2, "task_chars_mean": 80.0})
    p = warmed["peft_layer_pattern"]
    assert p["top_half"] > uniform["peft_layer_pattern"]["top_half"] and p["top_half"] > p["all"] > 0
    attn = "attn_q+attn_k+attn_v+attn_o"
    assert warmed["peft_module_kinds"][attn] < uniform["peft_module_kinds"][attn]  # never used by a success
    # A record maps back to the space's structure decisions (resume, replay and seeds rely on it).
    cfg = space.config_from_record(dict(recs[1], peft_layer_pattern="top_3", peft_layers="3-5",
                                        peft_lora_alpha=16.0, peft_lora_dropout=0.0, train_warmup_ratio=0.0,
                                        train_weight_decay=0.0, train_lr_scheduler="linear", train_max_seq_length=64,
                                        peft_module_kinds="attn_q+attn_v"))
    assert cfg is not None and cfg["peft_layer_pattern"] == "top_half" and cfg["peft_module_kinds"] == "attn_q+attn_v"


# ---- the multi-objective race: hypervolume of the (quality, trainable parameters) front --------------------
def test_hypervolume_of_a_hand_made_front():
    import sys
    sys.path.insert(0, str(REPO / "benchmarks"))
    from race.multiobjective import front_points, hypervolume
    pts = [(0.9, 6.0), (0.8, 4.0), (0.7, 5.0), (0.5, 3.0)]  # (quality, log10 params); (0.7, 5) is dominated
    assert front_points(pts) == [(0.5, 3.0), (0.8, 4.0), (0.9, 6.0)]
    # reference (0.4, 7): 4 x 0.1 + 3 x 0.3 + 1 x 0.1
    assert hypervolume(pts, 0.4, 7.0) == pytest.approx(0.4 + 0.9 + 0.1)
    assert hypervolume([(0.3, 1.0), (0.9, 8.0)], 0.4, 7.0) == 0.0  # beyond the reference point: nothing


def test_multiobjective_race_end_to_end(tmp_path):
    import sys
    sys.path.insert(0, str(REPO / "benchmarks"))
    from test_search_race import SPACE, meta_records

    from race.contestants import Evolutionary
    from race.multiobjective import OptunaMultiObjective, format_mo_table, mo_contestants, run_mo_race
    from race.plot import plot_hypervolume
    assert [c.name for c in mo_contestants()] == ["random", "zero-shot", "optuna-motpe", "optuna-nsga2", "xsearch"]
    # The full xsearch contestant fits estimators per held-out task (slow here); its warm-started
    # search with the quality-vs-params objective and Optuna's MOTPE run through the same race.
    contestants = [OptunaMultiObjective("tpe"),
                   Evolutionary("xsearch", warm=True, estimators=False, settings={"objective": "quality-vs-params"})]
    result = run_mo_race(meta_records(n_tasks=3), SPACE, seeds=2, budget_fraction=0.5, contestants=contestants)
    names = ["optuna-motpe", "xsearch"]
    assert result["meta"]["contestants"] == names
    for task, t in result["per_task"].items():
        assert t["pool_front_size"] >= 2
        for n in names:
            h25, h100 = t[n]["hv_at"]["0.25"], t[n]["hv_at"]["1.00"]
            assert 0.0 <= h25 <= h100 <= 1.0 + 1e-9
            assert t[n]["curve"][0] == 0.0 and t[n]["curve"][-1] == pytest.approx(h100)
    assert "HV@25%" in format_mo_table(result)
    png = plot_hypervolume(result, tmp_path / "hv.png", "synthetic")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- generative kinds: the same structure decisions on causal LMs ----------------------------------------------
def test_structures_on_causal_lms_run_through_the_worker_and_are_recorded(tmp_path, monkeypatch):
    """A causal-LM candidate takes the structure decisions (peft task type CAUSAL_LM, chosen by the
    kind) and records them like a classifier's; prefix tuning, refused for classifiers, runs here."""
    from test_tasks import _run_worker, instruction_frame
    instruction_frame(40).to_parquet(tmp_path / "inst.parquet")
    base = dict(model_name="tiny:llama-4x32", train_learning_rate=3e-3, train_epochs=1, train_batch_size=16,
                train_max_seq_length=32)
    lora = _run_worker("causal-lm", tmp_path / "inst.parquet", {},
                       dict(base, ft_method="lora", peft_lora_r=4, peft_layer_pattern="top_half",
                            peft_module_kinds="attn_q+attn_v+ffn_out", peft_rank_ffn=2), tmp_path / "lora", monkeypatch)
    assert lora["status"] == "completed" and lora["task_type"] == "causal-lm" and lora["peft_type"] == "LORA"
    assert (lora["peft_layers"], lora["peft_layer_pattern"], lora["peft_module_kinds"]) == \
        ("2-3", "top_half", "attn_q+attn_v+ffn_out")
    assert lora["peft_rank_attn"] == 4 and lora["peft_rank_ffn"] == 2 and lora["peft_n_adapted_modules"] == 6
    assert "head" not in lora["peft_params_by_kind"]  # a causal LM's head stays frozen
    assert math.isclose(sum(lora["peft_params_by_kind"].values()), lora["ft_trainable_params"], rel_tol=1e-9)
    assert lora["_result"]["quality"] == -lora["outcome_primary_value"]  # signed: minus the loss
    prefix = _run_worker("causal-lm", tmp_path / "inst.parquet", {},
                         dict(base, model_name="tiny:gpt2-2x32", ft_method="prefix_tuning", peft_num_virtual_tokens=4),
                         tmp_path / "prefix", monkeypatch)
    assert prefix["status"] == "completed" and prefix["peft_type"] == "PREFIX_TUNING"
    assert prefix["peft_num_virtual_tokens"] == 4 and prefix["peft_module_kinds"] == "prefix"


def test_space_structures_are_checked_with_the_kinds_head(tmp_path):
    """check_space_structures builds the skeleton with the head of the space's kind: prefix tuning
    passes for a causal-LM space and fails for a classification one; a fused module fails for both."""
    from xsearch.space import SearchSpace, StructureError
    from xsearch.tasks.methods import check_space_structures

    def space(task_type: str, params: str, model: str) -> SearchSpace:
        p = _space(tmp_path, params, model)
        p.write_text(p.read_text().replace("name: structure-test", f"name: s\ntask_type: {task_type}"))
        return SearchSpace.load(p)
    prefix = "  ft_method: {values: [prefix_tuning, lora]}\n  peft_num_virtual_tokens: {values: [4], when: {ft_method: prefix_tuning}}"
    check_space_structures(space("causal-lm", prefix, "tiny:llama-2x32"))
    with pytest.raises(StructureError, match="prefix_tuning: llama sequence classification"):
        check_space_structures(space("text-classification", prefix, "tiny:llama-2x32"))
    fused = "  ft_method: {values: [lora]}\n  peft_module_kinds: {values: [attn_q+attn_v], when: {ft_method: lora}}"
    for kind in ("causal-lm", "question-answering"):
        with pytest.raises(StructureError, match=r"fuses attn_q\+attn_k\+attn_v"):
            check_space_structures(space(kind, fused, "tiny:gpt2-2x32"))
    with pytest.raises(StructureError, match="top_8: the model has only 2 layers"):
        check_space_structures(space("causal-lm", "  ft_method: {values: [lora]}\n"
                                     "  peft_layer_pattern: {values: [top_8], when: {ft_method: lora}}", "tiny:gpt2-2x32"))


def test_quality_vs_params_front_and_knee_for_a_loss(tmp_path):
    """Causal LM: the search's quality is minus the loss, so the front and the knee incumbent (the
    cheapest run within 0.01 of the best) work on it; the reports show the loss as logged."""
    from collections import Counter

    from xsearch.evaluator import Outcome
    from xsearch.report import write_reports
    from xsearch.runner import Evaluation, SearchResult
    from xsearch.space import SearchSpace
    space = SearchSpace.load(None, "causal-lm")
    cfg = {"model_name": "HuggingFaceTB/SmolLM2-135M-Instruct", "ft_method": "lora", "peft_lora_r": 8,
           "train_learning_rate": 1e-4, "train_epochs": 1, "train_batch_size": 8}
    evals = []
    for i, (loss, params) in enumerate([(1.200, 1e6), (1.205, 1e4), (1.5, 1e3), (1.3, 1e5)]):
        rec = {"status": "completed", "task_type": "causal-lm", "outcome_primary_metric": "eval_loss",
               "outcome_primary_value": loss, "outcome_greater_is_better": False, "record_id": f"r{i}",
               "outcome_metrics": {"eval_loss": loss}, "outcome_total_runtime_s": 10.0, "ft_trainable_params": params}
        evals.append(Evaluation(Outcome.from_record(rec, dict(cfg, peft_lora_r=[4, 8, 16, 32][i])), 0))
    result = SearchResult("xs-mo", evals, Counter(), 1, 40.0, 0.0, "max_evals", space.uniform(), space.uniform(),
                          60.0, objective="quality-vs-params")
    assert [o.record_id for o in result.front("params")] == ["r2", "r1", "r0"]  # r3 is dominated by r1
    assert result.incumbent.record_id == "r1"  # loss 1.205 is within 0.01 of 1.200, at 1/100 of the parameters
    paths = write_reports(result, space, tmp_path / "out", None, columns={})
    front = pd.read_csv(paths["pareto_params_csv"])
    assert front["record_id"].tolist() == ["r2", "r1", "r0"] and front["eval_loss"].tolist() == [1.5, 1.205, 1.2]
    summary = json.loads(paths["summary"].read_text())
    assert summary["best_record_id"] == "r1" and summary["fronts"]["params"][1]["eval_loss"] == 1.205
    assert paths["pareto_params_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
