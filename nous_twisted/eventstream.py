"""EventStream: the consumer's side of a stream.

It holds the decoded events, delivers them by ``async for``, by
``consume(on_event)`` or as an ``IPushProducer``, owns the idle timer, and
tells the backend's byte source when to pause and resume reading.  Two
backpressure policies:

- strict pull (``strict=True``, the Agent backend): the source is paused
  after every chunk and resumed only when the consumer asks for more and
  nothing is queued;
- watermarks (the treq backend): read ahead until ``high_water`` events are
  queued, resume under ``low_water``; a consumer that holds the stream paused
  longer than ``max_pause`` gets ``BufferOverflow``.

Exactly one terminal event (``StreamDone``/``StreamError``) ends a stream.
"""

from __future__ import annotations

import asyncio
from asyncio.events import _get_running_loop
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from .decoders import Decoder, format_for, make_decoder
from .errors import BufferOverflow, NousHTTPError, RequestTimeout, StreamTruncated
from .events import StreamDone, StreamError
from .response import status_error
from .sse import DEFAULT_MAX_EVENT_BYTES

log = Logger(namespace="nous_twisted.stream")

Terminal = StreamDone | StreamError

# A non-2xx stream's error body is read up to this size.
MAX_ERROR_BODY = 1024 * 1024


class ByteSource(Protocol):
    """What a stream backend gives the EventStream: a way to steer the bytes."""

    paused: bool

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abort(self) -> None:
        """Close the connection at once (before or after the headers)."""

    def drain(self) -> bool:
        """The stream is over but the body is not: read and drop the rest so
        the connection can go back to the pool.  True when draining started
        (the source then reports the body's end), False when the body is over."""


