"""`krewe miner run`: build the backend, run the agent until SIGTERM or SIGINT."""

import asyncio
import logging
import signal
import typing

from krewe.keys import SigningKey
from krewe.miner.agent import MinerAgent
from krewe.miner.backends import Backend
from krewe.miner.backends.local import LocalBackend
from krewe.miner.backends.openai_compat import OpenAICompatibleBackend
from krewe.miner.backends.tampered import TamperedBackend
from krewe.miner.config import MinerSettings
from krewe.protocol.messages import Task

__all__ = ["make_backend", "run_miner"]

log = logging.getLogger(__name__)


async def make_backend(settings: MinerSettings) -> Backend:
    if settings.backend == "local":
        return LocalBackend()
    backend = OpenAICompatibleBackend(
        settings.base_url,
        models=settings.models,
        tasks=[task for task in typing.get_args(Task) if task in settings.tasks],
        engine=settings.engine,
        api_key=settings.backend_api_key,
        seed=settings.seed,
        timeout_s=settings.backend_timeout_s,
    )
    await backend.discover_models()
    return backend


async def run_miner(settings: MinerSettings, key: SigningKey, *, tamper: bool = False) -> None:
    backend = await make_backend(settings)
    if tamper:
        backend = TamperedBackend(backend)
    try:
        agent = MinerAgent(settings, key, backend)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        for offer in agent.offers:
            log.info(
                "miner %s serving %s for %s (engine %s) through the %s backend",
                key.address,
                offer.id,
                ",".join(offer.tasks),
                offer.engine,
                settings.backend,
            )
        await agent.run()
    finally:
        await backend.close()
    log.info("stopped")
