"""Streaming through treq (the default stream backend), push with watermarks."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..backpressure import Watermarks
from ..interfaces import IStreamBackend
from ..request import HTTPRequest
from ..shared import Shared
from ..sse import DEFAULT_MAX_EVENT_BYTES
from ..stream_exchange import StreamExchange
from ..streamcore import StreamCore
from ._options import check_count
from ._streaming import StreamBackendBase
from .treq import treq_client, treq_send


@implementer(IStreamBackend)
class TreqStreamBackend(StreamBackendBase):
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
        super().__init__(max_event_bytes, max_pause)

    def _start(
        self, core: StreamCore, request: HTTPRequest, shared: Shared, reactor: Any, connect_timeout: float,
        agent: IAgent | None,
    ) -> None:
        client = treq_client(shared.agent if agent is None else agent)
        StreamExchange(core, reactor, request, connect_timeout, agent is None).start(
            lambda body: treq_send(client, request, body, reactor), shared.active
        )

    def __repr__(self) -> str:
        return (
            f"TreqStreamBackend(high_water={self.high_water}, low_water={self.low_water}, "
            f"max_pause={self.max_pause}, max_event_bytes={self.max_event_bytes})"
        )
