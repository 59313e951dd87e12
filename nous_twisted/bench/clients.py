"""Benchmark clients, one process each: this library's two backends and the
peers a user would pick instead, driven by the same scenario code.

Run: ``python -m nous_twisted.bench.clients CLIENT SCENARIO BASE_URL PARAMS_JSON``;
prints one JSON object: CPU seconds (getrusage, user+system) of the measured
part, wall time, counts, latencies, peak RSS and, for ``slow_consumer``, an
RSS series; for the scaling scenarios, the same per level.  ``BASE_URL`` is
``https://...`` for the TLS scenarios, with the CA's PEM file in
``PARAMS["ca"]``; ``PARAMS["profile"]`` runs the measured part under cProfile
and adds a breakdown of where the time went (:func:`profile_breakdown`).

This library's clients come in variants: ``nous_agent`` / ``nous_treq`` read
counted streams with ``consume()``; ``..._iter`` with ``async for``;
``..._accel`` (and ``..._accel_iter``) are the same with the optional
accelerator left on (the runner sets ``NOUS_TWISTED_NO_SPEEDUPS=1`` for every
other nous client, so that the plain rows are pure Python).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import os
import pstats
import resource
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

# Every scenario runs every one of CLIENTS; VARIANTS run where a scenario names them.
CLIENTS = ("nous_treq", "nous_agent", "treq", "agent", "aiohttp", "httpx", "floor", "twisted_floor")
VARIANTS = ("nous_treq_iter", "nous_agent_iter", "nous_treq_accel", "nous_agent_accel",
            "nous_treq_accel_iter", "nous_agent_accel_iter")
ASYNCIO_CLIENTS = ("aiohttp", "httpx", "floor")
TWISTED_CLIENTS = tuple(c for c in CLIENTS + VARIANTS if c not in ASYNCIO_CLIENTS)

# The ~1 KB request every post scenario sends (encoded per request, by every client).
SMALL_REQUEST = {"model": "bench", "messages": [{"role": "user", "content": "z" * 900}], "max_tokens": 200}
LARGE_REQUEST = {"model": "bench", "messages": [{"role": "user", "content": "w" * (256 * 1024 - 120)}]}
STREAM_REQUEST = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
TREQ_HEADERS: dict[str | bytes, str | bytes] = {k: v for k, v in HEADERS.items()}  # treq's annotation


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mb() -> float:
    """VmHWM: unlike ru_maxrss, it is not inherited across exec from the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def split_sse(buf: bytearray, on_data: Callable[[Any], None]) -> None:
    """The least SSE parsing that works for these servers: LF-separated events,
    ``data: `` lines, ``[DONE]``. (What a hand-rolled client does.)"""
    while True:
        end = buf.find(b"\n\n")
        if end < 0:
            return
        block = bytes(buf[:end])
        del buf[: end + 2]
        if block.startswith(b"data: "):
            data = block[6:]
            if data != b"[DONE]":
                on_data(orjson.loads(data))


# -- the clients: post(path, obj) -> decoded JSON; stream(path, obj, on_event) -> events


class NousClient:
    def __init__(self, base: str, backend: str, iterate: bool = False, ca: str | None = None) -> None:
        import nous_twisted

        self.nt = nous_twisted
        self.base = base
        self.backend = backend
        self.iterate = iterate
        # room for the memory scenario's 5,000 open streams on one host
        nous_twisted.configure(pool=nous_twisted.PoolSettings(max_connections=10000, timeout=30000))
        if ca is not None:
            nous_twisted.configure(ca_bundle=ca)

    def post(self, path: str, obj: Any) -> Any:
        return self.nt.post(self.base + path, obj, HEADERS, backend=self.backend)

    async def stream(self, path: str, obj: Any, on_event: Callable[[Any], Awaitable[None]] | None) -> int:
        s = self.nt.stream(self.base + path, obj, HEADERS, stream_backend=self.backend)
        n = 0
        if on_event is None and not self.iterate:
            # Counting only: consume() with a plain callback, the cheapest of
            # the three documented ways (no Deferred per event).
            count = [0]

            def on(event: Any) -> None:
                if type(event) is dict:
                    count[0] += 1

            await s.consume(on)
            return count[0]
        if on_event is None:
            # how most users read: one await per event
            async for event in s:
                if type(event) is dict:
                    n += 1
            return n
        async for event in s:
            if type(event) is dict:
                n += 1
                await on_event(event)
        return n


