"""ChainClient: the orchestrator's one way onto the chain.

It holds the orchestrator's key and does exactly one thing with it: sign
`batchDistributeRewards(nonce, workers, amounts)` on the RewardDistributor. Everything else it does
is a read: the distributor's `batchNonce()`, the `RewardsDistributed` event of a given nonce, the
account's nonce, receipts.

The client is the only sender for its account: it keeps the next account nonce itself, and
re-reads the chain's pending count before each new transaction in case a send failed. Fees are
EIP-1559 (twice the base fee plus the suggested tip); gas is estimated, with a margin. A stuck
transaction is replaced by `replacement`: the same calldata and account nonce, both fees bumped.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from math import ceil
from typing import Any

from eth_abi.abi import encode
from eth_typing import HexStr
from web3 import AsyncWeb3
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound, Web3RPCError

from krewe.contracts import error_name, load_artifact
from krewe.keys import SigningKey
from krewe.orchestrator.ledger import Batch, SignedSend

__all__ = [
    "BatchRefusedError",
    "ChainClient",
    "ChainError",
    "RegistryReader",
    "SigningKey",
    "payload_hash",
]

log = logging.getLogger(__name__)


class ChainError(Exception):
    """The chain answered something the client cannot work with."""


class BatchRefusedError(ChainError):
    """The distributor would revert this batch (estimated before anything was signed)."""


def payload_hash(workers: tuple[str, ...], amounts: tuple[int, ...]) -> str:
    """keccak256(abi.encode(workers, amounts)), as the distributor's event carries it."""
    return "0x" + AsyncWeb3.keccak(
        encode(["address[]", "uint256[]"], [list(workers), list(amounts)])
    ).hex().removeprefix("0x")


@dataclass(frozen=True, slots=True)
class Prepared:
    payload_hash: str
    account_nonce: int
    gas: int
    send: SignedSend


