"""One request's life on the wire, shared by the built-in backends.

It owns the phases and their limits (connect, then receive), cancellation,
and the mapping of Twisted's failures onto the library's typed errors.  A
backend supplies only the call that sends the request (treq or Agent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import _WrapperException
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from .errors import (
    BufferOverflow,
    ConnectError,
    NousHTTPError,
    RequestTimeout,
    StreamTruncated,
    TLSError,
    TransportError,
)
from .pool import abort_transport, send_with_ticket
from .request import HTTPRequest
from .response import RawResponse

log = Logger(namespace="nous_twisted")

# A non-streaming reply larger than this is refused rather than buffered.
MAX_RESPONSE_BODY = 64 * 1024 * 1024


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory, written in one go.

    Cheaper than FileBodyProducer, which schedules a cooperator task per body.
    """

    __slots__ = ("_body", "length")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass



def _is_tls_failure(value: BaseException) -> bool:
    try:
        from OpenSSL.SSL import Error as SSLError
    except ImportError:  # pragma: no cover
        SSLError = ()  # type: ignore[assignment,misc]
    try:
        from service_identity import VerificationError
    except ImportError:  # pragma: no cover
        VerificationError = ()  # type: ignore[assignment,misc]
    return isinstance(value, (SSLError, VerificationError))


def _reasons(value: BaseException | None) -> list[BaseException]:
    if isinstance(value, _WrapperException):
        return [r.value for r in value.reasons if r.value is not None]
    return [] if value is None else [value]


def classify(failure: Failure, url: str) -> Failure:
    """Map a Twisted/treq failure onto the library's errors.

    Our own errors and cancellation pass through; an exception we do not
    recognise passes through too, rather than hide a bug behind a vague name.
    """
    value = failure.value
    if isinstance(value, (NousHTTPError, CancelledError)):
        return failure
    reasons = _reasons(value)
    for r in reasons:
        if isinstance(r, NousHTTPError):
            return Failure(r)
        if isinstance(r, CancelledError):
            return Failure(r)
    for r in reasons:
        if _is_tls_failure(r):
            return Failure(TLSError(f"TLS handshake with {url} failed: {_describe(r)}"))
    if isinstance(value, ierror.DNSLookupError):
        return Failure(ConnectError(f"cannot resolve the host of {url}: {_describe(value)}"))
    if isinstance(value, (ierror.ConnectError, ConnectionRefusedError)):
        return Failure(ConnectError(f"cannot connect to {url}: {_describe(value)}"))
    if isinstance(value, _WrapperException) or isinstance(
        value, (ierror.ConnectionLost, ierror.ConnectionDone, ConnectionError)
    ):
        what = ", ".join(_describe(r) for r in reasons)
        return Failure(
            TransportError(f"the connection to {url} failed before a complete response: {what}")
        )
    return failure


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, ierror.ConnectionRefusedError):
        return "connection refused"
    if _is_tls_failure(e) and hasattr(e, "args") and e.args and isinstance(e.args[0], list):
        # OpenSSL's list of (lib, func, reason) tuples: keep the reasons.
        parts = [t[-1] for t in e.args[0] if isinstance(t, tuple) and t]
        if parts:
            return "; ".join(str(p) for p in parts)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class _BodyCollector(Protocol):
    __slots__ = ("chunks", "exchange", "size")

    def __init__(self, exchange: PostExchange) -> None:
        self.exchange = exchange
        self.chunks: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_RESPONSE_BODY:
            self.exchange._overflow()
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.exchange._body_done(reason)


class PostExchange:
    """A POST from sending to the last body byte, under its two limits.

    ``connect_timeout`` is enforced by the shared pool (slot wait, TCP, TLS),
    which calls :meth:`_connected`; ``timeout`` then covers the whole
    response, body included.  With a caller's own agent the pool is not ours:
    ``timeout`` then runs from the start.
    """

    def __init__(
        self,
        reactor: Any,
        request: HTTPRequest,
        timeout: float,
        connect_timeout: float,
        shared_pool: bool,
    ) -> None:
        self.reactor = reactor
        self.request = request
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.shared_pool = shared_pool
        self.result: Deferred[RawResponse] = Deferred(self._cancel)
        self._request_d: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        self._collector: _BodyCollector | None = None
        self._response: IResponse | None = None
        self._timed_out = False
        self._overflowed = False
        self._cancelled = False

    def start(self, send: Callable[[], Deferred[Any]]) -> Deferred[RawResponse]:
        d = send_with_ticket(
            send, self.connect_timeout, self._connected, self.request.display_url, self.shared_pool
        )
        self._request_d = d
        d.addCallbacks(self._got_response, self._request_failed)
        return self.result

    # -- phases -----------------------------------------------------------

    def _connected(self) -> None:
        if self._timer is None and not self.result.called:
            self._timer = self.reactor.callLater(self.timeout, self._time_out)

    def _time_out(self) -> None:
        self._timer = None
        self._timed_out = True
        if self._collector is not None:
            abort_transport(self._collector.transport)
        elif self._request_d is not None:
            self._request_d.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _got_response(self, response: IResponse) -> None:
        if self._cancelled:
            return
        self._response = response
        self._collector = _BodyCollector(self)
        response.deliverBody(self._collector)

    def _overflow(self) -> None:
        if not self._overflowed:
            self._overflowed = True
            assert self._collector is not None
            abort_transport(self._collector.transport)

    def _request_failed(self, failure: Failure) -> None:
        self._stop_timer()
        if self._cancelled or self.result.called:
            return
        url = self.request.display_url
        if self._timed_out:
            failure = Failure(RequestTimeout("receive", self.timeout, url))
        else:
            failure = classify(failure, url)
        self._log_failure(failure)
        self.result.errback(failure)

    def _body_done(self, reason: Failure) -> None:
        self._stop_timer()
        if self._cancelled or self.result.called:
            return
        collector = self._collector
        response = self._response
        assert collector is not None and response is not None
        url = self.request.display_url
        if reason.check(ResponseDone, PotentialDataLoss) and not self._overflowed:
            self.result.callback(
                RawResponse(response.code, response.headers, b"".join(collector.chunks))
            )
            return
        if self._timed_out:
            err: Exception = RequestTimeout("receive", self.timeout, url)
        elif self._overflowed:
            err = BufferOverflow(
                f"the response body from {url} is over {MAX_RESPONSE_BODY} bytes; "
                "use stream() for large replies"
            )
        else:
            err = StreamTruncated(
                f"the response body from {url} ended uncleanly after {collector.size} bytes "
                f"(HTTP {response.code}): {', '.join(_describe(r) for r in _reasons(reason.value))}"
            )
        failure = Failure(err)
        self._log_failure(failure)
        self.result.errback(failure)

    def _cancel(self, _: Deferred[RawResponse]) -> None:
        self._cancelled = True
        self._stop_timer()
        if self._collector is not None:
            abort_transport(self._collector.transport)
        elif self._request_d is not None:
            self._request_d.cancel()

    def _log_failure(self, failure: Failure) -> None:
        log.warn(
            "POST {url} failed: {error}", url=self.request.display_url, error=str(failure.value)
        )
