"""Settlement: every window, pay the ledger's pending credits on chain, exactly once.

One window (`Settler.settle_once`):

1. Resolve the batches still open from earlier windows, oldest first; stop at the first whose
   fate is still unknown, so batch N+1 is never sent before batch N is resolved.
2. Snapshot the ledger into batches of at most `max_batch` workers, and settle each in order.

Settling one batch:

- Not yet signed: read the distributor's `batchNonce()` N, estimate and sign
  `batchDistributeRewards(N, workers, amounts)`, and record it in the ledger (batch nonce, payload
  hash, account nonce, signed transaction) before broadcasting. If the distributor would refuse the
  batch (the pool is empty, say), nothing was signed: the batch is reverted to pending.
- Signed: decide its fate from the chain alone (`decide_fate`), broadcast again while it is pending
  (a node that dropped it takes it back), wait a bounded time for a receipt, and replace it with
  higher fees when it stays stuck.

`decide_fate` is the whole rule, and pure:

    batchNonce > N, event at N carries our payload ......... PAID      -> commit
    batchNonce > N, event at N carries another payload ..... NOT_PAID  -> revert (ours can never land)
    batchNonce == N, our account nonce already mined ....... NOT_PAID  -> revert (ours can never land)
    batchNonce == N, our account nonce not yet mined ....... PENDING   -> keep trying
    batchNonce < N .......................................... the chain went backwards: stop, loudly

A batch is reverted only when no transaction signed for it can ever land, so the credits it
returns to pending cannot be paid twice; it is committed only when the chain shows it paid.
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

__all__ = ["Fate", "SettlementError", "SettlementOutcome", "Settler", "decide_fate"]

log = logging.getLogger(__name__)


class Fate(Enum):
    PAID = "paid"
    NOT_PAID = "not_paid"
    PENDING = "pending"


class SettlementError(Exception):
    """The chain contradicts the ledger; settlement stops rather than guess."""


def decide_fate(
    record: SendRecord, batch_nonce: int, landed_payload: str | None, confirmed_nonce: int
) -> Fate:
    """The fate of a signed batch, from what the chain shows now."""
    if batch_nonce > record.batch_nonce:
        if landed_payload is None:
            raise SettlementError(
                f"batch nonce {record.batch_nonce} was used but no RewardsDistributed event is found"
            )
        return Fate.PAID if landed_payload == record.payload_hash else Fate.NOT_PAID
    if batch_nonce < record.batch_nonce:
        raise SettlementError(
            f"the distributor's batch nonce is {batch_nonce}, below {record.batch_nonce} that a batch was "
            "signed for: is this the right chain and contract?"
        )
    return Fate.NOT_PAID if confirmed_nonce > record.account_nonce else Fate.PENDING


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
        on_stage: Callable[[str, Batch], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._client = client
        self._max_batch = max_batch
        self._receipt_timeout_s = receipt_timeout_s
        self._poll_s = poll_s
        self._max_replacements = max_replacements
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
            nonce = await self._client.batch_nonce()
            try:
                prepared = await self._client.prepare(nonce, batch.workers, batch.amounts)
            except BatchRefusedError as refused:
                await self._ledger.revert(batch.id)
                return BatchResult(batch, SettlementOutcome.REVERTED, str(refused))
            record = SendRecord(
                nonce, prepared.payload_hash, prepared.account_nonce, prepared.gas, (prepared.send,)
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
            await self._client.broadcast(record.sends[-1])
            self._on_stage("sent", batch)
            if await self._wait_mined(record):
                self._on_stage("mined", batch)
                continue
            if replacements == self._max_replacements:
                return BatchResult(batch, SettlementOutcome.UNRESOLVED, "still pending after fee bumps")
            replacements += 1
            record = replace(record, sends=(*record.sends, self._client.replacement(batch)))
            batch = await self._ledger.record_send(batch.id, record)
            self._on_stage("replaced", batch)

    async def _fate(self, record: SendRecord) -> Fate:
        batch_nonce = await self._client.batch_nonce()
        landed = (
            await self._client.landed_payload(record.batch_nonce)
            if batch_nonce > record.batch_nonce
            else None
        )
        confirmed = await self._client.confirmed_account_nonce()
        return decide_fate(record, batch_nonce, landed, confirmed)

    async def _wait_mined(self, record: SendRecord) -> bool:
        """Wait, bounded, until one of the batch's transactions has a receipt."""
        deadline = time.monotonic() + self._receipt_timeout_s
        hashes = [send.tx_hash for send in record.sends]
        while time.monotonic() < deadline:
            if await self._client.mined(hashes):
                return True
            await asyncio.sleep(self._poll_s)
        return False
