"""tunnel.py: its helpers, its connect steps, and backpressure through a tunnel."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import trustme
from twisted.internet.defer import Deferred

import nous_twisted
from nous_twisted import ConnectError, RequestTimeout, StreamDone, TLSError, TreqStreamBackend
from nous_twisted.proxy import Proxy, with_proxy
from nous_twisted.request import prepare
from nous_twisted.resolve import resolve_stream_backend
from nous_twisted.tunnel import (
    MAX_REPLY_HEAD,
    ProxyEndpoint,
    ProxyStepCancelled,
    connect_request,
    refusal_message,
    shown_status,
)

from .conftest import server_tls_options
from .helpers import FloodServer, get_reactor, sleep, wait_for
from .proxyserver import ScriptProxy
from .test_proxy_loopback import CREDS, PASSWORD, USER, failure_of

READ = 64 * 1024
PROXY = Proxy.from_url(f"http://{CREDS}@proxy.example:3128")


# ---------------------------------------------------------------- helpers, no reactor


def test_connect_request() -> None:
    assert connect_request(b"api.example", 443, Proxy.from_url("http://p:1")) == (
        b"CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n"
    )
    assert connect_request(b"::1", 8443, PROXY) == (
        b"CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6czNjcmV0LXBhNTV3b3Jk\r\n\r\n"
    )


def test_shown_status() -> None:
    assert shown_status(b"HTTP/1.1 403 Forbidden", PROXY) == "HTTP/1.1 403 Forbidden"
    assert shown_status(b"HTTP/1.1 400 \x00\xffbad\x7f", PROXY) == "HTTP/1.1 400 ??bad?"
    assert shown_status(b"HTTP/1.1 407 " + PASSWORD.encode(), PROXY) == "HTTP/1.1 407 [redacted]"
    long = shown_status(b"x" * 500, PROXY)
    assert long == "x" * 200 + "..."
    assert shown_status(b"x" * 200, PROXY) == "x" * 200


def test_refusal_messages() -> None:
    plain = Proxy.from_url("http://proxy.example:3128")
    m = refusal_message(plain, "api.example:443", 407, b"HTTP/1.1 407 Proxy Authentication Required")
    assert m == (
        "the proxy http://proxy.example:3128 refused the tunnel to api.example:443: "
        "'HTTP/1.1 407 Proxy Authentication Required'; the proxy asked for credentials: give them in the "
        "proxy URL (http://user:password@host:port; percent-encode special characters)"
    )
    m = refusal_message(PROXY, "api.example:443", 407, b"HTTP/1.1 407 No")
    assert m.endswith("'HTTP/1.1 407 No'; the proxy refused the credentials in the proxy URL")
    assert PASSWORD not in m and USER not in m
    m = refusal_message(PROXY, "a:1", 403, b"HTTP/1.1 403 Forbidden")
    assert m.endswith("; the proxy does not allow a tunnel to this host and port")
    m = refusal_message(PROXY, "a:1", 502, b"HTTP/1.1 502 Bad Gateway")
    assert m.endswith("refused the tunnel to a:1: 'HTTP/1.1 502 Bad Gateway'")


def test_endpoint_repr_and_target_text() -> None:
    e = ProxyEndpoint(None, PROXY, None, (b"::1", 443))  # type: ignore[arg-type]
    assert e.target_text == "[::1]:443"
    assert repr(e) == "<ProxyEndpoint via http://proxy.example:3128 to [::1]:443>"
    e = ProxyEndpoint(None, PROXY, None, (b"api.example", 443))  # type: ignore[arg-type]
    assert e.target_text == "api.example:443"
    e = ProxyEndpoint(None, PROXY, None, None)  # type: ignore[arg-type]
    assert e.target_text == "" and repr(e) == "<ProxyEndpoint via http://proxy.example:3128>"
    assert PASSWORD not in repr(e)


def test_step_cancelled() -> None:
    from twisted.internet.defer import CancelledError

    e = ProxyStepCancelled("proxy")
    assert isinstance(e, CancelledError) and e.connect_step == "proxy"


# ---------------------------------------------------------------- steps, on loopback


@pytest.mark.parametrize("backend", ["treq", "agent"])
@pytest_twisted.ensureDeferred
async def test_https_proxy_stalled_in_its_handshake(backend: str) -> None:
    # A plain TCP server that never answers, named as an https:// proxy.
    proxy = ScriptProxy(mode="stall").listen()
    try:
        url = proxy.url().replace("http://", "https://")
        err = await failure_of("https://localhost:9/", url, backend, "post", connect_timeout=0.3)
        assert isinstance(err, RequestTimeout)
        assert err.step == "tls" and f"through the proxy {url}" in str(err)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_https_proxy_closes_in_its_handshake() -> None:
    proxy = ScriptProxy(mode="close-at-once").listen()
    try:
        url = proxy.url().replace("http://", "https://")
        err = await failure_of("https://localhost:9/", url, "agent", "post")
        assert isinstance(err, ConnectError), err
        assert str(err) == f"the proxy {url} closed the connection during the TLS handshake with it"
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_plain_proxy_closes_at_once() -> None:
    proxy = ScriptProxy(mode="close-at-once").listen()
    try:
        err = await failure_of("https://localhost:9/", proxy.url(), "agent", "post")
        assert isinstance(err, ConnectError)
        assert "closed the connection before answering CONNECT localhost:9" in str(err)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_bytes_after_the_200_go_to_the_target_tls() -> None:
    proxy = ScriptProxy(mode="reply", reply=b"HTTP/1.1 200 OK\r\n\r\nnot TLS at all", close_after_reply=False).listen()
    try:
        err = await failure_of("https://localhost:9/", proxy.url(), "agent", "post", connect_timeout=2)
        # The target's TLS layer read the proxy's stray bytes as its peer's: a handshake failure.
        assert isinstance(err, TLSError), err
        assert str(err).startswith("TLS handshake with https://localhost:9/ failed")
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_reply_head_split_across_reads() -> None:
    proxy = ScriptProxy(mode="reply", reply=b"", close_after_reply=False).listen()
    try:
        d = Deferred.fromCoroutine(failure_of("https://localhost:9/", proxy.url(), "agent", "post"))
        await wait_for(lambda: bool(proxy.heads))
        t = proxy.connections[0].transport
        assert t is not None
        for piece in (b"HTTP/1.1 4", b"03 Nope\r\n", b"X: y\r\n", b"\r\n"):
            t.write(piece)
            await sleep(0.02)
        err = await d
        assert isinstance(err, ConnectError) and "'HTTP/1.1 403 Nope'" in str(err)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_reply_head_limit_is_exact() -> None:
    # A head just under the limit (then its end) is read; the limit is about the unfinished head.
    head = b"HTTP/1.1 403 Big\r\nX: " + b"a" * (MAX_REPLY_HEAD - 40) + b"\r\n\r\n"
    proxy = ScriptProxy(mode="reply", reply=head).listen()
    try:
        err = await failure_of("https://localhost:9/", proxy.url(), "agent", "post")
        assert isinstance(err, ConnectError) and "'HTTP/1.1 403 Big'" in str(err)
    finally:
        await proxy.stop()


# ---------------------------------------------------------------- backpressure through a tunnel


@pytest_twisted.async_yield_fixture
async def tls_flood(ca: trustme.CA, ca_file: str) -> AsyncIterator[FloodServer]:
    nous_twisted.configure(ca_bundle=ca_file)
    server = FloodServer(event_size=1024, total=50 * 1024 * 1024).listen()
    factory = server.port.factory
    await server.port.stopListening()
    server.port = get_reactor().listenSSL(0, factory, server_tls_options(ca, "localhost"), interface="127.0.0.1")
    yield server
    await server.stop()


def flood_url(server: FloodServer) -> str:
    return f"https://localhost:{server.port.getHost().port}/flood"


def open_stream(url: str, proxy: str, backend: Any) -> Any:
    request = with_proxy(prepare(url, {"stream": True}, (), accept=b"text/event-stream"), Proxy.from_url(proxy))
    impl = resolve_stream_backend(backend)
    return impl.stream(request, timeout=10.0, connect_timeout=5.0)


@pytest_twisted.ensureDeferred
async def test_strict_pull_holds_through_a_tunnel(tls_flood: FloodServer) -> None:
    proxy = ScriptProxy().listen()
    try:
        s = open_stream(flood_url(tls_flood), proxy.url(), "agent")
        processed = [0]
        worst_gap = [0]

        def on_event(event: Any) -> Deferred[None] | None:
            if not isinstance(event, dict):
                return None
            processed[0] += 1
            worst_gap[0] = max(worst_gap[0], s.bytes_received - processed[0] * 1024)
            d: Deferred[None] = Deferred()
            get_reactor().callLater(0.01, d.callback, None)
            return d

        done = s.consume(on_event)
        await wait_for(lambda: processed[0] >= 120, timeout=10)
        assert tls_flood.pauses >= 1  # the server's writes blocked, through the proxy
        assert tls_flood.sent < 20 * 1024 * 1024, tls_flood.sent
        assert worst_gap[0] <= 300 * 1024, worst_gap[0]
        assert s.max_buffered <= READ // 1024 + 1, s.max_buffered
        s.cancel()
        assert await done == StreamDone("cancelled")
        assert proxy.tunnels == 1
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_watermarks_hold_through_a_tunnel(tls_flood: FloodServer) -> None:
    proxy = ScriptProxy().listen()
    try:
        s = open_stream(flood_url(tls_flood), proxy.url(), TreqStreamBackend(high_water=500, low_water=50))
        processed = [0]

        async def slow(event: Any) -> None:
            processed[0] += 1
            if processed[0] % 100 == 0:
                await sleep(0.02)

        done = s.consume(slow)
        await wait_for(lambda: processed[0] >= 3000, timeout=20)
        assert s.max_buffered <= 500 + READ // 1024 + 1, s.max_buffered
        assert tls_flood.pauses >= 1
        assert s.bytes_received < 20 * 1024 * 1024
        s.cancel()
        await done
    finally:
        await proxy.stop()
