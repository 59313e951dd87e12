"""The connection pool: a real per-host limit, bounded connects, healthy reuse.

Twisted's ``maxPersistentPerHost`` caps only *idle* connections; beyond it new
connections open without limit.  :class:`NousConnectionPool` counts every
connection it has open or is opening per ``(scheme, host, port)`` and makes
requests over ``max_connections`` wait, in FIFO order, for a connection to
come back or close.

Reuse is where pools hurt their users, so a connection is checked twice:

- when it comes back (``_putConnection``): one whose transport is aborting or
  closing is never cached (an in-stream error aborts the connection while the
  rest of the body is still being parsed, and Twisted then calls it quiescent);
- when it is handed out (``_pop_cached``): one whose socket is readable (the
  server closed it, or sent stray bytes) is dropped, as urllib3 and httpx do.

A request that still fails on a reused connection before any response byte is
sent again, once, on a fresh connection when it provably was not processed:
it was not completely written, or it carries an ``Idempotency-Key``; a GET
(which has no body and changes nothing) is always safe to send again.

Two phases before a request is sent are bounded here, because only the pool
sees where they end: the wait for a slot (``pool_timeout``, None = as long as
it takes, in FIFO order; over it, ``RequestTimeout("pool")``) and then the
connect (DNS, TCP connect, TLS handshake: ``connect_timeout``, whose clock
starts when the slot is granted; a cached connection needs no connect).  The
caller hands its limits over in a :class:`ConnectTicket` through a context
variable set around ``agent.request()``, which reaches ``getConnection``
synchronously through Agent, treq and their wrappers.

Response heads are bounded too (:data:`MAX_HEADER_LINE`,
:data:`MAX_HEADER_BYTES`): Twisted accepts any number of header lines and
reports a too-long line as a clean close.

The pool's protocol also takes two round trips out of every request
(issue 8): its bytes go out with one ``send()``, together with the other
requests of the same reactor iteration, instead of through Twisted's
write buffer (two ``epoll_ctl`` and an iteration); and the transport is
not paused at the end of the response head when the reader resumes it at
once (two more).  Both rest on private Twisted attributes, checked once per
connection, with Twisted's own path where they are missing.
"""

from __future__ import annotations

import contextvars
import select
import socket
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.tcp import Connection as tcp_Connection
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web._newclient import (
    BODY,
    STATUS,
    HTTP11ClientProtocol,
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
    TransportProxyProducer,
)
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from .chunked import install_decoder
from .errors import RequestTimeout, TransportError
from .head import hook_present as parse_hook_present
from .head import take_head
from .settings import PoolSettings

log = Logger(namespace="nous_twisted.pool")

# How long close_all() waits for aborted connections to report closed.
SHUTDOWN_WAIT = 5.0

# The largest response header line and header block accepted (nginx's
# large_client_header_buffers and Go's DefaultMaxHeaderBytes are of this size).
MAX_HEADER_LINE = 64 * 1024
MAX_HEADER_BYTES = 256 * 1024


# socket.MsgFlag members OR-ed on every call cost an enum construction.
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


def _layers(transport: Any) -> Any:
    """A transport and the transports under it (TLS over TCP)."""
    seen = 0
    while transport is not None and seen < 4:
        yield transport
        transport = getattr(transport, "transport", None)
        seen += 1


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
    if getattr(inner, "_aborted", False) or getattr(inner, "_aborting", False) or getattr(inner, "disconnected", False):
        return
    abort = getattr(inner, "abortConnection", None)
    if abort is not None:
        abort()
    else:
        inner.stopProducing()


def is_closing(transport: Any) -> bool:
    """True when a connection is aborting, closing or closed, at any layer."""
    if transport is None:
        return True
    layer = transport
    for _ in range(4):  # a loop, not _layers(): this runs several times per request
        if getattr(layer, "disconnecting", False) or getattr(layer, "disconnected", False):
            return True
        if getattr(layer, "_aborted", False) or getattr(layer, "_aborting", False):
            return True
        layer = getattr(layer, "transport", None)
        if layer is None:
            break
    return False


def is_readable(transport: Any) -> bool:
    """True when an idle connection's socket has something to read: the
    server closed it (EOF) or sent bytes nobody asked for.  Either way it
    must not carry another request."""
    layer = transport
    for _ in range(4):
        sock = getattr(layer, "socket", None)
        layer = getattr(layer, "transport", None)
        if isinstance(sock, socket.socket):
            return _has_input(sock)
    return False


def _peek(sock: socket.socket) -> bool:
    try:
        sock.recv(1, _PEEK)
        return True  # bytes, or b"" for EOF
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _poll(sock: socket.socket) -> bool:
    # A zero-timeout poll(): a third of a failing MSG_PEEK recv, which costs
    # an exception each time (it runs once per request on a reused
    # connection).  Input, EOF, an error or a hang-up all mean "readable".
    fd = sock.fileno()
    if fd < 0:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


_has_input = _poll if hasattr(select, "poll") else _peek


