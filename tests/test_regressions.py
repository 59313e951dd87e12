"""Regression tests for the defects of issue 7 in the pool, stream and exchange
(items 2, 3, 6, 8, 9, 10, 12, 13, 15, 16, 17), on both backends, written
against the public API and real loopback servers (tests/faultserver.py)."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, ensureDeferred
from twisted.internet.interfaces import IHostnameResolver
from zope.interface import implementer

import nous_twisted
from nous_twisted import (
    AgentStreamBackend,
    BufferOverflow,
    ConnectError,
    PoolSettings,
    ProviderError,
    RequestTimeout,
    StreamDone,
    StreamError,
    TreqStreamBackend,
    post,
    stream,
)

from .faultserver import (
    CLOSE,
    HOLD,
    LAST_CHUNK,
    FaultServer,
    SeenRequest,
    chunk,
    every,
    head,
    open_fds,
    response,
    sleep,
    write,
)
from .helpers import get_reactor, pool_counts, shared_pool, wait_for, wait_for_baseline

BACKENDS = ("treq", "agent")
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
J = (("Content-Type", "application/json"),)
ES = (("Content-Type", "text/event-stream"),)
OK_JSON = b'{"ok": true}'
SSE3 = b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: {"n": 3}\n\ndata: [DONE]\n\n'
SSE3_EVENTS: list[Any] = [{"n": 1}, {"n": 2}, {"n": 3}, StreamDone("stop")]


def by_path(routes: dict[str, Any]) -> Callable[[SeenRequest], Any]:
    """A per-request script chosen by the request's path."""

    def script(req: SeenRequest) -> Any:
        return routes[req.target.split("?")[0]]

    return script


async def collect(s: Any) -> list[Any]:
    out = []
    async for e in s:
        out.append(e)
    return out


def stream_backend(name: str, **kw: Any) -> Any:
    return TreqStreamBackend(**kw) if name == "treq" else AgentStreamBackend(**kw)


def is_asyncio_reactor() -> bool:
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(get_reactor(), AsyncioSelectorReactor)


@pytest.fixture
def short_idle(clean_state: None) -> None:
    nous_twisted.configure(pool=PoolSettings(timeout=100))


# -- item 2: a dying connection is never handed to the next request ---------------------------------------


