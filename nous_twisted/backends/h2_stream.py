"""Streaming over HTTP/2 (the ``http2`` extra), with strict pull backpressure
through flow control: a stream's window is credited back only as its
consumer takes events.  Hosts without h2, ``http://`` URLs and a caller's own
agent go through :class:`AgentStreamBackend`; through a proxy, h2 runs in a CONNECT tunnel."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..h2conn import STREAM_WINDOW, H2Stream
from ..h2pool import get_h2pool, h2_key
from ..interfaces import IStreamBackend
from ..request import HTTPRequest
from ..shared import Shared
from ..sse import DEFAULT_MAX_EVENT_BYTES
from ..streamcore import StreamCore
from ._options import check_count
from .agent_stream import AgentStreamBackend

# h2 refuses a SETTINGS_INITIAL_WINDOW_SIZE of 2**31 or more.
MAX_WINDOW = 2**31 - 1


@implementer(IStreamBackend)
class H2StreamBackend(AgentStreamBackend):
    """HTTP/2 streams, negotiated by ALPN (``h2``, ``http/1.1``).

    :param max_event_bytes: the largest event accepted (10 MiB by default).
    :param max_pause: as for :class:`AgentStreamBackend`: then the stream is
        reset (RST_STREAM CANCEL), its connection stays.
    :param window: the stream window (SETTINGS_INITIAL_WINDOW_SIZE), 64 KiB
        by default: the most a stopped consumer holds buffered, plus a frame.

    The agent backend's strict pull on both paths: a request that cannot go
    over h2 (``http://``, a caller's agent, a host without h2) is
    the agent backend's (:meth:`AgentStreamBackend._start`), on the same core.
    """

    name = "h2"

    def __init__(
        self,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_pause: float | None = 30.0,
        window: int = STREAM_WINDOW,
    ) -> None:
        super().__init__(max_event_bytes, max_pause)
        self.window = check_count("window", window, minimum=1024)
        if self.window > MAX_WINDOW:
            raise ValueError(f"window must be at most {MAX_WINDOW}, not {window}")

    def _start(
        self, core: StreamCore, request: HTTPRequest, shared: Shared, reactor: Any, connect_timeout: float,
        agent: IAgent | None,
    ) -> None:
        key = h2_key(request, self.window)
        pool = get_h2pool(shared)
        if agent is not None or key is None or not pool.speaks_h2(key):
            super()._start(core, request, shared, reactor, connect_timeout, agent)
            return

        def fallback() -> None:
            AgentStreamBackend._start(self, core, request, shared, reactor, connect_timeout, None)

        source = H2Stream(request, core, reactor, self.window, False, fallback)
        core.attach(source, shared.active)
        pool.submit(source, key, connect_timeout)

    def __repr__(self) -> str:
        return f"H2StreamBackend(max_event_bytes={self.max_event_bytes}, max_pause={self.max_pause}, window={self.window})"
