"""UsedNonces: the login nonces already consumed, so that a signed login counts once.

A nonce is fresh for each connection and must be used before its challenge expires; a login
that verifies records its nonce here, and a second login with the same nonce is refused (4401),
on this instance or, where instances share their state, on any other
(`krewe.orchestrator.shared.RedisNonces`). A nonce is remembered `ttl_s`, a little longer than a
challenge is valid (`nonce_ttl_s`), after which its challenge has expired and refuses it anyway.
"""

import collections
import math
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["NONCE_TTL_MARGIN_S", "MemoryNonces", "UsedNonces", "nonce_ttl_s"]

# Beyond the challenge's validity: covers the wall clocks of instances that disagree by up to this.
NONCE_TTL_MARGIN_S = 60


def nonce_ttl_s(auth_timeout_s: float) -> int:
    """How long a used nonce is remembered, for challenges valid `auth_timeout_s`."""
    return math.ceil(auth_timeout_s) + NONCE_TTL_MARGIN_S


class UsedNonces(Protocol):
    async def use(self, nonce: str) -> bool:
        """True the first time `nonce` is used, False after (within its time to live)."""


class MemoryNonces:
    """The nonces used on this instance; every nonce lives equally long, so they expire in order."""

    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._expiring: collections.deque[tuple[float, str]] = collections.deque()
        self._used: set[str] = set()

    async def use(self, nonce: str) -> bool:
        now = self._clock()
        while self._expiring and self._expiring[0][0] <= now:
            self._used.discard(self._expiring.popleft()[1])
        if nonce in self._used:
            return False
        self._used.add(nonce)
        self._expiring.append((now + self._ttl_s, nonce))
        return True
