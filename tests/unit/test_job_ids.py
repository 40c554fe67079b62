"""Job ids: unguessable, and in the order the jobs were made (the stores keyed by job id append)."""

from datetime import UTC, datetime, timedelta

from krewe.orchestrator.router import JobIds

MADE = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)


def test_an_id_is_the_millisecond_it_was_made_then_96_random_bits() -> None:
    job_id = JobIds().next(MADE)
    assert len(job_id) == 12 + 24
    assert int(job_id[:12], 16) == int(MADE.timestamp() * 1000)
    int(job_id[12:], 16)  # hex


def test_ids_made_later_sort_later_and_none_repeats_across_refills() -> None:
    ids = JobIds(per_refill=3)
    made = [ids.next(MADE + timedelta(milliseconds=i)) for i in range(10)]
    assert made == sorted(made)
    same_moment = [ids.next(MADE) for _ in range(10)]
    assert len({job_id[12:] for job_id in made + same_moment}) == 20
