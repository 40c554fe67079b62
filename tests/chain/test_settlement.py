"""Settlement on a real anvil, through faults. Every test ends with the same check: on-chain credited +
pending + in flight == credited in the ledger, for every worker, so nothing was lost or paid twice."""

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import Web3
from web3._utils.http_session_manager import HTTPSessionManager

from krewe.devchain import KREW, Anvil, Deployment, deploy, dev_key, transact
from krewe.keys import KeyLoadError, SigningKey
from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.chain import ChainClient, ChainError
from krewe.orchestrator.ledger import Batch, Credit, RewardLedger, SendRecord, SQLiteLedgerStore
from krewe.orchestrator.settlement import SettlementOutcome, Settler
from krewe.settings import SettingsError

ORCHESTRATOR = 1  # anvil dev account index
WORKERS = [Web3.to_checksum_address(Web3.keccak(text=f"worker-{i}")[-20:]) for i in range(6)]


@dataclass
class Net:
    anvil: Anvil
    w3: Web3
    deployment: Deployment
    key: SigningKey
    directory: Path

    def ledger(self, name: str = "ledger.db") -> RewardLedger:
        return RewardLedger(SQLiteLedgerStore(self.directory / name))

    def on_chain(self, worker: str) -> int:
        _, _, distributor = self.deployment.contracts(self.w3)
        credited: int = distributor.functions.credited(worker).call()
        return credited

    def rpc(self, method: str, *params: Any) -> Any:
        return self.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]


@contextmanager
def network(tmp_path: Path, pool: int = 1_000 * KREW, state: bool = False) -> Iterator[Net]:
    anvil = Anvil.start(accounts=4, state=tmp_path / "chain.json" if state else None)
    net = None
    try:
        w3 = anvil.web3()
        key = SigningKey.from_hex(dev_key(ORCHESTRATOR))
        deployment = deploy(w3, admin=anvil.accounts[0], orchestrator=key.address, pool=pool)
        net = Net(anvil, w3, deployment, key, tmp_path)
        yield net
    finally:
        anvil.stop()
        if net is not None:
            net.anvil.stop()  # a test may have restarted the chain


def settle(
    net: Net,
    ledger: RewardLedger,
    *,
    client_class: type[ChainClient] = ChainClient,
    url: str | None = None,
    client_options: dict[str, Any] | None = None,
    **options: Any,
) -> list[Any]:
    """One settlement window through a fresh client; no confirmations unless a test asks."""
    options = {"confirmations": 0} | options

    async def once() -> list[Any]:
        client = await client_class.connect(
            url or net.anvil.url, net.deployment.distributor, net.key, **(client_options or {})
        )
        try:
            return await Settler(LedgerService(ledger), client, **options).settle_once()
        finally:
            await client.close()

    return asyncio.run(once())


def credit_all(ledger: RewardLedger, job: str, amount: int = KREW) -> dict[str, int]:
    ledger.credit_many(Credit(job, worker, amount + i) for i, worker in enumerate(WORKERS))
    return {worker: amount + i for i, worker in enumerate(WORKERS)}


def assert_exact(net: Net, ledgers_and_credits: list[tuple[RewardLedger, dict[str, int]]]) -> None:
    """Per worker: on chain + pending + in flight == credited, over all ledgers paying through this chain."""
    owed: dict[str, int] = {}
    unpaid: dict[str, int] = {}
    for ledger, credited in ledgers_and_credits:
        totals = ledger.totals()
        assert totals.credited == totals.paid + totals.pending + totals.in_flight
        for worker, amount in credited.items():
            owed[worker] = owed.get(worker, 0) + amount
        for worker, amount in ledger.pending().items():
            unpaid[worker] = unpaid.get(worker, 0) + amount
        for batch in ledger.open_batches():
            for worker, amount in zip(batch.workers, batch.amounts, strict=True):
                unpaid[worker] = unpaid.get(worker, 0) + amount
    for worker, amount in owed.items():
        assert net.on_chain(worker) + unpaid.get(worker, 0) == amount, worker


