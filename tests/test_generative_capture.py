"""Generative fine-tuning through XLogCallback: a tiny causal LM (Llama config, 2 layers, a tokenizer
trained on the fly) fine-tuned with LoRA on question answering, and a plain causal-LM run, each
with the same one-line callback, leave complete records: task type, model objective, prompt /
context / question / answer lengths, and the primary metric with its direction."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tiny
from xlog import LocalStore, XLogCallback
from xlog import schema as S
from xlog.taskfeatures import compute_task_features

SQUAD = Path(__file__).resolve().parent / "fixtures" / "squad_sample" / "squad_v1_1_dev_48.parquet"
MAX_LEN = 48
WORD = re.compile(r"\w+", re.UNICODE)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("XLOG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XLOG_ENERGY", "0")
    return LocalStore()


def only_record(store: LocalStore) -> dict:
    recs = store.records()
    assert len(recs) == 1, recs
    assert S.validate_record(recs[0]) == []
    return recs[0]


def llama_lm():
    """A 2-layer Llama causal LM on the tiny tokenizer's vocabulary (built from a config)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    tok = tiny.tokenizer()
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=MAX_LEN,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg)


def lora(model):
    from peft import LoraConfig, TaskType, get_peft_model
    return get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"]))


def squad_frame() -> pd.DataFrame:
    return pd.read_parquet(SQUAD).rename(columns={"answer_text": "answer"})


def encode_qa(df: pd.DataFrame) -> dict[str, list]:
    """Prompt (question, then as much context as fits) + answer, left-truncated to MAX_LEN; the loss
    is on the answer only (prompt positions -100), padding masked."""
    tok = tiny.tokenizer()
    ids, masks, labels = [], [], []
    for ctx, q, a in zip(df["context"], df["question"], df["answer"]):
        a_ids = tok(a, add_special_tokens=False)["input_ids"][: MAX_LEN // 3] + [tok.eos_token_id]
        p_ids = tok(f"question: {q} context: {ctx} answer:", add_special_tokens=False)["input_ids"]
        p_ids = p_ids[: MAX_LEN - len(a_ids)]
        seq = p_ids + a_ids
        pad = MAX_LEN - len(seq)
        ids.append(seq + [tok.pad_token_id] * pad)
        masks.append([1] * len(seq) + [0] * pad)
        labels.append([-100] * len(p_ids) + a_ids + [-100] * pad)
    return {"input_ids": ids, "attention_mask": masks, "labels": labels}


def qa_datasets():
    from datasets import Dataset
    df = squad_frame()
    enc = encode_qa(df)
    ds = Dataset.from_dict({"context": df["context"].tolist(), "question": df["question"].tolist(),
                            "answer": df["answer"].tolist(), **enc})
    return ds.select(range(32)), ds.select(range(32, 48))


def token_f1(pred: list[int], gold: list[int]) -> float:
    common = sum(min(pred.count(t), gold.count(t)) for t in set(pred))
    if not pred or not gold or common == 0:
        return float(pred == gold)
    p, r = common / len(pred), common / len(gold)
    return 2 * p * r / (p + r)


def qa_metrics(eval_pred):
    """Token F1 and exact match of the greedy next-token predictions over each answer span."""
    logits, labels = eval_pred
    preds = np.argmax(logits, axis=-1)
    f1s, ems = [], []
    for p, lab in zip(preds, labels):
        pos = np.nonzero(lab[1:] != -100)[0]  # the token at t+1 is predicted at t
        gold, guess = lab[1:][pos].tolist(), p[:-1][pos].tolist()
        f1s.append(token_f1(guess, gold))
        ems.append(float(guess == gold))
    return {"f1": float(np.mean(f1s)), "exact_match": float(np.mean(ems))}


def lm_metrics(eval_pred):
    """Perplexity of the evaluation answers: exp of the mean next-token cross-entropy."""
    logits, labels = eval_pred
    logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.where(keep, labels, 0)[..., None], -1)[..., 0]
    return {"perplexity": float(np.exp(nll[keep].mean()))}


def stats(values) -> tuple[float, float]:
    v = np.asarray(list(values), dtype=float)
    return float(v.mean()), float(v.std())


