"""Miners' statements over real HTTP, who may read them and the dashboard's other endpoints, and
`krewe miner statement` against a live orchestrator."""

import asyncio
import base64
import time
from typing import Any

import aiohttp
import orjson
import pytest
from click.testing import CliRunner

from krewe.cli import main
from krewe.devchain import dev_key
from krewe.keys import SigningKey
from krewe.orchestrator.api.errors import ApiError
from krewe.orchestrator.api.statements import check_signature
from krewe.protocol.statement import signed_headers, statement_message
from tests.service.conftest import MINER_KEYS, Harness, until
from tests.service.test_jobs import CHAT, post


async def fetch(harness: Harness, path: str, **headers: str) -> tuple[int, Any, dict[str, str]]:
    async with aiohttp.ClientSession() as http, http.get(harness.url + path, headers=headers) as response:
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body, dict(response.headers)


async def run_jobs(harness: Harness, count: int) -> None:
    for _ in range(count):
        status, body = await post(harness, "/v1/chat/completions", CHAT)
        assert status == 200, body
    await until(lambda: harness.orchestrator.router.idle, what="the jobs to finish")


async def whole_statement(harness: Harness, worker: str, **headers: str) -> dict[str, Any]:
    """Every page of a statement, walked with a small page size."""
    status, page, _ = await fetch(harness, f"/v1/workers/{worker}/statement?limit=2", **headers)
    assert status == 200, page
    whole = {**page, "pages": 1}
    while page["next_cursor"]:
        path = f"/v1/workers/{worker}/statement?limit=2&cursor={page['next_cursor']}"
        status, page, _ = await fetch(harness, path, **headers)
        assert status == 200, page
        whole["credits"] += page["credits"]
        whole["payouts"] += page["payouts"]
        whole["pages"] += 1
    return whole


async def test_a_statement_adds_up_to_the_ledger(harness: Harness) -> None:
    miners = await harness.connected("honest", "honest", "honest")
    await run_jobs(harness, 3)
    await harness.orchestrator.settle()
    await run_jobs(harness, 2)  # pending beside what was paid
    _, ledger, _ = await fetch(harness, "/v1/ledger")
    reward = harness.orchestrator.settings.reward_for("test-model")
    for miner in miners:
        statement = await whole_statement(harness, miner.address.lower())  # any case is the same worker
        assert statement["worker"] == miner.address
        assert statement["pages"] == 3  # five credits, two a page
        assert statement["credited"] == str(5 * reward)
        assert sum(int(credit["amount"]) for credit in statement["credits"]) == int(statement["credited"])
        assert sum(int(payout["amount"]) for payout in statement["payouts"]) == int(statement["paid"])
        assert statement["paid"] == str(3 * reward) and statement["in_flight"] == "0"
        assert statement["pending"] == ledger["pending_by_worker"][miner.address] == str(2 * reward)
        (payout,) = statement["payouts"]
        (settled,) = harness.orchestrator.settlements
        assert (payout["batch_nonce"], payout["tx_hash"]) == (settled["batch_nonce"], settled["tx_hash"])
        assert payout["at"].endswith("Z")
        assert all(credit["at"].endswith("Z") for credit in statement["credits"])
        times = [credit["at"] for credit in statement["credits"]]
        assert times == sorted(times, reverse=True)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "invalid_address"),
        ("?cursor=bm9wZQ", "invalid_cursor"),
        ("?cursor=%%%", "invalid_cursor"),
        ("?limit=0", "invalid_limit"),
        ("?limit=1001", "invalid_limit"),
        ("?limit=2.5", "invalid_limit"),
    ],
)
async def test_bad_statement_requests_get_clear_errors(harness: Harness, query: str, code: str) -> None:
    worker = "0xnot-an-address" if code == "invalid_address" else SigningKey.from_hex(dev_key(3)).address
    status, body, _ = await fetch(harness, f"/v1/workers/{worker}/statement{query}")
    assert (status, body["error"]["code"]) == (400, code)


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"operator:{password}".encode()).decode()


async def test_with_keys_the_dashboard_and_operations_take_an_operator_key(make_harness: Any) -> None:
    harness = await make_harness(api_keys=["client"], admin_api_keys=["operator"])
    for path in ("/", "/dashboard/dashboard.js", "/v1/workers", "/v1/ledger", "/v1/settlements"):
        status, body, headers = await fetch(harness, path)
        assert (status, body["error"]["code"]) == (401, "missing_api_key"), path
        assert headers["WWW-Authenticate"].startswith('Basic realm="krewe operator"')
        status, body, _ = await fetch(harness, path, Authorization="Bearer client")
        assert (status, body["error"]["code"]) == (401, "invalid_api_key"), path
        assert (await fetch(harness, path, Authorization="Bearer operator"))[0] == 200, path
        assert (await fetch(harness, path, Authorization=basic("operator")))[0] == 200, path
    status, page, _ = await fetch(harness, "/", Authorization=basic("operator"))
    assert '<script src="/dashboard/dashboard.js"' in page
    # an operator key also reads job records (the dashboard links them); a client key does as before
    assert (await fetch(harness, "/v1/jobs/none", Authorization=basic("operator")))[0] == 404
    assert (await fetch(harness, "/v1/jobs/none", Authorization="Bearer client"))[0] == 404
    assert (await fetch(harness, "/v1/jobs/none"))[0] == 401
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert (await fetch(harness, path))[0] == 200, path


