"""The stream and pool timing rules, on a fake clock: no real time, no network.

Every rule is checked at its boundary: a quarter second before, nothing has
happened; at the instant, it has.  (The times are sums of binary fractions so
the clock's float arithmetic lands exactly on them.)

- :class:`~nous_twisted.streamcore.StreamCore` driven by a fake byte source:
  the idle timeout, the ``max_pause`` stall timer, cancel, the take()/wait()
  contract and the two backpressure policies' decisions;
- :class:`~nous_twisted.stream_exchange.StreamExchange` driven by a fake
  response: the drain grace after the end signal;
- :class:`~nous_twisted.pool.NousConnectionPool` on ``MemoryReactorClock``
  (Twisted's own idiom for HTTPConnectionPool): the idle keep-alive, the
  per-host limit and its FIFO queue, the connect timeout and its step;
- :class:`~nous_twisted.exchange.PostExchange`: the receive timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from nous_twisted import BufferOverflow, PoolSettings, RequestTimeout, StreamDone, StreamError
from nous_twisted.backpressure import Policy, StrictPull, Watermarks
from nous_twisted.exchange import PostExchange
from nous_twisted.pool import CONNECT_TICKET, NousConnectionPool, send_with_ticket
from nous_twisted.request import HTTPRequest
from nous_twisted.stream_exchange import DRAIN_GRACE, StreamExchange
from nous_twisted.streamcore import END, NOTHING, StreamCore

URL = "http://llm.test/v1/chat/completions"
SSE = Headers({b"content-type": [b"text/event-stream"]})
NDJSON = Headers({b"content-type": [b"application/x-ndjson"]})
IDLE = 8.0
MAX_PAUSE = 4.0
EPS = 0.25

POLICIES = [pytest.param(StrictPull(), id="strict"), pytest.param(Watermarks(high=4, low=2), id="watermarks")]


def ev(i: int) -> bytes:
    return b'data: {"i": %d}\n\n' % i


# ---------------------------------------------------------------------------
# the fake byte source and a reader


class FakeSource:
    """A ByteSource that records what the core asks of it."""

    def __init__(self, body_over: bool = False) -> None:
        self.paused = False
        self.calls: list[str] = []
        self.body_over = body_over  # what drain() answers: False once the body is over

    def pause_reading(self) -> None:
        self.paused = True
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.paused = False
        self.calls.append("resume")

    def abort(self) -> None:
        self.calls.append("abort")

    def drain(self) -> bool:
        self.calls.append("drain")
        return not self.body_over


class Reader:
    """Reads as ``async for`` does: takes all that is ready, then waits."""

    def __init__(self, core: StreamCore) -> None:
        self.core = core
        self.events: list[Any] = []
        self.ended = False
        self._pull(None)

    def _pull(self, _: object) -> None:
        while True:
            event = self.core.take()
            if event is NOTHING:
                self.core.wait().addCallback(self._pull)
                return
            if event is END:
                self.ended = True
                return
            self.events.append(event)

    @property
    def terminal(self) -> Any:
        last = self.events[-1] if self.events else None
        return last if isinstance(last, (StreamDone, StreamError)) else None


def make_core(
    clock: Clock,
    policy: Policy,
    timeout: float = IDLE,
    max_pause: float | None = None,
    headers: Headers = SSE,
    connect: bool = True,
    respond: bool = True,
) -> tuple[StreamCore, FakeSource]:
    core = StreamCore(clock, URL, timeout, None, policy, max_pause, 1 << 20)
    source = FakeSource()
    core.attach(source, None)
    if connect:
        core.connected()
    if respond:
        core.response_received(200, headers)
    return core, source


def idle_timeout(terminal: Any) -> bool:
    return (
        isinstance(terminal, StreamError)
        and isinstance(terminal.error, RequestTimeout)
        and terminal.error.phase == "idle"
        and terminal.error.timeout == IDLE
    )


def overflow(terminal: Any) -> bool:
    return isinstance(terminal, StreamError) and isinstance(terminal.error, BufferOverflow)


# ---------------------------------------------------------------------------
# the idle timeout


@pytest.mark.parametrize("policy", POLICIES)
def test_idle_timer_starts_at_connected(policy: Policy) -> None:
    clock = Clock()
    core, source = make_core(clock, policy, connect=False, respond=False)
    reader = Reader(core)
    clock.advance(1000)  # the connect phase is not the idle timer's
    assert not core.done
    core.connected()
    core.response_received(200, SSE)
    clock.advance(IDLE - EPS)
    assert not core.done
    clock.advance(EPS)
    assert idle_timeout(reader.terminal), reader.events
    assert "abort" in source.calls


@pytest.mark.parametrize("policy", POLICIES)
def test_each_event_restarts_the_idle_gap(policy: Policy) -> None:
    clock = Clock()
    core, source = make_core(clock, policy)
    reader = Reader(core)
    clock.advance(3)
    core.data_received(ev(1))
    clock.advance(3)
    core.data_received(ev(2))  # t=6: the last event
    clock.advance(IDLE - EPS)
    assert not core.done and reader.events == [{"i": 1}, {"i": 2}]
    clock.advance(EPS)  # t=14: IDLE after the last event
    assert idle_timeout(reader.terminal)
    assert source.calls == ["abort"]


KEEPALIVES = [
    pytest.param(SSE, b": ping\n\n", id="sse-comment"),
    pytest.param(SSE, b"\n\n\n", id="sse-blank-lines"),
    pytest.param(SSE, b"event: ping\n\n", id="sse-event-without-data"),
    pytest.param(SSE, b'data: {"i": ', id="part-of-an-event"),
    pytest.param(NDJSON, b"\n", id="ndjson-blank-line"),
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("headers,keepalive", KEEPALIVES)
def test_comments_and_keepalive_bytes_do_not_restart_the_idle_gap(
    policy: Policy, headers: Headers, keepalive: bytes
) -> None:
    clock = Clock()
    core, _ = make_core(clock, policy, headers=headers)
    reader = Reader(core)
    first = ev(1) if headers is SSE else b'{"i": 1}\n'
    clock.advance(2)
    core.data_received(first)  # t=2: the last event
    for _ in range(3):
        clock.advance(2)
        core.data_received(keepalive)  # t=4, 6, 8
    assert reader.events == [{"i": 1}]
    clock.advance(IDLE - 6 - EPS)
    assert not core.done
    clock.advance(EPS)  # t=10: IDLE after the last event, whatever came since
    assert idle_timeout(reader.terminal), reader.events


@pytest.mark.parametrize("policy", POLICIES)
def test_idle_clock_stops_while_the_consumer_pauses(policy: Policy) -> None:
    clock = Clock()
    core, _ = make_core(clock, policy)
    reader = Reader(core)
    clock.advance(2)  # 2 s of the idle budget used
    core.pause()
    clock.advance(100)
    assert not core.done
    core.resume()  # t=102: 6 s left
    clock.advance(IDLE - 2 - EPS)
    assert not core.done
    clock.advance(EPS)
    assert idle_timeout(reader.terminal)


@pytest.mark.parametrize("policy", [StrictPull(), Watermarks(high=2, low=1)], ids=["strict", "watermarks"])
def test_idle_clock_stops_while_backpressure_holds_the_socket(policy: Policy) -> None:
    clock = Clock()
    core, source = make_core(clock, policy)
    clock.advance(1)
    core.data_received(ev(1) + ev(2))  # nobody reads: the socket is paused for the reader
    assert source.calls == ["pause"]
    clock.advance(100)
    assert not core.done
    reader = Reader(core)  # t=101: the reader takes both and asks for more
    assert reader.events == [{"i": 1}, {"i": 2}]
    assert source.calls == ["pause", "resume"]
    clock.advance(IDLE - EPS)
    assert not core.done
    clock.advance(EPS)  # t=109
    assert idle_timeout(reader.terminal)


@pytest.mark.parametrize("policy", [StrictPull(), Watermarks(high=2, low=1)], ids=["strict", "watermarks"])
def test_resuming_the_consumer_does_not_restart_the_clock_while_the_socket_is_held(policy: Policy) -> None:
    clock = Clock()
    core, source = make_core(clock, policy)
    core.data_received(ev(1) + ev(2))  # the socket is paused for the reader
    core.pause()
    clock.advance(1)
    core.resume()  # the consumer is back but has not asked: the socket stays paused
    assert source.paused
    clock.advance(100)
    assert not core.done
    reader = Reader(core)  # t=101: it asks
    clock.advance(IDLE - EPS)
    assert not core.done
    clock.advance(EPS)
    assert idle_timeout(reader.terminal)


@pytest.mark.parametrize("policy", POLICIES)
def test_an_event_read_while_the_clock_is_stopped_restarts_the_gap(policy: Policy) -> None:
    clock = Clock()
    core, _ = make_core(clock, policy)
    reader = Reader(core)
    clock.advance(5)  # 5 s used
    core.pause()
    clock.advance(45)
    core.data_received(ev(1))  # t=50, bytes read before the pause took hold
    clock.advance(10)
    core.resume()  # t=60: the gap started again at the event, and was not counted since
    assert reader.events == [{"i": 1}]
    clock.advance(IDLE - EPS)
    assert not core.done
    clock.advance(EPS)  # t=68
    assert idle_timeout(reader.terminal)


# ---------------------------------------------------------------------------
# max_pause: a consumer that stops asking


STALL_POLICIES = [pytest.param(StrictPull(), id="strict"), pytest.param(Watermarks(high=100, low=10), id="watermarks")]


@pytest.mark.parametrize("policy", STALL_POLICIES)
def test_stall_fires_max_pause_after_the_last_ask(policy: Policy) -> None:
    clock = Clock()
    core, source = make_core(clock, policy, timeout=1000, max_pause=MAX_PAUSE)
    clock.advance(1)
    asked = core.wait()  # t=1: it asks, and waits...
    clock.advance(1)
    core.data_received(ev(1) + ev(2))
    assert asked.called  # ...until t=2, its last ask: it never takes
    clock.advance(MAX_PAUSE - EPS)
    assert not core.done
    clock.advance(EPS)  # t=6
    assert core.done and source.calls[-1] == "abort"
    terminal = core.take()  # the queued events were dropped
    assert overflow(terminal), terminal
    assert "max_pause" in str(terminal.error) and "2 events buffered" in str(terminal.error)
    assert core.take() is END


@pytest.mark.parametrize("policy", STALL_POLICIES)
@pytest.mark.parametrize("ask", ["take", "wait"])
def test_asking_restarts_the_stall_timer(policy: Policy, ask: str) -> None:
    clock = Clock()
    core, _ = make_core(clock, policy, timeout=1000, max_pause=MAX_PAUSE)
    clock.advance(2)
    core.data_received(ev(1) + ev(2) + ev(3))  # t=2, last ask at t=0: the stall is due at t=4
    clock.advance(1)
    if ask == "take":
        assert core.take() == {"i": 1}  # t=3
    else:
        assert core.wait().called  # something is ready: it fires at once
    clock.advance(MAX_PAUSE - EPS)
    assert not core.done
    clock.advance(EPS)  # t=7
    assert overflow(core.take())


@pytest.mark.parametrize("policy", STALL_POLICIES)
def test_stall_while_the_consumer_holds_the_stream_paused(policy: Policy) -> None:
    clock = Clock()
    core, source = make_core(clock, policy, timeout=1000, max_pause=MAX_PAUSE)
    reader = Reader(core)
    clock.advance(1)
    core.data_received(ev(1))
    clock.advance(2)
    core.pause()  # t=3
    core.data_received(ev(2))
    clock.advance(MAX_PAUSE - EPS)
    assert not core.done and reader.events == [{"i": 1}]
    clock.advance(EPS)  # t=7
    # Delivered although the consumer is paused: it would otherwise wait forever.
    assert reader.events[:-1] == [{"i": 1}] and overflow(reader.terminal)
    assert source.calls[-1] == "abort"


@pytest.mark.parametrize("policy", STALL_POLICIES)
@pytest.mark.parametrize("events", [1, 2])
def test_time_spent_waiting_is_not_a_stall(policy: Policy, events: int) -> None:
    """A reader that waited longer than max_pause for the first event (a model
    thinking), takes it as soon as it is woken (``async for`` on Twisted's
    coroutines, ``consume()``) and then works on it, is not stalled: its
    last ask is the moment it was woken."""
    clock = Clock()
    core, source = make_core(clock, policy, timeout=1000, max_pause=MAX_PAUSE)
    taken: list[Any] = []
    core.wait().addCallback(lambda _: taken.append(core.take()))
    clock.advance(10)
    core.data_received(b"".join(ev(i) for i in range(events)))  # t=10: woken, takes one
    assert taken == [{"i": 0}]
    clock.advance(MAX_PAUSE - EPS)
    assert not core.done
    clock.advance(EPS)  # t=14: max_pause after it was woken, without asking again
    if events == 1 and isinstance(policy, Watermarks):
        assert not core.done  # nothing held for it: the socket is read on, nothing queued
    else:
        assert overflow(core.take()) and source.calls[-1] == "abort"


def test_stall_while_the_socket_is_paused_with_nothing_queued() -> None:
    clock = Clock()
    core, source = make_core(clock, StrictPull(), timeout=1000, max_pause=MAX_PAUSE)
    clock.advance(2)
    core.data_received(b": ping\n\n")  # no event, nobody asking: strict pull stops reading
    assert source.paused and core.buffered == 0
    clock.advance(MAX_PAUSE - 2 - EPS)
    assert not core.done
    clock.advance(EPS)  # t=4: max_pause after the last ask (the stream's creation)
    assert overflow(core.take())


@pytest.mark.parametrize("policy", STALL_POLICIES)
def test_a_consumer_that_keeps_asking_never_stalls(policy: Policy) -> None:
    clock = Clock()
    core, _ = make_core(clock, policy, timeout=1000, max_pause=MAX_PAUSE)
    reader = Reader(core)
    for i in range(20):
        clock.advance(3)
        core.data_received(ev(i))
    clock.advance(500)  # waiting with nothing to read is not stalling
    assert not core.done and len(reader.events) == 20


@pytest.mark.parametrize("policy", STALL_POLICIES)
def test_max_pause_none_never_stalls(policy: Policy) -> None:
    clock = Clock()
    core, source = make_core(clock, policy, timeout=1000, max_pause=None)
    core.data_received(ev(1) + ev(2))
    core.pause()  # the idle clock stops too: only a stall could end this stream
    clock.advance(100_000)
    assert not core.done and "abort" not in source.calls
    core.resume()
    assert [core.take(), core.take()] == [{"i": 1}, {"i": 2}]


# ---------------------------------------------------------------------------
# cancel(), wait() cancellation and the take()/wait() contract


@pytest.mark.parametrize("policy", POLICIES)
def test_cancel_after_the_whole_body_was_decoded_drops_the_rest(policy: Policy) -> None:
    """Issue 7 item 8: the end is decoded but not delivered: cancel wins."""
    clock = Clock()
    core, source = make_core(clock, policy)
    source.body_over = True
    core.data_received(ev(1) + ev(2) + b"data: [DONE]\n\n")
    assert core.done and core.buffered == 2
    assert core.take() == {"i": 1}
    core.cancel()
    assert core.take() == StreamDone("cancelled")
    assert core.take() is END
    assert "abort" not in source.calls  # the body was over: nothing to close
    core.cancel()  # after delivery: nothing changes
    assert core.take() is END


@pytest.mark.parametrize("policy", POLICIES)
def test_cancel_mid_body_aborts_and_ends_cancelled(policy: Policy) -> None:
    clock = Clock()
    core, source = make_core(clock, policy)
    reader = Reader(core)
    core.data_received(ev(1))
    core.cancel()
    assert reader.events == [{"i": 1}, StreamDone("cancelled")] and reader.ended
    assert source.calls[-1] == "abort"
    core.data_received(ev(2))  # bytes in flight after the abort are ignored
    assert core.take() is END


@pytest.mark.parametrize("policy", POLICIES)
def test_cancelling_a_wait_leaves_the_stream_readable(policy: Policy) -> None:
    """Issue 7 item 9: a read given up (asyncio.wait_for) loses no event."""
    clock = Clock()
    core, _ = make_core(clock, policy)
    failures: list[Failure] = []
    d = core.wait()
    d.addErrback(failures.append)
    d.cancel()
    assert failures and failures[0].check(CancelledError)
    core.data_received(ev(1))
    clock.advance(1)
    core.data_received(ev(2))
    again = core.wait()  # no "already being awaited"
    assert again.called
    assert [core.take(), core.take(), core.take()] == [{"i": 1}, {"i": 2}, NOTHING]
    # A wait cancelled after it fired changes nothing.
    d2 = core.wait()
    core.data_received(ev(3))
    assert d2.called
    d2.cancel()
    assert core.take() == {"i": 3}


def test_take_and_wait_contract() -> None:
    clock = Clock()
    core, _ = make_core(clock, StrictPull(), respond=False)
    assert core.take() is NOTHING
    d = core.wait()
    assert not d.called
    with pytest.raises(RuntimeError, match="already being awaited"):
        core.wait()
    core.response_received(200, SSE)
    assert not d.called  # headers are not an event
    core.data_received(ev(1))
    assert d.called
    # A paused consumer is given nothing, even with events queued.
    core.pause()
    assert core.take() is NOTHING
    held = core.wait()
    assert not held.called
    core.resume()
    assert held.called
    assert core.take() == {"i": 1}
    core.data_received(b"data: [DONE]\n\n")
    core.body_ended(True)
    assert core.take() == StreamDone("stop")
    assert core.take() is END and core.take() is END
    assert core.wait().called  # after the end, a wait never blocks


# ---------------------------------------------------------------------------
# the backpressure decisions


def test_strict_pull_pauses_after_each_chunk_and_resumes_only_when_asked() -> None:
    clock = Clock()
    core, source = make_core(clock, StrictPull())
    core.data_received(ev(1) + ev(2))  # nobody waits: stop reading
    assert source.calls == ["pause"]
    assert core.take() == {"i": 1} and core.take() == {"i": 2}
    assert source.calls == ["pause"]  # taking is not asking for more
    d = core.wait()
    assert source.calls == ["pause", "resume"] and not d.called
    core.data_received(b": ping\n\n")  # the reader waits and nothing came for it: read on
    assert source.calls == ["pause", "resume"]
    core.data_received(ev(3))  # the waiting reader is woken; the chunk is left for it
    assert d.called and source.calls == ["pause", "resume", "pause"]
    assert core.take() == {"i": 3} and core.take() is NOTHING
    assert source.calls[-1] == "pause"
    core.wait()
    assert source.calls[-1] == "resume"


def test_strict_pull_does_not_pause_for_a_reader_that_takes_at_once() -> None:
    clock = Clock()
    core, source = make_core(clock, StrictPull())
    reader = Reader(core)
    for i in range(5):
        core.data_received(ev(i))
    assert len(reader.events) == 5 and source.calls == []


def test_watermarks_read_ahead_to_high_and_resume_under_low() -> None:
    clock = Clock()
    core, source = make_core(clock, Watermarks(high=3, low=2))
    core.data_received(ev(1))
    core.data_received(ev(2))
    assert source.calls == []  # read ahead of a reader that does not ask
    core.data_received(ev(3))
    assert source.calls == ["pause"]
    assert core.take() == {"i": 1}
    assert source.calls == ["pause"]  # 2 queued: not under low
    core.wait()  # asking does not matter either
    assert source.calls == ["pause"]
    assert core.take() == {"i": 2}  # 1 queued: under low
    assert source.calls == ["pause", "resume"]


def test_policy_tables() -> None:
    strict = StrictPull()
    assert [strict.pause_after_chunk(q, w) for q, w in [(0, True), (0, False), (1, True), (1, False)]] == [
        False, True, True, True,
    ]
    assert [strict.may_resume(q, w) for q, w in [(0, True), (0, False), (1, True)]] == [True, False, False]
    assert strict.decode_more(0) and not strict.decode_more(1)
    marks = Watermarks(high=10, low=3)
    assert [marks.pause_after_chunk(q, False) for q in (9, 10, 11)] == [False, True, True]
    assert [marks.may_resume(q, False) for q in (2, 3)] == [True, False]
    assert marks.decode_more(9) and not marks.decode_more(10)


# ---------------------------------------------------------------------------
# StreamExchange: the drain grace after the end signal


class FakeBodyTransport:
    """What a body protocol is given: a producer to pause, resume and stop."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class FakeResponse:
    def __init__(self, code: int = 200, headers: Headers = SSE) -> None:
        self.code = code
        self.headers = headers
        self.transport = FakeBodyTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)


