"""Who may read whose usage: a tenant's key its own tenant's, an admin key any."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import PermissionDenied
from gateway.metering.meter import Meter
from gateway.metering.model import Granularity, UsageRecord
from gateway.tenancy.directory import Principal, TenantDirectory


class UsageReader:
    """Reads usage counters on behalf of an authenticated caller."""

    def __init__(self, directory: TenantDirectory, meter: Meter) -> None:
        self._directory = directory
        self._meter = meter

    def tenants_for(self, caller: Principal | None, asked: str) -> list[str]:
        """The tenants whose usage ``caller`` reads when asking for ``asked`` ('' = default)."""
        tenant = caller.tenant if caller is not None else None
        if tenant is not None:
            if asked and asked != tenant.name:
                raise PermissionDenied(
                    "A tenant's key reads only that tenant's usage.", "usage_not_allowed"
                )
            return [tenant.name]
        if caller is None:
            raise PermissionDenied("Reading usage needs an API key.", "usage_not_allowed")
        return [asked] if asked else sorted(self._directory.tenants)

    async def read(
        self,
        tenants: Sequence[str],
        granularity: Granularity,
        start_s: float,
        end_s: float,
        model: str | None = None,
    ) -> list[UsageRecord]:
        """Counters of ``tenants``; raises StoreUnavailable when the store cannot be read."""
        return await self._meter.query(tenants, granularity, start_s, end_s, model)
