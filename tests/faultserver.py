"""A misbehaving loopback HTTP/1.1 server whose bytes are under the test's control.

Each request received is answered by a *script*: a list of actions run in
order on the reactor the tests run (default or asyncio).  The actions write
bytes, wait, drip bytes one at a time, close (FIN), abort (RST) or hold the
connection open.  A script that ends without closing leaves the connection
open for the next request (keep-alive).  The server records every request
with the raw bytes seen on the wire, and counts connections, so a test can
check what reached it and that nothing was left open.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure


def get_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def open_fds() -> int:
    """How many file descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


# -- actions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    data: bytes


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Drip:
    """Write ``data`` one byte at a time, ``interval`` seconds apart (each byte
    its own TCP segment on loopback)."""

    data: bytes
    interval: float = 0.001


@dataclass(frozen=True)
class Every:
    """Write ``data`` every ``interval`` seconds until the peer closes."""

    data: bytes
    interval: float


@dataclass(frozen=True)
class Close:
    """loseConnection: FIN after what was written."""


@dataclass(frozen=True)
class Abort:
    """abortConnection: RST, dropping anything unsent."""


@dataclass(frozen=True)
class Hold:
    """Stop here and keep the connection open, answering nothing more."""


@dataclass(frozen=True)
class Call:
    """Run ``fn(connection)`` (a test hook: record a fact, write computed bytes)."""

    fn: Callable[[FaultConnection], Any]


Action = Write | Sleep | Drip | Every | Close | Abort | Hold | Call
Script = Sequence[Action]


def write(data: bytes) -> Write:
    return Write(data)


def sleep(seconds: float) -> Sleep:
    return Sleep(seconds)


def drip(data: bytes, interval: float = 0.001) -> Drip:
    return Drip(data, interval)


def every(data: bytes, interval: float) -> Every:
    return Every(data, interval)


CLOSE = Close()
ABORT = Abort()
HOLD = Hold()


# -- canned replies ---------------------------------------------------------------


def response(
    status: int = 200,
    body: bytes = b"",
    headers: Sequence[tuple[str, str]] = (("Content-Type", "application/json"),),
    reason: str | None = None,
    version: str = "HTTP/1.1",
    length: bool = True,
) -> bytes:
    """A whole response with a Content-Length (unless ``length`` is False)."""
    lines = [f"{version} {status} {reason or REASONS.get(status, 'Whatever')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def head(
    status: int = 200,
    headers: Sequence[tuple[str, str]] = (("Content-Type", "text/event-stream"),),
    chunked: bool = True,
    version: str = "HTTP/1.1",
) -> bytes:
    """A response head; chunked by default."""
    lines = [f"{version} {status} {REASONS.get(status, 'Whatever')}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes, ext: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n" % (len(data), ext, data)


LAST_CHUNK = b"0\r\n\r\n"

REASONS = {
    100: "Continue",
    103: "Early Hints",
    200: "OK",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


# -- the server ---------------------------------------------------------------------


@dataclass
class SeenRequest:
    """One request as it arrived: the raw bytes, and its parts."""

    raw: bytes
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int  # the index of its connection, from 0
    index_on_connection: int  # 0 for the first request on that connection
    fate: str = "answered"  # set by scripts: "answered", "killed", ...
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


ScriptSource = Script | Callable[["SeenRequest"], Script]


class FaultServer:
    """Listens on 127.0.0.1, port 0; answers each request with a script.

    ``script`` is a list of actions used for every request, or a callable
    ``script(request) -> actions`` deciding per request.  ``on_connect`` runs
    a script as soon as a connection is made (before any request): a server
    that never reads, or that accepts TCP and never answers a TLS handshake.
    """

    def __init__(self, script: ScriptSource = (), on_connect: Script | None = None) -> None:
        self.script = script
        self.on_connect = on_connect
        self.requests: list[SeenRequest] = []
        self.connections: list[FaultConnection] = []
        self.max_open = 0
        self.port: Any = None

    # lifecycle

    def listen(self) -> FaultServer:
        factory = Factory.forProtocol(FaultConnection)
        factory.server = self  # type: ignore[attr-defined]
        factory.noisy = False
        self.port = get_reactor().listenTCP(0, factory, interface="127.0.0.1")
        return self

    async def __aenter__(self) -> FaultServer:
        return self.listen()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        for c in self.connections:
            if not c.closed and c.transport is not None:
                c.transport.abortConnection()
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()

    # facts

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.port_number}{path}"

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self.connections if not c.closed)

    @property
    def connections_made(self) -> int:
        return len(self.connections)

    def script_for(self, request: SeenRequest) -> Script:
        s = self.script
        return s(request) if callable(s) else s


