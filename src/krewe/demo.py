"""`krewe demo`: a whole local network on one machine, watched live.

A local chain (anvil) with the contracts deployed and the reward pool funded; miners registered
and staked with anvil's development keys; an orchestrator and the miners as separate processes
(plus `liars` miners that answer wrong on purpose), serving the built-in embedding and generative
models; real requests through the official `openai` SDK (embeddings, then chat completions, one of
them streamed); answers and verdicts as they come; then a settlement on chain, each miner's
credited balance read back from the contract, and one claim. Every process it starts is stopped
by PID when it ends.

With `instances` N above 1 the network has N orchestrators on consecutive ports from `port`,
sharing one redis-server (append-only, `appendfsync always`) as their store: each miner connects
first to its own instance (miner i to instance i mod N) and lists the others after it, to fail
over; requests go to the instances in turn, and the demo says which instance answered each and
which one settled (the one holding the settlement lease, whose GET /v1/settlements shows the
payment).

The demo's settings (a 10 s settlement window, say) are passed to the processes it starts; they
are not the product's defaults.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import openai
import requests
from eth_account import Account
from rich.console import Console
from rich.live import Live
from rich.table import Table
from web3 import Web3

from krewe.devchain import KREW, Anvil, Deployment, deploy, dev_key, transact
from krewe.keys import SigningKey
from krewe.miner.backends.e5 import E5_MODEL_ID
from krewe.miner.backends.gemma import GEMMA_MODEL_ID
from krewe.miner.onchain import MinerChain, format_krew
from krewe.redisproc import RedisServer

__all__ = ["DemoError", "DemoOptions", "OrchestratorInstance", "instance_layout", "miner_urls", "run_demo"]

ADMIN, ORCHESTRATOR, FIRST_MINER = 0, 1, 2
STAKE = 100 * KREW
REWARD_WEI = 10**15  # each agreeing miner's credit per job
SENTENCES = [
    "Miners stake KREW and serve inference.",
    "The orchestrator sends each request to three miners.",
    "An answer counts only when miners agree byte for byte.",
    "Agreeing miners are credited in the ledger.",
    "Credits are paid on chain in batches.",
    "A miner that lies earns nothing.",
    "Les mineurs sont payés quand ils sont d'accord.",
    "Los mineros cobran cuando coinciden.",
    "矿工达成一致时获得报酬。",
    "Каждый ответ проверяют три майнера.",
    "Every settlement carries a replay nonce.",
    "Consensus uses canonical JSON and SHA-256.",
]
# gemma-3-270m is a base model: it finishes sentences better than it follows instructions
CHATS = [
    "Finish this sentence: Honey bees are",
    "Complete the sentence: A good network is one where",
    "Finish this sentence: A blockchain is",
]
CHAT_MAX_TOKENS = 32


class DemoError(Exception):
    """Why the demo could not go on (printed as its last line)."""


@dataclass
class DemoOptions:
    port: int = 8000
    miners: int = 5
    liars: int = 1
    requests: int = 12
    once: bool = False
    chain_url: str | None = None  # an anvil already running; by default the demo starts its own
    settlement_window_s: float = 10.0
    instances: int = 1  # orchestrators sharing one Redis; 1 is a single one with its SQLite store


@dataclass(frozen=True)
class OrchestratorInstance:
    """One of the demo's orchestrators: its name (its instance_id when there are several) and port."""

    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connect_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/workers/connect"


def instance_layout(port: int, count: int) -> list[OrchestratorInstance]:
    """The demo's orchestrators: one named "orchestrator" on `port`, or `count` of them named
    orchestrator-1, orchestrator-2, ... on consecutive ports from `port`."""
    if count < 1:
        raise DemoError(f"--instances must be at least 1, not {count}")
    if count == 1:
        return [OrchestratorInstance("orchestrator", port)]
    return [OrchestratorInstance(f"orchestrator-{number + 1}", port + number) for number in range(count)]


def miner_urls(instances: list[OrchestratorInstance], miner: int) -> list[str]:
    """Miner number `miner`'s orchestrator URLs: its own instance (`miner` mod N) first, then the
    others in order, so that miners are spread over the instances and each can fail over."""
    first = miner % len(instances)
    return [instance.connect_url for instance in instances[first:] + instances[:first]]


