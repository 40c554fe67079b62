"""Replica selection and peer scores, with fixed seeds."""

import random
from collections import Counter

import pytest

from krewe.orchestrator.scoring import JobOutcome, PeerScore, ScoringConfig, update_score
from krewe.orchestrator.selection import Candidate, Ranking, choose_engine_class, select_replicas

MODEL = "m"
TASK = "chat"
SERVES = frozenset({(MODEL, TASK)})


def pool(ranks: list[float], serves: frozenset[tuple[str, str]] = SERVES) -> list[Candidate]:
    return [
        Candidate(f"w{i:02d}", rank, serves, in_flight=0, max_concurrency=4) for i, rank in enumerate(ranks)
    ]


def test_the_same_seed_gives_the_same_picks() -> None:
    candidates = pool([i / 10 for i in range(10)])
    first = [select_replicas(candidates, MODEL, TASK, 3, rng=random.Random(42)).workers for _ in range(5)]
    again = [select_replicas(candidates, MODEL, TASK, 3, rng=random.Random(42)).workers for _ in range(5)]
    assert first == again


def test_never_the_same_worker_twice_and_the_tail_comes_from_the_bottom_half() -> None:
    candidates = pool([i / 10 for i in range(10)])  # top half: w05..w09
    rng = random.Random(1)
    for _ in range(500):
        picked = select_replicas(candidates, MODEL, TASK, 3, rng=rng).workers
        assert len(set(picked)) == 3
        assert sum(worker >= "w05" for worker in picked) == 2


def test_every_worker_is_picked_and_the_tail_share_matches_expectation() -> None:
    candidates = pool([i / 10 for i in range(10)])
    rng = random.Random(7)
    draws = 20_000
    counts = Counter(
        w for _ in range(draws) for w in select_replicas(candidates, MODEL, TASK, 3, rng=rng).workers
    )
    assert set(counts) == {c.worker for c in candidates}
    # top half (5 workers) share 2 seats per job, the bottom half (5) share 1: 40% vs 20% per worker
    for worker, count in counts.items():
        expected = 0.4 if worker >= "w05" else 0.2
        assert count / draws == pytest.approx(expected, abs=0.02), worker


def test_a_zero_score_worker_is_picked_at_the_tail_rate() -> None:
    candidates = pool([0.0] + [0.9] * 6)  # top half: 4 of the 0.9s, tail: 2 of the 0.9s and the zero
    rng = random.Random(3)
    draws = 20_000
    zero = sum("w00" in select_replicas(candidates, MODEL, TASK, 3, rng=rng).workers for _ in range(draws))
    assert zero / draws == pytest.approx(1 / 3, abs=0.02)


def test_eligibility_model_capacity_and_exclude() -> None:
    candidates = [
        Candidate("busy", 1.0, SERVES, in_flight=2, max_concurrency=2),
        Candidate("other-model", 1.0, frozenset({("x", TASK)}), in_flight=0, max_concurrency=2),
        Candidate("other-task", 1.0, frozenset({(MODEL, "embedding")}), in_flight=0, max_concurrency=2),
        Candidate("excluded", 1.0, SERVES, in_flight=0, max_concurrency=2),
        Candidate("ok1", 0.5, SERVES, in_flight=1, max_concurrency=2),
        Candidate("ok2", 0.1, SERVES, in_flight=0, max_concurrency=2),
    ]
    selection = select_replicas(candidates, MODEL, TASK, 3, rng=random.Random(0), exclude={"excluded"})
    assert selection.workers == ("ok1", "ok2")
    assert selection.shortfall == 1


def test_tail_larger_than_the_bottom_half_is_made_up_from_the_top() -> None:
    selection = select_replicas(pool([0.1, 0.2, 0.3, 0.4]), MODEL, TASK, 3, rng=random.Random(0), tail=3)
    assert len(set(selection.workers)) == 3
    assert selection.shortfall == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="replicas"):
        select_replicas(pool([1.0]), MODEL, TASK, 0, rng=random.Random(0))
    with pytest.raises(ValueError, match="tail"):
        select_replicas(pool([1.0]), MODEL, TASK, 2, rng=random.Random(0), tail=3)


