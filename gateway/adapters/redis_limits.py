"""LimitStore on Redis: one Lua script per admission, on the server's clock.

Keys of a tenant (one hash slot, see ``redis_conn.tenant_tag``):
``:rq`` and ``:tk`` the request and token buckets (hash ``l`` level, ``t``
updated, ms), ``:ls`` leases (sorted set, score = expiry in ms), ``:rs``
tokens reserved per lease (hash), ``:m:YYYYMM`` tokens of the month (only
when the tenant has a monthly quota), ``:ch:<id>`` markers of applied
charges. A bucket key expires once it would be full again, so an idle
tenant costs nothing; a missing bucket reads as full.

The arithmetic is ``gateway.limits.bucket``'s, written in Lua so that no
replica ever reads, computes and writes back (which would race), and all
replicas share the server's clock rather than each its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.adapters.redis_conn import RedisClient, Script, guarded, tenant_tag
from gateway.limits.memory import view
from gateway.limits.ports import (
    CONCURRENCY,
    MONTHLY,
    REQUESTS,
    TOKENS,
    TOO_LARGE,
    Decision,
    TenantLimits,
    retry_hint,
)

_BUCKET_FUNCTIONS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local function level(key, rate, cap)
  local v = redis.call('HMGET', key, 'l', 't')
  if not v[1] then return cap end
  local l = tonumber(v[1]) + math.max(0, now - tonumber(v[2])) * rate
  if l > cap then l = cap end
  return l
end
local function store(key, l, rate, cap)
  redis.call('HSET', key, 'l', tostring(l), 't', tostring(now))
  redis.call('PEXPIRE', key, math.ceil((cap - l) / rate) + 1000)
end
"""

ACQUIRE = Script(
    _BUCKET_FUNCTIONS
    + """
local r_rate, r_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local t_rate, t_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_conc, cost = tonumber(ARGV[5]), tonumber(ARGV[6])
local rid, lease_ms, quota = ARGV[7], tonumber(ARGV[8]), tonumber(ARGV[9])
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for i = 1, #expired do redis.call('HDEL', KEYS[4], expired[i]) end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) end
local rl = level(KEYS[1], r_rate, r_cap)
local tl = level(KEYS[2], t_rate, t_cap)
local inflight = redis.call('ZCARD', KEYS[3])
local used = 0
if quota >= 0 then used = tonumber(redis.call('GET', KEYS[5]) or '0') end
local flags, wait = 0, 0
if rl < 1 then flags = flags + 1; wait = math.max(wait, (1 - rl) / r_rate) end
if cost > t_cap then flags = flags + 16
elseif tl < cost then flags = flags + 2; wait = math.max(wait, (cost - tl) / t_rate) end
if inflight >= max_conc then flags = flags + 4; wait = math.max(wait, 1000) end
if quota >= 0 and used + cost > quota then flags = flags + 8 end
if flags == 0 then
  rl = rl - 1
  tl = tl - cost
  store(KEYS[1], rl, r_rate, r_cap)
  store(KEYS[2], tl, t_rate, t_cap)
  redis.call('ZADD', KEYS[3], now + lease_ms, rid)
  redis.call('HSET', KEYS[4], rid, cost)
  redis.call('PEXPIRE', KEYS[3], 2 * lease_ms + 60000)
  redis.call('PEXPIRE', KEYS[4], 2 * lease_ms + 60000)
  inflight = inflight + 1
  if quota >= 0 then
    used = redis.call('INCRBY', KEYS[5], cost)
    redis.call('EXPIRE', KEYS[5], 40 * 86400)
  end
end
return {flags, tostring(rl), tostring(tl), tostring(wait), inflight, used}
"""
)

RELEASE = Script(
    _BUCKET_FUNCTIONS
    + """
redis.call('ZREM', KEYS[2], ARGV[1])
local reserved = redis.call('HGET', KEYS[3], ARGV[1])
if not reserved then return false end
redis.call('HDEL', KEYS[3], ARGV[1])
local delta = tonumber(reserved) - tonumber(ARGV[2])
if delta ~= 0 then
  local rate, cap = tonumber(ARGV[3]), tonumber(ARGV[4])
  local l = level(KEYS[1], rate, cap) + delta
  if l > cap then l = cap end
  store(KEYS[1], l, rate, cap)
  if ARGV[5] == '1' and redis.call('DECRBY', KEYS[4], delta) < 0 then
    redis.call('SET', KEYS[4], 0, 'KEEPTTL')
  end
end
return tostring(delta)
"""
)

