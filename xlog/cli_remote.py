"""``xlog push`` and ``xlog pull``: publish records to a Hub dataset or a directory, and mirror one.

Errors a user can act on (``xlog.errors.XLogError``: an unreachable or invalid endpoint, an
ambiguous remote spec, a store root that cannot be written, ...) are printed as one line
(``Error: ...``, exit code 1), never as a traceback.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Iterator

import click

from .store import LocalStore

REMOTE_HELP = ("A Hub dataset: OWNER/NAME, hf://datasets/OWNER/NAME or https://huggingface.co/datasets/OWNER/NAME; "
               "or a directory: ./PATH, /PATH, ~/PATH or dir:PATH. "
               "Default: $XLOG_REMOTE or \"remote\" in $XLOG_HOME/config.json.")


def _remote_option(f):
    return click.option("--remote", "remote_spec", default=None, metavar="REMOTE", help=REMOTE_HELP)(f)


class _DropReported(logging.Filter):
    """Drop the store's own "quarantined ..." log lines: the command prints one line per file itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("xlog: quarantined")


@contextlib.contextmanager
def _cli_errors() -> Iterator[None]:
    """One line per problem: XLogError -> ``Error: message`` (exit 1); no Python warning lines."""
    from .errors import XLogError
    from .ledger import LedgerRecoveredWarning
    from .store import QuarantineWarning
    logger, drop = logging.getLogger("xlog"), _DropReported()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            # Said once by the "xlog" logger (the ledger) or by this command (quarantined files).
            warnings.simplefilter("ignore", QuarantineWarning)
            warnings.simplefilter("ignore", LedgerRecoveredWarning)
            yield
    except XLogError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        logger.removeFilter(drop)


def _open(spec: str | None, store: LocalStore):
    from .remotes import open_remote
    with _cli_errors():
        return open_remote(spec, home=store.root)


def run_pull(store: LocalStore, remote_spec: str | None, quiet: bool = False) -> None:
    """Shared by ``xlog pull`` and ``xsearch pull``."""
    from .remotes.sync import pull
    remote = _open(remote_spec, store)
    with _cli_errors():
        res = pull(remote, store, progress=not quiet, log=click.echo)
    for path, reason in res.quarantined:
        click.echo(click.style("quarantined ", fg="yellow") + f"{path}: {reason}", err=True)
    kept = f" (kept in {store.quarantine_dir})" if res.quarantined else ""
    click.echo(f"pulled {res.new_files} new file(s) ({res.new_records} records) from {remote.key}; "
               f"{res.up_to_date_files} already here; {len(res.quarantined)} quarantined{kept} -> {res.mirror}")


def register(main: click.Group) -> None:
    @main.command("push")
    @_remote_option
    @click.option("--private", is_flag=True, help="Create the Hub dataset as private (only when it does not exist).")
    @click.option("--dry-run", is_flag=True, help="Show what would be pushed; change nothing.")
    @click.option("--contributor", default=None, metavar="NAME",
                  help="Public name stored in the pushed copies (default: each record's own, null = anonymous).")
    @click.option("--anonymous", is_flag=True, help="Push with contributor = null whatever the records say.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
    @click.pass_obj
    def push_cmd(store: LocalStore, remote_spec: str | None, private: bool, dry_run: bool,
                 contributor: str | None, anonymous: bool, quiet: bool) -> None:
        """Publish the local records that are not on REMOTE yet, in one commit.

        Records the remote already holds are not sent again, even when the ledger
        ($XLOG_HOME/ledger.sqlite) was lost: the push reads the record ids of the remote's files.
        """
        from .remotes.sync import KEEP, push
        if contributor and anonymous:
            raise click.UsageError("--contributor and --anonymous exclude each other")
        who = None if anonymous else (contributor if contributor else KEEP)
        if isinstance(who, str):
            from .privacy import find_leaks
            if find_leaks(who):
                raise click.UsageError(f"--contributor {who!r} looks like private data (e-mail, token, path)")
        remote = _open(remote_spec, store)
        with _cli_errors():
            res = push(remote, store, private=private, dry_run=dry_run, contributor=who,
                       progress=not quiet, log=click.echo)
        for name in res.invalid:
            click.echo(click.style("quarantined ", fg="yellow") + f"{name} (invalid, not pushed; kept in "
                       f"{store.quarantine_dir})", err=True)
        there = (f"; {res.already_on_remote_records} local record(s) were already on the remote and were not sent"
                 if res.already_on_remote_records else "")
        if dry_run:
            click.echo(f"dry run: would push {res.new_records} record(s) in {len(res.files)} file(s) to "
                       f"{remote.key}{there}")
            for p, n in res.files.items():
                click.echo(f"  {p}  ({n} records)")
            return
        if res.recovered_records:
            click.echo(f"confirmed {res.recovered_records} record(s) of an interrupted push already on the remote")
        if not res.uploaded_files:
            click.echo(f"nothing to push: every local record is already on {remote.key}" + there)
            return
        click.echo(f"pushed {res.uploaded_records} record(s) in {res.uploaded_files} new file(s) to {remote.key}"
                   + (f" (commit {res.commit[:12]})" if res.commit else "") + there
                   + (f"; {res.already_on_remote} identical file(s) were already there" if res.already_on_remote
                      else ""))

    @main.command("pull")
    @_remote_option
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
    @click.pass_obj
    def pull_cmd(store: LocalStore, remote_spec: str | None, quiet: bool) -> None:
        """Mirror REMOTE's records into $XLOG_HOME/remotes/ (only new files; bad ones quarantined)."""
        run_pull(store, remote_spec, quiet)
