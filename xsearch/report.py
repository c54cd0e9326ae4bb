"""What a search leaves in its output folder: leaderboard.csv, pareto.csv, pareto.png (quality vs
runtime and energy, front highlighted), the quality-vs-cost fronts per cost
(``pareto_params.csv``/``.png`` for trainable parameters, ``pareto_runtime``, ``pareto_energy``),
best_config.py (a ready-to-run training script of the search's task kind for the incumbent, as
``--objective`` defines it) and summary.json. Quality is shown as logged (F1, or a loss where lower
is better); fronts and the incumbent use the signed quality, so they work for either direction."""
from __future__ import annotations

import json
import pprint
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .space import SearchSpace

if TYPE_CHECKING:
    from .runner import SearchResult

LEADERBOARD = "leaderboard.csv"
PARETO_CSV = "pareto.csv"
PARETO_PNG = "pareto.png"
BEST_CONFIG = "best_config.py"
SUMMARY = "summary.json"
#: Per cost of a two-objective front: leaderboard column, axis label, log-scale axis.
COST_VIEWS = {"params": ("trainable_params", "cost: trainable parameters", True),
              "runtime": ("runtime_s", "cost: runtime (s)", False),
              "energy": ("energy_kwh", "cost: energy (kWh)", False)}
STRUCTURE_COLUMNS = ("peft_layer_pattern", "peft_module_kinds", "peft_rank_ffn", "peft_use_dora", "peft_use_rslora",
                     "peft_num_virtual_tokens")


def _kind(space_or_type: Any) -> Any:
    from .tasks import get_task_kind
    return get_task_kind(getattr(space_or_type, "task_type", space_or_type))


def leaderboard(result: "SearchResult", task_type: str | None = None) -> pd.DataFrame:
    """One row per evaluation, best first (completed ones by the task kind's primary metric in its
    direction, then the failures). The primary metric's column is named as logged (``eval_f1``,
    ``eval_loss``) and holds the logged value; the kind's other metrics follow."""
    kind = _kind(task_type)
    metric = kind.primary_metric
    front = {id(o) for o in result.pareto()}
    fronts = {cost: {id(o) for o in result.front(cost)} for cost in COST_VIEWS}
    inc = result.incumbent
    rows = []
    for ev in result.evaluations:
        o = ev.outcome
        row: dict[str, Any] = {"status": o.status, metric: kind.unsigned(o.quality)}
        row.update({m: o.metrics.get(m) for m in kind.report_metrics})
        row.update({
            "runtime_s": o.runtime_s, "wall_s": o.wall_s, "energy_kwh": o.energy_kwh,
            "trainable_params": getattr(o, "trainable_params", None), "pareto": id(o) in front,
            **{f"pareto_{cost}": id(o) in ids for cost, ids in fronts.items()}, "incumbent": o is inc,
            "generation": ev.generation, "from_journal": o.from_journal,
            "predicted_quality": ev.predicted.get("quality"), "predicted_wall_s": ev.predicted.get("wall_s"),
            "predicted_p_fail": ev.predicted.get("p_fail"), "record_id": o.record_id, "error": o.error,
        })
        row.update(o.config)
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df) == 0:
        return df
    df["_ok"] = df["status"].eq("completed") & df[metric].notna()
    df = df.sort_values(["_ok", metric, "runtime_s"], ascending=[False, not kind.greater_is_better, True])
    df = df.drop(columns="_ok")
    df.insert(0, "rank", range(1, len(df) + 1))
    return df.reset_index(drop=True)


