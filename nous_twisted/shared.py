"""What the built-in backends share per reactor: the pool, the agent, the
streams to abort at shutdown.

One :class:`Shared` per reactor, made on first use.  ``configure()`` tells the
live ones to apply new settings (:func:`settings_changed`); :func:`shutdown`
aborts everything and runs by itself before the reactor stops.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet.defer import Deferred, succeed

from .endpoints import SharedAgent
from .pool import SHUTDOWN_WAIT, NousConnectionPool
from .reactors import awaitable, default_reactor
from .settings import Settings, current
from .tls import build_policy, effective_bundle


class Shared:
    """The pool, the agent on it, and the open streams of one reactor.

    :ivar active: the stream cores in flight (each has ``abort_for_shutdown``),
        which the pool cannot see once their connection is out of it.
    """

    def __init__(self, reactor: Any, settings: Settings) -> None:
        self.reactor = reactor
        self.pool = NousConnectionPool(reactor, settings.pool)
        self.agent = SharedAgent(reactor, build_policy(effective_bundle(settings)), self.pool)
        self.active: set[Any] = set()
        self._trigger: Any = reactor.addSystemEventTrigger("before", "shutdown", self._before_shutdown)

    def rebuild_tls(self, settings: Settings) -> None:
        self.agent = SharedAgent(self.reactor, build_policy(effective_bundle(settings)), self.pool)
        # The pool key ignores the TLS policy: connections verified under the
        # old trust roots must not be reused.
        self.pool.new_generation()

    def _before_shutdown(self) -> Deferred[None]:
        # Firing now: removing the trigger while it fires is deprecated.
        self._trigger = None
        return self.shutdown()

    def shutdown(self, wait: float = SHUTDOWN_WAIT) -> Deferred[None]:
        for item in list(self.active):
            item.abort_for_shutdown()
        self.active.clear()
        d = self.pool.close_all(wait)
        if _shared.get(self.reactor) is self:
            del _shared[self.reactor]
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass
        return d


_shared: weakref.WeakKeyDictionary[Any, Shared] | dict[Any, Shared]
try:
    _shared = weakref.WeakKeyDictionary()
except TypeError:  # pragma: no cover
    _shared = {}


def get_shared(reactor: Any | None = None) -> Shared:
    """The shared pool and agent of a reactor, made on first use."""
    reactor = default_reactor(reactor)
    s = _shared.get(reactor)
    if s is None:
        s = _shared[reactor] = Shared(reactor, current())
    return s


def settings_changed(old: Settings, new: Settings) -> None:
    """Apply new settings to every live pool."""
    for s in list(_shared.values()):
        if old.pool != new.pool:
            s.pool.apply(new.pool)
        if old.ca_bundle != new.ca_bundle:
            s.rebuild_tls(new)


def shutdown(reactor: Any | None = None, wait: float = SHUTDOWN_WAIT) -> Deferred[None]:
    """Abort open streams and requests and close every pooled connection.

    Fires once they are closed, or after ``wait`` seconds at most.  It runs by
    itself before the reactor shuts down; the next call makes a new pool.
    The Deferred can be awaited from an asyncio Task as well.
    """
    reactor = default_reactor(reactor)
    s = _shared.get(reactor)
    if s is None:
        return awaitable(succeed(None))
    return awaitable(s.shutdown(wait))


__all__ = ["Shared", "get_shared", "settings_changed", "shutdown"]