@dataclass
class MinerRow:
    address: str
    liar: bool
    agreed: int = 0
    disagreed: int = 0
    credited: int = 0


@dataclass
class Demo:
    options: DemoOptions
    console: Console
    workdir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    anvil: Anvil | None = None
    redis: RedisServer | None = None
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> str:
        return f"{time.monotonic() - self.started:5.1f}s"

    def say(self, text: str) -> None:
        self.console.print(f"[dim]{self.elapsed()}[/dim] {text}", soft_wrap=True)

    def fact(self, text: str) -> None:
        """A line meant to be read by programs too: never wrapped, never styled."""
        self.console.print(text, soft_wrap=True, markup=False, highlight=False)

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("wb") as log:  # the child keeps its own handle
            process = subprocess.Popen(
                [sys.executable, "-m", "krewe", *args],
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self.redis is not None:  # after the orchestrators, whose last settlement may write to it
            self.redis.stop()
        if self.anvil is not None:
            self.anvil.stop()


def wait_for(what: str, check: Any, timeout_s: float, demo: Demo) -> Any:
    """Poll `check()` until it returns something truthy, within `timeout_s`; else DemoError."""
    deadline = time.monotonic() + timeout_s
    while True:
        for process in demo.processes:
            if process.poll() is not None:
                raise DemoError(
                    f"a process the demo started exited with {process.returncode}: see {demo.workdir}"
                )
        with contextlib.suppress(requests.RequestException):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what} (logs in {demo.workdir})")
        time.sleep(0.2)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; 0 on success (or Ctrl-C), 1 with the reason on the last line otherwise."""
    console = console or Console()
    demo = Demo(options, console, Path(tempfile.mkdtemp(prefix="krewe-demo-")))
    try:
        _run(demo)
        code = 0
    except KeyboardInterrupt:
        console.print("stopping every process the demo started")
        code = 0
    except DemoError as error:
        console.print(f"demo failed: {error}", soft_wrap=True, markup=False)
        code = 1
    except Exception as error:
        console.print(
            f"demo failed: {type(error).__name__}: {error} (logs in {demo.workdir})",
            soft_wrap=True,
            markup=False,
        )
        code = 1
    finally:
        demo.stop_all()
    if code == 0:
        shutil.rmtree(demo.workdir, ignore_errors=True)
    return code


def _run(demo: Demo) -> None:
    options, console = demo.options, demo.console
    instances = instance_layout(options.port, options.instances)
    for instance in instances:
        if not port_is_free(instance.port):
            raise DemoError(f"port {instance.port} is in use: pass --port with a free one")
    if options.miners < 3:
        raise DemoError("the demo needs at least 3 honest miners (jobs go to 3, 2 must agree)")
    if options.chain_url:
        rpc_url = options.chain_url
        demo.say(f"using the chain at {rpc_url}")
    else:
        demo.anvil = Anvil.start(accounts=FIRST_MINER + options.miners + options.liars)
        rpc_url = demo.anvil.url
        demo.say(f"started a local chain (anvil) at {rpc_url}")
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    admin = Account.from_key(dev_key(ADMIN)).address
    orchestrator_key = SigningKey.from_hex(dev_key(ORCHESTRATOR))
    deployment = deploy(
        w3, admin=admin, orchestrator=orchestrator_key.address, min_stake=STAKE, pool=1_000_000 * KREW
    )
    demo.fact(
        f"contracts: token {deployment.token} registry {deployment.registry} "
        f"distributor {deployment.distributor}"
    )
    rows = _register_miners(demo, w3, deployment, rpc_url)
    shared: dict[str, str] = {}
    if len(instances) > 1:
        demo.redis = RedisServer.start(demo.workdir / "redis")
        demo.say(f"started redis-server (append-only, fsync always) at {demo.redis.url}")
        shared = {"KREWE_STORE": demo.redis.url, "KREWE_REDIS_ALLOW_VOLATILE": "false"}
    for instance in instances:
        _spawn_orchestrator(demo, instance, deployment, rpc_url, shared)
    for instance in instances:
        wait_for(instance.name, partial(_healthy, instance.url), 60, demo)
        demo.say(f"{instance.name} up at {instance.url}")
        demo.fact(f"dashboard: {instance.url}/")
    for index, row in enumerate(rows):
        key_index = FIRST_MINER + index
        demo.spawn(
            f"miner-{index}",
            ["miner", "run", "--backend", "local", *(["--tamper"] if row.liar else [])],
            {
                "KREWE_MINER_DEV_KEY": dev_key(key_index),
                "KREWE_MINER_ORCHESTRATOR_URL": ",".join(miner_urls(instances, index)),
            },
        )

    def connected() -> bool:
        workers = set()
        for instance in instances:
            listed = requests.get(instance.url + "/v1/workers", timeout=2).json()["data"]
            workers |= {worker["worker"] for worker in listed}
        return workers == {row.address for row in rows}

    wait_for("the miners to log in", connected, 120, demo)
    demo.say(f"{len(rows)} miners connected ({options.liars} of them lying on purpose)")
    _send_requests(demo, instances, rows)
    paid = _wait_for_settlement(demo, instances)
    _, _, distributor = deployment.contracts(w3)
    table = Table(title="on chain after settlement")
    for column in ("miner", "role", "agreed", "disagreed", "credited (ledger)", "credited (chain)"):
        table.add_column(column, justify="right")
    for row in rows:
        on_chain = distributor.functions.credited(row.address).call()
        table.add_row(
            row.address,
            "liar" if row.liar else "honest",
            str(row.agreed),
            str(row.disagreed),
            format_krew(row.credited),
            format_krew(on_chain),
        )
        demo.fact(f"credited {row.address} {on_chain}")
    console.print(table)
    # the first miner with something to claim (selection is random: a miner may have drawn no job)
    index, claimer = next(
        (i, row) for i, row in enumerate(rows) if distributor.functions.claimable(row.address).call()
    )
    chain = MinerChain(
        rpc_url,
        deployment.registry,
        deployment.distributor,
        SigningKey.from_hex(dev_key(FIRST_MINER + index)),
    )
    before = chain.token.functions.balanceOf(claimer.address).call()
    chain.claim()
    received = chain.token.functions.balanceOf(claimer.address).call() - before
    demo.fact(f"claimed {claimer.address} {received}")
    demo.say(
        f"miner {claimer.address[:10]}… claimed {format_krew(received)} (batch {paid['batch']}, "
        f"tx {paid['tx_hash']})"
    )
    if options.once:
        console.print(
            f"demo: OK, {options.requests} embedding and {len(CHATS)} chat jobs, "
            f"settlement paid at batch nonce {paid['batch_nonce']}"
        )
        return
    _serve_until_interrupted(demo, instances)


def _spawn_orchestrator(
    demo: Demo, instance: OrchestratorInstance, deployment: Deployment, rpc_url: str, shared: dict[str, str]
) -> None:
    """Start one orchestrator; `shared` holds the Redis store's settings when there are several."""
    demo.spawn(
        instance.name,
        ["orchestrator"],
        {
            "KREWE_PORT": str(instance.port),
            "KREWE_RPC_URL": rpc_url,
            "KREWE_REGISTRY_ADDRESS": deployment.registry,
            "KREWE_DISTRIBUTOR_ADDRESS": deployment.distributor,
            "KREWE_DEV_KEY": dev_key(ORCHESTRATOR),
            "KREWE_SETTLEMENT_WINDOW_S": str(demo.options.settlement_window_s),
            # anvil mines a block only for a transaction: the demo's last batch would never get deep
            "KREWE_SETTLEMENT_CONFIRMATIONS": "0",
            "KREWE_MODEL_REWARDS": f"{E5_MODEL_ID}={REWARD_WEI},{GEMMA_MODEL_ID}={REWARD_WEI}",
            "KREWE_DATA_DIR": str(demo.workdir / ("data" if not shared else f"data-{instance.name}")),
            "KREWE_HEARTBEAT_S": "5",
            **({"KREWE_INSTANCE_ID": instance.name} if shared else {}),
            **shared,
        },
    )


