"""RedisLedger: the reward ledger of `ledger.py`, with all of its state in a Redis that several
orchestrator instances share.

The interface and the rules are RewardLedger's (credited = paid + pending + in flight; credits
idempotent per (job, worker); batches OPEN -> PAID or OPEN -> REVERTED; statements newest first),
but nothing is kept in memory: every instance reads and writes the same keys, and each operation
is one Lua script, which Redis runs atomically, so two instances never see half an operation.

Amounts are decimal strings everywhere in Redis. Lua numbers are doubles, exact only below 2^53,
and wei amounts exceed that, so the scripts never turn a whole amount into a number: `add` adds
two decimal strings seven digits at a time, and anything else is summed in Python's integers.

Keys, under a prefix (`krewe:ledger:` by default):

    credits               hash  len(worker):worker job_id -> amount; makes crediting idempotent
    pending               hash  worker -> pending amount
    totals                hash  credited, paid (amounts); last_at (ms of the latest credit or payout)
    next_batch            counter of batch ids
    batch:<id>            hash  state, workers and amounts (space-separated, in batch order), send
    open                  zset  ids of the open batches (score: id)
    paid_by_worker        hash  worker -> paid amount
    statement:<worker>    zset  the worker's credits, "<at_ms, 16 digits><job_id>\\0<amount>",
                                all with score 0, so that lexical order is (at_ms, job_id) order
    payouts:<worker>      zset  "<batch id> <amount> <at_ms>" scored by batch id
    lease, lease:token    the settlement lease and its fencing-token counter (lease.py)

Settlement's mutations (snapshot, record_send, commit, revert) are fenced: they carry the
fencing token of the lease this instance holds (`hold`), and the script refuses, naming
"fenced", when the lease key no longer holds that token. A ledger that holds no token may settle
only while nobody holds the lease (one instance, or tests). Credits need no token: any instance
may credit at any time.

A script whose reply was lost may run again (the client retries on a broken connection), and
every one is safe to repeat: a credit made once is not made twice (the repeat reports it as not
new), a repeated snapshot finds nothing pending (the first one's batches are open, and settled from
`open_batches` in the next window), a repeated commit or revert finds the batch no longer open.

Durability comes from the Redis server: `check_durability` refuses one that does not write its
append-only file with `appendfsync always`, and with `min_replicas` every write waits (WAIT) until
that many replicas have it, or raises.
"""

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import redis
from redis.commands.core import Script

from krewe.orchestrator.ledger import (
    Batch,
    BatchState,
    Credit,
    LedgerError,
    LedgerTotals,
    SendRecord,
    Statement,
    StatementCredit,
    StatementCursor,
    StatementPayout,
    WorkerTotals,
    statement_page,
)
from krewe.settings import SettingsError

