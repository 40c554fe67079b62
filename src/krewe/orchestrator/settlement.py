"""Settlement: every window, pay the ledger's pending credits on chain, exactly once.

One window (`Settler.settle_once`):

1. Resolve the batches still open from earlier windows, oldest first; stop at the first whose
   fate is still unknown, so batch N+1 is never sent before batch N is resolved.
2. Snapshot the ledger into batches of at most `max_batch` workers, and settle each in order.

Settling one batch:

- Not yet signed: read the head block B and the distributor's `batchNonce()` N at B, estimate and
  sign `batchDistributeRewards(N, workers, amounts)` at the next free account nonce, and record it
  in the ledger (batch nonce, payload hash, account nonce, B, signed transaction) before
  broadcasting. If the distributor would refuse the batch (the pool is empty, say), nothing was
  signed: the batch is reverted to pending.
- Signed: decide its fate from the chain alone (`decide_fate`), broadcast again while it is pending
  (a node that dropped it takes it back), wait a bounded time for a receipt, and replace it with
  higher fees when it stays stuck, never above the fee cap.

Every read behind one decision is pinned to a block number, so the transaction cannot be mined
between two of them. Two blocks are read: the head H, and the settled block S = H - confirmations,
the newest block at least `confirmations` deep. `decide_fate` is the whole rule, and pure
(N and A are the batch nonce and account nonce the batch was signed with):

    batchNonce at H < N ...................................... the chain went backwards: stop, loudly
    batchNonce at S > N, event at N carries our payload ....... PAID        -> commit
    batchNonce at S > N, event at N carries another payload ... NOT_PAID    -> revert (ours can never land)
    batchNonce at S <= N, account nonce A mined at S .......... NOT_PAID    -> revert (ours can never land)
    account nonce A mined at H (not yet at S) ................. UNCONFIRMED -> wait for depth
    otherwise ................................................. PENDING     -> keep trying

S is not read while it is older than the block the batch was signed at: nothing about the batch
can be settled there yet. A batch is reverted only when no transaction signed for it can ever land,
so the credits it returns to pending cannot be paid twice; it is committed only when the chain
shows it paid, `confirmations` blocks deep.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.chain import BatchRefusedError, ChainClient
from krewe.orchestrator.ledger import Batch, SendRecord

__all__ = ["ChainView", "Fate", "SettlementError", "SettlementOutcome", "Settler", "decide_fate"]

log = logging.getLogger(__name__)


class Fate(Enum):
    PAID = "paid"
    NOT_PAID = "not_paid"
    UNCONFIRMED = "unconfirmed"  # mined, not yet deep enough to commit or revert
    PENDING = "pending"


class SettlementError(Exception):
    """The chain contradicts the ledger; settlement stops rather than guess."""


@dataclass(frozen=True, slots=True)
class ChainView:
    """What the chain shows about one signed batch as of one block."""

    block: int
    batch_nonce: int  # the distributor's batchNonce()
    account_nonce: int  # how many of the orchestrator account's transactions are mined
    landed_payload: str | None = None  # payload of the event at the batch's nonce, when looked up


def decide_fate(record: SendRecord, head: ChainView, settled: ChainView | None) -> Fate:
    """The fate of a signed batch, from the chain at its head and at its settled block (None while
    that block is older than the batch's signing block)."""
    if head.batch_nonce < record.batch_nonce:
        raise SettlementError(
            f"the distributor's batch nonce is {head.batch_nonce}, below {record.batch_nonce} that a "
            "batch was signed for: is this the right chain and contract?"
        )
    if settled is not None:
        if settled.batch_nonce > record.batch_nonce:
            if settled.landed_payload is None:
                raise SettlementError(
                    f"batch nonce {record.batch_nonce} was used but no RewardsDistributed event is found"
                )
            return Fate.PAID if settled.landed_payload == record.payload_hash else Fate.NOT_PAID
        if settled.account_nonce > record.account_nonce:
            return Fate.NOT_PAID
    if head.account_nonce > record.account_nonce:
        return Fate.UNCONFIRMED
    return Fate.PENDING


class SettlementOutcome(Enum):
    PAID = "paid"
    REVERTED = "reverted"  # credits back to pending
    UNRESOLVED = "unresolved"  # fate still unknown; resumed next window


@dataclass(frozen=True, slots=True)
class BatchResult:
    batch: Batch
    outcome: SettlementOutcome
    reason: str = ""


class Settler:
    """Runs settlement windows for one ledger through one chain client."""

    def __init__(
        self,
        ledger: LedgerService,
        client: ChainClient,
        *,
        max_batch: int = 500,
        receipt_timeout_s: float = 60.0,
        poll_s: float = 0.2,
        max_replacements: int = 3,
        confirmations: int = 2,
        on_stage: Callable[[str, Batch], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._client = client
        self._max_batch = max_batch
        self._receipt_timeout_s = receipt_timeout_s
        self._poll_s = poll_s
        self._max_replacements = max_replacements
        self._confirmations = confirmations
        self._on_stage = on_stage or (lambda stage, batch: None)

    async def settle_once(self) -> list[BatchResult]:
        """One settlement window. Network errors leave the batch open, to be resumed next time."""
        results: list[BatchResult] = []
        for batch in await self._ledger.open_batches():
            results.append(await self._settle_safely(batch))
            if results[-1].outcome is SettlementOutcome.UNRESOLVED:
                return results
        for batch in await self._ledger.snapshot(self._max_batch):
            self._on_stage("snapshot", batch)
        for batch in await self._ledger.open_batches():
            results.append(await self._settle_safely(batch))
            if results[-1].outcome is SettlementOutcome.UNRESOLVED:
                break
        return results

    async def _settle_safely(self, batch: Batch) -> BatchResult:
        try:
            result = await self._settle(batch)
        except (OSError, TimeoutError, ConnectionError) as error:
            log.warning("settlement of batch %d paused, the chain is unreachable: %s", batch.id, error)
            return BatchResult(batch, SettlementOutcome.UNRESOLVED, f"chain unreachable: {error}")
        log.info("batch %d %s %s", batch.id, result.outcome.value, result.reason)
        return result

    async def _settle(self, batch: Batch) -> BatchResult:
        record = batch.send
        if record is None:
            signed_block = await self._client.block_number()
            nonce = await self._client.batch_nonce(signed_block)
            open_sends = [open_batch.send for open_batch in await self._ledger.open_batches()]
            try:
                prepared = await self._client.prepare(
                    nonce,
                    batch.workers,
                    batch.amounts,
                    open_account_nonces=[send.account_nonce for send in open_sends if send is not None],
                )
            except BatchRefusedError as refused:
                await self._ledger.revert(batch.id)
                return BatchResult(batch, SettlementOutcome.REVERTED, str(refused))
            record = SendRecord(
                nonce,
                prepared.payload_hash,
                prepared.account_nonce,
                prepared.gas,
                (prepared.send,),
                signed_block,
            )
            batch = await self._ledger.record_send(batch.id, record)
            self._on_stage("recorded", batch)
        replacements = 0
        while True:
            fate = await self._fate(record)
            if fate is Fate.PAID:
                await self._ledger.commit(batch.id)
                return BatchResult(batch, SettlementOutcome.PAID, f"batch nonce {record.batch_nonce}")
            if fate is Fate.NOT_PAID:
                await self._ledger.revert(batch.id)
                return BatchResult(
                    batch, SettlementOutcome.REVERTED, f"batch nonce {record.batch_nonce} not paid"
                )
            if fate is Fate.UNCONFIRMED:
                return BatchResult(
                    batch,
                    SettlementOutcome.UNRESOLVED,
                    f"mined, waiting until it is {self._confirmations} blocks deep",
                )
            await self._client.broadcast(record.sends[-1])
            self._on_stage("sent", batch)
            if await self._wait_mined(record):
                self._on_stage("mined", batch)
                continue
            if replacements == self._max_replacements:
                return BatchResult(batch, SettlementOutcome.UNRESOLVED, "still pending after fee bumps")
            bumped = self._client.replacement(batch)
            if bumped is None:
                return BatchResult(
                    batch, SettlementOutcome.UNRESOLVED, "still pending at the max_fee_gwei cap"
                )
            replacements += 1
            record = replace(record, sends=(*record.sends, bumped))
            batch = await self._ledger.record_send(batch.id, record)
            self._on_stage("replaced", batch)

    async def _fate(self, record: SendRecord) -> Fate:
        head_block = await self._client.block_number()
        settled_block = head_block - self._confirmations
        head = await self._view(record, head_block, find_event=settled_block == head_block)
        if settled_block == head_block:
            settled: ChainView | None = head
        elif settled_block < record.signed_block:
            settled = None
        else:
            settled = await self._view(record, settled_block, find_event=True)
        return decide_fate(record, head, settled)

    async def _view(self, record: SendRecord, block: int, *, find_event: bool) -> ChainView:
        """The chain as of `block`; every read pinned to it."""
        batch_nonce = await self._client.batch_nonce(block)
        account_nonce = await self._client.mined_account_nonce(block)
        landed = (
            await self._client.landed_payload(record.batch_nonce, since=record.signed_block, until=block)
            if find_event and batch_nonce > record.batch_nonce
            else None
        )
        return ChainView(block, batch_nonce, account_nonce, landed)

    async def _wait_mined(self, record: SendRecord) -> bool:
        """Wait, bounded, until one of the batch's transactions has a receipt."""
        deadline = time.monotonic() + self._receipt_timeout_s
        hashes = [send.tx_hash for send in record.sends]
        while time.monotonic() < deadline:
            if await self._client.mined(hashes):
                return True
            await asyncio.sleep(self._poll_s)
        return False
