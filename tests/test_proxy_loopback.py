"""Proxies end to end on loopback: the real proxy.py, and a scripted proxy for faults.

Every request goes to 127.0.0.1 (targets and proxies alike); both backends,
post and stream, and both reactors (run the file with --reactor=asyncio).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
import trustme
from twisted.internet.defer import Deferred, gatherResults

import nous_twisted
from nous_twisted import (
    ConnectError,
    HTTPStatusError,
    RequestTimeout,
    StreamDone,
    StreamError,
    TLSError,
)
from nous_twisted.proxy import Proxy, choose_proxy, with_proxy
from nous_twisted.request import prepare
from nous_twisted.resolve import resolve_http_backend, resolve_stream_backend
from nous_twisted.response import to_value
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer

from .conftest import server_tls_options
from .helpers import LogCapture, get_reactor, refused_url, sleep
from .proxyserver import ProxyPy, ScriptProxy

BACKENDS = ("treq", "agent")
USER, PASSWORD = "alice", "s3cret-pa55word"
CREDS = f"{USER}:{PASSWORD}"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}
MARKER = "plaintext-marker-7f3a"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def proxypy() -> Iterator[ProxyPy]:
    p = ProxyPy().start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def proxypy_auth() -> Iterator[ProxyPy]:
    p = ProxyPy(basic_auth=CREDS).start()
    yield p
    p.stop()


@pytest_twisted.async_yield_fixture
async def tls_fake(ca: trustme.CA, ca_file: str) -> AsyncIterator[FakeLLMServer]:
    nous_twisted.configure(ca_bundle=ca_file)
    server = await FakeLLMServer(tls=server_tls_options(ca, "localhost"), host="localhost").start()
    yield server
    await server.stop()


@pytest_twisted.async_yield_fixture
async def http_fake() -> AsyncIterator[FakeLLMServer]:
    server = await FakeLLMServer().start()
    yield server
    await server.stop()


async def script(**kw: Any) -> ScriptProxy:
    return ScriptProxy(**kw).listen()


# ---------------------------------------------------------------- calls


def post_via(url: str, proxy: str | Proxy | None, backend: str = "treq", body: Any = CHAT,
             connect_timeout: float = 5.0, headers: Any = ()) -> Deferred[Any]:
    request = with_proxy(prepare(url, body, headers), choose_proxy(url, proxy))
    impl = resolve_http_backend(backend)
    d: Deferred[Any] = impl.post(request, timeout=10.0, connect_timeout=connect_timeout)
    return d.addCallback(to_value, request.display_url, request.secrets)


async def stream_via(url: str, proxy: str | Proxy | None, backend: str = "treq", body: Any = STREAM,
                     connect_timeout: float = 5.0) -> list[Any]:
    request = with_proxy(prepare(url, body, (), accept=b"text/event-stream"), choose_proxy(url, proxy))
    impl = resolve_stream_backend(backend)
    events = []
    async for event in impl.stream(request, timeout=10.0, connect_timeout=connect_timeout):
        events.append(event)
    return events


def text_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content", "") for e in events if isinstance(e, dict) and e.get("choices")
    )


async def failure_of(url: str, proxy: str, backend: str, kind: str, **kw: Any) -> BaseException:
    """The error a post raises, or a stream's terminal StreamError carries."""
    if kind == "post":
        try:
            await post_via(url, proxy, backend, **kw)
        except Exception as e:
            return e
        raise AssertionError("the post succeeded")
    events = await stream_via(url, proxy, backend, **kw)
    assert len(events) == 1 and isinstance(events[0], StreamError), events
    return events[0].error


def assert_no_credentials(*texts: str) -> None:
    for t in texts:
        assert PASSWORD not in t and USER not in t, t