class _TwistedRaw:
    """Shared by raw treq and raw Agent: a persistent pool sized like ours."""

    def __init__(self, base: str, ca: str | None = None) -> None:
        from twisted.internet import reactor
        from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

        self.base = base
        self.reactor = reactor
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 2000
        pool.cachedConnectionTimeout = 30
        if ca is not None:
            from twisted.internet.ssl import Certificate, trustRootFromCertificates

            with open(ca, "rb") as f:
                root = trustRootFromCertificates([Certificate.loadPEM(f.read())])
            self.agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=root), pool=pool)
        else:
            self.agent = Agent(reactor, pool=pool)


class _Sink:
    """Where a raw Twisted client's protocol puts decoded events: counted
    when nobody consumes them, else queued for an async consumer, unbounded
    (raw clients have no backpressure of their own)."""

    def __init__(self, on_event: Callable[[Any], Awaitable[None]] | None) -> None:
        from twisted.internet.defer import Deferred

        self.Deferred = Deferred
        self.on_event = on_event
        self.items: deque[Any] = deque()
        self.waiter: Any = None
        self.done = False
        self.count = 0

    def put(self, item: Any) -> None:
        if self.on_event is None:
            self.count += 1
            return
        self.items.append(item)
        if self.waiter is not None:
            w, self.waiter = self.waiter, None
            w.callback(None)

    def close(self) -> None:
        self.done = True
        if self.waiter is not None:
            w, self.waiter = self.waiter, None
            w.callback(None)

    async def drain(self, finished: Any) -> int:
        """Feed the queue to the consumer until ``close()``; then wait for
        ``finished`` (the body's end) and return the number of events."""
        on_event = self.on_event
        if on_event is not None:
            while True:
                while self.items:
                    self.count += 1
                    await on_event(self.items.popleft())
                if self.done:
                    break
                self.waiter = self.Deferred()
                await self.waiter
        await finished
        return self.count


class RawAgentClient(_TwistedRaw):
    def post(self, path: str, obj: Any) -> Any:
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        from ..body import BytesProducer

        d = self.agent.request(
            b"POST", (self.base + path).encode(), Headers({k: [v] for k, v in HEADERS.items()}),
            BytesProducer(orjson.dumps(obj)),
        )
        return d.addCallback(readBody).addCallback(orjson.loads)

    async def stream(self, path: str, obj: Any, on_event: Callable[[Any], Awaitable[None]] | None) -> int:
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Protocol
        from twisted.web.http_headers import Headers

        from ..body import BytesProducer

        response = await self.agent.request(
            b"POST", (self.base + path).encode(), Headers({k: [v] for k, v in HEADERS.items()}),
            BytesProducer(orjson.dumps(obj)),
        )
        finished: Deferred[None] = Deferred()
        sink = _Sink(on_event)
        on_data = sink.put

        class Body(Protocol):
            def __init__(self) -> None:
                self.buf = bytearray()

            def dataReceived(self, data: bytes) -> None:
                self.buf += data
                split_sse(self.buf, on_data)

            def connectionLost(self, reason: Any = None) -> None:
                sink.close()
                finished.callback(None)

        response.deliverBody(Body())
        return await sink.drain(finished)


class RawTreqClient(_TwistedRaw):
    def __init__(self, base: str, ca: str | None = None) -> None:
        super().__init__(base, ca)
        from treq.client import HTTPClient

        self.client = HTTPClient(self.agent)

    async def _post(self, path: str, obj: Any) -> Any:
        response = await self.client.post(self.base + path, data=orjson.dumps(obj), headers=TREQ_HEADERS)
        return orjson.loads(await response.content())

    def post(self, path: str, obj: Any) -> Any:
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(self._post(path, obj))

    async def stream(self, path: str, obj: Any, on_event: Callable[[Any], Awaitable[None]] | None) -> int:
        import treq

        response = await self.client.post(self.base + path, data=orjson.dumps(obj), headers=TREQ_HEADERS, unbuffered=True)
        buf = bytearray()
        sink = _Sink(on_event)

        def collector(data: bytes) -> None:
            buf.extend(data)
            split_sse(buf, sink.put)

        done = treq.collect(response, collector)

        def closed(result: Any) -> Any:
            sink.close()
            return result

        done.addBoth(closed)
        return await sink.drain(done)


