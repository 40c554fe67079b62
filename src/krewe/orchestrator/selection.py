"""Replica selection: one engine class, then "top half by score + random tail" within it.

Engine classes (homogeneous redundancy): exact-digest consensus holds only among miners whose bytes
come from the same numeric path, so all replicas of a job come from one engine class of its model.
`choose_engine_class` picks it at random, weighted by free capacity, among the classes with at
least `replicas` eligible workers, or failing that at least `needed` (the threshold).

Eligible workers (connected, serving the model for the task, in the engine class when one is
given, below their `max_concurrency`, not excluded) are ranked by score, best first, ties broken by
worker id so that a ranking is reproducible. `replicas - tail` are drawn at random from the top
half (the first ceil(n/2)), `tail` at random from the rest, so new and low-ranked workers keep
being tried and no one wins every job. When one side has too few workers the other side makes up
the difference; when fewer workers are eligible than `replicas`, all of them are chosen and the
shortfall is reported.

Pure: the caller passes the random generator (seeded in tests, so draws can be audited).
"""

import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Candidate", "Eligible", "Selection", "choose_engine_class", "select_replicas"]


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

    def engine(self, model: str) -> str:
        """The engine class this worker declared for `model`."""
        ...


@dataclass(slots=True)
class Candidate:
    """A worker as selection sees it, for callers that hold no live session."""

    worker: str
    rank: float
    serves: frozenset[tuple[str, str]]
    in_flight: int
    max_concurrency: int
    engines: dict[str, str] = field(default_factory=dict)  # model -> engine class

    def engine(self, model: str) -> str:
        return self.engines.get(model, "")


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
    engine: str | None = None,
) -> Selection:
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, not {replicas}")
    if not 0 <= tail <= replicas:
        raise ValueError(f"tail must be between 0 and replicas ({replicas}), not {tail}")
    eligible = _eligible(candidates, model, task, exclude)
    if engine is not None:
        eligible = [c for c in eligible if c.engine(model) == engine]
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


def choose_engine_class(
    candidates: Iterable[Eligible],
    model: str,
    task: str,
    replicas: int,
    *,
    needed: int,
    rng: random.Random,
) -> str | None:
    """The engine class a job's replicas come from, or None when no class has `needed` workers."""
    free: dict[str, int] = {}
    workers: dict[str, int] = {}
    for c in _eligible(candidates, model, task, ()):
        engine = c.engine(model)
        free[engine] = free.get(engine, 0) + c.max_concurrency - c.in_flight
        workers[engine] = workers.get(engine, 0) + 1
    for enough in (replicas, needed):
        classes = sorted(engine for engine, count in workers.items() if count >= enough)
        if classes:
            return rng.choices(classes, weights=[free[engine] for engine in classes])[0]
    return None


def _eligible(
    candidates: Iterable[Eligible], model: str, task: str, exclude: Collection[str]
) -> list[Eligible]:
    return [
        c
        for c in candidates
        if (model, task) in c.serves and c.in_flight < c.max_concurrency and c.worker not in exclude
    ]
