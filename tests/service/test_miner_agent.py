"""The miner agent against a real orchestrator: answering, busy, deadlines, reconnects, stopping."""

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from krewe.devchain import dev_key, free_port
from krewe.keys import SigningKey
from krewe.miner.agent import MinerAgent
from krewe.miner.config import MinerSettings
from krewe.settings import SettingsError
from tests.service.conftest import MINER_KEYS, Harness, until
from tests.service.test_jobs import CHAT, post
from tests.support.scripted_miner import honest_output


class ScriptedBackend:
    """An inference backend for tests (not a product part): the honest answer, after a delay."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.started = 0
        self.cancelled = 0

    def models(self) -> list[str]:
        return ["test-model"]

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


def agent_for(url: str, index: int, backend: ScriptedBackend, **settings: Any) -> MinerAgent:
    options = {"orchestrator_url": url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.4, **settings}
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
        await until(lambda: len(harness.orchestrator.workers.sessions) == 3, what="three logins")
        status, body = await post(harness, "/v1/chat/completions", CHAT)
        assert status == 200, body
        reward = harness.orchestrator.settings.reward_wei
        await until(lambda: sum(a.stats.credited_wei for a in agents) == 3 * reward, what="verdicts")
        assert all(agent.stats.agreed == 1 and agent.stats.answered == 1 for agent in agents)


async def test_more_jobs_than_max_concurrency_are_rejected_as_busy(harness: Harness) -> None:
    backend = ScriptedBackend(delay_s=0.5)
    agents = [agent_for(harness.connect_url, i, backend, max_concurrency=1) for i in range(3)]
    async with running(*agents):
        await until(lambda: len(harness.orchestrator.workers.sessions) == 3, what="three logins")
        for session in harness.orchestrator.workers.sessions.values():
            session.max_concurrency = 2  # an orchestrator that overcommits a miner
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
        await until(lambda: len(harness.orchestrator.workers.sessions) == 3, what="three logins")
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
        session = harness.orchestrator.workers.sessions[agent.address]
        await session.ws.close()
        await until(lambda: agent.stats.reconnects > attempts, what="a reconnect")
        assert agent.stats.delays[-1] <= 0.05  # back to the first delay after a healthy session
        await until(agent.connected.is_set, what="the agent to log in again")


async def test_stop_finishes_the_running_job_then_closes_normally(harness: Harness) -> None:
    backend = ScriptedBackend(delay_s=0.3)
    agents = [agent_for(harness.connect_url, i, backend) for i in range(3)]
    tasks = [asyncio.ensure_future(agent.run()) for agent in agents]
    await until(lambda: len(harness.orchestrator.workers.sessions) == 3, what="three logins")
    request = asyncio.ensure_future(post(harness, "/v1/chat/completions", CHAT))
    await until(lambda: backend.started == 3, what="the job to start on every miner")
    sessions = list(harness.orchestrator.workers.sessions.values())
    for agent in agents:
        agent.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    status, _ = await request
    assert status == 200
    assert [agent.stats.answered for agent in agents] == [1, 1, 1]
    await until(lambda: not harness.orchestrator.workers.sessions, what="the sessions to end")
    assert [session.ws.close_code for session in sessions] == [1000] * 3  # closed normally by the miners


def test_miner_settings_refuse_bad_values() -> None:
    with pytest.raises(SettingsError, match="backend"):
        MinerSettings(backend="gpu")
    with pytest.raises(SettingsError, match="orchestrator_url"):
        MinerSettings(orchestrator_url="http://x")
