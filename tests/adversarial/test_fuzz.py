"""The frame and HTTP fuzzers against an orchestrator process: every probe gets its documented
answer, the process stays healthy (a good miner still gets jobs) and its memory does not grow.

The orchestrator runs as its own process (as `python -m bench.fuzz` runs it), so that its RSS is
its own; the fuzzers and two good scripted miners run in the test. Seeds are fixed.
"""

import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from bench.network import Process, orchestrator
from eth_account import Account

from krewe.devchain import dev_key
from tests.adversarial.frame_probes import frame_probes
from tests.adversarial.fuzzing import (
    FrameFuzzer,
    HttpFuzzer,
    MinerKeys,
    Tally,
    draw_examples,
    good_miners_get_a_job,
    healthy,
)
from tests.adversarial.http_probes import http_probes
from tests.service.conftest import MINER_KEYS, UNREGISTERED_KEY, Chain
from tests.support.scripted_miner import ScriptedMiner

HOST = "127.0.0.1"
MAX_VIOLATIONS = 5
MAX_FRAME_BYTES = 1_048_576
MAX_BODY_BYTES = 1_048_576
RSS_GROWTH_LIMIT = 0.25  # of the RSS after a warm-up round: a leak per probe would pass it


@dataclass
class Target:
    process: Process
    url: str

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def target(chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    settings = {
        "replicas": 2,
        "threshold": 2,
        "max_violations": MAX_VIOLATIONS,
        "max_frame_bytes": MAX_FRAME_BYTES,
        "max_body_bytes": MAX_BODY_BYTES,
        "rate_limit_per_s": 10**9,
        "rate_limit_burst": 10**9,
        "model_rewards": "test-model=1000",
        "settlement_window_s": 3600,
        "seed": 7,
    }
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    with orchestrator(chain.anvil, chain.deployment, workdir, **settings) as (process, url):
        yield Target(process, url)


@pytest.fixture
async def good_miners(target: Target) -> AsyncIterator[list[ScriptedMiner]]:
    """Two honest miners on the target, which agree on every job."""
    connect_url = target.url.replace("http", "ws", 1) + "/v1/workers/connect"
    async with AsyncExitStack() as stack:
        miners = []
        for index in (0, 1):
            key = dev_key(MINER_KEYS[index])
            miner = ScriptedMiner(connect_url, key, _address(key))
            await stack.enter_async_context(miner)
            assert (await miner.connect())["type"] == "welcome"
            miners.append(miner)
        yield miners


def _address(key: str) -> str:
    return str(Account.from_key(key).address)


def fuzz_keys(worker: int) -> MinerKeys:
    """Keys of staked miners 2-9 that only fuzzer `worker` (0-3) uses."""
    return MinerKeys(
        login=dev_key(MINER_KEYS[2 + 2 * worker]),
        session=dev_key(MINER_KEYS[3 + 2 * worker]),
        other=dev_key(MINER_KEYS[0]),
        unregistered=dev_key(UNREGISTERED_KEY),
    )


def report(tally: Tally) -> str:
    lines = [f"{label}: {count}" for label, count in sorted(tally.tried.items())]
    return "\n".join([*lines, "unexpected:", *tally.unexpected[:30]])


async def test_every_frame_gets_its_documented_answer_and_the_orchestrator_stays_healthy(
    target: Target, good_miners: list[ScriptedMiner]
) -> None:
    probes = draw_examples(frame_probes(MAX_FRAME_BYTES), 700, seed_value=1)
    warm_up, main = probes[:150], probes[150:]
    tally = Tally()
    fuzzer = FrameFuzzer(HOST, target.port, fuzz_keys(0), max_violations=MAX_VIOLATIONS)
    await fuzzer.run(warm_up, tally)
    assert await good_miners_get_a_job(target.url)
    rss_before = target.process.rss_bytes()
    await fuzzer.run(main, tally)
    rss_after = target.process.rss_bytes()
    assert not tally.unexpected, report(tally)
    assert (tally.hangs, tally.crashes) == (0, 0)
    assert sum(tally.tried.values()) == len(probes)
    assert await healthy(target.url)
    assert await good_miners_get_a_job(target.url)
    assert all(miner.close_code is None for miner in good_miners)
    assert rss_after <= rss_before * (1 + RSS_GROWTH_LIMIT), (rss_before, rss_after)


async def test_every_request_gets_its_documented_answer_never_a_500_or_a_hang(
    target: Target, good_miners: list[ScriptedMiner]
) -> None:
    async with aiohttp.ClientSession() as http, http.get(target.url + "/openapi.json") as response:
        document: dict[str, Any] = await response.json()
    routes = [(method.upper(), path) for path, item in document["paths"].items() for method in item]
    probes = draw_examples(http_probes(routes, MAX_BODY_BYTES), 600, seed_value=2)
    tally = Tally()
    fuzzer = HttpFuzzer(HOST, target.port)
    await fuzzer.run(probes[:100], tally)
    rss_before = target.process.rss_bytes()
    await fuzzer.run(probes[100:], tally)
    rss_after = target.process.rss_bytes()
    assert not tally.unexpected, report(tally)
    assert (tally.hangs, tally.crashes) == (0, 0)
    assert await healthy(target.url)
    assert await good_miners_get_a_job(target.url)
    assert rss_after <= rss_before * (1 + RSS_GROWTH_LIMIT), (rss_before, rss_after)


def test_the_fuzzing_bench_runs_and_reports_what_it_tried(tmp_path: Path) -> None:
    """`python -m bench.fuzz` at a small size, with a warm-up of one batch of each kind: the report
    has every figure, all answers documented."""
    report_path = tmp_path / "fuzz.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.fuzz",
            "--frames",
            "150",
            "--requests",
            "100",
            "--warmup-s",
            "1",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert (report["frames"], report["requests"]) == (150, 100)
    assert report["warmup"]["frames"] >= 1 and report["warmup"]["requests"] >= 1  # one batch of each
    assert (report["unexpected"], report["crashes"], report["hangs"]) == (0, 0, 0), report[
        "unexpected_examples"
    ]
    assert isinstance(report["rss_growth_pct"], float)
    assert "krewe fuzzing" in done.stdout
