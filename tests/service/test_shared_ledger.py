"""Two orchestrators on one Redis store: one ledger, settled by whichever holds the lease."""

import asyncio
from typing import Any

import pytest
import redis

from krewe.orchestrator.redis_ledger import RedisLedger
from krewe.settings import SettingsError
from tests.service.conftest import Harness, until
from tests.service.test_jobs import CHAT, get, post


async def test_both_instances_share_one_ledger_settled_only_by_the_lease_holder(
    make_harness: Any, redis_url: str
) -> None:
    shared = {"store": redis_url, "settlement_lease_s": 0.5}
    first: Harness = await make_harness(instance_id="first", **shared)
    second: Harness = await make_harness(instance_id="second", **shared)
    leases = [first.orchestrator.lease, second.orchestrator.lease]
    assert leases[0] is not None and leases[1] is not None
    await until(lambda: leases[0].token is not None, what="the first instance to take the lease")
    held = leases[0].token
    await asyncio.sleep(3 * 0.5)  # three lease lengths pass: renewed all along, never taken over
    assert (leases[0].token, leases[1].token) == (held, None)
    miners = await first.connected("honest", "honest", "honest")
    for _ in range(2):
        status, _ = await post(first, "/v1/chat/completions", CHAT)
        assert status == 200
    await until(lambda: first.orchestrator.router.idle, what="the jobs to finish")
    _, ledger = await get(second, "/v1/ledger")  # the other instance reads the same ledger
    assert ledger["pending"] == ledger["credited"] != "0"

    await second.orchestrator.settle()
    await first.orchestrator.settle()
    assert not second.orchestrator.settlements  # not the holder: it left the window alone
    assert first.orchestrator.settlements[0]["outcome"] == "paid"
    _, _, distributor = first.chain.deployment.contracts(first.chain.anvil.web3())
    paid = {miner.address: distributor.functions.credited(miner.address).call() for miner in miners}
    _, ledger = await get(second, "/v1/ledger")
    assert ledger["pending"] == ledger["in_flight"] == "0"

    # the holder stops cleanly, giving the lease up: the other settles what comes next at once
    await first.orchestrator.stop()
    client = redis.Redis.from_url(redis_url)
    try:
        RedisLedger(client).credit(miners[0].address, 7, "later")
    finally:
        client.close()
    await second.orchestrator.settle()
    assert second.orchestrator.settlements[0]["outcome"] == "paid"
    assert distributor.functions.credited(miners[0].address).call() == paid[miners[0].address] + 7


async def test_a_redis_without_appendfsync_always_is_refused_at_start(
    make_harness: Any, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.config_set("appendfsync", "everysec")
    try:
        with pytest.raises(SettingsError, match=r"appendfsync everysec.*redis_allow_volatile"):
            await make_harness(store=redis_url)
        started: Harness = await make_harness(store=redis_url, redis_allow_volatile=True)
        status, _ = await get(started, "/v1/ledger")
        assert status == 200
    finally:
        client.config_set("appendfsync", "always")
        client.close()
