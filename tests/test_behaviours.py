"""Behaviours no other test runs (issue 12): each against real loopback servers,
on both backends where it applies, under both reactors.

consume() cancelled or failing; an EventStream registered as the producer of a
real TCP transport; ``reactor=`` and ``agent=`` given per call; ``shutdown()``
(queued requests, its bounded wait, before the reactor stops); ``ca_bundle``
changed on a live pool; the size limits of a ``post`` reply and of a stream's
error body; a DNS failure; EventStream misuse; ``configure()`` with every
accepted backend form; Gemini/Anthropic error details end to end; redaction of
the less common secret headers; NUL in header values.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from typing import Any, ClassVar

import orjson
import pytest
import pytest_twisted
import trustme
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHostnameResolver, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent
from zope.interface import directlyProvides, implementer, providedBy

import nous_twisted
from nous_twisted import (
    AgentBackend,
    AgentStreamBackend,
    BufferOverflow,
    ConnectError,
    HTTPStatusError,
    IHTTPBackend,
    IStreamBackend,
    PoolSettings,
    StreamDone,
    StreamError,
    TLSError,
    TransportError,
    post,
    stream,
)
from nous_twisted.request import prepare
from nous_twisted.testing import FakeLLMServer, Fault, reply_tokens

from .conftest import server_tls_options
from .faultserver import HOLD, LAST_CHUNK, FaultServer, SeenRequest, chunk, head, response, write
from .helpers import FloodServer, LogCapture, get_reactor, pool_counts, shared_pool, sleep, wait_for

BACKENDS = ("treq", "agent")
CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
ASK = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MiB = 1024 * 1024


def text_of(events: list[Any]) -> str:
    out = []
    for e in events:
        if isinstance(e, dict) and e.get("choices"):
            out.append(e["choices"][0]["delta"].get("content") or "")
    return "".join(out)


def within(d: Deferred[Any], seconds: float) -> Deferred[Any]:
    """``d``, failing with TimeoutError after ``seconds`` instead of hanging
    the suite when the library never fires it (a bound, not a measurement)."""
    return d.addTimeout(seconds, get_reactor())


async def stopped(port: Any) -> None:
    d = port.stopListening()
    if d is not None:
        await d


async def outcome(d: Deferred[Any]) -> Any:
    """The value of ``d``, or the exception it failed with."""
    try:
        return await d
    except Exception as e:  # noqa: BLE001 - the caller checks the type
        return e


# -- consume(): cancelling its Deferred -----------------------------------------------------------------------


@pytest.mark.parametrize("when", ["waiting_on_the_network", "inside_on_event"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_cancelling_the_consume_deferred_cancels_the_stream(backend: str, when: str) -> None:
    """Cancelling consume()'s Deferred does what cancel() does: the connection
    closes at once, no data event follows, and the stream ends with
    StreamDone("cancelled"), the terminal event consume() fires with."""
    async with FakeLLMServer(reply_tokens=500, token_delay=0.01) as slow:
        seen: list[Any] = []
        held: list[Deferred[None]] = []

        def on_event(event: Any) -> Deferred[None] | None:
            seen.append(event)
            if when == "inside_on_event" and len(seen) == 2:
                d: Deferred[None] = Deferred()
                held.append(d)
                return d
            return None

        s = stream(slow.chat_url, CHAT, stream_backend=backend)
        done = s.consume(on_event)
        await wait_for(lambda: len(seen) >= 2)
        assert slow.open_connections == 1
        before = len(seen)
        done.cancel()
        if held:
            held[0].callback(None)  # the consumer finishes its work on the last event
        result = await outcome(done)
        assert s.done
        # Nothing but the terminal event after the cancel.
        assert all(isinstance(e, dict) for e in seen[:before])
        assert [e for e in seen[before:] if not isinstance(e, StreamDone)] == []
        assert result == StreamDone("cancelled"), f"consume() fired with {result!r}"
        assert seen[-1] == StreamDone("cancelled"), f"on_event's last event: {seen[-1]!r}"
        await wait_for(lambda: slow.open_connections == 0, timeout=2.0)
        await wait_for(lambda: pool_counts() == (0, 0, 0), timeout=2.0)


# -- consume(): a callback whose Deferred fails or whose coroutine raises ---------------------------------------


class ConsumerBug(Exception):
    pass


FAILING = ["raises", "already_failed_deferred", "deferred_fails_later", "coroutine_raises_at_once",
           "coroutine_raises_after_await"]


def failing_callback(how: str, seen: list[Any], at: int) -> Any:
    """An on_event that records events and fails, ``how``, on event number ``at``."""
    bug = ConsumerBug(f"consumer bug ({how})")

    if how.startswith("coroutine"):

        async def coro(event: Any) -> None:
            seen.append(event)
            if len(seen) == at:
                if how == "coroutine_raises_after_await":
                    await sleep(0.001)
                raise bug
            await sleep(0)

        return coro, bug

    def plain(event: Any) -> Any:
        seen.append(event)
        if len(seen) != at:
            return None
        if how == "raises":
            raise bug
        if how == "already_failed_deferred":
            return fail(bug)
        d: Deferred[None] = Deferred()
        get_reactor().callLater(0, d.errback, bug)
        return d

    return plain, bug


@pytest.mark.parametrize("how", FAILING)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_consume_callback_failure_fails_the_deferred_and_closes_the_stream(backend: str, how: str) -> None:
    async with FakeLLMServer(reply_tokens=500, token_delay=0.005) as slow:
        seen: list[Any] = []
        on_event, bug = failing_callback(how, seen, at=3)
        s = stream(slow.chat_url, CHAT, stream_backend=backend)
        result = await outcome(s.consume(on_event))
        assert result is bug, f"consume() ended with {result!r}"
        assert s.done
        await wait_for(lambda: slow.open_connections == 0, timeout=2.0)
        await wait_for(lambda: pool_counts() == (0, 0, 0), timeout=2.0)
        # on_event is never called again after its failure.
        assert len(seen) == 3 and all(isinstance(e, dict) for e in seen), seen


# -- IPushProducer registered with a real consumer ---------------------------------------------------------------


class _Relay(Protocol):
    """The server side of a relay: on connect it opens a stream and writes each
    event to its own TCP transport as a JSON line, with the stream registered
    as that transport's streaming producer."""

    factory: _RelayFactory

    def connectionMade(self) -> None:
        f = self.factory
        f.relays.append(self)
        self.written = 0
        self.stream = stream(f.url, CHAT, stream_backend=f.backend)
        self.transport.registerProducer(self.stream, True)  # type: ignore[union-attr]
        self.done = self.stream.consume(self.forward)

    def forward(self, event: Any) -> None:
        if isinstance(event, dict) and self.transport is not None and self.connected:
            self.transport.write(orjson.dumps(event) + b"\n")
            self.written += 1