class ConnectTicket:
    """A request's limits before it is sent, the hook that starts its
    receive phase, and its route.

    :ivar connect_timeout: seconds for DNS, TCP connect, the proxy's CONNECT
        and the TLS handshake, from the moment a slot is granted.
    :ivar on_connected: called once a connection is in hand (cached or new).
    :ivar url: the URL as displayed, for error messages.
    :ivar pool_timeout: seconds to wait for a slot when the host is at
        ``max_connections``; None waits as long as it takes.
    :ivar proxy: the ``nous_twisted.proxy.Proxy`` the request goes through,
        or None (read by ``SharedAgent``, which makes it part of the pool key).
    """

    __slots__ = ("connect_timeout", "on_connected", "pool_timeout", "proxy", "url")

    def __init__(
        self,
        connect_timeout: float,
        on_connected: Callable[[], None],
        url: str,
        *,
        pool_timeout: float | None = None,
        proxy: Any = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.on_connected = on_connected
        self.url = url
        self.pool_timeout = pool_timeout
        self.proxy = proxy


CONNECT_TICKET: contextvars.ContextVar[ConnectTicket | None] = contextvars.ContextVar(
    "nous_twisted_connect_ticket", default=None
)


def send_with_ticket(
    send: Callable[[], Deferred[Any]],
    connect_timeout: float,
    on_connected: Callable[[], None],
    url: str,
    shared_pool: bool,
    *,
    pool_timeout: float | None = None,
    proxy: Any = None,
) -> Deferred[Any]:
    """Call ``send()`` (which reaches the pool's getConnection synchronously)
    with the slot-wait and connect limits and the route (``proxy``) handed
    over; with a caller's own agent the pool is not ours, so both phases are
    taken as over at once (and the caller's agent decides the route).  A
    synchronous exception becomes a failed Deferred."""
    try:
        if not shared_pool:
            on_connected()
            return send()
        token = CONNECT_TICKET.set(
            ConnectTicket(connect_timeout, on_connected, url, pool_timeout=pool_timeout, proxy=proxy)
        )
        try:
            return send()
        finally:
            CONNECT_TICKET.reset(token)
    except Exception:
        return fail()


@dataclass(frozen=True, slots=True)
class HostPoolStats:
    """One host's connections in the shared pool, now and at their largest.

    :ivar open: connections open or being opened (DNS, TCP, TLS), idle or busy.
    :ivar idle: open connections cached for reuse, carrying no request.
    :ivar in_use: open connections carrying a request or being opened for one
        (``open - idle``).
    :ivar waiting: requests queued for a slot (the host is at
        ``PoolSettings.max_connections``).
    :ivar max_open: the largest ``open`` seen since the pool was made; the
        same for ``max_idle``, ``max_in_use`` and ``max_waiting``.
    :ivar streams: HTTP/2 hosts (keys ending in `` (h2)``): the streams open
        on those connections; 0 for HTTP/1.1, one request a connection.
        HTTP/2 peaks are not tracked: there the ``max_`` fields repeat the
        current values.
    """

    open: int
    idle: int
    in_use: int
    waiting: int
    max_open: int
    max_idle: int
    max_in_use: int
    max_waiting: int
    streams: int = 0


class _Slot:
    """One connection's place in its host's limit; released exactly once."""

    __slots__ = ("connecting", "generation", "key", "pool", "protocol", "released")

    def __init__(self, pool: NousConnectionPool, key: Hashable) -> None:
        self.pool = pool
        self.key = key
        self.protocol: _PooledProtocol | None = None
        self.connecting: Deferred[Any] | None = None  # the endpoint's connect, until it fires
        self.generation = pool.generation  # of the TLS settings it was verified under
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.pool._slot_released(self)


# -- the write path: one send() per request (issue 8) ----------------------------
#
# Twisted's socket transport never writes at once: ``write()`` queues the bytes
# and registers the socket for writability (an ``epoll_ctl``), the next reactor
# iteration sends them and unregisters it (another ``epoll_ctl``); over TLS the
# BufferingTLSTransport first waits a ``callLater(0)`` to gather small writes.
# A request is written synchronously (headers, then the body producer's one
# write), so the pool's protocol gathers what one ``request()`` writes and
# sends it with one ``send()`` right away, queueing only what the kernel does
# not take (as asyncio's transports do).  This relies on private attributes of
# ``twisted.internet.tcp.Connection`` and ``BufferingTLSTransport``;
# :func:`write_hook_present` says whether they are there, and where they are
# not the writes go through Twisted's path unchanged (tests/test_post_fastpath.py
# fails loudly then).

_TCP_ATTRS = ("dataBuffer", "_tempDataBuffer", "_writeDisconnected", "socket", "connected", "disconnecting")


def _tcp_ok(tcp: Any) -> bool:
    return (
        isinstance(tcp, tcp_Connection)
        and all(hasattr(tcp, a) for a in _TCP_ATTRS)
        and "write" not in tcp.__dict__
        and "writeSequence" not in tcp.__dict__
    )


def _tls_ok(tls: Any) -> bool:
    aggregator = getattr(tls, "_aggregator", None)
    return (
        isinstance(tls, BufferingTLSTransport)
        and isinstance(getattr(aggregator, "_buffer", None), list)
        and tls.__dict__.get("write") == aggregator.write  # type: ignore[union-attr]
        and "writeSequence" not in tls.__dict__
        and _tcp_ok(tls.transport)
    )


def write_hook_present(transport: Any) -> bool:
    """Whether requests on ``transport`` (a socket transport, or Twisted's TLS
    over one) are sent with one ``send()`` by the pool's protocol."""
    return _tcp_ok(transport) or _tls_ok(transport)


def _tcp_idle(tcp: Any) -> bool:
    """Nothing queued and open for writing: bytes sent now keep their order."""
    return bool(
        tcp.connected
        and not tcp.disconnecting
        and not tcp._writeDisconnected
        and not getattr(tcp, "_aborting", False)
        and not tcp.dataBuffer
        and not tcp._tempDataBuffer
    )


def _send_now(tcp: Any, data: bytes) -> None:
    """Write ``data`` on a socket transport with one ``send()``; what the
    kernel does not take (or an error) goes through Twisted's own write, which
    queues it, or meets the error again and reports the connection lost."""
    if not data:
        return
    if _tcp_idle(tcp):
        try:
            sent = tcp.socket.send(data)
        except OSError:
            sent = 0
        if sent >= len(data):
            return
        data = data[sent:]
    tcp.write(data)


class _Gather:
    """Holds what one layer is asked to write while a request is written."""

    __slots__ = ("layer", "parts", "saved_write")

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.parts: list[bytes] = []
        self.saved_write = layer.__dict__.get("write")
        layer.write = self.parts.append
        layer.writeSequence = self.parts.extend

    def end(self) -> bytes:
        """Put the layer's own write back; the bytes gathered, joined."""
        layer = self.layer
        d = layer.__dict__
        if d.get("write") == self.parts.append:
            if self.saved_write is None:
                del layer.write
            else:
                layer.write = self.saved_write
        if d.get("writeSequence") == self.parts.extend:
            del layer.writeSequence
        return b"".join(self.parts)


def _gather(transport: Any, known: bool = False) -> _Gather | None:
    """Start gathering a request's writes on ``transport``, when it is one
    whose writes can be sent at once (see :func:`write_hook_present`).
    ``known``: its kind was checked on an earlier request of the connection;
    only what changes between requests is checked again."""
    d = transport.__dict__
    if isinstance(transport, TLSMemoryBIOProtocol):
        if not (known or _tls_ok(transport)):
            return None
        aggregator = transport._aggregator
        tcp = transport.transport
        if (
            aggregator._buffer
            or d.get("write") != aggregator.write
            or "writeSequence" in d
            or "write" in tcp.__dict__
            or not _tcp_idle(tcp)
        ):
            return None
        return _Gather(transport)
    if not (known or _tcp_ok(transport)):
        return None
    if "write" in d or "writeSequence" in d or not _tcp_idle(transport):
        return None
    return _Gather(transport)


def _flush(gather: _Gather) -> None:
    data = gather.end()
    layer = gather.layer
    if not data or is_closing(layer):
        # Aborted while the request was written (its producer failed):
        # Twisted drops what an aborted transport had queued; so does this.
        return
    if isinstance(layer, TLSMemoryBIOProtocol):
        tcp = layer.transport
        if not _tcp_ok(tcp):
            layer.write(data)
            return
        # One TLS write (not the aggregator's callLater(0)), its records
        # gathered below and sent with one send().
        below = _Gather(tcp)
        try:
            TLSMemoryBIOProtocol.write(layer, data)
        finally:
            out = below.end()
        _send_now(tcp, out)
    else:
        _send_now(layer, data)


class _Outbox:
    """Requests written but not yet sent, sent together: back-to-back
    ``send()`` calls rather than one between every two responses handled
    (on loopback, or a busy server, each lone send also wakes the peer).

    A request written while a pooled connection is inside ``dataReceived``
    (the usual case: a response completes and its caller sends the next) is
    sent when the outermost ``dataReceived`` returns; one written elsewhere
    (a timer, the first request) at the end of this reactor iteration, with
    one ``callLater(0)`` for all of them.
    """

    __slots__ = ("call", "depth", "gathers")

    def __init__(self) -> None:
        self.gathers: list[_Gather] = []
        self.call: Any = None
        self.depth = 0  # pooled protocols inside dataReceived, nested

    def add(self, gather: _Gather) -> None:
        self.gathers.append(gather)
        if self.depth == 0 and self.call is None:
            layer: Any = gather.layer
            tcp: Any = layer.transport if isinstance(layer, TLSMemoryBIOProtocol) else layer
            self.call = tcp.reactor.callLater(0, self._timer)

    def _timer(self) -> None:
        self.call = None
        self.flush()

    def flush(self) -> None:
        while self.gathers:
            gathers, self.gathers = self.gathers, []
            for gather in gathers:
                try:
                    _flush(gather)
                except Exception:
                    log.failure("sending a request failed; its connection is closed")
                    abort_transport(gather.layer)


_OUTBOX = _Outbox()


class _HeadProxy(TransportProxyProducer):
    """The transport as the response parser sees it.

    At the end of the response head Twisted's parser pauses the transport
    (two ``epoll_ctl``) and ``deliverBody``, called by the exchange in the
    same call stack, resumes it at once.  While the protocol holds this proxy
    (during one ``dataReceived`` of the head), a pause is only noted, and
    applied when ``dataReceived`` returns unless a resume came first: the
    transport is paused whenever control goes back to the reactor exactly as
    before, without the round trip in between.
    """

    __slots__ = ("holding", "pause_held")

    def __init__(self, producer: Any) -> None:
        super().__init__(producer)  # type: ignore[no-untyped-call]
        self.holding = False
        self.pause_held = False

    def pauseProducing(self) -> None:
        if self.holding:
            self.pause_held = True
        else:
            super().pauseProducing()  # type: ignore[no-untyped-call]

    def resumeProducing(self) -> None:
        self.pause_held = False
        super().resumeProducing()  # type: ignore[no-untyped-call]

    def release(self) -> None:
        self.holding = False
        if self.pause_held:
            self.pause_held = False
            super().pauseProducing()  # type: ignore[no-untyped-call]


def head_hook_present(protocol: Any) -> bool:
    """Whether Twisted's client protocol still keeps the parser's transport
    proxy where :class:`_PooledProtocol` replaces it."""
    parser = getattr(protocol, "_parser", None)
    proxy = getattr(protocol, "_transportProxy", None)
    return (
        parser is not None
        and type(proxy) is TransportProxyProducer
        and getattr(parser, "transport", None) is proxy
        and not hasattr(parser, "response")
    )


@implementer(IHandshakeListener)
class _PooledProtocol(HTTP11ClientProtocol):
    """HTTP11ClientProtocol that tells the pool when it closes and when its
    TLS handshake completes, and bounds the response head."""

    _slot: _Slot
    _handshake: Deferred[_PooledProtocol] | None = None
    _handshake_done = False
    _lost: Deferred[None] | None = None
    _head_bytes = 0
    _head_error: TransportError | None = None
    _fast_write: bool | None = None  # the transport's kind for the write path, checked on first use
    _fast_head: bool | None = None  # Twisted's parser proxy where _HeadProxy replaces it, checked on first use
    _fast_parse: bool | None = None  # a parser head.take_head can fill, checked on first use

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

    # -- the response head's limits -------------------------------------------

    def request(self, request: Any) -> Deferred[Any]:
        gather = None
        if self._state == "QUIESCENT" and self._fast_write is not False:
            if self._fast_write is None:
                # Once per connection: is its transport one the write path knows?
                self._fast_write = write_hook_present(self.transport)
            if self._fast_write:
                gather = _gather(self.transport, known=True)
        try:
            d: Deferred[Any] = super().request(request)
        except BaseException:
            if gather is not None:
                _flush(gather)
            raise
        if gather is not None:
            # Until the flush, whatever else is written on this transport is
            # gathered after the request, in order.
            _OUTBOX.add(gather)
        parser = self._parser
        if parser is not None:
            # Issue 8: a faster chunked decoder for this response (chunked.py).
            install_decoder(parser)
            self._head_bytes = 0
            parser.MAX_LENGTH = MAX_HEADER_LINE
            parser.lineLengthExceeded = self._line_too_long  # type: ignore[method-assign]
            if self._fast_head is None:
                self._fast_head = head_hook_present(self)  # once per connection
            if self._fast_head and type(self._transportProxy) is TransportProxyProducer:
                proxy = _HeadProxy(self.transport)
                self._transportProxy = proxy
                parser.transport = proxy  # type: ignore[assignment]
        return d

    def _line_too_long(self, line: bytes) -> None:
        self._head_failed(
            f"the response headers are too large: a header line is over the limit of {MAX_HEADER_LINE} bytes "
            "(a broken server or proxy?)"
        )

    def _head_failed(self, message: str) -> None:
        if self._head_error is None:
            self._head_error = TransportError(message)
            abort_transport(self.transport)

    def dataReceived(self, bytes: bytes) -> None:
        box = _OUTBOX
        box.depth += 1
        try:
            self._data_received(bytes)
        finally:
            box.depth -= 1
            if not box.depth and box.gathers:
                box.flush()

    def _data_received(self, bytes: bytes) -> None:
        parser = self._parser
        if parser is None or parser.state == BODY or self._head_error is not None:
            super().dataReceived(bytes)  # type: ignore[no-untyped-call]
            return
        self._head_bytes += len(bytes)
        if parser.state == STATUS and self._fast_parse is not False:
            if self._fast_parse is None:
                self._fast_parse = parse_hook_present(parser) and hasattr(self, "_giveUp")  # once per connection
            if self._fast_parse:
                try:
                    rest = take_head(parser, bytes)
                except BaseException:
                    # Where Twisted's parser would have raised: the same end.
                    self._giveUp(Failure())  # type: ignore[no-untyped-call]
                    return
                if rest is not None:
                    bytes = rest
        proxy = self._transportProxy
        if type(proxy) is _HeadProxy:
            proxy.holding = True
            try:
                super().dataReceived(bytes)  # type: ignore[no-untyped-call]
            finally:
                proxy.release()
        else:
            super().dataReceived(bytes)  # type: ignore[no-untyped-call]
        parser = self._parser
        if parser is not None and parser.state != BODY and self._head_bytes > MAX_HEADER_BYTES:
            self._head_failed(
                f"the response headers are too large: over the limit of {MAX_HEADER_BYTES} bytes in all "
                "(a broken server or proxy?)"
            )

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self._head_error is not None:
            reason = Failure(self._head_error)
        try:
            super().connectionLost(reason)  # type: ignore[no-untyped-call]
        finally:
            self._slot.release()
            self._slot.pool._forget(self._slot.key, self)
            d, self._handshake = self._handshake, None
            if d is not None and not d.called:
                d.errback(reason)
            lost, self._lost = self._lost, None
            if lost is not None:
                lost.callback(None)


class _PooledFactory(Factory):
    # One factory a connection: Twisted's "Starting factory" line for each
    # would flood an application's log (Scrapy's, at INFO).
    noisy = False

    def __init__(self, slot: _Slot, quiescent: Callable[[HTTP11ClientProtocol], None]) -> None:
        self._slot = slot
        self._quiescent = quiescent

    def buildProtocol(self, addr: Any) -> _PooledProtocol:
        p = _PooledProtocol(self._quiescent)  # type: ignore[no-untyped-call]
        p._slot = self._slot
        self._slot.protocol = p
        return p


class _ReusedConnection:
    """A cached connection handed out again: a request that fails on it
    before any response byte is sent once more on a fresh connection, when
    it provably was not processed (Go net/http's rule).  The fresh
    connection's attempt is made only then, not for every request."""

    __slots__ = ("_connect_timeout", "_endpoint", "_key", "_pool", "_protocol", "_request", "_url")

    def __init__(
        self,
        protocol: HTTP11ClientProtocol,
        pool: NousConnectionPool,
        key: Hashable,
        endpoint: IStreamClientEndpoint,
        attempt: _Attempt | None,
    ) -> None:
        self._protocol = protocol
        self._pool = pool
        self._key = key
        self._endpoint = endpoint
        self._connect_timeout = None if attempt is None else attempt.connect_timeout
        self._url = "" if attempt is None else attempt.url
        self._request: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._protocol, name)

    def request(self, request: Any) -> Deferred[Any]:
        self._request = request
        d: Deferred[Any] = self._protocol.request(request)
        return d.addErrback(self._failed)

    def _failed(self, reason: Failure) -> Any:
        request, self._request = self._request, None
        if reason.value is not None and _safe_to_resend(reason.value, request):
            log.debug("resending a request that failed on a reused connection")
            fresh = _Attempt()
            fresh.connect_timeout, fresh.url = self._connect_timeout, self._url
            opened = self._pool._open(self._key, self._endpoint, fresh)
            return opened.addCallback(lambda connection: connection.request(request))
        return reason


