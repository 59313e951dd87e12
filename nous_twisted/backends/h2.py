"""Non-streaming POST over HTTP/2 (the ``http2`` extra): many calls on one
TLS connection per host; hosts without h2, ``http://`` URLs and a caller's own
agent go through :class:`AgentBackend`; through a proxy, h2 runs in a CONNECT tunnel."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..h2conn import POST_WINDOW, STREAM_WINDOW, H2Stream
from ..h2pool import get_h2pool, h2_key
from ..h2post import H2PostExchange
from ..interfaces import IHTTPBackend
from ..reactors import default_reactor
from ..request import HTTPRequest
from ..response import RawResponse
from ..shared import get_shared
from ._options import check_count
from .agent import AgentBackend


@implementer(IHTTPBackend)
class H2Backend:
    """HTTP/2 posts, negotiated by ALPN (``h2``, ``http/1.1``).

    :param window: the stream window a reply opens, credited as it arrives.
    """

    name = "h2"

    def __init__(self, window: int = POST_WINDOW) -> None:
        self.window = check_count("window", window, minimum=STREAM_WINDOW)
        self._agent = AgentBackend()

    def post(
        self,
        request: HTTPRequest,
        *,
        timeout: float,
        connect_timeout: float,
        agent: IAgent | None = None,
        reactor: Any = None,
    ) -> Deferred[RawResponse]:
        reactor = default_reactor(reactor)
        key = h2_key(request, STREAM_WINDOW)
        pool = get_h2pool(get_shared(reactor))
        if agent is not None or key is None or not pool.speaks_h2(key):
            return self._agent.post(request, timeout=timeout, connect_timeout=connect_timeout, agent=agent, reactor=reactor)
        exchange = H2PostExchange(reactor, request, timeout)

        def fallback() -> None:
            exchange.chain(self._agent.post(request, timeout=timeout, connect_timeout=connect_timeout, reactor=reactor))

        exchange.stream = H2Stream(request, exchange, reactor, self.window, True, fallback)
        pool.submit(exchange.stream, key, connect_timeout)
        return exchange.result

    def __repr__(self) -> str:
        return f"H2Backend(window={self.window})"
