"""The stream scenarios: every one on both stream backends, against real
loopback servers, with the two event lists compared for equality."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

import nous_twisted
from nous_twisted import (
    AgentStreamBackend,
    BufferOverflow,
    ConnectError,
    HTTPStatusError,
    ProviderError,
    RequestTimeout,
    StreamDone,
    StreamError,
    StreamTruncated,
    TreqStreamBackend,
    stream,
)
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer, Fault, reply_tokens

from .helpers import ScriptedSite, get_reactor, refused_url, sleep, wait_for

BACKENDS = ("treq", "agent")
CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def collect(url: str, body: Any = CHAT, backend: Any = "treq", **kw: Any) -> list[Any]:
    events = []
    async for event in stream(url, body, stream_backend=backend, **kw):
        events.append(event)
    return events


def _scrub(value: Any) -> Any:
    """Per-request ids and timestamps differ between two runs: blank them."""
    if isinstance(value, dict):
        return {k: None if k in ("id", "created") else _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def norm(events: list[Any]) -> list[Any]:
    """Events made comparable: errors by type and the fields that matter."""
    out: list[Any] = []
    for e in events:
        if isinstance(e, StreamError):
            err = e.error
            out.append(("error", type(err).__name__, getattr(err, "status", None), getattr(err, "phase", None),
                        getattr(err, "error_type", None)))
        else:
            out.append(_scrub(e))
    return out


async def both(url: str, body: Any = CHAT, **kw: Any) -> list[Any]:
    """Run on both backends; assert identical events; return them."""
    results = [await collect(url, body, backend=b, **kw) for b in BACKENDS]
    assert norm(results[0]) == norm(results[1])
    terminals = [e for e in results[0] if isinstance(e, (StreamDone, StreamError))]
    assert len(terminals) == 1 and terminals[0] is results[0][-1], "exactly one terminal event, last"
    return results[0]


def text_of(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for e in events if isinstance(e, dict))


@pytest_twisted.ensureDeferred
async def test_openai_sse_done(fake: FakeLLMServer) -> None:
    events = await both(fake.chat_url)
    assert events[-1] == StreamDone("stop")
    assert text_of(events) == "".join(reply_tokens(fake.reply_tokens))
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    rec = fake.requests[-1]
    assert rec.headers["accept"] == "text/event-stream"
    assert rec.headers["content-type"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_anthropic_with_ping_and_midstream_overloaded_error(fake: FakeLLMServer) -> None:
    events = await both(fake.anthropic_url)
    assert [e["type"] for e in events[:3]] == ["message_start", "content_block_start", "ping"]
    assert events[-2] == {"type": "message_stop"} and events[-1] == StreamDone("stop")
    fake.inject(Fault(error_after_events=5, times=2))
    events = await both(fake.anthropic_url)
    assert len(events) == 6
    err = events[-1].error
    assert isinstance(err, ProviderError) and err.error_type == "overloaded_error"


@pytest_twisted.ensureDeferred
async def test_ollama_ndjson(fake: FakeLLMServer) -> None:
    events = await both(fake.ollama_url, {"model": "llama", "messages": []})
    assert events[-1] == StreamDone("stop")
    assert events[-2]["done"] is True
    assert "".join(e["message"]["content"] for e in events[:-1]) == "".join(reply_tokens(fake.reply_tokens))
    fake.inject(Fault(error_after_events=2, times=2))
    events = await both(fake.ollama_url, {"model": "llama", "messages": []})
    assert isinstance(events[-1].error, ProviderError) and len(events) == 3


@pytest_twisted.ensureDeferred
async def test_gemini_json_array_and_sse(fake: FakeLLMServer) -> None:
    events = await both(fake.gemini_url(), {"contents": []})
    assert events[-1] == StreamDone("eof")
    texts = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events[:-1])
    assert texts == "".join(reply_tokens(fake.reply_tokens))
    assert events[-2]["candidates"][0]["finishReason"] == "STOP"
    sse = await both(fake.gemini_url(sse=True), {"contents": []})
    assert norm(sse) == norm(events)
    # format= overrides the Content-Type
    forced = await both(fake.gemini_url(), {"contents": []}, format="json-array")
    assert norm(forced) == norm(events)


@pytest.mark.parametrize("fmt", ["sse", "ndjson", "json-array"])
@pytest_twisted.ensureDeferred
async def test_every_chunking(fmt: str) -> None:
    values = [{"i": i, "t": "tok\u00e9n\u2028 \\\"]}", "n": [i, {"x": None}]} for i in range(6)]
    if fmt == "sse":
        body = b"".join(b"data: " + orjson.dumps(v) + b"\r\n\r\n" for v in values) + b": bye\n\ndata: [DONE]\n\n"
        ctype, end = b"text/event-stream", StreamDone("stop")
    elif fmt == "ndjson":
        body = b"".join(orjson.dumps(v) + b"\n" for v in values) + b'{"done":true}\n'
        values.append({"done": True})
        ctype, end = b"application/x-ndjson", StreamDone("stop")
    else:
        body = b"[" + b",\r\n".join(orjson.dumps(v) for v in values) + b"]"
        ctype, end = b"application/json", StreamDone("eof")
    site = ScriptedSite(body, ctype).listen()
    try:
        for size in [1, 2, 3, 5, 7, 13, 64, 1000, 0]:  # 0: the whole body in one chunk
            events = await both(site.url(size))
            assert events == values + [end], size
    finally:
        await site.stop()


@pytest.mark.parametrize("status", [400, 429, 500, 529])
@pytest_twisted.ensureDeferred
async def test_status_error_with_json_body(fake: FakeLLMServer, status: int) -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    fake.inject(Fault(status=status, error_body=body, retry_after=3, times=2))
    events = await both(fake.chat_url)
    assert len(events) == 1
    err = events[0].error
    assert isinstance(err, HTTPStatusError)
    assert err.status == status and err.body == body and err.retry_after == 3.0
    assert err.headers["content-type"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_refused_connection() -> None:
    url = await refused_url()
    events = await both(url)
    assert isinstance(events[0].error, ConnectError)


@pytest_twisted.ensureDeferred
async def test_server_closing_mid_chunk_is_truncated(fake: FakeLLMServer) -> None:
    fake.inject(Fault(drop_after_bytes=300, times=2))
    events = await both(fake.chat_url)
    assert isinstance(events[-1].error, StreamTruncated)
    assert all(isinstance(e, dict) for e in events[:-1])


@pytest_twisted.ensureDeferred
async def test_stall_is_idle_timeout_even_with_keepalive_comments(fake: FakeLLMServer) -> None:
    fake.inject(Fault(stall_after_events=3, times=2))
    events = await both(fake.chat_url, timeout=0.3)
    assert len(events) == 4
    assert isinstance(events[-1].error, RequestTimeout) and events[-1].error.phase == "idle"
    fake.inject(Fault(stall_after_events=3, keepalive=0.05, times=2))
    events = await both(fake.chat_url, timeout=0.4)
    assert isinstance(events[-1].error, RequestTimeout) and events[-1].error.phase == "idle"
    await wait_for(lambda: fake.open_connections <= 1, timeout=1.0)  # the stalled ones were aborted


@pytest_twisted.ensureDeferred
async def test_stall_before_headers_is_idle_timeout(fake: FakeLLMServer) -> None:
    fake.inject(Fault(stall_before_headers=True, times=2))
    events = await both(fake.chat_url, timeout=0.3)
    assert isinstance(events[-1].error, RequestTimeout) and events[-1].error.phase == "idle"


@pytest_twisted.ensureDeferred
async def test_oversized_event_is_buffer_overflow() -> None:
    big = b"data: {\"x\": \"" + b"y" * (10 * 1024 * 1024 + 10) + b"\"}\n\n"
    site = ScriptedSite(b'data: {"a": 1}\n\n' + big + b"data: [DONE]\n\n").listen()
    try:
        events = await both(site.url(64 * 1024))
        assert events[0] == {"a": 1}
        assert isinstance(events[1].error, BufferOverflow) and len(events) == 2
        # a smaller limit, per backend instance
        small = [await collect(site.url(100), backend=cls(max_event_bytes=1000)) for cls in (TreqStreamBackend, AgentStreamBackend)]
        assert norm(small[0]) == norm(small[1])
        assert isinstance(small[0][1].error, BufferOverflow)
    finally:
        await site.stop()


@pytest_twisted.ensureDeferred
async def test_invalid_json_event_is_skipped(fake: FakeLLMServer) -> None:
    fake.inject(Fault(invalid_json_at=2, times=2))
    events = await both(fake.chat_url)
    assert events[-1] == StreamDone("stop")
    assert text_of(events) == "".join(reply_tokens(fake.reply_tokens))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_200_concurrent_streams_with_token_delays(backend: str) -> None:
    async with FakeLLMServer(reply_tokens=10, token_delay=0.01) as server:
        expected = "".join(reply_tokens(10))
        results = await gatherResults(
            [Deferred.fromCoroutine(collect(server.chat_url, backend=backend)) for _ in range(200)]
        )
        assert all(r[-1] == StreamDone("stop") and text_of(r) == expected for r in results)
        assert server.max_open_connections <= 50  # the default per-host cap held


# -- connections: reuse and abort ---------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_sequential_streams_reuse_one_connection(fake: FakeLLMServer, backend: str) -> None:
    for _ in range(20):
        events = await collect(fake.chat_url, backend=backend)
        assert events[-1] == StreamDone("stop")
    assert fake.connections_made == 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_cancel_aborts_connection(backend: str) -> None:
    async with FakeLLMServer(reply_tokens=1000, token_delay=0.01) as server:
        s = stream(server.chat_url, CHAT, stream_backend=backend)
        events = []
        async for event in s:
            events.append(event)
            if len(events) == 3:
                s.cancel()
        assert events[-1] == StreamDone("cancelled") and len(events) == 4
        await wait_for(lambda: server.open_connections == 0, timeout=1.0)
        assert get_shared().pool.open_connections() == 0
        await collect(server.chat_url, {"model": "m", "stream": True, "max_tokens": 2}, backend=backend)
        assert server.connections_made == 2  # the cancelled connection was never reused


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_failed_and_timed_out_streams_abort_connection(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(stall_after_events=2))
    events = await collect(fake.chat_url, backend=backend, timeout=0.2)
    assert isinstance(events[-1].error, RequestTimeout)
    await wait_for(lambda: fake.open_connections == 0, timeout=1.0)
    fake.inject(Fault(error_after_events=2))
    events = await collect(fake.anthropic_url, backend=backend)
    assert isinstance(events[-1].error, ProviderError)
    await wait_for(lambda: fake.open_connections == 0, timeout=1.0)
    assert fake.connections_made == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_cancel_before_headers(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(stall_before_headers=True))
    s = stream(fake.chat_url, CHAT, stream_backend=backend)
    await wait_for(lambda: len(fake.requests) == 1)
    s.cancel()
    events = [e async for e in s]
    assert events == [StreamDone("cancelled")]
    await wait_for(lambda: fake.open_connections == 0, timeout=1.0)


# -- the three ways to consume --------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_consume_with_deferred_holds_next_event(fake: FakeLLMServer, backend: str) -> None:
    seen: list[Any] = []
    busy = [False]

    def on_event(event: Any) -> Deferred[None]:
        assert not busy[0], "the next event came before the previous one's Deferred fired"
        busy[0] = True
        seen.append(event)
        d: Deferred[None] = Deferred()

        def done() -> None:
            busy[0] = False
            d.callback(None)

        get_reactor().callLater(0.005, done)
        return d

    terminal = await stream(fake.chat_url, CHAT, stream_backend=backend).consume(on_event)
    assert terminal == StreamDone("stop") and seen[-1] == terminal
    assert text_of(seen) == "".join(reply_tokens(fake.reply_tokens))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_consume_with_coroutine_and_failing_callback(fake: FakeLLMServer, backend: str) -> None:
    seen: list[Any] = []

    async def on_event(event: Any) -> None:
        await sleep(0.001)
        seen.append(event)

    assert await stream(fake.chat_url, CHAT, stream_backend=backend).consume(on_event) == StreamDone("stop")
    assert len(seen) == fake.reply_tokens + 2

    def boom(event: Any) -> None:
        raise ValueError("consumer bug")

    async with FakeLLMServer(reply_tokens=500, token_delay=0.005) as slow:
        with pytest.raises(ValueError, match="consumer bug"):
            await stream(slow.chat_url, CHAT, stream_backend=backend).consume(boom)
        await wait_for(lambda: slow.open_connections == 0, timeout=1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_push_producer_pause_resume(fake: FakeLLMServer, backend: str) -> None:
    from twisted.internet.interfaces import IPushProducer

    s = stream(fake.chat_url, CHAT, stream_backend=backend)
    assert IPushProducer.providedBy(s)
    seen: list[Any] = []

    def on_event(event: Any) -> None:
        seen.append(event)
        if len(seen) == 2:
            s.pauseProducing()

    d = s.consume(on_event)
    # Paused, then events are ready (read ahead, or the chunk in flight when
    # the socket was paused), or at least the server has sent its whole reply
    # (strict pull stops reading): nothing is delivered while paused.
    await wait_for(lambda: len(seen) >= 2 and (s.buffered > 0 or (len(fake.requests) == 1 and not fake._replies)))
    assert len(seen) == 2
    s.resumeProducing()
    assert await d == StreamDone("stop")
    assert text_of(seen) == "".join(reply_tokens(fake.reply_tokens))


@pytest_twisted.ensureDeferred
async def test_stream_backend_resolution(fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from nous_twisted.resolve import resolve_stream_backend

    assert isinstance(resolve_stream_backend(None), TreqStreamBackend)
    monkeypatch.setenv("NOUS_HTTP_STREAM_BACKEND", "agent")
    assert isinstance(resolve_stream_backend(None), AgentStreamBackend)
    monkeypatch.delenv("NOUS_HTTP_STREAM_BACKEND")
    nous_twisted.configure(http_stream_backend="agent")
    assert isinstance(resolve_stream_backend(None), AgentStreamBackend)
    assert isinstance(resolve_stream_backend("treq"), TreqStreamBackend)
    monkeypatch.setenv("NOUS_HTTP_STREAM_BACKEND", "nope")
    with pytest.raises(nous_twisted.BackendConfigError, match="NOUS_HTTP_STREAM_BACKEND"):
        stream(fake.chat_url, CHAT)


def test_stream_bad_arguments() -> None:
    with pytest.raises(ValueError, match="format"):
        stream("http://127.0.0.1:9/", {}, format="xml")
    with pytest.raises(TypeError, match="url"):
        stream(b"http://127.0.0.1:9/", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CR, LF"):
        stream("http://127.0.0.1:9/", {}, {"Authorization": "Bearer sk-x\r\n"})


@pytest_twisted.ensureDeferred
async def test_shutdown_aborts_open_streams(fake: FakeLLMServer) -> None:
    fake.inject(Fault(stall_after_events=1))
    s = stream(fake.chat_url, CHAT)
    await wait_for(lambda: s.buffered >= 1)
    await nous_twisted.shutdown()
    events = [e async for e in s]
    assert isinstance(events[-1], StreamError) and type(events[-1].error) is nous_twisted.TransportError, events[-1]
    assert "aborted by shutdown()" in str(events[-1].error)
    await wait_for(lambda: fake.open_connections == 0, timeout=1.0)


@pytest_twisted.ensureDeferred
async def test_tls_stream(ca: Any, ca_file: str) -> None:
    from .conftest import server_tls_options

    nous_twisted.configure(ca_bundle=ca_file)
    async with FakeLLMServer(tls=server_tls_options(ca, "localhost"), host="localhost") as server:
        events = await both(server.chat_url)
        assert events[-1] == StreamDone("stop")
    async with FakeLLMServer(tls=server_tls_options(ca, "localhost"), host="localhost") as server:
        nous_twisted.configure(ca_bundle=None)
        events = await both(server.chat_url)
        assert type(events[0].error).__name__ == "TLSError"





@pytest_twisted.ensureDeferred
async def test_async_with_cancels_on_exit(fake: FakeLLMServer) -> None:
    async with FakeLLMServer(reply_tokens=500, token_delay=0.005) as slow:
        async with stream(slow.chat_url, CHAT) as s:
            async for _event in s:
                break
        assert s.done
        assert [e async for e in s] == [StreamDone("cancelled")]
        await wait_for(lambda: slow.open_connections == 0, timeout=1.0)


@pytest_twisted.ensureDeferred
async def test_async_for_from_an_asyncio_task(fake: FakeLLMServer) -> None:
    """Scrapy 2.13+ runs coroutines as asyncio tasks under the asyncio reactor."""
    import asyncio

    from twisted.internet import asyncioreactor

    if not isinstance(get_reactor(), asyncioreactor.AsyncioSelectorReactor):
        pytest.skip("needs --reactor=asyncio")

    async def in_task() -> list[Any]:
        assert asyncio.current_task() is not None
        events = []
        async for event in stream(fake.chat_url, CHAT, stream_backend="agent"):
            events.append(event)
            await asyncio.sleep(0)  # a real asyncio await between events
        return events

    events = await Deferred.fromFuture(asyncio.ensure_future(in_task()))
    assert events[-1] == StreamDone("stop")
    assert text_of(events) == "".join(reply_tokens(fake.reply_tokens))