def test_question_answering_lora_run_leaves_a_complete_record(store, tmp_path):
    from transformers import Trainer
    train, evald = qa_datasets()
    trainer = Trainer(model=lora(llama_lm()), args=tiny.training_args(tmp_path / "o", eval_strategy="epoch",
                                                                      per_device_train_batch_size=8),
                      train_dataset=train, eval_dataset=evald, processing_class=tiny.tokenizer(),
                      compute_metrics=qa_metrics, callbacks=[XLogCallback(task_name="squad_sample")])
    trainer.train()
    r = only_record(store)
    assert r["status"] == "completed" and r["error_type"] is None
    # The same one line as for classification: the kind is read from the data and the model head.
    assert r["task_type"] == "question-answering"
    assert r["model_objective"] == "causal-lm" and r["model_kind"] == "decoder" and r["model_type"] == "llama"
    assert r["ft_method"] == "lora" and r["peft_lora_r"] == 4 and 0 < r["ft_trainable_fraction"] < 1
    assert (r["task_n_train"], r["task_n_eval"], r["task_sample_size"]) == (32, 16, 32)
    assert r["task_n_classes"] is None  # answers are not classes
    # Lengths of the untruncated texts in the tokenizer's tokens (no special tokens).
    tok = tiny.tokenizer()

    def ntok(texts):
        return [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    for part in ("context", "question", "answer"):
        mean, sd = stats(ntok(train[part]))
        assert r[f"task_{part}_tokens_mean"] == pytest.approx(mean), part
        assert r[f"task_{part}_tokens_std"] == pytest.approx(sd), part
    prompts = [f"{c}\n{q}" for c, q in zip(train["context"], train["question"])]
    assert r["task_prompt_tokens_mean"] == pytest.approx(stats(ntok(prompts))[0])
    assert r["task_chars_mean"] == pytest.approx(stats(map(len, prompts))[0])  # what the model reads
    assert r["task_answer_chars_mean"] == pytest.approx(stats(map(len, train["answer"]))[0])
    overlap = [len({w.lower() for w in WORD.findall(q)} & {w.lower() for w in WORD.findall(c)})
               / len({w.lower() for w in WORD.findall(q)}) for c, q in zip(train["context"], train["question"])]
    assert r["task_question_context_overlap"] == pytest.approx(np.mean(overlap))
    assert r["task_answer_in_context"] == 1.0  # SQuAD answers are spans of their context
    # QA metrics: F1 primary, higher is better; exact match kept beside it.
    assert r["outcome_primary_metric"] == "eval_f1" and r["outcome_greater_is_better"] is True
    m = r["outcome_metrics"]
    assert r["outcome_primary_value"] == m["eval_f1"] and 0 <= m["eval_exact_match"] <= m["eval_f1"] <= 1
    assert "eval_loss" in m
    # No raw text anywhere in the record.
    flat = " ".join(str(v) for v in r.values())
    assert not any(q in flat for q in train["question"]) and not any(a in flat for a in train["answer"] if len(a) > 6)


def test_causal_lm_lora_run_records_loss_and_perplexity_as_lower_is_better(store, tmp_path):
    # Pre-tokenized data only (no text columns): prompt and answer lengths come from the -100 mask.
    from datasets import Dataset
    from transformers import Trainer
    enc = encode_qa(squad_frame())
    ds = Dataset.from_dict(enc)
    train, evald = ds.select(range(32)), ds.select(range(32, 48))
    # TrainingArguments fills greater_is_better=True for any metric not ending in "loss": the
    # record must still say that a lower perplexity is better.
    args = tiny.training_args(tmp_path / "o", eval_strategy="epoch", per_device_train_batch_size=8,
                              metric_for_best_model="perplexity")
    assert args.greater_is_better is True
    trainer = Trainer(model=lora(llama_lm()), args=args, train_dataset=train, eval_dataset=evald,
                      compute_metrics=lm_metrics, callbacks=[XLogCallback()])
    trainer.train()
    r = only_record(store)
    assert r["status"] == "completed"
    assert r["task_type"] == "causal-lm" and r["model_objective"] == "causal-lm" and r["ft_method"] == "lora"
    answer = [sum(1 for x, m in zip(lab, msk) if m and x != -100) for lab, msk in zip(train["labels"], train["attention_mask"])]
    prompt = [sum(1 for x, m in zip(lab, msk) if m and x == -100) for lab, msk in zip(train["labels"], train["attention_mask"])]
    assert (r["task_answer_tokens_mean"], r["task_answer_tokens_std"]) == pytest.approx(stats(answer))
    assert (r["task_prompt_tokens_mean"], r["task_prompt_tokens_std"]) == pytest.approx(stats(prompt))
    assert r["task_tokens_mean"] == pytest.approx(stats(map(sum, train["attention_mask"]))[0])
    assert r["outcome_primary_metric"] == "eval_perplexity" and r["outcome_greater_is_better"] is False
    m = r["outcome_metrics"]
    assert m["eval_perplexity"] > 1 and m["eval_loss"] > 0
    assert r["outcome_primary_value"] == m["eval_perplexity"]


def test_causal_lm_without_metrics_has_eval_loss_primary_lower_is_better(store, tmp_path):
    from datasets import Dataset
    from transformers import Trainer
    ds = Dataset.from_dict(encode_qa(squad_frame().head(24)))
    trainer = Trainer(model=llama_lm(), args=tiny.training_args(tmp_path / "o", eval_strategy="epoch", max_steps=3),
                      train_dataset=ds.select(range(16)), eval_dataset=ds.select(range(16, 24)),
                      callbacks=[XLogCallback(task_name="lm")])
    trainer.train()
    r = only_record(store)
    assert r["ft_method"] == "full" and r["task_type"] == "causal-lm"
    assert r["outcome_primary_metric"] == "eval_loss" and r["outcome_greater_is_better"] is False
    assert math.isfinite(r["outcome_primary_value"])


def test_prompt_response_and_squad_answers_features():
    from datasets import Dataset
    tok = tiny.tokenizer()
    pr = Dataset.from_dict({"prompt": ["say hi", "name a colour please"], "response": ["hi there", "blue"]})
    f = compute_task_features(pr, None, tok)
    assert f["task_answer_chars_mean"] == pytest.approx((8 + 4) / 2)
    n = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in pr["prompt"]]
    assert f["task_prompt_tokens_mean"] == pytest.approx(np.mean(n))
    assert "task_context_tokens_mean" not in f and "task_question_context_overlap" not in f  # no context
    assert "task_n_classes" not in f and "task_answer_in_context" not in f
    # SQuAD's own format: answers as {"text": [...], "answer_start": [...]}; one answer not in the context.
    sq = Dataset.from_dict({"context": ["the cat sat on the mat", "paris is in france"],
                            "question": ["where did the cat sit", "where is berlin"],
                            "answers": [{"text": ["the mat"], "answer_start": [15]},
                                        {"text": ["germany"], "answer_start": [0]}]})
    f = compute_task_features(sq, None, tok)
    assert f["task_answer_in_context"] == 0.5
    assert f["task_question_context_overlap"] == pytest.approx(np.mean([2 / 5, 1 / 3]))  # {the, cat} of 5; {is} of 3
    assert f["task_answer_chars_mean"] == pytest.approx((7 + 7) / 2)


