"""Durable ledger speed: credits per second into the SQLite store (WAL, synchronous=FULL).

Each row commits `group` credits in one transaction (group commit), the way the router hands
a settled job's credits over; `group=1` is one fsync per credit.

    python -m bench.ledger
"""

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
    return rows


def main() -> None:
    table = Table(title=f"durable ledger (SQLite WAL, synchronous=FULL, {WORKERS} workers)")
    for column in ("credits per commit", "credits", "credits/s"):
        table.add_column(column, justify="right")
    for row in measure():
        if row["group"] == "snapshot":
            table.add_row(f"snapshot of {row['credits']:,} credits", "", f"{row['snapshot_ms']:.1f} ms")
        else:
            table.add_row(str(row["group"]), f"{row['credits']:,}", f"{row['credits_per_s']:,.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
