"""What a miner can send, as Hypothesis strategies of probes, each with the answer docs/protocol.md
gives it.

A probe is what one connection sends at one point: right after the challenge (`after_login`
False) or in a logged-in session (True). Its frames are valid-looking or broken messages of every
type a miner sends (auth, result, reject, status) and breaches of RFC 6455 (unmasked frames,
reserved bits and opcodes, bad control frames, invalid UTF-8, oversized frames). A login is made
at run time from the challenge (`Login`), genuine or with one known flaw.

Answers: before login a frame either logs in (`WELCOME`), is refused (an error, then a close code),
or closes the connection (a close code alone); a ping is answered and changes nothing (`SILENT`).
After login an invalid message is a violation (`VIOLATION`: an error, the session stays open until
`max_violations`), a valid one or one for a job never assigned is `SILENT`.
"""

import itertools
import json
import typing
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import strategies as st

from krewe.protocol.messages import MAX_CONCURRENCY, MAX_MODELS, TASKS
from tests.adversarial.wire import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_CONTINUATION,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    WireFrame,
)

__all__ = [
    "HEALTH_MODEL",
    "SILENT",
    "VIOLATION",
    "WELCOME",
    "Answer",
    "Login",
    "Probe",
    "closed",
    "frame_probes",
    "refused",
]

HEALTH_MODEL = "test-model"  # served by the good miners; no fuzzed offer names it
MAX_TEXT_CHARS = 200  # model ids, engine classes, agent
FRAME_DEPTH = 65
# Close codes below 3000 a peer may send (RFC 6455 §7.4.1 and the IANA registry); other ones below
# 3000 fail the connection.
DEFINED_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)


@dataclass(frozen=True)
class Answer:
    """What the orchestrator answered: `kind`, the error code it sent, and the close code."""

    kind: Literal["welcome", "error", "close", "silent", "eof", "reset", "hang", "garbage"]
    code: str | None = None
    close: int | None = None

    def __str__(self) -> str:
        return "/".join(str(part) for part in (self.kind, self.code, self.close) if part is not None)


WELCOME = Answer("welcome")
SILENT = Answer("silent")
VIOLATION = Answer("error", "bad_message")  # after login, below max_violations


def refused(code: str, close: int) -> Answer:
    return Answer("error", code, close)


def closed(close: int) -> Answer:
    return Answer("close", None, close)


BAD_MESSAGE = refused("bad_message", 4400)
AUTH_FAILED = refused("auth_failed", 4401)
NOT_REGISTERED = refused("not_registered", 4403)

Tamper = Literal[
    "domain",
    "uri",
    "chain_id",
    "nonce",
    "issued_at",
    "expiration_time",
    "statement",
    "version",
    "address",
    "other_signer",
    "signature",
    "high_s",
    "v",
    "message",
]


@dataclass(frozen=True)
class Login:
    """An auth frame, made from the challenge at run time by the miner's key: genuine unless
    `tamper` names a flaw in the login itself or `fields` put a field out of its bounds."""

    fields: tuple[tuple[str, str], ...]  # (name, JSON text) replacing the genuine field
    signer: Literal["registered", "unregistered"] = "registered"
    tamper: Tamper | None = None
    garbage: str = ""  # what replaces the signature or the message, for those tampers
    broken: bool = False  # some field is out of its bounds: refused before the login is checked

    @property
    def expected(self) -> Answer:
        if self.broken:
            return BAD_MESSAGE
        if self.tamper is not None:
            return AUTH_FAILED
        return NOT_REGISTERED if self.signer == "unregistered" else WELCOME


@dataclass(frozen=True)
class Probe:
    label: str  # the class of frames, for the report
    after_login: bool
    frames: tuple[WireFrame | Login, ...]
    expected: Answer
    # The orchestrator closes without reading the rest of a frame it refuses; a client still sending
    # it may then see its connection reset before the close frame.
    may_reset: bool = False


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# JSON values.

printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
not_strings = st.one_of(st.none(), st.booleans(), st.integers(), st.lists(json_scalars, max_size=2))
not_integers = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False)
)


