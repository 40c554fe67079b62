"""Several instances settling one Redis ledger on a real anvil: one settler at a time by the lease,
a settler that lost its lease fenced out, and every wei paid exactly once."""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from krewe.devchain import KREW
from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.chain import ChainClient
from krewe.orchestrator.lease import SettlementLease
from krewe.orchestrator.ledger import Batch, Credit, LedgerError
from krewe.orchestrator.redis_ledger import RedisLedger
from krewe.orchestrator.settlement import BatchResult, Settler
from tests.chain.test_settlement import WORKERS, Net, network

LEASE_S = 0.5


class Instance:
    """One orchestrator's share of settlement: its own connection, ledger view and lease."""

    def __init__(self, redis_url: str, name: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.ledger = RedisLedger(self.client)
        self.lease = SettlementLease(self.client, name, lease_s=LEASE_S)

    def take_lease(self) -> int | None:
        token = self.lease.keep()
        self.ledger.hold(token)
        return token

    def settle(self, net: Net, on_stage: Callable[[str, Batch], None] | None = None) -> list[BatchResult]:
        """One settlement window, as the orchestrator runs it (no confirmations: anvil automines)."""

        async def once() -> list[BatchResult]:
            client = await ChainClient.connect(net.anvil.url, net.deployment.distributor, net.key)
            try:
                settler = Settler(LedgerService(self.ledger), client, confirmations=0, on_stage=on_stage)
                return await settler.settle_once()
            finally:
                await client.close()

        return asyncio.run(once())


@pytest.fixture
def instances(redis_url: str) -> Iterator[list[Instance]]:
    both = [Instance(redis_url, "a"), Instance(redis_url, "b")]
    yield both
    for instance in both:
        instance.client.close()


def credit_everyone(ledger: RedisLedger, job: str) -> int:
    credits = [Credit(job, worker, 2**65 + i * KREW) for i, worker in enumerate(WORKERS)]
    ledger.credit_many(credits)
    return sum(credit.amount for credit in credits)


def paid_on_chain(net: Net) -> list[int]:
    """The total of every RewardsDistributed event, in nonce order."""
    _, _, distributor = net.deployment.contracts(net.w3)
    events = distributor.events.RewardsDistributed().get_logs(from_block=0)
    return [event["args"]["total"] for event in sorted(events, key=lambda event: event["args"]["nonce"])]


def assert_paid_once(net: Net, ledger: RedisLedger, credited: int) -> None:
    totals = ledger.totals()
    assert totals.credited == credited == totals.paid + totals.pending + totals.in_flight
    assert sum(paid_on_chain(net)) == totals.paid
    for worker, account in ledger.earnings(WORKERS).items():
        assert net.on_chain(worker) == account.paid, worker


def test_two_instances_settling_the_same_window_pay_once(tmp_path: Path, instances: list[Instance]) -> None:
    with network(tmp_path) as net:
        credited = credit_everyone(instances[0].ledger, "job-a") + credit_everyone(
            instances[1].ledger, "job-b"
        )
        tokens = [instance.take_lease() for instance in instances]
        assert tokens[0] is not None and tokens[1] is None
        outcomes: list[list[BatchResult] | LedgerError] = [[], []]

        def window(index: int) -> None:
            try:
                outcomes[index] = instances[index].settle(net)
            except LedgerError as error:
                outcomes[index] = error

        racers = [threading.Thread(target=window, args=(index,)) for index in (0, 1)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(timeout=120)
        assert not any(racer.is_alive() for racer in racers)
        holder, other = outcomes
        assert isinstance(holder, list) and [result.outcome.value for result in holder] == ["paid"]
        assert isinstance(other, LedgerError) and "fenced: the settlement lease is held (1 a)" in str(other)
        assert len(paid_on_chain(net)) == 1
        assert_paid_once(net, instances[1].ledger, credited)


def test_a_settler_paused_past_its_lease_is_fenced_and_its_batch_paid_once(
    tmp_path: Path, instances: list[Instance]
) -> None:
    paused, heir = instances
    with network(tmp_path) as net:
        credited = credit_everyone(paused.ledger, "job-1")
        assert paused.take_lease() == 1
        sent = threading.Event()
        resume = threading.Event()

        def pause_after_sending(stage: str, batch: Batch) -> None:
            if stage == "sent":  # broadcast, and now stalled (a long pause, a frozen VM)
                sent.set()
                assert resume.wait(timeout=60)

        outcome: list[list[BatchResult] | LedgerError] = []

        def stalled_window() -> None:
            try:
                outcome.append(paused.settle(net, pause_after_sending))
            except LedgerError as error:
                outcome.append(error)

        stalled = threading.Thread(target=stalled_window)
        stalled.start()
        try:
            assert sent.wait(timeout=60)
            deadline = time.monotonic() + 2 * LEASE_S
            while heir.take_lease() is None:  # the paused holder renews nothing
                assert time.monotonic() < deadline, "the lease was not taken over in time"
                time.sleep(LEASE_S / 5)
            credited += credit_everyone(heir.ledger, "job-2")
            # the heir finds the paused settler's batch open and signed, sees it paid, commits it;
            # then pays the newer credits in a batch of its own
            results = heir.settle(net)
            assert [result.outcome.value for result in results] == ["paid", "paid"]
        finally:
            resume.set()
            stalled.join(timeout=120)
        assert not stalled.is_alive()
        (fenced,) = outcome
        assert isinstance(fenced, LedgerError) and "fenced: fencing token 1" in str(fenced)
        assert len(paid_on_chain(net)) == 2  # the paused settler's batch once, the heir's once
        assert_paid_once(net, heir.ledger, credited)
        assert heir.ledger.open_batches() == [] and heir.ledger.pending() == {}
