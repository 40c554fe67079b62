"""`krewe miner statement`: the orchestrator's account of this miner, read with its own signature.

The request is signed as krewe.protocol.statement says, so it is answered whether or not the
orchestrator requires keys; the answer is one page of the statement (docs/protocol.md,
"Statements"), printed as tables or as the orchestrator's JSON.
"""

import time
from decimal import Decimal
from typing import Any

import requests
from rich.table import Table

from krewe.deploy import KREW
from krewe.keys import SigningKey
from krewe.protocol.statement import signed_headers

__all__ = ["StatementError", "fetch_statement", "statement_tables"]


class StatementError(Exception):
    """The statement could not be read; the message says why."""


def fetch_statement(api_url: str, key: SigningKey, *, cursor: str | None, limit: int) -> dict[str, Any]:
    """One page of `key`'s statement from the orchestrator at `api_url`."""
    params: dict[str, str | int] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    url = f"{api_url}/v1/workers/{key.address}/statement"
    try:
        response = requests.get(url, params=params, headers=signed_headers(key, time.time()), timeout=30)
    except requests.RequestException as error:
        raise StatementError(f"cannot reach the orchestrator at {api_url}: {error}") from None
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        raise StatementError(f"{url} answered {response.status_code} without JSON") from None
    if not response.ok:
        message = body.get("error", {}).get("message", response.reason)
        raise StatementError(f"the orchestrator refused the statement ({response.status_code}): {message}")
    return body


def krew(wei: str) -> str:
    return f"{Decimal(int(wei)) / KREW:f}"


def statement_tables(statement: dict[str, Any]) -> list[Table]:
    """The statement as tables: the account, the credits, the payouts (amounts in KREW)."""
    account = Table(title=f"statement of {statement['worker']} (KREW)", title_justify="left")
    for name in ("credited", "paid", "pending", "in_flight"):
        account.add_column(name.replace("_", " "), justify="right")
    account.add_row(*(krew(statement[name]) for name in ("credited", "paid", "pending", "in_flight")))
    credits = Table(title="credits, newest first", title_justify="left")
    credits.add_column("at")
    credits.add_column("job")
    credits.add_column("amount", justify="right")
    for credit in statement["credits"]:
        credits.add_row(credit["at"] or "-", credit["job_id"], krew(credit["amount"]))
    payouts = Table(title="payouts, newest first", title_justify="left")
    for column in ("at", "batch nonce", "transaction"):
        payouts.add_column(column)
    payouts.add_column("amount", justify="right")
    for payout in statement["payouts"]:
        payouts.add_row(
            payout["at"] or "-", str(payout["batch_nonce"]), payout["tx_hash"] or "-", krew(payout["amount"])
        )
    return [account, credits, payouts]
