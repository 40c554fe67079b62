"""RewardLedger: what each worker has earned and not yet been paid, in integer wei.

Every credit is in exactly one of three places, and at every moment

    credited = paid + pending + in flight

- `credit` adds to pending; it is idempotent per (job, worker), and durable before it returns.
- `snapshot(max_batch)` freezes all pending credits into batches of at most `max_batch` workers
  (one amount per worker); credits made afterwards stay pending beside them.
- `commit(batch_id)` marks a batch paid; `revert(batch_id)` returns its credits to pending.

Each worker's own account obeys the same equation (`earnings`), and `statement` lists what makes
it up: the worker's credits, each with the moment it was made durable, and its payouts (the paid
batches it was in, with their batch nonce and transaction). Times come from the `clock` the ledger
is given, in milliseconds since the epoch, and only ever increase, so a clock that steps back
cannot reorder a statement; 0 marks entries written before times were recorded.

A statement reads a worker's credits from a table kept in worker order, and adding to it with
every credit would touch one page per worker per commit. So a worker's credits join it
`index_every` at a time (a page or more), written in the transaction of a later commit, and all
of them on close; until then they are kept in memory. A crash loses nothing: the store knows
the time of its latest credit and, for each worker, the time its statement entries are complete
to, and after a stop that did not close the ledger `load` reads the credits made since from the
journal (one pass over it).

A batch moves OPEN -> PAID or OPEN -> REVERTED, never anywhere else. While open it may carry a
`SendRecord`: what settlement signed for it (batch nonce, payload hash, account nonce, the block it
was signed at, every signed transaction), written before any of it is broadcast, so that a restart
can learn the batch's fate on chain instead of guessing. The bookkeeping lives in
`RewardLedger`; a `LedgerStore` makes each step one atomic, durable transaction, and `load`
gives back exactly the pending credits and open batches after a crash or restart. The embedded
store is SQLite in WAL mode with `synchronous=FULL`: a commit is on disk before it returns, and
callers that want throughput group many credits into one `credit_many`. Its log is copied into
the database file (checkpointed) on a thread of the store's own, not inside a commit.
"""

import heapq
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "Batch",
    "BatchState",
    "Credit",
    "LedgerError",
    "LedgerState",
    "LedgerStore",
    "LedgerTotals",
    "RewardLedger",
    "SQLiteLedgerStore",
    "SendRecord",
    "SignedSend",
    "Statement",
    "StatementCredit",
    "StatementCursor",
    "StatementPayout",
    "WorkerTotals",
    "statement_page",
]

log = logging.getLogger(__name__)

# Rows written between two checkpoints, which copy the write-ahead log into the database file:
# about as many pages of log, SQLite's own default (1,000 pages).
CHECKPOINT_ROWS = 1_000
# The log's length, in pages, past which a commit checkpoints by itself (SQLite's automatic
# checkpoint): reached only when the checkpoints on their thread cannot keep up.
FALLBACK_CHECKPOINT_PAGES = 20_000
CATCH_UP_PASSES = 4  # at most, each copying what was written during the one before
CAUGHT_UP_PAGES = 64  # pages written during a pass that the writer copies itself


class LedgerError(Exception):
    """A ledger operation that would break its rules (bad amount, unknown or settled batch)."""


class BatchState(Enum):
    OPEN = "open"
    PAID = "paid"
    REVERTED = "reverted"


@dataclass(frozen=True, slots=True)
class Credit:
    job_id: str
    worker: str
    amount: int  # wei

    def __post_init__(self) -> None:
        if type(self.amount) is not int or self.amount <= 0:
            raise LedgerError(f"credit amount must be a positive integer of wei, not {self.amount!r}")
        if not self.job_id:
            raise LedgerError("credit needs a job id")
        if not self.worker:
            raise LedgerError("credit needs a worker")


@dataclass(frozen=True, slots=True)
class SignedSend:
    """One signed transaction for a batch; replacements share the account nonce, with higher fees."""

    tx_hash: str
    raw: str  # the signed transaction, hex
    max_fee_per_gas: int
    max_priority_fee_per_gas: int