def _ssl_context(ca: str | None) -> Any:
    import ssl

    return ssl.create_default_context(cafile=ca) if ca is not None else None


class AiohttpClient:
    def __init__(self, base: str, ca: str | None = None) -> None:
        import aiohttp

        self.base = base
        ctx = _ssl_context(ca)
        connector = (aiohttp.TCPConnector(limit=10000, keepalive_timeout=30, ssl=ctx) if ctx is not None
                     else aiohttp.TCPConnector(limit=10000, keepalive_timeout=30))
        self.session = aiohttp.ClientSession(connector=connector)

    async def post(self, path: str, obj: Any) -> Any:
        async with self.session.post(self.base + path, data=orjson.dumps(obj), headers=HEADERS) as r:
            return orjson.loads(await r.read())

    async def stream(self, path: str, obj: Any, on_event: Callable[[Any], Awaitable[None]] | None) -> int:
        n = 0
        async with self.session.post(self.base + path, data=orjson.dumps(obj), headers=HEADERS) as r:
            async for line in r.content:
                if line.startswith(b"data: ") and line[6:].strip() != b"[DONE]":
                    event = orjson.loads(line[6:])
                    n += 1
                    if on_event is not None:
                        await on_event(event)
        return n


class HttpxClient:
    def __init__(self, base: str, ca: str | None = None) -> None:
        import httpx

        self.base = base
        ctx = _ssl_context(ca)
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=10000, max_keepalive_connections=2000),
                                        timeout=120, verify=ctx if ctx is not None else True)

    async def post(self, path: str, obj: Any) -> Any:
        r = await self.client.post(self.base + path, content=orjson.dumps(obj), headers=HEADERS)
        return orjson.loads(r.content)

    async def stream(self, path: str, obj: Any, on_event: Callable[[Any], Awaitable[None]] | None) -> int:
        from httpx_sse import aconnect_sse

        n = 0
        async with aconnect_sse(self.client, "POST", self.base + path, content=orjson.dumps(obj), headers=HEADERS) as es:
            async for sse in es.aiter_sse():
                if sse.data != "[DONE]":
                    event = orjson.loads(sse.data)
                    n += 1
                    if on_event is not None:
                        await on_event(event)
        return n


class _FloorParser:
    """The least HTTP/1.1 parsing that works for the bench server, shared by the
    two floors (asyncio's and Twisted's): one keep-alive connection, one request
    at a time, Content-Length or chunked bodies; ``on_chunk`` sees the body so
    far after each chunk (where the SSE split runs)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.body = bytearray()
        self.state = "head"
        self.length = 0
        self.chunked = False
        self.on_chunk: Callable[[bytearray], None] | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data
        buf = self.buf
        while True:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                del buf[: end + 4]
                self.chunked = b"transfer-encoding: chunked" in head
                if not self.chunked:
                    i = head.find(b"content-length:")
                    self.length = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
                    self.state = "body"
                else:
                    self.state = "size"
            elif self.state == "body":
                if len(buf) < self.length:
                    return
                self.body += buf[: self.length]
                del buf[: self.length]
                self._finish()
            elif self.state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                self.length = int(bytes(buf[:end]), 16)
                del buf[: end + 2]
                self.state = "chunk" if self.length else "trailer"
            elif self.state == "chunk":
                if len(buf) < self.length + 2:
                    return
                self.body += buf[: self.length]
                del buf[: self.length + 2]
                self.state = "size"
                if self.on_chunk is not None:
                    self.on_chunk(self.body)
            else:  # trailer
                if len(buf) < 2:
                    return
                del buf[:2]
                self._finish()

    def _finish(self) -> None:
        self.state = "head"
        body = bytes(self.body)
        self.body = bytearray()
        self.finished(body)

    def finished(self, body: bytes) -> None:
        raise NotImplementedError


def _request_bytes(host: str, path: str, body: bytes) -> bytes:
    """The floors' request: pre-built headers, only the length and body change."""
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
            + b"\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-bench\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body)


def _split_base(base: str) -> tuple[str, str, int]:
    scheme, _, rest = base.partition("://")
    host, _, port = rest.partition(":")
    return scheme, host, int(port)


