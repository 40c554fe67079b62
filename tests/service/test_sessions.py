"""Miner sessions (PROTOCOL.md §1): login, every refusal and close code, violations, heartbeats."""

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
import siwe as siwe_package

from krewe.keys import SigningKey
from krewe.miner.agent import login_message
from krewe.protocol.messages import Challenge, CloseCode
from krewe.protocol.siwe import parse_time
from tests.service.conftest import Harness, until
from tests.service.test_jobs import CHAT, post

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


async def test_login_challenge_and_welcome(harness: Harness) -> None:
    (miner,) = await harness.connected("honest")
    challenge = miner.challenge
    port = harness.url.rsplit(":", 1)[1]
    assert challenge["domain"] == f"127.0.0.1:{port}"
    assert challenge["uri"] == f"ws://127.0.0.1:{port}/v1/workers/connect"
    assert (challenge["chain_id"], challenge["version"]) == (31337, "1")
    assert challenge["statement"] == "Log in to serve inference jobs as a krewe worker."
    assert len(challenge["nonce"]) >= 24 and challenge["nonce"].isalnum()  # at least 96 random bits
    issued, expires = parse_time(challenge["issued_at"]), parse_time(challenge["expiration_time"])
    assert (expires - issued).total_seconds() == harness.orchestrator.settings.auth_timeout_s
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", challenge["issued_at"])
    assert miner.welcome == {
        "type": "welcome",
        "worker": miner.address,
        "session": miner.welcome["session"] if miner.welcome else None,
        "heartbeat_s": 10,
        "max_frame_bytes": harness.orchestrator.settings.max_frame_bytes,
        "protocol": 2,
    }


async def test_a_login_built_with_the_siwe_package_logs_in(harness: Harness) -> None:
    miner = await harness.miner(0).__aenter__()

    def with_siwe_package(_genuine: str) -> str:
        fields = miner.challenge
        text: str = siwe_package.SiweMessage(
            domain=fields["domain"],
            address=miner.address,
            statement=fields["statement"],
            uri=fields["uri"],
            version=fields["version"],
            chain_id=fields["chain_id"],
            nonce=fields["nonce"],
            issued_at=fields["issued_at"],
            expiration_time=fields["expiration_time"],
        ).prepare_message()
        return text

    reply = await miner.connect(message=with_siwe_package)
    assert reply["type"] == "welcome", reply


def _high_s(signature: str) -> str:
    """The same signature with s mirrored to the upper half of the curve order (and v flipped)."""
    raw = bytes.fromhex(signature[2:])
    s_value, v = int.from_bytes(raw[32:64], "big"), raw[64]
    return "0x" + (raw[:32] + (SECP256K1_N - s_value).to_bytes(32, "big") + bytes([55 - v])).hex()


TAMPERED = {
    "domain": lambda text: text.replace("127.0.0.1:", "127.0.0.2:", 1),
    "uri": lambda text: text.replace("/v1/workers/connect", "/v1/workers/connect2"),
    "chain_id": lambda text: text.replace("Chain ID: 31337", "Chain ID: 1"),
    "nonce": lambda text: re.sub(r"Nonce: (\w)", lambda m: "Nonce: " + ("b" if m[1] == "a" else "a"), text),
    "issued_at": lambda text: re.sub(
        r"(Issued At: .*)\.(\d)", lambda m: f"{m[1]}.{(int(m[2]) + 1) % 10}", text
    ),
    "expiration": lambda text: re.sub(
        r"(Expiration Time: .*)\.(\d)", lambda m: f"{m[1]}.{(int(m[2]) + 1) % 10}", text
    ),
    "statement": lambda text: text.replace("krewe worker.", "krewe worker!"),
    "version": lambda text: text.replace("Version: 1", "Version: 2"),
}


@pytest.mark.parametrize("field", sorted(TAMPERED))
async def test_a_login_with_any_field_changed_is_refused_with_4401(harness: Harness, field: str) -> None:
    miner = await harness.miner(0).__aenter__()
    reply = await miner.connect(message=TAMPERED[field])
    assert miner.auth["message"] != login_message(msgspec.convert(miner.challenge, Challenge), miner.address)
    assert (reply["type"], reply["code"], miner.close_code) == ("error", "auth_failed", CloseCode.AUTH_FAILED)


