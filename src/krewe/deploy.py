"""Deploying and wiring the three contracts: the token, the registry, and the distributor whose
only caller is the orchestrator's address; then minting and funding the reward pool."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from web3 import Web3
from web3.contract import Contract

from krewe.contracts import load_artifact

__all__ = ["KREW", "Deployment", "deploy_contracts"]

KREW = 10**18  # wei per KREW


@dataclass(frozen=True, slots=True)
class Deployment:
    """Addresses of the three contracts and of the accounts wired into them."""

    token: str
    registry: str
    distributor: str
    admin: str
    orchestrator: str
    block: int = 0  # the block the distributor was deployed in

    def contracts(self, w3: Web3) -> tuple[Contract, Contract, Contract]:
        return (
            w3.eth.contract(address=w3.to_checksum_address(self.token), abi=load_artifact("KrewToken").abi),
            w3.eth.contract(
                address=w3.to_checksum_address(self.registry), abi=load_artifact("WorkerRegistry").abi
            ),
            w3.eth.contract(
                address=w3.to_checksum_address(self.distributor), abi=load_artifact("RewardDistributor").abi
            ),
        )


def deploy_contracts(
    w3: Web3,
    send: Callable[[Any], Any],
    *,
    admin: str,
    orchestrator: str,
    min_stake: int = 100 * KREW,
    max_stake: int = 1_000_000 * KREW,
    unbonding_delay_s: int = 7 * 24 * 3600,
    max_batch: int = 500,
    pool: int = 1_000_000 * KREW,
) -> Deployment:
    """Deploy with `send` (a call -> receipt) from `admin`, and fund the pool with `pool` wei."""

    def create(name: str, *args: Any) -> tuple[str, int]:
        artifact = load_artifact(name)
        receipt = send(w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode).constructor(*args))
        return receipt["contractAddress"], receipt["blockNumber"]

    token, _ = create("KrewToken", admin)
    registry, _ = create("WorkerRegistry", admin, token, min_stake, max_stake, unbonding_delay_s)
    distributor, block = create("RewardDistributor", admin, token, orchestrator, max_batch)
    deployment = Deployment(token, registry, distributor, admin, orchestrator, block)
    krew, _, rewards = deployment.contracts(w3)
    if pool:
        send(krew.functions.mint(admin, pool))
        send(krew.functions.approve(distributor, pool))
        send(rewards.functions.fund(pool))
    return deployment
