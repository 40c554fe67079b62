"""The reward contracts on a real anvil: who may do what, nonces, the pool, claims, staking."""

from typing import Any

import pytest
from eth_abi import encode
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError

from krewe.contracts import error_name
from krewe.devchain import KREW, stake_worker, transact

from .conftest import MAX_STAKE, MIN_STAKE, POOL, UNBONDING_S, Chain


def reverts(call: Any, sender: str, error: str) -> None:
    """The call, sent from `sender`, reverts with the named custom error."""
    with pytest.raises((ContractCustomError, ContractLogicError)) as caught:
        call.call({"from": sender})
    assert error_name(str(caught.value.data)) == error


def distribute(chain: Chain, nonce: int, workers: list[str], amounts: list[int]) -> Any:
    return chain.distributor.functions.batchDistributeRewards(nonce, workers, amounts)


def test_the_orchestrator_key_can_do_nothing_but_distribute(chain: Chain) -> None:
    o = chain.orchestrator
    worker = chain.workers[0]
    stake_worker(chain.w3, chain.deployment, worker, MIN_STAKE)
    reverts(chain.token.functions.mint(o, 1), o, "AccessControlUnauthorizedAccount")
    reverts(chain.registry.functions.setStakeBounds(1, 2), o, "AccessControlUnauthorizedAccount")
    reverts(chain.registry.functions.pause(), o, "AccessControlUnauthorizedAccount")
    reverts(chain.registry.functions.stake(MIN_STAKE), o, "ERC20InsufficientAllowance")  # it holds no KREW
    reverts(chain.registry.functions.requestExit(), o, "NotStaked")
    reverts(chain.registry.functions.withdraw(), o, "NotExiting")
    reverts(chain.distributor.functions.setOrchestrator(o), o, "AccessControlUnauthorizedAccount")
    reverts(chain.distributor.functions.setMaxBatch(1), o, "AccessControlUnauthorizedAccount")
    reverts(chain.distributor.functions.fund(1), o, "AccessControlUnauthorizedAccount")
    reverts(chain.distributor.functions.claim(), o, "NothingToClaim")
    reverts(chain.token.functions.transferFrom(chain.registry.address, o, 1), o, "ERC20InsufficientAllowance")
    for contract in (chain.token, chain.registry, chain.distributor):
        role = contract.functions.DEFAULT_ADMIN_ROLE().call()
        assert not contract.functions.hasRole(role, o).call()
    assert chain.token.functions.balanceOf(chain.registry.address).call() == MIN_STAKE  # stake untouched
    transact(chain.w3, distribute(chain, 0, [worker], [5]), o)  # the one thing it can do
    reverts(distribute(chain, 1, [worker], [5]), chain.admin, "NotOrchestrator")


def test_nonce_must_be_the_next_one(chain: Chain) -> None:
    w = chain.workers[:2]
    transact(chain.w3, distribute(chain, 0, w, [1, 2]), chain.orchestrator)
    reverts(distribute(chain, 0, w, [1, 2]), chain.orchestrator, "WrongNonce")  # replay
    reverts(distribute(chain, 2, w, [1, 2]), chain.orchestrator, "WrongNonce")  # skip
    assert chain.distributor.functions.batchNonce().call() == 1
    transact(chain.w3, distribute(chain, 1, w, [1, 2]), chain.orchestrator)
    assert [chain.distributor.functions.credited(x).call() for x in w] == [2, 4]


def test_bad_batches_revert(chain: Chain) -> None:
    o, w = chain.orchestrator, chain.workers[:2]
    reverts(distribute(chain, 0, w, [1]), o, "LengthMismatch")
    reverts(distribute(chain, 0, [], []), o, "BadBatchSize")
    reverts(distribute(chain, 0, [w[0], "0x" + "00" * 20], [1, 1]), o, "ZeroAddress")
    transact(chain.w3, chain.distributor.functions.setMaxBatch(1), chain.admin)
    reverts(distribute(chain, 0, w, [1, 1]), o, "BadBatchSize")


def test_the_event_carries_the_payload_hash(chain: Chain) -> None:
    w, amounts = chain.workers[:3], [7, 8, 9]
    receipt = transact(chain.w3, distribute(chain, 0, w, amounts), chain.orchestrator)
    (event,) = chain.distributor.events.RewardsDistributed().process_receipt(receipt)
    expected = Web3.keccak(encode(["address[]", "uint256[]"], [w, amounts]))
    assert event["args"]["nonce"] == 0
    assert event["args"]["payloadHash"] == expected
    assert (event["args"]["total"], event["args"]["count"]) == (24, 3)


