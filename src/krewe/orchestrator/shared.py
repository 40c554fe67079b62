"""The state that instances sharing one Redis (`store = redis://…`) keep there, each store behind
the interface of its single-instance twin:

| store | twin | keys |
| --- | --- | --- |
| `RedisNonces` | `nonces.MemoryNonces` | `krewe:nonce:<nonce>`, set once (SET NX) with a TTL |
| `RedisScoreStore` | `score_store.SQLiteScoreStore` | `krewe:score:<worker>`, a hash, no TTL |
| `RedisRateLimiter` | `ratelimit.RateLimiter` | `krewe:rate:<sha256 of the caller>`, a hash, TTL until full |
| `RedisJobStore` | `records.SQLiteJobStore` | `krewe:job:<job id>`, the record's JSON, TTL retention |

Scores and records are written in batches (one pipeline each), as their twins write one
transaction; a nonce and a token are taken one request at a time, since the answer decides the
request, and a Redis that fails to answer them is a `StoreUnavailableError` (which the miners'
endpoint answers with 1013 and the API with 503 `store_unavailable`). A token bucket is read and
changed in one Lua script that reads Redis's clock (TIME), so instances whose clocks disagree still
count the same time. A caller's API key is hashed before it names a key, so that keys never appear
in Redis. docs/operations.md lists the keys for operators.
"""

import asyncio
import hashlib
import logging
import math
import time
from typing import Any

import orjson
import redis.asyncio
from redis.exceptions import RedisError

from krewe.orchestrator.activity import NetworkActivity
from krewe.orchestrator.scoring import PeerScore

__all__ = [
    "JOB_PREFIX",
    "NONCE_PREFIX",
    "RATE_PREFIX",
    "SCORE_PREFIX",
    "RedisJobStore",
    "RedisNonces",
    "RedisRateLimiter",
    "RedisScoreStore",
    "StoreUnavailableError",
    "connect",
]

log = logging.getLogger(__name__)

NONCE_PREFIX = "krewe:nonce:"
SCORE_PREFIX = "krewe:score:"
RATE_PREFIX = "krewe:rate:"
JOB_PREFIX = "krewe:job:"

# Seconds a command may take before it fails, instead of holding a login or a request forever.
REDIS_TIMEOUT_S = 5.0
REDIS_CONNECTIONS = 64  # per instance; commands are short, so a few dozen carry thousands a second


def connect(url: str) -> "redis.asyncio.Redis":
    """The client every store of this instance shares: a pool of connections to `url` in which a
    command waits (up to REDIS_TIMEOUT_S) for a free connection when all are busy, rather than fail
    at once as redis-py's default pool does past its limit under load."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_CONNECTIONS,
        timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
    )
    return redis.asyncio.Redis.from_pool(pool)


class StoreUnavailableError(Exception):
    """Redis did not answer a call that a login or a request waits for."""


class RedisNonces:
    def __init__(self, client: "redis.asyncio.Redis", ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s

    async def use(self, nonce: str) -> bool:
        try:
            return bool(await self._client.set(NONCE_PREFIX + nonce, b"", nx=True, ex=self._ttl_s))
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"recording a used nonce failed: {error}") from error


class RedisScoreStore:
    """Each worker's score as a hash (quality, jobs, latency_ms when known)."""

    def __init__(self, client: "redis.asyncio.Redis", *, flush_s: float = 1.0) -> None:
        self._client = client
        self._flush_s = flush_s
        self._unwritten: dict[str, PeerScore] = {}
        self._flusher: asyncio.Task[None] | None = None

    async def load(self) -> dict[str, PeerScore]:
        keys = [key async for key in self._client.scan_iter(match=SCORE_PREFIX + "*", count=1000)]
        pipeline = self._client.pipeline(transaction=False)
        for key in keys:
            pipeline.hgetall(key)
        hashes: list[dict[bytes, bytes]] = await pipeline.execute()
        scores = {}
        for key, fields in zip(keys, hashes, strict=True):
            if fields:  # deleted between the scan and the read
                latency = fields.get(b"latency_ms")
                scores[key.decode().removeprefix(SCORE_PREFIX)] = PeerScore(
                    float(fields[b"quality"]),
                    None if latency is None else float(latency),
                    int(fields[b"jobs"]),
                )
        return scores

    def put(self, worker: str, score: PeerScore) -> None:
        self._unwritten[worker] = score
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_s)  # gather a batch of scores into one pipeline
        try:
            await self.flush()
        except RedisError:
            log.exception("writing peer scores failed; they are kept for the next write")

    async def flush(self) -> None:
        batch, self._unwritten = self._unwritten, {}
        if not batch:
            return
        pipeline = self._client.pipeline(transaction=False)
        for worker, score in batch.items():
            key = SCORE_PREFIX + worker
            pipeline.hset(key, mapping={"quality": repr(score.quality), "jobs": score.jobs})
            if score.latency_ms is None:
                pipeline.hdel(key, "latency_ms")
            else:
                pipeline.hset(key, "latency_ms", repr(score.latency_ms))
        try:
            await pipeline.execute()
        except RedisError:
            self._unwritten = batch | self._unwritten  # newer scores win
            raise

    async def close(self) -> None:
        await self.flush()


