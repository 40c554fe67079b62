"""The reward ledger on both of its stores (RewardLedger on SQLite, RedisLedger on a real
redis-server): rules and a random state machine; and, for SQLite, migrations and crashes of a real
process."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from krewe.orchestrator.ledger import (
    Credit,
    LedgerError,
    RewardLedger,
    SendRecord,
    SignedSend,
    SQLiteLedgerStore,
    StatementCursor,
    StatementPayout,
    WorkerTotals,
)
from tests.support.ledgers import Ledger, LedgerOpener

WEI = 10**18


def open_ledger(path: Path, index_every: int = 128) -> RewardLedger:
    return RewardLedger(SQLiteLedgerStore(path), index_every=index_every)


def assert_balanced(ledger: Ledger) -> None:
    totals = ledger.totals()
    assert totals.credited == totals.paid + totals.pending + totals.in_flight


def test_credit_snapshot_commit_revert(ledger_opener: LedgerOpener) -> None:
    ledger = ledger_opener.open()
    assert ledger.credit("0xA", 5 * WEI, "job-1")
    assert ledger.credit("0xB", 7, "job-1")
    assert not ledger.credit("0xA", 5 * WEI, "job-1")  # idempotent per (job, worker)
    assert ledger.credit_many([Credit("job-1", "0xB", 7), Credit("job-9", "0xC", 2)]) == [False, True]
    ledger.revert(ledger.snapshot(max_batch=10)[0].id)
    assert ledger.credit_many([Credit("job-9", "0xC", 2)]) == [False]
    assert ledger.pending()["0xC"] == 2
    assert ledger.pending() == {"0xA": 5 * WEI, "0xB": 7, "0xC": 2}
    (batch,) = ledger.snapshot(max_batch=10)
    assert (batch.workers, batch.amounts) == (("0xA", "0xB", "0xC"), (5 * WEI, 7, 2))
    assert batch.total == 5 * WEI + 9
    ledger.credit("0xA", 1, "job-2")  # keeps accumulating beside the frozen batch
    assert ledger.pending() == {"0xA": 1}
    assert ledger.totals().in_flight == 5 * WEI + 9
    ledger.revert(batch.id)
    assert ledger.pending() == {"0xA": 5 * WEI + 1, "0xB": 7, "0xC": 2}
    (again,) = ledger.snapshot(max_batch=10)
    ledger.commit(again.id)
    totals = ledger.totals()
    assert (totals.credited, totals.paid, totals.pending, totals.in_flight) == (
        5 * WEI + 10,
        5 * WEI + 10,
        0,
        0,
    )


def test_snapshot_splits_by_max_batch_and_nothing_pending_gives_no_batch(ledger_opener: LedgerOpener) -> None:
    ledger = ledger_opener.open()
    assert ledger.snapshot(max_batch=2) == []
    ledger.credit_many(Credit(f"job-{i}", f"0x{i:02d}", 1 + i) for i in range(5))
    batches = ledger.snapshot(max_batch=2)
    assert [b.workers for b in batches] == [("0x00", "0x01"), ("0x02", "0x03"), ("0x04",)]
    assert [b.id for b in batches] == [1, 2, 3]
    assert ledger.open_batches() == batches


def test_amounts_beyond_64_bits_are_exact(ledger_opener: LedgerOpener) -> None:
    ledger = ledger_opener.open()
    huge = 2**200 + 1
    ledger.credit("0xA", huge, "j1")
    ledger.credit("0xA", huge, "j2")
    ledger.close()
    reopened = ledger_opener.open()
    assert reopened.pending() == {"0xA": 2 * huge}


@pytest.mark.parametrize(
    ("amount", "words"),
    [
        (0, "positive integer"),
        (-1, "positive integer"),
        (1.5, "positive integer"),
        (True, "positive integer"),
    ],
)
def test_bad_credits_are_refused(ledger_opener: LedgerOpener, amount: object, words: str) -> None:
    ledger = ledger_opener.open()
    with pytest.raises(LedgerError, match=words):
        ledger.credit("0xA", amount, "job")  # type: ignore[arg-type]
    assert ledger.totals().credited == 0


def test_bad_settlements_are_refused(ledger_opener: LedgerOpener) -> None:
    ledger = ledger_opener.open()
    ledger.credit("0xA", 1, "job")
    (batch,) = ledger.snapshot(max_batch=1)
    ledger.commit(batch.id)
    with pytest.raises(LedgerError, match="not open"):
        ledger.commit(batch.id)
    with pytest.raises(LedgerError, match="not open"):
        ledger.revert(batch.id)
    with pytest.raises(LedgerError, match="not open"):
        ledger.revert(99)
    with pytest.raises(LedgerError, match="at least 1"):
        ledger.snapshot(max_batch=0)
    with pytest.raises(LedgerError, match="job id"):
        ledger.credit("0xA", 1, "")
    assert_balanced(ledger)


def test_reopen_restores_pending_and_open_batches(ledger_opener: LedgerOpener) -> None:
    ledger = ledger_opener.open()
    ledger.credit_many([Credit("j1", "0xA", 3), Credit("j1", "0xB", 4), Credit("j2", "0xA", 5)])
    (batch,) = ledger.snapshot(max_batch=5)
    ledger.credit("0xC", 9, "j3")
    ledger.close()
    reopened = ledger_opener.open()
    assert reopened.open_batches() == [batch]
    assert reopened.pending() == {"0xC": 9}
    assert reopened.totals() == ledger.totals()
    reopened.revert(batch.id)
    assert reopened.pending() == {"0xA": 8, "0xB": 4, "0xC": 9}
    assert [b.id for b in reopened.snapshot(max_batch=5)] == [2]  # batch ids are never reused


RECORD = SendRecord(
    batch_nonce=4,
    payload_hash="0x" + "ab" * 32,
    account_nonce=7,
    gas=90_000,
    sends=(SignedSend("0x" + "01" * 32, "0x02f8", 3 * 10**9, 10**9),),
    signed_block=1234,
)


def test_a_send_record_survives_a_reopen(ledger_opener: LedgerOpener) -> None:
    ledger = ledger_opener.open()
    ledger.credit("0xA", 3, "j1")
    (batch,) = ledger.snapshot(max_batch=5)
    ledger.record_send(batch.id, RECORD)
    ledger.close()
    assert ledger_opener.open().open_batches() == [replace(batch, send=RECORD)]


def as_version_2_wrote_it(path: Path) -> None:
    """Take away what version 3 added: each signed batch's nonce and transaction hash."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE batch_sends")
        db.execute("PRAGMA user_version = 2")
    db.close()


