"""Settlement gas on a real anvil: gas per first and per repeat credit, and recipients per transaction.

    python -m bench.gas [--json PATH]

A first credit writes a worker's `credited` slot from zero (the costliest case); a repeat credit
adds to a slot already written. Recipients are keccak-derived addresses and amounts of about
10^15 wei, so calldata costs what real batches cost.
"""

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from web3 import Web3

from krewe.devchain import KREW, Anvil, deploy, transact

TX_GAS_CAP = 16_777_216  # EIP-7825's per-transaction gas limit
SIZES = (1, 10, 100, 500)


def recipients(start: int, count: int) -> list[str]:
    return [
        Web3.to_checksum_address(Web3.keccak(text=f"worker-{i}")[-20:]) for i in range(start, start + count)
    ]


def measure() -> dict[str, Any]:
    rows = []
    with Anvil.start(accounts=3, extra_args=("--gas-limit", "60000000")) as anvil:
        w3 = anvil.web3()
        admin, orchestrator, _ = anvil.accounts
        deployment = deploy(w3, admin=admin, orchestrator=orchestrator, max_batch=10_000, pool=10**9 * KREW)
        _, _, distributor = deployment.contracts(w3)
        nonce = 0
        start = 0

        def send(workers: list[str]) -> int:
            nonlocal nonce
            amounts = [10**15 + i for i in range(len(workers))]
            call = distributor.functions.batchDistributeRewards(nonce, workers, amounts)
            receipt = transact(w3, call, orchestrator)
            nonce += 1
            gas: int = receipt["gasUsed"]
            return gas

        def estimate(workers: list[str]) -> int:
            amounts = [10**15 + i for i in range(len(workers))]
            call = distributor.functions.batchDistributeRewards(nonce, workers, amounts)
            gas: int = call.estimate_gas({"from": orchestrator})
            return gas

        for size in SIZES:
            workers = recipients(start, size)
            start += size
            first = send(workers)
            repeat = send(workers)
            rows.append(
                {
                    "recipients": size,
                    "first_tx_gas": first,
                    "repeat_tx_gas": repeat,
                    "first_credit": first / size,
                    "repeat_credit": repeat / size,
                }
            )
        # gas(n) = fixed + n * marginal, from the 100 and 500 batches; then confirm the limit on chain
        limits = {}
        for kind in ("first", "repeat"):
            marginal = (rows[3][f"{kind}_tx_gas"] - rows[2][f"{kind}_tx_gas"]) / 400
            fixed = rows[3][f"{kind}_tx_gas"] - 500 * marginal
            most = int((TX_GAS_CAP - fixed) // marginal)
            if kind == "first":
                candidates = recipients(start, most + 2)
            else:
                candidates = recipients(0, most + 2) if most + 2 <= start else recipients(0, start)
                if len(candidates) < most + 2:  # credit enough workers once so all of them are repeats
                    extra = recipients(start, most + 2 - len(candidates))
                    send(extra)
                    start += len(extra)
                    candidates += extra
            while estimate(candidates[:most]) > TX_GAS_CAP:
                most -= 1
            while estimate(candidates[: most + 1]) <= TX_GAS_CAP:
                most += 1
            limits[kind] = most
    return {
        "batches": rows,
        "first_credit": rows[-1]["first_credit"],
        "repeat_credit": rows[-1]["repeat_credit"],
        "max_recipients_per_tx": limits["first"],
        "max_repeat_recipients_per_tx": limits["repeat"],
        "tx_gas_cap": TX_GAS_CAP,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    figures = measure()
    table = Table(title="batchDistributeRewards gas (anvil)")
    for column in ("recipients", "tx gas, first", "per first credit", "tx gas, repeat", "per repeat credit"):
        table.add_column(column, justify="right")
    for row in figures["batches"]:
        table.add_row(
            str(row["recipients"]),
            f"{row['first_tx_gas']:,}",
            f"{row['first_credit']:,.0f}",
            f"{row['repeat_tx_gas']:,}",
            f"{row['repeat_credit']:,.0f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"most recipients under {TX_GAS_CAP:,} gas: {figures['max_recipients_per_tx']:,} first credits, "
        f"{figures['max_repeat_recipients_per_tx']:,} repeat credits"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
