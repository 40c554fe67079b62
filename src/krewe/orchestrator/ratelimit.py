"""A token bucket per caller: pure, with the clock passed in.

Each caller (an API key, or an address when no keys are set) starts with `burst` tokens, spends
one per request and earns `rate` tokens a second back, up to `burst`. When too many callers are
kept, those whose bucket has refilled are forgotten: a full bucket is the same as a new one.
"""

from collections.abc import Callable

__all__ = ["RateLimiter"]


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float],
        max_callers: int = 10_000,
    ) -> None:
        self.rate, self.burst, self._max_callers, self._clock = rate, burst, max_callers, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when counted)

    def take(self, caller: str) -> float:
        """0 if the caller may go now, else the seconds until it may."""
        now = self._clock()
        if caller not in self._buckets and len(self._buckets) >= self._max_callers:
            self._buckets = {
                who: (tokens, when)
                for who, (tokens, when) in self._buckets.items()
                if tokens + (now - when) * self.rate < self.burst
            }
        tokens, when = self._buckets.get(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens >= 1:
            self._buckets[caller] = (tokens - 1, now)
            return 0.0
        self._buckets[caller] = (tokens, now)
        return (1 - tokens) / self.rate
