"""Loopback servers that misbehave on purpose, and small async helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher


def get_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    get_reactor().callLater(seconds, d.callback, None)
    return d


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> None:
    """Poll ``cond`` on the reactor until it holds; fail after ``timeout``."""
    waited = 0.0
    while not cond():
        if waited >= timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await sleep(step)
        waited += step


async def refused_url(path: str = "/v1/chat/completions") -> str:
    """A loopback URL whose port was just closed: connecting is refused."""
    port = get_reactor().listenTCP(0, Factory(), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}{path}"
    await port.stopListening()
    return url


class RawServer:
    """A TCP server on loopback whose replies are scripted by ``on_data``.

    ``on_data(protocol, data)`` is called with everything received so far
    once a full request head (and Content-Length body) has arrived.
    """

    def __init__(self, on_request: Callable[[Protocol], None] | None = None) -> None:
        self.on_request = on_request
        self.connections: list[_RawProtocol] = []
        self.closed = 0
        self.port: Any = None

    def listen(self) -> RawServer:
        factory = Factory.forProtocol(_RawProtocol)
        factory.server = self  # type: ignore[attr-defined]
        factory.noisy = False
        self.port = get_reactor().listenTCP(0, factory, interface="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"

    @property
    def open(self) -> int:
        return len(self.connections) - self.closed

    async def stop(self) -> None:
        for p in self.connections:
            if p.transport is not None and p.connected:
                p.transport.abortConnection()
        await self.port.stopListening()


class _RawProtocol(Protocol):
    def connectionMade(self) -> None:
        self.server: RawServer = self.factory.server  # type: ignore[attr-defined]
        self.server.connections.append(self)
        self.buffer = b""
        self.handled = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.handled or b"\r\n\r\n" not in self.buffer:
            return
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if len(rest) < length:
            return
        self.handled = True
        if self.server.on_request is not None:
            self.server.on_request(self)

    def connectionLost(self, reason: Any = None) -> None:
        self.server.closed += 1


class LogCapture:
    """Collects twisted.logger events while in use."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> LogCapture:
        globalLogPublisher.addObserver(self.events.append)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self.events.append)

    def text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) + " " + repr(e) for e in self.events)


