"""Real Trainer runs with tiny models: every run leaves one schema-valid record."""
from __future__ import annotations

import pytest
import torch

import tiny
from xlog import LocalStore, XLogCallback
from xlog import schema as S
from xlog.callback import XLogCallback as CB
from transformers import Trainer, TrainerCallback


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


def run(model, tmp_path, train, evald=None, callback=None, **args):
    cb = callback or XLogCallback(task_name="sms_spam")
    trainer = Trainer(model=model, args=tiny.training_args(tmp_path / "out", **args), train_dataset=train,
                      eval_dataset=evald, processing_class=tiny.tokenizer(),
                      compute_metrics=tiny.compute_metrics if evald is not None else None, callbacks=[cb])
    trainer.train()
    if evald is not None:
        trainer.evaluate()
    return trainer, cb


def test_full_finetuning_record(store, tmp_path):
    train, evald = tiny.classification_datasets()
    run(tiny.bert_classifier(), tmp_path, train, evald)
    r = only_record(store)
    assert r["status"] == "completed" and r["error_type"] is None
    assert r["source"] == "xlog" and r["task_name"] == "sms_spam"
    assert r["task_type"] == "text-classification"
    assert (r["task_n_train"], r["task_n_eval"], r["task_n_classes"]) == (150, 50, 2)
    spam = sum(train["label"]) / len(train)
    assert r["task_class_prob_min"] == pytest.approx(min(spam, 1 - spam))
    assert r["task_imbalance_ratio"] == pytest.approx(max(spam, 1 - spam) / min(spam, 1 - spam))
    assert r["task_chars_mean"] == pytest.approx(sum(map(len, train["text"])) / len(train))
    assert 0 < r["task_type_token_ratio"] < 1 and r["task_tokens_mean"] > 1
    assert r["train_max_seq_length"] == 32
    assert r["model_type"] == "bert" and r["model_kind"] == "encoder"
    assert r["model_objective"] == "sequence-classification"
    assert (r["model_n_layers"], r["model_hidden_size"], r["model_n_heads"]) == (2, 32, 2)
    assert r["ft_method"] == "full" and r["ft_trainable_fraction"] == 1.0 and r["ft_trainable_layers"] == 2
    assert r["train_effective_batch_size"] == 16 and r["train_world_size"] == 1
    assert r["train_precision"] == "fp32" and r["train_max_steps"] == 10
    assert r["outcome_primary_metric"] == "eval_f1"
    assert r["outcome_primary_value"] == r["outcome_metrics"]["eval_f1"]
    assert {"eval_accuracy", "eval_f1", "eval_loss"} <= set(r["outcome_metrics"])
    assert r["outcome_steps_completed"] == 10 and r["outcome_train_loss"] > 0
    assert r["hw_accelerator"] == "cpu" and r["hw_cpu_cores"] >= 1 and r["hw_ram_gb"] > 0
    assert r["energy_source"] == "none"  # XLOG_ENERGY=0 here; metering is tested on its own


def test_lora_record(store, tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model
    model = get_peft_model(tiny.bert_classifier(), LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                              lora_dropout=0.05, target_modules=["query", "value"]))
    train, evald = tiny.classification_datasets()
    run(model, tmp_path, train, evald, gradient_accumulation_steps=2)
    r = only_record(store)
    assert r["ft_method"] == "lora" and r["peft_type"] == "LORA"
    assert (r["peft_lora_r"], r["peft_lora_alpha"], r["peft_lora_dropout"]) == (4, 8.0, 0.05)
    assert r["peft_target_modules"] == ["query", "value"]
    assert '"r": 4' in r["peft_config_json"]
    assert 0 < r["ft_trainable_fraction"] < 1
    plain = sum(p.numel() for p in tiny.bert_classifier().parameters())
    assert r["model_n_params"] == plain  # adapters are not counted as model parameters
    assert r["train_effective_batch_size"] == 32 and r["train_grad_accum_steps"] == 2


def test_partial_freezing_record(store, tmp_path):
    model = tiny.bert_classifier(layers=3)
    for p in model.bert.embeddings.parameters():
        p.requires_grad = False
    for layer in model.bert.encoder.layer[:2]:
        for p in layer.parameters():
            p.requires_grad = False
    train, _ = tiny.classification_datasets()
    run(model, tmp_path, train)
    r = only_record(store)
    assert r["ft_method"] == "partial" and r["ft_trainable_layers"] == 1 and r["model_n_layers"] == 3
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert r["ft_trainable_params"] == trainable
    assert r["outcome_metrics"] is None and r["outcome_primary_metric"] is None  # no evaluation ran


