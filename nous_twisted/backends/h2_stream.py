"""Streaming over HTTP/2 (the ``http2`` extra), with strict pull backpressure
through flow control: a stream's window is credited back only as its
consumer takes events.  Hosts without h2, ``http://`` URLs, a caller's own
agent and proxied requests go through :class:`AgentStreamBackend`."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..backpressure import StrictPull
from ..eventstream import EventStream
from ..h2conn import STREAM_WINDOW, H2Stream
from ..h2pool import get_h2pool, h2_key
from ..interfaces import IStreamBackend
from ..reactors import default_reactor
from ..request import HTTPRequest
from ..shared import get_shared
from ..sse import DEFAULT_MAX_EVENT_BYTES
from ..stream_exchange import StreamExchange
from ..streamcore import StreamCore
from ._options import check_count, check_seconds
from .agent import agent_send
from .agent_stream import AgentStreamBackend

_STRICT = StrictPull()
# h2 refuses a SETTINGS_INITIAL_WINDOW_SIZE of 2**31 or more.
MAX_WINDOW = 2**31 - 1


@implementer(IStreamBackend)
class H2StreamBackend:
    """HTTP/2 streams, negotiated by ALPN (``h2``, ``http/1.1``).

    :param max_event_bytes: the largest event accepted (10 MiB by default).
    :param max_pause: as for :class:`AgentStreamBackend`: then the stream is
        reset (RST_STREAM CANCEL), its connection stays.
    :param window: the stream window (SETTINGS_INITIAL_WINDOW_SIZE), 64 KiB
        by default: the most a stopped consumer holds buffered, plus a frame.
    """

    name = "h2"

    def __init__(
        self,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_pause: float | None = 30.0,
        window: int = STREAM_WINDOW,
    ) -> None:
        self.max_event_bytes = check_count("max_event_bytes", max_event_bytes)
        self.max_pause = check_seconds("max_pause", max_pause, allow_none=True)
        self.window = check_count("window", window, minimum=1024)
        if self.window > MAX_WINDOW:
            raise ValueError(f"window must be at most {MAX_WINDOW}, not {window}")
        self._agent = AgentStreamBackend(self.max_event_bytes, self.max_pause)

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
        key = h2_key(request, self.window)
        pool = get_h2pool(shared)
        if agent is not None or key is None or not pool.speaks_h2(key):
            return self._agent.stream(
                request, timeout=timeout, connect_timeout=connect_timeout, format=format, agent=agent, reactor=reactor
            )
        core = StreamCore(
            reactor, request.display_url, timeout, format, _STRICT, self.max_pause, self.max_event_bytes,
            request.secrets,
        )

        def fallback() -> None:
            StreamExchange(core, reactor, request, connect_timeout, True).start(
                lambda body: agent_send(shared.agent, request, body), shared.active
            )

        source = H2Stream(request, core, reactor, self.window, False, fallback)
        core.attach(source, shared.active)
        pool.submit(source, key, connect_timeout)
        return EventStream(core, reactor)

    def __repr__(self) -> str:
        return f"H2StreamBackend(max_event_bytes={self.max_event_bytes}, max_pause={self.max_pause}, window={self.window})"