def plot_pareto(board: pd.DataFrame, path: Path, title: str, task_type: str | None = None) -> Path:
    """Quality (the primary metric as logged) against runtime, the Pareto front as a step line;
    failed candidates as red crosses at the worst end of the quality axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kind = _kind(task_type)
    metric = kind.primary_metric
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ok = board[board["status"].eq("completed") & board[metric].notna()] if len(board) else board
    if len(ok):
        for method, g in ok.groupby(ok["ft_method"].astype(str)):
            ax.scatter(g["runtime_s"], g[metric], alpha=0.6, label=f"{method}")
        front = ok[ok["pareto"]].sort_values("runtime_s")
        ax.step(front["runtime_s"], front[metric], where="post", color="black", linewidth=1.2)
        ax.scatter(front["runtime_s"], front[metric], s=90, facecolors="none", edgecolors="black",
                   linewidths=1.5, label="Pareto front")
    failed = board[~board.index.isin(ok.index)] if len(board) else board
    pruned = failed[failed["status"].eq("pruned")] if len(failed) else failed
    failed = failed[~failed["status"].eq("pruned")] if len(failed) else failed
    worst = 0.0 if kind.greater_is_better or not len(ok) else float(ok[metric].max()) * 1.05
    if len(pruned):  # stopped early on purpose: their metric (as logged) at the stop, at the time they used
        ax.scatter(pruned["wall_s"], pruned[metric].fillna(worst), marker="v", color="grey",
                   label=f"pruned early ({len(pruned)})")
    if len(failed):
        ax.scatter(failed["wall_s"], [worst] * len(failed), marker="x", color="red",
                   label=f"failed / oom / timeout ({len(failed)})")
    ax.set_xlabel("cost: runtime (s)")
    ax.set_ylabel(f"quality: {kind.metric_label} (validation"
                  + (")" if kind.greater_is_better else ", lower is better)"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if kind.greater_is_better else "upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_front(board: pd.DataFrame, cost: str, path: Path, title: str, task_type: str | None = None) -> Path:
    """Quality against one cost (``params``, ``runtime``, ``energy``): every completed run by
    method, the front as a step line, the incumbent starred. Quality is the task kind's primary
    metric as logged (a loss axis says lower is better)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    col, label, log_x = COST_VIEWS[cost]
    kind = _kind(task_type)
    metric = kind.primary_metric
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ok = board[board["status"].eq("completed") & board[metric].notna() & board[col].notna()] if len(board) else board
    if len(ok):
        for method, g in ok.groupby(ok["ft_method"].astype(str)):
            ax.scatter(g[col], g[metric], alpha=0.6, label=method)
        front = ok[ok[f"pareto_{cost}"]].sort_values(col)
        ax.step(front[col], front[metric], where="post", color="black", linewidth=1.2)
        ax.scatter(front[col], front[metric], s=90, facecolors="none", edgecolors="black", linewidths=1.5,
                   label=f"Pareto front ({len(front)})")
        inc = ok[ok["incumbent"]]
        if len(inc):
            ax.scatter(inc[col], inc[metric], marker="*", s=220, color="gold", edgecolors="black", zorder=5,
                       label="incumbent")
        if log_x and (ok[col] > 0).all():
            ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, f"no completed run with a known {cost}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(label)
    ax.set_ylabel(f"quality: {kind.metric_label} (validation"
                  + (")" if kind.greater_is_better else ", lower is better)"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right" if kind.greater_is_better else "upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def best_config_snippet(config: dict[str, Any], space: SearchSpace, data: str | None, text_column: str,
                        label_column: str, quality: float | None, search_id: str) -> str:
    """A standalone training script for the best config (plain transformers/peft + XLogCallback)."""
    name = config["model_name"]
    spec = space.model_spec(name)
    method = config["ft_method"]
    lines = [
        f'"""Best configuration of xsearch search {search_id} (validation macro F1 {quality:.4f}).' if quality is not None
        else f'"""Best configuration of xsearch search {search_id}.',
        "",
        "Run: python best_config.py  (it trains on the same data and records the run with xlog).",
        '"""',
        "import numpy as np",
        "from sklearn.metrics import accuracy_score, f1_score",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments",
        "import datasets",
        "",
        "from xlog import XLogCallback",
        "from xsearch.data import load_task",
        "",
        f"CONFIG = {pprint.pformat(config, sort_dicts=False, width=100)}",
        "",
        f"task = load_task({data!r}, text_column={text_column!r}, label_column={label_column!r})",
    ]
    if name.startswith("tiny:"):
        lines += ["from xsearch.worker import build_model  # tiny models are built from a config",
                  "model, tok = build_model(CONFIG, {}, len(task.labels), task.train['text'].tolist())"]
    else:
        if spec.get("package"):
            lines += [f"import {spec['package']}", f"MODEL = {spec['package']}.get_model_path()  # {name}"]
        elif spec.get("path"):
            lines += [f"MODEL = {spec['path']!r}  # {name}"]
        else:
            lines += [f"MODEL = {name!r}"]
        from .space import resolve_model_path
        from .worker import sentence_pooling
        pooling = sentence_pooling(name, resolve_model_path(name, spec), spec)
        lines += ["tok = AutoTokenizer.from_pretrained(MODEL)"]
        if pooling is not None:  # a sentence-embedding model: the head the search trained it with
            lines += ["from xsearch.worker import MeanPoolingForSequenceClassification  # encoder + "
                      f"{pooling} pooling + linear",
                      "model = MeanPoolingForSequenceClassification.from_encoder(MODEL, num_labels=len(task.labels), "
                      f"pooling={pooling!r})"]
        else:
            lines += ["model = AutoModelForSequenceClassification.from_pretrained(MODEL, num_labels=len(task.labels))"]
    if method == "lora" and not any(config.get(k) is not None for k in STRUCTURE_COLUMNS):
        targets = spec.get("lora_target_modules")
        lines += ["from peft import LoraConfig, TaskType, get_peft_model",
                  f"model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r={config['peft_lora_r']}, "
                  f"lora_alpha={config.get('peft_lora_alpha') or 2 * int(config['peft_lora_r'])}, "
                  f"lora_dropout={config.get('peft_lora_dropout') or 0.0}, target_modules={list(targets) if targets else None}))"]
    elif method == "partial":
        lines += ["from xsearch.worker import apply_method  # freeze all but the top layers + classifier",
                  "model = apply_method(model, CONFIG, {}, {})"]
    elif method != "full":  # other PEFT types and searched structures (layers, module kinds, ranks)
        lines += ["from xsearch.worker import apply_method",
                  f"model = apply_method(model, CONFIG, {spec!r}, {space.methods.get(method, {})!r})"]
    lines += [
        "",
        "def tokenize(batch):",
        "    return tok(batch['text'], truncation=True, max_length=CONFIG['train_max_seq_length'])",
        "",
        "train = datasets.Dataset.from_pandas(task.train).map(tokenize, batched=True)",
        "evaluation = datasets.Dataset.from_pandas(task.eval).map(tokenize, batched=True)",
        "",
        "def metrics(p):",
        "    preds = np.argmax(p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions, axis=-1)",
        "    return {'accuracy': accuracy_score(p.label_ids, preds), 'f1': f1_score(p.label_ids, preds, average='macro')}",
        "",
        *_training_arguments(")"),
        "trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=tok,",
        "                  data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics,",
        "                  callbacks=[XLogCallback(model_name=CONFIG['model_name'],",
        "                                          max_seq_length=CONFIG['train_max_seq_length'], primary_metric='eval_f1')])",
        "trainer.train()",
        "print(trainer.evaluate())",
        "",
    ]
    return "\n".join(lines)


def _training_arguments(close: str, *more: str) -> list[str]:
    """The lines of a best_config.py script that build TrainingArguments from CONFIG, as the
    search's worker does; ``close`` ends the last shared line, ``more`` lines follow it."""
    return ["args = TrainingArguments(",
            "    output_dir='best-config-run', report_to=[], save_strategy='no', eval_strategy='epoch',",
            "    learning_rate=CONFIG['train_learning_rate'], num_train_epochs=CONFIG['train_epochs'],",
            "    per_device_train_batch_size=CONFIG['train_batch_size'],",
            "    warmup_steps=CONFIG.get('train_warmup_ratio') or 0.0,  # a ratio when < 1",
            "    weight_decay=CONFIG.get('train_weight_decay') or 0.0,",
            "    lr_scheduler_type=CONFIG.get('train_lr_scheduler') or 'linear'" + close, *more]


def generative_snippet(config: dict[str, Any], space: SearchSpace, data: str | None, columns: dict[str, str],
                       value: float | None, search_id: str, seed: int = 0) -> str:
    """A standalone training script for the best config of a question-answering or causal-LM
    search: the task kind's data, model, method, examples and Trainer, plus XLogCallback."""
    kind = _kind(space)
    name = config["model_name"]
    method = config["ft_method"]
    head = (f'"""Best configuration of xsearch search {search_id} (validation {kind.metric_label} {value:.4f}).'
            if value is not None else f'"""Best configuration of xsearch search {search_id}.')
    lines = [
        head,
        "",
        f"Run: python best_config.py  (it fine-tunes the {kind.name} model on the same data, evaluates it",
        "as the search did, and records the run with xlog).",
        '"""',
        "from transformers import TrainingArguments, set_seed",
        "",
        "from xlog import XLogCallback",
        "from xsearch.tasks import get_task_kind",
        "",
        f"SEED = {int(seed)}  # the search's: the same split, initialisation and data order",
        "set_seed(SEED)",
        "",
        f"CONFIG = {pprint.pformat(config, sort_dicts=False, width=100)}",
        f"MODEL_SPEC = {space.model_spec(name)!r}  # how {name} is loaded",
        f"METHOD_SPEC = {space.methods.get(str(method), {})!r}",
        f"TASK_OPTIONS = {dict(space.task_options)!r}",
        "",
        f"kind = get_task_kind({kind.name!r})  # {kind.primary_metric}, "
        + ("higher is better" if kind.greater_is_better else "lower is better"),
        f"task = kind.load({data!r}, {dict(columns)!r}, seed=SEED)",
        "model, tok = kind.build_model(CONFIG, MODEL_SPEC, task)",
        "model = kind.apply_method(model, CONFIG, MODEL_SPEC, METHOD_SPEC)",
        "train, evaluation = kind.datasets(task, tok, CONFIG)",
        "",
        *_training_arguments(", seed=SEED,", "    **kind.training_arguments(CONFIG))"),
        "callback = XLogCallback(task_name=task.name, model_name=CONFIG['model_name'],",
        "                        max_seq_length=CONFIG['train_max_seq_length'], **kind.callback_kwargs(task))",
        "trainer = kind.trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, tokenizer=tok,",
        "                       callbacks=[callback], task=task, cfg=CONFIG, options=TASK_OPTIONS)",
        "trainer.train()",
        "print(trainer.evaluate())",
        "",
    ]
    return "\n".join(lines)


def write_reports(result: "SearchResult", space: SearchSpace, out_dir: Path, data: str | None = None,
                  text_column: str = "text", label_column: str = "label", extra: dict[str, Any] | None = None,
                  columns: dict[str, str] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write every output file; returns their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = _kind(space)
    board = leaderboard(result, kind.name)
    paths: dict[str, Path] = {}
    paths["leaderboard"] = out_dir / LEADERBOARD
    board.to_csv(paths["leaderboard"], index=False)
    front = board[board["pareto"]] if len(board) else board
    paths["pareto_csv"] = out_dir / PARETO_CSV
    front.to_csv(paths["pareto_csv"], index=False)
    paths["pareto_png"] = plot_pareto(board, out_dir / PARETO_PNG,
                                      f"search {result.search_id}: {len(board)} evaluations", kind.name)
    for cost, (col, _, _) in COST_VIEWS.items():
        sub = board[board[f"pareto_{cost}"]].sort_values(col) if len(board) else board
        paths[f"pareto_{cost}_csv"] = out_dir / f"pareto_{cost}.csv"
        sub.to_csv(paths[f"pareto_{cost}_csv"], index=False)
        paths[f"pareto_{cost}_png"] = plot_front(board, cost, out_dir / f"pareto_{cost}.png",
                                                 f"search {result.search_id}: quality vs {cost}", kind.name)
    best = result.incumbent
    if best is not None:
        paths["best_config"] = out_dir / BEST_CONFIG
        if kind.name == "text-classification":
            text = best_config_snippet(best.config, space, data, text_column, label_column, best.quality,
                                       result.search_id)
        else:
            text = generative_snippet(best.config, space, data, dict(columns or {}), kind.unsigned(best.quality),
                                      result.search_id, seed)
        paths["best_config"].write_text(text, encoding="utf-8")
    summary = summary_dict(result, kind.name)
    summary.update(extra or {})
    paths["summary"] = out_dir / SUMMARY
    paths["summary"].write_text(json.dumps(summary, indent=1, default=str), encoding="utf-8")
    return paths


def summary_dict(result: "SearchResult", task_type: str | None = None) -> dict[str, Any]:
    kind = _kind(task_type)
    best = result.incumbent
    value = kind.unsigned(best.quality) if best else None
    statuses: dict[str, int] = {}
    for o in result.outcomes:
        statuses[o.status] = statuses.get(o.status, 0) + 1
    return {
        "search_id": result.search_id, "task_type": kind.name, "primary_metric": kind.primary_metric,
        "greater_is_better": kind.greater_is_better, "best_value": value,
        "best_f1": value if kind.primary_metric == "eval_f1" else None,
        "best_config": best.config if best else None, "best_record_id": best.record_id if best else None,
        "evaluations": len(result.evaluations), "statuses": statuses, "failures": result.n_failed,
        "pruned": sum(1 for o in result.outcomes if o.status == "pruned"),
        "skipped": dict(result.skipped), "skipped_total": int(sum(result.skipped.values())),
        "generations": result.generations, "budget_s": result.budget_s, "used_s": round(result.used_s, 1),
        "used_kwh": result.used_kwh, "stop_reason": result.stop_reason,
        "workers": getattr(result, "workers", 1), "compute_s": round(getattr(result, "compute_s", 0.0), 1),
        "gpu_s": round(getattr(result, "gpu_s", 0.0), 1),
        "pareto_size": len(result.pareto()),
        "objective": getattr(result, "objective", "quality"),
        "knee_tolerance": getattr(result, "knee_tolerance", None),
        "best_trainable_params": getattr(best, "trainable_params", None) if best else None,
        "fronts": {cost: [{kind.primary_metric: kind.unsigned(o.quality), COST_VIEWS[cost][0]: _cost_value(o, cost),
                           "config": o.config, "record_id": o.record_id} for o in result.front(cost)]
                   for cost in COST_VIEWS},
    }


def _cost_value(o: Any, cost: str) -> float | None:
    from .search import cost_of
    return cost_of(o, cost)
