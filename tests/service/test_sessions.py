"""Miner sessions (PROTOCOL.md §1): login, every refusal and close code, violations, heartbeats."""

import asyncio
from typing import Any

import pytest

from krewe.keys import SigningKey
from krewe.protocol.messages import CloseCode
from tests.service.conftest import Harness, until
from tests.service.test_jobs import CHAT, post


async def test_login_challenge_and_welcome(harness: Harness) -> None:
    (miner,) = await harness.connected("honest")
    message = miner.challenge["message"]
    port = harness.url.rsplit(":", 1)[1]
    assert message.startswith(f"127.0.0.1:{port} wants you to sign in with your Ethereum account.")
    assert f"URI: ws://127.0.0.1:{port}/v1/workers/connect" in message
    assert "Chain ID: 31337" in message and "Version: 1" in message
    nonce = next(line for line in message.splitlines() if line.startswith("Nonce: ")).split()[1]
    assert len(nonce) >= 24  # at least 96 random bits
    assert f"Expiration Time: {miner.challenge['expires_at']}" in message
    assert miner.welcome is not None
    assert miner.welcome["worker"] == miner.address
    assert miner.welcome["heartbeat_s"] == harness.orchestrator.settings.heartbeat_s
    assert miner.welcome["max_frame_bytes"] == harness.orchestrator.settings.max_frame_bytes


@pytest.mark.parametrize(
    ("forge", "code", "close"),
    [
        ("another_address", "auth_failed", CloseCode.AUTH_FAILED),
        ("replayed", "auth_failed", CloseCode.AUTH_FAILED),
        ("garbage_signature", "auth_failed", CloseCode.AUTH_FAILED),
        ("unregistered", "not_registered", CloseCode.NOT_REGISTERED),
        ("malformed", "bad_message", CloseCode.BAD_MESSAGE),
        ("unknown_type", "bad_message", CloseCode.BAD_MESSAGE),
        ("no_models", "bad_message", CloseCode.BAD_MESSAGE),
    ],
)
async def test_refused_logins(harness: Harness, forge: str, code: str, close: int) -> None:
    miner = await harness.miner(-1 if forge == "unregistered" else 0).__aenter__()
    other = harness.miner(1)
    if forge == "another_address":  # signed by miner 1, claiming miner 0's address
        first = await harness.miner(2).__aenter__()
        await first.connect()
        reply = await _connect_signing_with(miner, other.key)
    elif forge == "replayed":  # a signature from an earlier connection's challenge
        earlier = await harness.miner(0).__aenter__()
        await earlier.connect()
        old_signature = SigningKey.from_hex(miner.key).sign_message(earlier.challenge["message"])
        reply = await miner.connect(signature=old_signature)
    elif forge == "garbage_signature":
        reply = await miner.connect(signature="0x1234")
    elif forge == "malformed":
        reply = await miner.connect(auth={"type": "auth", "address": 5})
    elif forge == "unknown_type":
        reply = await miner.connect(auth={"type": "hello"})
    elif forge == "no_models":
        miner.models = []
        reply = await miner.connect()
    else:
        reply = await miner.connect()
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert reply["message"]
    assert miner.close_code == close


async def _connect_signing_with(miner: Any, key: str) -> dict[str, Any]:
    real_key, miner.key = miner.key, key
    try:
        result: dict[str, Any] = await miner.connect()
        return result
    finally:
        miner.key = real_key


async def test_no_auth_in_time_closes_with_4408(make_harness: Any) -> None:
    harness = await make_harness(auth_timeout_s=0.3)
    miner = await harness.miner(0).__aenter__()
    miner.ws = await miner.http.ws_connect(harness.connect_url)
    await miner.ws.receive_json(timeout=5)  # the challenge, left unanswered until it expires
    error = await miner.ws.receive_json(timeout=5)
    assert error == {"type": "error", "code": "auth_timeout", "message": "no auth within 0.3 s"}
    await miner._wait_closed()
    assert miner.close_code == CloseCode.AUTH_TIMEOUT


