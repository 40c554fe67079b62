"""The miner agent against a real orchestrator (answering, busy, deadlines, reconnects, stopping),
and against a scripted orchestrator that sends it frames a real one would not."""

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from krewe.devchain import dev_key, free_port
from krewe.keys import SigningKey
from krewe.miner.agent import MinerAgent
from krewe.miner.config import MinerSettings
from krewe.protocol import siwe
from krewe.protocol.canonical import canonical_json
from krewe.protocol.messages import (
    Auth,
    Challenge,
    CloseCode,
    Error,
    Job,
    MinerMessage,
    ModelOffer,
    Reject,
    Result,
    Task,
    Welcome,
    decode_miner_message,
    encode,
)
from krewe.settings import SettingsError
from tests.service.conftest import MINER_KEYS, Harness, until
from tests.service.test_jobs import CHAT, post
from tests.support.scripted_miner import honest_output

ALL_TASKS: list[Task] = ["chat", "completion", "embedding"]


class ScriptedBackend:
    """An inference backend for tests (not a product part): the honest answer, after a delay."""

    def __init__(self, delay_s: float = 0.0, tasks: list[Task] = ALL_TASKS) -> None:
        self.delay_s = delay_s
        self.tasks = tasks
        self.started = 0
        self.cancelled = 0

    def offers(self) -> list[ModelOffer]:
        return [ModelOffer(id="test-model", tasks=self.tasks, engine="scripted/1")]

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]:
        self.started += 1
        try:
            await asyncio.sleep(self.delay_s)  # the backend's working time under test
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return honest_output(task, job_input)

    async def close(self) -> None:
        return None


def agent_for(url: str | list[str], index: int, backend: ScriptedBackend, **settings: Any) -> MinerAgent:
    urls = [url] if isinstance(url, str) else url
    options = {"orchestrator_url": urls, "reconnect_min_s": 0.05, "reconnect_max_s": 0.4, **settings}
    return MinerAgent(
        MinerSettings(**options),
        SigningKey.from_hex(dev_key(MINER_KEYS[index])),
        backend,
        rng=random.Random(index),
    )


@contextlib.asynccontextmanager
async def running(*agents: MinerAgent) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.ensure_future(agent.run()) for agent in agents]
    try:
        yield tasks
    finally:
        for agent in agents:
            agent.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)


async def test_agents_answer_jobs_and_hear_their_credit(harness: Harness) -> None:
    agents = [agent_for(harness.connect_url, i, ScriptedBackend()) for i in range(3)]
    async with running(*agents):
        await until(lambda: len(harness.orchestrator.pool.sessions) == 3, what="three logins")
        status, body = await post(harness, "/v1/chat/completions", CHAT)
        assert status == 200, body
        reward = harness.orchestrator.settings.reward_for("test-model")
        await until(lambda: sum(a.stats.credited_wei for a in agents) == 3 * reward, what="verdicts")
        assert all(agent.stats.agreed == 1 and agent.stats.answered == 1 for agent in agents)


async def test_more_jobs_than_max_concurrency_are_rejected_as_busy(harness: Harness) -> None:
    backend = ScriptedBackend(delay_s=0.5)
    agents = [agent_for(harness.connect_url, i, backend, max_concurrency=1) for i in range(3)]
    async with running(*agents):
        await until(lambda: len(harness.orchestrator.pool.sessions) == 3, what="three logins")
        pool = harness.orchestrator.pool
        for session in list(pool.sessions.values()):
            pool.update_offers(session, session.offers, 2)  # an orchestrator that overcommits a miner
        first, second = await asyncio.gather(
            post(harness, "/v1/chat/completions", CHAT), post(harness, "/v1/chat/completions", CHAT)
        )
        assert sorted([first[0], second[0]]) == [200, 502]  # the second job found every miner busy
        assert sum(agent.stats.rejected for agent in agents) == 3  # each miner refused its second job


