"""Every benchmark in one run, one table, and optionally one JSON file.

    python -m bench [--quick] [--json PATH] [--only SECTION]

Each part starts what it measures as real processes on 127.0.0.1 (anvil, the orchestrator, the
miners, the load generator) and stops them by PID. `--quick` is a smoke run of a few minutes at
most, with smaller counts and shorter phases; its numbers are not the targets' measurements.

The orchestrator and the bare fan-out baseline run side by side, each with its own miners, and
each point is measured on one and then at once on the other, so that both see the same background
load. The scale-out section measures closed-loop throughput through one instance with the SQLite
store, one with the Redis store, and two sharing one Redis, each with half the miners and half the
clients. The orchestrator runs as in production, paying for the benchmark's model: every agreed job
credits its miners durably before the caller hears of it, and a settlement runs every
`SETTLEMENT_WINDOW_S`, so each latency point spans settlements. A point lasts `POINT_S`, so that its
p99.9 is the 10th (at 500 jobs/s) or 20th (at 1,000) slowest answer rather than the slowest. Around
each point the benchmark reads /metrics, whose scrape clears the largest event-loop lag: what it
reads after the point is the largest lag during it. Each point also reports the share of a core
each server's process spent: a point that keeps krewe's near 100 % is at its ceiling on the
machine as it is then, and its jobs wait in line for the one core.
"""

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.table import Table

from bench import canonical, gas, ledger
from bench.network import Process, chain, orchestrator, python
from krewe.devchain import Deployment, free_port
from krewe.redisproc import RedisServer

TARGETS = {
    "krewe_over_baseline": 0.5,  # the long-term goal is 0.75
    "added_p99_ms": 5.0,
    "added_p999_ms": 20.0,
    "loop_lag_max_ms": 20.0,
    "rss_bytes_per_conn": 20_000,
    "heartbeat_cpu_pct": 3.0,
    "first_credit": 25_000,
    "repeat_credit": 7_000,
    "max_recipients_per_tx": 500,
}
TARGET_RATES = (500, 1000)  # jobs/s offered at which the latency targets hold
POINT_S = 20.0
SETTLEMENT_WINDOW_S = 10.0
REWARD_WEI = 1000


def load(url: str, *args: str) -> dict[str, Any]:
    [result] = load_at_once([url], *args)
    return result


def load_on(server: Process, url: str, *args: str) -> dict[str, Any]:
    """`load`, and the CPU time the server's process spent per job served (user + system, all of
    its threads): it depends less than jobs/s on how much of the machine other processes take."""
    before = server.cpu_seconds()
    result = load(url, *args)
    spent_s = server.cpu_seconds() - before
    result["cpu_ms_per_job"] = round(1000 * spent_s / result["ok"], 3) if result["ok"] else None
    return result


def load_at_once(urls: list[str], *args: str) -> list[dict[str, Any]]:
    """One load generator per URL, all started together, each with the same arguments."""
    with ExitStack() as stack:
        processes = []
        for url in urls:
            process = Process(python("bench.load", "--url", url, *args))
            stack.callback(process.stop)
            processes.append(process)
        return [json.loads(process.read_line(timeout_s=600)) for process in processes]


def start_miners(
    url: str,
    count: int,
    workdir: Path,
    *,
    protocol: str = "krewe",
    idle: bool = False,
    per_process: int = 2500,
    first_index: int = 0,
) -> list[Process]:
    """Miner processes, `per_process` miners each, once all are connected; each logs to workdir.
    The miners are bench miners `first_index` to `first_index + count - 1`."""
    processes = []
    for first in range(first_index, first_index + count, per_process):
        size = min(per_process, first_index + count - first)
        args = ["--url", url, "--first", str(first), "--count", str(size), "--protocol", protocol]
        log = workdir / f"miners-{protocol}-{first}.log"
        processes.append(Process(python("bench.miners", *args, *(["--idle"] if idle else [])), log=log))
    try:
        for process in processes:
            line = process.read_line(timeout_s=900)
            if not line.startswith("ready"):
                raise RuntimeError(f"bench miners said {line!r}")
    except RuntimeError as error:
        for process in processes:
            process.stop()
        raise RuntimeError(f"{error} (the miners' logs are in {workdir})") from None
    return processes


def closed_loop_size(quick: bool) -> tuple[int, int, float]:
    """Miners, clients and seconds of the closed-loop throughput measurements."""
    return (30, 32, 2.0) if quick else (300, 128, 10.0)