@implementer(IPushProducer)
class EventStream:
    """A stream of LLM events.  Made by :func:`nous_twisted.stream`.

    ``status`` and ``headers`` are set once the response headers arrive.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        timeout: float,
        format: str | None = None,
        *,
        strict: bool = False,
        high_water: int = 1000,
        low_water: int = 100,
        max_pause: float = 30.0,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._reactor = reactor
        self._seconds = reactor.seconds
        self.url = url
        self.timeout = timeout
        self.format = format
        self.status: int | None = None
        self.headers: Headers | None = None
        self._strict = strict
        self._high = high_water
        self._low = low_water
        self._max_pause = max_pause
        self._max_event_bytes = max_event_bytes
        self._source: ByteSource | None = None
        self._decoder: Decoder | None = None
        self._error_body: list[bytes] | None = None  # collecting a non-2xx body
        self._error_size = 0
        self._queue: deque[Any] = deque()
        self._terminal: Terminal | None = None
        # Held back while the rest of the body drains after the end signal,
        # so that the connection is back in the pool when the consumer sees
        # the end (and a next request reuses it).
        self._terminal_held = False
        self._terminal_delivered = False
        self._mode: str | None = None  # "iter" or "consume"
        self._waiter: Deferred[Any] | None = None
        self._on_event: Callable[[Any], Any] | None = None
        self._busy = False  # consume(): waiting on on_event's Deferred
        self._consumed: Deferred[Terminal] | None = None
        self._pumping = False
        self._consumer_paused = False
        self._pause_timer: IDelayedCall | None = None
        # idle accounting: time counts only while we wait on the network
        self._idle_timer: IDelayedCall | None = None
        self._idle_used = 0.0
        self._count_since: float | None = None
        self._registry: set[Any] | None = None
        #: the largest number of events ever queued, and the body bytes taken
        #: off the socket so far (for tests and tuning)
        self.max_buffered = 0
        self.bytes_received = 0

    def __repr__(self) -> str:
        state = "done" if self._terminal is not None else "open"
        return f"<EventStream {self.url} {state}, {len(self._queue)} buffered>"

    # ------------------------------------------------------------------
    # the backend's side

    def _attach(self, source: ByteSource, registry: set[Any] | None) -> None:
        self._source = source
        self._registry = registry
        if registry is not None:
            registry.add(self)

    def _connected(self) -> None:
        """The connect phase is over: from now on silence counts as idle."""
        if self._terminal is None and self._count_since is None and not self._consumer_paused:
            self._start_counting()

    def _response(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        if not 200 <= status < 300:
            self._error_body = []
            return
        fmt = self.format
        if fmt is None:
            ctype = headers.getRawHeaders(b"content-type")
            fmt = format_for(ctype[0].decode("latin-1") if ctype else None)
            self.format = fmt
        self._decoder = make_decoder(fmt, self._max_event_bytes)

    def _data(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self._terminal is not None:
            return  # draining after the end signal
        decoder = self._decoder
        if decoder is None:
            self._collect_error(data)
            return
        seen = decoder.events_seen
        items = decoder.feed(data)
        if self._count_since is not None and decoder.events_seen != seen:
            self._idle_used = 0.0
            self._count_since = self._seconds()
        if items:
            q = self._queue
            q.extend(items)
            n = len(q)
            if n > self.max_buffered:
                self.max_buffered = n
        if decoder.terminal is not None:
            self._finish(decoder.terminal, abort=isinstance(decoder.terminal, StreamError))
            self._pump()
            return
        self._pump()
        source = self._source
        if source is None or source.paused or self._terminal is not None:
            return
        if self._strict:
            # Strict pull: after every chunk, stop reading unless the consumer
            # is already waiting for more with nothing queued.  (Pausing and
            # resuming at once would cost two syscalls per chunk for nothing.)
            if self._queue or not self._consumer_waiting():
                self._stop_counting()
                source.pause_reading()
        elif len(self._queue) >= self._high:
            self._stop_counting()
            source.pause_reading()

    def _consumer_waiting(self) -> bool:
        if self._consumer_paused:
            return False
        if self._mode == "iter":
            return self._waiter is not None
        return self._mode == "consume" and not self._busy

    def _collect_error(self, data: bytes) -> None:
        assert self._error_body is not None
        room = MAX_ERROR_BODY - self._error_size
        if room > 0:
            self._error_body.append(data[:room])
        self._error_size += len(data)
        if self._error_size > MAX_ERROR_BODY:
            self._error_done()  # enough to report it; do not read the rest

    def _error_done(self) -> None:
        assert self._error_body is not None and self.status is not None and self.headers is not None
        err = status_error(self.status, self.headers, b"".join(self._error_body), self.url)
        self._finish(StreamError(err), abort=self._error_size > MAX_ERROR_BODY)
        self._pump()

    def _body_end(self, clean: bool, why: str = "") -> None:
        """The body ended: ``clean`` for a complete body (or one delimited by
        the connection's close), else it was cut off."""
        if self._terminal is not None:
            self._release_terminal()
            return
        if self._error_body is not None:
            self._error_done()
            return
        decoder = self._decoder
        if clean and decoder is not None:
            self._queue.extend(decoder.finish())
            assert decoder.terminal is not None
            self._finish(decoder.terminal, abort=False)
        else:
            self._finish(
                StreamError(StreamTruncated(f"the stream from {self.url} ended uncleanly{': ' + why if why else ''}")),
                abort=False,
            )
        self._pump()

    def _fail(self, error: NousHTTPError) -> None:
        """The exchange failed before or while the body was read."""
        if self._terminal is None:
            self._finish(StreamError(error), abort=False)
            self._pump()

    def abort_for_shutdown(self) -> None:
        from .errors import TransportError

        if self._terminal is None:
            self._queue.clear()
            self._finish(StreamError(TransportError(f"the stream from {self.url} was aborted by shutdown()")), abort=True)
            self._pump()

    # ------------------------------------------------------------------
    # the terminal event

    def _finish(self, terminal: Terminal, abort: bool) -> None:
        if self._terminal is not None:
            return
        self._terminal = terminal
        self._stop_counting()
        if self._idle_timer is not None:
            if self._idle_timer.active():
                self._idle_timer.cancel()
            self._idle_timer = None
        self._cancel_pause_timer()
        if self._registry is not None:
            self._registry.discard(self)
            self._registry = None
        source = self._source
        if source is not None:
            if abort:
                source.abort()
            elif isinstance(terminal, StreamDone) and terminal.reason == "stop" and source.drain():
                self._terminal_held = True

    def _release_terminal(self) -> None:
        """The drained body ended, or the drain was cut short: deliver the end."""
        if self._terminal_held:
            self._terminal_held = False
            self._pump()

    # ------------------------------------------------------------------
    # idle timer: counts only while we are reading and the consumer is not
    # holding the stream paused

    def _start_counting(self) -> None:
        self._count_since = self._seconds()
        if self._idle_timer is None:
            self._idle_timer = self._reactor.callLater(self.timeout - self._idle_used, self._idle_check)

    def _stop_counting(self) -> None:
        if self._count_since is not None:
            self._idle_used += self._seconds() - self._count_since
            self._count_since = None

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._terminal is not None or self._count_since is None:
            return  # not counting now: resuming re-arms the timer
        used = self._idle_used + self._seconds() - self._count_since
        if used >= self.timeout:
            self._finish(StreamError(RequestTimeout("idle", self.timeout, self.url)), abort=True)
            self._pump()
        else:
            self._idle_timer = self._reactor.callLater(self.timeout - used, self._idle_check)

    # ------------------------------------------------------------------
    # delivery

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            queue = self._queue
            while not self._consumer_paused:
                if queue:
                    event = None
                    if self._mode == "iter":
                        waiter = self._waiter
                        if waiter is None:
                            break
                        self._waiter = None
                        waiter.callback(queue.popleft())
                        continue
                    if self._mode == "consume" and not self._busy:
                        event = queue.popleft()
                        self._call(event)
                        continue
                    break
                terminal = self._terminal
                if terminal is None or self._terminal_delivered or self._terminal_held:
                    break
                if self._mode == "iter":
                    waiter = self._waiter
                    if waiter is None:
                        break
                    self._waiter = None
                    self._terminal_delivered = True
                    waiter.callback(terminal)
                    continue
                if self._mode == "consume" and not self._busy:
                    self._terminal_delivered = True
                    self._call(terminal)
                    continue
                break
        finally:
            self._pumping = False
        self._flow()

    def _call(self, event: Any) -> None:
        assert self._on_event is not None
        try:
            result = self._on_event(event)
        except Exception:
            self._consumer_failed(Failure())
            return
        if result is not None and (isinstance(result, Deferred) or hasattr(result, "__await__")):
            d = result if isinstance(result, Deferred) else Deferred.fromCoroutine(_as_coro(result))
            if d.called and not d.paused:
                d.addErrback(self._consumer_failed)
            else:
                self._busy = True
                d.addCallbacks(self._consumer_ready, self._consumer_failed)
        if self._terminal_delivered and not self._busy:
            self._fire_consumed()

    def _consumer_ready(self, _: Any) -> None:
        self._busy = False
        if self._terminal_delivered:
            self._fire_consumed()
        else:
            self._pump()

    def _consumer_failed(self, failure: Failure) -> None:
        self._busy = False
        consumed, self._consumed = self._consumed, None
        self.cancel()
        if consumed is not None and not consumed.called:
            consumed.errback(failure)

    def _fire_consumed(self) -> None:
        consumed, self._consumed = self._consumed, None
        if consumed is not None and not consumed.called:
            assert self._terminal is not None
            consumed.callback(self._terminal)

    def _flow(self) -> None:
        """Pause or resume the source as the consumer's demand says."""
        source = self._source
        if source is None or self._terminal is not None or self._decoder is None:
            return
        if not source.paused:
            return
        if self._consumer_paused:
            return
        if self._strict:
            if self._queue or not self._consumer_waiting():
                return
        elif len(self._queue) >= self._low:
            return
        source.resume_reading()
        self._start_counting()

    # ------------------------------------------------------------------
    # the consumer's side

    def __aiter__(self) -> EventStream:
        self._set_mode("iter")
        return self

    async def __anext__(self) -> Any:
        if self._waiter is not None:
            raise RuntimeError("this EventStream is already being awaited by another consumer")
        queue = self._queue
        if queue and not self._consumer_paused:
            event = queue.popleft()
            if self._source is not None and self._source.paused and len(queue) < self._low:
                self._flow()
            return event
        if self._terminal_delivered:
            raise StopAsyncIteration
        self._mode = "iter"
        d: Deferred[Any] = Deferred()
        self._waiter = d
        self._pump()
        if d.called:
            return await d  # fired already: no suspension, fine in any driver
        return await _awaitable(d)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    def consume(self, on_event: Callable[[Any], Any]) -> Deferred[Terminal]:
        """Call ``on_event(event)`` for every event, the terminal one included.

        When ``on_event`` returns a Deferred or an awaitable, the next event
        waits for it.  The returned Deferred fires with the terminal event; if
        ``on_event`` raises (or its Deferred fails) the stream is cancelled and
        the Deferred fails with that error.  Cancelling it cancels the stream.
        """
        self._set_mode("consume")
        self._on_event = on_event
        self._consumed = Deferred(lambda _: self.cancel())
        d = self._consumed
        self._pump()
        return d

    def _set_mode(self, mode: str) -> None:
        if self._mode is not None and self._mode != mode:
            raise RuntimeError(f"this EventStream is already consumed by {'async for' if self._mode == 'iter' else 'consume()'}")
        if mode == "consume" and self._mode == "consume":
            raise RuntimeError("consume() was already called on this EventStream")
        self._mode = mode

    # IPushProducer

    def pauseProducing(self) -> None:
        """Hold events back until :meth:`resumeProducing`; the idle timer stops."""
        if self._consumer_paused:
            return
        self._consumer_paused = True
        self._stop_counting()
        if not self._strict and self._terminal is None and self._max_pause is not None:
            self._pause_timer = self._reactor.callLater(self._max_pause, self._paused_too_long)

    def resumeProducing(self) -> None:
        if not self._consumer_paused:
            return
        self._consumer_paused = False
        self._cancel_pause_timer()
        if self._terminal is None and self._source is not None and not self._source.paused:
            self._start_counting()
        self._pump()

    def stopProducing(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Close the connection at once and end with ``StreamDone("cancelled")``.

        Events not yet delivered are dropped.  After the terminal event was
        produced this does nothing.
        """
        if self._terminal is not None:
            if self._terminal_held and self._source is not None:
                self._source.abort()  # stop draining; the stream did complete
                self._release_terminal()
            return
        self._queue.clear()
        self._finish(StreamDone("cancelled"), abort=self._source is not None)
        self._pump()

    def _paused_too_long(self) -> None:
        self._pause_timer = None
        if self._terminal is None:
            buffered = len(self._queue)
            self._queue.clear()
            # The error is delivered even though the consumer paused: waiting
            # for a resume that may never come would hang it.
            self._consumer_paused = False
            self._finish(
                StreamError(BufferOverflow(
                    f"the consumer held the stream from {self.url} paused for over {self._max_pause:g} s "
                    f"({buffered} events buffered); consume faster, raise max_pause, or use the agent "
                    "stream backend (strict pull)"
                )),
                abort=True,
            )
            self._pump()

    def _cancel_pause_timer(self) -> None:
        if self._pause_timer is not None:
            if self._pause_timer.active():
                self._pause_timer.cancel()
            self._pause_timer = None

    # ------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Events decoded and not yet delivered."""
        return len(self._queue)

    @property
    def done(self) -> bool:
        """True once the terminal event was produced."""
        return self._terminal is not None


async def _as_coro(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _awaitable(d: Deferred[Any]) -> Any:
    """The Deferred, or a Future for it when awaited from an asyncio Task
    (a Task cannot await a Deferred: "Task got bad yield")."""
    loop = _get_running_loop()  # None, without raising, outside asyncio
    if loop is None:
        return d
    if asyncio.current_task(loop) is not None:
        return d.asFuture(loop)
    return d

