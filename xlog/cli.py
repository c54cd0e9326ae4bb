"""The ``xlog`` command line."""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import pyarrow.parquet as pq

from . import __version__
from . import schema as S
from .store import LocalStore

LS_COLUMNS = [("record_id", 8), ("created_at", 16), ("status", 11), ("task_name", 18), ("model_name", 24),
              ("ft_method", 8), ("outcome_primary_metric", 14), ("outcome_primary_value", 7),
              ("outcome_total_runtime_s", 8), ("energy_kwh", 9)]


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _fmt(v: Any, width: int) -> str:
    if v is None:
        s = "-"
    elif isinstance(v, datetime):
        s = v.strftime("%Y-%m-%d %H:%M")
    elif isinstance(v, float):
        s = f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4g}"
    else:
        s = str(v)
    return s[:width].ljust(width)


def print_table(rows: list[dict], columns: list[tuple[str, int]], headers: dict[str, str] | None = None) -> None:
    headers = headers or {}
    click.echo("  ".join(_fmt(headers.get(c, c.replace("outcome_", "").replace("_", " ")), w) for c, w in columns))
    for r in rows:
        click.echo("  ".join(_fmt(r.get(c), w) for c, w in columns))


@click.group()
@click.version_option(__version__, prog_name="xlog")
@click.option("--home", envvar="XLOG_HOME", type=click.Path(file_okay=False), default=None,
              help="Store root (default: $XLOG_HOME or ~/.cache/xlog).")
@click.pass_context
def main(ctx: click.Context, home: str | None) -> None:
    """Capture fine-tuning runs as experience records and share them."""
    ctx.obj = LocalStore(home)
    close_orphans(ctx.obj)


def close_orphans(store: LocalStore) -> None:
    """Record the runs on this machine that were killed before they could close their record
    (``LocalStore.close_orphans``; cheap when there are none). Never stops the command."""
    try:
        closed = store.close_orphans()
    except Exception as exc:  # e.g. a store that cannot be listed: the command itself will say so
        click.echo(f"xlog: could not check for killed runs ({type(exc).__name__}: {exc})", err=True)
        return
    if closed:
        click.echo(f"xlog: recorded {len(closed)} run(s) that ended without closing their record "
                   f"(killed, e.g. out of memory): {', '.join(c[:8] for c in closed)}", err=True)


@main.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON lines (all fields).")
@click.option("--status", type=click.Choice(S.STATUSES), help="Only records with this status.")
@click.option("--task", "task_name", help="Only records of this task name.")
@click.option("--limit", type=int, default=None, help="Only the newest N records.")
@click.pass_obj
def ls_cmd(store: LocalStore, as_json: bool, status: str | None, task_name: str | None, limit: int | None) -> None:
    """List the records in the local store, oldest first."""
    rows = store.records()
    if status:
        rows = [r for r in rows if r["status"] == status]
    if task_name:
        rows = [r for r in rows if r.get("task_name") == task_name]
    if limit:
        rows = rows[-limit:]
    if as_json:
        for r in rows:
            click.echo(json.dumps(_jsonable(r), sort_keys=False))
        return
    if not rows:
        click.echo(f"no records in {store.records_dir}")
        return
    print_table(rows, LS_COLUMNS, {"record_id": "id", "outcome_primary_metric": "metric",
                                   "outcome_primary_value": "value", "outcome_total_runtime_s": "time s",
                                   "energy_kwh": "kWh"})
    click.echo(f"{len(rows)} record(s) in {store.records_dir}")


@main.command("show")
@click.argument("record_id")
@click.option("--json", "as_json", is_flag=True, help="Print as one JSON object.")
@click.pass_obj
def show_cmd(store: LocalStore, record_id: str, as_json: bool) -> None:
    """Show every field of one record (a unique id prefix is enough)."""
    try:
        rec = store.get(record_id)
    except KeyError as exc:
        raise click.ClickException(str(exc.args[0]))
    if rec is None:
        raise click.ClickException(f"no record {record_id!r} in {store.records_dir}")
    if as_json:
        click.echo(json.dumps(_jsonable(rec), indent=2))
        return
    units = {f.name: f.unit for f in S.fields()}
    group = None
    for f in S.fields():
        if f.group != group:
            group = f.group
            click.echo(click.style(f"[{group}]", bold=True))
        v = rec.get(f.name)
        if v is None:
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{k}={x:.4g}" for k, x in v.items())
        elif f.item_fields and isinstance(v, list):  # the learning curve: a summary (--json has every point)
            names = sorted({str(p.get("name")) for p in v})
            v = f"{len(v)} points up to step {max((p.get('step') or 0) for p in v)} ({', '.join(names)})"
        unit = f" {units[f.name]}" if units.get(f.name) and not isinstance(v, str) else ""
        click.echo(f"  {f.name:32s} {_jsonable(v)}{unit}")


def _validate_path(path: Path) -> list[str]:
    """Every problem of a record file: schema, bounds, string lengths and private data."""
    from .privacy import record_leaks, table_leaks
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return [f"cannot read JSON: {exc}"]
        recs = data if isinstance(data, list) else [data]
        if not all(isinstance(r, dict) for r in recs):
            return ["not a JSON record (an object) or a list of records"]
        return [f"record {i}: {p}" for i, r in enumerate(recs)
                for p in S.validate_record(r) + record_leaks(r)]
    try:
        table = pq.read_table(path)
    except Exception as exc:
        return [f"not a readable Parquet file ({type(exc).__name__}: {exc})"]
    return S.validate_table(table) + table_leaks(table)


@main.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def validate_cmd(paths: tuple[Path, ...]) -> None:
    """Check Parquet (or JSON) record files: schema, bounds, string lengths and private data
    (paths, e-mail addresses, tokens, user and host names); exits 1 if any is invalid."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(x for x in p.rglob("*") if x.suffix in (".parquet", ".json")) if p.is_dir() else [p])
    bad = 0
    for f in files:
        problems = _validate_path(f)
        if problems:
            bad += 1
            click.echo(f"INVALID {f}")
            for pr in problems:
                click.echo(f"  - {pr}")
        else:
            click.echo(f"ok      {f}")
    click.echo(f"{len(files) - bad} valid, {bad} invalid")
    if bad or not files:
        sys.exit(1)


@main.command("doctor")
def doctor_cmd() -> None:
    """Which hardware and energy backends work here, and why not."""
    from .hardware import doctor_report
    for name, ok, detail in doctor_report():
        mark = click.style("yes", fg="green") if ok else click.style("no ", fg="yellow")
        click.echo(f"{mark}  {name:26s} {detail}")
    store = LocalStore()
    click.echo(f"store: {store.root} ({len(store.files())} record files)")


@main.command("schema")
@click.option("--markdown", is_flag=True, help="Print the field table as Markdown (used for the README).")
def schema_cmd(markdown: bool) -> None:
    """Print the record schema (JSON Schema, or a Markdown field table)."""
    if not markdown:
        click.echo(json.dumps(S.load_json_schema(), indent=2))
        return
    click.echo(S.markdown_table())


# Commands that live in their own modules: publishing (push, pull) and importing.
from . import cli_import, cli_remote  # noqa: E402

cli_remote.register(main)
cli_remote.register_maintainer(main)
cli_import.register(main)


if __name__ == "__main__":
    main()
