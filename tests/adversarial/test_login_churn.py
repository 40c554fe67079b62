"""A miner that logs in and leaves again and again must not grow the orchestrator's memory: the
heartbeat's queue holds each session until its next ping, and ended ones must not pile up there.
(The long fuzzing run saw the orchestrator's RSS grow by two and a half times; this is the cause
it found.)"""

import gc

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
