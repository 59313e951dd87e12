"""Benchmark clients, one process each: this library's two backends and the
peers a user would pick instead, driven by the same scenario code.

Run: ``python -m nous_twisted.bench.clients CLIENT SCENARIO BASE_URL PARAMS_JSON``;
prints one JSON object: CPU seconds (getrusage, user+system) of the measured
part, wall time, counts, latencies, peak RSS and, for ``slow_consumer``, an
RSS series.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

TWISTED_CLIENTS = ("nous_treq", "nous_agent", "treq", "agent")
ASYNCIO_CLIENTS = ("aiohttp", "httpx", "floor")
CLIENTS = TWISTED_CLIENTS + ASYNCIO_CLIENTS

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
    def __init__(self, base: str, backend: str) -> None:
        import nous_twisted

        self.nt = nous_twisted
        self.base = base
        self.backend = backend
        nous_twisted.configure(pool=nous_twisted.PoolSettings(max_connections=2000, timeout=30000))

    def post(self, path: str, obj: Any) -> Any:
        return self.nt.post(self.base + path, obj, HEADERS, backend=self.backend)

    async def stream(self, path: str, obj: Any, on_event: Callable[[Any], Awaitable[None]] | None) -> int:
        s = self.nt.stream(self.base + path, obj, HEADERS, stream_backend=self.backend)
        n = 0
        if on_event is None:
            # Counting only: consume() with a plain callback, the cheapest of
            # the three documented ways (no Deferred per event).
            count = [0]

            def on(event: Any) -> None:
                if type(event) is dict:
                    count[0] += 1

            await s.consume(on)
            return count[0]
        async for event in s:
            if type(event) is dict:
                n += 1
                await on_event(event)
        return n


class _TwistedRaw:
    """Shared by raw treq and raw Agent: a persistent pool sized like ours."""

    def __init__(self, base: str) -> None:
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool

        self.base = base
        self.reactor = reactor
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 2000
        pool.cachedConnectionTimeout = 30
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

        from ..exchange import BytesProducer

        d = self.agent.request(
            b"POST", (self.base + path).encode(), Headers({k: [v] for k, v in HEADERS.items()}),
            BytesProducer(orjson.dumps(obj)),
        )
        return d.addCallback(readBody).addCallback(orjson.loads)

    async def stream(self, path: str, obj: Any, on_event: Callable[[Any], Awaitable[None]] | None) -> int:
        from twisted.internet.defer import Deferred
        from twisted.internet.protocol import Protocol
        from twisted.web.http_headers import Headers

        from ..exchange import BytesProducer

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
    def __init__(self, base: str) -> None:
        super().__init__(base)
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


class AiohttpClient:
    def __init__(self, base: str) -> None:
        import aiohttp

        self.base = base
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=2000, keepalive_timeout=30))

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
    def __init__(self, base: str) -> None:
        import httpx

        self.base = base
        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=2000, max_keepalive_connections=2000),
                                        timeout=120)

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


class _FloorProtocol(asyncio.Protocol):
    """One keep-alive connection, one request at a time, minimal parsing:
    Content-Length or chunked bodies, LF-separated SSE events."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.body = bytearray()
        self.state = "head"
        self.length = 0
        self.chunked = False
        self.done: asyncio.Future[bytes] | None = None
        self.on_chunk: Callable[[bytearray], None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
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
        if self.done is not None and not self.done.done():
            self.done.set_result(body)


class FloorClient:
    """A bare asyncio protocol with a pre-built request: the floor."""

    def __init__(self, base: str) -> None:
        self.host, _, port = base.split("//")[1].partition(":")
        self.port = int(port)
        self.idle: list[_FloorProtocol] = []

    async def _conn(self) -> _FloorProtocol:
        if self.idle:
            return self.idle.pop()
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(_FloorProtocol, self.host, self.port)
        return proto

    def _request(self, path: str, body: bytes) -> bytes:
        return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + self.host.encode()
                + b"\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-bench\r\nContent-Length: %d\r\n\r\n"
                % len(body) + body)

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

    def sleep(self, seconds: float) -> Any:
        if self.kind == "asyncio":
            return asyncio.sleep(seconds)
        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        return deferLater(reactor, seconds)


async def scenario(name: str, client: Any, rt: Runtime, p: dict[str, Any]) -> dict[str, Any]:
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
        c0, w0 = cpu(), time.perf_counter()
        for _ in range(p["n"]):
            await one_post("/small", SMALL_REQUEST)
        out["requests"] = p["n"]
    elif name in ("parallel_50", "large_body"):
        width, path, body = (50, "/small", SMALL_REQUEST) if name == "parallel_50" else (10, "/large", LARGE_REQUEST)
        await rt.gather([one_post(path, body) for _ in range(width)])
        lat.clear()
        c0, w0 = cpu(), time.perf_counter()
        for _ in range(p["rounds"]):
            await rt.gather([one_post(path, body) for _ in range(width)])
        out["requests"] = p["rounds"] * width
    elif name in ("stream_2000", "stream_2000_64k"):
        path = "/sse2000" if name == "stream_2000" else "/sse2000big"
        assert await client.stream(path, STREAM_REQUEST, None) == 2000
        c0, w0 = cpu(), time.perf_counter()
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

        await client.stream("/paced", STREAM_REQUEST, None)
        c0, w0 = cpu(), time.perf_counter()
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

        c0, w0 = cpu(), time.perf_counter()
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
    if lat:
        lat.sort()
        out["p50_ms"] = lat[len(lat) // 2] * 1000
        out["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def make_client(name: str, base: str) -> Any:
    if name == "nous_treq":
        return NousClient(base, "treq")
    if name == "nous_agent":
        return NousClient(base, "agent")
    if name == "treq":
        return RawTreqClient(base)
    if name == "agent":
        return RawAgentClient(base)
    if name == "aiohttp":
        return AiohttpClient(base)
    if name == "httpx":
        return HttpxClient(base)
    if name == "floor":
        return FloorClient(base)
    raise ValueError(f"unknown client {name}")


def run(client_name: str, scenario_name: str, base: str, params: dict[str, Any]) -> dict[str, Any]:
    if client_name in TWISTED_CLIENTS:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred

        result: dict[str, Any] = {}

        async def main() -> None:
            client = make_client(client_name, base)
            result.update(await scenario(scenario_name, client, Runtime("twisted"), params))

        def go() -> None:
            d = Deferred.fromCoroutine(main())
            d.addErrback(lambda f: result.update(error=f.getTraceback()))
            d.addBoth(lambda _: reactor.stop())

        reactor.callWhenRunning(go)
        reactor.run()
        return result

    async def amain() -> dict[str, Any]:
        client = make_client(client_name, base)
        return await scenario(scenario_name, client, Runtime("asyncio"), params)

    return asyncio.run(amain())


if __name__ == "__main__":
    client_name, scenario_name, base, params = sys.argv[1], sys.argv[2], sys.argv[3], orjson.loads(sys.argv[4])
    try:
        res = run(client_name, scenario_name, base, params)
    except Exception:
        import traceback

        res = {"error": traceback.format_exc()}
    sys.stdout.write(orjson.dumps(res).decode() + "\n")
