"""What every built-in stream backend does the same way: check its
``max_event_bytes`` and ``max_pause`` at construction, and for each call
make the stream core under its backpressure policy and hand it back as an
:class:`~nous_twisted.eventstream.EventStream`; a backend says only how the
request goes out (:meth:`StreamBackendBase._start`)."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent

from ..backpressure import Policy
from ..eventstream import EventStream
from ..reactors import default_reactor
from ..request import HTTPRequest
from ..shared import Shared, get_shared
from ..sse import DEFAULT_MAX_EVENT_BYTES
from ..streamcore import StreamCore
from ._options import check_count, check_seconds


class StreamBackendBase:
    """:param max_event_bytes: the largest event accepted (10 MiB by default).
    :param max_pause: seconds a consumer may go without asking for the next
        event while the stream holds one for it; None: no limit."""

    name: str
    _policy: Policy

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
        core = StreamCore(
            reactor, request.display_url, timeout, format, self._policy, self.max_pause, self.max_event_bytes,
            request.secrets,
        )
        self._start(core, request, get_shared(reactor), reactor, connect_timeout, agent)
        return EventStream(core, reactor)

    def _start(
        self, core: StreamCore, request: HTTPRequest, shared: Shared, reactor: Any, connect_timeout: float,
        agent: IAgent | None,
    ) -> None:
        """Send ``request``, its response feeding ``core``."""
        raise NotImplementedError