class _FloorProtocol(_FloorParser, asyncio.Protocol):
    def __init__(self) -> None:
        super().__init__()
        self.done: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    data_received = _FloorParser.feed

    def finished(self, body: bytes) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(body)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc or ConnectionError("the connection closed before the reply ended"))


class FloorClient:
    """A bare asyncio protocol with a pre-built request: the asyncio floor."""

    def __init__(self, base: str, ca: str | None = None) -> None:
        scheme, self.host, self.port = _split_base(base)
        self.idle: list[_FloorProtocol] = []
        self.ssl: Any = None
        if scheme == "https":
            import ssl

            self.ssl = ssl.create_default_context(cafile=ca)

    async def _conn(self) -> _FloorProtocol:
        if self.idle:
            return self.idle.pop()
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_FloorProtocol, self.host, self.port, ssl=self.ssl)
        return proto

    def _request(self, path: str, body: bytes) -> bytes:
        return _request_bytes(self.host, path, body)

    async def post(self, path: str, obj: Any) -> Any:
        proto = await self._conn()
        proto.done = asyncio.get_running_loop().create_future()
        proto.t.write(self._request(path, orjson.dumps(obj)))
        body = await proto.done
        self.idle.append(proto)
        return orjson.loads(body)

    async def stream(self, path: str, obj: Any, on_event: Callable[[Any], Awaitable[None]] | None) -> int:
        proto = await self._conn()
        loop = asyncio.get_running_loop()
        proto.done = loop.create_future()
        count = [0]
        queue: deque[Any] = deque()
        wake: list[asyncio.Future[Any] | None] = [None]

        def on_data(event: Any) -> None:
            if on_event is None:
                count[0] += 1
                return
            queue.append(event)
            if len(queue) > 64:
                proto.t.pause_reading()
            w = wake[0]
            if w is not None and not w.done():
                w.set_result(None)

        proto.on_chunk = lambda body: split_sse(body, on_data)
        proto.t.write(self._request(path, orjson.dumps(obj)))
        if on_event is None:
            await proto.done
        else:
            while True:
                while queue:
                    count[0] += 1
                    await on_event(queue.popleft())
                    if len(queue) < 16:
                        proto.t.resume_reading()
                if proto.done.done():
                    break
                woken: asyncio.Future[Any] = loop.create_future()
                wake[0] = woken
                finished: asyncio.Future[Any] = proto.done
                await asyncio.wait([woken, finished], return_when=asyncio.FIRST_COMPLETED)
        proto.on_chunk = None
        self.idle.append(proto)
        return count[0]