def _healthy(url: str) -> bool:
    return requests.get(url + "/healthz", timeout=2).ok


def _register_miners(demo: Demo, w3: Any, deployment: Deployment, rpc_url: str) -> list[MinerRow]:
    krew, _, _ = deployment.contracts(w3)
    rows = []
    for index in range(demo.options.miners + demo.options.liars):
        key = SigningKey.from_hex(dev_key(FIRST_MINER + index))
        transact(w3, krew.functions.mint(key.address, STAKE), deployment.admin)
        MinerChain(rpc_url, deployment.registry, deployment.distributor, key).register(STAKE)
        rows.append(MinerRow(key.address, liar=index >= demo.options.miners))
    demo.say(f"registered {len(rows)} miners, {format_krew(STAKE)} staked each")
    return rows


def _send_requests(demo: Demo, instances: list[OrchestratorInstance], rows: list[MinerRow]) -> None:
    """The embedding and chat requests, sent to the instances in turn; with several instances the
    tables say which one answered each."""
    clients = [
        openai.OpenAI(base_url=instance.url + "/v1", api_key="demo", max_retries=2, timeout=60)
        for instance in instances
    ]
    several = len(instances) > 1
    by_address = {row.address: row for row in rows}
    jobs = Table(title=f"jobs ({E5_MODEL_ID} embeddings, 3 miners each, 2 must agree)")
    for column in ("#", *(["instance"] if several else []), "input", "verdict", "agreed", "digest"):
        jobs.add_column(column, no_wrap=column == "instance")
    first_verdict = None
    with Live(jobs, console=demo.console, refresh_per_second=8):
        for number in range(demo.options.requests):
            instance, client = instances[number % len(instances)], clients[number % len(instances)]
            text = SENTENCES[number % len(SENTENCES)]
            response = client.embeddings.create(model=E5_MODEL_ID, input=text, encoding_format="float")
            info = (response.model_extra or {})["krewe"]
            first_verdict = first_verdict or demo.elapsed()
            _tally(demo, instance.url, info["job_id"], by_address)
            jobs.add_row(
                str(number + 1),
                *([instance.name] if several else []),
                text,
                info["verdict"],
                f"{info['agreeing']}/{info['replicas']}",
                info["digest"][:12],
            )
    demo.console.print()
    demo.say(f"first verdict at {first_verdict}; {demo.options.requests} embedding jobs done")
    chats = Table(title=f"chat completions ({GEMMA_MODEL_ID}, greedy, 3 miners each, 2 must agree)")
    for column in (
        "#",
        *(["instance"] if several else []),
        "message",
        "answer",
        "verdict",
        "agreed",
        "digest",
    ):
        chats.add_column(column, no_wrap=column == "instance")
    for number, prompt in enumerate(CHATS):
        # after the embeddings, so that the chats too go to every instance in turn
        turn = (demo.options.requests + number) % len(instances)
        streamed = number == len(CHATS) - 1
        answer, info, chunks = _chat(clients[turn], prompt, stream=streamed)
        _tally(demo, instances[turn].url, info["job_id"], by_address)
        how = f"stream {chunks} chunks" if streamed else "chat"
        demo.fact(f"{how} {info['verdict']} {json.dumps(answer, ensure_ascii=False)}")
        chats.add_row(
            str(number + 1),
            *([instances[turn].name] if several else []),
            prompt + (" (stream)" if streamed else ""),
            answer,
            info["verdict"],
            f"{info['agreeing']}/{info['replicas']}",
            info["digest"][:12],
        )
    demo.console.print(chats)


