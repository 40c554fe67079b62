"""Several instances on one Redis (docs/operations.md, "Cross-instance routing"): presence,
supersede and the relay, first between two `SessionNetwork`s with stand-in sockets and routers,
then between two whole orchestrators with scripted miners."""

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import redis
import redis.asyncio

from krewe.orchestrator.network import SessionNetwork
from krewe.orchestrator.pool import Session, SessionPool
from krewe.protocol.messages import Cancel, CloseCode, Job, ModelOffer, Reject, Result, encode
from krewe.settings import SettingsError
from tests.service.conftest import Harness, until
from tests.service.test_jobs import CHAT, post

OFFERS = (ModelOffer(id="test-model", tasks=["chat", "embedding"], engine="scripted/1"),)
MINER = "0x00000000000000000000000000000000000000aa"


class FakeSocket:
    """A local session's channel that keeps what it was sent."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str, str] | None = None

    def send(self, frame: str) -> bool:
        if self.closed is not None:
            return False
        self.frames.append(msgspec.json.decode(frame))
        return True

    async def close(self, close_code: int, code: str, message: str) -> None:
        self.closed = (close_code, code, message)


@dataclass
class FakeRouter:
    """What the router would hear, as (event, session, detail)."""

    heard: list[tuple[str, Session, Any]] = field(default_factory=list)

    def on_result(self, session: Session, message: Result) -> str | None:
        again = any(detail[0] == message.job_id for _, detail in self.events("result"))
        self.heard.append(("result", session, (message.job_id, bytes(message.output))))
        return f"a second result for job {message.job_id}" if again else None

    def on_invalid(self, session: Session, job_id: str) -> str | None:
        self.heard.append(("invalid", session, job_id))
        return None

    def on_reject(self, session: Session, message: Reject) -> str | None:
        self.heard.append(("reject", session, (message.job_id, message.reason)))
        return None

    def on_session_closed(self, session: Session) -> None:
        self.heard.append(("closed", session, None))

    def on_deregistered(self, worker: str) -> None:
        self.heard.append(("deregistered", Session("", worker, FakeSocket(), (), 1, "", 0, 0), None))

    def events(self, kind: str) -> list[tuple[Session, Any]]:
        return [(session, detail) for event, session, detail in self.heard if event == kind]


@dataclass
class Instance:
    network: SessionNetwork
    client: redis.asyncio.Redis
    pool: SessionPool
    router: FakeRouter
    violations: list[tuple[Session, str]]  # what the endpoint was told to hold against a miner
    ids: "itertools.count[int]" = field(default_factory=itertools.count)

    async def login(self, address: str = MINER, max_concurrency: int = 4) -> Session:
        """What the endpoint does for a login: add the session, then tell the network."""
        session = Session(
            f"{self.network.instance}-{next(self.ids)}",
            address,
            FakeSocket(),
            OFFERS,
            max_concurrency,
            "scripted/1",
            0.0,
            0.0,
        )
        self.pool.add(session)
        await self.network.logged_in(session)
        return session

    def close(self, session: Session) -> None:
        """What the endpoint does when a session ends."""
        self.pool.remove(session)
        self.network.on_session_closed(session)

    def remote(self, address: str = MINER) -> Session | None:
        session = self.pool.sessions.get(address)
        return session if session is not None and session.remote else None


@pytest.fixture
async def instances(redis_url: str) -> AsyncIterator[Callable[..., Any]]:
    started: list[Instance] = []

    async def start(name: str, *, ttl_s: float = 30.0, refresh_s: float = 10.0) -> Instance:
        pool, router = SessionPool(), FakeRouter()
        client = redis.asyncio.Redis.from_url(redis_url)
        network = SessionNetwork(client, name, pool, router, ttl_s=ttl_s, refresh_s=refresh_s)
        violations: list[tuple[Session, str]] = []

        async def violation(session: Session, reason: str) -> None:
            violations.append((session, reason))

        await network.start(violation)
        instance = Instance(network, client, pool, router, violations)
        started.append(instance)
        return instance

    yield start
    for instance in started:
        await instance.network.stop()
        await instance.client.aclose()


def socket_of(session: Session) -> FakeSocket:
    assert isinstance(session.channel, FakeSocket)
    return session.channel


def job_frame(job_id: str, deadline_ms: int = 5000) -> str:
    return encode(Job(job_id, "test-model", "chat", {"messages": []}, deadline_ms))


# Presence.


async def test_a_login_appears_on_the_other_instance_and_a_close_takes_it_away(instances: Any) -> None:
    a, b = await instances("a"), await instances("b")
    session = await a.login(max_concurrency=3)
    await until(lambda: b.remote() is not None, what="the miner on b")
    remote = b.remote()
    assert remote is not None
    assert (remote.remote, remote.id, remote.offers, remote.max_concurrency, remote.agent) == (
        "a",
        session.id,
        OFFERS,
        3,
        "scripted/1",
    )
    assert b.pool.ranking.available("test-model", "chat") == 1
    assert b.pool.models() == {"test-model": ["chat", "embedding"]}
    assert (a.pool.connected_here, b.pool.connected_here) == (1, 0)  # each counts its own

    a.close(session)
    await until(lambda: b.remote() is None, what="the miner gone from b")
    assert b.router.events("closed") == [(remote, None)]  # its jobs at b count as no-response
    assert b.pool.ranking.available("test-model", "chat") == 0


async def test_an_instance_started_later_reads_the_miners_already_there(
    instances: Any, redis_url: str
) -> None:
    a = await instances("a")
    session = await a.login()
    b = await instances("b")
    remote = b.remote()  # read once at start, no notice needed
    assert remote is not None and remote.id == session.id


async def test_the_load_of_a_remote_miner_is_its_holders_last_report(instances: Any) -> None:
    a, b = await instances("a"), await instances("b")
    session = await a.login(max_concurrency=2)
    await until(lambda: b.remote() is not None, what="the miner on b")
    a.pool.assign(session, "job-at-a")
    a.pool.assign(session, "another-job-at-a")
    await a.network.refresh()
    await b.network.refresh()
    remote = b.remote()
    assert remote is not None and remote.in_flight == 2
    assert b.pool.ranking.available("test-model", "chat") == 0  # full: b selects it no more


async def test_new_offers_of_a_remote_miner_reach_the_other_instance_with_its_next_refresh(
    instances: Any,
) -> None:
    a, b = await instances("a"), await instances("b")
    session = await a.login()
    await until(lambda: b.remote() is not None, what="the miner on b")
    offers = (ModelOffer(id="other-model", tasks=["completion"], engine="scripted/2"),)
    a.pool.update_offers(session, offers, 6)  # a status frame
    await a.network.refresh()
    await b.network.refresh()
    remote = b.remote()
    assert remote is not None and (remote.offers, remote.max_concurrency) == (offers, 6)
    assert b.pool.models() == {"other-model": ["completion"]}
    assert b.router.events("closed") == []  # the same session, updated in place


async def test_presence_expires_when_its_instance_stops_refreshing(instances: Any, redis_url: str) -> None:
    a, b = await instances("a", ttl_s=0.5, refresh_s=0.25), await instances("b")
    await a.login()
    await until(lambda: b.remote() is not None, what="the miner on b")
    # a stops refreshing (its `run` never started): the miner outlives it by ttl_s at most
    check = redis.Redis.from_url(redis_url)
    try:
        await until(lambda: not check.exists("krewe:presence:a"), timeout_s=5, what="the hash to expire")
    finally:
        check.close()
    await b.network.refresh()
    assert b.remote() is None
    assert [session.remote for session, _ in b.router.events("closed")] == ["a"]


async def test_a_second_instance_of_the_same_name_is_refused_until_the_first_stops(
    instances: Any, redis_url: str
) -> None:
    first = await instances("a")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        twin = SessionNetwork(client, "a", SessionPool(), FakeRouter(), ttl_s=30, refresh_s=10)
        with pytest.raises(SettingsError, match="another instance sharing the store is named 'a'"):
            await twin.start()
        await first.network.stop()
        await twin.start()
        await twin.stop()
    finally:
        await client.aclose()


# Supersede.


async def test_a_second_login_on_another_instance_closes_the_first_with_4409(instances: Any) -> None:
    a, b = await instances("a"), await instances("b")
    first = await a.login()
    await until(lambda: b.remote() is not None, what="the miner on b")
    second = await b.login()
    await until(lambda: socket_of(first).closed is not None, what="the first session closed")
    assert socket_of(first).closed == (CloseCode.SUPERSEDED, "superseded", "logged in again elsewhere")
    assert socket_of(second).closed is None
    a.close(first)  # the socket closes, and the endpoint says so
    await until(lambda: a.remote() is not None, what="a to see the miner on b")
    remote = a.remote()
    assert remote is not None and (remote.remote, remote.id) == ("b", second.id)
    local = b.pool.sessions[MINER]
    assert local is second and not local.remote  # b never took the old session for current


# Relay.


async def test_a_job_sent_to_a_remote_miner_is_relayed_and_its_answer_comes_back(instances: Any) -> None:
    a, b = await instances("a"), await instances("b")
    held = await b.login(max_concurrency=1)
    await until(lambda: a.remote() is not None, what="the miner on a")
    remote = a.remote()
    assert remote is not None

    assert remote.channel.send(job_frame("job-1"))
    await until(lambda: len(socket_of(held).frames) == 1, what="the job at the miner")
    assert socket_of(held).frames[0]["job_id"] == "job-1"
    assert held.in_flight == 1  # counted against its capacity at b

    output = b'{"choices": [{"index": 0, "text": "kept byte for byte"}]}'
    assert b.network.on_result(held, Result("job-1", msgspec.Raw(output))) is None
    await until(lambda: bool(a.router.events("result")), what="the result at a")
    assert a.router.events("result") == [(remote, ("job-1", output))]
    assert held.in_flight == 0 and b.router.heard == []  # b's own router never saw it


async def test_a_violation_found_by_the_jobs_instance_is_held_against_the_miner_at_its_holder(
    instances: Any,
) -> None:
    a, b = await instances("a"), await instances("b")
    held = await b.login()
    await until(lambda: a.remote() is not None, what="the miner on a")
    remote = a.remote()
    assert remote is not None
    assert remote.channel.send(job_frame("job-1"))
    await until(lambda: len(socket_of(held).frames) == 1, what="the job at the miner")
    b.network.on_result(held, Result("job-1", msgspec.Raw(b"{}")))
    b.network.on_result(held, Result("job-1", msgspec.Raw(b"[]")))
    await until(lambda: len(b.violations) == 1, what="the violation at b")
    assert b.violations == [(held, "a second result for job job-1")]
    assert [detail for _, detail in a.router.events("result")] == [("job-1", b"{}"), ("job-1", b"[]")]


async def test_a_relayed_job_beyond_the_miners_capacity_is_rejected_as_busy(instances: Any) -> None:
    a, b = await instances("a"), await instances("b")
    held = await b.login(max_concurrency=1)
    await until(lambda: a.remote() is not None, what="the miner on a")
    remote = a.remote()
    assert remote is not None
    b.pool.assign(held, "a-job-of-b")
    assert remote.channel.send(job_frame("job-1"))
    await until(lambda: bool(a.router.events("reject")), what="the reject at a")
    assert a.router.events("reject") == [(remote, ("job-1", "busy"))]
    assert socket_of(held).frames == []


async def test_a_miners_reject_and_a_cancel_are_relayed(instances: Any) -> None:
    a, b = await instances("a"), await instances("b")
    held = await b.login(max_concurrency=2)
    await until(lambda: a.remote() is not None, what="the miner on a")
    remote = a.remote()
    assert remote is not None
    assert remote.channel.send(job_frame("job-1"))
    assert remote.channel.send(job_frame("job-2"))
    await until(lambda: len(socket_of(held).frames) == 2, what="both jobs at the miner")
    b.network.on_reject(held, Reject("job-1", "bad_input"))
    await until(lambda: bool(a.router.events("reject")), what="the reject at a")
    assert a.router.events("reject") == [(remote, ("job-1", "bad_input"))]
    assert remote.channel.send(encode(Cancel("job-2")))
    await until(lambda: len(socket_of(held).frames) == 3, what="the cancel at the miner")
    assert socket_of(held).frames[2] == {"type": "cancel", "job_id": "job-2"}
    assert held.in_flight == 0


async def test_when_the_holder_loses_the_miner_the_job_instance_hears_it_is_gone(instances: Any) -> None:
    a, b = await instances("a"), await instances("b")
    held = await b.login()
    await until(lambda: a.remote() is not None, what="the miner on a")
    remote = a.remote()
    assert remote is not None
    a.pool.assign(remote, "job-1")
    assert remote.channel.send(job_frame("job-1"))
    await until(lambda: len(socket_of(held).frames) == 1, what="the job at the miner")
    b.close(held)
    await until(lambda: bool(a.router.events("closed")), what="a to hear the session closed")
    assert a.router.events("closed") == [(remote, None)]  # once, though told twice (gone, down)
    assert a.remote() is None


async def test_a_frame_for_a_session_the_holder_no_longer_has_comes_back_gone(instances: Any) -> None:
    a, b = await instances("a"), await instances("b")
    held = await b.login()
    await until(lambda: a.remote() is not None, what="the miner on a")
    remote = a.remote()
    assert remote is not None
    b.pool.remove(held)  # gone at b before its close is announced
    assert remote.channel.send(job_frame("job-1"))
    await until(lambda: bool(a.router.events("closed")), what="a to hear the session is gone")
    assert a.remote() is None


async def test_a_frame_for_an_instance_that_is_not_listening_drops_the_remote_session(instances: Any) -> None:
    a, b = await instances("a"), await instances("b")
    await b.login()
    await until(lambda: a.remote() is not None, what="the miner on a")
    remote = a.remote()
    assert remote is not None
    # b stops hearing relays without withdrawing its miners, as an instance that hangs would
    listener, pubsub = b.network._listener, b.network._pubsub
    assert listener is not None and pubsub is not None
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await pubsub.unsubscribe()
    assert remote.channel.send(job_frame("job-1"))  # queued: the relay learns it was heard by nobody
    await until(lambda: bool(a.router.events("closed")), what="a to hear the session is gone")
    assert a.router.events("closed") == [(remote, None)]  # so the router redispatches its jobs
    assert a.remote() is None


# Two whole orchestrators.


async def test_a_job_at_one_orchestrator_runs_on_miners_connected_to_another(
    make_harness: Any, redis_url: str
) -> None:
    a: Harness = await make_harness(store=redis_url, instance_id="a", replicas=3, threshold=2)
    b: Harness = await make_harness(store=redis_url, instance_id="b", replicas=3, threshold=2)
    miners = [await b.miner(index).__aenter__() for index in range(3)]
    for miner in miners:
        assert (await miner.connect())["type"] == "welcome"
    await until(lambda: len(a.orchestrator.pool.sessions) == 3, what="a to see b's miners")

    status, body = await post(a, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT})
    assert status == 200, body
    assert body["verdict"] == "agreed", repr(body)
    for miner in miners:
        assert miner.jobs == [body["job_id"]]
    await until(lambda: all(miner.messages("verdict") for miner in miners), what="every verdict relayed")
    assert {miner.messages("verdict")[0]["agreed"] for miner in miners} == {True}
    await until(lambda: all(session.in_flight == 0 for session in b.orchestrator.pool.sessions.values()))

    await b.orchestrator.stop()  # its miners are closed, and leave a's pool with it
    await until(lambda: not a.orchestrator.pool.sessions, what="b's miners gone from a")
    status, body = await post(a, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT})
    assert (status, body["error"]["code"]) == (404, "model_not_found")


async def test_a_remote_miners_reject_redispatches_the_job_to_a_miner_of_either_instance(
    make_harness: Any, redis_url: str
) -> None:
    a: Harness = await make_harness(store=redis_url, instance_id="a", replicas=2, threshold=2, seed=1)
    b: Harness = await make_harness(store=redis_url, instance_id="b", replicas=2, threshold=2)
    local = await a.miner(0).__aenter__()
    rejecting, honest = await b.miner(1, "reject").__aenter__(), await b.miner(2).__aenter__()
    for miner in (local, rejecting, honest):
        assert (await miner.connect())["type"] == "welcome"
    await until(lambda: len(a.orchestrator.pool.sessions) == 3, what="a to see b's miners")

    status, body = await post(a, "/v1/jobs", {"model": "test-model", "task": "chat", "input": CHAT})
    assert status == 200 and body["verdict"] == "agreed", repr(body)
    assert sorted(body["agreeing"]) == sorted([local.address, honest.address])
    answers = {worker["worker"]: worker["answer"] for worker in body["workers"]}
    assert answers[rejecting.address] == "rejected"  # seed 1 draws it, and another replaces it
    assert rejecting.jobs == [body["job_id"]]


async def test_a_miner_logging_in_at_another_orchestrator_closes_its_first_session_with_4409(
    make_harness: Any, redis_url: str
) -> None:
    a: Harness = await make_harness(store=redis_url, instance_id="a")
    b: Harness = await make_harness(store=redis_url, instance_id="b")
    first = await a.miner(0).__aenter__()
    assert (await first.connect())["type"] == "welcome"
    second = await b.miner(0).__aenter__()
    assert (await second.connect())["type"] == "welcome"
    await asyncio.wait_for(first._task, timeout=10)
    assert first.close_code == CloseCode.SUPERSEDED
    assert first.messages("error")[-1]["code"] == "superseded"
    await until(
        lambda: getattr(a.orchestrator.pool.sessions.get(first.address), "remote", "") == "b",
        what="a to see the miner at b",
    )


async def test_a_job_sent_while_a_login_is_announced_reaches_the_miner_after_its_welcome(
    make_harness: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    a: Harness = await make_harness(store=redis_url, instance_id="a", replicas=1, threshold=1)
    network = a.orchestrator.network
    assert network is not None
    announce = network.logged_in
    jobs: list[asyncio.Future[tuple[int, dict[str, Any]]]] = []

    async def a_job_during_the_announcement(session: Session) -> None:
        """The Redis round trip of a login, with a client's job dispatched to the new session in it."""
        body = {"model": "test-model", "task": "chat", "input": CHAT}
        jobs.append(asyncio.ensure_future(post(a, "/v1/jobs", body)))
        await until(lambda: session.in_flight == 1, what="the job sent to the new session")
        await announce(session)

    monkeypatch.setattr(network, "logged_in", a_job_during_the_announcement)
    miner = await a.miner(0).__aenter__()
    assert (await miner.connect())["type"] == "welcome"  # the miner takes no job before it
    status, body = await asyncio.wait_for(jobs[0], timeout=10)
    assert status == 200 and body["verdict"] == "agreed", repr(body)
    assert miner.jobs == [body["job_id"]]
