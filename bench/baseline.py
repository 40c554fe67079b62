"""The ceiling for this stack: a bare fan-out with none of krewe's work, on the same aiohttp and
uvloop. HTTP POST -> the next 3 WebSockets, round robin -> 3 answers -> SHA-256 of each raw output
-> the majority -> reply. No login, selection, canonical JSON, ledger, scores or records.

    python -m bench.baseline --port N      (prints "ready" when listening)
"""

import argparse
import asyncio
import hashlib
import itertools
from collections import Counter

import orjson
import uvloop
from aiohttp import WSMsgType, web

REPLICAS = 3


class FanOut:
    def __init__(self) -> None:
        self.miners: list[web.WebSocketResponse] = []
        self.waiting: dict[str, tuple[asyncio.Future[None], list[bytes]]] = {}
        self.ids = itertools.count()
        self.turn = itertools.count()

    async def connect(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.miners.append(ws)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                answer = orjson.loads(message.data)
                entry = self.waiting.get(answer["id"])
                if entry is not None:
                    entry[1].append(orjson.dumps(answer["output"]))
                    if len(entry[1]) == REPLICAS and not entry[0].done():
                        entry[0].set_result(None)
        self.miners.remove(ws)
        return ws

    async def job(self, request: web.Request) -> web.Response:
        body = await request.read()
        job_id = str(next(self.ids))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[job_id] = (done, [])
        start = next(self.turn) * REPLICAS
        frame = orjson.dumps({"id": job_id, "input": orjson.loads(body)}).decode()
        for offset in range(REPLICAS):
            await self.miners[(start + offset) % len(self.miners)].send_str(frame)
        try:
            await asyncio.wait_for(done, timeout=30)
        finally:
            _, answers = self.waiting.pop(job_id)
        digests = Counter(hashlib.sha256(answer).hexdigest() for answer in answers)
        digest, votes = digests.most_common(1)[0]
        winner = next(a for a in answers if hashlib.sha256(a).hexdigest() == digest)
        return web.Response(
            body=b'{"votes":%d,"output":%s}' % (votes, winner), content_type="application/json"
        )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    fan_out = FanOut()
    app = web.Application()
    app.router.add_get("/ws", fan_out.connect)
    app.router.add_post("/v1/chat/completions", fan_out.job)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main())
