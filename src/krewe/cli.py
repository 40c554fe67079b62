"""The `krewe` command."""

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import uvloop

from krewe import __version__
from krewe.keys import KeyLoadError, SigningKey
from krewe.miner.backends import BackendError
from krewe.miner.config import MinerSettings
from krewe.miner.onchain import MinerChain, MinerChainError, parse_krew
from krewe.miner.run import run_miner
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


def _fail(error: Exception) -> NoReturn:
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


@main.group()
def miner() -> None:
    """Run a miner, and manage its stake and rewards on chain."""


def _miner_settings(config_file: Path | None, flags: dict[str, Any]) -> MinerSettings:
    try:
        return load_settings(MinerSettings, file=config_file, flags=flags, env_prefix="KREWE_MINER_")
    except SettingsError as error:
        _fail(error)


def _miner_key(settings: MinerSettings) -> SigningKey:
    try:
        return SigningKey.from_settings(
            role="miner",
            keystore=settings.key_file,
            password_env=settings.key_password_env,
            password_file=settings.key_password_file,
            dev_key_env=settings.dev_key_env,
        )
    except KeyLoadError as error:
        _fail(error)


def _miner_chain(config_file: Path | None, flags: dict[str, Any]) -> MinerChain:
    settings = _miner_settings(config_file, flags)
    try:
        return MinerChain(
            settings.rpc_url, settings.registry_address, settings.distributor_address, _miner_key(settings)
        )
    except MinerChainError as error:
        _fail(error)


config_option = click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="TOML file of settings"
)


@miner.command("run")
@config_option
@click.option("--tamper", is_flag=True, hidden=True, help="answer wrong on purpose (demonstrations)")
@flag_options(MinerSettings)
def miner_run(config_file: Path | None, tamper: bool, **flags: Any) -> None:
    """Connect to an orchestrator and answer jobs until SIGTERM or Ctrl-C.

    Every setting below can also come from the TOML file or a KREWE_MINER_<NAME> variable.
    """
    settings = _miner_settings(config_file, flags)
    key = _miner_key(settings)
    try:
        uvloop.run(run_miner(settings, key, tamper=tamper))
    except BackendError as error:
        _fail(error)


@miner.command("register")
@config_option
@click.option("--stake", "amount", required=True, help="KREW to stake, e.g. 100 or 12.5")
@flag_options(MinerSettings)
def miner_register(config_file: Path | None, amount: str, **flags: Any) -> None:
    """Stake KREW in the WorkerRegistry to become an active worker."""
    chain = _miner_chain(config_file, flags)
    try:
        for tx in chain.register(parse_krew(amount)):
            click.echo(f"sent {tx}")
    except MinerChainError as error:
        _fail(error)
    click.echo("\n".join(chain.status().lines()))


@miner.command("status")
@config_option
@flag_options(MinerSettings)
def miner_status(config_file: Path | None, **flags: Any) -> None:
    """Show stake, whether the worker is active, and what it was credited, claimed and can claim."""
    click.echo("\n".join(_miner_chain(config_file, flags).status().lines()))


@miner.command("claim")
@config_option
@flag_options(MinerSettings)
def miner_claim(config_file: Path | None, **flags: Any) -> None:
    """Claim every reward credited and not yet claimed."""
    chain = _miner_chain(config_file, flags)
    try:
        click.echo(f"claimed in {chain.claim()}")
    except MinerChainError as error:
        _fail(error)


@miner.command("exit")
@config_option
@click.option("--withdraw", is_flag=True, help="withdraw the stake (after the unbonding delay has passed)")
@flag_options(MinerSettings)
def miner_exit(config_file: Path | None, withdraw: bool, **flags: Any) -> None:
    """Stop being an active worker; with --withdraw, take the stake back once unbonded."""
    chain = _miner_chain(config_file, flags)
    try:
        if withdraw:
            click.echo(f"withdrew the stake in {chain.withdraw()}")
        else:
            click.echo(f"exit requested in {chain.request_exit()}")
    except MinerChainError as error:
        _fail(error)
