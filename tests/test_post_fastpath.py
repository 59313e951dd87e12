"""The post path's fast lanes (issue 8), on real loopback connections.

- one ``send()`` per request, sent with the others of its reactor iteration,
  without registering the socket for writing (``startWriting``);
- no pause/resume round trip of the transport at the end of a response head
  when ``deliverBody`` resumes it at once, and the pause still applied when
  nobody does;
- both rest on private attributes of Twisted: the hooks are checked here, and
  fail loudly on a Twisted that changed them; without them the public path runs;
- a GET through both backends carries no body and no ``Content-Length``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.protocol import Protocol
from twisted.web import resource, server
from twisted.web._newclient import RequestGenerationFailed, ResponseNeverReceived, TransportProxyProducer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

import nous_twisted
from nous_twisted import RequestTimeout, post
from nous_twisted.backends.agent import AgentBackend
from nous_twisted.backends.treq import TreqBackend
from nous_twisted.pool import _HeadProxy, _PooledProtocol, head_hook_present, write_hook_present
from nous_twisted.request import prepare
from nous_twisted.shared import get_shared

from .conftest import BACKENDS, server_tls_options
from .helpers import RawServer, get_reactor, sleep, wait_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class _Echo(resource.Resource):
    """Replies with what it received: method, Content-Length, body size and digest."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, bytes | None, bytes]] = []

    def _reply(self, request: Any) -> bytes:
        body = request.content.read()
        length = request.requestHeaders.getRawHeaders(b"content-length")
        self.seen.append((request.method, length[0] if length else None, body))
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps({
            "object": "chat.completion",
            "method": request.method.decode(),
            "size": len(body),
            "sha": hashlib.sha256(body).hexdigest(),
        })

    render_GET = render_POST = _reply


class EchoServer:
    def __init__(self, tls: Any = None) -> None:
        self.resource = _Echo()
        site = server.Site(self.resource)
        site.noisy = False
        reactor = get_reactor()
        if tls is None:
            self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
            self.url = f"http://127.0.0.1:{self.port.getHost().port}/v1/chat/completions"
        else:
            self.port = reactor.listenSSL(0, site, tls, interface="127.0.0.1")
            self.url = f"https://127.0.0.1:{self.port.getHost().port}/v1/chat/completions"

    async def stop(self) -> None:
        await nous_twisted.shutdown()
        await self.port.stopListening()


def _connections() -> list[_PooledProtocol]:
    """The shared pool's connections, idle or busy."""
    return [slot.protocol for slots in get_shared().pool._slots.values() for slot in slots if slot.protocol]


def _tcp(protocol: Any) -> Any:
    transport = protocol.transport
    return getattr(transport, "transport", None) or transport


