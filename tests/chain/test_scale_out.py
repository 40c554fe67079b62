"""Two `krewe orchestrator` processes on one Redis store and one anvil, under client load; the one
holding the settlement lease is SIGKILLed (docs/operations.md, docs/settlement.md). The other
keeps answering, takes over its miners and the lease, and settles: every wei paid exactly once.

The whole run happens once, in a module fixture, and records what it saw; the tests check it."""

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis
from bench.chaos import MODEL, REWARD_WEI, ChainRows, InstantBackend, Network, start_network

from krewe.devchain import dev_key, free_port
from krewe.keys import SigningKey
from krewe.miner.agent import MinerAgent
from krewe.miner.config import MinerSettings
from krewe.orchestrator.redis_ledger import DEFAULT_PREFIX
from krewe.redisproc import RedisServer

INSTANCES = ("alpha", "beta")
ORCHESTRATOR_KEY_INDEX = 1  # anvil development account of the distributor's orchestrator
FIRST_MINER_KEY_INDEX = 2  # the miners bench.chaos registers
SETTLEMENT_WINDOW_S = 1.0
SETTLEMENT_LEASE_S = 1.5
TAKEOVER_MARGIN_S = 2.0  # two loaded cores: the survivor's lease check may run a little late
WARM_UP_JOBS = 6
LOAD_AFTER_FAILOVER_S = 3.0  # load the survivor alone for this long once it holds every miner
MAX_REQUESTS = 600  # the load stops by itself at this count, whatever happens
MAX_LOAD_S = 45.0  # ... or after this long
CLIENTS = 2
CLIENT_PAUSE_S = 0.05
WAIT_S = 30.0  # bound of every wait for a state to come about


class ScaleOutError(Exception):
    """The run could not go on: a process did not start or a state did not come in time."""


