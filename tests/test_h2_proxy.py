"""h2 through a forward proxy: a CONNECT tunnel (to an http:// or https://
proxy), the target's TLS with ALPN h2 inside it, many streams on one
tunnel; the proxy's refusals as on the HTTP/1.1 path; a target without h2
goes through the agent backend, through the same proxy.  Both reactors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import trustme
from twisted.internet.defer import Deferred, gatherResults

import nous_twisted
from nous_twisted import ConnectError, StreamDone, StreamError
from nous_twisted.h2pool import get_h2pool, h2_pool_stats
from nous_twisted.reactors import awaitable
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer

from .h2server import tls_fake, tls_options
from .proxyserver import ScriptProxy
from .test_h2_stream import BODY, collect, strip_ids
from .test_proxy_loopback import CREDS, PASSWORD, USER


@pytest_twisted.async_yield_fixture
async def h2_server(ca: trustme.CA, ca_file: str) -> AsyncIterator[FakeLLMServer]:
    server = await tls_fake(ca, ca_file, [b"h2", b"http/1.1"], 5)
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def h1_server(ca: trustme.CA, ca_file: str) -> AsyncIterator[FakeLLMServer]:
    server = await tls_fake(ca, ca_file, [b"http/1.1"], 5)
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture(params=["http", "https"])
async def proxy(request: pytest.FixtureRequest, ca: trustme.CA) -> AsyncIterator[ScriptProxy]:
    p = ScriptProxy(tls=tls_options(ca, None, name="127.0.0.1") if request.param == "https" else None).listen()
    yield p
    await p.stop()


def streams(url: str, n: int, proxy: str) -> Deferred[list[list[Any]]]:
    ds = [Deferred.fromCoroutine(collect(nous_twisted.stream(url, BODY, stream_backend="h2", proxy=proxy)))
          for _ in range(n)]
    return gatherResults(ds)


@pytest_twisted.ensureDeferred
async def test_streams_go_over_h2_in_one_tunnel(h2_server: FakeLLMServer, proxy: ScriptProxy) -> None:
    results = await awaitable(streams(h2_server.chat_url, 10, proxy.url(CREDS)))
    direct = strip_ids(await collect(nous_twisted.stream(h2_server.chat_url, BODY, stream_backend="agent")))
    assert all(strip_ids(r) == direct and r[-1] == StreamDone("stop") for r in results), results
    assert proxy.tunnels == 1  # ten streams, one CONNECT, one TLS connection to the target
    (head,) = proxy.heads
    port = h2_server.chat_url.split(":")[2].split("/")[0]
    assert head.startswith(f"CONNECT localhost:{port} HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization: Basic " in head  # the credentials go in CONNECT only
    # and are never inside the tunnel (the target's TLS carries the requests)
    assert all(USER.encode() not in d and PASSWORD.encode() not in d for d in proxy.relayed)
    assert get_h2pool(get_shared()).connections_opened == 1
    (stats,) = h2_pool_stats().values()
    assert stats["connections"] == 1


@pytest_twisted.ensureDeferred
async def test_posts_go_over_h2_in_the_tunnel(h2_server: FakeLLMServer, proxy: ScriptProxy) -> None:
    replies = await awaitable(gatherResults([
        nous_twisted.post(h2_server.chat_url, {"model": "m", "messages": []}, backend="h2", proxy=proxy.url())
        for _ in range(3)
    ]))
    assert all(r["choices"][0]["message"]["content"] for r in replies)
    assert proxy.tunnels == 1 and get_h2pool(get_shared()).connections_opened == 1


@pytest_twisted.ensureDeferred
async def test_a_proxy_refusal_is_a_connect_error_without_credentials(h2_server: FakeLLMServer) -> None:
    p = ScriptProxy(mode="reply", reply=b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n").listen()
    try:
        got = await collect(nous_twisted.stream(h2_server.chat_url, BODY, stream_backend="h2", proxy=p.url(CREDS)))
    finally:
        await p.stop()
    (last,) = got
    assert isinstance(last, StreamError) and isinstance(last.error, ConnectError), got
    text = str(last.error)
    assert "407" in text and "proxy" in text
    assert PASSWORD not in text and USER not in text, text


@pytest_twisted.ensureDeferred
async def test_a_target_without_h2_goes_through_the_agent_backend_via_the_proxy(
    h1_server: FakeLLMServer, proxy: ScriptProxy
) -> None:
    first = await collect(nous_twisted.stream(h1_server.chat_url, BODY, stream_backend="h2", proxy=proxy.url()))
    second = await collect(nous_twisted.stream(h1_server.chat_url, BODY, stream_backend="h2", proxy=proxy.url()))
    assert first[-1] == StreamDone("stop") and strip_ids(first) == strip_ids(second)
    assert get_h2pool(get_shared()).connections_opened == 1  # the ALPN answer, once
    # the first through a tunnel that found http/1.1, both then through the agent's own tunnels
    assert proxy.tunnels >= 2
    assert not get_h2pool(get_shared()).speaks_h2(("localhost", int(h1_server.chat_url.split(":")[2].split("/")[0])))


@pytest_twisted.ensureDeferred
async def test_a_stalled_connect_is_a_connect_timeout(h2_server: FakeLLMServer) -> None:
    from nous_twisted import RequestTimeout

    p = ScriptProxy(mode="stall").listen()
    try:
        got = await collect(nous_twisted.stream(h2_server.chat_url, BODY, stream_backend="h2", proxy=p.url(),
                                                connect_timeout=0.3))
    finally:
        await p.stop()
    (last,) = got
    assert isinstance(last, StreamError) and isinstance(last.error, RequestTimeout), got
    assert last.error.phase == "connect" and len(p.heads) == 1 and p.heads[0].startswith(b"CONNECT ")
    assert last.error.step == "proxy", last.error  # the CONNECT exchange ran out, as the HTTP/1.1 path says
    assert not h2_server.requests
