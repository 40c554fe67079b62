"""Every WebSocket frame of docs/protocol.md §1, both directions, as typed structs.

One place encodes and decodes frames, for the orchestrator and for the miner agent alike. A frame
is decoded by msgspec into exactly one struct of its direction, chosen by its `type`; wrong field
types, values out of their documented bounds, and nesting deeper than the protocol allows are all
a `MessageError` whose text says what is wrong, for the other side's operator. Unknown fields are
ignored, so that either side may add optional fields without breaking the other.

A result's `output` stays raw bytes at this step: it is read with `parse_strict` afterwards, so that
output with no canonical form counts as an invalid result for its job instead of a malformed frame.
"""

import json
from typing import Annotated, Any, Literal

import msgspec

from krewe.protocol import siwe
from krewe.protocol.canonical import MAX_DEPTH, CanonicalError, check_nesting

__all__ = [
    "MAX_CONCURRENCY",
    "MAX_ENGINE_CHARS",
    "MAX_MODELS",
    "PROTOCOL_VERSION",
    "TASKS",
    "Auth",
    "Cancel",
    "Challenge",
    "CloseCode",
    "Error",
    "ErrorCode",
    "Job",
    "MessageError",
    "MinerMessage",
    "ModelOffer",
    "OrchestratorMessage",
    "Reject",
    "Result",
    "Status",
    "Task",
    "Verdict",
    "Welcome",
    "decode_miner_message",
    "decode_orchestrator_message",
    "encode",
]

PROTOCOL_VERSION = 2
TASKS = ("chat", "completion", "embedding")
MAX_MODELS = 64
MAX_CONCURRENCY = 1024
MAX_ENGINE_CHARS = 200
MAX_MODEL_ID_CHARS = 200
MAX_AGENT_CHARS = 200

Task = Literal["chat", "completion", "embedding"]
RejectReason = Literal["busy", "unsupported_model", "bad_input", "internal"]

_PRINTABLE_ASCII = "^[ -~]*\\Z"  # \Z, since "$" also matches before a final newline
ModelId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_MODEL_ID_CHARS, pattern=_PRINTABLE_ASCII)]
EngineClass = Annotated[str, msgspec.Meta(max_length=MAX_ENGINE_CHARS, pattern=_PRINTABLE_ASCII)]
Concurrency = Annotated[int, msgspec.Meta(ge=1, le=MAX_CONCURRENCY)]


class CloseCode:
    NORMAL = 1000
    GOING_AWAY = 1001  # orchestrator shutting down
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013  # the registry, or the store instances share, could not be read
    HEARTBEAT_TIMEOUT = 4000
    BAD_MESSAGE = 4400
    AUTH_FAILED = 4401
    NOT_REGISTERED = 4403
    AUTH_TIMEOUT = 4408
    SUPERSEDED = 4409
    TOO_MANY_VIOLATIONS = 4429


class ErrorCode:
    BAD_MESSAGE = "bad_message"
    AUTH_FAILED = "auth_failed"
    NOT_REGISTERED = "not_registered"
    AUTH_TIMEOUT = "auth_timeout"
    SUPERSEDED = "superseded"
    TOO_MANY_VIOLATIONS = "too_many_violations"
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    REGISTRY_UNAVAILABLE = "registry_unavailable"
    STORE_UNAVAILABLE = "store_unavailable"


class ModelOffer(msgspec.Struct, frozen=True):
    """One model a miner serves: the tasks it answers for it, and its engine class."""

    id: ModelId
    tasks: Annotated[list[Task], msgspec.Meta(min_length=1, max_length=len(TASKS))]
    engine: EngineClass = ""


ModelOffers = Annotated[list[ModelOffer], msgspec.Meta(min_length=1, max_length=MAX_MODELS)]

# Miner -> orchestrator.


class Auth(msgspec.Struct, tag="auth", tag_field="type"):
    message: Annotated[str, msgspec.Meta(max_length=4096)]  # the EIP-4361 text the miner signed
    signature: Annotated[str, msgspec.Meta(max_length=200)]
    models: ModelOffers
    max_concurrency: Concurrency
    agent: Annotated[str, msgspec.Meta(max_length=MAX_AGENT_CHARS)] = ""


class Result(msgspec.Struct, tag="result", tag_field="type"):
    job_id: str
    output: msgspec.Raw


class Reject(msgspec.Struct, tag="reject", tag_field="type"):
    job_id: str
    reason: RejectReason


class Status(msgspec.Struct, tag="status", tag_field="type"):
    models: ModelOffers
    max_concurrency: Concurrency


MinerMessage = Auth | Result | Reject | Status

# Orchestrator -> miner.


