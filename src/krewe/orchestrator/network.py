"""The miners of every instance sharing one Redis, as one network (docs/operations.md,
"Cross-instance routing").

Names: an instance holds its name (`krewe:instance:<instance>`, a random token with the presence
TTL) while it runs, so that a second instance of the same name, whose writes would undo the first
one's, is refused at start.

Presence: each instance keeps, in the hash `krewe:presence:<instance>`, one `MinerPresence` per
miner connected to it, rewritten whole every `refresh_s` (with the load of each miner) and expiring
`ttl_s` after the last rewrite, so the miners of an instance that died vanish with it. A login and
a close also change the hash at once and are broadcast on `krewe:presence`; every instance applies
those notices as they come and re-reads all the hashes every `refresh_s`, which repairs a notice it
missed and forgets an instance that died. The miners the others hold enter this instance's
`SessionPool` as remote sessions, so its selection ranks the whole network.

Supersede: `krewe:holder:<address>` names the session holding each address. A login swaps itself
in (SET ... GET, atomic), and if the session it replaced is on another instance, tells that one to
close it with 4409.

Relay: each instance subscribes to `krewe:relay:<instance>`. A remote session's channel publishes
the router's frames (job, cancel, verdict) there, addressed to the session; the holder forwards
them to the miner's socket and sends the miner's result, invalid answer or reject for such a job
back to the job's instance, whose router takes it as from a local session. The holder counts a
relayed job against the miner's `max_concurrency` as its own, and rejects one beyond it as `busy`
(the job's life cycle redispatches it): each instance sees the others' load only as of their last
report, so two may both send the miner a job into the same free slot, and the holder settles it.
Pub/sub loses a message sent while a subscriber is away; the job's deadline covers that.

This object also stands between the endpoint and the router (`JobEvents`): what a local miner says
about a job another instance sent goes back there; everything else goes to the router.
"""

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import msgspec
import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.endpoint import JobEvents
from krewe.orchestrator.pool import Session, SessionPool
from krewe.orchestrator.presence import (
    Envelope,
    EnvelopeKind,
    MinerPresence,
    Notice,
    PresenceError,
    decode_notice,
    decode_presence,
    encode,
    holder,
    pack,
    unpack,
)
from krewe.protocol.messages import (
    Cancel,
    CloseCode,
    ErrorCode,
    Job,
    MessageError,
    Reject,
    RejectReason,
    Result,
    Verdict,
    decode_orchestrator_message,
)
from krewe.settings import SettingsError
from krewe.untrusted import untrusted

__all__ = ["PRESENCE_CHANNEL", "SessionNetwork"]

log = logging.getLogger(__name__)

PRESENCE_CHANNEL = "krewe:presence"
INSTANCES_KEY = "krewe:instances"
RELAY_GRACE_S = 5.0  # a relayed job's slot is kept this long past the miner's deadline at most
SUBSCRIBE_TIMEOUT_S = 10.0
RESUBSCRIBE_PAUSE_S = 1.0  # between two tries to subscribe again after Redis went away

# Rewrite this instance's presence hash whole, and keep alive the holder keys that still name its
# sessions. KEYS: the hash, the set of instances, then each miner's holder key. ARGV: the TTL in
# ms, this instance, then for each miner its address, record and holder value.
_REFRESH = """
redis.call('DEL', KEYS[1])
for i = 3, #KEYS do
  local at = 3 + (i - 3) * 3
  redis.call('HSET', KEYS[1], ARGV[at], ARGV[at + 1])
  if redis.call('GET', KEYS[i]) == ARGV[at + 2] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
if #KEYS > 2 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
redis.call('SADD', KEYS[2], ARGV[2])
return #KEYS - 2
"""

# Take or keep this instance's name: set it to our token for the TTL unless another token holds it.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Delete a key only if it still holds the given value (a holder key a newer login has not taken).
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _presence_key(instance: str) -> str:
    return f"krewe:presence:{instance}"


def _name_key(instance: str) -> str:
    return f"krewe:instance:{instance}"


def _holder_key(address: str) -> str:
    return f"krewe:holder:{address}"