@dataclass(frozen=True, slots=True)
class SendRecord:
    batch_nonce: int  # the distributor's batchNonce this batch was signed for
    payload_hash: str  # keccak256(abi.encode(workers, amounts)), hex
    account_nonce: int
    gas: int
    sends: tuple[SignedSend, ...]  # oldest first; any of them may be the one mined
    # The chain's head when the batch nonce was read for signing: the batch's event, ours or a
    # rival's, can only be in a later block. 0 for batches signed before this was recorded.
    signed_block: int

    def to_json(self) -> str:
        return json.dumps(
            {
                "batch_nonce": self.batch_nonce,
                "payload_hash": self.payload_hash,
                "account_nonce": self.account_nonce,
                "gas": self.gas,
                "signed_block": self.signed_block,
                "sends": [
                    [send.tx_hash, send.raw, str(send.max_fee_per_gas), str(send.max_priority_fee_per_gas)]
                    for send in self.sends
                ],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "SendRecord":
        raw = json.loads(text)
        sends = tuple(SignedSend(tx, signed, int(fee), int(tip)) for tx, signed, fee, tip in raw["sends"])
        return cls(
            raw["batch_nonce"],
            raw["payload_hash"],
            raw["account_nonce"],
            raw["gas"],
            sends,
            raw["signed_block"],
        )


@dataclass(frozen=True, slots=True)
class Batch:
    id: int
    workers: tuple[str, ...]
    amounts: tuple[int, ...]
    state: BatchState = BatchState.OPEN
    send: SendRecord | None = None

    @property
    def total(self) -> int:
        return sum(self.amounts)


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    credited: int
    paid: int
    pending: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class WorkerTotals:
    """One worker's account: credited = paid + pending + in_flight."""

    credited: int
    paid: int
    pending: int
    in_flight: int


@dataclass(frozen=True, slots=True)
class StatementCredit:
    job_id: str
    amount: int
    at_ms: int  # when the credit was made durable; 0: before times were recorded


@dataclass(frozen=True, slots=True)
class StatementPayout:
    batch_id: int
    batch_nonce: int | None
    tx_hash: str | None  # the batch's last signed transaction
    amount: int
    at_ms: int  # when the batch was committed as paid; 0: before times were recorded


@dataclass(frozen=True, slots=True)
class StatementCursor:
    """Where a page of a statement starts. Both lists run newest first: a page holds the entries
    older than the keys here (None: from the newest), and a list that is done stays empty."""

    credits_before: tuple[int, str] | None = None  # (at_ms, job_id) of the last credit shown
    payouts_before: int | None = None  # batch id of the last payout shown
    credits_done: bool = False
    payouts_done: bool = False


@dataclass(frozen=True, slots=True)
class Statement:
    worker: str
    totals: WorkerTotals
    credits: list[StatementCredit]
    payouts: list[StatementPayout]
    next: StatementCursor | None  # None: this was the last page


@dataclass(slots=True)
class LedgerState:
    """What a store holds, as `load` returns it."""

    pending: dict[str, int] = field(default_factory=dict)
    open_batches: dict[int, Batch] = field(default_factory=dict)
    credited: int = 0
    paid: int = 0
    next_batch_id: int = 1
    paid_by_worker: dict[str, int] = field(default_factory=dict)
    unindexed: list[tuple[str, StatementCredit]] = field(default_factory=list)  # (worker, credit)
    last_at_ms: int = 0  # the latest time a credit was made


class LedgerStore(Protocol):
    """Durable storage for the ledger. Each method is one atomic transaction, durable on return."""

    def load(self) -> LedgerState: ...

    def add_credits(
        self, credits: Sequence[Credit], at_ms: int, index: Mapping[str, Sequence[StatementCredit]]
    ) -> list[bool]:
        """Store the credits not seen before, made at `at_ms`, and add `index` (credits made
        earlier, by worker) to the statement entries; True for each credit that was new."""
        ...

    def freeze(self, batches: Sequence[Batch]) -> None:
        """Record the batches and move every pending credit of their workers into them."""
        ...

    def settle(self, batch: Batch, state: BatchState, at_ms: int) -> None:
        """Mark an open batch PAID (at `at_ms`), or REVERTED with its credits back to pending."""
        ...

    def record_send(self, batch_id: int, record: SendRecord) -> None:
        """Replace the send record of an open batch."""
        ...

    def index_credits(self, index: Mapping[str, Sequence[StatementCredit]], through_ms: int) -> None:
        """Add the credits of `index` to the statement entries: every credit made at or before
        `through_ms` is among them now."""
        ...

    def credits_of(self, worker: str, before: tuple[int, str] | None, limit: int) -> list[StatementCredit]:
        """The worker's indexed credits older than `before` (None: all), newest first, at most `limit`."""
        ...

    def payouts_of(self, worker: str, before: int | None, limit: int) -> list[StatementPayout]:
        """The worker's payouts from batches before `before` (None: all), newest first."""
        ...

    def close(self) -> None: ...


def statement_page(
    worker: str,
    totals: WorkerTotals,
    credits: list[StatementCredit],
    payouts: list[StatementPayout],
    *,
    cursor: StatementCursor,
    limit: int,
) -> Statement:
    """A page of `worker`'s statement from up to `limit` + 1 of its credits and payouts after
    `cursor`, newest first: an entry past `limit` only tells that more follow."""
    credits_done, payouts_done = len(credits) <= limit, len(payouts) <= limit
    credits, payouts = credits[:limit], payouts[:limit]
    following = StatementCursor(
        (credits[-1].at_ms, credits[-1].job_id) if credits else cursor.credits_before,
        payouts[-1].batch_id if payouts else cursor.payouts_before,
        credits_done,
        payouts_done,
    )
    last = credits_done and payouts_done
    return Statement(worker, totals, credits, payouts, None if last else following)


class RewardLedger:
    def __init__(
        self, store: LedgerStore, *, clock: Callable[[], float] = time.time, index_every: int = 128
    ) -> None:
        self._store = store
        self._clock = clock  # seconds since the epoch: when credits and payouts happened
        self._index_every = index_every
        state = store.load()
        self._pending = state.pending
        self._open = state.open_batches
        self._credited = state.credited
        self._paid = state.paid
        self._next_batch_id = state.next_batch_id
        self._paid_by_worker = state.paid_by_worker
        self._last_at_ms = state.last_at_ms
        self._unindexed: dict[str, list[StatementCredit]] = {}  # by worker, oldest first
        self._due: set[str] = set()  # workers with index_every credits or more in memory
        for worker, credit in state.unindexed:
            self._remember(worker, credit)

    def _now_ms(self) -> int:
        """The clock in ms, always later than any time given before."""
        self._last_at_ms = max(round(self._clock() * 1000), self._last_at_ms + 1)
        return self._last_at_ms

    def credit(self, worker: str, amount: int, job_id: str) -> bool:
        """Credit `amount` wei to `worker` for `job_id`. False if that credit already existed."""
        return self.credit_many([Credit(job_id, worker, amount)])[0]

    def credit_many(self, credits: Iterable[Credit]) -> list[bool]:
        """Credit several in one durable transaction (group commit); True for each new one."""
        batch = list(credits)
        if not batch:
            return []
        at_ms = self._now_ms()
        due = {worker: self._unindexed[worker] for worker in self._due}
        added = self._store.add_credits(batch, at_ms, due)
        for worker in due:
            del self._unindexed[worker]
        self._due.clear()
        for credit, new in zip(batch, added, strict=True):
            if new:
                worker = credit.worker
                self._pending[worker] = self._pending.get(worker, 0) + credit.amount
                self._credited += credit.amount
                self._remember(worker, StatementCredit(credit.job_id, credit.amount, at_ms))
        return added

    def _remember(self, worker: str, credit: StatementCredit) -> None:
        """Keep a credit for the worker's statement until it joins the store's statement entries."""
        credits = self._unindexed.setdefault(worker, [])
        credits.append(credit)
        if len(credits) >= self._index_every:
            self._due.add(worker)

    def snapshot(self, max_batch: int, *, max_batches: int | None = None) -> list[Batch]:
        """Freeze pending credits into batches of at most `max_batch` workers, in the order of the
        workers' addresses: every one, or those of the first `max_batches` batches."""
        if max_batch < 1:
            raise LedgerError(f"max_batch must be at least 1, not {max_batch}")
        count = len(self._pending) if max_batches is None else max_batch * max_batches
        workers = heapq.nsmallest(count, self._pending)
        batches: list[Batch] = []
        for start in range(0, len(workers), max_batch):
            chunk = tuple(workers[start : start + max_batch])
            amounts = tuple(self._pending[worker] for worker in chunk)
            batches.append(Batch(self._next_batch_id + len(batches), chunk, amounts))
        if not batches:
            return []
        self._store.freeze(batches)
        for batch in batches:
            self._open[batch.id] = batch
        self._next_batch_id += len(batches)
        for worker in workers:
            del self._pending[worker]
        return batches

    def commit(self, batch_id: int) -> Batch:
        """The batch was paid on chain."""
        batch = self._take_open(batch_id)
        self._store.settle(batch, BatchState.PAID, self._now_ms())
        del self._open[batch_id]
        self._paid += batch.total
        for worker, amount in zip(batch.workers, batch.amounts, strict=True):
            self._paid_by_worker[worker] = self._paid_by_worker.get(worker, 0) + amount
        return replace(batch, state=BatchState.PAID)

    def revert(self, batch_id: int) -> Batch:
        """The batch surely was not paid: its credits go back to pending."""
        batch = self._take_open(batch_id)
        self._store.settle(batch, BatchState.REVERTED, self._now_ms())
        del self._open[batch_id]
        for worker, amount in zip(batch.workers, batch.amounts, strict=True):
            self._pending[worker] = self._pending.get(worker, 0) + amount
        return replace(batch, state=BatchState.REVERTED)

    def record_send(self, batch_id: int, record: SendRecord) -> Batch:
        """Durably attach what settlement signed for an open batch, before it is broadcast."""
        batch = self._take_open(batch_id)
        self._store.record_send(batch_id, record)
        updated = replace(batch, send=record)
        self._open[batch_id] = updated
        return updated

    def _take_open(self, batch_id: int) -> Batch:
        batch = self._open.get(batch_id)
        if batch is None:
            raise LedgerError(f"batch {batch_id} is not open (unknown, or already paid or reverted)")
        return batch

    def open_batches(self) -> list[Batch]:
        """Batches frozen but neither paid nor reverted, oldest first."""
        return [self._open[batch_id] for batch_id in sorted(self._open)]

    def pending(self) -> Mapping[str, int]:
        return dict(self._pending)

    def totals(self) -> LedgerTotals:
        pending = sum(self._pending.values())
        in_flight = sum(batch.total for batch in self._open.values())
        return LedgerTotals(self._credited, self._paid, pending, in_flight)

    def earnings(self, workers: Iterable[str]) -> dict[str, WorkerTotals]:
        """Each worker's account, from memory: what it was credited is what was paid, is pending,
        and is in flight (every credit is in exactly one of the three)."""
        in_flight: dict[str, int] = {}
        for batch in self._open.values():
            for worker, amount in zip(batch.workers, batch.amounts, strict=True):
                in_flight[worker] = in_flight.get(worker, 0) + amount
        accounts = {}
        for worker in workers:
            paid, pending = self._paid_by_worker.get(worker, 0), self._pending.get(worker, 0)
            flying = in_flight.get(worker, 0)
            accounts[worker] = WorkerTotals(paid + pending + flying, paid, pending, flying)
        return accounts

    def statement(self, worker: str, cursor: StatementCursor, limit: int) -> Statement:
        """One page of the worker's statement: its account, and up to `limit` credits and `limit`
        payouts from `cursor` on, newest first."""
        if limit < 1:
            raise LedgerError(f"a statement page holds at least one entry, not {limit}")
        credits: list[StatementCredit] = []
        if not cursor.credits_done:
            before = cursor.credits_before
            recent = [
                c for c in self._unindexed.get(worker, ()) if before is None or (c.at_ms, c.job_id) < before
            ]
            indexed = self._store.credits_of(worker, before, limit + 1)
            credits = sorted(recent + indexed, key=lambda c: (c.at_ms, c.job_id), reverse=True)[: limit + 1]
        payouts: list[StatementPayout] = []
        if not cursor.payouts_done:
            payouts = self._store.payouts_of(worker, cursor.payouts_before, limit + 1)
        totals = self.earnings([worker])[worker]
        return statement_page(worker, totals, credits, payouts, cursor=cursor, limit=limit)

    def close(self) -> None:
        """Write every credit kept in memory to the statement entries (so that the next start
        reads no journal), and close the store."""
        try:
            self._store.index_credits(self._unindexed, self._last_at_ms)
        finally:
            self._store.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS credits (      -- every credit ever made; the key makes credit idempotent
    job_id TEXT NOT NULL,
    worker TEXT NOT NULL,
    amount TEXT NOT NULL,                 -- wei in decimal: amounts exceed 64 bits
    PRIMARY KEY (job_id, worker)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS balances (     -- pending wei per worker
    worker TEXT PRIMARY KEY,
    pending TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('open', 'paid', 'reverted')),
    workers TEXT NOT NULL,                -- space-separated, in batch order
    amounts TEXT NOT NULL,                -- space-separated decimal wei, same order
    send TEXT                             -- SendRecord as JSON, once signed
);
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    credited TEXT NOT NULL,
    paid TEXT NOT NULL
);
INSERT OR IGNORE INTO totals (id, credited, paid) VALUES (1, '0', '0');
"""
# PRAGMA user_version of the ledgers this code writes. 1: send records carry `signed_block`.
# 2: credits carry the time they were made; what each worker was paid (`paid_by_worker`), its
# share of every paid batch (`payouts`) and its credits by worker (`statement_credits`) are kept,
# for statements. 3: each signed batch's batch nonce and latest transaction hash have a table of their
# own (`batch_sends`), so that a statement lists payouts without reading whole send records.
_SCHEMA_VERSION = 3

_SCHEMA_2 = """
ALTER TABLE credits ADD COLUMN at INTEGER NOT NULL DEFAULT 0;  -- ms since the epoch, 0 when unknown
CREATE TABLE statement_credits (          -- the credits by worker, written in bulk (see RewardLedger)
    worker TEXT NOT NULL,
    at INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    amount TEXT NOT NULL,
    PRIMARY KEY (worker, at, job_id)
) WITHOUT ROWID;
CREATE TABLE statement_through (          -- statement_credits holds each worker's credits made by then
    worker TEXT PRIMARY KEY,
    at INTEGER NOT NULL
) WITHOUT ROWID;
-- the time of the latest credit, and the time statement_credits holds every credit made by
ALTER TABLE totals ADD COLUMN last_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE totals ADD COLUMN indexed_through INTEGER NOT NULL DEFAULT 0;
CREATE TABLE paid_by_worker (             -- each worker's payouts, added up
    worker TEXT PRIMARY KEY,
    paid TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE payouts (                    -- each worker's share of each paid batch
    worker TEXT NOT NULL,
    batch_id INTEGER NOT NULL,
    amount TEXT NOT NULL,
    at INTEGER NOT NULL,                  -- ms since the epoch the batch was committed, 0 when unknown
    PRIMARY KEY (worker, batch_id)
) WITHOUT ROWID;
"""


_SCHEMA_3 = """
CREATE TABLE batch_sends (                -- of each signed batch, what its statement lines show
    batch_id INTEGER PRIMARY KEY,
    batch_nonce INTEGER NOT NULL,
    tx_hash TEXT NOT NULL                 -- the latest transaction signed for it
)
"""
_RECORD_SEND_HEAD = "INSERT OR REPLACE INTO batch_sends (batch_id, batch_nonce, tx_hash) VALUES (?, ?, ?)"


class SQLiteLedgerStore:
    """The embedded ledger store: one SQLite file in WAL mode, every commit synced to disk.

    `credits` is the journal that makes crediting idempotent; `balances` holds what is pending per
    worker, so a snapshot or a revert touches one row per worker rather than one per credit.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        # the savepoint's journal in memory: as a file, a commit past 64 KiB of it made, wrote and
        # deleted one, all on the event loop
        self._db.execute("PRAGMA temp_store=MEMORY")
        self._db.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_CHECKPOINT_PAGES}")
        try:
            self._checkpoints = _Checkpoints(self._db, self.path)
        except BaseException:
            self._db.close()
            raise
        try:
            self._db.executescript(_SCHEMA)
            self._migrate()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteLedgerStore({str(self.path)!r})"

    def _migrate(self) -> None:
        """Bring a ledger written by an earlier version up to this one, in one transaction."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > _SCHEMA_VERSION:
            raise LedgerError(
                f"{self.path} is ledger version {version}, newer than this krewe reads "
                f"({_SCHEMA_VERSION}): run the krewe that wrote it"
            )
        if version == _SCHEMA_VERSION:
            return
        with self._transaction() as db:
            if version < 1:
                # Version 0 did not record the block a batch was signed at: 0 makes its event
                # search start at chain_from_block, as it did then.
                signed = db.execute("SELECT id, send FROM batches WHERE send IS NOT NULL").fetchall()
                for batch_id, send in signed:
                    db.execute(
                        "UPDATE batches SET send = ? WHERE id = ?",
                        (json.dumps({"signed_block": 0} | json.loads(send)), batch_id),
                    )
            if version < 2:
                self._add_statements(db)
            if version < 3:
                db.execute(_SCHEMA_3)
                signed = db.execute("SELECT id, send FROM batches WHERE send IS NOT NULL").fetchall()
                db.executemany(
                    _RECORD_SEND_HEAD,
                    [(batch_id, *_send_head(SendRecord.from_json(send))) for batch_id, send in signed],
                )
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

    @staticmethod
    def _add_statements(db: sqlite3.Connection) -> None:
        """Version 2's tables, filled from what earlier versions kept (times unknown: 0)."""
        for statement in _SCHEMA_2.split(";"):
            if statement.strip():
                db.execute(statement)
        paid: dict[str, int] = {}
        payouts = []
        for batch_id, workers, amounts in db.execute(
            "SELECT id, workers, amounts FROM batches WHERE state = 'paid'"
        ).fetchall():
            for worker, amount in zip(workers.split(), amounts.split(), strict=True):
                paid[worker] = paid.get(worker, 0) + int(amount)
                payouts.append((worker, batch_id, amount, 0))
        db.executemany("INSERT INTO payouts (worker, batch_id, amount, at) VALUES (?, ?, ?, ?)", payouts)
        db.execute(
            "INSERT INTO statement_credits (worker, at, job_id, amount)"
            " SELECT worker, at, job_id, amount FROM credits ORDER BY worker, at, job_id"
        )
        db.executemany(
            "INSERT INTO paid_by_worker (worker, paid) VALUES (?, ?)",
            [(worker, str(amount)) for worker, amount in paid.items()],
        )

    def load(self) -> LedgerState:
        state = LedgerState()
        for worker, pending in self._db.execute("SELECT worker, pending FROM balances WHERE pending != '0'"):
            state.pending[worker] = int(pending)
        rows = self._db.execute(
            "SELECT id, workers, amounts, send FROM batches WHERE state = 'open' ORDER BY id"
        )
        for batch_id, workers, amounts, send in rows:
            state.open_batches[batch_id] = Batch(
                batch_id,
                tuple(workers.split()),
                tuple(int(amount) for amount in amounts.split()),
                send=SendRecord.from_json(send) if send else None,
            )
        credited, paid = self._db.execute("SELECT credited, paid FROM totals").fetchone()
        state.credited, state.paid = int(credited), int(paid)
        (last_id,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM batches").fetchone()
        state.next_batch_id = last_id + 1
        for worker, paid in self._db.execute("SELECT worker, paid FROM paid_by_worker"):
            state.paid_by_worker[worker] = int(paid)
        last_at, indexed_through = self._db.execute("SELECT last_at, indexed_through FROM totals").fetchone()
        state.last_at_ms = max(last_at, indexed_through)  # new credits come after both
        if last_at > indexed_through:  # stopped without closing: the journal has the rest
            through = dict(self._db.execute("SELECT worker, at FROM statement_through").fetchall())
            rows = self._db.execute(
                "SELECT worker, job_id, amount, at FROM credits WHERE at > ? ORDER BY at", (indexed_through,)
            )
            state.unindexed = [
                (worker, StatementCredit(job_id, int(amount), at))
                for worker, job_id, amount, at in rows
                if at > through.get(worker, 0)
            ]
        return state

    def add_credits(
        self, credits: Sequence[Credit], at_ms: int, index: Mapping[str, Sequence[StatementCredit]]
    ) -> list[bool]:
        insert = "INSERT OR IGNORE INTO credits (job_id, worker, amount, at) VALUES (?, ?, ?, ?)"
        rows = [(credit.job_id, credit.worker, str(credit.amount), at_ms) for credit in credits]
        with self._transaction() as db:
            db.execute("SAVEPOINT inserts")
            before = db.total_changes
            db.executemany(insert, rows)
            if db.total_changes - before == len(rows):
                added = [True] * len(rows)
            else:  # some were credited before: find out which, one by one
                db.execute("ROLLBACK TO inserts")
                added = [db.execute(insert, row).rowcount == 1 for row in rows]
            owed: dict[str, int] = {}
            for credit, new in zip(credits, added, strict=True):
                if new:
                    owed[credit.worker] = owed.get(credit.worker, 0) + credit.amount
            if owed:
                self._add_to_balances(db, owed)
                (credited,) = db.execute("SELECT credited FROM totals").fetchone()
                db.execute(
                    "UPDATE totals SET credited = ?, last_at = ?",
                    (str(int(credited) + sum(owed.values())), at_ms),
                )
            if index:
                self._add_statement_credits(db, index)
                db.executemany(
                    "INSERT OR REPLACE INTO statement_through (worker, at) VALUES (?, ?)",
                    [(worker, credits[-1].at_ms) for worker, credits in index.items()],
                )
        return added

    def freeze(self, batches: Sequence[Batch]) -> None:
        with self._transaction() as db:
            for batch in batches:
                db.execute(
                    "INSERT INTO batches (id, state, workers, amounts) VALUES (?, 'open', ?, ?)",
                    (batch.id, " ".join(batch.workers), " ".join(map(str, batch.amounts))),
                )
                db.executemany(
                    "DELETE FROM balances WHERE worker = ?", [(worker,) for worker in batch.workers]
                )

    def settle(self, batch: Batch, state: BatchState, at_ms: int) -> None:
        if state is BatchState.OPEN:
            raise LedgerError("a batch can only be settled as paid or reverted")
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE batches SET state = ? WHERE id = ? AND state = 'open'", (state.value, batch.id)
            ).rowcount
            if updated != 1:
                raise LedgerError(f"batch {batch.id} is not open in the store")
            if state is BatchState.PAID:
                (paid,) = db.execute("SELECT paid FROM totals").fetchone()
                db.execute("UPDATE totals SET paid = ?", (str(int(paid) + batch.total),))
                shares = list(zip(batch.workers, batch.amounts, strict=True))
                db.executemany(
                    "INSERT INTO payouts (worker, batch_id, amount, at) VALUES (?, ?, ?, ?)",
                    [(worker, batch.id, str(amount), at_ms) for worker, amount in shares],
                )
                self._add_to_paid(db, dict(shares))
            else:
                self._add_to_balances(db, dict(zip(batch.workers, batch.amounts, strict=True)))

    def record_send(self, batch_id: int, record: SendRecord) -> None:
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE batches SET send = ? WHERE id = ? AND state = 'open'", (record.to_json(), batch_id)
            ).rowcount
            if updated != 1:
                raise LedgerError(f"batch {batch_id} is not open in the store")
            db.execute(_RECORD_SEND_HEAD, (batch_id, *_send_head(record)))

    @staticmethod
    def _add_to_balances(db: sqlite3.Connection, owed: Mapping[str, int]) -> None:
        found = dict(_rows_of(db, "SELECT worker, pending FROM balances WHERE worker IN ({})", list(owed)))
        db.executemany(
            "INSERT OR REPLACE INTO balances (worker, pending) VALUES (?, ?)",
            [(worker, str(int(found.get(worker, 0)) + amount)) for worker, amount in owed.items()],
        )

    @staticmethod
    def _add_to_paid(db: sqlite3.Connection, amounts: Mapping[str, int]) -> None:
        found = dict(
            _rows_of(db, "SELECT worker, paid FROM paid_by_worker WHERE worker IN ({})", list(amounts))
        )
        db.executemany(
            "INSERT OR REPLACE INTO paid_by_worker (worker, paid) VALUES (?, ?)",
            [(worker, str(int(found.get(worker, 0)) + amount)) for worker, amount in amounts.items()],
        )

    def index_credits(self, index: Mapping[str, Sequence[StatementCredit]], through_ms: int) -> None:
        with self._transaction() as db:
            self._add_statement_credits(db, index)
            db.execute("UPDATE totals SET indexed_through = ?", (through_ms,))

    @staticmethod
    def _add_statement_credits(
        db: sqlite3.Connection, index: Mapping[str, Sequence[StatementCredit]]
    ) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO statement_credits (worker, at, job_id, amount) VALUES (?, ?, ?, ?)",
            sorted(
                (worker, credit.at_ms, credit.job_id, str(credit.amount))
                for worker, credits in index.items()
                for credit in credits
            ),
        )

    def credits_of(self, worker: str, before: tuple[int, str] | None, limit: int) -> list[StatementCredit]:
        query = "SELECT job_id, amount, at FROM statement_credits WHERE worker = ?"
        arguments: tuple[object, ...] = (worker,)
        if before is not None:
            query += " AND (at, job_id) < (?, ?)"
            arguments += before
        query += " ORDER BY at DESC, job_id DESC LIMIT ?"
        rows = self._db.execute(query, (*arguments, limit))
        return [StatementCredit(job_id, int(amount), at) for job_id, amount, at in rows]

    def payouts_of(self, worker: str, before: int | None, limit: int) -> list[StatementPayout]:
        query = (
            "SELECT payouts.batch_id, payouts.amount, payouts.at, batch_sends.batch_nonce,"
            " batch_sends.tx_hash FROM payouts"
            " LEFT JOIN batch_sends ON batch_sends.batch_id = payouts.batch_id WHERE payouts.worker = ?"
        )
        arguments: tuple[object, ...] = (worker,)
        if before is not None:
            query += " AND payouts.batch_id < ?"
            arguments += (before,)
        query += " ORDER BY payouts.batch_id DESC LIMIT ?"
        return [
            StatementPayout(batch_id, batch_nonce, tx_hash, int(amount), at)
            for batch_id, amount, at, batch_nonce, tx_hash in self._db.execute(query, (*arguments, limit))
        ]

    def close(self) -> None:
        self._checkpoints.close()
        self._db.close()

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db, self._checkpoints)


