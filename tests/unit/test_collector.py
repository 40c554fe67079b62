"""The orchestrator's garbage-collector settings still free cycles that reached the oldest
generation. A miner's WebSocket that ends in an error leaves its exception, traceback and frames in
a cycle; the session lived long enough to be promoted, so only a full pass frees it. With full
passes all but switched off, the long fuzzing run's RSS grew without bound.

Runs in a child process: `tune_collector` freezes the heap and sets process-wide thresholds."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import gc, weakref
    from krewe.orchestrator.app import tune_collector

    tune_collector()

    class Session:
        def __init__(self):
            try:
                raise ConnectionResetError("the peer went away")
            except ConnectionResetError as error:
                self.error = error  # exception -> traceback -> frame -> self: a cycle

    sessions = [Session() for _ in range(1_000)]
    alive = [weakref.ref(session) for session in sessions]
    held = [[] for _ in range(200_000)]  # other work while the sessions live: they are promoted
    del held
    assert all(ref() is not None for ref in alive)
    del sessions  # every session ends: now cyclic garbage in the oldest generation

    batches = 0
    while any(ref() is not None for ref in alive) and batches < 100:  # at most 10 M allocations
        held = [[] for _ in range(100_000)]
        del held
        batches += 1
    print(sum(ref() is not None for ref in alive), batches)
    """
)


def test_ended_sessions_in_the_oldest_generation_are_freed_without_an_explicit_collection() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    left, batches = map(int, done.stdout.split())
    assert left == 0, f"{left} of 1,000 ended sessions still held after {batches * 100_000:,} allocations"
