"""Tiny real models and a tokenizer trained on the fly: real Trainer runs in under a second."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
SMS = REPO / "examples" / "data" / "sms_spam_600.parquet"


def sms_frame(n: int = 200) -> pd.DataFrame:
    return pd.read_parquet(SMS).head(n).reset_index(drop=True)


@lru_cache(maxsize=None)
def tokenizer():
    """A WordPiece tokenizer trained on the shipped SMS texts."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    texts = pd.read_parquet(SMS)["text"].tolist()
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", eos_token="</s>", model_max_length=64)
    return fast


def bert_classifier(num_labels: int = 2, layers: int = 2, hidden_size: int = 32):
    from transformers import BertConfig, BertForSequenceClassification
    cfg = BertConfig(vocab_size=tokenizer().vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=64,
                     num_labels=num_labels, pad_token_id=0)
    return BertForSequenceClassification(cfg)


def gpt2_lm():
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = tokenizer()
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64,
                     bos_token_id=tok.cls_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


def t5_seq2seq():
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = T5Config(vocab_size=tokenizer().vocab_size, d_model=32, d_kv=16, d_ff=64, num_layers=2,
                   num_decoder_layers=2, num_heads=2, pad_token_id=0, eos_token_id=tokenizer().eos_token_id,
                   decoder_start_token_id=0)
    return T5ForConditionalGeneration(cfg)


def classification_datasets(n: int = 200, max_length: int = 32):
    """Tokenized train/eval datasets.Dataset (text and label columns kept)."""
    from datasets import Dataset
    df = sms_frame(n)
    df["label"] = (df["label"] == "spam").astype(int)
    ds = Dataset.from_pandas(df[["text", "label"]])
    tok = tokenizer()
    ds = ds.map(lambda b: tok(b["text"], truncation=True, max_length=max_length, padding="max_length"), batched=True)
    split = ds.train_test_split(test_size=0.25, seed=0)
    return split["train"], split["test"]


def compute_metrics(eval_pred):
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score
    logits, labels = eval_pred
    preds = np.argmax(logits, axis=-1)
    return {"accuracy": accuracy_score(labels, preds), "f1": f1_score(labels, preds, average="macro")}


def training_args(out_dir, **kw):
    from transformers import TrainingArguments
    base = dict(output_dir=str(out_dir), num_train_epochs=1, per_device_train_batch_size=16,
                per_device_eval_batch_size=32, learning_rate=1e-3, report_to=[], save_strategy="no",
                logging_steps=5, eval_strategy="no", use_cpu=True, disable_tqdm=True, seed=0)
    base.update(kw)
    return TrainingArguments(**base)
