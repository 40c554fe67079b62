"""Backends answer jobs. Each returns only the deterministic part of an answer (PROTOCOL.md §2),
so honest miners running the same model agree byte for byte, and raises BackendError with a reject
reason when it cannot answer."""

from typing import Any, Protocol

__all__ = ["Backend", "BackendError"]


class BackendError(Exception):
    """The job cannot be answered; `reason` is the reject reason sent to the orchestrator."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # busy | unsupported_model | bad_input | internal


class Backend(Protocol):
    def models(self) -> list[str]: ...

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]: ...

    async def close(self) -> None: ...
