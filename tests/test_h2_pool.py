"""The h2 registry: SETTINGS_MAX_CONCURRENT_STREAMS, FIFO queueing, one
handshake for a burst, idle close, pool_timeout, shutdown.  Both reactors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest_twisted
import trustme
from twisted.internet.defer import Deferred, gatherResults

import nous_twisted
from nous_twisted import PoolSettings, StreamDone, StreamError
from nous_twisted.backends.h2_stream import H2StreamBackend
from nous_twisted.h2pool import get_h2pool, h2_pool_stats
from nous_twisted.reactors import awaitable
from nous_twisted.request import prepare
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer

from .h2server import ScriptedH2Server, tls_options
from .helpers import get_reactor, sleep, wait_for
from .test_h2_stream import BODY, collect


def pool() -> Any:
    return get_h2pool(get_shared())


def run(url: str, n: int, **kw: Any) -> Deferred[list[list[Any]]]:
    ds = [Deferred.fromCoroutine(collect(nous_twisted.stream(url, BODY, stream_backend="h2", **kw))) for _ in range(n)]
    return gatherResults(ds)


@pytest_twisted.ensureDeferred
async def test_130_calls_on_one_connection_of_100_streams(scripted: ScriptedH2Server) -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=1))
    results = await awaitable(run(scripted.url("/sse?n=15&delay=0.01"), 130))
    assert all(len(r) == 16 and r[-1] == StreamDone("stop") for r in results)
    assert scripted.connections == 1
    assert scripted.max_open == 100  # the server's limit, reached and never passed
    assert scripted.requests == 130


@pytest_twisted.ensureDeferred
async def test_130_calls_open_a_second_connection_when_allowed(scripted: ScriptedH2Server) -> None:
    results = await awaitable(run(scripted.url("/sse?n=15&delay=0.01"), 130))
    assert all(r[-1] == StreamDone("stop") for r in results)
    assert scripted.connections == 2
    assert all(p.max_open <= 100 for p in scripted.protocols)
    assert pool().connections_opened == 2


@pytest_twisted.ensureDeferred
async def test_the_twisted_h2_server_with_130_calls(ca: trustme.CA, ca_file: str) -> None:
    nous_twisted.configure(ca_bundle=ca_file, pool=PoolSettings(max_connections=1))
    async with FakeLLMServer(
        reply_tokens=5, token_delay=0.01, tls=tls_options(ca, [b"h2", b"http/1.1"]), host="localhost"
    ) as server:
        results = await awaitable(run(server.chat_url, 130))
        assert all(r[-1] == StreamDone("stop") for r in results)
        assert server.connections_made == 1


@pytest_twisted.ensureDeferred
async def test_a_burst_waits_for_the_first_handshake(scripted: ScriptedH2Server) -> None:
    results = await awaitable(run(scripted.url("/sse?n=3"), 50))
    assert all(r[-1] == StreamDone("stop") for r in results)
    assert pool().connections_opened == 1
    assert scripted.connections == 1


@pytest_twisted.ensureDeferred
async def test_a_smaller_server_limit_is_followed(ca: trustme.CA, ca_file: str) -> None:
    nous_twisted.configure(ca_bundle=ca_file, pool=PoolSettings(max_connections=1))
    server = ScriptedH2Server(get_reactor(), tls_options(ca, [b"h2"]), max_streams=3).listen()
    try:
        results = await awaitable(run(server.url("/sse?n=5&delay=0.01"), 10))
        assert all(r[-1] == StreamDone("stop") for r in results)
        assert server.max_open == 3 and server.connections == 1
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pool_timeout_while_every_slot_is_taken(ca: trustme.CA, ca_file: str) -> None:
    nous_twisted.configure(ca_bundle=ca_file, pool=PoolSettings(max_connections=1))
    server = ScriptedH2Server(get_reactor(), tls_options(ca, [b"h2"]), max_streams=1).listen()
    try:
        backend = H2StreamBackend()
        long = nous_twisted.stream(server.url("/sse?n=100&delay=0.01"), BODY, stream_backend=backend)
        await long.__anext__()
        req = dataclasses.replace(prepare(server.url("/sse?n=2"), BODY, ()), pool_timeout=0.2)
        waiting = backend.stream(req, timeout=10, connect_timeout=5)
        await sleep(0.05)
        (stats,) = h2_pool_stats().values()
        assert stats["waiting"] == 1 and stats["open_streams"] == 1
        # the public view: one h2 connection, busy, one stream, one waiting
        (public,) = [v for k, v in nous_twisted.pool_stats().items() if k.endswith(" (h2)")]
        assert (public.open, public.idle, public.in_use, public.waiting, public.streams) == (1, 0, 1, 1, 1)
        events = await collect(waiting)
        assert isinstance(events[-1], StreamError)
        err = events[-1].error
        assert isinstance(err, nous_twisted.RequestTimeout) and err.phase == "pool"
        long.cancel()
        # The slot is free again: the next request runs.
        ok = await collect(nous_twisted.stream(server.url("/sse?n=2"), BODY, stream_backend=backend))
        assert ok[-1] == StreamDone("stop")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_queued_request_leaves_the_queue(ca: trustme.CA, ca_file: str) -> None:
    nous_twisted.configure(ca_bundle=ca_file, pool=PoolSettings(max_connections=1))
    server = ScriptedH2Server(get_reactor(), tls_options(ca, [b"h2"]), max_streams=1).listen()
    try:
        long = nous_twisted.stream(server.url("/sse?n=30&delay=0.01"), BODY, stream_backend="h2")
        await long.__anext__()
        queued = nous_twisted.stream(server.url("/sse?n=2"), BODY, stream_backend="h2")
        await sleep(0.02)
        queued.cancel()
        assert await collect(queued) == [StreamDone("cancelled")]
        assert list(h2_pool_stats().values())[0]["waiting"] == 0
        assert (await collect(long))[-1] == StreamDone("stop")
        assert server.requests == 1
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_idle_connections_close_after_the_pool_timeout(scripted: ScriptedH2Server) -> None:
    nous_twisted.configure(pool=PoolSettings(timeout=150))
    await collect(nous_twisted.stream(scripted.url("/sse?n=2"), BODY, stream_backend="h2"))
    assert list(h2_pool_stats().values())[0]["connections"] == 1
    await wait_for(lambda: not scripted.open_protocols, timeout=3)
    assert h2_pool_stats() == {}


@pytest_twisted.ensureDeferred
async def test_shutdown_closes_connections_and_ends_streams(scripted: ScriptedH2Server) -> None:
    s = nous_twisted.stream(scripted.url("/sse?n=1000&delay=0.01"), BODY, stream_backend="h2")
    await s.__anext__()
    await nous_twisted.shutdown()
    events = await collect(s)
    assert isinstance(events[-1], StreamError)
    assert isinstance(events[-1].error, nous_twisted.TransportError)
    await wait_for(lambda: not scripted.open_protocols, timeout=3)
    # A new registry after shutdown.
    ok = await collect(nous_twisted.stream(scripted.url("/sse?n=2"), BODY, stream_backend="h2"))
    assert ok[-1] == StreamDone("stop")
    assert scripted.connections == 2


@pytest_twisted.ensureDeferred
async def test_connect_failures_are_typed(ca: trustme.CA, ca_file: str) -> None:
    from .helpers import refused_url

    url = (await refused_url()).replace("http://127.0.0.1", "https://localhost")
    events = await collect(nous_twisted.stream(url, BODY, stream_backend="h2"))
    assert isinstance(events[-1].error, nous_twisted.ConnectError)
    # A certificate from another CA: TLSError.
    other = trustme.CA()
    server = ScriptedH2Server(get_reactor(), tls_options(other, [b"h2"])).listen()
    try:
        events = await collect(nous_twisted.stream(server.url("/sse?n=2"), BODY, stream_backend="h2"))
        assert isinstance(events[-1].error, nous_twisted.TLSError)
        try:
            await nous_twisted.post(server.url("/json"), {}, backend="h2")
        except nous_twisted.TLSError:
            pass
        else:
            raise AssertionError("no TLSError")
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_open_streams_share_their_hosts_key(scripted: ScriptedH2Server) -> None:
    """Each request makes its own equal key; an open stream keeps the host's
    (one tuple per host, not one per stream held open for minutes)."""
    streams = [nous_twisted.stream(scripted.url("/sse?n=3&delay=0.5"), BODY, stream_backend="h2") for _ in range(3)]
    for s in streams:
        await s.__anext__()
    host_keys = list(pool().hosts)
    assert len(host_keys) == 1
    sources = [s._core._source for s in streams]
    assert all(src.key is host_keys[0] for src in sources)
    for s in streams:
        s.cancel()
