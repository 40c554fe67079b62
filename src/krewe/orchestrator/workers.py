"""WorkerManager: every authenticated miner's WebSocket session (PROTOCOL.md §1).

One connection's life:

    connect -> challenge sent -> auth within auth_timeout_s -> signature, expiry and registry
    checked -> welcome -> messages until close

A miner authenticates once per connection. After login each frame is decoded into a typed
message; a malformed frame is a violation (the miner is told why), and `max_violations` of them
close the session with 4429. Heartbeats are WebSocket pings sent by one loop for all sessions;
a session that has not answered for `heartbeat_misses` intervals is closed. A second login by the
same address closes the first session with 4409. Whenever a session ends, its in-flight jobs
count as no-response (the router is told).
"""

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from aiohttp import WSMsgType, web

from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.scoring import PeerScore, ScoringConfig
from krewe.protocol.login import challenge_text, recover_signer, rfc3339
from krewe.protocol.messages import (
    Auth,
    CloseCode,
    ErrorCode,
    MessageError,
    Reject,
    Result,
    Status,
    decode_miner_message,
    encode,
)

__all__ = ["JobEvents", "Registry", "Session", "WorkerManager"]

log = logging.getLogger(__name__)


class Registry(Protocol):
    async def is_active(self, worker: str) -> bool: ...


class JobEvents(Protocol):
    """What the router hears from sessions."""

    def on_result(self, session: "Session", message: Result) -> None: ...

    def on_invalid(self, session: "Session", job_id: str) -> None: ...

    def on_reject(self, session: "Session", message: Reject) -> None: ...

    def on_session_closed(self, session: "Session") -> None: ...


@dataclass(eq=False)
class Session:
    id: str
    address: str
    ws: web.WebSocketResponse
    models: frozenset[str]
    max_concurrency: int
    agent: str
    connected_at: float
    last_seen: float
    rank: float = 0.0  # the peer score's rank, kept current by WorkerManager.set_score
    in_flight: int = 0
    violations: int = 0
    jobs: set[str] = field(default_factory=set)

    @property
    def worker(self) -> str:
        return self.address

    async def send(self, frame: str) -> bool:
        """Send a frame; False if the connection is already gone."""
        if self.ws.closed:
            return False
        try:
            await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError):
            return False
        return True


