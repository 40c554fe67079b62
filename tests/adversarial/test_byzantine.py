"""Byzantine miners through the real protocol: liars, slow and silent miners, duplicate and
conflicting answers, answers to jobs they were not given, disconnects mid-job and reconnect storms.
None of them sways a verdict or earns a credit; the ledger and the job records say so."""

import asyncio
import random
from collections import Counter
from typing import Any

import aiohttp

from krewe.protocol.canonical import digest
from tests.service.conftest import Harness, until
from tests.support.scripted_miner import ScriptedMiner, default_offers, honest_output

CHAT_INPUT = {"messages": [{"role": "user", "content": "who agrees?"}]}
HONEST_DIGEST = digest(honest_output("chat", CHAT_INPUT))
REWARD = 10**15  # the harness's reward for test-model


class DuplicatingMiner(ScriptedMiner):
    """Answers honestly, then sends the very same result again."""

    async def _answer(self, job: dict[str, Any]) -> None:
        await super()._answer(job)
        await self.send(
            {"type": "result", "job_id": job["job_id"], "output": honest_output(job["task"], job["input"])}
        )


async def run_jobs(harness: Harness, count: int, **fields: Any) -> list[str]:
    """`count` native jobs at once; their ids."""
    job = {"model": "test-model", "task": "chat", "input": CHAT_INPUT} | fields
    async with aiohttp.ClientSession() as http:

        async def one() -> str:
            async with http.post(harness.url + "/v1/jobs", json=job) as response:
                body = await response.json()
                assert response.status == 200, body
                job_id: str = body["job_id"]
                return job_id

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def final_records(harness: Harness, job_ids: list[str]) -> list[dict[str, Any]]:
    await until(lambda: harness.orchestrator.router.idle, timeout_s=30, what="every job to close")
    records = [await harness.orchestrator.records.get(job_id) for job_id in job_ids]
    assert all(record is not None and record["final"] for record in records)
    return [record for record in records if record is not None]


async def assert_no_wrong_verdict_and_no_undue_credit(
    harness: Harness, records: list[dict[str, Any]], misbehaving: set[str]
) -> None:
    """Agreed verdicts are the honest answer; credits go only to miners whose answer was that, once
    per job; the ledger holds exactly the records' credits and nothing for `misbehaving` miners."""
    owed: Counter[str] = Counter()
    for record in records:
        if record["verdict"] == "agreed":
            assert record["digest"] == HONEST_DIGEST, record
        answers = {row["worker"]: row for row in record["workers"]}
        for worker, amount in record["credits"].items():
            assert worker not in misbehaving, (worker, record)
            assert answers[worker]["answer"] == "result" and answers[worker]["digest"] == HONEST_DIGEST
            assert int(amount) == REWARD
            owed[worker] += int(amount)
    pending = dict(await harness.orchestrator.ledger.pending())
    assert pending == dict(owed)
    assert not set(pending) & misbehaving


async def test_a_crowd_of_byzantine_miners_never_sways_a_verdict_or_earns_a_credit(make_harness: Any) -> None:
    harness = await make_harness(job_timeout_ms=1500, redispatch_max=2)
    behaviours = ["honest", "honest", "honest", "liar", "random", "slow", "silent", "disconnect", "nan"]
    random.Random(5).shuffle(behaviours)
    miners = await harness.connected(*behaviours, delay_s=3.0)
    duplicate = DuplicatingMiner(harness.connect_url, harness.miner(9).key, harness.miner(9).address)
    harness.miners.append(await duplicate.__aenter__())
    assert (await duplicate.connect())["type"] == "welcome"
    records = await final_records(harness, await run_jobs(harness, 24))
    misbehaving = {m.address for m in miners if m.behaviour != "honest"}
    assert all(m.jobs for m in miners if m.behaviour != "honest")  # every kind of misbehaviour was tried
    await assert_no_wrong_verdict_and_no_undue_credit(harness, records, misbehaving)
    assert sum(record["verdict"] == "agreed" for record in records) > 0
    credited_twice = [r for r in records if list(r["credits"]).count(duplicate.address) > 1]
    assert not credited_twice


