"""ChainClient: the orchestrator's one way onto the chain.

It holds the orchestrator's key and does exactly one thing with it: sign
`batchDistributeRewards(nonce, workers, amounts)` on the RewardDistributor. Everything else it does
is a read: the head's block number, and at a given block the distributor's `batchNonce()` and the
account's mined nonce; the `RewardsDistributed` event of a given nonce; receipts.

Reads that decide anything take a block number, so that several of them see one chain state.
Event searches go in ranges of at most `log_range` blocks, because many providers refuse larger
ones. The next account nonce is the chain's pending count, or past the ledger's open sends if they
reach further, so a transaction signed and never sent leaves no gap. Fees are EIP-1559 (twice the
base fee plus the suggested tip), never above `max_fee_gwei`; gas is estimated, with a margin. A
stuck transaction is replaced by `replacement`: the same calldata and account nonce, both fees
bumped, up to the cap.

Requests go through `_Provider`, web3's HTTP provider posting on its own aiohttp session. web3's
own posts take a process-wide `threading.Lock` on a worker thread for every request, and a request
cancelled while it waits (a read under `asyncio.wait_for`) can leave that lock held for good: every
later web3 request of the process then hangs (web3.py issue 3867).

Settlement's own calls (the reads above, the estimate, the fees, the broadcast) are plain JSON-RPC
posted on that session (`_Provider.rpc`): through web3's method and contract layers each cost the
event loop 0.3 to 2 ms of validation and formatting, about 30 ms per settlement in slices between
jobs, against about 0.25 ms a call posted as it is. web3 is left for the checks at connection and
the dashboard's occasional reads.

A batch's calldata and payload are ABI-encoded here, word by word, and signed on the event loop:
0.3 ms to encode 300 recipients, 1.5 ms to sign a batch of 500. web3's contract layer held the loop
about 100 ms per batch; eth_abi took 5 ms on a worker thread, which took the interpreter from the
loop for that long, in slices of the switch interval, while jobs waited.
"""

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import ceil
from typing import Any, Literal

import aiohttp
import orjson
from eth_typing import HexStr
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.types import RPCEndpoint, RPCResponse

from krewe.contracts import error_name, load_artifact
from krewe.keys import SigningKey
from krewe.orchestrator.ledger import Batch, SignedSend
from krewe.settings import SettingsError

__all__ = [
    "BatchRefusedError",
    "ChainClient",
    "ChainError",
    "RegistryReader",
    "SigningKey",
    "payload_hash",
]

log = logging.getLogger(__name__)

GWEI = 10**9
BATCH_TYPES = ["uint256", "address[]", "uint256[]"]
BATCH_SELECTOR = AsyncWeb3.keccak(text=f"batchDistributeRewards({','.join(BATCH_TYPES)})")[:4]
IS_ACTIVE_SELECTOR = "0x" + AsyncWeb3.keccak(text="isActive(address)")[:4].hex()
BATCH_NONCE_CALLDATA = "0x" + AsyncWeb3.keccak(text="batchNonce()")[:4].hex()
REWARDS_DISTRIBUTED_TOPIC = (
    "0x" + AsyncWeb3.keccak(text="RewardsDistributed(uint256,bytes32,uint256,uint256)").hex()
)


class ChainError(Exception):
    """The chain answered something the client cannot work with."""


class BatchRefusedError(ChainError):
    """The distributor would revert this batch (estimated before anything was signed)."""


class RpcError(ChainError):
    """The node answered a JSON-RPC call with an error."""

    def __init__(self, method: str, error: object) -> None:
        fields = error if isinstance(error, dict) else {}
        self.data = fields.get("data")  # a revert's data, for a call the contract reverted
        super().__init__(f"{method}: {fields.get('message', error)!r:.300}")


