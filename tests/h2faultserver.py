"""A misbehaving loopback HTTP/2 server (TLS, ALPN ``h2``) whose frames are
under the test's control: the HTTP/2 twin of tests/faultserver.py.

Each request (once its body has arrived) is answered by a *script*: a list
of actions run in order on the reactor the tests run.  The actions send a
HEADERS frame (:class:`H`), DATA (:class:`D`, split into frames and held
back by flow control as a real server does), trailers (:class:`T`), a
RST_STREAM (:class:`Rst`), a GOAWAY (:class:`Goaway`), raw bytes on the
connection (:class:`Raw`: a cut frame, a frame no peer may send), and
reuse :data:`~tests.faultserver.CLOSE` (FIN), ``ABORT`` (RST), ``HOLD``,
:class:`~tests.faultserver.Sleep`.  :class:`DripRest` writes every byte
that follows one at a time (each its own TLS record); :class:`EveryData`
sends DATA every interval until the peer goes.  The server counts its open
connections and records the requests, as the HTTP/1.1 one does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.protocol import Factory, Protocol

from nous_twisted.bench.h2 import send_within_window

from .faultserver import Abort, Close, Hold, Sleep, get_reactor
from .h2server import serve


@dataclass(frozen=True)
class H:
    """A HEADERS frame: ``:status`` then the headers (names lower-cased)."""

    status: int
    headers: Sequence[tuple[str, str]] = ()
    end: bool = False


@dataclass(frozen=True)
class D:
    """DATA, in frames of the peer's largest size, sent as its window allows;
    the next action waits until all of it is out."""

    data: bytes
    end: bool = False


@dataclass(frozen=True)
class T:
    """Trailers: a last HEADERS frame with END_STREAM."""

    headers: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Rst:
    code: ErrorCodes = ErrorCodes.INTERNAL_ERROR


@dataclass(frozen=True)
class Goaway:
    code: ErrorCodes = ErrorCodes.INTERNAL_ERROR
    #: None: the stream being answered (it may finish)
    last_stream_id: int | None = None


@dataclass(frozen=True)
class Raw:
    """Bytes written on the connection as they are, made from the stream id."""

    make: Callable[[int], bytes]


@dataclass(frozen=True)
class DripRest:
    """From here on, every byte is written alone, ``interval`` seconds apart."""

    interval: float = 0.001


@dataclass(frozen=True)
class EveryData:
    """DATA ``data`` every ``interval`` seconds until the peer goes."""

    data: bytes
    interval: float


@dataclass(frozen=True)
class Together:
    """HEADERS, DATA (within the window) and raw bytes written in ONE write,
    so that the client reads them in one batch."""

    actions: Sequence[H | D | Raw]


H2Action = H | D | T | Rst | Goaway | Raw | DripRest | EveryData | Together | Close | Abort | Hold | Sleep
H2Script = Sequence[H2Action]


def frame(kind: int, flags: int, sid: int, payload: bytes, length: int | None = None) -> bytes:
    """One raw HTTP/2 frame (``length`` may claim more than the payload: a cut frame)."""
    n = len(payload) if length is None else length
    return struct.pack(">I", n)[1:] + bytes([kind, flags]) + struct.pack(">I", sid & 0x7FFFFFFF) + payload


DATA, HEADERS = 0x0, 0x1


def response(status: int, body: bytes, headers: Sequence[tuple[str, str]], length: bool = True) -> list[H2Action]:
    """A whole reply: HEADERS (with content-length unless ``length`` is False), DATA with END_STREAM."""
    hs = list(headers) + ([("content-length", str(len(body)))] if length else [])
    if not body:
        return [H(status, hs, end=True)]
    return [H(status, hs), D(body, end=True)]


def _wait(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    get_reactor().callLater(seconds, d.callback, None)
    return d


class H2FaultProtocol(Protocol):
    def __init__(self, server: H2FaultServer) -> None:
        self.server = server
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.lost = False
        self.dripping: float | None = None
        self.drip_queue = bytearray()
        self.drip_busy = False
        # per stream: DATA waiting for window, and who waits for it to go out
        self.pending: dict[int, bytearray] = {}
        self.ending: set[int] = set()
        self.drained: dict[int, Deferred[None]] = {}
        self.closed_streams: set[int] = set()

    # -- connection --------------------------------------------------------------

    def connectionMade(self) -> None:
        self.server.open_connections += 1
        self.server.connections += 1
        self.server.protocols.append(self)
        self.conn.initiate_connection()
        self.flush()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self.server.open_connections -= 1
        for d in list(self.drained.values()):
            if not d.called:
                d.callback(None)
        self.drained.clear()

    def write(self, data: bytes) -> None:
        if self.lost or not data:
            return
        if self.dripping is None:
            self.transport.write(data)  # type: ignore[union-attr]
            return
        self.drip_queue += data
        if not self.drip_busy:
            self.drip_busy = True
            ensureDeferred(self._drip())

    async def _drip(self) -> None:
        while self.drip_queue and not self.lost:
            byte = bytes(self.drip_queue[:1])
            del self.drip_queue[:1]
            self.transport.write(byte)  # type: ignore[union-attr]
            assert self.dripping is not None
            await _wait(self.dripping)
        self.drip_busy = False

    async def drip_done(self) -> None:
        while self.drip_busy and not self.lost:
            await _wait(0.005)

    def flush(self) -> None:
        self.write(self.conn.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        serve(self, data)

    def on_request(self, sid: int, headers: dict[bytes, bytes]) -> None:
        self.server.requests.append(headers)

    def on_end(self, sid: int) -> None:
        self._answer(sid)

    def on_reset(self, sid: int, code: int) -> None:
        self.server.resets_received.append(code)
        self.closed_streams.add(sid)
        self._release(sid)

    def on_window(self) -> None:
        for sid in list(self.pending):
            self._push(sid)

    # -- answering ------------------------------------------------------------------

    def _answer(self, sid: int) -> None:
        script = self.server.next_script()
        d = ensureDeferred(self._run(sid, script))
        d.addErrback(lambda f: self.server.errors.append(f.value))

    async def _run(self, sid: int, script: H2Script) -> None:
        conn = self.conn
        for action in script:
            if self.lost or sid in self.closed_streams:
                return
            if isinstance(action, H):
                hs = [(b":status", str(action.status).encode())]
                hs += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in action.headers]
                conn.send_headers(sid, hs, end_stream=action.end)
                self.flush()
            elif isinstance(action, D):
                if not action.data:
                    if action.end:
                        conn.end_stream(sid)
                        self.flush()
                    continue
                self.pending[sid] = bytearray(action.data)
                if action.end:
                    self.ending.add(sid)
                d: Deferred[None] = Deferred()
                self.drained[sid] = d
                self._push(sid)
                self.flush()
                await d
            elif isinstance(action, T):
                hs = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in action.headers]
                conn.send_headers(sid, hs, end_stream=True)
                self.flush()
            elif isinstance(action, Rst):
                conn.reset_stream(sid, action.code)
                self.flush()
            elif isinstance(action, Goaway):
                last = sid if action.last_stream_id is None else action.last_stream_id
                conn.close_connection(error_code=action.code, last_stream_id=last)
                self.flush()
            elif isinstance(action, Raw):
                self.flush()
                self.write(action.make(sid))
            elif isinstance(action, Together):
                out = bytearray()
                for part in action.actions:
                    if isinstance(part, H):
                        hs = [(b":status", str(part.status).encode())]
                        hs += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in part.headers]
                        conn.send_headers(sid, hs, end_stream=part.end)
                    elif isinstance(part, D):
                        conn.send_data(sid, part.data, end_stream=part.end)
                    out += conn.data_to_send()
                    if isinstance(part, Raw):
                        out += part.make(sid)
                self.write(bytes(out))
            elif isinstance(action, DripRest):
                self.flush()
                self.dripping = action.interval
            elif isinstance(action, EveryData):
                while not self.lost and sid not in self.closed_streams:
                    conn.send_data(sid, action.data)
                    self.flush()
                    await _wait(action.interval)
                return
            elif isinstance(action, Sleep):
                await _wait(action.seconds)
            elif isinstance(action, Close):
                self.flush()
                await self.drip_done()
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            elif isinstance(action, Abort):
                self.flush()
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            elif isinstance(action, Hold):
                return
            else:  # pragma: no cover - a script error
                raise TypeError(f"unknown action {action!r}")

    def _push(self, sid: int) -> None:
        buf = self.pending.get(sid)
        if buf is None:
            return
        conn = self.conn
        try:
            if not send_within_window(conn, sid, buf):
                return
            if sid in self.ending:
                conn.end_stream(sid)
        except H2Error:
            pass  # the client reset it meanwhile
        self._release(sid)
        self.flush()

    def _release(self, sid: int) -> None:
        self.pending.pop(sid, None)
        self.ending.discard(sid)
        d = self.drained.pop(sid, None)
        if d is not None and not d.called:
            d.callback(None)


@dataclass
class H2FaultServer:
    """Listen with TLS offering ALPN h2 only; answer request i with
    ``scripts[i]`` (the last one repeats)."""

    scripts: list[H2Script]
    tls: Any
    open_connections: int = 0
    connections: int = 0
    requests: list[dict[bytes, bytes]] = field(default_factory=list)
    resets_received: list[Any] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    protocols: list[H2FaultProtocol] = field(default_factory=list)
    _answered: int = 0
    _port: Any = None

    def next_script(self) -> H2Script:
        script = self.scripts[min(self._answered, len(self.scripts) - 1)]
        self._answered += 1
        return script

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"https://localhost:{self._port.getHost().port}{path}"

    async def __aenter__(self) -> H2FaultServer:
        server = self

        class F(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> H2FaultProtocol:
                return H2FaultProtocol(server)

        self._port = get_reactor().listenSSL(0, F(), self.tls, interface="127.0.0.1")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for p in self.protocols:
            if not p.lost and p.transport is not None:
                p.transport.abortConnection()
        await self._port.stopListening()
