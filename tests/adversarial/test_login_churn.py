"""A miner that logs in and leaves again and again must not grow the orchestrator's memory: the
heartbeat's queue holds each session until its next ping, and ended ones must not pile up there.
(The long fuzzing run saw the orchestrator's RSS grow by two and a half times; this is the cause
it found.)"""

import gc
import weakref
from typing import Any

from aiohttp import web

from tests.service.conftest import Harness, until

LOGINS = 300


def closed_websockets() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, web.WebSocketResponse) and o.closed)


async def test_sessions_that_end_leave_no_closed_socket_behind(harness: Harness) -> None:
    miner = await harness.miner(0).__aenter__()
    try:
        before = closed_websockets()
        for _ in range(LOGINS):  # heartbeat_s is 10 s: none of these sessions is pinged yet
            assert (await miner.connect())["type"] == "welcome"
            await miner.close()
        pool = harness.orchestrator.pool
        await until(lambda: not pool.sessions, what="the last session to end")
        left = closed_websockets() - before
    finally:
        await miner.__aexit__(None, None, None)
    assert left < LOGINS // 3, f"{left} closed WebSockets still held after {LOGINS} logins"


async def test_a_socket_cut_off_by_its_miner_keeps_no_traceback_to_hold_it_in_a_cycle(
    harness: Harness,
) -> None:
    """aiohttp keeps the error a socket ended with on the socket, and that error's traceback holds
    the socket's frames: a cycle only a full collector pass would free. The endpoint drops the
    tracebacks of the error and of the errors it arose from once the session has ended."""
    miner = await harness.miner(0).__aenter__()
    pool = harness.orchestrator.pool
    try:
        assert (await miner.connect())["type"] == "welcome"
        [session] = pool.sessions.values()
        ws = session.channel.ws  # type: ignore[attr-defined]
        del session
        miner.ws._response.connection.transport.abort()  # type: ignore[union-attr]  # no close frame
        await until(lambda: not pool.sessions and ws not in harness.orchestrator.endpoint._connections)
    finally:
        await miner.__aexit__(None, None, None)
    error = ws.exception()
    assert error is not None, "the socket was expected to end in an error (its close could not be sent)"
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert [e.__traceback__ for e in chain] == [None] * len(chain), [type(e).__name__ for e in chain]


async def test_an_ended_session_is_freed_without_the_collector(make_harness: Any) -> None:
    """The callback that takes a session's pongs holds the session, and the connection holds the
    callback: the endpoint lets go of it when the session ends, so that no cycle is left for the
    collector. With the collector off, the session is freed once the heartbeat's queue drops it."""
    harness = await make_harness(heartbeat_s=0.1)
    miner = await harness.miner(0).__aenter__()
    pool = harness.orchestrator.pool
    try:
        assert (await miner.connect())["type"] == "welcome"
        [session] = pool.sessions.values()
        ended = weakref.ref(session)
        del session
        gc.collect()
        gc.disable()
        try:
            await miner.close()
            await until(lambda: ended() is None, what="the ended session to be freed")
        finally:
            gc.enable()
    finally:
        await miner.__aexit__(None, None, None)
