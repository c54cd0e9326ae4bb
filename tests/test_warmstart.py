"""Warm start: task similarity and the direction in which past experience moves the initial
sampling distribution, on constructed stores with a known structure."""
from __future__ import annotations

import math

import pandas as pd
import pytest

import stores
from xsearch.estimators import load_experiences, records_frame
from xsearch.warmstart import _match, similar_tasks, warm_start

METHODS = {"full": 1 / 3, "lora": 1 / 3, "partial": 1 / 3}
BATCHES = {b: 0.2 for b in (8, 16, 32, 64, 128)}
SEQS = {s: 0.25 for s in (64, 128, 256, 512)}
PRIOR = {"ft_method": METHODS, "train_batch_size": BATCHES, "train_max_seq_length": SEQS,
         "train_learning_rate": {lr: 1 / len(stores.LEARNING_RATES) for lr in stores.LEARNING_RATES},
         "train_lr_scheduler": {"linear": 0.5, "cosine": 0.5}, "not_a_record_column": {"a": 0.5, "b": 0.5}}


@pytest.fixture(scope="module")
def experiences(tmp_path_factory):
    """Six tasks (3 small, 3 large) on a 16 GB GPU, where big batch x long sequence runs OOM."""
    root = tmp_path_factory.mktemp("ws_home")
    stores.build_store(root, n_tasks=6, runs_per_task=40, hardware=(stores.HARDWARE[1],), seed=1)
    return load_experiences(root)


def test_similar_tasks_ranks_tasks_of_the_same_kind_first(experiences):
    small = similar_tasks(experiences, stores.new_task_features(small=True), k=3)
    large = similar_tasks(experiences, stores.new_task_features(small=False, seed=5), k=3)
    assert [n.split("_")[0] for n, _ in small] == ["small"] * 3
    assert [n.split("_")[0] for n, _ in large] == ["large"] * 3
    for ranking in (small, large):
        sims = [s for _, s in ranking]
        assert all(0 < s <= 1 for s in sims) and sims == sorted(sims, reverse=True)
    assert len(similar_tasks(experiences, stores.new_task_features(), k=10)) == 6


def test_own_task_is_excluded_and_a_twin_is_fully_similar(experiences):
    row = experiences[experiences["task_name"] == "small_task_02"].iloc[0]
    feats = {k: row[k] for k in experiences.columns if k.startswith("task_")}
    names = [n for n, _ in similar_tasks(experiences, feats, k=10)]
    assert "small_task_02" not in names and len(names) == 5
    twin = dict(feats, task_name="a_new_name")
    best, sim = similar_tasks(experiences, twin, k=1)[0]
    assert best == "small_task_02" and sim == pytest.approx(1.0)


def test_tasks_of_another_kind_are_never_similar(experiences):
    feats = stores.new_task_features(small=True)
    assert len(similar_tasks(experiences, feats, k=6)) == 6  # text classification, like the store
    assert similar_tasks(experiences, dict(feats, task_type="causal-lm"), k=6) == []
    assert warm_start(PRIOR, experiences, dict(feats, task_type="question-answering")) == PRIOR
    # Spellings of one kind are one kind; a new task without a type compares with every task.
    assert len(similar_tasks(experiences, dict(feats, task_type="Text_Classification"), k=6)) == 6
    assert len(similar_tasks(experiences, dict(feats, task_type=None), k=6)) == 6


def _generative_store() -> pd.DataFrame:
    """Two QA tasks (F1: full fine-tuning best) and two causal-LM tasks (eval loss: LoRA best, full
    worst), with generative meta-features of their kind."""
    rows = []
    for t, (kind, metric, gib) in enumerate([("question-answering", "eval_f1", True)] * 2
                                            + [("causal-lm", "eval_loss", False)] * 2):
        for i, (method, good) in enumerate([("full", 3), ("partial", 2), ("lora", 1)] * 3):
            value = 0.2 + 0.2 * good + 0.01 * i if kind == "question-answering" else 1.0 + 0.5 * good + 0.01 * i
            rows.append({"task_name": f"{kind}_{t}", "task_type": kind, "status": "completed",
                         "ft_method": method, "outcome_primary_metric": metric, "outcome_primary_value": value,
                         "outcome_greater_is_better": gib, "task_n_train": 96 + t,
                         "task_answer_tokens_mean": 4.0 if kind == "question-answering" else 30.0 + t,
                         "task_prompt_tokens_mean": 180.0 if kind == "question-answering" else 12.0})
    return records_frame(rows)


