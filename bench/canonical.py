"""Canonical JSON speed: parse_strict and digest of a ~1 KB chat output and a 384-float embedding.

python -m bench.canonical
"""

import json
import random
import timeit
from typing import Any

import rfc8785
from rich.console import Console
from rich.table import Table

from krewe.protocol.canonical import canonical_json, digest, parse_strict


def chat_output() -> dict[str, Any]:
    rng = random.Random(7)
    words = ["the", "router", "sends", "each", "request", "to", "three", "miners", "and", "waits", "é", "→"]
    content = " ".join(rng.choice(words) for _ in range(150))
    return {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 42, "completion_tokens": 150},
    }


def embedding_output() -> dict[str, Any]:
    rng = random.Random(7)
    vector = [rng.uniform(-0.2, 0.2) for _ in range(384)]
    return {"data": [{"index": 0, "embedding": vector}], "usage": {"prompt_tokens": 9}}


def per_call_us(function: Any, repeat: int = 5) -> float:
    timer = timeit.Timer(function)
    loops, _ = timer.autorange()
    return min(timer.repeat(repeat, loops)) / loops * 1e6


def measure() -> list[dict[str, Any]]:
    rows = []
    for name, value in (("chat", chat_output()), ("embedding-384", embedding_output())):
        document = json.dumps(value).encode()
        rows.append(
            {
                "output": name,
                "bytes": len(document),
                "parse_strict_us": per_call_us(lambda d=document: parse_strict(d, max_bytes=1 << 20)),
                "canonical_json_us": per_call_us(lambda v=value: canonical_json(v)),
                "digest_us": per_call_us(lambda v=value: digest(v)),
                "rfc8785_us": per_call_us(lambda v=value: rfc8785.dumps(v)),
            }
        )
    return rows


def main() -> None:
    table = Table(title="canonical JSON (µs per call, best of 5)")
    for column in ("output", "bytes", "parse_strict", "canonical_json", "digest", "rfc8785 (reference)"):
        table.add_column(column, justify="right")
    for row in measure():
        table.add_row(
            row["output"],
            str(row["bytes"]),
            f"{row['parse_strict_us']:.1f}",
            f"{row['canonical_json_us']:.1f}",
            f"{row['digest_us']:.1f}",
            f"{row['rfc8785_us']:.1f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