@pytest.mark.parametrize(("late_ms", "accepted"), [(-1, True), (0, False), (1, False)])
async def test_expiry_is_checked_to_the_millisecond(harness: Harness, late_ms: int, accepted: bool) -> None:
    issued = datetime(2026, 11, 27, 12, 0, 0, 123_000, tzinfo=UTC)
    expires = issued + timedelta(seconds=harness.orchestrator.settings.auth_timeout_s)
    moments = iter([issued, expires + timedelta(milliseconds=late_ms)])
    harness.orchestrator.endpoint._wall_clock = lambda: next(moments)
    miner = await harness.miner(0).__aenter__()
    reply = await miner.connect()
    assert (reply["type"] == "welcome") is accepted, reply
    if not accepted:
        assert reply["code"] == "auth_failed" and "expired" in reply["message"]


@pytest.mark.parametrize(
    ("forge", "code", "close"),
    [
        ("another_address", "auth_failed", CloseCode.AUTH_FAILED),
        ("reused_nonce", "auth_failed", CloseCode.AUTH_FAILED),
        ("high_s", "auth_failed", CloseCode.AUTH_FAILED),
        ("garbage_signature", "auth_failed", CloseCode.AUTH_FAILED),
        ("unregistered", "not_registered", CloseCode.NOT_REGISTERED),
        ("malformed", "bad_message", CloseCode.BAD_MESSAGE),
        ("unknown_type", "bad_message", CloseCode.BAD_MESSAGE),
        ("no_models", "bad_message", CloseCode.BAD_MESSAGE),
        ("protocol_1_models", "bad_message", CloseCode.BAD_MESSAGE),
        ("huge_max_concurrency", "bad_message", CloseCode.BAD_MESSAGE),
    ],
)
async def test_refused_logins(harness: Harness, forge: str, code: str, close: int) -> None:
    miner = await harness.miner(-1 if forge == "unregistered" else 0).__aenter__()
    if forge == "another_address":  # miner 1's address in the message, signed with miner 0's key
        reply = await miner.connect(address=harness.miner(1).address)
    elif forge == "reused_nonce":  # a message and signature made for an earlier connection's challenge
        earlier = await harness.miner(0).__aenter__()
        await earlier.connect()
        old = earlier.auth
        reply = await miner.connect(message=old["message"], signature=old["signature"])
    elif forge == "high_s":
        sign = SigningKey.from_hex(miner.key).sign_message
        reply = await miner.connect(signature=lambda text: _high_s(sign(text)))
    elif forge == "garbage_signature":
        reply = await miner.connect(signature="0x1234")
    elif forge == "malformed":
        reply = await miner.connect(auth={"type": "auth", "message": 5})
    elif forge == "unknown_type":
        reply = await miner.connect(auth={"type": "hello"})
    elif forge == "no_models":
        miner.models = []
        reply = await miner.connect()
    elif forge == "protocol_1_models":
        reply = await miner.connect(auth=lambda frame: frame | {"models": ["test-model"]})
    elif forge == "huge_max_concurrency":
        reply = await miner.connect(auth=lambda frame: frame | {"max_concurrency": 2**64 - 1})
    else:
        reply = await miner.connect()
    assert reply["type"] == "error" and reply["code"] == code, reply
    assert reply["message"]
    if forge == "protocol_1_models":
        assert "protocol 1" in reply["message"]
    assert miner.close_code == close


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
    offer = {"id": "other-model", "tasks": ["embedding"], "engine": "scripted/2"}
    await miner.send({"type": "status", "models": [offer], "max_concurrency": 2})
    session = harness.orchestrator.pool.sessions[miner.address]
    await until(lambda: session.offers[0].id == "other-model", what="the status to apply")
    assert session.max_concurrency == 2
    assert harness.orchestrator.pool.models() == {"other-model": ["embedding"]}
    await miner.send({"type": "status", "models": ["test-model"], "max_concurrency": 2})
    await until(lambda: bool(miner.messages("error")), what="the protocol-1 status to be refused")
    assert "protocol 1" in miner.messages("error")[-1]["message"]


async def test_a_miner_that_stops_answering_pings_is_disconnected(make_harness: Any) -> None:
    harness = await make_harness(heartbeat_s=0.1, heartbeat_misses=2)
    quiet = await harness.miner(0, autopong=False).__aenter__()
    assert (await quiet.connect())["type"] == "welcome"
    lively = await harness.miner(1).__aenter__()
    assert (await lively.connect())["type"] == "welcome"
    await until(lambda: quiet.close_code is not None, what="the silent miner to be closed")
    assert quiet.close_code == CloseCode.HEARTBEAT_TIMEOUT
    assert lively.address in harness.orchestrator.pool.sessions
