"""The proxy settings through the public calls: per call, Client, configure(),
environment, and their precedence, on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
import trustme

import nous_twisted
from nous_twisted import Client, StreamDone
from nous_twisted.testing import FakeLLMServer

from .conftest import BACKENDS, server_tls_options
from .proxyserver import ScriptProxy

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy")

pytestmark = pytest.mark.parametrize("backend", BACKENDS)


@pytest_twisted.async_yield_fixture
async def tls_fake(ca: trustme.CA, ca_file: str) -> AsyncIterator[FakeLLMServer]:
    nous_twisted.configure(ca_bundle=ca_file)
    server = await FakeLLMServer(tls=server_tls_options(ca, "localhost"), host="localhost").start()
    yield server
    await server.stop()


@pytest_twisted.ensureDeferred
async def test_precedence_call_client_config_environment(
    backend: str, tls_fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    env_proxy, client_proxy, config_proxy = ScriptProxy().listen(), ScriptProxy().listen(), ScriptProxy().listen()
    try:
        monkeypatch.setenv("HTTPS_PROXY", env_proxy.url())
        # the environment, through the module-level call
        assert (await nous_twisted.post(tls_fake.chat_url, CHAT, backend=backend))["choices"]
        assert env_proxy.tunnels == 1
        # configure() beats the environment
        nous_twisted.configure(proxy=config_proxy.url())
        await nous_twisted.post(tls_fake.chat_url, CHAT, backend=backend)
        assert config_proxy.tunnels == 1 and env_proxy.tunnels == 1
        # the Client's beats configure()
        client = Client(tls_fake.url, proxy=client_proxy.url(), backend=backend, stream_backend=backend)
        await client.post("/v1/chat/completions", CHAT)
        events = [e async for e in client.stream("/v1/chat/completions", {**CHAT, "stream": True})]
        assert events[-1] == StreamDone("stop")
        assert client_proxy.tunnels >= 1 and config_proxy.tunnels == 1
        # per call: None is a direct connection, whatever else is set
        before = (env_proxy.tunnels, client_proxy.tunnels, config_proxy.tunnels)
        await client.post("/v1/chat/completions", CHAT, proxy=None)
        await nous_twisted.post(tls_fake.chat_url, CHAT, backend=backend, proxy=None)
        assert (env_proxy.tunnels, client_proxy.tunnels, config_proxy.tunnels) == before
    finally:
        nous_twisted.configure(proxy=None)
        for p in (env_proxy, client_proxy, config_proxy):
            await p.stop()


@pytest_twisted.ensureDeferred
async def test_trust_env_false_and_no_proxy(
    backend: str, tls_fake: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    stall = ScriptProxy(mode="stall").listen()
    try:
        monkeypatch.setenv("HTTPS_PROXY", stall.url())
        # the Client ignores the environment
        assert (await Client(trust_env=False, backend=backend).post(tls_fake.chat_url, CHAT))["choices"]
        # and so does every call once configured so
        nous_twisted.configure(trust_env=False)
        assert (await nous_twisted.post(tls_fake.chat_url, CHAT, backend=backend))["choices"]
        nous_twisted.configure(trust_env=True)
        # NO_PROXY names the target: direct
        monkeypatch.setenv("NO_PROXY", "localhost")
        assert (await nous_twisted.post(tls_fake.chat_url, CHAT, backend=backend))["choices"]
        assert not stall.heads
    finally:
        nous_twisted.configure(trust_env=True)
        await stall.stop()


def test_client_proxy_is_checked_at_construction(backend: str) -> None:
    with pytest.raises(ValueError) as info:
        Client(proxy="socks5://user:hunter2-secret@127.0.0.1:1080")
    assert "hunter2-secret" not in str(info.value) and "Client(proxy=...)" in str(info.value)
    with pytest.raises(TypeError, match="trust_env must be True or False"):
        Client(trust_env="yes")  # type: ignore[arg-type]
    text = repr(Client(proxy="http://user:hunter2-secret@127.0.0.1:3128"))
    assert "hunter2-secret" not in text and "127.0.0.1:3128" in text
