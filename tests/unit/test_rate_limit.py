"""The per-caller token bucket: on an injected clock (one instance), and in Redis on Redis's own
clock (shared by every instance)."""

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from krewe.orchestrator.ratelimit import RateLimiter
from krewe.orchestrator.shared import RATE_PREFIX, REDIS_CONNECTIONS, RedisRateLimiter, connect


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == 0.5  # one token comes back in half a second
    assert limiter.take("b") == 0.0  # each caller has its own bucket
    clock.now = 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == 0.5


def test_idle_callers_are_forgotten_when_too_many_are_kept() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, max_callers=3, clock=clock)
    for caller in ("a", "b", "c"):
        limiter.take(caller)
    limiter.take("c")  # "c" is now empty
    clock.now = 1.0  # "a" and "b" have refilled; "c" has one token of two
    assert limiter.take("d") == 0.0
    assert limiter.take("c") == 0.0
    assert limiter.take("c") == 1.0  # "c" was kept, with its state


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[tuple[redis.asyncio.Redis, redis.asyncio.Redis]]:
    """Two instances' clients of one Redis."""
    first, second = connect(redis_url), connect(redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


def bucket_of(caller: str) -> str:
    return RATE_PREFIX + hashlib.sha256(caller.encode()).hexdigest()


async def test_a_redis_bucket_bursts_then_asks_to_wait_about_a_token(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis],
) -> None:
    limiter = RedisRateLimiter(clients[0], rate=2.0, burst=3)
    assert [await limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await limiter.take("a")
    assert 0.4 < wait <= 0.5  # a token comes back in half a second, less the time these calls took
    assert await limiter.take("b") == 0.0  # each caller has its own bucket


async def test_a_redis_bucket_refills_with_the_time_redis_counts(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis],
) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client, rate=2.0, burst=3)
    for _ in range(4):
        await limiter.take("a")
    assert await limiter.take("a") > 0
    await client.hincrby(bucket_of("a"), "at", -1_000_000)  # as if a second had passed on Redis's clock
    assert [await limiter.take("a") for _ in range(2)] == [0.0, 0.0]
    assert await limiter.take("a") > 0


async def test_a_burst_spent_on_one_instance_is_spent_on_every_instance(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis],
) -> None:
    first = RedisRateLimiter(clients[0], rate=1.0, burst=2)
    second = RedisRateLimiter(clients[1], rate=1.0, burst=2)
    assert [await first.take("key"), await first.take("key")] == [0.0, 0.0]
    assert 0.9 < await second.take("key") <= 1.0
    assert await second.take("other key") == 0.0


async def test_a_redis_bucket_names_no_api_key_and_expires_once_full(
    clients: tuple[redis.asyncio.Redis, redis.asyncio.Redis],
) -> None:
    client = clients[0]
    limiter = RedisRateLimiter(client, rate=4.0, burst=8)
    await limiter.take("sk-secret-key")
    assert [key async for key in client.scan_iter()] == [bucket_of("sk-secret-key").encode()]
    assert 1_000 < await client.pttl(bucket_of("sk-secret-key")) <= 1_250  # a token refills in 250 ms


async def test_more_requests_at_once_than_the_pool_has_connections_wait_for_one(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        limiter = RedisRateLimiter(client, rate=1000.0, burst=1000)
        waits = await asyncio.gather(*(limiter.take(f"caller-{i}") for i in range(REDIS_CONNECTIONS * 4)))
    finally:
        await client.aclose()
    assert waits == [0.0] * (REDIS_CONNECTIONS * 4)  # every caller's first token, none refused