CHARGE = Script(
    _BUCKET_FUNCTIONS
    + """
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', 86400) then return 0 end
local r_rate, r_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local t_rate, t_cap = tonumber(ARGV[5]), tonumber(ARGV[6])
store(KEYS[1], level(KEYS[1], r_rate, r_cap) - tonumber(ARGV[1]), r_rate, r_cap)
store(KEYS[2], level(KEYS[2], t_rate, t_cap) - tonumber(ARGV[2]), t_rate, t_cap)
if ARGV[7] == '1' then
  redis.call('INCRBY', KEYS[3], tonumber(ARGV[2]))
  redis.call('EXPIRE', KEYS[3], 40 * 86400)
end
return 1
"""
)

RENEW = Script(
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease_ms = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + lease_ms, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], 2 * lease_ms + 60000)
redis.call('PEXPIRE', KEYS[2], 2 * lease_ms + 60000)
return 1
"""
)

_FLAGS = ((1, REQUESTS), (2, TOKENS), (4, CONCURRENCY), (8, MONTHLY), (16, TOO_LARGE))


def _rates(limits: TenantLimits) -> tuple[str, str, str, str]:
    r, t = limits.requests, limits.tokens
    return (
        repr(r.rate_per_s / 1000),
        repr(r.capacity),
        repr(t.rate_per_s / 1000),
        repr(t.capacity),
    )


class RedisLimitStore:
    """The shared LimitStore (see the module doc). Works on a single Redis or a Cluster."""

    def __init__(self, client: RedisClient, timeout_s: float = 0.5) -> None:
        self._client = client
        self._timeout_s = timeout_s

    async def acquire(
        self,
        tenant: str,
        limits: TenantLimits,
        reservation: str,
        tokens: int,
        month: str,
        lease_s: float,
    ) -> Decision:
        """See LimitStore.acquire."""
        tag = tenant_tag(tenant)
        keys = (f"{tag}:rq", f"{tag}:tk", f"{tag}:ls", f"{tag}:rs", f"{tag}:m:{month}")
        quota = limits.monthly_tokens if limits.monthly_tokens is not None else -1
        args = (
            *_rates(limits),
            limits.max_concurrent,
            tokens,
            reservation,
            int(lease_s * 1000),
            quota,
        )
        flags, rl, tl, wait_ms, in_flight, used = await guarded(
            ACQUIRE(self._client, keys, args), self._timeout_s
        )
        flags = int(flags)
        violations = tuple(name for bit, name in _FLAGS if flags & bit)
        wait = float(wait_ms) / 1000
        if flags & (8 | 16):
            wait = math.inf
        return Decision(
            admitted=flags == 0,
            violations=violations,
            retry_after_s=retry_hint(wait) if violations else None,
            requests=view(limits.requests_per_minute, limits.requests, float(rl)),
            tokens=view(limits.tokens_per_minute, limits.tokens, float(tl)),
            in_flight=int(in_flight),
            month_used=int(used),
        )

    async def release(
        self, tenant: str, limits: TenantLimits, reservation: str, actual_tokens: int, month: str
    ) -> int | None:
        """See LimitStore.release."""
        tag = tenant_tag(tenant)
        keys = (f"{tag}:tk", f"{tag}:ls", f"{tag}:rs", f"{tag}:m:{month}")
        _, _, t_rate, t_cap = _rates(limits)
        has_quota = "1" if limits.monthly_tokens is not None else "0"
        args = (reservation, actual_tokens, t_rate, t_cap, has_quota)
        delta = await guarded(RELEASE(self._client, keys, args), self._timeout_s)
        return None if delta is None else round(float(delta))

    async def charge(
        self,
        tenant: str,
        limits: TenantLimits,
        charge_id: str,
        requests: int,
        tokens: int,
        month: str,
    ) -> None:
        """See LimitStore.charge."""
        tag = tenant_tag(tenant)
        keys = (f"{tag}:rq", f"{tag}:tk", f"{tag}:m:{month}", f"{tag}:ch:{charge_id}")
        has_quota = "1" if limits.monthly_tokens is not None else "0"
        args = (requests, tokens, *_rates(limits), has_quota)
        await guarded(CHARGE(self._client, keys, args), self._timeout_s)

    async def renew(self, tenant: str, reservations: Sequence[str], lease_s: float) -> None:
        """See LimitStore.renew."""
        tag = tenant_tag(tenant)
        keys = (f"{tag}:ls", f"{tag}:rs")
        await guarded(
            RENEW(self._client, keys, (int(lease_s * 1000), *reservations)), self._timeout_s
        )

    async def close(self) -> None:
        """Nothing: the client belongs to whoever made it (it is shared with metering)."""