def production_settings(quick: bool, deployment: Deployment) -> dict[str, Any]:
    """The orchestrator's settings under load: production, but for what the benchmark needs."""
    return {
        "rate_limit_per_s": 10**9,
        "rate_limit_burst": 10**9,
        "model_rewards": f"bench-model={REWARD_WEI}",
        "settlement_window_s": 2.0 if quick else SETTLEMENT_WINDOW_S,
        "settlement_confirmations": 0,  # anvil mines only on demand: no block would come
        "chain_from_block": deployment.block,
    }


def throughput_and_latency(quick: bool, workdir: Path) -> dict[str, Any]:
    miners, client_count, closed_s = closed_loop_size(quick)
    seconds, clients = f"{closed_s:g}", str(client_count)
    point_s = "2" if quick else str(POINT_S)
    rates = (200, 500) if quick else (*TARGET_RATES, 2000)
    measured: dict[str, Any] = {"krewe": {"open": []}, "baseline": {"open": []}}
    with chain(miners) as (anvil, deployment), ExitStack() as stack:
        krewe_process, krewe = stack.enter_context(
            orchestrator(anvil, deployment, workdir, **production_settings(quick, deployment))
        )
        for miner in start_miners(krewe.replace("http", "ws") + "/v1/workers/connect", miners, workdir):
            stack.callback(miner.stop)
        port = free_port()
        baseline = Process(python("bench.baseline", "--port", str(port)))
        stack.callback(baseline.stop)
        baseline.read_line(timeout_s=60)
        for miner in start_miners(f"ws://127.0.0.1:{port}/ws", miners, workdir, protocol="bare"):
            stack.callback(miner.stop)
        bare = f"http://127.0.0.1:{port}"
        # each point runs on krewe, then at once on the baseline: on a shared machine the two see
        # the same background load, which a whole phase of each would not
        before = scrape(krewe)
        measured["krewe"]["closed"] = load_on(krewe_process, krewe, "--closed", clients, "--seconds", seconds)
        measured["krewe"]["closed"]["loop"] = loop_during(before, scrape(krewe))
        measured["baseline"]["closed"] = load_on(baseline, bare, "--closed", clients, "--seconds", seconds)
        for rate in rates:
            before = scrape(krewe)
            point = load_on(krewe_process, krewe, "--rate", str(rate), "--seconds", point_s)
            measured["krewe"]["open"].append(point | {"loop": loop_during(before, scrape(krewe))})
            measured["baseline"]["open"].append(
                load_on(baseline, bare, "--rate", str(rate), "--seconds", point_s)
            )
    latency = []
    for ours, theirs in zip(measured["krewe"]["open"], measured["baseline"]["open"], strict=True):
        latency.append(
            {
                "offered_jobs_per_s": ours["offered_jobs_per_s"],
                "seconds": float(point_s),
                "jobs_per_s": ours["jobs_per_s"],
                "p50_ms": ours["p50_ms"],
                "p99_ms": ours["p99_ms"],
                "p999_ms": ours["p999_ms"],
                "errors": ours["errors"],
                "baseline_jobs_per_s": theirs["jobs_per_s"],
                "baseline_p50_ms": theirs["p50_ms"],
                "baseline_p99_ms": theirs["p99_ms"],
                "baseline_p999_ms": theirs["p999_ms"],
                "added_p50_ms": _minus(ours["p50_ms"], theirs["p50_ms"]),
                "added_p99_ms": _minus(ours["p99_ms"], theirs["p99_ms"]),
                "added_p999_ms": _minus(ours["p999_ms"], theirs["p999_ms"]),
                "cpu_pct": _core_share(ours),
                "baseline_cpu_pct": _core_share(theirs),
                **{f"loop_{name}": value for name, value in ours["loop"].items()},
            }
        )
    at_targets = [
        row for row in latency if row["offered_jobs_per_s"] in (TARGET_RATES if not quick else rates)
    ]
    ours, theirs = measured["krewe"]["closed"], measured["baseline"]["closed"]
    return {
        "throughput": {
            "max_jobs_per_s": ours["jobs_per_s"],
            "baseline_max_jobs_per_s": theirs["jobs_per_s"],
            "krewe_over_baseline": round(ours["jobs_per_s"] / theirs["jobs_per_s"], 3)
            if theirs["jobs_per_s"]
            else None,
            "p50_ms": ours["p50_ms"],
            "p99_ms": ours["p99_ms"],
            "errors": ours["errors"],
            "miners": miners,
            "clients": int(clients),
            "seconds": float(seconds),
            "loop_lag_max_ms": ours["loop"]["lag_max_ms"],
            "cpu_ms_per_job": ours["cpu_ms_per_job"],
            "baseline_cpu_ms_per_job": theirs["cpu_ms_per_job"],
        },
        "latency": latency,
        "loop_lag": {
            "max_ms": max(row["loop_lag_max_ms"] for row in at_targets),
            "over_20ms": sum(row["loop_lag_over_20ms"] for row in at_targets),
            "samples": sum(row["loop_lag_samples"] for row in at_targets),
            "settlements": sum(row["loop_settlements"] for row in at_targets),
            "gc_full_passes": sum(row["loop_gc_full_passes"] for row in at_targets),
            "offered_jobs_per_s": [row["offered_jobs_per_s"] for row in at_targets],
        },
    }


