"""One request's life on the wire, shared by the built-in backends.

It owns the phases and their limits (connect, then receive), cancellation,
and the mapping of Twisted's failures onto the library's typed errors.  A
backend supplies only the call that sends the request (treq or Agent).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from .body import BytesProducer
from .compression import STEP, Decompressor, decompressor_for
from .deadlines import Deadlines, deadlines
from .errors import BufferOverflow, NousHTTPError, RequestTimeout, StreamTruncated
from .failures import classify, describe, reasons
from .pool import abort_transport, send_with_ticket
from .reactors import AwaitableDeferred
from .request import HTTPRequest
from .response import RawResponse

log = Logger(namespace="nous_twisted")

# How a body that was read to its end is reported (Failure.check costs more:
# it names every class in the exception's MRO).
_BODY_ENDS = (ResponseDone, PotentialDataLoss)

# A non-streaming reply larger than this is refused rather than buffered.
MAX_RESPONSE_BODY = 64 * 1024 * 1024


class _BodyCollector(Protocol):
    """Collects a reply's body, expanded when it is compressed, and stops at
    :data:`MAX_RESPONSE_BODY` of *decoded* bytes, so a gzip bomb is an error,
    not an out-of-memory."""

    def __init__(self, exchange: PostExchange, inflater: Decompressor | None) -> None:
        self.exchange = exchange
        self.inflater = inflater
        self.chunks: list[bytes] = []
        self.size = 0  # decoded bytes
        self.received = 0  # bytes off the wire
        self.error: NousHTTPError | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.error is not None:
            return
        self.received += len(data)
        inflater = self.inflater
        if inflater is None:
            self._add(data)
            return
        try:
            inflater.push(data)
            while self.error is None:
                out = inflater.pull(STEP)
                if not out:
                    break
                self._add(out)
        except NousHTTPError as e:
            self._fail(e)

    def _add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_RESPONSE_BODY:
            self._fail(BufferOverflow(
                f"the response body from {self.exchange.url} is over {MAX_RESPONSE_BODY} "
                "bytes (decoded); use stream() for large replies"
            ))
            return
        self.chunks.append(data)

    def _fail(self, error: NousHTTPError) -> None:
        if self.error is None:
            self.error = error
            self.chunks = []
            abort_transport(self.transport)

    def finish(self) -> bytes:
        """The whole decoded body; raises when a compressed body is cut short."""
        if self.inflater is not None:
            self.inflater.close()
        return b"".join(self.chunks)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.exchange._body_done(reason)


class PostExchange:
    """A POST from sending to the last body byte, under its two limits.

    ``pool_timeout`` (the slot wait) and ``connect_timeout`` (DNS, TCP, TLS)
    are enforced by the shared pool, which calls :meth:`_connected`;
    ``timeout`` then covers the whole response, body included.  With a caller's own agent the pool is not ours:
    ``timeout`` then runs from the start.
    """

    __slots__ = (
        "_cancelled", "_collector", "_producer", "_request_d", "_response", "_timed_out", "_timer",
        "connect_timeout", "pool_timeout", "proxy", "reactor", "result", "shared_pool", "timeout", "url",
    )

    def __init__(
        self,
        reactor: Any,
        request: HTTPRequest,
        timeout: float,
        connect_timeout: float,
        shared_pool: bool,
    ) -> None:
        self.reactor = reactor
        self.url = request.display_url
        self._producer: BytesProducer | None = BytesProducer(request.body)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.pool_timeout = request.pool_timeout
        self.shared_pool = shared_pool
        self.proxy = request.proxy  # the route, handed to the shared agent with the ticket
        # Awaitable from asyncio Tasks too, without a chained Deferred per call.
        self.result: Deferred[RawResponse] = AwaitableDeferred(self._cancel)
        self._request_d: Deferred[Any] | None = None
        self._timer: Deadlines | None = None
        self._collector: _BodyCollector | None = None
        self._response: IResponse | None = None
        self._timed_out = False
        self._cancelled = False

    def start(self, send: Callable[[BytesProducer], Deferred[Any]]) -> Deferred[RawResponse]:
        """Send with ``send(body_producer)``; fire with the whole response."""
        producer = self._producer
        assert producer is not None
        d = send_with_ticket(
            lambda: send(producer), self.connect_timeout, self._connected, self.url, self.shared_pool,
            pool_timeout=self.pool_timeout, proxy=self.proxy,
        )
        self._request_d = d
        d.addCallbacks(self._got_response, self._request_failed)
        return self.result

    # -- phases -----------------------------------------------------------

    def _connected(self) -> None:
        if self._timer is None and not self.result.called:
            self._timer = deadlines(self.reactor, self.timeout)
            self._timer.add(self._time_out)

    def _time_out(self) -> None:
        self._timer = None
        self._timed_out = True
        if self._collector is not None:
            abort_transport(self._collector.transport)
        elif self._request_d is not None:
            self._request_d.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.discard(self._time_out)
            self._timer = None

    def _got_response(self, response: IResponse) -> None:
        if self._producer is not None:
            self._producer.release()
            self._producer = None
        if self._cancelled:
            return
        self._response = response
        encoding = response.headers.getRawHeaders(b"content-encoding")
        inflater = None
        if encoding:
            try:
                inflater = decompressor_for(b",".join(encoding))
            except NousHTTPError as e:
                if 200 <= response.code < 300:
                    self._collector = _BodyCollector(self, None)
                    self._collector.error = e
                    response.deliverBody(self._collector)
                    abort_transport(self._collector.transport)
                    return
                # an error body we cannot expand: report it as it came
        self._collector = _BodyCollector(self, inflater)
        response.deliverBody(self._collector)

    def _request_failed(self, failure: Failure) -> None:
        self._stop_timer()
        if self._cancelled or self.result.called:
            return
        url = self.url
        if self._timed_out:
            failure = Failure(RequestTimeout("receive", self.timeout, url))
        else:
            failure = classify(failure, url)
        self._fail(failure)

    def _body_done(self, reason: Failure) -> None:
        self._stop_timer()
        if self._cancelled or self.result.called:
            return
        collector = self._collector
        response = self._response
        assert collector is not None and response is not None
        url = self.url
        err: Exception | None = collector.error
        if err is None and self._timed_out:
            err = RequestTimeout("receive", self.timeout, url)
        if err is None and isinstance(reason.value, _BODY_ENDS):
            try:
                body = collector.finish()
            except NousHTTPError as e:
                err = e
            else:
                self._settle().callback(RawResponse(response.code, response.headers, body))
                return
        if err is None:
            err = StreamTruncated(
                f"the response body from {url} ended uncleanly after {collector.received} bytes "
                f"(HTTP {response.code}): {', '.join(describe(r) for r in reasons(reason.value))}"
            )
        self._fail(Failure(err))

    def _cancel(self, _: Deferred[RawResponse]) -> None:
        self._cancelled = True
        self._stop_timer()
        if self._collector is not None:
            abort_transport(self._collector.transport)
        elif self._request_d is not None:
            self._request_d.cancel()

    def _fail(self, failure: Failure) -> None:
        # The caller receives this failure and decides what it means: log it
        # for debugging only.
        log.debug("POST {url} failed: {error}", url=self.url, error=str(failure.value))
        self._settle().errback(failure)

    def _settle(self) -> Deferred[RawResponse]:
        """The result Deferred, about to fire: let go of everything else.

        The exchange and its body collector refer to each other.  Left as
        they are, every post leaves ~20 objects (response, request, headers,
        Deferreds) for the cyclic garbage collector, whose passes then cost
        more than any other part of a post at high concurrency; cut here,
        they are freed as soon as the caller is done.
        """
        d = self.result
        self._collector = None
        self._response = None
        self._request_d = None
        return d
