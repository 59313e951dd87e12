"""The shared connection pool: one per reactor, with a real per-host limit.

Twisted's ``maxPersistentPerHost`` caps only *idle* connections; beyond it new
connections open without limit.  :class:`NousConnectionPool` counts every
connection it has open or is opening per ``(scheme, host, port)`` and makes
requests over ``max_connections`` wait, in FIFO order, for a connection to
come back or close.

The connect phase of a request (waiting for a slot, TCP connect, TLS
handshake) is bounded here, because only the pool sees where it ends.  The
caller hands its limit over in a :class:`ConnectTicket` through a context
variable set around ``agent.request()``, which reaches ``getConnection``
synchronously through Agent, treq and their wrappers.
"""

from __future__ import annotations

import contextvars
import sys
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import HTTP11ClientProtocol, TransportProxyProducer
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from .errors import RequestTimeout
from .settings import PoolSettings, Settings, current

log = Logger(namespace="nous_twisted.pool")

# How long shutdown() waits for aborted connections to report closed.
SHUTDOWN_WAIT = 5.0


def abort_transport(transport: Any) -> None:
    """Close a connection at once, never returning it to the pool.

    Accepts a socket or TLS transport, or the ``TransportProxyProducer`` a body
    protocol is given.  Never ``loseConnection()``: on TLS it waits for
    close_notify and may hang (twisted#8930).
    """
    if transport is None:
        return
    inner = transport
    if isinstance(transport, TransportProxyProducer):
        inner = transport._producer
        if inner is None:  # the proxy stopped: the response is already over
            return
    if getattr(inner, "_aborted", False) or getattr(inner, "disconnected", False):
        return
    abort = getattr(inner, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        inner.stopProducing()


class ConnectTicket:
    """A request's connect limit and the hook that starts its receive phase."""

    __slots__ = ("connect_timeout", "on_connected", "url")

    def __init__(self, connect_timeout: float, on_connected: Callable[[], None], url: str) -> None:
        self.connect_timeout = connect_timeout
        self.on_connected = on_connected
        self.url = url


CONNECT_TICKET: contextvars.ContextVar[ConnectTicket | None] = contextvars.ContextVar(
    "nous_twisted_connect_ticket", default=None
)


def send_with_ticket(
    send: Callable[[], Deferred[Any]],
    connect_timeout: float,
    on_connected: Callable[[], None],
    url: str,
    shared_pool: bool,
) -> Deferred[Any]:
    """Call ``send()`` (which reaches the pool's getConnection synchronously)
    with the connect limit handed over; with a caller's own agent the pool is
    not ours, so the connect phase is taken as over at once.  A synchronous
    exception becomes a failed Deferred."""
    try:
        if not shared_pool:
            on_connected()
            return send()
        token = CONNECT_TICKET.set(ConnectTicket(connect_timeout, on_connected, url))
        try:
            return send()
        finally:
            CONNECT_TICKET.reset(token)
    except Exception:
        return fail()


class _Slot:
    """One connection's place in its host's limit; released exactly once."""

    __slots__ = ("key", "pool", "protocol", "released")

    def __init__(self, pool: NousConnectionPool, key: Hashable) -> None:
        self.pool = pool
        self.key = key
        self.protocol: _PooledProtocol | None = None
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool._slot_released(self)


@implementer(IHandshakeListener)
class _PooledProtocol(HTTP11ClientProtocol):
    """HTTP11ClientProtocol that tells the pool when it closes and when its
    TLS handshake completes."""

    _slot: _Slot
    _handshake: Deferred[_PooledProtocol] | None = None
    _handshake_done = False
    _lost: Deferred[None] | None = None

    def handshakeCompleted(self) -> None:
        self._handshake_done = True
        d, self._handshake = self._handshake, None
        if d is not None:
            d.callback(self)

    def when_handshake_done(self) -> Deferred[_PooledProtocol]:
        if self._handshake_done:
            return succeed(self)

        def cancel(_: Deferred[_PooledProtocol]) -> None:
            abort_transport(self.transport)

        self._handshake = Deferred(cancel)
        return self._handshake

    def when_closed(self) -> Deferred[None]:
        if self._slot.released:
            return succeed(None)
        if self._lost is None:
            self._lost = Deferred()
        return self._lost

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        try:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        finally:
            self._slot.release()
            d, self._handshake = self._handshake, None
            if d is not None and not d.called:
                d.errback(reason)
            lost, self._lost = self._lost, None
            if lost is not None:
                lost.callback(None)


class _PooledFactory(Factory):
    def __init__(self, slot: _Slot, quiescent: Callable[[HTTP11ClientProtocol], None]) -> None:
        self._slot = slot
        self._quiescent = quiescent

    def buildProtocol(self, addr: Any) -> _PooledProtocol:
        p = _PooledProtocol(self._quiescent)  # type: ignore[no-untyped-call]
        p._slot = self._slot
        self._slot.protocol = p
        return p


class _Waiter:
    """A request queued for a slot; cancelling it leaves the queue or the connect."""

    __slots__ = ("d", "endpoint", "inner", "key", "pool")

    def __init__(self, pool: NousConnectionPool, key: Hashable, endpoint: IStreamClientEndpoint) -> None:
        self.pool = pool
        self.key = key
        self.endpoint = endpoint
        self.inner: Deferred[Any] | None = None
        self.d: Deferred[Any] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[Any]) -> None:
        if self.inner is not None:
            self.inner.cancel()
        else:
            queue = self.pool._waiters.get(self.key)
            if queue is not None and self in queue:
                queue.remove(self)

    def serve(self, inner: Deferred[Any]) -> None:
        self.inner = inner
        inner.addBoth(self._fire)

    def _fire(self, result: Any) -> None:
        if not self.d.called:
            self.d.callback(result)


