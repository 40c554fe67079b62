"""What the chain client encodes without web3's contract layer or eth_abi is byte for byte what they
encode."""

import pytest
from eth_abi.abi import encode
from eth_account import Account
from web3 import Web3

from krewe.contracts import load_artifact
from krewe.orchestrator.chain import batch_calldata, is_active_calldata, payload_hash


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


def test_the_payload_hash_is_keccak_of_what_eth_abi_encodes() -> None:
    for size in (0, 1, 2, 300):
        workers = tuple(f"0x{index + 1:040x}" for index in range(size))
        amounts = tuple(2**256 - 1 - index for index in range(size))
        expected = Web3.keccak(encode(["address[]", "uint256[]"], [list(workers), list(amounts)]))
        assert payload_hash(workers, amounts) == "0x" + expected.hex().removeprefix("0x")


@pytest.mark.parametrize(
    ("workers", "amounts", "error"),
    [
        (("0x" + "11" * 19,), (1,), ValueError),  # 19 bytes
        (("0x" + "zz" * 20,), (1,), ValueError),
        (("0x" + "11" * 19 + " 1",), (1,), ValueError),  # whitespace, which bytes.fromhex skips
        (("11" * 21,), (1,), ValueError),  # no 0x
        (("0x" + "11" * 20,), (-1,), OverflowError),
        (("0x" + "11" * 20,), (2**256,), OverflowError),
    ],
)
def test_what_is_no_address_or_uint256_is_refused(
    workers: tuple[str, ...], amounts: tuple[int, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        batch_calldata(1, workers, amounts)
    with pytest.raises(error):
        payload_hash(workers, amounts)


def test_is_active_calldata_is_what_web3_encodes() -> None:
    w3 = Web3()
    registry = w3.eth.contract(
        address=w3.to_checksum_address("0x" + "22" * 20), abi=load_artifact("WorkerRegistry").abi
    )
    for index in (1, 2, 99):
        worker = Account.from_key(index.to_bytes(32, "big")).address
        assert is_active_calldata(worker) == registry.encode_abi("isActive", args=[worker])