def longer_than(limit: int, alphabet: st.SearchStrategy[str] = printable) -> st.SearchStrategy[str]:
    """Text of `limit` + 1 to 2 * `limit` characters: a short drawn piece, repeated (drawing every
    character of a long text would make Hypothesis slow for nothing)."""
    return st.tuples(st.text(alphabet, min_size=1, max_size=8), st.integers(limit + 1, 2 * limit)).map(
        lambda pair: (pair[0] * pair[1])[: pair[1]]
    )


def nested(depth: int) -> str:
    """JSON text of lists nested `depth` deep (the nesting limits count containers)."""
    return "[" * depth + "]" * depth


# Offers (auth and status) and the other fields of auth.

model_ids = st.text(printable, min_size=1, max_size=MAX_TEXT_CHARS).filter(lambda text: text != HEALTH_MODEL)
engines = st.text(printable, max_size=MAX_TEXT_CHARS)
task_lists = st.lists(st.sampled_from(TASKS), min_size=1, max_size=len(TASKS))
offers = st.fixed_dictionaries({"id": model_ids, "tasks": task_lists}, optional={"engine": engines})
valid_offers = st.lists(offers, min_size=1, max_size=3) | st.integers(1, MAX_MODELS).map(
    lambda count: [{"id": f"model-{i}", "tasks": ["chat"]} for i in range(count)]
)
unprintable = st.sampled_from(["\n", "\t", "\x00", "\x1b", "\x7f", "é", "\u2028", "🦀"])
broken_offer = st.one_of(
    offers.map(lambda offer: {k: v for k, v in offer.items() if k != "id"}),
    offers.map(lambda offer: offer | {"id": ""}),
    st.tuples(offers, longer_than(MAX_TEXT_CHARS)).map(lambda pair: pair[0] | {"id": pair[1]}),
    st.tuples(offers, model_ids, unprintable).map(lambda t: t[0] | {"id": t[1] + t[2]}),
    st.tuples(offers, not_strings).map(lambda pair: pair[0] | {"id": pair[1]}),
    offers.map(lambda offer: offer | {"tasks": []}),
    st.tuples(offers, st.text(max_size=12).filter(lambda task: task not in TASKS)).map(
        lambda pair: pair[0] | {"tasks": [pair[1]]}
    ),
    st.tuples(offers, st.lists(st.sampled_from(TASKS), min_size=len(TASKS) + 1, max_size=8)).map(
        lambda pair: pair[0] | {"tasks": pair[1]}
    ),
    st.tuples(offers, not_strings.filter(lambda value: not isinstance(value, list))).map(
        lambda pair: pair[0] | {"tasks": pair[1]}
    ),
    st.tuples(offers, longer_than(MAX_TEXT_CHARS)).map(lambda pair: pair[0] | {"engine": pair[1]}),
    st.tuples(offers, engines, unprintable).map(lambda t: t[0] | {"engine": t[1][:150] + t[2]}),
    st.tuples(offers, not_strings).map(lambda pair: pair[0] | {"engine": pair[1]}),
    not_strings,
)
broken_offers = st.one_of(
    st.just([]),
    st.integers(MAX_MODELS + 1, MAX_MODELS + 20).map(
        lambda count: [{"id": f"model-{i}", "tasks": ["chat"]} for i in range(count)]
    ),
    st.lists(model_ids, min_size=1, max_size=3),  # protocol 1: a list of model ids
    st.tuples(valid_offers, broken_offer, st.integers(0, 3)).map(
        lambda t: [*t[0][: t[2]], t[1], *t[0][t[2] :]][:MAX_MODELS]
    ),
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8), offers),
)
valid_concurrency = st.integers(1, MAX_CONCURRENCY)
broken_concurrency = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=MAX_CONCURRENCY + 1),
    st.sampled_from([2**63, 2**64, 2**64 - 1, -(2**63) - 1, 10**30]),
    not_integers,
    st.lists(valid_concurrency, max_size=2),
)
agents = st.text(max_size=MAX_TEXT_CHARS)