def _request() -> HTTPRequest:
    return HTTPRequest(URL, URL.encode(), b"{}", (), display_url=URL)


def make_exchange(clock: Clock, policy: Policy) -> tuple[StreamCore, FakeResponse, Reader]:
    core = StreamCore(clock, URL, 1000, None, policy, None, 1 << 20)
    sent: Deferred[Any] = Deferred()
    StreamExchange(core, clock, _request(), 10, False).start(lambda body: sent, None)
    reader = Reader(core)
    response = FakeResponse()
    sent.callback(response)
    return core, response, reader


@pytest.mark.parametrize("policy", POLICIES)
def test_the_end_waits_for_the_body_to_end(policy: Policy) -> None:
    clock = Clock()
    core, response, reader = make_exchange(clock, policy)
    response.protocol.dataReceived(ev(1) + b"data: [DONE]\n\n")
    assert reader.events == [{"i": 1}] and core.done
    clock.advance(DRAIN_GRACE - EPS)
    response.protocol.dataReceived(ev(2))  # read and dropped
    assert reader.events == [{"i": 1}]
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert reader.events == [{"i": 1}, StreamDone("stop")]
    assert "stop" not in response.transport.calls  # the connection goes back to the pool
    clock.advance(10)
    assert "stop" not in response.transport.calls


