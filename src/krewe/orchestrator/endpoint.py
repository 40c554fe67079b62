"""The miners' WebSocket endpoint (docs/protocol.md §1): login, frames, heartbeats.

One connection's life:

    connect -> challenge sent -> auth within auth_timeout_s -> EIP-4361 message, signature, expiry,
    nonce unused (`UsedNonces`, shared by every instance on one Redis) and registry checked ->
    welcome -> frames until close

This module only moves frames. What a session serves and holds lives in the `SessionPool`; what a
result or reject means for its job is the router's (`JobEvents`). A malformed frame after login
is a violation (the miner is told why), and `max_violations` of them close the session with 4429.
Heartbeats are WebSocket pings sent by one timer for all sessions. Each session is pinged
`heartbeat_s` after its login and every `heartbeat_s` after, so the pings spread over the interval
as the logins did; the timer wakes for those due (no more often than every `HEARTBEAT_TICK_S`) and
yields to the loop after every `HEARTBEAT_SLICE` pings, so that no pass holds it long: pinging
10,000 sessions at once held it for 150 to 900 ms. A pong that arrives alone (as a heartbeat's
does) is taken before the WebSocket's reader (`frame_check.take_pongs`) and only marks the session
seen; any other frame passes through the session's receive loop. A session that has not answered for
`heartbeat_misses` intervals is closed when its ping is due, in the background (a close waits for
the peer). The registry is re-read for every session each `registry_cache_s`, in batches. A second
login by the same address closes the first session with 4409; with a shared store, a `Presence`
hears of each login, so that a session of the address on another instance is closed too. Whenever
a session ends, the router is told, so its jobs count as no-response.

Only a WebSocket upgrade of version 13 (RFC 6455) is taken; any other request gets 426. Pings are
answered before login too. Once the upgrade is sent no HTTP response can follow, so a failure of
this module's own closes the connection with 1011 instead of reaching the error middleware.
"""

import asyncio
import collections
import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from aiohttp import WSCloseCode, WSMsgType, web

from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.frame_check import take_pongs
from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.nonces import UsedNonces
from krewe.orchestrator.pool import Session, SessionPool
from krewe.orchestrator.shared import StoreUnavailableError
from krewe.protocol import siwe
from krewe.protocol.messages import (
    Auth,
    Challenge,
    CloseCode,
    Error,
    ErrorCode,
    MessageError,
    Reject,
    Result,
    Status,
    Welcome,
    decode_miner_message,
    encode,
)
from krewe.untrusted import untrusted

__all__ = ["WEBSOCKET_VERSION", "JobEvents", "Presence", "Registry", "WorkerEndpoint"]

log = logging.getLogger(__name__)

HEARTBEAT_SLICE = 100  # pings sent before the heartbeat yields to the event loop
HEARTBEAT_TICK_S = 0.5  # the shortest pause between two passes of the heartbeat timer
ENDED_BEFORE_SWEEP = 64  # ended sessions the ping queue may hold before it is swept of them
REGISTRY_BATCH = 500  # sessions re-checked per registry read
_PING = b"\x89\x00"  # a ping frame: FIN + the ping opcode, no payload, unmasked as a server's are
_TEXT_FINAL = 0x81  # a text frame's first byte: FIN + the text opcode
_EXTENDED_16, _EXTENDED_64 = 126, 127  # the 7-bit lengths that announce a 16- or 64-bit length
UNREAD_FRAMES = 4  # frames a miner may leave unread beyond one per job it takes at once
MAX_ERROR_CHAIN = 8  # errors, each the cause or context of the one before, released at a socket's end

WEBSOCKET_VERSION = "13"  # RFC 6455; aiohttp also takes the drafts 7 and 8


class Registry(Protocol):
    async def is_active(self, worker: str) -> bool: ...

    async def active_many(self, workers: Iterable[str]) -> dict[str, bool]: ...


class JobEvents(Protocol):
    """What the router hears from sessions; each returns a violation to hold against the sender."""

    def on_result(self, session: Session, message: Result) -> str | None: ...

    def on_invalid(self, session: Session, job_id: str) -> str | None: ...

    def on_reject(self, session: Session, message: Reject) -> str | None: ...

    def on_session_closed(self, session: Session) -> None: ...

    def on_deregistered(self, worker: str) -> None: ...