def test_scores_move_toward_outcomes_and_timeouts_weigh_less() -> None:
    config = ScoringConfig()
    new = PeerScore.new(config)
    assert new.quality == config.prior
    agreed = update_score(new, JobOutcome.AGREED, 10.0, config)
    disagreed = update_score(new, JobOutcome.DISAGREED, 10.0, config)
    timed_out = update_score(new, JobOutcome.TIMEOUT, None, config)
    assert agreed.quality > new.quality > timed_out.quality > disagreed.quality
    assert new.quality - timed_out.quality == pytest.approx(
        (new.quality - disagreed.quality) * config.timeout_weight
    )
    assert timed_out.latency_ms is None and agreed.latency_ms == 10.0
    for outcome in (JobOutcome.INVALID, JobOutcome.REJECTED):
        assert update_score(new, outcome, None, config).quality == disagreed.quality


def test_latency_discounts_rank() -> None:
    config = ScoringConfig(latency_ref_ms=100.0)
    fast = PeerScore(quality=0.8, latency_ms=10.0)
    slow = PeerScore(quality=0.8, latency_ms=1000.0)
    assert fast.rank(config) > slow.rank(config)
    assert PeerScore(quality=0.8, latency_ms=100.0).rank(config) == pytest.approx(0.4)
    smoothed = update_score(fast, JobOutcome.AGREED, 110.0, config)
    assert smoothed.latency_ms == pytest.approx(10.0 + config.latency_alpha * 100.0)


def test_bad_scoring_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha"):
        ScoringConfig(alpha=0.0)
    with pytest.raises(ValueError, match="prior"):
        ScoringConfig(prior=1.5)
    with pytest.raises(ValueError, match="negative"):
        update_score(PeerScore(0.5), JobOutcome.AGREED, -1.0, ScoringConfig())


def classes(*spec: tuple[str, str, int, int]) -> list[Candidate]:
    """Candidates (worker, engine class, in flight, max concurrency) serving MODEL for TASK."""
    return [
        Candidate(worker, 0.5, SERVES, in_flight, capacity, engines={MODEL: engine})
        for worker, engine, in_flight, capacity in spec
    ]


def test_an_engine_class_is_drawn_among_those_that_can_field_the_job_weighted_by_free_capacity() -> None:
    candidates = classes(
        ("a1", "A", 0, 1), ("a2", "A", 0, 1), ("a3", "A", 0, 1),
        ("b1", "B", 0, 9), ("b2", "B", 0, 9), ("b3", "B", 0, 9),
        ("c1", "C", 0, 100), ("c2", "C", 0, 100),  # too few for 3 replicas
    )  # fmt: skip
    rng = random.Random(7)
    draws = Counter(choose_engine_class(candidates, MODEL, TASK, 3, needed=2, rng=rng) for _ in range(1000))
    assert set(draws) == {"A", "B"}
    assert 850 < draws["B"] < 950  # 27 free slots against 3


def test_without_a_class_of_replicas_size_one_of_threshold_size_is_taken_else_none() -> None:
    candidates = classes(("a1", "A", 0, 2), ("a2", "A", 0, 2), ("b1", "B", 0, 2), ("b2", "B", 1, 1))
    rng = random.Random(0)
    assert choose_engine_class(candidates, MODEL, TASK, 3, needed=2, rng=rng) == "A"  # b2 is busy
    assert choose_engine_class(candidates, MODEL, TASK, 3, needed=3, rng=rng) is None


def test_selection_within_a_class_takes_no_one_from_another() -> None:
    candidates = classes(*[(f"a{i}", "A", 0, 2) for i in range(5)], *[(f"b{i}", "B", 0, 2) for i in range(5)])
    rng = random.Random(3)
    for _ in range(50):
        picked = select_replicas(candidates, MODEL, TASK, 3, rng=rng, engine="B").workers
        assert len(picked) == 3 and all(worker.startswith("b") for worker in picked)


def test_a_withdrawn_offer_leaves_nothing_behind() -> None:
    ranking = Ranking()
    for i in range(100):
        ranking.put(f"w{i}", 0.5, [(f"model-{i}", TASK, "e")], in_flight=i % 2, max_concurrency=1)
        ranking.remove(f"w{i}")
    assert ranking._by_engine == {}  # no state kept for models nobody serves
