"""The client API over real HTTP, with the official openai SDK as the client where it applies."""

import asyncio
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from krewe.orchestrator.api import dashboard
from krewe.protocol.messages import CloseCode
from tests.service.conftest import Harness, until
from tests.service.test_jobs import CHAT, get, post
from tests.support.scripted_miner import honest_output


def sdk(harness: Harness, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=harness.url + "/v1", api_key=key, max_retries=0, timeout=30)


async def test_chat_models_and_streaming_through_the_openai_sdk(harness: Harness) -> None:
    await harness.connected("honest", "honest", "honest")
    client = sdk(harness)
    models = await client.models.list()
    assert [m.id for m in models.data] == ["test-model"]
    reply = await client.chat.completions.create(model="test-model", messages=CHAT["messages"])
    expected = honest_output("chat", {"messages": CHAT["messages"], "model": "test-model"})
    assert reply.choices[0].message.content == expected["choices"][0]["message"]["content"]
    assert reply.usage is not None and reply.usage.total_tokens == 8
    assert reply.model_extra is not None and reply.model_extra["krewe"]["verdict"] == "agreed"
    stream = await client.chat.completions.create(model="test-model", messages=CHAT["messages"], stream=True)
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
    assert text == expected["choices"][0]["message"]["content"]
    completion = await client.completions.create(model="test-model", prompt="say hi")
    assert completion.choices[0].text.startswith("echo: ")


async def test_embeddings_through_the_openai_sdk_as_floats_and_base64(harness: Harness) -> None:
    await harness.connected("honest", "honest", "honest")
    client = sdk(harness)
    result = await client.embeddings.create(model="test-model", input="hello")  # the SDK asks for base64
    assert result.data[0].embedding == [0.125, -0.25, 0.0625]
    as_floats = await client.embeddings.create(model="test-model", input="hello", encoding_format="float")
    assert as_floats.data[0].embedding == [0.125, -0.25, 0.0625]


async def test_sdk_errors_carry_the_documented_status_and_code(make_harness: Any) -> None:
    harness = await make_harness(api_keys=["k1"])
    client = sdk(harness, "k1")
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="test-model", messages=CHAT["messages"])
    await harness.connected("honest")  # one miner, two needed
    with pytest.raises(openai.APIStatusError) as no_miners:
        await client.chat.completions.create(model="test-model", messages=CHAT["messages"])
    assert no_miners.value.status_code == 503
    assert no_miners.value.body["code"] == "no_eligible_workers"  # type: ignore[index]
    with pytest.raises(openai.AuthenticationError):
        await sdk(harness, "wrong").models.list()
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="test-model", messages=CHAT["messages"], n=2)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"messages": []}', 400, "missing_field"),
        (b'{"model": 5, "messages": []}', 400, "invalid_field"),
        (b'{"model": "test-model"}', 400, "missing_field"),
        (b'{"model": "unknown-model", "messages": []}', 404, "model_not_found"),
        (b'{"model": "test-model", "messages": []}', 503, "no_eligible_workers"),
    ],
)
async def test_bad_requests_get_clear_errors(harness: Harness, body: bytes, status: int, code: str) -> None:
    await harness.connected("honest")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            harness.url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
        ) as response,
    ):
        payload = await response.json()
    assert response.status == status
    assert payload["error"]["code"] == code and payload["error"]["message"] and payload["error"]["type"]


@pytest.mark.parametrize(
    ("job", "code"),
    [
        ({"model": "test-model", "task": "dance", "input": {}}, "invalid_task"),
        ({"model": "test-model", "task": "chat", "input": {}, "replicas": 0}, "invalid_replicas"),
        ({"model": "test-model", "task": "chat", "input": {}, "threshold": 4}, "invalid_threshold"),
        ({"model": "test-model", "task": "chat", "input": {}, "timeout_ms": 10**9}, "invalid_timeout"),
        ({"model": "test-model", "task": "chat", "input": "text"}, "invalid_field"),
    ],
)
async def test_bad_native_jobs_get_clear_errors(harness: Harness, job: dict[str, Any], code: str) -> None:
    status, body = await post(harness, "/v1/jobs", job)
    assert (status, body["error"]["code"]) == (400, code)


async def test_body_limit_gives_413_and_unknown_job_404(make_harness: Any) -> None:
    harness = await make_harness(max_body_bytes=1000)
    status, body = await post(harness, "/v1/chat/completions", {**CHAT, "pad": "x" * 2000})
    assert (status, body["error"]["code"]) == (413, "request_too_large")
    status, body = await get(harness, "/v1/jobs/nope")
    assert (status, body["error"]["code"]) == (404, "job_not_found")


