"""Homogeneous redundancy: every replica of a job, redispatches included, comes from one engine class."""

from typing import Any

from krewe.protocol.messages import ModelOffer
from tests.service.conftest import Harness, until
from tests.service.test_jobs import CHAT, get, post

JOB = {"model": "test-model", "task": "chat", "input": CHAT}


async def connect_classes(harness: Harness, *engines: str) -> dict[str, str]:
    """One honest miner per engine class named; returns worker -> engine class."""
    of = {}
    for index, engine in enumerate(engines):
        offer = ModelOffer(id="test-model", tasks=["chat"], engine=engine)
        miner = await harness.miner(index, models=[offer]).__aenter__()
        assert (await miner.connect())["type"] == "welcome"
        of[miner.address] = engine
    return of


async def engines_of_jobs(harness: Harness, engine_of: dict[str, str], jobs: int) -> list[set[str]]:
    used = []
    for _ in range(jobs):
        status, record = await post(harness, "/v1/jobs", JOB)
        assert status == 200 and record["verdict"] == "agreed", record
        used.append({engine_of[answer["worker"]] for answer in record["workers"]})
        if harness.orchestrator.settings.homogeneous:
            assert used[-1] == {record["engine"]}
        await until(lambda: harness.orchestrator.router.idle, what="the job to finish")
    return used


async def test_no_job_mixes_engine_classes(harness: Harness) -> None:
    engine_of = await connect_classes(
        harness, "cpu-avx2", "cpu-avx2", "cpu-avx2", "gpu-h100", "gpu-h100", "gpu-h100"
    )
    used = await engines_of_jobs(harness, engine_of, 20)
    assert all(len(classes) == 1 for classes in used)
    assert {next(iter(classes)) for classes in used} == {"cpu-avx2", "gpu-h100"}  # both are drawn
    _, workers = await get(harness, "/v1/workers")
    assert {row["worker"]: row["models"][0]["engine"] for row in workers["data"]} == engine_of
    _, metrics = await get(harness, "/metrics")
    assert 'krewe_engine_verdicts_total{engine="gpu-h100",verdict="agreed"}' in metrics


async def test_with_homogeneous_off_a_job_may_mix_classes(make_harness: Any) -> None:
    harness = await make_harness(homogeneous=False)
    engine_of = await connect_classes(
        harness, "cpu-avx2", "cpu-avx2", "cpu-avx2", "gpu-h100", "gpu-h100", "gpu-h100"
    )
    used = await engines_of_jobs(harness, engine_of, 20)
    assert any(len(classes) > 1 for classes in used)


async def test_no_class_that_can_field_the_job_is_a_503(harness: Harness) -> None:
    await connect_classes(harness, "cpu-avx2", "cpu-avx2", "gpu-h100", "gpu-h100")
    status, body = await post(harness, "/v1/jobs", JOB | {"replicas": 3, "threshold": 3})
    assert (status, body["error"]["code"]) == (503, "no_engine_class")
    assert "engine class" in body["error"]["message"]
