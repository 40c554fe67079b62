"""LedgerService: the reward ledger (RewardLedger, or RedisLedger shared by several instances),
one call at a time, in order, for async code.

The SQLite ledger runs on the event loop itself. A commit of a few credits takes about 0.2 ms, its
fsync included, and the loop waits for it. On a thread of its own it took far longer whenever the
loop was busy: each SQLite step lets go of the interpreter lock and has to win it back from the
loop, which can take the whole switch interval (5 ms), and a commit is some thirty steps. Beside a
thread that keeps the interpreter busy, a commit of three credits that takes 0.2 ms alone took
155 ms, and under load the caller of every job waited for that (docs/performance.md).

The Redis ledger waits on the network, so its calls run on one dedicated thread, in order.

Either way the ledger never sees two callers at once, and credits are group-committed: credits
handed over in one pass of the event loop (or, with Redis, while a write is on its way) share one
commit, and each caller is told its credits exist only after they are durable. A credit nobody is
waiting for, a straggler's, waits a few milliseconds for another commit to share.
"""

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from krewe.orchestrator.ledger import (
    Batch,
    Credit,
    LedgerTotals,
    RewardLedger,
    SendRecord,
    Statement,
    StatementCursor,
    WorkerTotals,
)
from krewe.orchestrator.redis_ledger import RedisLedger

__all__ = ["LedgerService"]

T = TypeVar("T")

UNHURRIED_WAIT_S = 0.005  # the longest a credit nobody waits for waits for a commit to share


class LedgerService:
    def __init__(self, ledger: RewardLedger | RedisLedger) -> None:
        self._ledger = ledger
        self._thread = (
            None
            if isinstance(ledger, RewardLedger)
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        )
        self._queue: list[tuple[list[Credit], asyncio.Future[list[bool]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # an unhurried credit's latest commit

    async def _run(self, call: Callable[[], T]) -> T:
        if self._thread is None:
            return call()
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    def credit_many(self, credits: Sequence[Credit], *, hurry: bool = True) -> "asyncio.Future[list[bool]]":
        """Durably credit; the future is True for each credit that is new, once they are durable.
        Credits handed over together share one commit. A credit nobody waits for (`hurry=False`: a
        straggler's, whose job has answered its caller) waits up to UNHURRIED_WAIT_S for another
        credit's commit to share, or for one in progress: at 500 jobs/s, with 2 of 3 replicas
        deciding, that halves the commits."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bool]] = loop.create_future()
        if not credits:
            future.set_result([])
            return future
        self._queue.append((list(credits), future))
        if hurry:
            self._start_flush()
        elif self._timer is None and not self._flush_running:
            self._timer = loop.call_later(UNHURRIED_WAIT_S, self._start_flush)
        return future

    @property
    def _flush_running(self) -> bool:
        return self._flusher is not None and not self._flusher.done()

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._queue and not self._flush_running:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._queue:
            waiting, self._queue = self._queue, []
            everything = [credit for credits, _ in waiting for credit in credits]
            try:
                added = await self._run(partial(self._ledger.credit_many, everything))
            except Exception as error:  # every waiter learns its credits were not made
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for credits, future in waiting:
                if not future.done():
                    future.set_result(added[start : start + len(credits)])
                start += len(credits)

    async def snapshot(self, max_batch: int) -> list[Batch]:
        """Freeze every credit pending now into batches of at most `max_batch` workers. The SQLite
        ledger freezes one batch per transaction and lets the event loop run between two: ten
        thousand workers frozen at once held it 18 ms. Each batch takes the workers pending then, in
        address order, so a credit made in between joins a later batch or waits for the next
        snapshot."""
        ledger = self._ledger
        if not isinstance(ledger, RewardLedger):
            return await self._run(lambda: ledger.snapshot(max_batch))
        batches = ledger.snapshot(max_batch, max_batches=1)  # raises for a max_batch below 1
        for _ in range(math.ceil(len(ledger.pending()) / max_batch)):
            await asyncio.sleep(0)  # lets the loop run between two batches, not synchronisation
            batches += ledger.snapshot(max_batch, max_batches=1)
        return batches

    async def commit(self, batch_id: int) -> Batch:
        return await self._run(lambda: self._ledger.commit(batch_id))

    async def revert(self, batch_id: int) -> Batch:
        return await self._run(lambda: self._ledger.revert(batch_id))

    async def record_send(self, batch_id: int, record: SendRecord) -> Batch:
        return await self._run(lambda: self._ledger.record_send(batch_id, record))

    async def open_batches(self) -> list[Batch]:
        return await self._run(self._ledger.open_batches)

    async def totals(self) -> LedgerTotals:
        return await self._run(self._ledger.totals)

    async def pending(self) -> Mapping[str, int]:
        return await self._run(self._ledger.pending)

    async def earnings(self, workers: Iterable[str]) -> dict[str, WorkerTotals]:
        chosen = list(workers)
        return await self._run(lambda: self._ledger.earnings(chosen))

    async def statement(self, worker: str, cursor: StatementCursor, limit: int) -> Statement:
        return await self._run(lambda: self._ledger.statement(worker, cursor, limit))

    async def close(self) -> None:
        """Write the credits still waiting, then close the ledger."""
        self._start_flush()
        if self._flusher is not None:
            await self._flusher
        await self._run(self._ledger.close)
        if self._thread is not None:
            self._thread.shutdown(wait=True)
