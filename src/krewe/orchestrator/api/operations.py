"""Operations endpoints: liveness, readiness, Prometheus metrics, and the network's state.

/healthz, /readyz and /metrics are open (see access.py) for probes and scrapers; the workers,
ledger and settlements listings take an operator key when keys are configured. Amounts of wei are
decimal strings, never JSON numbers, so no client rounds them.
"""

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from krewe import __version__
from krewe.orchestrator.api.errors import json_response
from krewe.orchestrator.api.services import SERVICES

__all__ = ["ROUTES"]


async def list_workers(request: web.Request) -> web.StreamResponse:
    """Connected miners, their scores and load."""
    pool = request.app[SERVICES].pool
    rows = []
    for session in pool.sessions.values():
        score = pool.score(session.address)
        rows.append(
            {
                "worker": session.address,
                "models": [
                    {"id": offer.id, "tasks": list(offer.tasks), "engine": offer.engine}
                    for offer in session.offers
                ],
                "max_concurrency": session.max_concurrency,
                "in_flight": session.in_flight,
                "agent": session.agent,
                "score": round(score.quality, 6),
                "latency_ms": score.latency_ms,
                "jobs": score.jobs,
                "violations": session.violations,
            }
        )
    return json_response({"object": "list", "data": sorted(rows, key=lambda row: row["worker"])})


async def ledger(request: web.Request) -> web.StreamResponse:
    """Credited, paid, pending and in-flight wei."""
    service = request.app[SERVICES].ledger
    totals = await service.totals()
    pending = await service.pending()
    return json_response(
        {
            "credited": str(totals.credited),
            "paid": str(totals.paid),
            "pending": str(totals.pending),
            "in_flight": str(totals.in_flight),
            "pending_by_worker": {worker: str(amount) for worker, amount in sorted(pending.items())},
        }
    )


async def settlements(request: web.Request) -> web.StreamResponse:
    """Recent settlement batches and the open ones."""
    services = request.app[SERVICES]
    open_batches = [
        {
            "batch": batch.id,
            "workers": len(batch.workers),
            "total": str(batch.total),
            "batch_nonce": batch.send.batch_nonce if batch.send else None,
        }
        for batch in await services.ledger.open_batches()
    ]
    return json_response({"recent": list(services.settlements), "open": open_batches})


async def healthz(request: web.Request) -> web.StreamResponse:
    """Liveness."""
    return json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Readiness: the chain answers and the ledger is open."""
    checks = await request.app[SERVICES].ready()
    ready = all(checks.values())
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus metrics."""
    services = request.app[SERVICES]
    totals = await services.ledger.totals()
    services.metrics.pending_wei.set(totals.pending + totals.in_flight)
    body = generate_latest(services.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = [
    web.route("GET", "/v1/workers", list_workers),
    web.route("GET", "/v1/ledger", ledger),
    web.route("GET", "/v1/settlements", settlements),
    web.route("GET", "/healthz", healthz),
    web.route("GET", "/readyz", readyz),
    web.route("GET", "/metrics", metrics),
]
