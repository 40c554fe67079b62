"""Jobs end to end: real miners' WebSockets, real HTTP, the ledger, and settlement on anvil."""

from typing import Any

import aiohttp

from krewe.protocol.canonical import digest
from tests.service.conftest import Harness, until
from tests.support.scripted_miner import honest_output

CHAT = {"model": "test-model", "messages": [{"role": "user", "content": "hello"}]}


async def post(harness: Harness, path: str, body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(harness.url + path, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def get(harness: Harness, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(harness.url + path) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def test_an_honest_majority_wins_and_the_liar_gets_no_credit_and_a_lower_score(
    harness: Harness,
) -> None:
    honest1, honest2, liar = await harness.connected("honest", "honest", "liar")
    status, body = await post(harness, "/v1/chat/completions", CHAT)
    assert status == 200, body
    expected = honest_output("chat", CHAT)
    assert body["choices"] == expected["choices"]
    assert body["krewe"]["verdict"] == "agreed"
    assert body["krewe"]["digest"] == digest(expected)
    assert (body["krewe"]["agreeing"], body["krewe"]["replicas"]) == (2, 3)
    job_id = body["krewe"]["job_id"]
    await until(lambda: all(m.messages("verdict") for m in (honest1, honest2, liar)), what="verdicts")
    reward = harness.orchestrator.settings.reward_for("test-model")
    assert honest1.messages("verdict")[0] == {
        "type": "verdict",
        "job_id": job_id,
        "agreed": True,
        "credit": str(reward),
    }
    assert liar.messages("verdict")[0] == {
        "type": "verdict",
        "job_id": job_id,
        "agreed": False,
        "credit": "0",
    }
    pending = await harness.orchestrator.ledger.pending()
    assert pending == {honest1.address: reward, honest2.address: reward}
    scores = harness.orchestrator.pool.scores
    assert scores[honest1.address].quality > scores[liar.address].quality
    status, record = await get(harness, f"/v1/jobs/{job_id}")
    assert status == 200 and record["final"] and record["verdict"] == "agreed"
    assert record["credits"] == {honest1.address: str(reward), honest2.address: str(reward)}
    answers = {w["worker"]: w for w in record["workers"]}
    assert answers[liar.address]["digest"] != record["digest"]
    assert all(w["latency_ms"] is not None for w in record["workers"])


async def test_no_consensus_credits_nobody_and_redispatches(make_harness: Any) -> None:
    harness = await make_harness(redispatch_max=1)
    miners = await harness.connected("random", "random", "random", "random")  # every answer differs
    status, body = await post(harness, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT})
    assert status == 200
    assert body["verdict"] == "no_consensus"
    assert len(body["workers"]) == 4  # the three first drawn, then one more miner
    await until(lambda: sum(len(m.messages("verdict")) for m in miners) == 4, what="verdicts")
    assert all(v["credit"] == "0" and not v["agreed"] for m in miners for v in m.messages("verdict"))
    assert await harness.orchestrator.ledger.pending() == {}
    scores = harness.orchestrator.pool.scores
    assert all(m.address not in scores for m in miners)  # nobody penalised for disagreeing
    status, body = await post(harness, "/v1/chat/completions", CHAT)
    assert (status, body["error"]["code"]) == (502, "no_consensus")


async def test_a_deadline_without_verdict_gives_504(make_harness: Any) -> None:
    harness = await make_harness(job_timeout_ms=300)
    await harness.connected("silent", "silent", "silent")
    status, body = await post(
        harness, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT, "timeout_ms": 300}
    )
    assert status == 200 and body["verdict"] == "no_consensus" and body["deadline_exceeded"]
    status, body = await post(harness, "/v1/chat/completions", CHAT)
    assert status == 504, body
    assert body["error"]["code"] == "deadline_exceeded"


async def test_a_miner_that_disconnects_mid_job_counts_as_no_response(harness: Harness) -> None:
    gone, _, _ = await harness.connected("disconnect", "honest", "honest")
    status, body = await post(harness, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT})
    assert status == 200 and body["verdict"] == "agreed"
    await until(lambda: harness.orchestrator.router.idle, what="the job to finish")
    record = await harness.orchestrator.records.get(body["job_id"])
    assert record is not None
    answer = {w["worker"]: w for w in record["workers"]}[gone.address]
    assert (answer["answer"], answer["reason"]) == ("timeout", "disconnected")
    assert gone.address not in record["credits"]
    assert gone.address not in harness.orchestrator.pool.sessions


async def test_the_loop_lag_monitor_is_woken_when_a_job_opens_while_none_is(
    harness: Harness, monkeypatch: Any
) -> None:
    await harness.connected("honest", "honest", "honest")
    router = harness.orchestrator.router
    assert router._on_first_job == harness.orchestrator.loop_lag.wake
    woken: list[int] = []  # the jobs open at each wake
    monkeypatch.setattr(router, "_on_first_job", lambda: woken.append(router.jobs))
    for _ in range(2):
        status, body = await post(harness, "/v1/chat/completions", CHAT)
        assert status == 200, body
    assert woken == [1, 1]  # one wake per job here: each opened while none was