def _relay_channel(instance: str) -> str:
    return f"krewe:relay:{instance}"


def _text(raw: bytes | str) -> str:
    return raw if isinstance(raw, str) else raw.decode()


def _holder_value(instance: str, session_id: str) -> bytes:
    return msgspec.json.encode([instance, session_id])


@dataclass(eq=False, slots=True)
class _Relayed:
    """A job another instance sent to a miner held here."""

    origin: str
    session: Session
    expiry: asyncio.TimerHandle
    holding_slot: bool = True


class _RelayChannel:
    """A remote session's channel: frames go to the instance holding the miner's connection."""

    def __init__(self, network: "SessionNetwork", instance: str, address: str, session_id: str) -> None:
        self._network = network
        self._instance = instance
        self._address = address
        self._session_id = session_id

    def _envelope(self, kind: EnvelopeKind, **fields: Any) -> Envelope:
        return Envelope(kind, self._network.instance, self._address, self._session_id, **fields)

    def send(self, frame: str) -> bool:
        self._network.relay_in_order(self._instance, self._envelope("frame"), frame.encode())
        return True

    async def close(self, close_code: int, code: str, message: str) -> None:
        envelope = self._envelope("close", close_code=close_code, code=code, reason=message)
        self._network.relay_in_order(self._instance, envelope)


