"""A miner that keeps changing what it offers must not grow the orchestrator's memory: once its
offers are replaced, nothing of the old ones may stay behind. (The long fuzzing run saw the
orchestrator's RSS grow by a quarter; this is the cause it found.)"""

import tracemalloc
from typing import Any

from tests.service.conftest import Harness, until

OFFER_FILES = ("krewe/orchestrator/pool.py", "krewe/orchestrator/selection.py")


def allocated_in_the_pool(snapshot: tracemalloc.Snapshot) -> int:
    filters = [tracemalloc.Filter(True, f"*{name}") for name in OFFER_FILES]
    return sum(stat.size for stat in snapshot.filter_traces(filters).statistics("filename"))


async def test_offers_a_miner_withdraws_leave_nothing_behind(harness: Harness) -> None:
    (miner,) = await harness.connected("honest")
    tracemalloc.start()
    try:
        before = allocated_in_the_pool(tracemalloc.take_snapshot())
        for round_ in range(300):
            offers: list[dict[str, Any]] = [
                {"id": f"churn-{round_}-{index}", "tasks": ["chat"], "engine": f"engine-{round_}"}
                for index in range(16)
            ]
            await miner.send({"type": "status", "models": offers, "max_concurrency": 4})
        await until(lambda: "churn-299-0" in harness.orchestrator.pool.models(), what="the last offers")
        after = allocated_in_the_pool(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    assert harness.orchestrator.pool.models().keys() == {f"churn-299-{index}" for index in range(16)}
    assert after - before < 200_000, f"{after - before:,} bytes left behind by 4,800 withdrawn offers"
