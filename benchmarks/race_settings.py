"""Choosing xsearch's ranking settings on the constructed split only (benchmarks/race/constructed.py:
70% failures, tenfold F1 scales, two kinds of GPU), never on the data sets the race reports on.

Runs the race on the constructed store with xsearch under each candidate setting beside the
baselines, prints the median regret at 25% / 100% of the budget and the error rate of each, and
writes benchmarks/results/race_settings.json. The chosen defaults are SearchSettings' own.

    python benchmarks/race_settings.py [--seeds 10]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from race.constructed import hard_records  # noqa: E402
from race.contestants import Evolutionary, KnnWarmStart, OptunaTPE, RandomSearch  # noqa: E402
from search_race import _jsonable, run_race  # noqa: E402

GRID = {"choose_from": (4, 8, 16), "n_seeds": (0, 2), "quality_sd": (0.05, 0.15, 0.3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", default=str(HERE / "results" / "race_settings.json"))
    args = ap.parse_args(argv)
    from xsearch.space import SearchSpace
    recs = hard_records()
    space = SearchSpace.from_records(recs, name="constructed")
    variants = []
    for values in itertools.product(*GRID.values()):
        s = dict(zip(GRID, values))
        variants.append(Evolutionary("xs " + " ".join(f"{k}={v}" for k, v in s.items()), warm=True, estimators=True,
                                     settings=s))
    contestants = [RandomSearch(), Evolutionary("zero-shot", warm=False, estimators=False), OptunaTPE(),
                   KnnWarmStart(), *variants]
    t0 = time.perf_counter()
    result, _ = run_race(recs, space, seeds=args.seeds, contestants=contestants)
    agg = result["aggregate"]
    rows = sorted(agg.items(), key=lambda kv: (kv[1]["regret_at"]["0.25"] + kv[1]["regret_at"]["1.00"]))
    print(f"constructed store: {len(recs)} records, {result['meta']['n_tasks']} tasks, {args.seeds} seeds; "
          f"median over tasks ({time.perf_counter() - t0:.0f} s)")
    print(f"{'contestant':<46} {'R@25%':>6} {'R@100%':>6} {'err':>6} {'evals':>6}")
    for name, a in rows:
        print(f"{name:<46} {a['regret_at']['0.25']:>6.2f} {a['regret_at']['1.00']:>6.2f} {a['error_rate']:>6.2f} "
              f"{a['evaluations_per_seed']:>6.1f}")
    doc = {"grid": GRID, "seeds": args.seeds, "aggregate": {n: {"regret_at": a["regret_at"], "error_rate": a["error_rate"],
                                                                 "evaluations_per_seed": a["evaluations_per_seed"]}
                                                             for n, a in agg.items()}}
    Path(args.out).write_text(json.dumps(_jsonable(doc), indent=1) + "\n", encoding="utf-8")
    return doc


if __name__ == "__main__":
    main()
