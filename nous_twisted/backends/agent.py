"""Non-streaming POST on a raw ``twisted.web.client.Agent``."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..body import BytesProducer, body_for
from ..endpoints import send_through
from ..exchange import PostExchange
from ..interfaces import IHTTPBackend
from ..reactors import default_reactor
from ..request import HTTPRequest
from ..response import RawResponse
from ..shared import get_shared


def agent_send(agent: IAgent, request: HTTPRequest, body: BytesProducer) -> Deferred[Any]:
    """Send ``request`` (its ``method``) through an Agent, the body written in
    one go; a GET goes without a body (no producer, no ``Content-Length``)."""
    return send_through(agent, request, body_for(request, body))


@implementer(IHTTPBackend)
class AgentBackend:
    """The shortest path Twisted offers: ``Agent.request`` on the shared pool."""

    name = "agent"

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
        use: IAgent = get_shared(reactor).agent if agent is None else agent
        exchange = PostExchange(reactor, request, timeout, connect_timeout, agent is None)
        return exchange.start(lambda body: agent_send(use, request, body))

    def __repr__(self) -> str:
        return "AgentBackend()"
