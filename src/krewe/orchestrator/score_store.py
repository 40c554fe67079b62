"""ScoreStore: peer scores kept beside the ledger, so that a restart does not wash a score clean:
in SQLite (`SQLiteScoreStore`), or in Redis where instances share their state
(`krewe.orchestrator.shared.RedisScoreStore`).

Scores change with every job; they are written in batches on a thread of their own (the latest
score of each worker wins), so the event loop never waits on disk. A score not yet written when
the process dies is the only thing lost: at worst a few seconds of score history, never money.

The SQLite scores have a file of their own (`scores.db`). They used to share the ledger's file, and
the ledger commits on the event loop: while a batch of scores held the file's write lock, the loop
waited in SQLite's busy handler. Scores found in the ledger's file (`earlier`) are moved over when
the store opens.
"""

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from krewe.orchestrator.scoring import PeerScore

__all__ = ["SQLiteScoreStore", "ScoreStore"]

log = logging.getLogger(__name__)


class ScoreStore(Protocol):
    """Where peer scores are kept; `put` batches, the latest score of a worker wins."""

    async def load(self) -> dict[str, PeerScore]:
        """Every stored score (called once, at start)."""

    def put(self, worker: str, score: PeerScore) -> None: ...

    async def flush(self) -> None:
        """Write every score put so far."""

    async def close(self) -> None: ...


class SQLiteScoreStore:
    def __init__(self, path: Path, *, earlier: Path | None = None, flush_s: float = 1.0) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS peer_scores"
            " (worker TEXT PRIMARY KEY, quality REAL NOT NULL, latency_ms REAL, jobs INTEGER NOT NULL)"
        )
        if earlier is not None and earlier.exists():
            self._move_from(earlier)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scores")
        self._flush_s = flush_s
        self._unwritten: dict[str, PeerScore] = {}
        self._flusher: asyncio.Task[None] | None = None

    def _move_from(self, earlier: Path) -> None:
        """Take the scores kept in `earlier`'s table, if it has one, and drop that table. Scores
        already here win; a crash in between leaves the table to be moved at the next start."""
        self._db.execute("ATTACH DATABASE ? AS earlier", (str(earlier),))
        try:
            found = "SELECT 1 FROM earlier.sqlite_master WHERE type = 'table' AND name = 'peer_scores'"
            if self._db.execute(found).fetchone() is not None:
                with self._db:
                    self._db.execute("BEGIN")
                    self._db.execute("INSERT OR IGNORE INTO peer_scores SELECT * FROM earlier.peer_scores")
                self._db.execute("DROP TABLE earlier.peer_scores")
        finally:
            self._db.execute("DETACH DATABASE earlier")

    async def load(self) -> dict[str, PeerScore]:
        rows = self._db.execute("SELECT worker, quality, latency_ms, jobs FROM peer_scores").fetchall()
        return {worker: PeerScore(quality, latency, jobs) for worker, quality, latency, jobs in rows}

    def put(self, worker: str, score: PeerScore) -> None:
        self._unwritten[worker] = score
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_s)  # gather a batch of scores into one transaction
        try:
            await self.flush()
        except sqlite3.Error:
            log.exception("writing peer scores failed; they are kept for the next write")

    async def flush(self) -> None:
        batch, self._unwritten = self._unwritten, {}
        if not batch:
            return
        rows = [(w, s.quality, s.latency_ms, s.jobs) for w, s in batch.items()]
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._write, rows)
        except sqlite3.Error:
            self._unwritten = batch | self._unwritten  # newer scores win
            raise

    def _write(self, rows: list[tuple[str, float, float | None, int]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO peer_scores VALUES (?, ?, ?, ?)", rows)

    async def close(self) -> None:
        await self.flush()
        await asyncio.get_running_loop().run_in_executor(self._thread, self._db.close)
        self._thread.shutdown(wait=True)
