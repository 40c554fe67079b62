"""The job store, in SQLite and in Redis: records served before and after they are written; in
SQLite, expired ones swept a bounded number at a time, oldest first; in Redis, expired by their
key's TTL and read by every instance."""

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio

from krewe.orchestrator.activity import NetworkActivity
from krewe.orchestrator.records import SWEEP_ROWS, JobStore, SQLiteJobStore
from krewe.orchestrator.shared import JOB_PREFIX, RedisJobStore, connect


def record(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "model": "m",
        "task": "chat",
        "engine": "e",
        "created_at": "2026-01-01T00:00:00Z",
        "verdict": "agreed",
        "deadline_exceeded": False,
        "threshold": 2,
        "replicas": 3,
        "agreeing": ["0xa", "0xb"],
        "creditable": True,
        "credits": {"0xa": "1", "0xb": "1"},
        "workers": [{"worker": "0xa", "answer": "result", "latency_ms": 1.5}],
        "output": {"text": "é ✓"},
    }


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[NetworkActivity], JobStore]:
    """Opens a store on the same storage each time: a restart, or another instance."""
    if request.param == "sqlite":
        return lambda activity: SQLiteJobStore(tmp_path / "jobs.db", retention_s=3600, activity=activity)
    shared = request.getfixturevalue("client")
    return lambda activity: RedisJobStore(shared, retention_s=3600, activity=activity)


async def test_a_record_reads_the_same_before_and_after_it_is_written(
    open_store: Callable[[NetworkActivity], JobStore],
) -> None:
    store = open_store(NetworkActivity())
    try:
        store.put(record("j1"))
        assert await store.get("j1") == record("j1")  # from memory
        await store.flush()
        assert await store.get("j1") == record("j1")  # from the store
        assert await store.get("j2") is None
    finally:
        await store.close()


async def test_a_record_written_by_one_store_is_read_by_the_next(
    open_store: Callable[[NetworkActivity], JobStore],
) -> None:
    writer, reader = open_store(NetworkActivity()), open_store(NetworkActivity())
    try:
        writer.put(record("j1"))
        assert await reader.get("j1") is None  # not written yet
        await writer.flush()
        assert await reader.get("j1") == record("j1")
    finally:
        await writer.close()
        await reader.close()


async def test_a_record_put_is_shown_on_the_dashboard(
    open_store: Callable[[NetworkActivity], JobStore],
) -> None:
    activity = NetworkActivity()
    store = open_store(activity)
    try:
        store.put(record("j1"))
        assert [job["job_id"] for job in activity.recent_jobs()] == ["j1"]
    finally:
        await store.close()


async def test_a_redis_record_is_compact_json_that_expires_after_the_retention(
    client: redis.asyncio.Redis,
) -> None:
    store = RedisJobStore(client, retention_s=90.5, activity=NetworkActivity())
    store.put(record("j1"))
    await store.close()
    assert await client.get(JOB_PREFIX + "j1") == orjson.dumps(record("j1"))
    assert 89_000 <= await client.pttl(JOB_PREFIX + "j1") <= 90_500


async def test_a_retention_under_a_millisecond_keeps_a_redis_record_one(client: redis.asyncio.Redis) -> None:
    store = RedisJobStore(client, retention_s=1e-9, activity=NetworkActivity())  # PX 0 would be an error
    store.put(record("j1"))
    await store.close()
    assert await client.pttl(JOB_PREFIX + "j1") in (1, 0, -2)  # -2: already gone


async def test_expired_records_are_swept_a_bounded_number_per_write_oldest_first(tmp_path: Path) -> None:
    backlog = SWEEP_ROWS + 500
    store = SQLiteJobStore(tmp_path / "jobs.db", retention_s=3600, activity=NetworkActivity())
    for index in range(backlog):
        store.put(record(f"old{index:05d}"))
    await store.close()

    store = SQLiteJobStore(tmp_path / "jobs.db", retention_s=1e-9, activity=NetworkActivity())  # all expired
    try:
        store.put(record("new1"))
        await store.flush()
        assert await store.get("old00000") is None
        assert await store.get(f"old{SWEEP_ROWS - 1:05d}") is None
        assert await store.get(f"old{SWEEP_ROWS:05d}") is not None  # left for the next write
        assert await store.get(f"old{backlog - 1:05d}") is not None
        store.put(record("new2"))
        await store.flush()
        assert await store.get(f"old{backlog - 1:05d}") is None
    finally:
        await store.close()
