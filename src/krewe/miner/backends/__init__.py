"""Backends answer jobs. Each returns only the deterministic part of an answer (PROTOCOL.md §2),
so honest miners running the same model agree byte for byte, and raises BackendError with a reject
reason when it cannot answer.

A backend offers each model with the tasks it answers for it and its engine class: the name of
everything that decides the output bytes (engine and version, weights, numeric path, dtype,
decoding settings), so that the orchestrator only compares answers from the same class.
"""

from typing import Any, Protocol

from krewe.protocol.messages import ModelOffer, RejectReason

__all__ = ["Backend", "BackendError"]


class BackendError(Exception):
    """The job cannot be answered; `reason` is the reject reason sent to the orchestrator."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason


class Backend(Protocol):
    def offers(self) -> list[ModelOffer]: ...

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...