AUTH_FIELDS = frozenset({"type", "message", "signature", "models", "max_concurrency", "agent"})
extra_auth_fields = st.tuples(
    st.text(min_size=1, max_size=8).filter(lambda name: name not in AUTH_FIELDS), json_values
)
broken_auth_fields = st.one_of(  # (name, JSON text) of one field out of its bounds; "" leaves it out
    st.tuples(st.just("models"), broken_offers.map(_json)),
    st.tuples(st.just("max_concurrency"), broken_concurrency.map(_json)),
    st.tuples(st.just("agent"), longer_than(MAX_TEXT_CHARS, st.characters()).map(_json)),
    st.tuples(st.sampled_from(["agent", "message", "signature"]), not_strings.map(_json)),
    st.tuples(st.just("message"), longer_than(4096, st.characters()).map(_json)),
    st.tuples(st.just("signature"), longer_than(200).map(_json)),
    st.tuples(st.sampled_from(["message", "signature", "models", "max_concurrency"]), st.just("")),
)


@st.composite
def logins(draw: st.DrawFn) -> Login:
    """A login: genuine, flawed in one field's bounds, or flawed as a login."""
    fields = {
        "models": _json(draw(valid_offers)),
        "max_concurrency": _json(draw(valid_concurrency)),
        "agent": _json(draw(agents)),
    }
    if draw(st.booleans()):  # unknown fields are ignored
        name, value = draw(extra_auth_fields)
        fields[name] = _json(value)
    flaw = draw(st.sampled_from(["none", "none", "field", "login", "unregistered"]))
    if flaw == "field":
        name, value = draw(broken_auth_fields)
        fields[name] = value
        return Login(tuple(fields.items()), broken=True)
    if flaw == "login":
        tamper = draw(st.sampled_from(typing.get_args(Tamper)))
        garbage = ""
        if tamper == "signature":
            garbage = "0x" + draw(st.text("0123456789abcdef", max_size=140))
        elif tamper == "message":
            garbage = draw(st.text(max_size=300))
        return Login(tuple(fields.items()), tamper=tamper, garbage=garbage)
    return Login(tuple(fields.items()), signer="unregistered" if flaw == "unregistered" else "registered")


# Text messages: (JSON text, answer before login, answer after login).

Message = tuple[str, Answer, Answer]


def _valid(text: str) -> Message:
    """A valid message that is not auth: refused before login, and no answer after."""
    return text, BAD_MESSAGE, SILENT


def _invalid(text: str) -> Message:
    return text, BAD_MESSAGE, VIOLATION


job_ids = st.text(max_size=40)
reasons = st.sampled_from(["busy", "unsupported_model", "bad_input", "internal"])
extra_fields = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda name: name not in ("type", "job_id", "output", "reason")),
    json_values,
    max_size=2,
)
non_strict_outputs = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        '{"x":[1,NaN]}',
        '{"a":1,"a":2}',
        '"\\ud800"',
        '["\\udc00x"]',
        "9007199254740993",
        "-9007199254740993",
        "1e400",
    ]
)


@st.composite
def results(draw: st.DrawFn) -> Message:
    job_id = _json(draw(job_ids))
    extra = "".join(f",{_json(k)}:{_json(v)}" for k, v in draw(extra_fields).items())
    kind = draw(st.sampled_from(["valid", "deep_ok", "too_deep", "non_strict", "broken"]))
    if kind == "valid":
        return _valid(f'{{"type":"result","job_id":{job_id},"output":{_json(draw(json_values))}{extra}}}')
    if kind == "deep_ok":  # the output as deep as a document may be: the frame is one level more
        output = nested(draw(st.integers(1, FRAME_DEPTH - 1)))
        return _valid(f'{{"type":"result","job_id":{job_id},"output":{output}}}')
    if kind == "too_deep":
        output = nested(draw(st.integers(FRAME_DEPTH, 200_000)))
        return _invalid(f'{{"type":"result","job_id":{job_id},"output":{output}}}')
    if kind == "non_strict":  # an invalid answer to a job never assigned: ignored
        return _valid(f'{{"type":"result","job_id":{job_id},"output":{draw(non_strict_outputs)}}}')
    broken = draw(
        st.sampled_from(
            [
                '{{"type":"result","job_id":{bad},"output":1}}',
                '{{"type":"result","output":{output}}}',
                '{{"type":"result","job_id":{job_id}}}',
            ]
        )
    )
    bad = _json(draw(not_strings))
    return _invalid(broken.format(bad=bad, output=_json(draw(json_values)), job_id=job_id))


