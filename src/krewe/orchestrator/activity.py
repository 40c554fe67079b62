"""NetworkActivity: what the operator's dashboard shows over time. Pure: times are passed in.

It is fed two ways, both off a job's critical path and both cheap:

- `job_closed(record, now)`, when a job's record is handed to the job store (after the caller was
  answered): the fields its summary needs (not its output) go into a bounded ring of recent jobs,
  to be summarized when the dashboard reads them, and its verdict is counted in the time bucket
  of `now`. About a microsecond per job.
- `sample(latency, miners, now)`, once a second from a loop beside the router: the cumulative
  bucket counts of the client latency histogram (the one /metrics serves as
  krewe_job_latency_seconds) and the number of miners connected. The differences between two
  samples are the latencies observed between them, so each time bucket has its own histogram,
  and its p50 and p99 are read from it the way Prometheus' histogram_quantile reads one: by
  linear interpolation inside the bucket that holds the quantile.

A job's verdict, as the dashboard counts it, is `agreed`, `deadline` (no agreement before the
deadline passed) or `no_consensus` (every miner answered, and not enough of them alike).
"""

import collections
import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["VERDICTS", "NetworkActivity", "quantile", "summarize"]

VERDICTS = ("agreed", "no_consensus", "deadline")


# What a summary needs of a record; taken as one tuple at C speed, summarized when it is read.
_KEPT = (
    "job_id", "model", "task", "engine", "created_at", "verdict", "deadline_exceeded", "threshold",
    "replicas", "agreeing", "creditable", "credits", "workers",
)  # fmt: skip
_keep = operator.itemgetter(*_KEPT)


def verdict_of(record: dict[str, Any]) -> str:
    """The verdict as the dashboard counts it (one of VERDICTS)."""
    if record["verdict"] == "agreed":
        return "agreed"
    return "deadline" if record["deadline_exceeded"] else "no_consensus"


def summarize(record: dict[str, Any], closed_at: float) -> dict[str, Any]:
    """What the dashboard's list of recent jobs shows of a job record (see jobs.Job.record)."""
    verdict = verdict_of(record)
    return {
        "job_id": record["job_id"],
        "model": record["model"],
        "task": record["task"],
        "engine": record["engine"],
        "created_at": record["created_at"],
        "closed_at": closed_at,
        "verdict": verdict,
        "agreeing": len(record["agreeing"]),
        "replicas": record["replicas"],
        "creditable": record["creditable"],
        "credited": str(sum(int(amount) for amount in record["credits"].values())),
        "latency_ms": verdict_latency_ms(record, verdict),
    }


def verdict_latency_ms(record: dict[str, Any], verdict: str) -> float | None:
    """How long the miners took to reach the verdict: for an agreed job, the latency of the
    agreeing answer that made `threshold` of them; for no consensus, the slowest answer; None at
    the deadline. Each latency runs from when that miner was sent the job."""
    if verdict == "deadline":
        return None
    answers = [row for row in record["workers"] if row.get("latency_ms") is not None]
    if verdict == "agreed":
        agreeing = set(record["agreeing"])
        times = sorted(row["latency_ms"] for row in answers if row["worker"] in agreeing)
        index = min(record["threshold"], len(times)) - 1
        return times[index] if times else None
    return max((row["latency_ms"] for row in answers), default=None)


def quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The q-quantile of a histogram (`counts[i]` observations at most `bounds[i]`, above the
    bound before; the last bound may be infinite), or None when it is empty."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    index, seen = 0, 0
    while counts[index] == 0 or seen + counts[index] < rank:  # the bucket that holds the rank
        seen += counts[index]
        index += 1
    lower = bounds[index - 1] if index else 0.0
    if math.isinf(bounds[index]):
        return lower  # above the largest finite bound: that bound is all that is known
    return lower + (bounds[index] - lower) * (rank - seen) / counts[index]


@dataclass(slots=True)
class _Bucket:
    start: float
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    latency: list[int] = field(default_factory=list)  # observations per histogram bucket
    miners: int | None = None


class NetworkActivity:
    def __init__(self, *, bucket_s: float = 5.0, buckets: int = 120, recent_jobs: int = 50) -> None:
        self.bucket_s = bucket_s
        self._span = buckets
        self._buckets: collections.deque[_Bucket] = collections.deque(maxlen=buckets)
        self._recent: collections.deque[tuple[float, tuple[Any, ...]]] = collections.deque(maxlen=recent_jobs)
        self._bounds: tuple[float, ...] = ()
        self._last_counts: list[int] | None = None

    def job_closed(self, record: dict[str, Any], now: float) -> None:
        """Called for every job: keeps what its summary needs (not its output) and counts it."""
        self._recent.appendleft((now, _keep(record)))
        self._bucket(now).verdicts[verdict_of(record)] += 1

    def sample(self, latency: Sequence[tuple[float, int]], miners: int, now: float) -> None:
        """`latency`: the client latency histogram's (upper bound in seconds, cumulative count)."""
        bounds = tuple(bound for bound, _ in latency)
        cumulative = [count for _, count in latency]
        counts = [cumulative[0], *(b - a for a, b in itertools.pairwise(cumulative))]
        bucket = self._bucket(now)
        if self._last_counts is not None and bounds == self._bounds:
            new = [now_count - before for now_count, before in zip(counts, self._last_counts, strict=True)]
            if not bucket.latency:
                bucket.latency = [0] * len(new)
            bucket.latency = [a + b for a, b in zip(bucket.latency, new, strict=True)]
        self._bounds, self._last_counts = bounds, counts
        bucket.miners = miners

    def _bucket(self, now: float) -> _Bucket:
        start = math.floor(now / self.bucket_s) * self.bucket_s
        if not self._buckets or self._buckets[-1].start < start:
            self._buckets.append(_Bucket(start))
        return self._buckets[-1]  # a clock that stepped back counts into the newest bucket

    def recent_jobs(self) -> list[dict[str, Any]]:
        """The latest jobs closed, newest first."""
        return [summarize(dict(zip(_KEPT, kept, strict=True)), closed_at) for closed_at, kept in self._recent]

    def jobs_per_s(self, now: float, window_s: float = 30.0) -> float:
        """Jobs closed per second over the last `window_s` seconds."""
        since = now - window_s
        closed = sum(sum(b.verdicts.values()) for b in self._buckets if b.start + self.bucket_s > since)
        return closed / window_s

    def series(self, now: float) -> dict[str, Any]:
        """One point per time bucket over the span, oldest first, gaps filled: verdict counts,
        latency p50 and p99 in ms (None with no job in the bucket), miners connected."""
        newest = math.floor(now / self.bucket_s) * self.bucket_s
        starts = [newest - self.bucket_s * i for i in range(self._span - 1, -1, -1)]
        by_start = {bucket.start: bucket for bucket in self._buckets}
        points: dict[str, list[Any]] = {"t": starts, **{v: [] for v in VERDICTS}}
        points |= {"p50_ms": [], "p99_ms": [], "miners": []}
        for start in starts:
            bucket = by_start.get(start) or _Bucket(start)
            for verdict in VERDICTS:
                points[verdict].append(bucket.verdicts[verdict])
            for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
                value = quantile(q, self._bounds, bucket.latency) if bucket.latency else None
                points[name].append(None if value is None else round(value * 1000, 3))
            points["miners"].append(bucket.miners)
        return {"bucket_s": self.bucket_s, **points}
