"""JobStore: every job's record (who was asked, what each answered and when, the verdict, the
credits), kept for `retention_s` and served by GET /v1/jobs/{id}: in SQLite (`SQLiteJobStore`),
or in Redis where instances share their state (`krewe.orchestrator.shared.RedisJobStore`).

Records are serialised and written in batches on a thread of their own, so the event loop neither
waits on disk nor spends its time encoding; a record not yet written is served from memory. Each
record is also handed, as it comes, to the `NetworkActivity` that the operator's dashboard reads
(a small summary, no copy of the record). Records past `retention_s` are deleted in the same
transactions, at most `SWEEP_ROWS` (or twice the batch) at a time, so that a backlog (after a long
stop, or a shorter retention) is worked off over many writes instead of in one long transaction.
"""

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import orjson

from krewe.orchestrator.activity import NetworkActivity

__all__ = ["JobStore", "SQLiteJobStore"]

log = logging.getLogger(__name__)

SWEEP_ROWS = 1000


class JobStore(Protocol):
    """Where job records are kept; a record put is served by `get` at once, written or not."""

    def put(self, record: dict[str, Any]) -> None: ...

    async def get(self, job_id: str) -> dict[str, Any] | None: ...

    async def flush(self) -> None:
        """Write every record put so far."""

    async def close(self) -> None: ...


class SQLiteJobStore:
    def __init__(
        self, path: Path, *, retention_s: float, activity: NetworkActivity, flush_s: float = 0.05
    ) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs"
            " (job_id TEXT PRIMARY KEY, created REAL NOT NULL, record BLOB NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created)")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs")
        self._retention_s = retention_s
        self._activity = activity
        self._flush_s = flush_s
        self._unwritten: dict[str, tuple[float, dict[str, Any]]] = {}
        self._flusher: asyncio.Task[None] | None = None

    def put(self, record: dict[str, Any]) -> None:
        now = time.time()
        self._unwritten[record["job_id"]] = (now, record)
        self._activity.job_closed(record, now)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def get(self, job_id: str) -> dict[str, Any] | None:
        if job_id in self._unwritten:
            return self._unwritten[job_id][1]
        row = await asyncio.get_running_loop().run_in_executor(self._thread, self._read, job_id)
        return None if row is None else dict(orjson.loads(row))

    def _read(self, job_id: str) -> bytes | None:
        row = self._db.execute("SELECT record FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else bytes(row[0])

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_s)  # gather a batch of records into one transaction
        try:
            await self.flush()
        except sqlite3.Error:
            log.exception(
                "writing job records failed; they are lost (credits are not: the ledger is separate)"
            )

    async def flush(self) -> None:
        batch, self._unwritten = self._unwritten, {}
        if batch:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._write, batch)

    def _write(self, batch: dict[str, tuple[float, dict[str, Any]]]) -> None:
        rows = [(job_id, created, orjson.dumps(record)) for job_id, (created, record) in batch.items()]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)", rows)
            self._db.execute(
                "DELETE FROM jobs WHERE rowid IN"
                " (SELECT rowid FROM jobs WHERE created < ? ORDER BY created, rowid LIMIT ?)",
                (time.time() - self._retention_s, max(SWEEP_ROWS, 2 * len(rows))),
            )

    async def close(self) -> None:
        await self.flush()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        self._thread.shutdown(wait=True)
