"""Prefix-cache affinity with bounded load.

A conversation's later turns repeat its earlier ones, so the replica that
served the previous turn still holds most of the prompt in its prefix
(KV) cache and skips that prefill. This policy sends every request with
the same key (the session key when the client gives one, else a digest of
the conversation's opening messages) to the same replica, using
rendezvous (highest random weight) hashing: every gateway process and
replica computes the same order with no shared state, and adding or
removing a replica moves only the keys that replica gains or loses.

Affinity must never overload one engine, so the load is bounded as in
"consistent hashing with bounded loads" (Mirrokni, Thorup, Zadimoghaddam):
a replica takes a request only while its load stays within ``load_factor``
times the mean load of the candidates; otherwise the request goes to the
next replica in the key's own hash order (a stable second home, so its
cache still helps next time).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from gateway.routing.endpoint import Endpoint
from gateway.routing.policies.base import PolicySettings, RequestKey
from gateway.routing.policies.least_load import LeastLoad


def affinity_digest(key: RequestKey, prefix_chars: int) -> bytes | None:
    """The bytes a request is hashed by, or None when it carries nothing to hash."""
    if key.session:
        return b"s\x00" + key.session.encode()
    if not key.opening:
        return None
    h = hashlib.blake2b(digest_size=16)
    for part in key.opening:
        h.update(part[:prefix_chars].encode())
        h.update(b"\x00")
    return b"p\x00" + h.digest()


def _weight(digest: bytes, endpoint: Endpoint) -> int:
    # A stable hash (never Python's per-process salted hash()): every gateway
    # process must rank the replicas the same way.
    h = hashlib.blake2b(digest, digest_size=8)
    h.update(endpoint.address.encode())
    return int.from_bytes(h.digest(), "big")


def _pressure(endpoint: Endpoint) -> int:
    return endpoint.outstanding + endpoint.load.waiting


class PrefixAffinity:
    """Rendezvous hashing of the request key, bounded by load; least load
    for requests with no key."""

    def __init__(self, settings: PolicySettings) -> None:
        self._factor = settings.load_factor
        self._prefix_chars = settings.prefix_chars
        self._fallback = LeastLoad(settings)

    def choose(
        self, candidates: Sequence[Endpoint], pool: Sequence[Endpoint], key: RequestKey
    ) -> Endpoint:
        """The key's first replica in hash order whose load is within the bound."""
        digest = affinity_digest(key, self._prefix_chars)
        if digest is None or len(candidates) == 1:
            return self._fallback.choose(candidates, pool, key)
        total = sum(_pressure(e) for e in candidates)
        # Room for this request too: ceil(c * (total + 1) / n), at least 1.
        bound = max(1, math.ceil(self._factor * (total + 1) / len(candidates)))
        ranked = sorted(candidates, key=lambda e: _weight(digest, e), reverse=True)
        for endpoint in ranked:
            if _pressure(endpoint) + 1 <= bound:
                return endpoint
        return self._fallback.choose(candidates, pool, key)  # unreachable for factor >= 1
