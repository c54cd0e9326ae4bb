"""``xlog import``: bring existing experience (AutoGOAL/XAutoLM stores, CSV/JSON-lines logs)
into the local store."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .importers import ImportSummary
from .store import LocalStore


def _report(summary: ImportSummary, as_json: bool, verbose: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        for p in summary.invalid:
            click.echo(f"skipped {p}", err=True)
        if verbose:
            for p in summary.warnings:
                click.echo(f"warning {p}", err=True)
        elif summary.warnings:
            click.echo(f"{len(summary.warnings)} warning(s); --verbose lists them", err=True)
        click.echo(summary.line())


def register(main: click.Group) -> None:
    @main.group("import")
    def import_group() -> None:
        """Import experience from other stores and logs into the local store."""

    @import_group.command("autogoal")
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    @click.option("--task-name-from-alias/--no-task-name-from-alias", default=True, show_default=True,
                  help="Use the record's AutoGOAL alias (the dataset name) as task_name.")
    @click.option("--dry-run", is_flag=True, help="Read and convert everything, write nothing.")
    @click.option("--timezone", "timezone_name", default="UTC", show_default=True,
                  help="Time zone of AutoGOAL's zone-less timestamps (the machine's local time), e.g. Europe/Madrid.")
    @click.option("--keep-twins", is_flag=True,
                  help="Also import the no-score twin AutoGOAL logs right after each failed evaluation.")
    @click.option("--contributor", envvar="XLOG_CONTRIBUTOR", default=None,
                  help="Public name for the imported records (default: $XLOG_CONTRIBUTOR or anonymous).")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.option("-v", "--verbose", is_flag=True, help="List warnings (e.g. unmapped system features).")
    @click.pass_obj
    def autogoal_cmd(store: LocalStore, path: Path, task_name_from_alias: bool, dry_run: bool,
                     timezone_name: str, keep_twins: bool, contributor: str | None, as_json: bool,
                     verbose: bool) -> None:
        """Import an AutoGOAL / XAutoLM experience store (a folder of JSON records, or one file).

        Failed evaluations (CUDA OOM, timeouts, errors, no score) are imported as failure records.
        Re-importing the same store adds nothing."""
        from .importers.autogoal import import_autogoal
        try:
            summary = import_autogoal(path, store, task_name_from_alias=task_name_from_alias, dry_run=dry_run,
                                      timezone_name=timezone_name, contributor=contributor, keep_twins=keep_twins)
        except (FileNotFoundError, ValueError) as exc:   # ZoneInfo errors are ValueErrors
            raise click.ClickException(str(exc))
        _report(summary, as_json, verbose)
        if summary.invalid and not summary.imported and not summary.already_present:
            sys.exit(1)

    @import_group.command("table")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("--map", "maps", multiple=True, metavar="COLUMN=FIELD",
                  help="Source column -> schema field (or outcome_metrics.NAME); repeat for each column.")
    @click.option("--set", "sets", multiple=True, metavar="FIELD=VALUE",
                  help="A value for every row, e.g. --set status=completed --set task_type=text-classification.")
    @click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "jsonl"]), default=None,
                  help="File format (default: from the extension; .json/.ndjson read as JSON lines).")
    @click.option("--timezone", "timezone_name", default="UTC", show_default=True,
                  help="Time zone of date-times written without one.")
    @click.option("--dry-run", is_flag=True, help="Read and convert everything, write nothing.")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.option("-v", "--verbose", is_flag=True, help="List warnings (e.g. columns not imported).")
    @click.pass_obj
    def table_cmd(store: LocalStore, file: Path, maps: tuple[str, ...], sets: tuple[str, ...], fmt: str | None,
                  timezone_name: str, dry_run: bool, as_json: bool, verbose: bool) -> None:
        """Import a CSV/TSV/JSON-lines log of runs, one run per row.

        Example: xlog import table runs.csv --map model=model_name --map f1=outcome_metrics.f1
        --map when=created_at --set status=completed --set outcome_primary_metric=f1"""
        from .importers.table import TableImportError, import_table, parse_assignments
        try:
            mapping = parse_assignments(maps, "--map")
            constants = parse_assignments(sets, "--set")
            summary = import_table(file, mapping, store, constants=constants, fmt=fmt, dry_run=dry_run,
                                   timezone_name=timezone_name)
        except (TableImportError, ValueError, OSError) as exc:
            raise click.ClickException(str(exc))
        _report(summary, as_json, verbose)
        if summary.invalid and not summary.imported and not summary.already_present:
            sys.exit(1)
