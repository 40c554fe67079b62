"""Load generator: chat completions against a URL, closed or open loop, bounded in count and time.

    python -m bench.load --url http://127.0.0.1:N --closed 64 --seconds 10
    python -m bench.load --url http://127.0.0.1:N --rate 2000 --seconds 10

Closed loop: `--closed C` clients, each sending its next request when the last is answered.
Open loop: requests start on a fixed schedule at `--rate` per second whatever the answers do, and
each latency is measured from its scheduled start (no coordinated omission). Prints one JSON line.
"""

import argparse
import asyncio
import time
from typing import Any

import aiohttp
import orjson
import uvloop

BODY = orjson.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "hello"}]})
MAX_REQUESTS = 1_000_000


def summary(latencies: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def quantile(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3) if ordered else None

    return {
        "ok": len(ordered),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(len(ordered) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": quantile(0.5),
        "p99_ms": quantile(0.99),
        "p999_ms": quantile(0.999),
    }


async def one(http: aiohttp.ClientSession, url: str, started: float, latencies: list[float]) -> bool:
    try:
        async with http.post(url, data=BODY, headers={"Content-Type": "application/json"}) as response:
            await response.read()
            if response.status != 200:
                return False
    except (aiohttp.ClientError, TimeoutError):
        return False
    latencies.append(time.perf_counter() - started)
    return True


async def closed_loop(http: aiohttp.ClientSession, url: str, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at and len(latencies) < MAX_REQUESTS:
            if not await one(http, url, time.perf_counter(), latencies):
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return summary(latencies, errors, time.perf_counter() - start)


async def open_loop(http: aiohttp.ClientSession, url: str, rate: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    total = min(int(rate * seconds), MAX_REQUESTS)
    start = time.perf_counter()
    tasks = []
    for index in range(total):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(http, url, due, latencies)))
    done = await asyncio.wait_for(asyncio.gather(*tasks), timeout=seconds + 60)
    result = summary(latencies, done.count(False), time.perf_counter() - start)
    result["offered_jobs_per_s"] = rate
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--closed", type=int, help="clients in a closed loop")
    group.add_argument("--rate", type=float, help="requests per second, open loop")
    args = parser.parse_args()
    url = args.url.rstrip("/") + "/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        await one(http, url, time.perf_counter(), [])  # warm the connection pool
        if args.closed:
            result = await closed_loop(http, url, args.closed, args.seconds)
        else:
            result = await open_loop(http, url, args.rate, args.seconds)
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    uvloop.run(main())