def as_version_1_wrote_it(path: Path) -> None:
    """Take away what versions 2 and 3 added: credit times, earnings, payouts, the batch columns."""
    as_version_2_wrote_it(path)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE payouts")
        db.execute("DROP TABLE paid_by_worker")
        db.execute("DROP TABLE statement_credits")
        db.execute("DROP TABLE statement_through")
        db.execute("ALTER TABLE credits DROP COLUMN at")
        db.execute("ALTER TABLE totals DROP COLUMN indexed_through")
        db.execute("ALTER TABLE totals DROP COLUMN last_at")
        db.execute("PRAGMA user_version = 1")
    db.close()


def test_a_ledger_written_before_statements_opens_with_each_workers_account(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path)
    ledger.credit_many([Credit("j1", "0xA", 3), Credit("j1", "0xB", 4), Credit("j2", "0xA", 5)])
    (paid,) = ledger.snapshot(max_batch=5)
    ledger.record_send(paid.id, RECORD)
    ledger.commit(paid.id)
    ledger.credit("0xA", 6, "j3")
    (frozen,) = ledger.snapshot(max_batch=5)
    ledger.credit("0xB", 1, "j4")
    ledger.close()
    as_version_1_wrote_it(path)
    reopened = open_ledger(path)
    assert reopened.earnings(["0xA", "0xB", "0xC"]) == {
        "0xA": WorkerTotals(credited=14, paid=8, pending=0, in_flight=6),
        "0xB": WorkerTotals(credited=5, paid=4, pending=1, in_flight=0),
        "0xC": WorkerTotals(credited=0, paid=0, pending=0, in_flight=0),
    }
    statement = reopened.statement("0xA", StatementCursor(), limit=10)
    assert {(c.job_id, c.amount, c.at_ms) for c in statement.credits} == {
        ("j1", 3, 0),
        ("j2", 5, 0),
        ("j3", 6, 0),
    }
    assert statement.payouts == [StatementPayout(paid.id, 4, RECORD.sends[-1].tx_hash, 8, 0)]
    reopened.commit(frozen.id)
    assert reopened.earnings(["0xA"])["0xA"] == WorkerTotals(credited=14, paid=14, pending=0, in_flight=0)