class _RelayFactory(Factory):
    protocol = _Relay
    noisy = False

    def __init__(self, url: str, backend: str) -> None:
        self.url = url
        self.backend = backend
        self.relays: list[_Relay] = []


class _Reader(Protocol):
    """The far end of the relay: reads nothing until told to."""

    def __init__(self) -> None:
        self.received = 0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_event_stream_as_the_producer_of_a_real_tcp_transport(backend: str) -> None:
    reactor = get_reactor()
    flood = FloodServer(event_size=1024).listen()
    relay_port = reactor.listenTCP(0, _RelayFactory(flood.url, backend), interface="127.0.0.1")
    reader = _Reader()
    factory = ClientFactory.forProtocol(lambda: reader)
    factory.noisy = False
    try:
        reactor.connectTCP("127.0.0.1", relay_port.getHost().port, factory)
        relays = relay_port.factory.relays
        await wait_for(lambda: bool(relays))
        relay = relays[0]
        s = relay.stream
        assert IPushProducer.providedBy(s)
        # The reader does not read: the relay's send buffer fills and its
        # transport pauses the stream.
        await wait_for(lambda: relay.transport.producerPaused, timeout=10.0)
        written_at_pause = relay.written
        # Backpressure goes all the way up: events are decoded and held, the
        # stream stops reading, and the flood server's own transport pauses.
        await wait_for(lambda: s.buffered > 0 and flood.connections[0].paused, timeout=10.0)
        assert relay.transport.producerPaused
        assert relay.written == written_at_pause, "events were delivered while the consumer held the stream paused"
        assert not s.done
        # The reader reads again: the transport drains and resumes the stream.
        reader.transport.resumeProducing()  # type: ignore[union-attr]
        await wait_for(lambda: relay.written > written_at_pause + 100, timeout=10.0)
        assert reader.received > 0
        # It stops reading again, and then goes away while the stream is
        # paused: the transport calls stopProducing(), which cancels the
        # stream (a paused one too) and closes its upstream connection.
        reader.transport.pauseProducing()  # type: ignore[union-attr]
        await wait_for(lambda: relay.transport.producerPaused, timeout=10.0)
        reader.transport.loseConnection()  # type: ignore[union-attr]
        await reader.lost
        result = await outcome(within(relay.done, 2.0))
        assert result == StreamDone("cancelled"), f"the relay's consume() ended with {result!r}"
        assert s.done
        await wait_for(lambda: flood.open == 0, timeout=5.0)
        await wait_for(lambda: pool_counts() == (0, 0, 0), timeout=2.0)
    finally:
        if reader.transport is not None and reader.connected:
            reader.transport.abortConnection()  # type: ignore[attr-defined]
        await stopped(relay_port)
        await flood.stop()


