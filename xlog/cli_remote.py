"""``xlog push`` and ``xlog pull``: publish records to a Hub dataset or a directory, and mirror one;
``xlog review``, ``xlog merge`` and ``xlog compact``: maintain a shared dataset (``xlog.maintain``,
``xlog.compact``).

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


def _open(spec: str | None, store: LocalStore, **hub_kwargs):
    from .remotes import open_remote
    with _cli_errors():  # hub_kwargs only reach a Hub remote (open_remote)
        return open_remote(spec, home=store.root, **hub_kwargs)


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
    @click.option("--create-pr", is_flag=True,
                  help="Push through a pull request on the Hub dataset (for contributors without write access; "
                       "done automatically when the token cannot write). Later pushes add to the same open PR.")
    @click.option("--resend-closed", is_flag=True,
                  help="Send again your records of pull requests a maintainer closed without merging (in a new "
                       "pull request).")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
    @click.pass_obj
    def push_cmd(store: LocalStore, remote_spec: str | None, private: bool, dry_run: bool,
                 contributor: str | None, anonymous: bool, create_pr: bool, resend_closed: bool, quiet: bool) -> None:
        """Publish the local records that are not on REMOTE yet, in one commit.

        Records the remote already holds are not sent again, even when the ledger
        ($XLOG_HOME/ledger.sqlite) was lost: the push reads the record ids of the remote's files.
        Without write access to a Hub dataset, the push opens a pull request (or adds to your open
        one) and prints where it is; a maintainer reviews and merges it.
        """
        from .remotes.sync import KEEP, push
        if contributor and anonymous:
            raise click.UsageError("--contributor and --anonymous exclude each other")
        who = None if anonymous else (contributor if contributor else KEEP)
        if isinstance(who, str):
            from .privacy import find_leaks
            if find_leaks(who):
                raise click.UsageError(f"--contributor {who!r} looks like private data (e-mail, token, path)")
        remote = _open(remote_spec, store, create_pr=True if create_pr else None, on_message=click.echo)
        if create_pr and remote.kind != "hub":
            raise click.UsageError(f"--create-pr: {remote.key} is a directory; pull requests exist on Hub datasets "
                                   "only")
        with _cli_errors():
            res = push(remote, store, private=private, dry_run=dry_run, contributor=who,
                       progress=not quiet, resend_closed=resend_closed, log=click.echo)
        for num, n in sorted(res.closed_unmerged.items()):
            if resend_closed:
                click.echo(f"pull request #{num} was closed without merging: sending its {n} record(s) again")
            else:
                click.echo(click.style("note ", fg="yellow") + f"your pull request #{num} was closed without merging: "
                           f"{n} of your record(s) in it are not on {remote.key} (see the pull request's comments); "
                           "`xlog push --resend-closed` sends them again in a new pull request")
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
        pr = getattr(remote, "last_pr", None)
        where = (f"pull request #{pr.num} on {remote.key}" if pr else remote.key)
        click.echo(f"pushed {res.uploaded_records} record(s) in {res.uploaded_files} new file(s) to {where}"
                   + (f" (commit {res.commit[:12]})" if res.commit else "") + there
                   + (f"; {res.already_on_remote} identical file(s) were already there" if res.already_on_remote
                      else ""))
        if pr:
            how = "opened" if remote.last_pr_opened else "added to your open"
            click.echo(f"{how} pull request #{pr.num}: {pr.url}\n"
                       "a maintainer of the dataset reviews it (xlog review) and merges it (xlog merge); until then "
                       "readers do not see these records; your next push adds to this pull request while it is open")

    @main.command("pull")
    @_remote_option
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
    @click.pass_obj
    def pull_cmd(store: LocalStore, remote_spec: str | None, quiet: bool) -> None:
        """Mirror REMOTE's records into $XLOG_HOME/remotes/ (only new files; bad ones quarantined)."""
        run_pull(store, remote_spec, quiet)


def register_maintainer(main: click.Group) -> None:
    """``xlog review``, ``xlog merge``, ``xlog compact``."""
    remote_arg = click.argument("remote_spec", metavar="REMOTE", required=False)

    @main.command("review")
    @remote_arg
    @click.option("--pr", "pr_num", type=click.IntRange(min=1), default=None, help="Review only this pull request.")
    @click.option("--comment", is_flag=True, help="Post each verdict as a comment on its pull request.")
    @click.pass_obj
    def review_cmd(store: LocalStore, remote_spec: str | None, pr_num: int | None, comment: bool) -> None:
        """Check the open pull requests of the Hub dataset REMOTE as a reader would.

        Each PR's new data files are downloaded and checked: schema, bounds, content hash, privacy
        scan, record ids (a conflict with a record on main, or within the PR, fails it), row and size
        limits, and the layout (only new files under data/v<version>/<YYYY-MM>/). Prints pass or fail
        with the reasons; exit status 1 when a reviewed PR fails.
        """
        from .maintain import review
        remote = _open(remote_spec, store)
        with _cli_errors():
            reviews = review(remote, store.root, pr=pr_num, comment=comment, log=click.echo)
        if not reviews:
            click.echo(f"no open pull request on {remote.key}")
            return
        for r in reviews:
            click.echo(r.text())
            if comment:
                click.echo(f"  (verdict posted on PR #{r.num})")
        if any(not r.ok for r in reviews):
            raise SystemExit(1)

    @main.command("merge")
    @click.argument("remote_spec", metavar="REMOTE")
    @click.argument("pr_num", metavar="PR", type=click.IntRange(min=1))
    @click.pass_obj
    def merge_cmd(store: LocalStore, remote_spec: str, pr_num: int) -> None:
        """Review pull request PR of the Hub dataset REMOTE again and merge it if it passes."""
        from .maintain import merge
        remote = _open(remote_spec, store)
        with _cli_errors():
            r, commit = merge(remote, store.root, pr_num, log=click.echo)
        click.echo(f"merged PR #{r.num} by {r.author} into {remote.key}: {r.new_records} new record(s) in "
                   f"{len(r.files)} file(s)" + (f" (commit {commit[:12]})" if commit else ""))

    @main.command("compact")
    @remote_arg
    @click.option("--apply", is_flag=True, help="Carry out the plan (default: a dry run that only prints it).")
    @click.option("--max-file-mb", type=click.FloatRange(min=0, min_open=True), default=None,
                  help="Largest compacted file, in MiB (default 32; at most the readers' per-file limit).")
    @click.pass_obj
    def compact_cmd(store: LocalStore, remote_spec: str | None, apply: bool, max_file_mb: float | None) -> None:
        """Rewrite each partition's many small files of REMOTE into few files of bounded size.

        A dry run by default. With --apply: one commit on a Hub dataset (the old files deleted, the new
        ones added), or new files then removal of the old on a directory; every (record id, content)
        is verified before and after, and nothing is committed if they differ. Files a reader would
        not accept in full, or that hold a conflicting record id, stay as they are.
        """
        from .compact import DEFAULT_MAX_FILE_MB, compact
        remote = _open(remote_spec, store)
        with _cli_errors():
            plan = compact(remote, store.root, apply=apply,
                           max_file_mb=max_file_mb if max_file_mb is not None else DEFAULT_MAX_FILE_MB, log=click.echo)
        for line in plan.lines():
            click.echo(line)
        if not apply and plan.partitions:
            click.echo("run again with --apply to do it")
