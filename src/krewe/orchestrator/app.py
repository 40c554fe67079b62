"""The orchestrator process: every subsystem wired together, and its lifecycle.

Start: open the ledger, the job records and the peer scores (in `data_dir`, or in the Redis that
instances share: `settings.shared`, krewe.orchestrator.shared), connect to the chain (checking
that this key is the distributor's orchestrator), listen, start heartbeats, the settlement loop
and the event-loop lag monitor. Once started, the process moves everything allocated so far
(modules, the contracts' ABIs, web3) out of the garbage collector's sight (`gc.freeze`): it lives
as long as the process, and a full collection that walked it would hold the event loop for tens
of milliseconds. Young passes run less often than CPython's default (`GC_THRESHOLDS`): the hot
path makes next to no cyclic garbage. Full passes still run, since only they free a cycle that has
reached the oldest generation (docs/performance.md).

With a Redis store (`store = redis://...`) the ledger is the one every instance shares, the
server's durability is checked first, and settlement runs only in the instance that holds the
settlement lease, renewed three times per `settlement_lease_s` (docs/settlement.md).

Stop (SIGTERM or SIGINT): stop accepting new miners and requests, let in-flight jobs finish within
`shutdown_grace_s`, close every miner with 1001, make a last settlement attempt, give the
settlement lease up, close the ledger and the records.

Fault injection, for crash tests only (`python -m bench.chaos`): with the environment variable
KREWE_FAULT_KILL_AT set to a settlement stage (snapshot, recorded, sent, mined, replaced), the
process kills itself with SIGKILL the first time settlement reaches that stage. Unset, the default,
it does nothing.
"""

import asyncio
import collections
import contextlib
import gc
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from aiohttp import web

from krewe.keys import SigningKey
from krewe.orchestrator.activity import NetworkActivity
from krewe.orchestrator.api import build_app
from krewe.orchestrator.api.dashboard import DashboardFeed
from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.chain import ChainClient, RegistryReader
from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.endpoint import WorkerEndpoint
from krewe.orchestrator.lease import SettlementLease
from krewe.orchestrator.ledger import Batch, RewardLedger, SQLiteLedgerStore
from krewe.orchestrator.looplag import LoopLagMonitor
from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.network import SessionNetwork
from krewe.orchestrator.nonces import MemoryNonces, UsedNonces, nonce_ttl_s
from krewe.orchestrator.pool import SessionPool
from krewe.orchestrator.ratelimit import RateLimiter
from krewe.orchestrator.records import JobStore, SQLiteJobStore
from krewe.orchestrator.redis_ledger import RedisLedger, check_durability
from krewe.orchestrator.router import JobRouter
from krewe.orchestrator.score_store import ScoreStore, SQLiteScoreStore
from krewe.orchestrator.server import make_runner
from krewe.orchestrator.settlement import Settler
from krewe.orchestrator.shared import (
    REDIS_TIMEOUT_S,
    RedisJobStore,
    RedisNonces,
    RedisRateLimiter,
    RedisScoreStore,
    connect,
)
from krewe.settings import SettingsError

__all__ = ["FAULT_KILL_AT_ENV", "Orchestrator", "serve", "tune_collector"]

log = logging.getLogger(__name__)

FAULT_KILL_AT_ENV = "KREWE_FAULT_KILL_AT"
# A young pass every 5,000 net allocations instead of 700 (under load the passes at 700 found next
# to nothing to free and took about a second in 15, some over 20 ms each), an older one every 10 of
# those, and a full one once more than 10 older ones ran, as CPython's default; even then CPython
# runs it only if the objects promoted to the oldest generation since the last full pass are a
# quarter of those living there, so its cost stays in proportion to what it may free. It must run:
# cyclic garbage that reached the oldest generation (a miner's session lives long enough to get
# there) is freed by no other pass.
GC_THRESHOLDS = (5_000, 10, 10)


def _kill_at_stage_from_env() -> Callable[[str, Batch], None] | None:
    """The settlement hook that SIGKILLs this process at the stage KREWE_FAULT_KILL_AT names."""
    stage = os.environ.get(FAULT_KILL_AT_ENV)
    if not stage:
        return None
    log.warning("fault injection armed: this process will SIGKILL itself at settlement stage %r", stage)

    def kill(reached: str, batch: Batch) -> None:
        if reached == stage:
            log.warning("fault injection: SIGKILL at settlement stage %r (batch %d)", reached, batch.id)
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


