"""Two instances sharing one Redis, over real HTTP and WebSocket on loopback: a signed login
replayed to the other instance is refused (4401), and an API key's burst spent on one instance
gets 429 on the other. Each instance here is the part of the orchestrator that decides (the
miners' endpoint, the access middleware) on a store of its own over the shared Redis."""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from eth_account import Account

from krewe.devchain import dev_key, free_port
from krewe.orchestrator.api.access import access_middleware
from krewe.orchestrator.api.errors import error_middleware
from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.endpoint import WorkerEndpoint
from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.nonces import MemoryNonces, UsedNonces
from krewe.orchestrator.pool import Session, SessionPool
from krewe.orchestrator.shared import RedisNonces, RedisRateLimiter, connect
from krewe.protocol.messages import CloseCode, Reject, Result
from tests.support.scripted_miner import ScriptedMiner

NONCE = "5e" * 16
JOB = {"model": "test-model", "task": "chat", "input": {"messages": [{"role": "user", "content": "hi"}]}}
ISSUED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class NoJobs:
    def on_result(self, session: Session, message: Result) -> str | None:
        return None

    def on_invalid(self, session: Session, job_id: str) -> str | None:
        return None

    def on_reject(self, session: Session, message: Reject) -> str | None:
        return None

    def on_session_closed(self, session: Session) -> None:
        pass

    def on_deregistered(self, worker: str) -> None:
        pass


class EveryoneActive:
    async def is_active(self, worker: str) -> bool:
        return True

    async def active_many(self, workers: Iterable[str]) -> dict[str, bool]:
        return dict.fromkeys(workers, True)


Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Serves an application on a free loopback port; returns its URL."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def endpoint_at(serve: Serve, nonces: UsedNonces) -> tuple[WorkerEndpoint, str]:
    """An instance's miners' endpoint, behind one public URL as a load balancer would put it; every
    challenge it issues is the same (a fixed nonce and clock), so only the used nonce tells a
    replayed login from a new one."""
    settings = OrchestratorSettings(public_url="http://krewe.test:8000")
    endpoint = WorkerEndpoint(
        settings,
        SessionPool(),
        NoJobs(),
        EveryoneActive(),
        Metrics(),
        chain_id=31337,
        nonces=nonces,
        wall_clock=lambda: ISSUED,
    )
    app = web.Application()
    app.router.add_get("/v1/workers/connect", endpoint.handle)
    url = await serve(app)
    return endpoint, url.replace("http", "ws", 1) + "/v1/workers/connect"


def miner(url: str) -> ScriptedMiner:
    key = dev_key(3)
    return ScriptedMiner(url, key, Account.from_key(key).address)


async def replay_login(first_url: str, second_url: str) -> dict[str, object]:
    """Logs in at the first URL, then sends the same signed login to the second; its reply."""
    async with AsyncExitStack() as stack:
        original = await stack.enter_async_context(miner(first_url))
        assert (await original.connect())["type"] == "welcome"
        replayed = await stack.enter_async_context(miner(second_url))
        reply = await replayed.connect(auth=original.auth)
        if reply.get("type") == "error":
            reply["close_code"] = replayed.ws.close_code
        return reply


