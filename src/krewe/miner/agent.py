"""MinerAgent: one miner's connection to an orchestrator (PROTOCOL.md §1, the miner's side).

    connect -> sign in with Ethereum (EIP-4361) -> welcome -> jobs until the connection ends -> reconnect

The agent connects to the first of its `orchestrator_url`s. When that orchestrator is gone (the
connection is refused or fails, the login times out, or the connection closes with 1001 going
away, 1012 service restart or without a close frame, or its challenge is one the agent does not
sign) it reconnects to the next URL in order, wrapping around; any other end (a supersede, a
refused login) would be the same at every orchestrator of the network, so it reconnects to the
same one. It signs a challenge only if its domain and URI are those of the URL it connected to.

Every frame from the orchestrator is decoded into its typed struct, and every frame the agent sends
is one (krewe.protocol.messages). A frame that does not decode, or that makes no sense where it
arrives (a second welcome, a job id that is already running), is logged with its text escaped and
truncated, counted in `MinerStats.malformed_frames`, and otherwise ignored: no frame the
orchestrator sends ends the agent, and none reaches the log raw.

The agent offers the backend's models (filtered by the `models` setting) and answers a job for a
model or task it did not offer with a reject, without asking the backend. Reconnects wait an
exponential delay with jitter, capped at `reconnect_max_s`, and start again from
`reconnect_min_s` after a session that stayed up `healthy_session_s`. At most `max_concurrency`
jobs run at once; more are rejected as `busy`. A job stops at its deadline or on `cancel`. On stop
(SIGTERM) the agent rejects new jobs, lets running ones finish within `shutdown_grace_s`, and
closes the connection normally.
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
from urllib.parse import urlsplit

import aiohttp
import msgspec

from krewe import __version__
from krewe.keys import SigningKey
from krewe.miner.backends import Backend, BackendError
from krewe.miner.config import MinerSettings
from krewe.protocol.canonical import CanonicalError, canonical_json
from krewe.protocol.messages import (
    Auth,
    Cancel,
    Challenge,
    CloseCode,
    Error,
    Job,
    MessageError,
    MinerMessage,
    ModelOffer,
    OrchestratorMessage,
    Reject,
    RejectReason,
    Result,
    Status,
    Verdict,
    Welcome,
    decode_miner_message,
    decode_orchestrator_message,
    encode,
)
from krewe.untrusted import untrusted

__all__ = ["MinerAgent", "MinerStats", "challenge_is_for", "instance_gone", "login_message", "offered"]

log = logging.getLogger(__name__)

LOGIN_TIMEOUT_S = 30.0  # for each of the challenge and the welcome
CLOSE_TIMEOUT_S = 10.0  # for the close frame that follows a refused login
MAX_WEI_DIGITS = 78  # 2**256 - 1 has 78 digits
# how a connection ends when the orchestrator behind it went away (1006: no close frame came)
GONE_CLOSE_CODES = frozenset(
    {
        aiohttp.WSCloseCode.GOING_AWAY,
        aiohttp.WSCloseCode.SERVICE_RESTART,
        aiohttp.WSCloseCode.ABNORMAL_CLOSURE,
    }
)


def offered(offers: list[ModelOffer], wanted: list[str]) -> list[ModelOffer]:
    """The backend's offers, only those whose model is in `wanted` unless it is empty."""
    return [offer for offer in offers if not wanted or offer.id in wanted]


def instance_gone(close_code: int | None) -> bool:
    """Whether a connection that ended with `close_code` (None: it never got one) tells that its
    orchestrator went away, so that the agent moves to the next URL."""
    return close_code is None or close_code in GONE_CLOSE_CODES


def challenge_is_for(challenge: Challenge, url: str) -> bool:
    """Whether the challenge names the orchestrator at `url`: a login signed for another domain
    could be replayed there (EIP-4361 leaves this check to the signer)."""
    return challenge.uri == url and challenge.domain == urlsplit(url).netloc


def login_message(challenge: Challenge, address: str) -> str:
    """The EIP-4361 text that signs in `address` with the challenge's fields; ValueError if the
    challenge's fields do not make one (a time that is not RFC 3339, say)."""
    return challenge.fields().message_for(address)