def test_losses_pull_towards_the_lowest_loss_and_f1_tasks_stay_out():
    exp = _generative_store()
    lm = {"task_type": "causal-lm", "task_n_train": 100, "task_answer_tokens_mean": 31.0, "task_prompt_tokens_mean": 12.0}
    assert {n for n, _ in similar_tasks(exp, lm, k=5)} == {"causal-lm_2", "causal-lm_3"}
    new = warm_start({"ft_method": METHODS}, exp, lm, k=5)["ft_method"]
    assert new["lora"] > 1 / 3 > new["full"]  # lowest loss pulls hardest
    qa = dict(lm, task_type="question-answering", task_answer_tokens_mean=4.0, task_prompt_tokens_mean=180.0)
    new = warm_start({"ft_method": METHODS}, exp, qa, k=5)["ft_method"]
    assert new["full"] > 1 / 3 > new["lora"]  # highest F1 pulls hardest
    # Records without a direction: a loss is still lower-is-better by its name.
    no_dir = exp.assign(outcome_greater_is_better=None)
    assert warm_start({"ft_method": METHODS}, no_dir, lm, k=5)["ft_method"]["lora"] > 1 / 3


def test_one_task_two_metric_families_are_ranked_apart():
    from xsearch.warmstart import _quality_rank
    g = records_frame([{"outcome_primary_metric": m, "outcome_primary_value": v, "outcome_greater_is_better": gib}
                       for m, v, gib in [("eval_f1", 0.9, True), ("eval_f1", 0.5, True),
                                         ("eval_loss", 0.1, False), ("eval_loss", 3.0, None)]])
    assert _quality_rank(g).tolist() == [1.0, 0.5, 1.0, 0.5]  # the best of each family ranks 1


def test_warm_start_moves_towards_success_and_away_from_oom(experiences):
    new = warm_start(PRIOR, experiences, stores.new_task_features(small=True), k=3)
    # Small tasks: LoRA gave the best F1, full fine-tuning the worst (and diverged at high LR).
    assert new["ft_method"]["lora"] > 0.45 > 1 / 3 > new["ft_method"]["full"]
    # Big batch and long sequences ran out of memory on similar tasks.
    assert new["train_batch_size"][128] < 0.2 and new["train_batch_size"][128] == min(new["train_batch_size"].values())
    assert new["train_max_seq_length"][512] < 0.25
    # The highest learning rate diverged most often.
    lrs = new["train_learning_rate"]
    assert lrs[5e-3] == min(lrs.values())
    # Decisions the records do not have are left alone; every result is a distribution.
    assert new["not_a_record_column"] == PRIOR["not_a_record_column"]
    for d, p in new.items():
        assert set(p) == set(PRIOR[d]) and math.isclose(sum(p.values()), 1.0)
    assert PRIOR["ft_method"] == METHODS  # the input is not modified


def test_failures_alone_push_away(experiences):
    """Only OOM runs as evidence: their choices lose probability, nothing is pulled."""
    oom = experiences[experiences["status"] == "oom"]
    assert len(oom) >= 5
    new = warm_start({"train_batch_size": BATCHES}, oom, stores.new_task_features(small=True), k=6)
    p = new["train_batch_size"]
    assert p[128] < 0.2 and p[8] > 0.2


def test_floor_keeps_exploring(experiences):
    new = warm_start(PRIOR, experiences, stores.new_task_features(small=True), k=6, strength=50.0, floor=0.03)
    for p in new.values():
        assert min(p.values()) >= 0.03 - 1e-12 and math.isclose(sum(p.values()), 1.0)


def test_zero_experience_returns_the_distribution_unchanged():
    for exp in (None, records_frame([]), pd.DataFrame()):
        new = warm_start(PRIOR, exp, stores.new_task_features(), k=5)
        assert new == PRIOR and new is not PRIOR
    assert similar_tasks(records_frame([]), stores.new_task_features()) == []
    # Experience of the new task itself only (its own name is excluded): nothing similar.
    recs = stores.generate_records(n_tasks=1, runs_per_task=5)
    feats = dict(stores.new_task_features(), task_name=recs[0]["task_name"])
    assert warm_start(PRIOR, records_frame(recs), feats) == PRIOR


def test_record_values_match_discretised_options():
    lrs = list(stores.LEARNING_RATES)
    assert _match(3e-5, lrs) == 2e-5           # nearest on a log scale
    assert _match(4e-5, lrs) == 5e-5
    assert _match(1.0, lrs) is None             # far outside the options
    assert _match(None, lrs) is None and _match(float("nan"), lrs) is None
    assert _match("LoRA", list(METHODS)) == "lora" and _match("ia3", list(METHODS)) is None
    assert _match(True, [True, False]) is True
    assert _match(0.0, [0.0, 0.06, 0.1]) == 0.0 and _match(0.05, [0.0, 0.06, 0.1]) == 0.06