async def test_a_second_login_supersedes_the_first_and_its_jobs_count_as_no_response(
    harness: Harness,
) -> None:
    first, _, _ = await harness.connected("silent", "honest", "honest")
    task = asyncio.ensure_future(harness.orchestrator.router.submit("test-model", "chat", CHAT))
    await until(lambda: bool(first.jobs), what="the job to reach the first session")
    again = await harness.miner(0).__aenter__()
    assert (await again.connect())["type"] == "welcome"
    await until(lambda: first.close_code is not None, what="the old session to close")
    assert first.close_code == CloseCode.SUPERSEDED
    assert first.messages("error")[-1]["code"] == "superseded"
    decision = await asyncio.wait_for(task, timeout=10)
    assert decision.verdict.outcome.value == "agreed"
    await until(lambda: first.address in harness.orchestrator.pool.scores, what="scores")
    record = await harness.orchestrator.records.get(decision.record["job_id"])
    assert record is not None
    answers = {w["worker"]: w for w in record["workers"]}
    assert answers[first.address]["answer"] == "timeout"
    assert harness.orchestrator.pool.sessions[first.address] is not None  # the new session serves


async def test_violations_after_login_are_counted_then_close_with_4429(make_harness: Any) -> None:
    harness = await make_harness(max_violations=3)
    (miner,) = await harness.connected("honest")
    await miner.send("{not json")
    await until(lambda: bool(miner.messages("error")), what="an error reply")
    assert miner.messages("error")[0]["code"] == "bad_message"
    await miner.send({"type": "gossip"})
    await miner.send(
        {"type": "auth", "address": miner.address, "signature": "0x", "models": ["m"], "max_concurrency": 1}
    )
    await until(lambda: miner.close_code is not None, what="the session to close")
    assert miner.close_code == CloseCode.TOO_MANY_VIOLATIONS
    assert miner.messages("error")[-1]["code"] == "too_many_violations"


async def test_an_oversized_frame_closes_with_1009(harness: Harness) -> None:
    await harness.connected("honest", "honest")
    big = await harness.miner(2, "oversized").__aenter__()
    assert (await big.connect())["type"] == "welcome"
    status, _ = await post(harness, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT})
    assert status == 200
    await until(lambda: big.close_code is not None, what="the oversized sender to be closed")
    assert big.close_code == CloseCode.MESSAGE_TOO_BIG


async def test_a_different_second_result_is_a_violation_and_the_first_answer_counts(harness: Harness) -> None:
    double, _, _ = await harness.connected("double", "honest", "honest")
    status, body = await post(harness, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT})
    assert status == 200 and body["verdict"] == "agreed"
    session = harness.orchestrator.pool.sessions[double.address]
    await until(lambda: session.violations == 1, what="the violation to be counted")
    await until(lambda: bool(double.messages("verdict")), what="the verdict")
    assert double.messages("verdict")[0]["agreed"] is True


async def test_a_result_for_a_job_not_given_is_ignored(harness: Harness) -> None:
    foreign, _, _ = await harness.connected("foreign", "honest", "honest")
    status, body = await post(harness, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT})
    assert status == 200 and body["verdict"] == "agreed"
    assert harness.orchestrator.pool.sessions[foreign.address].violations == 0
    assert await harness.orchestrator.records.get("not-my-job") is None


async def test_output_that_is_not_strict_json_is_an_invalid_result(harness: Harness) -> None:
    nan, _, _ = await harness.connected("nan", "honest", "honest")
    status, body = await post(harness, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT})
    assert status == 200 and body["verdict"] == "agreed"
    await until(lambda: nan.address in harness.orchestrator.pool.scores, what="scores")
    record = await harness.orchestrator.records.get(body["job_id"])
    assert record is not None
    assert {w["worker"]: w["answer"] for w in record["workers"]}[nan.address] == "invalid"
    scores = harness.orchestrator.pool.scores
    assert scores[nan.address].quality < harness.orchestrator.pool.scoring.prior


async def test_status_replaces_what_a_miner_serves(harness: Harness) -> None:
    (miner,) = await harness.connected("honest")
    await miner.send({"type": "status", "models": ["other-model"], "max_concurrency": 2})
    session = harness.orchestrator.pool.sessions[miner.address]
    await until(lambda: session.models == {"other-model"}, what="the status to apply")
    assert session.max_concurrency == 2


async def test_a_miner_that_stops_answering_pings_is_disconnected(make_harness: Any) -> None:
    harness = await make_harness(heartbeat_s=0.1, heartbeat_misses=2)
    quiet = await harness.miner(0, autopong=False).__aenter__()
    assert (await quiet.connect())["type"] == "welcome"
    lively = await harness.miner(1).__aenter__()
    assert (await lively.connect())["type"] == "welcome"
    await until(lambda: quiet.close_code is not None, what="the silent miner to be closed")
    assert quiet.close_code == CloseCode.HEARTBEAT_TIMEOUT
    assert lively.address in harness.orchestrator.pool.sessions