class Presence(Protocol):
    """The other instances sharing the store (network.py), told of each login here."""

    async def logged_in(self, session: Session) -> None: ...


class _Socket:
    """A session's channel: the WebSocket it was logged in on.

    Frames are written to the connection as they are sent, each a text frame built here (unmasked
    and uncompressed, as RFC 6455 and 7692 allow a server's): aiohttp's `send_str` would take two
    coroutines per frame and may wait, and the router writes six frames per job. Nothing waits for
    a slow reader: a miner may leave unread one frame per job it takes at once (`capacity`) and
    UNREAD_FRAMES more, each counted as the largest frame; past that it is disconnected."""

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, largest_frame: int
    ) -> None:
        self.ws = ws
        self._transport = cast(asyncio.Transport | None, transport)
        self._largest_frame = largest_frame
        self.capacity = 0  # the miner's max_concurrency, once it has logged in

    def _open_transport(self) -> asyncio.Transport | None:
        transport = self._transport
        if self.ws.closed or transport is None or transport.is_closing():
            return None
        return transport

    def ping(self) -> None:
        """A heartbeat's ping, written to the connection as it is: every few seconds for each of
        thousands of sessions, aiohttp's ping would build the same two bytes through two coroutines."""
        transport = self._open_transport()
        if transport is not None:
            transport.write(_PING)

    def send(self, frame: str) -> bool:
        transport = self._open_transport()
        if transport is None:
            return False
        payload = frame.encode()
        transport.write(text_frame_header(len(payload)) + payload)
        unread = transport.get_write_buffer_size()
        if unread > (self.capacity + UNREAD_FRAMES) * self._largest_frame:
            peer = transport.get_extra_info("peername")
            log.info("disconnecting the miner at %s: %d bytes of frames wait unread", peer, unread)
            transport.abort()
            return False
        return True

    async def close(self, close_code: int, code: str, message: str) -> None:
        self.send(encode(Error(code, message)))
        await self.ws.close(code=close_code, message=code.encode())


def text_frame_header(length: int) -> bytes:
    """The header of a final, unmasked text frame of `length` bytes (RFC 6455 §5.2)."""
    if length < _EXTENDED_16:
        return bytes((_TEXT_FINAL, length))
    if length < 1 << 16:
        return bytes((_TEXT_FINAL, _EXTENDED_16)) + length.to_bytes(2, "big")
    return bytes((_TEXT_FINAL, _EXTENDED_64)) + length.to_bytes(8, "big")


def _release_errors(error: BaseException | None) -> None:
    """Drop the tracebacks of the error a WebSocket ended with and of the errors it arose from.
    aiohttp keeps such an error on the socket and on its reader, and the frames of its traceback
    hold them: a cycle that, once the session has lived long enough to reach the garbage
    collector's oldest generation, only a full pass would free. Without the tracebacks the socket
    is freed when it is dropped. No frame is touched: one may belong to a task still running."""
    for _ in range(MAX_ERROR_CHAIN):
        if error is None:
            return
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


class _RefusedError(Exception):
    """A login refused: the error sent to the miner and the close code that follows."""

    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code, self.code, self.message = close_code, code, message


def _auth_failed(message: str) -> _RefusedError:
    return _RefusedError(CloseCode.AUTH_FAILED, ErrorCode.AUTH_FAILED, message)


def _bad_message(message: str) -> _RefusedError:
    return _RefusedError(CloseCode.BAD_MESSAGE, ErrorCode.BAD_MESSAGE, message)