def test_success(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        (result,) = settle(net, ledger)
        assert result.outcome is SettlementOutcome.PAID
        assert [net.on_chain(w) for w in WORKERS] == [credited[w] for w in WORKERS]
        assert ledger.totals().paid == sum(credited.values())
        assert settle(net, ledger) == []  # nothing pending: nothing sent
        assert_exact(net, [(ledger, credited)])


def test_batches_above_max_batch_go_over_consecutive_nonces(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        results = settle(net, ledger, max_batch=4)
        assert [r.outcome for r in results] == [SettlementOutcome.PAID] * 2
        assert [r.batch.send.batch_nonce for r in results] == [0, 1]
        assert_exact(net, [(ledger, credited)])


def test_a_refused_batch_goes_back_to_pending_and_is_paid_after_funding(tmp_path: Path) -> None:
    with network(tmp_path, pool=0) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        (result,) = settle(net, ledger)
        assert result.outcome is SettlementOutcome.REVERTED
        assert "PoolExhausted" in result.reason
        assert ledger.pending() == credited
        assert_exact(net, [(ledger, credited)])
        krew, _, distributor = net.deployment.contracts(net.w3)
        admin = net.deployment.admin
        transact(net.w3, krew.functions.mint(admin, 100 * KREW), admin)
        transact(net.w3, krew.functions.approve(distributor.address, 100 * KREW), admin)
        transact(net.w3, distributor.functions.fund(100 * KREW), admin)
        (result,) = settle(net, ledger)
        assert result.outcome is SettlementOutcome.PAID
        assert_exact(net, [(ledger, credited)])


def test_chain_stopped_during_the_send_then_restarted(tmp_path: Path) -> None:
    with network(tmp_path, state=True) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")

        def stop_chain(stage: str, batch: Batch) -> None:
            if stage == "recorded":
                net.anvil.stop()  # anvil writes its state as it stops

        (result,) = settle(net, ledger, on_stage=stop_chain)
        assert result.outcome is SettlementOutcome.UNRESOLVED
        assert "unreachable" in result.reason
        assert ledger.open_batches()[0].send is not None
        net.anvil = Anvil.start(port=net.anvil.port, accounts=4, state=tmp_path / "chain.json")
        net.w3 = net.anvil.web3()
        (result,) = settle(net, ledger)
        assert result.outcome is SettlementOutcome.PAID
        assert_exact(net, [(ledger, credited)])


def test_a_receipt_that_never_comes_is_replaced_with_higher_fees_then_mined(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        net.rpc("evm_setAutomine", False)
        (result,) = settle(net, ledger, receipt_timeout_s=0.5, poll_s=0.05, max_replacements=1)
        assert result.outcome is SettlementOutcome.UNRESOLVED  # still in the mempool
        (batch,) = ledger.open_batches()
        assert batch.send is not None and len(batch.send.sends) == 2
        first, bumped = batch.send.sends
        assert bumped.max_fee_per_gas > first.max_fee_per_gas
        assert bumped.max_priority_fee_per_gas > first.max_priority_fee_per_gas
        net.rpc("evm_mine")
        (result,) = settle(net, ledger)
        assert result.outcome is SettlementOutcome.PAID
        assert_exact(net, [(ledger, credited)])


def test_a_transaction_dropped_from_the_mempool_is_sent_again(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        net.rpc("evm_setAutomine", False)
        dropped: list[str] = []

        def drop_then_mine(stage: str, batch: Batch) -> None:
            if stage == "sent" and batch.send is not None and not dropped:
                dropped.append(batch.send.sends[-1].tx_hash)
                assert net.rpc("anvil_dropTransaction", dropped[0]).get("error") is None
                net.rpc("evm_setAutomine", True)  # the next broadcast is mined at once

        (result,) = settle(net, ledger, on_stage=drop_then_mine, receipt_timeout_s=0.5, poll_s=0.05)
        assert result.outcome is SettlementOutcome.PAID
        assert dropped
        assert_exact(net, [(ledger, credited)])


KILLER = """
import asyncio, os, signal, sys
from krewe.devchain import dev_key
from krewe.keys import SigningKey
from krewe.orchestrator.chain import ChainClient
from krewe.orchestrator.ledger import RewardLedger, SQLiteLedgerStore
from krewe.orchestrator.settlement import Settler
from krewe.orchestrator.bookkeeper import LedgerService
url, distributor, db, stage = sys.argv[1:]

def kill(at, batch):
    if at == stage:
        os.kill(os.getpid(), signal.SIGKILL)

async def main():
    client = await ChainClient.connect(url, distributor, SigningKey.from_hex(dev_key(1)))
    ledger = LedgerService(RewardLedger(SQLiteLedgerStore(db)))
    await Settler(ledger, client, confirmations=0, on_stage=kill).settle_once()

asyncio.run(main())
"""


@pytest.mark.parametrize("stage", ["snapshot", "recorded", "sent", "mined"])
def test_settling_process_killed_then_restarted(tmp_path: Path, stage: str) -> None:
    with network(tmp_path) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        ledger.close()
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                KILLER,
                net.anvil.url,
                net.deployment.distributor,
                str(tmp_path / "ledger.db"),
                stage,
            ],
            check=False,
            timeout=120,
            capture_output=True,
            text=True,
        )
        assert done.returncode == -signal.SIGKILL, done.stderr
        reopened = net.ledger()
        (batch,) = reopened.open_batches()
        assert (batch.send is None) is (stage == "snapshot")
        results = settle(net, reopened)
        assert [r.outcome for r in results] == [SettlementOutcome.PAID]
        assert_exact(net, [(reopened, credited)])
        assert settle(net, reopened) == []


# Each racer signs its first batch, then waits (bounded) until the other has signed too, so both
# hold a transaction for the same batch nonce before either is broadcast.
RACER = """
import asyncio, pathlib, sys, time
from krewe.devchain import dev_key
from krewe.keys import SigningKey
from krewe.orchestrator.chain import ChainClient
from krewe.orchestrator.ledger import RewardLedger, SQLiteLedgerStore
from krewe.orchestrator.settlement import Settler
from krewe.orchestrator.bookkeeper import LedgerService
url, distributor, db, mine, theirs = sys.argv[1:]

def barrier(stage, batch):
    if stage == "recorded" and not pathlib.Path(mine).exists():
        pathlib.Path(mine).touch()
        deadline = time.monotonic() + 60
        while not pathlib.Path(theirs).exists():
            if time.monotonic() > deadline:
                sys.exit("the other racer never signed")
            time.sleep(0.01)

async def main():
    client = await ChainClient.connect(url, distributor, SigningKey.from_hex(dev_key(1)))
    ledger = RewardLedger(SQLiteLedgerStore(db))
    settler = Settler(
        LedgerService(ledger), client, receipt_timeout_s=2, poll_s=0.05, confirmations=0, on_stage=barrier
    )
    for window in range(10):
        results = await settler.settle_once()
        print(window, [(r.outcome.value, r.reason) for r in results], flush=True)
        totals = ledger.totals()
        if totals.pending == totals.in_flight == 0:
            return
    sys.exit("still unpaid after 10 windows")

asyncio.run(main())
"""


def test_two_settling_processes_race_for_the_same_batch_nonce(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        ledgers = [net.ledger("a.db"), net.ledger("b.db")]
        credited = [credit_all(ledgers[0], "job-a", KREW), credit_all(ledgers[1], "job-b", 2 * KREW)]
        for ledger in ledgers:
            ledger.close()
        racers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RACER,
                    net.anvil.url,
                    net.deployment.distributor,
                    str(tmp_path / name),
                    str(tmp_path / f"{name}.signed"),
                    str(tmp_path / f"{other}.signed"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, other in (("a.db", "b.db"), ("b.db", "a.db"))
        ]
        outputs = [racer.communicate(timeout=120) for racer in racers]
        assert [racer.returncode for racer in racers] == [0, 0], outputs
        windows = sorted(output.count("\n") for output, _ in outputs)
        assert windows == [1, 2], outputs  # one won nonce 0; the other learned it lost, then paid at 1
        assert "not paid" in "".join(output for output, _ in outputs)
        reopened = [net.ledger("a.db"), net.ledger("b.db")]
        assert all(ledger.totals().paid == ledger.totals().credited for ledger in reopened)
        assert_exact(net, list(zip(reopened, credited, strict=True)))
        _, _, distributor = net.deployment.contracts(net.w3)
        assert distributor.functions.batchNonce().call() == 2  # one batch each, never one twice


def test_a_batch_mined_between_two_reads_of_one_decision_is_paid_once(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        net.rpc("evm_setAutomine", False)
        (result,) = settle(net, ledger, receipt_timeout_s=0.3, poll_s=0.05, max_replacements=0)
        assert result.outcome is SettlementOutcome.UNRESOLVED  # in the mempool
        mined: list[int] = []

        class MinesAfterTheFirstRead(ChainClient):
            """Mines the waiting batch right after the settler's first read of batchNonce()."""

            async def batch_nonce(self, *block: Any) -> int:
                nonce = await super().batch_nonce(*block)
                if not mined:
                    mined.append(nonce)
                    net.rpc("evm_mine")
                    net.rpc("evm_setAutomine", True)
                return nonce

        results = settle(net, ledger, client_class=MinesAfterTheFirstRead)
        assert mined == [0]
        assert [r.outcome for r in results] == [SettlementOutcome.PAID]
        _, _, distributor = net.deployment.contracts(net.w3)
        assert distributor.functions.batchNonce().call() == 1  # one batch, never one twice
        assert_exact(net, [(ledger, credited)])


@contextmanager
def range_limited_rpc(upstream: str, max_range: int) -> Iterator[tuple[str, list[tuple[int, int]]]]:
    """A JSON-RPC proxy on 127.0.0.1 that refuses eth_getLogs over more than `max_range` blocks, as
    many providers do, and records the range of every eth_getLogs it is asked."""
    ranges: list[tuple[int, int]] = []

    def call(body: bytes) -> bytes:
        request = urllib.request.Request(upstream, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: bytes = response.read()
            return answer

    def block(tag: str) -> int:
        if tag.startswith("0x"):
            return int(tag, 16)
        latest = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber", "params": []})
        return int(json.loads(call(latest.encode()))["result"], 16)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = json.loads(body)
            answer = None
            if request["method"] == "eth_getLogs":
                query = request["params"][0]
                start, end = block(query.get("fromBlock", "latest")), block(query.get("toBlock", "latest"))
                ranges.append((start, end))
                if end - start + 1 > max_range:
                    error = {"code": -32005, "message": f"query exceeds max block range {max_range}"}
                    answer = json.dumps({"jsonrpc": "2.0", "id": request["id"], "error": error}).encode()
            answer = answer or call(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", ranges
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_event_searches_stay_in_bounded_ranges_and_find_a_batch_mined_long_after_signing(
    tmp_path: Path,
) -> None:
    with network(tmp_path) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        net.rpc("evm_setAutomine", False)
        (result,) = settle(net, ledger, receipt_timeout_s=0.3, poll_s=0.05, max_replacements=0)
        assert result.outcome is SettlementOutcome.UNRESOLVED
        (batch,) = ledger.open_batches()
        assert batch.send is not None
        signed_block = batch.send.signed_block
        assert signed_block == net.w3.eth.block_number
        assert net.rpc("anvil_dropTransaction", batch.send.sends[0].tx_hash).get("error") is None
        net.rpc("anvil_mine", hex(23))  # the chain moves on without it
        net.rpc("evm_setAutomine", True)  # the next broadcast lands 24 blocks after the signing
        with range_limited_rpc(net.anvil.url, max_range=5) as (url, ranges):
            (result,) = settle(net, ledger, url=url, client_options={"log_range": 5})
        assert result.outcome is SettlementOutcome.PAID
        assert ranges and all(end - start + 1 <= 5 for start, end in ranges), ranges
        assert ranges[0][0] == signed_block  # searched from the signing block, not from block 0
        assert len(ranges) == 5  # blocks signed_block .. signed_block + 24, five at a time
        assert_exact(net, [(ledger, credited)])


class FailsOneRecordSend(SQLiteLedgerStore):
    """A ledger store whose first record_send fails, as a full disk would make it."""

    failed = False

    def record_send(self, batch_id: int, record: SendRecord) -> None:
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        super().record_send(batch_id, record)


def test_a_failed_record_send_leaves_no_gap_in_the_account_nonces(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        ledger = RewardLedger(FailsOneRecordSend(tmp_path / "ledger.db"))
        credited = credit_all(ledger, "job-1")

        async def two_windows() -> list[Any]:
            client = await ChainClient.connect(net.anvil.url, net.deployment.distributor, net.key)
            settler = Settler(
                LedgerService(ledger), client, confirmations=0, receipt_timeout_s=1, max_replacements=0
            )
            try:
                with pytest.raises(sqlite3.OperationalError, match="disk is full"):
                    await settler.settle_once()  # signed, never recorded, never sent
                return await settler.settle_once()
            finally:
                await client.close()

        (result,) = asyncio.run(two_windows())
        assert result.outcome is SettlementOutcome.PAID, result.reason
        assert result.batch.send.account_nonce == 0  # the orchestrator's first transaction
        assert_exact(net, [(ledger, credited)])


def test_a_max_batch_above_the_distributors_is_refused_at_start(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        _, _, distributor = net.deployment.contracts(net.w3)
        on_chain = distributor.functions.maxBatch().call()

        async def connect(max_batch: int) -> None:
            client = await ChainClient.connect(
                net.anvil.url, net.deployment.distributor, net.key, max_batch=max_batch
            )
            await client.close()

        asyncio.run(connect(on_chain))
        expected = f"max_batch: {on_chain + 1} is above the distributor's maxBatch ({on_chain})"
        with pytest.raises(SettingsError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            asyncio.run(connect(on_chain + 1))


def test_fee_bumps_stop_at_max_fee_gwei_and_the_transaction_waits(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        net.rpc("evm_setAutomine", False)
        (result,) = settle(net, ledger, receipt_timeout_s=0.2, poll_s=0.05, max_replacements=0)
        (batch,) = ledger.open_batches()
        assert batch.send is not None
        cap_gwei = batch.send.sends[0].max_fee_per_gas // 10**9 + 1
        bumping = {"receipt_timeout_s": 0.2, "poll_s": 0.05, "max_replacements": 20}
        capped = {"max_fee_gwei": cap_gwei}
        (result,) = settle(net, ledger, client_options=capped, **bumping)
        assert result.outcome is SettlementOutcome.UNRESOLVED
        assert "max_fee_gwei" in result.reason
        (batch,) = ledger.open_batches()
        assert batch.send is not None
        fees = [send.max_fee_per_gas for send in batch.send.sends]
        assert 2 < len(fees) < 21 and fees == sorted(fees), fees  # bumped a few times, then stopped
        assert fees[-1] == cap_gwei * 10**9
        assert all(send.max_priority_fee_per_gas <= send.max_fee_per_gas for send in batch.send.sends)
        (result,) = settle(net, ledger, client_options=capped, **bumping)
        assert "max_fee_gwei" in result.reason
        assert ledger.open_batches()[0].send == batch.send  # waits: no further bump
        net.rpc("evm_mine")
        (result,) = settle(net, ledger, client_options=capped)
        assert result.outcome is SettlementOutcome.PAID
        assert_exact(net, [(ledger, credited)])


def test_a_batch_is_committed_only_once_its_event_is_confirmations_deep(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        ledger = net.ledger()
        credited = credit_all(ledger, "job-1")
        for depth in (0, 1):
            (result,) = settle(net, ledger, confirmations=2)
            assert result.outcome is SettlementOutcome.UNRESOLVED, depth
            assert "2 blocks deep" in result.reason
            # on chain, and still in flight in the ledger until it is deep enough
            assert [net.on_chain(w) for w in WORKERS] == [credited[w] for w in WORKERS]
            assert ledger.totals().in_flight == sum(credited.values())
            net.rpc("evm_mine")
        (result,) = settle(net, ledger, confirmations=2)
        assert result.outcome is SettlementOutcome.PAID
        assert ledger.totals().paid == sum(credited.values())
        _, _, distributor = net.deployment.contracts(net.w3)
        assert distributor.functions.batchNonce().call() == 1  # the waits never sent it again
        assert_exact(net, [(ledger, credited)])


def test_the_key_never_shows(tmp_path: Path) -> None:
    secret = dev_key(ORCHESTRATOR)
    key = SigningKey.from_hex(secret)
    for text in (repr(key), str(key), f"{key!r} {key}"):
        assert secret.removeprefix("0x") not in text.lower()
    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(secret, "pw", kdf="pbkdf2", iterations=2)))
    assert SigningKey.from_keystore(keystore, "pw").address == key.address
    with pytest.raises(KeyLoadError) as wrong:
        SigningKey.from_keystore(keystore, "wrong")
    assert "wrong password" in str(wrong.value) and secret.removeprefix("0x") not in str(wrong.value).lower()
    with pytest.raises(KeyLoadError, match="not a valid"):
        SigningKey.from_hex("0x1234")
    os.environ["KREWE_TEST_PASSWORD"] = "pw"
    try:
        loaded = SigningKey.from_settings(role="test", keystore=keystore, password_env="KREWE_TEST_PASSWORD")
        assert loaded.address == key.address
    finally:
        del os.environ["KREWE_TEST_PASSWORD"]
    with pytest.raises(KeyLoadError, match="needs a password"):
        SigningKey.from_settings(role="test", keystore=keystore, password_env="KREWE_TEST_PASSWORD")


def test_a_client_with_the_wrong_key_is_refused(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        other = SigningKey.from_hex(dev_key(2))
        with pytest.raises(ChainError, match="not this key's"):
            asyncio.run(ChainClient.connect(net.anvil.url, net.deployment.distributor, other))


def test_chain_reads_do_not_wait_on_web3s_process_wide_session_lock(tmp_path: Path) -> None:
    """web3's HTTP provider takes one lock for the whole process on every request, and a request
    cancelled at the wrong moment leaves it held for good; the chain client's requests never take it."""
    with network(tmp_path) as net:

        async def reads_while_the_lock_is_held() -> int:
            client = await ChainClient.connect(net.anvil.url, net.deployment.distributor, net.key)
            try:
                with HTTPSessionManager._lock:  # as a cancelled request of another provider leaves it
                    return await asyncio.wait_for(client.block_number(), timeout=5)
            finally:
                await client.close()

        assert asyncio.run(reads_while_the_lock_is_held()) >= 1
