"""A scripted test miner that speaks PROTOCOL.md §1 (protocol 2) over a real WebSocket, with a
chosen behaviour.

Not a product part: the answers are made up instantly from the job's input, so that orchestrator
tests control exactly who agrees with whom. It keeps the frames it receives as plain dicts, and
can send anything, so that tests can forge logins and break the protocol on purpose.
"""

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import orjson

from krewe.keys import SigningKey
from krewe.miner.agent import login_message
from krewe.protocol.messages import Challenge, ModelOffer

BEHAVIOURS = (
    "honest",
    "liar",
    "random",
    "slow",
    "silent",
    "disconnect",
    "double",
    "foreign",
    "malformed",
    "unknown_type",
    "nan",
    "reject",
    "oversized",
)


def default_offers() -> list[ModelOffer]:
    """What a scripted miner serves unless told otherwise."""
    return [ModelOffer(id="test-model", tasks=["chat", "completion", "embedding"], engine="scripted/1")]


def honest_output(task: str, job_input: dict[str, Any], *, salt: str = "") -> dict[str, Any]:
    """The answer every honest scripted miner gives (a liar passes a salt)."""
    if task == "embedding":
        base = 0.125 if not salt else 0.5
        return {"data": [{"index": 0, "embedding": [base, -0.25, 0.0625]}], "usage": {"prompt_tokens": 3}}
    text = orjson.dumps(job_input.get("messages") or job_input.get("prompt")).decode()
    content = f"echo{salt}: {text}"
    if task == "completion":
        return {
            "choices": [{"index": 0, "text": content, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5},
        }
    return {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5},
    }


@dataclass
class ScriptedMiner:
    url: str
    key: str  # hex private key
    address: str
    behaviour: str = "honest"
    models: list[ModelOffer] = field(default_factory=default_offers)
    max_concurrency: int = 8
    delay_s: float = 0.0  # for "slow"
    autopong: bool = True  # False: never answer the orchestrator's pings
    seed: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    welcome: dict[str, Any] | None = None
    close_code: int | None = None

    async def __aenter__(self) -> "ScriptedMiner":
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
        session = getattr(self, "http", None)
        if session is not None:
            await session.close()

    async def connect(
        self,
        *,
        signature: str | Callable[[str], str] | None = None,
        address: str | None = None,
        message: str | Callable[[str], str] | None = None,
        auth: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Log in; returns the welcome or the error message. The keyword arguments forge the login:
        `address` signs in as another address (still signed with this miner's key), `message` is
        the EIP-4361 text to send instead (or a function of the genuine text that tampers with
        it), `signature` replaces the signature (or is a function of the text that makes one), and
        `auth` replaces the whole frame (or is a function of the genuine frame)."""
        self.ws = await self.http.ws_connect(self.url, autoping=self.autopong, max_msg_size=0)
        self.challenge = await self.ws.receive_json(timeout=10)
        if auth is None or callable(auth):
            genuine = login_message(msgspec.convert(self.challenge, Challenge), address or self.address)
            text = message(genuine) if callable(message) else message or genuine
            sign = SigningKey.from_hex(self.key).sign_message
            frame = {
                "type": "auth",
                "message": text,
                "signature": signature(text) if callable(signature) else signature or sign(text),
                "models": msgspec.to_builtins(self.models),
                "max_concurrency": self.max_concurrency,
                "agent": "scripted/1",
            }
            auth = auth(frame) if callable(auth) else frame
        self.auth = auth
        await self.ws.send_str(orjson.dumps(auth).decode())
        reply = await self._next()
        if reply.get("type") == "welcome":
            self.welcome = reply
            self._rng = random.Random(f"{self.address}/{self.seed}")
            self._task = asyncio.get_running_loop().create_task(self._serve())
        else:
            await self._wait_closed()
        return reply

    async def _next(self) -> dict[str, Any]:
        message = await self.ws.receive(timeout=30)
        if message.type is not aiohttp.WSMsgType.TEXT:
            await self._wait_closed()
            return {"type": "closed", "code": self.ws.close_code}
        parsed: dict[str, Any] = orjson.loads(message.data)
        return parsed

    async def _wait_closed(self) -> None:
        with contextlib.suppress(TimeoutError):
            while not self.ws.closed:
                await self.ws.receive(timeout=10)
        self.close_code = self.ws.close_code

    async def _serve(self) -> None:
        try:
            async for message in self.ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                frame = orjson.loads(message.data)
                self.received.append(frame)
                if frame.get("type") == "job":
                    self.jobs.append(frame["job_id"])
                    await self._answer(frame)
        finally:
            self.close_code = self.ws.close_code

    async def send(self, value: Any) -> None:
        await self.ws.send_str(value if isinstance(value, str) else orjson.dumps(value).decode())

    async def _answer(self, job: dict[str, Any]) -> None:
        behaviour, job_id = self.behaviour, job["job_id"]
        output = honest_output(job["task"], job["input"])
        if behaviour == "silent":
            return
        if behaviour == "disconnect":
            await self.ws.close()
            return
        if behaviour == "slow":
            await asyncio.sleep(self.delay_s)  # the scripted delay under test, not synchronisation
        if behaviour == "liar":
            output = honest_output(job["task"], job["input"], salt=" (lie)")
        elif behaviour == "random":
            output = honest_output(job["task"], job["input"], salt=f" {self._rng.random()}")
        elif behaviour == "reject":
            await self.send({"type": "reject", "job_id": job_id, "reason": "busy"})
            return
        elif behaviour == "malformed":
            await self.send("{not json")
            return
        elif behaviour == "unknown_type":
            await self.send({"type": "gossip", "job_id": job_id})
            return
        elif behaviour == "nan":
            await self.send(
                '{"type":"result","job_id":' + orjson.dumps(job_id).decode() + ',"output":{"x":NaN}}'
            )
            return
        elif behaviour == "oversized":
            await self.send({"type": "result", "job_id": job_id, "output": {"pad": "x" * 2_000_000}})
            return
        elif behaviour == "foreign":
            await self.send({"type": "result", "job_id": "not-my-job", "output": output})
        await self.send({"type": "result", "job_id": job_id, "output": output})
        if behaviour == "double":
            await self.send({"type": "result", "job_id": job_id, "output": {"second": "answer"}})

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return [message for message in self.received if message.get("type") == kind]

    async def close(self) -> None:
        if hasattr(self, "ws") and not self.ws.closed:
            await self.ws.close()
        task = getattr(self, "_task", None)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=10)