class TwistedFloorClient:
    """The Twisted-reactor floor: a bare ``Protocol`` with the same parsing and
    pre-built request as the asyncio floor, on the default reactor; what a
    Twisted client could cost with nothing above the reactor."""

    def __init__(self, base: str, ca: str | None = None) -> None:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Protocol

        scheme, self.host, self.port = _split_base(base)
        self.reactor = reactor
        self.idle: list[Any] = []
        self.tls: Any = None
        if scheme == "https":
            from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates

            assert ca is not None, "an https floor needs the CA"
            with open(ca, "rb") as f:
                root = trustRootFromCertificates([Certificate.loadPEM(f.read())])
            # one context for every connection, as a hand-written client would
            self.tls = optionsForClientTLS(self.host, trustRoot=root)

        class Proto(_FloorParser, Protocol):
            def __init__(self) -> None:
                super().__init__()
                self.done: Deferred[bytes] | None = None
                self.wake: Deferred[None] | None = None

            dataReceived = _FloorParser.feed

            def finished(self, body: bytes) -> None:
                d = self.done
                if d is not None and not d.called:
                    d.callback(body)
                w, self.wake = self.wake, None
                if w is not None:
                    w.callback(None)

            def connectionLost(self, reason: Any = None) -> None:
                # a refused certificate or a dropped connection fails the exchange
                d = self.done
                if d is not None and not d.called:
                    d.errback(reason)
                w, self.wake = self.wake, None
                if w is not None:
                    w.callback(None)

        self.Proto = Proto
        self.Deferred = Deferred

    async def _conn(self) -> Any:
        if self.idle:
            return self.idle.pop()
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS

        endpoint: Any = TCP4ClientEndpoint(self.reactor, self.host, self.port)
        if self.tls is not None:
            endpoint = wrapClientTLS(self.tls, endpoint)
        proto = self.Proto()
        await connectProtocol(endpoint, proto)  # type: ignore[no-untyped-call]
        return proto

    async def post(self, path: str, obj: Any) -> Any:
        proto = await self._conn()
        done = proto.done = self.Deferred()
        proto.transport.write(_request_bytes(self.host, path, orjson.dumps(obj)))
        body = await done
        self.idle.append(proto)
        return orjson.loads(body)

    async def stream(self, path: str, obj: Any, on_event: Callable[[Any], Awaitable[None]] | None) -> int:
        proto = await self._conn()
        done = proto.done = self.Deferred()
        transport = proto.transport
        count = 0
        queue: deque[Any] = deque()
        paused = [False]

        def on_data(event: Any) -> None:
            nonlocal count
            if on_event is None:
                count += 1
                return
            queue.append(event)
            if len(queue) > 64 and not paused[0]:
                paused[0] = True
                transport.pauseProducing()
            w, proto.wake = proto.wake, None
            if w is not None:
                w.callback(None)

        proto.on_chunk = lambda body: split_sse(body, on_data)
        transport.write(_request_bytes(self.host, path, orjson.dumps(obj)))
        if on_event is None:
            await done
        else:
            while True:
                while queue:
                    count += 1
                    await on_event(queue.popleft())
                    if paused[0] and len(queue) < 16:
                        paused[0] = False
                        transport.resumeProducing()
                if done.called:
                    break
                w = proto.wake = self.Deferred()
                await w
        proto.on_chunk = None
        self.idle.append(proto)
        return count


# -- the scenarios, written once for every client -----------------------------------------


