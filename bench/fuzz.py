"""The adversarial suite's fuzzers, run long against an orchestrator process.

    python -m bench.fuzz [--frames 100000] [--requests 20000] [--seed 1] [--workers 4] [--json PATH]

Starts anvil with the contracts and registered keys, `krewe orchestrator` with its production
settings but for unlimited rates (bench.network), and three honest miners. Then it sends `--frames`
WebSocket frame probes and `--requests` HTTP probes drawn from the Hypothesis strategies of
tests/adversarial (the same seed gives the same probes), `--workers` connections at a time, and
checks every answer against docs/protocol.md. After every batch it checks that /healthz answers
and that the honest miners still get a job and agree, and reads the orchestrator's RSS.

Before them comes a warm-up, checked the same way: frame probes for `--warmup-s` seconds, then one
batch of HTTP probes. Its length is how long a used login nonce is remembered (`nonce_ttl_s`, 70 s
with the default `auth_timeout_s`) and a little more: until then the store of used nonces grows
with every login, up to the login rate times that TTL, where it stays. That growth is bounded by
design, and the run measures what comes after it.

It prints a table of what was tried and what came back; `--json` also writes `frames`, `requests`
(the probes after the warm-up), `unexpected` (answers outside the documented set), `crashes`,
`hangs` (these three over the warm-up too) and `rss_growth_pct` (from the end of the warm-up to the
end). Every loop is bounded in count and in time (`--time-limit`); everything runs on 127.0.0.1;
processes are stopped by PID.
"""

import argparse
import asyncio
import functools
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table
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
from tests.support.scripted_miner import ScriptedMiner

from bench.network import Process, chain, miner_address, miner_key, orchestrator
from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.nonces import nonce_ttl_s

HOST = "127.0.0.1"
HONEST_MINERS = 3
BATCH = 1000  # probes drawn at once; health and RSS are checked after each batch
UNREGISTERED = 10**6  # the index of a bench key that is never registered
DEFAULTS = OrchestratorSettings()
WARMUP_S = nonce_ttl_s(DEFAULTS.auth_timeout_s) + 5
WARMUP_SEED = 9_000  # warm-up probes are drawn from seeds of their own


def draw_frames(seed: int, count: int) -> list[Any]:
    return draw_examples(frame_probes(DEFAULTS.max_frame_bytes), count, seed)


def draw_requests(seed: int, count: int, routes: list[tuple[str, str]]) -> list[Any]:
    return draw_examples(http_probes(routes, DEFAULTS.max_body_bytes), count, seed)


def worker_keys(worker: int) -> MinerKeys:
    first = HONEST_MINERS + 2 * worker
    return MinerKeys(miner_key(first), miner_key(first + 1), miner_key(0), miner_key(UNREGISTERED))


