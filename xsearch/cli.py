"""The ``xsearch`` command line."""
from __future__ import annotations

import importlib

import click

from xlog import __version__


@click.group()
@click.version_option(__version__, prog_name="xsearch")
def main() -> None:
    """Use the federated experience store: pull, query with SQL, estimate, search."""


def _register_extensions() -> None:
    # Data commands (pull, sql) and search commands (estimators, run) live in their own modules.
    for name in ("xsearch.cli_data", "xsearch.cli_estimators", "xsearch.cli_search"):
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        mod.register(main)


_register_extensions()