class Runtime:
    """What the scenario code needs from the event loop, Twisted's or asyncio's."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def gather(self, aws: list[Any]) -> Any:
        if self.kind == "asyncio":
            return asyncio.gather(*aws)
        from twisted.internet.defer import Deferred, gatherResults

        return gatherResults([a if isinstance(a, Deferred) else Deferred.fromCoroutine(a) for a in aws])

    def spawn(self, coro: Any) -> Any:
        """Start ``coro`` now; an awaitable of its result (for ``gather``)."""
        if self.kind == "asyncio":
            return asyncio.ensure_future(coro)
        from twisted.internet.defer import Deferred

        return Deferred.fromCoroutine(coro)

    def sleep(self, seconds: float) -> Any:
        if self.kind == "asyncio":
            return asyncio.sleep(seconds)
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        return deferLater(reactor, seconds)


# Set by run() when PARAMS["profile"]: the measured part runs under it.
PROFILER: cProfile.Profile | None = None


def _begin() -> tuple[float, float]:
    """Start measuring: (CPU, wall) now, and the profiler when one is set."""
    if PROFILER is not None:
        PROFILER.enable()
    return cpu(), time.perf_counter()


def _end() -> None:
    if PROFILER is not None:
        PROFILER.disable()


async def _wait_for(rt: Runtime, cond: Callable[[], bool], what: str, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await rt.sleep(0.01)


def _release(base: str, tag: str) -> None:
    """Ask the server to end the streams held under ``tag``, on a socket of
    our own: a client's pool has no part in it (httpx's takes half a minute to
    send one more request beside 1,000 open streams)."""
    import socket

    _, host, port = _split_base(base)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"POST /release?tag={tag} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
        reply = b""
        while True:
            head, sep, body = reply.partition(b"\r\n\r\n")
            if sep and len(body) >= int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]):
                break
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    if not reply.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"/release failed: {reply[:100]!r}")


async def scaling(name: str, client: Any, rt: Runtime, p: dict[str, Any]) -> dict[str, Any]:
    """The scaling scenarios: one figure per level, all levels in this process.

    - ``scale_posts``: CPU per request for ~``n`` small posts at concurrency c;
    - ``scale_paced``: CPU per event with N paced streams at once;
    - ``scale_memory``: RSS growth per concurrently open stream, N streams held
      open (levels opened one after the other: each level's figure is the
      growth from the same baseline with N streams open).
    """
    levels: dict[str, dict[str, float]] = {}
    if name == "scale_posts":
        for c in p["levels"]:
            rounds = max(3, p["n"] // c)
            if c == 1:
                for _ in range(5):
                    await client.post("/small", SMALL_REQUEST)
                c0, w0 = cpu(), time.perf_counter()
                for _ in range(rounds):
                    await client.post("/small", SMALL_REQUEST)
            else:
                # the warm-up round opens the c connections
                await rt.gather([client.post("/small", SMALL_REQUEST) for _ in range(c)])
                c0, w0 = cpu(), time.perf_counter()
                for _ in range(rounds):
                    await rt.gather([client.post("/small", SMALL_REQUEST) for _ in range(c)])
            levels[str(c)] = {"cpu_s": cpu() - c0, "wall_s": time.perf_counter() - w0, "requests": rounds * c}
    elif name == "scale_paced":
        async def noop(event: Any) -> None:
            pass

        await client.stream("/paced?gap=1", STREAM_REQUEST, None)
        for n in p["levels"]:
            c0, w0 = cpu(), time.perf_counter()
            path = f"/paced?gap={p.get('gap_ms', 20)}"
            counts = await rt.gather([client.stream(path, STREAM_REQUEST, noop) for _ in range(n)])
            assert all(c == 50 for c in counts), sorted(set(counts))
            levels[str(n)] = {"cpu_s": cpu() - c0, "wall_s": time.perf_counter() - w0, "events": 50 * n}
    elif name == "scale_memory":
        opened = [0]

        async def on_event(event: Any) -> None:
            opened[0] += 1

        # warm-up: one held stream through its whole life (imports, first connection)
        tag = f"warm{os.getpid()}"
        first = rt.spawn(client.stream(f"/hold?tag={tag}", STREAM_REQUEST, on_event))
        await _wait_for(rt, lambda: opened[0] == 1, "the warm-up stream")
        _release(p["server"], tag)
        await first
        gc.collect()
        opened[0] = 0
        tag = f"hold{os.getpid()}"
        base = rss_bytes()
        c0, w0 = cpu(), time.perf_counter()
        held: list[Any] = []
        for n in p["levels"]:
            while len(held) < n:
                held.append(rt.spawn(client.stream(f"/hold?tag={tag}", STREAM_REQUEST, on_event)))
            await _wait_for(rt, lambda n=n: opened[0] >= n, f"{n} open streams")  # type: ignore[misc]
            await rt.sleep(0.05)
            growth = rss_bytes() - base
            levels[str(n)] = {"rss_growth_bytes": growth, "streams": n, "kib_per_stream": growth / n / 1024,
                              "cpu_s": cpu() - c0, "wall_s": time.perf_counter() - w0}
        # Ended on the server; the process exits without waiting for the
        # clients to wind them down (httpx takes minutes to close 5,000).
        _release(p["server"], tag)
    else:
        raise ValueError(f"unknown scenario {name}")
    return {"levels": levels, "peak_rss_mb": peak_rss_mb()}


async def scenario(name: str, client: Any, rt: Runtime, p: dict[str, Any]) -> dict[str, Any]:
    if name.startswith("scale_"):
        return await scaling(name, client, rt, p)
    # the TLS scenarios run the same code against the https listener
    name = name.removesuffix("_tls")
    out: dict[str, Any] = {}
    lat: list[float] = []

    async def one_post(path: str, body: Any) -> None:
        t = time.perf_counter()
        reply = await client.post(path, body)
        lat.append(time.perf_counter() - t)
        assert reply["object"] == "chat.completion"

    if name == "small_post":
        for _ in range(5):
            await client.post("/small", SMALL_REQUEST)
        c0, w0 = _begin()
        for _ in range(p["n"]):
            await one_post("/small", SMALL_REQUEST)
        out["requests"] = p["n"]
    elif name in ("parallel_50", "large_body"):
        width, path, body = (50, "/small", SMALL_REQUEST) if name == "parallel_50" else (10, "/large", LARGE_REQUEST)
        await rt.gather([one_post(path, body) for _ in range(width)])
        lat.clear()
        c0, w0 = _begin()
        for _ in range(p["rounds"]):
            await rt.gather([one_post(path, body) for _ in range(width)])
        out["requests"] = p["rounds"] * width
    elif name in ("stream_2000", "stream_2000_64k"):
        path = "/sse2000" if name == "stream_2000" else "/sse2000big"
        assert await client.stream(path, STREAM_REQUEST, None) == 2000
        c0, w0 = _begin()
        events = 0
        for _ in range(p["n"]):
            t = time.perf_counter()
            events += await client.stream(path, STREAM_REQUEST, None)
            lat.append(time.perf_counter() - t)
        assert events == 2000 * p["n"], events
        out["events"] = events
    elif name == "paced_streams":
        ttft: list[float] = []

        async def paced() -> int:
            t = time.perf_counter()
            first = [True]

            async def on_event(event: Any) -> None:
                if first[0]:
                    first[0] = False
                    ttft.append(time.perf_counter() - t)

            return int(await client.stream("/paced", STREAM_REQUEST, on_event))

        # warm-up: the same stream without the pauses
        await client.stream("/paced?gap=1", STREAM_REQUEST, None)
        c0, w0 = _begin()
        counts = await rt.gather([paced() for _ in range(p["streams"])])
        assert all(c == 50 for c in counts), sorted(set(counts))
        out["events"] = sum(counts)
        out["streams"] = p["streams"]
        ttft.sort()
        out["ttft_p50_ms"] = ttft[len(ttft) // 2] * 1000
        out["ttft_p99_ms"] = ttft[int(len(ttft) * 0.99)] * 1000
    elif name == "slow_consumer":
        series: list[tuple[float, int]] = []
        base_rss = rss_bytes()
        start = time.perf_counter()
        state = {"n": 0, "next": 0.0}

        async def on_event(event: Any) -> None:
            state["n"] += 1
            now = time.perf_counter() - start
            if now >= state["next"]:
                series.append((now, rss_bytes() - base_rss))
                state["next"] = now + 0.1
            await rt.sleep(0.001)

        c0, w0 = _begin()
        query = f"/flood?event={p['event']}&total={p['total']}"
        events = await client.stream(query, STREAM_REQUEST, on_event)
        series.append((time.perf_counter() - start, rss_bytes() - base_rss))
        out["events"] = events
        out["rss_series"] = series
        out["rss_growth_mb"] = max(v for _, v in series) / 1e6
    else:
        raise ValueError(f"unknown scenario {name}")
    out["cpu_s"] = cpu() - c0
    out["wall_s"] = time.perf_counter() - w0
    _end()
    if lat:
        lat.sort()
        out["p50_ms"] = lat[len(lat) // 2] * 1000
        out["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def make_client(name: str, base: str, ca: str | None = None) -> Any:
    if name.startswith("nous_"):
        backend = "agent" if name.startswith("nous_agent") else "treq"
        if name.removesuffix("_iter").removesuffix("_accel") not in ("nous_agent", "nous_treq"):
            raise ValueError(f"unknown client {name}")
        return NousClient(base, backend, iterate=name.endswith("_iter"), ca=ca)
    classes: dict[str, Any] = {
        "treq": RawTreqClient, "agent": RawAgentClient, "aiohttp": AiohttpClient, "httpx": HttpxClient,
        "floor": FloorClient, "twisted_floor": TwistedFloorClient,
    }
    if name not in classes:
        raise ValueError(f"unknown client {name}")
    return classes[name](base, ca)


# -- where the time goes ---------------------------------------------------------------

CATEGORIES = ("reactor", "HTTP parsing", "library", "JSON", "other")


def _category(filename: str, func: str) -> str | None:
    """The group of one profiled function; None for a built-in whose time
    belongs to whoever called it.  TLS counts with the reactor (it is the
    transport); LineReceiver with HTTP parsing (Twisted's HTTP client is its
    only user here)."""
    f = filename.replace("\\", "/")
    if f == "~":  # a built-in: by name (JSON, the C parser, the system calls), else its callers'
        if "orjson" in func:
            return "JSON"
        if "httptools" in func:
            return "HTTP parsing"
        if any(k in func for k in ("recv", "send", "poll", "select", "_socket", "epoll", "_ssl", "OpenSSL")):
            return "reactor"
        return None
    if "/nous_twisted/bench/" in f:
        return "other"  # the benchmark's own consumer code
    if "/nous_twisted/" in f:
        return "library"
    if any(k in f for k in ("/twisted/internet/", "/asyncio/", "/twisted/protocols/tls.py", "/OpenSSL/")) or (
            f.endswith(("/selectors.py", "/ssl.py"))):
        return "reactor"
    if any(k in f for k in ("/twisted/web/_newclient.py", "/twisted/web/http", "/twisted/web/_abnf.py",
                            "/twisted/protocols/basic.py", "httptools", "/aiohttp/http_", "/h11/", "/httpcore/")):
        return "HTTP parsing"
    if "orjson" in f:
        return "JSON"
    return "other"


def _where(filename: str, func: str) -> str:
    """A short module name for the top-functions list."""
    if filename == "~":
        return func
    f = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/lib/python3", "/nous_twisted/"):
        if marker in f:
            rest = f.split(marker, 1)[1]
            if marker == "/lib/python3":
                rest = rest.split("/", 1)[1] if "/" in rest else rest
            if marker == "/nous_twisted/":
                rest = "nous_twisted/" + rest
            return rest.removesuffix(".py").replace("/", ".") + ":" + func
    return f + ":" + func


def profile_breakdown(profiler: cProfile.Profile) -> dict[str, Any]:
    """Seconds of profiled time per category (built-ins counted with their
    callers, pro rata), and the functions with the most own time."""
    stats: Any = getattr(pstats.Stats(profiler), "stats")  # noqa: B009 (untyped in typeshed)
    cats = dict.fromkeys(CATEGORIES, 0.0)
    for (filename, _line, func), (_cc, _nc, tt, _ct, callers) in stats.items():
        cat = _category(filename, func)
        if cat is not None:
            cats[cat] += tt
            continue
        edges = [(k, v[2]) for k, v in callers.items()]
        total = sum(t for _, t in edges)
        if not total:
            cats["other"] += tt
            continue
        for (cf, _cl, cfn), t in edges:
            cats[_category(cf, cfn) or "other"] += tt * t / total
    top = sorted(((_where(f, fn), v[2]) for (f, _l, fn), v in stats.items()), key=lambda x: -x[1])[:15]
    # what "other" is made of, by module (functions only; built-ins are spread above)
    other: dict[str, float] = {}
    for (filename, _line, func), v in stats.items():
        if filename != "~" and _category(filename, func) == "other":
            module = _where(filename, func).split(":")[0]
            other[module] = other.get(module, 0.0) + v[2]
    other_top = sorted(other.items(), key=lambda x: -x[1])[:5]
    return {"categories": cats, "total_s": sum(cats.values()), "top": top, "other": other_top}


def run(client_name: str, scenario_name: str, base: str, params: dict[str, Any]) -> dict[str, Any]:
    global PROFILER
    ca = params.get("ca")
    if params.get("profile"):
        PROFILER = cProfile.Profile()
    # the memory scenario holds thousands of sockets open
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # the server's plain http address, for the memory scenario's release
    params = dict(params, server=base)
    result: dict[str, Any] = {}
    if client_name not in ASYNCIO_CLIENTS:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred

        async def main() -> None:
            client = make_client(client_name, base, ca)
            result.update(await scenario(scenario_name, client, Runtime("twisted"), params))

        def go() -> None:
            d = Deferred.fromCoroutine(main())
            d.addErrback(lambda f: result.update(error=f.getTraceback()))
            d.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(go)
        reactor.run()
    else:
        async def amain() -> dict[str, Any]:
            client = make_client(client_name, base, ca)
            return await scenario(scenario_name, client, Runtime("asyncio"), params)

        # Not asyncio.run(): it would wait for what the scenario left open to be cancelled.
        result = asyncio.new_event_loop().run_until_complete(amain())
    if PROFILER is not None and "error" not in result:
        result["profile"] = profile_breakdown(PROFILER)
    return result


if __name__ == "__main__":
    client_name, scenario_name, base, params = sys.argv[1], sys.argv[2], sys.argv[3], orjson.loads(sys.argv[4])
    try:
        res = run(client_name, scenario_name, base, params)
    except Exception:
        import traceback

        res = {"error": traceback.format_exc()}
    sys.stdout.write(orjson.dumps(res).decode() + "\n")
    sys.stdout.flush()
    # no interpreter teardown: the memory scenario leaves thousands of streams open
    os._exit(0)