# ---------------------------------------------------------------- through proxy.py


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_https_target_post_through_proxypy(backend: str, proxypy: ProxyPy, tls_fake: FakeLLMServer) -> None:
    reply = await post_via(tls_fake.chat_url, proxypy.url(), backend)
    assert reply["choices"][0]["message"]["content"]
    recorded = tls_fake.requests[-1]
    assert recorded.path == "/v1/chat/completions"
    assert "proxy-authorization" not in recorded.headers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_https_target_stream_through_proxypy(backend: str, proxypy: ProxyPy, tls_fake: FakeLLMServer) -> None:
    events = await stream_via(tls_fake.chat_url, proxypy.url(), backend)
    assert events[-1] == StreamDone("stop")
    assert text_of(events)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_http_target_through_proxypy(backend: str, proxypy: ProxyPy, http_fake: FakeLLMServer) -> None:
    reply = await post_via(http_fake.chat_url, proxypy.url(), backend)
    assert reply["choices"][0]["message"]["content"]
    events = await stream_via(http_fake.chat_url, proxypy.url(), backend)
    assert events[-1] == StreamDone("stop")
    assert http_fake.requests[-1].path == "/v1/chat/completions"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_proxy_auth_accepted(backend: str, proxypy_auth: ProxyPy, tls_fake: FakeLLMServer,
                                   http_fake: FakeLLMServer) -> None:
    url = proxypy_auth.url(CREDS)
    assert (await post_via(tls_fake.chat_url, url, backend))["choices"]
    assert (await post_via(http_fake.chat_url, url, backend))["choices"]
    assert (await stream_via(tls_fake.chat_url, url, backend))[-1] == StreamDone("stop")
    # The proxy takes its header off: the target never sees it.
    assert "proxy-authorization" not in http_fake.requests[-1].headers


