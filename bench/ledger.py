"""Durable ledger speed: credits per second into the SQLite store (WAL, synchronous=FULL).

Each row commits `group` credits in one transaction (group commit), the way the router hands
a settled job's credits over; `group=1` is one fsync per credit. The last row times single
commits the way the orchestrator makes them on its event loop: a job's 3 credits at a time,
among 5,000 workers, and a batch of 500 workers paid after every 167 jobs; a slow commit is
a stall of the loop.

    python -m bench.ledger
"""

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from krewe.orchestrator.ledger import Credit, RewardLedger, SQLiteLedgerStore

WORKERS = 300


def credits_per_s(group: int, total: int, directory: Path) -> float:
    ledger = RewardLedger(SQLiteLedgerStore(directory / f"ledger-{group}.db"))
    credits = [Credit(f"job-{i // 3}", f"0x{i % WORKERS:040x}", 10**15) for i in range(total)]
    start = time.perf_counter()
    for offset in range(0, total, group):
        ledger.credit_many(credits[offset : offset + group])
    elapsed = time.perf_counter() - start
    assert ledger.totals().credited == total * 10**15
    ledger.close()
    return total / elapsed


def snapshot_ms(directory: Path) -> float:
    ledger = RewardLedger(SQLiteLedgerStore(directory / "ledger-64.db"))
    start = time.perf_counter()
    ledger.snapshot(max_batch=500)
    elapsed = time.perf_counter() - start
    ledger.close()
    return elapsed * 1e3


def commit_stalls(batches: int, directory: Path) -> dict[str, Any]:
    """Milliseconds each commit took: a job's credits, and paying a batch."""
    ledger = RewardLedger(SQLiteLedgerStore(directory / "ledger-stalls.db"))
    rng = random.Random(1)
    workers = [f"0x{rng.getrandbits(160):040x}" for _ in range(5_000)]
    credits: list[float] = []
    payments: list[float] = []
    job = 0
    for _ in range(batches):
        paid = rng.sample(workers, 500)
        for start in range(0, len(paid), 3):
            job += 1
            began = time.perf_counter()
            ledger.credit_many(Credit(f"job-{job}", worker, 10**15) for worker in paid[start : start + 3])
            credits.append(time.perf_counter() - began)
        (batch,) = ledger.snapshot(max_batch=500)
        began = time.perf_counter()
        ledger.commit(batch.id)
        payments.append(time.perf_counter() - began)
    ledger.close()
    credits.sort()
    payments.sort()

    def ms(ordered: list[float], q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    return {
        "group": "stalls",
        "credits": job * 3,
        "batches": batches,
        "credit_p50_ms": ms(credits, 0.5),
        "credit_p99_ms": ms(credits, 0.99),
        "credit_p999_ms": ms(credits, 0.999),
        "credit_max_ms": ms(credits, 1.0),
        "payment_p50_ms": ms(payments, 0.5),
        "payment_max_ms": ms(payments, 1.0),
    }


def measure(quick: bool = False) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        for group, total in (
            (1, 500 if quick else 2_000),
            (64, 20_000 if quick else 100_000),
            (512, 50_000 if quick else 200_000),
        ):
            rows.append(
                {"group": group, "credits": total, "credits_per_s": credits_per_s(group, total, directory)}
            )
        rows.append(
            {"group": "snapshot", "credits": rows[1]["credits"], "snapshot_ms": snapshot_ms(directory)}
        )
        rows.append(commit_stalls(10 if quick else 200, directory))
    return rows


def stall_text(row: dict[str, Any]) -> str:
    return f"{row['credit_p99_ms']} / {row['credit_p999_ms']} / {row['credit_max_ms']} ms"


def payment_text(row: dict[str, Any]) -> str:
    return f"{row['payment_p50_ms']} / {row['payment_max_ms']} ms"


def main() -> None:
    table = Table(title=f"durable ledger (SQLite WAL, synchronous=FULL, {WORKERS} workers)")
    for column in ("credits per commit", "credits", "credits/s"):
        table.add_column(column, justify="right")
    for row in measure():
        if row["group"] == "snapshot":
            table.add_row(f"snapshot of {row['credits']:,} credits", "", f"{row['snapshot_ms']:.1f} ms")
        elif row["group"] == "stalls":
            table.add_row("one job's commit: p99 / p99.9 / max", f"{row['credits']:,}", stall_text(row))
            table.add_row("paying a batch of 500: p50 / max", str(row["batches"]), payment_text(row))
        else:
            table.add_row(str(row["group"]), f"{row['credits']:,}", f"{row['credits_per_s']:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
