"""SIGHUP to every part of a process that reloads a file.

asyncio keeps one handler per signal and loop, so two parts that each
installed their own (the tenant file, the routing file) would silently
replace each other. Parts subscribe here instead; the first subscription on
a loop installs the one handler, the last unsubscription removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

log = logging.getLogger("llmgw.sighup")

_subscribers: dict[asyncio.AbstractEventLoop, list[Callable[[], object]]] = {}


def _fire(loop: asyncio.AbstractEventLoop) -> None:
    for callback in list(_subscribers.get(loop, ())):
        try:
            callback()
        except Exception:
            log.exception("a SIGHUP reload failed")


def on_sighup(callback: Callable[[], object]) -> Callable[[], None]:
    """Call ``callback`` on SIGHUP in the running loop; returns the unsubscribe.

    Where signals cannot be handled (not the main thread, or Windows) this
    does nothing: file polling still reloads.
    """
    loop = asyncio.get_running_loop()
    callbacks = _subscribers.get(loop)
    if callbacks is None:
        try:
            loop.add_signal_handler(signal.SIGHUP, _fire, loop)
        except (NotImplementedError, RuntimeError, ValueError):
            return lambda: None
        callbacks = _subscribers[loop] = []
    callbacks.append(callback)

    def unsubscribe() -> None:
        subscribed = _subscribers.get(loop)
        if subscribed is None or callback not in subscribed:
            return
        subscribed.remove(callback)
        if not subscribed:
            del _subscribers[loop]
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGHUP)

    return unsubscribe