def _safe_to_resend(exc: BaseException, request: Any) -> bool:
    if not isinstance(exc, (RequestNotSent, RequestTransmissionFailed, ResponseNeverReceived)):
        return False
    for r in getattr(exc, "reasons", ()):
        if r.check(CancelledError) or isinstance(r.value, TransportError):
            return False
    if isinstance(exc, (RequestNotSent, RequestTransmissionFailed)):
        return True  # never completely written: the server cannot have acted on it
    if getattr(request, "method", None) in _REPLAYABLE:
        return True  # safe by definition, and sent without a body (Go's isReplayable)
    return request.headers.hasHeader(b"idempotency-key")  # type: ignore[no-any-return]


_REPLAYABLE = frozenset((b"GET", b"HEAD"))


class _Attempt:
    """One request's way to a connection: its limits (from its ticket; none
    without one) and where its connect phase stands, to say which step
    timed out."""

    __slots__ = ("connect_timeout", "pool_timeout", "step", "url")

    def __init__(self, ticket: ConnectTicket | None = None) -> None:
        self.step = "pool"
        self.connect_timeout = ticket.connect_timeout if ticket is not None else None
        self.pool_timeout = ticket.pool_timeout if ticket is not None else None
        self.url = ticket.url if ticket is not None else ""
        # A proxied route (issue 11) is named in the messages too.
        proxy = getattr(ticket, "proxy", None)
        if proxy is not None:
            self.url = f"{self.url} through the proxy {proxy}"


