"""The `krewe` command."""

import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import click
import uvloop
from rich.console import Console
from web3 import Web3

from krewe import __version__
from krewe.demo import DemoOptions, run_demo
from krewe.deploy import deploy_contracts
from krewe.keys import KeyLoadError, SigningKey
from krewe.miner.backends import BackendError
from krewe.miner.config import MinerSettings
from krewe.miner.onchain import MinerChain, MinerChainError, parse_krew
from krewe.miner.run import run_miner
from krewe.miner.statement import StatementError, fetch_statement, statement_tables
from krewe.orchestrator.app import serve
from krewe.orchestrator.chain import ChainError
from krewe.orchestrator.config import OrchestratorSettings
from krewe.settings import SettingsError, flag_options, load_settings
from krewe.transactions import TransactionError, send_signed


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
    except (MinerChainError, TransactionError) as error:
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
    except (MinerChainError, TransactionError) as error:
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
    except (MinerChainError, TransactionError) as error:
        _fail(error)


@miner.command("statement")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print the orchestrator's JSON as it is")
@click.option("--cursor", help="the next page: the cursor a page ends with")
@click.option("--limit", default=20, show_default=True, help="credits and payouts on one page (1-1000)")
@flag_options(MinerSettings)
def miner_statement(
    config_file: Path | None, as_json: bool, cursor: str | None, limit: int, **flags: Any
) -> None:
    """Show what the orchestrator credited and paid this miner, newest first.

    The orchestrator is the first of orchestrator_url (its HTTP API on the same host and port); the
    request is signed with the miner's key.
    """
    settings = _miner_settings(config_file, flags)
    key = _miner_key(settings)
    try:
        statement = fetch_statement(settings.api_url, key, cursor=cursor, limit=limit)
    except StatementError as error:
        _fail(error)
    if as_json:
        click.echo(json.dumps(statement, indent=2))
        return
    console = Console()
    for table in statement_tables(statement):
        console.print(table)
    if statement["next_cursor"]:
        console.print(f"next page: krewe miner statement --cursor {statement['next_cursor']}", soft_wrap=True)


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
    except (MinerChainError, TransactionError) as error:
        _fail(error)


@main.command()
@click.option("--port", default=8000, show_default=True, help="port of the demo's orchestrator (127.0.0.1)")
@click.option(
    "--instances",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="orchestrators on consecutive ports from --port, sharing one redis-server as their store",
)
@click.option("--miners", default=5, show_default=True, help="honest miners to start")
@click.option("--liars", default=1, show_default=True, help="miners that answer wrong on purpose")
@click.option("--requests", "request_count", default=12, show_default=True, help="requests to send")
@click.option("--once", is_flag=True, help="exit 0 right after the first confirmed settlement")
@click.option("--chain-url", default=None, help="use this running anvil instead of starting one")
def demo(**options: Any) -> None:
    """Run a whole local network: chain, contracts, orchestrator, miners, requests, a payout."""
    options["requests"] = options.pop("request_count")
    sys.exit(run_demo(DemoOptions(**options)))


@main.command()
@click.option("--rpc-url", required=True, help="JSON-RPC URL of the chain")
@click.option(
    "--orchestrator", "orchestrator_address", required=True, help="address of the orchestrator's key"
)
@click.option("--key-file", type=click.Path(path_type=Path), help="encrypted keystore of the admin key")
@click.option(
    "--key-password-file", type=click.Path(path_type=Path), help="file holding the keystore's password"
)
@click.option("--min-stake", default="100", show_default=True, help="smallest active stake, in KREW")
@click.option("--max-stake", default="1000000", show_default=True, help="largest active stake, in KREW")
@click.option(
    "--unbonding-delay-s", default=7 * 24 * 3600, show_default=True, help="seconds from exit to withdrawal"
)
@click.option("--max-batch", default=500, show_default=True, help="most recipients in one batch")
@click.option(
    "--pool", default="0", show_default=True, help="KREW to mint to the admin and put in the reward pool"
)
def deploy(**options: Any) -> None:
    """Deploy the token, registry and distributor, signed by the admin key; print the settings.

    The admin key's password may also come from KREWE_DEPLOY_KEY_PASSWORD; for development chains
    a raw key may come from KREWE_DEPLOY_DEV_KEY.
    """
    try:
        key = SigningKey.from_settings(
            role="admin",
            keystore=options["key_file"],
            password_file=options["key_password_file"],
            password_env="KREWE_DEPLOY_KEY_PASSWORD",
            dev_key_env="KREWE_DEPLOY_DEV_KEY",
        )
        w3 = Web3(Web3.HTTPProvider(options["rpc_url"], request_kwargs={"timeout": 60}))
        pool = parse_krew(options["pool"]) if options["pool"] != "0" else 0
        deployment = deploy_contracts(
            w3,
            partial(send_signed, w3, key=key),
            admin=key.address,
            orchestrator=Web3.to_checksum_address(options["orchestrator_address"]),
            min_stake=parse_krew(options["min_stake"]),
            max_stake=parse_krew(options["max_stake"]),
            unbonding_delay_s=options["unbonding_delay_s"],
            max_batch=options["max_batch"],
            pool=pool,
        )
    except (KeyLoadError, MinerChainError, TransactionError, ValueError) as error:
        _fail(error)
    click.echo(f"# KrewToken at {deployment.token}; admin {deployment.admin}")
    click.echo(f'rpc_url = "{options["rpc_url"]}"')
    click.echo(f'registry_address = "{deployment.registry}"')
    click.echo(f'distributor_address = "{deployment.distributor}"')
    click.echo(f"chain_from_block = {deployment.block}")
