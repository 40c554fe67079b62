"""Chaos: money stays exact while the orchestrator is killed at every stage of settlement.

    python -m bench.chaos [--kills N] [--seconds S] [--json PATH] [--seed N]

A real network on 127.0.0.1: anvil with the contracts, the orchestrator as its own process
(`krewe orchestrator`, a durable data directory, settlement every 2 s), honest miners and liars
(the real miner agent, in this process, over a test double backend that answers at once), and
clients sending native jobs (`POST /v1/jobs`) at a steady, bounded rate. The orchestrator is
SIGKILLed N times, round robin over these moments:

    crediting   under load, the moment a client has been told a job agreed (killed from here)
    recorded    a batch's signed transaction is in the ledger, not yet broadcast
    replaced    a fee bump is in the ledger, not yet broadcast (mining is off, receipts time out)
    snapshot    pending credits were frozen into a batch, nothing signed
    sent        the transaction was broadcast (mining is off: it stays in the mempool)
    mined       the transaction has a receipt, the ledger does not know yet

A settlement stage is hit by the orchestrator's fault hook (KREWE_FAULT_KILL_AT, see
krewe.orchestrator.app), which SIGKILLs the process there. Mining stays off for `sent` and
`replaced` and comes back at a random moment of the next run, so a restart finds the transaction
still pending or already mined. In every other crediting run (at least one) the chain itself is
stopped (SIGSTOP) for an eighth of S, 3 to 14 s, across settlement windows, and resumed (SIGCONT).
After every kill the orchestrator restarts with the same settings and data directory; the load
runs on until S seconds have passed.

Then, with everything resumed, the load stops, the last settlement pays what is left, the
orchestrator stops, and the ledger (SQLite, opened read-only) and the chain are checked:

- every job a client was told agreed and creditable has each of its agreeing miners credited,
  once, the reward; an agreed job that is not creditable (too few miners) credits nobody;
- ledger credited == paid + pending + in flight, and every credit is paid at the end;
- ledger paid == the distributor's credited per worker, summed == totalCredited() == the sum of
  the `RewardsDistributed` totals, and each paid batch is the event at its batch nonce;
- batch nonces are consecutive from 0; per worker, on chain == paid in the ledger and paid +
  pending + in flight == its credits, so no (job, worker) was paid twice;
- liars were credited nothing; every planned fault happened.

It prints a table and exits 1 on any violation. Every process is started on a free port and
stopped by PID, also on error; every wait is bounded.
"""

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import uvloop
from eth_account import Account
from rich.console import Console
from rich.table import Table
from web3 import Web3

from krewe.devchain import (
    KREW,
    Anvil,
    Deployment,
    DevChainError,
    deploy,
    dev_key,
    free_port,
    stake_worker,
)
from krewe.keys import SigningKey
from krewe.miner.agent import MinerAgent
from krewe.miner.config import MinerSettings
from krewe.orchestrator.app import FAULT_KILL_AT_ENV
from krewe.protocol.messages import ModelOffer

CREDITING = "crediting"
STAGES = (CREDITING, "recorded", "replaced", "snapshot", "sent", "mined")
MINING_OFF = ("sent", "replaced")  # stages reached with mining off, so the transaction stays pending
MODEL = "chaos-model"
ENGINE = "instant-test-double/1"
REWARD_WEI = 10**15
HONEST, LIARS = 4, 2
ADMIN, ORCHESTRATOR, FIRST_MINER = 0, 1, 2  # anvil development account indexes
STAKE = 100 * KREW
CLIENTS = 4
CLIENT_PAUSE_S = 0.08  # between one client's requests: about 50 jobs/s in all, at most
SETTLEMENT_WINDOW_S = 2.0
CHAIN_STOP_S = (3.0, 14.0)  # shortest and longest chain stop; an eighth of --seconds in between


class ChaosError(Exception):
    """The run could not go on (a process did not start or stop in time); not a money violation."""


