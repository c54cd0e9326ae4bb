"""``xsearch run``: the budget-aware search from the command line, with a live progress view."""
from __future__ import annotations

import math
import re
import time
from typing import Any

import click

_DURATION_RE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*(s|sec|m|min|h)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """'300', '300s', '5m', '1.5h' -> seconds."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 300s, 5m, 1h)")
    value, unit = float(m.group(1)), (m.group(2) or "s").lower()
    return value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[unit]


def _positive_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A duration option that must be more than zero (a zero budget is no budget, not a default)."""
    if value is None:
        return None
    seconds = parse_duration(value)
    if not seconds > 0:
        raise click.BadParameter(f"{value!r}: must be more than 0 (e.g. 300s, 5m, 1h)")
    return seconds


def _positive_number(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value:g}: must be a number more than 0")
    return value


def _fmt_cfg(cfg: dict[str, Any]) -> str:
    method = cfg.get("ft_method")
    parts = [str(method)]
    if method == "lora":
        parts.append(f"r={cfg.get('peft_lora_r')}")
    for key, short in (("peft_layer_pattern", ""), ("peft_module_kinds", ""), ("peft_rank_ffn", "r_ffn="),
                       ("peft_num_virtual_tokens", "tokens=")):
        if cfg.get(key) is not None:
            parts.append(f"{short}{cfg[key]}")
    parts += [flag for flag, key in (("dora", "peft_use_dora"), ("rslora", "peft_use_rslora")) if cfg.get(key)]
    if method == "partial":
        parts.append(f"top{cfg.get('ft_trainable_layers')}")
    parts += [f"lr={cfg.get('train_learning_rate'):g}", f"ep={cfg.get('train_epochs')}",
              f"bs={cfg.get('train_batch_size')}", f"len={cfg.get('train_max_seq_length')}"]
    model = str(cfg.get("model_name", "")).split("/")[-1]
    return f"{model} " + " ".join(parts)


