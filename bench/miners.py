"""Benchmark miners in one process: many WebSocket clients that answer every job at once with the
same canned output (a scripted backend, not a product part), or stay idle.

    python -m bench.miners --url ws://… --first 0 --count 300 --protocol krewe|bare [--idle]

Prints "ready N" once N miners are connected (and, for krewe, logged in); runs until SIGTERM.
"""

import argparse
import asyncio
import random
import signal
from typing import Any

import aiohttp
import msgspec
import orjson
import uvloop

from bench.network import miner_key
from krewe.keys import SigningKey
from krewe.miner.agent import login_message
from krewe.protocol.messages import Auth, Challenge, ErrorCode, ModelOffer, encode

OUTPUT = {
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "krewe answers"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2},
}
OUTPUT_JSON = orjson.dumps(OUTPUT).decode()
LOGIN_ATTEMPTS = 20


async def log_in(
    http: aiohttp.ClientSession, args: argparse.Namespace, index: int
) -> aiohttp.ClientWebSocketResponse:
    """Connect (and log in, for krewe). As the miner agent does, a connection that fails or closes
    before the welcome, or a refusal the orchestrator says is passing (1013: it could not read the
    registry in time), is tried again with backoff: a storm of logins on a busy machine has both."""
    delay = 0.5
    last: object = None
    for _ in range(LOGIN_ATTEMPTS):
        try:
            ws = await http.ws_connect(args.url, max_msg_size=0, autoping=True)
            if args.protocol != "krewe":
                return ws
            welcome = await authenticate(ws, index)
        except (aiohttp.ClientError, TimeoutError, TypeError, ValueError, msgspec.ValidationError) as error:
            last = error  # a connection closed mid-login reads as a non-JSON message
        else:
            if welcome.get("type") == "welcome":
                return ws
            await ws.close()
            if welcome.get("code") != ErrorCode.REGISTRY_UNAVAILABLE:
                raise RuntimeError(f"login refused: {welcome}")
            last = welcome
        await asyncio.sleep(delay * (0.5 + random.random()))  # backoff with jitter before the next try
        delay = min(delay * 2, 10.0)
    raise RuntimeError(f"miner {index}: no login in {LOGIN_ATTEMPTS} tries; the last failed with {last}")


async def authenticate(ws: aiohttp.ClientWebSocketResponse, index: int) -> dict[str, Any]:
    """Answer the challenge; what the orchestrator says next (a welcome, or an error)."""
    key = SigningKey.from_hex(miner_key(index))
    challenge = msgspec.convert(await ws.receive_json(timeout=60), Challenge)
    text = login_message(challenge, key.address)
    offer = ModelOffer(id="bench-model", tasks=["chat"], engine="bench/1")
    auth = Auth(text, key.sign_message(text), [offer], max_concurrency=256, agent="bench/1")
    await ws.send_str(encode(auth))
    answer: dict[str, Any] = await ws.receive_json(timeout=60)
    return answer


async def miner(
    http: aiohttp.ClientSession,
    args: argparse.Namespace,
    index: int,
    ready: asyncio.Queue[int],
    limit: asyncio.Semaphore,
) -> None:
    protocol, idle = args.protocol, args.idle
    async with limit:
        ws = await log_in(http, args, index)
    await ready.put(index)
    async for message in ws:
        if message.type is not aiohttp.WSMsgType.TEXT or idle:
            continue
        if protocol == "bare":  # the baseline's frames: {"id": …}
            job_id = orjson.loads(message.data)["id"]
            await ws.send_str(f'{{"id":"{job_id}","output":{OUTPUT_JSON}}}')
            continue
        frame: dict[str, Any] = orjson.loads(message.data)
        if frame["type"] == "job":
            await ws.send_str(f'{{"type":"result","job_id":"{frame["job_id"]}","output":{OUTPUT_JSON}}}')


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--protocol", choices=("krewe", "bare"), default="krewe")
    parser.add_argument("--idle", action="store_true")
    args = parser.parse_args()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    ready: asyncio.Queue[int] = asyncio.Queue()
    limit = asyncio.Semaphore(100)  # logins in flight at once
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        tasks = [
            asyncio.ensure_future(miner(http, args, args.first + i, ready, limit)) for i in range(args.count)
        ]
        for _ in range(args.count):
            getter = asyncio.ensure_future(ready.get())
            done, _ = await asyncio.wait(
                {getter, *[t for t in tasks if t.done() and t.exception()]},
                return_when=asyncio.FIRST_COMPLETED,
            )
            failed = [t for t in done if t is not getter]
            if failed:
                raise RuntimeError(f"a miner failed: {failed[0].exception()}")
        print(f"ready {args.count}", flush=True)
        await stop.wait()
        for task in tasks:
            task.cancel()


if __name__ == "__main__":
    uvloop.run(main())
