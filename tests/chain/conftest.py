"""A session-wide anvil with the contracts deployed; every test runs inside evm_snapshot/evm_revert."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from web3 import Web3
from web3.contract import Contract

from krewe.devchain import KREW, Anvil, Deployment, deploy


@dataclass
class Chain:
    anvil: Anvil
    w3: Web3
    deployment: Deployment
    token: Contract
    registry: Contract
    distributor: Contract
    admin: str
    orchestrator: str
    workers: list[str]
    outsider: str


MIN_STAKE = 100 * KREW
MAX_STAKE = 10_000 * KREW
UNBONDING_S = 3600
POOL = 1_000 * KREW


@pytest.fixture(scope="session")
def session_chain() -> Iterator[Chain]:
    with Anvil.start(accounts=20) as anvil:
        w3 = anvil.web3()
        admin, orchestrator, outsider, *workers = anvil.accounts
        deployment = deploy(
            w3,
            admin=admin,
            orchestrator=orchestrator,
            min_stake=MIN_STAKE,
            max_stake=MAX_STAKE,
            unbonding_delay_s=UNBONDING_S,
            max_batch=500,
            pool=POOL,
        )
        token, registry, distributor = deployment.contracts(w3)
        yield Chain(
            anvil, w3, deployment, token, registry, distributor, admin, orchestrator, workers, outsider
        )


@pytest.fixture
def chain(session_chain: Chain) -> Iterator[Chain]:
    snapshot = session_chain.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield session_chain
    reverted = session_chain.w3.provider.make_request("evm_revert", [snapshot])["result"]  # type: ignore[arg-type]
    assert reverted
