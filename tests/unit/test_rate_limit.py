"""The per-caller token bucket, on an injected clock."""

from krewe.orchestrator.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == 0.5  # one token comes back in half a second
    assert limiter.take("b") == 0.0  # each caller has its own bucket
    clock.now = 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == 0.5


def test_idle_callers_are_forgotten_when_too_many_are_kept() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, max_callers=3, clock=clock)
    for caller in ("a", "b", "c"):
        limiter.take(caller)
    limiter.take("c")  # "c" is now empty
    clock.now = 1.0  # "a" and "b" have refilled; "c" has one token of two
    assert limiter.take("d") == 0.0
    assert limiter.take("c") == 0.0
    assert limiter.take("c") == 1.0  # "c" was kept, with its state
