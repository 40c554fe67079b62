"""The compiled reward contracts, shipped as package data so that running krewe never needs Node.

`make contracts` writes the artifacts from `contracts/*.sol`; `make test` rebuilds them and fails if
they differ from what is committed.
"""

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

__all__ = ["CONTRACT_NAMES", "Artifact", "load_artifact"]

CONTRACT_NAMES = ("KrewToken", "WorkerRegistry", "RewardDistributor")


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    compiler_version: str


@cache
def load_artifact(name: str) -> Artifact:
    """The ABI and bytecode of one of `CONTRACT_NAMES`."""
    if name not in CONTRACT_NAMES:
        raise KeyError(f"unknown contract {name!r}; known: {', '.join(CONTRACT_NAMES)}")
    raw = json.loads(files(__package__).joinpath("artifacts", f"{name}.json").read_text())
    return Artifact(name, raw["abi"], raw["bytecode"], raw["compiler"]["version"])