async def test_a_job_past_its_deadline_is_abandoned_and_cancel_stops_work(make_harness: Any) -> None:
    harness = await make_harness(job_timeout_ms=300)
    backend = ScriptedBackend(delay_s=5)
    agents = [agent_for(harness.connect_url, i, backend) for i in range(3)]
    async with running(*agents):
        await until(lambda: len(harness.orchestrator.pool.sessions) == 3, what="three logins")
        status, body = await post(harness, "/v1/chat/completions", CHAT)
        assert (status, body["error"]["code"]) == (504, "deadline_exceeded")
        await until(lambda: backend.cancelled == 3, what="the backends to stop")
        assert all(agent.stats.answered == 0 for agent in agents)


async def test_reconnects_back_off_exponentially_with_jitter_then_reset(make_harness: Any) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/workers/connect"
    agent = agent_for(url, 0, ScriptedBackend(), healthy_session_s=0.0)
    async with running(agent):
        await until(lambda: agent.stats.reconnects >= 5, what="five failed attempts")
        bound = 0.05
        for delay in list(agent.stats.delays)[:5]:
            assert bound / 2 <= delay <= bound
            bound = min(bound * 2, 0.4)
        harness = await make_harness(port=port)
        await until(agent.connected.is_set, what="the agent to log in")
        attempts = agent.stats.reconnects
        session = harness.orchestrator.pool.sessions[agent.address]
        await session.channel.close(CloseCode.GOING_AWAY, "going_away", "the test ends the session")
        await until(lambda: agent.stats.reconnects > attempts, what="a reconnect")
        assert agent.stats.delays[-1] <= 0.05  # back to the first delay after a healthy session
        await until(agent.connected.is_set, what="the agent to log in again")


async def test_the_agent_fails_over_between_two_orchestrators_and_back(make_harness: Any) -> None:
    first, second = await make_harness(), await make_harness()
    first_port = first.orchestrator.port
    agent = agent_for([first.connect_url, second.connect_url], 0, ScriptedBackend())
    async with running(agent):
        await until(lambda: agent.address in first.orchestrator.pool.sessions, what="the login at the first")
        await first.orchestrator.stop()  # closes its miners with 1001
        await until(
            lambda: agent.address in second.orchestrator.pool.sessions, what="the login at the second"
        )
        assert agent.url == second.connect_url
        first = await make_harness(port=first_port)
        await second.orchestrator.stop()
        await until(
            lambda: agent.address in first.orchestrator.pool.sessions, what="the login at the first again"
        )
        assert (agent.url, agent.stats.failovers, agent.stats.sessions) == (first.connect_url, 2, 3)


async def test_stop_finishes_the_running_job_then_closes_normally(harness: Harness) -> None:
    backend = ScriptedBackend(delay_s=0.3)
    agents = [agent_for(harness.connect_url, i, backend) for i in range(3)]
    tasks = [asyncio.ensure_future(agent.run()) for agent in agents]
    await until(lambda: len(harness.orchestrator.pool.sessions) == 3, what="three logins")
    request = asyncio.ensure_future(post(harness, "/v1/chat/completions", CHAT))
    await until(lambda: backend.started == 3, what="the job to start on every miner")
    sessions = list(harness.orchestrator.pool.sessions.values())
    for agent in agents:
        agent.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    status, _ = await request
    assert status == 200
    assert [agent.stats.answered for agent in agents] == [1, 1, 1]
    await until(lambda: not harness.orchestrator.pool.sessions, what="the sessions to end")
    # closed normally by the miners
    assert [session.channel.ws.close_code for session in sessions] == [CloseCode.NORMAL] * 3


def test_miner_settings_refuse_bad_values() -> None:
    with pytest.raises(SettingsError, match="backend"):
        MinerSettings(backend="gpu")
    with pytest.raises(SettingsError, match="orchestrator_url"):
        MinerSettings(orchestrator_url=["http://x"])
    with pytest.raises(SettingsError, match="max_concurrency: at most 1024"):
        MinerSettings(max_concurrency=1025)
    with pytest.raises(SettingsError, match="tasks"):
        MinerSettings(tasks=["chat", "translate"])
    with pytest.raises(SettingsError, match="tasks"):
        MinerSettings(tasks=[])
    with pytest.raises(SettingsError, match="engine"):
        MinerSettings(engine="vllm\n0.6")
    with pytest.raises(SettingsError, match="engine"):
        MinerSettings(engine="x" * 201)


