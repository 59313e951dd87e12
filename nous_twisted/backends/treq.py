"""Non-streaming POST through treq (the default backend)."""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..exchange import PostExchange
from ..interfaces import IHTTPBackend
from ..pool import default_reactor, get_transport
from ..request import HTTPRequest
from ..response import RawResponse


def treq_send(client: HTTPClient, request: HTTPRequest, reactor: Any) -> Deferred[Any]:
    """POST through treq with an unbuffered response (the body is read by
    the caller, under its own limits) and without following redirects."""
    return client.request(
        "POST",
        request.url,
        headers=request.twisted_headers(),
        data=request.body,
        allow_redirects=False,
        unbuffered=True,
        reactor=reactor,
    )


@implementer(IHTTPBackend)
class TreqBackend:
    """treq's ``HTTPClient`` over the shared pool's agent.

    treq's own ``timeout=`` stops at the response headers, so the exchange
    applies the receive limit to the body as well; redirects are not followed.
    """

    name = "treq"

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
        client = get_transport(reactor).treq if agent is None else HTTPClient(agent)
        exchange = PostExchange(reactor, request, timeout, connect_timeout, agent is None)
        return exchange.start(lambda: treq_send(client, request, reactor))

    def __repr__(self) -> str:
        return "TreqBackend()"
