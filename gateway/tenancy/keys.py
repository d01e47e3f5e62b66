"""API keys: generated once, stored only as a hash, compared in constant time.

A key reads ``llmgw_<id>_<secret>``: a recognisable prefix (secret scanners
can match it), a public 12-hex-digit key id (what logs, listings and usage
events show) and 256 bits of secret. Only ``sha256:<hex>`` of the whole key
is stored. A fast hash is enough for a random 256-bit secret (there is
nothing to brute-force); the comparison uses ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "llmgw_"
_KEY = re.compile(r"^llmgw_([0-9a-f]{12})_([A-Za-z0-9_-]{16,128})$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
KEY_ID = re.compile(r"^[0-9a-f]{12}$")
# Hex ids a YAML reader takes for a number when unquoted: all digits (an integer),
# digits-e-digits (a float in YAML 1.2, which the CLI's ruamel.yaml speaks, though
# not in PyYAML's 1.1: "1234e5678901" is inf to one and a string to the other),
# 0b and binary digits (an integer in YAML 1.1). Tenant files are written by hand
# and by several libraries, so such ids are never issued.
_READS_AS_NUMBER = re.compile(r"^(?:[0-9]+(?:e[0-9]+)?|0b[01]+)$")


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: show ``secret`` once, store ``key_hash``."""

    key_id: str
    secret: str
    key_hash: str


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def is_hash(value: str) -> bool:
    """Whether ``value`` is a stored key hash."""
    return bool(_HASH.match(value))


def reads_as_number(key_id: str) -> bool:
    """Whether a YAML 1.1 or 1.2 reader would load ``key_id``, unquoted, as a number."""
    return bool(_READS_AS_NUMBER.match(key_id))


def generate() -> NewKey:
    """A new random key (its id never one that YAML could read as a number)."""
    key_id = secrets.token_hex(6)
    while reads_as_number(key_id):
        key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id, key, hash_key(key))


def key_id_of(key: str) -> str | None:
    """The key id a presented key claims, or None if it is not shaped like a key."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def matches(key: str, stored_hash: str) -> bool:
    """Constant-time check of a presented key against a stored hash."""
    return hmac.compare_digest(hash_key(key).encode(), stored_hash.encode())


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
