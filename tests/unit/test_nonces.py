"""Used login nonces, in memory and in Redis: a nonce counts once, for its time to live; in Redis,
once across every instance."""

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from krewe.orchestrator.nonces import NONCE_TTL_MARGIN_S, MemoryNonces, UsedNonces, nonce_ttl_s
from krewe.orchestrator.shared import NONCE_PREFIX, RedisNonces, connect


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def nonces(request: pytest.FixtureRequest) -> UsedNonces:
    if request.param == "memory":
        return MemoryNonces(70)
    return RedisNonces(request.getfixturevalue("client"), 70)


async def test_a_nonce_is_used_once(nonces: UsedNonces) -> None:
    assert await nonces.use("abcdef0123456789")
    assert not await nonces.use("abcdef0123456789")
    assert await nonces.use("0123456789abcdef")


async def test_a_nonce_used_on_one_instance_is_refused_on_another(client: redis.asyncio.Redis) -> None:
    first, second = RedisNonces(client, 70), RedisNonces(client, 70)
    assert await first.use("abcdef0123456789")
    assert not await second.use("abcdef0123456789")
    assert not await first.use("abcdef0123456789")
    assert 69 <= await client.ttl(NONCE_PREFIX + "abcdef0123456789") <= 70


async def test_a_nonce_is_forgotten_after_its_time_to_live() -> None:
    clock = Clock()
    nonces = MemoryNonces(70, clock=clock)
    assert await nonces.use("first0000")
    clock.now = 30.0
    assert await nonces.use("second000")
    clock.now = 69.9
    assert not await nonces.use("first0000")
    clock.now = 70.0  # "first0000" expires, "second000" stays
    assert await nonces.use("first0000")
    assert not await nonces.use("second000")


def test_a_nonce_outlives_its_challenge() -> None:
    assert nonce_ttl_s(10.0) == 10 + NONCE_TTL_MARGIN_S
    assert nonce_ttl_s(0.5) == 1 + NONCE_TTL_MARGIN_S
