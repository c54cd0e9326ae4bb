"""Anytime curves of the race (PNG, matplotlib Agg)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

STYLE = {"random": ("#888888", ":"), "zero-shot": ("#1f77b4", "--"), "optuna-tpe": ("#ff7f0e", "-."),
         "knn": ("#2ca02c", (0, (3, 1, 1, 1))), "xsearch": ("#d62728", "-"),
         "xs-warm-only": ("#9467bd", (0, (1, 1))), "xs-est-only": ("#8c564b", (0, (5, 2))),
         "optuna-motpe": ("#ff7f0e", "-."), "optuna-nsga2": ("#e377c2", (0, (3, 1, 1, 1))),
         "xs-quality-only": ("#9467bd", (0, (1, 1)))}


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


def plot_hypervolume(result: Mapping[str, Any], path: Path, data_label: str = "") -> Path:
    """Left: median over tasks of the normalised hypervolume of the (quality, trainable parameters)
    front vs budget fraction (band: quartiles over tasks). Right: median at 25% and 100% of the budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg, m = result["aggregate"], result["meta"]
    names = m["contestants"]
    n = len(next(iter(agg.values()))["curve_median"])
    x = np.linspace(0.0, 1.0, n)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in names:
        a = agg[name]
        color, ls = STYLE.get(name, (None, "-"))
        ax.plot(x, a["curve_median"], label=name, color=color, linestyle=ls, linewidth=2 if name == "xsearch" else 1.4)
        ax.fill_between(x, a["curve_q25"], a["curve_q75"], color=color, alpha=0.08)
    for f in (0.25,):
        ax.axvline(f, color="#dddddd", linewidth=0.8, zorder=0)
    ax.set(xlabel="fraction of the budget (simulated seconds)",
           ylabel="hypervolume / pool's (median over tasks)",
           title=f"(quality, trainable params) front, {m['n_tasks']} held-out tasks x {m['seeds']} seeds",
           ylim=(-0.02, 1.02))
    ax.legend(fontsize=8, loc="lower right")
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        a = agg[name]
        color, _ = STYLE.get(name, (None, "-"))
        xs = np.arange(2) + (i - (len(names) - 1) / 2) * width
        med = [a["hv_median"]["0.25"], a["hv_median"]["1.00"]]
        lo = [med[j] - a["hv_q25"][k] for j, k in enumerate(("0.25", "1.00"))]
        hi = [a["hv_q75"][k] - med[j] for j, k in enumerate(("0.25", "1.00"))]
        ax2.bar(xs, med, width=width, color=color, label=name, yerr=[lo, hi], capsize=2, alpha=0.85)
    ax2.set_xticks([0, 1], ["25% of the budget", "100% of the budget"])
    ax2.set(ylabel="normalised hypervolume (median, quartiles)", ylim=(0, 1.05),
            title="Hypervolume reached")
    fig.suptitle(f"Multi-objective race (quality vs trainable parameters, log scale) on {data_label or 'the data'} "
                 f"(budget = {m['budget_fraction']:g} x grid time)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