@pytest.mark.parametrize("reader", ["consume", "async_for"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_stop_producing_a_paused_stream_ends_it(backend: str, reader: str) -> None:
    """What a transport does when its peer goes away while it holds its
    producer paused: stopProducing() without resumeProducing()."""
    async with FakeLLMServer(reply_tokens=500, token_delay=0.01) as slow:
        s = stream(slow.chat_url, CHAT, stream_backend=backend)
        seen: list[Any] = []

        def on_event(event: Any) -> None:
            seen.append(event)
            if len(seen) == 2:
                s.pauseProducing()

        if reader == "consume":
            done = s.consume(on_event)
        else:

            async def read() -> Any:
                async for event in s:
                    on_event(event)
                return seen[-1]

            done = Deferred.fromCoroutine(read())
        await wait_for(lambda: len(seen) == 2)
        s.stopProducing()
        result = await outcome(within(done, 2.0))
        assert result == StreamDone("cancelled"), f"a stream stopped while paused ended with {result!r}"
        assert seen[2:] == [StreamDone("cancelled")], seen[2:]
        await wait_for(lambda: slow.open_connections == 0, timeout=2.0)


# -- reactor= given per call -------------------------------------------------------------------------------------


class ReactorView:
    """The running reactor under another identity, counting the methods taken
    from it.  Everything is done by the real reactor; only the identity
    differs, so a library that used the global reactor instead of the one
    given would put its pool, timers and connections on the wrong one."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.used: Counter[str] = Counter()
        directlyProvides(self, providedBy(real))

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._real, name)
        if callable(value):
            self.used[name] += 1
        return value


@pytest.fixture
def view() -> Any:
    v = ReactorView(get_reactor())
    yield v
    pytest_twisted.blockon(nous_twisted.shutdown(reactor=v))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_reactor_argument_of_post(fake: FakeLLMServer, view: Any, backend: str) -> None:
    reply = await post(fake.chat_url, ASK, backend=backend, reactor=view)
    assert reply["object"] == "chat.completion"
    assert view.used["connectTCP"] == 1  # the connection was made by the reactor given
    assert view.used["callLater"] >= 1  # and the receive timer set on it
    assert pool_counts(view) == (1, 1, 0)  # its own pool keeps the connection
    assert pool_counts() == (0, 0, 0)  # the global reactor's pool never saw it


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_reactor_argument_of_stream(fake: FakeLLMServer, view: Any, backend: str) -> None:
    events = [e async for e in stream(fake.chat_url, CHAT, stream_backend=backend, reactor=view)]
    assert events[-1] == StreamDone("stop")
    assert text_of(events) == "".join(reply_tokens(fake.reply_tokens))
    assert view.used["connectTCP"] == 1
    assert view.used["callLater"] >= 1  # the idle timer
    assert pool_counts(view) == (1, 1, 0)
    assert pool_counts() == (0, 0, 0)


@pytest_twisted.ensureDeferred
async def test_reactor_argument_of_shutdown(view: Any) -> None:
    """shutdown(reactor=R) ends R's streams and closes R's connections, and
    only those."""
    async with FakeLLMServer(reply_tokens=500, token_delay=0.01) as slow:
        mine = stream(slow.chat_url, CHAT, reactor=view)
        other = stream(slow.chat_url, CHAT)
        await wait_for(lambda: mine.buffered > 0 and other.buffered > 0)
        assert slow.open_connections == 2
        await nous_twisted.shutdown(reactor=view)
        assert mine.done and not other.done
        events = [e async for e in mine]
        assert isinstance(events[-1], StreamError) and type(events[-1].error) is TransportError, events[-1]
        assert "shutdown()" in str(events[-1].error)
        await wait_for(lambda: slow.open_connections == 1, timeout=2.0)
        assert pool_counts() == (1, 0, 0)  # the global reactor's stream still runs
        assert not other.done
        other.cancel()


# -- stream(agent=...) ---------------------------------------------------------------------------------------------


@implementer(IAgent)
class CountingAgent:
    """A caller's own agent: a real Agent on a pool of its own, counting requests."""

    def __init__(self, reactor: Any) -> None:
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.pool)
        self.requests: list[bytes] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        self.requests.append(uri)
        return self.agent.request(method, uri, headers, bodyProducer)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_stream_through_a_callers_agent(fake: FakeLLMServer, backend: str) -> None:
    agent = CountingAgent(get_reactor())
    try:
        events = [e async for e in stream(fake.chat_url + "?x=1", CHAT, stream_backend=backend, agent=agent)]
        assert events[-1] == StreamDone("stop")
        assert text_of(events) == "".join(reply_tokens(fake.reply_tokens))
        assert agent.requests == [fake.chat_url.encode() + b"?x=1"]
        # The connection went back to the caller's pool, not the shared one.
        assert sum(len(c) for c in agent.pool._connections.values()) == 1
        assert pool_counts() == (0, 0, 0)
        # A failure through it is a StreamError like any other.
        fake.inject(Fault(status=503))
        events = [e async for e in stream(fake.chat_url, CHAT, stream_backend=backend, agent=agent)]
        assert len(events) == 1 and isinstance(events[0], StreamError)
        assert isinstance(events[0].error, HTTPStatusError) and events[0].error.status == 503
        assert len(agent.requests) == 2
    finally:
        await agent.pool.closeCachedConnections()


# -- shutdown(): queued requests, the bounded wait, before the reactor stops -----------------------------------


@pytest_twisted.ensureDeferred
async def test_shutdown_ends_requests_queued_for_a_pool_slot(fake: FakeLLMServer) -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=1))
    fake.inject(Fault(stall_after_events=1))
    holder = stream(fake.chat_url, CHAT)
    await wait_for(lambda: holder.buffered > 0)
    queued_posts = [post(fake.chat_url, ASK, backend=b) for b in BACKENDS]
    queued_streams = [stream(fake.chat_url, CHAT, stream_backend=b) for b in BACKENDS]
    assert shared_pool().waiting() == 4
    pool = shared_pool()
    await nous_twisted.shutdown()
    # The shutdown's Deferred fires once the connections are closed.
    assert pool.open_connections() == 0 and pool.waiting() == 0
    for d in queued_posts:
        err = await outcome(within(d, 2.0))
        assert isinstance(err, TransportError), f"a queued post ended with {err!r}"
        assert "shutdown" in str(err), err
    for s in [holder, *queued_streams]:
        assert s.done
        events = [e async for e in s]
        assert isinstance(events[-1], StreamError) and type(events[-1].error) is TransportError, events[-1]
        assert "shutdown()" in str(events[-1].error)
    assert len(fake.requests) == 1  # the queued requests never reached the server
    await wait_for(lambda: fake.open_connections == 0, timeout=2.0)