@pytest.mark.parametrize("name, lower", [("eval_loss", True), ("eval_perplexity", True), ("ppl", True),
                                         ("eval_wer", True), ("eval_f1", False), ("exact_match", False),
                                         ("eval_accuracy", False), ("eval_bleu", False)])
def test_metric_direction_by_name(name, lower):
    assert S.lower_is_better(name) is lower


def test_percent_scale_known_per_metric():
    # A metric known to be on a 0-100 scale is divided even where a value is <= 1 (a near-zero F1).
    out, notes = S.rescale_scores({"f1": 0.8, "exact_match": 0.0, "eval_loss": 3.2}, percent={"f1", "exact_match"})
    assert out == {"f1": pytest.approx(0.008), "exact_match": 0.0, "eval_loss": 3.2} and notes == []
    out, notes = S.rescale_scores({"f1": 88.5, "accuracy": 0.9})
    assert out == {"f1": pytest.approx(0.885), "accuracy": 0.9} and [n for n, _ in notes] == ["f1"]


def test_files_without_the_generative_columns_are_still_read(tmp_path, make_records):
    """A record file written before these columns existed is read beside new ones (union_by_name)."""
    import pyarrow.parquet as pq
    from xsearch.estimators import load_experiences
    store = LocalStore(tmp_path / "home")
    new, old = make_records(2, seed=4, status="completed")
    new = dict(new, task_type="question-answering", task_answer_tokens_mean=4.5, task_question_context_overlap=0.6)
    path = store.write(new)
    old_path = store.write(old)
    added = [f.name for f in S.fields() if f.name.startswith(("task_prompt_", "task_context_", "task_question_",
                                                                 "task_answer_"))]
    assert len(added) == 12
    table = pq.read_table(old_path)
    pq.write_table(table.drop_columns(added), old_path)  # as an older xlog wrote it
    exp = load_experiences(tmp_path / "home").set_index("record_id")
    assert len(exp) == 2 and path.is_file()
    assert exp.loc[new["record_id"], "task_answer_tokens_mean"] == 4.5
    assert pd.isna(exp.loc[old["record_id"], "task_answer_tokens_mean"])