class Orchestrator:
    """One `krewe orchestrator` process on the shared Redis store, stopped by PID."""

    def __init__(self, name: str, network: Network, redis_url: str, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = workdir / f"{name}.log"
        environment = os.environ | {
            "KREWE_STORE": redis_url,
            "KREWE_INSTANCE_ID": name,
            "KREWE_PORT": str(self.port),
            "KREWE_DATA_DIR": str(workdir / f"data-{name}"),
            "KREWE_RPC_URL": network.anvil.url,
            "KREWE_REGISTRY_ADDRESS": network.deployment.registry,
            "KREWE_DISTRIBUTOR_ADDRESS": network.deployment.distributor,
            "KREWE_CHAIN_FROM_BLOCK": str(network.deployment.block),
            "KREWE_DEV_KEY": dev_key(ORCHESTRATOR_KEY_INDEX),
            "KREWE_SETTLEMENT_WINDOW_S": str(SETTLEMENT_WINDOW_S),
            "KREWE_SETTLEMENT_LEASE_S": str(SETTLEMENT_LEASE_S),
            "KREWE_SETTLEMENT_CONFIRMATIONS": "0",  # anvil mines only on demand: no block would come
            "KREWE_MODEL_REWARDS": f"{MODEL}={REWARD_WEI}",
            "KREWE_JOB_TIMEOUT_MS": "5000",
            "KREWE_SHUTDOWN_GRACE_S": "2",
            "KREWE_SEED": "7",
        }
        with self.log_path.open("wb") as output:  # the child keeps its own handle
            self.process = subprocess.Popen(
                [sys.executable, "-m", "krewe", "--log-level", "INFO", "orchestrator"],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connect_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/workers/connect"

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass
class Sent:
    """One client request and what the client was told."""

    instance: str
    sent_at: float
    verdict: str  # the record's verdict, or what went wrong
    job_id: str = ""
    agreeing: tuple[str, ...] = ()
    creditable: bool = False


@dataclass
class Run:
    """What the run saw, for the tests to check."""

    miners: list[str]
    ledgers_before_kill: dict[str, dict[str, Any]] = field(default_factory=dict)
    killed: str = ""
    survivor: str = ""
    killed_at: float = 0.0
    takeover_s: float = 0.0  # from the SIGKILL until the survivor held the lease
    workers_on_survivor: list[str] = field(default_factory=list)
    connected_to_survivor: int = 0
    frames_miners_ignored: int = 0  # frames a miner could not take (a job before its welcome, say)
    sent: list[Sent] = field(default_factory=list)
    ledger_after: dict[str, Any] = field(default_factory=dict)
    statements: dict[str, dict[str, Any]] = field(default_factory=dict)  # worker -> its whole statement
    chain: ChainRows | None = None
    logs: str = ""


async def until(
    condition: Callable[[], Awaitable[bool]], what: str, timeout_s: float = WAIT_S, every_s: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise ScaleOutError(f"not within {timeout_s:g} s: {what}")
        await asyncio.sleep(every_s)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        response.raise_for_status()
        return await response.json()


async def answers(http: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as response:
            return response.status == 200
    return False


async def send_job(http: aiohttp.ClientSession, orchestrator: Orchestrator, text: str) -> Sent:
    body = {"model": MODEL, "task": "chat", "input": {"messages": [{"role": "user", "content": text}]}}
    sent = Sent(orchestrator.name, time.monotonic(), "")
    try:
        async with http.post(orchestrator.url + "/v1/jobs", json=body) as response:
            record = await response.json(content_type=None)
            status = response.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        sent.verdict = f"no answer: {type(error).__name__}"
        return sent
    if status != 200 or not isinstance(record, dict):
        sent.verdict = f"HTTP {status}"
        return sent
    sent.verdict = record.get("verdict") or "no verdict"
    sent.job_id = record["job_id"]
    sent.agreeing = tuple(record.get("agreeing") or ())
    sent.creditable = bool(record.get("creditable"))
    return sent


async def client_loop(
    http: aiohttp.ClientSession, orchestrators: list[Orchestrator], number: int, run: Run, stop: asyncio.Event
) -> None:
    """Jobs to each instance in turn until stopped, MAX_REQUESTS are sent, or MAX_LOAD_S pass."""
    ends = time.monotonic() + MAX_LOAD_S
    sequence = 0
    while not stop.is_set() and len(run.sent) < MAX_REQUESTS and time.monotonic() < ends:
        orchestrator = orchestrators[(number + sequence) % len(orchestrators)]
        sequence += 1
        run.sent.append(await send_job(http, orchestrator, f"client {number} job {sequence}"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=CLIENT_PAUSE_S)


async def stable_ledger(http: aiohttp.ClientSession, first: str, second: str) -> tuple[Any, Any]:
    """/v1/ledger of both instances, read between two equal reads of the first, so no settlement
    or credit happened in between (bounded)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        before = await get_json(http, first + "/v1/ledger")
        other = await get_json(http, second + "/v1/ledger")
        if before == await get_json(http, first + "/v1/ledger"):
            return before, other
        if time.monotonic() > deadline:
            raise ScaleOutError("the ledger never held still for three reads")
        await asyncio.sleep(0.05)


async def whole_statement(http: aiohttp.ClientSession, url: str, worker: str) -> dict[str, Any]:
    """A worker's statement with every page's credits and payouts."""
    page: dict[str, Any] = await get_json(http, f"{url}/v1/workers/{worker}/statement?limit=1000")
    statement = page
    while page["next_cursor"] is not None:
        page = await get_json(
            http, f"{url}/v1/workers/{worker}/statement?limit=1000&cursor={page['next_cursor']}"
        )
        statement["credits"] += page["credits"]
        statement["payouts"] += page["payouts"]
    return statement


async def scenario(network: Network, redis_url: str, workdir: Path, run: Run) -> None:
    lease = redis.Redis.from_url(redis_url)
    orchestrators = [Orchestrator(name, network, redis_url, workdir) for name in INSTANCES]
    agents: list[MinerAgent] = []
    miners: list[asyncio.Future[None]] = []
    clients: list[asyncio.Future[None]] = []
    stop_load = asyncio.Event()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            for orchestrator in orchestrators:

                async def healthy(orchestrator: Orchestrator = orchestrator) -> bool:
                    if orchestrator.process.poll() is not None:
                        raise ScaleOutError(f"{orchestrator.name} exited ({orchestrator.log_path})")
                    return await answers(http, orchestrator.url)

                await until(healthy, f"{orchestrator.name} up", timeout_s=60)
            for index, address in enumerate(run.miners):
                first = index % len(orchestrators)  # each instance first for half of the miners
                settings = MinerSettings(
                    orchestrator_url=[o.connect_url for o in orchestrators[first:] + orchestrators[:first]],
                    max_concurrency=16,
                    reconnect_min_s=0.1,
                    reconnect_max_s=0.5,
                    shutdown_grace_s=1,
                )
                agents.append(
                    MinerAgent(
                        settings,
                        SigningKey.from_hex(dev_key(FIRST_MINER_KEY_INDEX + index)),
                        InstantBackend(),
                        rng=random.Random(index),
                    )
                )
                assert agents[-1].address == address
            miners = [asyncio.ensure_future(agent.run()) for agent in agents]

            async def everyone_listed() -> bool:
                for orchestrator in orchestrators:
                    listed = await get_json(http, orchestrator.url + "/v1/workers")
                    if sorted(row["worker"] for row in listed["data"]) != sorted(run.miners):
                        return False
                return True

            await until(everyone_listed, "every miner listed by both instances")
            for number in range(WARM_UP_JOBS):
                sent = await send_job(http, orchestrators[number % 2], f"warm-up job {number}")
                run.sent.append(sent)
                if sent.verdict != "agreed":
                    raise ScaleOutError(f"warm-up job {number} at {sent.instance}: {sent.verdict}")

            def holder() -> str | None:
                value = cast("bytes | None", lease.get(DEFAULT_PREFIX + "lease"))
                return None if value is None else value.decode().split(" ", 1)[1]

            async def held() -> bool:
                return holder() is not None

            await until(held, "an instance to hold the settlement lease")
            run.killed = holder() or ""
            victim = next(o for o in orchestrators if o.name == run.killed)
            survivor = next(o for o in orchestrators if o.name != run.killed)
            run.survivor = survivor.name

            async def warm_up_paid() -> bool:
                ledger = await get_json(http, victim.url + "/v1/ledger")
                return bool(ledger["pending"] == ledger["in_flight"] == "0" and ledger["paid"] != "0")

            await until(warm_up_paid, "the lease holder to pay the warm-up jobs")
            first, second = await stable_ledger(http, orchestrators[0].url, orchestrators[1].url)
            run.ledgers_before_kill = {orchestrators[0].name: first, orchestrators[1].name: second}

            clients = [
                asyncio.ensure_future(client_loop(http, orchestrators, number, run, stop_load))
                for number in range(CLIENTS)
            ]
            agreed_before_load = sum(sent.verdict == "agreed" for sent in run.sent)

            async def load_is_answered() -> bool:
                return sum(sent.verdict == "agreed" for sent in run.sent) >= agreed_before_load + 10

            await until(load_is_answered, "10 jobs agreed under load")
            victim.kill()
            run.killed_at = time.monotonic()

            async def survivor_holds_lease() -> bool:
                return holder() == survivor.name

            await until(survivor_holds_lease, "the survivor to take the lease", every_s=0.02)
            run.takeover_s = time.monotonic() - run.killed_at

            async def miners_moved() -> bool:
                metrics = await survivor_metrics(http, survivor.url)
                return metrics.get("krewe_miners_connected") == len(run.miners)

            await until(miners_moved, "every miner connected to the survivor")
            listed = await get_json(http, survivor.url + "/v1/workers")
            run.workers_on_survivor = sorted(row["worker"] for row in listed["data"])
            run.connected_to_survivor = int(
                (await survivor_metrics(http, survivor.url))["krewe_miners_connected"]
            )
            await asyncio.sleep(LOAD_AFTER_FAILOVER_S)  # the load's length on the survivor alone
            stop_load.set()
            await asyncio.wait_for(asyncio.gather(*clients), timeout=WAIT_S)

            async def settled() -> bool:
                ledger = await get_json(http, survivor.url + "/v1/ledger")
                return bool(ledger["pending"] == ledger["in_flight"] == "0")

            await until(settled, "the survivor's final settlement")
            run.ledger_after = await get_json(http, survivor.url + "/v1/ledger")
            for worker in run.miners:
                run.statements[worker] = await whole_statement(http, survivor.url, worker)
            run.chain = ChainRows.read(network, run.miners)
            for agent in agents:
                agent.stop()
            await asyncio.wait_for(asyncio.gather(*miners, return_exceptions=True), timeout=WAIT_S)
            run.frames_miners_ignored = sum(agent.stats.malformed_frames for agent in agents)
    finally:
        stop_load.set()
        for agent in agents:
            agent.stop()
        for task in [*clients, *miners]:
            task.cancel()
        await asyncio.gather(*clients, *miners, return_exceptions=True)
        for orchestrator in orchestrators:
            orchestrator.kill()
        lease.close()
        run.logs = " ".join(str(orchestrator.log_path) for orchestrator in orchestrators)


async def survivor_metrics(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The unlabelled samples of /metrics."""
    async with http.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
        text = await response.text()
    samples = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            samples[name] = float(value)
    return samples


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    workdir = Path(tmp_path_factory.mktemp("scale-out"))
    network = start_network(workdir, seed=7)
    try:
        with RedisServer.start(workdir / "redis") as server:
            observed = Run(miners=list(network.honest))
            asyncio.run(scenario(network, server.url, workdir, observed))
            yield observed
    finally:
        network.anvil.stop()


def test_both_instances_show_the_same_ledger(run: Run) -> None:
    first, second = (run.ledgers_before_kill[name] for name in INSTANCES)
    assert first == second, run.logs
    assert int(first["paid"]) == int(first["credited"]) >= WARM_UP_JOBS * 2 * REWARD_WEI  # two agree, or more


def test_the_survivor_of_a_killed_settler_answers_settles_and_pays_each_credit_once(run: Run) -> None:
    assert run.takeover_s <= 2 * SETTLEMENT_LEASE_S + TAKEOVER_MARGIN_S, run.logs
    assert run.workers_on_survivor == sorted(run.miners), run.logs
    assert run.connected_to_survivor == len(run.miners), run.logs
    assert run.frames_miners_ignored == 0, run.logs  # no job reached a miner before its welcome
    survivor_after_kill = [s for s in run.sent if s.instance == run.survivor and s.sent_at > run.killed_at]
    assert len(survivor_after_kill) >= 10, run.logs
    assert [s for s in survivor_after_kill if s.verdict != "agreed"] == [], run.logs

    ledger, chain = run.ledger_after, run.chain
    assert chain is not None
    credited, paid = int(ledger["credited"]), int(ledger["paid"])
    assert credited == paid + int(ledger["pending"]) + int(ledger["in_flight"])
    assert ledger["pending"] == ledger["in_flight"] == "0"
    assert paid == sum(total for _, _, total in chain.events) == chain.total_credited > 0
    assert [nonce for nonce, _, _ in chain.events] == list(range(chain.batch_nonce))
    assert sum(chain.credited.values()) == paid
    credits = {
        (credit["job_id"], worker): int(credit["amount"])
        for worker, statement in run.statements.items()
        for credit in statement["credits"]
    }
    for worker, statement in run.statements.items():
        worker_credits = sum(amount for (_, whom), amount in credits.items() if whom == worker)
        assert (
            chain.credited[worker] == int(statement["paid"]) == int(statement["credited"]) == worker_credits
        )
    agreed = [s for s in run.sent if s.verdict == "agreed" and s.creditable]
    uncredited = [
        (s.job_id, w) for s in agreed for w in s.agreeing if credits.get((s.job_id, w)) != REWARD_WEI
    ]
    assert agreed and uncredited == [], run.logs
    assert sum(credits.values()) == credited
