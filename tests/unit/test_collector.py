"""The orchestrator's garbage-collector settings still free cycles that reached the oldest
generation: a session lives long enough to be promoted, so only a full pass frees a cycle it ends
in. With full passes all but switched off, such cycles (aiohttp's errors kept on ended WebSockets,
before the endpoint released them) piled up in the long fuzzing run.

Runs in a child process: `tune_collector` freezes the heap and sets process-wide thresholds."""

import gc
import subprocess
import sys
import textwrap
import weakref

from krewe.orchestrator.endpoint import _release_errors

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


def test_the_error_a_websocket_ended_with_no_longer_holds_it_in_a_cycle() -> None:
    """aiohttp keeps the error a socket ended with on the socket, and the error's frames hold the
    socket (through `self`), its context (the end of stream that led to it) too. Once the endpoint
    has released them, dropping the socket frees it at once, with no collector pass."""

    class Socket:  # as aiohttp's: errors raised in its own methods, the last kept on it
        def read(self) -> None:
            raise EOFError("end of stream")

        def close(self) -> None:
            try:
                self.read()
            except EOFError:
                self.write()

        def write(self) -> None:
            try:
                raise ConnectionResetError("cannot write to closing transport")
            except ConnectionResetError as error:
                self.error = error  # its context, the end of stream, holds `read`'s frame

    gc.disable()
    try:
        held, released = Socket(), Socket()
        held.close()
        released.close()
        _release_errors(released.error)
        refs = weakref.ref(held), weakref.ref(released)
        del held, released
        assert refs[0]() is not None  # without the release, only a collector pass would free it
        assert refs[1]() is None
    finally:
        gc.enable()