def test_the_pool_bounds_distributions_even_while_the_registry_holds_more_stake(chain: Chain) -> None:
    for worker in chain.workers[:3]:
        stake_worker(chain.w3, chain.deployment, worker, MAX_STAKE)  # 30,000 KREW of stake vs a 1,000 pool
    o, w = chain.orchestrator, chain.workers[0]
    reverts(distribute(chain, 0, [w], [POOL + 1]), o, "PoolExhausted")
    transact(chain.w3, distribute(chain, 0, [w], [POOL - 1]), o)
    reverts(distribute(chain, 1, [w], [2]), o, "PoolExhausted")
    transact(chain.w3, chain.distributor.functions.claim(), w)
    reverts(distribute(chain, 1, [w], [2]), o, "PoolExhausted")  # claiming does not free allocation
    transact(chain.w3, distribute(chain, 1, [w], [1]), o)
    assert chain.distributor.functions.unallocated().call() == 0
    assert chain.token.functions.balanceOf(chain.registry.address).call() == 3 * MAX_STAKE


def test_claims_pay_exactly_the_difference(chain: Chain) -> None:
    o, w = chain.orchestrator, chain.workers[0]
    before = chain.token.functions.balanceOf(w).call()
    transact(chain.w3, distribute(chain, 0, [w], [10 * KREW]), o)
    transact(chain.w3, chain.distributor.functions.claim(), w)
    transact(chain.w3, distribute(chain, 1, [w], [3 * KREW]), o)
    assert chain.distributor.functions.claimable(w).call() == 3 * KREW
    transact(chain.w3, chain.distributor.functions.claim(), w)
    assert chain.token.functions.balanceOf(w).call() - before == 13 * KREW
    assert chain.distributor.functions.claimed(w).call() == chain.distributor.functions.credited(w).call()
    reverts(chain.distributor.functions.claim(), w, "NothingToClaim")


def test_stake_bounds(chain: Chain) -> None:
    w = chain.workers[0]
    transact(chain.w3, chain.token.functions.mint(w, 2 * MAX_STAKE), chain.admin)
    transact(chain.w3, chain.token.functions.approve(chain.registry.address, 2 * MAX_STAKE), w)
    reverts(chain.registry.functions.stake(MIN_STAKE - 1), w, "StakeOutOfBounds")
    reverts(chain.registry.functions.stake(MAX_STAKE + 1), w, "StakeOutOfBounds")
    reverts(chain.registry.functions.stake(0), w, "ZeroAmount")
    assert not chain.registry.functions.isActive(w).call()
    transact(chain.w3, chain.registry.functions.stake(MIN_STAKE), w)
    assert chain.registry.functions.isActive(w).call()
    transact(chain.w3, chain.registry.functions.setStakeBounds(2 * MIN_STAKE, MAX_STAKE), chain.admin)
    assert not chain.registry.functions.isActive(w).call()  # below the new minimum
    transact(chain.w3, chain.registry.functions.stake(MIN_STAKE), w)
    assert chain.registry.functions.isActive(w).call()
    reverts(chain.registry.functions.setStakeBounds(5, 4), chain.admin, "InvalidStakeBounds")


def test_exit_unbonds_then_withdraws(chain: Chain) -> None:
    w = chain.workers[0]
    stake_worker(chain.w3, chain.deployment, w, MIN_STAKE)
    transact(chain.w3, chain.registry.functions.requestExit(), w)
    assert not chain.registry.functions.isActive(w).call()
    reverts(chain.registry.functions.stake(MIN_STAKE), w, "AlreadyExiting")
    reverts(chain.registry.functions.withdraw(), w, "StillUnbonding")
    chain.w3.provider.make_request("evm_increaseTime", [UNBONDING_S])  # type: ignore[arg-type]
    chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    before = chain.token.functions.balanceOf(w).call()
    transact(chain.w3, chain.registry.functions.withdraw(), w)
    assert chain.token.functions.balanceOf(w).call() - before == MIN_STAKE
    assert chain.registry.functions.workerInfo(w).call() == [0, 0]


def test_pause_stops_stakes_and_exits_but_never_withdrawals(chain: Chain) -> None:
    w, late = chain.workers[0], chain.workers[1]
    stake_worker(chain.w3, chain.deployment, w, MIN_STAKE)
    transact(chain.w3, chain.registry.functions.requestExit(), w)
    transact(chain.w3, chain.registry.functions.pause(), chain.admin)
    transact(chain.w3, chain.token.functions.mint(late, MIN_STAKE), chain.admin)
    transact(chain.w3, chain.token.functions.approve(chain.registry.address, MIN_STAKE), late)
    reverts(chain.registry.functions.stake(MIN_STAKE), late, "EnforcedPause")
    chain.w3.provider.make_request("evm_increaseTime", [UNBONDING_S])  # type: ignore[arg-type]
    chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    transact(chain.w3, chain.registry.functions.withdraw(), w)
    transact(chain.w3, chain.registry.functions.unpause(), chain.admin)
    transact(chain.w3, chain.registry.functions.stake(MIN_STAKE), late)
    assert chain.registry.functions.isActive(late).call()