async def test_answers_to_jobs_given_to_others_are_ignored_and_never_credited(make_harness: Any) -> None:
    harness = await make_harness(job_timeout_ms=3000)
    await harness.connected("slow", "slow", "slow", delay_s=0.3)  # the thief answers first
    thief = await harness.miner(3, "silent").__aenter__()
    thief.models = [offer.__class__(id="other-model", tasks=["chat"]) for offer in default_offers()]
    assert (await thief.connect())["type"] == "welcome"
    task = asyncio.ensure_future(run_jobs(harness, 3))
    honest = harness.miners[:3]
    await until(lambda: sum(len(m.jobs) for m in honest) == 9, what="the jobs to reach their miners")
    for job_id in {job_id for m in honest for job_id in m.jobs}:
        lie = honest_output("chat", CHAT_INPUT, salt=" (stolen)")
        await thief.send({"type": "result", "job_id": job_id, "output": lie})
        await thief.send({"type": "reject", "job_id": job_id, "reason": "bad_input"})
    for index in range(20):
        await thief.send({"type": "result", "job_id": f"guessed-{index}", "output": {"x": index}})
    records = await final_records(harness, await asyncio.wait_for(task, timeout=30))
    assert all(record["verdict"] == "agreed" for record in records)
    assert all(thief.address not in {row["worker"] for row in r["workers"]} for r in records)
    await assert_no_wrong_verdict_and_no_undue_credit(harness, records, {thief.address})
    assert thief.close_code is None and not thief.messages("error")  # ignored: it may have been late


async def test_conflicting_and_duplicate_answers_count_once(make_harness: Any) -> None:
    harness = await make_harness()
    honest, double = await harness.connected("honest", "double")
    duplicate = DuplicatingMiner(harness.connect_url, harness.miner(2).key, harness.miner(2).address)
    harness.miners.append(await duplicate.__aenter__())
    assert (await duplicate.connect())["type"] == "welcome"
    records = await final_records(harness, await run_jobs(harness, 5))
    for record in records:
        assert record["verdict"] == "agreed" and record["digest"] == HONEST_DIGEST
        assert set(record["credits"]) == {honest.address, double.address, duplicate.address}
    pending = await harness.orchestrator.ledger.pending()
    assert dict(pending) == {m.address: 5 * REWARD for m in (honest, double, duplicate)}
    await until(
        lambda: len(double.messages("error")) == 5, what="each second, different answer to be refused"
    )
    assert not duplicate.messages("error")  # the same answer again is acknowledged and ignored


async def test_a_reconnect_storm_during_jobs_credits_only_answers_and_leaves_one_session(
    make_harness: Any,
) -> None:
    harness = await make_harness(job_timeout_ms=3000)
    await harness.connected("slow", "slow", "slow", delay_s=0.3)  # jobs stay open during the storm
    stormers = [await harness.miner(3, "silent").__aenter__()]
    assert (await stormers[0].connect())["type"] == "welcome"

    async def waves() -> list[str]:
        return [job_id for _ in range(3) for job_id in await run_jobs(harness, 4)]

    jobs = asyncio.ensure_future(waves())
    for _ in range(15):  # each login supersedes the one before, which may hold jobs
        await until(lambda: bool(stormers[-1].jobs) or jobs.done(), what="a job for the stormer")
        stormer = await harness.miner(3, "silent").__aenter__()
        assert (await stormer.connect())["type"] == "welcome"
        stormers.append(stormer)
    records = await final_records(harness, await asyncio.wait_for(jobs, timeout=60))
    await assert_no_wrong_verdict_and_no_undue_credit(harness, records, {stormers[0].address})
    assert all(record["verdict"] == "agreed" for record in records)
    assert sum(bool(stormer.jobs) for stormer in stormers[:-1]) >= 3  # jobs were cut off by the storm
    assert [s.close_code for s in stormers[:-1]] == [4409] * 15 and stormers[-1].close_code is None
    pool = harness.orchestrator.pool.sessions
    assert len(pool) == 4 and pool[stormers[-1].address] is not None
