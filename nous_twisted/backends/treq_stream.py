"""Streaming through treq (the default stream backend), push with watermarks."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..backpressure import Watermarks
from ..eventstream import EventStream
from ..interfaces import IStreamBackend
from ..reactors import default_reactor
from ..request import HTTPRequest
from ..shared import get_shared
from ..sse import DEFAULT_MAX_EVENT_BYTES
from ..stream_exchange import StreamExchange
from ..streamcore import StreamCore
from ._options import check_count, check_seconds
from .treq import treq_client, treq_send


@implementer(IStreamBackend)
class TreqStreamBackend:
    """treq's unbuffered response, read ahead of the consumer.

    Events are decoded as fast as bytes arrive; the transport is paused when
    ``high_water`` events are buffered and resumed under ``low_water``.  A
    consumer that goes ``max_pause`` seconds without asking for the next
    event while the stream holds one for it (or holds the stream paused that
    long) gets ``StreamError(BufferOverflow)`` and the connection is closed.
    """

    name = "treq"

    def __init__(
        self,
        high_water: int = 1000,
        low_water: int = 100,
        max_pause: float | None = 30.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        check_count("high_water", high_water)
        check_count("low_water", low_water, minimum=0)
        self._policy = Watermarks(high_water, low_water)
        self.high_water = high_water
        self.low_water = low_water
        self.max_pause = check_seconds("max_pause", max_pause, allow_none=True)
        self.max_event_bytes = check_count("max_event_bytes", max_event_bytes)

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
        shared = get_shared(reactor)
        client = treq_client(shared.agent if agent is None else agent)
        core = StreamCore(
            reactor, request.display_url, timeout, format, self._policy, self.max_pause, self.max_event_bytes,
            request.secrets,
        )
        StreamExchange(core, reactor, request, connect_timeout, agent is None).start(
            lambda body: treq_send(client, request, body, reactor), shared.active
        )
        return EventStream(core, reactor)

    def __repr__(self) -> str:
        return (
            f"TreqStreamBackend(high_water={self.high_water}, low_water={self.low_water}, "
            f"max_pause={self.max_pause}, max_event_bytes={self.max_event_bytes})"
        )