@pytest.mark.parametrize("policy", POLICIES)
def test_a_body_that_does_not_end_is_aborted_after_the_drain_grace(policy: Policy) -> None:
    clock = Clock()
    core, response, reader = make_exchange(clock, policy)
    response.protocol.dataReceived(ev(1) + b"data: [DONE]\n\n")
    clock.advance(DRAIN_GRACE - EPS)
    assert reader.events == [{"i": 1}] and "stop" not in response.transport.calls
    clock.advance(EPS)
    assert response.transport.calls[-1] == "stop"  # aborted, never reused
    assert reader.events == [{"i": 1}, StreamDone("stop")]
    response.protocol.connectionLost(Failure(ierror.ConnectionAborted()))  # the abort's consequence
    assert reader.events == [{"i": 1}, StreamDone("stop")] and reader.ended


@pytest.mark.parametrize("policy", POLICIES)
def test_cancel_during_the_drain_aborts_and_ends_cancelled(policy: Policy) -> None:
    clock = Clock()
    core, response, reader = make_exchange(clock, policy)
    response.protocol.dataReceived(ev(1) + b"data: [DONE]\n\n")
    clock.advance(DRAIN_GRACE / 2)
    core.cancel()
    assert response.transport.calls[-1] == "stop"
    assert reader.events == [{"i": 1}, StreamDone("cancelled")]
    response.protocol.connectionLost(Failure(ierror.ConnectionAborted()))
    clock.advance(DRAIN_GRACE)
    assert reader.events == [{"i": 1}, StreamDone("cancelled")] and reader.ended


