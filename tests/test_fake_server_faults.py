"""FakeLLMServer as the retry and usage tests of issue 9 need it: usage-only
chunks (stream_options.include_usage), an x-request-id on every reply, a
reset before any response byte, a fault for one request then success (429
with each Retry-After form, 503 with x-should-retry), and streams failing
before and after their first event.  Real calls through the library, both
backends."""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred

import nous_twisted
from nous_twisted import (
    HTTPStatusError,
    ProviderError,
    StreamDone,
    StreamError,
    StreamTruncated,
    TransportError,
)
from nous_twisted.request import prepare
from nous_twisted.resolve import resolve_http_backend
from nous_twisted.testing import FakeLLMServer, Fault

from .conftest import BACKENDS
from .helpers import get_reactor

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def read(s: nous_twisted.EventStream) -> tuple[list[Any], Any]:
    events = [e async for e in s]
    return events[:-1], events[-1]


def raw_post(url: str, backend: str, body: Any = BODY) -> Deferred[Any]:
    """The backend's RawResponse (status, Headers, body) of a 2xx reply."""
    d: Deferred[Any] = resolve_http_backend(backend).post(
        prepare(url, body, ()), timeout=30.0, connect_timeout=30.0, agent=None, reactor=None
    )
    return d


async def http_error(d: Deferred[Any]) -> HTTPStatusError:
    try:
        await d
    except HTTPStatusError as e:
        return e
    raise AssertionError("no HTTPStatusError")


# -- include_usage ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_include_usage_sends_a_usage_only_chunk_before_done(backend: str) -> None:
    async with FakeLLMServer(reply_tokens=3) as server:
        body = dict(BODY, stream=True, stream_options={"include_usage": True})
        events, terminal = await read(nous_twisted.stream(server.chat_url, body, stream_backend=backend))
        assert terminal == StreamDone("stop")
        *chunks, last = events
        assert last["choices"] == [] and last["usage"] == {
            "prompt_tokens": 8, "completion_tokens": 3, "total_tokens": 11
        }
        assert len(chunks) == 4 and all(c["usage"] is None and len(c["choices"]) == 1 for c in chunks)
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello from the"


@pytest.mark.parametrize("options", [None, {"include_usage": False}, {}, "yes"])
@pytest_twisted.ensureDeferred
async def test_without_include_usage_no_usage_anywhere(options: Any) -> None:
    async with FakeLLMServer(reply_tokens=3) as server:
        body: dict[str, Any] = dict(BODY, stream=True)
        if options is not None:
            body["stream_options"] = options
        events, terminal = await read(nous_twisted.stream(server.chat_url, body))
        assert terminal == StreamDone("stop") and len(events) == 4
        assert all("usage" not in e and len(e["choices"]) == 1 for e in events)


@pytest_twisted.ensureDeferred
async def test_a_whole_reply_carries_usage() -> None:
    async with FakeLLMServer(reply_tokens=5) as server:
        reply = await nous_twisted.post(server.chat_url, BODY)
        assert reply["usage"] == {"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13}


# -- x-request-id ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_every_reply_has_its_own_request_id(backend: str) -> None:
    async with FakeLLMServer() as server:
        ids: list[str] = []
        for url in (server.chat_url, server.anthropic_url, server.ollama_url, server.gemini_url(stream=False)):
            for _ in range(2):
                raw = await raw_post(url, backend, dict(BODY, stream=False))
                assert raw.status == 200
                ids.append(raw.headers.getRawHeaders(b"x-request-id")[0].decode())
        anthropic = await raw_post(server.anthropic_url, backend, dict(BODY, stream=False))
        assert anthropic.headers.getRawHeaders(b"request-id") == anthropic.headers.getRawHeaders(b"x-request-id")
        server.inject(Fault(status=500))
        err = await http_error(nous_twisted.post(server.chat_url, BODY, backend=backend))
        assert err.request_id is not None
        ids.append(err.request_id)
        missing = await http_error(nous_twisted.post(server.url + "/nowhere", BODY, backend=backend))
        assert missing.status == 404 and missing.request_id is not None
        ids.append(missing.request_id)
        s = nous_twisted.stream(server.chat_url, dict(BODY, stream=True), stream_backend=backend)
        await read(s)
        assert s.request_id is not None
        ids.append(s.request_id)
        assert len(set(ids)) == len(ids) == 11 and all(i.startswith("req_") for i in ids)
        recorded = [r.request_id for r in server.requests]
        assert set(ids) <= set(recorded)


@pytest_twisted.ensureDeferred
async def test_a_get_is_refused_with_a_request_id() -> None:
    async with FakeLLMServer() as server:
        response = await treq.get(server.chat_url)
        assert response.code == 405
        assert response.headers.getRawHeaders(b"x-request-id")[0].startswith(b"req_fake_")
        await response.content()


# -- reset before headers -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_reset_before_headers_then_success(backend: str) -> None:
    async with FakeLLMServer() as server:
        server.inject(Fault(reset_before_headers=True))
        with pytest.raises(TransportError) as info:
            await nous_twisted.post(server.chat_url, BODY, backend=backend)
        assert type(info.value) is TransportError  # not a timeout, not an HTTP status
        assert "before a complete response" in str(info.value)
        assert len(server.requests) == 1 and server.requests[0].request_id == ""
        reply = await nous_twisted.post(server.chat_url, BODY, backend=backend)  # times=1: the next one works
        assert reply["object"] == "chat.completion"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_reset_before_headers_on_a_stream(backend: str) -> None:
    async with FakeLLMServer() as server:
        server.inject(Fault(reset_before_headers=True))
        s = nous_twisted.stream(server.chat_url, dict(BODY, stream=True), stream_backend=backend)
        events, terminal = await read(s)
        assert events == [] and isinstance(terminal, StreamError)
        assert type(terminal.error) is TransportError and s.status is None
        events, terminal = await read(
            nous_twisted.stream(server.chat_url, dict(BODY, stream=True), stream_backend=backend)
        )
        assert terminal == StreamDone("stop") and events


@pytest_twisted.ensureDeferred
async def test_reset_sends_a_tcp_reset() -> None:
    # A raw client: after the request, the server's close must be an RST
    # (ECONNRESET on read), not an orderly FIN (b"" on read).
    import socket

    async with FakeLLMServer() as server:
        server.inject(Fault(reset_before_headers=True))
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setblocking(False)
        payload = b'{"model": "m"}'
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
        )
        outcome: list[Any] = []
        deadline = time.monotonic() + 5
        while not outcome and time.monotonic() < deadline:
            try:
                data = sock.recv(100)
                outcome.append(data)
            except BlockingIOError:
                d: Deferred[None] = Deferred()
                get_reactor().callLater(0.01, d.callback, None)
                await d
            except ConnectionResetError as e:
                outcome.append(e)
        sock.close()
        assert outcome and isinstance(outcome[0], ConnectionResetError), outcome


