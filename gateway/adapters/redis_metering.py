"""UsageStore on Redis: counters in hashes, every event in a Redis Stream.

Per tenant (one hash slot): ``:u:h:YYYYMMDDHH`` and ``:u:d:YYYYMMDD``
hashes with fields ``<model>|<counter>`` (kept 8 and 400 days), the stream
``:events`` (one entry per finished request, trimmed to about
``stream_maxlen`` entries) and ``:seen:<request id>`` markers (2 days) that
make a retried write count nothing twice. One Lua script per event does all
of it atomically; a batch is one pipeline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from gateway.adapters.redis_conn import RedisClient, Script, guarded, tenant_tag
from gateway.limits.ports import StoreUnavailable
from gateway.metering.model import COUNTERS, Granularity, UsageEvent, UsageRecord

HOUR_TTL_S = 8 * 86400
DAY_TTL_S = 400 * 86400
SEEN_TTL_S = 2 * 86400

RECORD = Script(
    """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[8])) then return 0 end
local names = {'requests', 'prompt_tokens', 'completion_tokens', 'errors', 'cancelled'}
for k = 2, 3 do
  for i = 1, 5 do
    local n = tonumber(ARGV[i + 1])
    if n ~= 0 then redis.call('HINCRBY', KEYS[k], ARGV[1] .. '|' .. names[i], n) end
  end
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[9]))
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[10]))
local fields = {}
for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', unpack(fields))
return 1
"""
)


def stream_key(tenant: str) -> str:
    """The usage event stream of ``tenant``."""
    return f"{tenant_tag(tenant)}:events"


def event_fields(event: UsageEvent) -> list[str]:
    """The stream entry of an event, as field/value pairs."""
    return [
        "request_id", event.request_id,
        "tenant", event.tenant,
        "key_id", event.key_id,
        "model", event.model,
        "backend", event.backend,
        "prompt_tokens", str(event.prompt_tokens),
        "completion_tokens", str(event.completion_tokens),
        "status", event.status,
        "started_at", f"{event.started_at:.3f}",
        "duration_ms", str(event.duration_ms),
        "ttft_ms", "" if event.ttft_ms is None else str(event.ttft_ms),
        "exact", "1" if event.exact else "0",
    ]  # fmt: skip


class RedisUsageStore:
    """The shared UsageStore (see the module doc)."""

    def __init__(
        self, client: RedisClient, timeout_s: float = 2.0, stream_maxlen: int = 1_000_000
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._stream_maxlen = stream_maxlen
        self._loaded = False

    def _call(self, event: UsageEvent) -> tuple[list[str], list[Any]]:
        tag = tenant_tag(event.tenant)
        keys = [
            f"{tag}:seen:{event.request_id}",
            f"{tag}:u:h:{Granularity.HOUR.key(event.started_at)}",
            f"{tag}:u:d:{Granularity.DAY.key(event.started_at)}",
            f"{tag}:events",
        ]
        c = event.counters()
        args: list[Any] = [event.model, *(c[name] for name in COUNTERS), self._stream_maxlen]
        args += [SEEN_TTL_S, HOUR_TTL_S, DAY_TTL_S, *event_fields(event)]
        return keys, args

    async def record(self, events: Sequence[UsageEvent]) -> None:
        """See UsageStore.record."""
        if not events:
            return
        if isinstance(self._client, RedisCluster):
            # A cluster pipeline cannot carry scripts: one call per event, concurrently
            # (each goes to the node of its tenant's slot).
            calls = [RECORD(self._client, *self._call(event)) for event in events]
            await guarded(asyncio.gather(*calls), self._timeout_s)
            return
        if not self._loaded:
            await guarded(self._client.script_load(RECORD.source), self._timeout_s)
            self._loaded = True
        pipe = self._client.pipeline(transaction=False)
        for event in events:
            keys, args = self._call(event)
            pipe.evalsha(RECORD.sha, len(keys), *keys, *args)
        try:
            await guarded(pipe.execute(), self._timeout_s)
        except StoreUnavailable as error:
            if isinstance(error.__cause__, NoScriptError):
                self._loaded = False  # Redis restarted and lost the script; load it next time
            raise

    async def query(
        self,
        tenants: Sequence[str],
        granularity: Granularity,
        start_s: float,
        end_s: float,
        model: str | None = None,
    ) -> list[UsageRecord]:
        """See UsageStore.query."""
        letter = "h" if granularity is Granularity.HOUR else "d"
        wanted = [
            (tenant, period, begin)
            for tenant in tenants
            for period, begin in granularity.periods(start_s, end_s)
        ]
        if not wanted:
            return []
        pipe = self._client.pipeline(transaction=False)
        for tenant, period, _ in wanted:
            pipe.hgetall(f"{tenant_tag(tenant)}:u:{letter}:{period}")
        answers = await guarded(pipe.execute(), self._timeout_s)
        rows: list[UsageRecord] = []
        for (tenant, _, begin), fields in zip(wanted, answers, strict=True):
            per_model: dict[str, dict[str, int]] = {}
            for name, value in fields.items():
                model_name, _, counter = name.rpartition("|")
                if counter in COUNTERS and (model is None or model_name == model):
                    per_model.setdefault(model_name, {})[counter] = int(value)
            rows.extend(
                UsageRecord(tenant, m, granularity, begin, **counters)
                for m, counters in sorted(per_model.items())
            )
        return rows

    async def events(
        self, tenant: str, after: str = "-", count: int = 1000
    ) -> list[dict[str, str]]:
        """Stream entries of ``tenant`` after entry id ``after`` (export, replay)."""
        start = after if after == "-" else f"({after}"
        entries: Any = await guarded(
            self._client.xrange(stream_key(tenant), min=start, count=count), self._timeout_s
        )
        return [{"id": entry_id, **fields} for entry_id, fields in entries]

    async def close(self) -> None:
        """Nothing: the client belongs to whoever made it."""