ISSUED_AT = datetime(2030, 1, 1, tzinfo=UTC)
LOGIN_TIME = ISSUED_AT + timedelta(seconds=1)


class ScriptedOrchestrator:
    """An orchestrator for tests (not a product part) on 127.0.0.1 that speaks protocol 2: a
    challenge, a check of the auth's shape and of its EIP-4361 login, then what the test's
    `script` does with the connection."""

    def __init__(self, script: Callable[["ScriptedOrchestrator", web.WebSocketResponse], Awaitable[None]]):
        self.script = script
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/v1/workers/connect"
        self.issued = siwe.Challenge(
            domain=f"127.0.0.1:{self.port}",
            uri=self.url,
            chain_id=31337,
            nonce="a1b2c3d4e5f6a1b2c3d4e5f6",
            issued_at=ISSUED_AT,
            expiration_time=ISSUED_AT + timedelta(minutes=5),
        )
        self.challenge = Challenge(
            domain=self.issued.domain,
            uri=self.issued.uri,
            chain_id=self.issued.chain_id,
            nonce=self.issued.nonce,
            issued_at=siwe.format_time(self.issued.issued_at),
            expiration_time=siwe.format_time(self.issued.expiration_time),
            statement=self.issued.statement,
            version=self.issued.version,
        )
        self.auths: list[Auth] = []
        self.signers: list[str] = []
        self.replies: list[MinerMessage] = []

    async def connect(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(encode(self.challenge))
        frame = await ws.receive(timeout=10)
        if frame.type is not WSMsgType.TEXT:
            return ws
        auth = decode_miner_message(frame.data.encode())
        assert isinstance(auth, Auth)
        self.auths.append(auth)
        try:
            signer = siwe.verify(auth.message, auth.signature, expected=self.issued, now=LOGIN_TIME)
        except siwe.SiweError as error:
            await ws.send_str(encode(Error(code="auth_failed", message=str(error))))
            await ws.close(code=4401)
            return ws
        self.signers.append(signer)
        await self.script(self, ws)
        return ws

    async def welcome_then_record(self, ws: web.WebSocketResponse, frames: list[str | bytes]) -> None:
        """Welcome the miner, send `frames`, and record what it sends until it closes."""
        await ws.send_str(
            encode(Welcome(worker=self.signers[-1], session="s1", heartbeat_s=10, max_frame_bytes=1 << 20))
        )
        for frame in frames:
            await (ws.send_str(frame) if isinstance(frame, str) else ws.send_bytes(frame))
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                self.replies.append(decode_miner_message(message.data.encode()))


@contextlib.asynccontextmanager
async def serving(orchestrator: ScriptedOrchestrator) -> AsyncIterator[ScriptedOrchestrator]:
    app = web.Application()
    app.router.add_get("/v1/workers/connect", orchestrator.connect)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", orchestrator.port).start()
    try:
        yield orchestrator
    finally:
        await runner.cleanup()


def job(job_id: str, model: str = "test-model", task: Task = "chat") -> str:
    return encode(Job(job_id=job_id, model=model, task=task, input=CHAT, deadline_ms=5000))


MALFORMED = [
    "{not json\n\x1b[31mERROR forged log line",
    '{"type": "gossip\\n\\u001b[31m", "job_id": "x"}',  # an unknown type
    '{"type":\n"job", "model": "test-model", "task": "chat", "input": {}, "deadline_ms": 100}',  # no job_id
    '{"type": "job", "job_id": "j0", "model": "m", "task": "chat", "input": {}, "deadline_ms": "soon"}',
    '{"type": "verdict", "job_id": "j0", "agreed": true, "credit": "12\\nwei"}',
    encode(Welcome(worker="0x0", session="again", heartbeat_s=10, max_frame_bytes=1 << 20)),
    b"\x00binary\n",
]


async def test_the_agent_survives_malformed_frames_and_refuses_jobs_it_did_not_offer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="krewe.miner.agent")
    frames: list[str | bytes] = [
        *MALFORMED,
        '{"type": "cancel", "job_id": "never-sent"}',  # crossed an answer: ignored, not malformed
        job("j1", model="other-model"),
        job("j2", task="embedding"),
        job("j3"),
    ]
    backend = ScriptedBackend(tasks=["chat", "completion"])

    async def script(orchestrator: ScriptedOrchestrator, ws: web.WebSocketResponse) -> None:
        await orchestrator.welcome_then_record(ws, frames)

    async with serving(ScriptedOrchestrator(script)) as orchestrator:
        agent = agent_for(orchestrator.url, 0, backend)
        async with running(agent):
            await until(lambda: any(isinstance(r, Result) for r in orchestrator.replies), what="the answer")
        [auth] = orchestrator.auths
        assert orchestrator.signers == [agent.address]  # a standard EIP-4361 login, verified
        assert auth.models == [ModelOffer(id="test-model", tasks=["chat", "completion"], engine="scripted/1")]
        assert (auth.max_concurrency, auth.agent.startswith("krewe-miner/")) == (4, True)
    assert orchestrator.replies[:2] == [
        Reject(job_id="j1", reason="unsupported_model"),
        Reject(job_id="j2", reason="bad_input"),
    ]
    [result] = orchestrator.replies[2:]
    assert isinstance(result, Result) and result.job_id == "j3"
    assert bytes(result.output) == canonical_json(honest_output("chat", CHAT))
    assert backend.started == 1  # the refused jobs never reached the backend
    assert agent.stats.malformed_frames == len(MALFORMED)
    assert (agent.stats.jobs, agent.stats.answered, agent.stats.rejected) == (3, 1, 2)
    lines = [record.getMessage() for record in caplog.records]
    assert sum("ignored a frame from the orchestrator" in line for line in lines) == len(MALFORMED)
    assert not [line for line in lines if "\n" in line or "\x1b" in line]


