"""``xsearch estimators``: fit, save and honestly evaluate the estimators on the store."""
from __future__ import annotations

import json
from pathlib import Path

import click


def register(main: click.Group) -> None:
    @main.command("estimators")
    @click.option("--home", envvar="XLOG_HOME", type=click.Path(file_okay=False), default=None,
                  help="Store root (default: $XLOG_HOME or ~/.cache/xlog).")
    @click.option("--report", is_flag=True, help="Grouped cross-validation: hold out whole tasks and whole models.")
    @click.option("--group-by", type=click.Choice(["task_name", "model_name", "both"]), default="both",
                  show_default=True, help="What the report holds out.")
    @click.option("--splits", type=click.IntRange(0), default=5, show_default=True,
                  help="Folds of the report; 0: one fold per group (leave one task / model out).")
    @click.option("--quality-target", type=click.Choice(["rank", "zscore", "absolute"]), default="rank",
                  show_default=True, help="How quality is made relative within a task (see docs/estimators.md).")
    @click.option("--quality-metric", default=None, metavar="FAMILY",
                  help="Metric family quality is learned on (e.g. f1, loss; default: the most common). "
                       "One family only: an F1 and a loss are never mixed.")
    @click.option("--summary", is_flag=True, help="Report only the summary tables, not every held-out group.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @click.option("--report-out", type=click.Path(dir_okay=False), default=None, help="Also write the report JSON here.")
    @click.option("--fit", "do_fit", is_flag=True, help="Fit on the whole store and save.")
    @click.option("--out", type=click.Path(dir_okay=False), default=None,
                  help="Where --fit saves (default: HOME/estimators/estimators.joblib; a .json sidecar goes beside it).")
    def estimators_cmd(home: str | None, report: bool, group_by: str, splits: int, quality_target: str,
                       quality_metric: str | None, summary: bool, as_json: bool, report_out: str | None, do_fit: bool, out: str | None) -> None:
        """Quality, cost and failure estimators learned from the experience store.

        Without --report or --fit, shows how many records each estimator can learn from. The
        report gives every figure per held-out group and pooled, beside baselines (per-model
        rate or mean, a plain linear model, the mean).
        """
        if splits == 1:
            raise click.BadParameter("use 0 (one fold per group) or at least 2", param_hint="--splits")
        from xsearch.estimator_report import format_report, grouped_cv_report
        from xsearch.estimators import Estimators, MixedMetricFamilies, default_path, load_experiences, quality_family
        try:
            quality_family(quality_metric)
        except MixedMetricFamilies as exc:
            raise click.BadParameter(str(exc), param_hint="--quality-metric") from None
        exp = load_experiences(home)
        if not report and not do_fit:
            est = Estimators(quality_target=quality_target, quality_metric=quality_metric)
            counts = est.usable_rows(exp)
            click.echo(f"{len(exp)} records; usable rows per estimator (at least {est.min_rows} needed):")
            for name, n in counts.items():
                click.echo(f"  {name:<14} {n}")
            click.echo("Run with --report for held-out figures, --fit to fit and save.")
            return
        if report:
            reports = []
            for g in (["task_name", "model_name"] if group_by == "both" else [group_by]):
                try:
                    reports.append(grouped_cv_report(exp, group_by=g, n_splits=splits, quality_target=quality_target,
                                                     quality_metric=quality_metric))
                except ValueError as exc:
                    raise click.ClickException(f"cannot evaluate the estimators: {exc}") from exc
            if report_out:
                Path(report_out).parent.mkdir(parents=True, exist_ok=True)
                Path(report_out).write_text(json.dumps(reports, indent=1) + "\n", encoding="utf-8")
            if as_json:
                click.echo(json.dumps(reports, indent=1))
            else:
                click.echo("\n\n".join(format_report(r, per_group=not summary) for r in reports))
        if do_fit:
            est = Estimators(quality_target=quality_target, quality_metric=quality_metric).fit(exp)
            if not est.is_fitted:
                raise click.ClickException(f"too little experience to fit anything ({len(exp)} records; "
                                           f"each estimator needs {est.min_rows} usable rows)")
            path = est.save(out or default_path(home))
            msg = f"fitted {', '.join(est.fitted_targets)} on {len(exp)} records -> {path}"
            click.echo(msg, err=as_json)
