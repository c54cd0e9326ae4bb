"""Anytime curves of the race (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

STYLE = {"random": ("#888888", ":"), "zero-shot": ("#1f77b4", "--"), "optuna-tpe": ("#ff7f0e", "-."),
         "knn": ("#2ca02c", (0, (3, 1, 1, 1))), "xsearch": ("#d62728", "-"),
         "xs-warm-only": ("#9467bd", (0, (1, 1))), "xs-est-only": ("#8c564b", (0, (5, 2)))}


def plot_anytime(result: Mapping[str, Any], path: Path) -> Path:
    """Left: median over tasks of the mean regret over seeds vs budget fraction (band: quartiles
    over tasks). Right: share of tasks where the median seed reached the zero-shot final best."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg, per_task = result["aggregate"], result["per_task"]
    n = len(next(iter(agg.values()))["curve_median"])
    x = np.linspace(0.0, 1.0, n)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, a in agg.items():
        color, ls = STYLE.get(name, (None, "-"))
        ax.plot(x, a["curve_median"], label=name, color=color, linestyle=ls, linewidth=2 if name == "xsearch" else 1.4)
        ax.fill_between(x, a["curve_q25"], a["curve_q75"], color=color, alpha=0.08)
        reach = sorted(t[name]["time_to_zero_shot_best"] for t in per_task.values() if name in t)
        share = [sum(1 for r in reach if r is not None and r <= xi) / len(reach) for xi in x]
        ax2.step(x, share, where="post", label=name, color=color, linestyle=ls,
                 linewidth=2 if name == "xsearch" else 1.4)
    for f in (0.10, 0.25, 0.50):
        ax.axvline(f, color="#dddddd", linewidth=0.8, zorder=0)
    ax2.axvline(1 / 3, color="#bbbbbb", linewidth=0.8, zorder=0)
    m = result["meta"]
    ax.set(xlabel="fraction of the budget (simulated seconds)", ylabel="normalised regret (median over tasks)",
           title=f"Anytime regret, {m['n_tasks']} held-out tasks x {m['seeds']} seeds", ylim=(-0.02, 1.02))
    ax2.set(xlabel="fraction of the budget", ylabel="share of tasks",
            title="Reached the zero-shot final best (median seed)", ylim=(-0.02, 1.02))
    ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(f"Leave-one-task-out search race on {m['data']} (budget = {m['budget_fraction']:g} x grid time)",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
