"""The way through a forward proxy: an endpoint that connects via the proxy.

Twisted's ``ProxyAgent`` sends plain-HTTP requests to a proxy but has no
``CONNECT`` (twisted#4296), so https targets could not go through one.
:class:`ProxyEndpoint` is an ``IStreamClientEndpoint`` the shared agent uses
in place of the direct one; the pool sees an ordinary connection.

Theory of operation, per connection:

1. connect to the proxy: TCP, or TLS for an ``https://`` proxy (verified
   against the same trust roots as every target);
2. for an https target, send ``CONNECT host:port HTTP/1.1`` with ``Host``
   and ``Proxy-Authorization``, and read the proxy's reply head (bounded by
   :data:`MAX_REPLY_HEAD`); any 2xx opens the tunnel;
3. hand the connection over: for an https target, a TLS layer to the
   *target* is started inside the tunnel, with the target's certificate and
   host name verified as on a direct connection (the proxy relays bytes it
   cannot read); for an http target the HTTP protocol is connected as it is
   (the agent then writes absolute-form requests).

The connect Deferred fires at step 3, with the HTTP protocol, as Twisted's
TLS endpoints do; the pool then waits for the target's TLS handshake.  A
refusal (407, 403, 502...), a close or a reply that is not HTTP fails it
with :class:`~nous_twisted.errors.ConnectError`, whose message names the
proxy (never its credentials) and quotes its status line.  Cancelling it
(the pool's connect timeout) aborts the connection; the failure then carries
``connect_step`` ("tls" for the proxy's handshake, "proxy" for the CONNECT
exchange) so the pool's ``RequestTimeout`` names the step.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHandshakeListener, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import ConnectError, TLSError
from .failures import describe, is_tls_failure, reasons
from .proxy import Proxy

# The largest CONNECT reply head read before the proxy is given up on
# (the pool's response-head limit is of the same order).
MAX_REPLY_HEAD = 64 * 1024
# How much of the proxy's status line a message quotes.
MAX_STATUS_SHOWN = 200


class ProxyStepCancelled(CancelledError):
    """The pool's connect timeout cancelled the connection at ``connect_step``."""

    def __init__(self, connect_step: str) -> None:
        super().__init__(connect_step)
        self.connect_step = connect_step


def connect_request(host: bytes, port: int, proxy: Proxy) -> bytes:
    """The bytes of ``CONNECT host:port``; ``host`` as on the wire (IDNA),
    an IPv6 address without brackets."""
    authority = b"[%s]:%d" % (host, port) if b":" in host else b"%s:%d" % (host, port)
    lines = [b"CONNECT " + authority + b" HTTP/1.1", b"Host: " + authority]
    if proxy.authorization is not None:
        lines.append(b"Proxy-Authorization: " + proxy.authorization)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def shown_status(line: bytes, proxy: Proxy) -> str:
    """The proxy's status line fit for a message: printable ASCII, bounded,
    and without the credentials should a broken proxy echo them."""
    for secret in proxy.secrets:
        line = line.replace(secret, b"[redacted]")
    text = "".join(c if " " <= c <= "~" else "?" for c in line.decode("latin-1"))
    return text[:MAX_STATUS_SHOWN] + ("..." if len(text) > MAX_STATUS_SHOWN else "")


_HINTS = {
    407: "the proxy asked for credentials: give them in the proxy URL "
    "(http://user:password@host:port; percent-encode special characters)",
    403: "the proxy does not allow a tunnel to this host and port",
}


def refusal_message(proxy: Proxy, target: str, status: int, line: bytes) -> str:
    """The message for a proxy that answered CONNECT with a non-2xx status."""
    message = f"the proxy {proxy} refused the tunnel to {target}: {shown_status(line, proxy)!r}"
    hint = _HINTS.get(status)
    if status == 407 and proxy.authorization is not None:
        hint = "the proxy refused the credentials in the proxy URL"
    return message + (f"; {hint}" if hint else "")


class _Attempt:
    """One connection through the proxy, from the connect to the hand-over."""

    def __init__(self, endpoint: ProxyEndpoint, factory: IProtocolFactory) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.protocol: _TunnelProtocol | None = None
        self.step = "tcp"
        self.d: Deferred[Protocol] = Deferred(self._cancel)
        self.connecting: Deferred[Any] | None = None

    def start(self) -> Deferred[Protocol]:
        connecting = self.endpoint.proxy_endpoint.connect(_TunnelFactory(self))
        self.connecting = connecting
        connecting.addErrback(self._connect_failed)
        return self.d

    def _connect_failed(self, failure: Failure) -> None:
        if self.d.called:
            return
        value = failure.value
        if failure.check(CancelledError, ierror.ConnectingCancelledError) or value is None:
            self.d.errback(failure)  # the pool's timeout: it names the step
            return
        err = ConnectError(f"cannot connect to the proxy {self.endpoint.proxy}: {describe(value)}")
        if isinstance(value, ierror.DNSLookupError):
            err.connect_step = "dns"  # type: ignore[attr-defined]
        self.d.errback(err)

    def _cancel(self, _: Deferred[Protocol]) -> None:
        protocol = self.protocol
        if protocol is None:
            if self.connecting is not None:
                self.connecting.cancel()
            return
        self.d.errback(ProxyStepCancelled(self.step))
        protocol.abort()

    def fail(self, error: Exception) -> None:
        if not self.d.called:
            self.d.errback(error)


