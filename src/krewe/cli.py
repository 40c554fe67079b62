"""The `krewe` command."""

import logging
import sys
from pathlib import Path
from typing import Any

import click
import uvloop

from krewe import __version__
from krewe.keys import KeyLoadError
from krewe.orchestrator.app import serve
from krewe.orchestrator.chain import ChainError
from krewe.orchestrator.config import OrchestratorSettings
from krewe.settings import SettingsError, flag_options, load_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="krewe")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def main(log_level: str) -> None:
    """krewe: a network where staked miners run AI inference and agree on every answer."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(error: Exception) -> None:
    click.echo(f"krewe: {error}", err=True)
    sys.exit(2)


@main.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML file of settings")
@flag_options(OrchestratorSettings)
def orchestrator(config_file: Path | None, **flags: Any) -> None:
    """Run the orchestrator: miner WebSockets and the client API on one port.

    Every setting below can also come from the TOML file or a KREWE_<NAME> environment variable.
    """
    try:
        settings = load_settings(OrchestratorSettings, file=config_file, flags=flags)
        uvloop.run(serve(settings))
    except (SettingsError, ChainError, KeyLoadError) as error:
        _fail(error)
