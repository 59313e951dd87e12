"""The Client: defaults, URL joining, headers, Reply, retries and observers,
on both backends, against real loopback servers."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred

import nous_twisted
from nous_twisted import (
    CallEvent,
    Client,
    InternalServerError,
    RateLimitError,
    Reply,
    RetryPolicy,
    StreamDone,
    StreamError,
    StreamTruncated,
    TransportError,
    observe,
)
from nous_twisted.request import USER_AGENT, join_url
from nous_twisted.testing import FakeLLMServer, Fault

from .conftest import BACKENDS
from .helpers import LogCapture, RawServer, get_reactor

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
FAST = RetryPolicy(max_retries=2, initial_delay=0.01, max_delay=0.02)


def sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    get_reactor().callLater(seconds, d.callback, None)
    return d


async def read_all(s: nous_twisted.EventStream) -> list[Any]:
    return [e async for e in s]


# -- reactor-free: construction, joining, options ------------------------------


@pytest.mark.parametrize(
    "base, url, joined",
    [
        ("https://api.example.com/v1", "/chat/completions", "https://api.example.com/v1/chat/completions"),
        ("https://api.example.com/v1/", "/chat/completions", "https://api.example.com/v1/chat/completions"),
        ("https://api.example.com/v1", "chat/completions", "https://api.example.com/v1/chat/completions"),
        ("https://api.example.com", "/v1/models", "https://api.example.com/v1/models"),
        ("https://api.example.com/v1", "/x?api-version=1", "https://api.example.com/v1/x?api-version=1"),
        ("https://api.example.com/v1", "https://other.example/v2/x", "https://other.example/v2/x"),
        ("https://api.example.com/v1", "HTTP://other.example/x", "HTTP://other.example/x"),
        (None, "https://other.example/x", "https://other.example/x"),
    ],
)
def test_join_url_as_httpx_does(base: str | None, url: str, joined: str) -> None:
    assert join_url(base, url) == joined


def test_relative_url_without_base_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="relative URL and there is no base_url") as info:
        Client().post("/v1/chat/completions?key=sk-secret-value", CHAT)
    assert "sk-secret-value" not in str(info.value)
    with pytest.raises(ValueError, match="no scheme"):
        nous_twisted.post("api.openai.com/v1/chat/completions", CHAT)


def test_bad_client_options_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="query or fragment"):
        Client("https://api.example.com/v1?key=abc")
    with pytest.raises(ValueError, match="has no scheme"):
        Client("api.example.com/v1")
    with pytest.raises(TypeError, match="timeout must be a number"):
        Client(timeout="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connect_timeout must be a positive"):
        Client(connect_timeout=0)
    with pytest.raises(ValueError, match="pool_timeout must be a positive"):
        Client(pool_timeout=-1)
    with pytest.raises(TypeError, match="retries must be an int"):
        Client(retries="2")  # type: ignore[arg-type]
    with pytest.raises(nous_twisted.BackendConfigError, match="backend= argument"):
        Client(backend="nope")
    with pytest.raises(nous_twisted.BackendConfigError, match="stream_backend= argument"):
        Client(stream_backend="nope")
    with pytest.raises(ValueError, match="header name"):
        Client(headers={"bad name": "x"})
    with pytest.raises(ValueError, match="Host"):
        Client(headers={"Host": "x"})
    with pytest.raises(TypeError, match="agent must provide"):
        Client(agent=object())  # type: ignore[arg-type]


def test_client_is_immutable_and_with_options_makes_a_new_one() -> None:
    c = Client("https://api.example.com/v1", {"Authorization": "Bearer sk-very-secret-key"}, retries=3)
    d = c.with_options(timeout=5, retries=None)
    assert c.timeout == 180.0 and c.retries == RetryPolicy(max_retries=3)
    assert d.timeout == 5.0 and d.retries is None and d.base_url == "https://api.example.com/v1"
    with pytest.raises(AttributeError):
        c.timeout = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="unknown option.*tiemout"):
        c.with_options(tiemout=3)
    text = repr(c)
    assert "sk-very-secret-key" not in text and "authorization" in text


def test_user_agent_names_library_and_twisted() -> None:
    import twisted

    assert USER_AGENT == f"nous-twisted/{nous_twisted.__version__} Twisted/{twisted.__version__}".encode()


# -- on the wire ---------------------------------------------------------------------

pytestmark_backends = pytest.mark.parametrize("backend", BACKENDS)


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_base_url_headers_and_user_agent_on_the_wire(fake: FakeLLMServer, backend: str) -> None:
    client = Client(fake.url + "/v1", {"Authorization": "Bearer k1", "X-Team": "a"}, backend=backend)
    await client.post("/chat/completions", CHAT)
    await client.post("/chat/completions", CHAT, {"authorization": "Bearer k2", "User-Agent": "mine/1"})
    first, second = list(fake.requests)[-2:]
    assert first.path == second.path == "/v1/chat/completions"
    assert first.headers["authorization"] == "Bearer k1"
    assert first.headers["x-team"] == "a"
    assert first.headers["user-agent"] == USER_AGENT.decode()
    # the call's header replaces the client's of the same name, in any case
    assert second.headers["authorization"] == "Bearer k2"
    assert second.headers["user-agent"] == "mine/1"
    assert second.headers["x-team"] == "a"


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_full_response_reply(fake: FakeLLMServer, backend: str) -> None:
    client = Client(fake.url, backend=backend)
    reply = await client.post("/v1/chat/completions", CHAT, full_response=True)
    assert isinstance(reply, Reply)
    assert reply.status == 200 and reply.attempts == 1
    assert reply.value["object"] == "chat.completion"
    assert reply.headers["content-type"] == "application/json"
    assert reply.request_id is not None and reply.request_id.startswith("req_")
    assert reply.request_id == reply.headers["X-Request-Id"]
    assert 0 <= reply.elapsed < 30
    plain = await nous_twisted.post(fake.chat_url, CHAT, backend=backend, full_response=True)
    assert isinstance(plain, Reply) and plain.status == 200


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_stream_headers_and_request_id(fake: FakeLLMServer, backend: str) -> None:
    s = Client(fake.url, stream_backend=backend).stream("/v1/chat/completions", {**CHAT, "stream": True})
    assert s.headers is None and s.request_id is None and s.status is None
    events = await read_all(s)
    assert events[-1] == StreamDone("stop")
    assert s.status == 200
    assert isinstance(s.headers, nous_twisted.ResponseHeaders)
    assert s.headers["content-type"].startswith("text/event-stream")
    assert s.request_id is not None and s.request_id == s.headers["x-request-id"]


async def _get_server() -> tuple[Any, list[tuple[bytes, dict[str, str], bytes]]]:
    from twisted.web import resource, server

    seen: list[tuple[bytes, dict[str, str], bytes]] = []

    class Models(resource.Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
            seen.append((request.method, headers, request.content.read()))
            request.setHeader(b"content-type", b"application/json")
            return b'{"object": "list", "data": [{"id": "m1"}]}'

    site = server.Site(Models())
    site.noisy = False
    port = get_reactor().listenTCP(0, site, interface="127.0.0.1")
    return port, seen


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_get_sends_no_body(backend: str) -> None:
    port, seen = await _get_server()
    try:
        client = Client(f"http://127.0.0.1:{port.getHost().port}/v1", backend=backend)
        models = await client.get("/models")
        assert models == {"object": "list", "data": [{"id": "m1"}]}
        reply = await client.get("/models", full_response=True)
        assert reply.status == 200 and reply.value["data"][0]["id"] == "m1"
        method, headers, body = seen[0]
        assert method == b"GET" and body == b""
        assert "content-type" not in headers and "content-length" not in headers
        assert headers["accept"] == "application/json"
    finally:
        await port.stopListening()


def test_a_get_has_no_body() -> None:
    from nous_twisted.request import prepare

    with pytest.raises(TypeError, match="no body"):
        prepare("http://h/x", {"a": 1}, (), method=b"GET")
    req = prepare("http://h/x", None, (), method=b"GET", accept=b"application/json")
    assert req.method == b"GET" and req.body == b""
    assert not any(n == b"content-type" for n, _ in req.headers)


# -- retries ---------------------------------------------------------------------------


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_no_retries_by_default(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(status=503, times=1))
    with pytest.raises(InternalServerError) as info:
        await Client(fake.url, backend=backend).post("/v1/chat/completions", CHAT)
    assert info.value.attempts == 1 and info.value.status == 503
    assert len(fake.requests) == 1


def _date_in(seconds: float) -> str:
    return email.utils.formatdate(time.time() + seconds, usegmt=True)


@pytestmark_backends
@pytest.mark.parametrize(
    "headers, least",
    [
        ({"retry-after": "0.2"}, 0.2),
        ({"retry-after-ms": "200"}, 0.2),
        ({"retry-after": "__DATE__"}, 0.0),
    ],
)
@pytest_twisted.ensureDeferred
async def test_429_is_retried_after_the_servers_delay(
    fake: FakeLLMServer, backend: str, headers: dict[str, str], least: float
) -> None:
    headers = {k: (_date_in(1) if v == "__DATE__" else v) for k, v in headers.items()}
    fake.inject(Fault(status=429, headers=headers, times=1))
    client = Client(fake.url, backend=backend, retries=RetryPolicy(max_retries=1, initial_delay=5.0, jitter=0))
    started = get_reactor().seconds()
    reply = await client.post("/v1/chat/completions", CHAT, full_response=True)
    waited = get_reactor().seconds() - started
    assert reply.attempts == 2 and reply.status == 200
    assert len(fake.requests) == 2
    # the server's delay, not the 5 s backoff
    assert least <= waited < 4.5
    assert reply.elapsed >= least


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_5xx_then_success_and_exhaustion(fake: FakeLLMServer, backend: str) -> None:
    client = Client(fake.url, backend=backend, retries=FAST)
    fake.inject(Fault(status=502, times=2))
    reply = await client.post("/v1/chat/completions", CHAT, full_response=True)
    assert reply.attempts == 3
    fake.inject(Fault(status=500, times=3))
    with pytest.raises(InternalServerError) as info:
        await client.post("/v1/chat/completions", CHAT)
    assert info.value.attempts == 3
    assert len(fake.requests) == 6


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_x_should_retry_false_is_final(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(status=503, headers={"x-should-retry": "false"}, times=1))
    with pytest.raises(InternalServerError) as info:
        await Client(fake.url, backend=backend, retries=FAST).post("/v1/chat/completions", CHAT)
    assert info.value.attempts == 1 and len(fake.requests) == 1
    fake.inject(Fault(status=400, headers={"x-should-retry": "true"}, times=1))
    reply = await Client(fake.url, backend=backend, retries=FAST).post("/v1/chat/completions", CHAT, full_response=True)
    assert reply.attempts == 2


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_per_call_and_configured_retries(fake: FakeLLMServer, backend: str) -> None:
    client = Client(fake.url, backend=backend, retries=FAST)
    fake.inject(Fault(status=503, times=1))
    with pytest.raises(InternalServerError):
        await client.post("/v1/chat/completions", CHAT, retries=0)
    nous_twisted.configure(retries=FAST)
    try:
        fake.inject(Fault(status=503, times=1))
        reply = await nous_twisted.post(fake.chat_url, CHAT, backend=backend, full_response=True)
        assert reply.attempts == 2
        fake.inject(Fault(status=503, times=1))
        with pytest.raises(InternalServerError):
            await nous_twisted.post(fake.chat_url, CHAT, backend=backend, retries=0)
    finally:
        nous_twisted.configure(retries=None)


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_connection_lost_before_the_response_is_retried(backend: str) -> None:
    answers = 0

    def on_request(p: Any) -> None:
        nonlocal answers
        answers += 1
        if answers == 1:
            p.transport.abortConnection()
            return
        body = b'{"ok": true}'
        p.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    server = RawServer(on_request).listen()
    try:
        with pytest.raises(TransportError) as info:
            await nous_twisted.post(server.url + "/x", CHAT, backend=backend)
        assert info.value.before_response and "before any byte" in str(info.value)
        answers = 0
        reply = await Client(server.url, backend=backend, retries=FAST).post("/x", CHAT, full_response=True)
        assert reply.value == {"ok": True} and reply.attempts == 2
    finally:
        await server.stop()


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_cancel_during_backoff_is_immediate(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(status=429, retry_after=30, times=1))
    d = Client(fake.url, backend=backend, retries=2).post("/v1/chat/completions", CHAT)
    while len(fake.requests) < 1:
        await sleep(0.01)
    await sleep(0.05)
    assert not d.called
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    await sleep(0.1)
    assert len(fake.requests) == 1
    # nothing holds a connection during the wait
    assert sum(len(v) for v in nous_twisted.shared.get_shared().pool._connections.values()) <= 1


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_retries_are_logged_at_info(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(status=503, times=1))
    with LogCapture() as logs:
        await Client(fake.url, backend=backend, retries=FAST).post("/v1/chat/completions", CHAT)
    lines = [e for e in logs.events if "retrying" in e.get("log_format", "")]
    assert len(lines) == 1
    assert lines[0]["log_level"].name == "info"
    assert lines[0]["reason"] == "HTTP 503"


# -- stream retries ------------------------------------------------------------------


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_stream_retried_before_its_first_event(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(status=503, times=1))
    s = Client(fake.url, stream_backend=backend, retries=FAST).stream("/v1/chat/completions", {**CHAT, "stream": True})
    events = await read_all(s)
    assert events[-1] == StreamDone("stop")
    assert all(isinstance(e, dict) for e in events[:-1]) and len(events) > 2
    assert len(fake.requests) == 2
    assert s.status == 200


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_stream_retry_with_consume_and_exhaustion(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(status=429, retry_after=0.01, times=3))
    seen: list[Any] = []
    s = Client(fake.url, stream_backend=backend, retries=FAST).stream("/v1/chat/completions", {**CHAT, "stream": True})
    terminal = await s.consume(seen.append)
    assert isinstance(terminal, StreamError) and isinstance(terminal.error, RateLimitError)
    assert terminal.error.attempts == 3
    assert seen == [terminal]
    assert len(fake.requests) == 3


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_stream_never_retried_after_an_event(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(drop_after_bytes=400, times=1))
    s = Client(fake.url, stream_backend=backend, retries=FAST).stream("/v1/chat/completions", {**CHAT, "stream": True})
    events = await read_all(s)
    assert isinstance(events[0], dict)
    assert isinstance(events[-1], StreamError) and isinstance(events[-1].error, StreamTruncated)
    assert len(fake.requests) == 1


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_stream_cancel_during_backoff(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(status=503, retry_after=30, times=1))
    s = Client(fake.url, stream_backend=backend, retries=2).stream("/v1/chat/completions", {**CHAT, "stream": True})
    while len(fake.requests) < 1:
        await sleep(0.01)
    await sleep(0.1)
    s.cancel()
    assert await read_all(s) == [StreamDone("cancelled")]
    assert s.done
    await sleep(0.1)
    assert len(fake.requests) == 1


# -- observers ---------------------------------------------------------------------


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_observers_see_every_step_of_a_post(fake: FakeLLMServer, backend: str) -> None:
    seen: list[CallEvent] = []
    unsubscribe = observe(seen.append)
    try:
        fake.inject(Fault(status=503, times=1))
        url = fake.url + "/v1/chat/completions?key=sk-in-the-query"
        await Client(backend=backend, retries=FAST, headers={"Authorization": "Bearer sk-secret"}).post(url, CHAT)
    finally:
        unsubscribe()
    assert [e.kind for e in seen] == ["start", "response", "failure", "retry", "response"]
    assert {e.backend for e in seen} == {backend}
    assert [e.attempt for e in seen] == [1, 1, 1, 1, 2]
    assert seen[1].status == 503 and seen[4].status == 200
    assert seen[2].error_type == "InternalServerError" and seen[2].phase == "status"
    assert seen[3].reason == "HTTP 503" and seen[3].delay is not None
    assert seen[4].usage == {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}
    assert all(e.method == "POST" and not e.stream for e in seen)
    text = repr(seen)
    assert "sk-in-the-query" not in text and "sk-secret" not in text
    await nous_twisted.post(fake.chat_url, CHAT, backend=backend)
    assert len(seen) == 5  # unsubscribed


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_observers_see_a_stream_end(fake: FakeLLMServer, backend: str) -> None:
    seen: list[CallEvent] = []
    unsubscribe = observe(seen.append)
    try:
        s = nous_twisted.stream(fake.anthropic_url, {**CHAT, "stream": True, "max_tokens": 5}, stream_backend=backend)
        events = await read_all(s)
    finally:
        unsubscribe()
    assert [e.kind for e in seen] == ["start", "response", "stream_end"]
    end = seen[-1]
    assert end.stream and end.reason == "stop"
    assert end.events == len(events) - 1
    assert end.bytes_received is not None and end.bytes_received > 0
    assert seen[1].status == 200 and seen[1].request_id is not None


@pytestmark_backends
@pytest_twisted.ensureDeferred
async def test_an_observer_that_raises_is_removed_and_logged(fake: FakeLLMServer, backend: str) -> None:
    calls: list[str] = []

    def bad(event: CallEvent) -> None:
        calls.append(event.kind)
        raise RuntimeError("observer bug")

    good: list[str] = []
    observe(bad)
    unsubscribe = observe(lambda e: good.append(e.kind))
    try:
        with LogCapture() as logs:
            value = await nous_twisted.post(fake.chat_url, CHAT, backend=backend)
        assert value["object"] == "chat.completion"
        assert calls == ["start"]
        assert good == ["start", "response"]
        assert "observer bug" in logs.text()
    finally:
        unsubscribe()


def test_observe_needs_a_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        observe("not a function")  # type: ignore[arg-type]


def test_usage_of_each_provider() -> None:
    from nous_twisted.observers import merge_usage, usage_of

    assert usage_of({"usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}) == {
        "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
    }
    assert usage_of({"choices": [], "usage": None}) is None
    assert usage_of({"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}}) == {
        "prompt_tokens": 5, "completion_tokens": 1,
    }
    assert usage_of({"type": "message_delta", "usage": {"output_tokens": 9}}) == {"completion_tokens": 9}
    assert usage_of({"done": True, "prompt_eval_count": 4, "eval_count": 6}) == {
        "prompt_tokens": 4, "completion_tokens": 6,
    }
    assert usage_of({"usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 3, "totalTokenCount": 5}}) == {
        "prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5,
    }
    assert usage_of([1, 2]) is None and usage_of({"choices": []}) is None
    assert usage_of({"usage": {"prompt_tokens": True}}) is None
    total = merge_usage(None, {"prompt_tokens": 5, "completion_tokens": 1})
    assert total == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    assert merge_usage(total, {"completion_tokens": 9}) == {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
