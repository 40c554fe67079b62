"""Prometheus metrics of one orchestrator, on a registry of its own (served at GET /metrics).

Every job updates several of these, so an update is a plain addition to a Python number: no lock
and no label validation, as prometheus_client's own types do per update. That is safe because
everything that updates them, and the scrape that reads them, runs on the event loop thread. The
registry reads the values only when /metrics is scraped, through one collector.
"""

import bisect
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["LAG_BUCKETS", "LATENCY_BUCKETS", "Counter", "Gauge", "Histogram", "MaxSinceScrape", "Metrics"]

MAX_ENGINE_LABELS = 64  # engine classes are named by miners: their number must not grow the registry
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Counter:
    """A counter, with or without labels: `counter.inc()` or `counter.labels("a").inc()`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], _Count] = {} if labelnames else {(): _Count()}

    def labels(self, *values: str) -> _Count:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}, not {values}")
            child = self._children[values] = _Count()
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._children[()].value += amount

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(values, child.value)
        return [family]


class Gauge:
    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def collect(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, value=self.value)]


class MaxSinceScrape:
    """A gauge of the largest value seen since the previous scrape, which reads and clears it (as
    Node's prom-client reports event-loop lag): with one scraper, each reading covers its interval."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name, self.documentation = name, documentation
        self.value = 0.0

    def observe(self, value: float) -> None:
        self.value = max(self.value, value)

    def collect(self) -> list[Metric]:
        value, self.value = self.value, 0.0
        return [GaugeMetricFamily(self.name, self.documentation, value=value)]


class Histogram:
    """Counts per bucket (each value in the first bucket whose upper bound holds it) and a sum."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(float(bound) for bound in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> list[Metric]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return [HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)]


class Metrics:
    def __init__(self) -> None:
        self.jobs = Counter("krewe_jobs", "Jobs by verdict", ["verdict"])
        self.job_latency = Histogram(
            "krewe_job_latency_seconds", "Time from a request to its verdict", LATENCY_BUCKETS
        )
        self.answer_latency = Histogram(
            "krewe_miner_answer_seconds", "Time from sending a job to a miner to its answer", LATENCY_BUCKETS
        )
        self.miners = Gauge("krewe_miners_connected", "Authenticated miner sessions")
        self.logins = Counter("krewe_miner_logins", "Login attempts by result", ["result"])
        self.violations = Counter("krewe_miner_violations", "Protocol violations by miners")
        self.pending_wei = Gauge("krewe_ledger_pending_wei", "Credits not yet settled, in wei")
        self.settlements = Counter("krewe_settlement_batches", "Settlement batches by outcome", ["outcome"])
        self.scores = Histogram(
            "krewe_worker_score",
            "Peer scores of miners at the end of each of their jobs",
            (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
        )
        self.engine_verdicts = Counter(
            "krewe_engine_verdicts",
            "Jobs by engine class and verdict (many no_consensus in one class: a nondeterministic engine)",
            ["engine", "verdict"],
        )
        self._engines: set[str] = set()
        self.http = Counter("krewe_http_requests", "Client API requests by status", ["status"])
        self.loop_lag = Histogram(
            "krewe_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 10 ms: any stall of the loop shows here",
            LAG_BUCKETS,
        )
        self.loop_lag_max = MaxSinceScrape(
            "krewe_event_loop_lag_max_seconds", "The largest event-loop lag since the previous scrape"
        )
        self.gc_pause = Histogram(
            "krewe_gc_pause_seconds",
            "How long each pass of Python's cyclic garbage collector took",
            LAG_BUCKETS,
        )
        self.gc_passes = Counter("krewe_gc_passes", "Passes of the cyclic garbage collector", ["generation"])
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterable[Metric]:
        """Every metric above, read now (the registry calls this at each scrape)."""
        for metric in vars(self).values():
            if isinstance(metric, Counter | Gauge | Histogram | MaxSinceScrape):
                yield from metric.collect()

    def count_engine_verdict(self, engine: str | None, verdict: str) -> None:
        label = "any" if engine is None else engine or "unnamed"
        if label not in self._engines and len(self._engines) >= MAX_ENGINE_LABELS:
            label = "other"
        else:
            self._engines.add(label)
        self.engine_verdicts.labels(label, verdict).inc()
