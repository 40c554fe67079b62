"""A backend that answers wrong on purpose, for demonstrations: wraps a real backend and changes
every answer slightly, so that consensus visibly rejects the miner running it."""

from typing import Any

from krewe.miner.backends import Backend
from krewe.protocol.messages import ModelOffer

__all__ = ["TamperedBackend"]


class TamperedBackend:
    def __init__(self, honest: Backend) -> None:
        self._honest = honest

    def offers(self) -> list[ModelOffer]:
        return self._honest.offers()  # the honest engine class, so that its answers are compared and lose

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]:
        output = await self._honest.answer(model, task, job_input)
        for item in output.get("data", []):
            item["embedding"] = [x + 1e-3 for x in item["embedding"]]
        for choice in output.get("choices", []):
            if "message" in choice:
                choice["message"]["content"] += " (tampered)"
            if "text" in choice:
                choice["text"] += " (tampered)"
        return output

    async def close(self) -> None:
        await self._honest.close()