def _parse_columns(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``--column answer=answer_text`` (repeatable) -> {"answer": "answer_text"}."""
    out: dict[str, str] = {}
    for v in values:
        role, sep, name = v.partition("=")
        if not sep or not role.strip() or not name.strip():
            raise click.BadParameter(f"{v!r}: expected ROLE=COLUMN, e.g. answer=answer_text")
        out[role.strip().lower()] = name.strip()
    return out


class ProgressView:
    """A rich live view: generation, incumbent, evaluations, skipped candidates, budget left."""

    def __init__(self, console: Any, task_type: str | None = None) -> None:
        from .tasks import get_task_kind
        self.kind = get_task_kind(task_type)
        self.console = console
        self.search: Any = None
        self.budget_s = 0.0
        self.current: str | None = None
        self.current_t0 = 0.0
        self.lines: list[str] = []
        self.live: Any = None

    def __rich__(self) -> Any:
        from rich.panel import Panel
        from rich.table import Table
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        s = self.search
        if s is not None:
            used = s.used_s
            left = max(self.budget_s - used, 0.0)
            inc = s.search.incumbent if hasattr(s, "search") else None
            t.add_row("generation", str(s.generation))
            t.add_row("evaluations", f"{len(s.evaluations)}  (failed {sum(1 for e in s.evaluations if e.outcome.status in ('failed', 'oom', 'timeout'))}, "
                      f"pruned {sum(1 for e in s.evaluations if e.outcome.status == 'pruned')})")
            t.add_row("skipped", ", ".join(f"{k}={v}" for k, v in s.skipped.items()) or "0")
            t.add_row("incumbent", f"{self.kind.format_metric(inc.quality)}  {_fmt_cfg(inc.config)}" if inc else "-")
            t.add_row("budget", f"{used:,.0f} s used, {left:,.0f} s left of {self.budget_s:,.0f} s"
                      + (f"; {s.used_kwh:.5f} kWh" if s.used_kwh else ""))
            if self.current:
                t.add_row("running", f"{self.current}  ({time.monotonic() - self.current_t0:.0f} s)")
        for ln in self.lines[-8:]:
            t.add_row("", ln)
        return Panel(t, title="xsearch run", border_style="cyan")

    def event(self, kind: str, info: dict[str, Any]) -> None:
        if "search" in info:
            self.search = info["search"]
        if kind == "status":
            self.console.print(f"[dim]{info['message']}[/dim]")
        elif kind == "begin":
            from .tasks import get_task_kind
            self.kind = get_task_kind(info.get("task_type"))
            self.budget_s = info["budget_s"]
            warm = "warm-started from " + ", ".join(str(s.get("task_name", s) if isinstance(s, dict) else s) for s in info["similar_tasks"][:5]) \
                if info["warm_started"] else "zero-shot (no similar past tasks)"
            self.console.print(f"search [bold]{info['search_id']}[/bold]: {warm}")
        elif kind == "start":
            self.current, self.current_t0 = _fmt_cfg(info["config"]), time.monotonic()
        elif kind == "evaluated":
            ev = info["evaluation"]
            o = ev.outcome
            q = self.kind.format_metric(o.quality) if o.quality is not None else o.status
            if o.status == "pruned":  # stopped early: its value is the partial one at the stop
                q = f"pruned at {o.stopped_at or 0:.0%}" + (f" ({q})" if o.quality is not None else "")
            src = " (from the journal)" if o.from_journal else f" in {o.wall_s:.0f} s"
            self.lines.append(f"[{'green' if o.ok else 'red'}]{q}[/]{src}  {_fmt_cfg(o.config)}")
            self.current = None
        elif kind == "skipped":
            self.lines.append(f"[yellow]skipped[/] ({info['reason']})  {_fmt_cfg(info['config'])}")
        if self.live is not None:
            self.live.refresh()


def register(main: click.Group) -> None:
    @main.command("run")
    @click.option("--data", type=click.Path(exists=True), default=None,
                  help="CSV/TSV/JSON/JSONL/Parquet file or a datasets directory (default: the shipped "
                       "examples/data/sms_spam_600.parquet).")
    @click.option("--task", "task", default=None, metavar="KIND",
                  type=click.Choice(["text-classification", "question-answering", "causal-lm"]),
                  help="Task kind: text-classification (default), question-answering (columns context, "
                       "question, answer; or question/answer), causal-lm (prompt/response, or text). Picks "
                       "the kind's default space; with --space, it must match the space's task_type.")
    @click.option("--text-column", default="text", show_default=True)
    @click.option("--label-column", default="label", show_default=True)
    @click.option("--column", "columns", multiple=True, metavar="ROLE=COLUMN", callback=_parse_columns,
                  help="Name the column of a role (repeatable): context, question, answer, prompt, response, "
                       "text, label; e.g. --column answer=answer_text.")
    @click.option("--budget", default="5m", show_default=True, callback=_positive_duration,
                  help="Wall-time budget, more than 0 (e.g. 300s, 5m, 1h).")
    @click.option("--energy-budget", type=float, default=None, callback=_positive_number,
                  help="Energy budget in kWh (more than 0).")
    @click.option("--max-evals", type=click.IntRange(1), default=None, help="Maximum number of evaluations.")
    @click.option("--space", "space_path", type=click.Path(exists=True, dir_okay=False), default=None,
                  help="Search space file (YAML/JSON; default: the shipped space of the --task kind).")
    @click.option("--out", "out_dir", default="xsearch-out", show_default=True, type=click.Path(file_okay=False),
                  help="Folder for leaderboard.csv, pareto.csv, pareto.png, best_config.py.")
    @click.option("--resume", default=None, metavar="SEARCH_ID", help="Continue a search from its records.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--home", envvar="XLOG_HOME", type=click.Path(file_okay=False), default=None,
                  help="Store root (default: $XLOG_HOME or ~/.cache/xlog).")
    @click.option("--memory-limit", type=float, default=None, metavar="GB", callback=_positive_number,
                  help="Memory cap per candidate (address space on CPU, GPU memory on CUDA).")
    @click.option("--population", type=click.IntRange(1), default=4, show_default=True, help="Candidates per generation.")
    @click.option("--max-train", type=click.IntRange(2), default=None,
                  help="Cap on training rows (stratified for classification).")
    @click.option("--max-eval", type=click.IntRange(1), default=None,
                  help="Cap on validation rows (stratified for classification).")
    @click.option("--max-candidate-time", default=None, callback=_positive_duration,
                  help="Time limit per candidate, more than 0 (default: half the budget).")
    @click.option("--zero-shot", is_flag=True, help="Ignore past experience: uniform start, no estimators.")
    @click.option("--no-energy", is_flag=True, help="Do not meter energy (saves codecarbon's start-up per candidate).")
    @click.option("--plain", is_flag=True, help="Plain line output instead of the live view.")
    @click.option("--exclude-source", "exclude_sources", multiple=True, metavar="PATTERN",
                  help="Do not learn from the records of matching sources (repeatable; as `xsearch sql "
                       "--exclude-source`: a glob on a pulled file's path or on its remote, a commit prefix, "
                       "pr:N). [default on --resume: as recorded]")
    @click.option("--executor", type=click.Choice(["local", "ray", "slurm"]), default=None,
                  help="Where candidates run: local processes, a Ray cluster, SLURM jobs (submitit). "
                       "[default: local; on --resume: as recorded]")
    @click.option("--workers", type=click.IntRange(1), default=None,
                  help="Candidates in flight at once. [default: 1; on --resume: as recorded]")
    @click.option("--gpus-per-candidate", type=click.FloatRange(0), default=None,
                  help="GPUs per candidate (default: 1 for local workers and Ray tasks where there are "
                       "GPUs, 0 for SLURM jobs unless given).")
    @click.option("--cpus-per-candidate", type=click.FloatRange(0, min_open=True), default=None,
                  help="CPUs reserved per candidate (Ray, SLURM). [default: 1; on --resume: as recorded]")
    @click.option("--ray-address", default=None, metavar="ADDRESS",
                  help="Ray cluster: auto or ray://host:port (default: start a local cluster for the run).")
    @click.option("--slurm-partition", default=None, help="SLURM partition of the candidates' jobs.")
    @click.option("--objective", type=click.Choice(["quality", "quality-vs-params", "quality-vs-runtime",
                                                    "quality-vs-energy"]), default=None,
                  help="What the incumbent (best_config.py) is: the best quality (default), or on the quality-vs-"
                       "cost front the cheapest run within 0.01 of the best quality; fronts for all three costs "
                       "are written either way (pareto_params/runtime/energy.csv and .png).")
    @click.option("--no-early-stop", is_flag=True,
                  help="Run every candidate to its end: no evaluations within epochs, no pruning of candidates "
                       "whose learning curve cannot beat the best (recorded in the manifest).")
    def run_cmd(data: str | None, task: str | None, text_column: str, label_column: str, columns: dict[str, str],
                budget: float, energy_budget: float | None,
                max_evals: int | None, space_path: str | None, out_dir: str, resume: str | None, seed: int,
                home: str | None, memory_limit: float | None, population: int, max_train: int | None,
                max_eval: int | None,
                max_candidate_time: float | None, zero_shot: bool, no_energy: bool, plain: bool, executor: str | None,
                workers: int | None, gpus_per_candidate: float | None, cpus_per_candidate: float | None,
                ray_address: str | None, slurm_partition: str | None, objective: str | None,
                no_early_stop: bool, exclude_sources: tuple[str, ...]) -> None:
        """Search model x fine-tuning method x hyperparameters for a text-classification,
        question-answering or causal-LM task within a budget; every candidate is a real
        fine-tuning recorded in the store."""
        from rich.console import Console
        from rich.live import Live

        from .data import DataError
        from .errors import XSearchError
        from .evaluator import EvaluatorError
        from .space import SpaceError
        from .runner import run_search
        budget_given = click.get_current_context().get_parameter_source("budget") != click.core.ParameterSource.DEFAULT
        budget_s = budget  # seconds, checked > 0 by _positive_duration
        cand_s = max_candidate_time if max_candidate_time is not None else (None if resume else budget_s / 2)
        console = Console(stderr=False)
        view = ProgressView(console, task)
        if plain or not console.is_terminal:
            def on_event(kind: str, info: dict[str, Any]) -> None:
                view.event(kind, info)
                if kind in ("evaluated", "skipped"):
                    console.print(view.lines[-1])
            live = None
        else:
            live = Live(view, console=console, refresh_per_second=2, transient=False)
            view.live = live
            on_event = view.event
        try:
            if live is not None:
                live.start()
            result, paths = run_search(
                data=data, text_column=text_column, label_column=label_column, task=task, columns=columns or None,
                budget_s=budget_s if (not resume or budget_given) else None,
                energy_budget_kwh=energy_budget, max_evals=max_evals, space_path=space_path, out_dir=out_dir,
                resume=resume, seed=seed, store_root=home, memory_limit_gb=memory_limit, population=population,
                max_train=max_train, max_eval=max_eval, warm=not zero_shot, use_estimators=not zero_shot, energy=not no_energy,
                max_candidate_s=cand_s, on_event=on_event, executor=executor, workers=workers,
                gpus_per_candidate=gpus_per_candidate, cpus_per_candidate=cpus_per_candidate,
                ray_address=ray_address, slurm_partition=slurm_partition, objective=objective,
                early_stop=not no_early_stop, exclude_sources=list(exclude_sources) or None)
        except (DataError, SpaceError, EvaluatorError, FileNotFoundError, XSearchError) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            if live is not None:
                live.stop()
        best = result.incumbent
        console.print(f"\nsearch [bold]{result.search_id}[/bold] stopped: {result.stop_reason}; "
                      f"{len(result.evaluations)} evaluations ({result.n_failed} failed"
                      + (f", {result.n_pruned} pruned early" if result.n_pruned else "") + "), "
                      f"{sum(result.skipped.values())} skipped, {result.used_s:.0f} s of {result.budget_s:.0f} s used"
                      + (f" ({result.compute_s:.0f} s of compute on {result.workers} workers)" if result.workers > 1 else ""))
        if best is not None:
            params = getattr(best, "trainable_params", None)
            console.print(f"best: {view.kind.format_metric(best.quality)}"
                          + (f" (objective {result.objective})" if result.objective != "quality" else "")
                          + (f", {params:,.0f} trainable parameters" if params is not None else "")
                          + f"  {_fmt_cfg(best.config)}  (record {best.record_id})")
        else:
            console.print("no candidate completed")
        for name, p in paths.items():
            console.print(f"  {name}: {p}")
        console.print(f"resume with: xsearch run --resume {result.search_id}")
