"""What the built-in models share: the engine build they run on, named exactly.

Exact agreement needs the same machine code, not only the same engine version: the same sources
built by another compiler, or for another instruction set, give other floats (docs/determinism.md
measures it). So an engine class names the build by a digest of the engine's native libraries as
installed, next to its version, and a build from source is a class of its own.
"""

import hashlib
from importlib import metadata
from pathlib import Path

from krewe.miner.backends import BackendError

__all__ = ["engine_build"]

NATIVE_SUFFIXES = (".so", ".dylib", ".dll", ".pyd")


def engine_build(distribution: str, version: str) -> str:
    """`<distribution>-<version>+<first 8 hex of the sha256 of its native libraries>`.

    BackendError when the distribution is missing or another version than the pinned one.
    """
    try:
        installed = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise BackendError(
            "internal", f"the local backend needs {distribution}: pip install 'krewe[local]'"
        ) from None
    if installed.version != version:
        raise BackendError(
            "internal", f"the local backend needs {distribution} {version}, not {installed.version}"
        )
    libraries = sorted(
        (str(file), Path(file.locate()).read_bytes())
        for file in installed.files or []
        if file.name.endswith(NATIVE_SUFFIXES) or ".so." in file.name
    )
    digest = hashlib.sha256()
    for name, content in libraries:
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    return f"{distribution}-{version}+{digest.hexdigest()[:8]}"