class Count:
    """Counts calls of one method of one real object (wrapped, then put back)."""

    def __init__(self, obj: Any, name: str) -> None:
        self.obj, self.name, self.n = obj, name, 0
        original = getattr(obj, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.n += 1
            return original(*args, **kwargs)

        setattr(obj, name, counted)

    def restore(self) -> None:
        delattr(self.obj, self.name)


@pytest.fixture(params=["http", "https"])
def scheme(request: Any) -> str:
    return str(request.param)


async def _server(scheme: str, ca: Any, ca_file: str) -> EchoServer:
    if scheme == "https":
        nous_twisted.configure(ca_bundle=ca_file)
        return EchoServer(server_tls_options(ca, "127.0.0.1"))
    return EchoServer()


# -- the hooks ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_write_hook_present_on_this_twisted(scheme: str, ca: Any, ca_file: str) -> None:
    """Fails when Twisted's socket or TLS transport changed the private
    attributes the one-send path relies on: the path would then be off."""
    srv = await _server(scheme, ca, ca_file)
    try:
        await post(srv.url, CHAT, backend="agent")
        (protocol,) = _connections()
        assert write_hook_present(protocol.transport), (
            "this Twisted's transports changed: requests go through Twisted's write path (two epoll_ctl each); "
            "update nous_twisted.pool's write path"
        )
    finally:
        await srv.stop()


@pytest_twisted.ensureDeferred
async def test_head_hook_present_on_this_twisted() -> None:
    """While a response is awaited the parser sees the pool's proxy: fails
    when HTTP11ClientProtocol no longer keeps ``_transportProxy``/``_parser``."""
    raw = RawServer().listen()  # never answers
    try:
        d = post(raw.url + "/v1", CHAT, backend="agent", timeout=30)
        await wait_for(lambda: len(raw.connections) == 1 and raw.connections[0].handled)
        (protocol,) = _connections()
        assert type(protocol._transportProxy) is _HeadProxy, "this Twisted's HTTP11ClientProtocol changed"
        assert protocol._parser.transport is protocol._transportProxy
        d.cancel()
        with pytest.raises((CancelledError, ResponseNeverReceived, RequestTimeout)):
            await d
    finally:
        await raw.stop()


def test_head_hook_refuses_what_it_does_not_know() -> None:
    class Stub:
        _parser = None
        _transportProxy = None

    assert not head_hook_present(Stub())
    assert not write_hook_present(object())
    assert not write_hook_present(None)


# -- one send, no epoll_ctl ---------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_sequential_posts_never_register_for_writing_nor_pause(
    backend: str, scheme: str, ca: Any, ca_file: str
) -> None:
    srv = await _server(scheme, ca, ca_file)
    try:
        await post(srv.url, CHAT, backend=backend)
        (protocol,) = _connections()
        tcp = _tcp(protocol)
        writes, pauses = Count(tcp, "startWriting"), Count(tcp, "stopReading")
        try:
            for i in range(5):
                reply = await post(srv.url, {**CHAT, "i": i}, backend=backend)
                assert reply["size"] == len(orjson.dumps({**CHAT, "i": i}))
        finally:
            writes.restore()
            pauses.restore()
        assert _connections() == [protocol]  # the same connection every time
        assert writes.n == 0, "a request went through Twisted's buffered write (epoll_ctl twice)"
        assert pauses.n == 0, "the transport was paused and resumed at the end of a response head"
        assert len(srv.resource.seen) == 6
    finally:
        await srv.stop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_concurrent_rounds_are_sent_without_registering_for_writing(
    backend: str, scheme: str, ca: Any, ca_file: str
) -> None:
    srv = await _server(scheme, ca, ca_file)
    try:
        await DeferredList([post(srv.url, CHAT, backend=backend) for _ in range(8)], fireOnOneErrback=True)
        protocols = _connections()
        assert len(protocols) == 8
        counts = [Count(_tcp(p), "startWriting") for p in protocols]
        try:
            for r in range(3):
                results = await DeferredList(
                    [post(srv.url, {**CHAT, "r": r, "i": i}, backend=backend) for i in range(8)],
                    fireOnOneErrback=True,
                )
                assert [res["size"] for _, res in results] == [
                    len(orjson.dumps({**CHAT, "r": r, "i": i})) for i in range(8)
                ]
        finally:
            for c in counts:
                c.restore()
        assert sorted(map(id, _connections())) == sorted(map(id, protocols))
        assert sum(c.n for c in counts) == 0
    finally:
        await srv.stop()


@pytest_twisted.ensureDeferred
async def test_request_sent_from_a_timer_goes_out_at_the_end_of_the_iteration() -> None:
    srv = EchoServer()
    try:
        await post(srv.url, CHAT, backend="agent")
        d: Deferred[Any] = Deferred()
        # Not inside any connection's dataReceived: the outbox's timer sends it.
        get_reactor().callLater(0, lambda: post(srv.url, {"x": 1}, backend="agent").chainDeferred(d))
        assert (await d)["size"] == len(orjson.dumps({"x": 1}))
    finally:
        await srv.stop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_body_larger_than_the_socket_takes_is_queued_in_order(
    backend: str, scheme: str, ca: Any, ca_file: str
) -> None:
    srv = await _server(scheme, ca, ca_file)
    try:
        await post(srv.url, CHAT, backend=backend)
        (protocol,) = _connections()
        tcp = _tcp(protocol)
        # A small send buffer: the kernel takes part of the request, the rest
        # goes through Twisted's queue.
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        writes = Count(tcp, "startWriting")
        big = {"text": "".join(chr(0x41 + i % 26) for i in range(2_000_000))}
        try:
            reply = await post(srv.url, big, backend=backend, timeout=60)
        finally:
            writes.restore()
        body = orjson.dumps(big)
        assert reply["size"] == len(body)
        assert reply["sha"] == hashlib.sha256(body).hexdigest()
        assert writes.n >= 1  # the rest was queued, not lost
    finally:
        await srv.stop()


