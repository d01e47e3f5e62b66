"""End a server call from outside its handler (the handler may be blocked writing)."""

from __future__ import annotations

import asyncio
import contextlib

import grpc

# Strong references: a task nobody holds may be garbage-collected mid-way.
_PENDING: set[asyncio.Task[None]] = set()


async def _abort(context: grpc.aio.ServicerContext, status: grpc.Status) -> None:
    # abort_with_status raises AbortError once the status is sent: that is its success.
    with contextlib.suppress(Exception):
        await context.abort_with_status(status)


def abort_soon(context: grpc.aio.ServicerContext, status: grpc.Status) -> None:
    """Send ``status`` and end the call, from a task of its own.

    A handler blocked in a write (the client stopped reading; HTTP/2 flow
    control holds the message) cannot abort itself, and cancelling its task
    leaves the call open with no status. Aborting from another task sends
    the status after what is already queued and closes the handler.
    """
    task = asyncio.get_running_loop().create_task(_abort(context, status))
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)
