"""The event-loop lag monitor on a fake clock and a fake loop, and the metrics it fills."""

import gc
import logging
from collections.abc import Callable

import pytest
from prometheus_client import generate_latest

from krewe.orchestrator.looplag import LoopLagMonitor
from krewe.orchestrator.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Holds the one timer the monitor keeps; the test runs it when it likes."""

    def __init__(self) -> None:
        self.timers: list[tuple[float, Callable[[], None], FakeTimer]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer()
        self.timers.append((delay, callback, timer))
        return timer

    def run_next(self) -> None:
        _, callback, timer = self.timers.pop(0)
        assert not timer.cancelled
        callback()


def scrape(metrics: Metrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_lag_is_how_late_the_timer_ran_and_the_max_covers_one_scrape_interval() -> None:
    clock, loop, metrics = FakeClock(), FakeLoop(), Metrics()
    monitor = LoopLagMonitor(metrics, interval_s=0.01, clock=clock)
    monitor.start(loop)
    try:
        for late in (0.0, 0.003, 0.045, 0.0):
            delay, _, _ = loop.timers[0]
            assert delay == 0.01
            clock.now += delay + late
            loop.run_next()
        first = scrape(metrics)
        assert first["krewe_event_loop_lag_seconds_count"] == 4
        assert first['krewe_event_loop_lag_seconds_bucket{le="0.001"}'] == 2
        assert first['krewe_event_loop_lag_seconds_bucket{le="0.005"}'] == 3
        assert first['krewe_event_loop_lag_seconds_bucket{le="0.02"}'] == 3
        assert first['krewe_event_loop_lag_seconds_bucket{le="0.05"}'] == 4
        assert first["krewe_event_loop_lag_seconds_sum"] == pytest.approx(0.048)
        assert first["krewe_event_loop_lag_max_seconds"] == pytest.approx(0.045)
        clock.now += 0.01 + 0.002
        loop.run_next()
        second = scrape(metrics)
        assert second["krewe_event_loop_lag_max_seconds"] == pytest.approx(0.002)  # the 45 ms was read
        assert second["krewe_event_loop_lag_seconds_count"] == 5
    finally:
        monitor.stop()
    assert loop.timers[0][2].cancelled


def test_the_timer_is_due_less_often_while_no_job_is_open() -> None:
    clock, loop, metrics = FakeClock(), FakeLoop(), Metrics()
    open_jobs = [0]
    monitor = LoopLagMonitor(
        metrics, interval_s=0.01, idle_interval_s=0.1, busy=lambda: open_jobs[0] > 0, clock=clock
    )
    monitor.start(loop)
    try:
        delays = []
        for jobs, late in ((1, 0.0), (1, 0.03), (0, 0.0), (0, 0.0)):
            delay, _, _ = loop.timers[0]
            delays.append(delay)
            open_jobs[0] = jobs  # what the next timer is set by
            clock.now += delay + late
            loop.run_next()
        assert delays == [0.1, 0.01, 0.01, 0.1] and loop.timers[0][0] == 0.1
        assert scrape(metrics)["krewe_event_loop_lag_max_seconds"] == pytest.approx(0.03)
    finally:
        monitor.stop()


def test_a_job_that_opens_sets_the_idle_timer_again_on_the_short_interval() -> None:
    clock, loop = FakeClock(), FakeLoop()
    open_jobs = [0]
    monitor = LoopLagMonitor(
        Metrics(), interval_s=0.01, idle_interval_s=0.1, busy=lambda: open_jobs[0] > 0, clock=clock
    )
    monitor.start(loop)
    try:
        clock.now += 0.005
        open_jobs[0] = 1
        monitor.wake()
        idle, short = loop.timers
        assert (idle[0], idle[2].cancelled, short[0], short[2].cancelled) == (0.1, True, 0.01, False)
        monitor.wake()  # already on the short interval: nothing changes
        assert len(loop.timers) == 2
    finally:
        monitor.stop()


def test_a_long_stall_is_logged_with_its_length(caplog: pytest.LogCaptureFixture) -> None:
    clock, loop = FakeClock(), FakeLoop()
    monitor = LoopLagMonitor(Metrics(), interval_s=0.01, warn_s=0.1, clock=clock)
    monitor.start(loop)
    try:
        clock.now += 0.01 + 0.25
        with caplog.at_level(logging.WARNING, logger="krewe.orchestrator.looplag"):
            loop.run_next()
        assert "stalled for 250 ms" in caplog.text
    finally:
        monitor.stop()


def test_garbage_collector_passes_are_timed_by_generation() -> None:
    clock, loop, metrics = FakeClock(), FakeLoop(), Metrics()
    monitor = LoopLagMonitor(metrics, clock=clock)
    callbacks = len(gc.callbacks)
    monitor.start(loop)
    try:
        assert len(gc.callbacks) == callbacks + 1
        gc.collect(2)
        clock.now += 0.01
        loop.run_next()
    finally:
        monitor.stop()
    assert len(gc.callbacks) == callbacks
    values = scrape(metrics)
    assert values['krewe_gc_passes_total{generation="2"}'] >= 1
    assert values["krewe_gc_pause_seconds_count"] >= 1


def test_metrics_are_exposed_in_prometheus_form() -> None:
    metrics = Metrics()
    metrics.jobs.labels("agreed").inc()
    metrics.jobs.labels("agreed").inc()
    metrics.violations.inc()
    metrics.miners.set(3)
    metrics.job_latency.observe(0.004)
    metrics.job_latency.observe(120.0)
    metrics.count_engine_verdict(None, "agreed")
    values = scrape(metrics)
    assert values['krewe_jobs_total{verdict="agreed"}'] == 2
    assert values["krewe_miner_violations_total"] == 1
    assert values["krewe_miners_connected"] == 3
    assert values['krewe_job_latency_seconds_bucket{le="0.0025"}'] == 0
    assert values['krewe_job_latency_seconds_bucket{le="0.005"}'] == 1
    assert values['krewe_job_latency_seconds_bucket{le="60.0"}'] == 1
    assert values['krewe_job_latency_seconds_bucket{le="+Inf"}'] == 2
    assert values["krewe_job_latency_seconds_count"] == 2
    assert values['krewe_engine_verdicts_total{engine="any",verdict="agreed"}'] == 1
    with pytest.raises(ValueError, match="labels"):
        metrics.jobs.labels("agreed", "extra")
