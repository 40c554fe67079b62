"""What the API reads from the running orchestrator, and where a handler finds it.

`build_app` stores the services in the application under `SERVICES`; a handler reads them as
`request.app[SERVICES]`. The calls into the router and the session pool are few and plain:
`router.submit(...)` (openai.py, jobs.py), `pool.models()` (openai.py), and the session listing
(operations.py, dashboard.py); the miners' WebSocket endpoint shares the port. The dashboard's
feed reads the chain (its head, batch nonce and reward pool) through `chain`.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.chain import ChainClient
from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.endpoint import WorkerEndpoint
from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.pool import SessionPool
from krewe.orchestrator.ratelimit import RateLimiter
from krewe.orchestrator.records import JobStore
from krewe.orchestrator.router import JobRouter
from krewe.orchestrator.shared import RedisRateLimiter

if TYPE_CHECKING:
    from krewe.orchestrator.api.dashboard import DashboardFeed

__all__ = ["SERVICES", "Services"]


class Services(Protocol):
    """What the API reads from the running orchestrator."""

    settings: OrchestratorSettings
    metrics: Metrics
    pool: SessionPool
    endpoint: WorkerEndpoint
    router: JobRouter
    ledger: LedgerService
    records: JobStore
    limiter: RateLimiter | RedisRateLimiter
    chain: ChainClient
    dashboard: "DashboardFeed"

    @property
    def settlements(self) -> Iterable[dict[str, Any]]: ...

    async def ready(self) -> dict[str, bool]: ...


SERVICES = web.AppKey("services", Services)
