"""The byte-moving half of a stream, shared by both stream backends.

A :class:`StreamExchange` sends the request (through a callable the backend
supplies), hands status, headers and body bytes to its
:class:`~nous_twisted.streamcore.StreamCore`, and does what the core asks:
pause, resume, abort, drain.  It never decodes.

It is also the body's protocol (``Response.deliverBody``): one object per
stream instead of two, and one call less per read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse
from zope.interface import implementer

from .body import BytesProducer
from .errors import NousHTTPError, TransportError
from .failures import classify, describe, reasons
from .pool import abort_transport, send_with_ticket
from .request import HTTPRequest
from .streamcore import StreamCore

# After the end signal, how long the rest of the body may take to arrive
# before the connection is aborted instead of returned to the pool (the
# consumer sees the end after the body's end, or after this at most).
DRAIN_GRACE = 1.0

_DONE = Failure(ResponseDone())


@implementer(IProtocol)
class StreamExchange:
    """One streaming request on the wire; the core's ByteSource, and the
    protocol its response body is delivered to."""

    __slots__ = (
        "_aborted", "_body_over", "_body_transport", "_drain_timer", "_producer", "_request_d",
        "clock", "connect_timeout", "core", "paused", "pool_timeout", "proxy", "shared_pool", "url",
    )

    def __init__(
        self,
        core: StreamCore,
        clock: Any,
        request: HTTPRequest,
        connect_timeout: float,
        shared_pool: bool,
    ) -> None:
        self.core = core
        self.clock = clock
        self.url = request.display_url
        self._producer: BytesProducer | None = BytesProducer(request.body)
        self.connect_timeout = connect_timeout
        self.pool_timeout = request.pool_timeout
        self.shared_pool = shared_pool
        self.proxy = request.proxy  # the route, handed to the shared agent with the ticket
        self.paused = False
        self._request_d: Deferred[Any] | None = None
        self._body_transport: Any = None
        self._aborted = False
        self._drain_timer: IDelayedCall | None = None
        self._body_over = False

    def start(self, send: Callable[[BytesProducer], Deferred[Any]], registry: set[Any] | None) -> None:
        """Send with ``send(body_producer)``; feed the core."""
        core = self.core
        core.attach(self, registry)
        producer = self._producer
        assert producer is not None
        d = send_with_ticket(
            lambda: send(producer), self.connect_timeout, core.connected, self.url, self.shared_pool,
            pool_timeout=self.pool_timeout, proxy=self.proxy,
        )
        if not d.called:
            self._request_d = d
        d.addCallbacks(self._got_response, self._request_failed)

    # -- the wire -------------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self._request_d = None
        if self._producer is not None:
            self._producer.release()
            self._producer = None
        if self._aborted:
            # Cancelled as the response arrived: do not leave it unread.
            response.deliverBody(_Discard())
            return
        self.core.response_received(response.code, response.headers)
        if self._aborted:  # the core refused the response at once
            response.deliverBody(_Discard())
            return
        response.deliverBody(self)

    # -- the body's protocol ----------------------------------------------------

    def makeConnection(self, transport: Any) -> None:
        self._body_transport = transport
        self.connectionMade()

    def connectionMade(self) -> None:
        if self.paused:
            self._body_transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        # Re-paused on every chunk while paused: deliverBody resumes the
        # transport behind our back (twisted#9132).
        if self.paused:
            self._body_transport.pauseProducing()
        self.core.data_received(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._body_lost(reason)

    def _request_failed(self, failure: Failure) -> None:
        self._request_d = None
        if self._aborted:
            return
        failure = classify(failure, self.url)
        if isinstance(failure.value, NousHTTPError):
            self.core.failed(failure.value)
        else:
            self.core.failed(
                TransportError(f"the stream to {self.url} failed: {describe(failure.value)}")  # type: ignore[arg-type]
            )

    def _body_lost(self, reason: Failure) -> None:
        self._body_over = True
        self._body_transport = None
        if self._drain_timer is not None:
            if self._drain_timer.active():
                self._drain_timer.cancel()
            self._drain_timer = None
        if self._aborted:
            self.core.release_terminal()
            return
        clean = reason.check(ResponseDone, PotentialDataLoss) is not None
        why = "" if clean else ", ".join(describe(r) for r in reasons(reason.value))
        self.core.body_ended(clean, why)

    # -- ByteSource -------------------------------------------------------------

    def pause_reading(self) -> None:
        self.paused = True
        t = self._body_transport
        if t is not None:
            t.pauseProducing()

    def resume_reading(self) -> None:
        self.paused = False
        t = self._body_transport
        if t is not None:
            t.resumeProducing()

    def abort(self) -> None:
        if self._aborted or self._body_over:
            return
        self._aborted = True
        timer, self._drain_timer = self._drain_timer, None
        if timer is not None and timer.active():
            timer.cancel()  # a cancel during the drain: nothing left to wait for
        if self._request_d is not None:
            d, self._request_d = self._request_d, None
            d.cancel()
        else:
            abort_transport(self._body_transport)

    def drain(self) -> bool:
        if self._body_over or self._aborted:
            return False
        self.resume_reading()
        self._drain_timer = self.clock.callLater(DRAIN_GRACE, self._drain_expired)
        return True

    def _drain_expired(self) -> None:
        self._drain_timer = None
        self.abort()
        self.core.release_terminal()


class _Discard(Protocol):
    """Reads nothing: its connection was aborted already."""

    def connectionMade(self) -> None:
        abort_transport(self.transport)
