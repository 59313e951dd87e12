"""The shared Agent plans each URL once: one endpoint, and one TLS context,
per host, however many requests and connections."""

from __future__ import annotations

from typing import Any

import OpenSSL.SSL
import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

import nous_twisted
from nous_twisted import PoolSettings, post, stream
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer

from .conftest import BACKENDS, server_tls_options

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def _collect(url: str, backend: str) -> list[Any]:
    return [e async for e in stream(url, {**CHAT, "stream": True}, stream_backend=backend)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_no_tls_context_per_request(ca: Any, ca_file: str, backend: str, monkeypatch: Any) -> None:
    nous_twisted.configure(ca_bundle=ca_file, pool=PoolSettings(max_connections=4))
    async with FakeLLMServer(tls=server_tls_options(ca, "127.0.0.1"), host="127.0.0.1") as server:
        await post(server.chat_url, CHAT, backend=backend)  # the first request builds the one context
        made: list[Any] = []
        original = OpenSSL.SSL.Context.__init__

        def counting(self: Any, *args: Any, **kw: Any) -> None:
            made.append(args)
            original(self, *args, **kw)

        monkeypatch.setattr(OpenSSL.SSL.Context, "__init__", counting)
        for _ in range(10):  # on the pooled connection
            await post(server.chat_url, CHAT, backend=backend)
        # new connections, up to the limit, and streams
        await gatherResults([post(server.chat_url, CHAT, backend=backend) for _ in range(12)])
        events = await _collect(server.chat_url, backend)
        assert isinstance(events[-1], nous_twisted.StreamDone)
        assert server.connections_made >= 2, "the test must open more than one connection"
        assert made == [], f"{len(made)} OpenSSL contexts built after the first request"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_one_endpoint_per_host_one_plan_per_url(fake: FakeLLMServer, backend: str) -> None:
    for path in ("/v1/chat/completions", "/v1/chat/completions?x=1", "/v1/chat/completions#frag"):
        for _ in range(3):
            await post(fake.url + path, CHAT, backend=backend)
    agent = get_shared().agent
    assert len(agent._endpoints) == 1
    assert len(agent._plans) == 3


@pytest_twisted.ensureDeferred
async def test_a_new_ca_bundle_gets_a_new_endpoint(ca: Any, ca_file: str) -> None:
    nous_twisted.configure(ca_bundle=ca_file)
    async with FakeLLMServer(tls=server_tls_options(ca, "127.0.0.1"), host="127.0.0.1") as server:
        await post(server.chat_url, CHAT)
        before = get_shared().agent
        nous_twisted.configure(ca_bundle=None)  # platform roots: the test CA is no longer trusted
        assert get_shared().agent is not before
        with pytest.raises(nous_twisted.TLSError):
            await post(server.chat_url, CHAT)
