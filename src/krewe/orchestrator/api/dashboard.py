"""The operator's dashboard: one page, its files, and the event stream that keeps it live.

`GET /` serves the page and `GET /dashboard/{asset}` its script and style sheet: static files
shipped in the package (krewe/orchestrator/dashboard/), read once, no build step, nothing fetched
from elsewhere. The page draws from one server-sent-events stream, `GET /v1/events`: a
`snapshot` event as soon as it connects, then one a second.

Why one stream rather than polling: the snapshot is built once a second for every viewer
together (`DashboardFeed`), and only while somebody watches; each viewer costs one write a second
and no request, and a browser's EventSource reconnects by itself (and sends the operator's HTTP
Basic credentials again with it).

The feed samples what the dashboard charts once a second whether or not anyone watches (the
client latency histogram and the miner count into `NetworkActivity`). It reads the chain's state
only while somebody watches, at most every `CHAIN_EVERY_S`: three calls through web3 every 5 s cost
an idle orchestrator 0.3 % of a core (docs/performance.md). Nothing here is on a job's path.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from krewe import __version__
from krewe.orchestrator.activity import NetworkActivity
from krewe.orchestrator.api.errors import ApiError
from krewe.orchestrator.api.services import SERVICES

if TYPE_CHECKING:
    from krewe.orchestrator.api.services import Services

__all__ = ["ROUTES", "DashboardFeed"]

log = logging.getLogger(__name__)

ASSETS = {
    "index.html": "text/html",
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
}
HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}
SAMPLE_EVERY_S = 1.0
CHAIN_EVERY_S = 5.0
CHAIN_TIMEOUT_S = 2.0


def _asset(name: str) -> bytes:
    return (resources.files("krewe.orchestrator") / "dashboard" / name).read_bytes()


async def page(request: web.Request) -> web.StreamResponse:
    """The operator's dashboard (an HTML page)."""
    return _serve("index.html")


async def asset(request: web.Request) -> web.StreamResponse:
    """The dashboard's script and style sheet."""
    name = request.match_info["asset"]
    if name not in ASSETS or name == "index.html":
        raise ApiError(404, "not_found", f"the dashboard has no file {name[:64]!r}")
    return _serve(name)


def _serve(name: str) -> web.Response:
    return web.Response(body=_asset(name), content_type=ASSETS[name], headers=HEADERS)


async def events(request: web.Request) -> web.StreamResponse:
    """The dashboard's live feed: server-sent events, a snapshot of the network each second."""
    feed = request.app[SERVICES].dashboard
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        async for snapshot in feed.subscribe():
            await response.write(b"event: snapshot\ndata: " + snapshot + b"\n\n")
    return response


ROUTES = [
    web.route("GET", "/", page),
    web.route("GET", "/dashboard/{asset}", asset),
    web.route("GET", "/v1/events", events),
]