async def test_rate_limit_gives_429_with_retry_after(make_harness: Any) -> None:
    harness = await make_harness(api_keys=["k1", "k2"], rate_limit_per_s=0.5, rate_limit_burst=2)
    statuses = []
    async with aiohttp.ClientSession() as http:
        for key in ("k1", "k1", "k1", "k2"):
            async with http.get(
                harness.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}
            ) as response:
                statuses.append((response.status, response.headers.get("Retry-After")))
    assert statuses == [(200, None), (200, None), (429, "2"), (200, None)]  # each key has its own bucket


async def test_operations_endpoints(harness: Harness) -> None:
    await harness.connected("honest", "honest", "honest")
    status, _ = await post(harness, "/v1/chat/completions", CHAT)
    assert status == 200
    assert (await get(harness, "/healthz"))[0] == 200
    status, ready = await get(harness, "/readyz")
    assert (status, ready["checks"]) == (200, {"chain": True, "ledger": True})
    status, workers = await get(harness, "/v1/workers")
    assert status == 200 and len(workers["data"]) == 3
    await until(lambda: harness.orchestrator.router.idle, what="the job to finish")
    status, metrics = await get(harness, "/metrics")
    assert status == 200
    assert 'krewe_jobs_total{verdict="agreed"} 1.0' in metrics
    assert "krewe_miners_connected 3.0" in metrics
    assert "krewe_job_latency_seconds_count 1.0" in metrics
    status, ledger = await get(harness, "/v1/ledger")
    assert (
        ledger["credited"]
        == ledger["pending"]
        == str(3 * harness.orchestrator.settings.reward_for("test-model"))
    )


async def test_openapi_lists_exactly_the_routes(harness: Harness) -> None:
    status, document = await get(harness, "/openapi.json")
    assert status == 200
    app_routes = {
        (route.method.lower(), route.resource.canonical)
        for route in harness.orchestrator.runner.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(method, path) for path, methods in document["paths"].items() for method in methods}
    assert documented == app_routes - {("get", "/v1/workers/connect")}


async def test_settlement_pays_what_the_ledger_holds(harness: Harness) -> None:
    miners = await harness.connected("honest", "honest", "honest")
    for _ in range(2):
        status, _ = await post(harness, "/v1/chat/completions", CHAT)
        assert status == 200
    await until(lambda: harness.orchestrator.router.idle, what="the jobs to finish")
    reward = harness.orchestrator.settings.reward_for("test-model")
    await harness.orchestrator.settle()
    status, settlements = await get(harness, "/v1/settlements")
    assert settlements["recent"][0]["outcome"] == "paid" and settlements["open"] == []
    _, _, distributor = harness.chain.deployment.contracts(harness.chain.anvil.web3())
    for miner in miners:
        assert distributor.functions.credited(miner.address).call() >= 2 * reward
    status, ledger = await get(harness, "/v1/ledger")
    assert ledger["pending"] == ledger["in_flight"] == "0"


async def test_shutdown_closes_miners_with_1001_and_settles(harness: Harness) -> None:
    miners = await harness.connected("honest", "honest", "slow", delay_s=0.3)
    pending = asyncio.ensure_future(post(harness, "/v1/chat/completions", CHAT))
    await until(lambda: bool(harness.orchestrator.router.jobs), what="the job to start")
    await harness.orchestrator.stop()
    status, body = await pending
    assert status == 200, body  # the in-flight job finished within the grace period
    await until(lambda: all(m.close_code is not None for m in miners), what="miners to be closed")
    assert {m.close_code for m in miners} == {CloseCode.GOING_AWAY}
    assert harness.orchestrator.settlements[0]["outcome"] == "paid"


async def test_the_dashboard_reads_the_chain_only_while_somebody_watches(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = harness.orchestrator.dashboard
    reads: list[float] = []
    read = feed._read_chain

    async def counted(now: float) -> dict[str, Any]:
        reads.append(now)
        return await read(now)

    monkeypatch.setattr(feed, "_read_chain", counted)
    monkeypatch.setattr(dashboard, "CHAIN_EVERY_S", 0.0)  # each snapshot may read it again
    for _ in range(3):
        await feed._tick()
    assert reads == []
    stream = feed.subscribe()
    first = orjson.loads(await anext(stream))
    assert first["chain"]["reachable"] is True and len(reads) >= 1
    seen = len(reads)
    await feed._tick()
    assert len(reads) > seen
    await stream.aclose()
