"""Who is credited, and when: at the verdict, never dropped, never farmed (real sockets, anvil)."""

import asyncio
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from krewe.devchain import transact
from krewe.orchestrator.ledger import Credit, RewardLedger, SQLiteLedgerStore
from krewe.protocol.messages import CloseCode, ModelOffer
from tests.service.conftest import Chain, Harness, until
from tests.service.test_jobs import CHAT, get, post


@pytest.fixture
def chain_snapshot(chain: Chain) -> Iterator[Chain]:
    """The chain as it is now, restored after the test (which may change registrations)."""
    w3 = chain.anvil.web3()
    snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield chain
    w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]


async def test_winners_are_credited_at_the_verdict_not_when_the_last_replica_answers(
    harness: Harness,
) -> None:
    honest1, honest2, _silent = await harness.connected("honest", "honest", "silent")
    status, body = await post(harness, "/v1/chat/completions", CHAT)  # the deadline is 30 s away
    assert status == 200 and body["krewe"]["creditable"] is True
    reward = harness.orchestrator.settings.reward_for("test-model")
    await until(
        lambda: len(honest1.messages("verdict")) == len(honest2.messages("verdict")) == 1,
        timeout_s=5,
        what="the winners' verdicts, long before the deadline",
    )
    assert await harness.orchestrator.ledger.pending() == {honest1.address: reward, honest2.address: reward}
    assert harness.orchestrator.router.jobs == 1  # still collecting the silent replica


async def test_the_caller_is_told_only_of_winners_already_credited_not_of_a_straggler_in_writing(
    harness: Harness,
) -> None:
    await harness.connected("honest", "honest", "honest")
    service = harness.orchestrator.ledger
    real_credit_many = service.credit_many
    written: list[list[str]] = []
    hurried: list[bool] = []
    gates = [asyncio.Event(), asyncio.Event()]

    async def write(credits: Sequence[Credit], hurry: bool) -> list[bool]:
        await asyncio.wait_for(gates[min(len(written), 1)].wait(), timeout=10)  # bounded
        written.append([credit.worker for credit in credits])
        hurried.append(hurry)
        return await real_credit_many(credits, hurry=hurry)

    def held(credits: Sequence[Credit], *, hurry: bool = True) -> "asyncio.Future[list[bool]]":
        return asyncio.ensure_future(write(credits, hurry))

    service.credit_many = held  # type: ignore[method-assign]
    job = {"model": "test-model", "task": "chat", "input": {"messages": CHAT["messages"]}}
    answer = asyncio.ensure_future(post(harness, "/v1/jobs", job))
    router = harness.orchestrator.router
    # all three answers are in while the winners' credit is still being written
    await until(lambda: router.jobs == 0, what="the third answer")
    gates[0].set()
    status, body = await asyncio.wait_for(answer, timeout=10)
    assert status == 200 and len(body["agreeing"]) == 2
    assert set(body["credits"]) == set(body["agreeing"]) == set(written[0])
    gates[1].set()
    await until(lambda: router.idle, what="the straggler's credit")
    reward = harness.orchestrator.settings.reward_for("test-model")
    assert len(written) == 2 and await service.pending() == dict.fromkeys(written[0] + written[1], reward)
    assert hurried == [True, False]  # the caller waits for the winners' credit, nobody for the straggler's


async def test_a_credit_that_cannot_be_written_is_retried_and_new_jobs_wait(harness: Harness) -> None:
    honest1, honest2, honest3 = await harness.connected("honest", "honest", "honest")
    service = harness.orchestrator.ledger
    ledger = service._ledger  # the RewardLedger behind the service
    healed = threading.Event()
    real_credit_many = ledger.credit_many

    def failing_until_healed(credits: list[Credit]) -> list[bool]:
        if not healed.is_set():
            raise sqlite3.OperationalError("disk I/O error")
        return real_credit_many(credits)

    ledger.credit_many = failing_until_healed  # type: ignore[method-assign]
    first = asyncio.ensure_future(post(harness, "/v1/chat/completions", CHAT))
    router = harness.orchestrator.router
    await until(lambda: not router.ledger_writable, what="the failed credit to be noticed")
    status, refused = await post(harness, "/v1/chat/completions", CHAT)
    assert (status, refused["error"]["code"]) == (503, "ledger_unavailable")
    status, ready = await get(harness, "/readyz")
    assert status == 503 and ready["checks"]["ledger"] is False
    assert not first.done()  # neither the caller nor a miner hears of a credit before it is written
    assert not any(m.messages("verdict") for m in (honest1, honest2, honest3))
    healed.set()
    status, body = await asyncio.wait_for(first, timeout=10)
    assert status == 200 and body["krewe"]["verdict"] == "agreed"
    await until(lambda: router.ledger_writable, what="the credit to be written at last")
    await until(lambda: router.idle, what="the job to finish")
    reward = harness.orchestrator.settings.reward_for("test-model")
    job = await harness.orchestrator.records.get(body["krewe"]["job_id"])
    assert job is not None
    assert await service.pending() == {worker: reward for worker in job["agreeing"]}
    assert (await post(harness, "/v1/chat/completions", CHAT))[0] == 200


async def test_a_client_cannot_lower_replicas_or_threshold_and_still_credit(harness: Harness) -> None:
    await harness.connected("honest", "honest", "honest")
    job = {"model": "test-model", "task": "chat", "input": CHAT}
    status, record = await post(harness, "/v1/jobs", job | {"replicas": 2, "threshold": 1})
    assert status == 200 and record["verdict"] == "agreed"
    assert record["creditable"] is False and record["credits"] == {}
    status, record = await post(harness, "/v1/jobs", job | {"replicas": 3, "threshold": 3})  # more: fine
    assert record["creditable"] is True
    await until(lambda: harness.orchestrator.router.idle, what="the jobs to finish")
    pending = await harness.orchestrator.ledger.pending()
    assert sum(pending.values()) == 3 * harness.orchestrator.settings.reward_for("test-model")


