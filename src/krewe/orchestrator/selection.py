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

Theory of operation: a `Ranking` keeps, for every (model, task, engine class), the workers with
free capacity in rank order, and the class's free capacity. It is told when a worker comes, goes,
changes rank or changes load, and moves only that worker (a binary search and one insertion per
class it is in), so a job's selection costs a few random draws instead of a pass and a sort over
every connected miner. Draws take indices into the ranked list, which consumes the generator
exactly as drawing from the list itself would. With `homogeneous` off, a job may draw from every
class of its model: their rankings are merged for it, one pass over the eligible workers.

Pure: the caller passes the random generator (seeded in tests, so draws can be audited).
"""

import bisect
import heapq
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Candidate", "Ranking", "Selection", "choose_engine_class", "select_replicas"]


@dataclass(slots=True)
class Candidate:
    """A worker as selection sees it, for callers that hold no `Ranking` (which a pool keeps)."""

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


_Key = tuple[float, str]  # (-rank, worker): sorts best first, ties by worker id


@dataclass(eq=False, slots=True)
class _Class:
    """The workers of one class with free capacity, best first, and their free slots in all."""

    model_task: tuple[str, str]
    engine: str
    ranked: list[_Key] = field(default_factory=list)
    free: int = 0
    members: int = 0  # busy ones too: a class with none is forgotten, so offers cannot pile up


@dataclass(slots=True)
class _Member:
    key: _Key
    in_flight: int
    max_concurrency: int
    classes: tuple[_Class, ...]  # each (model, task, engine class) it serves

    @property
    def free(self) -> int:
        return max(0, self.max_concurrency - self.in_flight)


class Ranking:
    """Every worker's place, per class, among those with free capacity (see the module's text)."""

    def __init__(self) -> None:
        self._members: dict[str, _Member] = {}
        self._by_engine: dict[tuple[str, str], dict[str, _Class]] = {}  # (model, task) -> engine -> class

    @classmethod
    def of(cls, candidates: Iterable[Candidate]) -> "Ranking":
        ranking = cls()
        for c in candidates:
            serves = [(model, task, c.engine(model)) for model, task in c.serves]
            ranking.put(c.worker, c.rank, serves, in_flight=c.in_flight, max_concurrency=c.max_concurrency)
        return ranking

    # What the pool tells it.

    def put(
        self,
        worker: str,
        rank: float,
        serves: Iterable[tuple[str, str, str]],
        *,
        in_flight: int,
        max_concurrency: int,
    ) -> None:
        """Add a worker, or replace what is known of it: (model, task, engine class) it serves."""
        self.remove(worker)
        classes = tuple(
            self._by_engine.setdefault((model, task), {}).setdefault(engine, _Class((model, task), engine))
            for model, task, engine in sorted(set(serves))
        )
        member = _Member((-rank, worker), in_flight, max_concurrency, classes)
        for c in classes:
            c.members += 1
        self._members[worker] = member
        self._enter(member)

    def remove(self, worker: str) -> None:
        member = self._members.pop(worker, None)
        if member is None:
            return
        self._leave(member)
        for c in member.classes:
            c.members -= 1
            if c.members == 0:
                self._forget(c)

    def _forget(self, c: _Class) -> None:
        engines = self._by_engine[c.model_task]
        del engines[c.engine]
        if not engines:
            del self._by_engine[c.model_task]

    def set_rank(self, worker: str, rank: float) -> None:
        member = self._members.get(worker)
        if member is None or member.key[0] == -rank:
            return
        self._leave(member)
        member.key = (-rank, worker)
        self._enter(member)

    def set_load(self, worker: str, in_flight: int) -> None:
        member = self._members.get(worker)
        if member is None or member.in_flight == in_flight:
            return
        if member.free and in_flight < member.max_concurrency:  # stays available: only its slots change
            for c in member.classes:
                c.free += member.in_flight - in_flight
            member.in_flight = in_flight
            return
        self._leave(member)
        member.in_flight = in_flight
        self._enter(member)

    def _enter(self, member: _Member) -> None:
        if member.free:
            for c in member.classes:
                bisect.insort(c.ranked, member.key)
                c.free += member.free

    def _leave(self, member: _Member) -> None:
        if member.free:
            for c in member.classes:
                del c.ranked[bisect.bisect_left(c.ranked, member.key)]
                c.free -= member.free

    # What a job asks of it.

    def available(self, model: str, task: str) -> int:
        """Workers with free capacity that serve `model` for `task`, in any engine class."""
        return sum(len(c.ranked) for c in self._by_engine.get((model, task), {}).values())

    def select(
        self,
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
        engines = self._by_engine.get((model, task), {})
        ranked: Sequence[_Key]
        if engine is None:  # any class (`homogeneous` off): one pass merging the classes' rankings
            ranked = list(heapq.merge(*(c.ranked for c in engines.values())))
        else:
            found = engines.get(engine)
            ranked = () if found is None else found.ranked
        if exclude:
            ranked = [key for key in ranked if key[1] not in exclude]
        return _draw(ranked, replicas, tail, rng)

    def choose_engine_class(
        self, model: str, task: str, replicas: int, *, needed: int, rng: random.Random
    ) -> str | None:
        """The engine class a job's replicas come from, or None when no class has `needed` workers."""
        engines = self._by_engine.get((model, task), {})
        for enough in (replicas, needed):
            classes = sorted(engine for engine, c in engines.items() if len(c.ranked) >= enough)
            if len(classes) == 1:  # the usual case: no draw needed
                return classes[0]
            if classes:
                return rng.choices(classes, weights=[engines[engine].free for engine in classes])[0]
        return None


def _draw(ranked: Sequence[_Key], replicas: int, tail: int, rng: random.Random) -> Selection:
    """Top half + tail from eligible workers ranked best first."""
    count = len(ranked)
    if count <= replicas:
        return Selection(tuple(worker for _, worker in ranked), replicas - count)
    half = (count + 1) // 2
    from_rest = min(tail, count - half)
    from_top = replicas - from_rest
    if from_top > half:
        from_top = half
        from_rest = replicas - from_top
    chosen = rng.sample(range(half), from_top) + [
        half + i for i in rng.sample(range(count - half), from_rest)
    ]
    return Selection(tuple(ranked[i][1] for i in chosen), 0)


def select_replicas(
    candidates: Iterable[Candidate],
    model: str,
    task: str,
    replicas: int,
    *,
    rng: random.Random,
    tail: int = 1,
    exclude: Collection[str] = frozenset(),
    engine: str | None = None,
) -> Selection:
    """One selection among `candidates`, for callers that hold no `Ranking`."""
    ranking = Ranking.of(candidates)
    return ranking.select(model, task, replicas, rng=rng, tail=tail, exclude=exclude, engine=engine)


def choose_engine_class(
    candidates: Iterable[Candidate],
    model: str,
    task: str,
    replicas: int,
    *,
    needed: int,
    rng: random.Random,
) -> str | None:
    """The engine class among `candidates`, for callers that hold no `Ranking`."""
    return Ranking.of(candidates).choose_engine_class(model, task, replicas, needed=needed, rng=rng)
