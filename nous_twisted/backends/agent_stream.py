"""Streaming on a raw ``twisted.web.client.Agent``, with strict pull backpressure."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..eventstream import EventStream
from ..interfaces import IStreamBackend
from ..pool import default_reactor, get_transport
from ..request import HTTPRequest
from ..sse import DEFAULT_MAX_EVENT_BYTES
from ._streaming import StreamExchange
from .agent import agent_send


@implementer(IStreamBackend)
class AgentStreamBackend:
    """Strict pull: the body transport is paused after every chunk and resumed
    only when the consumer asks for more, so the socket is never read ahead of
    the consumer (the counterpart of hackney's ``{:async, :once}``).

    :param max_event_bytes: the largest event accepted (10 MiB by default).
    """

    name = "agent"

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes

    def stream(
        self,
        request: HTTPRequest,
        *,
        timeout: float,
        connect_timeout: float,
        format: str | None = None,
        agent: IAgent | None = None,
        reactor: Any = None,
    ) -> EventStream:
        reactor = default_reactor(reactor)
        use: IAgent = get_transport(reactor).agent if agent is None else agent
        events = EventStream(
            reactor, request.display_url, timeout, format, strict=True, max_event_bytes=self.max_event_bytes
        )
        exchange = StreamExchange(events, reactor, request, connect_timeout, agent is None)
        return exchange.start(lambda: agent_send(use, request))

    def __repr__(self) -> str:
        return f"AgentStreamBackend(max_event_bytes={self.max_event_bytes})"