def test_a_ledger_written_before_signed_blocks_were_recorded_opens(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path)
    ledger.credit("0xA", 3, "j1")
    (batch,) = ledger.snapshot(max_batch=5)
    ledger.record_send(batch.id, RECORD)
    ledger.close()
    as_version_1_wrote_it(path)
    with sqlite3.connect(path) as db:  # as version 0 wrote it
        db.execute("UPDATE batches SET send = json_remove(send, '$.signed_block')")
        db.execute("PRAGMA user_version = 0")
    db.close()
    reopened = open_ledger(path)
    # unknown: its event search starts at chain_from_block, as it did then
    assert reopened.open_batches() == [replace(batch, send=replace(RECORD, signed_block=0))]
    reopened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
    db.close()


def test_a_ledger_written_before_batch_sends_lists_its_payouts(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path)
    ledger.credit_many([Credit("j1", "0xA", 3), Credit("j2", "0xA", 5)])
    (paid,) = ledger.snapshot(max_batch=5)
    bumped = replace(
        RECORD, sends=(*RECORD.sends, SignedSend("0x" + "03" * 32, "0x02f9", 4 * 10**9, 2 * 10**9))
    )
    ledger.record_send(paid.id, bumped)
    ledger.commit(paid.id)
    ledger.credit("0xA", 6, "j3")
    (unsigned,) = ledger.snapshot(max_batch=5)
    ledger.close()
    as_version_2_wrote_it(path)
    reopened = open_ledger(path)
    (earlier,) = reopened.statement("0xA", StatementCursor(), limit=10).payouts
    assert (earlier.batch_id, earlier.batch_nonce, earlier.tx_hash, earlier.amount) == (
        paid.id,
        RECORD.batch_nonce,
        "0x" + "03" * 32,  # the latest send: the fee bump
        8,
    )
    reopened.record_send(unsigned.id, replace(RECORD, batch_nonce=5))  # written to the new table
    reopened.commit(unsigned.id)
    payouts = reopened.statement("0xA", StatementCursor(), limit=10).payouts
    assert [(p.batch_id, p.batch_nonce, p.tx_hash, p.amount) for p in payouts] == [
        (unsigned.id, 5, RECORD.sends[-1].tx_hash, 6),
        (paid.id, RECORD.batch_nonce, "0x" + "03" * 32, 8),
    ]
    reopened.close()


def test_a_ledger_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    open_ledger(tmp_path / "ledger.db").close()
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        db.execute("PRAGMA user_version = 4")
    db.close()
    with pytest.raises(LedgerError, match="ledger version 4, newer than this krewe reads"):
        open_ledger(tmp_path / "ledger.db")


class LedgerMachine(RuleBasedStateMachine):
    """Random operations against a model; the invariant and the model are checked after each."""

    def __init__(self, store: str, redis_url: str) -> None:
        super().__init__()
        self.directory = tempfile.TemporaryDirectory()
        path = Path(self.directory.name) / "ledger.db"
        self.opener = LedgerOpener(store, path, redis_url, index_every=3)
        self.ledger = self.opener.open()
        self.credits: dict[tuple[str, str], int] = {}  # every credit ever accepted
        self.paid: dict[str, int] = {}
        self.open: dict[int, dict[str, int]] = {}

    def teardown(self) -> None:
        self.ledger.close()
        self.directory.cleanup()

    @rule(
        job=st.integers(0, 30),
        worker=st.sampled_from(["0xA", "0xB", "0xC", "0xD"]),
        amount=st.integers(1, 10**24),
    )
    def credit(self, job: int, worker: str, amount: int) -> None:
        key = (f"job-{job}", worker)
        added = self.ledger.credit(worker, amount, key[0])
        assert added is (key not in self.credits)
        self.credits.setdefault(key, amount)

    @rule(max_batch=st.integers(1, 3))
    def snapshot(self, max_batch: int) -> None:
        expected = self.model_pending()
        batches = self.ledger.snapshot(max_batch)
        frozen: dict[str, int] = {}
        for batch in batches:
            assert len(batch.workers) <= max_batch
            self.open[batch.id] = dict(zip(batch.workers, batch.amounts, strict=True))
            frozen.update(self.open[batch.id])
        assert frozen == expected

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data(), paid=st.booleans())
    def settle(self, data: st.DataObject, paid: bool) -> None:
        batch_id = data.draw(st.sampled_from(sorted(self.open)))
        amounts = self.open.pop(batch_id)
        if paid:
            self.ledger.commit(batch_id)
            for worker, amount in amounts.items():
                self.paid[worker] = self.paid.get(worker, 0) + amount
        else:
            self.ledger.revert(batch_id)

    @rule()
    def reopen(self) -> None:
        before = self.ledger.totals()
        self.ledger.close()
        self.ledger = self.opener.open()
        assert self.ledger.totals() == before

    def model_pending(self) -> dict[str, int]:
        owed: dict[str, int] = {}
        for (_, worker), amount in self.credits.items():
            owed[worker] = owed.get(worker, 0) + amount
        for amounts in [self.paid, *self.open.values()]:
            for worker, amount in amounts.items():
                owed[worker] -= amount
        return {worker: amount for worker, amount in owed.items() if amount}

    @invariant()
    def balanced(self) -> None:
        assert_balanced(self.ledger)
        assert self.ledger.totals().credited == sum(self.credits.values())
        assert self.ledger.pending() == self.model_pending()

    @invariant()
    def each_account_adds_up_and_its_statement_lists_it(self) -> None:
        pending = self.model_pending()
        for worker, account in self.ledger.earnings(["0xA", "0xB", "0xC", "0xD"]).items():
            credited = sum(amount for (_, to), amount in self.credits.items() if to == worker)
            assert (account.credited, account.paid) == (credited, self.paid.get(worker, 0))
            assert account.pending == pending.get(worker, 0)
            assert account.credited == account.paid + account.pending + account.in_flight
            listed_credits = listed_payouts = 0
            cursor: StatementCursor | None = StatementCursor()
            while cursor is not None:
                page = self.ledger.statement(worker, cursor, limit=2)
                assert page.totals == account
                listed_credits += sum(credit.amount for credit in page.credits)
                listed_payouts += sum(payout.amount for payout in page.payouts)
                cursor = page.next
            assert (listed_credits, listed_payouts) == (account.credited, account.paid)


