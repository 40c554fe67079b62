"""The registry reader against a JSON-RPC node on 127.0.0.1 that answers isActive from a set: reads
go in batches, answers are reused for cache_s, and a node's error is an error, never an answer."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from krewe.orchestrator.chain import ChainError, RegistryReader, is_active_calldata

REGISTRY = "0x" + "ab" * 20


@dataclass
class FakeNode:
    active: set[str]
    workers: list[str]
    posts: list[int] = field(default_factory=list)  # calls per post
    failing: str | None = None  # a worker whose read the node answers with an error

    async def handle(self, request: web.Request) -> web.Response:
        calls = orjson.loads(await request.read())
        self.posts.append(len(calls))
        replies = [self.reply(call) for call in reversed(calls)]  # any order: JSON-RPC allows it
        return web.Response(body=orjson.dumps(replies), content_type="application/json")

    def reply(self, call: dict[str, Any]) -> dict[str, Any]:
        (query, block) = call["params"]
        assert call["method"] == "eth_call" and block == "latest" and query["to"].lower() == REGISTRY
        worker = next(w for w in self.workers if is_active_calldata(w) == query["data"])
        if worker == self.failing:
            return {"jsonrpc": "2.0", "id": call["id"], "error": {"code": -32000, "message": "boom"}}
        result = "0x" + ("1" if worker in self.active else "0").rjust(64, "0")
        return {"jsonrpc": "2.0", "id": call["id"], "result": result}


@pytest.fixture
async def node() -> AsyncIterator[tuple[FakeNode, str]]:
    workers = ["0x" + f"{index:040x}" for index in range(1, 1202)]
    fake = FakeNode(active=set(workers[::2]), workers=workers)
    app = web.Application()
    app.router.add_post("/", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield fake, f"http://127.0.0.1:{port}/"
    await runner.cleanup()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_reads_go_in_batches_and_answers_are_reused_for_cache_s(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    clock = Clock()
    reader = RegistryReader(url, REGISTRY, cache_s=30.0, clock=clock, batch=500)
    try:
        answers = await reader.active_many(fake.workers)
        assert fake.posts == [500, 500, 201]
        assert answers == {worker: worker in fake.active for worker in fake.workers}
        assert await reader.is_active(fake.workers[0]) is True
        assert await reader.is_active(fake.workers[1]) is False
        assert fake.posts == [500, 500, 201]  # all from the cache
        clock.now = 30.0
        assert await reader.is_active(fake.workers[1]) is False
        assert fake.posts == [500, 500, 201, 1]
    finally:
        await reader.close()


async def test_an_error_reply_is_an_error_not_an_answer(node: tuple[FakeNode, str]) -> None:
    fake, url = node
    fake.failing = fake.workers[3]
    reader = RegistryReader(url, REGISTRY, cache_s=30.0, clock=Clock())
    try:
        with pytest.raises(ChainError, match="boom"):
            await reader.active_many(fake.workers[:10])
        assert await reader.is_active(fake.workers[4]) is True  # read again: nothing was cached
    finally:
        await reader.close()