def test_shutdown_wait_is_bounded() -> None:
    """A connection that never reports closed does not hold shutdown() past
    its wait (the pool on a MemoryReactorClock, as Twisted's own agent tests
    run it: a real socket always closes within a turn of the reactor)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from nous_twisted.pool import NousConnectionPool

    for closes in (False, True):
        reactor = MemoryReactorClock()
        pool = NousConnectionPool(reactor, PoolSettings())
        got = pool.getConnection((b"http", b"h.example", 80), TCP4ClientEndpoint(reactor, "h.example", 80))
        factory = reactor.tcpClients[0][2]
        transport = StringTransport()
        proto = factory.buildProtocol(None)
        proto.makeConnection(transport)
        assert got.called and pool.open_connections() == 1
        with LogCapture() as logs:
            done = pool.close_all(wait=5.0)
            assert transport.disconnected, "close_all() did not abort the connection"
            if closes:
                proto.connectionLost(Failure(ConnectionDone()))
                assert done.called and pool.open_connections() == 0
                assert "still open" not in logs.text()
                continue
            reactor.advance(4.9)
            assert not done.called, "shutdown() did not wait for the connection to close"
            reactor.advance(0.2)
            assert done.called, "shutdown() waited past its bound"
            assert done.result is None
            # Nobody receives that failure: it is worth a warning (docs/errors.md, Logging).
            assert "still open after 5" in logs.text(), logs.text()
        # The connection closing late is no error.
        proto.connectionLost(Failure(ConnectionDone()))
        assert pool.open_connections() == 0


_BEFORE_STOP = """
import sys
if sys.argv[1] == "asyncio":
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
import orjson
from twisted.internet import reactor

import nous_twisted
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer, Fault

out = {}
CHAT = {"model": "m", "stream": True, "messages": []}


def report():
    # "after shutdown": nothing runs on the reactor any more
    out["pool_open"] = pool.open_connections()
    out["pool_waiting"] = pool.waiting()
    print(orjson.dumps(out).decode())


def ended(name):
    def record(result):
        out[name] = type(getattr(result, "error", None) or getattr(result, "value", result)).__name__
        out[name + "_text"] = str(getattr(result, "error", None) or getattr(result, "value", result))
    return record


def main():
    global pool
    server = FakeLLMServer(reply_tokens=500, token_delay=0.01)
    server.start()
    server.inject(Fault(stall_after_events=1))
    nous_twisted.configure(pool=nous_twisted.PoolSettings(max_connections=1))
    s = nous_twisted.stream(server.chat_url, CHAT, stream_backend=sys.argv[2])
    events = []
    s.consume(events.append).addBoth(ended("holder"))
    nous_twisted.post(server.chat_url, {"model": "m"}, backend=sys.argv[2]).addBoth(ended("queued_post"))
    q = nous_twisted.stream(server.chat_url, CHAT, stream_backend=sys.argv[2])
    q.consume(lambda e: None).addBoth(ended("queued_stream"))
    pool = get_shared().pool

    def check():
        if events:
            out["waiting_at_stop"] = pool.waiting()
            reactor.stop()
        else:
            reactor.callLater(0.01, check)

    check()


