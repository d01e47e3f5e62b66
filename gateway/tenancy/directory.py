"""The tenants in force, swapped whole on reload; API key lookup.

The directory keeps an immutable snapshot. ``reload`` parses and validates
the file first and swaps only if that succeeded: a bad file is logged and
the old tenants keep serving. ``watch`` polls the file's identity (inode,
size, mtime) so an edit or an atomic replace is picked up without a
restart; the worker also reloads on SIGHUP.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ConfigError
from gateway.limits.ports import TenantLimits
from gateway.tenancy import keys
from gateway.tenancy.config import ALL_MODELS, Priority, TenantsFile, load_tenants

log = logging.getLogger("llmgw.gateway.tenancy")


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant as admission sees it."""

    name: str
    models: frozenset[str] | None  # canonical model names; None: every model
    limits: TenantLimits
    reserve_completion_tokens: int | None
    priority: Priority
    demo: bool = False

    def may_use(self, model: str) -> bool:
        """Whether the tenant may call the (canonical) ``model``."""
        return self.models is None or model in self.models


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: a tenant's key, or an admin key (no tenant)."""

    key_id: str
    tenant: Tenant | None

    @property
    def admin(self) -> bool:
        """Admin keys read every tenant's usage and call no model."""
        return self.tenant is None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    tenants: Mapping[str, Tenant]
    keys: Mapping[str, tuple[str, Tenant | None]]  # key id -> (hash, tenant or None for admin)


# A hash no key has, compared against when a key id is unknown (same work either way).
_NO_HASH = "sha256:" + "0" * 64


def _snapshot(parsed: TenantsFile, canonical: Callable[[str], str]) -> _Snapshot:
    tenants: dict[str, Tenant] = {}
    index: dict[str, tuple[str, Tenant | None]] = {}
    for t in parsed.tenants:
        limits = t.limits
        tenant = Tenant(
            name=t.name,
            models=None
            if ALL_MODELS in t.models
            else frozenset(canonical(name) for name in t.models),
            limits=TenantLimits(
                requests_per_minute=limits.requests_per_minute,
                tokens_per_minute=limits.tokens_per_minute,
                max_concurrent=limits.max_concurrent,
                requests_burst=limits.requests_burst,
                tokens_burst=limits.tokens_burst,
                monthly_tokens=limits.monthly_tokens,
            ),
            reserve_completion_tokens=limits.reserve_completion_tokens,
            priority=t.priority,
            demo=t.demo,
        )
        tenants[t.name] = tenant
        for entry in t.keys:
            index[entry.id] = (entry.hash, tenant)
    for entry in parsed.admin_keys:
        index[entry.id] = (entry.hash, None)
    return _Snapshot(tenants, index)


class TenantDirectory:
    """Tenants and keys from a file, reloadable."""

    def __init__(
        self,
        path: Path,
        model_names: Collection[str],
        canonical: Callable[[str], str],
        allow_demo: bool = True,
    ) -> None:
        self.path = path
        self._model_names = frozenset(model_names)
        self._canonical = canonical
        self._allow_demo = allow_demo
        self._snapshot = _Snapshot({}, {})
        self._signature: tuple[int, int, int] | None = None

    def _parse(self) -> _Snapshot:
        parsed = load_tenants(self.path, self._model_names)
        demos = [t.name for t in parsed.tenants if t.demo]
        if demos and not self._allow_demo:
            raise ConfigError(
                f"tenant file {self.path} has demo tenants ({', '.join(demos)}) whose keys are "
                "published: they are served only when the gateway listens on a loopback address"
            )
        return _snapshot(parsed, self._canonical)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> None:
        """First load: raise ConfigError if the file is bad (the gateway does not start)."""
        signature = self._stat()
        self._snapshot = self._parse()
        self._signature = signature
        log.info(
            "tenant file %s: %d tenants, %d keys",
            self.path,
            len(self._snapshot.tenants),
            len(self._snapshot.keys),
        )

    def reload(self) -> bool:
        """Load the file again; on any problem log it and keep serving the old tenants."""
        signature = self._stat()
        try:
            snapshot = self._parse()
        except ConfigError as error:
            self._signature = signature  # do not retry the same bad file every poll
            log.error("tenant file rejected, still serving the previous one: %s", error)
            return False
        self._snapshot = snapshot
        self._signature = signature
        log.info(
            "tenant file %s reloaded: %d tenants, %d keys",
            self.path,
            len(snapshot.tenants),
            len(snapshot.keys),
        )
        return True

    def changed(self) -> bool:
        """Whether the file differs from the one last read (by inode, size, mtime)."""
        return self._stat() != self._signature

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reload whenever the file changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            if self.changed():
                self.reload()

    @property
    def tenants(self) -> Mapping[str, Tenant]:
        """Tenants in force, by name."""
        return self._snapshot.tenants

    def authenticate(self, token: str | None) -> Principal | None:
        """The principal a bearer token belongs to, or None (missing, malformed, unknown)."""
        if not token:
            return None
        key_id = keys.key_id_of(token)
        entry = self._snapshot.keys.get(key_id) if key_id is not None else None
        stored, tenant = entry if entry is not None else (_NO_HASH, None)
        if not keys.matches(token, stored) or entry is None or key_id is None:
            return None
        return Principal(key_id, tenant)