class InstantBackend:
    """A test double backend, not a product part: answers every chat job at once from its input
    alone. A liar's answer carries its own address, so no two liars ever agree with each other."""

    def __init__(self, liar_address: str | None = None) -> None:
        self._lie = f" (lie from {liar_address})" if liar_address else ""

    def offers(self) -> list[ModelOffer]:
        return [ModelOffer(MODEL, ["chat"], ENGINE)]  # liars claim the honest class, to be compared

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]:
        content = "echo: " + orjson.dumps(job_input.get("messages")).decode() + self._lie
        return {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5},
        }

    async def close(self) -> None:
        return None


@dataclass
class Load:
    """What the clients were told."""

    requests: int = 0
    agreed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # job id -> agreeing miners
    # agreed but not creditable: sent to fewer than min_credit_replicas miners (some were reconnecting)
    uncreditable: set[str] = field(default_factory=set)
    told_at: dict[str, float] = field(default_factory=dict)  # job id -> when its client was told
    outcomes: Counter[str] = field(default_factory=Counter)
    agreed_now: asyncio.Event = field(default_factory=asyncio.Event)

    async def next_agreed(self, timeout_s: float) -> None:
        """Wait (bounded) for the next creditable job a client is told agreed."""
        self.agreed_now.clear()
        await asyncio.wait_for(self.agreed_now.wait(), timeout=timeout_s)


async def client(http: aiohttp.ClientSession, url: str, number: int, load: Load, stop: asyncio.Event) -> None:
    sequence = 0
    while not stop.is_set():
        sequence += 1
        body = {
            "model": MODEL,
            "task": "chat",
            "input": {"messages": [{"role": "user", "content": f"client {number} job {sequence}"}]},
        }
        load.requests += 1
        try:
            async with http.post(url + "/v1/jobs", json=body) as response:
                record = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError):
            load.outcomes["no answer"] += 1
        else:
            verdict = record.get("verdict") if status == 200 and isinstance(record, dict) else None
            if verdict == "agreed" and record["creditable"]:
                load.agreed[record["job_id"]] = tuple(record["agreeing"])
                load.told_at[record["job_id"]] = time.monotonic()
                load.agreed_now.set()
            elif verdict == "agreed":
                load.uncreditable.add(record["job_id"])
            load.outcomes[verdict or f"HTTP {status}"] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=CLIENT_PAUSE_S)


@dataclass
class Network:
    anvil: Anvil
    deployment: Deployment
    honest: list[str]
    liars: list[str]
    workdir: Path
    seed: int
    port: int = field(default_factory=free_port)
    chain_stopped: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop_chain(self) -> None:
        os.killpg(self.anvil.process.pid, signal.SIGSTOP)  # npm's anvil is a wrapper: stop its child too
        self.chain_stopped = True

    def resume_chain(self) -> None:
        if self.chain_stopped:
            os.killpg(self.anvil.process.pid, signal.SIGCONT)
            self.chain_stopped = False