@pytest_twisted.ensureDeferred
async def test_hook_absent_falls_back_to_twisteds_write() -> None:
    """A transport whose write is not Twisted's own (here: wrapped) is left
    alone: the request goes through it, and works."""
    srv = EchoServer()
    try:
        await post(srv.url, CHAT, backend="agent")
        (protocol,) = _connections()
        tcp = _tcp(protocol)
        writes = Count(tcp, "write")
        sequences = Count(tcp, "writeSequence")
        assert not write_hook_present(tcp)
        try:
            reply = await post(srv.url, {"y": 2}, backend="agent")
        finally:
            writes.restore()
            sequences.restore()
        assert reply["size"] == len(orjson.dumps({"y": 2}))
        assert writes.n + sequences.n >= 2  # headers, then the body, through Twisted's path
        assert write_hook_present(tcp)
    finally:
        await srv.stop()


@implementer(IBodyProducer)
class _Failing:
    length = 10

    def startProducing(self, consumer: Any) -> Deferred[None]:
        raise RuntimeError("the producer broke")

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


@pytest_twisted.ensureDeferred
async def test_request_whose_body_fails_sends_nothing() -> None:
    """Twisted aborts the connection when the body producer fails; the head
    gathered before it is dropped, as Twisted drops what it had queued."""
    raw = RawServer().listen()
    received: list[bytes] = []
    try:
        agent = get_shared().agent
        d = agent.request(b"POST", (raw.url + "/v1").encode(), None, _Failing())
        with pytest.raises(RequestGenerationFailed):
            await d
        await wait_for(lambda: raw.closed == len(raw.connections) and len(raw.connections) <= 1)
        received = [c.buffer for c in raw.connections]
        await sleep(0.05)
        assert all(b == b"" for b in received), received
    finally:
        await raw.stop()


# -- the pause at the end of the head ---------------------------------------------------


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.data)


@pytest_twisted.ensureDeferred
async def test_pause_still_applied_when_nobody_reads_the_body_at_once() -> None:
    """Head and some body arrive; the caller does not call deliverBody in its
    callback: the transport must be paused when control is back in the
    reactor (Twisted's rule, kept), and resumed by deliverBody later."""
    body = b"x" * 1000

    def answer(p: Any) -> None:
        p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (2 * len(body)) + body)

    raw = RawServer(answer).listen()
    try:
        response = await get_shared().agent.request(b"GET", (raw.url + "/").encode())
        (protocol,) = _connections()
        tcp = _tcp(protocol)
        await sleep(0.02)
        assert tcp not in get_reactor().getReaders(), "the transport kept reading with nobody taking the body"
        collect = _Collect()
        response.deliverBody(collect)
        assert tcp in get_reactor().getReaders()
        raw.connections[0].transport.write(body)
        assert await collect.done == body + body
    finally:
        await raw.stop()


@pytest_twisted.ensureDeferred
async def test_held_pause_proxy_semantics() -> None:
    """Unit of the proxy on a real transport: a pause while held is applied
    at release, a resume in between cancels it, and a stopped proxy does nothing."""
    raw = RawServer().listen()
    try:
        d = get_shared().agent.request(b"GET", (raw.url + "/").encode())
        await wait_for(lambda: len(raw.connections) == 1 and raw.connections[0].handled)
        (protocol,) = _connections()
        tcp = _tcp(protocol)
        reactor = get_reactor()
        proxy = _HeadProxy(tcp)
        proxy.holding = True
        proxy.pauseProducing()
        assert tcp in reactor.getReaders()
        proxy.release()
        assert tcp not in reactor.getReaders()
        proxy.resumeProducing()
        assert tcp in reactor.getReaders()
        proxy.holding = True
        proxy.pauseProducing()
        proxy.resumeProducing()
        proxy.release()
        assert tcp in reactor.getReaders()
        proxy.holding = True
        proxy.pauseProducing()
        proxy.stopProxying()
        proxy.release()
        assert tcp in reactor.getReaders()
        assert isinstance(proxy, TransportProxyProducer)  # abort_transport() knows it
        d.cancel()
        with pytest.raises((CancelledError, ResponseNeverReceived, RequestTimeout)):
            await d
    finally:
        await raw.stop()


# -- GET ------------------------------------------------------------------------------