class _Waiter:
    """A request queued for a slot.  Cancelling it (or its ``pool_timeout``
    running out) marks it; the queue skips marked waiters, so leaving the
    queue is O(1) however long the queue."""

    __slots__ = ("attempt", "cancelled", "d", "endpoint", "inner", "key", "pool", "timer")

    def __init__(
        self, pool: NousConnectionPool, key: Hashable, endpoint: IStreamClientEndpoint, attempt: _Attempt
    ) -> None:
        self.pool = pool
        self.key = key
        self.endpoint = endpoint
        self.attempt = attempt
        self.inner: Deferred[Any] | None = None
        self.cancelled = False
        self.d: Deferred[Any] = Deferred(self._cancel)
        self.timer: Any = None
        if attempt.pool_timeout is not None:
            self.timer = pool._reactor.callLater(attempt.pool_timeout, self._timed_out)

    def _stop_timer(self) -> None:
        timer, self.timer = self.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel(self, _: Deferred[Any]) -> None:
        self._stop_timer()
        if self.inner is not None:
            self.inner.cancel()
        elif not self.cancelled:
            self.cancelled = True
            self.pool._waiter_cancelled(self.key)

    def _timed_out(self) -> None:
        self.timer = None
        if self.inner is None and not self.cancelled:
            self.cancelled = True
            self.pool._waiter_cancelled(self.key)
            attempt = self.attempt
            assert attempt.pool_timeout is not None
            self.d.errback(Failure(RequestTimeout("pool", attempt.pool_timeout, attempt.url)))

    def serve(self, inner: Deferred[Any]) -> None:
        self._stop_timer()
        self.inner = inner
        inner.addBoth(self._fire)

    def _fire(self, result: Any) -> None:
        if not self.d.called:
            self.d.callback(result)
        # else: the wait was cancelled, and cancelling ``inner`` made this failure


