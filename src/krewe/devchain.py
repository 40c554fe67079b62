"""A local chain for tests and the demo: anvil on a free loopback port, with krewe's contracts.

    with Anvil.start() as chain:
        w3 = chain.web3()
        deployment = deploy(w3, admin=chain.accounts[0], orchestrator=chain.accounts[1])

anvil comes from the npm package `@foundry-rs/anvil` (pinned in package.json, installed by
`npm ci`). It is started on 127.0.0.1 only and stopped by PID. anvil's dev accounts are unlocked,
so transactions from them need no key here.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from eth_account import Account
from web3 import Web3

from krewe.deploy import KREW, Deployment, deploy_contracts
from krewe.transactions import transact

__all__ = [
    "DEV_MNEMONIC",
    "KREW",
    "Anvil",
    "Deployment",
    "DevChainError",
    "deploy",
    "dev_key",
    "find_anvil",
    "stake_worker",
    "transact",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# anvil's well-known development mnemonic: its accounts hold test ether on every anvil, and nowhere
# else should they hold anything.
DEV_MNEMONIC = "test test test test test test test test test test test junk"


def dev_key(index: int) -> str:
    """The private key of anvil's development account `index` (hex). For local chains only."""
    Account.enable_unaudited_hdwallet_features()
    account = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(account.key).hex()


class DevChainError(RuntimeError):
    """anvil could not be found, started, or reached."""


def find_anvil() -> str:
    """The anvil binary: $KREWE_ANVIL, then the project's node_modules, then PATH."""
    candidates = [os.environ.get("KREWE_ANVIL"), str(REPO_ROOT / "node_modules" / ".bin" / "anvil")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return candidate
    found = shutil.which("anvil")
    if found:
        return found
    raise DevChainError("anvil not found: run `npm ci` in the project, or set KREWE_ANVIL to its path")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Anvil:
    """A running anvil process on 127.0.0.1."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, chain_id: int) -> None:
        self.process = process
        self.port = port
        self.chain_id = chain_id
        self.url = f"http://127.0.0.1:{port}"
        self.accounts: list[str] = []

    @classmethod
    def start(
        cls,
        *,
        port: int | None = None,
        chain_id: int = 31337,
        accounts: int = 20,
        timeout_s: float = 30.0,
        state: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> "Anvil":
        port = port or free_port()
        command = [
            find_anvil(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--chain-id",
            str(chain_id),
            "--accounts",
            str(accounts),
            "--silent",
            *extra_args,
        ]
        if state is not None:  # loaded at start, written back when anvil stops
            command += ["--state", str(state)]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        chain = cls(process, port, chain_id)
        deadline = time.monotonic() + timeout_s
        w3 = chain.web3()
        while True:
            if process.poll() is not None:
                error = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise DevChainError(f"anvil exited with {process.returncode}: {error.strip()}")
            try:
                if w3.eth.chain_id == chain_id:
                    break
            except Exception:  # not listening yet
                if time.monotonic() > deadline:
                    chain.stop()
                    raise DevChainError(f"anvil did not answer on {chain.url} within {timeout_s} s") from None
                time.sleep(0.05)
        chain.accounts = list(w3.eth.accounts)
        return chain

    def web3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.process.stderr:
            self.process.stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def deploy(w3: Web3, *, admin: str, orchestrator: str, **options: Any) -> Deployment:
    """Deploy the contracts from an unlocked development account (see krewe.deploy)."""
    return deploy_contracts(
        w3, partial(transact, w3, sender=admin), admin=admin, orchestrator=orchestrator, **options
    )


def stake_worker(w3: Web3, deployment: Deployment, worker: str, amount: int) -> None:
    """Mint `amount` to `worker` (as the admin) and stake it in the registry (as the worker)."""
    krew, registry, _ = deployment.contracts(w3)
    transact(w3, krew.functions.mint(worker, amount), deployment.admin)
    transact(w3, krew.functions.approve(registry.address, amount), worker)
    transact(w3, registry.functions.stake(amount), worker)