def scale_out(quick: bool, workdir: Path) -> dict[str, Any]:
    """Closed-loop jobs/s through one instance (SQLite store, then Redis store) and through two
    instances sharing one Redis. With two, each instance has half the miners (each miner connects
    to one instance) and its own load generator with half the clients, all started together; the
    jobs/s are their sum. Each phase has its own chain and redis-server, so no state carries over."""
    miners, clients, seconds = closed_loop_size(quick)
    phases: list[dict[str, Any]] = []
    for store, instances in (("sqlite", 1), ("redis", 1), ("redis", 2)):
        with chain(miners) as (anvil, deployment), ExitStack() as stack:
            settings = production_settings(quick, deployment)
            if store == "redis":
                redis = RedisServer.start(workdir / f"redis-{len(phases)}")
                stack.callback(redis.stop)
                settings["store"] = redis.url
            urls = []
            for instance in range(instances):
                named = {"instance_id": f"bench-{instance}"} if store == "redis" else {}
                _, url = stack.enter_context(orchestrator(anvil, deployment, workdir, **settings, **named))
                share = miners // instances
                for process in start_miners(
                    url.replace("http", "ws") + "/v1/workers/connect",
                    share,
                    workdir,
                    first_index=instance * share,
                ):
                    stack.callback(process.stop)
                urls.append(url)
            results = load_at_once(urls, "--closed", str(clients // instances), "--seconds", f"{seconds:g}")
        phases.append(
            {
                "store": store,
                "instances": instances,
                "jobs_per_s": round(sum(result["jobs_per_s"] for result in results), 1),
                "errors": sum(result["errors"] for result in results),
                "per_instance_jobs_per_s": [result["jobs_per_s"] for result in results],
            }
        )
    sqlite, one, two = (phase["jobs_per_s"] for phase in phases)
    return {
        "sqlite_one_instance_jobs_per_s": sqlite,
        "one_instance_jobs_per_s": one,
        "two_instances_jobs_per_s": two,
        "two_over_one": round(two / one, 3) if one else None,
        "cores": os.cpu_count(),
        "miners": miners,
        "clients": clients,
        "seconds": seconds,
        "phases": phases,
    }


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics (which also clears the largest event-loop lag it reports)."""
    text = requests.get(url + "/metrics", timeout=30).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def loop_during(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """The event loop between two scrapes: its largest lag, how many lags passed 20 ms, the
    settlements that ran, and the full passes of the garbage collector."""

    def grew(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    lag = "krewe_event_loop_lag_seconds"
    samples = grew(f"{lag}_count")
    return {
        "lag_max_ms": round(after["krewe_event_loop_lag_max_seconds"] * 1000, 2),
        "lag_over_20ms": int(samples - grew(f'{lag}_bucket{{le="0.02"}}')),
        "lag_samples": int(samples),
        "settlements": int(
            sum(grew(name) for name in after if name.startswith("krewe_settlement_batches_total"))
        ),
        "gc_full_passes": int(grew('krewe_gc_passes_total{generation="2"}')),
    }


def _core_share(point: dict[str, Any]) -> float | None:
    """The server's CPU during an open-loop point, in % of one core: near 100, jobs queue for it."""
    if point["cpu_ms_per_job"] is None:
        return None
    return round(point["cpu_ms_per_job"] * point["jobs_per_s"] / 10, 1)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def connected_miners(url: str) -> int:
    return int(scrape(url).get("krewe_miners_connected", 0))


def idle_connections(quick: bool, workdir: Path) -> dict[str, Any]:
    count = 500 if quick else 10_000
    window_s = 5.0 if quick else 60.0  # six heartbeats and two registry re-checks
    with chain(count) as (anvil, deployment), orchestrator(anvil, deployment, workdir) as (process, url):
        time.sleep(1.0)  # let start-up allocations settle before the first reading
        before = process.rss_bytes()
        with ExitStack() as stack:
            for miner in start_miners(
                url.replace("http", "ws") + "/v1/workers/connect", count, workdir, idle=True
            ):
                stack.callback(miner.stop)
            if connected_miners(url) != count:
                raise RuntimeError(f"{connected_miners(url)} of {count} idle miners are connected")
            after = process.rss_bytes()
            cpu_before, wall_before = process.cpu_seconds(), time.monotonic()
            time.sleep(window_s)  # the measurement window: idle sessions, heartbeats only
            cpu = process.cpu_seconds() - cpu_before
            wall = time.monotonic() - wall_before
    return {
        "idle_miners": count,
        "rss_bytes_before": before,
        "rss_bytes_after": after,
        "rss_bytes_per_conn": round((after - before) / count),
        "heartbeat_cpu_pct": round(100 * cpu / wall, 2),
        "window_s": round(wall, 1),
        "heartbeat_s": 10.0,
    }


SECTIONS: dict[str, Callable[[bool, Path], dict[str, Any]]] = {
    "throughput": throughput_and_latency,
    "scale_out": lambda quick, workdir: {"scale_out": scale_out(quick, workdir)},
    "connections": lambda quick, workdir: {"connections": idle_connections(quick, workdir)},
    "canonical": lambda quick, workdir: {"canonical": canonical.measure()},
    "ledger": lambda quick, workdir: {"ledger": ledger.measure(quick=quick)},
    "gas": lambda quick, workdir: {"gas": gas.measure()},
}


def run(quick: bool, sections: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="krewe-bench-") as name:
        workdir = Path(name)
        started = time.monotonic()
        report: dict[str, Any] = {
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
            },
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": {name: version(name) for name in ("krewe", "aiohttp", "uvloop", "web3", "orjson")},
            "quick": quick,
        }
        for section in sections:
            report |= SECTIONS[section](quick, workdir)
        report["seconds"] = round(time.monotonic() - started, 1)
    return report


def table(report: dict[str, Any]) -> Table:
    rows = Table(
        title=f"krewe benchmarks ({'quick smoke run' if report['quick'] else 'full'}, {report['date']})"
    )
    for column in ("measure", "value", "target"):
        rows.add_column(column, justify="right" if column != "measure" else "left")
    if "throughput" in report:
        throughput_rows(rows, report)
    if "scale_out" in report:
        scale_out_rows(rows, report["scale_out"])
    if "connections" in report:
        connections_rows(rows, report["connections"])
    if "canonical" in report:
        canonical_rows(rows, report["canonical"])
    if "ledger" in report:
        ledger_rows(rows, report["ledger"])
    if "gas" in report:
        gas_rows(rows, report["gas"])
    return rows


def throughput_rows(rows: Table, report: dict[str, Any]) -> None:
    t, lag = report["throughput"], report["loop_lag"]
    rows.add_row("max jobs/s (closed loop, 3 replicas)", f"{t['max_jobs_per_s']:,.0f}", "")
    rows.add_row("bare fan-out baseline jobs/s, same run", f"{t['baseline_max_jobs_per_s']:,.0f}", "")
    rows.add_row(
        "krewe ÷ baseline",
        f"{t['krewe_over_baseline']}",
        f"≥ {TARGETS['krewe_over_baseline']} (goal 0.75)",
    )
    rows.add_row(
        "server CPU per job, closed loop: krewe / baseline",
        f"{t['cpu_ms_per_job']} / {t['baseline_cpu_ms_per_job']} ms",
        "",
    )
    for row in report["latency"]:
        rows.add_row(
            f"at {row['offered_jobs_per_s']:,} jobs/s offered ({row['seconds']:g} s): "
            "served/s, p50/p99/p99.9 ms",
            f"{row['jobs_per_s']:,.0f}, {row['p50_ms']}/{row['p99_ms']}/{row['p999_ms']}",
            "",
        )
        rows.add_row(
            "  baseline: served/s, p50/p99/p99.9 ms",
            f"{row['baseline_jobs_per_s']:,.0f}, "
            f"{row['baseline_p50_ms']}/{row['baseline_p99_ms']}/{row['baseline_p999_ms']}",
            "",
        )
        target = row["offered_jobs_per_s"] in TARGET_RATES
        rows.add_row(
            "  added p99 / p99.9 ms",
            f"{row['added_p99_ms']} / {row['added_p999_ms']}",
            f"≤ {TARGETS['added_p99_ms']:g} / ≤ {TARGETS['added_p999_ms']:g}" if target else "",
        )
        rows.add_row(
            "  server CPU, % of a core: krewe / baseline", f"{row['cpu_pct']} / {row['baseline_cpu_pct']}", ""
        )
        rows.add_row(
            f"  max loop lag ms (settlements during: {row['loop_settlements']})",
            f"{row['loop_lag_max_ms']}",
            f"≤ {TARGETS['loop_lag_max_ms']:g}" if target else "",
        )
    rows.add_row(
        f"max loop lag under load, at {' and '.join(map(str, lag['offered_jobs_per_s']))} jobs/s "
        f"({lag['settlements']} settlements, {lag['over_20ms']} of {lag['samples']:,} lags > 20 ms)",
        f"{lag['max_ms']} ms",
        f"≤ {TARGETS['loop_lag_max_ms']:g} ms",
    )


def scale_out_rows(rows: Table, s: dict[str, Any]) -> None:
    rows.add_row(
        f"scale-out, closed loop jobs/s ({s['clients']} clients, {s['miners']} miners): "
        "1 instance, SQLite store",
        f"{s['sqlite_one_instance_jobs_per_s']:,.0f}",
        "",
    )
    rows.add_row("  1 instance, Redis store", f"{s['one_instance_jobs_per_s']:,.0f}", "")
    rows.add_row(
        "  2 instances, one Redis (miners and clients split)", f"{s['two_instances_jobs_per_s']:,.0f}", ""
    )
    rows.add_row(f"  2 instances ÷ 1 instance, Redis ({s['cores']} cores)", f"{s['two_over_one']}", "")


def connections_rows(rows: Table, c: dict[str, Any]) -> None:
    rows.add_row(
        f"RSS per idle miner ({c['idle_miners']:,} connected)", f"{c['rss_bytes_per_conn']:,} B", "≤ 20,000 B"
    )
    rows.add_row(
        f"heartbeat CPU, idle miners ({c['window_s']} s window)",
        f"{c['heartbeat_cpu_pct']} %",
        f"≤ {TARGETS['heartbeat_cpu_pct']:g} %",
    )


def canonical_rows(rows: Table, items: list[dict[str, Any]]) -> None:
    for item in items:
        rows.add_row(
            f"digest, {item['output']} output ({item['bytes']:,} B)",
            f"{item['digest_us']:.1f} µs",
            "≤ 20 µs" if item["output"] == "chat" else "",
        )
        rows.add_row(f"parse_strict, {item['output']} output", f"{item['parse_strict_us']:.1f} µs", "")


def ledger_rows(rows: Table, items: list[dict[str, Any]]) -> None:
    for item in items:
        if "credits_per_s" in item:
            rows.add_row(
                f"ledger credits/s, {item['group']} per commit",
                f"{item['credits_per_s']:,.0f}",
                "≥ 50,000" if item["group"] != 1 else "",
            )
        elif item["group"] == "stalls":
            rows.add_row("ledger, one job's commit: p99 / p99.9 / max", ledger.stall_text(item), "")
            rows.add_row(
                f"ledger, paying 500 ({item['batches']} batches): p50 / max", ledger.payment_text(item), ""
            )


def gas_rows(rows: Table, g: dict[str, Any]) -> None:
    rows.add_row("gas per first credit (batch of 500)", f"{g['first_credit']:,.0f}", "≤ 25,000")
    rows.add_row("gas per repeat credit (batch of 500)", f"{g['repeat_credit']:,.0f}", "≤ 7,000")
    rows.add_row("recipients per 16.7M-gas transaction", f"{g['max_recipients_per_tx']:,}", "≥ 500")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: small counts, short phases")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--only", choices=SECTIONS, help="run this section alone")
    args = parser.parse_args()
    report = run(args.quick, [args.only] if args.only else list(SECTIONS))
    Console().print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
