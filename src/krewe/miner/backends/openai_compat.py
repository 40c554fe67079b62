"""The `openai` backend: any OpenAI-compatible server (vLLM, llama.cpp's server, Ollama).

Decoding is forced deterministic (temperature 0, a fixed seed, one choice, no streaming), and only
the deterministic part of the answer goes back (PROTOCOL.md §2): ids, timestamps, fingerprints and
log-probabilities are dropped. Backend failures map to reject reasons: 404 -> unsupported_model,
400/422 -> bad_input, 429/503 and timeouts -> busy, anything else -> internal.

The API reports nothing that names the engine behind it (its version, weights, hardware), so the
engine class of its models is the miner's `engine` setting, and by default the server's host:
operators who want their answers compared only with identical engines set it.
"""

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from krewe.miner.backends import BackendError
from krewe.protocol.messages import ModelOffer, RejectReason, Task

__all__ = ["DEFAULT_TASKS", "OpenAICompatibleBackend", "default_engine"]

ENDPOINTS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}
DROPPED = ("stream", "stream_options", "n", "user", "logprobs", "top_logprobs", "echo", "best_of")
DEFAULT_TASKS: tuple[Task, ...] = ("chat", "completion")


def default_engine(base_url: str) -> str:
    """`openai-compatible/<host[:port]>`: never the URL's user or password, which may be secret."""
    url = urlsplit(base_url)
    host = url.hostname or ""
    return f"openai-compatible/{host}:{url.port}" if url.port else f"openai-compatible/{host}"


class OpenAICompatibleBackend:
    def __init__(
        self,
        base_url: str,
        *,
        models: list[str],
        tasks: Sequence[Task] = DEFAULT_TASKS,
        engine: str = "",
        api_key: str = "",
        seed: int = 0,
        timeout_s: float,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._models = list(models)
        self._tasks = list(tasks)
        self._engine = engine or default_engine(base_url)
        self._seed = seed
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s))

    def offers(self) -> list[ModelOffer]:
        return [ModelOffer(id=model, tasks=list(self._tasks), engine=self._engine) for model in self._models]

    async def discover_models(self) -> list[ModelOffer]:
        """Offer the models the server lists at GET /models, when none are configured."""
        if not self._models:
            body = await self._request("GET", "/models", None)
            self._models = sorted(
                str(item["id"]) for item in body.get("data", []) if isinstance(item, dict) and "id" in item
            )
        return self.offers()

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]:
        if task not in ENDPOINTS:
            raise BackendError("bad_input", f"unknown task {task!r}")
        request = {key: value for key, value in job_input.items() if key not in DROPPED}
        request["model"] = model
        if task != "embedding":
            request |= {"temperature": 0, "seed": self._seed, "n": 1, "stream": False}
        else:
            request["encoding_format"] = "float"
        body = await self._request("POST", ENDPOINTS[task], request)
        try:
            return _deterministic(task, body)
        except (KeyError, TypeError, IndexError) as error:
            raise BackendError("internal", f"the backend's answer is missing {error}") from None

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        try:
            async with self._http.request(method, self._base_url + path, json=body) as response:
                if response.status >= 400:
                    text = (await response.text())[:200]
                    raise BackendError(
                        _reason(response.status), f"backend answered {response.status}: {text}"
                    )
                answer: dict[str, Any] = await response.json(content_type=None)
                return answer
        except TimeoutError:
            raise BackendError("busy", "the backend did not answer in time") from None
        except aiohttp.ClientError as error:
            raise BackendError("internal", f"backend unreachable: {error}") from None
        except ValueError as error:
            raise BackendError("internal", f"the backend's answer is not JSON: {error}") from None

    async def close(self) -> None:
        await self._http.close()


def _reason(status: int) -> RejectReason:
    if status == 404:
        return "unsupported_model"
    if status in (400, 422):
        return "bad_input"
    if status in (429, 503):
        return "busy"
    return "internal"


def _usage(body: dict[str, Any], *names: str) -> dict[str, int]:
    usage = body.get("usage") or {}
    return {name: int(usage.get(name, 0)) for name in names}


def _deterministic(task: str, body: dict[str, Any]) -> dict[str, Any]:
    if task == "chat":
        choices = [
            {
                "index": choice["index"],
                "message": {"role": "assistant", "content": choice["message"].get("content") or ""},
                "finish_reason": choice["finish_reason"],
            }
            for choice in body["choices"]
        ]
        return {"choices": choices, "usage": _usage(body, "prompt_tokens", "completion_tokens")}
    if task == "completion":
        choices = [
            {"index": choice["index"], "text": choice["text"], "finish_reason": choice["finish_reason"]}
            for choice in body["choices"]
        ]
        return {"choices": choices, "usage": _usage(body, "prompt_tokens", "completion_tokens")}
    data = [
        {"index": item["index"], "embedding": [float(x) for x in item["embedding"]]} for item in body["data"]
    ]
    return {"data": data, "usage": _usage(body, "prompt_tokens")}