def _lm_rows(n=64, max_length=24):
    tok = tiny.tokenizer()
    texts = tiny.sms_frame(n)["text"].tolist()
    enc = tok(texts, truncation=True, max_length=max_length, padding="max_length")
    return texts, enc


def test_causal_lm_record_from_list_of_dicts(store, tmp_path):
    texts, enc = _lm_rows()
    rows = [{"text": t, "input_ids": ids, "attention_mask": m, "labels": ids}
            for t, ids, m in zip(texts, enc["input_ids"], enc["attention_mask"])]

    def collate(batch):
        return {k: torch.tensor([b[k] for b in batch]) for k in ("input_ids", "attention_mask", "labels")}
    trainer = Trainer(model=tiny.gpt2_lm(), args=tiny.training_args(tmp_path / "o", remove_unused_columns=False),
                      train_dataset=rows, data_collator=collate, processing_class=tiny.tokenizer(),
                      callbacks=[XLogCallback()])
    trainer.train()
    r = only_record(store)
    assert r["model_kind"] == "decoder" and r["model_objective"] == "causal-lm" and r["task_type"] == "causal-lm"
    assert r["task_n_train"] == 64 and r["task_n_classes"] is None  # token labels are not classes
    assert r["task_chars_mean"] > 0 and r["model_max_positions"] == 64


class TorchSeq2Seq(torch.utils.data.Dataset):
    """A plain map-style torch dataset of pre-tokenized tensors (no text column)."""

    def __init__(self):
        texts, enc = _lm_rows(48, 16)
        self.ids = torch.tensor(enc["input_ids"])
        self.mask = torch.tensor(enc["attention_mask"])

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.ids[i].flip(0)}


def test_seq2seq_record_from_torch_dataset(store, tmp_path):
    trainer = Trainer(model=tiny.t5_seq2seq(), args=tiny.training_args(tmp_path / "o"),
                      train_dataset=TorchSeq2Seq(), callbacks=[XLogCallback(task_type="seq2seq", task_name="reverse")])
    trainer.train()
    r = only_record(store)
    assert r["model_kind"] == "encoder-decoder" and r["model_objective"] == "seq2seq-lm"
    assert r["model_n_layers"] == 4  # encoder + decoder
    assert r["task_type"] == "seq2seq" and r["task_n_train"] == 48
    assert r["task_chars_mean"] is None  # no text to see: null, never invented
    assert r["task_tokens_mean"] == pytest.approx(TorchSeq2Seq().mask.sum(1).float().mean().item())


def test_evaluate_after_training_updates_the_record(store, tmp_path):
    train, evald = tiny.classification_datasets()
    trainer, cb = run(tiny.bert_classifier(), tmp_path, train, evald, eval_strategy="epoch")
    r = only_record(store)
    assert r["outcome_metrics"]["eval_f1"] == pytest.approx(trainer.evaluate()["eval_f1"])
    assert len(store.files()) == 1


def test_metric_for_best_model_is_primary(store, tmp_path):
    train, evald = tiny.classification_datasets()
    run(tiny.bert_classifier(), tmp_path, train, evald, eval_strategy="epoch", metric_for_best_model="accuracy",
        greater_is_better=True)
    r = only_record(store)
    assert r["outcome_primary_metric"] == "eval_accuracy" and r["outcome_greater_is_better"] is True