class ScriptedSite:
    """A twisted.web server that answers every POST with ``body`` written in
    HTTP chunks of ``?size=N`` bytes (each one a separate chunk on the wire),
    with the Content-Type ``content_type``."""

    def __init__(self, body: bytes, content_type: bytes = b"text/event-stream") -> None:
        from twisted.web import resource, server

        outer = self

        class _Leaf(resource.Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:
                size = int(request.args.get(b"size", [b"0"])[0]) or len(outer.body) or 1
                request.setHeader(b"content-type", outer.content_type)
                for i in range(0, len(outer.body), size):
                    request.write(outer.body[i : i + size])
                request.finish()
                return server.NOT_DONE_YET

        self.body = body
        self.content_type = content_type
        site = server.Site(_Leaf())
        site.log = lambda request: None  # type: ignore[method-assign]
        self.site = site
        self.port: Any = None

    def listen(self) -> ScriptedSite:
        self.port = get_reactor().listenTCP(0, self.site, interface="127.0.0.1")
        return self

    def url(self, size: int = 0) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/stream?size={size}"

    async def stop(self) -> None:
        await self.port.stopListening()


class FloodServer:
    """Answers every request with an endless-looking SSE body of identical
    ``event_size``-byte events, written as fast as TCP lets it: a streaming
    producer, so its writes block (it is paused) when the client stops reading."""

    def __init__(self, event_size: int = 1024, total: int = 50 * 1024 * 1024) -> None:
        payload = b'data: {"pad": "' + b"x" * (event_size - len(b'data: {"pad": ""}\n\n')) + b'"}\n\n'
        assert len(payload) == event_size
        self.event = payload
        per_chunk = max(1, 16384 // event_size)
        block = payload * per_chunk
        self.chunk = b"%x\r\n" % len(block) + block + b"\r\n"
        self.block_len = len(block)
        self.total = total
        self.sent = 0  # body bytes handed to the transport
        self.pauses = 0
        self.connections: list[Any] = []
        self.port: Any = None

    def listen(self) -> FloodServer:
        server = self

        class _Flood(Protocol):
            paused = False
            started = False
            closed = False

            def connectionMade(self) -> None:
                server.connections.append(self)
                self.buffer = b""

            def dataReceived(self, data: bytes) -> None:
                self.buffer += data
                if self.started or b"\r\n\r\n" not in self.buffer:
                    return
                self.started = True
                self.transport.write(  # type: ignore[union-attr]
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                self.transport.registerProducer(self, True)  # type: ignore[union-attr]
                self.resumeProducing()

            def pauseProducing(self) -> None:
                self.paused = True
                server.pauses += 1

            def resumeProducing(self) -> None:
                self.paused = False
                while not self.paused and not self.closed and server.sent < server.total:
                    server.sent += server.block_len
                    self.transport.write(server.chunk)  # type: ignore[union-attr]
                if server.sent >= server.total and not self.closed:
                    self.transport.write(b"0\r\n\r\n")  # type: ignore[union-attr]

            def stopProducing(self) -> None:
                self.closed = True

            def connectionLost(self, reason: Any = None) -> None:
                self.closed = True

        factory = Factory.forProtocol(_Flood)
        factory.noisy = False
        self.port = get_reactor().listenTCP(0, factory, interface="127.0.0.1")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/flood"

    @property
    def open(self) -> int:
        return sum(1 for c in self.connections if not c.closed)

    async def stop(self) -> None:
        for c in self.connections:
            if c.transport is not None and not c.closed:
                c.transport.abortConnection()
        await self.port.stopListening()


def pool_counts(reactor: Any = None) -> tuple[int, int, int]:
    """(open, idle, waiting) of the shared pool of ``reactor`` (default: the running one).

    The one place that knows where the pool lives: the per-reactor bundle is
    moving from ``nous_twisted.pool.get_transport`` to
    ``nous_twisted.shared.get_shared``; the new location is tried first.
    """
    if reactor is None:
        reactor = get_reactor()
    try:
        from nous_twisted.shared import get_shared  # type: ignore[import-not-found,unused-ignore]

        pool = get_shared(reactor).pool
    except ImportError:
        from nous_twisted.pool import get_transport

        pool = get_transport(reactor).pool
    idle = sum(len(v) for v in pool._connections.values())
    return pool.open_connections(), idle, pool.waiting()


def shared_pool(reactor: Any = None) -> Any:
    """The shared pool object itself (same lookup as :func:`pool_counts`)."""
    if reactor is None:
        reactor = get_reactor()
    try:
        from nous_twisted.shared import get_shared  # type: ignore[import-not-found,unused-ignore]

        return get_shared(reactor).pool
    except ImportError:
        from nous_twisted.pool import get_transport

        return get_transport(reactor).pool


async def wait_for_baseline(
    fds: int, server: Any = None, timeout: float = 3.0, what: str = ""
) -> None:
    """Wait until the pool holds nothing (no open, idle or waiting connection),
    ``server`` (anything with ``open_connections``) has no open connection and
    this process has ``fds`` file descriptors open; fail with the counts after
    ``timeout`` seconds."""
    from .faultserver import open_fds

    def state() -> tuple[tuple[int, int, int], int, int]:
        srv = server.open_connections if server is not None else 0
        return pool_counts(), srv, open_fds()

    def ok() -> bool:
        counts, srv, n = state()
        return counts == (0, 0, 0) and srv == 0 and n <= fds

    try:
        await wait_for(ok, timeout=timeout)
    except AssertionError:
        counts, srv, n = state()
        raise AssertionError(
            f"{what}: not back to baseline after {timeout} s: pool (open, idle, waiting) = {counts}, "
            f"server open connections = {srv}, fds = {n} (baseline {fds})"
        ) from None
