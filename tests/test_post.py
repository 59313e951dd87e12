"""The post() contract, on both backends, against real loopback servers."""

from __future__ import annotations

import email.utils
import time
from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.web._newclient import BODY
from twisted.web.client import Agent

import nous_twisted
from nous_twisted import (
    ConnectError,
    DecodeError,
    HTTPStatusError,
    PoolSettings,
    RequestTimeout,
    StreamTruncated,
    TLSError,
    post,
)
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer, Fault

from .conftest import BACKENDS, server_tls_options
from .helpers import LogCapture, RawServer, get_reactor, refused_url, sleep, wait_for

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def reading_body() -> int:
    """Connections of the shared pool whose response head was parsed and
    whose body is being delivered to the reader."""
    n = 0
    for slots in get_shared().pool._slots.values():
        for slot in slots:
            parser = getattr(slot.protocol, "_parser", None)
            response = getattr(parser, "response", None)
            if parser is not None and parser.state == BODY and getattr(response, "_state", None) == "CONNECTED":
                n += 1
    return n


def not_hanging(d: Deferred[Any], limit: float = 30.0) -> Deferred[Any]:
    """``d``, failed with a clear message if it has not fired after ``limit``
    seconds: a guard against a hang, not a measure of speed."""

    def hung(result: Any, timeout: float) -> Any:
        raise AssertionError(f"still waiting after {timeout} s: a limit was not applied")

    return d.addTimeout(limit, get_reactor(), onTimeoutCancel=hung)

pytestmark = pytest.mark.parametrize("backend", BACKENDS)


@pytest_twisted.ensureDeferred
async def test_2xx_decodes_json(fake: FakeLLMServer, backend: str) -> None:
    reply = await post(fake.chat_url, CHAT, backend=backend)
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"].startswith("Hello from the fake LLM")
    rec = fake.requests[-1]
    assert rec.body == CHAT
    assert rec.headers["content-type"] == "application/json"


@pytest_twisted.ensureDeferred
async def test_bytes_body_sent_as_is_and_content_type_kept(fake: FakeLLMServer, backend: str) -> None:
    raw = b'{"model": "m",   "messages": []}'
    await post(fake.chat_url, raw, {"Content-Type": "application/json; charset=utf-8"}, backend=backend)
    rec = fake.requests[-1]
    assert rec.body == {"model": "m", "messages": []}
    assert rec.headers["content-type"] == "application/json; charset=utf-8"


@pytest_twisted.ensureDeferred
async def test_empty_2xx_body_is_empty_dict(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(raw_body=b""))
    assert await post(fake.chat_url, CHAT, backend=backend) == {}


@pytest_twisted.ensureDeferred
async def test_non_json_2xx_is_decode_error_with_raw_bytes(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(raw_body=b"<html>gateway says hi</html>"))
    with pytest.raises(DecodeError) as info:
        await post(fake.chat_url, CHAT, backend=backend)
    assert info.value.raw == b"<html>gateway says hi</html>"


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
@pytest_twisted.ensureDeferred
async def test_status_errors_carry_everything(fake: FakeLLMServer, backend: str, status: int) -> None:
    body = {"error": {"message": "slow down", "type": "rate_limit_error"}}
    fake.inject(Fault(status=status, error_body=body, headers={"X-Custom": "1"}))
    with pytest.raises(HTTPStatusError) as info:
        await post(fake.chat_url, CHAT, backend=backend)
    e = info.value
    assert e.status == status
    assert e.body == body
    assert e.headers["x-custom"] == "1"
    assert e.request_id is not None and e.request_id.startswith("req_fake_")
    assert e.retry_after is None
    assert "slow down" in str(e) and str(status) in str(e)


@pytest_twisted.ensureDeferred
async def test_non_json_error_body_is_text(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(status=502, error_body=b"Bad Gateway from nginx"))
    with pytest.raises(HTTPStatusError) as info:
        await post(fake.chat_url, CHAT, backend=backend)
    assert info.value.body == "Bad Gateway from nginx"


