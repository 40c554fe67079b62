"""What a miner offers at login: the backend's models, filtered by the `models` setting, refused at
start when the orchestrator would refuse them at every login."""

from typing import Any

import pytest

from krewe.keys import SigningKey
from krewe.miner.agent import MinerAgent
from krewe.miner.backends import BackendError
from krewe.miner.config import MinerSettings
from krewe.protocol.messages import ModelOffer

KEY = SigningKey.from_hex("0x" + "11" * 32)


class OfferingBackend:
    """A backend for tests (not a product part) that offers what it is given and answers nothing."""

    def __init__(self, offers: list[ModelOffer]) -> None:
        self._offers = offers

    def offers(self) -> list[ModelOffer]:
        return list(self._offers)

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]:
        raise BackendError("internal", "answers nothing")

    async def close(self) -> None:
        return None


def offer(model: str, engine: str = "e/1") -> ModelOffer:
    return ModelOffer(id=model, tasks=["chat"], engine=engine)


def test_the_models_setting_filters_the_offers() -> None:
    backend = OfferingBackend([offer("a"), offer("b")])
    assert MinerAgent(MinerSettings(), KEY, backend).offers == [offer("a"), offer("b")]
    assert MinerAgent(MinerSettings(models=["b", "c"]), KEY, backend).offers == [offer("b")]


@pytest.mark.parametrize(
    ("models", "offers", "problem"),
    [
        (["c"], [offer("a")], "models: the backend offers none of c"),
        ([], [], "the backend offers no model"),
        ([], [offer("a\nb")], "cannot be offered .*models\\[0\\]\\.id"),
        ([], [offer("a", engine="e" * 201)], "cannot be offered .*models\\[0\\]\\.engine"),
        ([], [offer(f"m{i}") for i in range(65)], "cannot be offered .*length <= 64"),
    ],
)
def test_an_offer_the_orchestrator_would_refuse_stops_the_miner_at_start(
    models: list[str], offers: list[ModelOffer], problem: str
) -> None:
    with pytest.raises(BackendError, match=problem):
        MinerAgent(MinerSettings(models=models), KEY, OfferingBackend(offers))