async def test_a_refused_login_ignores_frames_after_the_error_and_reconnects() -> None:
    async def refuse(orchestrator: ScriptedOrchestrator, ws: web.WebSocketResponse) -> None:
        await ws.send_str(encode(Error(code="auth_failed", message="bad\nsignature")))
        await ws.send_str(job("late"))
        await ws.close(code=4401)

    async with serving(ScriptedOrchestrator(refuse)) as orchestrator:
        # a long first delay: the test stops the agent before it tries again
        agent = agent_for(orchestrator.url, 0, ScriptedBackend(), reconnect_min_s=20, reconnect_max_s=20)
        async with running(agent):
            await until(lambda: agent.stats.reconnects == 1, what="the agent to give up the session")
    assert orchestrator.signers == [agent.address]
    assert (agent.stats.sessions, agent.stats.malformed_frames, agent.stats.jobs) == (0, 1, 0)
    assert agent.stats.last_close_code == 4401


async def test_a_challenge_that_makes_no_login_message_ends_the_session() -> None:
    async def welcome(orchestrator: ScriptedOrchestrator, ws: web.WebSocketResponse) -> None:
        await orchestrator.welcome_then_record(ws, [])

    orchestrator = ScriptedOrchestrator(welcome)
    orchestrator.challenge.issued_at = "yesterday"
    async with serving(orchestrator):
        agent = agent_for(orchestrator.url, 0, ScriptedBackend(), reconnect_min_s=20, reconnect_max_s=20)
        async with running(agent):
            await until(lambda: agent.stats.reconnects == 1, what="the agent to give up the session")
    assert (orchestrator.auths, agent.stats.malformed_frames) == ([], 1)


class BrokenBackend(ScriptedBackend):
    """A backend for tests (not a product part) with a bug: every answer raises."""

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("a bug in the backend")


async def test_a_backend_that_raises_is_reported_as_internal_and_the_session_goes_on() -> None:
    async def script(orchestrator: ScriptedOrchestrator, ws: web.WebSocketResponse) -> None:
        await orchestrator.welcome_then_record(ws, [job("j1"), job("j2")])

    async with serving(ScriptedOrchestrator(script)) as orchestrator:
        agent = agent_for(orchestrator.url, 0, BrokenBackend())
        async with running(agent):
            await until(lambda: len(orchestrator.replies) == 2, what="both rejects")
    assert sorted(orchestrator.replies, key=lambda reply: str(reply.job_id)) == [
        Reject(job_id="j1", reason="internal"),
        Reject(job_id="j2", reason="internal"),
    ]
    assert agent.stats.sessions == 1