BACKEND_OBJECTS: dict[str, Callable[[], Any]] = {"agent": AgentBackend, "treq": TreqBackend}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_get_has_no_body_nor_content_length(backend: str) -> None:
    srv = EchoServer()
    try:
        request = dataclasses.replace(prepare(srv.url, {"ignored": True}, None), method=b"GET")
        reply = await BACKEND_OBJECTS[backend]().post(request, timeout=10, connect_timeout=10)
        assert reply.status == 200
        assert orjson.loads(reply.body)["method"] == "GET"
        assert srv.resource.seen == [(b"GET", None, b"")]
        # the same backend still posts with a body and its length
        reply = await BACKEND_OBJECTS[backend]().post(prepare(srv.url, CHAT, None), timeout=10, connect_timeout=10)
        method, length, body = srv.resource.seen[-1]
        assert (method, length, body) == (b"POST", str(len(orjson.dumps(CHAT))).encode(), orjson.dumps(CHAT))
    finally:
        await srv.stop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_get_on_the_wire(backend: str) -> None:
    """The bytes of a GET: request line with GET, no Content-Length, nothing after the head."""

    def answer(p: Any) -> None:
        p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}")

    raw = RawServer(answer).listen()
    try:
        request = dataclasses.replace(prepare(raw.url + "/v1/models", b"", None), method=b"GET")
        reply = await BACKEND_OBJECTS[backend]().post(request, timeout=10, connect_timeout=10)
        assert reply.body == b"{}"
        wire = raw.connections[0].buffer
        head, _, rest = wire.partition(b"\r\n\r\n")
        assert head.startswith(b"GET /v1/models HTTP/1.1\r\n")
        assert b"content-length" not in head.lower()
        assert rest == b""
    finally:
        await raw.stop()


class _SecondRequestDropped(Protocol):
    """Answers the first request of each connection (keep-alive), and closes
    the connection without a reply when a second one arrives on it."""

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]
        self.buffer = b""
        self.answered = 0

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.factory.requests.append(head.split(b" ", 1)[0])  # type: ignore[attr-defined]
            if self.answered:
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.answered += 1
            self.transport.write(  # type: ignore[union-attr]
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
            )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_get_dropped_on_a_reused_connection_is_sent_again_once(backend: str) -> None:
    from twisted.internet.protocol import Factory

    factory = Factory.forProtocol(_SecondRequestDropped)
    factory.noisy = False
    factory.connections = 0  # type: ignore[attr-defined]
    factory.requests = []  # type: ignore[attr-defined]
    port = get_reactor().listenTCP(0, factory, interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/v1/models"
    make = BACKEND_OBJECTS[backend]
    try:
        get = dataclasses.replace(prepare(url, b"", None), method=b"GET")
        assert (await make().post(get, timeout=10, connect_timeout=10)).body == b"{}"
        # the pooled connection drops the next request: a GET goes again on a fresh one
        assert (await make().post(get, timeout=10, connect_timeout=10)).body == b"{}"
        assert factory.requests == [b"GET", b"GET", b"GET"]  # type: ignore[attr-defined]
        assert factory.connections == 2  # type: ignore[attr-defined]
        # a POST without an Idempotency-Key is not: the server may have acted on it
        with pytest.raises(nous_twisted.TransportError):
            await make().post(prepare(url, CHAT, None), timeout=10, connect_timeout=10)
        assert factory.requests[-1] == b"POST"  # type: ignore[attr-defined]
        assert factory.connections == 2  # type: ignore[attr-defined]
    finally:
        await nous_twisted.shutdown()
        await port.stopListening()


# -- no cyclic garbage per post -------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_a_finished_post_leaves_nothing_for_the_cycle_collector(backend: str) -> None:
    """Every post used to leave its exchange, collector, response, request
    and headers in reference cycles: work for the cyclic GC, whose passes
    grow with everything else alive.  Success and failure alike."""
    import gc

    from .helpers import refused_url

    srv = EchoServer()
    refused = await refused_url()
    try:
        await post(srv.url, CHAT, backend=backend)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for i in range(10):
                await post(srv.url, {"i": i}, backend=backend)
            with pytest.raises(nous_twisted.ConnectError):
                await post(refused, CHAT, backend=backend)
            gc.collect()
            left = sorted({type(o).__name__ for o in gc.garbage} & {"PostExchange", "_BodyCollector", "BytesProducer"})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert left == [], f"left in cycles: {left}"
    finally:
        await srv.stop()
