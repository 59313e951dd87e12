"""The h2 backends against hypercorn, an HTTP/2 server independent of ours
(a small ASGI app streaming SSE, in a subprocess).  Both reactors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
import trustme
from twisted.internet.defer import Deferred, gatherResults

import nous_twisted
from nous_twisted import StreamDone, StreamError
from nous_twisted.h2pool import get_h2pool
from nous_twisted.reactors import awaitable
from nous_twisted.shared import get_shared

from .helpers import sleep
from .test_h2_stream import BODY, collect

pytest.importorskip("hypercorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def hypercorn_server(tmp_path_factory: Any) -> Iterator[tuple[str, trustme.CA]]:
    ca = trustme.CA()
    d = tmp_path_factory.mktemp("hyper")
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    port = _free_port()
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "--certfile", str(d / "cert.pem"), "--keyfile", str(d / "key.pem"),
         "--bind", f"127.0.0.1:{port}", "--log-level", "warning", "h2_asgi_app:app"],
        cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    import time

    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                proc.kill()
                pytest.fail(f"hypercorn did not start: {err}")
            time.sleep(0.1)
    yield f"https://localhost:{port}", ca
    proc.terminate()
    try:
        proc.wait(2)
    except subprocess.TimeoutExpired:  # its graceful shutdown waits for clients
        proc.kill()
        proc.wait(5)


@pytest_twisted.async_yield_fixture
async def base(hypercorn_server: tuple[str, trustme.CA], tmp_path: Any) -> AsyncIterator[str]:
    url, ca = hypercorn_server
    path = str(tmp_path / "ca.pem")
    ca.cert_pem.write_to_path(path)
    nous_twisted.configure(ca_bundle=path)
    yield url
    await sleep(0)


@pytest_twisted.ensureDeferred
async def test_stream_over_hypercorn_h2(base: str) -> None:
    s = nous_twisted.stream(base + "/v1/chat/completions?n=5", BODY, stream_backend="h2")
    events = await collect(s)
    assert [e["choices"][0]["delta"]["content"] for e in events[:-1]] == [f"t{i}" for i in range(5)]
    assert events[-1] == StreamDone("stop")
    assert s.headers is not None and s.headers["x-http-version"] == "2"
    agent = await collect(nous_twisted.stream(base + "/v1/chat/completions?n=5", BODY, stream_backend="agent"))
    assert agent == events


@pytest_twisted.ensureDeferred
async def test_many_streams_and_a_404_over_hypercorn(base: str) -> None:
    ds = [
        Deferred.fromCoroutine(collect(nous_twisted.stream(base + "/v1/chat/completions?n=20&delay=0.005", BODY, stream_backend="h2")))
        for _ in range(40)
    ]
    results = await awaitable(gatherResults(ds))
    assert all(len(r) == 21 and r[-1] == StreamDone("stop") for r in results)
    assert get_h2pool(get_shared()).connections_opened == 1
    events = await collect(nous_twisted.stream(base + "/nope", BODY, stream_backend="h2"))
    assert isinstance(events[-1], StreamError) and events[-1].error.status == 404
    with pytest.raises(nous_twisted.HTTPStatusError):
        await nous_twisted.post(base + "/nope", {}, backend="h2")


@pytest_twisted.ensureDeferred
async def test_cancel_over_hypercorn_keeps_the_connection(base: str) -> None:
    a = nous_twisted.stream(base + "/v1/chat/completions?n=200&delay=0.01", BODY, stream_backend="h2")
    await a.__anext__()
    a.cancel()
    assert await collect(a) == [StreamDone("cancelled")]
    ok = await collect(nous_twisted.stream(base + "/v1/chat/completions?n=3", BODY, stream_backend="h2"))
    assert ok[-1] == StreamDone("stop")
    assert get_h2pool(get_shared()).connections_opened == 1
