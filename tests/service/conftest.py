"""An anvil with the contracts and staked miners (once per session), and an orchestrator per test,
running in the test's event loop on a free loopback port."""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from krewe.devchain import KREW, Anvil, Deployment, deploy, dev_key, free_port, stake_worker
from krewe.orchestrator.app import Orchestrator
from krewe.orchestrator.config import OrchestratorSettings
from tests.support.scripted_miner import ScriptedMiner

ORCHESTRATOR_KEY = 1
MINER_KEYS = list(range(3, 13))  # ten staked miners
UNREGISTERED_KEY = 15


@dataclass
class Chain:
    anvil: Anvil
    deployment: Deployment


@pytest.fixture(scope="session")
def chain() -> Iterator[Chain]:
    with Anvil.start(accounts=20) as anvil:
        w3 = anvil.web3()
        deployment = deploy(
            w3, admin=anvil.accounts[0], orchestrator=Account.from_key(dev_key(ORCHESTRATOR_KEY)).address
        )
        for index in MINER_KEYS:
            stake_worker(w3, deployment, Account.from_key(dev_key(index)).address, 100 * KREW)
        yield Chain(anvil, deployment)


@dataclass
class Harness:
    orchestrator: Orchestrator
    chain: Chain
    url: str  # http://127.0.0.1:PORT
    miners: list[ScriptedMiner]

    @property
    def connect_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/v1/workers/connect"

    def miner(self, index: int, behaviour: str = "honest", **options: Any) -> ScriptedMiner:
        """The scripted miner with staked key number `index` (0-9), or the unregistered key (-1)."""
        key = dev_key(UNREGISTERED_KEY if index < 0 else MINER_KEYS[index])
        miner = ScriptedMiner(self.connect_url, key, Account.from_key(key).address, behaviour, **options)
        self.miners.append(miner)
        return miner

    async def connected(self, *behaviours: str, **options: Any) -> list[ScriptedMiner]:
        """Miners 0..n-1 with these behaviours, logged in."""
        miners = []
        for index, behaviour in enumerate(behaviours):
            miner = await self.miner(index, behaviour, **options).__aenter__()
            welcome = await miner.connect()
            assert welcome["type"] == "welcome", welcome
            miners.append(miner)
        return miners


async def until(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Wait, bounded, until `condition()` holds (checked every 10 ms)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


def settings_for(chain: Chain, data_dir: Path, **overrides: Any) -> OrchestratorSettings:
    base = OrchestratorSettings(
        port=free_port(),
        rpc_url=chain.anvil.url,
        registry_address=chain.deployment.registry,
        distributor_address=chain.deployment.distributor,
        data_dir=data_dir,
        settlement_window_s=3600,  # tests settle explicitly
        settlement_confirmations=0,  # anvil mines a block only for a transaction
        seed=1234,
        model_rewards={"test-model": 10**15},
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture
async def make_harness(chain: Chain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    monkeypatch.setenv("KREWE_DEV_KEY", dev_key(ORCHESTRATOR_KEY))
    started: list[Harness] = []

    async def make(**overrides: Any) -> Harness:
        data_dir = overrides.pop("data_dir", tmp_path / f"data{len(started)}")
        orchestrator = Orchestrator(settings_for(chain, data_dir, **overrides))
        await orchestrator.start()
        harness = Harness(orchestrator, chain, f"http://127.0.0.1:{orchestrator.port}", [])
        started.append(harness)
        return harness

    yield make
    for harness in started:
        for miner in harness.miners:
            await miner.__aexit__()
        if not harness.orchestrator.stopped:
            await harness.orchestrator.stop()


@pytest.fixture
async def harness(make_harness: Any) -> Harness:
    result: Harness = await make_harness()
    return result