@pytest.mark.parametrize("when", ["after", "queued"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item2_provider_error_and_chunk_end_in_one_write_then_post(
    backend: str, when: str, short_idle: None
) -> None:
    """The stream's connection is aborted by the in-stream error, yet Twisted
    finishes the response in the same read and offers it to the pool: it must
    never be cached nor handed out; the next post ("after": made once the
    stream ended; "queued": waiting for the only slot meanwhile) reaches the
    server and succeeds."""
    nous_twisted.configure(pool=PoolSettings(max_connections=1 if when == "queued" else 50, timeout=2000))
    error_body = (
        b'data: {"n": 1}\n\n'
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}\n\n'
    )
    routes = {
        # The error event and the chunked terminator in ONE write.
        "/stream": [write(head() + chunk(error_body) + LAST_CHUNK)],
        "/post": [write(response(200, OK_JSON, J))],
    }
    async with FaultServer(by_path(routes)) as server:
        fds = open_fds()
        for round_ in range(5):
            s = stream(server.url("/stream"), BODY, stream_backend=backend, timeout=2, connect_timeout=1)
            queued = post(server.url("/post"), BODY, backend=backend, timeout=2, connect_timeout=1) \
                if when == "queued" else None
            events = await collect(s)
            assert events[0] == {"n": 1}
            assert isinstance(events[-1], StreamError) and isinstance(events[-1].error, ProviderError), events
            seen = len(server.requests)
            d = queued if queued is not None else post(server.url("/post"), BODY, backend=backend, timeout=2,
                                                       connect_timeout=1)
            try:
                reply = await d
            except Exception as e:
                raise AssertionError(
                    f"round {round_}: the post after a stream ended by a provider error failed "
                    f"({'it never reached the server' if len(server.requests) == seen else 'at the server'}): "
                    f"{type(e).__name__}: {e}"
                ) from e
            assert reply == {"ok": True}
            assert server.requests[-1].target == "/post"
            # The aborted connection is not among the idle ones, now or a turn later
            # (idle connections here are only the posts' healthy ones).
            await sleep_(0)
            dead = _dead_idle_connections()
            assert not dead, f"round {round_}: the pool caches {len(dead)} dead connection(s): {dead}"
        nous_twisted.configure(pool=PoolSettings(timeout=100))
        await wait_for_baseline(fds, server, what="item 2")


def _dead_idle_connections() -> list[str]:
    """Idle connections of the shared pool that are closed or closing."""
    out = []
    for conns in shared_pool()._connections.values():
        for c in conns:
            t = c.transport
            if (getattr(c, "state", "QUIESCENT") != "QUIESCENT" or t is None or getattr(t, "disconnecting", False)
                    or getattr(t, "disconnected", False) or getattr(t, "_aborted", False)):
                out.append(f"state={getattr(c, 'state', '?')}")
    return out


# -- item 3: abandoned streams free their slot --------------------------------------------------------------


def _one_event_then_hold() -> list[Any]:
    return [write(head() + chunk(b'data: {"n": 1}\n\n')), HOLD]


@pytest.mark.parametrize("how", ["break", "raise"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item3a_abandoned_async_for_frees_the_slot(backend: str, how: str, short_idle: None) -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=3, timeout=100))
    routes = {"/stream": _one_event_then_hold(), "/post": [write(response(200, OK_JSON, J))]}
    async with FaultServer(by_path(routes)) as server:
        fds = open_fds()

        async def abandon() -> None:
            s = stream(server.url("/stream"), BODY, stream_backend=backend, timeout=30, connect_timeout=1)
            try:
                async for event in s:
                    assert event == {"n": 1}
                    if how == "break":
                        break
                    raise ValueError("the loop body failed")
            except ValueError:
                pass
            # s goes out of scope here, unclosed: no cancel(), no aclose().

        for _ in range(3):
            await abandon()
        gc.collect()
        # Promptly: no leaked slot, the server sees all three connections closed.
        try:
            await wait_for(lambda: server.open_connections == 0 and pool_counts()[0] == 0, timeout=2.0)
        except AssertionError:
            raise AssertionError(
                f"3 abandoned streams still hold their slots after 2 s: pool (open, idle, waiting) = "
                f"{pool_counts()}, server open connections = {server.open_connections}"
            ) from None
        reply = await post(server.url("/post"), BODY, backend=backend, timeout=2, connect_timeout=1)
        assert reply == {"ok": True}
        await wait_for_baseline(fds, server, what="item 3a")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item3a_async_with_break_cancels(backend: str, short_idle: None) -> None:
    async with FaultServer(_one_event_then_hold()) as server:
        fds = open_fds()
        async with stream(server.url(), BODY, stream_backend=backend, timeout=30, connect_timeout=1) as s:
            async for event in s:
                assert event == {"n": 1}
                break
        assert s.done
        assert await s.__anext__() == StreamDone("cancelled")
        await wait_for_baseline(fds, server, what="item 3a async with")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item3b_consumer_that_stops_asking_gets_buffer_overflow(backend: str, short_idle: None) -> None:
    async with FaultServer([write(head()), every(chunk(b'data: {"n": 1}\n\n'), 0.05)]) as server:
        fds = open_fds()
        s = stream(server.url(), BODY, stream_backend=stream_backend(backend, max_pause=0.5), timeout=30,
                   connect_timeout=1)
        # Referenced, never read: after max_pause the connection is aborted.
        try:
            await wait_for(lambda: server.connections_made == 1 and server.open_connections == 0, timeout=3.0)
        except AssertionError:
            raise AssertionError(
                f"a stream not read for 3 s (max_pause=0.5) still has its connection open: server open = "
                f"{server.open_connections}, pool (open, idle, waiting) = {pool_counts()}, done = {s.done}"
            ) from None
        events = await collect(s)
        last = events[-1]
        assert isinstance(last, StreamError) and isinstance(last.error, BufferOverflow), events[-3:]
        msg = str(last.error).lower()
        assert "consumer" in msg and re.search(r"stall|asked|paus", msg), msg
        assert all(e == {"n": 1} for e in events[:-1])
        await wait_for_baseline(fds, server, what="item 3b")


# -- item 4 (backpressure part; the outcomes are in the fault matrix): a compressed stream is decoded in steps ----


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item4_compressed_stream_keeps_backpressure(backend: str, short_idle: None) -> None:
    """~10 KiB of gzip on the wire expanding to 200,000 events: with a consumer
    that takes one event and then waits, no more events are decoded than one
    plain socket read's worth above the watermark (today: all of them)."""
    import gzip as _gzip

    plain = b"".join(b'data: {"i": %d}\n\n' % (i % 10) for i in range(200_000)) + b"data: [DONE]\n\n"
    body = _gzip.compress(plain, 9, mtime=0)
    wire = head(headers=(*ES, ("Content-Encoding", "gzip"))) + b"".join(
        chunk(body[i : i + 16384]) for i in range(0, len(body), 16384)) + LAST_CHUNK
    kw: dict[str, Any] = {"high_water": 100, "low_water": 10} if backend == "treq" else {}
    async with FaultServer([write(wire)]) as server:
        fds = open_fds()
        s = stream(server.url(), BODY, stream_backend=stream_backend(backend, **kw), timeout=5, connect_timeout=1)
        it = s.__aiter__()
        first = await it.__anext__()
        assert first == {"i": 0}, first
        await sleep_(0.3)
        # One 64 KiB read of these 16-byte events is ~4,100 events: the most a
        # bounded decoder may hold beyond the watermark.
        limit = (100 if backend == "treq" else 0) + 4200
        assert s.max_buffered <= limit, f"{s.max_buffered} events decoded ahead of the consumer (limit {limit})"
        s.cancel()
        await wait_for_baseline(fds, server, what="item 4 backpressure")


# -- item 6: every connect-phase limit is RequestTimeout("connect") with its step -------------------------------


async def _outcome(mode: str, url: str, backend: str, connect_timeout: float = 0.5) -> BaseException | None:
    if mode == "post":
        d = post(url, BODY, backend=backend, timeout=5, connect_timeout=connect_timeout)
        d.addTimeout(10, get_reactor())
        try:
            await d
        except Exception as e:
            return e
        return None
    events = await collect(stream(url, BODY, stream_backend=backend, timeout=5, connect_timeout=connect_timeout))
    assert len(events) == 1, events
    assert isinstance(events[0], StreamError), events
    return events[0].error


@pytest.mark.parametrize("mode", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item6_tls_handshake_never_answered(backend: str, mode: str, short_idle: None) -> None:
    async with FaultServer(on_connect=[HOLD]) as server:  # accepts TCP, never answers the ClientHello
        fds = open_fds()
        err = await _outcome(mode, f"https://127.0.0.1:{server.port_number}/v1/chat/completions", backend)
        assert isinstance(err, RequestTimeout), f"{type(err).__name__}: {err}"
        assert err.phase == "connect"
        assert getattr(err, "step", None) == "tls", f"step = {getattr(err, 'step', '<missing>')!r}: {err}"
        await wait_for_baseline(fds, server, what="item 6 tls")


@pytest.mark.parametrize("mode", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item6_tcp_connect_never_completes(backend: str, mode: str, short_idle: None) -> None:
    # A listening socket whose accept queue is full (backlog 0, one connection
    # parked, never accepted): the kernel drops further SYNs, so connect()
    # neither succeeds nor fails.  Loopback only.
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(2):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        await sleep_(0.05)
        fds = open_fds()
        err = await _outcome(mode, f"http://127.0.0.1:{port}/v1/chat/completions", backend)
        assert isinstance(err, RequestTimeout), f"{type(err).__name__}: {err}"
        assert err.phase == "connect"
        assert getattr(err, "step", None) == "tcp", f"step = {getattr(err, 'step', '<missing>')!r}: {err}"
        await wait_for_baseline(fds, None, what="item 6 tcp")
    finally:
        for c in fillers:
            c.close()
        listener.close()


@implementer(IHostnameResolver)
class _Resolver:
    """A name resolver that never answers (``answer=False``) or answers NXDOMAIN."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, addressTypes: Any = None,
                        transportSemantics: str = "TCP") -> Any:
        from twisted.internet._resolver import HostResolution

        self.asked.append(hostName)
        receiver.resolutionBegan(HostResolution(hostName))
        if self.answer:
            receiver.resolutionComplete()  # no address at all: NXDOMAIN
        return receiver


@pytest.mark.parametrize("answer", ["never", "nxdomain"])
@pytest.mark.parametrize("mode", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item6_dns(backend: str, mode: str, answer: str, short_idle: None) -> None:
    reactor = get_reactor()
    resolver = _Resolver(answer == "nxdomain")
    old = reactor.nameResolver
    reactor.installNameResolver(resolver)
    try:
        host = f"{answer}-{backend}-{mode}.example.test"
        fds = open_fds()
        err = await _outcome(mode, f"http://{host}:8080/v1/chat/completions", backend)
        assert resolver.asked, "the custom resolver was not asked"
        if answer == "never":
            assert isinstance(err, RequestTimeout), f"{type(err).__name__}: {err}"
            assert err.phase == "connect"
            assert getattr(err, "step", None) == "dns", f"step = {getattr(err, 'step', '<missing>')!r}: {err}"
        else:
            assert isinstance(err, ConnectError) and not isinstance(err, RequestTimeout), f"{type(err).__name__}: {err}"
        await wait_for_baseline(fds, None, what="item 6 dns")
    finally:
        reactor.installNameResolver(old)


async def sleep_(seconds: float) -> None:
    d: Deferred[None] = Deferred()
    get_reactor().callLater(seconds, d.callback, None)
    await d


# -- item 8: cancel() wins over an already-decoded end ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item8_cancel_at_first_event_of_a_body_read_at_once(backend: str, short_idle: None) -> None:
    async with FaultServer([write(head() + chunk(SSE3) + LAST_CHUNK)]) as server:
        fds = open_fds()
        s = stream(server.url(), BODY, stream_backend=backend, timeout=5, connect_timeout=1)
        got = []
        async for event in s:
            got.append(event)
            if len(got) == 1:
                s.cancel()
        assert got == [{"n": 1}, StreamDone("cancelled")]
        await wait_for_baseline(fds, server, what="item 8")


# -- item 9: a timed-out read cancels that read only ----------------------------------------------------------


def _slow_sse() -> list[Any]:
    return [write(head()), sleep(0.2), write(chunk(b'data: {"n": 1}\n\n')), sleep(0.1),
            write(chunk(b'data: {"n": 2}\n\n')), sleep(0.1), write(chunk(b'data: {"n": 3}\n\ndata: [DONE]\n\n')),
            write(LAST_CHUNK)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item9_deferred_timeout_on_a_read_then_read_on(backend: str, short_idle: None) -> None:
    async with FaultServer(_slow_sse()) as server:
        fds = open_fds()
        s = stream(server.url(), BODY, stream_backend=backend, timeout=5, connect_timeout=1)
        it = s.__aiter__()
        d = ensureDeferred(it.__anext__())
        d.addTimeout(0.05, get_reactor())
        with pytest.raises((TimeoutError, CancelledError)):
            await d
        got = []
        while True:
            event = await it.__anext__()
            got.append(event)
            if isinstance(event, (StreamDone, StreamError)):
                break
        assert got == SSE3_EVENTS
        await wait_for_baseline(fds, server, what="item 9 addTimeout")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item9_asyncio_wait_for_on_a_read_then_read_on(backend: str, short_idle: None) -> None:
    if not is_asyncio_reactor():
        pytest.skip("asyncio.wait_for needs the asyncio reactor (run with --reactor=asyncio)")
    async with FaultServer(_slow_sse()) as server:
        fds = open_fds()
        s = stream(server.url(), BODY, stream_backend=backend, timeout=5, connect_timeout=1)

        async def in_a_task() -> list[Any]:
            assert asyncio.current_task() is not None
            it = s.__aiter__()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(it.__anext__(), 0.05)
            got = []
            while True:
                event = await it.__anext__()
                got.append(event)
                if isinstance(event, (StreamDone, StreamError)):
                    return got

        got = await Deferred.fromFuture(asyncio.ensure_future(in_a_task()))
        assert got == SSE3_EVENTS
        await wait_for_baseline(fds, server, what="item 9 asyncio.wait_for")


# -- item 10: stream backend arguments are checked at construction ---------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "exc"),
    [
        (TreqStreamBackend, {"max_pause": -1}, ValueError),
        (TreqStreamBackend, {"max_pause": float("nan")}, ValueError),
        (TreqStreamBackend, {"max_pause": "30"}, TypeError),
        (TreqStreamBackend, {"max_pause": True}, TypeError),
        (TreqStreamBackend, {"max_event_bytes": "x"}, TypeError),
        (TreqStreamBackend, {"max_event_bytes": 0}, ValueError),
        (TreqStreamBackend, {"max_event_bytes": True}, TypeError),
        (TreqStreamBackend, {"max_event_bytes": 1.5}, TypeError),
        (TreqStreamBackend, {"high_water": 0}, ValueError),
        (TreqStreamBackend, {"high_water": True}, TypeError),
        (TreqStreamBackend, {"low_water": -1}, ValueError),
        (TreqStreamBackend, {"low_water": False}, TypeError),
        (TreqStreamBackend, {"high_water": "1000"}, TypeError),
        (AgentStreamBackend, {"max_event_bytes": 0}, ValueError),
        (AgentStreamBackend, {"max_event_bytes": -5}, ValueError),
        (AgentStreamBackend, {"max_event_bytes": "x"}, TypeError),
        (AgentStreamBackend, {"max_event_bytes": True}, TypeError),
        (AgentStreamBackend, {"max_pause": float("nan")}, ValueError),
        (AgentStreamBackend, {"max_pause": -1}, ValueError),
        (AgentStreamBackend, {"max_pause": "x"}, TypeError),
    ],
    ids=lambda v: repr(v) if not isinstance(v, type) else v.__name__,
)
def test_item10_bad_stream_backend_arguments(cls: type, kwargs: dict[str, Any], exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        cls(**kwargs)
    name = next(iter(kwargs))
    assert name in str(info.value), f"the message should name {name}: {info.value}"


def test_item10_good_stream_backend_arguments() -> None:
    TreqStreamBackend(high_water=10, low_water=0, max_pause=0.5, max_event_bytes=1024)
    AgentStreamBackend(max_event_bytes=1024, max_pause=0.5)
    AgentStreamBackend(max_pause=30)


# -- item 12: no cookie is ever replayed --------------------------------------------------------------------------


@pytest.mark.parametrize("second", ["post", "stream"])
@pytest.mark.parametrize("first", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item12_set_cookie_is_never_sent_back(backend: str, first: str, second: str, short_idle: None) -> None:
    cookie = (("Set-Cookie", "session=s3cr3t-cookie; Path=/"), ("Set-Cookie", "other=v2; Path=/; Max-Age=3600"))
    routes = {
        "/post": [write(response(200, OK_JSON, (*J, *cookie)))],
        "/stream": [write(head(headers=(*ES, *cookie)) + chunk(SSE3) + LAST_CHUNK)],
    }
    async with FaultServer(by_path(routes)) as server:
        for mode in (first, second, second):
            if mode == "post":
                assert await post(server.url("/post"), BODY, backend=backend, timeout=2, connect_timeout=1) == {"ok": True}
            else:
                events = await collect(stream(server.url("/stream"), BODY, stream_backend=backend, timeout=2,
                                              connect_timeout=1))
                assert events == SSE3_EVENTS
        assert len(server.requests) == 3
        for req in server.requests:
            raw = req.raw.lower()
            assert b"cookie" not in raw and b"s3cr3t" not in raw, req.raw[:2000]


# -- item 13: a normal large header still works (the oversized ones are in the fault matrix) ----------------------


@pytest.mark.parametrize("mode", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item13_ordinary_big_headers_still_work(backend: str, mode: str, short_idle: None) -> None:
    extra = (("X-Request-Trace", "t" * 8192), *((f"X-Meta-{i}", "m" * 100) for i in range(100)))
    routes = {
        "/post": [write(response(200, OK_JSON, (*J, *extra)))],
        "/stream": [write(head(headers=(*ES, *extra)) + chunk(SSE3) + LAST_CHUNK)],
    }
    async with FaultServer(by_path(routes)) as server:
        fds = open_fds()
        if mode == "post":
            assert await post(server.url("/post"), BODY, backend=backend, timeout=2, connect_timeout=1) == {"ok": True}
        else:
            s = stream(server.url("/stream"), BODY, stream_backend=backend, timeout=2, connect_timeout=1)
            assert await collect(s) == SSE3_EVENTS
        await wait_for_baseline(fds, server, what="item 13")


# -- item 15: no warning at shutdown, even under -W error ----------------------------------------------------------

_SCRIPT = """
import sys
if sys.argv[1] == "asyncio":
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
from twisted.internet import task
from twisted.internet.protocol import Factory, Protocol

import nous_twisted


class Answer(Protocol):
    def dataReceived(self, data):
        if b"\\r\\n\\r\\n" in data:
            self.transport.write(
                b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: 12\\r\\n\\r\\n"
                b'{"ok": true}'
            )


def main(reactor):
    factory = Factory.forProtocol(Answer)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    d = nous_twisted.post("http://127.0.0.1:%d/v1/x" % port.getHost().port, {"a": 1}, backend=sys.argv[2])

    def check(value):
        assert value == {"ok": True}, value
        return port.stopListening().addCallback(release_spare_fd)

    def release_spare_fd(_):
        # A listening Twisted process keeps one spare fd open on /dev/null
        # (tcp._reservedFD, to shed connections on EMFILE) and never closes
        # it: on Python 3.10 that is a ResourceWarning at exit.  It is this
        # script's server's, not the library's, whose own must stay visible.
        from twisted.internet import tcp

        spare = tcp._reservedFD
        if spare._fileDescriptor is not None:
            spare._fileDescriptor.close()
            spare._fileDescriptor = None

    return d.addCallback(check)


task.react(main)
"""


@pytest.mark.parametrize("reactor_name", ["default", "asyncio"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_item15_no_warning_at_shutdown_under_W_error(backend: str, reactor_name: str, tmp_path: Any) -> None:
    script = tmp_path / "one_post.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-W", "error", str(script), reactor_name, backend],
                          capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0 and proc.stderr == "", f"exit {proc.returncode}, stderr:\n{proc.stderr[-3000:]}"


# -- item 16: cancelling queued requests is O(1) ----------------------------------------------------------------

QUEUED = 16_000
# The pool counter this test reads when present: queue entries examined to
# take cancelled waiters out (mark-and-skip keeps it <= one step per waiter).
COUNTER = "waiter_scans"


@pytest_twisted.ensureDeferred
async def test_item16_cancelling_16k_queued_requests(short_idle: None) -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=1, timeout=100))
    async with FaultServer([HOLD]) as server:
        fds = open_fds()
        first = post(server.url(), BODY, backend="agent", timeout=60, connect_timeout=60)
        first.addErrback(lambda f: f.trap(CancelledError))
        await wait_for(lambda: len(server.requests) == 1, timeout=2.0)
        queued = [post(server.url(), BODY, backend="agent", timeout=60, connect_timeout=60) for _ in range(QUEUED)]
        cancelled: list[Any] = []
        for d in queued:
            d.addErrback(lambda f: cancelled.append(f.trap(CancelledError)))
        assert pool_counts()[2] == QUEUED
        pool = shared_pool()
        before = getattr(pool, COUNTER, None)
        order = list(range(QUEUED))
        random.Random(16).shuffle(order)
        for i in order:
            queued[i].cancel()
        assert len(cancelled) == QUEUED
        assert pool_counts()[2] == 0
        assert len(server.requests) == 1  # none of the cancelled ones was sent
        after = getattr(pool, COUNTER, None)
        first.cancel()
        await wait_for_baseline(fds, server, what="item 16")
        assert before is not None and after is not None, f"the pool no longer counts its queue steps (pool.{COUNTER})"
        assert after - before <= 2 * QUEUED, f"{after - before} queue steps for {QUEUED} cancels: not O(1) each"


# -- item 17: a connection the server closed is not reused ---------------------------------------------------------


@pytest.mark.parametrize("pattern", ["stream_then_post", "post_then_post"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_item17_server_closes_after_each_reply_without_saying_so(
    backend: str, pattern: str, short_idle: None
) -> None:
    keep = (("Keep-Alive", "timeout=5"),)
    routes = {
        "/post": [write(response(200, OK_JSON, (*J, *keep))), CLOSE],
        "/stream": [write(head(headers=(*ES, *keep)) + chunk(SSE3) + LAST_CHUNK), CLOSE],
    }
    nous_twisted.configure(pool=PoolSettings(timeout=5000))
    async with FaultServer(by_path(routes)) as server:
        fds = open_fds()
        failures: list[str] = []
        for i in range(20):
            if pattern == "stream_then_post":
                events = await collect(stream(server.url("/stream"), BODY, stream_backend=backend, timeout=2,
                                              connect_timeout=1))
                if events != SSE3_EVENTS:
                    failures.append(f"{i}: stream: {events[-1]!r}")
            else:
                try:
                    await post(server.url("/post"), BODY, backend=backend, timeout=2, connect_timeout=1)
                except Exception as e:
                    failures.append(f"{i}: first post: {type(e).__name__}: {e}")
            try:
                reply = await post(server.url("/post"), BODY, backend=backend, timeout=2, connect_timeout=1)
                assert reply == {"ok": True}
            except Exception as e:
                failures.append(f"{i}: next post: {type(e).__name__}: {e}")
        assert not failures, f"{len(failures)} of 40 calls failed; first: {failures[:3]}"
        nous_twisted.configure(pool=PoolSettings(timeout=100))
        await wait_for_baseline(fds, server, what="item 17")