def test_random_operations_keep_the_ledger_exact(ledger_opener: LedgerOpener) -> None:
    # fewer runs against Redis, whose round trips make each step slower
    examples = {"sqlite": 60, "redis": 25}[ledger_opener.store]
    run_state_machine_as_test(
        lambda: LedgerMachine(ledger_opener.store, ledger_opener.redis_url),
        settings=settings(max_examples=examples, stateful_step_count=30, deadline=None),
    )


# A real process credits and settles, printing each acknowledged step; it is killed with SIGKILL
# at a random point, and the reopened ledger must hold every acknowledged step exactly.
# With `checkpoint_rows` small, the log's checkpoints on their thread run all the time, so the kill
# often cuts one short, and the reopening recovers from it. (A kill leaves what the system already
# holds in memory, so this does not test the order of the syncs.)
WRITER = """
import random, sys
from krewe.orchestrator import ledger as module
from krewe.orchestrator.ledger import Credit, RewardLedger, SQLiteLedgerStore
module.CHECKPOINT_ROWS = int(sys.argv[4])
ledger = RewardLedger(SQLiteLedgerStore(sys.argv[1]))
rng = random.Random(int(sys.argv[2]))
job = 0
print("ready", flush=True)
while True:
    action = rng.random()
    if action < 0.7:
        credits = []
        for _ in range(rng.randint(1, 20)):
            job += 1
            credits.append(Credit(f"{sys.argv[3]}-{job}", f"0x{rng.randint(0, 9)}", rng.randint(1, 10**20)))
        ledger.credit_many(credits)
        for c in credits:
            print("credit", c.job_id, c.worker, c.amount, flush=True)
    elif action < 0.85:  # every batch in one transaction, or one batch per transaction
        rounds = 1 if rng.random() < 0.5 else -(-len(ledger.pending()) // 4)
        for _ in range(rounds):
            for batch in ledger.snapshot(max_batch=4, max_batches=None if rounds == 1 else 1):
                print("batch", batch.id, flush=True)
    else:
        for batch in ledger.open_batches()[:1]:
            if rng.random() < 0.5:
                ledger.commit(batch.id)
                print("paid", batch.id, flush=True)
            else:
                ledger.revert(batch.id)
                print("reverted", batch.id, flush=True)
"""


