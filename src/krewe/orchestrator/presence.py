"""What instances sharing one Redis tell each other about their miners, and how it reads. Pure.

Each instance publishes a `MinerPresence` for every miner connected to it, and reads the others'.
Two instances may both list an address for a moment (a miner that logged in again elsewhere, before
the first instance has closed its old session): `holder` picks the latest login, so that every
instance agrees on where a miner is without asking Redis again.

Messages addressed to one instance (`Envelope`) carry a frame for a miner it holds, or a miner's
answer for a job another instance sent. On the wire an envelope is its JSON header, a newline, and
the payload's bytes untouched: a job frame is forwarded as the router encoded it, a result's output
reaches the job's instance as the miner wrote it, and neither is decoded and encoded again.
"""

from collections.abc import Mapping
from typing import Literal

import msgspec

from krewe.protocol.messages import ModelOffer

__all__ = [
    "Envelope",
    "EnvelopeKind",
    "MinerPresence",
    "Notice",
    "PresenceError",
    "decode_notice",
    "decode_presence",
    "encode",
    "holder",
    "pack",
    "unpack",
]


class PresenceError(ValueError):
    """A presence record, notice or envelope that does not decode."""


class MinerPresence(msgspec.Struct, frozen=True):
    """One miner as the instance holding its connection publishes it."""

    session: str
    address: str
    models: tuple[ModelOffer, ...]
    max_concurrency: int
    in_flight: int  # every job it is working on, whichever instance sent it
    agent: str
    since_ms: int  # when it logged in (wall clock): the latest of two logins of one address wins


class Notice(msgspec.Struct, frozen=True):
    """Broadcast to every instance when a miner comes (`up`) or goes (`down`)."""

    kind: Literal["up", "down"]
    instance: str
    miner: MinerPresence


EnvelopeKind = Literal["frame", "close", "result", "invalid", "reject", "gone", "violation"]


class Envelope(msgspec.Struct, frozen=True, omit_defaults=True):
    """A message for one instance about one session of `address`.

    To the holder: `frame` (payload: the frame to send the miner), `close` (close it with
    `close_code`, `code`, `reason`), `violation` (hold `reason` against it). To the job's
    instance: `result` (payload: the output's bytes), `invalid`, `reject` (with `reason`), and
    `gone` (the holder no longer has that session).
    """

    kind: EnvelopeKind
    origin: str  # the instance that sent it, where an answer goes
    address: str
    session: str
    job_id: str = ""
    reason: str = ""
    close_code: int = 0
    code: str = ""


_ENCODER = msgspec.json.Encoder()
_ENVELOPE = msgspec.json.Decoder(Envelope)
_NOTICE = msgspec.json.Decoder(Notice)
_PRESENCE = msgspec.json.Decoder(MinerPresence)


def pack(envelope: Envelope, payload: bytes = b"") -> bytes:
    # JSON escapes every newline inside strings, so the first newline ends the header
    return _ENCODER.encode(envelope) + b"\n" + payload


def unpack(message: bytes) -> tuple[Envelope, bytes]:
    header, newline, payload = message.partition(b"\n")
    if not newline:
        raise PresenceError("an envelope needs a header line")
    try:
        return _ENVELOPE.decode(header), payload
    except msgspec.DecodeError as error:
        raise PresenceError(f"bad envelope: {error}") from None


def encode(value: MinerPresence | Notice) -> bytes:
    return _ENCODER.encode(value)


def decode_presence(data: bytes) -> MinerPresence:
    try:
        return _PRESENCE.decode(data)
    except msgspec.DecodeError as error:
        raise PresenceError(f"bad presence record: {error}") from None


def decode_notice(data: bytes) -> Notice:
    try:
        return _NOTICE.decode(data)
    except msgspec.DecodeError as error:
        raise PresenceError(f"bad presence notice: {error}") from None


def holder(view: Mapping[str, Mapping[str, MinerPresence]], address: str) -> tuple[str, MinerPresence] | None:
    """The instance holding `address` by `view` (instance -> address -> record), and its record:
    the latest login, ties broken by instance name so that every instance picks the same one."""
    best: tuple[str, MinerPresence] | None = None
    for instance, miners in view.items():
        record = miners.get(address)
        if record is not None and (best is None or (record.since_ms, instance) > (best[1].since_ms, best[0])):
            best = (instance, record)
    return best