__all__ = ["DEFAULT_PREFIX", "RedisLedger", "check_durability"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "krewe:ledger:"
# Scripts report a broken ledger rule as an error reply starting with this word.
_REFUSED = "LEDGER"

_COMMON = """
local p = ARGV[1]

-- a + b, both non-negative integers in decimal: exact whatever their size. Seven digits at a
-- time: a double holds the sum of two such pieces exactly.
local function add(a, b)
  local pieces, carry = {}, 0
  local i, j = #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local sum = carry
    if i > 0 then sum = sum + tonumber(string.sub(a, math.max(1, i - 6), i)) end
    if j > 0 then sum = sum + tonumber(string.sub(b, math.max(1, j - 6), j)) end
    i, j = i - 7, j - 7
    if sum >= 10000000 then carry = 1; sum = sum - 10000000 else carry = 0 end
    pieces[#pieces + 1] = sum
  end
  local digits = {string.format('%d', pieces[#pieces])}
  for k = #pieces - 1, 1, -1 do digits[#digits + 1] = string.format('%07d', pieces[k]) end
  return table.concat(digits)
end

local function add_to(key, field, amount)
  redis.call('HSET', key, field, add(redis.call('HGET', key, field) or '0', amount))
end

-- the given time in ms, or just after the latest time used, whichever is later
local function now(given)
  local at = math.max(given, tonumber(redis.call('HGET', p .. 'totals', 'last_at') or '0') + 1)
  redis.call('HSET', p .. 'totals', 'last_at', string.format('%.0f', at))
  return at
end

-- nil when the lease holds `token` ('' for none: then nobody may hold it), else why not
local function fenced(token)
  local holder = redis.call('GET', p .. 'lease')
  if token == '' then
    if holder then return 'fenced: the settlement lease is held (' .. holder .. ')' end
  elseif not holder then
    return 'fenced: fencing token ' .. token .. ' no longer holds the settlement lease (it expired)'
  elseif string.match(holder, '^(%d+) ') ~= token then
    return 'fenced: fencing token ' .. token .. ' no longer holds the settlement lease (' .. holder .. ')'
  end
  return nil
end

local function open_batch(id, token)
  local refusal = fenced(token)
  if refusal then return nil, refusal end
  if redis.call('HGET', p .. 'batch:' .. id, 'state') ~= 'open' then
    return nil, 'batch ' .. id .. ' is not open (unknown, or already paid or reverted)'
  end
  return p .. 'batch:' .. id, nil
end

local function words(text)
  local found = {}
  for word in string.gmatch(text, '%S+') do found[#found + 1] = word end
  return found
end
"""

# ARGV: prefix, at_ms, then job_id, worker, amount for each credit. Returns the time used, then
# 1 or 0 for each credit (new or not).
_CREDIT = """
local at = now(tonumber(ARGV[2]))
local stamp = string.format('%016.0f', at)
local credited = redis.call('HGET', p .. 'totals', 'credited') or '0'
local added = {at}
for i = 3, #ARGV, 3 do
  local job, worker, amount = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HSETNX', p .. 'credits', #worker .. ':' .. worker .. job, amount) == 1 then
    add_to(p .. 'pending', worker, amount)
    credited = add(credited, amount)
    redis.call('ZADD', p .. 'statement:' .. worker, 0, stamp .. job .. '\\0' .. amount)
    added[#added + 1] = 1
  else
    added[#added + 1] = 0
  end
end
redis.call('HSET', p .. 'totals', 'credited', credited)
return added
"""

# ARGV: prefix, token, max_batch. Returns id, workers, amounts for each new batch.
_SNAPSHOT = """
local refusal = fenced(ARGV[2])
if refusal then return redis.error_reply('LEDGER ' .. refusal) end
local max_batch = tonumber(ARGV[3])
local flat = redis.call('HGETALL', p .. 'pending')
local workers, owed = {}, {}
for i = 1, #flat, 2 do
  workers[#workers + 1] = flat[i]
  owed[flat[i]] = flat[i + 1]
end
-- byte order, as Python orders str; Lua's < would follow the server's locale
table.sort(workers, function(a, b)
  for k = 1, math.min(#a, #b) do
    local x, y = string.byte(a, k), string.byte(b, k)
    if x ~= y then return x < y end
  end
  return #a < #b
end)
local batches = {}
for start = 1, #workers, max_batch do
  local chunk, amounts = {}, {}
  for k = start, math.min(start + max_batch - 1, #workers) do
    chunk[#chunk + 1] = workers[k]
    amounts[#amounts + 1] = owed[workers[k]]
  end
  local id = redis.call('INCR', p .. 'next_batch')
  local joined, amounts_joined = table.concat(chunk, ' '), table.concat(amounts, ' ')
  redis.call('HSET', p .. 'batch:' .. id, 'state', 'open', 'workers', joined, 'amounts', amounts_joined)
  redis.call('ZADD', p .. 'open', id, id)
  batches[#batches + 1] = id
  batches[#batches + 1] = joined
  batches[#batches + 1] = amounts_joined
end
redis.call('DEL', p .. 'pending')
return batches
"""

# ARGV: prefix, token, batch id, 'paid' or 'reverted', at_ms. Returns the batch's workers,
# amounts and send record.
_SETTLE = """
local id, state = ARGV[3], ARGV[4]
local key, refusal = open_batch(id, ARGV[2])
if refusal then return redis.error_reply('LEDGER ' .. refusal) end
local workers = words(redis.call('HGET', key, 'workers'))
local amounts = words(redis.call('HGET', key, 'amounts'))
if state == 'paid' then
  local at = string.format('%.0f', now(tonumber(ARGV[5])))
  local paid = redis.call('HGET', p .. 'totals', 'paid') or '0'
  for k = 1, #workers do
    paid = add(paid, amounts[k])
    add_to(p .. 'paid_by_worker', workers[k], amounts[k])
    redis.call('ZADD', p .. 'payouts:' .. workers[k], id, id .. ' ' .. amounts[k] .. ' ' .. at)
  end
  redis.call('HSET', p .. 'totals', 'paid', paid)
else
  for k = 1, #workers do add_to(p .. 'pending', workers[k], amounts[k]) end
end
redis.call('HSET', key, 'state', state)
redis.call('ZREM', p .. 'open', id)
return redis.call('HMGET', key, 'workers', 'amounts', 'send')
"""

# ARGV: prefix, token, batch id, send record as JSON. Returns the batch's workers and amounts.
_RECORD_SEND = """
local key, refusal = open_batch(ARGV[3], ARGV[2])
if refusal then return redis.error_reply('LEDGER ' .. refusal) end
redis.call('HSET', key, 'send', ARGV[4])
return redis.call('HMGET', key, 'workers', 'amounts')
"""

# ARGV: prefix, then workers. Returns credited, paid, the number of open batches, the number of
# workers with credits pending; the open batches (id, workers, amounts, send or ''); every pending
# worker and amount; then paid and pending for each worker asked about: one consistent view.
_VIEW = """
local totals = redis.call('HMGET', p .. 'totals', 'credited', 'paid')
local ids = redis.call('ZRANGE', p .. 'open', 0, -1)
local pending = redis.call('HGETALL', p .. 'pending')
local found = {totals[1] or '0', totals[2] or '0', #ids, #pending / 2}
for _, id in ipairs(ids) do
  local batch = redis.call('HMGET', p .. 'batch:' .. id, 'workers', 'amounts', 'send')
  found[#found + 1] = id
  found[#found + 1] = batch[1]
  found[#found + 1] = batch[2]
  found[#found + 1] = batch[3] or ''
end
for _, value in ipairs(pending) do found[#found + 1] = value end
for i = 2, #ARGV do
  found[#found + 1] = redis.call('HGET', p .. 'paid_by_worker', ARGV[i]) or '0'
  found[#found + 1] = redis.call('HGET', p .. 'pending', ARGV[i]) or '0'
end
return found
"""


def check_durability(client: redis.Redis, *, allow_volatile: bool) -> None:
    """Refuse a Redis that would lose acknowledged credits in a crash: the ledger needs its
    append-only file written and fsynced on every write (`appendonly yes`, `appendfsync always`)."""
    try:
        appendonly = client.config_get("appendonly").get("appendonly")
        appendfsync = client.config_get("appendfsync").get("appendfsync")
    except redis.ResponseError as error:  # managed servers often rename or forbid CONFIG
        if allow_volatile:
            log.warning("cannot read the Redis durability settings (%s); redis_allow_volatile is set", error)
            return
        raise SettingsError(
            f"store: cannot read the Redis server's appendonly/appendfsync settings ({error}); the "
            "ledger needs appendonly yes and appendfsync always. Set redis_allow_volatile only if "
            "the server is known to have them or losing recent credits in a crash is acceptable"
        ) from error
    if (appendonly, appendfsync) == ("yes", "always"):
        return
    found = f"appendonly {appendonly}, appendfsync {appendfsync}"
    if allow_volatile:
        log.warning("the Redis store has %s: a crash of Redis may lose acknowledged credits", found)
        return
    raise SettingsError(
        f"store: the Redis server has {found}; the ledger needs appendonly yes and appendfsync "
        "always, or a crash of Redis loses acknowledged credits (CONFIG SET appendonly yes, "
        "CONFIG SET appendfsync always, or set redis_allow_volatile to accept that)"
    )


class RedisLedger:
    """The reward ledger in a shared Redis; see the module's docstring for its keys."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        clock: Callable[[], float] = time.time,
        min_replicas: int = 0,
        replica_timeout_ms: int = 1_000,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._clock = clock  # seconds since the epoch: when credits and payouts happened
        self._min_replicas = min_replicas
        self._replica_timeout_ms = replica_timeout_ms
        self._token: int | None = None
        self._credit = self._script(_CREDIT)
        self._snapshot = self._script(_SNAPSHOT)
        self._settle = self._script(_SETTLE)
        self._record_send = self._script(_RECORD_SEND)
        self._view = self._script(_VIEW)

    def __repr__(self) -> str:
        return f"RedisLedger(prefix={self._prefix!r})"

    def _script(self, body: str) -> Script:
        return self._client.register_script(_COMMON + body)

    def _run(self, script: Script, *arguments: str | int, write: bool = True) -> Any:
        arguments = (self._prefix, *arguments)
        try:
            if not (write and self._min_replicas):
                return script(args=arguments)
            # WAIT counts the replicas that have this connection's writes: sent on the script's
            # connection, in one pipeline
            with self._client.pipeline(transaction=False) as pipeline:
                script(args=arguments, client=pipeline)
                pipeline.wait(self._min_replicas, self._replica_timeout_ms)
                result, acknowledged = pipeline.execute(raise_on_error=False)
            for reply in (result, acknowledged):
                if isinstance(reply, redis.ResponseError):
                    raise reply
        except redis.ResponseError as error:
            message = str(error)
            if message.startswith(_REFUSED + " "):
                raise LedgerError(message.removeprefix(_REFUSED + " ")) from None
            raise
        if acknowledged < self._min_replicas:
            raise LedgerError(
                f"only {acknowledged} of the {self._min_replicas} replicas (redis_min_replicas) "
                f"acknowledged a ledger write within {self._replica_timeout_ms} ms"
            )
        return result

    def hold(self, token: int | None) -> None:
        """Settle under this fencing token from now on (None: only while nobody holds the lease)."""
        self._token = token

    @property
    def _fence(self) -> str:
        return "" if self._token is None else str(self._token)

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    def credit(self, worker: str, amount: int, job_id: str) -> bool:
        """Credit `amount` wei to `worker` for `job_id`. False if that credit already existed."""
        return self.credit_many([Credit(job_id, worker, amount)])[0]

    def credit_many(self, credits: Iterable[Credit]) -> list[bool]:
        """Credit several in one atomic script; True for each new one."""
        batch = list(credits)
        if not batch:
            return []
        arguments = [
            str(field) for credit in batch for field in (credit.job_id, credit.worker, credit.amount)
        ]
        _, *added = self._run(self._credit, self._now_ms(), *arguments)
        return [flag == 1 for flag in added]

    def snapshot(self, max_batch: int) -> list[Batch]:
        """Freeze every pending credit into batches of at most `max_batch` workers."""
        if max_batch < 1:
            raise LedgerError(f"max_batch must be at least 1, not {max_batch}")
        flat = self._run(self._snapshot, self._fence, max_batch)
        return [_batch(int(flat[i]), flat[i + 1], flat[i + 2], None) for i in range(0, len(flat), 3)]

    def commit(self, batch_id: int) -> Batch:
        """The batch was paid on chain."""
        return self._settled(batch_id, BatchState.PAID)

    def revert(self, batch_id: int) -> Batch:
        """The batch surely was not paid: its credits go back to pending."""
        return self._settled(batch_id, BatchState.REVERTED)

    def record_send(self, batch_id: int, record: SendRecord) -> Batch:
        """Durably attach what settlement signed for an open batch, before it is broadcast."""
        workers, amounts = self._run(self._record_send, self._fence, batch_id, record.to_json())
        return replace(_batch(batch_id, workers, amounts, None), send=record)

    def _settled(self, batch_id: int, state: BatchState) -> Batch:
        workers, amounts, send = self._run(self._settle, self._fence, batch_id, state.value, self._now_ms())
        return replace(_batch(batch_id, workers, amounts, send), state=state)

    def _read(self, workers: Sequence[str] = ()) -> "_View":
        found = self._run(self._view, *workers, write=False)
        open_count, pending_count = int(found[2]), int(found[3])
        rest = found[4:]
        batches = [
            _batch(int(rest[i]), rest[i + 1], rest[i + 2], rest[i + 3] or None)
            for i in range(0, 4 * open_count, 4)
        ]
        owed = rest[4 * open_count : 4 * open_count + 2 * pending_count]
        accounts = rest[4 * open_count + 2 * pending_count :]
        return _View(
            int(found[0]),
            int(found[1]),
            batches,
            {owed[i].decode(): int(owed[i + 1]) for i in range(0, len(owed), 2)},
            [(int(accounts[i]), int(accounts[i + 1])) for i in range(0, len(accounts), 2)],
        )

    def open_batches(self) -> list[Batch]:
        """Batches frozen but neither paid nor reverted, oldest first."""
        return self._read().open_batches

    def pending(self) -> Mapping[str, int]:
        return self._read().pending

    def totals(self) -> LedgerTotals:
        view = self._read()
        in_flight = sum(batch.total for batch in view.open_batches)
        return LedgerTotals(view.credited, view.paid, sum(view.pending.values()), in_flight)

    def earnings(self, workers: Iterable[str]) -> dict[str, WorkerTotals]:
        """Each worker's account: what it was credited is what was paid, is pending, and is in
        flight (every credit is in exactly one of the three)."""
        chosen = list(workers)
        view = self._read(chosen)
        in_flight: dict[str, int] = {}
        for batch in view.open_batches:
            for worker, amount in zip(batch.workers, batch.amounts, strict=True):
                in_flight[worker] = in_flight.get(worker, 0) + amount
        earned = {}
        for worker, (paid, pending) in zip(chosen, view.accounts, strict=True):
            flying = in_flight.get(worker, 0)
            earned[worker] = WorkerTotals(paid + pending + flying, paid, pending, flying)
        return earned

    def statement(self, worker: str, cursor: StatementCursor, limit: int) -> Statement:
        """One page of the worker's statement: its account, and up to `limit` credits and `limit`
        payouts from `cursor` on, newest first."""
        if limit < 1:
            raise LedgerError(f"a statement page holds at least one entry, not {limit}")
        credits = [] if cursor.credits_done else self._credits_of(worker, cursor.credits_before, limit + 1)
        payouts = [] if cursor.payouts_done else self._payouts_of(worker, cursor.payouts_before, limit + 1)
        totals = self.earnings([worker])[worker]
        return statement_page(worker, totals, credits, payouts, cursor=cursor, limit=limit)

    def _credits_of(self, worker: str, before: tuple[int, str] | None, limit: int) -> list[StatementCredit]:
        newest = b"+" if before is None else b"(" + _stamp(before[0]) + before[1].encode()
        members = cast(
            "list[bytes]",
            self._client.zrevrangebylex(self._prefix + "statement:" + worker, newest, b"-", 0, limit),
        )
        credits = []
        for member in members:
            key, amount = member.rsplit(b"\0", 1)
            credits.append(StatementCredit(key[16:].decode(), int(amount), int(key[:16])))
        return credits

    def _payouts_of(self, worker: str, before: int | None, limit: int) -> list[StatementPayout]:
        newest = "+inf" if before is None else f"({before}"
        members = cast(
            "list[bytes]",
            self._client.zrevrangebyscore(self._prefix + "payouts:" + worker, newest, "-inf", 0, limit),
        )
        payouts = []
        for member in members:
            batch_id, amount, at = member.split()
            send = cast("bytes | None", self._client.hget(f"{self._prefix}batch:{int(batch_id)}", "send"))
            record = SendRecord.from_json(send.decode()) if send else None
            payouts.append(
                StatementPayout(
                    int(batch_id),
                    record.batch_nonce if record else None,
                    record.sends[-1].tx_hash if record else None,
                    int(amount),
                    int(at),
                )
            )
        return payouts

    def close(self) -> None:
        """Close the connections; everything is in Redis already."""
        self._client.close()


@dataclass(frozen=True, slots=True)
class _View:
    """The ledger at one moment, as the view script reads it."""

    credited: int
    paid: int
    open_batches: list[Batch]
    pending: dict[str, int]
    accounts: list[tuple[int, int]]  # (paid, pending) of each worker asked about


def _stamp(at_ms: int) -> bytes:
    return b"%016d" % at_ms


def _batch(batch_id: int, workers: bytes, amounts: bytes, send: bytes | None) -> Batch:
    return Batch(
        batch_id,
        tuple(worker.decode() for worker in workers.split(b" ")),
        tuple(int(amount) for amount in amounts.split(b" ")),
        BatchState.OPEN,
        SendRecord.from_json(send.decode()) if send else None,
    )
