"""Miners' statements: what a worker was credited and paid, entry by entry.

`GET /v1/workers/{address}/statement?cursor=…&limit=…` answers

    {"worker", "credited", "paid", "pending", "in_flight",
     "credits": [{"job_id", "amount", "at"}], "payouts": [{"batch_nonce", "tx_hash", "amount", "at"}],
     "next_cursor"}

Amounts are decimal strings of wei; `at` is RFC 3339 UTC with milliseconds, or null for entries
the ledger wrote before it recorded times. Both lists run newest first, at most `limit` (1 to
1000, default 100) of each per page, and `next_cursor` (null on the last page) continues both. The
totals are the worker's account as the page was read: credited = paid + pending + in_flight, and
`pending` is the worker's entry in /v1/ledger's `pending_by_worker`.

With keys configured (access.py) it takes an operator key, or the worker's own signature:
the headers of krewe.protocol.statement, checked here.
"""

import base64
import binascii
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from eth_utils.address import is_hex_address, to_checksum_address

from krewe.orchestrator.api.errors import ApiError, json_response
from krewe.orchestrator.api.services import SERVICES
from krewe.orchestrator.ledger import Statement, StatementCursor
from krewe.protocol.siwe import SiweError, format_time, recover_signer
from krewe.protocol.statement import (
    ADDRESS_HEADER,
    SIGNATURE_HEADER,
    SIGNATURE_WINDOW_S,
    TIMESTAMP_HEADER,
    statement_message,
)

__all__ = [
    "ROUTES",
    "SIGNATURE_HEADER",
    "STATEMENT_ROUTE",
    "check_signature",
    "decode_cursor",
    "encode_cursor",
    "signed_worker",
]

STATEMENT_ROUTE = "/v1/workers/{address}/statement"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


async def statement(request: web.Request) -> web.StreamResponse:
    """A worker's statement: its credits and payouts, page by page."""
    worker = path_address(request)
    cursor = decode_cursor(request.query.get("cursor"))
    limit = parse_limit(request.query.get("limit"))
    page = await request.app[SERVICES].ledger.statement(worker, cursor, limit)
    return json_response(statement_json(page))


ROUTES = [web.route("GET", STATEMENT_ROUTE, statement)]


def statement_json(page: Statement) -> dict[str, Any]:
    totals = page.totals
    return {
        "worker": page.worker,
        "credited": str(totals.credited),
        "paid": str(totals.paid),
        "pending": str(totals.pending),
        "in_flight": str(totals.in_flight),
        "credits": [
            {"job_id": credit.job_id, "amount": str(credit.amount), "at": moment(credit.at_ms)}
            for credit in page.credits
        ],
        "payouts": [
            {
                "batch_nonce": payout.batch_nonce,
                "tx_hash": payout.tx_hash,
                "amount": str(payout.amount),
                "at": moment(payout.at_ms),
            }
            for payout in page.payouts
        ],
        "next_cursor": None if page.next is None else encode_cursor(page.next),
    }


def moment(at_ms: int) -> str | None:
    return format_time(datetime.fromtimestamp(at_ms / 1000, UTC)) if at_ms else None


def path_address(request: web.Request) -> str:
    address = request.match_info["address"]
    if not is_hex_address(address):
        raise ApiError(400, "invalid_address", f"{address[:64]!r} is not 0x followed by 40 hex digits")
    return str(to_checksum_address(address))


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdecimal() or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, "invalid_limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


def encode_cursor(cursor: StatementCursor) -> str:
    """An opaque cursor: base64url of where each list goes on."""
    raw = orjson.dumps(
        [
            list(cursor.credits_before) if cursor.credits_before else None,
            cursor.payouts_before,
            cursor.credits_done,
            cursor.payouts_done,
        ]
    )
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None) -> StatementCursor:
    if text is None:
        return StatementCursor()
    invalid = ApiError(400, "invalid_cursor", "the cursor is not one this orchestrator gave (next_cursor)")
    try:
        value = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError):
        raise invalid from None
    match value:
        case [None, int() | None as payouts, bool(credits_done), bool(payouts_done)]:
            return StatementCursor(None, payouts, credits_done, payouts_done)
        case [[int(at_ms), str(job_id)], int() | None as payouts, bool(credits_done), bool(payouts_done)]:
            return StatementCursor((at_ms, job_id), payouts, credits_done, payouts_done)
    raise invalid


def signed_worker(request: web.Request) -> str:
    """The worker whose signature the request carries, if it asks for that worker's statement."""
    return check_signature(
        path_address(request),
        request.headers.get(ADDRESS_HEADER, ""),
        request.headers.get(TIMESTAMP_HEADER, ""),
        request.headers.get(SIGNATURE_HEADER, ""),
        now=time.time(),
    )


def check_signature(worker: str, address: str, timestamp: str, signature: str, *, now: float) -> str:
    """`worker`, if `signature` is its signature of the statement message for `address` at
    `timestamp`, made within SIGNATURE_WINDOW_S of `now`; 401 or 403 otherwise."""
    if not timestamp.isdecimal() or not timestamp.isascii():
        raise ApiError(401, "invalid_signature", f"{TIMESTAMP_HEADER} must be whole seconds since 1970")
    if abs(now - int(timestamp)) > SIGNATURE_WINDOW_S:
        raise ApiError(
            401, "signature_expired", f"{TIMESTAMP_HEADER} is more than {SIGNATURE_WINDOW_S} s from now"
        )
    try:
        signer = recover_signer(statement_message(address, timestamp), signature)
    except SiweError as error:
        raise ApiError(401, "invalid_signature", f"{SIGNATURE_HEADER}: {error}") from None
    if signer != address:
        raise ApiError(
            401, "invalid_signature", f"the signature is not {ADDRESS_HEADER}'s over its statement message"
        )
    if signer != worker:
        raise ApiError(403, "not_your_statement", "a worker's signature reads only its own statement")
    return signer
