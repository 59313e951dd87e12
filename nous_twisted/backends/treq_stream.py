"""Streaming through treq (the default stream backend), push with watermarks."""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..eventstream import EventStream
from ..interfaces import IStreamBackend
from ..pool import default_reactor, get_transport
from ..request import HTTPRequest
from ..sse import DEFAULT_MAX_EVENT_BYTES
from ._streaming import StreamExchange
from .treq import treq_send


@implementer(IStreamBackend)
class TreqStreamBackend:
    """treq's unbuffered response, read ahead of the consumer.

    Events are decoded as fast as bytes arrive; the transport is paused when
    ``high_water`` events are buffered and resumed under ``low_water``.  A
    consumer that holds the stream paused longer than ``max_pause`` seconds
    gets ``StreamError(BufferOverflow)``.
    """

    name = "treq"

    def __init__(
        self,
        high_water: int = 1000,
        low_water: int = 100,
        max_pause: float = 30.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if not 0 <= low_water < high_water:
            raise ValueError(f"need 0 <= low_water < high_water, not {low_water}, {high_water}")
        self.high_water = high_water
        self.low_water = low_water
        self.max_pause = max_pause
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
        client = get_transport(reactor).treq if agent is None else HTTPClient(agent)
        events = EventStream(
            reactor,
            request.display_url,
            timeout,
            format,
            strict=False,
            high_water=self.high_water,
            low_water=self.low_water,
            max_pause=self.max_pause,
            max_event_bytes=self.max_event_bytes,
        )
        exchange = StreamExchange(events, reactor, request, connect_timeout, agent is None)
        return exchange.start(lambda: treq_send(client, request, reactor))

    def __repr__(self) -> str:
        return (
            f"TreqStreamBackend(high_water={self.high_water}, low_water={self.low_water}, "
            f"max_pause={self.max_pause})"
        )
