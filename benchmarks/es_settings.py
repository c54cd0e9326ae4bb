"""Choosing early stopping's two settings (``StopSpec.z``, ``StopSpec.patience``) on one half of
meta-dataset v2's tasks, and reporting the choice on the other half.

Curves exist only in v2, so v2's tasks are split in the two halves its harnesses ran
(docs/metadataset.md): settings are chosen on SELECT (the median held-out task's budget fraction
to reach zero-shot's final best, the issue 16 target, lowest wins; regret at 25 % breaks ties)
and reported on REPORT, each with xsearch (no early stopping) and zero-shot beside them. Writes
benchmarks/results/es_settings_v2.json. The chosen values are StopSpec's defaults.

    python benchmarks/es_settings.py [--select-seeds 10] [--report-seeds 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from race.contestants import Evolutionary, v2_contestants  # noqa: E402
from search_race import DATA_V2, SPACE_V2, _jsonable, load_v2, run_race  # noqa: E402

SELECT = ["sst2", "trec_coarse", "ag_news", "sms_spam", "tweeteval_stance_climate", "tweeteval_offensive",
          "tweeteval_emoji", "tweeteval_stance_atheism", "tweeteval_stance_hillary"]
REPORT = ["tweeteval_emotion", "tweeteval_hate", "tweeteval_irony", "tweeteval_sentiment", "liar", "meld_emotion",
          "tweeteval_stance_abortion", "tweeteval_stance_feminist"]
# One-sided 5 % / 1 % normal quantiles; one evaluation decides, or two in a row.
GRID = [(z, patience) for z in (1.645, 2.326) for patience in (1, 2)]
FIGURES = ("time_to_zero_shot_best", "used_fraction", "pruned_per_seed", "wrongly_pruned_per_seed",
           "pruning_saved_fraction")


def race(recs: list[dict[str, Any]], space: Any, tasks: list[str], seeds: int, z: float, patience: int
         ) -> dict[str, Any]:
    """The median-task figures of xsearch, zero-shot and xsearch-es with (z, patience)."""
    cs = [c for c in v2_contestants() if c.name in ("zero-shot", "xsearch")]
    cs.append(Evolutionary("xsearch-es", warm=True, estimators=True, early_stop=True,
                           settings={"early_stop_z": z, "early_stop_patience": patience}))
    res, _ = run_race(recs, space, seeds=seeds, tasks=tasks, contestants=cs)
    agg = res["aggregate"]
    return {n: {"regret_at": agg[n]["regret_at"], **{k: agg[n].get(k) for k in FIGURES}}
            for n in ("zero-shot", "xsearch", "xsearch-es")}


def _row(label: str, r: dict[str, Any]) -> str:
    es, plain = r["xsearch-es"], r["xsearch"]
    reg = es["regret_at"]
    return (f"{label:<22} {es['time_to_zero_shot_best']:6.2f} {reg['0.10']:6.2f} {reg['0.25']:6.2f} {reg['1.00']:6.2f}"
            f" {es['pruned_per_seed']:7.1f} {es['wrongly_pruned_per_seed']:6.2f} {es['pruning_saved_fraction']:6.2f}"
            f"   | xsearch {plain['time_to_zero_shot_best']:.2f} {plain['regret_at']['0.25']:.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--select-seeds", type=int, default=10)
    ap.add_argument("--report-seeds", type=int, default=20)
    ap.add_argument("--out", default=str(HERE / "results" / "es_settings_v2.json"))
    args = ap.parse_args(argv)
    from xsearch.space import SearchSpace
    t0 = time.perf_counter()
    recs = load_v2(DATA_V2, "cpu")
    space = SearchSpace.load(str(SPACE_V2))
    head = f"{'(z, patience)':<22} {'t->zs':>6} {'R@10%':>6} {'R@25%':>6} {'R@100%':>6} {'stops':>7} {'wrong':>6} {'saved':>6}"
    print(f"== choose on {len(SELECT)} tasks ({args.select_seeds} seeds): xsearch-es under each setting")
    print(head)
    chosen_on: dict[str, Any] = {}
    for z, p in GRID:
        chosen_on[f"{z},{p}"] = r = race(recs, space, SELECT, args.select_seeds, z, p)
        print(_row(f"({z}, {p})", r), flush=True)
    best = min(GRID, key=lambda zp: (chosen_on[f"{zp[0]},{zp[1]}"]["xsearch-es"]["time_to_zero_shot_best"],
                                     chosen_on[f"{zp[0]},{zp[1]}"]["xsearch-es"]["regret_at"]["0.25"]))
    print(f"chosen: z {best[0]}, patience {best[1]}")
    print(f"\n== report on the other {len(REPORT)} tasks ({args.report_seeds} seeds): before (1.645, 1) and chosen")
    print(head)
    reported: dict[str, Any] = {}
    for z, p in dict.fromkeys([(1.645, 1), best]):
        reported[f"{z},{p}"] = r = race(recs, space, REPORT, args.report_seeds, z, p)
        print(_row(f"({z}, {p})", r), flush=True)
    doc = {"select_tasks": SELECT, "report_tasks": REPORT, "grid": GRID, "select_seeds": args.select_seeds,
           "report_seeds": args.report_seeds, "criterion": "lowest median-task time_to_zero_shot_best of xsearch-es "
           "on the select tasks (regret at 25 % breaks ties)", "chosen": {"z": best[0], "patience": best[1]},
           "select": chosen_on, "report": reported, "elapsed_s": round(time.perf_counter() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(_jsonable(doc), indent=1), encoding="utf-8")
    print(f"\nwrote {args.out} ({doc['elapsed_s']:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