class WorkerEndpoint:
    def __init__(
        self,
        settings: OrchestratorSettings,
        pool: SessionPool,
        events: JobEvents,
        registry: Registry,
        metrics: Metrics,
        *,
        chain_id: int,
        nonces: UsedNonces,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        presence: Presence | None = None,
    ) -> None:
        self.settings = settings
        self._pool = pool
        self._presence = presence
        self._events = events
        self._registry = registry
        self._metrics = metrics
        self._chain_id = chain_id
        self._nonces = nonces
        self._clock = clock
        self._wall_clock = wall_clock
        self._connections: set[web.WebSocketResponse] = set()
        self._background: set[asyncio.Task[None]] = set()  # closes under way
        # when each session is next pinged, in that order (every session waits the same interval)
        self._ping_due: collections.deque[tuple[float, Session]] = collections.deque()
        self._ended = 0  # sessions ended since `_ping_due` last dropped its ended ones
        # the largest frame either way: a job's carries a request body, a miner's result a frame
        self._largest_frame = max(settings.max_frame_bytes, settings.max_body_bytes)
        self.accepting = True

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """GET /v1/workers/connect."""
        if request.headers.get("Sec-WebSocket-Version") != WEBSOCKET_VERSION:
            raise web.HTTPUpgradeRequired(
                headers={"Upgrade": "websocket", "Sec-WebSocket-Version": WEBSOCKET_VERSION},
                text=f"connect with a WebSocket upgrade of version {WEBSOCKET_VERSION} (RFC 6455)",
            )
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_frame_bytes, autoping=False)
        await ws.prepare(request)
        if not self.accepting:
            await ws.close(code=CloseCode.GOING_AWAY, message=b"shutting down")
            return ws
        self._connections.add(ws)
        socket = _Socket(ws, request.transport, self._largest_frame)
        try:
            session = await self._login(socket)
            if session is not None:
                take_pongs(request, functools.partial(self._heard, session))
                await self._serve(session, ws)
        except _RefusedError as refusal:
            self._metrics.logins.labels(refusal.code).inc()
            if not ws.closed:
                await socket.close(refusal.close_code, refusal.code, refusal.message)
        except Exception:
            log.exception("closing a miner connection with 1011 after an unexpected error")
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
        finally:
            self._connections.discard(ws)
            take_pongs(request, None)  # the callback holds the session, which holds the socket
            _release_errors(ws.exception())
        return ws

    def _challenge(self) -> siwe.Challenge:
        issued = self._wall_clock()
        return siwe.Challenge(
            domain=self.settings.connect_url.split("/")[2],
            uri=self.settings.connect_url,
            chain_id=self._chain_id,
            nonce=secrets.token_hex(16),
            issued_at=issued,
            expiration_time=issued + timedelta(seconds=self.settings.auth_timeout_s),
            statement=siwe.STATEMENT,
            version="1",
        )

    async def _login(self, socket: _Socket) -> Session | None:
        """Challenge, verify, welcome. None if the miner hung up; raises _RefusedError to refuse."""
        challenge = self._challenge()
        socket.send(encode(Challenge.issue(challenge)))
        auth = await self._receive_auth(socket.ws)
        if auth is None:
            return None
        try:
            signer = siwe.verify(auth.message, auth.signature, expected=challenge, now=self._wall_clock())
        except siwe.SiweError as error:
            raise _auth_failed(str(error)) from None
        try:
            fresh = await self._nonces.use(challenge.nonce)
        except StoreUnavailableError as error:
            log.warning("refusing a login: %s", error)
            message = "cannot reach the store instances share now; retry later"
            raise _RefusedError(CloseCode.TRY_AGAIN_LATER, ErrorCode.STORE_UNAVAILABLE, message) from None
        if not fresh:
            raise _auth_failed(f"the nonce {challenge.nonce} was already used")
        await self._check_registered(signer)
        now = self._clock()
        session = Session(
            secrets.token_hex(8),
            signer,
            socket,
            tuple(auth.models),
            auth.max_concurrency,
            auth.agent,
            now,
            now,
        )
        heartbeat_s = max(1, math.ceil(self.settings.heartbeat_s))
        welcome = encode(Welcome(signer, session.id, heartbeat_s, self.settings.max_frame_bytes))
        socket.capacity = auth.max_concurrency
        previous = self._pool.add(session)
        # from here the router may send the session jobs: the welcome goes first, with no await
        # before it, since a miner takes no job before its welcome
        socket.send(welcome)
        self._ping_due.append((now + self.settings.heartbeat_s, session))
        self._metrics.miners.set(self._pool.connected_here)
        if previous is not None:
            await previous.channel.close(
                CloseCode.SUPERSEDED, ErrorCode.SUPERSEDED, "logged in again elsewhere"
            )
        if self._presence is not None:
            await self._presence.logged_in(session)
        self._metrics.logins.labels("ok").inc()
        offers = ", ".join(f"{offer.id} ({'/'.join(offer.tasks)})" for offer in auth.models)
        log.info("miner %s logged in (%s; %s)", signer, untrusted(auth.agent), untrusted(offers))
        return session

    async def _receive_auth(self, ws: web.WebSocketResponse) -> Auth | None:
        timeout = self.settings.auth_timeout_s
        try:
            async with asyncio.timeout(timeout):
                frame = await ws.receive()
                while frame.type in (WSMsgType.PING, WSMsgType.PONG):
                    if frame.type is WSMsgType.PING:
                        await ws.pong(frame.data)
                    frame = await ws.receive()
        except TimeoutError:
            raise _RefusedError(
                CloseCode.AUTH_TIMEOUT, ErrorCode.AUTH_TIMEOUT, f"no auth within {timeout:g} s"
            ) from None
        if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        if frame.type is not WSMsgType.TEXT:
            raise _bad_message("expected a text frame")
        try:
            auth = decode_miner_message(frame.data.encode())
        except MessageError as error:
            raise _bad_message(str(error)) from None
        if not isinstance(auth, Auth):
            raise _bad_message("the first message must be auth")
        return auth

    async def _check_registered(self, signer: str) -> None:
        try:
            active = await asyncio.wait_for(
                self._registry.is_active(signer), timeout=self.settings.registry_timeout_s
            )
        except Exception as error:  # the chain is unreachable or slow: the miner may retry later
            log.warning("registry check for %s failed: %s", signer, error or type(error).__name__)
            message = "cannot check the registry now; retry later"
            raise _RefusedError(CloseCode.TRY_AGAIN_LATER, ErrorCode.REGISTRY_UNAVAILABLE, message) from None
        if not active:
            message = f"{signer} is not an active worker in the registry"
            raise _RefusedError(CloseCode.NOT_REGISTERED, ErrorCode.NOT_REGISTERED, message)

    async def _serve(self, session: Session, ws: web.WebSocketResponse) -> None:
        try:
            async for frame in ws:
                session.last_seen = self._clock()
                if frame.type is WSMsgType.TEXT:
                    violation = self._dispatch(session, frame.data.encode())
                    if violation is not None:
                        await self.violation(session, violation)
                elif frame.type is WSMsgType.PING:
                    await ws.pong(frame.data)
                elif frame.type is WSMsgType.BINARY:
                    await self.violation(session, "frames must be text (UTF-8 JSON)")
                if ws.closed:
                    break
        finally:
            if self._pool.remove(session):
                self._metrics.miners.set(self._pool.connected_here)
            self._events.on_session_closed(session)
            self._forget_ended()

    def _heard(self, session: Session) -> None:
        """A pong from the session's miner, taken before its WebSocket's reader (`take_pongs`)."""
        session.last_seen = self._clock()

    def _forget_ended(self) -> None:
        """Drop ended sessions from the ping queue once they could make up half of it: a session
        waits there up to heartbeat_s, and miners that log in and leave again and again would
        otherwise keep thousands of closed sockets alive (amortised, one pass per many ends)."""
        self._ended += 1
        due = self._ping_due
        if self._ended > max(ENDED_BEFORE_SWEEP, len(due) // 2):
            current = self._pool.sessions
            live = [(at, session) for at, session in due if current.get(session.address) is session]
            due.clear()
            due.extend(live)
            self._ended = 0

    def _dispatch(self, session: Session, frame: bytes) -> str | None:
        """Hand a miner's frame on; returns a protocol violation to hold against it, or None."""
        try:
            message = decode_miner_message(frame)
        except MessageError as error:
            if error.job_id is None:
                return str(error)
            return self._events.on_invalid(session, error.job_id)  # a result whose output is not JSON
        match message:
            case Result():
                return self._events.on_result(session, message)
            case Reject():
                return self._events.on_reject(session, message)
            case Status(models, max_concurrency):
                self._pool.update_offers(session, models, max_concurrency)
                if isinstance(session.channel, _Socket):
                    session.channel.capacity = max_concurrency
            case Auth():
                return "already logged in"
        return None

    async def violation(self, session: Session, reason: str) -> None:
        """Count a protocol violation; tell the miner, and close the session at the limit."""
        session.violations += 1
        self._metrics.violations.inc()
        if session.violations >= self.settings.max_violations:
            message = f"{session.violations} protocol violations; last: {reason}"
            log.info("closing miner %s: %s", session.address, untrusted(message))
            await session.channel.close(CloseCode.TOO_MANY_VIOLATIONS, ErrorCode.TOO_MANY_VIOLATIONS, message)
        else:
            session.channel.send(encode(Error(ErrorCode.BAD_MESSAGE, reason)))

    async def heartbeat(self) -> None:
        """Ping each session heartbeat_s after it logged in and every heartbeat_s after; close one
        that has been silent for heartbeat_misses intervals when its ping is due."""
        interval = self.settings.heartbeat_s
        shortest = min(HEARTBEAT_TICK_S, interval)
        due = self._ping_due
        while True:
            await asyncio.sleep(max(shortest, due[0][0] - self._clock() if due else interval))
            now = self._clock()
            sent = 0
            while due and due[0][0] <= now:
                # no session is kept in this frame: an ended one is freed once the queue drops it
                if self._beat(due.popleft()[1], now):
                    sent += 1
                    if sent % HEARTBEAT_SLICE == 0:
                        await asyncio.sleep(0)  # between slices, let the loop serve everything else

    def _beat(self, session: Session, now: float) -> bool:
        """Ping `session` and queue its next ping; close it if it has been silent too long. False
        when it was not pinged (closed, or gone, or superseded by a newer login with its own place)."""
        socket = session.channel
        if self._pool.sessions.get(session.address) is not session or not isinstance(socket, _Socket):
            return False
        if socket.ws.closed:
            return False
        interval, misses = self.settings.heartbeat_s, self.settings.heartbeat_misses
        if session.last_seen < now - interval * misses:
            log.info("closing miner %s: no pong for %d heartbeats", session.address, misses)
            message = f"no pong for {misses} heartbeats"
            self._in_background(
                socket.close(CloseCode.HEARTBEAT_TIMEOUT, ErrorCode.HEARTBEAT_TIMEOUT, message)
            )
            return False
        self._ping_due.append((now + interval, session))
        socket.ping()
        return True

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` on its own (a close waits for the peer's answer), holding it until done."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def recheck_registry(self) -> None:
        """Every registry_cache_s, close the sessions of miners no longer active on chain (4403).
        Only those connected here: each instance checks its own."""
        while True:
            await asyncio.sleep(max(self.settings.registry_cache_s, 1.0))
            sessions = [session for session in self._pool.sessions.values() if not session.remote]
            for start in range(0, len(sessions), REGISTRY_BATCH):
                batch = sessions[start : start + REGISTRY_BATCH]
                try:
                    active = await asyncio.wait_for(
                        self._registry.active_many(session.address for session in batch),
                        timeout=self.settings.registry_timeout_s,
                    )
                except Exception as error:  # the chain is unreachable: keep the miners until it answers
                    log.warning(
                        "registry re-check of %d miners failed: %s", len(batch), error or type(error).__name__
                    )
                    continue
                for session in batch:
                    if not active[session.address] and self._pool.remove(session):
                        self._metrics.miners.set(self._pool.connected_here)
                        self._events.on_deregistered(session.address)
                        message = f"{session.address} is no longer an active worker in the registry"
                        log.info("closing miner %s: %s", session.address, message)
                        self._in_background(
                            session.channel.close(CloseCode.NOT_REGISTERED, ErrorCode.NOT_REGISTERED, message)
                        )

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
        await asyncio.gather(*self._background, return_exceptions=True)
