"""The pieces a benchmark runs against, each a real process on 127.0.0.1, stopped by PID: anvil
with the contracts, many miner keys registered at once, and the orchestrator in its production
configuration (durable ledger, scoring, settlement against anvil)."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from eth_account import Account
from web3 import Web3

from krewe.devchain import KREW, Anvil, Deployment, deploy, dev_key, free_port

REGISTRY_WORKERS_SLOT = 4  # storage slot of WorkerRegistry._workers (solc storageLayout)
ORCHESTRATOR_KEY = 1


def miner_key(index: int) -> str:
    """A deterministic key for benchmark miner `index` (these keys hold nothing anywhere)."""
    return "0x" + Web3.keccak(text=f"krewe-bench-miner-{index}").hex().removeprefix("0x")


def miner_address(index: int) -> str:
    return str(Account.from_key(miner_key(index)).address)


def register_many(anvil: Anvil, deployment: Deployment, count: int, stake: int) -> None:
    """Make `count` bench miners active by writing their stake straight into the registry's storage
    (anvil_setStorageAt, in JSON-RPC batches): staking 10,000 miners one transaction at a time would
    take longer than the benchmark."""
    calls = []
    for index in range(count):
        slot = Web3.keccak(
            bytes(12) + bytes.fromhex(miner_address(index)[2:]) + REGISTRY_WORKERS_SLOT.to_bytes(32, "big")
        )
        calls.append(
            {
                "jsonrpc": "2.0",
                "id": index,
                "method": "anvil_setStorageAt",
                "params": [
                    deployment.registry,
                    "0x" + slot.hex().removeprefix("0x"),
                    "0x" + stake.to_bytes(32, "big").hex(),
                ],
            }
        )
    for start in range(0, len(calls), 1000):
        answers = requests.post(anvil.url, json=calls[start : start + 1000], timeout=60).json()
        if any("error" in answer for answer in answers):
            raise RuntimeError(f"anvil_setStorageAt failed: {answers[0]}")
    _, registry, _ = deployment.contracts(anvil.web3())
    if count and not registry.functions.isActive(miner_address(count - 1)).call():
        raise RuntimeError("the registry does not see the bench miners as active")


@contextmanager
def chain(miners: int) -> Iterator[tuple[Anvil, Deployment]]:
    with Anvil.start(accounts=3) as anvil:
        w3 = anvil.web3()
        orchestrator = Account.from_key(dev_key(ORCHESTRATOR_KEY)).address
        deployment = deploy(
            w3, admin=anvil.accounts[0], orchestrator=orchestrator, min_stake=100 * KREW, pool=10**9 * KREW
        )
        register_many(anvil, deployment, miners, 100 * KREW)
        yield anvil, deployment


class Process:
    """A child process in its own session, stopped by PID."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
        with open(log or os.devnull, "wb") as output:  # the child keeps its own handle
            self.popen = subprocess.Popen(
                args,
                env={**os.environ, **(env or {})},
                stdout=subprocess.PIPE,
                stderr=output,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def read_line(self, timeout_s: float) -> str:
        """The next line the process prints (it prints one when ready), bounded in time."""
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        os.set_blocking(self.popen.stdout.fileno(), False)
        while not line.endswith(b"\n"):
            chunk = self.popen.stdout.readline()
            line += chunk or b""
            if not chunk:
                if self.popen.poll() is not None:
                    raise RuntimeError(f"process {self.pid} exited with {self.popen.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"process {self.pid} said nothing within {timeout_s} s")
                time.sleep(0.05)
        return line.decode().strip()

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@contextmanager
def orchestrator(
    anvil: Anvil, deployment: Deployment, workdir: Path, **settings: Any
) -> Iterator[tuple[Process, str]]:
    """`krewe orchestrator` with its production defaults, except what `settings` say."""
    port = free_port()
    env = {
        "KREWE_PORT": str(port),
        "KREWE_RPC_URL": anvil.url,
        "KREWE_REGISTRY_ADDRESS": deployment.registry,
        "KREWE_DISTRIBUTOR_ADDRESS": deployment.distributor,
        "KREWE_DEV_KEY": dev_key(ORCHESTRATOR_KEY),
        "KREWE_DATA_DIR": str(workdir / f"orchestrator-{port}"),
    }
    env |= {f"KREWE_{name.upper()}": str(value) for name, value in settings.items()}
    process = Process(
        python("krewe", "--log-level", "WARNING", "orchestrator"), env, workdir / f"orchestrator-{port}.log"
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url + "/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        if process.popen.poll() is not None or time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"the orchestrator did not start (log: {workdir})")
        time.sleep(0.1)
    try:
        yield process, url
    finally:
        process.stop()