async def test_a_model_the_operator_does_not_pay_for_is_served_but_credits_nobody(harness: Harness) -> None:
    offer = ModelOffer(id="squatted-model", tasks=["chat"], engine="scripted/1")
    await harness.connected("honest", "honest", "honest", models=[offer])
    status, body = await post(harness, "/v1/chat/completions", CHAT | {"model": "squatted-model"})
    assert status == 200 and body["krewe"]["verdict"] == "agreed"
    assert body["krewe"]["creditable"] is False
    await until(lambda: harness.orchestrator.router.idle, what="the job to finish")
    assert await harness.orchestrator.ledger.pending() == {}


async def test_a_task_no_miner_serves_for_the_model_is_refused_before_any_miner_sees_it(
    harness: Harness,
) -> None:
    embedding_only = ModelOffer(id="multilingual-e5-small", tasks=["embedding"], engine="scripted/1")
    miners = await harness.connected("honest", "honest", "honest", models=[embedding_only])
    status, body = await post(harness, "/v1/chat/completions", CHAT | {"model": "multilingual-e5-small"})
    assert status == 400 and body["error"]["code"] == "unsupported_task"
    assert "embedding" in body["error"]["message"]
    status, body = await post(harness, "/v1/chat/completions", CHAT | {"model": "no-such-model"})
    assert (status, body["error"]["code"]) == (404, "model_not_found")
    assert not any(miner.jobs for miner in miners)
    assert harness.orchestrator.pool.scores == {}  # nobody's score was touched
    status, models = await get(harness, "/v1/models")
    assert models["data"] == [
        {
            "id": "multilingual-e5-small",
            "object": "model",
            "created": 0,
            "owned_by": "krewe",
            "krewe": {"tasks": ["embedding"]},
        }
    ]


async def test_peer_scores_survive_a_restart(make_harness: Any) -> None:
    first = await make_harness()
    _, _, liar = await first.connected("honest", "honest", "liar")
    assert (await post(first, "/v1/chat/completions", CHAT))[0] == 200
    await until(lambda: liar.address in first.orchestrator.pool.scores, what="the liar's score")
    score = first.orchestrator.pool.scores[liar.address]
    assert score.quality < first.orchestrator.pool.scoring.prior
    await first.orchestrator.stop()
    second = await make_harness(data_dir=first.orchestrator.settings.data_dir)
    assert second.orchestrator.pool.scores[liar.address] == score


async def test_a_miner_that_leaves_the_registry_is_closed_and_gets_no_more_jobs(
    make_harness: Any, chain_snapshot: Chain
) -> None:
    harness: Harness = await make_harness(registry_cache_s=1.0)
    leaving, _, _ = await harness.connected("honest", "honest", "honest")
    w3 = chain_snapshot.anvil.web3()
    _, registry, _ = chain_snapshot.deployment.contracts(w3)
    transact(w3, registry.functions.requestExit(), leaving.address)
    await until(lambda: leaving.close_code is not None, timeout_s=10, what="the re-check to close it")
    assert leaving.close_code == CloseCode.NOT_REGISTERED
    assert leaving.messages("error")[-1]["code"] == "not_registered"
    assert leaving.address not in harness.orchestrator.pool.sessions


async def test_shutdown_waits_for_every_credit_before_closing_the_ledger(make_harness: Any) -> None:
    harness: Harness = await make_harness(shutdown_grace_s=0.2)
    await harness.connected("honest", "honest", "silent")
    status, _ = await post(harness, "/v1/chat/completions", CHAT)
    assert status == 200
    await harness.orchestrator.stop()  # the silent replica keeps the job open past the grace
    ledger = RewardLedger(SQLiteLedgerStore(harness.orchestrator.settings.data_dir / "ledger.db"))
    reward = harness.orchestrator.settings.reward_for("test-model")
    try:
        totals = ledger.totals()  # stop() settles once more, so the credits may be paid already
        assert totals.credited == 2 * reward == totals.paid + totals.pending + totals.in_flight
    finally:
        ledger.close()


async def test_a_send_that_fails_unexpectedly_loses_no_credit_and_the_router_still_drains(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    miners = await harness.connected("honest", "honest", "honest")
    broken = harness.orchestrator.pool.sessions[miners[0].address].channel
    real_send = broken.send

    def send(frame: str) -> bool:
        if '"type":"verdict"' in frame:
            raise RuntimeError("a send that fails in a way nobody foresaw")
        return real_send(frame)

    broken.send = send  # type: ignore[method-assign]
    status, body = await post(harness, "/v1/chat/completions", CHAT)
    assert status == 200 and body["krewe"]["creditable"] is True
    router = harness.orchestrator.router
    await until(lambda: router.idle, what="every job closed and every credit written")
    await asyncio.wait_for(router.drain(timeout_s=5), timeout=10)  # bounded: nothing left waits
    reward = harness.orchestrator.settings.reward_for("test-model")
    assert await harness.orchestrator.ledger.pending() == {miner.address: reward for miner in miners}
    assert "SendVerdict failed" in caplog.text and "a send that fails" in caplog.text
    for miner in miners[1:]:  # the verdicts behind the failed one still went out
        await until(lambda m=miner: len(m.messages("verdict")) == 1, what="the other verdicts")
