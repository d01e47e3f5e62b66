"""Waiters for a saturated pool, served by priority class, then round robin
across tenants, then first come first served within a tenant. One tenant's
burst therefore delays only that tenant's own later requests."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Futures waiting for a resource of type T (handed over by ``hand_over``)."""

    def __init__(self) -> None:
        # priority -> tenant -> FIFO of futures; higher priority is served first.
        self._classes: dict[int, OrderedDict[str, deque[asyncio.Future[T]]]] = {}
        self._depth = 0

    @property
    def depth(self) -> int:
        """Requests waiting now."""
        return self._depth

    def push(self, tenant: str, priority: int) -> asyncio.Future[T]:
        """Queue a waiter; its future resolves with the resource handed to it."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        tenants = self._classes.setdefault(priority, OrderedDict())
        tenants.setdefault(tenant, deque()).append(future)
        self._depth += 1
        return future

    def hand_over(self, resource: T) -> bool:
        """Give ``resource`` to the next waiter in fair order; False if none waits."""
        for priority in sorted(self._classes, reverse=True):
            tenants = self._classes[priority]
            while tenants:
                tenant, waiters = next(iter(tenants.items()))
                future = waiters.popleft()
                self._depth -= 1
                if waiters:
                    tenants.move_to_end(tenant)  # round robin across tenants
                else:
                    del tenants[tenant]
                if not future.done():  # skip waiters that timed out or left
                    future.set_result(resource)
                    return True
            del self._classes[priority]
        return False

    def forget(self, future: asyncio.Future[T]) -> None:
        """Drop a waiter that gave up (timeout or cancel) so depth stays true."""
        for priority, tenants in self._classes.items():
            for tenant, waiters in tenants.items():
                if future in waiters:
                    waiters.remove(future)
                    self._depth -= 1
                    if not waiters:
                        del tenants[tenant]
                        if not tenants:
                            del self._classes[priority]
                    return
