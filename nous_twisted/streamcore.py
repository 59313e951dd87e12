"""One stream's machinery: body bytes in, events out, under its timers.

Theory of operation
-------------------
A :class:`StreamCore` sits between a byte source (the exchange that owns the
connection, see ``stream_exchange.py``) and a reader (the user's
:class:`~nous_twisted.eventstream.EventStream` handle).  The source calls it
in Twisted's words (:meth:`connected`, :meth:`response_received`,
:meth:`data_received`, :meth:`body_ended`, :meth:`failed`); the reader pulls,
in h11's manner: :meth:`take` returns the next event, :data:`NOTHING` when
none is ready yet, or :data:`END` after the terminal event; :meth:`wait`
returns a Deferred that fires when :meth:`take` has something.

Nothing here refers to the handle, so a handle nobody holds any more can be
collected, and its finaliser cancels the core.

``_state`` is one of:

- ``CONNECTING``: the request is out; no response yet;
- ``RECEIVING``: a 2xx stream; its body is being decoded into events;
- ``COLLECTING``: a body being read only to report it as an error (a non-2xx
  reply, or a 2xx that is not an event stream);
- ``DRAINING``: the end signal was seen; the rest of the body is read and
  dropped so that the connection goes back to the pool before the reader
  sees the end (at most ``DRAIN_GRACE`` seconds, then it is aborted);
- ``ENDED``: the terminal event exists and is queued behind the events;
- ``DELIVERED``: the reader has taken the terminal event.

"The consumer holds the stream paused" (``IPushProducer.pauseProducing``)
is kept apart, in ``_consumer_paused``: it is not a state of the exchange.

Timers, on an injected clock:

- idle: the longest gap between two *events* (comments and keep-alive bytes
  do not reset it), counted only while the stream waits on the network: it
  is suspended while the consumer pauses and while our own backpressure
  holds the socket;
- stall (``max_pause``): a consumer that has not asked for the next event
  for that long while the stream holds something for it (events queued, the
  socket paused for it, or the stream paused by it) ends the stream with
  ``BufferOverflow`` and the connection is aborted.  It frees the pool slot
  of a stream abandoned by a reader that still holds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.web.http_headers import Headers

from .backpressure import Policy
from .compression import STEP, Decompressor, decompressor_for
from .decoders import Decoder, format_for, make_decoder
from .errors import BufferOverflow, DecodeError, NousHTTPError, RequestTimeout, StreamTruncated, TransportError
from .events import StreamDone, StreamError
from .response import status_error

Terminal = StreamDone | StreamError

CONNECTING = "CONNECTING"
RECEIVING = "RECEIVING"
COLLECTING = "COLLECTING"
DRAINING = "DRAINING"
ENDED = "ENDED"
DELIVERED = "DELIVERED"


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: :meth:`StreamCore.take` has nothing yet: :meth:`StreamCore.wait` for it.
NOTHING: Any = _Marker("NOTHING")
#: :meth:`StreamCore.take` after the terminal event was taken.
END: Any = _Marker("END")

# A non-2xx stream's error body is read up to this size.
MAX_ERROR_BODY = 1024 * 1024
# Of a 2xx body that is not an event stream, this much is kept for the error.
SNIFF_BYTES = 1024

# The queue of a stream with nothing queued (and the kept bytes of one not
# collecting an error body).  Shared, so never mutated: an empty queue is
# replaced (by the decoder's own list), never appended to.
_EMPTY: list[Any] = []


class ByteSource(Protocol):
    """What the exchange that owns the connection offers the core."""

    paused: bool

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abort(self) -> None:
        """Close the connection at once (before or after the headers)."""

    def drain(self) -> bool:
        """The stream is over but the body is not: read and drop the rest so
        the connection can go back to the pool.  True when draining started
        (the source then reports the body's end), False when the body is over."""


class StreamCore:
    """The events of one streaming request.  See the module docstring."""

    # Thousands of streams may be open at once: no instance dict.
    __slots__ = (
        "__weakref__", "_asked_at", "_clock", "_collect_limit", "_collected", "_consumer_paused",
        "_count_since", "_decoder", "_eof_pending", "_idle_timer", "_idle_used", "_inflater", "_kept",
        "_kept_size", "_max_event_bytes", "_max_pause", "_policy", "_queue", "_registry", "_seconds",
        "_secrets", "_source", "_stall_timer", "_state", "_terminal", "_waiter", "bytes_received",
        "format", "headers", "max_buffered", "status", "timeout", "url",
    )

    def __init__(
        self,
        clock: Any,
        url: str,
        timeout: float,
        format: str | None,
        policy: Policy,
        max_pause: float | None,
        max_event_bytes: int,
        secrets: tuple[bytes, ...] = (),
    ) -> None:
        self._clock = clock
        self._seconds = clock.seconds
        self.url = url
        self.timeout = timeout
        self.format = format
        self._policy = policy
        self._max_pause = max_pause
        self._max_event_bytes = max_event_bytes
        self._secrets = secrets
        self._state = CONNECTING
        self.status: int | None = None
        self.headers: Headers | None = None
        self._source: ByteSource | None = None
        self._registry: set[Any] | None = None
        self._decoder: Decoder | None = None
        self._inflater: Decompressor | None = None
        self._eof_pending = False  # the body ended; compressed bytes still to expand
        # COLLECTING: the bytes kept, how many arrived, how many to keep, and
        # what to make of them
        self._kept: list[bytes] = _EMPTY  # a list of its own from _collect() on
        self._kept_size = 0
        self._collected = 0
        self._collect_limit = 0
        # The events not yet taken, the next one LAST: a list popped from its
        # end, not a deque (624 bytes even when empty, on every open stream).
        # The decoder's list of a read is adopted, reversed in place.
        self._queue: list[Any] = _EMPTY
        self._terminal: Terminal | None = None
        # the waiting reader: a Deferred (wait()) or a plain callable (when_ready())
        self._waiter: Any = None
        self._consumer_paused = False
        # idle accounting: time counts only while we wait on the network
        self._idle_timer: IDelayedCall | None = None
        self._idle_used = 0.0
        self._count_since: float | None = None
        # stall accounting: when the consumer last asked for something
        self._asked_at = self._seconds()
        self._stall_timer: IDelayedCall | None = None
        #: the largest number of events ever queued, and the body bytes taken
        #: off the socket so far (for tests and tuning)
        self.max_buffered = 0
        self.bytes_received = 0

    def __repr__(self) -> str:
        return f"<StreamCore {self.url} {self._state}, {self.buffered} buffered>"

    # ------------------------------------------------------------------
    # the byte source's side

    def attach(self, source: ByteSource, registry: set[Any] | None) -> None:
        self._source = source
        self._registry = registry
        if registry is not None:
            registry.add(self)

    def connected(self) -> None:
        """The connect phase is over: from now on silence counts as idle."""
        if self._state is CONNECTING and self._count_since is None and not self._consumer_paused:
            self._start_counting()

    def response_received(self, status: int, headers: Headers) -> None:
        if self._state is not CONNECTING:
            return
        self.status = status
        self.headers = headers
        encoding = headers.getRawHeaders(b"content-encoding")
        try:
            self._inflater = decompressor_for(b",".join(encoding)) if encoding else None
        except DecodeError as e:
            if 200 <= status < 300:
                self._end(StreamError(e), abort=True)
                self._notify()
                return
            self._inflater = None  # an error body we cannot expand: report it raw
        if not 200 <= status < 300:
            self._collect(MAX_ERROR_BODY)
            return
        fmt = self.format
        if fmt is None:
            ctype = headers.getRawHeaders(b"content-type")
            fmt = format_for(ctype[0].decode("latin-1") if ctype else None)
            if fmt is None:
                self._collect(SNIFF_BYTES)
                return
            self.format = fmt
        self._decoder = make_decoder(fmt, self._max_event_bytes)
        self._state = RECEIVING

    def data_received(self, data: bytes) -> None:
        self.bytes_received += len(data)
        state = self._state
        if state is not RECEIVING:
            if state is COLLECTING:
                self._keep(data)
            return  # draining after the end signal, or ended
        inflater = self._inflater
        if inflater is None:
            self._decode(data)
            if self._state is RECEIVING:
                # The common case, inline: one read, its events (if any)
                # queued, the stream still running.
                w = self._waiter
                if w is not None and not self._consumer_paused:
                    if self._queue:
                        self._waiter = None
                        self._asked_at = self._seconds()
                        if type(w) is Deferred:
                            w.callback(None)
                        else:
                            w()
                        if self._state is not RECEIVING:
                            return
                        if self._waiter is not None and not self._consumer_paused and not self._queue:
                            return  # it took them all and waits again: read on
                    else:
                        return  # the reader waits, nothing to give it: read on
                self._after_chunk()
                return
        else:
            try:
                inflater.push(data)
            except NousHTTPError as e:
                self._end(StreamError(e), abort=True)
            else:
                self._inflate()
        self._notify()
        self._after_chunk()

    def body_ended(self, clean: bool, why: str = "") -> None:
        """The body ended: ``clean`` for a complete body (or one delimited by
        the connection's close), else it was cut off."""
        state = self._state
        if state is DRAINING:
            self.release_terminal()
            return
        if state is COLLECTING:
            self._collected_all(abort=False)
        elif state is RECEIVING:
            if not clean:
                self._end(
                    StreamError(StreamTruncated(f"the stream from {self.url} ended uncleanly{': ' + why if why else ''}")),
                    abort=False,
                )
            elif self._inflater is not None and self._inflater.has_output:
                self._eof_pending = True  # finished when the rest is expanded
                return
            else:
                self._finish_body()
        self._notify()

    def failed(self, error: NousHTTPError) -> None:
        """The exchange failed before or while the body was read."""
        if self._terminal is None:
            self._end(StreamError(error), abort=False)
            self._notify()

    def release_terminal(self) -> None:
        """The drained body ended, or the drain was cut short: the end may go."""
        if self._state is DRAINING:
            self._state = ENDED
            self._notify()

    def abort_for_shutdown(self) -> None:
        if self._terminal is None:
            self._clear()
            self._consumer_paused = False
            self._end(StreamError(TransportError(f"the stream from {self.url} was aborted by shutdown()")), abort=True)
            self._notify()

    # ------------------------------------------------------------------
    # decoding

    def _decode(self, data: bytes) -> None:
        decoder = self._decoder
        assert decoder is not None
        seen = decoder.events_seen
        items = decoder.feed(data)
        if decoder.events_seen != seen:
            # An event: the idle gap starts again, whether or not the clock
            # runs now (bytes read before a pause still arrive).
            self._idle_used = 0.0
            if self._count_since is not None:
                self._count_since = self._seconds()
        if items:
            self._push(items)
        terminal = decoder.terminal
        if terminal is not None:
            self._end(terminal, abort=isinstance(terminal, StreamError))

    def _push(self, items: list[Any]) -> None:
        """Queue ``items``, a list the caller gives away (the decoder makes a
        new one per call)."""
        items.reverse()
        q = self._queue
        if q:
            q[0:0] = items  # behind the events already queued
        else:
            # An empty queue is replaced, never mutated: it may be _EMPTY.
            self._queue = q = items
        if len(q) > self.max_buffered:
            self.max_buffered = len(q)

    def _clear(self) -> None:
        self._queue = _EMPTY

    def _inflate(self) -> None:
        """Expand already-read compressed bytes, one bounded step at a time,
        as far as the backpressure policy lets events pile up."""
        inflater = self._inflater
        assert inflater is not None
        decode_more = self._policy.decode_more
        try:
            while self._state is RECEIVING and inflater.has_output and decode_more(self.buffered):
                out = inflater.pull(STEP)
                if not out:
                    break
                self._decode(out)
        except NousHTTPError as e:
            self._end(StreamError(e), abort=True)
            return
        if self._eof_pending and self._state is RECEIVING and not inflater.has_output:
            self._eof_pending = False
            self._finish_body()

    def _finish_body(self) -> None:
        decoder = self._decoder
        assert decoder is not None
        if self._inflater is not None:
            try:
                self._inflater.close()
            except NousHTTPError as e:
                self._end(StreamError(e), abort=False)
                return
        last = decoder.finish()
        if last:
            self._push(list(last))
        assert decoder.terminal is not None
        self._end(decoder.terminal, abort=False)

    # -- collecting a body to report --------------------------------------

    def _collect(self, limit: int) -> None:
        self._kept = []
        self._state = COLLECTING
        self._collect_limit = limit

    def _keep(self, data: bytes) -> None:
        self._collected += len(data)
        inflater = self._inflater
        if inflater is not None:
            try:
                inflater.push(data)
                while self._kept_size < self._collect_limit:
                    out = inflater.pull(self._collect_limit - self._kept_size)
                    if not out:
                        break
                    self._kept.append(out)
                    self._kept_size += len(out)
            except NousHTTPError:
                self._inflater = None  # report what we have rather than nothing
        else:
            room = self._collect_limit - self._kept_size
            if room > 0:
                self._kept.append(data[:room])
                self._kept_size += min(room, len(data))
        if self._kept_size >= self._collect_limit or self._collected > 16 * self._collect_limit:
            # enough to report it: do not read the rest
            self._collected_all(abort=True)
            self._notify()

    def _collected_all(self, abort: bool) -> None:
        body = b"".join(self._kept)
        self._kept = _EMPTY
        assert self.status is not None and self.headers is not None
        if 200 <= self.status < 300:
            ctype = (self.headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
            error: NousHTTPError = DecodeError(
                f"HTTP {self.status} from {self.url} is {ctype!r}, not an event stream, NDJSON or JSON "
                "(a captive portal or a misrouted gateway?); the first bytes are in .raw; pass format= "
                "to force a decoder",
                body,
            )
        else:
            error = status_error(self.status, self.headers, body, self.url, self._secrets)
        self._end(StreamError(error), abort=abort)

    # ------------------------------------------------------------------
    # the terminal event

    def _end(self, terminal: Terminal, abort: bool) -> None:
        if self._terminal is not None:
            return
        self._terminal = terminal
        self._stop_counting()
        if self._idle_timer is not None:
            if self._idle_timer.active():
                self._idle_timer.cancel()
            self._idle_timer = None
        self._cancel_stall_timer()
        if self._registry is not None:
            self._registry.discard(self)
            self._registry = None
        source = self._source
        self._state = ENDED
        if source is not None:
            if abort:
                source.abort()
            elif isinstance(terminal, StreamDone) and terminal.reason == "stop" and source.drain():
                self._state = DRAINING

    # ------------------------------------------------------------------
    # flow control

    def _waiting(self) -> bool:
        return self._waiter is not None and not self._consumer_paused

    def _notify(self) -> None:
        """Wake a waiting reader when there is something to take."""
        w = self._waiter
        if w is not None and not self._consumer_paused and (self._queue or self._state is ENDED):
            self._waiter = None
            self._asked_at = self._seconds()  # it was asking all the while it waited
            if type(w) is Deferred:
                w.callback(None)
            else:
                w()

    def _after_chunk(self) -> None:
        """After a chunk was handled (and the reader woken): stop reading?"""
        source = self._source
        if self._state is not RECEIVING or source is None:
            return
        waiting = self._waiter is not None and not self._consumer_paused
        queued = len(self._queue)
        if not source.paused:
            inflater = self._inflater
            if (inflater is not None and inflater.has_output) or self._policy.pause_after_chunk(queued, waiting):
                self._stop_counting()
                source.pause_reading()
        if not waiting and self._stall_timer is None and self._max_pause is not None and (queued or source.paused):
            self._arm_stall_timer()

    def _refill(self) -> None:
        """The reader took or asks: expand more, or read on, as the policy says."""
        if self._state is not RECEIVING or self._consumer_paused:
            return
        inflater = self._inflater
        if inflater is not None and (inflater.has_output or self._eof_pending):
            self._inflate()
            self._notify()
            if self._state is not RECEIVING or inflater.has_output:
                return
        source = self._source
        if source is not None and source.paused and self._policy.may_resume(self.buffered, self._waiting()):
            source.resume_reading()
            self._start_counting()

    # ------------------------------------------------------------------
    # the reader's side

    def take(self) -> Any:
        """The next event, the terminal event, NOTHING (none ready: wait()),
        or END (the terminal event was taken)."""
        q = self._queue
        if q and not self._consumer_paused:
            event = q.pop()
            self._asked_at = self._seconds()
            source = self._source
            if source is not None and source.paused and self._state is RECEIVING:
                self._refill()
            return event
        if self._consumer_paused:
            return NOTHING
        state = self._state
        if state is ENDED:
            self._state = DELIVERED
            return self._terminal
        if state is DELIVERED:
            return END
        return NOTHING

    def wait(self) -> Deferred[None]:
        """A Deferred that fires when :meth:`take` has something.  Cancelling
        it cancels this wait only; the stream stays readable."""
        if self._waiter is not None:
            raise RuntimeError(
                "this EventStream is already being awaited by another reader; read it from one place"
            )
        d: Deferred[None] = Deferred(self._wait_cancelled)
        self._asked_at = self._seconds()
        if not self._consumer_paused and (self._queue or self._state is ENDED or self._state is DELIVERED):
            d.callback(None)
            return d
        self._waiter = d
        self._refill()
        return d

    def when_ready(self, ready: Callable[[], object]) -> None:
        """Call ``ready()`` once :meth:`take` has something: :meth:`wait`
        without a Deferred, for readers inside the library (``consume()``)."""
        if self._waiter is not None:
            raise RuntimeError(
                "this EventStream is already being awaited by another reader; read it from one place"
            )
        self._asked_at = self._seconds()
        if not self._consumer_paused and (self._queue or self._state is ENDED or self._state is DELIVERED):
            ready()
            return
        self._waiter = ready
        self._refill()

    def _wait_cancelled(self, d: Deferred[None]) -> None:
        if self._waiter is d:
            self._waiter = None

    def pause(self) -> None:
        """The consumer holds events back; the idle clock stops."""
        if self._consumer_paused:
            return
        self._consumer_paused = True
        self._stop_counting()
        if self._terminal is None and self._max_pause is not None and self._stall_timer is None:
            self._asked_at = self._seconds()
            self._arm_stall_timer()

    def resume(self) -> None:
        if not self._consumer_paused:
            return
        self._consumer_paused = False
        self._asked_at = self._seconds()
        source = self._source
        if self._terminal is None and (source is None or not source.paused):
            self._start_counting()
        self._notify()
        self._refill()

    def cancel(self) -> None:
        """Drop everything not yet taken, close the connection unless the
        body is already over, and end with ``StreamDone("cancelled")``."""
        state = self._state
        if state is DELIVERED:
            return
        self._clear()
        # A consumer that stops a stream it holds paused (a transport whose
        # peer left) still gets the end: else its reader would wait for ever.
        self._consumer_paused = False
        if self._terminal is not None:
            # Decoded to its end already, but not delivered: cancel wins.
            if state is DRAINING and self._source is not None:
                self._source.abort()  # stop draining
            self._terminal = StreamDone("cancelled")
            self._state = ENDED
        else:
            self._end(StreamDone("cancelled"), abort=True)
        self._notify()

    # ------------------------------------------------------------------
    # idle timer

    def _start_counting(self) -> None:
        self._count_since = self._seconds()
        if self._idle_timer is None:
            self._idle_timer = self._clock.callLater(self.timeout - self._idle_used, self._idle_check)

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
            self._end(StreamError(RequestTimeout("idle", self.timeout, self.url)), abort=True)
            self._notify()
        else:
            self._idle_timer = self._clock.callLater(self.timeout - used, self._idle_check)

    # ------------------------------------------------------------------
    # stall timer (max_pause)

    def _arm_stall_timer(self) -> None:
        assert self._max_pause is not None
        delay = max(0.0, self._asked_at + self._max_pause - self._seconds())
        self._stall_timer = self._clock.callLater(delay, self._stall_check)

    def _holding(self) -> bool:
        """Something waits for the consumer, and it is not asking."""
        if self._terminal is not None or self._waiting():
            return False
        source = self._source
        return bool(self._queue) or self._consumer_paused or (source is not None and source.paused)

    def _stall_check(self) -> None:
        self._stall_timer = None
        if not self._holding():
            return
        assert self._max_pause is not None
        if self._seconds() - self._asked_at < self._max_pause:
            self._arm_stall_timer()
            return
        buffered = self.buffered
        self._clear()
        # Delivered even to a paused consumer: waiting for a resume that may
        # never come would hang it.
        self._consumer_paused = False
        self._end(
            StreamError(BufferOverflow(
                f"the consumer of the stream from {self.url} stalled: it did not ask for the next event "
                f"for {self._max_pause:g} s ({buffered} events buffered), so the connection was closed; "
                "read faster, raise max_pause on the stream backend, or leave early with "
                "'async with stream(...) as s:' or s.cancel()"
            )),
            abort=True,
        )
        self._notify()

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            if self._stall_timer.active():
                self._stall_timer.cancel()
            self._stall_timer = None

    # ------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Events decoded and not yet taken."""
        return len(self._queue)

    @property
    def done(self) -> bool:
        """True once the terminal event was produced."""
        return self._terminal is not None