class Challenge(msgspec.Struct, tag="challenge", tag_field="type"):
    """The fields of the EIP-4361 message the miner builds with its own address and signs."""

    domain: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: str  # RFC 3339, millisecond precision
    expiration_time: str
    statement: str
    version: str = "1"

    @classmethod
    def issue(cls, fields: siwe.Challenge) -> "Challenge":
        """The frame that carries these fields."""
        return cls(
            domain=fields.domain,
            uri=fields.uri,
            chain_id=fields.chain_id,
            nonce=fields.nonce,
            issued_at=siwe.format_time(fields.issued_at),
            expiration_time=siwe.format_time(fields.expiration_time),
            statement=fields.statement,
            version=fields.version,
        )

    def fields(self) -> siwe.Challenge:
        """The fields as Sign-In with Ethereum reads them; SiweError if a time is not RFC 3339."""
        return siwe.Challenge(
            domain=self.domain,
            uri=self.uri,
            chain_id=self.chain_id,
            nonce=self.nonce,
            issued_at=siwe.parse_time(self.issued_at),
            expiration_time=siwe.parse_time(self.expiration_time),
            statement=self.statement,
            version=self.version,
        )


class Welcome(msgspec.Struct, tag="welcome", tag_field="type"):
    worker: str
    session: str
    heartbeat_s: int
    max_frame_bytes: int
    protocol: int = PROTOCOL_VERSION


class Job(msgspec.Struct, tag="job", tag_field="type"):
    job_id: str
    model: str
    task: Task
    input: dict[str, Any]
    deadline_ms: Annotated[int, msgspec.Meta(ge=1)]  # relative: the time the miner has from receipt


class Cancel(msgspec.Struct, tag="cancel", tag_field="type"):
    job_id: str


class Verdict(msgspec.Struct, tag="verdict", tag_field="type"):
    job_id: str
    agreed: bool
    credit: str  # wei, as a decimal string


class Error(msgspec.Struct, tag="error", tag_field="type"):
    code: str
    message: str


OrchestratorMessage = Challenge | Welcome | Job | Cancel | Verdict | Error

_MINER_DECODER: msgspec.json.Decoder[MinerMessage] = msgspec.json.Decoder(MinerMessage)
_ORCHESTRATOR_DECODER: msgspec.json.Decoder[OrchestratorMessage] = msgspec.json.Decoder(OrchestratorMessage)
_ENCODER = msgspec.json.Encoder()
_FRAME_DEPTH = MAX_DEPTH + 1  # a frame is one object around a document that may itself be MAX_DEPTH deep


class MessageError(ValueError):
    """A frame that is not a valid message; the message says why, for the other side's operator."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id  # set when the frame is a result whose output is not valid JSON


def encode(message: msgspec.Struct) -> str:
    """One frame's text."""
    return _ENCODER.encode(message).decode()


def decode_miner_message(frame: bytes) -> MinerMessage:
    """Decode one frame from a miner. Raises MessageError with a readable reason."""
    _check_depth(frame)
    try:
        return _MINER_DECODER.decode(frame)
    except msgspec.ValidationError as error:
        raise MessageError(_explain(error)) from None
    except msgspec.DecodeError as error:
        raise MessageError(f"not a JSON message: {error}", job_id=_result_job_id(frame)) from None


def decode_orchestrator_message(frame: bytes) -> OrchestratorMessage:
    """Decode one frame from an orchestrator. Raises MessageError with a readable reason."""
    _check_depth(frame)
    try:
        return _ORCHESTRATOR_DECODER.decode(frame)
    except msgspec.ValidationError as error:
        raise MessageError(f"invalid message: {error}") from None
    except msgspec.DecodeError as error:
        raise MessageError(f"not a JSON message: {error}") from None


def _check_depth(frame: bytes) -> None:
    try:
        check_nesting(frame, _FRAME_DEPTH)
    except CanonicalError as error:
        raise MessageError(f"invalid message: {error}") from None


def _explain(error: msgspec.ValidationError) -> str:
    text = str(error)
    if text.startswith("Expected `object`, got `str` - at `$.models["):
        return (
            "invalid message: models must be a list of objects "
            '{"id": model id, "tasks": [chat|completion|embedding, ...], "engine": engine class} '
            "(protocol 2); a list of model ids is protocol 1"
        )
    return f"invalid message: {text}"


def _result_job_id(frame: bytes) -> str | None:
    """The job id of a result whose output is not strict JSON (NaN, say), if the frame has one."""
    try:
        loose = json.loads(frame)
    except ValueError:
        return None
    if isinstance(loose, dict) and loose.get("type") == "result" and isinstance(loose.get("job_id"), str):
        job_id: str = loose["job_id"]
        return job_id
    return None
