"""The per-host registry of HTTP/2 connections, beside the shared pool.

Twisted's ``HTTPConnectionPool`` and ``Agent`` cannot carry HTTP/2, so the
h2 backends keep their connections here, one :class:`H2Pool` per
:class:`~nous_twisted.shared.Shared` (so per reactor), under the same
:class:`~nous_twisted.settings.PoolSettings`, read on every request:

- ``max_connections`` caps a host's HTTP/2 connections (draining ones, after
  a GOAWAY, are not counted); each carries up to the server's live
  SETTINGS_MAX_CONCURRENT_STREAMS, and no stream before the server's
  SETTINGS;
- a request that finds no room waits in FIFO order: for a connection whose
  handshake is pending (a burst opens ONE connection, not one per
  request), then for a stream slot (a stream counts until END_STREAM or
  RST_STREAM, not until its terminal event), under ``request.pool_timeout``;
- a connection with no stream closes after ``timeout`` milliseconds;
- ``shutdown()`` closes them all (the registry sits in ``Shared.active``).

A host that answers ALPN with ``http/1.1`` or nothing is remembered (and
logged once): its queued and later requests go through the agent backend,
whose connections never offer h2.

A request through a proxy has the proxy in its key: its connections are
CONNECT tunnels (``tunnel.ProxyEndpoint``, as the shared agent's) with the
target's TLS and ALPN inside.
"""

from __future__ import annotations

import weakref
from collections import deque
from typing import Any

from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS, trustRootFromCertificates
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI

from .errors import NousHTTPError, RequestTimeout, TransportError
from .h2conn import MAX_RESENDS, H2ClientProtocol, H2Stream, classify_connect_failure
from .pool import HostPoolStats
from .proxy import Proxy
from .request import HTTPRequest
from .settings import current
from .shared import Shared, add_stats_provider, get_shared
from .tls import Bundle, effective_bundle, load_ca_bundle
from .tunnel import ProxyEndpoint

log = Logger(namespace="nous_twisted.h2")

ALPN = [b"h2", b"http/1.1"]


class _Host:
    """One key's connections and queue."""

    __slots__ = ("attempts", "conns", "key", "waiters")

    def __init__(self, key: Any) -> None:
        self.key = key
        self.conns: list[H2ClientProtocol] = []  # ready, not going away
        self.attempts: dict[H2ClientProtocol, _Attempt] = {}  # connecting, handshaking, awaiting SETTINGS
        self.waiters: deque[H2Stream] = deque()