reactor.addSystemEventTrigger("after", "shutdown", report)
reactor.callWhenRunning(main)
reactor.run()
"""


@pytest.mark.parametrize("reactor_name", ["default", "asyncio"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_shutdown_runs_before_the_reactor_stops(backend: str, reactor_name: str, tmp_path: Any) -> None:
    script = tmp_path / "stop_while_busy.py"
    script.write_text(textwrap.dedent(_BEFORE_STOP))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(script), reactor_name, backend],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}, stderr:\n{proc.stderr[-3000:]}"
    out = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert out["waiting_at_stop"] == 2
    # Before the reactor stopped, shutdown() ended the open stream and both
    # queued requests with a TransportError, and closed every connection.
    assert out["holder"] == "TransportError" and "shutdown()" in out["holder_text"], out
    assert out["queued_stream"] == "TransportError", out
    assert out["queued_post"] == "TransportError", out
    assert out["pool_open"] == 0 and out["pool_waiting"] == 0, out


# -- ca_bundle changed on a live pool ------------------------------------------------------------------------------


@pytest.fixture
def other_ca_file(tmp_path: Any) -> str:
    path = os.path.join(str(tmp_path), "other-ca.pem")
    trustme.CA().cert_pem.write_to_path(path)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_new_ca_bundle_drops_idle_connections_verified_under_the_old_one(
    ca: trustme.CA, ca_file: str, other_ca_file: str, backend: str
) -> None:
    nous_twisted.configure(ca_bundle=ca_file)
    async with FakeLLMServer(tls=server_tls_options(ca, "localhost"), host="localhost") as server:
        assert (await post(server.chat_url, ASK, backend=backend))["object"] == "chat.completion"
        assert server.open_connections == 1  # idle in the pool, verified under ca_file
        nous_twisted.configure(ca_bundle=other_ca_file)
        await wait_for(lambda: server.open_connections == 0, timeout=2.0)
        # The next request verifies again, under the new roots, which do not
        # trust this server.
        err = await outcome(post(server.chat_url, ASK, backend=backend))
        assert type(err) is TLSError, f"{err!r}"
        assert server.connections_made == 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_new_ca_bundle_also_covers_connections_busy_at_the_change(
    ca: trustme.CA, ca_file: str, other_ca_file: str, backend: str
) -> None:
    """A connection in use when the roots change must not come back to the
    pool and carry a request verified under the old roots."""
    nous_twisted.configure(ca_bundle=ca_file)
    async with FakeLLMServer(
        reply_tokens=20, token_delay=0.01, tls=server_tls_options(ca, "localhost"), host="localhost"
    ) as server:
        s = stream(server.chat_url, CHAT, stream_backend=backend)
        await wait_for(lambda: s.buffered > 0)
        nous_twisted.configure(ca_bundle=other_ca_file)
        # The stream in flight may finish or be cut: either way its end is the
        # end of that connection's use.
        async for _ in s:
            pass
        err = await outcome(post(server.chat_url, ASK, backend=backend))
        assert type(err) is TLSError, f"a request after the change rode a connection verified under the old roots: {err!r}"


# -- size limits: a post reply over 64 MiB, a stream error body over 1 MiB ---------------------------------------


@pytest.mark.parametrize("over", [0, 1], ids=["at_the_limit", "one_byte_over"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_post_reply_over_64_mib_is_buffer_overflow(backend: str, over: int) -> None:
    from nous_twisted.exchange import MAX_RESPONSE_BODY

    assert MAX_RESPONSE_BODY == 64 * MiB
    body = b"[" + b" " * (64 * MiB - 2 + over) + b"]"
    reply = response(200, body)
    del body
    async with FaultServer([write(reply)]) as server:
        del reply
        result = await outcome(post(server.url("/v1/x?key=QUERYSECRET1"), ASK, backend=backend))
        if not over:
            assert result == []
            assert pool_counts() == (1, 1, 0)
            return
        assert type(result) is BufferOverflow, f"{result!r}"
        shown = f"http://127.0.0.1:{server.port_number}/v1/x?..."
        assert str(result) == (
            f"the response body from {shown} is over {64 * MiB} bytes (decoded); use stream() for large replies"
        )
        # The connection is aborted, not drained nor returned to the pool.
        await wait_for(lambda: server.open_connections == 0, timeout=5.0)
        assert pool_counts() == (0, 0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_stream_error_body_is_cut_at_1_mib_and_the_connection_aborted(backend: str) -> None:
    from nous_twisted.streamcore import MAX_ERROR_BODY

    assert MAX_ERROR_BODY == MiB
    # A 500 whose body goes on and on (2 MiB, and the chunked body never ends).
    script = [write(head(500, (("Content-Type", "text/plain"),)) + chunk(b"e" * (2 * MiB))), HOLD]
    async with FaultServer(script) as server:
        events = [e async for e in stream(server.url(), CHAT, stream_backend=backend, timeout=30)]
        assert len(events) == 1 and isinstance(events[0], StreamError), events
        err = events[0].error
        assert isinstance(err, HTTPStatusError) and err.status == 500, f"{err!r}"
        assert err.body == "e" * MiB
        await wait_for(lambda: server.open_connections == 0, timeout=5.0)
        assert pool_counts() == (0, 0, 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_stream_error_body_under_1_mib_is_whole(backend: str) -> None:
    body = orjson.dumps({"error": {"message": "m" * (MiB - 100)}})
    script = [write(head(503, (("Content-Type", "application/json"),)) + chunk(body) + LAST_CHUNK)]
    async with FaultServer(script) as server:
        events = [e async for e in stream(server.url(), CHAT, stream_backend=backend)]
        err = events[0].error
        assert isinstance(err, HTTPStatusError) and err.status == 503
        assert err.body == orjson.loads(body)


# -- DNS failure ----------------------------------------------------------------------------------------------------


@implementer(IHostnameResolver)
class NoAddresses:
    """A name resolver that answers every name with no address (NXDOMAIN)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolveHostName(self, receiver: Any, hostName: str, portNumber: int = 0, addressTypes: Any = None,
                        transportSemantics: str = "TCP") -> Any:
        from twisted.internet._resolver import HostResolution

        self.asked.append(hostName)
        receiver.resolutionBegan(HostResolution(hostName))
        receiver.resolutionComplete()
        return receiver


@pytest.fixture
def no_dns() -> Any:
    reactor = get_reactor()
    old = reactor.nameResolver
    resolver = NoAddresses()
    reactor.installNameResolver(resolver)
    try:
        yield resolver
    finally:
        reactor.installNameResolver(old)


