"""What the built-in backends share per reactor: the pool, the agent, the
streams to abort at shutdown.

One :class:`Shared` per reactor, made on first use.  ``configure()`` tells the
live ones to apply new settings (:func:`settings_changed`); :func:`shutdown`
aborts everything and runs by itself before the reactor stops.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from .endpoints import SharedAgent
from .pool import SHUTDOWN_WAIT, HostPoolStats, NousConnectionPool
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
            _retired[self.reactor] = self.pool
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


# The pool a shutdown() retired, per reactor, so that pool_stats() still
# reports its numbers (the largest seen, and the connections still closing)
# until a new pool is made.
_retired: weakref.WeakKeyDictionary[Any, NousConnectionPool] | dict[Any, NousConnectionPool]
try:
    _retired = weakref.WeakKeyDictionary()
except TypeError:  # pragma: no cover
    _retired = {}


def get_shared(reactor: Any | None = None) -> Shared:
    """The shared pool and agent of a reactor, made on first use."""
    reactor = default_reactor(reactor)
    s = _shared.get(reactor)
    if s is None:
        _retired.pop(reactor, None)
        s = _shared[reactor] = Shared(reactor, current())
    return s


def pool_stats(reactor: Any | None = None) -> dict[str, HostPoolStats]:
    """The shared pool's connections per host, for dashboards and crawl stats.

    Keys are ``"scheme://host:port"`` (``" via <proxy>"`` appended for a
    route through a proxy, credentials masked); values are
    :class:`~nous_twisted.pool.HostPoolStats`: ``open``, ``idle``,
    ``in_use``, ``waiting`` now, and the largest of each seen since the pool
    was made.  After :func:`shutdown` the retired pool's numbers stay
    readable (its current counts fall to 0 as its connections close) until
    the next call makes a new pool.  Empty when the reactor has no pool yet;
    it never makes one.
    """
    reactor = default_reactor(reactor)
    s = _shared.get(reactor)
    pool = s.pool if s is not None else _retired.get(reactor)
    out = {} if pool is None else {host_key(key): stats for key, stats in pool.stats().items()}
    if s is not None:
        for provider in _stats_providers:
            out.update(provider(s))
    return out


# Pools beside the shared one (the h2 registry) add their hosts here: they
# sit above this module, which cannot import them.
_stats_providers: list[Callable[[Shared], dict[str, HostPoolStats]]] = []


def add_stats_provider(provider: Callable[[Shared], dict[str, HostPoolStats]]) -> None:
    """Have :func:`pool_stats` include ``provider(shared)``'s hosts (never
    called for a reactor with no pool: it must not make one)."""
    if provider not in _stats_providers:
        _stats_providers.append(provider)


def host_key(key: Any) -> str:
    """A pool key, ``(scheme, host, port[, proxy])``, as ``scheme://host:port``."""
    if not isinstance(key, tuple) or len(key) < 3:
        return str(key)
    scheme, host, port = (x.decode("ascii", "replace") if isinstance(x, bytes) else str(x) for x in key[:3])
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    text = f"{scheme}://{host}:{port}"
    extra = [x for x in key[3:] if x is not None]
    if extra:
        text += " via " + " ".join(str(x) for x in extra)
    return text


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


__all__ = ["HostPoolStats", "Shared", "get_shared", "pool_stats", "settings_changed", "shutdown"]