def test_no_per_step_work():
    # Per-step hooks stay the base class's no-ops: the callback adds no per-step cost.
    for hook in ("on_step_begin", "on_step_end", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step"):
        assert getattr(CB, hook) is getattr(TrainerCallback, hook), hook


def test_bounded_sample_cost():
    from datasets import Dataset
    from xlog.taskfeatures import compute_task_features
    big = Dataset.from_dict({"text": ["a b c d"] * 200_000, "label": [0, 1] * 100_000})
    f = compute_task_features(big, None, tiny.tokenizer(), max_sample=500)
    assert f["task_n_train"] == 200_000 and f["task_sample_size"] == 500 and f["task_n_classes"] == 2


def test_energy_metered_with_codecarbon(tmp_path, monkeypatch):
    monkeypatch.setenv("XLOG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XLOG_ENERGY", raising=False)
    train, _ = tiny.classification_datasets()
    # Several seconds of training: codecarbon needs ~2 s to start measuring, more on a cold start
    # (a fresh clone's CI run trained 2 s with 80 steps and got no measurement).
    run(tiny.bert_classifier(), tmp_path, train, callback=XLogCallback(country_iso_code="FRA"), max_steps=400)
    r = only_record(LocalStore())
    assert r["energy_source"] in ("codecarbon", "codecarbon+nvml")
    assert r["energy_kwh"] > 0 and r["energy_cpu_kwh"] > 0 and r["energy_co2_kg"] > 0
    assert r["energy_kwh"] == pytest.approx(r["energy_cpu_kwh"] + r["energy_ram_kwh"] + (r["energy_gpu_kwh"] or 0))
    assert r["energy_country_iso_code"] == "FRA"


def test_percentage_scores_are_rescaled_and_the_run_is_kept(store, tmp_path):
    # The `evaluate` SQuAD metric returns F1 and exact match in percent: the schema wants fractions.
    def percent_metrics(eval_pred):
        m = tiny.compute_metrics(eval_pred)
        return {"f1": 100 * m["f1"], "exact_match": 100 * m["accuracy"], "accuracy": m["accuracy"],
                "precision": 250.0, "recall": 1.0 + 1e-12, "custom_score": 42.0}
    train, evald = tiny.classification_datasets()
    trainer = Trainer(model=tiny.bert_classifier(), args=tiny.training_args(tmp_path / "o", eval_strategy="epoch"),
                      train_dataset=train, eval_dataset=evald, processing_class=tiny.tokenizer(),
                      compute_metrics=percent_metrics, callbacks=[XLogCallback(task_name="squad_like")])
    with pytest.warns(UserWarning) as caught:
        trainer.train()
    texts = " ".join(str(w.message) for w in caught)
    assert "eval_f1" in texts and "percentage" in texts and "eval_precision" in texts and "left out" in texts
    r = only_record(store)  # kept in the store, not only as JSON in quarantine
    assert not store.quarantine_dir.exists()
    m, acc = r["outcome_metrics"], r["outcome_metrics"]["eval_accuracy"]
    assert m["eval_exact_match"] == pytest.approx(acc) and 0 <= m["eval_f1"] <= 1
    assert r["outcome_primary_metric"] == "eval_f1" and r["outcome_primary_value"] == m["eval_f1"]
    assert "eval_precision" not in m  # 250 is no score, in percent or not
    assert m["eval_recall"] == 1.0 and m["eval_custom_score"] == 42.0  # rounding clipped; unbounded names kept


def test_slow_features_run_off_the_training_thread(store, tmp_path, monkeypatch):
    import threading
    from xlog import callback as cbmod
    seen = {}
    real_probe = cbmod.probe_hardware

    def probe(*a, **kw):
        seen["hardware"] = threading.current_thread().name
        return real_probe(*a, **kw)
    monkeypatch.setattr(cbmod, "probe_hardware", probe)
    train, evald = tiny.classification_datasets()
    trainer, cb = run(tiny.bert_classifier(), tmp_path, train, evald)
    assert seen["hardware"] == "xlog-features" != threading.current_thread().name
    r = only_record(store)  # joined before the record closed: nothing lost
    assert r["hw_cpu_cores"] >= 1 and r["task_n_train"] == 150 and r["task_tokens_mean"] > 1


def test_collator_tokenizing_on_the_fly_with_the_same_tokenizer(store, tmp_path):
    # The background features use a private copy of the tokenizer: the collator's calls (truncation
    # and padding changes on the shared Rust backend) and the features never meet.
    from datasets import Dataset
    from xlog.taskfeatures import compute_task_features
    tok = tiny.tokenizer()
    df = tiny.sms_frame(200)
    raw = Dataset.from_dict({"text": df["text"].tolist(), "label": (df["label"] == "spam").astype(int).tolist()})

    def collate(rows):
        enc = tok([r["text"] for r in rows], truncation=True, max_length=16, padding=True, return_tensors="pt")
        enc["labels"] = torch.tensor([r["label"] for r in rows])
        return enc
    trainer = Trainer(model=tiny.bert_classifier(), args=tiny.training_args(tmp_path / "o", remove_unused_columns=False),
                      train_dataset=raw, data_collator=collate, processing_class=tok, callbacks=[XLogCallback()])
    trainer.train()
    r = only_record(store)
    expected = compute_task_features(raw, None, tok)
    assert r["task_tokens_mean"] == pytest.approx(expected["task_tokens_mean"])  # untruncated lengths
    assert r["task_tokens_mean"] > 16


def test_codecarbon_gets_the_cpu_name_without_a_second_interpreter():
    import cpuinfo
    from codecarbon.core import util as cc_util
    from xlog.energy import prime_codecarbon_cpu_model
    from xlog.hardware import proc_cpu_model
    if not proc_cpu_model():
        pytest.skip("no model name in /proc/cpuinfo here: codecarbon asks py-cpuinfo itself")
    original = cpuinfo.get_cpu_info
    cc_util.detect_cpu_model.cache_clear()
    assert prime_codecarbon_cpu_model()
    assert cc_util.detect_cpu_model() == proc_cpu_model()
    assert cpuinfo.get_cpu_info is original  # swapped for that one call only
