"""``xlog push`` and ``xlog pull``: publish records to a Hub dataset or a directory, and mirror one."""
from __future__ import annotations

import click

from .store import LocalStore


def _remote_option(f):
    return click.option("--remote", "remote_spec", default=None, metavar="REMOTE",
                        help="OWNER/NAME (a Hub dataset), hf://datasets/OWNER/NAME, file:///path or a path. "
                             "Default: $XLOG_REMOTE or \"remote\" in $XLOG_HOME/config.json.")(f)


def _open(spec: str | None, store: LocalStore):
    from .remotes import RemoteError, open_remote
    try:
        return open_remote(spec, home=store.root)
    except RemoteError as exc:
        raise click.ClickException(str(exc))


def run_pull(store: LocalStore, remote_spec: str | None, quiet: bool = False) -> None:
    """Shared by ``xlog pull`` and ``xsearch pull``."""
    from .remotes import RemoteError
    from .remotes.sync import pull
    remote = _open(remote_spec, store)
    try:
        res = pull(remote, store, progress=not quiet, log=click.echo)
    except RemoteError as exc:
        raise click.ClickException(str(exc))
    for path, reason in res.quarantined:
        click.echo(click.style("quarantined ", fg="yellow") + f"{path}: {reason}", err=True)
    click.echo(f"pulled {res.new_files} new file(s) ({res.new_records} records) from {remote.key}; "
               f"{res.up_to_date_files} already here; {len(res.quarantined)} quarantined -> {res.mirror}")


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
        """Publish the local records that are not on REMOTE yet, in one commit."""
        from .remotes import RemoteError
        from .remotes.sync import KEEP, push
        if contributor and anonymous:
            raise click.UsageError("--contributor and --anonymous exclude each other")
        who = None if anonymous else (contributor if contributor else KEEP)
        if isinstance(who, str):
            from .privacy import find_leaks
            if find_leaks(who):
                raise click.UsageError(f"--contributor {who!r} looks like private data (e-mail, token, path)")
        remote = _open(remote_spec, store)
        try:
            res = push(remote, store, private=private, dry_run=dry_run, contributor=who,
                       progress=not quiet, log=click.echo)
        except RemoteError as exc:
            raise click.ClickException(str(exc))
        for name in res.invalid:
            click.echo(click.style("quarantined ", fg="yellow") + f"{name} (invalid, not pushed)", err=True)
        if dry_run:
            click.echo(f"dry run: would push {res.new_records} record(s) in {len(res.files)} file(s) to {remote.key}")
            for p, n in res.files.items():
                click.echo(f"  {p}  ({n} records)")
            return
        if res.recovered_records:
            click.echo(f"confirmed {res.recovered_records} record(s) of an interrupted push already on the remote")
        if not res.files:
            click.echo(f"nothing to push: every local record is already on {remote.key}")
            return
        click.echo(f"pushed {res.new_records} record(s) in {res.uploaded_files} new file(s) to {remote.key}"
                   + (f" (commit {res.commit[:12]})" if res.commit else "")
                   + (f"; {res.already_on_remote} file(s) were already there" if res.already_on_remote else ""))

    @main.command("pull")
    @_remote_option
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
    @click.pass_obj
    def pull_cmd(store: LocalStore, remote_spec: str | None, quiet: bool) -> None:
        """Mirror REMOTE's records into $XLOG_HOME/remotes/ (only new files; bad ones quarantined)."""
        run_pull(store, remote_spec, quiet)