class NousConnectionPool(HTTPConnectionPool):
    """HTTPConnectionPool with a per-host connection limit and bounded connects."""

    # Only POSTs go through this pool, and Twisted never retries those.
    retryAutomatically = False

    def __init__(self, reactor: Any, settings: PoolSettings) -> None:
        super().__init__(reactor, persistent=True)  # type: ignore[no-untyped-call]
        self._slots: dict[Hashable, set[_Slot]] = {}
        self._waiters: dict[Hashable, deque[_Waiter]] = {}
        self.apply(settings)

    # -- settings ---------------------------------------------------------

    def apply(self, settings: PoolSettings) -> None:
        """Take new settings now: limits, and the idle timeout of cached connections."""
        self.max_connections = settings.max_connections
        self.maxPersistentPerHost = settings.max_connections
        # Twisted declares this an int but only ever passes it to callLater.
        self.cachedConnectionTimeout = settings.timeout / 1000.0  # type: ignore[assignment]
        for key, conns in list(self._connections.items()):
            while len(conns) > self.maxPersistentPerHost:
                self._removeConnection(key, conns[0])
            for conn in conns:
                call = self._timeouts.get(conn)
                if call is not None and call.active():
                    call.reset(self.cachedConnectionTimeout)
        for key in list(self._waiters):
            self._serve_waiters(key)

    # -- counting ------------------------------------------------------------

    def open_connections(self, key: Hashable | None = None) -> int:
        """Connections open or opening, for one key or in all."""
        if key is not None:
            return len(self._slots.get(key, ()))
        return sum(len(s) for s in self._slots.values())

    def waiting(self, key: Hashable | None = None) -> int:
        if key is not None:
            return len(self._waiters.get(key, ()))
        return sum(len(q) for q in self._waiters.values())

    def _slot_released(self, slot: _Slot) -> None:
        slots = self._slots.get(slot.key)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del self._slots[slot.key]
        if slot.key in self._waiters:
            self._serve_waiters(slot.key)

    # -- getting a connection ---------------------------------------------

    def getConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        ticket = CONNECT_TICKET.get()
        d = self._acquire(key, endpoint)
        if ticket is None:
            return d
        if not d.called:
            limit = ticket.connect_timeout
            url = ticket.url

            def timed_out(result: Any, timeout: float) -> Any:
                if isinstance(result, Failure) and result.check(CancelledError):
                    return Failure(RequestTimeout("connect", limit, url))
                return result

            d.addTimeout(limit, self._reactor, onTimeoutCancel=timed_out)
        on_connected = ticket.on_connected

        def connected(proto: Any) -> Any:
            on_connected()
            return proto

        return d.addCallback(connected)

    def _pop_cached(self, key: Hashable) -> HTTP11ClientProtocol | None:
        connections = self._connections.get(key)
        while connections:
            connection = connections.pop(0)
            self._timeouts.pop(connection).cancel()
            if connection.state == "QUIESCENT":
                return connection  # type: ignore[no-any-return]
        return None

    def _acquire(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        cached = self._pop_cached(key)
        if cached is not None:
            return succeed(cached)
        queue = self._waiters.get(key)
        if not queue and self.open_connections(key) < self.max_connections:
            return self._newConnection(key, endpoint)
        waiter = _Waiter(self, key, endpoint)
        self._waiters.setdefault(key, deque()).append(waiter)
        return waiter.d

    def _serve_waiters(self, key: Hashable) -> None:
        queue = self._waiters.get(key)
        while queue:
            cached = self._pop_cached(key)
            if cached is not None:
                queue.popleft().serve(succeed(cached))
            elif self.open_connections(key) < self.max_connections:
                waiter = queue.popleft()
                waiter.serve(self._newConnection(key, waiter.endpoint))
            else:
                break
        if queue is not None and not queue:
            self._waiters.pop(key, None)

    def _newConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        slot = _Slot(self, key)
        self._slots.setdefault(key, set()).add(slot)

        def quiescent(protocol: HTTP11ClientProtocol) -> None:
            self._putConnection(key, protocol)

        d: Deferred[Any] = endpoint.connect(_PooledFactory(slot, quiescent))
        if key[0] == b"https":  # type: ignore[index]
            d.addCallback(lambda proto: proto.when_handshake_done())

        def failed(f: Failure) -> Failure:
            # Once a protocol exists its connectionLost releases the slot, after
            # the socket is really closed; before that, release it here.
            if slot.protocol is None:
                slot.release()
            elif not slot.released:
                abort_transport(slot.protocol.transport)
            return f

        return d.addErrback(failed)

    # -- returning and dropping connections -------------------------------

    def _putConnection(self, key: Hashable, connection: HTTP11ClientProtocol) -> None:
        super()._putConnection(key, connection)  # type: ignore[no-untyped-call]
        if key in self._waiters:
            # Not now: the quiescent callback runs before the protocol has
            # finished with the previous response.
            self._reactor.callLater(0, self._serve_waiters, key)

    def _removeConnection(self, key: Hashable, connection: HTTP11ClientProtocol) -> None:
        # Abort rather than loseConnection: an idle TLS connection waiting for
        # close_notify may never close (twisted#8930), holding its slot.
        self._connections[key].remove(connection)
        call = self._timeouts.pop(connection)
        if call.active():  # not when this is the idle timer firing
            call.cancel()
        abort_transport(connection.transport)

    def close_all(self, wait: float = SHUTDOWN_WAIT) -> Deferred[None]:
        """Abort every connection, idle or busy, and every waiting request;
        fires when all have closed or ``wait`` seconds have passed."""
        for queue in list(self._waiters.values()):
            for waiter in list(queue):
                waiter.d.cancel()
        self._waiters.clear()
        for conns in self._connections.values():
            for conn in conns:
                self._timeouts.pop(conn).cancel()
        self._connections = {}
        closed: list[Deferred[None]] = []
        for slots in list(self._slots.values()):
            for slot in list(slots):
                proto = slot.protocol
                if proto is not None and proto.transport is not None:
                    closed.append(proto.when_closed())
                    abort_transport(proto.transport)
        done: Deferred[Any] = DeferredList(closed, consumeErrors=True)
        done.addTimeout(wait, self._reactor)

        def late(_: Failure) -> None:
            log.warn("shutdown: connections still open after {wait} s", wait=wait)

        return done.addCallbacks(lambda _: None, late)

    def closeCachedConnections(self) -> Deferred[None]:
        return self.close_all()


class Transport:
    """Everything the built-in backends share for one reactor."""

    def __init__(self, reactor: Any, settings: Settings) -> None:
        from treq.client import HTTPClient

        from .tls import build_policy

        self.reactor = reactor
        self.pool = NousConnectionPool(reactor, settings.pool)
        self.agent = Agent(reactor, contextFactory=build_policy(), pool=self.pool)
        self.treq = HTTPClient(self.agent)
        # Things to abort at shutdown that the pool cannot see (stream state).
        self.active: set[Any] = set()
        self._trigger = reactor.addSystemEventTrigger("before", "shutdown", self.shutdown)

    def rebuild_tls(self) -> None:
        from treq.client import HTTPClient

        from .tls import build_policy

        self.agent = Agent(self.reactor, contextFactory=build_policy(), pool=self.pool)
        self.treq = HTTPClient(self.agent)
        # The pool key ignores the TLS policy: connections verified under the
        # old trust roots must not be reused.
        for key, conns in list(self.pool._connections.items()):
            for conn in list(conns):
                self.pool._removeConnection(key, conn)

    def shutdown(self, wait: float = SHUTDOWN_WAIT) -> Deferred[None]:
        for item in list(self.active):
            item.abort_for_shutdown()
        self.active.clear()
        d = self.pool.close_all(wait)
        if _transports.get(self.reactor) is self:
            del _transports[self.reactor]
            try:
                self.reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass
        return d


_transports: weakref.WeakKeyDictionary[Any, Transport] | dict[Any, Transport]
try:
    _transports = weakref.WeakKeyDictionary()
except TypeError:  # pragma: no cover
    _transports = {}


def default_reactor(reactor: Any | None) -> Any:
    """The reactor to use: the one given, else the installed global one.

    Importing ``twisted.internet.reactor`` installs the default reactor when
    none is installed yet.  Inside a running asyncio loop with no Twisted
    reactor (Scrapy's reactorless mode, a plain asyncio program) that reactor
    would never run and every call would hang: fail clearly instead.
    """
    if reactor is not None:
        return reactor
    if "twisted.internet.reactor" not in sys.modules:
        from asyncio.events import _get_running_loop

        if _get_running_loop() is not None:
            raise RuntimeError(
                "nous_twisted needs a running Twisted reactor, and this is an asyncio loop without "
                "one (Scrapy's TWISTED_REACTOR_ENABLED=False, or plain asyncio). Install "
                "twisted.internet.asyncioreactor before the loop starts (Scrapy: keep the reactor "
                "enabled, TWISTED_REACTOR = 'twisted.internet.asyncioreactor.AsyncioSelectorReactor'), "
                "or pass reactor= explicitly."
            )
    from twisted.internet import reactor as global_reactor

    return global_reactor


def get_transport(reactor: Any | None = None) -> Transport:
    """The shared transport (pool, agent, treq client) of a reactor, made on first use."""
    reactor = default_reactor(reactor)
    t = _transports.get(reactor)
    if t is None:
        t = _transports[reactor] = Transport(reactor, current())
    return t


def settings_changed(old: Settings, new: Settings) -> None:
    for t in list(_transports.values()):
        if old.pool != new.pool:
            t.pool.apply(new.pool)
        if old.ca_bundle != new.ca_bundle:
            t.rebuild_tls()


def shutdown(reactor: Any | None = None, wait: float = SHUTDOWN_WAIT) -> Deferred[None]:
    """Abort open streams and requests and close every pooled connection.

    Fires once they are closed, or after ``wait`` seconds at most.  It runs by
    itself before the reactor shuts down; the next call makes a new pool.
    """
    reactor = default_reactor(reactor)
    t = _transports.get(reactor)
    if t is None:
        return succeed(None)
    return t.shutdown(wait)


__all__ = ["NousConnectionPool", "PoolSettings", "get_transport", "shutdown"]