@pytest.mark.parametrize(
    "headers,body,expected",
    [
        ({"retry-after-ms": "1500"}, None, 1.5),
        ({"Retry-After": "7"}, None, 7.0),
        ({"retry-after-ms": "250", "Retry-After": "9"}, None, 0.25),
        (
            {},
            {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED", "details": [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "32s"}]}},
            32.0,
        ),
        ({"Retry-After": "soon"}, None, None),
    ],
)
@pytest_twisted.ensureDeferred
async def test_retry_after_sources(
    fake: FakeLLMServer, backend: str, headers: dict[str, str], body: Any, expected: float | None
) -> None:
    fake.inject(Fault(status=429, headers=headers, error_body=body))
    with pytest.raises(HTTPStatusError) as info:
        await post(fake.chat_url, CHAT, backend=backend)
    assert info.value.retry_after == expected


@pytest_twisted.ensureDeferred
async def test_retry_after_http_date(fake: FakeLLMServer, backend: str) -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    fake.inject(Fault(status=503, headers={"Retry-After": when}))
    with pytest.raises(HTTPStatusError) as info:
        await post(fake.chat_url, CHAT, backend=backend)
    assert info.value.retry_after is not None and 110 <= info.value.retry_after <= 121


@pytest_twisted.ensureDeferred
async def test_redirect_not_followed(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(status=307, headers={"Location": fake.chat_url + "?again"}, error_body={"moved": True}))
    with pytest.raises(HTTPStatusError) as info:
        await post(fake.chat_url, CHAT, backend=backend)
    assert info.value.status == 307
    assert info.value.headers["location"].endswith("?again")
    assert len(fake.requests) == 1


@pytest_twisted.ensureDeferred
async def test_refused_connection_is_connect_error(backend: str) -> None:
    url = await refused_url()
    with pytest.raises(ConnectError) as info:
        await post(url, CHAT, backend=backend)
    assert "refused" in str(info.value)
    assert get_shared().pool.open_connections() == 0


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_is_tls_error(ca: Any, backend: str) -> None:
    async with FakeLLMServer(tls=server_tls_options(ca, "localhost"), host="localhost") as server:
        with pytest.raises(TLSError) as info:
            await post(server.chat_url, CHAT, backend=backend)
        assert "certificate" in str(info.value).lower()
        assert server.requests == type(server.requests)()  # nothing reached the app


@pytest_twisted.ensureDeferred
async def test_trusted_ca_succeeds_and_hostname_mismatch_fails(ca: Any, ca_file: str, backend: str) -> None:
    nous_twisted.configure(ca_bundle=ca_file)
    async with FakeLLMServer(tls=server_tls_options(ca, "localhost", "127.0.0.1"), host="localhost") as good:
        reply = await post(good.chat_url, CHAT, backend=backend)
        assert reply["object"] == "chat.completion"
    async with FakeLLMServer(tls=server_tls_options(ca, "other.example"), host="localhost") as bad:
        with pytest.raises(TLSError):
            await post(bad.chat_url, CHAT, backend=backend)
        assert len(bad.requests) == 0


@pytest_twisted.ensureDeferred
async def test_ssl_cert_file_env_is_trust_root(ca: Any, ca_file: str, backend: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    await nous_twisted.shutdown()  # the env is read when the pool's agent is built
    async with FakeLLMServer(tls=server_tls_options(ca, "127.0.0.1"), host="127.0.0.1") as server:
        assert (await post(server.chat_url, CHAT, backend=backend))["object"] == "chat.completion"


@pytest_twisted.ensureDeferred
async def test_stall_mid_body_is_receive_timeout(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(stall_after_bytes=20))
    with pytest.raises(RequestTimeout) as info:
        # The limit covers the body, not only the headers (treq's own stops
        # there): without it this would hang.  Exact timing: test_timing.py.
        await not_hanging(post(fake.chat_url, CHAT, backend=backend, timeout=0.3))
    assert info.value.phase == "receive" and info.value.timeout == 0.3
    # The stalled connection was aborted: the server sees it closed.
    await wait_for(lambda: fake.open_connections == 0)


@pytest_twisted.ensureDeferred
async def test_stall_before_headers_is_receive_timeout(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(stall_before_headers=True))
    with pytest.raises(RequestTimeout) as info:
        await post(fake.chat_url, CHAT, backend=backend, timeout=0.3)
    assert info.value.phase == "receive"
    await wait_for(lambda: fake.open_connections == 0)


@pytest_twisted.ensureDeferred
async def test_tls_handshake_that_never_completes_is_connect_timeout(backend: str) -> None:
    silent = RawServer().listen()  # accepts TCP, never speaks TLS
    try:
        url = f"https://127.0.0.1:{silent.port.getHost().port}/v1/chat/completions"
        with pytest.raises(RequestTimeout) as info:
            await post(url, CHAT, backend=backend, connect_timeout=0.3, timeout=30)
        assert info.value.phase == "connect"
        await wait_for(lambda: silent.open == 0)
        await wait_for(lambda: get_shared().pool.open_connections() == 0)
    finally:
        await silent.stop()


@pytest_twisted.ensureDeferred
async def test_waiting_for_a_pool_slot_is_not_connect(fake: FakeLLMServer, backend: str) -> None:
    # Issue 9: the slot wait is its own phase (pool_timeout; tests/test_pool_wait.py).
    nous_twisted.configure(pool=PoolSettings(max_connections=1))
    fake.inject(Fault(stall_before_headers=True))
    blocker = post(fake.chat_url, CHAT, backend=backend, timeout=30)
    blocker.addErrback(lambda f: f.trap(CancelledError))
    waiting = post(fake.chat_url, CHAT, backend=backend, connect_timeout=0.2)
    await sleep(0.5)
    assert not waiting.called  # still waiting for the slot, past connect_timeout
    blocker.cancel()
    # The slot is free again: the waiting request goes through.
    assert (await waiting)["object"] == "chat.completion"


@pytest_twisted.ensureDeferred
async def test_dropped_mid_body_is_truncated(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(drop_after_bytes=30))
    with pytest.raises(StreamTruncated):
        await post(fake.chat_url, CHAT, backend=backend)


@pytest_twisted.ensureDeferred
async def test_cancel_aborts_connection_and_frees_slot(fake: FakeLLMServer, backend: str) -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=1))
    fake.inject(Fault(stall_after_bytes=10))
    d = post(fake.chat_url, CHAT, backend=backend)
    await wait_for(lambda: reading_body() == 1)  # the headers are in; the body is being read
    assert fake.open_connections == 1
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    await wait_for(lambda: fake.open_connections == 0, timeout=1.0)
    assert get_shared().pool.open_connections() == 0
    reply = await post(fake.chat_url, CHAT, backend=backend)
    assert reply["object"] == "chat.completion"
    assert fake.connections_made == 2  # the aborted connection was not reused


