"""The shared pool, measured on the real socket: limits, reuse, idle timeout, shutdown."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, gatherResults

import nous_twisted
from nous_twisted import PoolSettings, StreamTruncated, post
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer, Fault

from .helpers import get_reactor, wait_for

CHAT = {"model": "m", "messages": []}


class HoldingServer:
    """A loopback HTTP/1.1 server (keep-alive) that records each request's
    ``n`` as it arrives and answers it only when the test releases it."""

    def __init__(self) -> None:
        from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
        from twisted.web import resource, server

        outer = self
        self.arrivals: list[int] = []
        self.held: dict[int, Any] = {}
        self.connections_made = 0
        self.open_connections = 0
        self.max_open_connections = 0

        class _Hold(resource.Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> Any:
                n = orjson.loads(request.content.read())["n"]
                outer.arrivals.append(n)
                outer.held[n] = request
                return server.NOT_DONE_YET

        class _Counting(ProtocolWrapper):
            def connectionMade(self) -> None:
                outer.connections_made += 1
                outer.open_connections += 1
                outer.max_open_connections = max(outer.max_open_connections, outer.open_connections)
                super().connectionMade()

            def connectionLost(self, reason: Any) -> None:
                outer.open_connections -= 1
                super().connectionLost(reason)

        site = server.Site(_Hold())
        site.log = lambda request: None  # type: ignore[method-assign]
        factory = WrappingFactory(site)
        factory.protocol = _Counting
        self.port = get_reactor().listenTCP(0, factory, interface="127.0.0.1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}/v1/chat/completions"

    def release(self, n: int) -> None:
        request = self.held.pop(n)
        body = orjson.dumps({"object": "chat.completion", "n": n})
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    async def stop(self) -> None:
        await self.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_max_connections_is_a_real_per_host_cap_fifo() -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=4))
    server = HoldingServer()
    try:
        order: list[int] = []

        def done(reply: dict, i: int) -> int:
            order.append(i)
            return i

        calls = [
            post(server.url, {"model": "m", "n": i}, backend="treq" if i % 2 else "agent").addCallback(done, i)
            for i in range(32)
        ]
        # Requests over the cap are queued, not connected.
        assert get_shared().pool.open_connections() <= 4
        assert get_shared().pool.waiting() == 28
        # The first four race on four new sockets.
        await wait_for(lambda: len(server.arrivals) == 4)
        assert sorted(server.arrivals) == [0, 1, 2, 3]
        # FIFO: whichever connection comes back, the oldest waiting request
        # goes next on it.  Released newest first, so arrival order alone shows it.
        released: list[int] = []
        for k in range(28):
            n = max(server.held)
            server.release(n)
            released.append(n)
            await wait_for(lambda k=k: len(server.arrivals) == 5 + k and len(order) == k + 1)
            assert server.arrivals[-1] == 4 + k, server.arrivals
            assert get_shared().pool.open_connections() <= 4
        for n in sorted(server.held, reverse=True):
            server.release(n)
            released.append(n)
        results = await gatherResults(calls)
        assert results == list(range(32))
        assert order == released  # each reply completed when the server sent it
        assert server.max_open_connections == 4
        assert server.connections_made == 4
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_sequential_posts_alternating_backends_share_one_connection(fake: FakeLLMServer) -> None:
    for i in range(50):
        reply = await post(fake.chat_url, CHAT, backend="treq" if i % 2 == 0 else "agent")
        assert reply["object"] == "chat.completion"
    assert fake.connections_made == 1


@pytest_twisted.ensureDeferred
async def test_idle_keepalive_timeout_closes_cached_connection() -> None:
    nous_twisted.configure(pool=PoolSettings(timeout=150))
    async with FakeLLMServer() as server:
        await post(server.chat_url, CHAT)
        assert server.open_connections == 1
        assert get_shared().pool.idle_connections() == 1  # cached (its timing exactly: test_timing.py)
        await wait_for(lambda: server.open_connections == 0, timeout=2.0)
        assert get_shared().pool.open_connections() == 0
        await post(server.chat_url, CHAT)
        assert server.connections_made == 2


@pytest_twisted.ensureDeferred
async def test_configure_applies_to_the_live_pool_at_once() -> None:
    async with FakeLLMServer(reply_tokens=3, token_delay=0.02) as server:
        await post(server.chat_url, CHAT)  # the pool now exists
        pool = get_shared().pool
        nous_twisted.configure(pool=PoolSettings(max_connections=2, timeout=100))
        assert pool.max_connections == 2
        await gatherResults([post(server.chat_url, CHAT) for _ in range(6)])
        assert server.max_open_connections == 2
        # The new, shorter idle timeout applies to connections cached already.
        await wait_for(lambda: server.open_connections == 0, timeout=2.0)


@pytest_twisted.ensureDeferred
async def test_raising_the_limit_releases_waiters() -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=1))
    async with FakeLLMServer() as server:
        server.inject(Fault(stall_before_headers=True, times=3))
        # Never answered, and never timed out during the test: they hold their slots.
        calls = [post(server.chat_url, CHAT, timeout=300) for _ in range(3)]
        for c in calls:
            c.addErrback(lambda f: f.trap(CancelledError))
        await wait_for(lambda: len(server.requests) == 1)
        assert get_shared().pool.waiting() == 2
        nous_twisted.configure(pool=PoolSettings(max_connections=3))
        await wait_for(lambda: len(server.requests) == 3)
        assert server.max_open_connections == 3
        for c in calls:
            c.cancel()
        await gatherResults(calls)


@pytest_twisted.ensureDeferred
async def test_shutdown_aborts_everything_and_a_new_pool_follows() -> None:
    async with FakeLLMServer() as server:
        server.inject(Fault(stall_after_bytes=5))
        stuck = post(server.chat_url, CHAT)
        failures: list[object] = []
        stuck.addErrback(failures.append)
        await wait_for(lambda: len(server.requests) == 1)
        await post(server.chat_url, CHAT)  # a second, idle cached connection
        assert server.open_connections == 2
        old = get_shared()
        await nous_twisted.shutdown()
        await wait_for(lambda: server.open_connections == 0, timeout=1.0)
        # The in-flight request fails, not hangs: its body was cut mid-way.
        assert len(failures) == 1 and type(failures[0].value) is StreamTruncated, failures
        assert get_shared() is not old
        assert (await post(server.chat_url, CHAT))["object"] == "chat.completion"


def test_pool_settings_validation() -> None:
    with pytest.raises(ValueError, match="max_connections"):
        PoolSettings(max_connections=0)
    with pytest.raises(ValueError, match="timeout"):
        PoolSettings(timeout=-5)
    with pytest.raises(TypeError, match="PoolSettings"):
        nous_twisted.configure(pool={"max_connections": 3})  # type: ignore[arg-type]


def test_ca_bundle_validation(tmp_path: object) -> None:
    import os

    missing = os.path.join(str(tmp_path), "nope.pem")
    with pytest.raises(ValueError, match="cannot read"):
        nous_twisted.configure(ca_bundle=missing)
    empty = os.path.join(str(tmp_path), "empty.pem")
    with open(empty, "w") as f:
        f.write("not a certificate")
    with pytest.raises(ValueError, match="no PEM certificate"):
        nous_twisted.configure(ca_bundle=empty)


@pytest.mark.parametrize("check", ["poll", "peek"])
def test_an_idle_socket_is_readable_on_bytes_eof_or_close(check: str) -> None:
    """Both ways of asking (a zero-timeout poll, a peeking recv) say the
    same: nothing to read -> reusable; bytes, EOF or a closed socket -> not."""
    import socket

    from nous_twisted import pool as pool_module

    ask = pool_module._poll if check == "poll" else pool_module._peek
    if check == "poll" and not hasattr(__import__("select"), "poll"):
        pytest.skip("no poll() here")
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        assert ask(a) is False
        b.send(b"x")
        assert ask(a) is True
        a.recv(1)
        assert ask(a) is False
        b.close()
        assert ask(a) is True
    finally:
        a.close()
    assert ask(a) is True  # fileno() is -1 once closed

    class Layer:  # is_readable finds the socket under a TLS-like layer
        def __init__(self, sock: Any = None, transport: Any = None) -> None:
            self.socket, self.transport = sock, transport

    c, d = socket.socketpair()
    c.setblocking(False)
    try:
        assert pool_module.is_readable(Layer(transport=Layer(sock=c))) is False
        d.close()
        assert pool_module.is_readable(Layer(transport=Layer(sock=c))) is True
        assert pool_module.is_readable(Layer()) is False  # no socket: nothing to ask
    finally:
        c.close()
