"""Tenant files with known keys, for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.tenancy import keys


def tenant(
    name: str,
    rpm: int = 1000,
    tpm: int = 1_000_000,
    concurrent: int = 50,
    models: list[str] | None = None,
    **limits: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "models": models or ["*"],
        "limits": {
            "requests_per_minute": rpm,
            "tokens_per_minute": tpm,
            "max_concurrent": concurrent,
            **limits,
        },
    }


def write_tenants(path: Path, tenants: list[dict[str, Any]], admin: bool = True) -> dict[str, str]:
    """Write a tenant file giving each tenant one new key; return name -> key ("admin" too)."""
    issued: dict[str, str] = {}
    for t in tenants:
        new = keys.generate()
        t.setdefault("keys", []).append({"id": new.key_id, "hash": new.key_hash})
        issued[t["name"]] = new.secret
    doc: dict[str, Any] = {"tenants": tenants}
    if admin:
        new = keys.generate()
        doc["admin_keys"] = [{"id": new.key_id, "hash": new.key_hash}]
        issued["admin"] = new.secret
    path.write_text(yaml.safe_dump(doc))
    return issued


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)
