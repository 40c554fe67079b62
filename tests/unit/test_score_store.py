"""Peer scores, in SQLite and in Redis: written in batches, the latest score of a worker wins, and
read back by the next store on the same storage (after a restart, or by another instance)."""

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio

from krewe.orchestrator.score_store import ScoreStore, SQLiteScoreStore
from krewe.orchestrator.scoring import PeerScore
from krewe.orchestrator.shared import SCORE_PREFIX, RedisScoreStore, connect


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ScoreStore]:
    """Opens a store on the same storage each time: a restart, or another instance."""
    if request.param == "sqlite":
        return lambda: SQLiteScoreStore(tmp_path / "scores.db", flush_s=3600)
    shared = request.getfixturevalue("client")
    return lambda: RedisScoreStore(shared, flush_s=3600)


async def test_scores_written_by_one_store_load_in_the_next(open_store: Callable[[], ScoreStore]) -> None:
    writer = open_store()
    assert await writer.load() == {}
    writer.put("0xa", PeerScore(0.5, None, 1))
    writer.put("0xa", PeerScore(0.75, 12.5, 2))  # the latest wins
    writer.put("0xb", PeerScore(0.1, 3.0, 7))
    reader = open_store()
    assert await reader.load() == {}  # nothing written yet: the batch waits flush_s
    await writer.flush()
    assert await reader.load() == {"0xa": PeerScore(0.75, 12.5, 2), "0xb": PeerScore(0.1, 3.0, 7)}
    writer.put("0xb", PeerScore(0.2, None, 8))  # a latency can be forgotten again
    await writer.close()
    assert (await reader.load())["0xb"] == PeerScore(0.2, None, 8)
    await reader.close()


async def test_a_redis_score_is_a_hash_per_worker(client: redis.asyncio.Redis) -> None:
    store = RedisScoreStore(client, flush_s=3600)
    store.put("0xa", PeerScore(0.5, None, 1))
    store.put("0xb", PeerScore(0.25, 40.0, 3))
    await store.close()
    assert await client.hgetall(SCORE_PREFIX + "0xa") == {b"quality": b"0.5", b"jobs": b"1"}
    assert await client.hgetall(SCORE_PREFIX + "0xb") == {
        b"quality": b"0.25",
        b"jobs": b"3",
        b"latency_ms": b"40.0",
    }
    assert await client.ttl(SCORE_PREFIX + "0xa") == -1  # kept until overwritten


async def test_scores_kept_in_the_ledgers_file_move_to_their_own(tmp_path: Path) -> None:
    ledger_file = tmp_path / "ledger.db"
    old = SQLiteScoreStore(ledger_file, flush_s=3600)  # where scores were kept before
    old.put("0xa", PeerScore(0.5, None, 1))
    old.put("0xb", PeerScore(0.25, 40.0, 3))
    await old.close()
    newer = SQLiteScoreStore(tmp_path / "scores.db", flush_s=3600)
    newer.put("0xb", PeerScore(0.9, 5.0, 9))  # a score already in the new file wins
    await newer.close()
    store = SQLiteScoreStore(tmp_path / "scores.db", earlier=ledger_file, flush_s=3600)
    assert await store.load() == {"0xa": PeerScore(0.5, None, 1), "0xb": PeerScore(0.9, 5.0, 9)}
    await store.close()
    with sqlite3.connect(ledger_file) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'peer_scores'").fetchall() == []
    again = SQLiteScoreStore(
        tmp_path / "scores.db", earlier=ledger_file, flush_s=3600
    )  # nothing left to move
    assert len(await again.load()) == 2
    await again.close()