class FaultConnection(Protocol):
    """One server-side connection: parses requests, runs their scripts."""

    server: FaultServer

    def connectionMade(self) -> None:
        self.server = self.factory.server  # type: ignore[attr-defined]
        self.closed = False
        self.lost = Deferred[None]()
        self.buffer = b""
        self.served = 0
        self.running = False  # a script is running: later requests wait
        self.pending: list[SeenRequest] = []
        self.raw_in = b""
        self._timer: Any = None
        self.index = len(self.server.connections)
        self.server.connections.append(self)
        self.server.max_open = max(self.server.max_open, self.server.open_connections)
        if self.server.on_connect is not None:
            self.running = True
            self._run(list(self.server.on_connect))

    # receiving

    def dataReceived(self, data: bytes) -> None:
        self.raw_in += data
        self.buffer += data
        while True:
            req = self._parse()
            if req is None:
                break
            self.server.requests.append(req)
            self.pending.append(req)
        self._next()

    def _parse(self) -> SeenRequest | None:
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head_bytes = buf[:end]
        lines = head_bytes.split(b"\r\n")
        method, _, rest = lines[0].decode("latin-1").partition(" ")
        target = rest.rpartition(" ")[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.decode("latin-1").partition(":")
            key = name.strip().lower()
            headers[key] = (headers[key] + ", " + value.strip()) if key in headers else value.strip()
        pos = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(buf[pos:eol].split(b";")[0], 16)
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", eol)
                    if trailer_end < 0 and buf[eol : eol + 4] != b"\r\n\r\n":
                        return None
                    pos = (trailer_end if trailer_end >= 0 else eol) + 4
                    break
                if len(buf) < eol + 2 + size + 2:
                    return None
                body += buf[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
        else:
            length = int(headers.get("content-length", "0") or 0)
            if len(buf) < pos + length:
                return None
            body = buf[pos : pos + length]
            pos += length
        raw, self.buffer = buf[:pos], buf[pos:]
        req = SeenRequest(raw, method, target, headers, body, self.index, self.served)
        self.served += 1
        return req

    # running scripts

    def _next(self) -> None:
        if self.running or self.closed or not self.pending:
            return
        req = self.pending.pop(0)
        self.running = True
        self._run(list(self.server.script_for(req)))

    def _run(self, actions: list[Action]) -> None:
        self._timer = None
        while actions and not self.closed:
            action = actions.pop(0)
            t = self.transport
            assert t is not None
            if isinstance(action, Write):
                t.write(action.data)
            elif isinstance(action, Sleep):
                self._timer = get_reactor().callLater(action.seconds, self._run, actions)
                return
            elif isinstance(action, Drip):
                if action.data:
                    t.write(action.data[:1])
                    rest = action.data[1:]
                    if rest:
                        actions.insert(0, Drip(rest, action.interval))
                        self._timer = get_reactor().callLater(action.interval, self._run, actions)
                        return
            elif isinstance(action, Every):
                t.write(action.data)
                actions.insert(0, action)
                self._timer = get_reactor().callLater(action.interval, self._run, actions)
                return
            elif isinstance(action, Close):
                t.loseConnection()
                return
            elif isinstance(action, Abort):
                t.abortConnection()  # type: ignore[attr-defined]
                return
            elif isinstance(action, Hold):
                return
            elif isinstance(action, Call):
                action.fn(self)
            else:  # pragma: no cover
                raise TypeError(f"unknown action {action!r}")
        if not self.closed:
            self.running = False
            self._next()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.lost.callback(None)