@st.composite
def rejects(draw: st.DrawFn) -> Message:
    job_id = _json(draw(job_ids))
    if draw(st.booleans()):
        return _valid(f'{{"type":"reject","job_id":{job_id},"reason":{_json(draw(reasons))}}}')
    reason = draw(st.text(max_size=20).filter(lambda text: text not in reasons.elements) | not_strings)  # type: ignore[attr-defined]
    variant = draw(st.sampled_from(["reason", "job_id", "missing"]))
    if variant == "reason":
        return _invalid(f'{{"type":"reject","job_id":{job_id},"reason":{_json(reason)}}}')
    if variant == "job_id":
        return _invalid(f'{{"type":"reject","job_id":{_json(draw(not_strings))},"reason":"busy"}}')
    return _invalid('{"type":"reject","reason":"busy"}')


@st.composite
def statuses(draw: st.DrawFn) -> Message:
    models, concurrency = draw(valid_offers), draw(valid_concurrency)
    flaw = draw(st.sampled_from(["none", "models", "max_concurrency"]))
    if flaw == "none":
        return _valid(_json({"type": "status", "models": models, "max_concurrency": concurrency}))
    if flaw == "models":
        return _invalid(f'{{"type":"status","models":{_json(draw(broken_offers))},"max_concurrency":1}}')
    return _invalid(
        f'{{"type":"status","models":{_json(models)},"max_concurrency":{_json(draw(broken_concurrency))}}}'
    )


not_messages = st.one_of(
    st.text(max_size=200).map(_invalid),  # rarely JSON, never a message
    json_scalars.map(_json).map(_invalid),
    st.lists(json_values, max_size=3).map(_json).map(_invalid),
    st.dictionaries(st.text(max_size=8).filter(lambda name: name != "type"), json_values, max_size=3)
    .map(_json)
    .map(_invalid),
    st.tuples(st.text(max_size=12).filter(lambda kind: kind not in ("auth", "result", "reject", "status")))
    .map(lambda t: _json({"type": t[0]}))
    .map(_invalid),
    not_strings.map(lambda kind: _invalid(_json({"type": kind}))),
    st.integers(FRAME_DEPTH + 1, 200_000).map(
        lambda depth: _invalid(f'{{"type":"status","x":{nested(depth - 1)}}}')
    ),
    st.integers(2, FRAME_DEPTH - 1).map(lambda depth: _invalid(f'{{"type":"gossip","x":{nested(depth)}}}')),
)
messages = st.one_of(results(), rejects(), statuses(), not_messages)


# Probes.


def _text(text: str) -> WireFrame:
    return WireFrame(OPCODE_TEXT, text.encode())