def _chat(client: openai.OpenAI, prompt: str, *, stream: bool) -> tuple[str, dict[str, Any], int]:
    """One chat completion through the SDK: (the answer, the krewe object, the chunks streamed)."""
    request: dict[str, Any] = {
        "model": GEMMA_MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": CHAT_MAX_TOKENS,
        "stop": ["\n"],
    }
    if not stream:
        response = client.chat.completions.create(**request)
        return response.choices[0].message.content or "", (response.model_extra or {})["krewe"], 0
    pieces: list[str] = []
    info: dict[str, Any] = {}
    chunks = 0
    for chunk in client.chat.completions.create(**request, stream=True):
        chunks += 1
        pieces += [choice.delta.content or "" for choice in chunk.choices]
        info = (chunk.model_extra or {}).get("krewe", info)
    return "".join(pieces), info, chunks


def _tally(demo: Demo, orchestrator_url: str, job_id: str, by_address: dict[str, MinerRow]) -> None:
    """Count each miner's agreeing and disagreeing answers and its credits, from the job's record."""
    record = wait_for("the job record", partial(_final_record, orchestrator_url, job_id), 60, demo)
    for answer in record["workers"]:
        row = by_address.get(answer["worker"])
        if row is None:
            continue
        if answer["worker"] in record["agreeing"]:
            row.agreed += 1
            row.credited += int(record["credits"].get(row.address, "0"))
        elif answer["answer"] == "result":
            row.disagreed += 1


