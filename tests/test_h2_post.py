"""The h2 post backend on real loopback TLS servers.  Both reactors."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import trustme
from twisted.internet.defer import gatherResults

import nous_twisted
from nous_twisted.backends.h2 import H2Backend
from nous_twisted.errors import BackendConfigError
from nous_twisted.h2pool import get_h2pool
from nous_twisted.reactors import awaitable
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer

from .h2server import ScriptedH2Server, tls_fake
from .helpers import get_reactor, sleep

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest_twisted.async_yield_fixture
async def h2_fake(ca: trustme.CA, ca_file: str) -> AsyncIterator[FakeLLMServer]:
    server = await tls_fake(ca, ca_file, [b"h2", b"http/1.1"], 6)
    yield server
    await server.stop()


@pytest_twisted.ensureDeferred
async def test_post_matches_the_agent_backend(h2_fake: FakeLLMServer) -> None:
    a = await nous_twisted.post(h2_fake.chat_url, CHAT, backend="h2")
    b = await nous_twisted.post(h2_fake.chat_url, CHAT, backend="agent")
    for v in (a, b):
        v.pop("id")
        v.pop("created")
    assert a == b
    assert a["choices"][0]["message"]["content"]
    pool = get_h2pool(get_shared())
    assert pool.connections_opened == 1


@pytest_twisted.ensureDeferred
async def test_many_posts_one_connection(h2_fake: FakeLLMServer) -> None:
    ds = [nous_twisted.post(h2_fake.chat_url, CHAT, backend="h2") for _ in range(40)]
    values = await awaitable(gatherResults(ds))
    assert len({v["id"] for v in values}) == 40
    assert h2_fake.connections_made == 1


@pytest_twisted.ensureDeferred
async def test_a_large_body_goes_out_under_flow_control(h2_fake: FakeLLMServer) -> None:
    # 300 KiB of request body: several times the server's initial window.
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 300_000}]}
    value = await nous_twisted.post(h2_fake.chat_url, big, backend="h2")
    assert value["choices"]
    recorded = h2_fake.requests[-1]
    assert len(recorded.body["messages"][0]["content"]) == 300_000


@pytest_twisted.ensureDeferred
async def test_status_error(h2_fake: FakeLLMServer) -> None:
    from nous_twisted.testing import Fault

    h2_fake.inject(Fault(status=429, retry_after=2))
    with pytest.raises(nous_twisted.HTTPStatusError) as e:
        await nous_twisted.post(h2_fake.chat_url, CHAT, backend="h2")
    assert e.value.status == 429 and e.value.retry_after == 2


@pytest_twisted.ensureDeferred
async def test_receive_timeout_resets_the_stream(scripted: ScriptedH2Server) -> None:
    # A stream that never ends: the receive timeout covers the whole reply.
    with pytest.raises(nous_twisted.RequestTimeout) as e:
        await nous_twisted.post(scripted.url("/sse?n=1000&delay=0.05"), CHAT, backend="h2", timeout=0.3)
    assert e.value.phase == "receive"
    await sleep(0.1)
    from h2.errors import ErrorCodes

    assert scripted.resets_received == [ErrorCodes.CANCEL]
    value = await nous_twisted.post(scripted.url("/json"), CHAT, backend="h2")
    assert value["ok"] is True
    assert scripted.connections == 1


@pytest_twisted.ensureDeferred
async def test_cancel_resets_the_stream(scripted: ScriptedH2Server) -> None:
    d = nous_twisted.post(scripted.url("/sse?n=1000&delay=0.05"), CHAT, backend="h2")
    await sleep(0.2)
    d.cancel()
    with pytest.raises(Exception):  # noqa: B017 (CancelledError, whatever wraps it)
        await d
    await sleep(0.1)
    assert len(scripted.resets_received) == 1


def test_h2_without_the_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    # None in sys.modules: "import h2" raises ImportError, as when it is not installed.
    monkeypatch.setitem(sys.modules, "h2", None)
    from nous_twisted.resolve import resolve_http_backend, resolve_stream_backend

    for resolve in (resolve_http_backend, resolve_stream_backend):
        with pytest.raises(BackendConfigError) as e:
            resolve("h2")
        assert "pip install 'nous-twisted[http2]'" in str(e.value)
    monkeypatch.setenv("NOUS_HTTP_STREAM_BACKEND", "h2")
    with pytest.raises(BackendConfigError) as e:
        resolve_stream_backend(None)
    assert "NOUS_HTTP_STREAM_BACKEND" in str(e.value)


def test_h2_resolves_by_name_env_and_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from nous_twisted.backends.h2_stream import H2StreamBackend
    from nous_twisted.resolve import resolve_http_backend, resolve_stream_backend

    assert isinstance(resolve_http_backend("h2"), H2Backend)
    assert isinstance(resolve_stream_backend("h2"), H2StreamBackend)
    monkeypatch.setenv("NOUS_HTTP_BACKEND", "h2")
    assert isinstance(resolve_http_backend(None), H2Backend)
    monkeypatch.delenv("NOUS_HTTP_BACKEND")
    nous_twisted.configure(http_stream_backend="h2")
    assert isinstance(resolve_stream_backend(None), H2StreamBackend)


def test_post_is_gzip_aware() -> None:
    # The collector shares compression.py: a gzip body is expanded (unit check of the sink).
    from twisted.web.http_headers import Headers

    from nous_twisted.h2post import H2PostExchange
    from nous_twisted.request import prepare

    req = prepare("https://example.invalid/v1", CHAT, ())
    ex = H2PostExchange(get_reactor(), req, 5.0)
    ex.response_received(200, Headers({b"content-encoding": [b"gzip"]}))
    ex.data_received(gzip.compress(b'{"ok": 1}'))
    ex.body_ended(True)
    got: list[Any] = []
    ex.result.addCallback(got.append)
    assert got[0].body == b'{"ok": 1}'
