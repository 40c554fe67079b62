"""What only the Redis ledger has: the settlement lease and its fencing tokens, the durability
check, replicas acknowledged by WAIT, and a redis-server killed with SIGKILL mid-write. The rules it
shares with the SQLite ledger are tested on both in test_ledger.py and test_statements.py."""

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from krewe.orchestrator.lease import SettlementLease
from krewe.orchestrator.ledger import Credit, LedgerError
from krewe.orchestrator.redis_ledger import RedisLedger, check_durability
from krewe.redisproc import RedisServer
from krewe.settings import SettingsError

LEASE_S = 0.3
T = TypeVar("T")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def wait_for(probe: Callable[[], T | None], within_s: float, every_s: float = 0.02) -> T:
    """Poll `probe` until it gives something other than None; fail after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"nothing within {within_s} s"
        time.sleep(every_s)


def test_one_instance_holds_the_lease_and_renews_it(client: redis.Redis) -> None:
    first = SettlementLease(client, "a", lease_s=LEASE_S)
    second = SettlementLease(client, "b", lease_s=LEASE_S)
    token = first.keep()
    assert token is not None and second.keep() is None
    assert (first.holder(), second.holder()) == ("a", "a")
    # renewed past several lease lengths: never lost, never taken
    deadline = time.monotonic() + 3 * LEASE_S
    while time.monotonic() < deadline:
        assert first.keep() == token
        assert second.keep() is None
        time.sleep(LEASE_S / 6)
    first.release()
    assert first.holder() is None and first.token is None
    taken = second.keep()
    assert taken is not None and taken > token  # tokens only grow


def test_a_dead_holder_is_replaced_within_twice_the_lease(client: redis.Redis) -> None:
    dead = SettlementLease(client, "dead", lease_s=LEASE_S)
    heir = SettlementLease(client, "heir", lease_s=LEASE_S)
    old = dead.keep()
    last_renewal = time.monotonic()  # then it stops renewing, as a killed process does
    assert old is not None
    new = wait_for(heir.keep, within_s=2 * LEASE_S, every_s=LEASE_S / 3)
    assert time.monotonic() - last_renewal < 2 * LEASE_S
    assert new > old and heir.holder() == "heir"
    assert dead.keep() is None and dead.token is None  # it finds out, and takes nothing back
    dead.release()  # not its lease any more: left alone
    assert heir.holder() == "heir"


def test_instance_names_need_no_spaces(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="no spaces"):
        SettlementLease(client, "two words", lease_s=LEASE_S)


def test_a_settler_whose_lease_was_taken_over_cannot_settle(client: redis.Redis) -> None:
    old_lease = SettlementLease(client, "old", lease_s=LEASE_S)
    new_lease = SettlementLease(client, "new", lease_s=LEASE_S)
    old, new = RedisLedger(client), RedisLedger(client)
    old.hold(old_lease.keep())
    old.credit_many([Credit("j1", "0xA", 2**70), Credit("j1", "0xB", 3)])
    (frozen,) = old.snapshot(max_batch=10)
    new.hold(wait_for(new_lease.keep, within_s=2 * LEASE_S))  # the old settler paused past its lease
    new.credit("0xC", 5, "j2")  # credits need no token
    for settle in (
        lambda: old.snapshot(max_batch=10),
        lambda: old.commit(frozen.id),
        lambda: old.revert(frozen.id),
    ):
        with pytest.raises(LedgerError, match="fenced: fencing token 1 no longer holds the settlement lease"):
            settle()
    unfenced = RedisLedger(client)  # nobody's token: refused while anyone holds the lease
    with pytest.raises(LedgerError, match="fenced: the settlement lease is held"):
        unfenced.revert(frozen.id)
    assert new.commit(frozen.id).total == 2**70 + 3
    assert [batch.workers for batch in new.snapshot(max_batch=10)] == [("0xC",)]
    totals = new.totals()
    assert (totals.credited, totals.paid, totals.pending, totals.in_flight) == (2**70 + 8, 2**70 + 3, 0, 5)
    new_lease.release()
    with pytest.raises(LedgerError, match=r"fenced: fencing token 2 no longer holds .* \(it expired\)"):
        new.snapshot(max_batch=10)


def test_amounts_far_beyond_doubles_add_up_exactly(client: redis.Redis) -> None:
    ledger = RedisLedger(client)
    rng = random.Random(7)
    amounts = [rng.randint(1, 10**40) for _ in range(200)] + [2**64 - 1, 2**64 + 1, 2**53 + 1, 1]
    amounts += [10**digits - 1 for digits in range(1, 45)] + [1] * 3  # every carry, at every place
    assert all(ledger.credit_many(Credit(f"j{i}", f"0x{i % 3}", a) for i, a in enumerate(amounts)))
    batches = ledger.snapshot(max_batch=2)
    ledger.commit(batches[0].id)
    ledger.revert(batches[1].id)
    totals = ledger.totals()
    assert totals.credited == sum(amounts)
    assert totals.paid == batches[0].total and totals.pending == batches[1].total
    owed = {f"0x{w}": sum(a for i, a in enumerate(amounts) if i % 3 == w) for w in range(3)}
    assert ledger.earnings(owed) == {
        worker: ledger.earnings([worker])[worker] for worker in owed
    }  # one at a time or together, the same
    assert {worker: account.credited for worker, account in ledger.earnings(owed).items()} == owed


def test_the_durability_check_names_the_settings_it_needs(client: redis.Redis) -> None:
    check_durability(client, allow_volatile=False)  # the test server writes appendfsync always
    client.config_set("appendfsync", "everysec")
    try:
        with pytest.raises(SettingsError, match=r"appendfsync everysec.*redis_allow_volatile"):
            check_durability(client, allow_volatile=False)
        check_durability(client, allow_volatile=True)
    finally:
        client.config_set("appendfsync", "always")


def test_writes_fail_when_too_few_replicas_acknowledge(client: redis.Redis) -> None:
    ledger = RedisLedger(client, min_replicas=1, replica_timeout_ms=50)  # the server has none
    with pytest.raises(LedgerError, match=r"only 0 of the 1 replicas \(redis_min_replicas\)"):
        ledger.credit("0xA", 1, "j1")
    # written on the primary all the same: a retry adds nothing twice
    assert RedisLedger(client).credit_many([Credit("j1", "0xA", 1), Credit("j2", "0xA", 1)]) == [False, True]


def test_a_replica_that_acknowledges_lets_writes_through(tmp_path: Path, client: redis.Redis) -> None:
    primary_port = client.connection_pool.connection_kwargs["port"]
    delay = client.config_get("repl-diskless-sync-delay")["repl-diskless-sync-delay"]
    client.config_set("repl-diskless-sync-delay", 0)  # the replica's first sync at once, not in 5 s
    replica = RedisServer.start(tmp_path / "replica")
    follower = redis.Redis.from_url(replica.url)
    try:
        follower.replicaof("127.0.0.1", primary_port)
        wait_for(
            lambda: True if follower.info("replication")["master_link_status"] == "up" else None,
            within_s=10,
        )
        ledger = RedisLedger(client, min_replicas=1, replica_timeout_ms=5_000)
        assert ledger.credit("0xA", 3, "j1")
        assert RedisLedger(follower).pending() == {"0xA": 3}
        with pytest.raises(LedgerError, match=r"^batch 9 is not open"):  # refusals read the same
            ledger.commit(9)
    finally:
        follower.close()
        replica.kill()  # a replica stopped gracefully may wait out shutdown-timeout
        client.config_set("repl-diskless-sync-delay", delay)


def test_a_redis_killed_mid_write_keeps_every_acknowledged_credit(tmp_path: Path) -> None:
    server = RedisServer.start(tmp_path / "redis")
    try:
        ledger = RedisLedger(redis.Redis.from_url(server.url))
        acknowledged: dict[tuple[str, str], int] = {}
        rng = random.Random(3)

        def write() -> None:
            job = 0
            try:
                while True:
                    credits = []
                    for _ in range(rng.randint(1, 20)):
                        job += 1
                        credits.append(Credit(f"j{job}", f"0x{rng.randint(0, 9)}", rng.randint(1, 10**24)))
                    ledger.credit_many(credits)
                    acknowledged.update({(c.job_id, c.worker): c.amount for c in credits})
                    if rng.random() < 0.2:
                        for batch in ledger.snapshot(max_batch=4)[:2]:
                            (ledger.commit if rng.random() < 0.5 else ledger.revert)(batch.id)
            except redis.ConnectionError:
                return  # the server is gone

        writer = threading.Thread(target=write)
        writer.start()
        wait_for(lambda: True if len(acknowledged) > 2_000 else None, within_s=60)
        server.kill()
        writer.join(timeout=30)
        assert not writer.is_alive()
        ledger.close()

        server = RedisServer.start(tmp_path / "redis", port=server.port)
        client = redis.Redis.from_url(server.url)
        reopened = RedisLedger(client)
        stored = {}
        for field, amount in client.hgetall("krewe:ledger:credits").items():
            length, worker_and_job = field.decode().split(":", 1)  # len(worker):worker job_id
            worker, job = worker_and_job[: int(length)], worker_and_job[int(length) :]
            stored[(job, worker)] = int(amount)
        for key, amount in acknowledged.items():
            assert stored[key] == amount
        totals = reopened.totals()
        assert totals.credited == sum(stored.values())  # the running total matches the journal
        assert totals.credited == totals.paid + totals.pending + totals.in_flight
        paid_batches = 0
        for key in client.scan_iter("krewe:ledger:batch:*"):
            batch = client.hgetall(key)
            if batch[b"state"] == b"paid":
                paid_batches += sum(map(int, batch[b"amounts"].split()))
        assert totals.paid == paid_batches
        client.close()
    finally:
        server.stop()
