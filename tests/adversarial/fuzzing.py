"""Runs frame and HTTP probes against a live orchestrator and tallies what came back.

The same runners serve the adversarial tests (a few hundred probes, fixed seeds) and
`python -m bench.fuzz` (as many as asked for). Every exchange is bounded in time; a probe the
orchestrator does not answer within the bound counts as a hang, a refused connection as a crash,
and any answer other than the probe's documented one as unexpected.
"""

import itertools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from eth_account import Account
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from krewe.keys import SigningKey
from krewe.miner.agent import login_message
from krewe.protocol.messages import Challenge
from tests.adversarial.frame_probes import (
    HEALTH_MODEL,
    SILENT,
    VIOLATION,
    WELCOME,
    Answer,
    Login,
    Probe,
    refused,
)
from tests.adversarial.http_probes import HttpProbe, judge
from tests.adversarial.wire import (
    OPCODE_CLOSE,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    GarbageError,
    HangError,
    RawWebSocket,
    WireFrame,
    http_exchange,
)

__all__ = [
    "FrameFuzzer",
    "HttpFuzzer",
    "MinerKeys",
    "Tally",
    "draw_examples",
    "good_miners_get_a_job",
    "healthy",
]

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def draw_examples(strategy: st.SearchStrategy[Any], count: int, seed_value: int) -> list[Any]:
    """`count` examples of `strategy`, the same ones for the same seed (Hypothesis as a generator:
    each is run against a live orchestrator, so there is nothing to shrink on the way)."""
    drawn: list[Any] = []
    for batch in range(10):  # Hypothesis may stop short of max_examples: top up, a bounded number of times
        wanted = count - len(drawn)
        if wanted <= 0:
            break

        @settings(
            max_examples=wanted,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @seed(seed_value * 1000 + batch)
        @given(strategy)
        def collect(example: Any) -> None:
            drawn.append(example)

        collect()
    return drawn


@dataclass
class Tally:
    """What was tried and what came back, by probe class."""

    tried: Counter[str] = field(default_factory=Counter)
    answers: Counter[tuple[str, str]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    hangs: int = 0
    crashes: int = 0

    def record(self, label: str, got: str, problem: str | None = None) -> None:
        """One probe of class `label` answered `got`; `problem` says what is wrong with that."""
        self.tried[label] += 1
        self.answers[label, got] += 1
        if problem is not None:
            self.unexpected.append(f"{label}: {got}: {problem}")
        self.hangs += got.startswith("hang")
        self.crashes += got.startswith("crash")


@dataclass(frozen=True)
class MinerKeys:
    """Hex keys: `login` and `session` of staked miners no one else uses, `other` of another staked
    miner, `unregistered` of no miner."""

    login: str
    session: str
    other: str
    unregistered: str


class FrameFuzzer:
    """Sends frame probes: one connection for each probe before login, and a logged-in session
    for those after login, which logs in again when the orchestrator closes it."""

    def __init__(
        self, host: str, port: int, keys: MinerKeys, *, max_violations: int, timeout_s: float = 15.0
    ) -> None:
        self.host, self.port, self.keys = host, port, keys
        self.max_violations = max_violations
        self.timeout_s = timeout_s
        self._session: RawWebSocket | None = None
        self._challenge: dict[str, Any] = {}
        self._violations = 0
        self._pings = itertools.count()

    async def run(self, probes: Iterable[Probe], tally: Tally) -> None:
        try:
            for probe in probes:
                label = f"{'after' if probe.after_login else 'before'} login: {probe.label}"
                try:
                    expected, got = await (
                        self._after_login(probe) if probe.after_login else self._before(probe)
                    )
                except (ConnectionRefusedError, ConnectionResetError) as error:
                    tally.record(label, "crash", f"{error!r}, expected {probe.expected}")
                    continue
                answered = got == expected or (probe.may_reset and got.kind == "reset")
                problem = None if answered else f"expected {expected} {_brief(probe)}"
                tally.record(label, str(got), problem)
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def _before(self, probe: Probe) -> tuple[Answer, Answer]:
        ws = await RawWebSocket.open(self.host, self.port, timeout_s=self.timeout_s)
        try:
            challenge = await ws.message(self.timeout_s)
            if challenge is None or challenge.opcode != OPCODE_TEXT:
                return probe.expected, Answer("garbage", "no challenge")
            frames = self._wire(probe.frames, challenge.json(), self.keys.login)
            return probe.expected, await self._exchange(ws, frames)
        finally:
            await ws.close()

    async def _after_login(self, probe: Probe) -> tuple[Answer, Answer]:
        if self._session is None:
            self._session, self._challenge = await self._login()
            self._violations = 0
        frames = self._wire(probe.frames, self._challenge, self.keys.session)
        got = await self._exchange(self._session, frames)
        expected = probe.expected
        if expected == VIOLATION:
            self._violations += 1
            if self._violations >= self.max_violations:
                expected = refused("too_many_violations", 4429)
        if got.close is not None or got.kind not in ("error", "silent"):  # the session is over
            await self._session.close()
            self._session = None
        return expected, got

    async def _login(self) -> tuple[RawWebSocket, dict[str, Any]]:
        ws = await RawWebSocket.open(self.host, self.port, timeout_s=self.timeout_s)
        challenge = await ws.message(self.timeout_s)
        assert challenge is not None and challenge.opcode == OPCODE_TEXT
        fields = {"models": '[{"id":"fuzz","tasks":["chat"]}]', "max_concurrency": "1", "agent": '"fuzz"'}
        login = Login(tuple(fields.items()))
        await ws.send(*self._wire((login,), challenge.json(), self.keys.session))
        welcome = await ws.message(self.timeout_s)
        assert welcome is not None and welcome.json()["type"] == "welcome", welcome
        return ws, challenge.json()

    def _wire(
        self, frames: Sequence[WireFrame | Login], challenge: dict[str, Any], key: str
    ) -> list[WireFrame]:
        return [
            WireFrame(OPCODE_TEXT, auth_text(frame, challenge, key, self.keys).encode())
            if isinstance(frame, Login)
            else frame
            for frame in frames
        ]

    async def _exchange(self, ws: RawWebSocket, frames: list[WireFrame]) -> Answer:
        """Send `frames` and a ping, and read what comes back until the pong or a close."""
        token = f"probe {next(self._pings)}".encode()
        closing = any(frame.opcode == OPCODE_CLOSE for frame in frames)
        await ws.send(*frames, *(() if closing else (WireFrame(OPCODE_PING, token),)))
        welcome, errors = False, []
        try:
            while True:
                frame = await ws.message(self.timeout_s)
                # One message has one answer: a second error would be a violation counted twice.
                error = None if not errors else errors[0] if len(errors) == 1 else " and ".join(errors)
                if frame is None:
                    return WELCOME if welcome else Answer("reset" if ws.reset else "eof", error)
                if frame.opcode == OPCODE_PONG and frame.payload == token:
                    return WELCOME if welcome else Answer("error", error) if error else SILENT
                if frame.opcode == OPCODE_CLOSE:
                    await ws.send(WireFrame(OPCODE_CLOSE, frame.payload[:2]))
                    if welcome:
                        return WELCOME
                    return Answer("error" if error else "close", error, frame.close_code)
                if frame.opcode == OPCODE_TEXT:
                    message = frame.json()
                    if message.get("type") == "welcome":
                        welcome = True
                    elif message.get("type") == "error":
                        errors.append(message["code"])
        except HangError:
            return Answer("hang", " and ".join(errors) or None)
        except GarbageError as garbage:
            return Answer("garbage", str(garbage)[:80])


def _brief(probe: Probe) -> str:
    """A probe's frames, cut short, for the report of an unexpected answer."""
    parts = [repr(frame)[:160] for frame in probe.frames]
    return "(" + "; ".join(parts) + ")"


_TAMPERED_LINES = {
    "domain": lambda c: (f"{c['domain']} wants", f"evil.{c['domain']} wants"),
    "uri": lambda c: (f"URI: {c['uri']}", f"URI: {c['uri']}x"),
    "chain_id": lambda c: (f"Chain ID: {c['chain_id']}", f"Chain ID: {c['chain_id'] + 1}"),
    "nonce": lambda c: (f"Nonce: {c['nonce']}", f"Nonce: {c['nonce']}0"),
    "issued_at": lambda c: (f"Issued At: {c['issued_at']}", "Issued At: 2020-01-01T00:00:00.000Z"),
    "expiration_time": lambda c: (
        f"Expiration Time: {c['expiration_time']}",
        "Expiration Time: 2099-01-01T00:00:00.000Z",
    ),
    "statement": lambda c: (c["statement"], c["statement"].replace("worker.", "worker!")),
    "version": lambda c: ("Version: 1", "Version: 2"),
}


def auth_text(login: Login, challenge: dict[str, Any], key: str, keys: MinerKeys) -> str:
    """The auth frame `login` describes, signed with `key` (or as its flaw says)."""
    signer = SigningKey.from_hex(keys.unregistered if login.signer == "unregistered" else key)
    address = Account.from_key(keys.other).address if login.tamper == "address" else signer.address
    fields = {name: value for name, value in challenge.items() if name != "type"}
    text = login_message(Challenge(**fields), address)
    if login.tamper in _TAMPERED_LINES:
        old, new = _TAMPERED_LINES[login.tamper](challenge)
        text = text.replace(old, new, 1)
    signature = (SigningKey.from_hex(keys.other) if login.tamper == "other_signer" else signer).sign_message(
        text
    )
    if login.tamper == "signature":
        signature = login.garbage
    elif login.tamper == "high_s":
        raw = bytes.fromhex(signature[2:])
        s_value = int.from_bytes(raw[32:64], "big")
        signature = (
            "0x" + (raw[:32] + (SECP256K1_N - s_value).to_bytes(32, "big") + bytes([55 - raw[64]])).hex()
        )
    elif login.tamper == "v":
        signature = signature[:-2] + "1d"
    elif login.tamper == "message":
        text = login.garbage
    frame = {"type": '"auth"', "message": json.dumps(text), "signature": json.dumps(signature)}
    frame |= dict(login.fields)
    return "{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in frame.items() if value) + "}"


class HttpFuzzer:
    """Sends HTTP probes, each on a new connection."""

    def __init__(self, host: str, port: int, *, timeout_s: float = 15.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s

    async def run(self, probes: Iterable[HttpProbe], tally: Tally) -> None:
        for probe in probes:
            try:
                answer = await http_exchange(
                    self.host,
                    self.port,
                    probe.request,
                    timeout_s=self.timeout_s,
                    half_close=probe.half_close,
                    head=probe.head,
                )
            except HangError:
                tally.record(
                    probe.label, "hang", f"no answer within {self.timeout_s} s, expected {probe.expected}"
                )
                continue
            except GarbageError as garbage:
                tally.record(probe.label, "garbage", str(garbage)[:200])
                continue
            except (ConnectionRefusedError, ConnectionResetError) as error:
                tally.record(probe.label, "crash", repr(error))
                continue
            problem = judge(probe, answer)
            got = "closed" if answer is None else str(answer.status)
            tally.record(probe.label, got, None if problem is None else f"{problem} {probe.request[:160]!r}")


async def healthy(url: str) -> bool:
    """`GET /healthz` answers 200."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(url + "/healthz") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def good_miners_get_a_job(url: str) -> bool:
    """A job for the good miners' model is sent to them, and they agree."""
    job = {"model": HEALTH_MODEL, "task": "chat", "input": {"messages": [{"role": "user", "content": "hi"}]}}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(url + "/v1/jobs", json=job) as response,
        ):
            return response.status == 200 and (await response.json())["verdict"] == "agreed"
    except (aiohttp.ClientError, TimeoutError):
        return False
