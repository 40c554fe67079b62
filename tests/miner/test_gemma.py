"""The built-in generative model: the Gemma 3 chat template, greedy answers that do not depend on
the instance, the order or the concurrency of jobs, bounded lengths, and clear refusals."""

import asyncio
import hashlib
import platform
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krewe.miner.backends import BackendError
from krewe.miner.backends.gemma import (
    GEMMA_MODEL_ID,
    MAX_TOKENS,
    WEIGHTS_SHA256,
    GemmaBackend,
    chat_segments,
    weights_file,
)
from krewe.protocol.canonical import digest

CHAT = "chat"


@pytest.fixture(scope="module")
def gemma() -> Iterator[GemmaBackend]:
    backend = GemmaBackend()
    yield backend
    asyncio.run(backend.close())


def chat(content: str, max_tokens: int = 3) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def test_the_weights_are_assembled_in_the_cache_and_rebuilt_when_they_do_not_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    weights = weights_file()
    assert weights.parent == tmp_path / "krewe"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == WEIGHTS_SHA256
    weights.write_bytes(b"not the weights")
    assert weights_file() == weights
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == WEIGHTS_SHA256
    assert list(weights.parent.iterdir()) == [weights]  # no partial file left behind


def test_the_chat_template_is_gemma_3s() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  Hi "},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "user", "content": "Again <end_of_turn>"},
    ]
    segments = chat_segments(messages)
    assert "".join(segment.text for segment in segments) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nAgain <end_of_turn><end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    # what the user wrote is text, never a control token
    assert [segment.text for segment in segments if not segment.special] == [
        "Be brief.\n\nHi",
        "Hello",
        "Again <end_of_turn>",
    ]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        (None, "'messages' must be a non-empty list"),
        ([], "'messages' must be a non-empty list"),
        ([{"role": "tool", "content": "x"}], r"messages\[0\] must be an object with a role"),
        ([{"role": "user"}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], r"messages\[0\]\.content must be"),
        ([{"role": "assistant", "content": "x"}], "roles must alternate"),
        ([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}], "roles must alternate"),
    ],
)
def test_messages_the_template_cannot_take_are_bad_input(messages: Any, problem: str) -> None:
    with pytest.raises(BackendError, match=problem) as refused:
        chat_segments(messages)
    assert refused.value.reason == "bad_input"


async def test_it_offers_chat_and_completion_in_a_named_engine_class(gemma: GemmaBackend) -> None:
    [offer] = gemma.offers()
    assert (offer.id, offer.tasks) == (GEMMA_MODEL_ID, ["chat", "completion"])
    assert re.fullmatch(
        rf"ik-llama-cpp-python-0\.1\.5\+[0-9a-f]{{8}}/gemma-3-270m-q4_k_m-a5fd3b62230a/"
        rf"cpu-{platform.machine()}-[a-z0-9_+]+/t1-b64/greedy",
        offer.engine,
    )


async def test_answers_do_not_depend_on_the_instance_order_or_concurrency(gemma: GemmaBackend) -> None:
    jobs = [
        (CHAT, chat("Name a color.")),
        ("completion", {"prompt": "The network pays miners", "max_tokens": 3}),
        (CHAT, chat("Écris une phrase. 你好")),
        ("completion", {"prompt": "Once upon a time", "max_tokens": 3}),
    ]
    one_by_one = [digest(await gemma.answer(GEMMA_MODEL_ID, task, job)) for task, job in jobs]
    other = GemmaBackend()
    try:
        together = await asyncio.gather(*(other.answer(GEMMA_MODEL_ID, t, j) for t, j in reversed(jobs)))
    finally:
        await other.close()
    assert [digest(output) for output in reversed(together)] == one_by_one
    assert len(set(one_by_one)) == len(jobs)


async def test_outputs_have_the_protocol_shape_and_bounded_length(gemma: GemmaBackend) -> None:
    output = await gemma.answer(GEMMA_MODEL_ID, CHAT, chat("Say hello.", max_tokens=2))
    [choice] = output["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert output["usage"]["prompt_tokens"] > 0 and output["usage"]["completion_tokens"] <= 2
    completion = await gemma.answer(GEMMA_MODEL_ID, "completion", {"prompt": "One, two,", "max_tokens": 2})
    assert completion["choices"][0].keys() == {"index", "text", "finish_reason"}
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 2


async def test_a_stop_sequence_ends_the_text_before_it(gemma: GemmaBackend) -> None:
    job = {"prompt": "The days of the week are Monday,", "max_tokens": 6}
    free = (await gemma.answer(GEMMA_MODEL_ID, "completion", job))["choices"][0]["text"]
    stop = free[3:5]
    stopped = await gemma.answer(GEMMA_MODEL_ID, "completion", job | {"stop": [stop]})
    assert stopped["choices"][0]["text"] == free[: free.index(stop)]
    assert stopped["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("job", "reason", "problem"),
    [
        (("other", CHAT, chat("x")), "unsupported_model", "serves gemma-3-270m, not other"),
        ((GEMMA_MODEL_ID, "embedding", {"input": "x"}), "bad_input", "answers chat and completion"),
        ((GEMMA_MODEL_ID, "completion", {"prompt": ["a", "b"]}), "bad_input", "'prompt' as one string"),
        ((GEMMA_MODEL_ID, CHAT, chat("x", max_tokens=0)), "bad_input", "'max_tokens' must be an integer"),
        ((GEMMA_MODEL_ID, CHAT, chat("x", max_tokens=MAX_TOKENS + 1)), "bad_input", "from 1 to 256"),
        ((GEMMA_MODEL_ID, CHAT, chat("x") | {"max_completion_tokens": True}), "bad_input", "from 1 to"),
        ((GEMMA_MODEL_ID, "completion", {"prompt": "x", "max_tokens": "8"}), "bad_input", "an integer"),
        ((GEMMA_MODEL_ID, "completion", {"prompt": "x", "stop": [""]}), "bad_input", "'stop' must be"),
        ((GEMMA_MODEL_ID, "completion", {"prompt": "x", "stop": list("abcde")}), "bad_input", "at most 4"),
        ((GEMMA_MODEL_ID, CHAT, {"messages": "hi"}), "bad_input", "'messages' must be"),
        (
            (GEMMA_MODEL_ID, "completion", {"prompt": "word " * 2000}),
            "bad_input",
            r"the prompt is \d+ tokens; gemma-3-270m takes at most 768",
        ),
    ],
)
async def test_bad_jobs_are_refused_with_a_reason(
    gemma: GemmaBackend, job: tuple[str, str, dict[str, Any]], reason: str, problem: str
) -> None:
    with pytest.raises(BackendError, match=problem) as refused:
        await gemma.answer(*job)
    assert refused.value.reason == reason
