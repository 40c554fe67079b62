"""The event loop's own measure of its stalls, and of the garbage collector's passes.

A timer is due every `interval_s` while `busy()` says so (a job is open here, or this instance
carries another's job to one of its miners), and every `idle_interval_s` while not; `wake()` (the
router calls it when a job opens while none was) sets a timer due on the idle interval again on the
short one. The time between when it was due and when the loop ran it is the lag:
whatever held the loop (a long callback, a collector pass, a call that blocks, another thread
holding the GIL) shows as lag, whoever caused it. Every lag goes into the histogram
`krewe_event_loop_lag_seconds`, the largest since the previous scrape into
`krewe_event_loop_lag_max_seconds`, and a lag past `warn_s` is logged with its length. A stall of
D seconds shows as a lag of at least D less the interval the timer was set with.

The idle interval is the price of a timer's wakeups: a loop with nothing else to do wakes for each,
and 100 wakeups a second cost an idle orchestrator more than a point of a core, about half of what
the heartbeats of 10,000 idle miners cost (docs/performance.md).
While no job is open, no caller waits on the loop, and a stall then shows as up to
`idle_interval_s` shorter than it was (the warning of a stall past `warn_s` may not come for one of
up to `warn_s` + `idle_interval_s`).

The cyclic garbage collector's passes are timed through `gc.callbacks`. A pass can run on any
thread (it runs in whichever allocates when a threshold is crossed), so the callback only appends
to a deque, which is safe across threads; the timer moves those records into the metrics, which
are only ever touched on the loop thread.
"""

import collections
import gc
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from krewe.orchestrator.metrics import Metrics

__all__ = ["LoopLagMonitor"]

log = logging.getLogger(__name__)


class _Handle(Protocol):
    def cancel(self) -> None: ...


class _Loop(Protocol):
    def call_later(self, delay: float, callback: Callable[[], None]) -> _Handle: ...


class LoopLagMonitor:
    def __init__(
        self,
        metrics: Metrics,
        *,
        interval_s: float = 0.01,
        idle_interval_s: float = 0.1,
        busy: Callable[[], bool] = lambda: True,
        warn_s: float = 0.1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._metrics = metrics
        self._interval_s = interval_s
        self._idle_interval_s = idle_interval_s
        self._busy = busy
        self._warn_s = warn_s
        self._clock = clock
        self._loop: _Loop | None = None
        self._timer: _Handle | None = None
        self._due = 0.0
        self._set_for = 0.0  # the interval the current timer was set with
        self._gc_started: float | None = None
        self._gc_passes: collections.deque[tuple[int, float]] = collections.deque()  # (generation, s)

    def start(self, loop: _Loop) -> None:
        self._loop = loop
        gc.callbacks.append(self._on_gc)
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def wake(self) -> None:
        """Work has begun: a timer set on the idle interval is set again, on the short one if
        `busy()` now says so. Nothing is lost: no lag can be under way while this runs."""
        if self._timer is not None and self._set_for != self._interval_s:
            self._timer.cancel()
            self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._set_for = self._interval_s if self._busy() else self._idle_interval_s
        self._due = self._clock() + self._set_for
        self._timer = self._loop.call_later(self._set_for, self._tick)

    def _tick(self) -> None:
        lag = max(0.0, self._clock() - self._due)
        metrics = self._metrics
        metrics.loop_lag.observe(lag)
        metrics.loop_lag_max.observe(lag)
        passes = self._gc_passes
        collected_s = 0.0
        while passes:
            generation, pause = passes.popleft()
            metrics.gc_pause.observe(pause)
            metrics.gc_passes.labels(str(generation)).inc()
            collected_s += pause
        if lag > self._warn_s:
            log.warning(
                "the event loop stalled for %.0f ms (%.0f ms of it in the garbage collector)",
                lag * 1000,
                collected_s * 1000,
            )
        self._schedule()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = self._clock()
        elif self._gc_started is not None:
            self._gc_passes.append((info["generation"], self._clock() - self._gc_started))
            self._gc_started = None
