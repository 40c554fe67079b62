"""MinerAgent: one miner's connection to an orchestrator (PROTOCOL.md §1, the miner's side).

    connect -> sign the challenge -> welcome -> jobs until the connection ends -> reconnect

Reconnects wait an exponential delay with jitter, capped at `reconnect_max_s`, and start again
from `reconnect_min_s` after a session that stayed up `healthy_session_s`. At most
`max_concurrency` jobs run at once; more are rejected as `busy`. A job stops at its deadline or on
`cancel`. On stop (SIGTERM) the agent rejects new jobs, lets running ones finish within
`shutdown_grace_s`, and closes the connection normally.
"""

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from krewe import __version__
from krewe.keys import SigningKey
from krewe.miner.backends import Backend, BackendError
from krewe.miner.config import MinerSettings
from krewe.protocol.canonical import CanonicalError, canonical_json
from krewe.protocol.messages import CloseCode

__all__ = ["MinerAgent", "MinerStats"]

log = logging.getLogger(__name__)


@dataclass
class MinerStats:
    sessions: int = 0
    jobs: int = 0
    answered: int = 0
    rejected: int = 0
    agreed: int = 0
    credited_wei: int = 0
    last_close_code: int | None = None
    reconnects: int = 0
    # the latest reconnect delays, bounded so that a miner that runs for months does not grow
    delays: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=64))


class MinerAgent:
    def __init__(
        self,
        settings: MinerSettings,
        key: SigningKey,
        backend: Backend,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._key = key
        self._backend = backend
        self._rng = rng or random.Random()
        self._clock = clock
        self.stats = MinerStats()
        self._stop = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self.connected = asyncio.Event()
        self._welcomed_at: float | None = None  # when the current session was welcomed

    @property
    def address(self) -> str:
        return self._key.address

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Stay connected until stopped."""
        delay = self.settings.reconnect_min_s
        async with aiohttp.ClientSession() as http:
            while not self._stop.is_set():
                self._welcomed_at = None
                try:
                    await self._session(http)
                except (aiohttp.ClientError, OSError, TimeoutError) as error:
                    log.warning("connection to %s failed: %s", self.settings.orchestrator_url, error)
                if self._stop.is_set():
                    break
                welcomed = self._welcomed_at
                if welcomed is not None and self._clock() - welcomed >= self.settings.healthy_session_s:
                    delay = self.settings.reconnect_min_s
                wait = delay / 2 + self._rng.uniform(0, delay / 2)  # exponential, with jitter
                self.stats.reconnects += 1
                self.stats.delays.append(wait)
                log.info("reconnecting in %.2f s", wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=wait)
                delay = min(delay * 2, self.settings.reconnect_max_s)

    async def _session(self, http: aiohttp.ClientSession) -> None:
        async with http.ws_connect(self.settings.orchestrator_url, max_msg_size=0) as ws:
            challenge = await ws.receive_json(timeout=30)
            if challenge.get("type") != "challenge":
                raise aiohttp.ClientError(f"expected a challenge, got {challenge.get('type')!r}")
            await ws.send_str(
                orjson.dumps(
                    {
                        "type": "auth",
                        "address": self._key.address,
                        "signature": self._key.sign_message(challenge["message"]),
                        "models": self.settings.models or self._backend.models(),
                        "max_concurrency": self.settings.max_concurrency,
                        "agent": f"krewe-miner/{__version__}",
                    }
                ).decode()
            )
            reply = await ws.receive_json(timeout=30)
            if reply.get("type") != "welcome":
                log.error("login refused: %s: %s", reply.get("code"), reply.get("message"))
                await ws.receive()  # the close frame
                self.stats.last_close_code = ws.close_code
                return
            self.stats.sessions += 1
            self._welcomed_at = self._clock()
            self.connected.set()
            log.info("logged in as %s, session %s", reply["worker"], reply["session"])
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                await self._serve(ws, stopper)
            finally:
                stopper.cancel()
                self.connected.clear()
                self.stats.last_close_code = ws.close_code

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, stopper: "asyncio.Future[Any]") -> None:
        while True:
            receive = asyncio.ensure_future(ws.receive())
            done, _ = await asyncio.wait({receive, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                receive.cancel()
                await self._finish_running(ws)
                await ws.close(code=CloseCode.NORMAL, message=b"miner stopping")
                return
            message = receive.result()
            if message.type is not aiohttp.WSMsgType.TEXT:
                for task in self._running.values():
                    task.cancel()
                return
            await self._handle(ws, orjson.loads(message.data))

    async def _handle(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "job":
            self.stats.jobs += 1
            job_id = message["job_id"]
            if len(self._running) >= self.settings.max_concurrency or self._stop.is_set():
                await self._send(ws, {"type": "reject", "job_id": job_id, "reason": "busy"})
                self.stats.rejected += 1
                return
            task = asyncio.get_running_loop().create_task(self._run_job(ws, message))
            self._running[job_id] = task
            task.add_done_callback(lambda _: self._running.pop(job_id, None))
        elif kind == "cancel":
            cancelled = self._running.get(message.get("job_id", ""))
            if cancelled is not None:
                cancelled.cancel()
        elif kind == "verdict":
            if message.get("agreed"):
                self.stats.agreed += 1
            self.stats.credited_wei += int(message.get("credit", "0"))
        elif kind == "error":
            log.warning("orchestrator says %s: %s", message.get("code"), message.get("message"))

    async def _run_job(self, ws: aiohttp.ClientWebSocketResponse, job: dict[str, Any]) -> None:
        job_id = job["job_id"]
        deadline_s = max(0.001, int(job.get("deadline_ms", 30_000)) / 1000)
        try:
            output = await asyncio.wait_for(
                self._backend.answer(job["model"], job["task"], job.get("input") or {}), timeout=deadline_s
            )
            canonical_json(output)  # an answer with no canonical form would only count as invalid
        except TimeoutError:
            log.info("job %s passed its deadline", job_id)
            return
        except BackendError as error:
            log.info("job %s rejected (%s): %s", job_id, error.reason, error)
            await self._send(ws, {"type": "reject", "job_id": job_id, "reason": error.reason})
            self.stats.rejected += 1
            return
        except CanonicalError as error:
            log.error("job %s: the backend's answer has no canonical JSON form: %s", job_id, error)
            await self._send(ws, {"type": "reject", "job_id": job_id, "reason": "internal"})
            self.stats.rejected += 1
            return
        await self._send(ws, {"type": "result", "job_id": job_id, "output": output})
        self.stats.answered += 1

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        if not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_str(orjson.dumps(message).decode())

    async def _finish_running(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=self.settings.shutdown_grace_s)
        for task in self._running.values():
            task.cancel()
