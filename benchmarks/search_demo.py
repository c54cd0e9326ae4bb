"""Demo benchmark: `xsearch run` with the default space (all-MiniLM-L6-v2: LoRA, partial, full) on
the shipped SMS spam data, zero-shot vs warm-started from a store built on OTHER tasks.

1. Warm store: short zero-shot searches (real fine-tunings) on other text-classification tasks
   (the shipped TweetEval stance set, plus files from --datasets when given), in a separate store.
2. Zero-shot search on SMS spam in an empty store.
3. Warm-started search on SMS spam in a copy of the warm store (estimators + warm start).
Both target searches have the same budget and seed. Prints best F1, evaluations, failures,
skipped, budget used; writes benchmarks/results/search_demo.json.

    python benchmarks/search_demo.py [--budget 240] [--warm-budget 150] [--datasets /work/shared/datasets]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "search_demo.json"
TARGET = REPO / "examples" / "data" / "sms_spam_600.parquet"
WARM_TASKS = [REPO / "examples" / "data" / "tweeteval_stance_climate.parquet"]
EXTRA_TASKS = ["tweeteval_hate.parquet", "tweeteval_irony.parquet"]


def summarise(result) -> dict:
    best = result.incumbent
    return {"search_id": result.search_id, "best_f1": best.quality if best else None,
            "best_config": best.config if best else None, "evaluations": len(result.evaluations),
            "failures": result.n_failed, "skipped": dict(result.skipped),
            "skipped_total": int(sum(result.skipped.values())), "used_s": round(result.used_s, 1),
            "budget_s": result.budget_s, "stop_reason": result.stop_reason,
            "mean_eval_s": round(sum(o.wall_s for o in result.outcomes) / max(len(result.outcomes), 1), 1),
            "statuses": {s: sum(1 for o in result.outcomes if o.status == s) for s in {o.status for o in result.outcomes}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=240.0, help="seconds per target search")
    ap.add_argument("--warm-budget", type=float, default=150.0, help="seconds per warm-store search")
    ap.add_argument("--datasets", default=None, help="a folder of other tasks (e.g. /work/shared/datasets)")
    ap.add_argument("--max-train", type=int, default=300, help="training rows per task (stratified cap)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--energy", action="store_true", help="meter energy (codecarbon start-up per candidate)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from xsearch.runner import run_search

    tasks = list(WARM_TASKS)
    if args.datasets:
        tasks += [Path(args.datasets) / n for n in EXTRA_TASKS if (Path(args.datasets) / n).is_file()]
    work = Path(tempfile.mkdtemp(prefix="xsearch-demo-"))
    out: dict = {"budget_s": args.budget, "warm_budget_s": args.warm_budget, "max_train": args.max_train,
                 "target": TARGET.name, "warm_tasks": [t.name for t in tasks], "cpu_cores": os.cpu_count()}

    def progress(kind: str, info: dict) -> None:
        if kind == "evaluated":
            o = info["evaluation"].outcome
            q = f"F1 {o.quality:.3f}" if o.quality is not None else o.status
            print(f"    {q:>9}  {o.wall_s:6.1f} s  {o.config['ft_method']:<8} lr={o.config['train_learning_rate']:g} "
                  f"ep={o.config['train_epochs']} bs={o.config['train_batch_size']}", flush=True)
        elif kind == "skipped":
            print(f"    skipped ({info['reason']})", flush=True)

    t0 = time.monotonic()
    warm_home = work / "warm-home"
    out["warm_store"] = []
    for task in tasks:
        print(f"warm store: zero-shot search on {task.name} ({args.warm_budget:.0f} s)", flush=True)
        r, _ = run_search(data=str(task), budget_s=args.warm_budget, store_root=str(warm_home),
                          out_dir=str(work / f"out-{task.stem}"), seed=args.seed, max_train=args.max_train,
                          energy=args.energy, warm=False, use_estimators=False)
        out["warm_store"].append({"task": task.name, **summarise(r)})
    out["warm_store_build_s"] = round(time.monotonic() - t0, 1)

    print(f"zero-shot search on {TARGET.name} ({args.budget:.0f} s)", flush=True)
    r0, _ = run_search(data=str(TARGET), budget_s=args.budget, store_root=str(work / "zero-home"),
                       out_dir=str(work / "out-zero"), seed=args.seed, max_train=args.max_train, energy=args.energy,
                       on_event=progress)
    out["zero_shot"] = summarise(r0)
    target_home = work / "target-home"
    shutil.copytree(warm_home, target_home)
    print(f"warm-started search on {TARGET.name} ({args.budget:.0f} s)", flush=True)
    r1, paths = run_search(data=str(TARGET), budget_s=args.budget, store_root=str(target_home),
                           out_dir=str(work / "out-warm"), seed=args.seed, max_train=args.max_train,
                           energy=args.energy, on_event=progress)
    out["warm_started"] = summarise(r1)
    out["warm_started"]["similar_tasks"] = json.loads(paths["summary"].read_text()).get("similar_tasks")
    out["total_s"] = round(time.monotonic() - t0, 1)

    print()
    print(f"{'search':<14} {'best F1':>8} {'evals':>6} {'failed':>7} {'skipped':>8} {'used s':>7} {'mean eval s':>12}")
    for name in ("zero_shot", "warm_started"):
        s = out[name]
        f1 = f"{s['best_f1']:.4f}" if s["best_f1"] is not None else "-"
        print(f"{name:<14} {f1:>8} {s['evaluations']:>6} {s['failures']:>7} {s['skipped_total']:>8} "
              f"{s['used_s']:>7.0f} {s['mean_eval_s']:>12.1f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1, default=str), encoding="utf-8")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
