"""The byte-moving half of a stream, shared by both stream backends.

A :class:`StreamExchange` sends the request (through a callable the backend
supplies), hands status, headers and body bytes to the EventStream, and does
what the EventStream asks: pause, resume, abort, drain.  It never decodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from ..errors import NousHTTPError, TransportError
from ..eventstream import EventStream
from ..exchange import _describe, _reasons, classify
from ..pool import abort_transport, get_transport, send_with_ticket
from ..request import HTTPRequest

# After the end signal, how long the rest of the body may take to arrive
# before the connection is aborted instead of returned to the pool (the
# consumer sees the end after the body's end, or after this at most).
DRAIN_GRACE = 1.0


class _Receiver(Protocol):
    """Receives the body bytes; re-pauses on every chunk while asked to,
    because deliverBody resumes the transport behind our back (twisted#9132)."""

    def __init__(self, exchange: StreamExchange) -> None:
        self.exchange = exchange

    def connectionMade(self) -> None:
        ex = self.exchange
        ex._body_transport = self.transport
        if ex.paused:
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        ex = self.exchange
        if ex.paused:
            self.transport.pauseProducing()  # type: ignore[union-attr]
        ex.stream._data(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.exchange._body_lost(reason)


class StreamExchange:
    """One streaming request on the wire; the EventStream's ByteSource."""

    def __init__(
        self,
        stream: EventStream,
        reactor: Any,
        request: HTTPRequest,
        connect_timeout: float,
        shared_pool: bool,
    ) -> None:
        self.stream = stream
        self.reactor = reactor
        self.request = request
        self.connect_timeout = connect_timeout
        self.shared_pool = shared_pool
        self.paused = False
        self._request_d: Deferred[Any] | None = None
        self._body_transport: Any = None
        self._aborted = False
        self._drain_timer: IDelayedCall | None = None
        self._body_over = False

    def start(self, send: Callable[[], Deferred[Any]]) -> EventStream:
        stream = self.stream
        stream._attach(self, get_transport(self.reactor).active)
        d = send_with_ticket(
            send, self.connect_timeout, stream._connected, self.request.display_url, self.shared_pool
        )
        self._request_d = d
        d.addCallbacks(self._got_response, self._request_failed)
        return stream

    # -- the wire -------------------------------------------------------------

    def _got_response(self, response: IResponse) -> None:
        self._request_d = None
        if self._aborted:
            return
        self.stream._response(response.code, response.headers)
        response.deliverBody(_Receiver(self))

    def _request_failed(self, failure: Failure) -> None:
        self._request_d = None
        if self._aborted:
            return
        failure = classify(failure, self.request.display_url)
        if isinstance(failure.value, NousHTTPError):
            self.stream._fail(failure.value)
        else:
            self.stream._fail(
                TransportError(f"the stream to {self.request.display_url} failed: {_describe(failure.value)}")  # type: ignore[arg-type]
            )

    def _body_lost(self, reason: Failure) -> None:
        self._body_over = True
        self._body_transport = None
        if self._drain_timer is not None:
            if self._drain_timer.active():
                self._drain_timer.cancel()
            self._drain_timer = None
        if self._aborted:
            return
        clean = reason.check(ResponseDone, PotentialDataLoss) is not None
        why = "" if clean else ", ".join(_describe(r) for r in _reasons(reason.value))
        self.stream._body_end(clean, why)

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
        if self._request_d is not None:
            d, self._request_d = self._request_d, None
            d.cancel()
        else:
            abort_transport(self._body_transport)

    def drain(self) -> bool:
        if self._body_over or self._aborted:
            return False
        self.resume_reading()
        self._drain_timer = self.reactor.callLater(DRAIN_GRACE, self._drain_expired)
        return True

    def _drain_expired(self) -> None:
        self._drain_timer = None
        self.abort()
        self.stream._release_terminal()