def _final_record(orchestrator_url: str, job_id: str) -> dict[str, Any] | None:
    response = requests.get(f"{orchestrator_url}/v1/jobs/{job_id}", timeout=5)
    record: dict[str, Any] = response.json()
    return record if response.ok and record.get("final") else None


def _wait_for_settlement(demo: Demo, instances: list[OrchestratorInstance]) -> dict[str, Any]:
    """The newest paid settlement, once every credit of the demo's jobs is paid: what the chain
    holds then is final, since the demo sends no more jobs. The ledger is one for every instance;
    the settlement is in the GET /v1/settlements of the instance that paid it, the holder of the
    settlement lease."""

    def paid() -> list[tuple[OrchestratorInstance, dict[str, Any]]] | None:
        """Each instance that paid a batch with its newest paid one, once nothing is left to pay."""
        for instance in instances:
            ledger = requests.get(instance.url + "/v1/ledger", timeout=5).json()
            if ledger["pending"] != "0" or ledger["in_flight"] != "0":
                return None
        settlers = []
        for instance in instances:
            recent = requests.get(instance.url + "/v1/settlements", timeout=5).json()["recent"]
            settled = next((item for item in recent if item["outcome"] == "paid"), None)
            if settled is not None:
                settlers.append((instance, settled))
        return settlers or None

    demo.say(
        f"waiting for the credits to be paid (a settlement every {demo.options.settlement_window_s:g} s)"
    )
    settlers = wait_for("a settlement", paid, demo.options.settlement_window_s + 120, demo)
    _, settled = settlers[0]
    demo.say(
        f"settlement paid: batch nonce {settled['batch_nonce']}, {settled['workers']} miners, "
        f"{format_krew(int(settled['total']))}"
    )
    if len(instances) > 1:
        names = " ".join(instance.name for instance, _ in settlers)
        demo.fact(f"settled by {names} (the settlement lease holder)")
    result: dict[str, Any] = settled
    return result


def _serve_until_interrupted(demo: Demo, instances: list[OrchestratorInstance]) -> None:
    orchestrator_url = instances[0].url
    if len(instances) > 1:
        demo.console.print(
            "\nThe instances: " + ", ".join(f"{instance.name} at {instance.url}" for instance in instances)
        )
    demo.console.print(f"""
The network keeps running. Watch it in a browser: {orchestrator_url}/

Try it:

  curl -s {orchestrator_url}/v1/embeddings -H 'Content-Type: application/json' \\
       -d '{{"model": "{E5_MODEL_ID}", "input": "hello"}}'

  curl -s {orchestrator_url}/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "{GEMMA_MODEL_ID}", "max_tokens": 24,
            "messages": [{{"role": "user", "content": "Finish this sentence: The moon is"}}]}}'

  python -c "import openai; c = openai.OpenAI(base_url='{orchestrator_url}/v1', api_key='x'); \\
print(c.embeddings.create(model='{E5_MODEL_ID}', input='hello').model_extra['krewe'])"

Dashboard: {orchestrator_url}/
Ledger:    {orchestrator_url}/v1/ledger
Miners:    {orchestrator_url}/v1/workers
Statement: {orchestrator_url}/v1/workers/<address>/statement (or `krewe miner statement`)
Metrics:   {orchestrator_url}/metrics
Press Ctrl-C to stop every process the demo started.""")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        for process in demo.processes:
            if process.poll() is not None:
                raise DemoError(f"a process exited with {process.returncode}: see {demo.workdir}")
        stop.wait(1.0)
