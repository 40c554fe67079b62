"""The cached ranking gives the very picks of a sort per job, whatever changed since, with fixed seeds.

The reference below is replica selection as its definition reads (filter, sort, draw from the
lists); the `Ranking` and the pool that keeps one must agree with it draw for draw.
"""

import random
from collections.abc import Collection

import pytest

from krewe.orchestrator.pool import Session, SessionPool
from krewe.orchestrator.scoring import PeerScore
from krewe.orchestrator.selection import Candidate, Ranking, Selection
from krewe.protocol.messages import ModelOffer

MODELS = ("m1", "m2")
TASKS = ("chat", "embedding")
ENGINES = ("A", "B", "")


def reference_select(
    candidates: list[Candidate],
    model: str,
    task: str,
    replicas: int,
    *,
    rng: random.Random,
    tail: int,
    exclude: Collection[str] = (),
    engine: str | None = None,
) -> Selection:
    eligible = [
        c
        for c in candidates
        if (model, task) in c.serves
        and c.in_flight < c.max_concurrency
        and c.worker not in exclude
        and (engine is None or c.engine(model) == engine)
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


def reference_engine_class(
    candidates: list[Candidate], model: str, task: str, replicas: int, *, needed: int, rng: random.Random
) -> str | None:
    free: dict[str, int] = {}
    workers: dict[str, int] = {}
    for c in candidates:
        if (model, task) in c.serves and c.in_flight < c.max_concurrency:
            engine = c.engine(model)
            free[engine] = free.get(engine, 0) + c.max_concurrency - c.in_flight
            workers[engine] = workers.get(engine, 0) + 1
    for enough in (replicas, needed):
        classes = sorted(engine for engine, count in workers.items() if count >= enough)
        if classes:
            return rng.choices(classes, weights=[free[engine] for engine in classes])[0]
    return None


def random_candidate(worker: str, rng: random.Random) -> Candidate:
    serves = frozenset((m, t) for m in MODELS for t in TASKS if rng.random() < 0.6)
    engines = {model: rng.choice(ENGINES) for model in MODELS}
    capacity = rng.randint(1, 3)
    return Candidate(
        worker,
        rng.choice((0.0, 0.25, 0.5, rng.random())),
        serves,
        rng.randint(0, capacity),
        capacity,
        engines,
    )


def put(ranking: Ranking, c: Candidate) -> None:
    serves = [(model, task, c.engine(model)) for model, task in c.serves]
    ranking.put(c.worker, c.rank, serves, in_flight=c.in_flight, max_concurrency=c.max_concurrency)


def assert_agrees(ranking: Ranking, candidates: list[Candidate], check: random.Random) -> None:
    for model in MODELS:
        for task in TASKS:
            eligible = [
                c for c in candidates if (model, task) in c.serves and c.in_flight < c.max_concurrency
            ]
            assert ranking.available(model, task) == len(eligible)
            for replicas in (1, 3, 5):
                for tail in {0, 1, replicas}:
                    for engine in (None, *ENGINES):
                        exclude = {c.worker for c in candidates if check.random() < 0.2}
                        seed = check.randrange(2**32)
                        ours = ranking.select(
                            model,
                            task,
                            replicas,
                            rng=random.Random(seed),
                            tail=tail,
                            exclude=exclude,
                            engine=engine,
                        )
                        theirs = reference_select(
                            candidates,
                            model,
                            task,
                            replicas,
                            rng=random.Random(seed),
                            tail=tail,
                            exclude=exclude,
                            engine=engine,
                        )
                        assert ours == theirs
                seed = check.randrange(2**32)
                for needed in range(1, replicas + 1):
                    assert ranking.choose_engine_class(
                        model, task, replicas, needed=needed, rng=random.Random(seed)
                    ) == reference_engine_class(
                        candidates, model, task, replicas, needed=needed, rng=random.Random(seed)
                    )


@pytest.mark.parametrize("seed", range(5))
def test_the_ranking_agrees_with_a_sort_per_job_through_every_kind_of_change(seed: int) -> None:
    rng = random.Random(seed)
    ranking = Ranking()
    candidates: dict[str, Candidate] = {}
    for step in range(300):
        move = rng.random()
        worker = f"w{rng.randrange(12):02d}"
        current = candidates.get(worker)
        if current is None or move < 0.15:  # comes, or comes back with other offers
            candidates[worker] = random_candidate(worker, rng)
            put(ranking, candidates[worker])
        elif move < 0.25:
            del candidates[worker]
            ranking.remove(worker)
        elif move < 0.6:  # takes or finishes a job, sometimes across its capacity
            current.in_flight = max(0, current.in_flight + rng.choice((-1, 1)))
            ranking.set_load(worker, current.in_flight)
        else:  # its score moves, sometimes onto another worker's rank
            current.rank = rng.choice((0.5, round(rng.random(), 2)))
            ranking.set_rank(worker, current.rank)
        if step % 10 == 0:
            assert_agrees(ranking, list(candidates.values()), rng)
    assert_agrees(ranking, list(candidates.values()), rng)


def test_changes_for_unknown_workers_are_ignored() -> None:
    ranking = Ranking()
    ranking.set_rank("nobody", 1.0)
    ranking.set_load("nobody", 3)
    ranking.remove("nobody")
    assert ranking.available("m1", "chat") == 0
    assert ranking.select("m1", "chat", 3, rng=random.Random(0)) == Selection((), 3)
    assert ranking.choose_engine_class("m1", "chat", 3, needed=2, rng=random.Random(0)) is None


class _NoChannel:
    def send(self, frame: str) -> bool:
        return False

    async def close(self, close_code: int, code: str, message: str) -> None:
        return None


def session(address: str, engine: str = "A", capacity: int = 2, session_id: str = "s") -> Session:
    offer = ModelOffer(id="m1", tasks=["chat"], engine=engine)
    return Session(session_id, address, _NoChannel(), (offer,), capacity, "test", 0.0, 0.0)


def pool_candidates(pool: SessionPool) -> list[Candidate]:
    return [
        Candidate(
            s.address,
            pool.score(s.address).rank(pool.scoring),
            s.serves,
            s.in_flight,
            s.max_concurrency,
            {offer.id: offer.engine for offer in s.offers},
        )
        for s in pool.sessions.values()
    ]


def test_the_pool_keeps_its_ranking_in_step_with_sessions_jobs_and_scores() -> None:
    rng = random.Random(11)
    pool = SessionPool(scores={"0xc": PeerScore(0.9, 5.0, 10)})
    a, b, c = session("0xa"), session("0xb", engine="B"), session("0xc", capacity=1)
    for s in (a, b, c):
        pool.add(s)
    pool.assign(c, "j1")  # c is now full
    pool.assign(a, "j1")
    pool.set_score("0xb", PeerScore(0.1, 900.0, 3))
    pool.set_score("0xgone", PeerScore(1.0))  # a worker with no session: only its score is kept
    assert_agrees(pool.ranking, pool_candidates(pool), rng)
    assert pool.ranking.available("m1", "chat") == 2

    newer = session("0xa", engine="B", capacity=1, session_id="t")
    assert pool.add(newer) is a  # a logs in again: the new session counts, with no job yet
    pool.release(a, "j1")  # the superseded session's job ends: the new session's load is untouched
    pool.assign(newer, "j2")
    assert_agrees(pool.ranking, pool_candidates(pool), rng)
    assert pool.ranking.available("m1", "chat") == 1

    pool.release(c, "j1")
    pool.update_offers(b, [ModelOffer(id="m1", tasks=["chat"], engine="A")], 4)
    assert_agrees(pool.ranking, pool_candidates(pool), rng)
    pool.remove(b)
    pool.remove(newer)
    assert_agrees(pool.ranking, pool_candidates(pool), rng)
    assert pool.ranking.available("m1", "chat") == 1
    assert pool.models() == {"m1": ["chat"]} and pool.tasks_for("m1") == ["chat"]
    pool.remove(c)
    assert pool.models() == {} and pool.tasks_for("m1") == []
