"""Peer scores: how much the orchestrator trusts each worker, from what it saw itself.

A score never depends on anything a worker says about another worker. It has two parts:

- `quality`, an exponential moving average of job outcomes: agreed 1; disagreed, invalid and
  rejected 0; a timeout 0 at a lighter weight (a silent worker may be overloaded rather than
  dishonest). New workers start at a neutral prior.
- `latency_ms`, an exponential moving average of the time from sending a job to receiving the
  answer, measured on the orchestrator's side.

`rank` folds both into the number replica selection sorts by: quality, discounted smoothly as
latency grows past `latency_ref_ms`. A worker with no latency sample yet is not discounted.
Pure: no clock, no I/O; the caller passes the measured latency.
"""

from dataclasses import dataclass
from enum import Enum

__all__ = ["JobOutcome", "PeerScore", "ScoringConfig", "update_score"]


class JobOutcome(Enum):
    AGREED = "agreed"
    DISAGREED = "disagreed"
    INVALID = "invalid"
    REJECTED = "rejected"
    TIMEOUT = "timeout"


_TARGET = {
    JobOutcome.AGREED: 1.0,
    JobOutcome.DISAGREED: 0.0,
    JobOutcome.INVALID: 0.0,
    JobOutcome.REJECTED: 0.0,
    JobOutcome.TIMEOUT: 0.0,
}


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    alpha: float = 0.1  # weight of the newest outcome in the quality average
    timeout_weight: float = 0.5  # a timeout moves the average this fraction of a full outcome
    prior: float = 0.5  # a new worker's quality
    latency_alpha: float = 0.2
    latency_ref_ms: float = 1000.0  # latency at which rank is halved

    def __post_init__(self) -> None:
        for name in ("alpha", "timeout_weight", "latency_alpha"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], not {value}")
        if not 0.0 <= self.prior <= 1.0:
            raise ValueError(f"prior must be in [0, 1], not {self.prior}")
        if self.latency_ref_ms <= 0:
            raise ValueError(f"latency_ref_ms must be positive, not {self.latency_ref_ms}")


@dataclass(frozen=True, slots=True)
class PeerScore:
    quality: float
    latency_ms: float | None = None
    jobs: int = 0

    @classmethod
    def new(cls, config: ScoringConfig) -> "PeerScore":
        return cls(quality=config.prior)

    def rank(self, config: ScoringConfig) -> float:
        if self.latency_ms is None:
            return self.quality
        return self.quality * config.latency_ref_ms / (config.latency_ref_ms + self.latency_ms)


def update_score(
    score: PeerScore, outcome: JobOutcome, latency_ms: float | None, config: ScoringConfig
) -> PeerScore:
    """The score after one more job. `latency_ms` is None when no answer arrived."""
    weight = config.alpha * (config.timeout_weight if outcome is JobOutcome.TIMEOUT else 1.0)
    quality = score.quality + weight * (_TARGET[outcome] - score.quality)
    latency = score.latency_ms
    if latency_ms is not None:
        if latency_ms < 0:
            raise ValueError(f"latency cannot be negative: {latency_ms}")
        latency = latency_ms if latency is None else latency + config.latency_alpha * (latency_ms - latency)
    return PeerScore(quality, latency, score.jobs + 1)
