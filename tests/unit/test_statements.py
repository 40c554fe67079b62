"""A worker's statement from the ledger, on each of its stores: its account, its credits with their
times, its payouts, page by page, newest first."""

from pathlib import Path

import pytest

from krewe.orchestrator.ledger import (
    Credit,
    LedgerError,
    SendRecord,
    SignedSend,
    StatementCredit,
    StatementCursor,
    StatementPayout,
    WorkerTotals,
)
from tests.support.ledgers import Ledger, LedgerOpener


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def signed(batch_nonce: int, *tx_hashes: str) -> SendRecord:
    sends = tuple(SignedSend(tx, "0x02", 2, 1) for tx in tx_hashes)
    return SendRecord(batch_nonce, "0x" + "ab" * 32, batch_nonce, 90_000, sends, 10)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(
    params=[("sqlite", 2), ("sqlite", 10_000), ("redis", 0)],
    ids=["sqlite-written-every-2", "sqlite-in-memory", "redis"],
)
def opener(tmp_path: Path, request: pytest.FixtureRequest) -> LedgerOpener:
    """On SQLite, credits are read from the statement index, from memory, or both; on Redis, from
    Redis alone."""
    store, index_every = request.param
    url = request.getfixturevalue("redis_url") if store == "redis" else ""
    return LedgerOpener(store, tmp_path / "ledger.db", url, index_every=index_every)


@pytest.fixture
def ledger(opener: LedgerOpener, clock: Clock) -> Ledger:
    return opener.open(clock)


def pay(ledger: Ledger, batch_nonce: int, *tx_hashes: str) -> None:
    for batch in ledger.snapshot(max_batch=10):
        ledger.record_send(batch.id, signed(batch_nonce, *tx_hashes))
        ledger.commit(batch.id)


def test_a_statement_lists_credits_with_their_times_and_payouts_with_their_transactions(
    ledger: Ledger, clock: Clock
) -> None:
    ledger.credit_many([Credit("j1", "0xA", 3), Credit("j1", "0xB", 4)])
    clock.now += 1.5
    ledger.credit("0xA", 5, "j2")
    clock.now += 10
    pay(ledger, 7, "0x01", "0x02")  # a fee bump: the last signed transaction is named
    clock.now += 1
    ledger.credit("0xA", 6, "j3")
    statement = ledger.statement("0xA", StatementCursor(), limit=10)
    start = 1_700_000_000_000
    assert statement.totals == WorkerTotals(credited=14, paid=8, pending=6, in_flight=0)
    assert statement.credits == [
        StatementCredit("j3", 6, start + 12_500),
        StatementCredit("j2", 5, start + 1_500),
        StatementCredit("j1", 3, start),
    ]
    assert statement.payouts == [StatementPayout(1, 7, "0x02", 8, start + 11_500)]
    assert statement.next is None
    assert ledger.statement("0xB", StatementCursor(), limit=10).totals == WorkerTotals(4, 4, 0, 0)


def test_pages_follow_each_other_without_gaps_or_repeats(ledger: Ledger, clock: Clock) -> None:
    for round_ in range(3):
        # credits made in one commit share their time: the job id orders them
        ledger.credit_many([Credit(f"j{round_}-{i}", "0xA", 1 + i) for i in range(4)])
        clock.now += 1
        pay(ledger, round_, f"0x{round_:02d}")
        clock.now += 1
    seen_credits: list[StatementCredit] = []
    seen_payouts: list[StatementPayout] = []
    cursor: StatementCursor | None = StatementCursor()
    pages = 0
    while cursor is not None:
        page = ledger.statement("0xA", cursor, limit=5)
        assert len(page.credits) <= 5 and len(page.payouts) <= 5
        seen_credits += page.credits
        seen_payouts += page.payouts
        cursor, pages = page.next, pages + 1
    assert pages == 3  # 12 credits: 5, 5, 2
    assert [c.job_id for c in seen_credits] == [f"j{r}-{i}" for r in (2, 1, 0) for i in (3, 2, 1, 0)]
    assert [p.batch_nonce for p in seen_payouts] == [2, 1, 0]
    assert sum(c.amount for c in seen_credits) == sum(p.amount for p in seen_payouts) == 30


def test_credits_made_after_the_first_page_do_not_shift_the_next(ledger: Ledger, clock: Clock) -> None:
    ledger.credit_many([Credit(f"j{i}", "0xA", 1) for i in range(3)])
    first = ledger.statement("0xA", StatementCursor(), limit=2)
    assert first.next is not None
    clock.now += 1
    ledger.credit("0xA", 1, "later")
    second = ledger.statement("0xA", first.next, limit=2)
    assert [c.job_id for c in first.credits + second.credits] == ["j2", "j1", "j0"]
    assert second.next is None and second.totals.credited == 4


def test_an_unknown_worker_has_an_empty_statement_and_a_page_needs_room(ledger: Ledger) -> None:
    empty = ledger.statement("0xZ", StatementCursor(), limit=1)
    assert (empty.totals, empty.credits, empty.payouts, empty.next) == (
        WorkerTotals(0, 0, 0, 0),
        [],
        [],
        None,
    )
    with pytest.raises(LedgerError, match="at least one entry"):
        ledger.statement("0xZ", StatementCursor(), limit=0)


def test_a_crash_before_the_bulk_index_write_loses_no_statement_entry(
    opener: LedgerOpener, clock: Clock
) -> None:
    opener.index_every = 3
    ledger = opener.open(clock)
    for i in range(5):  # on SQLite, the first three are written with the fourth; two stay in memory
        clock.now += 1
        ledger.credit("0xA", 1 + i, f"j{i}")
    # no close: as after SIGKILL
    reopened = opener.open(clock)
    statement = reopened.statement("0xA", StatementCursor(), limit=10)
    assert [c.job_id for c in statement.credits] == ["j4", "j3", "j2", "j1", "j0"]
    assert sum(c.amount for c in statement.credits) == statement.totals.credited == 15


def test_times_only_increase_when_the_clock_steps_back(ledger: Ledger, clock: Clock) -> None:
    ledger.credit("0xA", 1, "j1")
    clock.now -= 60
    ledger.credit("0xA", 2, "j2")
    credits = ledger.statement("0xA", StatementCursor(), limit=10).credits
    assert [c.job_id for c in credits] == ["j2", "j1"] and credits[0].at_ms == credits[1].at_ms + 1


def test_a_reverted_batch_is_no_payout(ledger: Ledger) -> None:
    ledger.credit("0xA", 9, "j1")
    (batch,) = ledger.snapshot(max_batch=10)
    assert ledger.earnings(["0xA"])["0xA"] == WorkerTotals(credited=9, paid=0, pending=0, in_flight=9)
    ledger.revert(batch.id)
    statement = ledger.statement("0xA", StatementCursor(), limit=10)
    assert statement.payouts == [] and statement.totals == WorkerTotals(9, 0, 9, 0)