# KEYS[1] the bucket; ARGV rate (tokens a second), burst. Returns the seconds to wait, as text
# (a Lua number returned as a number would be cut to an integer).
_TAKE_TOKEN = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(bucket[1]) or burst, tonumber(bucket[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) / 1000000 * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""


class RedisRateLimiter:
    """A token bucket per caller, shared by every instance; a full bucket expires (same as a new one)."""

    def __init__(self, client: "redis.asyncio.Redis", rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._take = client.register_script(_TAKE_TOKEN)

    async def take(self, caller: str) -> float:
        """0 if the caller may go now, else the seconds until it may."""
        bucket = RATE_PREFIX + hashlib.sha256(caller.encode()).hexdigest()
        try:
            return float(await self._take(keys=[bucket], args=[repr(self.rate), self.burst]))
        except (RedisError, OSError) as error:
            raise StoreUnavailableError(f"taking a rate-limit token failed: {error}") from error


class RedisJobStore:
    """Each record as its JSON under its own key, which expires after `retention_s`."""

    def __init__(
        self,
        client: "redis.asyncio.Redis",
        *,
        retention_s: float,
        activity: NetworkActivity,
        flush_s: float = 0.05,
    ) -> None:
        self._client = client
        self._retention_ms = max(1, math.ceil(retention_s * 1000))
        self._activity = activity
        self._flush_s = flush_s
        self._unwritten: dict[str, dict[str, Any]] = {}
        self._writing: dict[str, dict[str, Any]] = {}  # served from here until Redis has them
        self._flusher: asyncio.Task[None] | None = None

    def put(self, record: dict[str, Any]) -> None:
        self._unwritten[record["job_id"]] = record
        self._activity.job_closed(record, time.time())
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def get(self, job_id: str) -> dict[str, Any] | None:
        record = self._unwritten.get(job_id) or self._writing.get(job_id)
        if record is not None:
            return record
        stored = await self._client.get(JOB_PREFIX + job_id)
        return None if stored is None else dict(orjson.loads(stored))

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_s)  # gather a batch of records into one pipeline
        try:
            await self.flush()
        except RedisError:
            log.exception(
                "writing job records failed; they are lost (credits are not: the ledger is separate)"
            )

    async def flush(self) -> None:
        batch, self._unwritten = self._unwritten, {}
        if not batch:
            return
        self._writing |= batch
        pipeline = self._client.pipeline(transaction=False)
        for job_id, record in batch.items():
            pipeline.set(JOB_PREFIX + job_id, orjson.dumps(record), px=self._retention_ms)
        try:
            await pipeline.execute()
        finally:
            for job_id in batch:
                self._writing.pop(job_id, None)

    async def close(self) -> None:
        await self.flush()