class Orchestrator:
    def __init__(self, settings: OrchestratorSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.loop_lag = LoopLagMonitor(self.metrics, busy=self._jobs_open)
        self.settlements: collections.deque[dict[str, Any]] = collections.deque(maxlen=100)
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.port = settings.port
        self.lease: SettlementLease | None = None  # with a Redis store: settle only while held

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    async def start(self) -> None:
        settings = self.settings
        for name in ("registry_address", "distributor_address"):
            if not getattr(settings, name):
                raise SettingsError(f"{name}: required (the address of the deployed contract)")
        key = SigningKey.from_settings(
            role="orchestrator",
            keystore=settings.key_file,
            password_env=settings.key_password_env,
            password_file=settings.key_password_file,
            dev_key_env=settings.dev_key_env,
        )
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = LedgerService(self._open_ledger(data_dir))  # a Redis unfit for it stops start-up here
        self.chain = await ChainClient.connect(
            settings.rpc_url,
            settings.distributor_address,
            key,
            max_batch=settings.max_batch,
            from_block=settings.chain_from_block,
            log_range=settings.chain_log_range,
            max_fee_gwei=settings.max_fee_gwei,
        )
        self.registry = RegistryReader(
            settings.rpc_url,
            settings.registry_address,
            cache_s=settings.registry_cache_s,
            clock=time.monotonic,
        )
        activity = NetworkActivity()
        self.records: JobStore
        self.scores: ScoreStore
        self.limiter: RateLimiter | RedisRateLimiter
        nonces: UsedNonces
        rate, burst, retention_s = (
            settings.rate_limit_per_s,
            settings.rate_limit_burst,
            settings.job_retention_s,
        )
        if settings.shared:
            self.redis = connect(settings.store)
            self.records = RedisJobStore(self.redis, retention_s=retention_s, activity=activity)
            self.scores = RedisScoreStore(self.redis)
            self.limiter = RedisRateLimiter(self.redis, rate, burst)
            nonces = RedisNonces(self.redis, nonce_ttl_s(settings.auth_timeout_s))
        else:
            self.records = SQLiteJobStore(data_dir / "jobs.db", retention_s=retention_s, activity=activity)
            self.scores = SQLiteScoreStore(data_dir / "scores.db", earlier=data_dir / "ledger.db")
            self.limiter = RateLimiter(rate, burst, clock=time.monotonic)
            nonces = MemoryNonces(nonce_ttl_s(settings.auth_timeout_s))
        self.dashboard = DashboardFeed(self, activity)
        self.pool = SessionPool(scores=await self.scores.load())
        rng = random.Random(settings.seed)
        self.router = JobRouter(
            settings,
            self.pool,
            self.ledger,
            self.records,
            self.scores,
            metrics=self.metrics,
            rng=rng,
            on_first_job=self.loop_lag.wake,
        )
        self.network = (
            SessionNetwork.of(self.redis, settings, self.pool, self.router) if settings.shared else None
        )
        self.endpoint = WorkerEndpoint(
            settings,
            self.pool,
            self.network or self.router,
            self.registry,
            self.metrics,
            chain_id=self.chain.chain_id,
            nonces=nonces,
            presence=self.network,
        )
        self.settler = Settler(
            self.ledger,
            self.chain,
            max_batch=settings.max_batch,
            receipt_timeout_s=settings.receipt_timeout_s,
            confirmations=settings.settlement_confirmations,
            on_stage=_kill_at_stage_from_env(),
        )
        if self.network is not None:
            await self.network.start(self.endpoint.violation)
        self.runner = make_runner(build_app(self), settings, self.metrics)
        await self.runner.setup()
        site = web.TCPSite(self.runner, settings.host, settings.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.endpoint.heartbeat()),
            loop.create_task(self.endpoint.recheck_registry()),
            loop.create_task(self._settle_every_window()),
            loop.create_task(self.dashboard.run()),
        ]
        if self.network is not None:
            self._tasks.append(loop.create_task(self.network.run()))
        if self.lease is not None:
            self._tasks.append(loop.create_task(self._keep_lease()))
        self.loop_lag.start(loop)
        log.info("orchestrator %s listening on http://%s:%d", key.address, settings.host, self.port)

    def _jobs_open(self) -> bool:
        """Whether a job is open here, or one of another instance's is on a miner held here."""
        return self.router.jobs > 0 or (self.network is not None and self.network.relayed_jobs > 0)

    def _open_ledger(self, data_dir: Path) -> RewardLedger | RedisLedger:
        """The SQLite ledger in data_dir; or, with a Redis store, the shared ledger, settled only
        by the instance holding the settlement lease."""
        settings = self.settings
        if not settings.shared:
            return RewardLedger(SQLiteLedgerStore(data_dir / "ledger.db"))
        # the Redis ledger runs on its own thread (LedgerService), so it has a client of its own, not async
        client = redis.Redis.from_url(
            settings.store, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        try:
            check_durability(client, allow_volatile=settings.redis_allow_volatile)
        except BaseException:
            client.close()
            raise
        self.lease = SettlementLease(client, settings.instance, lease_s=settings.settlement_lease_s)
        self.shared_ledger = RedisLedger(client, min_replicas=settings.redis_min_replicas)
        return self.shared_ledger

    async def _keep_lease(self) -> None:
        """Renew the settlement lease (or take it when free) three times per lease length."""
        while not self._stop.is_set():
            await self._renew_lease()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.settings.settlement_lease_s / 3)

    async def _renew_lease(self) -> None:
        assert self.lease is not None
        try:
            token = await asyncio.to_thread(self.lease.keep)
        except redis.RedisError as error:
            log.warning("cannot renew the settlement lease: %s", error)
            token = None
        self.shared_ledger.hold(token)

    async def _settle_every_window(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.settings.settlement_window_s)
            if not self._stop.is_set():
                await self.settle()

    async def settle(self) -> None:
        """One settlement window; its results are kept for GET /v1/settlements and metrics. With
        a Redis store, only the instance holding the settlement lease settles."""
        if self.lease is not None:
            await self._renew_lease()
            if self.lease.token is None:
                log.debug("settlement left to the instance holding the lease")
                return
        try:
            results = await self.settler.settle_once()
        except Exception:
            log.exception("settlement failed; it will be tried again next window")
            self.metrics.settlements.labels("error").inc()
            return
        for result in results:
            self.metrics.settlements.labels(result.outcome.value).inc()
            send = result.batch.send
            self.settlements.appendleft(
                {
                    "batch": result.batch.id,
                    "outcome": result.outcome.value,
                    "reason": result.reason,
                    "workers": len(result.batch.workers),
                    "total": str(result.batch.total),
                    "batch_nonce": send.batch_nonce if send else None,
                    "tx_hash": send.sends[-1].tx_hash if send else None,
                    "at": time.time(),
                }
            )

    async def ready(self) -> dict[str, bool]:
        checks = {"chain": True, "ledger": True}
        try:
            await asyncio.wait_for(self.chain.batch_nonce(), timeout=2)
        except Exception:
            checks["chain"] = False
        try:
            await self.ledger.totals()
        except Exception:
            checks["ledger"] = False
        checks["ledger"] = checks["ledger"] and self.router.ledger_writable
        return checks

    async def stop(self) -> None:
        log.info("shutting down: finishing in-flight jobs (up to %g s)", self.settings.shutdown_grace_s)
        self._stop.set()
        self.endpoint.accepting = False
        await self.router.drain(self.settings.shutdown_grace_s)
        await self.endpoint.close_all()
        await self.router.drain(self.settings.shutdown_grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.network is not None:
            await self.network.stop()
        self.loop_lag.stop()
        await self.settle()
        if self.lease is not None:
            await asyncio.to_thread(self.lease.release)
        await self.runner.cleanup()
        await self.records.close()
        await self.scores.close()
        if self.settings.shared:
            await self.redis.aclose()
        await self.ledger.close()
        await self.registry.close()
        await self.chain.close()
        log.info("stopped")


def tune_collector() -> None:
    """Move everything allocated so far out of the collector's sight, and set its thresholds.
    The second collection finds nothing to free: it makes the collector count the oldest
    generation anew (next to empty once frozen), or the first full pass would wait for a quarter
    of the whole start-up heap to be promoted."""
    gc.collect()
    gc.freeze()
    gc.collect()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(settings: OrchestratorSettings) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    orchestrator = Orchestrator(settings)
    await orchestrator.start()
    tune_collector()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await orchestrator.stop()
