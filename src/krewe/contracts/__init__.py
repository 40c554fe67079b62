"""The compiled reward contracts, shipped as package data so that running krewe never needs Node.

`make contracts` writes the artifacts from `contracts/*.sol`; `make test` rebuilds them and fails if
they differ from what is committed.
"""

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

from eth_utils.crypto import keccak

__all__ = ["CONTRACT_NAMES", "Artifact", "error_name", "load_artifact"]

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


@cache
def _error_selectors() -> dict[str, str]:
    selectors = {}
    for name in CONTRACT_NAMES:
        for item in load_artifact(name).abi:
            if item["type"] == "error":
                signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
                selectors["0x" + keccak(text=signature).hex()[:8]] = item["name"]
    return selectors


def error_name(revert_data: str) -> str:
    """The custom error a revert carries (any of the contracts' errors), or the data itself."""
    return _error_selectors().get(str(revert_data)[:10], str(revert_data))