# -- a fault for one request, then success -------------------------------------------------


@pytest.mark.parametrize(
    "headers,expected",
    [
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after-ms": "150"}, 0.15),
        ({"Retry-After": "date"}, None),  # an HTTP date, a few seconds ahead
    ],
)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_429_with_each_retry_after_form_then_success(backend: str, headers: dict[str, str], expected: Any) -> None:
    if headers.get("Retry-After") == "date":
        headers = {"Retry-After": formatdate(time.time() + 3, usegmt=True)}
    async with FakeLLMServer() as server:
        server.inject(Fault(status=429, headers=headers, times=1))
        err = await http_error(nous_twisted.post(server.chat_url, BODY, backend=backend))
        assert err.status == 429 and err.retry_after is not None
        if expected is None:
            assert 1.0 <= err.retry_after <= 3.0
        else:
            assert err.retry_after == expected
        reply = await nous_twisted.post(server.chat_url, BODY, backend=backend)
        assert reply["object"] == "chat.completion" and len(server.requests) == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_503_with_x_should_retry_false_then_success(backend: str) -> None:
    async with FakeLLMServer() as server:
        server.inject(Fault(status=503, headers={"x-should-retry": "false"}, times=1))
        err = await http_error(nous_twisted.post(server.chat_url, BODY, backend=backend))
        assert err.status == 503 and err.headers["x-should-retry"] == "false"
        assert (await nous_twisted.post(server.chat_url, BODY, backend=backend))["object"] == "chat.completion"


@pytest_twisted.ensureDeferred
async def test_two_faults_queue_in_order() -> None:
    async with FakeLLMServer() as server:
        server.inject(Fault(status=500, times=2))
        server.inject(Fault(status=429, retry_after=1, times=1))
        statuses = []
        for _ in range(3):
            statuses.append((await http_error(nous_twisted.post(server.chat_url, BODY))).status)
        assert statuses == [500, 500, 429]
        assert (await nous_twisted.post(server.chat_url, BODY))["object"] == "chat.completion"


# -- streams failing before and after their first event ---------------------------------------


@pytest.mark.parametrize(
    "fault,error_type",
    [
        (Fault(drop_after_bytes=0), StreamTruncated),
        (Fault(error_after_events=0), ProviderError),
        (Fault(status=503), HTTPStatusError),
        (Fault(reset_before_headers=True), TransportError),
    ],
    ids=["drop", "provider-error", "503", "reset"],
)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_a_stream_failing_before_its_first_event(backend: str, fault: Fault, error_type: type) -> None:
    async with FakeLLMServer() as server:
        server.inject(fault)
        events, terminal = await read(
            nous_twisted.stream(server.chat_url, dict(BODY, stream=True), stream_backend=backend)
        )
        assert events == [] and isinstance(terminal, StreamError) and isinstance(terminal.error, error_type)


@pytest.mark.parametrize(
    "fault,error_type",
    [
        # The first chunk is ~180 bytes and the second ~165: 250 cuts the second.
        (Fault(drop_after_bytes=250), StreamTruncated),
        (Fault(error_after_events=1), ProviderError),
    ],
    ids=["drop", "provider-error"],
)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_a_stream_failing_after_its_first_event(backend: str, fault: Fault, error_type: type) -> None:
    async with FakeLLMServer() as server:
        server.inject(fault)
        events, terminal = await read(
            nous_twisted.stream(server.chat_url, dict(BODY, stream=True), stream_backend=backend)
        )
        assert len(events) == 1 and events[0]["choices"][0]["delta"]["content"] == "Hello"
        assert isinstance(terminal, StreamError) and isinstance(terminal.error, error_type)