@pytest.mark.parametrize("mode", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_dns_failure_is_connect_error(no_dns: NoAddresses, backend: str, mode: str) -> None:
    url = f"https://nowhere-{backend}-{mode}.example.test/v1/chat/completions?key=QUERYSECRET1"
    if mode == "post":
        err = await outcome(post(url, ASK, backend=backend))
    else:
        events = [e async for e in stream(url, CHAT, stream_backend=backend)]
        assert len(events) == 1 and isinstance(events[0], StreamError), events
        err = events[0].error
    assert type(err) is ConnectError, f"{err!r}"
    assert no_dns.asked == [f"nowhere-{backend}-{mode}.example.test"]
    text = str(err)
    assert text.startswith(f"cannot resolve the host of https://nowhere-{backend}-{mode}.example.test/v1/chat/completions?...")
    assert "QUERYSECRET1" not in text and "QUERYSECRET1" not in repr(err)
    assert pool_counts() == (0, 0, 0)


# -- EventStream misuse --------------------------------------------------------------------------------------------


async def read_all(s: Any) -> list[Any]:
    return [e async for e in s]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_two_concurrent_async_for_readers(fake: FakeLLMServer, backend: str) -> None:
    s = stream(fake.chat_url, CHAT, stream_backend=backend)
    first = Deferred.fromCoroutine(read_all(s))  # now waiting for the first event
    assert not first.called
    with pytest.raises(RuntimeError) as info:
        async for _ in s:
            pass
    assert str(info.value) == "this EventStream is already being awaited by another reader; read it from one place"
    events = await first  # the first reader is unharmed
    assert events[-1] == StreamDone("stop")
    assert text_of(events) == "".join(reply_tokens(fake.reply_tokens))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_consume_twice(fake: FakeLLMServer, backend: str) -> None:
    s = stream(fake.chat_url, CHAT, stream_backend=backend)
    seen: list[Any] = []
    done = s.consume(seen.append)
    with pytest.raises(RuntimeError) as info:
        s.consume(seen.append)
    assert str(info.value) == "consume() was already called on this EventStream"
    assert await done == StreamDone("stop")
    assert text_of(seen) == "".join(reply_tokens(fake.reply_tokens))
    assert seen.count(StreamDone("stop")) == 1


@pytest.mark.parametrize("first", ["async_for", "consume"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_mixing_ways_to_read(fake: FakeLLMServer, backend: str, first: str) -> None:
    s = stream(fake.chat_url, CHAT, stream_backend=backend)
    seen: list[Any] = []
    if first == "async_for":
        reading = Deferred.fromCoroutine(read_all(s))
        with pytest.raises(RuntimeError) as info:
            s.consume(seen.append)
        assert str(info.value) == "this EventStream is already read by 'async for'; use one way to read it"
        assert seen == []
        events = await reading
    else:
        reading = s.consume(seen.append)
        with pytest.raises(RuntimeError) as info:
            async for _ in s:
                pass
        assert str(info.value) == "this EventStream is already read by consume(); use one way to read it"
        await reading
        events = seen
    assert events[-1] == StreamDone("stop")
    assert text_of(events) == "".join(reply_tokens(fake.reply_tokens))


# -- configure() with every accepted backend form -----------------------------------------------------------------


@implementer(IHTTPBackend)
class RecordingBackend(AgentBackend):
    """A custom post backend, the usual way: a subclass of a built-in one."""

    calls: ClassVar[list[str]] = []

    def post(self, request: Any, **kw: Any) -> Any:
        RecordingBackend.calls.append(request.display_url)
        return super().post(request, **kw)


@implementer(IStreamBackend)
class RecordingStreamBackend(AgentStreamBackend):
    calls: ClassVar[list[str]] = []

    def stream(self, request: Any, **kw: Any) -> Any:
        RecordingStreamBackend.calls.append(request.display_url)
        return super().stream(request, **kw)


MODULE = __name__  # "tests.test_behaviours" under pytest


def backend_forms(cls: type) -> list[tuple[str, Any]]:
    return [
        ("class", cls),
        ("instance", cls()),
        ("dotted_path", f"{MODULE}.{cls.__name__}"),
        ("colon_path", f"{MODULE}:{cls.__name__}"),
    ]


@pytest.mark.parametrize("form", ["class", "instance", "dotted_path", "colon_path"])
@pytest_twisted.ensureDeferred
async def test_configure_http_backend_forms(fake: FakeLLMServer, form: str) -> None:
    value = dict(backend_forms(RecordingBackend))[form]
    RecordingBackend.calls.clear()
    settings = nous_twisted.configure(http_backend=value)
    assert settings.http_backend is value
    assert (await post(fake.chat_url, ASK))["object"] == "chat.completion"
    assert RecordingBackend.calls == [fake.chat_url]
    nous_twisted.configure(http_backend=None)  # back to treq
    await post(fake.chat_url, ASK)
    assert RecordingBackend.calls == [fake.chat_url]


@pytest.mark.parametrize("form", ["class", "instance", "dotted_path", "colon_path"])
@pytest_twisted.ensureDeferred
async def test_configure_stream_backend_forms(fake: FakeLLMServer, form: str) -> None:
    value = dict(backend_forms(RecordingStreamBackend))[form]
    RecordingStreamBackend.calls.clear()
    settings = nous_twisted.configure(http_stream_backend=value)
    assert settings.http_stream_backend is value
    events = [e async for e in stream(fake.chat_url, CHAT)]
    assert events[-1] == StreamDone("stop")
    assert RecordingStreamBackend.calls == [fake.chat_url]
    nous_twisted.configure(http_stream_backend=None)
    [e async for e in stream(fake.chat_url, CHAT)]
    assert RecordingStreamBackend.calls == [fake.chat_url]


def test_configure_names_the_key_of_a_class_that_is_not_a_backend() -> None:
    with pytest.raises(nous_twisted.BackendConfigError) as info:
        nous_twisted.configure(http_stream_backend=RecordingBackend)  # a post backend
    assert info.value.setting == "configure(http_stream_backend=...)"
    assert "does not implement IStreamBackend" in str(info.value)
    assert nous_twisted.settings.current().http_stream_backend is None


# -- provider error details, end to end ---------------------------------------------------------------------------

RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
GEMINI_429 = {
    "code": 429,
    "message": "Resource has been exhausted (e.g. check quota).",
    "status": "RESOURCE_EXHAUSTED",
}


def gemini_error(delay: Any) -> dict[str, Any]:
    return {"error": dict(GEMINI_429, details=[
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "m"}]},
        {"@type": RETRY_INFO, "retryDelay": delay},
    ])}