@pytest_twisted.ensureDeferred
async def test_cancel_before_headers(fake: FakeLLMServer, backend: str) -> None:
    fake.inject(Fault(stall_before_headers=True))
    d = post(fake.chat_url, CHAT, backend=backend)
    await wait_for(lambda: len(fake.requests) == 1)
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    await wait_for(lambda: fake.open_connections == 0, timeout=1.0)


@pytest_twisted.ensureDeferred
async def test_custom_headers_reach_server(fake: FakeLLMServer, backend: str) -> None:
    await post(fake.chat_url, CHAT, [("X-Trace", "abc"), ("anthropic-version", "2023-06-01")], backend=backend)
    rec = fake.requests[-1]
    assert rec.headers["x-trace"] == "abc"
    assert rec.headers["anthropic-version"] == "2023-06-01"


@pytest_twisted.ensureDeferred
async def test_agent_override_bypasses_shared_pool(fake: FakeLLMServer, backend: str) -> None:
    calls: list[bytes] = []

    class Recording:
        def __init__(self, inner: Agent) -> None:
            self.inner = inner

        def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
            calls.append(uri)
            return self.inner.request(method, uri, headers, bodyProducer)

    from twisted.web.iweb import IAgent
    from zope.interface import directlyProvides

    agent = Recording(Agent(get_reactor()))  # non-persistent: its own connections
    directlyProvides(agent, IAgent)
    reply = await post(fake.chat_url, CHAT, backend=backend, agent=agent)
    assert reply["object"] == "chat.completion"
    assert calls and calls[0].endswith(b"/v1/chat/completions")
    assert get_shared().pool.open_connections() == 0  # the shared pool was not used


@pytest_twisted.ensureDeferred
async def test_failures_are_logged_with_status_and_bounded_body(fake: FakeLLMServer, backend: str) -> None:
    big = {"error": {"message": "x" * 5000}}
    fake.inject(Fault(status=500, error_body=big))
    with LogCapture() as logs, pytest.raises(HTTPStatusError):
        await post(fake.chat_url, CHAT, {"Authorization": "Bearer sk-live-SECRET"}, backend=backend)
    events = [e for e in logs.events if e.get("status") == 500]
    assert events, logs.text()
    assert len(events[0]["body"]) <= 500
    assert "SECRET" not in logs.text()


@pytest_twisted.ensureDeferred
async def test_secrets_never_in_errors_or_logs(backend: str) -> None:
    async with FakeLLMServer(api_key="right") as server:
        with LogCapture() as logs:
            with pytest.raises(HTTPStatusError) as info:
                await post(server.chat_url + "?key=GOOGLE-SECRET", CHAT, {"Authorization": "Bearer sk-SECRET"}, backend=backend)
        assert info.value.status == 401
        for text in (str(info.value), repr(info.value), logs.text()):
            assert "SECRET" not in text


@pytest_twisted.ensureDeferred
async def test_large_request_and_reply(fake: FakeLLMServer, backend: str) -> None:
    big = {"model": "m", "messages": [{"role": "user", "content": "y" * 300_000}]}
    payload = orjson.dumps({"ok": "z" * 300_000})
    fake.inject(Fault(raw_body=payload))
    reply = await post(fake.chat_url, big, backend=backend)
    assert reply == {"ok": "z" * 300_000}
    assert fake.requests[-1].body == big