@pytest.mark.parametrize("kind", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_proxy_auth_missing_on_connect(backend: str, kind: str, proxypy_auth: ProxyPy,
                                             tls_fake: FakeLLMServer) -> None:
    err = await failure_of(tls_fake.chat_url, proxypy_auth.url(), backend, kind)
    assert isinstance(err, ConnectError), err
    assert f"the proxy http://127.0.0.1:{proxypy_auth.port} refused the tunnel to localhost:{tls_fake.port}" in str(err)
    assert "407" in str(err) and "asked for credentials" in str(err)


@pytest.mark.parametrize("kind", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_proxy_auth_wrong_on_connect(backend: str, kind: str, proxypy_auth: ProxyPy,
                                           tls_fake: FakeLLMServer) -> None:
    with LogCapture() as logs:
        err = await failure_of(tls_fake.chat_url, proxypy_auth.url(f"{USER}:wrong-{PASSWORD}"), backend, kind)
    assert isinstance(err, ConnectError)
    assert "407" in str(err) and "refused the credentials" in str(err)
    assert_no_credentials(str(err), repr(err), logs.text())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_proxy_auth_missing_for_http_target_is_a_407_status(backend: str, proxypy_auth: ProxyPy,
                                                                   http_fake: FakeLLMServer) -> None:
    with pytest.raises(HTTPStatusError) as e:
        await post_via(http_fake.chat_url, proxypy_auth.url(), backend)
    assert e.value.status == 407
    assert "the proxy asked for credentials" in str(e.value)
    events = await stream_via(http_fake.chat_url, proxypy_auth.url(), backend)
    assert isinstance(events[-1], StreamError) and isinstance(events[-1].error, HTTPStatusError)
    assert events[-1].error.status == 407 and "the proxy asked for credentials" in str(events[-1].error)
    assert not http_fake.requests


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_fifty_concurrent_streams_through_one_proxy_reuse_the_tunnels(
    backend: str, proxypy: ProxyPy, tls_fake: FakeLLMServer
) -> None:
    async def one() -> list[Any]:
        return await stream_via(tls_fake.chat_url, proxypy.url(), backend)

    for _ in range(2):
        results = await gatherResults([Deferred.fromCoroutine(one()) for _ in range(50)])
        assert all(r[-1] == StreamDone("stop") and text_of(r) for r in results)
    # Each tunnel is one TLS connection at the target: the second round reused the first's.
    assert 1 <= tls_fake.connections_made <= 50
    assert len(tls_fake.requests) == 100
    pool = get_shared(get_reactor()).pool
    keys = [k for k in pool._connections if len(k) == 4]
    assert keys and all(k[3] == Proxy("http", "127.0.0.1", proxypy.port) for k in keys)


# ---------------------------------------------------------------- our tunnel: what the proxy sees


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_connect_request_and_end_to_end_tls(backend: str, tls_fake: FakeLLMServer) -> None:
    proxy = await script()
    try:
        body = {**CHAT, "note": MARKER}
        d = post_via(tls_fake.chat_url, proxy.url(CREDS), backend, body=body,
                     headers={"Authorization": "Bearer sk-target-key-123456"})
        assert (await d)["choices"]
        head = proxy.heads[0]
        lines = head.split(b"\r\n")
        assert lines[0] == f"CONNECT localhost:{tls_fake.port} HTTP/1.1".encode()
        assert f"Host: localhost:{tls_fake.port}".encode() in lines
        assert b"Proxy-Authorization: Basic YWxpY2U6czNjcmV0LXBhNTV3b3Jk" in lines
        relayed = b"".join(proxy.relayed)
        assert relayed  # the request went through the tunnel ...
        assert MARKER.encode() not in relayed and b"sk-target-key" not in relayed  # ... encrypted
        assert tls_fake.requests[-1].body["note"] == MARKER
    finally:
        await proxy.stop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_http_target_absolute_form_with_proxy_authorization(backend: str) -> None:
    body = b'{"ok": true}'
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    proxy = await script(mode="reply", reply=reply, close_after_reply=False)
    try:
        assert await post_via("http://127.0.0.1:9/v1/chat/completions?x=1#frag", proxy.url(CREDS), backend) == {"ok": True}
        lines = proxy.heads[0].split(b"\r\n")
        assert lines[0] == b"POST http://127.0.0.1:9/v1/chat/completions?x=1 HTTP/1.1"
        fields = {n.strip().lower(): v.strip() for n, _, v in (line.partition(b":") for line in lines[1:])}
        assert fields[b"proxy-authorization"] == b"Basic YWxpY2U6czNjcmV0LXBhNTV3b3Jk"
        assert fields[b"host"] == b"127.0.0.1:9"
    finally:
        await proxy.stop()


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("kind", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 403 Forbidden", b"HTTP/1.1 502 Bad Gateway", b"HTTP/1.0 407 Proxy Authentication Required"],
)
@pytest_twisted.ensureDeferred
async def test_connect_refused(status_line: bytes, backend: str, kind: str) -> None:
    proxy = await script(mode="reply", reply=status_line + b"\r\nContent-Length: 0\r\n\r\n")
    try:
        err = await failure_of("https://localhost:9/v1/chat/completions", proxy.url(), backend, kind)
        assert isinstance(err, ConnectError), err
        assert str(err).startswith(f"the proxy {proxy.url()} refused the tunnel to localhost:9: ")
        assert repr(status_line.decode()) in str(err)
    finally:
        await proxy.stop()


@pytest.mark.parametrize("kind", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_proxy_closes(backend: str, kind: str) -> None:
    proxy = await script(mode="close")
    try:
        err = await failure_of("https://localhost:9/", proxy.url(CREDS), backend, kind)
        assert isinstance(err, ConnectError)
        assert str(err) == f"the proxy {proxy.url()} closed the connection before answering CONNECT localhost:9"
    finally:
        await proxy.stop()


@pytest.mark.parametrize("kind", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_proxy_stalls(backend: str, kind: str) -> None:
    proxy = await script(mode="stall")
    try:
        with LogCapture() as logs:
            err = await failure_of("https://localhost:9/v1", proxy.url(CREDS), backend, kind, connect_timeout=0.3)
        assert isinstance(err, RequestTimeout)
        assert err.phase == "connect" and err.step == "proxy"
        assert f"through the proxy {proxy.url()}" in str(err)
        assert "CONNECT" in str(err)
        assert_no_credentials(str(err), repr(err), logs.text())
        await sleep(0.05)
        assert proxy.closed == len(proxy.connections) == 1  # the stalled connection was closed
        assert get_shared(get_reactor()).pool.open_connections() == 0
    finally:
        await proxy.stop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_proxy_not_listening(backend: str) -> None:
    dead = (await refused_url("")).rstrip("/")
    err = await failure_of("https://localhost:9/", dead.replace("http://", f"http://{CREDS}@"), backend, "post")
    assert isinstance(err, ConnectError)
    assert str(err) == f"cannot connect to the proxy {dead}: connection refused"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_reply_that_is_not_http(backend: str) -> None:
    proxy = await script(mode="reply", reply=b"SSH-2.0-OpenSSH\r\n\r\n")
    try:
        err = await failure_of("https://localhost:9/", proxy.url(), backend, "post")
        assert isinstance(err, ConnectError)
        assert "did not answer CONNECT with HTTP: 'SSH-2.0-OpenSSH'" in str(err)
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_reply_head_too_large() -> None:
    proxy = await script(mode="reply", reply=b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000, close_after_reply=False)
    try:
        err = await failure_of("https://localhost:9/", proxy.url(), "agent", "post")
        assert isinstance(err, ConnectError) and "reply head over 65536 bytes" in str(err)
    finally:
        await proxy.stop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_target_certificate_is_verified_through_the_tunnel(backend: str, ca: trustme.CA, ca_file: str) -> None:
    nous_twisted.configure(ca_bundle=ca_file)
    server = await FakeLLMServer(tls=server_tls_options(ca, "other.example"), host="localhost").start()
    proxy = await script()
    try:
        err = await failure_of(server.chat_url, proxy.url(), backend, "post")
        assert isinstance(err, TLSError), err
        assert proxy.tunnels == 1 and not server.requests
    finally:
        await proxy.stop()
        await server.stop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_https_proxy(backend: str, ca: trustme.CA, tls_fake: FakeLLMServer, http_fake: FakeLLMServer) -> None:
    proxy = await script(tls=server_tls_options(ca, "localhost"))
    try:
        url = proxy.url(CREDS, host="localhost")
        assert (await post_via(tls_fake.chat_url, url, backend))["choices"]
        assert (await stream_via(tls_fake.chat_url, url, backend))[-1] == StreamDone("stop")
        assert proxy.tunnels >= 1
    finally:
        await proxy.stop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_https_proxy_certificate_is_verified(backend: str, ca: trustme.CA, tls_fake: FakeLLMServer) -> None:
    proxy = await script(tls=server_tls_options(trustme.CA(), "localhost"))
    try:
        err = await failure_of(tls_fake.chat_url, proxy.url(host="localhost"), backend, "post")
        assert isinstance(err, TLSError), err
        assert str(err).startswith(f"TLS handshake with the proxy {proxy.url(host='localhost')} failed")
        assert proxy.tunnels == 0
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_max_connections_applies_per_target_through_a_proxy(tls_fake: FakeLLMServer) -> None:
    nous_twisted.configure(pool=nous_twisted.PoolSettings(max_connections=2))
    proxy = await script()
    try:
        results = await gatherResults([post_via(tls_fake.chat_url, proxy.url(), "agent") for _ in range(6)])
        assert len(results) == 6
        assert tls_fake.max_open_connections <= 2
        assert proxy.tunnels <= 2
    finally:
        await proxy.stop()


@pytest_twisted.ensureDeferred
async def test_direct_and_proxied_connections_are_pooled_apart(tls_fake: FakeLLMServer) -> None:
    proxy = await script()
    try:
        await post_via(tls_fake.chat_url, None, "agent")
        await post_via(tls_fake.chat_url, proxy.url(), "agent")
        await post_via(tls_fake.chat_url, proxy.url(CREDS), "agent")
        await post_via(tls_fake.chat_url, proxy.url(), "agent")
        assert tls_fake.connections_made == 3
        assert proxy.tunnels == 2
    finally:
        await proxy.stop()


# ---------------------------------------------------------------- environment


@pytest_twisted.ensureDeferred
async def test_environment_proxy_and_no_proxy(tls_fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await script()
    stall = await script(mode="stall")
    try:
        for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url())
        assert (await post_via(tls_fake.chat_url, choose_proxy(tls_fake.chat_url)))["choices"]
        assert proxy.tunnels == 1
        # NO_PROXY sends it direct: the stalling proxy of the environment is never asked.
        monkeypatch.setenv("HTTPS_PROXY", stall.url())
        monkeypatch.setenv("NO_PROXY", "example.com,localhost")
        assert (await post_via(tls_fake.chat_url, choose_proxy(tls_fake.chat_url)))["choices"]
        assert not stall.heads
        # An explicit proxy wins over the environment and its NO_PROXY (the
        # first tunnel, still pooled, carries it).
        relayed = len(proxy.relayed)
        assert (await post_via(tls_fake.chat_url, choose_proxy(tls_fake.chat_url, proxy.url())))["choices"]
        assert proxy.tunnels == 1 and len(proxy.relayed) > relayed and not stall.heads
        # trust_env=False ignores it all.
        monkeypatch.delenv("NO_PROXY")
        assert choose_proxy(tls_fake.chat_url, trust_env=False) is None
        assert choose_proxy(tls_fake.chat_url) == Proxy.from_url(stall.url())
    finally:
        await proxy.stop()
        await stall.stop()


@pytest_twisted.ensureDeferred
async def test_configured_proxy_is_validated_and_stored() -> None:
    with pytest.raises(ValueError) as e:
        nous_twisted.configure(proxy=f"socks5://{CREDS}@127.0.0.1:1080")
    assert_no_credentials(str(e.value))
    settings = nous_twisted.configure(proxy=f"http://{CREDS}@127.0.0.1:3128", trust_env=False)
    assert settings.proxy == f"http://{CREDS}@127.0.0.1:3128" and settings.trust_env is False
    assert_no_credentials(repr(settings))
    assert choose_proxy("https://x/", configured=settings.proxy) == Proxy.from_url(settings.proxy)
    with pytest.raises(TypeError):
        nous_twisted.configure(trust_env="yes")  # type: ignore[arg-type]
    settings = nous_twisted.configure(proxy=None, trust_env=True)
    assert settings.proxy is None and settings.trust_env is True