def test_draining_reads_on_a_socket_paused_for_the_reader() -> None:
    clock = Clock()
    core = StreamCore(clock, URL, 1000, None, StrictPull(), None, 1 << 20)
    sent: Deferred[Any] = Deferred()
    StreamExchange(core, clock, _request(), 10, False).start(lambda body: sent, None)
    response = FakeResponse()
    sent.callback(response)
    response.protocol.dataReceived(ev(1))  # nobody asks: strict pull pauses the transport
    assert response.transport.calls == ["pause"]
    response.protocol.dataReceived(b"data: [DONE]\n\n")  # read before the pause took hold
    assert response.transport.calls[-1] == "resume"  # the rest of the body is read, to reuse the connection
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert [core.take(), core.take(), core.take()] == [{"i": 1}, StreamDone("stop"), END]


def test_the_end_with_the_body_goes_at_once() -> None:
    clock = Clock()
    core, response, reader = make_exchange(clock, StrictPull())
    response.protocol.dataReceived(ev(1) + b"data: [DONE]\n\n")
    response.protocol.connectionLost(Failure(ResponseDone()))
    assert reader.events == [{"i": 1}, StreamDone("stop")]
    assert clock.getDelayedCalls() == []  # no drain timer left behind


# ---------------------------------------------------------------------------
# the pool, on MemoryReactorClock