class DashboardFeed:
    """Samples the network once a second and hands every viewer the same snapshot."""

    def __init__(self, services: "Services", activity: NetworkActivity) -> None:
        self._services = services
        self._activity = activity
        self._viewers = 0
        self._latest: bytes | None = None
        self._published = asyncio.Event()
        self._closed = False
        self._chain: dict[str, Any] = {"reachable": None}
        self._chain_read_at = -CHAIN_EVERY_S

    async def run(self) -> None:
        """Sample and publish once a second until cancelled; then let every viewer go."""
        try:
            while True:
                await self._tick()
                await asyncio.sleep(SAMPLE_EVERY_S)  # the sampling period, not synchronisation
        finally:
            self._closed = True
            self._published.set()

    async def _tick(self) -> None:
        now = time.time()
        histogram = self._services.metrics.job_latency
        latency = [
            (float(sample.labels["le"]), int(sample.value))
            for metric in histogram.collect()
            for sample in metric.samples
            if sample.name.endswith("_bucket")
        ]
        self._activity.sample(latency, len(self._services.pool.sessions), now)
        if self._viewers:
            self._latest = await self._snapshot()
            published, self._published = self._published, asyncio.Event()
            published.set()

    async def subscribe(self) -> AsyncIterator[bytes]:
        """The current snapshot, then each new one, until the orchestrator stops."""
        self._viewers += 1
        try:
            if self._latest is None:
                self._latest = await self._snapshot()
            while not self._closed:
                published = self._published
                yield self._latest
                await published.wait()
        finally:
            self._viewers -= 1

    async def _chain_state(self, now: float) -> dict[str, Any]:
        """The chain's state, read again if the last read is `CHAIN_EVERY_S` old."""
        if time.monotonic() - self._chain_read_at >= CHAIN_EVERY_S:
            self._chain_read_at = time.monotonic()
            self._chain = await self._read_chain(now)
        return self._chain

    async def _read_chain(self, now: float) -> dict[str, Any]:
        chain = self._services.chain
        try:
            async with asyncio.timeout(CHAIN_TIMEOUT_S):
                block = await chain.block_number()
                batch_nonce = await chain.batch_nonce(block)
                pool: int = await chain.distributor.functions.unallocated().call(block_identifier=block)
        except Exception as error:  # any failure means the same to an operator: unreachable
            log.debug("the dashboard could not read the chain: %s", error)
            return {**self._chain, "reachable": False, "error": str(error)[:200] or type(error).__name__}
        return {
            "reachable": True,
            "block": block,
            "batch_nonce": batch_nonce,
            "pool": str(pool),
            "read_at": now,
            "orchestrator": chain.address,
            "distributor": chain.distributor.address,
        }

    async def _snapshot(self) -> bytes:
        services, now = self._services, time.time()
        sessions = sorted(services.pool.sessions.values(), key=lambda session: session.address)
        ledger = services.ledger
        earnings = await ledger.earnings(session.address for session in sessions)
        totals = await ledger.totals()
        open_batches = await ledger.open_batches()
        chain = await self._chain_state(now)
        miners = []
        for session in sessions:
            score, account = services.pool.score(session.address), earnings[session.address]
            miners.append(
                {
                    "worker": session.address,
                    "engines": sorted({offer.engine for offer in session.offers}),
                    "models": [
                        {"id": offer.id, "tasks": list(offer.tasks), "engine": offer.engine}
                        for offer in session.offers
                    ],
                    "score": round(score.quality, 4),
                    "latency_ms": None if score.latency_ms is None else round(score.latency_ms, 2),
                    "jobs": score.jobs,
                    "in_flight": session.in_flight,
                    "max_concurrency": session.max_concurrency,
                    "agent": session.agent,
                    "credited": str(account.credited),
                    "paid": str(account.paid),
                    "pending": str(account.pending),
                    "in_flight_wei": str(account.in_flight),
                }
            )
        activity = self._activity
        snapshot = {
            "at": now,
            "version": __version__,
            "network": {
                "miners": len(sessions),
                "jobs_per_s": round(activity.jobs_per_s(now), 3),
                "open_jobs": services.router.jobs,
                "ledger_writable": services.router.ledger_writable,
            },
            "series": activity.series(now),
            "miners": miners,
            "jobs": activity.recent_jobs(),
            "ledger": {
                "credited": str(totals.credited),
                "paid": str(totals.paid),
                "pending": str(totals.pending),
                "in_flight": str(totals.in_flight),
            },
            "settlements": {
                "recent": list(services.settlements)[:20],
                "open": [
                    {
                        "batch": batch.id,
                        "workers": len(batch.workers),
                        "total": str(batch.total),
                        "batch_nonce": batch.send.batch_nonce if batch.send else None,
                        "tx_hash": batch.send.sends[-1].tx_hash if batch.send else None,
                    }
                    for batch in open_batches
                ],
                "window_s": services.settings.settlement_window_s,
            },
            "chain": chain,
        }
        return orjson.dumps(snapshot)