def _send_head(record: SendRecord) -> tuple[int, str]:
    """What `batch_sends` keeps of a send record: its batch nonce, and its latest transaction's hash."""
    return record.batch_nonce, record.sends[-1].tx_hash


def _rows_of(db: sqlite3.Connection, query: str, workers: list[str]) -> list[Any]:
    """`query`'s rows for `workers`, its `{}` filled with their placeholders, in chunks that keep
    under SQLite's bound-parameter limit."""
    rows: list[Any] = []
    for start in range(0, len(workers), 500):
        chunk = workers[start : start + 500]
        rows += db.execute(query.format(",".join("?" * len(chunk))), chunk).fetchall()
    return rows


class _Checkpoints:
    """Copies the write-ahead log into the database file on a thread and a connection of their
    own, every CHECKPOINT_ROWS rows written. SQLite's own checkpoint runs inside the commit that
    fills the log, on the event loop: one commit in a thousand took 5 to 10 ms instead of 0.2
    (docs/performance.md).

    The log is written again from its start, and so stays a few MB long, only once a write begins
    with every page of it copied. So the thread copies until what was written meanwhile is a few
    pages, and the next transaction copies those on the store's own connection first."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        # opened here, so that a connection that cannot be made fails the store's opening
        self._own = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._own.execute("PRAGMA synchronous=FULL")  # the database file is on disk before the log restarts
        self._changes_then = db.total_changes  # rows written as of the latest request
        self._wanted = threading.Event()
        self._passed = threading.Event()  # a pass finished; the writer copies the rest
        self._passing = threading.Lock()  # held by the thread during a pass
        self._closing = False
        self._thread: threading.Thread | None = None

    def before_write(self) -> None:
        if self._passed.is_set() and self._passing.acquire(blocking=False):
            try:
                self._passed.clear()
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as error:  # the write goes on; the next pass copies this too
                log.warning("checkpointing the ledger's log failed: %s", error)
            finally:
                self._passing.release()

    def after_commit(self) -> None:
        if self._db.total_changes - self._changes_then < CHECKPOINT_ROWS:
            return
        self._changes_then = self._db.total_changes
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)
            try:
                thread.start()
            except RuntimeError as error:  # the commit stands; the next request tries again
                log.warning("cannot start the ledger's checkpoint thread: %s", error)
                return
            self._thread = thread
        self._wanted.set()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closing:
                return
            with self._passing:
                try:
                    self._catch_up()
                except sqlite3.Error as error:
                    log.warning("checkpointing the ledger's log failed: %s", error)
                    continue
                self._passed.set()

    def _catch_up(self) -> None:
        """Copy the log, then what was written to it meanwhile, until that is a few pages."""
        length = 0
        for _ in range(CATCH_UP_PASSES):
            _, now, _ = self._own.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if now - length < CAUGHT_UP_PAGES:
                return
            length = now

    def close(self) -> None:
        if self._thread is not None:
            self._closing = True
            self._wanted.set()
            self._thread.join()
        self._own.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises."""

    def __init__(self, db: sqlite3.Connection, checkpoints: _Checkpoints) -> None:
        self._db = db
        self._checkpoints = checkpoints

    def __enter__(self) -> sqlite3.Connection:
        self._checkpoints.before_write()
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._db.execute("COMMIT" if error is None else "ROLLBACK")
        if error is None:
            self._checkpoints.after_commit()
