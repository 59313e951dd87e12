"""One ``post()`` over HTTP/2: the sink that collects a reply for
:class:`~nous_twisted.backends.h2.H2Backend`, under the same limits and
errors as :class:`~nous_twisted.exchange.PostExchange`.

The stream is credited on arrival with a large window (a reply is read
whole anyway), and ``timeout`` covers the whole response from the moment the
stream is opened on a connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from .compression import STEP, Decompressor, decompressor_for
from .errors import BufferOverflow, NousHTTPError, RequestTimeout, StreamTruncated
from .exchange import MAX_RESPONSE_BODY
from .h2conn import H2Stream
from .request import HTTPRequest
from .response import RawResponse

log = Logger(namespace="nous_twisted")


class H2PostExchange:
    """Collects one reply; fires :attr:`result` with a RawResponse."""

    __slots__ = (
        "_chunks", "_error", "_fallback_d", "_headers", "_inflater", "_received", "_size", "_status", "_timer",
        "reactor", "result", "stream", "timeout", "url",
    )

    def __init__(self, reactor: Any, request: HTTPRequest, timeout: float) -> None:
        self.reactor = reactor
        self.url = request.display_url
        self.timeout = timeout
        self.result: Deferred[RawResponse] = Deferred(self._cancel)
        self.stream: H2Stream | None = None
        self._fallback_d: Deferred[RawResponse] | None = None
        self._timer: IDelayedCall | None = None
        self._status = 0
        self._headers: Headers | None = None
        self._inflater: Decompressor | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._received = 0
        self._error: NousHTTPError | None = None

    def chain(self, d: Deferred[RawResponse]) -> None:
        """The request went through the agent backend instead: its result is ours."""
        self._fallback_d = d
        d.addCallbacks(self._fallback_done, self._fallback_failed)

    def _fallback_done(self, raw: RawResponse) -> None:
        if not self.result.called:
            self.result.callback(raw)

    def _fallback_failed(self, failure: Any) -> None:
        if not self.result.called:
            self.result.errback(failure)

    # -- Sink -----------------------------------------------------------------------

    def connected(self) -> None:
        if self._timer is None and not self.result.called:
            self._timer = self.reactor.callLater(self.timeout, self._time_out)

    def response_received(self, status: int, headers: Headers) -> None:
        self._status = status
        self._headers = headers
        encoding = headers.getRawHeaders(b"content-encoding")
        if encoding:
            try:
                self._inflater = decompressor_for(b",".join(encoding))
            except NousHTTPError as e:
                if 200 <= status < 300:
                    self._give_up(e)
                # else: an error body we cannot expand: report it as it came

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._received += len(data)
        inflater = self._inflater
        if inflater is None:
            self._add(data)
            return
        try:
            inflater.push(data)
            while self._error is None:
                out = inflater.pull(STEP)
                if not out:
                    break
                self._add(out)
        except NousHTTPError as e:
            self._give_up(e)

    def body_ended(self, clean: bool, why: str = "") -> None:
        if self.result.called:
            return
        self._stop_timer()
        if clean:
            try:
                if self._inflater is not None:
                    self._inflater.close()
            except NousHTTPError as e:
                self._fail(e)
                return
            assert self._headers is not None
            body = b"".join(self._chunks)
            self._chunks = []
            self.result.callback(RawResponse(self._status, self._headers, body))
            return
        self._fail(StreamTruncated(
            f"the response body from {self.url} ended uncleanly after {self._received} bytes "
            f"(HTTP {self._status}): {why}"
        ))

    def failed(self, error: NousHTTPError) -> None:
        self._stop_timer()
        if not self.result.called:
            self._fail(error)

    # -- limits ------------------------------------------------------------------------

    def _add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_RESPONSE_BODY:
            self._give_up(BufferOverflow(
                f"the response body from {self.url} is over {MAX_RESPONSE_BODY} "
                "bytes (decoded); use stream() for large replies"
            ))
            return
        self._chunks.append(data)

    def _give_up(self, error: NousHTTPError) -> None:
        self._error = error
        self._chunks = []
        self._stop_timer()
        if self.stream is not None:
            self.stream.abort()
        if not self.result.called:
            self._fail(error)

    def _time_out(self) -> None:
        self._timer = None
        self._give_up(RequestTimeout("receive", self.timeout, self.url))

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel(self, _: Deferred[RawResponse]) -> None:
        self._stop_timer()
        if self._fallback_d is not None:
            self._fallback_d.cancel()
        elif self.stream is not None:
            self.stream.abort()

    def _fail(self, error: NousHTTPError) -> None:
        log.debug("POST {url} failed: {error}", url=self.url, error=str(error))
        self.result.errback(error)
