"""Presence records and relay envelopes between instances: the pure part."""

import pytest

from krewe.orchestrator.presence import (
    Envelope,
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
from krewe.protocol.messages import ModelOffer

OFFERS = (ModelOffer(id="m", tasks=["chat"], engine="e/1"),)


def record(session: str, since_ms: int, address: str = "0xabc") -> MinerPresence:
    return MinerPresence(session, address, OFFERS, 4, 1, "agent/1", since_ms)


def test_the_latest_login_holds_an_address() -> None:
    view = {"a": {"0xabc": record("s1", 100)}, "b": {"0xabc": record("s2", 200)}, "c": {}}
    assert holder(view, "0xabc") == ("b", record("s2", 200))
    assert holder(view, "0xdef") is None


def test_two_logins_in_the_same_millisecond_are_ordered_by_instance_name() -> None:
    view = {"b": {"0xabc": record("s2", 100)}, "a": {"0xabc": record("s1", 100)}}
    assert holder(view, "0xabc") == ("b", record("s2", 100))


def test_an_envelope_carries_its_payload_bytes_untouched() -> None:
    envelope = Envelope("result", "a", "0xabc", "s1", job_id="j1")
    payload = b'{"choices":[{"text":"two\\nlines"}],  "spacing":  "kept"}\n'
    assert unpack(pack(envelope, payload)) == (envelope, payload)
    assert unpack(pack(Envelope("gone", "b", "0xabc", "s1"))) == (Envelope("gone", "b", "0xabc", "s1"), b"")


def test_records_and_notices_round_trip() -> None:
    assert decode_presence(encode(record("s1", 5))) == record("s1", 5)
    notice = Notice("down", "a", record("s1", 5))
    assert decode_notice(encode(notice)) == notice


@pytest.mark.parametrize(
    "message", [b"no header line", b'{"kind":"teleport","origin":"a","address":"x","session":"s"}\n']
)
def test_a_bad_envelope_is_refused_with_a_reason(message: bytes) -> None:
    with pytest.raises(PresenceError, match="envelope"):
        unpack(message)


def test_a_bad_record_is_refused_with_a_reason() -> None:
    with pytest.raises(PresenceError, match="presence record"):
        decode_presence(b'{"session":"s1"}')