@pytest.mark.parametrize(
    ("seed", "checkpoint_rows"), [(seed, 20 if seed % 2 else 1_000) for seed in range(8)]
)
def test_sigkill_at_a_random_point_loses_nothing_acknowledged(
    tmp_path: Path, seed: int, checkpoint_rows: int
) -> None:
    path = tmp_path / "ledger.db"
    rng = random.Random(seed)
    acknowledged: dict[tuple[str, str], int] = {}
    paid: set[int] = set()
    reverted: set[int] = set()
    for life in range(3):  # kill, reopen and carry on writing, three times
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                str(path),
                str(seed * 10 + life),
                f"life{life}",
                str(checkpoint_rows),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        lines_before_kill = rng.randint(1, 400)
        for _ in range(lines_before_kill):
            line = process.stdout.readline()
            assert line, "the writer stopped by itself"
            kind, *fields = line.split()
            if kind == "credit":
                job_id, worker, amount = fields
                acknowledged[(job_id, worker)] = int(amount)
            elif kind == "paid":
                paid.add(int(fields[0]))
            elif kind == "reverted":
                reverted.add(int(fields[0]))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()

        ledger = open_ledger(path)
        assert_balanced(ledger)
        ledger.close()
        with sqlite3.connect(path) as db:
            stored = {
                (job, worker): int(amount)
                for job, worker, amount in db.execute("SELECT job_id, worker, amount FROM credits")
            }
            states = dict(db.execute("SELECT id, state FROM batches"))
            pending = sum(int(amount) for (amount,) in db.execute("SELECT pending FROM balances"))
            in_flight = sum(
                sum(map(int, amounts.split()))
                for (amounts,) in db.execute("SELECT amounts FROM batches WHERE state = 'open'")
            )
            credited, paid_total = db.execute("SELECT credited, paid FROM totals").fetchone()
            paid_in_batches = sum(
                sum(map(int, amounts.split()))
                for (amounts,) in db.execute("SELECT amounts FROM batches WHERE state = 'paid'")
            )
        assert int(credited) == sum(stored.values())  # the running total matches the rows
        assert int(paid_total) == paid_in_batches
        assert int(credited) == int(paid_total) + pending + in_flight  # from the rows, not the counters
        # every acknowledged credit is stored once, with its amount (a transaction committed just
        # before the kill may hold more; nothing acknowledged is missing)
        for key, amount in acknowledged.items():
            assert stored[key] == amount
        assert all(states[batch_id] == "paid" for batch_id in paid)
        assert all(states[batch_id] == "reverted" for batch_id in reverted)


def test_the_log_is_checkpointed_beside_the_writer_and_stays_short(tmp_path: Path) -> None:
    """Some 60,000 rows written: SQLite's own checkpoint, on commit, would start only past
    FALLBACK_CHECKPOINT_PAGES (80 MB of log); the store's thread keeps the log to a few MB."""
    path = tmp_path / "ledger.db"
    ledger = open_ledger(path)
    rng = random.Random(7)
    workers = [f"0x{rng.getrandbits(160):040x}" for _ in range(5_000)]
    longest = 0
    for job in range(300):
        ledger.credit_many(Credit(f"job-{job}", worker, 10**15) for worker in rng.sample(workers, 100))
        longest = max(longest, path.with_name("ledger.db-wal").stat().st_size)
    assert longest < 16 * 2**20
    assert_balanced(ledger)
    ledger.close()
    assert not path.with_name("ledger.db-wal").exists()  # every connection closed, the log copied
    assert open_ledger(path).totals().credited == 300 * 100 * 10**15


# A real process freezes its pending credits one batch per transaction, as the service does, and is
# killed with SIGKILL just after the first batch is durable, with the others still to come.
CHUNKED_SNAPSHOT = """
import sys, time
from krewe.orchestrator.ledger import Credit, RewardLedger, SQLiteLedgerStore
ledger = RewardLedger(SQLiteLedgerStore(sys.argv[1]))
ledger.credit_many([Credit("job-1", f"0x{worker:02x}", 10 + worker) for worker in range(12)])
print("credited", flush=True)
ledger.snapshot(max_batch=4, max_batches=1)
print("frozen", flush=True)
time.sleep(60)  # killed here, before the next batch
"""


def test_sigkill_between_two_batches_of_a_snapshot_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    process = subprocess.Popen(
        [sys.executable, "-c", CHUNKED_SNAPSHOT, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "credited\n"
    assert process.stdout.readline() == "frozen\n"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    ledger = open_ledger(path)
    assert_balanced(ledger)
    [frozen] = ledger.open_batches()
    assert frozen.workers == tuple(f"0x{worker:02x}" for worker in range(4))
    assert ledger.pending() == {f"0x{worker:02x}": 10 + worker for worker in range(4, 12)}
    # the rest is frozen by the next snapshot, after the batch left open
    assert [batch.workers for batch in ledger.snapshot(max_batch=4)] == [
        tuple(f"0x{worker:02x}" for worker in range(4, 8)),
        tuple(f"0x{worker:02x}" for worker in range(8, 12)),
    ]
    assert_balanced(ledger)
    assert ledger.totals().in_flight == sum(10 + worker for worker in range(12))
    ledger.close()
