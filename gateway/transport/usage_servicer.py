"""UsageService: a tenant reads its own usage; an admin key reads every tenant's."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

from gateway.errors import BackendUnavailable, GatewayError, InvalidRequest, Violation
from gateway.limits.ports import StoreUnavailable
from gateway.metering.model import Granularity, UsageRecord
from gateway.tenancy.config import TENANT_NAME
from gateway.tenancy.usage import UsageReader
from gateway.transport.auth import current_caller
from gateway.transport.status import to_status
from llmgw.v1 import usage_pb2 as pb
from llmgw.v1 import usage_pb2_grpc as pb_grpc

log = logging.getLogger("llmgw.gateway.usage")

WEEK_S = 7 * 86400
# Longest range one call may ask for, by granularity.
MAX_RANGE_S = {Granularity.HOUR: 31 * 86400, Granularity.DAY: 400 * 86400}

_GRANULARITY = {
    pb.GRANULARITY_UNSPECIFIED: Granularity.DAY,
    pb.GRANULARITY_DAY: Granularity.DAY,
    pb.GRANULARITY_HOUR: Granularity.HOUR,
}
_TO_PB = {Granularity.DAY: pb.GRANULARITY_DAY, Granularity.HOUR: pb.GRANULARITY_HOUR}


class UsageUnavailable(GatewayError):
    """The usage store cannot be read now."""

    kind = BackendUnavailable.kind
    reason = "usage_unavailable"


def to_record(row: UsageRecord) -> pb.UsageRecord:
    """Domain row to proto."""
    return pb.UsageRecord(
        tenant=row.tenant,
        model=row.model,
        granularity=_TO_PB[row.granularity],
        period_start=row.period_start,
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.total_tokens,
        errors=row.errors,
        cancelled=row.cancelled,
    )


class UsageServicer(pb_grpc.UsageServiceServicer):
    """Serves GetUsage from the meter's store."""

    def __init__(self, reader: UsageReader, clock: Callable[[], float] = time.time) -> None:
        self._reader = reader
        self._clock = clock

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageResponse:
        """Counters of the caller's tenant (or, for an admin, any or every tenant)."""
        try:
            tenants = self._reader.tenants_for(current_caller(), request.tenant)
            granularity = _GRANULARITY.get(request.granularity)
            end = request.end_time or int(self._clock())
            start = request.start_time or end - WEEK_S
            problems = []
            if request.tenant and not TENANT_NAME.match(request.tenant):
                problems.append(Violation("tenant", "not a tenant name"))
            if granularity is None:
                problems.append(Violation("granularity", "must be HOUR or DAY"))
            elif end - start > MAX_RANGE_S[granularity]:
                days = MAX_RANGE_S[granularity] // 86400
                problems.append(
                    Violation("start_time", f"at most {days} days per call at this granularity")
                )
            if start > end:
                problems.append(Violation("start_time", "start_time is after end_time"))
            if problems:
                raise InvalidRequest(problems)
            assert granularity is not None
            try:
                rows = await self._reader.read(
                    tenants, granularity, start, end, request.model or None
                )
            except StoreUnavailable:
                raise UsageUnavailable(
                    "Usage cannot be read right now. Please retry.", retry_after_s=1.0
                ) from None
        except GatewayError as error:
            await context.abort_with_status(to_status(error))
            raise
        return pb.GetUsageResponse(records=[to_record(r) for r in rows])