def _fragments(payload: bytes, cuts: list[int], ping: bool) -> tuple[WireFrame, ...]:
    """A text message in fragments, with a ping between the first two when `ping`."""
    points = sorted({0, len(payload), *(cut % (len(payload) + 1) for cut in cuts)})
    pieces = [payload[start:end] for start, end in itertools.pairwise(points)] or [b""]
    frames = [
        WireFrame(OPCODE_TEXT if i == 0 else OPCODE_CONTINUATION, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    ]
    if ping and len(frames) > 1:
        frames.insert(1, WireFrame(OPCODE_PING, b"between fragments"))
    return tuple(frames)


@st.composite
def message_probes(draw: st.DrawFn) -> Probe:
    text, before, after = draw(messages)
    after_login = draw(st.booleans())
    frames: tuple[WireFrame, ...] = (_text(text),)
    label = "message"
    if draw(st.integers(0, 5)) == 0:
        frames = _fragments(
            text.encode(), draw(st.lists(st.integers(0, 10**6), max_size=4)), draw(st.booleans())
        )
        label = "fragmented message"
    return Probe(label, after_login, frames, after if after_login else before)


@st.composite
def login_probes(draw: st.DrawFn) -> Probe:
    login = draw(logins())
    after_login = draw(st.integers(0, 4)) == 0
    label = f"auth ({'broken field' if login.broken else login.tamper or login.signer})"
    return Probe(label, after_login, (login,), VIOLATION if after_login else login.expected)


@st.composite
def frame_level_probes(draw: st.DrawFn, max_frame_bytes: int) -> Probe:
    """Frames that break RFC 6455, or that a miner may send at any time (pings, pongs, close)."""
    after_login = draw(st.booleans())
    text = draw(messages)[0].encode()
    kind = draw(
        st.sampled_from(
            [
                "binary",
                "invalid utf-8",
                "unmasked",
                "reserved bits",
                "reserved opcode",
                "fragmented control",
                "long control",
                "orphan continuation",
                "interrupted fragments",
                "ping",
                "pong",
                "close",
                "close without code",
                "close with a bad code",
                "close with one byte",
                "oversized",
            ]
        )
    )
    violation = VIOLATION if after_login else BAD_MESSAGE
    control = st.sampled_from([OPCODE_PING, OPCODE_PONG, OPCODE_CLOSE])
    reason = st.text(max_size=30).map(str.encode).filter(lambda data: len(data) <= 123)
    frames: tuple[WireFrame, ...]
    if kind == "binary":
        frames, expected = (WireFrame(OPCODE_BINARY, draw(st.binary(max_size=300))),), violation
    elif kind == "invalid utf-8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]))
        cut = draw(st.integers(0, len(text)))
        frames, expected = (WireFrame(OPCODE_TEXT, text[:cut] + bad + text[cut:]),), closed(1007)
    elif kind == "unmasked":
        opcode = draw(st.sampled_from([OPCODE_TEXT, OPCODE_BINARY, OPCODE_PING]))
        frames, expected = (WireFrame(opcode, text[:125], masked=False),), closed(1002)
    elif kind == "reserved bits":
        frames, expected = (WireFrame(OPCODE_TEXT, text, rsv=draw(st.integers(1, 7))),), closed(1002)
    elif kind == "reserved opcode":
        opcode = draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]))
        frames, expected = (WireFrame(opcode, text[:100]),), closed(1002)
    elif kind == "fragmented control":
        frames, expected = (WireFrame(draw(control), b"", fin=False),), closed(1002)
    elif kind == "long control":
        frames, expected = (WireFrame(draw(control), b"x" * draw(st.integers(126, 400))),), closed(1002)
    elif kind == "orphan continuation":
        frames, expected = (WireFrame(OPCODE_CONTINUATION, text),), closed(1002)
    elif kind == "interrupted fragments":
        first = WireFrame(
            draw(st.sampled_from([OPCODE_TEXT, OPCODE_BINARY])), text[: draw(st.integers(0, 5))], fin=False
        )
        frames, expected = (first, _text(text.decode())), closed(1002)
    elif kind in ("ping", "pong"):
        opcode = OPCODE_PING if kind == "ping" else OPCODE_PONG
        frames, expected = (WireFrame(opcode, draw(st.binary(max_size=125))),), SILENT
    elif kind == "close":  # codes of 3000 and above are not checked: libraries and applications use them
        code = draw(st.sampled_from(DEFINED_CLOSE_CODES) | st.integers(3000, 65535))
        frames, expected = (WireFrame(OPCODE_CLOSE, code.to_bytes(2, "big") + draw(reason)),), closed(1000)
    elif kind == "close without code":
        frames, expected = (WireFrame(OPCODE_CLOSE, b""),), closed(1000)
    elif kind == "close with a bad code":
        code = draw(st.integers(0, 2999).filter(lambda code: code not in DEFINED_CLOSE_CODES))
        frames, expected = (WireFrame(OPCODE_CLOSE, code.to_bytes(2, "big")),), closed(1002)
    elif kind == "close with one byte":
        frames, expected = (WireFrame(OPCODE_CLOSE, draw(st.binary(min_size=1, max_size=1))),), closed(1002)
    else:
        size = max_frame_bytes + draw(st.integers(1, 4096))
        return Probe(kind, after_login, (WireFrame(OPCODE_TEXT, b"x" * size),), closed(1009), may_reset=True)
    return Probe(kind, after_login, frames, expected)


def frame_probes(max_frame_bytes: int) -> st.SearchStrategy[Probe]:
    """Every probe class; `max_frame_bytes` is the orchestrator's, for oversized frames."""
    return st.one_of(message_probes(), login_probes(), frame_level_probes(max_frame_bytes))
