"""The shared Agent, with what Twisted's redoes on every request done once.

``Agent.request`` parses the URL, builds a new ``HostnameEndpoint`` (IDNA
encoding included) and, for https, asks the TLS policy for a new connection
creator - a new OpenSSL context, ~66 µs - on every request, even when the
pool then hands it a connection that is already open; and it copies the
headers to add ``Host``.  :class:`SharedAgent` keeps, per URL, the parsed
URI, the pool key and the Host value, and per (scheme, host, port) one
endpoint (and with it one TLS context): connections made from it are
verified exactly as before, since the policy is the same.

It also routes through a proxy (issue 11).  The request's proxy arrives with
its connect ticket (``pool.CONNECT_TICKET``, set around ``agent.request()``
by the exchanges), so neither treq nor the backends carry it.  A proxied
plan's pool key is ``(scheme, host, port, proxy)``: tunnelled connections
are pooled and reused per (proxy, target) exactly as direct ones are per
target, and ``max_connections`` applies per target; the proxy's credentials
are part of it, so two users never share a tunnel.  https targets go through
a ``CONNECT`` tunnel (``tunnel.ProxyEndpoint``) with the target's TLS on top,
verified as on a direct connection; http targets are sent to the proxy in
absolute form with ``Proxy-Authorization``, as Twisted's ``ProxyAgent`` does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import URI, Agent
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse

from .body import OneWriteRequest, head_parts
from .pool import CONNECT_TICKET
from .proxy import Proxy
from .request import HTTPRequest
from .tunnel import ProxyEndpoint

# Most applications call a handful of endpoints; past this many distinct
# URLs the cache starts again rather than grow.
MAX_CACHED_URLS = 256

# parsed URI, pool key, endpoint, Host value, origin-form path (URI.originForm
# runs urlunparse on every access)
_Plan = tuple[URI, tuple[bytes, bytes, int], IStreamClientEndpoint, bytes, bytes]
# (parsed URI, pool key, endpoint, Host value, request target as sent)
_ProxyPlan = tuple[URI, tuple[bytes, bytes, int, Proxy], IStreamClientEndpoint, bytes, bytes]
# (method, target, header set, Host value, persistent)
_HeadKey = tuple[bytes, bytes, tuple[tuple[bytes, bytes], ...], bytes, bool]
# the request's Headers (Host included) and its head around Content-Length
_Head = tuple[Headers, "tuple[bytes, bytes] | None"]


def send_through(agent: Any, request: HTTPRequest, body: IBodyProducer | None) -> Deferred[IResponse]:
    """Send the library's ``request`` through ``agent``: the shared agent's
    :meth:`SharedAgent.send` (its head made once), any other agent's
    ``request()``."""
    if type(agent) is SharedAgent:
        return agent.send(request, body)
    return agent.request(request.method, request.url_bytes, request.twisted_headers(), body)  # type: ignore[no-any-return]


class SharedAgent(Agent):
    """An Agent on the shared pool that plans each URL once."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, pool: Any) -> None:
        super().__init__(reactor, contextFactory=policy, pool=pool)  # type: ignore[no-untyped-call]
        self._reactor = reactor
        self._policy = policy
        self._plans: dict[bytes, _Plan] = {}
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}
        self._proxy_plans: dict[tuple[bytes, Proxy], _ProxyPlan] = {}
        self._proxy_endpoints: dict[tuple[bytes, bytes, int, Proxy], IStreamClientEndpoint] = {}
        self._heads: dict[_HeadKey, _Head] = {}

    # Untyped like the method it overrides, so _plan's call stays as it is.
    def _getEndpoint(self, uri):  # type: ignore[no-untyped-def]
        """An IP-literal host needs no name resolution: a TCP endpoint
        connects it for a fraction of ``HostnameEndpoint``'s cost, which
        resolves even an address in the thread pool and builds a class per
        connect (~300 µs of CPU and ~10 KB while connecting, per connection:
        most of the memory of a stream that opens its own).  Hostnames, and
        a Twisted whose Agent lacks the attributes read here, go to Twisted's."""
        factory = getattr(self, "_endpointFactory", None)
        policy = getattr(factory, "_policyForHTTPS", None)
        host = uri.host.decode("ascii", "replace")
        v4 = isIPAddress(host)
        if policy is None or not (v4 or isIPv6Address(host)) or uri.scheme not in (b"http", b"https"):
            return super()._getEndpoint(uri)  # type: ignore[no-untyped-call]
        timeout = getattr(factory, "_connectTimeout", None)
        endpoint: IStreamClientEndpoint = (TCP4ClientEndpoint if v4 else TCP6ClientEndpoint)(
            self._reactor, host, uri.port, timeout=30 if timeout is None else timeout,
            bindAddress=getattr(factory, "_bindAddress", None),
        )
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return endpoint

    def _requestWithEndpoint(
        self,
        key: Any,
        endpoint: IStreamClientEndpoint,
        method: bytes,
        parsedURI: URI,
        headers: Headers | None,
        bodyProducer: IBodyProducer | None,
        requestPath: bytes,
        parts: tuple[bytes, bytes] | None = None,
    ) -> Deferred[IResponse]:
        """Twisted's, sending a :class:`~nous_twisted.body.OneWriteRequest`
        (a body in memory written with its head).  The method was checked by
        ``request.prepare``; ``Host`` was added by :meth:`request`.  ``parts``
        is the head already made for these (see :meth:`send`)."""
        if headers is None:
            headers = Headers()
        if parts is None and not headers.hasHeader(b"host"):
            headers = headers.copy()
            headers.addRawHeader(b"host", self._computeHostValue(parsedURI.scheme, parsedURI.host, parsedURI.port))  # type: ignore[no-untyped-call]
        pool = self._pool
        persistent = pool.persistent

        def connected(proto: HTTP11ClientProtocol) -> Deferred[IResponse]:
            if parts is not None:
                return proto.request(
                    OneWriteRequest.with_head(method, requestPath, headers, bodyProducer, persistent, parsedURI, parts)
                )
            return proto.request(
                OneWriteRequest._construct(  # type: ignore[no-untyped-call]
                    method, requestPath, headers, bodyProducer, persistent=persistent, parsedURI=parsedURI
                )
            )

        now = getattr(pool, "connection_now", None)
        if now is not None:
            proto = now(key, endpoint)
            if proto is not None:
                return connected(proto)
        return pool.getConnection(key, endpoint).addCallback(connected)

    def send(self, request: HTTPRequest, body: IBodyProducer | None) -> Deferred[IResponse]:
        """:meth:`request` for the library's own requests: an application
        sends the same few header sets to the same few URLs, so the request
        head (Twisted's ``Headers``, ``Host`` added, and the bytes Twisted
        would write, checked as it checks them) is made once per distinct
        (method, URL, header set) instead of on every request (~5 µs)."""
        ticket = CONNECT_TICKET.get()
        if ticket is not None and ticket.proxy is not None:
            return self.request(request.method, request.url_bytes, request.twisted_headers(), body)
        try:
            parsed, key, endpoint, host, path = self._plans.get(request.url_bytes) or self._plan(request.url_bytes)
        except SchemeNotSupported:
            return fail()
        persistent = self._pool.persistent
        head_key = (request.method, path, request.headers, host, persistent)
        head = self._heads.get(head_key)
        if head is None:
            head = self._head(head_key, request)
        return self._requestWithEndpoint(key, endpoint, request.method, parsed, head[0], body, path, head[1])

    def _head(self, key: _HeadKey, request: HTTPRequest) -> _Head:
        method, path, _, host, persistent = key
        headers = request.twisted_headers()
        if not headers.hasHeader(b"host"):
            headers.addRawHeader(b"host", host)
        head = (headers, head_parts(method, path, headers, persistent))
        if len(self._heads) >= MAX_CACHED_URLS:
            self._heads.clear()
        self._heads[key] = head
        return head

    def _plan(self, uri: bytes) -> _Plan:
        parsed = URI.fromBytes(uri.strip())
        key = (parsed.scheme, parsed.host, parsed.port)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = self._getEndpoint(parsed)  # type: ignore[no-untyped-call]
        plan = (parsed, key, endpoint, self._computeHostValue(*key), parsed.originForm)  # type: ignore[no-untyped-call]
        if len(self._plans) >= MAX_CACHED_URLS:
            self._plans.clear()
        self._plans[uri] = plan
        return plan

    def _proxy_endpoint(self, proxy: Proxy, parsed: URI) -> IStreamClientEndpoint:
        """Through ``proxy`` to ``parsed``'s host: TCP (or verified TLS) to
        the proxy, then a CONNECT tunnel and the target's TLS for https."""
        to_proxy: IStreamClientEndpoint = HostnameEndpoint(self._reactor, proxy.host, proxy.port)
        if proxy.is_https:
            creator = self._policy.creatorForNetloc(proxy.host.encode("ascii"), proxy.port)
            to_proxy = wrapClientTLS(creator, to_proxy, clock=self._reactor)
        if parsed.scheme == b"https":
            target = self._policy.creatorForNetloc(parsed.host, parsed.port)
            return ProxyEndpoint(self._reactor, proxy, to_proxy, (parsed.host, parsed.port), target)
        return ProxyEndpoint(self._reactor, proxy, to_proxy, None)

    def _plan_via(self, uri: bytes, proxy: Proxy) -> _ProxyPlan:
        parsed = URI.fromBytes(uri.strip())
        if parsed.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"Unsupported scheme: {parsed.scheme!r}")
        key = (parsed.scheme, parsed.host, parsed.port, proxy)
        endpoint = self._proxy_endpoints.get(key)
        if endpoint is None:
            endpoint = self._proxy_endpoints[key] = self._proxy_endpoint(proxy, parsed)
        host = self._computeHostValue(parsed.scheme, parsed.host, parsed.port)  # type: ignore[no-untyped-call]
        if parsed.scheme == b"https":
            target = parsed.originForm
        else:
            # absolute form (RFC 9112 3.2.2), without the fragment
            target = parsed.scheme + b"://" + host + parsed.originForm
        plan = (parsed, key, endpoint, host, target)
        if len(self._proxy_plans) >= MAX_CACHED_URLS:
            self._proxy_plans.clear()
        self._proxy_plans[(uri, proxy)] = plan
        return plan

    def _request_via(
        self,
        proxy: Proxy,
        method: bytes,
        uri: bytes,
        headers: Headers | None,
        bodyProducer: IBodyProducer | None,
    ) -> Deferred[IResponse]:
        plan = self._proxy_plans.get((uri, proxy))
        if plan is None:
            try:
                plan = self._plan_via(uri, proxy)
            except SchemeNotSupported:
                return fail()
        parsed, key, endpoint, host, target = plan
        if headers is None:
            headers = Headers()
        if not headers.hasHeader(b"host"):
            headers.addRawHeader(b"host", host)
        if parsed.scheme == b"http" and proxy.authorization is not None:
            # In a tunnel the proxy never sees the request: CONNECT carried it.
            headers.setRawHeaders(b"proxy-authorization", [proxy.authorization])
        return self._requestWithEndpoint(key, endpoint, method, parsed, headers, bodyProducer, target)

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        ticket = CONNECT_TICKET.get()
        if ticket is not None and ticket.proxy is not None:
            return self._request_via(ticket.proxy, method, uri, headers, bodyProducer)
        try:
            parsed, key, endpoint, host, path = self._plans.get(uri) or self._plan(uri)
        except SchemeNotSupported:
            return fail()
        if headers is None:
            headers = Headers()
        if not headers.hasHeader(b"host"):
            # The library's own Headers, made for this request: no copy needed.
            headers.addRawHeader(b"host", host)
        return self._requestWithEndpoint(key, endpoint, method, parsed, headers, bodyProducer, path)