class _Attempt:
    __slots__ = ("connect_d", "done", "step", "timed_out", "timer", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.done = False
        self.step = "tcp"
        self.timer: IDelayedCall | None = None
        self.connect_d: Any = None
        self.timed_out: float | None = None  # the connect limit, once it ran out


class _OneProtocol(Factory):
    noisy = False

    def __init__(self, proto: H2ClientProtocol) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> H2ClientProtocol:
        return self.proto


def h2_key(request: HTTPRequest, window: int) -> tuple[str, int, Bundle, int, Proxy | None] | None:
    """The registry key of a request (host, port, trust, window and the
    proxy it tunnels through, if any), or None when it cannot go over h2
    (``http://``)."""
    if not request.url_bytes.startswith(b"https:"):
        return None
    uri = URI.fromBytes(request.url_bytes)
    return (uri.host.decode("ascii"), uri.port, effective_bundle(current()), window, request.proxy)


class H2Pool:
    """The HTTP/2 connections of one reactor.  See the module docstring."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.hosts: dict[Any, _Host] = {}
        #: (host, port) that did not offer h2: they go through the agent backend
        self.http11: set[tuple[str, int]] = set()
        self.closed = False
        self._trust: dict[Bundle, Any] = {}
        #: connections opened so far, TLS handshakes included (for tests and the bench)
        self.connections_opened = 0

    # -- asking -------------------------------------------------------------------

    def speaks_h2(self, key: Any) -> bool:
        """False once the host answered without h2."""
        return (key[0], key[1]) not in self.http11

    def stats(self) -> dict[str, dict[str, int]]:
        """Per host: HTTP/2 connections, open streams, waiting requests."""
        out: dict[str, dict[str, int]] = {}
        for key, host in self.hosts.items():
            name = f"https://{key[0]}:{key[1]}"
            s = out.setdefault(name, {"connections": 0, "connecting": 0, "busy": 0, "open_streams": 0, "waiting": 0})
            s["connections"] += len(host.conns)
            s["busy"] += sum(1 for c in host.conns if c.streams)
            s["connecting"] += len(host.attempts)
            s["open_streams"] += sum(len(c.streams) for c in host.conns)
            s["waiting"] += len(host.waiters)
        return out

    # -- the request side -----------------------------------------------------------

    def submit(self, stream: H2Stream, key: Any, connect_timeout: float) -> None:
        """Carry ``stream`` on a connection to ``key``'s host, now or when one has room."""
        if not self.speaks_h2(key) and stream.fallback is not None:
            stream.fallback()
            return
        host = self.hosts.get(key)
        if host is None:
            host = self.hosts[key] = _Host(key)
        # The host's own key, not the request's equal copy: one tuple (and
        # its host name and bundle) per host rather than per open stream.
        stream.key = host.key
        self._enqueue(host, stream, front=False)
        pool_timeout = stream.request.pool_timeout if stream.request is not None else None
        if pool_timeout is not None and stream.registry is self:
            stream.queue_timer = self.reactor.callLater(pool_timeout, self._queue_expired, stream, pool_timeout)
        self._serve(host, connect_timeout)

    def _enqueue(self, host: _Host, stream: H2Stream, front: bool) -> None:
        stream.registry = self
        if front:
            host.waiters.appendleft(stream)
        else:
            host.waiters.append(stream)

    def dequeue(self, stream: H2Stream) -> None:
        """A queued stream gave up (cancelled, timed out)."""
        host = self.hosts.get(stream.key)
        stream.registry = None
        timer, stream.queue_timer = stream.queue_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if host is not None:
            try:
                host.waiters.remove(stream)
            except ValueError:
                pass

    def _queue_expired(self, stream: H2Stream, limit: float) -> None:
        stream.queue_timer = None
        self.dequeue(stream)
        stream.on_failed(RequestTimeout("pool", limit, stream.url))

    def resend(self, stream: H2Stream) -> None:
        """A request the server never processed: first in line again."""
        stream.resends += 1
        if stream.resends > MAX_RESENDS:
            stream.on_failed(TransportError(
                f"the server refused the request to {stream.url} {MAX_RESENDS + 1} times unprocessed "
                "(HTTP/2 REFUSED_STREAM or GOAWAY)"
            ))
            return
        host = self.hosts.get(stream.key)
        if host is None or self.closed:
            stream.on_failed(TransportError(f"the request to {stream.url} could not be sent again: the pool is closed"))
            return
        self._enqueue(host, stream, front=True)
        self.reactor.callLater(0, self._serve, host, None)

    def _serve(self, host: _Host, connect_timeout: float | None) -> None:
        waiters = host.waiters
        while waiters:
            conn = None
            for c in host.conns:
                if c.capacity() > 0:
                    conn = c
                    break
            if conn is None:
                break
            stream = waiters.popleft()
            stream.registry = None
            timer, stream.queue_timer = stream.queue_timer, None
            if timer is not None and timer.active():
                timer.cancel()
            if stream.closed:
                continue
            conn.open_stream(stream)
        if waiters and not host.attempts and not self.closed:
            if len(host.conns) < current().pool.max_connections:
                self._open(host, connect_timeout if connect_timeout is not None else 30.0, waiters[0].url)

    # -- connections ------------------------------------------------------------------

    def _trust_root(self, bundle: Bundle) -> Any:
        if bundle is None:
            return None
        root = self._trust.get(bundle)
        if root is None:
            root = self._trust[bundle] = trustRootFromCertificates(load_ca_bundle(*bundle))
        return root

    def _open(self, host: _Host, connect_timeout: float, url: str) -> None:
        hostname, port, bundle, window, proxy = host.key
        proto = H2ClientProtocol(self, host.key, window, self.reactor)
        attempt = _Attempt(url)
        host.attempts[proto] = attempt
        self.connections_opened += 1
        try:
            creator = optionsForClientTLS(hostname, trustRoot=self._trust_root(bundle), acceptableProtocols=ALPN)
            if proxy is not None:
                endpoint = self._via(proxy, hostname, port, creator, bundle, connect_timeout)
        except Exception as e:
            self._attempt_failed(host, proto, TransportError(f"cannot set up TLS for {url}: {e}"))
            return
        if proxy is None:
            endpoint = wrapClientTLS(creator, HostnameEndpoint(self.reactor, hostname, port, timeout=connect_timeout))
        attempt.timer = self.reactor.callLater(connect_timeout, self._attempt_timed_out, host, proto, connect_timeout)
        d = endpoint.connect(_OneProtocol(proto))
        attempt.connect_d = d

        def connected(_: Any) -> None:
            attempt.connect_d = None
            attempt.step = "tls"

        def failed(f: Failure) -> None:
            attempt.connect_d = None
            if attempt.done:
                return
            if attempt.timed_out is not None:
                # Cancelled by the connect limit: a proxy tunnel names the step it was at.
                step = getattr(f.value, "connect_step", None) or attempt.step
                self._attempt_failed(host, proto, RequestTimeout("connect", attempt.timed_out, url, step=step))
            else:
                self._attempt_failed(host, proto, classify_connect_failure(f, url))

        d.addCallbacks(connected, failed)

    def _via(self, proxy: Proxy, hostname: str, port: int, creator: Any, bundle: Bundle, timeout: float) -> Any:
        """Through ``proxy``: TCP (or TLS, verified as every host) to it, a
        CONNECT tunnel, then the target's TLS (ALPN h2) inside, as the shared
        agent's tunnels (``tunnel.ProxyEndpoint``); the proxy's credentials
        go in CONNECT only."""
        to_proxy: Any = HostnameEndpoint(self.reactor, proxy.host, proxy.port, timeout=timeout)
        if proxy.is_https:
            to_proxy = wrapClientTLS(optionsForClientTLS(proxy.host, trustRoot=self._trust_root(bundle)), to_proxy)
        return ProxyEndpoint(self.reactor, proxy, to_proxy, (hostname.encode("ascii"), port), creator)

    def _attempt_timed_out(self, host: _Host, proto: H2ClientProtocol, limit: float) -> None:
        attempt = host.attempts.get(proto)
        if attempt is None:
            return
        attempt.timer = None
        connecting = attempt.connect_d
        if connecting is not None:
            attempt.timed_out = limit
            connecting.cancel()  # its errback reports the timeout, with the step the endpoint was at
            if attempt.done:
                return
        self._attempt_failed(host, proto, RequestTimeout("connect", limit, attempt.url, step=attempt.step))

    def _attempt_failed(self, host: _Host, proto: H2ClientProtocol, error: NousHTTPError) -> None:
        attempt = host.attempts.pop(proto, None)
        if attempt is None or attempt.done:
            return
        attempt.done = True
        if attempt.timer is not None and attempt.timer.active():
            attempt.timer.cancel()
        if attempt.connect_d is not None:
            d, attempt.connect_d = attempt.connect_d, None
            d.cancel()
        proto.abort()
        # The requests waiting for this connection fail with its error (each
        # is retried, or not, by the caller's policy).
        waiters = list(host.waiters)
        host.waiters.clear()
        for stream in waiters:
            self.dequeue(stream)
            stream.on_failed(error)
        self._maybe_forget(host)

    def _finish_attempt(self, conn: H2ClientProtocol) -> _Host | None:
        host = self.hosts.get(conn.key)
        if host is None:
            return None
        attempt = host.attempts.pop(conn, None)
        if attempt is not None:
            attempt.done = True
            if attempt.timer is not None and attempt.timer.active():
                attempt.timer.cancel()
        return host

    def connection_ready(self, conn: H2ClientProtocol) -> None:
        host = self._finish_attempt(conn)
        if host is None or self.closed:
            conn.abort()
            return
        host.conns.append(conn)
        self._serve(host, None)
        self._idle_check(conn)

    def connection_refused_h2(self, conn: H2ClientProtocol, protocol: bytes | None) -> None:
        host = self._finish_attempt(conn)
        conn.abort()
        hostname, port = conn.key[0], conn.key[1]
        if (hostname, port) not in self.http11:
            self.http11.add((hostname, port))
            what = f"ALPN {protocol.decode('ascii', 'replace')!r}" if protocol else "no ALPN protocol"
            log.info(
                "https://{host}:{port} answered with {what}, not h2: its requests go through the agent "
                "backend (HTTP/1.1) from now on",
                host=hostname, port=port, what=what,
            )
        if host is None:
            return
        waiters = list(host.waiters)
        host.waiters.clear()
        for stream in waiters:
            self.dequeue(stream)
            if not stream.closed and stream.fallback is not None:
                stream.fallback()
        self._maybe_forget(host)

    def connection_lost(self, conn: H2ClientProtocol, failure: Failure) -> None:
        host = self.hosts.get(conn.key)
        if host is None:
            return
        if conn in host.attempts:
            attempt = host.attempts[conn]
            self._attempt_failed(host, conn, classify_connect_failure(failure, attempt.url))
            return
        if conn in host.conns:
            host.conns.remove(conn)
        self._serve(host, None)
        self._maybe_forget(host)

    def streams_changed(self, conn: H2ClientProtocol) -> None:
        host = self.hosts.get(conn.key)
        if conn.going_away:
            if host is not None and conn in host.conns:
                host.conns.remove(conn)
            if not conn.streams:
                conn.abort()
        if host is not None and host.waiters:
            self.reactor.callLater(0, self._serve, host, None)
        self._idle_check(conn)

    def _idle_check(self, conn: H2ClientProtocol) -> None:
        if conn.streams or conn.going_away or conn.idle_timer is not None:
            return
        conn.idle_timer = self.reactor.callLater(current().pool.timeout / 1000.0, self._idle_expired, conn)

    def _idle_expired(self, conn: H2ClientProtocol) -> None:
        conn.idle_timer = None
        if conn.streams:
            return
        host = self.hosts.get(conn.key)
        if host is not None and conn in host.conns:
            host.conns.remove(conn)
        conn.abort()

    def _maybe_forget(self, host: _Host) -> None:
        if not host.conns and not host.attempts and not host.waiters and self.hosts.get(host.key) is host:
            del self.hosts[host.key]

    # -- shutdown -----------------------------------------------------------------------

    def abort_for_shutdown(self) -> None:
        """``shutdown()``: fail the queued requests, close every connection."""
        self.closed = True
        for host in list(self.hosts.values()):
            waiters = list(host.waiters)
            host.waiters.clear()
            for stream in waiters:
                self.dequeue(stream)
                stream.on_failed(TransportError(f"the request to {stream.url} was aborted by shutdown()"))
            for proto in list(host.attempts):
                self._attempt_failed(host, proto, TransportError("aborted by shutdown()"))
            for conn in list(host.conns):
                conn.abort()
            host.conns.clear()
        self.hosts.clear()


# One registry per Shared (so per reactor, renewed after shutdown()).
_pools: weakref.WeakKeyDictionary[Shared, H2Pool] = weakref.WeakKeyDictionary()


def get_h2pool(shared: Shared) -> H2Pool:
    """The HTTP/2 registry beside ``shared``'s pool, made on first use and
    registered in ``shared.active`` so that ``shutdown()`` closes it."""
    pool = _pools.get(shared)
    if pool is None or pool.closed:
        pool = _pools[shared] = H2Pool(shared.reactor)
        shared.active.add(pool)
    return pool


def h2_pool_stats(reactor: Any = None) -> dict[str, dict[str, int]]:
    """Per host: HTTP/2 connections, those connecting, open streams and
    waiting requests, for ``pool_stats()``."""
    pool = _pools.get(get_shared(reactor))
    return {} if pool is None else pool.stats()


def _as_host_stats(shared: Shared) -> dict[str, HostPoolStats]:
    pool = _pools.get(shared)
    out = {}
    for name, s in ({} if pool is None else pool.stats()).items():
        conns = s["connections"] + s["connecting"]
        busy = s["busy"] + s["connecting"]
        out[f"{name} (h2)"] = HostPoolStats(
            conns, conns - busy, busy, s["waiting"], conns, conns - busy, busy, s["waiting"], s["open_streams"]
        )
    return out


add_stats_provider(_as_host_stats)