class SessionNetwork:
    """This instance's part in the network of instances sharing one Redis (see the module's text)."""

    def __init__(
        self,
        client: "redis.Redis",
        instance: str,
        pool: SessionPool,
        events: JobEvents,
        *,
        ttl_s: float,
        refresh_s: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < refresh_s < ttl_s:
            raise ValueError(f"refresh_s ({refresh_s}) must be positive and below ttl_s ({ttl_s})")
        self.instance = instance
        self._client = client
        self._pool = pool
        self._events = events
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._refresh_s = refresh_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._refresh_script = client.register_script(_REFRESH)
        self._delete_if = client.register_script(_DELETE_IF)
        self._claim = client.register_script(_CLAIM)
        self._token = secrets.token_hex(16)  # tells this instance from another of the same name
        self._view: dict[str, dict[str, MinerPresence]] = {}  # other instance -> address -> record
        self._heard_while_reading: list[Notice] | None = None  # applied again to what was read
        self._remote: dict[str, Session] = {}  # address -> the remote session made for it
        self._since_ms: dict[str, int] = {}  # local session id -> its login time
        # (job id, address) -> a job another instance sent a miner held here (a job goes to several)
        self._relayed: dict[tuple[str, str], _Relayed] = {}
        self._closing: set[str] = set()  # local session ids asked to close
        self._writes = asyncio.Lock()  # one write of this instance's presence at a time
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # relays and closes under way
        self._outbox: collections.deque[tuple[str, Envelope, bytes]] = collections.deque()  # in order
        self._sending = False  # a task is publishing the outbox
        self._violation: Callable[[Session, str], Awaitable[None]] | None = None

    @property
    def relayed_jobs(self) -> int:
        """Jobs of other instances on miners held here, not yet answered."""
        return len(self._relayed)

    @classmethod
    def of(
        cls, client: "redis.Redis", settings: OrchestratorSettings, pool: SessionPool, events: JobEvents
    ) -> "SessionNetwork":
        """This instance's part, through `client` (the instance's, to the Redis of `settings.store`).
        A miner's presence outlives one missed refresh, and expires a heartbeat after the endpoint
        would have closed it unheard."""
        return cls(
            client,
            settings.instance,
            pool,
            events,
            ttl_s=settings.heartbeat_s * (settings.heartbeat_misses + 1),
            refresh_s=settings.heartbeat_s,
        )

    # Life cycle.

    async def start(self, violation: Callable[[Session, str], Awaitable[None]] | None = None) -> None:
        """Subscribe (confirmed before return, so nothing addressed here is missed after), then
        publish and read presence once. `violation` holds a relayed job's violation against a
        local miner (the endpoint's)."""
        self._violation = violation
        if not await self._claim_name():
            raise SettingsError(
                f"instance_id: another instance sharing the store is named {self.instance!r}; give "
                "each its own name (a crashed one's name is free again within "
                f"{self._ttl_ms / 1000:g} s)"
            )
        self._pubsub = pubsub = self._client.pubsub()
        channels = (_relay_channel(self.instance), PRESENCE_CHANNEL)
        await pubsub.subscribe(*channels)
        confirmed = 0
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
            while confirmed < len(channels):
                message = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                if message is not None and message["type"] == "subscribe":
                    confirmed += 1
        self._listener = asyncio.get_running_loop().create_task(self._listen(pubsub))
        await self.refresh()

    async def run(self) -> None:
        """Every refresh_s: publish this instance's miners and read the others'."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except RedisError as error:
                log.warning("presence refresh failed: %s", error)

    async def stop(self) -> None:
        """Withdraw this instance's miners and stop listening (the client stays open)."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for relayed in self._relayed.values():
            relayed.expiry.cancel()
        self._relayed.clear()
        local = self._local_sessions()
        with contextlib.suppress(RedisError):
            async with self._writes:
                await self._delete_if(keys=[_name_key(self.instance)], args=[self._token])
                await self._client.delete(_presence_key(self.instance))
                await self._client.srem(INSTANCES_KEY, self.instance)
                for session in local:
                    await self._delete_if(
                        keys=[_holder_key(session.address)], args=[_holder_value(self.instance, session.id)]
                    )
                    await self._notify("down", session)
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    # Presence.

    def _local_sessions(self) -> list[Session]:
        return [session for session in self._pool.sessions.values() if not session.remote]

    def _record(self, session: Session) -> MinerPresence:
        return MinerPresence(
            session.id,
            session.address,
            session.offers,
            session.max_concurrency,
            session.in_flight,
            session.agent,
            self._since_ms.get(session.id, 0),
        )

    async def _notify(self, kind: Literal["up", "down"], session: Session) -> None:
        notice = Notice(kind, self.instance, self._record(session))
        await self._client.publish(PRESENCE_CHANNEL, encode(notice))

    async def logged_in(self, session: Session) -> None:
        """A miner logged in here: publish it, and close any session of its address elsewhere."""
        self._since_ms[session.id] = round(self._wall_clock() * 1000)
        self._settle(session.address)  # a remote session of the address it displaced is gone
        try:
            async with self._writes, self._client.pipeline(transaction=True) as pipe:
                pipe.set(
                    _holder_key(session.address),
                    _holder_value(self.instance, session.id),
                    px=self._ttl_ms,
                    get=True,
                )
                pipe.hset(_presence_key(self.instance), session.address, encode(self._record(session)))
                pipe.pexpire(_presence_key(self.instance), self._ttl_ms)
                pipe.sadd(INSTANCES_KEY, self.instance)
                previous, *_ = await pipe.execute()
            await self._notify("up", session)
        except RedisError as error:  # the next refresh publishes it
            log.warning("publishing the login of %s failed: %s", session.address, error)
            return
        if previous is None:
            return
        instance, session_id = msgspec.json.decode(previous, type=tuple[str, str])
        if instance != self.instance:
            message = "logged in again elsewhere"
            envelope = Envelope(
                "close",
                self.instance,
                session.address,
                session_id,
                close_code=CloseCode.SUPERSEDED,
                code=ErrorCode.SUPERSEDED,
                reason=message,
            )
            await self.relay(instance, envelope)

    async def _withdraw(self, session: Session) -> None:
        """A local session ended: take it out of presence unless a newer login here holds it."""
        self._since_ms.pop(session.id, None)
        self._closing.discard(session.id)
        try:
            async with self._writes:
                current = self._pool.sessions.get(session.address)
                if current is None or current.remote:
                    await self._client.hdel(_presence_key(self.instance), session.address)
                await self._delete_if(
                    keys=[_holder_key(session.address)], args=[_holder_value(self.instance, session.id)]
                )
            await self._notify("down", session)
        except RedisError as error:  # the next refresh leaves it out
            log.warning("withdrawing %s failed: %s", session.address, error)

    async def _claim_name(self) -> bool:
        return bool(await self._claim(keys=[_name_key(self.instance)], args=[self._token, self._ttl_ms]))

    async def refresh(self) -> None:
        """Publish every local miner (its load included), then read the other instances' miners."""
        if await self._claim_name():
            await self._publish()
        else:  # writing would undo the other's presence, and it ours
            log.error("another instance sharing the store took the name %r: not publishing", self.instance)
        await self._read()

    async def _publish(self) -> None:
        async with self._writes:
            local = self._local_sessions()
            keys = [_presence_key(self.instance), INSTANCES_KEY]
            args: list[Any] = [self._ttl_ms, self.instance]
            for session in local:
                keys.append(_holder_key(session.address))
                args += [
                    session.address,
                    encode(self._record(session)),
                    _holder_value(self.instance, session.id),
                ]
            await self._refresh_script(keys=keys, args=args)

    async def _read(self) -> None:
        self._heard_while_reading = []
        try:
            names = await self._client.smembers(INSTANCES_KEY)
            instances = sorted(name for name in (_text(raw) for raw in names) if name != self.instance)
            async with self._client.pipeline(transaction=False) as pipe:
                for name in instances:
                    pipe.hgetall(_presence_key(name))
                found = await pipe.execute()
        finally:
            heard, self._heard_while_reading = self._heard_while_reading, None
        view: dict[str, dict[str, MinerPresence]] = {}
        gone = []
        for name, fields in zip(instances, found, strict=True):
            if not fields:  # expired or empty: it is added again when it publishes a miner
                gone.append(name)
                continue
            view[name] = miners = {}
            for raw in fields.values():
                try:
                    record = decode_presence(raw)
                except PresenceError as error:
                    log.warning("ignoring a presence record of instance %s: %s", untrusted(name), error)
                    continue
                miners[record.address] = record
        self._view = view
        for notice in heard:  # the read may have missed what they announce
            self._apply(notice)
        addresses = {address for miners in view.values() for address in miners} | set(self._remote)
        for address in sorted(addresses):
            self._settle(address)
        if gone:
            await self._client.srem(INSTANCES_KEY, *gone)

    def _settle(self, address: str) -> None:
        """Make the pool's remote session for `address` match the view."""
        current = self._pool.sessions.get(address)
        known = self._remote.get(address)
        if known is not None and known is not current:  # the pool let it go for a login here
            self._drop(known)
        if current is not None and not current.remote:
            return  # held here: a newer login elsewhere closes it through the holder key
        found = holder(self._view, address)
        if found is None:
            if current is not None:
                self._drop(current)
            return
        instance, record = found
        if current is not None and current.remote == instance and current.id == record.session:
            if current.offers != record.models or current.max_concurrency != record.max_concurrency:
                self._pool.update_offers(current, record.models, record.max_concurrency)
            self._pool.set_elsewhere(current, max(0, record.in_flight - len(current.jobs)))
            return
        now = self._clock()
        session = Session(
            record.session,
            address,
            _RelayChannel(self, instance, address, record.session),
            record.models,
            record.max_concurrency,
            record.agent,
            now,
            now,
            remote=instance,
            elsewhere=record.in_flight,
        )
        self._remote[address] = session
        previous = self._pool.add(session)
        if previous is not None:
            self._events.on_session_closed(previous)

    def _drop(self, session: Session) -> None:
        """A remote session is gone: its jobs here count as no-response."""
        if self._remote.get(session.address) is session:
            del self._remote[session.address]
        self._pool.remove(session)
        self._events.on_session_closed(session)

    def _drop_remote(self, instance: str, address: str, session_id: str) -> None:
        session = self._remote.get(address)
        if session is not None and session.remote == instance and session.id == session_id:
            self._drop(session)

    # Relay.

    async def relay(self, instance: str, envelope: Envelope, payload: bytes = b"") -> bool:
        """Publish to `instance`; False if it is not listening (or Redis failed)."""
        try:
            receivers: int = await self._client.publish(_relay_channel(instance), pack(envelope, payload))
        except RedisError as error:
            log.warning("relaying %s to %s failed: %s", envelope.kind, untrusted(instance), error)
            return False
        return receivers > 0

    def relay_in_order(self, instance: str, envelope: Envelope, payload: bytes = b"") -> None:
        """Publish to `instance` after everything relayed in order before: one task at a time
        publishes what is queued, each pass in one pipeline. A frame that no instance hears (its
        holder is gone) drops the remote session it was for; one that Redis failed to take is
        lost, as pub/sub may lose any message, and the job's deadline covers it."""
        self._outbox.append((instance, envelope, payload))
        if not self._sending:
            self._sending = True
            self._spawn(self._send_outbox())

    async def _send_outbox(self) -> None:
        try:
            while self._outbox:
                queued = list(self._outbox)
                self._outbox.clear()
                try:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for instance, envelope, payload in queued:
                            pipe.publish(_relay_channel(instance), pack(envelope, payload))
                        receivers = await pipe.execute()
                except RedisError as error:
                    log.warning("relaying %d frames failed: %s", len(queued), error)
                    continue
                for (instance, envelope, _), heard in zip(queued, receivers, strict=True):
                    if heard == 0:
                        self._drop_remote(instance, envelope.address, envelope.session)
        finally:
            self._sending = False

    def _answer(
        self,
        origin: str,
        session: Session,
        kind: EnvelopeKind,
        job_id: str,
        payload: bytes = b"",
        **fields: Any,
    ) -> None:
        envelope = Envelope(kind, self.instance, session.address, session.id, job_id=job_id, **fields)
        self._spawn(self.relay(origin, envelope, payload))

    async def _listen(self, pubsub: PubSub) -> None:
        """Handle what arrives, in order (a job's cancel never overtakes its job)."""
        while True:
            try:
                async for message in pubsub.listen():
                    if message["type"] == "message":
                        await self._on_message(_text(message["channel"]), message["data"])
            except RedisError as error:  # the client reconnects and subscribes again
                log.warning("presence and relay subscription lost (%s); subscribing again", error)
                await asyncio.sleep(RESUBSCRIBE_PAUSE_S)

    async def _on_message(self, channel: str, data: bytes) -> None:
        try:
            if channel == PRESENCE_CHANNEL:
                self._on_notice(decode_notice(data))
            else:
                await self._on_envelope(*unpack(data))
        except PresenceError as error:
            log.warning("ignoring a message on %s: %s", channel, error)
        except Exception:
            log.exception("handling a message on %s failed", channel)

    def _on_notice(self, notice: Notice) -> None:
        if notice.instance == self.instance:
            return
        if self._heard_while_reading is not None:
            self._heard_while_reading.append(notice)
        self._apply(notice)
        self._settle(notice.miner.address)

    def _apply(self, notice: Notice) -> None:
        record, miners = notice.miner, self._view.setdefault(notice.instance, {})
        if notice.kind == "up":
            miners[record.address] = record
        elif (known := miners.get(record.address)) is not None and known.session == record.session:
            del miners[record.address]

    def _local(self, address: str, session_id: str) -> Session | None:
        session = self._pool.sessions.get(address)
        if session is None or session.remote or session.id != session_id:
            return None
        return session

    async def _on_envelope(self, envelope: Envelope, payload: bytes) -> None:
        match envelope.kind:
            case "frame":
                await self._forward(envelope, payload)
            case "close":
                session = self._local(envelope.address, envelope.session)
                if session is not None and session.id not in self._closing:
                    self._closing.add(session.id)
                    log.info("closing miner %s: %s", session.address, untrusted(envelope.reason))
                    self._spawn(session.channel.close(envelope.close_code, envelope.code, envelope.reason))
            case "violation":
                session = self._local(envelope.address, envelope.session)
                if session is not None and self._violation is not None:
                    await self._violation(session, envelope.reason)
            case "gone":
                self._drop_remote(envelope.origin, envelope.address, envelope.session)
            case "result" | "invalid" | "reject":
                self._answered(envelope, payload)

    async def _forward(self, envelope: Envelope, payload: bytes) -> None:
        """A frame for a miner held here, from the instance running the job."""
        session = self._local(envelope.address, envelope.session)
        if session is None:
            await self.relay(
                envelope.origin, Envelope("gone", self.instance, envelope.address, envelope.session)
            )
            return
        try:
            frame = decode_orchestrator_message(payload)
        except MessageError as error:
            log.warning("ignoring a relayed frame from %s: %s", untrusted(envelope.origin), error)
            return
        match frame:
            case Job(job_id=job_id, deadline_ms=deadline_ms):
                if session.in_flight >= session.max_concurrency:
                    self._answer(envelope.origin, session, "reject", job_id, reason="busy")
                    return
                self._pool.assign(session, job_id)
                expiry = asyncio.get_running_loop().call_later(
                    deadline_ms / 1000 + RELAY_GRACE_S, self._forget, job_id, session.address
                )
                self._relayed[(job_id, session.address)] = _Relayed(envelope.origin, session, expiry)
            case Cancel(job_id=job_id) | Verdict(job_id=job_id):
                self._forget(job_id, session.address)
        if not session.channel.send(payload.decode()):
            await self.relay(envelope.origin, Envelope("gone", self.instance, session.address, session.id))

    def _forget(self, job_id: str, address: str) -> None:
        relayed = self._relayed.pop((job_id, address), None)
        if relayed is not None:
            relayed.expiry.cancel()
            self._free_slot(job_id, relayed)

    def _free_slot(self, job_id: str, relayed: _Relayed) -> None:
        if relayed.holding_slot:
            relayed.holding_slot = False
            self._pool.release(relayed.session, job_id)

    def _answered(self, envelope: Envelope, payload: bytes) -> None:
        """A miner's answer to a job of this instance, from the instance holding it."""
        session = self._remote.get(envelope.address)
        if session is None or session.remote != envelope.origin or session.id != envelope.session:
            return  # a session this instance no longer knows: its jobs counted it as gone
        if envelope.kind == "result":
            violation = self._events.on_result(session, Result(envelope.job_id, msgspec.Raw(payload)))
        elif envelope.kind == "invalid":
            violation = self._events.on_invalid(session, envelope.job_id)
        else:
            # the holder decoded the miner's reason; one this version does not know is "internal"
            known = envelope.reason in get_args(RejectReason)
            reason = cast(RejectReason, envelope.reason if known else "internal")
            violation = self._events.on_reject(session, Reject(envelope.job_id, reason))
        if violation is not None:
            self._answer(envelope.origin, session, "violation", envelope.job_id, reason=violation)

    def _relayed_to(self, session: Session, job_id: str) -> _Relayed | None:
        relayed = self._relayed.get((job_id, session.address))
        if relayed is None or relayed.session is not session:
            return None
        self._free_slot(job_id, relayed)  # answered: the miner's slot is free again
        return relayed

    # JobEvents, from the endpoint: answers to relayed jobs go back, the rest to the router.

    def on_result(self, session: Session, message: Result) -> str | None:
        relayed = self._relayed_to(session, message.job_id)
        if relayed is None:
            return self._events.on_result(session, message)
        self._answer(relayed.origin, session, "result", message.job_id, bytes(message.output))
        return None

    def on_invalid(self, session: Session, job_id: str) -> str | None:
        relayed = self._relayed_to(session, job_id)
        if relayed is None:
            return self._events.on_invalid(session, job_id)
        self._answer(relayed.origin, session, "invalid", job_id)
        return None

    def on_reject(self, session: Session, message: Reject) -> str | None:
        relayed = self._relayed_to(session, message.job_id)
        if relayed is None:
            return self._events.on_reject(session, message)
        self._answer(relayed.origin, session, "reject", message.job_id, reason=message.reason)
        return None

    def on_session_closed(self, session: Session) -> None:
        """A local session ended: the instances whose jobs it had learn it is gone."""
        origins = set()
        for (job_id, address), relayed in list(self._relayed.items()):
            if relayed.session is session:
                origins.add(relayed.origin)
                self._forget(job_id, address)
        for origin in sorted(origins):
            self._spawn(self.relay(origin, Envelope("gone", self.instance, session.address, session.id)))
        self._spawn(self._withdraw(session))
        self._events.on_session_closed(session)
        if session.address not in self._pool.sessions:
            self._settle(session.address)  # another instance may hold the address now

    def on_deregistered(self, worker: str) -> None:
        self._events.on_deregistered(worker)

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
