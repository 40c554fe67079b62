"""LedgerService on both stores: where the ledger's calls run, group commits, and failures."""

import asyncio
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.ledger import Batch, Credit, RewardLedger, SQLiteLedgerStore
from tests.support.ledgers import Ledger, LedgerOpener

WORKERS = [f"0x{index:040x}" for index in range(1, 4)]


def credits_of(job: int) -> list[Credit]:
    return [Credit(f"job-{job}", worker, 10) for worker in WORKERS]


def counting_commits(ledger: Ledger) -> list[tuple[int, str]]:
    """From now on, each of the ledger's commits: how many credits, and the thread that made it."""
    real_credit_many = ledger.credit_many
    commits: list[tuple[int, str]] = []

    def counted(credits: Iterable[Credit]) -> list[bool]:
        batch = list(credits)
        commits.append((len(batch), threading.current_thread().name))
        return real_credit_many(batch)

    ledger.credit_many = counted  # type: ignore[method-assign]
    return commits


async def test_credits_handed_over_in_one_pass_of_the_loop_share_one_commit(
    ledger_opener: LedgerOpener,
) -> None:
    ledger = ledger_opener.open()
    commits = counting_commits(ledger)
    service = LedgerService(ledger)
    added = await asyncio.gather(*(service.credit_many(credits_of(job)) for job in range(5)))
    assert added == [[True] * 3] * 5
    assert [count for count, _ in commits] == [15]
    assert await service.pending() == dict.fromkeys(WORKERS, 50)
    # SQLite commits on the loop's own thread; Redis, which waits on the network, on the ledger's
    on_loop = threading.current_thread().name
    assert commits[0][1] == on_loop if ledger_opener.store == "sqlite" else commits[0][1] != on_loop
    assert await service.credit_many(credits_of(0)) == [False] * 3  # a credit is made once
    await service.close()


async def test_every_caller_of_a_failed_commit_learns_of_it_and_nothing_is_credited(
    ledger_opener: LedgerOpener,
) -> None:
    ledger = ledger_opener.open()
    service = LedgerService(ledger)
    real_credit_many = ledger.credit_many

    def failing(credits: Iterable[Credit]) -> list[bool]:
        raise OSError("disk I/O error")

    ledger.credit_many = failing  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(service.credit_many(credits_of(job)) for job in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, OSError) for result in results)
    assert await service.pending() == {}
    ledger.credit_many = real_credit_many  # type: ignore[method-assign]
    assert await service.credit_many(credits_of(0)) == [True] * 3
    await service.close()


async def test_a_sqlite_snapshot_freezes_one_batch_per_transaction_and_loses_no_credit_made_meanwhile(
    tmp_path: Path,
) -> None:
    ledger = RewardLedger(SQLiteLedgerStore(tmp_path / "ledger.db"))
    service = LedgerService(ledger)
    early = [f"0x{index:040x}" for index in range(10, 15)]
    await service.credit_many([Credit("job-a", worker, 10) for worker in early])
    real_freeze = ledger._store.freeze
    transactions: list[list[tuple[str, ...]]] = []

    def counted(batches: Sequence[Batch]) -> None:
        transactions.append([batch.workers for batch in batches])
        real_freeze(batches)

    ledger._store.freeze = counted  # type: ignore[method-assign]
    late = [f"0x{index:040x}" for index in (1, 20)]  # one sorts before the early workers, one after
    snapshot = asyncio.ensure_future(service.snapshot(max_batch=2))
    await asyncio.sleep(0)  # the first batch is frozen: the snapshot lets the loop run
    await service.credit_many([Credit("job-b", worker, 7) for worker in late])
    batches = await snapshot
    assert transactions == [[batch.workers] for batch in batches]
    # what is pending after each batch is frozen in address order, for as many batches as it took
    # to freeze what was pending at the start: a credit made meanwhile joins one, or stays pending
    assert [batch.workers for batch in batches] == [tuple(early[:2]), tuple(early[2:4]), (late[0], early[4])]
    assert await service.pending() == {late[1]: 7}
    totals = await service.totals()
    assert totals.credited == totals.pending + totals.in_flight == 5 * 10 + 2 * 7
    await service.close()


async def test_a_credit_nobody_waits_for_shares_the_next_commit(ledger_opener: LedgerOpener) -> None:
    ledger = ledger_opener.open()
    commits = counting_commits(ledger)
    service = LedgerService(ledger)
    straggler = asyncio.ensure_future(service.credit_many(credits_of(0), hurry=False))
    for _ in range(3):  # passes of the loop, in which a hurried credit would have been committed
        await asyncio.sleep(0)
    assert commits == []
    assert await service.credit_many(credits_of(1)) == [True] * 3
    assert await straggler == [True] * 3
    assert [count for count, _ in commits] == [6]
    # alone, it is committed all the same, after a short wait (bounded here by the timeout)
    assert await asyncio.wait_for(service.credit_many(credits_of(2), hurry=False), timeout=5) == [True] * 3
    assert [count for count, _ in commits] == [6, 3]
    await service.close()


async def test_closing_writes_a_credit_still_waiting_to_share_a_commit(ledger_opener: LedgerOpener) -> None:
    service = LedgerService(ledger_opener.open())
    straggler = asyncio.ensure_future(service.credit_many(credits_of(0), hurry=False))
    await asyncio.sleep(0)  # the credit is queued
    await service.close()
    assert await straggler == [True] * 3
    reopened = ledger_opener.open()
    assert reopened.pending() == dict.fromkeys(WORKERS, 10)
    reopened.close()
