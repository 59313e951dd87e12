"""Streaming on a raw ``twisted.web.client.Agent``, with strict pull backpressure."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..backpressure import StrictPull
from ..eventstream import EventStream
from ..interfaces import IStreamBackend
from ..reactors import default_reactor
from ..request import HTTPRequest
from ..shared import get_shared
from ..sse import DEFAULT_MAX_EVENT_BYTES
from ..stream_exchange import StreamExchange
from ..streamcore import StreamCore
from ._options import check_count, check_seconds
from .agent import agent_send

_STRICT = StrictPull()


@implementer(IStreamBackend)
class AgentStreamBackend:
    """Strict pull: the body transport is paused after every chunk and resumed
    only when the consumer asks for more, so the socket is never read ahead of
    the consumer (the counterpart of hackney's ``{:async, :once}``).

    :param max_event_bytes: the largest event accepted (10 MiB by default).
    :param max_pause: seconds a consumer may go without asking for the next
        event while the stream holds one for it; then the stream ends with
        ``BufferOverflow`` and the connection is closed.  None: no limit.
    """

    name = "agent"

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, max_pause: float | None = 30.0) -> None:
        self.max_event_bytes = check_count("max_event_bytes", max_event_bytes)
        self.max_pause = check_seconds("max_pause", max_pause, allow_none=True)

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
        use: IAgent = shared.agent if agent is None else agent
        core = StreamCore(
            reactor, request.display_url, timeout, format, _STRICT, self.max_pause, self.max_event_bytes,
            request.secrets,
        )
        StreamExchange(core, reactor, request, connect_timeout, agent is None).start(
            lambda body: agent_send(use, request, body), shared.active
        )
        return EventStream(core, reactor)

    def __repr__(self) -> str:
        return f"AgentStreamBackend(max_event_bytes={self.max_event_bytes}, max_pause={self.max_pause})"
