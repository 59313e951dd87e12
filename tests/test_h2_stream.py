"""The h2 stream backend on real loopback TLS servers: Twisted's own web
server offering h2 around the fake LLM resource, and a scripted h2 server
for flow control.  Both reactors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import trustme

import nous_twisted
from nous_twisted import StreamDone, StreamError, StreamTruncated
from nous_twisted.backends.agent_stream import AgentStreamBackend
from nous_twisted.backends.h2_stream import H2StreamBackend
from nous_twisted.h2pool import get_h2pool, h2_pool_stats
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer

from .h2server import NoALPNServer, ScriptedH2Server, tls_options
from .helpers import LogCapture, get_reactor, sleep, wait_for

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
def ca_pem(ca: trustme.CA, ca_file: str) -> str:
    nous_twisted.configure(ca_bundle=ca_file)
    return ca_file


@pytest_twisted.async_yield_fixture
async def h2_fake(ca: trustme.CA, ca_pem: str) -> AsyncIterator[FakeLLMServer]:
    server = await FakeLLMServer(
        reply_tokens=6, tls=tls_options(ca, [b"h2", b"http/1.1"]), host="localhost"
    ).start()
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def scripted(ca: trustme.CA, ca_pem: str) -> AsyncIterator[ScriptedH2Server]:
    server = ScriptedH2Server(get_reactor(), tls_options(ca, [b"h2"])).listen()
    yield server
    await server.stop()


def pool() -> Any:
    return get_h2pool(get_shared())


async def collect(s: Any) -> list[Any]:
    return [e async for e in s]


def _strip(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if k not in ("id", "created", "created_at")}
    if isinstance(v, list):
        return [_strip(x) for x in v]
    return v


def strip_ids(events: list[Any]) -> list[Any]:
    return [_strip(e) for e in events]


@pytest_twisted.ensureDeferred
async def test_events_match_the_agent_backend(h2_fake: FakeLLMServer) -> None:
    for url in (h2_fake.chat_url, h2_fake.anthropic_url, h2_fake.ollama_url, h2_fake.gemini_url()):
        h2_events = await collect(nous_twisted.stream(url, BODY, stream_backend="h2"))
        agent_events = await collect(nous_twisted.stream(url, BODY, stream_backend="agent"))
        assert strip_ids(h2_events) == strip_ids(agent_events)
        assert isinstance(h2_events[-1], StreamDone)
        assert len(h2_events) > 3
    # Every h2 call went over one connection, negotiated h2.
    conns = [c for h in pool().hosts.values() for c in h.conns]
    assert len(conns) == 1 and conns[0].protocol == b"h2"
    assert pool().connections_opened == 1


@pytest_twisted.ensureDeferred
async def test_status_and_headers_and_error_status(h2_fake: FakeLLMServer) -> None:
    s = nous_twisted.stream(h2_fake.chat_url, BODY, stream_backend="h2")
    events = await collect(s)
    assert s.status == 200
    assert s.headers is not None and s.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == StreamDone("stop")
    s = nous_twisted.stream(h2_fake.url + "/nowhere", BODY, stream_backend="h2")
    events = await collect(s)
    assert isinstance(events[-1], StreamError)
    assert isinstance(events[-1].error, nous_twisted.HTTPStatusError)
    assert events[-1].error.status == 404


@pytest_twisted.ensureDeferred
async def test_many_streams_share_one_connection(h2_fake: FakeLLMServer) -> None:
    from twisted.internet.defer import gatherResults

    from nous_twisted.reactors import awaitable

    async def one() -> list[Any]:
        return await collect(nous_twisted.stream(h2_fake.chat_url, BODY, stream_backend="h2"))

    results = await awaitable(gatherResults([_d(one()) for _ in range(30)]))
    assert all(r[-1] == StreamDone("stop") for r in results)
    assert h2_fake.connections_made == 1
    assert pool().connections_opened == 1


def _d(coro: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coro)


@pytest_twisted.ensureDeferred
async def test_an_http11_only_host_falls_back_once(ca: trustme.CA, ca_pem: str) -> None:
    async with FakeLLMServer(reply_tokens=4, tls=tls_options(ca, [b"http/1.1"]), host="localhost") as server:
        with LogCapture() as logs:
            first = await collect(nous_twisted.stream(server.chat_url, BODY, stream_backend="h2"))
            second = await collect(nous_twisted.stream(server.chat_url, BODY, stream_backend="h2"))
        assert first[-1] == StreamDone("stop") and second[-1] == StreamDone("stop")
        assert strip_ids(first) == strip_ids(second)
        assert ("localhost", server.port) in pool().http11
        said = [e for e in logs.events if "not h2" in e.get("log_format", "")]
        assert len(said) == 1, logs.text()
        assert "http/1.1" in logs.text()
        # one probe connection, then the agent backend's pooled one
        assert server.connections_made == 2
        assert pool().connections_opened == 1


@pytest_twisted.ensureDeferred
async def test_a_host_without_alpn_falls_back(ca: trustme.CA, ca_pem: str) -> None:
    server = NoALPNServer(ca)
    try:
        with LogCapture() as logs:
            for _ in range(2):
                events = await collect(nous_twisted.stream(server.url, BODY, stream_backend="h2"))
                assert events == [{"i": 0}, {"i": 1}, StreamDone("stop")]
        assert "no ALPN protocol" in logs.text()
        assert pool().connections_opened == 1
    finally:
        await nous_twisted.shutdown()
        server.stop()


@pytest_twisted.ensureDeferred
async def test_plain_http_goes_through_the_agent_backend(fake: FakeLLMServer) -> None:
    events = await collect(nous_twisted.stream(fake.chat_url, BODY, stream_backend="h2"))
    assert events[-1] == StreamDone("stop")
    assert pool().connections_opened == 0


@pytest.mark.parametrize("window", [16384, 65536])
@pytest_twisted.ensureDeferred
async def test_a_stopped_consumer_holds_one_window_and_does_not_stall_the_others(
    scripted: ScriptedH2Server, window: int
) -> None:
    # 1 KiB events, 200 of them, 5 ms apart: 200 KiB per stream, far over the window.
    url = scripted.url("/sse?n=200&delay=0.005&size=1024")
    backend = H2StreamBackend(max_pause=None, window=window)
    stopped = nous_twisted.stream(url, BODY, stream_backend=backend)
    first = await stopped.__anext__()
    assert first["i"] == 0
    # 30 siblings move 6 MiB through the connection while it holds its window:
    # were connection credit tied to consumption, they would stall.
    others = [_d(collect(nous_twisted.stream(url, BODY, stream_backend=backend))) for _ in range(30)]
    from twisted.internet.defer import gatherResults

    from nous_twisted.reactors import awaitable

    results = await awaitable(gatherResults(others))
    assert all(len(r) == 201 and r[-1] == StreamDone("stop") for r in results)
    source = stopped._core._source
    # The stopped stream's bytes off the wire: the window plus a frame at most.
    assert source.buffered_bytes <= backend.window + 16384
    assert stopped._core.bytes_received + source.buffered_bytes <= backend.window + 16384 + 2048
    proto = scripted.protocols[0]
    st = proto.streams[source.sid]
    assert st.sent <= backend.window + 16384
    assert scripted.connections == 1
    # Reading on releases the rest, window by window.
    rest = await collect(stopped)
    assert len(rest) == 200 and rest[-1] == StreamDone("stop")


@pytest_twisted.ensureDeferred
async def test_cancel_resets_that_stream_only(scripted: ScriptedH2Server) -> None:
    url = scripted.url("/sse?n=50&delay=0.01")
    a = nous_twisted.stream(url, BODY, stream_backend="h2")
    b = nous_twisted.stream(url, BODY, stream_backend="h2")
    assert (await a.__anext__())["i"] == 0
    assert (await b.__anext__())["i"] == 0
    a.cancel()
    assert await collect(a) == [StreamDone("cancelled")]
    rest = await collect(b)
    assert len(rest) == 50 and rest[-1] == StreamDone("stop")
    await wait_for(lambda: len(scripted.resets_received) == 1)
    from h2.errors import ErrorCodes

    assert scripted.resets_received == [ErrorCodes.CANCEL]
    # The connection is reused afterwards.
    again = await collect(nous_twisted.stream(url.replace("n=50", "n=3"), BODY, stream_backend="h2"))
    assert again[-1] == StreamDone("stop")
    assert scripted.connections == 1


@pytest_twisted.ensureDeferred
async def test_max_pause_resets_the_stream_and_keeps_the_connection(scripted: ScriptedH2Server) -> None:
    url = scripted.url("/sse?n=200&delay=0.002&size=1024")
    backend = H2StreamBackend(max_pause=0.3)
    s = nous_twisted.stream(url, BODY, stream_backend=backend)
    await s.__anext__()
    await sleep(0.6)
    events = await collect(s)
    assert isinstance(events[-1], StreamError)
    assert isinstance(events[-1].error, nous_twisted.BufferOverflow)
    await wait_for(lambda: len(scripted.resets_received) == 1)
    ok = await collect(nous_twisted.stream(scripted.url("/sse?n=3"), BODY, stream_backend="h2"))
    assert ok[-1] == StreamDone("stop")
    assert scripted.connections == 1


@pytest_twisted.ensureDeferred
async def test_reset_by_the_server_after_an_event_is_truncation(scripted: ScriptedH2Server) -> None:
    events = await collect(nous_twisted.stream(scripted.url("/sse?n=10&reset_at=3"), BODY, stream_backend="h2"))
    assert [e["i"] for e in events[:-1]] == [0, 1, 2]
    assert isinstance(events[-1], StreamError) and isinstance(events[-1].error, StreamTruncated)
    assert "INTERNAL_ERROR" in str(events[-1].error)


@pytest_twisted.ensureDeferred
async def test_pool_stats_show_connections_and_streams(scripted: ScriptedH2Server) -> None:
    s = nous_twisted.stream(scripted.url("/sse?n=20&delay=0.02"), BODY, stream_backend="h2")
    await s.__anext__()
    stats = h2_pool_stats()
    (host,) = stats.values()
    assert host["connections"] == 1 and host["open_streams"] == 1 and host["waiting"] == 0
    s.cancel()
    await collect(s)
    await wait_for(lambda: list(h2_pool_stats().values())[0]["open_streams"] == 0)


@pytest.mark.parametrize("bad", [0, 100, True, "big", 2**31])
def test_window_is_checked(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        H2StreamBackend(window=bad)


@pytest_twisted.ensureDeferred
async def test_agent_fallback_has_the_same_limits() -> None:
    """An http:// URL goes through the agent backend's path, under the h2
    backend's own max_event_bytes (its option checks are the agent's)."""
    from nous_twisted import BufferOverflow

    from .faultserver import LAST_CHUNK, FaultServer, chunk, head, write

    b = H2StreamBackend(max_event_bytes=1000, max_pause=5.0)
    assert isinstance(b, AgentStreamBackend) and b.max_event_bytes == 1000 and b.max_pause == 5.0
    assert "window=65536" in repr(b)
    for bad in ({"max_event_bytes": 0}, {"max_pause": -1.0}, {"max_event_bytes": True}):
        with pytest.raises((TypeError, ValueError)):
            H2StreamBackend(**bad)
    body = b'data: {"n": 1}\n\ndata: {"pad": "' + b"x" * 2000 + b'"}\n\ndata: [DONE]\n\n'
    async with FaultServer([write(head() + chunk(body) + LAST_CHUNK)]) as server:
        got = await collect(nous_twisted.stream(server.url(), BODY, stream_backend=b))
    assert got[0] == {"n": 1} and len(got) == 2
    assert isinstance(got[1], StreamError) and isinstance(got[1].error, BufferOverflow), got


@pytest_twisted.ensureDeferred
async def test_an_abandoned_stream_is_reset_and_frees_its_slot(scripted: ScriptedH2Server) -> None:
    import gc

    from h2.errors import ErrorCodes

    async def read_one() -> None:
        s = nous_twisted.stream(scripted.url("/sse?n=500&delay=0.01"), BODY, stream_backend="h2")
        await s.__anext__()  # then nobody holds it

    await read_one()
    gc.collect()
    await wait_for(lambda: scripted.resets_received == [ErrorCodes.CANCEL], timeout=3)
    await wait_for(lambda: list(h2_pool_stats().values())[0]["open_streams"] == 0)
    assert scripted.connections == 1
