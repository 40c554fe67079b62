"""The `krewe` command."""

import click

from krewe import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="krewe")
def main() -> None:
    """krewe: a network where staked miners run AI inference and agree on every answer."""
