"""``xsearch pull`` (mirror a remote) and ``xsearch sql`` (read-only SQL over the store)."""
from __future__ import annotations

import csv
import json
import sys
from datetime import date, datetime
from typing import Any

import click

_home_option = click.option("--home", envvar="XLOG_HOME", type=click.Path(file_okay=False), default=None,
                            help="Store root (default: $XLOG_HOME or ~/.cache/xlog).")


def _plain(v: Any) -> Any:
    if isinstance(v, (datetime, date)):
        return v.isoformat()
    if isinstance(v, list) and v and isinstance(v[0], tuple):  # DuckDB/Arrow maps
        return {k: _plain(x) for k, x in v}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _cell(v: Any, width: int = 40) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        s = f"{v:.6g}"
    elif isinstance(v, datetime):
        s = v.strftime("%Y-%m-%d %H:%M:%S")
    else:
        s = str(_plain(v))
    return s if len(s) <= width else s[:width - 1] + "…"


def print_text_table(columns: list[str], rows: list[dict], max_rows: int) -> None:
    shown = rows[:max_rows]
    cells = [[_cell(r[c]) for c in columns] for r in shown]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    more = f" (showing {max_rows}; use --limit or --csv for all)" if len(rows) > max_rows else ""
    click.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''}){more}")


def register(main: click.Group) -> None:
    @main.command("pull")
    @click.option("--remote", "remote_spec", default=None, metavar="REMOTE",
                  help="A Hub dataset (OWNER/NAME, hf://datasets/OWNER/NAME or its https://huggingface.co URL) "
                       "or a directory (./PATH, /PATH, dir:PATH); default $XLOG_REMOTE.")
    @_home_option
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
    def pull_cmd(remote_spec: str | None, home: str | None, quiet: bool) -> None:
        """Mirror a shared store into $XLOG_HOME/remotes/ (incremental; bad files quarantined)."""
        from xlog.cli_remote import run_pull
        from xlog.store import LocalStore
        run_pull(LocalStore(home), remote_spec, quiet)

    @main.command("sql")
    @click.argument("sql")
    @_home_option
    @click.option("--json", "as_json", is_flag=True, help="Print a JSON array of row objects.")
    @click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header row.")
    @click.option("--limit", type=int, default=50, show_default=True, help="Rows shown in the text table.")
    @click.option("--timeout", "timeout_s", type=click.FloatRange(0, min_open=True), default=30.0,
                  show_default=True, metavar="SECONDS", help="Stop the query after this long.")
    @click.option("--memory-limit", default="1GB", show_default=True, metavar="SIZE",
                  help="Most memory DuckDB may use for the query (e.g. 512MB, 4GB); nothing spills to disk.")
    @click.option("--exclude-source", "exclude_sources", multiple=True, metavar="PATTERN",
                  help="Leave out the records of matching sources (repeatable): a glob on the file's path "
                       "on the remote (data/v1/2025-01/*) or on the remote (local, file:///mnt/*), a commit id "
                       "prefix (7+ characters), or pr:N. Another copy of a record can then stand.")
    def sql_cmd(sql: str, home: str | None, as_json: bool, as_csv: bool, limit: int, timeout_s: float,
                memory_limit: str, exclude_sources: tuple[str, ...]) -> None:
        """Run a read-only SQL query over the local store and everything pulled.

        Views: experiences (one row per run, with its provenance: source_remote, source_file,
        source_commit, source_pr, source_date), completed_runs, task_best, failures_by_cause,
        failure_rates_by_model, pareto_time, pareto_energy, provenance, sources, conflicts. One
        SELECT (or WITH ... SELECT, or EXPLAIN [ANALYZE] of one) is accepted; DuckDB may only read
        the store's record files.
        """
        from xsearch import db
        if as_json and as_csv:
            raise click.UsageError("--json and --csv exclude each other")
        try:
            if exclude_sources:
                con = db.connect(home, memory_limit=memory_limit, exclude_sources=exclude_sources)
                try:
                    table = db.query(sql, con=con, timeout_s=timeout_s)
                finally:
                    con.close()
            else:
                table = db.query(sql, home, timeout_s=timeout_s, memory_limit=memory_limit)
        except (db.ReadOnlyQueryError, db.QueryLimitError) as exc:
            raise click.ClickException(str(exc))
        except Exception as exc:  # a SQL error (unknown column, syntax): show DuckDB's message
            raise click.ClickException(f"query failed: {exc}")
        columns = table.column_names
        rows = table.to_pylist()
        if as_json:
            click.echo(json.dumps([{k: _plain(v) for k, v in r.items()} for r in rows], indent=1))
        elif as_csv:
            w = csv.writer(sys.stdout)
            w.writerow(columns)
            for r in rows:
                w.writerow(["" if r[c] is None else json.dumps(_plain(r[c])) if isinstance(r[c], (list, dict))
                            else _plain(r[c]) for c in columns])
        else:
            print_text_table(columns, rows, limit)