class Orchestrator:
    """One run of `krewe orchestrator` on the network's port and data directory, stopped by PID."""

    def __init__(self, network: Network, run: int, kill_at: str | None) -> None:
        self.log_path = network.workdir / f"orchestrator-{run}.log"
        environment = {key: value for key, value in os.environ.items() if key != FAULT_KILL_AT_ENV}
        environment |= {
            "KREWE_PORT": str(network.port),
            "KREWE_RPC_URL": network.anvil.url,
            "KREWE_REGISTRY_ADDRESS": network.deployment.registry,
            "KREWE_DISTRIBUTOR_ADDRESS": network.deployment.distributor,
            "KREWE_CHAIN_FROM_BLOCK": str(network.deployment.block),
            "KREWE_DEV_KEY": dev_key(ORCHESTRATOR),
            "KREWE_DATA_DIR": str(network.workdir / "data"),
            "KREWE_SETTLEMENT_WINDOW_S": str(SETTLEMENT_WINDOW_S),
            "KREWE_SETTLEMENT_CONFIRMATIONS": "0",  # anvil mines only on demand: no block would come
            "KREWE_RECEIPT_TIMEOUT_S": "1",
            "KREWE_MODEL_REWARDS": f"{MODEL}={REWARD_WEI}",
            "KREWE_JOB_TIMEOUT_MS": "5000",
            "KREWE_SHUTDOWN_GRACE_S": "5",
            "KREWE_SEED": str(network.seed),
        }
        if kill_at is not None:
            environment[FAULT_KILL_AT_ENV] = kill_at
        with self.log_path.open("wb") as output:  # the child keeps its own handle
            self.process = subprocess.Popen(
                [sys.executable, "-m", "krewe", "--log-level", "INFO", "orchestrator"],
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid

    @property
    def exited(self) -> bool:
        return self.process.poll() is not None

    async def wait_exit(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise ChaosError(
                    f"orchestrator {self.pid} still running after {timeout_s:g} s ({self.log_path})"
                )
            await asyncio.sleep(0.05)
        return self.process.returncode

    async def wait_healthy(self, http: aiohttp.ClientSession, url: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.exited:
                raise ChaosError(f"the orchestrator exited with {self.process.returncode} ({self.log_path})")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise ChaosError(f"the orchestrator did not start within {timeout_s:g} s ({self.log_path})")
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        if not self.exited:
            os.killpg(self.pid, signal.SIGKILL)

    async def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM (a graceful stop), then SIGKILL if it does not end in time."""
        if not self.exited:
            os.killpg(self.pid, signal.SIGTERM)
        try:
            return await self.wait_exit(timeout_s)
        finally:
            self.kill()
            self.process.wait(timeout=10)

    def killed_at(self) -> str | None:
        """The stage the fault hook killed it at, from its log."""
        for line in reversed(self.log_path.read_text(errors="replace").splitlines()):
            if "fault injection: SIGKILL at settlement stage" in line:
                return line.split("stage ", 1)[1].split("'")[1]
        return None


@dataclass
class Faults:
    planned: list[str]  # the stage of each kill
    pause_runs: set[int]  # the runs during which the chain is stopped
    kills: Counter[str] = field(default_factory=Counter)
    killed_at: list[tuple[float, str]] = field(default_factory=list)  # when each exit was seen, stage
    pauses: int = 0
    wrong_kills: list[str] = field(default_factory=list)

    @classmethod
    def plan(cls, kills: int) -> "Faults":
        """Kills round robin over the stages; the chain stopped in every other crediting run."""
        stages = [STAGES[index % len(STAGES)] for index in range(kills)]
        crediting = [index for index, stage in enumerate(stages) if stage == CREDITING]
        return cls(stages, set(crediting[1::2] or crediting[:1]))


class Chaos:
    """The faulted run: miners and clients in this process, the orchestrator killed again and again."""

    def __init__(self, network: Network, http: aiohttp.ClientSession, options: argparse.Namespace) -> None:
        self.network = network
        self.http = http
        self.seconds = options.seconds
        self.seed = options.seed
        self.rng = random.Random(options.seed)
        self.faults = Faults.plan(options.kills)
        self.pause_s = min(CHAIN_STOP_S[1], max(CHAIN_STOP_S[0], options.seconds / 8))
        self.load = Load()

    async def rpc(self, method: str, *params: Any, timeout_s: float = 15) -> Any:
        async with self.http.post(
            self.network.anvil.url,
            json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            answer = await response.json()
        if "error" in answer:
            raise ChaosError(f"anvil refused {method}: {answer['error']}")
        return answer["result"]

    async def chain_answers(self) -> bool:
        try:
            await self.rpc("eth_blockNumber", timeout_s=0.5)
        except TimeoutError:
            return False
        return True

    async def run(self, started: float) -> None:
        network = self.network
        stop_load = asyncio.Event()
        miner_settings = MinerSettings(
            orchestrator_url=[network.url.replace("http", "ws", 1) + "/v1/workers/connect"],
            max_concurrency=32,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            shutdown_grace_s=2,
        )
        agents = [
            MinerAgent(
                miner_settings,
                SigningKey.from_hex(dev_key(FIRST_MINER + index)),
                InstantBackend(address if address in network.liars else None),
                rng=random.Random(self.seed + index),
            )
            for index, address in enumerate(network.honest + network.liars)
        ]
        miners = [asyncio.ensure_future(agent.run()) for agent in agents]
        clients = [
            asyncio.ensure_future(client(self.http, network.url, number, self.load, stop_load))
            for number in range(CLIENTS)
        ]
        final: Orchestrator | None = None
        try:
            for index, stage in enumerate(self.faults.planned):
                await self.faulted_run(index, stage)
            await self.rpc("evm_setAutomine", True)
            final = Orchestrator(network, len(self.faults.planned), None)
            await final.wait_healthy(self.http, network.url)
            await self.load.next_agreed(timeout_s=60)
            await asyncio.sleep(max(0.0, self.seconds - (time.monotonic() - started)))  # the load's length
            if final.exited:
                raise ChaosError(f"the orchestrator exited under load ({final.log_path})")
            stop_load.set()
            await asyncio.wait_for(asyncio.gather(*clients), timeout=30)
            await self.settle_everything(final)
            for agent in agents:
                agent.stop()
            await asyncio.wait_for(asyncio.gather(*miners, return_exceptions=True), timeout=30)
            code = await final.stop()
            if code != 0:
                raise ChaosError(f"the orchestrator's graceful stop exited with {code} ({final.log_path})")
        finally:
            stop_load.set()
            network.resume_chain()
            if final is not None:
                final.kill()
            for agent in agents:
                agent.stop()
            for task in [*clients, *miners]:
                task.cancel()
            await asyncio.gather(*clients, *miners, return_exceptions=True)

    async def faulted_run(self, index: int, stage: str) -> None:
        """Start the orchestrator, let it work under load, and see it SIGKILLed at `stage`."""
        network, faults = self.network, self.faults
        mining_off = stage in MINING_OFF
        if mining_off:
            await self.rpc("evm_setAutomine", False)
        orchestrator = Orchestrator(network, index, None if stage == CREDITING else stage)
        try:
            await orchestrator.wait_healthy(self.http, network.url)
            automine = await self.rpc("anvil_getAutomine")

            async def script() -> None:
                if not automine and not mining_off:  # the last kill left a transaction pending
                    await asyncio.sleep(self.rng.uniform(0.5, 3.0))  # the fault's random timing
                    await self.rpc("evm_setAutomine", True)
                if index in faults.pause_runs or stage == CREDITING:
                    await self.load.next_agreed(timeout_s=60)
                if index in faults.pause_runs:
                    network.stop_chain()
                    try:
                        stopped = not await self.chain_answers()
                        await asyncio.sleep(self.pause_s)  # the outage under test
                    finally:
                        network.resume_chain()
                    faults.pauses += stopped
                if stage == CREDITING:
                    await asyncio.sleep(self.rng.uniform(0.2, 1.5))  # a random moment under load
                    await self.load.next_agreed(timeout_s=60)
                    orchestrator.kill()

            scripted = asyncio.ensure_future(script())
            exit_code = asyncio.ensure_future(orchestrator.wait_exit(timeout_s=60 + self.pause_s))
            try:
                done, _ = await asyncio.wait({scripted, exit_code}, return_when=asyncio.FIRST_COMPLETED)
                if scripted in done and scripted.exception() is not None:
                    raise ChaosError(f"run {index} ({stage}): {scripted.exception()!r}")
                code = await exit_code
            finally:
                for task in (scripted, exit_code):
                    task.cancel()
                await asyncio.gather(scripted, exit_code, return_exceptions=True)
                network.resume_chain()
            reached = CREDITING if stage == CREDITING else orchestrator.killed_at()
            if code != -signal.SIGKILL or reached != stage:
                faults.wrong_kills.append(f"run {index}: exit {code}, planned {stage}, killed at {reached}")
            else:
                faults.kills[stage] += 1
            faults.killed_at.append((time.monotonic(), stage))
        finally:
            orchestrator.kill()
            orchestrator.process.wait(timeout=10)

    async def settle_everything(self, orchestrator: Orchestrator) -> None:
        """Wait (bounded) until the ledger has nothing pending or in flight, the load being stopped;
        if it never gets there, the checks show what stayed unpaid."""
        deadline = time.monotonic() + 20 * SETTLEMENT_WINDOW_S
        while time.monotonic() < deadline:
            if orchestrator.exited:
                raise ChaosError(f"the orchestrator exited in the final settlement ({orchestrator.log_path})")
            async with self.http.get(self.network.url + "/v1/ledger") as response:
                ledger = await response.json()
            if ledger["pending"] == ledger["in_flight"] == "0":
                return
            await asyncio.sleep(0.2)


async def run_chaos(network: Network, options: argparse.Namespace, started: float) -> Chaos:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        chaos = Chaos(network, http, options)
        await chaos.run(started)
        return chaos


@dataclass
class Check:
    name: str
    violations: int
    detail: str


@dataclass
class LedgerRows:
    """The ledger's tables (krewe.orchestrator.ledger), read after the orchestrator stopped."""

    credits: dict[tuple[str, str], int]  # (job, worker) -> wei
    pending: Counter[str]  # per worker
    paid: Counter[str]  # per worker, from paid batches
    in_flight: Counter[str]  # per worker, from open batches
    paid_batches: list[tuple[int, str]]  # (batch nonce, payload hash) of each paid batch
    credited_total: int
    paid_total: int

    @classmethod
    def read(cls, path: Path) -> "LedgerRows":
        database = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            credits = {
                (job, worker): int(amount)
                for job, worker, amount in database.execute("SELECT job_id, worker, amount FROM credits")
            }
            pending = Counter(
                {worker: int(wei) for worker, wei in database.execute("SELECT worker, pending FROM balances")}
            )
            paid: Counter[str] = Counter()
            in_flight: Counter[str] = Counter()
            paid_batches = []
            for state, workers, amounts, send in database.execute(
                "SELECT state, workers, amounts, send FROM batches ORDER BY id"
            ):
                per_worker = paid if state == "paid" else in_flight if state == "open" else Counter()
                for worker, amount in zip(workers.split(), amounts.split(), strict=True):
                    per_worker[worker] += int(amount)
                if state == "paid":
                    record = json.loads(send)
                    paid_batches.append((record["batch_nonce"], record["payload_hash"]))
            credited, paid_total = database.execute("SELECT credited, paid FROM totals").fetchone()
        finally:
            database.close()
        return cls(credits, pending, paid, in_flight, paid_batches, int(credited), int(paid_total))

    def journal(self) -> Counter[str]:
        """Every credit ever made, per worker."""
        per_worker: Counter[str] = Counter()
        for (_, worker), amount in self.credits.items():
            per_worker[worker] += amount
        return per_worker


@dataclass
class ChainRows:
    """What the distributor shows: credited per worker, its totals, and every RewardsDistributed."""

    credited: dict[str, int]
    total_credited: int
    batch_nonce: int
    events: list[tuple[int, str, int]]  # (batch nonce, payload hash, total), in chain order

    @classmethod
    def read(cls, network: Network, workers: list[str]) -> "ChainRows":
        _, _, distributor = network.deployment.contracts(network.anvil.web3())
        logs = distributor.events.RewardsDistributed().get_logs(from_block=network.deployment.block)
        return cls(
            {w: distributor.functions.credited(Web3.to_checksum_address(w)).call() for w in workers},
            distributor.functions.totalCredited().call(),
            distributor.functions.batchNonce().call(),
            [
                (log["args"]["nonce"], "0x" + bytes(log["args"]["payloadHash"]).hex(), log["args"]["total"])
                for log in logs
            ],
        )


def check_money(network: Network, load: Load, faults: Faults, ledger: LedgerRows) -> list[Check]:
    """Check that every wei is where it must be, in the ledger and on chain."""
    journal = ledger.journal()
    workers = sorted(set(journal) | set(ledger.paid) | set(network.honest) | set(network.liars))
    chain = ChainRows.read(network, workers)
    credits, pending, paid, in_flight = ledger.credits, ledger.pending, ledger.paid, ledger.in_flight
    credited_total, paid_total = ledger.credited_total, ledger.paid_total
    pending_total, in_flight_total = sum(pending.values()), sum(in_flight.values())
    on_chain = chain.credited

    checks = []
    done = sum(faults.kills.values())
    by_stage = ", ".join(f"{stage} {faults.kills[stage]}" for stage in STAGES)
    checks.append(
        Check(
            "every planned fault happened",
            len(faults.planned) - done + len(faults.pause_runs) - faults.pauses,
            f"{done}/{len(faults.planned)} SIGKILLs ({by_stage}); chain stopped {faults.pauses}/"
            f"{len(faults.pause_runs)} times" + "".join(f"; {wrong}" for wrong in faults.wrong_kills),
        )
    )
    missing = [
        (job, worker)
        for job, agreeing in load.agreed.items()
        for worker in agreeing
        if credits.get((job, worker)) != REWARD_WEI
    ]
    pairs = sum(len(agreeing) for agreeing in load.agreed.values())
    checks.append(
        Check(
            "agreed jobs: each agreeing miner credited once",
            len(missing),
            f"{len(load.agreed)} creditable jobs, {pairs} (job, miner) pairs, {len(missing)} not credited"
            + (f": {before_kills(missing, load, faults)}" if missing else ""),
        )
    )
    credited_jobs = {job for job, _ in credits}
    wrongly = load.uncreditable & credited_jobs
    checks.append(
        Check(
            "agreed, not creditable: nobody credited",
            len(wrongly),
            f"{len(load.uncreditable)} jobs, {len(wrongly)} credited anyway",
        )
    )
    balance = credited_total == sum(credits.values()) == paid_total + pending_total + in_flight_total
    checks.append(
        Check(
            "ledger credited = paid + pending + in flight",
            0 if balance else 1,
            f"{credited_total} = {paid_total} + {pending_total} + {in_flight_total} "
            f"(credit journal {sum(credits.values())})",
        )
    )
    checks.append(
        Check(
            "everything paid after the final settlement",
            0 if pending_total == in_flight_total == 0 else 1,
            f"pending {pending_total}, in flight {in_flight_total}",
        )
    )
    sums = (paid_total, sum(paid.values()), sum(on_chain.values()), chain.total_credited)
    events_total = sum(total for _, _, total in chain.events)
    checks.append(
        Check(
            "ledger paid = distributor credited = RewardsDistributed",
            0 if len({*sums, events_total}) == 1 else 1,
            f"ledger {sums[0]}, paid batches {sums[1]}, credited(worker) summed {sums[2]}, "
            f"totalCredited {sums[3]}, events {events_total}",
        )
    )
    nonces = [nonce for nonce, _, _ in chain.events]
    consecutive = nonces == list(range(len(nonces))) and chain.batch_nonce == len(nonces)
    matched = sorted(ledger.paid_batches) == [(nonce, payload) for nonce, payload, _ in chain.events]
    checks.append(
        Check(
            "batch nonces consecutive, each paid batch the event at its nonce",
            0 if consecutive and matched else 1,
            f"{len(nonces)} events, batchNonce {chain.batch_nonce}, {len(ledger.paid_batches)} paid batches, "
            + ("one each, payloads match" if matched else "batches and events differ"),
        )
    )
    twice = [
        worker
        for worker in workers
        if on_chain[worker] != paid[worker]
        or paid[worker] + pending[worker] + in_flight[worker] != journal[worker]
    ]
    checks.append(
        Check(
            "no (job, worker) paid twice",
            len(twice),
            f"{len(workers)} workers: on chain = paid, paid + pending + in flight = credits"
            + (f"; differs for {', '.join(twice)}" if twice else ""),
        )
    )
    liar_credits = sum(journal[liar] + on_chain[liar] for liar in network.liars)
    checks.append(
        Check(
            "liars credited 0",
            sum(1 for liar in network.liars if journal[liar] or on_chain[liar]),
            f"{len(network.liars)} liars, {liar_credits} wei in the ledger and on chain",
        )
    )
    return checks


def before_kills(missing: list[tuple[str, str]], load: Load, faults: Faults) -> str:
    """When the clients of the uncredited jobs were told, against the kill that followed."""
    jobs = sorted({job for job, _ in missing}, key=load.told_at.__getitem__)
    gaps: list[float] = []
    stages: Counter[str] = Counter()
    for job in jobs:
        told = load.told_at[job]
        after = [(killed, stage) for killed, stage in faults.killed_at if killed >= told]
        if after:
            gaps.append(after[0][0] - told)
            stages[after[0][1]] += 1
    where = ", ".join(f"{stage} {count}" for stage, count in stages.items())
    return (
        f"{len(jobs)} jobs, {len(gaps)} of them told agreed at most {max(gaps, default=0) * 1000:.0f} ms "
        f"before a SIGKILL ({where}); e.g. job {jobs[0]}"
    )


def start_network(workdir: Path, seed: int) -> Network:
    anvil = Anvil.start(accounts=FIRST_MINER + HONEST + LIARS)
    try:
        w3 = anvil.web3()
        orchestrator = Account.from_key(dev_key(ORCHESTRATOR)).address
        deployment = deploy(
            w3, admin=anvil.accounts[ADMIN], orchestrator=orchestrator, min_stake=STAKE, pool=10**6 * KREW
        )
        miners = anvil.accounts[FIRST_MINER : FIRST_MINER + HONEST + LIARS]
        for miner in miners:
            stake_worker(w3, deployment, miner, STAKE)
        return Network(anvil, deployment, miners[:HONEST], miners[HONEST:], workdir, seed)
    except BaseException:
        anvil.stop()
        raise


def report_table(checks: list[Check], summary: str) -> Table:
    table = Table(title="chaos: money under faults", caption=summary)
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for check in checks:
        result = "ok" if check.violations == 0 else f"VIOLATION ({check.violations})"
        table.add_row(check.name, result, check.detail)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the orchestrator (default 20)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=120,
        help="least seconds of client load, kills included (default 120)",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    options = parser.parse_args(argv)
    if options.kills < 0 or options.seconds < 0:
        parser.error("--kills and --seconds cannot be negative")
    console = Console()
    if not console.is_terminal:
        console.width = 160  # a log or a pipe: wide enough that the details do not wrap
    workdir = Path(tempfile.mkdtemp(prefix="krewe-chaos-"))
    logging.basicConfig(
        level=logging.WARNING, filename=workdir / "harness.log", format="%(asctime)s %(name)s: %(message)s"
    )
    started = time.monotonic()
    try:
        network = start_network(workdir, options.seed)
    except DevChainError as error:
        console.print(f"chaos failed: {error}", soft_wrap=True, markup=False)
        return 2
    try:
        chaos = uvloop.run(run_chaos(network, options, started))
        ledger = LedgerRows.read(workdir / "data" / "ledger.db")
        checks = check_money(network, chaos.load, chaos.faults, ledger)
    except (ChaosError, TimeoutError) as error:
        console.print(f"chaos failed: {error} (logs in {workdir})", soft_wrap=True, markup=False)
        return 2
    finally:
        network.resume_chain()
        network.anvil.stop()
    elapsed = time.monotonic() - started
    load, faults = chaos.load, chaos.faults
    credited, paid = ledger.credited_total, ledger.paid_total
    violations = sum(check.violations for check in checks)
    summary = (
        f"{sum(faults.kills.values())} kills, chain stopped {faults.pauses}x {chaos.pause_s:g} s, "
        f"{load.requests} requests, {len(load.agreed) + len(load.uncreditable)} agreed, "
        f"credited {credited} wei, paid {paid} wei, "
        f"{elapsed:.0f} s: {violations} violations"
    )
    console.print(report_table(checks, summary))
    if options.json:
        report = {
            "kills": sum(faults.kills.values()),
            "kills_by_stage": {stage: faults.kills[stage] for stage in STAGES},
            "chain_pauses": faults.pauses,
            "chain_pause_s": chaos.pause_s,
            "violations": violations,
            "requests": load.requests,
            "jobs_agreed": len(load.agreed) + len(load.uncreditable),
            "jobs_agreed_creditable": len(load.agreed),
            "client_outcomes": dict(load.outcomes),
            "credited_wei": credited,
            "paid_wei": paid,
            "seconds": round(elapsed, 1),
            "seed": options.seed,
            "checks": [
                {"name": c.name, "ok": c.violations == 0, "violations": c.violations, "detail": c.detail}
                for c in checks
            ],
        }
        options.json.write_text(json.dumps(report, indent=2) + "\n")
    if violations:
        console.print(f"logs and the ledger are in {workdir}", soft_wrap=True, markup=False)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