class WorkerManager:
    def __init__(
        self,
        settings: OrchestratorSettings,
        registry: Registry,
        metrics: Metrics,
        *,
        chain_id: int,
        scoring: ScoringConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._registry = registry
        self._metrics = metrics
        self._chain_id = chain_id
        self.scoring = scoring or ScoringConfig()
        self._clock = clock
        self.sessions: dict[str, Session] = {}
        self._serving: collections.Counter[str] = collections.Counter()  # model -> sessions serving it
        self.scores: dict[str, PeerScore] = {}
        self.events: JobEvents | None = None
        self._connections: set[web.WebSocketResponse] = set()
        self.accepting = True

    def candidates(self) -> Iterable[Session]:
        return self.sessions.values()

    def score(self, worker: str) -> PeerScore:
        return self.scores.get(worker) or PeerScore.new(self.scoring)

    def set_score(self, worker: str, score: PeerScore) -> None:
        self.scores[worker] = score
        session = self.sessions.get(worker)
        if session is not None:
            session.rank = score.rank(self.scoring)

    def models(self) -> list[str]:
        return sorted(model for model, count in self._serving.items() if count)

    def serves(self, model: str) -> bool:
        """Whether any connected miner serves `model`."""
        return self._serving[model] > 0

    def _add(self, session: Session) -> None:
        self.sessions[session.address] = session
        self._serving.update(session.models)
        self._metrics.miners.set(len(self.sessions))

    def _remove(self, session: Session) -> None:
        if self.sessions.get(session.address) is session:
            del self.sessions[session.address]
            self._serving.subtract(session.models)
            self._metrics.miners.set(len(self.sessions))

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """GET /v1/workers/connect."""
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_frame_bytes, autoping=False)
        await ws.prepare(request)
        if not self.accepting:
            await ws.close(code=CloseCode.GOING_AWAY, message=b"shutting down")
            return ws
        self._connections.add(ws)
        try:
            session = await self._login(ws)
            if session is not None:
                await self._serve(session)
        except _RefusedError as refusal:
            await self._refuse(ws, refusal)
        finally:
            self._connections.discard(ws)
        return ws

    async def _login(self, ws: web.WebSocketResponse) -> Session | None:
        """Challenge, verify, welcome. None if the miner hung up; raises _RefusedError to refuse."""
        issued = datetime.now(UTC)
        expires = issued + timedelta(seconds=self.settings.auth_timeout_s)
        challenge = challenge_text(
            domain=self.settings.connect_url.split("/")[2],
            uri=self.settings.connect_url,
            chain_id=self._chain_id,
            nonce=secrets.token_hex(16),
            issued_at=issued,
            expires_at=expires,
        )
        await ws.send_str(encode({"type": "challenge", "message": challenge, "expires_at": rfc3339(expires)}))
        try:
            frame = await asyncio.wait_for(ws.receive(), timeout=self.settings.auth_timeout_s)
        except TimeoutError:
            timeout = self.settings.auth_timeout_s
            raise _RefusedError(
                CloseCode.AUTH_TIMEOUT, ErrorCode.AUTH_TIMEOUT, f"no auth within {timeout:g} s"
            ) from None
        if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        if frame.type is not WSMsgType.TEXT:
            raise _RefusedError(CloseCode.BAD_MESSAGE, ErrorCode.BAD_MESSAGE, "expected a text frame")
        try:
            auth = decode_miner_message(frame.data.encode())
        except MessageError as error:
            raise _RefusedError(CloseCode.BAD_MESSAGE, ErrorCode.BAD_MESSAGE, str(error)) from None
        if not isinstance(auth, Auth):
            raise _RefusedError(
                CloseCode.BAD_MESSAGE, ErrorCode.BAD_MESSAGE, "the first message must be auth"
            )
        problem = _check_offer(auth.models, auth.max_concurrency)
        if problem:
            raise _RefusedError(CloseCode.BAD_MESSAGE, ErrorCode.BAD_MESSAGE, problem)
        if datetime.now(UTC) > expires:
            raise _RefusedError(CloseCode.AUTH_FAILED, ErrorCode.AUTH_FAILED, "the challenge expired")
        try:
            signer = recover_signer(challenge, auth.signature)
        except ValueError as error:
            raise _RefusedError(CloseCode.AUTH_FAILED, ErrorCode.AUTH_FAILED, str(error)) from None
        if signer.lower() != auth.address.lower():
            message = f"the signature is by {signer}, not {auth.address}"
            raise _RefusedError(CloseCode.AUTH_FAILED, ErrorCode.AUTH_FAILED, message)
        try:
            active = await self._registry.is_active(signer)
        except Exception as error:  # the chain is unreachable: the miner may retry later
            log.warning("registry check for %s failed: %s", signer, error)
            message = "cannot check the registry now; retry later"
            raise _RefusedError(CloseCode.TRY_AGAIN_LATER, ErrorCode.REGISTRY_UNAVAILABLE, message) from None
        if not active:
            message = f"{signer} is not an active worker in the registry"
            raise _RefusedError(CloseCode.NOT_REGISTERED, ErrorCode.NOT_REGISTERED, message)
        now = self._clock()
        models = frozenset(auth.models)
        session = Session(
            secrets.token_hex(8), signer, ws, models, auth.max_concurrency, auth.agent, now, now
        )
        session.rank = self.score(signer).rank(self.scoring)
        previous = self.sessions.get(signer)
        if previous is not None:
            self._remove(previous)
        self._add(session)
        if previous is not None:
            await self._close(
                previous, CloseCode.SUPERSEDED, ErrorCode.SUPERSEDED, "logged in again elsewhere"
            )
        self._metrics.logins.labels("ok").inc()
        welcome = {
            "type": "welcome",
            "worker": signer,
            "session": session.id,
            "heartbeat_s": self.settings.heartbeat_s,
            "max_frame_bytes": self.settings.max_frame_bytes,
        }
        await ws.send_str(encode(welcome))
        log.info("miner %s logged in (%s, models %s)", signer, auth.agent, ",".join(sorted(auth.models)))
        return session

    async def _refuse(self, ws: web.WebSocketResponse, refusal: "_RefusedError") -> None:
        self._metrics.logins.labels(refusal.code).inc()
        if not ws.closed:
            await ws.send_str(encode({"type": "error", "code": refusal.code, "message": refusal.message}))
            await ws.close(code=refusal.close_code, message=refusal.code.encode())

    async def _serve(self, session: Session) -> None:
        ws = session.ws
        try:
            async for frame in ws:
                session.last_seen = self._clock()
                if frame.type is WSMsgType.TEXT:
                    await self._dispatch(session, frame.data.encode())
                elif frame.type is WSMsgType.PING:
                    await ws.pong(frame.data)
                elif frame.type is WSMsgType.BINARY:
                    await self.violation(session, "frames must be text (UTF-8 JSON)")
                if ws.closed:
                    break
        finally:
            self._remove(session)
            if self.events is not None:
                self.events.on_session_closed(session)

    async def _dispatch(self, session: Session, frame: bytes) -> None:
        try:
            message = decode_miner_message(frame)
        except MessageError as error:
            if error.job_id is not None and self.events is not None:
                self.events.on_invalid(session, error.job_id)  # a result whose output is not JSON
            else:
                await self.violation(session, str(error))
            return
        if isinstance(message, Result):
            if self.events is not None:
                self.events.on_result(session, message)
        elif isinstance(message, Reject):
            if self.events is not None:
                self.events.on_reject(session, message)
        elif isinstance(message, Status):
            problem = _check_offer(message.models, message.max_concurrency)
            if problem:
                await self.violation(session, problem)
            else:
                current = self.sessions.get(session.address) is session
                if current:
                    self._serving.subtract(session.models)
                session.models = frozenset(message.models)
                session.max_concurrency = message.max_concurrency
                if current:
                    self._serving.update(session.models)
        else:
            await self.violation(session, "already logged in")

    async def violation(self, session: Session, reason: str) -> None:
        """Count a protocol violation; tell the miner, and close the session at the limit."""
        session.violations += 1
        self._metrics.violations.inc()
        if session.violations >= self.settings.max_violations:
            await self._close(session, CloseCode.TOO_MANY_VIOLATIONS, ErrorCode.TOO_MANY_VIOLATIONS,
                              f"{session.violations} protocol violations; last: {reason}")  # fmt: skip
        else:
            await session.send(encode({"type": "error", "code": ErrorCode.BAD_MESSAGE, "message": reason}))

    async def _close(self, session: Session, close_code: int, code: str, message: str) -> None:
        log.info("closing miner %s: %s (%s)", session.address, code, message)
        await session.send(encode({"type": "error", "code": code, "message": message}))
        await session.ws.close(code=close_code, message=code.encode())

    async def heartbeat(self) -> None:
        """Ping every session each heartbeat_s; close those silent for heartbeat_misses intervals."""
        interval = self.settings.heartbeat_s
        while True:
            await asyncio.sleep(interval)
            limit = self._clock() - interval * self.settings.heartbeat_misses
            for session in list(self.sessions.values()):
                if session.last_seen < limit:
                    await self._close(session, CloseCode.HEARTBEAT_TIMEOUT, ErrorCode.HEARTBEAT_TIMEOUT,
                                      f"no pong for {self.settings.heartbeat_misses} heartbeats")  # fmt: skip
                elif not session.ws.closed:
                    try:
                        await session.ws.ping()
                    except (ConnectionError, RuntimeError):
                        continue

    async def close_all(self) -> None:
        """Shutdown: refuse new miners, close every connection with 1001."""
        self.accepting = False
        await asyncio.gather(
            *(
                ws.close(code=CloseCode.GOING_AWAY, message=b"orchestrator shutting down")
                for ws in list(self._connections)
            ),
            return_exceptions=True,
        )


class _RefusedError(Exception):
    """A login refused: the error sent to the miner and the close code that follows."""

    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code, self.code, self.message = close_code, code, message


def _check_offer(models: list[str], max_concurrency: int) -> str:
    if not models or not all(isinstance(model, str) and model for model in models):
        return "models must be a non-empty list of model ids"
    if max_concurrency < 1:
        return f"max_concurrency must be at least 1, not {max_concurrency}"
    return ""
