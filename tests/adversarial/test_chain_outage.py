"""A chain that stops answering: a new miner is refused with 1013 within `registry_timeout_s`, the
API keeps serving, and logins work again once the chain answers."""

import time
from typing import Any

import aiohttp

from krewe.protocol.messages import CloseCode
from tests.adversarial.relay import Relay
from tests.service.conftest import Harness


async def healthz(harness: Harness) -> int:
    async with aiohttp.ClientSession() as http, http.get(harness.url + "/healthz") as response:
        return response.status


async def test_a_login_during_a_chain_outage_gets_1013_within_the_registry_timeout(
    chain: Any, make_harness: Any
) -> None:
    async with Relay(chain.anvil.port) as relay:
        harness = await make_harness(rpc_url=relay.url, registry_timeout_s=0.5, registry_cache_s=0)
        relay.cut = True
        miner = await harness.miner(0).__aenter__()
        started = time.monotonic()
        reply = await miner.connect()
        waited = time.monotonic() - started
        assert (reply["type"], reply["code"]) == ("error", "registry_unavailable"), reply
        assert miner.close_code == CloseCode.TRY_AGAIN_LATER
        assert waited < 0.5 + 4.0, f"refused after {waited:.1f} s; the registry timeout is 0.5 s"
        assert await healthz(harness) == 200
        relay.cut = False
        again = await harness.miner(0).__aenter__()
        assert (await again.connect())["type"] == "welcome"
