"""Replica selection: "top half by score + random tail".

Eligible workers (connected, serving the model for the task, below their `max_concurrency`, not excluded)
are ranked by score, best first, ties broken by worker id so that a ranking is reproducible.
`replicas - tail` are drawn at random from the top half (the first ceil(n/2)), `tail` at random
from the rest, so new and low-ranked workers keep being tried and no one wins every job. When one
side has too few workers the other side makes up the difference; when fewer workers are eligible
than `replicas`, all of them are chosen and the shortfall is reported.

Pure: the caller passes the random generator (seeded in tests, so draws can be audited).
"""

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Candidate", "Eligible", "Selection", "select_replicas"]


class Eligible(Protocol):
    """What selection reads of a worker (a live session is one)."""

    @property
    def worker(self) -> str: ...

    @property
    def rank(self) -> float: ...

    @property
    def serves(self) -> frozenset[tuple[str, str]]: ...  # (model, task) pairs

    @property
    def in_flight(self) -> int: ...

    @property
    def max_concurrency(self) -> int: ...


@dataclass(slots=True)
class Candidate:
    """A worker as selection sees it, for callers that hold no live session."""

    worker: str
    rank: float
    serves: frozenset[tuple[str, str]]
    in_flight: int
    max_concurrency: int


@dataclass(frozen=True, slots=True)
class Selection:
    workers: tuple[str, ...]
    shortfall: int  # replicas asked for but not found


def select_replicas(
    candidates: Iterable[Eligible],
    model: str,
    task: str,
    replicas: int,
    *,
    rng: random.Random,
    tail: int = 1,
    exclude: Collection[str] = frozenset(),
) -> Selection:
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    if not 0 <= tail <= replicas:
        raise ValueError(f"tail must be between 0 and replicas ({replicas}), not {tail}")
    eligible = [
        c
        for c in candidates
        if (model, task) in c.serves and c.in_flight < c.max_concurrency and c.worker not in exclude
    ]
    eligible.sort(key=lambda c: (-c.rank, c.worker))
    if len(eligible) <= replicas:
        return Selection(tuple(c.worker for c in eligible), replicas - len(eligible))
    half = (len(eligible) + 1) // 2
    top, rest = eligible[:half], eligible[half:]
    from_rest = min(tail, len(rest))
    from_top = replicas - from_rest
    if from_top > len(top):
        from_top = len(top)
        from_rest = replicas - from_top
    chosen = rng.sample(top, from_top) + rng.sample(rest, from_rest)
    return Selection(tuple(c.worker for c in chosen), 0)
