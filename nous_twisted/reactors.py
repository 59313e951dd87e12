"""Finding the reactor, and awaiting Deferreds from either kind of coroutine.

Nothing here imports ``twisted.internet.reactor`` at module import time: the
reactor is resolved when a call needs it, so applications (and Scrapy) can
install the one they want first.
"""

from __future__ import annotations

import asyncio
import sys
from asyncio.events import _get_running_loop
from collections.abc import Awaitable
from typing import Any

from twisted.internet.defer import Deferred


def default_reactor(reactor: Any | None) -> Any:
    """The reactor to use: the one given, else the installed global one.

    Importing ``twisted.internet.reactor`` installs the default reactor when
    none is installed yet.  Inside a running asyncio loop with no Twisted
    reactor (Scrapy's reactorless mode, a plain asyncio program) that reactor
    would never run and every call would hang: fail clearly instead.
    """
    if reactor is not None:
        return reactor
    if "twisted.internet.reactor" not in sys.modules and _get_running_loop() is not None:
        raise RuntimeError(
            "nous_twisted needs a running Twisted reactor, and this is an asyncio loop without "
            "one (Scrapy's TWISTED_REACTOR_ENABLED=False, or plain asyncio). Install "
            "twisted.internet.asyncioreactor before the loop starts (Scrapy: keep the reactor "
            "enabled, TWISTED_REACTOR = 'twisted.internet.asyncioreactor.AsyncioSelectorReactor'), "
            "or pass reactor= explicitly."
        )
    from twisted.internet import reactor as global_reactor

    return global_reactor


def awaitable(d: Deferred[Any]) -> Any:
    """The Deferred, or a Future for it when awaited from an asyncio Task
    (a Task cannot await a Deferred: "Task got bad yield")."""
    loop = _get_running_loop()  # None, without raising, outside asyncio
    if loop is None:
        return d
    if asyncio.current_task(loop) is not None:
        return d.asFuture(loop)
    return d


async def as_coroutine(thing: Awaitable[Any]) -> Any:
    """Any awaitable as a coroutine, for ``Deferred.fromCoroutine``."""
    return await thing
