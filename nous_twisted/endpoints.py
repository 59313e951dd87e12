"""The shared Agent, with what Twisted's redoes on every request done once.

``Agent.request`` parses the URL, builds a new ``HostnameEndpoint`` (IDNA
encoding included) and, for https, asks the TLS policy for a new connection
creator - a new OpenSSL context, ~66 µs - on every request, even when the
pool then hands it a connection that is already open; and it copies the
headers to add ``Host``.  :class:`SharedAgent` keeps, per URL, the parsed
URI, the pool key and the Host value, and per (scheme, host, port) one
endpoint (and with it one TLS context): connections made from it are
verified exactly as before, since the policy is the same.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import URI, Agent
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse

# Most applications call a handful of endpoints; past this many distinct
# URLs the cache starts again rather than grow.
MAX_CACHED_URLS = 256

# parsed URI, pool key, endpoint, Host value, origin-form path (URI.originForm
# runs urlunparse on every access)
_Plan = tuple[URI, tuple[bytes, bytes, int], IStreamClientEndpoint, bytes, bytes]


class SharedAgent(Agent):
    """An Agent on the shared pool that plans each URL once."""

    def __init__(self, reactor: Any, policy: IPolicyForHTTPS, pool: Any) -> None:
        super().__init__(reactor, contextFactory=policy, pool=pool)  # type: ignore[no-untyped-call]
        self._plans: dict[bytes, _Plan] = {}
        self._endpoints: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

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

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        plan = self._plans.get(uri)
        if plan is None:
            try:
                plan = self._plan(uri)
            except SchemeNotSupported:
                return fail()
        parsed, key, endpoint, host, path = plan
        if headers is None:
            headers = Headers()
        if not headers.hasHeader(b"host"):
            # The library's own Headers, made for this request: no copy needed.
            headers.addRawHeader(b"host", host)
        return self._requestWithEndpoint(key, endpoint, method, parsed, headers, bodyProducer, path)
