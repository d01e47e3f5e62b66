"""Per-tenant rate limits: token buckets, a concurrency cap and a monthly quota.

Pure rules and the limiter live here; the Redis store is an adapter in
``gateway.adapters`` behind the ``LimitStore`` protocol.
"""