class NousConnectionPool(HTTPConnectionPool):
    """HTTPConnectionPool with a per-host connection limit, bounded connects
    and checked reuse."""

    # Twisted's own retry (idempotent methods only) is replaced by
    # _ReusedConnection's, which knows when a POST is safe to send again.
    retryAutomatically = False

    def __init__(self, reactor: Any, settings: PoolSettings) -> None:
        super().__init__(reactor, persistent=True)  # type: ignore[no-untyped-call]
        self._slots: dict[Hashable, set[_Slot]] = {}
        self._waiters: dict[Hashable, deque[_Waiter]] = {}
        self._waiting: dict[Hashable, int] = {}  # live (not cancelled) waiters per key
        # The largest open, idle, in use and waiting seen per key, updated
        # where each can grow (a slot taken, a connection cached or handed
        # out, a request queued): O(1) each, no sampling.
        self._peaks: dict[Hashable, list[int]] = {}
        # The idle timers of connections handed out, kept for their return.
        self._busy_timers: dict[HTTP11ClientProtocol, IDelayedCall] = {}
        self.generation = 0  # bumped when the TLS settings change
        #: queue entries skipped because their request was cancelled (for tests)
        self.waiter_scans = 0
        self.apply(settings)

    # -- settings ---------------------------------------------------------

    def apply(self, settings: PoolSettings) -> None:
        """Take new settings now: limits, and the idle timeout of cached connections."""
        self.max_connections = settings.max_connections
        self.maxPersistentPerHost = settings.max_connections
        # Twisted declares this an int but only ever passes it to callLater.
        self.cachedConnectionTimeout = settings.idle_timeout  # type: ignore[assignment]
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

    def idle_connections(self, key: Hashable | None = None) -> int:
        """Connections cached for reuse, for one key or in all."""
        if key is not None:
            return len(self._connections.get(key, ()))
        return sum(len(c) for c in self._connections.values())

    def waiting(self, key: Hashable | None = None) -> int:
        """Requests waiting for a connection, for one key or in all."""
        if key is not None:
            return self._waiting.get(key, 0)
        return sum(self._waiting.values())

    def _peak(self, key: Hashable) -> None:
        open_ = len(self._slots.get(key, ()))
        idle = len(self._connections.get(key, ()))
        in_use = max(0, open_ - idle)
        waiting = self._waiting.get(key, 0)
        peaks = self._peaks.get(key)
        if peaks is None:
            self._peaks[key] = [open_, idle, in_use, waiting]
            return
        if open_ > peaks[0]:
            peaks[0] = open_
        if idle > peaks[1]:
            peaks[1] = idle
        if in_use > peaks[2]:
            peaks[2] = in_use
        if waiting > peaks[3]:
            peaks[3] = waiting

    def stats(self) -> dict[Hashable, HostPoolStats]:
        """Per pool key, the connections now and the largest numbers seen."""
        out: dict[Hashable, HostPoolStats] = {}
        for key, peaks in self._peaks.items():
            open_ = len(self._slots.get(key, ()))
            idle = len(self._connections.get(key, ()))
            out[key] = HostPoolStats(
                open=open_, idle=idle, in_use=max(0, open_ - idle), waiting=self._waiting.get(key, 0),
                max_open=peaks[0], max_idle=peaks[1], max_in_use=peaks[2], max_waiting=peaks[3],
            )
        return out

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
        attempt = _Attempt(ticket)
        d = self._acquire(key, endpoint, attempt)
        if ticket is None:
            return d
        on_connected = ticket.on_connected

        def connected(proto: Any) -> Any:
            on_connected()
            return proto

        return d.addCallback(connected)

    def connection_now(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Any:
        """What :meth:`getConnection` would hand out at once (a cached
        connection, the request's connect phase over), or None: then call
        :meth:`getConnection`.  Spares a fired Deferred and its callbacks on
        every request that finds an idle connection."""
        ticket = CONNECT_TICKET.get()
        cached = self._pop_cached(key, endpoint, _Attempt(ticket))
        if cached is not None and ticket is not None:
            ticket.on_connected()
        return cached

    def _pop_cached(self, key: Hashable, endpoint: IStreamClientEndpoint, attempt: _Attempt | None = None) -> Any:
        """A healthy idle connection for ``key``, wrapped for a safe resend
        (on a fresh connection under ``attempt``'s connect limit), or None."""
        connections = self._connections.get(key)
        while connections:
            connection = connections.pop(0)
            call = self._timeouts.pop(connection)
            transport = connection.transport
            if connection.state != "QUIESCENT" or is_closing(transport) or is_readable(transport):
                call.cancel()
                abort_transport(transport)
                continue
            self._busy_timers[connection] = call  # reset, not cancelled, when it comes back
            self._peak(key)  # one more in use
            return _ReusedConnection(connection, self, key, endpoint, attempt)
        return None

    def _acquire(self, key: Hashable, endpoint: IStreamClientEndpoint, attempt: _Attempt) -> Deferred[Any]:
        cached = self._pop_cached(key, endpoint, attempt)
        if cached is not None:
            return succeed(cached)
        if not self._waiting.get(key) and self.open_connections(key) < self.max_connections:
            return self._open(key, endpoint, attempt)
        if attempt.pool_timeout is not None and attempt.pool_timeout <= 0:
            # Told not to wait at all.
            return fail(RequestTimeout("pool", attempt.pool_timeout, attempt.url))
        waiter = _Waiter(self, key, endpoint, attempt)
        self._waiters.setdefault(key, deque()).append(waiter)
        self._waiting[key] = self._waiting.get(key, 0) + 1
        self._peak(key)
        return waiter.d

    def _waiter_cancelled(self, key: Hashable) -> None:
        left = self._waiting.get(key, 0) - 1
        if left > 0:
            self._waiting[key] = left
        else:
            # Nobody live is waiting: drop the marked entries at once.
            self._waiting.pop(key, None)
            queue = self._waiters.pop(key, None)
            if queue is not None:
                self.waiter_scans += len(queue)

    def _next_waiter(self, queue: deque[_Waiter]) -> _Waiter | None:
        while queue:
            waiter = queue.popleft()
            if not waiter.cancelled:
                return waiter
            self.waiter_scans += 1
        return None

    def _serve_waiters(self, key: Hashable) -> None:
        queue = self._waiters.get(key)
        while queue and self._waiting.get(key):
            waiter = self._next_waiter(queue)
            if waiter is None:
                break
            cached = self._pop_cached(key, waiter.endpoint, waiter.attempt)
            if cached is None and self.open_connections(key) >= self.max_connections:
                queue.appendleft(waiter)
                break
            self._waiting[key] -= 1
            if cached is not None:
                waiter.serve(succeed(cached))
            else:
                waiter.serve(self._open(key, waiter.endpoint, waiter.attempt))
        if not self._waiting.get(key):
            self._waiting.pop(key, None)
            queue = self._waiters.pop(key, None)
            if queue:
                self.waiter_scans += len(queue)

    def _newConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
        return self._open(key, endpoint, _Attempt())

    def _open(self, key: Hashable, endpoint: IStreamClientEndpoint, attempt: _Attempt) -> Deferred[Any]:
        slot = _Slot(self, key)
        self._slots.setdefault(key, set()).add(slot)
        self._peak(key)
        attempt.step = "dns"

        def quiescent(protocol: HTTP11ClientProtocol) -> None:
            self._putConnection(key, protocol)

        d: Deferred[Any] = endpoint.connect(_PooledFactory(slot, quiescent))
        if not d.called:
            slot.connecting = d

            def connect_over(result: Any) -> Any:
                slot.connecting = None
                return result

            d.addBoth(connect_over)

        def tcp_step(failure: Failure) -> Failure:
            # HostnameEndpoint reports a cancel during resolution as a
            # DNSLookupError, and one during the TCP attempts otherwise; a
            # proxy endpoint (tunnel.py) names its own steps.
            step = getattr(failure.value, "connect_step", None)
            if step is not None:
                attempt.step = step
            elif attempt.step == "dns" and not failure.check(ierror.DNSLookupError):
                attempt.step = "tcp"
            return failure

        d.addErrback(tcp_step)
        if key[0] == b"https":  # type: ignore[index]

            def handshake(proto: _PooledProtocol) -> Deferred[_PooledProtocol]:
                attempt.step = "tls"
                return proto.when_handshake_done()

            d.addCallback(handshake)

        def failed(f: Failure) -> Failure:
            # Once a protocol exists its connectionLost releases the slot, after
            # the socket is really closed; before that, release it here.
            if slot.protocol is None:
                slot.release()
            elif not slot.released:
                abort_transport(slot.protocol.transport)
            return f

        d.addErrback(failed)
        limit = attempt.connect_timeout
        if limit is not None and not d.called:
            # The connect clock starts now that the slot is granted: the wait
            # for it is the pool phase, bounded by pool_timeout alone.
            url = attempt.url

            def timed_out(result: Any, timeout: float) -> Any:
                # Whatever the cancelled step failed with (CancelledError,
                # ConnectingCancelledError, DNSLookupError...), it timed out.
                if isinstance(result, Failure):
                    return Failure(RequestTimeout("connect", limit, url, step=attempt.step))
                return result

            d.addTimeout(limit, self._reactor, onTimeoutCancel=timed_out)
        return d

    # -- returning and dropping connections -------------------------------

    def _putConnection(self, key: Hashable, connection: HTTP11ClientProtocol) -> None:
        slot = getattr(connection, "_slot", None)
        if slot is not None and slot.generation != self.generation:
            # Verified under trust roots that have changed since: never reused.
            abort_transport(connection.transport)
            return
        if is_closing(connection.transport):
            # Aborted while its last response was still being parsed (an
            # in-stream error, then the chunk terminator in the same read):
            # Twisted calls it quiescent, but it is on its way out.
            return
        # Twisted's, except that a connection's idle timer is kept while it
        # carries a request and pushed back when it returns (one reset, not a
        # callLater and a cancel per request).
        connections = self._connections.setdefault(key, [])
        if len(connections) >= self.maxPersistentPerHost:
            self._removeConnection(key, connections[0])
            connections = self._connections.setdefault(key, [])
        connections.append(connection)
        call = self._busy_timers.pop(connection, None)
        if call is not None and call.active():
            call.reset(self.cachedConnectionTimeout)
        else:
            call = self._reactor.callLater(self.cachedConnectionTimeout, self._idle_expired, key, connection)
        self._timeouts[connection] = call
        self._peak(key)
        if key in self._waiters:
            # Not now: the quiescent callback runs before the protocol has
            # finished with the previous response.
            self._reactor.callLater(0, self._serve_waiters, key)

    def _idle_expired(self, key: Hashable, connection: HTTP11ClientProtocol) -> None:
        if self._busy_timers.pop(connection, None) is not None:
            return  # it carries a request: a new timer starts when it comes back
        self._removeConnection(key, connection)

    def _removeConnection(self, key: Hashable, connection: HTTP11ClientProtocol) -> None:
        # Abort rather than loseConnection: an idle TLS connection waiting for
        # close_notify may never close (twisted#8930), holding its slot.
        self._connections[key].remove(connection)
        call = self._timeouts.pop(connection)
        if call.active():  # not when this is the idle timer firing
            call.cancel()
        abort_transport(connection.transport)

    def _forget(self, key: Hashable, connection: HTTP11ClientProtocol) -> None:
        """A cached connection closed (the server went away while it was
        idle): take it out of the cache now, not when it is next asked for."""
        conns = self._connections.get(key)
        if conns is not None and connection in conns:
            conns.remove(connection)
            if not conns:
                del self._connections[key]
            call = self._timeouts.pop(connection, None)
            if call is not None and call.active():
                call.cancel()
        call = self._busy_timers.pop(connection, None)
        if call is not None and call.active():
            call.cancel()

    def new_generation(self) -> None:
        """The TLS trust roots changed: close every idle connection now, and
        every busy one when it comes back, rather than reuse it."""
        self.generation += 1
        for key, conns in list(self._connections.items()):
            for conn in list(conns):
                self._removeConnection(key, conn)

    def close_all(self, wait: float = SHUTDOWN_WAIT) -> Deferred[None]:
        """Abort every connection, idle or busy, and every waiting request;
        fires when all have closed or ``wait`` seconds have passed."""
        waiters = [w for queue in self._waiters.values() for w in queue if not w.cancelled]
        self._waiters.clear()
        self._waiting.clear()
        for waiter in waiters:
            waiter._stop_timer()
            waiter.cancelled = True
            if not waiter.d.called:
                waiter.d.errback(Failure(TransportError(
                    "the request was waiting for a pool connection when shutdown() closed the pool"
                )))
        for conns in self._connections.values():
            for conn in conns:
                self._timeouts.pop(conn).cancel()
        self._connections = {}
        for call in self._busy_timers.values():
            if call.active():
                call.cancel()
        self._busy_timers.clear()
        closed: list[Deferred[None]] = []
        for slots in list(self._slots.values()):
            for slot in list(slots):
                proto = slot.protocol
                if proto is not None and proto.transport is not None:
                    closed.append(proto.when_closed())
                    abort_transport(proto.transport)
        for slots in list(self._slots.values()):
            for slot in list(slots):
                if slot.connecting is not None and slot.protocol is None:
                    slot.connecting.cancel()  # still resolving or connecting
        done: Deferred[Any] = DeferredList(closed, consumeErrors=True)
        timer = self._reactor.callLater(wait, self._late, done, wait)
        return done.addBoth(lambda _: timer.cancel() if timer.active() else None)

    @staticmethod
    def _late(done: Deferred[Any], wait: float) -> None:
        # Nobody receives this: it is worth a warning.
        log.warn("shutdown: connections still open after {wait} s", wait=wait)
        if not done.called:
            done.callback(None)

    def closeCachedConnections(self) -> Deferred[None]:
        return self.close_all()


__all__ = ["HostPoolStats", "NousConnectionPool", "abort_transport", "send_with_ticket"]
