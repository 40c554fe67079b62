"""RewardLedger: what each worker has earned and not yet been paid, in integer wei.

Every credit is in exactly one of three places, and at every moment

    credited = paid + pending + in flight

- `credit` adds to pending; it is idempotent per (job, worker), and durable before it returns.
- `snapshot(max_batch)` freezes all pending credits into batches of at most `max_batch` workers
  (one amount per worker); credits made afterwards stay pending beside them.
- `commit(batch_id)` marks a batch paid; `revert(batch_id)` returns its credits to pending.

A batch moves OPEN -> PAID or OPEN -> REVERTED, never anywhere else. While open it may carry a
`SendRecord`: what settlement signed for it (batch nonce, payload hash, account nonce, the block it
was signed at, every signed transaction), written before any of it is broadcast, so that a restart
can learn the batch's fate on chain instead of guessing. The bookkeeping lives in
`RewardLedger`; a `LedgerStore` makes each step one atomic, durable transaction, and `load`
gives back exactly the pending credits and open batches after a crash or restart. The embedded
store is SQLite in WAL mode with `synchronous=FULL`: a commit is on disk before it returns, and
callers that want throughput group many credits into one `credit_many`.
"""

import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Protocol

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
]


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


@dataclass(slots=True)
class LedgerState:
    """What a store holds, as `load` returns it."""

    pending: dict[str, int] = field(default_factory=dict)
    open_batches: dict[int, Batch] = field(default_factory=dict)
    credited: int = 0
    paid: int = 0
    next_batch_id: int = 1


class LedgerStore(Protocol):
    """Durable storage for the ledger. Each method is one atomic transaction, durable on return."""

    def load(self) -> LedgerState: ...

    def add_credits(self, credits: Sequence[Credit]) -> list[bool]:
        """Store the credits not seen before; True for each one that was new."""
        ...

    def freeze(self, batches: Sequence[Batch]) -> None:
        """Record the batches and move every pending credit of their workers into them."""
        ...

    def settle(self, batch: Batch, state: BatchState) -> None:
        """Mark an open batch PAID, or REVERTED with its credits back to pending."""
        ...

    def record_send(self, batch_id: int, record: SendRecord) -> None:
        """Replace the send record of an open batch."""
        ...

    def close(self) -> None: ...


class RewardLedger:
    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        state = store.load()
        self._pending = state.pending
        self._open = state.open_batches
        self._credited = state.credited
        self._paid = state.paid
        self._next_batch_id = state.next_batch_id

    def credit(self, worker: str, amount: int, job_id: str) -> bool:
        """Credit `amount` wei to `worker` for `job_id`. False if that credit already existed."""
        return self.credit_many([Credit(job_id, worker, amount)])[0]

    def credit_many(self, credits: Iterable[Credit]) -> list[bool]:
        """Credit several in one durable transaction (group commit); True for each new one."""
        batch = list(credits)
        if not batch:
            return []
        added = self._store.add_credits(batch)
        for credit, new in zip(batch, added, strict=True):
            if new:
                self._pending[credit.worker] = self._pending.get(credit.worker, 0) + credit.amount
                self._credited += credit.amount
        return added

    def snapshot(self, max_batch: int) -> list[Batch]:
        """Freeze every pending credit into batches of at most `max_batch` workers."""
        if max_batch < 1:
            raise LedgerError(f"max_batch must be at least 1, not {max_batch}")
        workers = sorted(self._pending)
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
        self._pending.clear()
        return batches

    def commit(self, batch_id: int) -> Batch:
        """The batch was paid on chain."""
        batch = self._take_open(batch_id)
        self._store.settle(batch, BatchState.PAID)
        del self._open[batch_id]
        self._paid += batch.total
        return replace(batch, state=BatchState.PAID)

    def revert(self, batch_id: int) -> Batch:
        """The batch surely was not paid: its credits go back to pending."""
        batch = self._take_open(batch_id)
        self._store.settle(batch, BatchState.REVERTED)
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

    def close(self) -> None:
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
_SCHEMA_VERSION = 1


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
        try:
            self._db.executescript(_SCHEMA)
            self._migrate()
        except BaseException:
            self._db.close()
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
            # Version 0 did not record the block a batch was signed at: 0 makes its event search
            # start at chain_from_block, as it did then.
            signed = db.execute("SELECT id, send FROM batches WHERE send IS NOT NULL").fetchall()
            for batch_id, send in signed:
                db.execute(
                    "UPDATE batches SET send = ? WHERE id = ?",
                    (json.dumps({"signed_block": 0} | json.loads(send)), batch_id),
                )
            db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")

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
        return state

    def add_credits(self, credits: Sequence[Credit]) -> list[bool]:
        insert = "INSERT OR IGNORE INTO credits (job_id, worker, amount) VALUES (?, ?, ?)"
        rows = [(credit.job_id, credit.worker, str(credit.amount)) for credit in credits]
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
                db.execute("UPDATE totals SET credited = ?", (str(int(credited) + sum(owed.values())),))
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

    def settle(self, batch: Batch, state: BatchState) -> None:
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
            else:
                self._add_to_balances(db, dict(zip(batch.workers, batch.amounts, strict=True)))

    def record_send(self, batch_id: int, record: SendRecord) -> None:
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE batches SET send = ? WHERE id = ? AND state = 'open'", (record.to_json(), batch_id)
            ).rowcount
            if updated != 1:
                raise LedgerError(f"batch {batch_id} is not open in the store")

    @staticmethod
    def _add_to_balances(db: sqlite3.Connection, owed: Mapping[str, int]) -> None:
        workers = list(owed)
        found: dict[str, int] = {}
        for start in range(0, len(workers), 500):  # keep under SQLite's bound-parameter limit
            chunk = workers[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT worker, pending FROM balances WHERE worker IN ({marks})"
            found.update((worker, int(pending)) for worker, pending in db.execute(query, chunk))
        db.executemany(
            "INSERT OR REPLACE INTO balances (worker, pending) VALUES (?, ?)",
            [(worker, str(found.get(worker, 0) + amount)) for worker, amount in owed.items()],
        )

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK if the block raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        self._db.execute("COMMIT" if error is None else "ROLLBACK")