@implementer(IHandshakeListener)
class _TunnelProtocol(Protocol):
    """Speaks to the proxy until the tunnel is open, then relays the bytes
    to the protocol it hands the connection to."""

    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt
        self.inner: Any = None
        self._head = b""

    def connectionMade(self) -> None:
        self.attempt.protocol = self
        if self.attempt.endpoint.proxy.is_https:
            self.attempt.step = "tls"  # the proxy's own handshake comes first
        else:
            self._proxy_ready()

    def handshakeCompleted(self) -> None:
        if self.inner is None and not self.attempt.d.called:
            self._proxy_ready()

    def _proxy_ready(self) -> None:
        endpoint = self.attempt.endpoint
        if endpoint.target is None:
            self._hand_over(b"")
            return
        self.attempt.step = "proxy"
        host, port = endpoint.target
        self.transport.write(connect_request(host, port, endpoint.proxy))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        inner = self.inner
        if inner is not None:
            inner.dataReceived(data)
            return
        if self.attempt.d.called:
            return  # failed or cancelled: the connection is being aborted
        head = self._head + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self._head = head
            if len(head) > MAX_REPLY_HEAD:
                self._refuse(f"the proxy {self.attempt.endpoint.proxy} sent a reply head over {MAX_REPLY_HEAD} bytes to CONNECT")
            return
        self._head = b""
        line = head[: head.find(b"\r\n")]
        parts = line.split(None, 2)
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() and len(parts[1]) == 3 else 0
        endpoint = self.attempt.endpoint
        proxy = endpoint.proxy
        if not parts or not parts[0].startswith(b"HTTP/") or status == 0:
            self._refuse(
                f"the proxy {proxy} did not answer CONNECT with HTTP: {shown_status(line, proxy)!r}"
            )
        elif 200 <= status < 300:
            self._hand_over(head[end + 4 :])
        else:
            self._refuse(refusal_message(proxy, endpoint.target_text, status, line))

    def _refuse(self, message: str) -> None:
        self.attempt.fail(ConnectError(message))
        self.abort()

    def _hand_over(self, rest: bytes) -> None:
        endpoint = self.attempt.endpoint
        transport = self.transport
        assert transport is not None
        factory = self.attempt.factory
        if endpoint.target_creator is not None:
            tls = TLSMemoryBIOFactory(endpoint.target_creator, True, factory, clock=endpoint.reactor)
            inner: Any = tls.buildProtocol(transport.getPeer())
            app = inner.wrappedProtocol
        else:
            inner = app = factory.buildProtocol(transport.getPeer())
        self.inner = inner
        inner.makeConnection(transport)
        if not self.attempt.d.called:
            self.attempt.d.callback(app)
        if rest:
            inner.dataReceived(rest)

    def abort(self) -> None:
        transport = self.transport
        if transport is not None and not getattr(transport, "disconnected", False):
            transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = Failure(ierror.ConnectionDone())) -> None:  # noqa: B008
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connectionLost(reason)
            return
        proxy = self.attempt.endpoint.proxy
        for r in reasons(reason.value):
            if is_tls_failure(r):
                self.attempt.fail(TLSError(f"TLS handshake with the proxy {proxy} failed: {describe(r)}"))
                return
        if self.attempt.step == "tls":
            what = "during the TLS handshake with it"
        else:
            what = f"before answering CONNECT {self.attempt.endpoint.target_text}"
        self.attempt.fail(ConnectError(f"the proxy {proxy} closed the connection {what}"))


class _TunnelFactory(Factory):
    def __init__(self, attempt: _Attempt) -> None:
        self.attempt = attempt

    def buildProtocol(self, addr: Any) -> _TunnelProtocol:
        return _TunnelProtocol(self.attempt)


@implementer(IStreamClientEndpoint)
class ProxyEndpoint:
    """Connections to a target through ``proxy``.

    :param proxy_endpoint: connects to the proxy (a ``HostnameEndpoint``,
        TLS-wrapped for an ``https://`` proxy).
    :param target: (host as on the wire, port) to ``CONNECT`` to, or None for
        an http target (no tunnel: absolute-form requests to the proxy).
    :param target_creator: the TLS connection creator for the target (from
        the agent's policy, ``creatorForNetloc``), or None for http targets.
    """

    def __init__(
        self,
        reactor: Any,
        proxy: Proxy,
        proxy_endpoint: IStreamClientEndpoint,
        target: tuple[bytes, int] | None,
        target_creator: Any = None,
    ) -> None:
        self.reactor = reactor
        self.proxy = proxy
        self.proxy_endpoint = proxy_endpoint
        self.target = target
        self.target_creator = target_creator
        if target is None:
            self.target_text = ""
        else:
            host = target[0].decode("ascii")
            self.target_text = f"[{host}]:{target[1]}" if ":" in host else f"{host}:{target[1]}"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        return _Attempt(self, protocolFactory).start()

    def __repr__(self) -> str:
        to = f" to {self.target_text}" if self.target is not None else ""
        return f"<ProxyEndpoint via {self.proxy}{to}>"


__all__ = ["MAX_REPLY_HEAD", "ProxyEndpoint", "ProxyStepCancelled", "connect_request"]
