"""Prometheus metrics of one orchestrator, on a registry of its own (served at GET /metrics)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

MAX_ENGINE_LABELS = 64  # engine classes are named by miners: their number must not grow the registry


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter("krewe_jobs", "Jobs by verdict", ["verdict"], registry=self.registry)
        self.job_latency = Histogram(
            "krewe_job_latency_seconds",
            "Time from a request to its verdict",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.answer_latency = Histogram(
            "krewe_miner_answer_seconds",
            "Time from sending a job to a miner to its answer",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.miners = Gauge("krewe_miners_connected", "Authenticated miner sessions", registry=self.registry)
        self.logins = Counter(
            "krewe_miner_logins", "Login attempts by result", ["result"], registry=self.registry
        )
        self.violations = Counter(
            "krewe_miner_violations", "Protocol violations by miners", registry=self.registry
        )
        self.pending_wei = Gauge(
            "krewe_ledger_pending_wei", "Credits not yet settled, in wei", registry=self.registry
        )
        self.settlements = Counter(
            "krewe_settlement_batches", "Settlement batches by outcome", ["outcome"], registry=self.registry
        )
        self.scores = Histogram(
            "krewe_worker_score",
            "Peer scores of miners at the end of each of their jobs",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=self.registry,
        )
        self.engine_verdicts = Counter(
            "krewe_engine_verdicts",
            "Jobs by engine class and verdict (many no_consensus in one class: a nondeterministic engine)",
            ["engine", "verdict"],
            registry=self.registry,
        )
        self._engines: set[str] = set()
        self.http = Counter(
            "krewe_http_requests", "Client API requests by status", ["status"], registry=self.registry
        )

    def count_engine_verdict(self, engine: str | None, verdict: str) -> None:
        label = "any" if engine is None else engine or "unnamed"
        if label not in self._engines and len(self._engines) >= MAX_ENGINE_LABELS:
            label = "other"
        else:
            self._engines.add(label)
        self.engine_verdicts.labels(label, verdict).inc()
