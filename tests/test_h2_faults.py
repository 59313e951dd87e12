"""The fault matrix on h2: the fake LLM server offering h2 over TLS gives the
h2 backends the same events and errors as the agent backends over HTTP/1.1
(the same server, TLS, ALPN http/1.1).  Both reactors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import trustme

import nous_twisted
from nous_twisted import StreamDone, StreamError
from nous_twisted.testing import FakeLLMServer, Fault

from .h2server import tls_options
from .test_h2_stream import BODY, collect, strip_ids


@pytest_twisted.async_yield_fixture
async def servers(ca: trustme.CA, ca_file: str) -> AsyncIterator[tuple[FakeLLMServer, FakeLLMServer]]:
    nous_twisted.configure(ca_bundle=ca_file)
    h2 = await FakeLLMServer(reply_tokens=6, tls=tls_options(ca, [b"h2", b"http/1.1"]), host="localhost").start()
    h1 = await FakeLLMServer(reply_tokens=6, tls=tls_options(ca, [b"http/1.1"]), host="localhost").start()
    yield h2, h1
    await h2.stop()
    await h1.stop()


FAULTS = {
    "429": Fault(status=429, retry_after=3),
    "500-json": Fault(status=500, error_body={"error": {"message": "boom", "type": "server_error"}}),
    "in-stream-error": Fault(error_after_events=2),
    "invalid-json": Fault(invalid_json_at=1),
    "not-an-event-stream": Fault(raw_body=b"<html>portal</html>", headers={"Content-Type": "text/html"}),
    "idle": Fault(stall_after_events=2),
}


def shape(events: list[Any]) -> list[Any]:
    out = []
    for e in strip_ids(events):
        if isinstance(e, StreamError):
            err = e.error
            out.append((type(err).__name__, getattr(err, "status", None), getattr(err, "retry_after", None)))
        else:
            out.append(e)
    return out


@pytest.mark.parametrize("name", list(FAULTS))
@pytest_twisted.ensureDeferred
async def test_stream_faults_match_the_agent_backend(servers: tuple[FakeLLMServer, FakeLLMServer], name: str) -> None:
    h2, h1 = servers
    got = []
    for server, backend in ((h2, "h2"), (h1, "agent")):
        server.inject(FAULTS[name])
        for url in (server.chat_url, server.anthropic_url):
            if url is server.anthropic_url:
                server.inject(FAULTS[name])
            s = nous_twisted.stream(url, BODY, stream_backend=backend, timeout=0.5)
            got.append(shape(await collect(s)))
    assert got[0] == got[2] and got[1] == got[3], got
    assert isinstance(got[0][-1], (tuple, StreamDone))


@pytest.mark.parametrize("name", ["429", "500-json", "not-an-event-stream"])
@pytest_twisted.ensureDeferred
async def test_post_faults_match_the_agent_backend(servers: tuple[FakeLLMServer, FakeLLMServer], name: str) -> None:
    h2, h1 = servers
    errors = []
    for server, backend in ((h2, "h2"), (h1, "agent")):
        server.inject(FAULTS[name])
        try:
            value = await nous_twisted.post(server.chat_url, {"model": "m", "messages": []}, backend=backend)
            errors.append(("value", strip_ids([value])))
        except nous_twisted.NousHTTPError as e:
            errors.append((type(e).__name__, getattr(e, "status", None), getattr(e, "body", None)))
    assert errors[0] == errors[1], errors
