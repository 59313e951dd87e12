"""The stream core's per-read fast path and the readers' per-event paths
(issue 8), on a fake byte source and a fake clock: no network, no timing.

What the fast path must keep: events in wire order however reads and takes
interleave, strict pull pausing exactly when the reader is not already
waiting with nothing queued, a reader that pauses or cancels in the middle of
a read's events, exactly one terminal event, and the abandoned-handle rule
(``EventStream.__del__``) for every way of reading.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from nous_twisted import StreamDone, StreamError
from nous_twisted.backpressure import Policy, StrictPull, Watermarks
from nous_twisted.eventstream import EventStream
from nous_twisted.streamcore import END, NOTHING, StreamCore

URL = "http://llm.test/v1/chat/completions"
SSE = Headers({b"content-type": [b"text/event-stream"]})
POLICIES = [pytest.param(StrictPull(), id="strict"), pytest.param(Watermarks(high=8, low=2), id="watermarks")]


def ev(i: int) -> bytes:
    return b'data: {"i": %d}\n\n' % i


def evs(*ids: int) -> bytes:
    return b"".join(ev(i) for i in ids)


class FakeSource:
    def __init__(self) -> None:
        self.paused = False
        self.calls: list[str] = []

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
        return False


class FakeReactor(Clock):
    """A clock that also runs what is handed to callFromThread, when told."""

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Any] = []

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.from_thread.append((f, args))

    def run_from_thread(self) -> None:
        calls, self.from_thread = self.from_thread, []
        for f, args in calls:
            f(*args)


def make(policy: Policy, max_pause: float | None = None) -> tuple[StreamCore, FakeSource, FakeReactor]:
    reactor = FakeReactor()
    core = StreamCore(reactor, URL, 60.0, None, policy, max_pause, 1 << 20)
    source = FakeSource()
    core.attach(source, None)
    core.connected()
    core.response_received(200, SSE)
    return core, source, reactor


def take_all(core: StreamCore) -> list[Any]:
    out = []
    while True:
        event = core.take()
        if event is NOTHING or event is END:
            return out
        out.append(event)


# -- the queue ------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_events_come_out_in_wire_order_across_reads_and_partial_takes(policy: Policy) -> None:
    core, source, _ = make(policy)
    core.data_received(evs(1, 2, 3))
    assert core.take() == {"i": 1}
    core.data_received(evs(4, 5))  # queued behind 2 and 3
    assert core.take() == {"i": 2}
    core.data_received(ev(6))
    assert take_all(core) == [{"i": 3}, {"i": 4}, {"i": 5}, {"i": 6}]
    assert core.buffered == 0
    core.data_received(evs(7, 8) + b"data: [DONE]\n\n")
    core.body_ended(True)
    assert take_all(core) == [{"i": 7}, {"i": 8}, StreamDone("stop")]
    assert core.take() is END


@pytest.mark.parametrize("policy", POLICIES)
def test_buffered_and_max_buffered_follow_reads_and_takes(policy: Policy) -> None:
    core, _, _ = make(policy)
    core.data_received(evs(1, 2, 3))
    assert (core.buffered, core.max_buffered) == (3, 3)
    core.take()
    core.take()
    assert core.buffered == 1
    core.data_received(evs(4, 5, 6, 7))
    assert (core.buffered, core.max_buffered) == (5, 5)
    take_all(core)
    assert (core.buffered, core.max_buffered) == (0, 5)


def test_taken_events_are_not_held_by_the_queue() -> None:
    core, _, _ = make(Watermarks(high=100, low=10))
    core.data_received(evs(*range(10)))
    taken = [core.take() for _ in range(4)]
    held = core._queue  # the events still queued, nothing else
    assert len(held) == 6
    assert not any(any(t is h for h in held) for t in taken)


def test_an_event_split_over_reads_is_delivered_once_whole() -> None:
    core, _, _ = make(StrictPull())
    data = evs(1, 2)
    for i in range(len(data)):  # one byte per read
        core.data_received(data[i : i + 1])
    assert take_all(core) == [{"i": 1}, {"i": 2}]


# -- strict pull on the fast path ----------------------------------------------


def test_a_waiting_reader_takes_a_read_at_once_and_the_socket_is_not_paused() -> None:
    core, source, _ = make(StrictPull())
    got: list[Any] = []

    def pull(_: object = None) -> None:
        got.extend(take_all(core))
        core.wait().addCallback(pull)

    pull()
    for i in range(5):
        core.data_received(ev(i))
    assert got == [{"i": i} for i in range(5)]
    assert source.calls == []  # never paused: the reader was always waiting


def test_strict_pull_pauses_when_the_woken_reader_leaves_events_queued() -> None:
    core, source, _ = make(StrictPull())
    got: list[Any] = []

    def one(_: object = None) -> None:
        got.append(core.take())  # takes one, and does not wait again

    core.wait().addCallback(one)
    core.data_received(evs(1, 2, 3))
    assert got == [{"i": 1}]
    assert source.calls == ["pause"]
    assert take_all(core) == [{"i": 2}, {"i": 3}]
    core.wait()  # asks for more with nothing queued: read on
    assert source.calls == ["pause", "resume"]


def test_strict_pull_pauses_a_read_nobody_waits_for() -> None:
    core, source, _ = make(StrictPull())
    core.data_received(ev(1))
    assert source.calls == ["pause"]
    assert core.take() == {"i": 1}
    assert source.calls == ["pause"]  # taking alone does not read ahead
    core.wait()
    assert source.calls == ["pause", "resume"]


def test_watermarks_pause_at_high_water_on_the_fast_path() -> None:
    core, source, _ = make(Watermarks(high=4, low=2))
    got: list[Any] = []

    def slow(_: object = None) -> None:
        got.append(core.take())  # one per wakeup, then stops asking

    core.wait().addCallback(slow)
    core.data_received(evs(1, 2, 3))
    assert source.calls == []
    core.data_received(evs(4, 5))
    assert source.calls == ["pause"]  # 4 queued
    take_all(core)
    core.wait()
    assert source.calls == ["pause", "resume"]
    assert got == [{"i": 1}]


@pytest.mark.parametrize("policy", POLICIES)
def test_the_end_in_the_same_read_reaches_a_waiting_reader_once(policy: Policy) -> None:
    core, _, _ = make(policy)
    got: list[Any] = []

    def pull(_: object = None) -> None:
        while True:
            event = core.take()
            if event is NOTHING:
                core.wait().addCallback(pull)
                return
            if event is END:
                return
            got.append(event)

    pull()
    core.data_received(ev(1) + b"data: [DONE]\n\n")
    core.body_ended(True)
    assert got == [{"i": 1}, StreamDone("stop")]


# -- consume(): the plain-callback path ---------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_consume_pausing_in_the_middle_of_a_read_holds_the_rest(policy: Policy) -> None:
    core, _, reactor = make(policy)
    stream = EventStream(core, reactor)
    got: list[Any] = []

    def on_event(event: Any) -> None:
        got.append(event)
        if event == {"i": 2}:
            stream.pauseProducing()

    done = stream.consume(on_event)
    core.data_received(evs(1, 2, 3, 4))
    assert got == [{"i": 1}, {"i": 2}]
    core.data_received(ev(5) + b"data: [DONE]\n\n")
    assert got == [{"i": 1}, {"i": 2}]
    stream.resumeProducing()
    core.body_ended(True)
    assert got == [{"i": i} for i in range(1, 6)] + [StreamDone("stop")]
    assert done.called


@pytest.mark.parametrize("policy", POLICIES)
def test_consume_cancelling_in_the_middle_of_a_read_ends_it_once(policy: Policy) -> None:
    core, source, reactor = make(policy)
    stream = EventStream(core, reactor)
    got: list[Any] = []

    def on_event(event: Any) -> None:
        got.append(event)
        if event == {"i": 2}:
            stream.cancel()

    done = stream.consume(on_event)
    core.data_received(evs(1, 2, 3, 4))
    assert got == [{"i": 1}, {"i": 2}, StreamDone("cancelled")]
    assert "abort" in source.calls
    results: list[Any] = []
    done.addCallback(results.append)
    assert results == [StreamDone("cancelled")]


def test_consume_a_callback_that_raises_fails_the_result_and_cancels() -> None:
    core, source, reactor = make(StrictPull())
    stream = EventStream(core, reactor)

    def on_event(event: Any) -> None:
        if event == {"i": 2}:
            raise ValueError("boom")

    done = stream.consume(on_event)
    core.data_received(evs(1, 2, 3))
    failures: list[Any] = []
    done.addErrback(failures.append)
    assert failures and failures[0].check(ValueError)
    assert "abort" in source.calls


def test_consume_non_dict_events_go_the_general_way() -> None:
    # NDJSON may carry any JSON value, not only objects.
    reactor = FakeReactor()
    core = StreamCore(reactor, URL, 60.0, "ndjson", StrictPull(), None, 1 << 20)
    core.attach(FakeSource(), None)
    core.connected()
    core.response_received(200, Headers({b"content-type": [b"application/x-ndjson"]}))
    got: list[Any] = []
    done = EventStream(core, reactor).consume(got.append)
    core.data_received(b'[1, 2]\n"text"\n3\n{"a": 1}\n')
    core.body_ended(True)
    assert got == [[1, 2], "text", 3, {"a": 1}, StreamDone("eof")]
    assert done.called


# -- async for: the wakeup await --------------------------------------------------


def test_async_for_reads_across_wakeups_and_ends_once() -> None:
    core, _, reactor = make(StrictPull())
    stream = EventStream(core, reactor)
    got: list[Any] = []

    async def read() -> None:
        async for event in stream:
            got.append(event)

    d = Deferred.fromCoroutine(read())
    for i in range(3):
        core.data_received(ev(i))
        assert got[-1] == {"i": i}
    core.data_received(b"data: [DONE]\n\n")
    core.body_ended(True)
    assert got == [{"i": 0}, {"i": 1}, {"i": 2}, StreamDone("stop")]
    assert d.called


def test_cancelling_a_waiting_async_for_read_loses_nothing() -> None:
    core, _, reactor = make(StrictPull())
    stream = EventStream(core, reactor)
    it = stream.__aiter__()

    async def one() -> Any:
        return await it.__anext__()

    first = Deferred.fromCoroutine(one())
    first.addErrback(lambda f: None)  # the cancellation
    first.cancel()
    assert first.called
    second = Deferred.fromCoroutine(one())  # the stream is still readable
    got: list[Any] = []
    second.addCallback(got.append)
    core.data_received(ev(7))
    assert got == [{"i": 7}]


# -- an abandoned handle --------------------------------------------------------------


def test_a_handle_dropped_unread_cancels_at_the_next_turn() -> None:
    core, source, reactor = make(StrictPull())
    stream = EventStream(core, reactor)
    del stream
    gc.collect()
    assert reactor.from_thread  # not cancelled in the finaliser itself
    assert "abort" not in source.calls
    reactor.run_from_thread()
    assert "abort" in source.calls
    assert take_all(core) == [StreamDone("cancelled")]


def test_a_handle_dropped_mid_async_for_cancels() -> None:
    core, source, reactor = make(StrictPull())
    stream = EventStream(core, reactor)

    async def first(s: EventStream) -> Any:
        async for event in s:
            return event

    got: list[Any] = []
    Deferred.fromCoroutine(first(stream)).addCallback(got.append)
    core.data_received(ev(1))
    assert got == [{"i": 1}]
    del stream
    gc.collect()
    reactor.run_from_thread()
    assert "abort" in source.calls


def test_a_handle_dropped_after_consume_keeps_streaming() -> None:
    core, source, reactor = make(StrictPull())
    got: list[Any] = []
    stream = EventStream(core, reactor)
    done = stream.consume(got.append)
    del stream
    gc.collect()
    reactor.run_from_thread()
    assert reactor.from_thread == [] and "abort" not in source.calls
    core.data_received(ev(1) + b"data: [DONE]\n\n")
    core.body_ended(True)
    assert got == [{"i": 1}, StreamDone("stop")] and done.called


def test_a_handle_dropped_after_the_end_does_nothing() -> None:
    core, source, reactor = make(StrictPull())
    stream = EventStream(core, reactor)
    core.data_received(b"data: [DONE]\n\n")
    core.body_ended(True)
    del stream
    gc.collect()
    assert reactor.from_thread == []


def test_the_finaliser_survives_a_reactor_that_is_gone() -> None:
    class Gone:
        def callFromThread(self, f: Any, *args: Any) -> None:
            raise RuntimeError("the reactor has stopped")

    import sys

    unraisable: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        core, _, _ = make(StrictPull())
        stream = EventStream(core, Gone())
        del stream  # an error here would be "Exception ignored in __del__"
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert unraisable == []
    assert not core.done


def test_stream_objects_are_collected_once_read_to_the_end() -> None:
    import weakref

    core, _, reactor = make(StrictPull())
    stream = EventStream(core, reactor)
    refs = [weakref.ref(core), weakref.ref(stream)]
    got: list[Any] = []
    stream.consume(got.append)
    core.data_received(ev(1) + b"data: [DONE]\n\n")
    core.body_ended(True)
    assert isinstance(got[-1], (StreamDone, StreamError))
    del stream, core
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_async_for_on_a_socket_paused_for_it_resumes_once_it_has_taken_all() -> None:
    core, source, reactor = make(StrictPull())
    core.data_received(evs(1, 2, 3))  # nobody reads yet: strict pull pauses
    assert source.calls == ["pause"]
    stream = EventStream(core, reactor)
    got: list[Any] = []

    async def read() -> None:
        async for event in stream:
            got.append(event)

    Deferred.fromCoroutine(read())
    assert got == [{"i": 1}, {"i": 2}, {"i": 3}]
    assert source.calls == ["pause", "resume"]  # waits with nothing queued: read on
    core.data_received(ev(4))
    assert got[-1] == {"i": 4}


def test_async_for_holds_events_back_while_the_stream_is_paused() -> None:
    core, _, reactor = make(Watermarks(high=8, low=2))
    stream = EventStream(core, reactor)
    core.data_received(evs(1, 2))
    stream.pauseProducing()
    got: list[Any] = []

    async def read() -> None:
        async for event in stream:
            got.append(event)

    Deferred.fromCoroutine(read())
    assert got == []
    stream.resumeProducing()
    assert got == [{"i": 1}, {"i": 2}]


def test_async_for_resumes_under_low_water_before_the_queue_is_empty() -> None:
    core, source, reactor = make(Watermarks(high=4, low=2))
    core.data_received(evs(1, 2, 3, 4, 5))
    assert source.calls == ["pause"]
    stream = EventStream(core, reactor)
    gates: list[Deferred[None]] = []
    got: list[Any] = []

    async def read() -> None:
        async for event in stream:
            got.append(event)
            gate: Deferred[None] = Deferred()
            gates.append(gate)
            await gate  # one event per turn, as a slow consumer

    Deferred.fromCoroutine(read())
    for taken in range(1, 5):
        assert len(got) == taken
        # 5 queued; under low water (2) only once 4 are taken
        assert source.calls == (["pause", "resume"] if taken >= 4 else ["pause"]), taken
        gates[-1].callback(None)
    assert got == [{"i": i} for i in range(1, 6)]
