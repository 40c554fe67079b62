"""Sending contract transactions and waiting for them: signed with a key (real chains), or from an
account the node holds unlocked (anvil's development accounts). A revert is reported by the name
of the contract's custom error."""

from typing import Any

from eth_typing import HexStr
from web3 import Web3
from web3.exceptions import ContractCustomError, ContractLogicError

from krewe.contracts import error_name
from krewe.keys import SigningKey

__all__ = ["TransactionError", "send_signed", "transact"]


class TransactionError(Exception):
    """A transaction that would revert or did; the message names the call and the contract error."""


def _name(call: Any) -> str:
    return str(getattr(call, "fn_name", "constructor"))


def send_signed(w3: Web3, call: Any, key: SigningKey, *, timeout_s: float = 120) -> Any:
    """Estimate, sign with `key`, send, and wait for a successful receipt."""
    try:
        gas = call.estimate_gas({"from": key.address})
    except (ContractCustomError, ContractLogicError) as error:
        raise TransactionError(f"{_name(call)} would revert: {error_name(str(error.data))}") from None
    transaction = call.build_transaction({
        "from": key.address,
        "nonce": w3.eth.get_transaction_count(key.address, "pending"),
        "chainId": w3.eth.chain_id,
        "gas": gas * 5 // 4,
    })  # fmt: skip
    tx_hash, raw = key.sign_transaction(transaction)
    w3.eth.send_raw_transaction(HexStr(raw))
    receipt = w3.eth.wait_for_transaction_receipt(HexStr(tx_hash), timeout=timeout_s)
    if receipt["status"] != 1:
        raise TransactionError(f"{_name(call)} reverted in transaction {tx_hash}")
    return receipt


def transact(w3: Web3, call: Any, sender: str, *, timeout_s: float = 30) -> Any:
    """Send from an account the node holds unlocked, and wait for a successful receipt."""
    try:
        tx_hash = call.transact({"from": sender})
    except (ContractCustomError, ContractLogicError) as error:
        raise TransactionError(f"{_name(call)} would revert: {error_name(str(error.data))}") from None
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout_s)
    if receipt["status"] != 1:
        raise TransactionError(f"{_name(call)} from {sender} reverted")
    return receipt
