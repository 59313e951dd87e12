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
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IHostnameResolver, IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
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
    NousHTTPError,
    PoolSettings,
    RequestTimeout,
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
from .faultserver import HOLD, LAST_CHUNK, Call, FaultConnection, FaultServer, SeenRequest, chunk, head, response, write
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