async def test_only_operator_keys_leave_the_client_api_open(make_harness: Any) -> None:
    harness = await make_harness(admin_api_keys=["operator"])
    assert (await fetch(harness, "/v1/models"))[0] == 200
    assert (await fetch(harness, "/v1/ledger"))[0] == 401
    assert (await fetch(harness, "/v1/ledger", Authorization="Bearer operator"))[0] == 200


async def test_with_no_keys_everything_is_open_and_the_event_stream_sends_snapshots(harness: Harness) -> None:
    await harness.connected("honest", "honest", "honest")
    await run_jobs(harness, 1)
    assert (await fetch(harness, "/"))[0] == 200
    status, body, _ = await fetch(harness, "/dashboard/nothing.js")
    assert (status, body["error"]["code"]) == (404, "not_found")
    async with aiohttp.ClientSession() as http, http.get(harness.url + "/v1/events") as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert await response.content.readline() == b"event: snapshot\n"
        data = await response.content.readline()
    snapshot = orjson.loads(data.removeprefix(b"data: "))
    assert [miner["worker"] for miner in snapshot["miners"]] == sorted(m.address for m in harness.miners)
    (job,) = snapshot["jobs"]
    assert (job["verdict"], job["agreeing"], job["replicas"]) == ("agreed", 3, 3)
    assert snapshot["ledger"]["credited"] == str(3 * harness.orchestrator.settings.reward_for("test-model"))
    assert sum(snapshot["series"]["agreed"]) == 1


async def test_a_worker_reads_its_own_statement_with_its_signature(make_harness: Any) -> None:
    harness = await make_harness(api_keys=["client"], admin_api_keys=["operator"])
    own, other = SigningKey.from_hex(dev_key(MINER_KEYS[0])), SigningKey.from_hex(dev_key(MINER_KEYS[1]))
    path = f"/v1/workers/{own.address}/statement"
    status, body, _ = await fetch(harness, path, **signed_headers(own, time.time()))
    assert (status, body["worker"], body["credited"]) == (200, own.address, "0")
    status, body, _ = await fetch(harness, path, **signed_headers(other, time.time()))
    assert (status, body["error"]["code"]) == (403, "not_your_statement")
    status, body, _ = await fetch(harness, path, **signed_headers(own, time.time() - 120))
    assert (status, body["error"]["code"]) == (401, "signature_expired")
    forged = signed_headers(other, time.time()) | {"X-Krewe-Address": own.address}
    status, body, _ = await fetch(harness, path, **forged)
    assert (status, body["error"]["code"]) == (401, "invalid_signature")
    status, body, _ = await fetch(harness, path)
    assert (status, body["error"]["code"]) == (401, "missing_api_key")
    assert (await fetch(harness, path, Authorization="Bearer operator"))[0] == 200


def test_the_signature_rule_at_the_edges_of_its_window() -> None:
    key = SigningKey.from_hex(dev_key(MINER_KEYS[0]))
    signature = key.sign_message(statement_message(key.address, "1000"))
    assert check_signature(key.address, key.address, "1000", signature, now=1060) == key.address
    assert check_signature(key.address, key.address, "1000", signature, now=940) == key.address
    for now, timestamp in ((1061, "1000"), (939, "1000"), (1000, "+1000"), (1000, "1e3"), (1000, "١٠٠٠")):
        with pytest.raises(ApiError) as refused:
            check_signature(key.address, key.address, timestamp, signature, now=now)
        assert refused.value.status == 401
    lowercase = key.address.lower()  # the message names the address as it is sent, checksummed
    with pytest.raises(ApiError, match="not X-Krewe-Address's"):
        check_signature(key.address, lowercase, "1000", signature, now=1000)


async def test_the_miner_prints_its_statement(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    miners = await harness.connected("honest", "honest", "honest")
    await run_jobs(harness, 2)
    monkeypatch.setenv("KREWE_MINER_DEV_KEY", dev_key(MINER_KEYS[0]))
    arguments = ["miner", "statement", "--orchestrator-url", harness.connect_url]
    runner = CliRunner()
    printed = await asyncio.to_thread(runner.invoke, main, [*arguments, "--json"])
    assert printed.exit_code == 0, printed.output
    statement = orjson.loads(printed.output)
    assert statement["worker"] == miners[0].address and len(statement["credits"]) == 2
    table = await asyncio.to_thread(runner.invoke, main, [*arguments, "--limit", "1"])
    assert table.exit_code == 0, table.output
    assert statement["credits"][0]["job_id"] in table.output and "0.002" in table.output
    assert "next page: krewe miner statement --cursor" in table.output
    stopped = await asyncio.to_thread(
        runner.invoke,
        main,
        ["miner", "statement", "--orchestrator-url", "ws://127.0.0.1:9/v1/workers/connect"],
    )
    assert stopped.exit_code == 2 and "cannot reach the orchestrator at http://127.0.0.1:9" in stopped.output