async def test_a_login_replayed_to_another_instance_is_refused(
    redis_url: str, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("krewe.orchestrator.endpoint.secrets.token_hex", lambda nbytes: "5e" * nbytes)
    first, second = connect(redis_url), connect(redis_url)
    try:
        endpoint_a, url_a = await endpoint_at(serve, RedisNonces(first, 70))
        endpoint_b, url_b = await endpoint_at(serve, RedisNonces(second, 70))
        reply = await replay_login(url_a, url_b)
        await endpoint_a.close_all()
        await endpoint_b.close_all()
    finally:
        await first.aclose()
        await second.aclose()
    assert reply == {
        "type": "error",
        "code": "auth_failed",
        "message": f"the nonce {NONCE} was already used",
        "close_code": CloseCode.AUTH_FAILED,
    }


async def test_a_login_replayed_to_the_same_instance_is_refused_without_redis(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("krewe.orchestrator.endpoint.secrets.token_hex", lambda nbytes: "5e" * nbytes)
    endpoint, url = await endpoint_at(serve, MemoryNonces(70))
    reply = await replay_login(url, url)
    await endpoint.close_all()
    assert reply["close_code"] == CloseCode.AUTH_FAILED
    assert reply["message"] == f"the nonce {NONCE} was already used"


async def test_a_burst_spent_on_one_instance_gets_429_on_another(redis_url: str, serve: Serve) -> None:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    clients = [connect(redis_url), connect(redis_url)]
    urls = []
    for client in clients:
        limiter = RedisRateLimiter(client, rate=0.5, burst=2)
        app = web.Application(
            middlewares=[
                error_middleware(Metrics()),
                access_middleware(frozenset({"k1", "k2"}), frozenset(), limiter),
            ]
        )
        app.router.add_get("/v1/models", models)
        urls.append(await serve(app))
    try:
        async with aiohttp.ClientSession() as http:

            async def get(url: str, key: str) -> tuple[int, str | None, dict[str, object]]:
                async with http.get(
                    f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}
                ) as response:
                    return response.status, response.headers.get("Retry-After"), await response.json()

            assert [(await get(urls[0], "k1"))[0] for _ in range(2)] == [200, 200]
            status, retry_after, body = await get(urls[1], "k1")
            assert (await get(urls[1], "k2"))[0] == 200  # another key has its own bucket
    finally:
        for client in clients:
            await client.aclose()
    assert (status, retry_after) == (429, "2")
    assert body == {
        "error": {
            "message": "too many requests; retry in 2 s",
            "type": "rate_limit_error",
            "code": "rate_limit_exceeded",
        }
    }


async def test_orchestrators_on_one_redis_share_records_scores_and_rate_limits(
    make_harness: Any, redis_url: str
) -> None:
    limits = {"store": redis_url, "rate_limit_per_s": 0.01, "rate_limit_burst": 2}  # no refill in the test
    first, second = await make_harness(**limits), await make_harness(**limits)
    await first.connected("honest", "honest", "honest")
    async with aiohttp.ClientSession() as http:
        async with http.post(first.url + "/v1/jobs", json=JOB) as response:  # the first of the burst
            assert response.status == 200, await response.text()
            job_id = (await response.json())["job_id"]
        deadline = time.monotonic() + 10
        while await first.orchestrator.records.get(job_id) is None:  # put once every replica answered
            assert time.monotonic() < deadline, "the job's record was never put"
            await asyncio.sleep(0.01)
        await first.orchestrator.records.flush()
        async with http.get(f"{second.url}/v1/jobs/{job_id}") as response:  # the last of the burst
            assert response.status == 200
            assert (await response.json())["verdict"] == "agreed"
        async with http.get(f"{second.url}/v1/jobs/{job_id}") as response:
            assert response.status == 429  # the burst was spent on both instances together
    scored = set(first.orchestrator.pool.scores)
    await first.orchestrator.stop()  # writes its scores
    third = await make_harness(store=redis_url)
    assert len(scored) == 3
    assert set(third.orchestrator.pool.scores) == scored


async def test_a_redis_that_does_not_answer_refuses_logins_with_1013_and_requests_with_503(
    serve: Serve,
) -> None:
    gone = connect(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        _, url = await endpoint_at(serve, RedisNonces(gone, 70))
        async with miner(url) as refused:
            reply = await refused.connect()
        limiter = RedisRateLimiter(gone, rate=1, burst=1)
        app = web.Application(
            middlewares=[error_middleware(Metrics()), access_middleware(frozenset(), frozenset(), limiter)]
        )
        base = await serve(app)
        async with aiohttp.ClientSession() as http, http.get(f"{base}/v1/models") as response:
            status, retry_after = response.status, response.headers.get("Retry-After")
            body = await response.json()
    finally:
        await gone.aclose()
    assert (reply["code"], refused.close_code) == ("store_unavailable", CloseCode.TRY_AGAIN_LATER)
    assert (status, retry_after, body["error"]["code"]) == (503, "1", "store_unavailable")
