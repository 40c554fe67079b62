"""`krewe miner run`: build the backend, run the agent until SIGTERM or SIGINT."""

import asyncio
import logging
import signal

from krewe.keys import SigningKey
from krewe.miner.agent import MinerAgent
from krewe.miner.backends import Backend
from krewe.miner.backends.local import LocalEmbeddingBackend
from krewe.miner.backends.openai_compat import OpenAICompatibleBackend
from krewe.miner.backends.tampered import TamperedBackend
from krewe.miner.config import MinerSettings

__all__ = ["make_backend", "run_miner"]

log = logging.getLogger(__name__)


async def make_backend(settings: MinerSettings) -> Backend:
    if settings.backend == "local":
        return LocalEmbeddingBackend()
    backend = OpenAICompatibleBackend(
        settings.base_url,
        models=settings.models,
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
    agent = MinerAgent(settings, key, backend)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    log.info(
        "miner %s serving %s through the %s backend",
        key.address,
        ",".join(backend.models()),
        settings.backend,
    )
    try:
        await agent.run()
    finally:
        await backend.close()
    log.info("stopped")
