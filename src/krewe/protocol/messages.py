"""The WebSocket messages of PROTOCOL.md §1, shared by the orchestrator and the miner agent.

Miner -> orchestrator messages are decoded with msgspec into typed structs (unknown fields are
ignored, wrong types are errors). A result's `output` stays raw bytes at this step: it is read
with `parse_strict` afterwards, so that output with no canonical form counts as an invalid result
for its job instead of a malformed message.
"""

import json
from typing import Any, Literal

import msgspec
import orjson

__all__ = [
    "Auth",
    "CloseCode",
    "ErrorCode",
    "MessageError",
    "MinerMessage",
    "Reject",
    "Result",
    "Status",
    "decode_miner_message",
    "encode",
]

TASKS = ("chat", "completion", "embedding")


class CloseCode:
    NORMAL = 1000
    GOING_AWAY = 1001  # orchestrator shutting down
    MESSAGE_TOO_BIG = 1009
    TRY_AGAIN_LATER = 1013  # the registry could not be read
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


class Auth(msgspec.Struct, tag="auth", tag_field="type"):
    address: str
    signature: str
    models: list[str]
    max_concurrency: int
    agent: str = ""


class Result(msgspec.Struct, tag="result", tag_field="type"):
    job_id: str
    output: msgspec.Raw


class Reject(msgspec.Struct, tag="reject", tag_field="type"):
    job_id: str
    reason: Literal["busy", "unsupported_model", "bad_input", "internal"]


class Status(msgspec.Struct, tag="status", tag_field="type"):
    models: list[str]
    max_concurrency: int


MinerMessage = Auth | Result | Reject | Status

_DECODER: msgspec.json.Decoder[MinerMessage] = msgspec.json.Decoder(MinerMessage)


class MessageError(ValueError):
    """A frame that is not a valid miner message; the message says why, for the miner's operator."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id  # set when the frame is a result whose output is not valid JSON


def decode_miner_message(frame: bytes) -> MinerMessage:
    """Decode one frame from a miner. Raises MessageError with a readable reason."""
    try:
        return _DECODER.decode(frame)
    except msgspec.ValidationError as error:
        raise MessageError(f"invalid message: {error}") from None
    except msgspec.DecodeError as error:
        raise MessageError(f"not a JSON message: {error}", job_id=_result_job_id(frame)) from None


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


def encode(message: dict[str, Any]) -> str:
    """One orchestrator -> miner frame (text)."""
    return orjson.dumps(message).decode()
