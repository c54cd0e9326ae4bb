"""The ``xsearch`` command line."""
from __future__ import annotations

import click

from xlog import __version__


@click.group()
@click.version_option(__version__, prog_name="xsearch")
def main() -> None:
    """Use the federated experience store: pull, query with SQL, estimate, search."""
    from xlog.cli import close_orphans
    from xlog.store import LocalStore
    close_orphans(LocalStore())  # runs killed before closing their record become records first


# Data commands (pull, sql), estimators and the search live in their own modules.
from . import cli_data, cli_estimators, cli_search  # noqa: E402

cli_data.register(main)
cli_estimators.register(main)
cli_search.register(main)


if __name__ == "__main__":
    main()