class Run:
    """One fuzzing run against one orchestrator process."""

    def __init__(self, args: argparse.Namespace, process: Process, url: str) -> None:
        self.args, self.process, self.url = args, process, url
        self.port = int(url.rsplit(":", 1)[1])
        self.started = time.monotonic()
        self.deadline = self.started + args.time_limit
        self.frames, self.requests = Tally(), Tally()
        self.warmup_frames, self.warmup_requests = Tally(), Tally()
        self.health = Counter[str]()
        self.rss: list[int] = []
        self.warmed_up = 0  # the index in `rss` of the reading at the end of the warm-up

    async def fuzz(
        self,
        tally: Tally,
        total: int,
        draw: Callable[[int, int], list[Any]],
        make: Callable[[int], FrameFuzzer | HttpFuzzer],
        *,
        seeds: int = 0,
        until: float | None = None,
    ) -> None:
        """`total` probes in batches (fewer if `until`, a monotonic time, comes first); the next
        batch is drawn in another process while one runs. Batch i is drawn from seed `seeds` + i."""
        if total <= 0:
            return
        fuzzers = [make(worker) for worker in range(self.args.workers)]
        loop = asyncio.get_running_loop()
        count = -(-total // BATCH)

        def batch(index: int) -> tuple[int, int]:
            return self.args.seed * 10_000 + seeds + index, min(BATCH, total - index * BATCH)

        with ProcessPoolExecutor(max_workers=1) as generator:
            drawing = loop.run_in_executor(generator, draw, *batch(0))
            for index in range(count):
                probes: Sequence[Any] = await drawing
                if index + 1 < count:
                    drawing = loop.run_in_executor(generator, draw, *batch(index + 1))
                await asyncio.gather(
                    *(
                        fuzzer.run(probes[worker :: len(fuzzers)], tally)
                        for worker, fuzzer in enumerate(fuzzers)
                    )
                )
                await self.check()
                done, elapsed = sum(tally.tried.values()), time.monotonic() - self.started
                of = "" if until is not None else f" of {total:,}"
                print(
                    f"  {done:,}{of} probes, {len(tally.unexpected)} unexpected, {elapsed:.0f} s,"
                    f" RSS {self.rss[-1] / 2**20:.1f} MiB",
                    flush=True,
                )
                over = until is not None and time.monotonic() >= until
                if over or time.monotonic() > self.deadline or self.process.popen.poll() is not None:
                    generator.shutdown(cancel_futures=True)
                    return

    async def check(self) -> None:
        alive = self.process.popen.poll() is None
        self.health["process alive" if alive else "process exited"] += 1
        if not alive:
            return
        self.health["/healthz 200" if await healthy(self.url) else "/healthz failed"] += 1
        agreed = await good_miners_get_a_job(self.url)
        self.health["honest miners' job agreed" if agreed else "honest miners' job failed"] += 1
        self.rss.append(self.process.rss_bytes())


async def fuzz(args: argparse.Namespace, process: Process, url: str) -> Run:
    run = Run(args, process, url)
    connect = url.replace("http", "ws", 1) + "/v1/workers/connect"
    async with AsyncExitStack() as stack:
        for index in range(HONEST_MINERS):
            miner = ScriptedMiner(connect, miner_key(index), miner_address(index))
            await stack.enter_async_context(miner)
            if (await miner.connect())["type"] != "welcome":
                raise RuntimeError(f"honest miner {index} could not log in")
        await run.check()
        async with aiohttp.ClientSession() as http, http.get(url + "/openapi.json") as response:
            document = await response.json()
        routes = [(method.upper(), path) for path, item in document["paths"].items() for method in item]

        def frame_fuzzer(worker: int) -> FrameFuzzer:
            return FrameFuzzer(HOST, run.port, worker_keys(worker), max_violations=DEFAULTS.max_violations)

        def http_fuzzer(worker: int) -> HttpFuzzer:
            return HttpFuzzer(HOST, run.port)

        draw_http = functools.partial(draw_requests, routes=routes)
        if args.warmup_s > 0:
            print(f"warm-up: frame probes for {args.warmup_s:g} s, then {BATCH:,} HTTP probes", flush=True)
            until = time.monotonic() + args.warmup_s
            warmup = run.warmup_frames
            await run.fuzz(warmup, 10**9, draw_frames, frame_fuzzer, seeds=WARMUP_SEED, until=until)
            await run.fuzz(run.warmup_requests, BATCH, draw_http, http_fuzzer, seeds=WARMUP_SEED)
        run.warmed_up = len(run.rss) - 1
        print(f"frames: {args.frames:,} probes, {args.workers} connections at a time", flush=True)
        await run.fuzz(run.frames, args.frames, draw_frames, frame_fuzzer)
        print(f"requests: {args.requests:,} probes over {len(routes)} routes", flush=True)
        await run.fuzz(run.requests, args.requests, draw_http, http_fuzzer)
    return run


def report(run: Run, seconds: float) -> dict[str, Any]:
    frames, requests = run.frames, run.requests
    tallies = (run.warmup_frames, run.warmup_requests, frames, requests)
    exited = run.process.popen.poll() is not None
    baseline = run.rss[run.warmed_up]
    return {
        "frames": sum(frames.tried.values()),
        "requests": sum(requests.tried.values()),
        "unexpected": sum(len(tally.unexpected) for tally in tallies),
        "crashes": sum(tally.crashes for tally in tallies) + exited,
        "hangs": sum(tally.hangs for tally in tallies),
        "rss_growth_pct": round(100 * (run.rss[-1] - baseline) / baseline, 1),
        "rss_bytes": {
            "start": run.rss[0],
            "after_warmup": baseline,
            "end": run.rss[-1],
            "max": max(run.rss),
        },
        "warmup": {
            "seconds": run.args.warmup_s,
            "frames": sum(run.warmup_frames.tried.values()),
            "requests": sum(run.warmup_requests.tried.values()),
        },
        "health_checks": dict(run.health),
        "seconds": round(seconds, 1),
        "seed": run.args.seed,
        "workers": run.args.workers,
        "unexpected_examples": [problem for tally in tallies for problem in tally.unexpected][:50],
        "classes": {
            kind: {
                label: {
                    "tried": count,
                    "answers": {got: n for (name, got), n in tally.answers.items() if name == label},
                }
                for label, count in sorted(tally.tried.items())
            }
            for kind, tally in (("frames", frames), ("requests", requests))
        },
    }


def table(result: dict[str, Any]) -> Table:
    rows = Table(title=f"krewe fuzzing (seed {result['seed']}, {result['seconds']:,} s)")
    for column in ("probes", "class", "tried", "answers"):
        rows.add_column(column, justify="right" if column == "tried" else "left")
    for kind, classes in result["classes"].items():
        for label, seen in classes.items():
            answers = ", ".join(
                f"{got} ×{n}" for got, n in sorted(seen["answers"].items(), key=lambda a: -a[1])
            )
            rows.add_row(kind, label, f"{seen['tried']:,}", answers)
    rows.add_section()
    warmup = result["warmup"]
    rows.add_row("warm-up", f"{warmup['seconds']:g} s", f"{warmup['frames'] + warmup['requests']:,}", "")
    for name in ("frames", "requests", "unexpected", "crashes", "hangs", "rss_growth_pct"):
        rows.add_row("total", name, f"{result[name]:,}", "")
    for check, count in result["health_checks"].items():
        rows.add_row("health", check, f"{count:,}", "")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="WebSocket frame probes to send")
    parser.add_argument("--requests", type=int, default=20_000, help="HTTP probes to send")
    parser.add_argument("--seed", type=int, default=1, help="the same seed draws the same probes")
    parser.add_argument("--workers", type=int, default=4, help="connections fuzzing at a time")
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=WARMUP_S,
        help="seconds of frame probes before the RSS baseline (default: the used-nonce TTL + 5; 0: none)",
    )
    parser.add_argument(
        "--time-limit", type=float, default=3600.0, help="seconds after which no batch starts"
    )
    parser.add_argument("--json", type=Path, help="write the figures and the table's rows to this file")
    args = parser.parse_args()
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="krewe-fuzz-") as name,
        chain(HONEST_MINERS + 2 * args.workers) as (
            anvil,
            deployment,
        ),
    ):
        settings = {"rate_limit_per_s": 10**9, "rate_limit_burst": 10**9, "seed": args.seed}
        with orchestrator(anvil, deployment, Path(name), **settings) as (process, url):
            run = asyncio.run(fuzz(args, process, url))
            result = report(run, time.monotonic() - started)
    Console().print(table(result))
    for line in result["unexpected_examples"][:20]:
        print("unexpected:", line)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
