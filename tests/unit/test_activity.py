"""NetworkActivity, the dashboard's summary of the network over time: exact, with times given."""

import math
from typing import Any

import pytest

from krewe.orchestrator.activity import NetworkActivity, quantile, summarize

INF = math.inf
BOUNDS = (0.001, 0.01, 0.1, INF)


def record(
    verdict: str = "agreed",
    deadline_exceeded: bool = False,
    latencies: tuple[float | None, ...] = (3.0, 1.0, 2.0),
) -> dict[str, Any]:
    workers = [f"0x{i}" for i in range(len(latencies))]
    return {
        "job_id": "job-1",
        "model": "m",
        "task": "chat",
        "engine": "e/1",
        "created_at": "2026-11-27T13:30:00.123Z",
        "verdict": verdict,
        "deadline_exceeded": deadline_exceeded,
        "threshold": 2,
        "replicas": len(workers),
        "agreeing": workers if verdict == "agreed" else [],
        "creditable": verdict == "agreed",
        "credits": {worker: "5" for worker in workers} if verdict == "agreed" else {},
        "workers": [
            {"worker": worker, "answer": "result", "latency_ms": latency}
            for worker, latency in zip(workers, latencies, strict=True)
        ],
    }


def test_a_summary_names_the_verdict_and_when_the_miners_reached_it() -> None:
    agreed = summarize(record(), closed_at=10.0)
    # threshold 2: the verdict came with the second agreeing answer
    assert (agreed["verdict"], agreed["agreeing"], agreed["latency_ms"], agreed["credited"]) == (
        "agreed",
        3,
        2.0,
        "15",
    )
    split = summarize(record("no_consensus"), closed_at=10.0)
    assert (split["verdict"], split["latency_ms"], split["credited"]) == ("no_consensus", 3.0, "0")
    late = summarize(record("no_consensus", deadline_exceeded=True, latencies=(1.0, None, None)), 10.0)
    assert (late["verdict"], late["latency_ms"]) == ("deadline", None)
    # agreed after the deadline passed (more replicas than needed): agreed is what it is
    assert summarize(record(deadline_exceeded=True), 10.0)["verdict"] == "agreed"


def test_quantiles_interpolate_inside_the_bucket_that_holds_them() -> None:
    assert quantile(0.5, BOUNDS, [0, 0, 0, 0]) is None
    assert quantile(0.5, BOUNDS, [0, 10, 0, 0]) == pytest.approx(0.0055)
    assert quantile(0.99, BOUNDS, [50, 49, 1, 0]) == pytest.approx(0.01)
    assert quantile(0.5, BOUNDS, [1, 0, 0, 1]) == pytest.approx(0.001)
    assert quantile(0.99, BOUNDS, [0, 0, 0, 5]) == 0.1  # beyond the last finite bound: that bound


def cumulative(*counts: int) -> list[tuple[float, int]]:
    total, pairs = 0, []
    for bound, count in zip(BOUNDS, counts, strict=True):
        total += count
        pairs.append((bound, total))
    return pairs


def test_time_buckets_count_verdicts_and_the_latencies_seen_between_samples() -> None:
    activity = NetworkActivity(bucket_s=5, buckets=4, recent_jobs=2)
    activity.sample(cumulative(7, 0, 0, 0), miners=0, now=100.0)  # what happened before: not counted
    activity.job_closed(record(), now=101.0)
    activity.job_closed(record("no_consensus"), now=102.0)
    activity.sample(cumulative(7, 10, 0, 0), miners=3, now=103.0)
    activity.job_closed(record("no_consensus", deadline_exceeded=True), now=111.0)
    activity.sample(cumulative(7, 10, 0, 2), miners=2, now=111.5)
    series = activity.series(now=112.0)
    assert series["t"] == [95.0, 100.0, 105.0, 110.0]
    assert (series["agreed"], series["no_consensus"], series["deadline"]) == (
        [0, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 1],
    )
    assert series["p50_ms"] == [None, 5.5, None, 100.0]
    assert series["miners"] == [None, 3, None, 2]
    assert activity.jobs_per_s(now=112.0, window_s=10) == pytest.approx(0.3)
    assert [job["verdict"] for job in activity.recent_jobs()] == ["deadline", "no_consensus"]  # ring of 2
    later = activity.series(now=200.0)  # old buckets fall out of the span
    assert later["t"][-1] == 200.0 and sum(later["agreed"]) == 0
