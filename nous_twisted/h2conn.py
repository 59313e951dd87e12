"""One HTTP/2 connection: an ``h2`` state machine driven by a Twisted protocol
over TLS, and the streams it carries.

Theory of operation
-------------------
:class:`H2ClientProtocol` is the protocol under a TLS transport that offered
ALPN ``h2`` and ``http/1.1``.  When the handshake completes it reads the
protocol chosen: anything but ``h2`` is handed back to the registry
(``h2pool.py``), which sends the host's requests through the agent backend.
On ``h2`` it sends the preface and its SETTINGS, and waits for the server's
SETTINGS before it carries a stream (the registry asks :meth:`capacity`).

Each request is an :class:`H2Stream`.  It holds the request (to re-send it
after ``REFUSED_STREAM`` or above a GOAWAY's last stream id, when the server
never processed it) and feeds a *sink*: a
:class:`~nous_twisted.streamcore.StreamCore` for ``stream()``, a collector
for ``post()``; both take Twisted's words (connected, response_received,
data_received, body_ended, failed).  For a stream core it is the byte source.

Flow control is the backpressure
--------------------------------
- A stream's window (SETTINGS_INITIAL_WINDOW_SIZE, 64 KiB by default) is
  credited back only as bytes are handed to the sink, and the sink of a
  stream core takes them only when its consumer asks for events (strict
  pull: the core pauses us after every chunk).  Credit is batched at half
  the window.  A stopped consumer therefore holds at most one window of
  bytes (plus the frame in flight) and the server stops sending to it.
- The connection window is credited on arrival, and kept at least the sum
  of the open streams' windows: a stopped stream never holds connection
  credit its siblings need (crediting it on consumption stalled all of them
  in the prototype).
- Post replies are credited on arrival, with a larger window (64 KiB at
  100 ms of round trip caps a reply at 640 KiB/s).

GOAWAY
------
``h2`` moves its connection state machine to CLOSED on *any* GOAWAY, after
which DATA for the streams the server still serves raises ProtocolError
(python-hyper/h2#1181).  :class:`_GoawayKeepsOpen` keeps the state on
RECV_GOAWAY so those streams finish; we open no new stream on such a
connection ourselves.  Private API, pinned by a test.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from h2 import __version__ as h2_version
from h2.config import H2Configuration
from h2.connection import ConnectionInputs, ConnectionState, H2Connection, H2ConnectionStateMachine
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import DenialOfServiceError, H2Error, StreamClosedError, StreamIDTooLowError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import RstStreamFrame
from twisted.internet.interfaces import IDelayedCall, IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from zope.interface import implementer

from .errors import NousHTTPError, TransportError
from .failures import classify, describe
from .pool import MAX_HEADER_BYTES, MAX_HEADER_LINE
from .request import HTTPRequest

log = Logger(namespace="nous_twisted.h2")

#: the default stream window for stream() (SETTINGS_INITIAL_WINDOW_SIZE)
STREAM_WINDOW = 64 * 1024
#: the window a post() reply opens (credited on arrival)
POST_WINDOW = 4 * 1024 * 1024
# Connection credit is sent in batches of this size at least; the
# connection window keeps this much above the sum of the stream windows.
CONN_SLACK = 64 * 1024
# After the end signal, how long the rest of a stream may take before it is
# reset (the consumer has its terminal event already).
DRAIN_GRACE = 1.0
# A request refused unprocessed (REFUSED_STREAM, above a GOAWAY) is sent
# again at most this many times.
MAX_RESENDS = 3


class _GoawayKeepsOpen(H2ConnectionStateMachine):
    """An ``h2`` connection state machine that stays open on a received
    GOAWAY, so that the streams at or below its last stream id can finish
    (python-hyper/h2#1181).  New streams are refused by our own flag.

    The change is made in the instance's transition table rather than by
    overriding ``process_input``, which runs for every frame."""

    def __init__(self) -> None:
        super().__init__()
        table = dict(H2ConnectionStateMachine._transitions)
        table[(ConnectionState.CLIENT_OPEN, ConnectionInputs.RECV_GOAWAY)] = (None, ConnectionState.CLIENT_OPEN)
        self._transitions = table


# The h2 versions whose H2Connection._receive_frame _QuietH2Connection
# repeats (tests/test_h2_goaway.py pins its source).
QUIET_VERSIONS = frozenset({"4.4.1"})


class _KeepsEvents(H2Connection):
    """``H2Connection`` that also keeps the events of each ``receive_data``
    call in :attr:`received`, frame by frame: when a frame of the batch is a
    protocol error, ``receive_data`` raises and returns nothing, and the
    events of the frames before it (a response's headers, its DATA) must
    still reach their streams before the connection fails."""

    received: list[Any]

    def _receive_frame(self, frame: Any) -> list[Any]:
        events: list[Any] = super()._receive_frame(frame)
        if events:
            self.received += events
        return events


class _QuietH2Connection(_KeepsEvents):
    """``H2Connection`` without the trace log line of ``_receive_frame``,
    which formats every received frame (``repr(frame)``) for a log that is
    off: 1.3 of h2's 7 us per DATA frame.  The rest of the method is h2's,
    and it keeps the events in :attr:`received` as :class:`_KeepsEvents`."""

    def _receive_frame(self, frame: Any) -> list[Any]:
        events: list[Any]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        if events:
            self.received += events
        return events


_Connection: type[_KeepsEvents] = _QuietH2Connection if h2_version in QUIET_VERSIONS else _KeepsEvents


class Sink(TypingProtocol):
    """What a stream feeds: a stream core, or a post collector."""

    def connected(self) -> None: ...

    def response_received(self, status: int, headers: Headers) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def body_ended(self, clean: bool, why: str = "") -> None: ...

    def failed(self, error: NousHTTPError) -> None: ...


class Registry(TypingProtocol):
    """What a connection tells its registry (``h2pool.H2Pool``)."""

    def connection_ready(self, conn: H2ClientProtocol) -> None: ...

    def connection_refused_h2(self, conn: H2ClientProtocol, protocol: bytes | None) -> None: ...

    def connection_lost(self, conn: H2ClientProtocol, failure: Failure) -> None: ...

    def streams_changed(self, conn: H2ClientProtocol) -> None: ...

    def resend(self, stream: H2Stream) -> None: ...


def request_headers(request: HTTPRequest) -> tuple[list[tuple[bytes, bytes]], str]:
    """The HTTP/2 header block of a request, and its ``host:port`` key part."""
    uri = URI.fromBytes(request.url_bytes)
    headers = [
        (b":method", request.method),
        (b":scheme", b"https"),
        (b":authority", uri.netloc),
        (b":path", uri.originForm),
    ]
    for name, value in request.headers:
        headers.append((name.lower(), value))
    if request.body or request.method == b"POST":
        headers.append((b"content-length", str(len(request.body)).encode("ascii")))
    return headers, uri.netloc.decode("ascii")


class H2Stream:
    """One request on an HTTP/2 connection, and the byte source of its sink.

    State: ``conn``/``sid`` are None while it waits in the registry's queue;
    ``closed`` once its end (or reset) was handed to the sink, or it was
    aborted.  ``_buf`` holds DATA received while the sink's consumer holds
    us paused (never more than the stream window plus one frame).
    """

    __slots__ = (
        "__weakref__", "_buf", "_credit_on_arrival", "_drain_timer", "_end", "_pump_call",
        "_sink_done", "_uncredited", "aborted", "clock", "closed", "conn", "fallback", "headers",
        "headers_seen", "key", "paused", "pending_body", "queue_timer", "registry", "request", "resends", "sid",
        "sink", "url", "window",
    )

    def __init__(
        self,
        request: HTTPRequest,
        sink: Sink,
        clock: Any,
        window: int,
        credit_on_arrival: bool,
        fallback: Callable[[], None],
    ) -> None:
        #: the request, kept to send it again until the response begins
        self.request: HTTPRequest | None = request
        self.headers: list[tuple[bytes, bytes]] | None = request_headers(request)[0]
        self.sink = sink
        self.clock = clock
        self.url = request.display_url
        self.window = window
        self._credit_on_arrival = credit_on_arrival
        #: runs the request through the HTTP/1.1 agent backend instead (only
        #: while it waits for a connection: dropped once opened, with the
        #: request its closure holds)
        self.fallback: Callable[[], None] | None = fallback
        self.conn: H2ClientProtocol | None = None
        self.sid: int | None = None
        self.paused = False
        self.closed = False
        self.aborted = False
        self.headers_seen = False
        self.resends = 0
        self.pending_body: memoryview | None = None
        self.queue_timer: IDelayedCall | None = None
        #: the registry whose queue holds it, while it waits for a connection
        self.registry: Any = None
        #: its registry key (host, port, trust, window), set when submitted
        self.key: Any = None
        # made on first use: most streams never hold bytes back, and an empty
        # deque is ~600 bytes (thousands of streams may be open)
        self._buf: deque[tuple[bytes, int]] | None = None
        self._end: tuple[bool, str] | None = None
        self._uncredited = 0
        self._pump_call: IDelayedCall | None = None
        self._drain_timer: IDelayedCall | None = None
        self._sink_done = False  # the sink has its end: drop what follows

    def __repr__(self) -> str:
        return f"<H2Stream {self.url} sid={self.sid} {'closed' if self.closed else 'open'}>"

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet handed to the sink."""
        return sum(len(d) for d, _ in self._buf) if self._buf else 0

    # -- from the connection ----------------------------------------------

    def opened(self, conn: H2ClientProtocol, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.fallback = None
        self.sink.connected()

    def detach(self) -> None:
        """Taken off its connection unprocessed, to be sent again."""
        self.conn = None
        self.sid = None
        self.pending_body = None

    def on_headers(self, status: int, headers: Headers) -> None:
        self.headers_seen = True
        # It will not be sent again: let the body go (a stream lives for minutes).
        self.request = None
        self.headers = None
        if not self._sink_done:
            self.sink.response_received(status, headers)

    def on_data(self, data: bytes, fcl: int) -> None:
        if self.closed:
            return
        if self._sink_done or self._credit_on_arrival:
            self._credit(fcl)
            if not self._sink_done:
                self.sink.data_received(data)
            return
        buf = self._buf
        if self.paused or buf:
            if buf is None:
                buf = self._buf = deque()
            buf.append((data, fcl))
            return
        self._deliver(data, fcl)

    def on_end(self, clean: bool, why: str) -> None:
        """END_STREAM, a reset, or the connection's loss (after the headers)."""
        if self.closed:
            return
        self._end = (clean, why)
        if not self._buf:
            self._finish()

    def on_failed(self, error: NousHTTPError) -> None:
        """Failed before any response byte."""
        if self.closed:
            return
        self.closed = True
        self._stop_timers()
        if not self._sink_done:
            self._sink_done = True
            self.sink.failed(error)

    # -- handing bytes to the sink ------------------------------------------

    def _deliver(self, data: bytes, fcl: int) -> None:
        if fcl:
            self._uncredited += fcl
            if self._uncredited >= self.window // 2:
                self._send_credit()
        self.sink.data_received(data)

    def _credit(self, fcl: int) -> None:
        if fcl:
            self._uncredited += fcl
            if self._uncredited >= self.window // 2:
                self._send_credit()

    def _send_credit(self) -> None:
        n, self._uncredited = self._uncredited, 0
        conn = self.conn
        if conn is not None and self.sid is not None and self._end is None:
            conn.credit_stream(self.sid, n)

    def _pump(self) -> None:
        self._pump_call = None
        buf = self._buf
        while buf and not self.paused and not self.closed:
            data, fcl = buf.popleft()
            self._deliver(data, fcl)
        if not buf and self._end is not None and not self.closed:
            self._finish()

    def _finish(self) -> None:
        assert self._end is not None
        self.closed = True
        self._stop_timers()
        if not self._sink_done:
            self._sink_done = True
            self.sink.body_ended(*self._end)

    def _stop_timers(self) -> None:
        for name in ("_pump_call", "_drain_timer", "queue_timer"):
            call = getattr(self, name)
            if call is not None:
                setattr(self, name, None)
                if call.active():
                    call.cancel()

    # -- ByteSource (the stream core's side) -----------------------------------

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False
        if (self._buf or self._end is not None) and self._pump_call is None and not self.closed:
            # Not at once: the core resumes us from inside take()/wait(), and
            # must not be re-entered with new bytes there.
            self._pump_call = self.clock.callLater(0, self._pump)

    def abort(self) -> None:
        """RST_STREAM(CANCEL) this stream only; the connection stays."""
        if self.closed:
            return
        self.closed = True
        self.aborted = True
        self._sink_done = True
        self._stop_timers()
        self._buf = None  # its bytes were credited to the connection on arrival
        conn, sid = self.conn, self.sid
        if conn is not None and sid is not None:
            conn.cancel_stream(self, ErrorCodes.CANCEL)
        elif self.registry is not None:
            self.registry.dequeue(self)

    def drain(self) -> bool:
        """The end signal came before END_STREAM: the consumer gets its
        terminal event now; the rest is credited on arrival and dropped, and
        the stream reset if it has not ended within DRAIN_GRACE."""
        if self.closed:
            return False
        self._sink_done = True
        self._buf = None
        self.paused = False
        self._credit_on_arrival = True
        self._drain_timer = self.clock.callLater(DRAIN_GRACE, self._drain_expired)
        return False

    def _drain_expired(self) -> None:
        self._drain_timer = None
        self.abort()


@implementer(IHandshakeListener)
class H2ClientProtocol(Protocol):
    """An HTTP/2 client connection.  See the module docstring.

    :ivar ready: the server's first SETTINGS arrived: streams may open.
    :ivar going_away: a GOAWAY arrived (or we are closing): no new streams.
    """

    def __init__(self, registry: Registry, key: Any, stream_window: int, clock: Any) -> None:
        self.registry = registry
        self.key = key
        self.clock = clock
        self.stream_window = stream_window
        self.h2: _KeepsEvents | None = None
        self.streams: dict[int, H2Stream] = {}
        self.ready = False
        self.going_away = False
        self.lost = False
        self.protocol: bytes | None = None
        self.idle_timer: IDelayedCall | None = None
        self._conn_window = 65535
        self._needed = 0  # the sum of the open streams' windows
        self._conn_uncredited = 0
        self._blocked: dict[int, H2Stream] = {}  # streams with body bytes waiting for window
        self._inbox: list[bytes] | None = None  # records received this turn, not yet read
        self._inbox_call: IDelayedCall | None = None

    def __repr__(self) -> str:
        return f"<H2ClientProtocol {self.key!r} {len(self.streams)} streams{' going away' if self.going_away else ''}>"

    # -- connection life ---------------------------------------------------------

    def handshakeCompleted(self) -> None:
        transport: Any = self.transport
        proto = getattr(transport, "negotiatedProtocol", None)
        self.protocol = proto
        if proto != b"h2":
            self.going_away = True
            self.registry.connection_refused_h2(self, proto)
            return
        config = H2Configuration(client_side=True, header_encoding=None)
        conn = _Connection(config=config)
        conn.state_machine = _GoawayKeepsOpen()
        # As initial values: update() would hold them back until the server
        # acknowledges them, and initiate_connection() sends those in force.
        conn.local_settings = Settings(client=True, initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.INITIAL_WINDOW_SIZE: self.stream_window,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_BYTES,
        })
        # h2 applies MAX_HEADER_LIST_SIZE to its decoder only when the setting
        # is acknowledged, never for initial values: its default (64 KiB)
        # would stay in force.
        conn.decoder.max_header_list_size = MAX_HEADER_BYTES
        conn.received = []
        conn.initiate_connection()
        self.h2 = conn
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        # TLS hands us one record at a time, and one socket read holds dozens
        # (one per event of each stream): take them all at the next turn, in
        # one pass through h2, rather than one pass (and one flush) per record.
        inbox = self._inbox
        if inbox is None:
            self._inbox = [data]
            self._inbox_call = self.clock.callLater(0, self._take_inbox)
        else:
            inbox.append(data)

    def _take_inbox(self) -> None:
        self._inbox_call = None
        inbox, self._inbox = self._inbox, None
        conn = self.h2
        if conn is None or self.lost or not inbox:
            return
        conn.received = []
        try:
            events: list[Any] = conn.receive_data(inbox[0] if len(inbox) == 1 else b"".join(inbox))
        except H2Error as e:
            # The frames before the bad one first: a response that began in
            # this batch has its headers and events, then ends truncated.
            self._dispatch(conn.received)
            conn.received = []
            self._flush()
            if isinstance(e, DenialOfServiceError) and "header" in str(e).lower():
                why = (f"the response headers are too large: over the limit of {MAX_HEADER_BYTES} bytes in all "
                       f"(HTTP/2 header list; {describe(e)})")
            else:
                why = f"HTTP/2 protocol error: {describe(e)}"
            self._fail_all(why)
            self.abort()
            return
        conn.received = []
        self._dispatch(events)
        self._flush()

    def _dispatch(self, events: list[Any]) -> None:
        for event in events:
            t = type(event)
            if t is DataReceived:
                self._on_data(event)
            elif t is ResponseReceived:
                self._on_response(event)
            elif t is StreamEnded:
                self._on_stream_ended(event.stream_id)
            elif t is StreamReset:
                self._on_reset(event.stream_id, event.error_code)
            elif t is WindowUpdated:
                self._send_blocked()
            elif t is RemoteSettingsChanged:
                self._on_settings(event)
            elif t is ConnectionTerminated:
                self._on_goaway(event.error_code, event.last_stream_id)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self.lost:
            return
        call, self._inbox_call = self._inbox_call, None
        if call is not None and call.active():
            call.cancel()
            self._take_inbox()  # what arrived before the loss comes first
        self.lost = True
        self.going_away = True
        self._cancel_idle()
        what = describe(reason.value) if reason.value is not None else "closed"
        self._fail_all(f"the HTTP/2 connection was lost: {what}")
        self.registry.connection_lost(self, reason)

    def abort(self) -> None:
        self.going_away = True
        transport: Any = self.transport
        if transport is not None and not self.lost:
            transport.abortConnection()

    def _cancel_idle(self) -> None:
        timer, self.idle_timer = self.idle_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _flush(self) -> None:
        conn = self.h2
        if conn is None:
            return
        out = conn.data_to_send()
        if out and self.transport is not None and not self.lost:
            self.transport.write(out)

    # -- capacity -----------------------------------------------------------------

    def capacity(self) -> int:
        """How many more streams this connection takes now."""
        conn = self.h2
        if not self.ready or self.going_away or self.lost or conn is None:
            return 0
        limit = conn.remote_settings.max_concurrent_streams
        return max(0, limit - len(self.streams))

    # -- streams --------------------------------------------------------------------

    def open_stream(self, stream: H2Stream) -> None:
        conn = self.h2
        assert conn is not None
        self._cancel_idle()
        sid = conn.get_next_available_stream_id()
        request, headers = stream.request, stream.headers
        assert request is not None and headers is not None
        body = request.body
        self.streams[sid] = stream
        window = max(stream.window, self.stream_window)
        self._needed += window
        want = self._needed + CONN_SLACK
        if want > self._conn_window:
            conn.increment_flow_control_window(want - self._conn_window)
            self._conn_window = want
        conn.send_headers(sid, headers, end_stream=not body)
        if stream.window > self.stream_window:
            conn.increment_flow_control_window(stream.window - self.stream_window, stream_id=sid)
        stream.opened(self, sid)
        if body:
            stream.pending_body = memoryview(body)
            self._send_body(sid, stream)
        self._flush()

    def _send_body(self, sid: int, stream: H2Stream) -> None:
        conn = self.h2
        assert conn is not None
        view = stream.pending_body
        while view is not None:
            n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size, len(view))
            if n <= 0:
                self._blocked[sid] = stream
                return
            last = n == len(view)
            conn.send_data(sid, view[:n].tobytes(), end_stream=last)
            view = None if last else view[n:]
            stream.pending_body = view
        self._blocked.pop(sid, None)

    def _send_blocked(self) -> None:
        for sid, stream in list(self._blocked.items()):
            if self.streams.get(sid) is stream:
                try:
                    self._send_body(sid, stream)
                except H2Error:
                    self._blocked.pop(sid, None)
            else:
                self._blocked.pop(sid, None)

    def credit_stream(self, sid: int, n: int) -> None:
        """The consumer took ``n`` bytes of stream ``sid``: let more come."""
        conn = self.h2
        if conn is None or self.lost or sid not in self.streams:
            return
        try:
            conn.increment_flow_control_window(n, stream_id=sid)
        except H2Error:
            return  # the stream closed in the meantime
        self._flush()

    def cancel_stream(self, stream: H2Stream, code: ErrorCodes) -> None:
        sid = stream.sid
        conn = self.h2
        if sid is None or conn is None:
            return
        if self.streams.get(sid) is stream:
            if not self.lost:
                try:
                    conn.reset_stream(sid, code)
                except H2Error:
                    pass  # already closed on h2's side
                self._flush()
            self._forget(sid)

    def _forget(self, sid: int) -> None:
        stream = self.streams.pop(sid, None)
        self._blocked.pop(sid, None)
        if stream is not None:
            self._needed -= max(stream.window, self.stream_window)
            self.registry.streams_changed(self)

    # -- events ---------------------------------------------------------------------

    def _on_settings(self, event: RemoteSettingsChanged) -> None:
        if not self.ready:
            self.ready = True
            self.registry.connection_ready(self)
        else:
            self._send_blocked()
            self.registry.streams_changed(self)

    def _on_response(self, event: ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        status = 0
        headers = Headers()
        for name, value in event.headers:
            if len(name) + len(value) > MAX_HEADER_LINE:
                # As the HTTP/1.1 path bounds a header line.
                self.cancel_stream(stream, ErrorCodes.CANCEL)
                stream.on_failed(TransportError(
                    f"the response headers are too large: the header field {name[:40]!r}... is over the limit of "
                    f"{MAX_HEADER_LINE} bytes (from {stream.url})"
                ))
                return
            if name[:1] == b":":
                if name == b":status":
                    status = int(value)
            else:
                headers.addRawHeader(name, value)
        stream.on_headers(status, headers)

    def _on_data(self, event: DataReceived) -> None:
        fcl = event.flow_controlled_length
        if fcl:
            # Connection credit on arrival (a zero-length DATA frame, END_STREAM
            # alone, must not be credited: h2 refuses an increment of 0).
            self._conn_uncredited += fcl
            if self._conn_uncredited >= CONN_SLACK // 2:
                n, self._conn_uncredited = self._conn_uncredited, 0
                assert self.h2 is not None
                self.h2.increment_flow_control_window(n)
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.on_data(event.data, fcl)

    def _on_stream_ended(self, sid: int) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        if stream.pending_body is not None:
            # The server answered before reading the whole body: stop sending it,
            # else h2 keeps the stream half-open and counts it as open.
            stream.pending_body = None
            try:
                assert self.h2 is not None
                self.h2.reset_stream(sid, ErrorCodes.NO_ERROR)
            except H2Error:
                pass
        self._forget(sid)
        stream.on_end(True, "")

    def _on_reset(self, sid: int, code: Any) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            return
        self._forget(sid)
        if code == ErrorCodes.REFUSED_STREAM and not stream.headers_seen:
            # Never processed (RFC 9113, 8.7): send it again.
            stream.detach()
            self.registry.resend(stream)
            return
        name = getattr(code, "name", str(code))
        if stream.headers_seen:
            stream.on_end(False, f"the server reset the HTTP/2 stream ({name})")
        else:
            stream.on_failed(TransportError(
                f"the server reset the HTTP/2 stream to {stream.url} before a response ({name})"
            ))

    def _on_goaway(self, code: Any, last_sid: int) -> None:
        self.going_away = True
        name = getattr(code, "name", str(code))
        log.info("HTTP/2 GOAWAY ({code}, last stream {last}) from {key}", code=name, last=last_sid, key=self.key)
        for sid in [s for s in self.streams if s > last_sid]:
            # Above last_stream_id: never processed, safe to send again.
            stream = self.streams[sid]
            self._forget(sid)
            stream.detach()
            self.registry.resend(stream)
        self.registry.streams_changed(self)

    def _fail_all(self, why: str) -> None:
        for sid in list(self.streams):
            stream = self.streams[sid]
            self._forget(sid)
            if stream.headers_seen:
                stream.on_end(False, why)
            else:
                stream.on_failed(TransportError(f"the request to {stream.url} failed: {why}"))


def classify_connect_failure(failure: Failure, url: str) -> NousHTTPError:
    """A connection attempt's failure as the library's error."""
    value = classify(failure, url).value
    if isinstance(value, NousHTTPError):
        return value
    return TransportError(f"cannot open an HTTP/2 connection to {url}: {describe(value)}")  # type: ignore[arg-type]