@dataclass
class MinerStats:
    sessions: int = 0
    jobs: int = 0
    answered: int = 0
    rejected: int = 0
    agreed: int = 0
    credited_wei: int = 0
    malformed_frames: int = 0  # frames from the orchestrator that were not valid where they arrived
    last_close_code: int | None = None
    reconnects: int = 0
    failovers: int = 0  # moves to the next orchestrator URL
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
        self.offers = offered(backend.offers(), settings.models)
        _check_offers(self.offers, settings)
        self._tasks_by_model = {offer.id: frozenset(offer.tasks) for offer in self.offers}
        self.stats = MinerStats()
        self._stop = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self.connected = asyncio.Event()
        self._welcomed_at: float | None = None  # when the current session was welcomed
        self._url_index = 0

    @property
    def url(self) -> str:
        """The orchestrator the agent is connected to, or connects to next."""
        return self.settings.orchestrator_url[self._url_index]

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
                    gone = await self._session(http)
                except (aiohttp.ClientError, OSError) as error:  # OSError includes TimeoutError
                    # a bare TimeoutError is the login's; aiohttp's own timeouts are subclasses
                    reason = "the login did not complete in time" if type(error) is TimeoutError else error
                    log.warning("connection to %s failed: %s", self.url, reason)
                    gone = True
                if self._stop.is_set():
                    break
                if gone and len(self.settings.orchestrator_url) > 1:
                    self._url_index = (self._url_index + 1) % len(self.settings.orchestrator_url)
                    self.stats.failovers += 1
                    log.info("the orchestrator went away; moving to %s", self.url)
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

    async def _session(self, http: aiohttp.ClientSession) -> bool:
        """One connection, from login to its end; whether its orchestrator went away."""
        url = self.url
        async with http.ws_connect(url, max_msg_size=0) as ws:
            welcome = await self._login(ws, url)
            self.stats.last_close_code = ws.close_code
            if welcome is None:
                return instance_gone(ws.close_code)
            self.stats.sessions += 1
            self._welcomed_at = self._clock()
            self.connected.set()
            log.info("logged in as %s, session %s", untrusted(welcome.worker), untrusted(welcome.session))
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                await self._serve(ws, stopper)
            finally:
                stopper.cancel()
                self.connected.clear()
                self.stats.last_close_code = ws.close_code
            return instance_gone(ws.close_code)

    async def _login(self, ws: aiohttp.ClientWebSocketResponse, url: str) -> Welcome | None:
        """Answer the challenge; the welcome, or None when the login did not succeed."""
        challenge = await self._expect(ws, Challenge, Error)
        if not isinstance(challenge, Challenge):
            await self._refused(ws, challenge)
            return None
        if not challenge_is_for(challenge, url):
            log.error(
                "not signing a login for %s at %s: connected to %s (set orchestrator_url to the "
                "orchestrator's public connect URL)",
                untrusted(challenge.domain),
                untrusted(challenge.uri),
                url,
            )
            return None
        try:
            message = login_message(challenge, self.address)
        except ValueError as error:
            self._malformed(f"a challenge that makes no EIP-4361 message: {error}", encode(challenge))
            return None
        auth = Auth(
            message=message,
            signature=self._key.sign_message(message),
            models=self.offers,
            max_concurrency=self.settings.max_concurrency,
            agent=f"krewe-miner/{__version__}",
        )
        await self._send(ws, auth)
        reply = await self._expect(ws, Welcome, Error)
        if not isinstance(reply, Welcome):
            await self._refused(ws, reply)
            return None
        return reply

    async def _refused(self, ws: aiohttp.ClientWebSocketResponse, error: OrchestratorMessage | None) -> None:
        """Log why the orchestrator refused the login, and wait (bounded) for its close frame."""
        if isinstance(error, Error):
            log.error("login refused: %s: %s", untrusted(error.code), untrusted(error.message))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                while (late := await self._receive(ws)) is not None:
                    self._unexpected(late)

    async def _expect(
        self, ws: aiohttp.ClientWebSocketResponse, *kinds: type[OrchestratorMessage]
    ) -> OrchestratorMessage | None:
        """The next message of one of `kinds`, skipping (and counting) any other; None if the
        connection ends first. TimeoutError after LOGIN_TIMEOUT_S."""
        async with asyncio.timeout(LOGIN_TIMEOUT_S):
            while (message := await self._receive(ws)) is not None:
                if isinstance(message, kinds):
                    return message
                self._unexpected(message)
        return None

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> OrchestratorMessage | None:
        """The next message that decodes, or None once the connection has ended; the malformed
        frames before it are counted and skipped."""
        while True:
            frame = await ws.receive()
            if frame.type is aiohttp.WSMsgType.TEXT:
                try:
                    return decode_orchestrator_message(frame.data.encode())
                except MessageError as error:
                    self._malformed(str(error), frame.data)
            elif frame.type is aiohttp.WSMsgType.BINARY:
                self._malformed("a binary frame", f"{len(frame.data)} bytes")
            else:  # close, closing, closed or error; aiohttp answers pings itself
                return None

    def _malformed(self, why: str, frame: str) -> None:
        self.stats.malformed_frames += 1
        log.warning("ignored a frame from the orchestrator (%s): %s", untrusted(why), untrusted(frame))

    def _unexpected(self, message: OrchestratorMessage) -> None:
        self._malformed(f"unexpected {type(message).__name__.lower()}", encode(message))

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, stopper: "asyncio.Future[Any]") -> None:
        while True:
            receive = asyncio.ensure_future(self._receive(ws))
            done, _ = await asyncio.wait({receive, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                receive.cancel()
                await self._finish_running(ws)
                await ws.close(code=CloseCode.NORMAL, message=b"miner stopping")
                return
            message = receive.result()
            if message is None:
                for task in self._running.values():
                    task.cancel()
                return
            await self._handle(ws, message)

    async def _handle(self, ws: aiohttp.ClientWebSocketResponse, message: OrchestratorMessage) -> None:
        match message:
            case Job():
                await self._start(ws, message)
            case Cancel():
                # a cancel for a job that is not running crossed its answer: nothing left to stop
                running = self._running.get(message.job_id)
                if running is not None:
                    running.cancel()
            case Verdict():
                credit = _wei(message.credit)
                if credit is None:
                    self._malformed("a credit that is not a decimal amount of wei", encode(message))
                    return
                if message.agreed:
                    self.stats.agreed += 1
                self.stats.credited_wei += credit
            case Error():
                log.warning("orchestrator says %s: %s", untrusted(message.code), untrusted(message.message))
            case Challenge() | Welcome():
                self._unexpected(message)

    async def _start(self, ws: aiohttp.ClientWebSocketResponse, job: Job) -> None:
        if job.job_id in self._running:
            self._malformed("a job id that is already running", encode(job))
            return
        self.stats.jobs += 1
        reason = self._refusal(job)
        if reason is not None:
            log.info("job %s rejected: %s", untrusted(job.job_id), reason)
            await self._reject(ws, job.job_id, reason)
            return
        task = asyncio.get_running_loop().create_task(self._run_job(ws, job))
        self._running[job.job_id] = task
        task.add_done_callback(lambda _: self._running.pop(job.job_id, None))

    def _refusal(self, job: Job) -> RejectReason | None:
        """Why the job is rejected before the backend sees it, if it is."""
        tasks = self._tasks_by_model.get(job.model)
        if tasks is None:
            return "unsupported_model"
        if job.task not in tasks:
            return "bad_input"
        if len(self._running) >= self.settings.max_concurrency or self._stop.is_set():
            return "busy"
        return None

    async def _run_job(self, ws: aiohttp.ClientWebSocketResponse, job: Job) -> None:
        label = untrusted(job.job_id)
        try:
            output = await asyncio.wait_for(
                self._backend.answer(job.model, job.task, job.input), timeout=job.deadline_ms / 1000
            )
            canonical = canonical_json(output)  # an answer with no canonical form would only count as invalid
        except TimeoutError:
            log.info("job %s passed its deadline", label)
            return
        except BackendError as error:
            log.info("job %s rejected (%s): %s", label, error.reason, untrusted(str(error)))
            await self._reject(ws, job.job_id, error.reason)
            return
        except CanonicalError as error:
            log.error("job %s: the backend's answer has no canonical JSON form: %s", label, error)
            await self._reject(ws, job.job_id, "internal")
            return
        except Exception:  # a backend's bug: the orchestrator hears of it now, not at the deadline
            log.exception("job %s: the backend failed", label)
            await self._reject(ws, job.job_id, "internal")
            return
        await self._send(ws, Result(job_id=job.job_id, output=msgspec.Raw(canonical)))
        self.stats.answered += 1

    async def _reject(self, ws: aiohttp.ClientWebSocketResponse, job_id: str, reason: RejectReason) -> None:
        await self._send(ws, Reject(job_id=job_id, reason=reason))
        self.stats.rejected += 1

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: MinerMessage) -> None:
        if not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_str(encode(message))

    async def _finish_running(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=self.settings.shutdown_grace_s)
        for task in self._running.values():
            task.cancel()


def _wei(text: str) -> int | None:
    """A credit's amount: decimal digits of a uint256, or None."""
    if text.isascii() and text.isdigit() and len(text) <= MAX_WEI_DIGITS:
        return int(text)
    return None


def _check_offers(offers: list[ModelOffer], settings: MinerSettings) -> None:
    """Refuse, before connecting, an offer the orchestrator would refuse at every login."""
    if not offers and settings.models:
        raise BackendError("internal", f"models: the backend offers none of {', '.join(settings.models)}")
    if not offers:
        raise BackendError("internal", "the backend offers no model")
    try:
        decode_miner_message(encode(Status(models=offers, max_concurrency=settings.max_concurrency)).encode())
    except MessageError as error:
        raise BackendError(
            "internal", f"the backend's models cannot be offered ({error}); set `models` to those to serve"
        ) from None
