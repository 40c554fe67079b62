"""The reward ledger on each of its stores, for one suite that holds both to the same rules:
RewardLedger on SQLite, and RedisLedger on a real redis-server."""

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from krewe.orchestrator.ledger import RewardLedger, SQLiteLedgerStore
from krewe.orchestrator.redis_ledger import RedisLedger

Ledger = RewardLedger | RedisLedger

_prefixes = itertools.count()


@dataclass
class LedgerOpener:
    """Opens a ledger on one store, again after a close (or without one, as after a crash) on the
    same state. `index_every` only concerns SQLite: Redis keeps no credits in memory."""

    store: str  # "sqlite" or "redis"
    path: Path
    redis_url: str = ""
    index_every: int = 128
    prefix: str = ""

    def __post_init__(self) -> None:
        # a fresh key prefix per opener: a test or a state machine run starts on an empty ledger
        self.prefix = f"test:{next(_prefixes)}:ledger:"

    def open(self, clock: Callable[[], float] = time.time) -> Ledger:
        if self.store == "sqlite":
            return RewardLedger(SQLiteLedgerStore(self.path), clock=clock, index_every=self.index_every)
        return RedisLedger(redis.Redis.from_url(self.redis_url), prefix=self.prefix, clock=clock)