KEY = (b"http", b"llm.test", 80)
TLS_KEY = (b"https", b"llm.test", 443)
REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"


class FakeEndpoint:
    """Connects only when told; a cancelled connect fails with ``cancel_error``."""

    def __init__(self, cancel_error: Callable[[], Exception] = CancelledError) -> None:
        self.cancel_error = cancel_error
        self.pending: list[tuple[Any, Deferred[Any]]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            d.errback(self.cancel_error())

        d: Deferred[Any] = Deferred(cancel)
        self.pending.append((factory, d))
        return d

    def complete(self, i: int = 0) -> Any:
        factory, d = self.pending.pop(i)
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        d.callback(protocol)
        return protocol


def make_pool(**settings: Any) -> tuple[MemoryReactorClock, NousConnectionPool]:
    reactor = MemoryReactorClock()
    return reactor, NousConnectionPool(reactor, PoolSettings(**settings))


def cached_connection(reactor: MemoryReactorClock, pool: NousConnectionPool) -> Any:
    """One request answered in full through an Agent on the pool: its
    connection is put back in the pool's cache by Twisted itself."""
    endpoint = FakeEndpoint()
    agent = Agent.usingEndpointFactory(reactor, _Endpoints(endpoint), pool)
    d = agent.request(b"POST", b"http://llm.test/v1/chat/completions")
    protocol = endpoint.complete()
    protocol.dataReceived(REPLY)
    body = _Body()
    d.addCallback(lambda response: response.deliverBody(body))
    assert body.data == [b"{}"] and body.done
    return protocol


class _Body(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.done = False

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self.done = reason.check(ResponseDone) is not None


class _Endpoints:
    def __init__(self, endpoint: FakeEndpoint) -> None:
        self.endpoint = endpoint

    def endpointForURI(self, uri: Any) -> FakeEndpoint:
        return self.endpoint


def aborted(protocol: Any) -> bool:
    """Aborted (abortConnection), not merely closed (loseConnection: may hang on TLS)."""
    return bool(protocol.transport.disconnected)


def test_a_cached_connection_is_closed_at_the_keepalive_timeout() -> None:
    reactor, pool = make_pool(timeout=1500)
    protocol = cached_connection(reactor, pool)
    assert pool.idle_connections(KEY) == 1 and pool.open_connections(KEY) == 1
    reactor.advance(1.5 - EPS)
    assert pool.idle_connections(KEY) == 1 and not aborted(protocol)
    reactor.advance(EPS)
    assert pool.idle_connections(KEY) == 0 and aborted(protocol)
    protocol.connectionLost(Failure(ierror.ConnectionAborted()))
    assert pool.open_connections() == 0  # the slot is free


def test_new_settings_restart_the_keepalive_timer() -> None:
    reactor, pool = make_pool(timeout=10_000)
    protocol = cached_connection(reactor, pool)
    reactor.advance(6)
    pool.apply(PoolSettings(timeout=4000))  # t=6: 4 s from now, not from the put
    reactor.advance(4 - EPS)
    assert pool.idle_connections(KEY) == 1 and not aborted(protocol)
    reactor.advance(EPS)
    assert aborted(protocol)
    # and a longer timeout postpones it
    reactor2, pool2 = make_pool(timeout=2000)
    protocol2 = cached_connection(reactor2, pool2)
    reactor2.advance(1.5)
    pool2.apply(PoolSettings(timeout=2000))
    reactor2.advance(2 - EPS)
    assert not aborted(protocol2)
    reactor2.advance(EPS)
    assert aborted(protocol2)


def test_a_connection_taken_from_the_cache_is_not_timed_out() -> None:
    reactor, pool = make_pool(timeout=1000)
    protocol = cached_connection(reactor, pool)
    got: list[Any] = []
    pool.getConnection(KEY, FakeEndpoint()).addCallback(got.append)
    assert got and got[0]._protocol is protocol
    reactor.advance(100)
    assert not aborted(protocol) and reactor.getDelayedCalls() == []


def test_per_host_limit_and_fifo_queue() -> None:
    reactor, pool = make_pool(max_connections=2)
    endpoint = FakeEndpoint()
    served: list[int] = []

    def serve(protocol: Any, i: int) -> Any:
        served.append(i)
        return protocol

    ds = [pool.getConnection(KEY, endpoint).addCallback(serve, i) for i in range(6)]
    assert len(endpoint.pending) == 2 and pool.waiting(KEY) == 4 and pool.open_connections(KEY) == 2
    other = FakeEndpoint()
    pool.getConnection((b"http", b"other.test", 80), other)
    assert len(other.pending) == 1  # the limit is per host
    ds[3].cancel()  # a cancelled waiter is skipped, not served
    ds[3].addErrback(lambda f: f.trap(CancelledError))
    first = endpoint.complete(0)
    second = endpoint.complete(0)
    assert served == [0, 1]
    pool._putConnection(KEY, first)  # a connection comes back
    assert served == [0, 1]
    reactor.advance(0)  # waiters are served on the next turn
    assert served == [0, 1, 2]
    second.connectionLost(Failure(ierror.ConnectionDone()))  # a connection closes: its slot goes next
    assert len(endpoint.pending) == 1 and pool.waiting(KEY) == 1
    endpoint.complete(0)
    assert served == [0, 1, 2, 4]
    assert pool.waiter_scans == 1


def _connect(pool: NousConnectionPool, key: Any, endpoint: FakeEndpoint, limit: float) -> tuple[list[Any], list[str]]:
    """Ask for a connection under a connect limit; returns (its outcome once
    there is one, whether the connect phase was reported over)."""
    connected: list[str] = []
    outcome: list[Any] = []
    d = send_with_ticket(
        lambda: pool.getConnection(key, endpoint), limit, lambda: connected.append("yes"), URL, True
    )
    d.addBoth(outcome.append)
    return outcome, connected


def _timed_out(outcome: list[Any]) -> RequestTimeout:
    assert outcome and isinstance(outcome[0], Failure), outcome
    error = outcome[0].value
    assert isinstance(error, RequestTimeout), outcome[0]
    return error


@pytest.mark.parametrize(
    "key,cancel_error,step",
    [
        (KEY, lambda: ierror.DNSLookupError("llm.test"), "dns"),  # HostnameEndpoint, cancelled while resolving
        (KEY, lambda: ierror.ConnectingCancelledError(None), "tcp"),
        (KEY, CancelledError, "tcp"),
        (TLS_KEY, CancelledError, "tls"),
    ],
)
def test_connect_timeout_names_its_step(key: Any, cancel_error: Callable[[], Exception], step: str) -> None:
    reactor, pool = make_pool()
    endpoint = FakeEndpoint(cancel_error)
    outcome, connected = _connect(pool, key, endpoint, 3.0)
    protocol = endpoint.complete() if step == "tls" else None  # TCP is up; the handshake never ends
    reactor.advance(3.0 - EPS)
    assert outcome == []
    reactor.advance(EPS)
    error = _timed_out(outcome)
    assert error.phase == "connect" and error.step == step and error.timeout == 3.0
    assert connected == []
    if protocol is not None:
        assert aborted(protocol)
        protocol.connectionLost(Failure(ierror.ConnectionAborted()))
    assert pool.open_connections() == 0


def test_waiting_for_a_slot_does_not_count_against_connect_timeout() -> None:
    # Issue 9: the slot wait is its own phase (pool_timeout, tests/test_pool_wait.py).
    reactor, pool = make_pool(max_connections=1)
    endpoint = FakeEndpoint()
    busy = pool.getConnection(KEY, endpoint)  # holds the only slot (no limit of its own)
    outcome, connected = _connect(pool, KEY, endpoint, 2.0)
    assert pool.waiting(KEY) == 1
    reactor.advance(100)
    assert outcome == [] and connected == [] and pool.waiting(KEY) == 1 and not busy.called


def test_connected_in_time_starts_the_next_phase() -> None:
    reactor, pool = make_pool()
    endpoint = FakeEndpoint()
    outcome, connected = _connect(pool, KEY, endpoint, 2.0)
    reactor.advance(2.0 - EPS)
    endpoint.complete()
    assert outcome and not isinstance(outcome[0], Failure) and connected == ["yes"]
    reactor.advance(100)
    assert len(outcome) == 1 and not isinstance(outcome[0], Failure)


# ---------------------------------------------------------------------------
# PostExchange: the receive timeout


def _post(clock: Clock, shared_pool: bool, timeout: float = 5.0) -> tuple[Deferred[Any], Deferred[Any], list[Any]]:
    sent: Deferred[Any] = Deferred()
    tickets: list[Any] = []

    def send(body: Any) -> Deferred[Any]:
        tickets.append(CONNECT_TICKET.get())
        return sent

    result = PostExchange(clock, _request(), timeout, 10.0, shared_pool).start(send)
    return result, sent, tickets


def _receive_timeout(d: Deferred[Any]) -> bool:
    failures: list[Failure] = []
    d.addErrback(failures.append)
    return bool(failures) and isinstance(failures[0].value, RequestTimeout) and failures[0].value.phase == "receive"


def test_post_receive_timeout_before_the_response() -> None:
    clock = Clock()
    result, sent, _ = _post(clock, shared_pool=False)  # a caller's agent: the limit runs from the start
    clock.advance(5 - EPS)
    assert not result.called and not sent.called
    clock.advance(EPS)
    assert sent.called  # the request was cancelled
    assert _receive_timeout(result)


def test_post_receive_timeout_covers_the_body() -> None:
    clock = Clock()
    result, sent, _ = _post(clock, shared_pool=False)
    clock.advance(1)
    response = FakeResponse(200, Headers({b"content-type": [b"application/json"]}))
    sent.callback(response)
    response.protocol.dataReceived(b'{"a"')
    clock.advance(4 - EPS)
    assert not result.called and response.transport.calls == []
    clock.advance(EPS)
    assert response.transport.calls == ["stop"]  # aborted
    assert not result.called  # until the body protocol hears of it
    response.protocol.connectionLost(Failure(ierror.ConnectionAborted()))
    assert _receive_timeout(result)


def test_post_receive_timer_starts_when_the_pool_says_connected() -> None:
    clock = Clock()
    result, sent, tickets = _post(clock, shared_pool=True)
    assert tickets[0] is not None and tickets[0].connect_timeout == 10.0
    clock.advance(100)  # the pool enforces the connect limit, not this timer
    assert not result.called
    tickets[0].on_connected()  # t=100
    clock.advance(5 - EPS)
    assert not result.called
    clock.advance(EPS)
    assert _receive_timeout(result)


def test_post_answered_in_time_leaves_no_timer() -> None:
    clock = Clock()
    result, sent, _ = _post(clock, shared_pool=False)
    response = FakeResponse(200, Headers({b"content-type": [b"application/json"]}))
    clock.advance(5 - EPS)
    sent.callback(response)
    response.protocol.dataReceived(b'{"a": 1}')
    response.protocol.connectionLost(Failure(ResponseDone()))
    got: list[Any] = []
    result.addCallback(got.append)
    assert got and got[0].status == 200 and got[0].body == b'{"a": 1}'
    assert clock.getDelayedCalls() == []
