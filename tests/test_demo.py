"""`krewe demo --once` end to end: chat answers are agreed and streamed; what it prints matches what
is on chain."""

import io
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rich.console import Console

from krewe.cli import main
from krewe.contracts import load_artifact
from krewe.demo import (
    Demo,
    DemoError,
    DemoOptions,
    OrchestratorInstance,
    instance_layout,
    miner_urls,
    port_is_free,
)
from krewe.devchain import Anvil, free_port
from krewe.redisproc import RedisServer


def run_demo(anvil: Anvil, embeddings: int, *options: str) -> str:
    """`krewe demo --once` on `anvil` with `embeddings` requests; its output, once it exited 0 with
    the verdict line last."""
    command = [sys.executable, "-m", "krewe", "demo", "--once", "--chain-url", anvil.url]
    done = subprocess.run(
        [*command, "--requests", str(embeddings), *options],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(
        rf"demo: OK, {embeddings} embedding and 3 chat jobs, settlement paid at batch nonce \d+",
        done.stdout.strip().splitlines()[-1],
    )
    return done.stdout


def test_demo_once_prints_what_the_chain_holds() -> None:
    with Anvil.start(accounts=10) as anvil:
        output = run_demo(anvil, 6, "--port", str(free_port()))
        chats = re.findall(r"^(chat|stream (\d+) chunks) (\w+) (.+)$", output, re.M)
        assert len(chats) == 3 and chats[-1][0].startswith("stream")
        for how, _chunks, verdict, answer in chats:
            assert verdict == "agreed" and json.loads(answer).strip(), how
        assert int(chats[-1][1]) >= 2
        distributor_address = re.search(r"distributor (0x[0-9a-fA-F]{40})", output)
        assert distributor_address is not None
        w3 = anvil.web3()
        distributor = w3.eth.contract(
            address=distributor_address.group(1), abi=load_artifact("RewardDistributor").abi
        )
        credited = {
            address: int(wei) for address, wei in re.findall(r"^credited (0x\w{40}) (\d+)$", output, re.M)
        }
        assert len(credited) == 6
        for address, wei in credited.items():
            assert distributor.functions.credited(address).call() == wei
        honest = list(credited.values())[:5]
        liar = list(credited.values())[5]
        assert liar == 0 and sum(honest) > 0  # consensus kept the liar out
        claims = re.findall(r"^claimed (0x\w{40}) (\d+)$", output, re.M)
        assert len(claims) == 1
        address, wei = claims[0]
        assert distributor.functions.claimed(address).call() == int(wei) == credited[address]


def two_free_ports() -> int:
    """A port that is free with the one above it."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise AssertionError("no two consecutive free ports")


def test_demo_with_two_instances_sends_requests_to_both_and_pays_what_the_chain_holds() -> None:
    port = two_free_ports()
    with Anvil.start(accounts=10) as anvil:
        output = run_demo(anvil, 4, "--instances", "2", "--port", str(port))
        for number in (1, 2):
            assert f"orchestrator-{number} up at http://127.0.0.1:{port + number - 1}" in output
        # requests go to the instances in turn: 4 embeddings, then 3 chats
        answered = re.findall(r"^│ \d+ +│ (orchestrator-\d) ", output, re.M)
        assert answered == ["orchestrator-1", "orchestrator-2"] * 2 + [
            "orchestrator-1",
            "orchestrator-2",
            "orchestrator-1",
        ]
        one_settler = r"^settled by orchestrator-[12] \(the settlement lease holder\)$"
        assert re.search(one_settler, output, re.M)
        distributor_address = re.search(r"distributor (0x[0-9a-fA-F]{40})", output)
        assert distributor_address is not None
        distributor = anvil.web3().eth.contract(
            address=distributor_address.group(1), abi=load_artifact("RewardDistributor").abi
        )
        credited = {
            address: int(wei) for address, wei in re.findall(r"^credited (0x\w{40}) (\d+)$", output, re.M)
        }
        assert len(credited) == 6 and list(credited.values())[5] == 0
        for address, wei in credited.items():
            assert distributor.functions.credited(address).call() == wei


def test_demo_fails_with_the_reason_on_its_last_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "krewe", "demo", "--once", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    assert (
        done.stdout.strip().splitlines()[-1]
        == f"demo failed: port {port} is in use: pass --port with a free one"
    )


def test_several_instances_take_consecutive_ports_and_each_miner_lists_its_own_first() -> None:
    assert instance_layout(8000, 1) == [OrchestratorInstance("orchestrator", 8000)]
    instances = instance_layout(8000, 3)
    assert [(instance.name, instance.port) for instance in instances] == [
        ("orchestrator-1", 8000),
        ("orchestrator-2", 8001),
        ("orchestrator-3", 8002),
    ]
    assert instances[1].url == "http://127.0.0.1:8001"
    urls = [f"ws://127.0.0.1:{port}/v1/workers/connect" for port in (8000, 8001, 8002)]
    assert [miner_urls(instances, miner) for miner in range(4)] == [
        urls,
        urls[1:] + urls[:1],
        urls[2:] + urls[:2],
        urls,
    ]
    assert miner_urls(instance_layout(8000, 1), 5) == urls[:1]
    with pytest.raises(DemoError, match="--instances must be at least 1, not 0"):
        instance_layout(8000, 0)


def test_instances_below_one_are_refused_by_the_command() -> None:
    done = CliRunner().invoke(main, ["demo", "--instances", "0"])
    assert done.exit_code == 2
    assert "Invalid value for '--instances'" in done.output


def test_the_demo_names_the_busy_port_of_any_instance() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        second = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "krewe", "demo", "--once", "--instances", "2", "--port", str(second - 1)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    last = done.stdout.strip().splitlines()[-1]
    assert last in (
        f"demo failed: port {second} is in use: pass --port with a free one",
        # the port below the busy one was taken by something else in the meantime
        f"demo failed: port {second - 1} is in use: pass --port with a free one",
    )


def test_the_demo_stops_its_redis_server_by_pid(tmp_path: Path) -> None:
    demo = Demo(DemoOptions(instances=2), Console(file=io.StringIO()), tmp_path)
    demo.redis = RedisServer.start(tmp_path / "redis")
    client = redis.Redis.from_url(demo.redis.url)
    try:
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        client.close()
    demo.stop_all()
    assert demo.redis.process.poll() is not None
