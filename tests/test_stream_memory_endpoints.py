"""The shared Agent's endpoints for IP-literal hosts (issue 8: memory and CPU
per new connection): a plain TCP endpoint, no name resolution; hostnames
keep Twisted's HostnameEndpoint.  Then a real loopback stream and post on
each kind, and a refused connection, so the errors are the same either way."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import URI, BrowserLikePolicyForHTTPS, HTTPConnectionPool

import nous_twisted
from nous_twisted import ConnectError, StreamDone, StreamError, stream
from nous_twisted.endpoints import SharedAgent
from nous_twisted.testing import FakeLLMServer

from .helpers import refused_url

CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def endpoint_for(url: bytes) -> Any:
    clock = MemoryReactorClock()
    agent = SharedAgent(clock, BrowserLikePolicyForHTTPS(), HTTPConnectionPool(clock, persistent=False))
    return agent._getEndpoint(URI.fromBytes(url))


def test_an_ipv4_literal_gets_a_tcp_endpoint() -> None:
    assert type(endpoint_for(b"http://127.0.0.1:8000/v1")) is TCP4ClientEndpoint


def test_an_ipv6_literal_gets_a_tcp6_endpoint() -> None:
    assert type(endpoint_for(b"http://[::1]:8000/v1")) is TCP6ClientEndpoint


def test_https_to_an_ip_literal_is_wrapped_in_tls() -> None:
    endpoint = endpoint_for(b"https://10.0.0.5/v1")
    assert type(endpoint).__name__ == "_WrapperEndpoint"
    assert type(endpoint._wrappedEndpoint) is TCP4ClientEndpoint


@pytest.mark.parametrize("url", [b"http://localhost:8000/v1", b"https://api.example.com/v1", b"http://1.2.3/"])
def test_a_hostname_keeps_hostname_endpoint(url: bytes) -> None:
    endpoint = endpoint_for(url)
    inner = getattr(endpoint, "_wrappedEndpoint", endpoint)
    assert type(inner) is HostnameEndpoint


@pytest.mark.parametrize("backend", ["treq", "agent"])
@pytest_twisted.ensureDeferred
async def test_streams_and_posts_on_an_ip_literal(backend: str) -> None:
    async with FakeLLMServer(reply_tokens=3) as server:
        assert "127.0.0.1" in server.chat_url
        events = [e async for e in stream(server.chat_url, CHAT, stream_backend=backend)]
        assert events[-1] == StreamDone("stop") and len(events) > 1
        reply = await nous_twisted.post(server.chat_url, {"model": "m", "messages": []}, backend=backend)
        assert isinstance(reply, dict)


@pytest.mark.parametrize("backend", ["treq", "agent"])
@pytest_twisted.ensureDeferred
async def test_a_refused_ip_literal_is_a_connect_error(backend: str) -> None:
    url = await refused_url()
    assert "127.0.0.1" in url
    events = [e async for e in stream(url, CHAT, stream_backend=backend)]
    assert len(events) == 1 and isinstance(events[0], StreamError)
    assert isinstance(events[0].error, ConnectError)