class ChainClient:
    def __init__(
        self,
        w3: AsyncWeb3[Any],
        distributor: str,
        key: SigningKey,
        *,
        chain_id: int,
        gas_margin: float = 1.25,
        fee_bump: float = 1.125,
        from_block: int = 0,
    ) -> None:
        self.w3 = w3
        self._key = key
        self.chain_id = chain_id
        self._gas_margin = gas_margin
        self._fee_bump = fee_bump
        self._from_block = from_block
        self._next_account_nonce: int | None = None
        self.distributor = w3.eth.contract(
            address=w3.to_checksum_address(distributor), abi=load_artifact("RewardDistributor").abi
        )
        self.address = key.address

    @classmethod
    async def connect(
        cls, rpc_url: str, distributor: str, key: SigningKey, *, timeout_s: float = 10.0, **options: Any
    ) -> "ChainClient":
        w3 = AsyncWeb3(AsyncWeb3.AsyncHTTPProvider(rpc_url, request_kwargs={"timeout": timeout_s}))
        chain_id = await w3.eth.chain_id
        client = cls(w3, distributor, key, chain_id=chain_id, **options)
        orchestrator = await client.distributor.functions.orchestrator().call()
        if orchestrator != key.address:
            raise ChainError(
                f"the distributor's orchestrator is {orchestrator}, not this key's {key.address}"
            )
        return client

    async def close(self) -> None:
        await self.w3.provider.disconnect()

    async def batch_nonce(self) -> int:
        nonce: int = await self.distributor.functions.batchNonce().call()
        return nonce

    async def landed_payload(self, batch_nonce: int) -> str | None:
        """The payload hash of the batch that landed with `batch_nonce`, or None if none did."""
        event = self.distributor.events.RewardsDistributed()
        logs = await event.get_logs(argument_filters={"nonce": batch_nonce}, from_block=self._from_block)
        if not logs:
            return None
        return "0x" + bytes(logs[0]["args"]["payloadHash"]).hex()

    async def confirmed_account_nonce(self) -> int:
        """How many of this account's transactions are mined."""
        count: int = await self.w3.eth.get_transaction_count(self.address, "latest")
        return count

    async def prepare(self, batch_nonce: int, workers: tuple[str, ...], amounts: tuple[int, ...]) -> Prepared:
        """Estimate and sign the batch; raises BatchRefusedError if the distributor would revert it."""
        call = self.distributor.functions.batchDistributeRewards(batch_nonce, list(workers), list(amounts))
        try:
            estimate = await call.estimate_gas({"from": self.address})
        except (ContractCustomError, ContractLogicError) as error:
            raise BatchRefusedError(
                f"the distributor refuses the batch: {error_name(str(error.data))}"
            ) from None
        pending: int = await self.w3.eth.get_transaction_count(self.address, "pending")
        account_nonce = max(pending, self._next_account_nonce or 0)
        tip = await self.w3.eth.max_priority_fee
        block = await self.w3.eth.get_block("latest")
        max_fee = 2 * int(block["baseFeePerGas"]) + tip
        gas = ceil(estimate * self._gas_margin)
        send = self._sign(call, account_nonce, gas, max_fee, tip)
        self._next_account_nonce = account_nonce + 1
        return Prepared(payload_hash(workers, amounts), account_nonce, gas, send)

    def replacement(self, batch: Batch) -> SignedSend:
        """The batch's call again at the same account nonce, both fees bumped (a stuck transaction)."""
        record = batch.send
        if record is None:
            raise ChainError(f"batch {batch.id} was never signed")
        call = self.distributor.functions.batchDistributeRewards(
            record.batch_nonce, list(batch.workers), list(batch.amounts)
        )
        last = record.sends[-1]
        tip = ceil(last.max_priority_fee_per_gas * self._fee_bump) + 1
        max_fee = max(ceil(last.max_fee_per_gas * self._fee_bump) + 1, tip)
        return self._sign(call, record.account_nonce, record.gas, max_fee, tip)

    def _sign(self, call: Any, account_nonce: int, gas: int, max_fee: int, tip: int) -> SignedSend:
        transaction = {
            "to": self.distributor.address,
            "data": call._encode_transaction_data(),
            "value": 0,
            "chainId": self.chain_id,
            "nonce": account_nonce,
            "gas": gas,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": tip,
            "type": 2,
        }
        tx_hash, raw = self._key.sign_transaction(transaction)
        return SignedSend(tx_hash, raw, max_fee, tip)

    async def broadcast(self, send: SignedSend) -> None:
        """Send a signed transaction. A node that already has it, or has mined its nonce, is not an
        error: the batch's fate is read from the chain afterwards either way."""
        try:
            await self.w3.eth.send_raw_transaction(HexStr(send.raw))
        except Web3RPCError as error:
            log.info("broadcast of %s not accepted: %s", send.tx_hash, error)

    async def mined(self, tx_hashes: list[str]) -> bool:
        """Whether any of these transactions has a receipt."""
        for tx_hash in tx_hashes:
            try:
                await self.w3.eth.get_transaction_receipt(HexStr(tx_hash))
            except TransactionNotFound:
                continue
            return True
        return False


class RegistryReader:
    """`WorkerRegistry.isActive`, each answer reused for `cache_s` seconds (a read, never a send)."""

    def __init__(
        self, w3: AsyncWeb3[Any], registry: str, *, cache_s: float, clock: Callable[[], float]
    ) -> None:
        self.w3 = w3
        self._registry = w3.eth.contract(
            address=w3.to_checksum_address(registry), abi=load_artifact("WorkerRegistry").abi
        )
        self._cache_s = cache_s
        self._clock = clock
        self._answers: dict[str, tuple[float, bool]] = {}

    async def is_active(self, worker: str) -> bool:
        now = self._clock()
        cached = self._answers.get(worker)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        active: bool = await self._registry.functions.isActive(worker).call()
        if len(self._answers) >= 10_000:  # keep memory bounded: forget answers that expired
            self._answers = {w: a for w, a in self._answers.items() if now - a[0] < self._cache_s}
        self._answers[worker] = (now, active)
        return active
