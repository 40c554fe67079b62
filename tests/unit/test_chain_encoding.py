"""The calldata the chain client encodes without web3's contract layer is byte for byte what that
layer encodes."""

from eth_account import Account
from web3 import Web3

from krewe.contracts import load_artifact
from krewe.orchestrator.chain import batch_calldata, is_active_calldata


def test_batch_calldata_is_what_web3_encodes() -> None:
    w3 = Web3()
    distributor = w3.eth.contract(
        address=w3.to_checksum_address("0x" + "11" * 20), abi=load_artifact("RewardDistributor").abi
    )
    for size in (0, 1, 3, 257):
        workers = tuple(Account.from_key((index + 1).to_bytes(32, "big")).address for index in range(size))
        amounts = tuple(10**18 + index for index in range(size))
        expected = distributor.encode_abi("batchDistributeRewards", args=[41, list(workers), list(amounts)])
        assert batch_calldata(41, workers, amounts) == expected


def test_is_active_calldata_is_what_web3_encodes() -> None:
    w3 = Web3()
    registry = w3.eth.contract(
        address=w3.to_checksum_address("0x" + "22" * 20), abi=load_artifact("WorkerRegistry").abi
    )
    for index in (1, 2, 99):
        worker = Account.from_key(index.to_bytes(32, "big")).address
        assert is_active_calldata(worker) == registry.encode_abi("isActive", args=[worker])
