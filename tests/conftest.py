"""Fixtures every kind of test may use: a real redis-server, started once per session."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from krewe.redisproc import RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server on a free loopback port for the session, stopped by PID."""
    with RedisServer.start(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's redis-server, emptied for this test."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url