class _Provider(AsyncHTTPProvider):
    """web3's HTTP provider, posting on a session of its own (see the module's text)."""

    def __init__(self, rpc_url: str, timeout_s: float) -> None:
        super().__init__(rpc_url)
        self._url = rpc_url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self._ids = 0

    async def rpc(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC call, encoded with orjson; its result, or RpcError for an error answer."""
        self._ids += 1
        body = orjson.dumps({"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params})
        reply = orjson.loads(await self._post(body))
        if not isinstance(reply, dict) or ("result" not in reply and "error" not in reply):
            raise ChainError(f"{method}: not a JSON-RPC answer: {reply!r:.200}")
        if "error" in reply:
            raise RpcError(method, reply["error"])
        return reply["result"]

    async def _post(self, data: bytes) -> bytes:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout, raise_for_status=True)
        headers = {"Content-Type": "application/json"}
        try:
            async with self._http.post(self._url, data=data, headers=headers) as response:
                return await response.read()
        except aiohttp.ClientConnectionError as error:  # refused, or dropped mid-request
            raise ConnectionError(f"{self._url}: {error}") from error

    async def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        return await self._post(request_data)

    async def make_batch_request(
        self, batch_requests: list[tuple[RPCEndpoint, Any]]
    ) -> list[RPCResponse] | RPCResponse:
        raw = await self._post(self.encode_batch_rpc_request(batch_requests))
        response: list[RPCResponse] | RPCResponse = self.decode_rpc_response(raw)
        return response

    async def disconnect(self) -> None:
        if self._http is not None:
            await self._http.close()


def payload_hash(workers: tuple[str, ...], amounts: tuple[int, ...]) -> str:
    """keccak256(abi.encode(workers, amounts)), as the distributor's event carries it."""
    return "0x" + AsyncWeb3.keccak(_encode_arrays((), workers, amounts)).hex().removeprefix("0x")


def batch_calldata(batch_nonce: int, workers: tuple[str, ...], amounts: tuple[int, ...]) -> HexStr:
    """The data of `batchDistributeRewards(batch_nonce, workers, amounts)`."""
    arguments = _encode_arrays((_word(batch_nonce),), workers, amounts)
    return HexStr("0x" + (BATCH_SELECTOR + arguments).hex())


def _encode_arrays(head: tuple[bytes, ...], workers: tuple[str, ...], amounts: tuple[int, ...]) -> bytes:
    """The ABI encoding of the static words `head`, then `workers` as address[] and `amounts` as
    uint256[]: each array's offset after the head, and each array as its length and a word per
    item. Written out because eth_abi took 5 ms for 300 recipients, and settlement encodes twice."""
    addresses = b"".join(_address_word(worker) for worker in workers)
    values = b"".join(_word(amount) for amount in amounts)
    first = 32 * (len(head) + 2)
    offsets = (_word(first), _word(first + 32 + len(addresses)))
    return b"".join((*head, *offsets, _word(len(workers)), addresses, _word(len(amounts)), values))


def _word(value: int) -> bytes:
    """A uint256 as its 32-byte word; OverflowError for a negative value or one of 2**256 or more."""
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    raw = bytes.fromhex(address[2:]) if len(address) == 42 and address.startswith("0x") else b""
    if len(raw) != 20:  # fromhex skips whitespace: "0x" and 40 characters that are not all hex fail
        raise ValueError(f"not a 20-byte address: {address!r}")
    return bytes(12) + raw


@dataclass(frozen=True, slots=True)
class Prepared:
    payload_hash: str
    account_nonce: int
    gas: int
    send: SignedSend


class ChainClient:
    def __init__(
        self,
        provider: _Provider,
        distributor: str,
        key: SigningKey,
        *,
        chain_id: int,
        gas_margin: float = 1.25,
        fee_bump: float = 1.125,
        from_block: int = 0,
        log_range: int = 5000,
        max_fee_gwei: int = 500,
    ) -> None:
        self._rpc = provider.rpc
        self.w3 = AsyncWeb3(provider)
        self._key = key
        self.chain_id = chain_id
        self._gas_margin = gas_margin
        self._fee_bump = fee_bump
        self._from_block = from_block
        self._log_range = log_range
        self._max_fee = max_fee_gwei * GWEI
        self.distributor = self.w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(distributor), abi=load_artifact("RewardDistributor").abi
        )
        self.address = key.address
        self._prepared: tuple[tuple[int, tuple[str, ...], tuple[int, ...]], HexStr] | None = None

    @classmethod
    async def connect(
        cls,
        rpc_url: str,
        distributor: str,
        key: SigningKey,
        *,
        timeout_s: float = 10.0,
        max_batch: int | None = None,
        **options: Any,
    ) -> "ChainClient":
        """Connect and check the distributor: this key must be its orchestrator, and a `max_batch`
        setting, when given, must not exceed its `maxBatch` (or every batch would revert)."""
        provider = _Provider(rpc_url, timeout_s)
        chain_id = _quantity(await provider.rpc("eth_chainId", []))
        client = cls(provider, distributor, key, chain_id=chain_id, **options)
        orchestrator = await client.distributor.functions.orchestrator().call()
        if orchestrator != key.address:
            raise ChainError(
                f"the distributor's orchestrator is {orchestrator}, not this key's {key.address}"
            )
        if max_batch is not None:
            on_chain: int = await client.distributor.functions.maxBatch().call()
            if max_batch > on_chain:
                raise SettingsError(
                    f"max_batch: {max_batch} is above the distributor's maxBatch ({on_chain}); "
                    f"set max_batch to {on_chain} or less"
                )
        return client

    async def close(self) -> None:
        await self.w3.provider.disconnect()

    async def block_number(self) -> int:
        """The number of the chain's head block."""
        return _quantity(await self._rpc("eth_blockNumber", []))

    async def batch_nonce(self, block: int | Literal["latest"] = "latest") -> int:
        """The distributor's `batchNonce()` as of `block`."""
        call = {"to": self.distributor.address, "data": BATCH_NONCE_CALLDATA}
        return _quantity(await self._rpc("eth_call", [call, _block_tag(block)]))

    async def mined_account_nonce(self, block: int) -> int:
        """How many of this account's transactions are mined as of `block`."""
        return _quantity(await self._rpc("eth_getTransactionCount", [self.address, _block_tag(block)]))

    async def landed_payload(self, batch_nonce: int, *, since: int, until: int) -> str | None:
        """The payload hash of the batch that landed with `batch_nonce` in blocks `since` to `until`
        (or from `from_block`, if later), or None if none did; searched `log_range` blocks at a time."""
        topics = [REWARDS_DISTRIBUTED_TOPIC, "0x" + _word(batch_nonce).hex()]
        start = max(since, self._from_block)
        while start <= until:
            end = min(start + self._log_range - 1, until)
            search = {
                "address": self.distributor.address,
                "topics": topics,
                "fromBlock": hex(start),
                "toBlock": hex(end),
            }
            logs = await self._rpc("eth_getLogs", [search])
            if not isinstance(logs, list):
                raise ChainError(f"eth_getLogs: not a list of logs: {logs!r:.200}")
            if logs:
                return _payload_hash_of(logs[0])
            start = end + 1
        return None

    async def prepare(
        self,
        batch_nonce: int,
        workers: tuple[str, ...],
        amounts: tuple[int, ...],
        *,
        open_account_nonces: Iterable[int] = (),
    ) -> Prepared:
        """Estimate and sign the batch; raises BatchRefusedError if the distributor would revert it.

        `open_account_nonces` are those of the ledger's open sends: the new transaction goes after
        them and after every transaction the chain has, mined or pending."""
        data, payload = batch_calldata(batch_nonce, workers, amounts), payload_hash(workers, amounts)
        self._prepared = ((batch_nonce, workers, amounts), data)
        call = {"from": self.address, "to": self.distributor.address, "data": data}
        try:
            estimate = _quantity(await self._rpc("eth_estimateGas", [call]))
        except RpcError as error:
            if not (isinstance(error.data, str) and error.data.startswith("0x")):
                raise
            raise BatchRefusedError(f"the distributor refuses the batch: {error_name(error.data)}") from None
        pending = _quantity(await self._rpc("eth_getTransactionCount", [self.address, "pending"]))
        account_nonce = max([pending, *(nonce + 1 for nonce in open_account_nonces)])
        tip = min(_quantity(await self._rpc("eth_maxPriorityFeePerGas", [])), self._max_fee)
        block = await self._rpc("eth_getBlockByNumber", ["latest", False])
        base_fee = _quantity(block.get("baseFeePerGas") if isinstance(block, dict) else block)
        max_fee = min(2 * base_fee + tip, self._max_fee)
        gas = ceil(estimate * self._gas_margin)
        send = self._sign(data, account_nonce, gas, max_fee, tip)
        return Prepared(payload, account_nonce, gas, send)

    def replacement(self, batch: Batch) -> SignedSend | None:
        """The batch's call again at the same account nonce, both fees bumped (a stuck transaction),
        never above `max_fee_gwei`; None once the last send is at the cap: it can only wait."""
        record = batch.send
        if record is None:
            raise ChainError(f"batch {batch.id} was never signed")
        last = record.sends[-1]
        if last.max_fee_per_gas >= self._max_fee:
            return None
        arguments = (record.batch_nonce, batch.workers, batch.amounts)
        if self._prepared is not None and self._prepared[0] == arguments:
            data = self._prepared[1]
        else:  # prepared before a restart: encoded here, on the loop, once
            data = batch_calldata(*arguments)
        max_fee = min(ceil(last.max_fee_per_gas * self._fee_bump) + 1, self._max_fee)
        tip = min(ceil(last.max_priority_fee_per_gas * self._fee_bump) + 1, max_fee)
        return self._sign(data, record.account_nonce, record.gas, max_fee, tip)

    def _sign(self, data: HexStr, account_nonce: int, gas: int, max_fee: int, tip: int) -> SignedSend:
        transaction = {
            "to": self.distributor.address,
            "data": data,
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
            await self._rpc("eth_sendRawTransaction", [send.raw])
        except RpcError as error:
            log.info("broadcast of %s not accepted: %s", send.tx_hash, error)

    async def mined(self, tx_hashes: list[str]) -> bool:
        """Whether any of these transactions has a receipt."""
        for tx_hash in tx_hashes:
            if await self._rpc("eth_getTransactionReceipt", [tx_hash]) is not None:
                return True
        return False


def _quantity(value: object) -> int:
    """A JSON-RPC quantity ("0x" and hex digits) as an int; ChainError for anything else."""
    if not (isinstance(value, str) and value.startswith("0x")):
        raise ChainError(f"expected a hex quantity from the node, got {value!r:.100}")
    try:
        return int(value, 16)
    except ValueError:
        raise ChainError(f"expected a hex quantity from the node, got {value!r:.100}") from None


def _block_tag(block: int | Literal["latest"]) -> str:
    return block if block == "latest" else hex(block)


def _payload_hash_of(log_entry: object) -> str:
    """The payloadHash of a RewardsDistributed log: the first word of its data."""
    data = log_entry.get("data") if isinstance(log_entry, dict) else None
    if not (isinstance(data, str) and len(data) >= 2 + 64):
        raise ChainError(f"a RewardsDistributed log without its payload hash: {log_entry!r:.200}")
    return "0x" + data[2:66].lower()


def is_active_calldata(worker: str) -> str:
    """The calldata of `isActive(worker)`: the selector, then the address in a 32-byte word."""
    return IS_ACTIVE_SELECTOR + worker.removeprefix("0x").lower().rjust(64, "0")


class RegistryReader:
    """`WorkerRegistry.isActive`, each answer reused for `cache_s` seconds (a read, never a send).

    The reads are plain `eth_call`s posted as JSON-RPC batches of up to `batch` workers, encoded
    with orjson: through web3's contract layer each read cost the event loop about 8 ms on this
    machine, and the periodic re-check reads every connected miner (10,000 reads every
    `registry_cache_s`), as a restarted orchestrator does when its miners log in again.
    """

    def __init__(
        self,
        rpc_url: str,
        registry: str,
        *,
        cache_s: float,
        clock: Callable[[], float],
        batch: int = 500,
        timeout_s: float = 10.0,
    ) -> None:
        self._rpc_url = rpc_url
        self._registry = AsyncWeb3.to_checksum_address(registry)
        self._cache_s = cache_s
        self._clock = clock
        self._batch = batch
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self._answers: dict[str, tuple[float, bool]] = {}

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def is_active(self, worker: str) -> bool:
        return (await self.active_many([worker]))[worker]

    async def active_many(self, workers: Iterable[str]) -> dict[str, bool]:
        """Whether each worker is active, from the cache or read in batches."""
        now = self._clock()
        answers: dict[str, bool] = {}
        unknown = []
        for worker in workers:
            cached = self._answers.get(worker)
            if cached is not None and now - cached[0] < self._cache_s:
                answers[worker] = cached[1]
            else:
                unknown.append(worker)
        if not unknown:
            return answers
        if len(self._answers) >= 10_000:  # keep memory bounded: forget answers that expired
            self._answers = {w: a for w, a in self._answers.items() if now - a[0] < self._cache_s}
        for start in range(0, len(unknown), self._batch):
            chunk = unknown[start : start + self._batch]
            for worker, active in zip(chunk, await self._read(chunk), strict=True):
                answers[worker] = active
                self._answers[worker] = (now, active)
        return answers

    async def _read(self, workers: list[str]) -> list[bool]:
        body = orjson.dumps(
            [
                {
                    "jsonrpc": "2.0",
                    "id": index,
                    "method": "eth_call",
                    "params": [{"to": self._registry, "data": is_active_calldata(worker)}, "latest"],
                }
                for index, worker in enumerate(workers)
            ]
        )
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Content-Type": "application/json"}
        async with self._http.post(self._rpc_url, data=body, headers=headers) as response:
            response.raise_for_status()
            replies = orjson.loads(await response.read())
        if not isinstance(replies, list) or len(replies) != len(workers):
            raise ChainError(
                f"the node answered a batch of {len(workers)} isActive reads with {replies!r:.200}"
            )
        by_id = {reply.get("id"): reply for reply in replies if isinstance(reply, dict)}
        active = []
        for index, worker in enumerate(workers):
            reply = by_id.get(index, {})
            if not isinstance(reply.get("result"), str):
                raise ChainError(f"isActive({worker}) failed: {reply.get('error', reply)!r:.200}")
            active.append(int(reply["result"], 16) != 0)
        return active
