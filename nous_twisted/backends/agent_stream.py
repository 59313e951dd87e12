"""Streaming on a raw ``twisted.web.client.Agent``, with strict pull backpressure."""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IAgent
from zope.interface import implementer

from ..backpressure import StrictPull
from ..interfaces import IStreamBackend
from ..request import HTTPRequest
from ..shared import Shared
from ..stream_exchange import StreamExchange
from ..streamcore import StreamCore
from ._streaming import StreamBackendBase
from .agent import agent_send


@implementer(IStreamBackend)
class AgentStreamBackend(StreamBackendBase):
    """Strict pull: the body transport is paused after every chunk and resumed
    only when the consumer asks for more, so the socket is never read ahead of
    the consumer (the counterpart of hackney's ``{:async, :once}``).

    :param max_event_bytes: the largest event accepted (10 MiB by default).
    :param max_pause: seconds a consumer may go without asking for the next
        event while the stream holds one for it; then the stream ends with
        ``BufferOverflow`` and the connection is closed.  None: no limit.
    """

    name = "agent"
    _policy = StrictPull()

    def _start(
        self, core: StreamCore, request: HTTPRequest, shared: Shared, reactor: Any, connect_timeout: float,
        agent: IAgent | None,
    ) -> None:
        use: IAgent = shared.agent if agent is None else agent
        StreamExchange(core, reactor, request, connect_timeout, agent is None).start(
            lambda body: agent_send(use, request, body), shared.active
        )

    def __repr__(self) -> str:
        return f"AgentStreamBackend(max_event_bytes={self.max_event_bytes}, max_pause={self.max_pause})"