# id: (status, headers, body, retry_after, request_id, detail)
PROVIDER_CASES: dict[str, tuple[int, list[tuple[str, str]], Any, float | None, str | None, str]] = {
    "gemini_retry_delay_seconds": (429, [], gemini_error("31s"), 31.0, None, GEMINI_429["message"]),
    "gemini_retry_delay_fraction": (429, [], gemini_error("1.5s"), 1.5, None, GEMINI_429["message"]),
    "gemini_retry_delay_duration_object": (
        429, [], gemini_error({"seconds": 2, "nanos": 500_000_000}), 2.5, None, GEMINI_429["message"],
    ),
    "gemini_error_in_a_json_array": (429, [], [gemini_error("7s")], 7.0, None, GEMINI_429["message"]),
    "retry_after_date_in_the_past": (
        503, [("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")], {"error": {"message": "busy"}}, 0.0, None, "busy",
    ),
    "anthropic_request_id": (
        529, [("request-id", "req_011CSHoEeqs5C35K2UUqR7Fy")],
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        None, "req_011CSHoEeqs5C35K2UUqR7Fy", "Overloaded",
    ),
    "status_300_not_followed": (
        300, [("Location", "/v1/elsewhere")], {"error": {"message": "multiple choices"}}, None, None, "multiple choices",
    ),
}


@pytest.mark.parametrize("mode", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(PROVIDER_CASES))
@pytest_twisted.ensureDeferred
async def test_provider_error_details_end_to_end(case: str, backend: str, mode: str) -> None:
    status, headers, body, retry_after, request_id, detail = PROVIDER_CASES[case]
    reply = response(status, orjson.dumps(body), [("Content-Type", "application/json"), *headers])
    async with FaultServer([write(reply)]) as server:
        url = server.url("/v1beta/models/g:generateContent?key=QUERYSECRET1")
        if mode == "post":
            err = await outcome(post(url, ASK, backend=backend))
        else:
            events = [e async for e in stream(url, CHAT, stream_backend=backend)]
            assert len(events) == 1 and isinstance(events[0], StreamError), events
            err = events[0].error
        assert isinstance(err, HTTPStatusError), f"{err!r}"
        assert err.status == status
        assert err.body == body
        assert err.retry_after == retry_after
        assert err.request_id == request_id
        shown = f"http://127.0.0.1:{server.port_number}/v1beta/models/g:generateContent?..."
        expected = f"HTTP {status} from {shown}: {detail}"
        if request_id:
            expected += f" (request id {request_id})"
        if retry_after is not None:
            expected += f"; retry after {retry_after:g} s"
        assert str(err) == expected
        assert len(server.requests) == 1  # a 300 is not followed
        assert server.requests[0].target == "/v1beta/models/g:generateContent?key=QUERYSECRET1"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_anthropic_request_id_of_a_stream(backend: str) -> None:
    sse = b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    script = [write(head(200, (("Content-Type", "text/event-stream"), ("request-id", "req_01Anthropic"))) + chunk(sse)
                    + LAST_CHUNK)]
    async with FaultServer(script) as server:
        s = stream(server.url("/v1/messages"), CHAT, stream_backend=backend)
        assert s.request_id is None  # no headers yet
        events = [e async for e in s]
        assert events == [{"type": "message_stop"}, StreamDone("stop")]
        assert s.request_id == "req_01Anthropic"


# -- redaction of x-goog-api-key, Cookie, Proxy-Authorization ----------------------------------------------------

GOOG_KEY = "AIzaSyGOOGLEKEY0123456789abcdef"
COOKIE = "session=COOKIESECRET0123456789"
PROXY_TOKEN = "UFJPWFlTRUNSRVQ6cGFzc3dvcmQ="
PROXY_AUTH = f"Basic {PROXY_TOKEN}"
QUERY_KEY = "QUERYSECRET0123"
SECRET_HEADERS = {"x-goog-api-key": GOOG_KEY, "Cookie": COOKIE, "Proxy-Authorization": PROXY_AUTH}
HIDDEN_VALUES = (GOOG_KEY, COOKIE, PROXY_AUTH, PROXY_TOKEN, QUERY_KEY, "COOKIESECRET", "GOOGLEKEY")


