"""SettlementLease: one settler at a time among the instances that share a Redis ledger.

The lease is one key, `<prefix>lease`, holding "<token> <instance>" with an expiry of `lease_s`.
Taking it is SET NX PX with a fresh token from INCR of `<prefix>lease:token`, so tokens only
grow: each holder's token is larger than every earlier holder's. The holder renews it while it is
still its own (compare and extend) and deletes it on a clean stop (compare and delete); a holder
that dies simply stops renewing, and the key expires. An instance that calls `keep` at least every
`lease_s` therefore takes over within 2 x lease_s of the holder's death.

Expiry alone cannot stop a holder that was paused (a long GC, a frozen VM) from acting after its
lease ran out; the token does. Every settlement mutation of the ledger carries it, and the
ledger's scripts refuse it once the key holds another (RedisLedger.hold). The distributor's batch
nonce on chain is the last guard: two batches signed for one nonce cannot both be paid.
"""

import logging
from typing import cast

import redis

from krewe.orchestrator.redis_ledger import DEFAULT_PREFIX

__all__ = ["SettlementLease"]

log = logging.getLogger(__name__)

# KEYS: lease, token counter. ARGV: instance, lease in ms. The new token, or nil if held.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'NX', 'PX', ARGV[2])
return token
"""
# KEYS: lease. ARGV: our value, lease in ms. 1 if it was still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: lease. ARGV: our value.
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class SettlementLease:
    def __init__(
        self, client: redis.Redis, instance: str, *, lease_s: float, prefix: str = DEFAULT_PREFIX
    ) -> None:
        if " " in instance or not instance:
            raise ValueError(f"an instance name needs no spaces and at least one character, not {instance!r}")
        self._client = client
        self.instance = instance
        self._lease_ms = max(1, round(lease_s * 1000))
        self._key = prefix + "lease"
        self._counter = prefix + "lease:token"
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.token: int | None = None  # while this instance holds the lease

    def __repr__(self) -> str:
        return f"SettlementLease({self.instance!r}, token={self.token})"

    @property
    def _value(self) -> str:
        return f"{self.token} {self.instance}"

    def keep(self) -> int | None:
        """Renew the lease if it is ours, else take it if it is free: the fencing token while
        this instance holds it, None while another does."""
        if self.token is not None:
            if self._renew(keys=[self._key], args=[self._value, self._lease_ms]) == 1:
                return self.token
            log.warning(
                "settlement lease %d of %s was lost (now held by %s)",
                self.token,
                self.instance,
                self.holder(),
            )
            self.token = None
        token = self._acquire(keys=[self._key, self._counter], args=[self.instance, self._lease_ms])
        if token is not None:
            self.token = int(token)
            log.info("%s holds the settlement lease (fencing token %d)", self.instance, self.token)
        return self.token

    def release(self) -> None:
        """Give the lease up, if it is still ours, so another instance takes over at once."""
        if self.token is not None:
            self._release(keys=[self._key], args=[self._value])
            self.token = None

    def holder(self) -> str | None:
        """The instance holding the lease now, or None."""
        value = cast("bytes | None", self._client.get(self._key))
        if value is None:
            return None
        return value.decode().split(" ", 1)[1]
