"""Settlement's decision rule, and the Settler against a scripted chain (a test double for
ChainClient) that mines exactly when the test says, so a race can be staged at one exact read."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.chain import Prepared, payload_hash
from krewe.orchestrator.ledger import Batch, Credit, RewardLedger, SendRecord, SignedSend, SQLiteLedgerStore
from krewe.orchestrator.settlement import (
    ChainView,
    Fate,
    SettlementError,
    SettlementOutcome,
    Settler,
    decide_fate,
)

WORKERS = ("0x" + "a" * 40, "0x" + "b" * 40, "0x" + "c" * 40)

# The decision rule itself, exhaustively on its cases. The batch was signed for batch nonce 5 at
# account nonce 9, at block 100.
RECORD = SendRecord(batch_nonce=5, payload_hash="0xaa", account_nonce=9, gas=1, sends=(), signed_block=100)


def view(batch_nonce: int, account_nonce: int, landed: str | None = None, block: int = 110) -> ChainView:
    return ChainView(block, batch_nonce, account_nonce, landed)


@pytest.mark.parametrize(
    ("head", "settled", "fate"),
    [
        (view(6, 10, "0xaa"), view(6, 10, "0xaa"), Fate.PAID),
        (view(7, 12), view(7, 12, "0xaa"), Fate.PAID),
        (view(6, 10), view(6, 10, "0xbb"), Fate.NOT_PAID),  # a rival's batch took nonce 5
        (view(5, 10), view(5, 10), Fate.NOT_PAID),  # account nonce 9 went to another transaction
        (view(6, 10), view(4, 10), Fate.NOT_PAID),  # ... mined while the batch nonce was still lower
        (view(5, 9), view(5, 9), Fate.PENDING),
        (view(6, 10), view(5, 9), Fate.UNCONFIRMED),  # mined at the head, not yet deep enough
        (view(5, 10), view(5, 9), Fate.UNCONFIRMED),
        (view(6, 10), None, Fate.UNCONFIRMED),  # the settled block is older than the signing block
        (view(5, 9), None, Fate.PENDING),
        (view(5, 9), view(4, 8), Fate.PENDING),  # the batch before is not yet deep: ours may still land
    ],
)
def test_decide_fate(head: ChainView, settled: ChainView | None, fate: Fate) -> None:
    assert decide_fate(RECORD, head, settled) is fate


def test_decide_fate_refuses_a_chain_that_went_backwards() -> None:
    with pytest.raises(SettlementError, match="right chain"):
        decide_fate(RECORD, view(4, 9), view(4, 9))
    with pytest.raises(SettlementError, match="no RewardsDistributed event"):
        decide_fate(RECORD, view(6, 10), view(6, 10))


@dataclass(frozen=True)
class Block:
    batch_nonce: int
    account_nonce: int
    credited: dict[str, int]
    events: dict[int, str]  # batch nonce -> payload hash, every event up to this block


@dataclass(frozen=True)
class Transaction:
    account_nonce: int
    batch_nonce: int
    workers: tuple[str, ...]
    amounts: tuple[int, ...]


@dataclass
class ScriptedChain:
    """A test double for ChainClient: the distributor and one account, as a list of blocks in
    memory. A broadcast transaction waits in the mempool until `mine`, which `automine` calls at
    once; `after_read` runs after every state read, to stage what happens between two reads."""

    blocks: list[Block] = field(default_factory=lambda: [Block(0, 0, {}, {})])
    mempool: dict[int, str] = field(default_factory=dict)  # account nonce -> tx hash
    signed: dict[str, Transaction] = field(default_factory=dict)
    receipts: set[str] = field(default_factory=set)
    automine: bool = True
    after_read: Callable[[], None] = lambda: None

    def mine(self) -> None:
        head = self.blocks[-1]
        batch_nonce, account_nonce = head.batch_nonce, head.account_nonce
        credited, events = dict(head.credited), dict(head.events)
        while account_nonce in self.mempool:
            tx_hash = self.mempool.pop(account_nonce)
            tx = self.signed[tx_hash]
            if tx.batch_nonce == batch_nonce:  # the distributor's nonce gate
                for worker, amount in zip(tx.workers, tx.amounts, strict=True):
                    credited[worker] = credited.get(worker, 0) + amount
                events[batch_nonce] = payload_hash(tx.workers, tx.amounts)
                batch_nonce += 1
            account_nonce += 1
            self.receipts.add(tx_hash)
        self.blocks.append(Block(batch_nonce, account_nonce, credited, events))

    def _at(self, block: int | Literal["latest"]) -> Block:
        found = self.blocks[-1] if block == "latest" else self.blocks[block]
        self.after_read()
        return found

    async def block_number(self) -> int:
        return len(self.blocks) - 1

    async def batch_nonce(self, block: int | Literal["latest"] = "latest") -> int:
        return self._at(block).batch_nonce

    async def mined_account_nonce(self, block: int) -> int:
        return self._at(block).account_nonce

    async def landed_payload(self, batch_nonce: int, *, since: int, until: int) -> str | None:
        return self._at(until).events.get(batch_nonce)

    async def prepare(
        self,
        batch_nonce: int,
        workers: tuple[str, ...],
        amounts: tuple[int, ...],
        *,
        open_account_nonces: list[int],
    ) -> Prepared:
        pending = self.blocks[-1].account_nonce
        while pending in self.mempool:
            pending += 1
        account_nonce = max([pending, *(nonce + 1 for nonce in open_account_nonces)])
        send = self._sign(Transaction(account_nonce, batch_nonce, workers, amounts), fee=10)
        return Prepared(payload_hash(workers, amounts), account_nonce, 1, send)

    def replacement(self, batch: Batch) -> SignedSend | None:
        assert batch.send is not None
        tx = Transaction(batch.send.account_nonce, batch.send.batch_nonce, batch.workers, batch.amounts)
        return self._sign(tx, fee=batch.send.sends[-1].max_fee_per_gas + 1)

    def _sign(self, tx: Transaction, fee: int) -> SignedSend:
        tx_hash = f"0x{len(self.signed):064x}"
        self.signed[tx_hash] = tx
        return SignedSend(tx_hash, tx_hash, fee, 1)

    async def broadcast(self, send: SignedSend) -> None:
        if self.signed[send.tx_hash].account_nonce < self.blocks[-1].account_nonce:
            return  # nonce too low: already mined, a node refuses it
        self.mempool[self.signed[send.tx_hash].account_nonce] = send.tx_hash
        if self.automine:
            self.mine()

    async def mined(self, tx_hashes: list[str]) -> bool:
        return any(tx_hash in self.receipts for tx_hash in tx_hashes)


def assert_exact(chain: ScriptedChain, ledger: RewardLedger, credited: dict[str, int]) -> None:
    """Per worker: on chain + pending + in flight == credited."""
    unpaid = dict(ledger.pending())
    for batch in ledger.open_batches():
        for worker, amount in zip(batch.workers, batch.amounts, strict=True):
            unpaid[worker] = unpaid.get(worker, 0) + amount
    for worker, amount in credited.items():
        assert chain.blocks[-1].credited.get(worker, 0) + unpaid.get(worker, 0) == amount, worker


def settler(ledger: RewardLedger, chain: ScriptedChain, **options: object) -> Settler:
    options = {"receipt_timeout_s": 0.05, "poll_s": 0.01, "max_replacements": 0, "confirmations": 0} | options
    return Settler(LedgerService(ledger), chain, **options)  # type: ignore[arg-type]


def test_a_batch_mined_between_two_reads_of_one_decision_is_paid_once(tmp_path: Path) -> None:
    ledger = RewardLedger(SQLiteLedgerStore(tmp_path / "ledger.db"))
    credited = {worker: 10 + i for i, worker in enumerate(WORKERS)}
    ledger.credit_many(Credit("job-1", worker, amount) for worker, amount in credited.items())
    chain = ScriptedChain(automine=False)
    (result,) = asyncio.run(settler(ledger, chain).settle_once())
    assert result.outcome is SettlementOutcome.UNRESOLVED  # signed, sent, in the mempool
    assert chain.mempool

    def mine_after_the_first_read() -> None:
        chain.after_read = lambda: None
        chain.automine = True
        chain.mine()  # the batch lands right after the settler read the distributor's nonce

    chain.after_read = mine_after_the_first_read
    results = asyncio.run(settler(ledger, chain).settle_once())
    assert [r.outcome for r in results] == [SettlementOutcome.PAID]
    assert chain.blocks[-1].batch_nonce == 1  # one batch, never one twice
    assert ledger.totals().paid == sum(credited.values())
    assert_exact(chain, ledger, credited)
