"""`krewe orchestrator` as a real process: start-up errors, and a graceful stop on SIGTERM."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from eth_account import Account

from krewe.devchain import dev_key, free_port
from krewe.protocol.messages import CloseCode
from tests.service.conftest import MINER_KEYS, ORCHESTRATOR_KEY, Chain, until
from tests.support.scripted_miner import ScriptedMiner


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "krewe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_a_bad_setting_stops_start_up_with_one_line_naming_it(tmp_path: Path) -> None:
    done = run_cli("orchestrator", "--threshold", "5", "--replicas", "3")
    assert done.returncode == 2
    assert done.stderr.strip() == "krewe: threshold: 5 is more than replicas (3)"
    done = run_cli("orchestrator", env={"KREWE_HEARTBEAT_S": "soon"})
    assert done.stderr.strip().startswith("krewe: heartbeat_s: ")
    config = tmp_path / "krewe.toml"
    config.write_text('replicas = 3\ncolour = "blue"\n')
    done = run_cli("orchestrator", "--config", str(config))
    assert done.stderr.strip() == f"krewe: colour: unknown setting in {config}"
    done = run_cli("orchestrator", "--config", str(tmp_path / "missing.toml"))
    assert "No such file" in done.stderr and done.returncode == 2


def test_no_key_or_no_addresses_is_a_clear_error(chain: Chain, tmp_path: Path) -> None:
    env = {"KREWE_DATA_DIR": str(tmp_path), "KREWE_DEV_KEY": ""}
    done = run_cli("orchestrator", env=env)
    assert done.stderr.strip() == "krewe: registry_address: required (the address of the deployed contract)"
    env |= {
        "KREWE_REGISTRY_ADDRESS": chain.deployment.registry,
        "KREWE_DISTRIBUTOR_ADDRESS": chain.deployment.distributor,
        "KREWE_RPC_URL": chain.anvil.url,
    }
    done = run_cli("orchestrator", env=env)
    assert (
        done.stderr.strip()
        == "krewe: no orchestrator key: set a keystore file (or a development key variable)"
    )


async def test_sigterm_closes_miners_with_1001_settles_and_exits_0(chain: Chain, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "KREWE_DEV_KEY": dev_key(ORCHESTRATOR_KEY),
        "KREWE_PORT": str(port),
        "KREWE_RPC_URL": chain.anvil.url,
        "KREWE_REGISTRY_ADDRESS": chain.deployment.registry,
        "KREWE_DISTRIBUTOR_ADDRESS": chain.deployment.distributor,
        "KREWE_DATA_DIR": str(tmp_path),
        "KREWE_SETTLEMENT_CONFIRMATIONS": "0",
        "KREWE_MODEL_REWARDS": "test-model=1000",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "krewe", "orchestrator"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not any(f"listening on http://127.0.0.1:{port}" in line for line in lines):
            lines.append(process.stdout.readline())
            assert lines[-1] and len(lines) < 50, lines  # the process printed its start-up, or died
        url = f"ws://127.0.0.1:{port}/v1/workers/connect"
        miners = [
            ScriptedMiner(url, dev_key(i), Account.from_key(dev_key(i)).address) for i in MINER_KEYS[:3]
        ]
        for miner in miners:
            await miner.__aenter__()
            assert (await miner.connect())["type"] == "welcome"
        async with aiohttp.ClientSession() as http:
            body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}]}
            async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body) as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        await until(lambda: all(m.close_code is not None for m in miners), what="miners to be closed")
        assert {m.close_code for m in miners} == {CloseCode.GOING_AWAY}
        assert process.wait(timeout=60) == 0
        output = process.stdout.read()
        assert "batch 1 paid" in output, output
        for miner in miners:
            await miner.__aexit__()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