def echo_secrets(request: SeenRequest) -> list[Any]:
    """A 401 that quotes every secret it was sent, in its body and a header."""
    echoed = [request.header("x-goog-api-key"), request.header("cookie"), request.header("proxy-authorization"),
              PROXY_TOKEN, QUERY_KEY]
    body = orjson.dumps({"error": {"message": "rejected: " + " | ".join(str(v) for v in echoed),
                                   "type": "authentication_error"}})
    return [write(response(401, body, [("Content-Type", "application/json"), ("X-Echo", GOOG_KEY)]))]


def test_request_repr_hides_these_headers_and_shows_the_rest() -> None:
    url = f"https://generativelanguage.example/v1beta/models/g:generateContent?key={QUERY_KEY}&alt=sse"
    req = prepare(url, ASK, {**SECRET_HEADERS, "anthropic-version": "2023-06-01"})
    text = repr(req)
    shown = "https://generativelanguage.example/v1beta/models/g:generateContent?..."
    assert text.startswith(f"HTTPRequest(POST {shown}, {len(req.body)} bytes, headers=[")
    assert "x-goog-api-key: <redacted>" in text and "Cookie: <redacted>" in text
    assert "Proxy-Authorization: <redacted>" in text
    assert "anthropic-version: 2023-06-01" in text and "content-type: application/json" in text
    for secret in HIDDEN_VALUES + ("alt=sse",):
        assert secret not in text, secret
    assert {GOOG_KEY.encode(), COOKIE.encode(), PROXY_AUTH.encode(), PROXY_TOKEN.encode(),
            QUERY_KEY.encode()} <= set(req.secrets)


@pytest.mark.parametrize("mode", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_echoed_secret_headers_are_redacted_end_to_end(backend: str, mode: str) -> None:
    async with FaultServer(echo_secrets) as server:
        url = server.url(f"/v1beta/models/g:generateContent?key={QUERY_KEY}")
        shown = f"http://127.0.0.1:{server.port_number}/v1beta/models/g:generateContent?..."
        with LogCapture() as logs:
            if mode == "post":
                err = await outcome(post(url, ASK, SECRET_HEADERS, backend=backend))
            else:
                s = stream(url, CHAT, SECRET_HEADERS, stream_backend=backend)
                events = [e async for e in s]
                assert len(events) == 1 and isinstance(events[0], StreamError), events
                err = events[0].error
                assert s.url == shown
                assert repr(s) == f"<EventStream {shown} done, 0 buffered>"
        # The secrets went to the server as they are...
        seen = server.requests[0]
        assert (seen.header("x-goog-api-key"), seen.header("cookie"), seen.header("proxy-authorization")) == (
            GOOG_KEY, COOKIE, PROXY_AUTH)
        # ... and come back out nowhere: not in the message, repr, body, headers or logs,
        assert isinstance(err, HTTPStatusError) and err.status == 401, f"{err!r}"
        redacted = "rejected: [redacted] | [redacted] | [redacted] | [redacted] | [redacted]"
        assert err.body == {"error": {"message": redacted, "type": "authentication_error"}}
        assert err.headers["x-echo"] == "[redacted]"
        log_text = logs.text()
        for text in (str(err), repr(err), orjson.dumps(err.body).decode(), repr(err.headers), log_text):
            for secret in HIDDEN_VALUES:
                assert secret not in text, (secret, text[:300])
        # while what is safe to show is shown: the URL without its query, the
        # provider's message with the values replaced, the other headers.
        assert err.url == shown
        assert str(err) == f"HTTP 401 from {shown}: {redacted}"
        assert err.headers["content-type"] == "application/json"
        assert shown in log_text and "[redacted]" in log_text


# -- NUL in header values ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["post", "stream"])
@pytest_twisted.ensureDeferred
async def test_nul_in_a_header_value_is_refused_before_any_io(mode: str) -> None:
    async with FaultServer([write(response(200, b"{}"))]) as server:
        for name in ("Authorization", "x-goog-api-key", "Cookie", "Proxy-Authorization", "X-Custom"):
            for value in (f"Bearer {GOOG_KEY}\x00", f"\x00{GOOG_KEY}", f"{GOOG_KEY[:10]}\x00{GOOG_KEY[10:]}"):
                for as_bytes in (False, True):
                    headers = [(name, value.encode("latin-1") if as_bytes else value)]
                    with LogCapture() as logs, pytest.raises(ValueError) as info:
                        if mode == "post":
                            post(server.url(), ASK, headers)
                        else:
                            stream(server.url(), CHAT, headers)
                    message = str(info.value)
                    assert message == (
                        f"the value of header {name!r} contains a control character (CR, LF or NUL, or another "
                        "byte below 0x20 other than tab, or DEL); value redacted; header injection is refused"
                    )
                    assert GOOG_KEY[:10] not in repr(info.value) and GOOG_KEY[10:] not in repr(info.value)
                    assert logs.events == []
        await sleep(0)
        assert server.connections_made == 0  # nothing was sent
        assert pool_counts() == (0, 0, 0)
