"""GOAWAY, REFUSED_STREAM and connection loss on h2: streams at or below a
GOAWAY's last stream id finish while the server drains, those above it and
refused ones are sent again (never processed), the rest end as truncated or
as a TransportError before any byte.  Both reactors."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from h2.connection import ConnectionInputs, ConnectionState, H2ConnectionStateMachine
from h2.errors import ErrorCodes
from twisted.internet.defer import Deferred

import nous_twisted
from nous_twisted import StreamDone, StreamError, StreamTruncated, TransportError
from nous_twisted.h2conn import QUIET_VERSIONS, _Connection, _GoawayKeepsOpen, _KeepsEvents, _QuietH2Connection

from .h2server import H2ServerProtocol, ScriptedH2Server
from .helpers import sleep, wait_for
from .test_h2_stream import BODY, collect


def start(url: str) -> tuple[Any, Deferred[list[Any]]]:
    s = nous_twisted.stream(url, BODY, stream_backend="h2")
    return s, Deferred.fromCoroutine(collect(s))


def test_h2_still_closes_on_goaway_and_our_machine_does_not() -> None:
    # python-hyper/h2#1181: when this fails, h2 fixed it and _GoawayKeepsOpen can go.
    upstream = H2ConnectionStateMachine()
    upstream.state = ConnectionState.CLIENT_OPEN
    upstream.process_input(ConnectionInputs.RECV_GOAWAY)
    assert upstream.state is ConnectionState.CLOSED
    ours = _GoawayKeepsOpen()
    ours.state = ConnectionState.CLIENT_OPEN
    ours.process_input(ConnectionInputs.RECV_GOAWAY)
    assert ours.state is ConnectionState.CLIENT_OPEN
    ours.process_input(ConnectionInputs.RECV_DATA)
    assert ours.state is ConnectionState.CLIENT_OPEN


# sha256 of h2's H2Connection._receive_frame source, per version _QuietH2Connection repeats.
RECEIVE_FRAME_SOURCE = {"4.4.1": "39b2e16b4fd74ed014ca144a0c6e388aef3dc51f116d6f0a874b70d92bd92873"}


def test_the_quiet_connection_repeats_this_h2s_receive_frame() -> None:
    import hashlib
    import inspect

    import h2
    from h2.connection import H2Connection

    assert set(RECEIVE_FRAME_SOURCE) == set(QUIET_VERSIONS)
    if h2.__version__ not in QUIET_VERSIONS:
        assert _Connection is _KeepsEvents  # an unverified h2: its own _receive_frame, events kept
        return
    assert _Connection is _QuietH2Connection
    src = inspect.getsource(H2Connection._receive_frame)
    # When this fails, h2 changed the method: compare it with ours and update both.
    assert hashlib.sha256(src.encode()).hexdigest() == RECEIVE_FRAME_SOURCE[h2.__version__]
    assert 'trace("Received frame: %s", repr(frame))' in src


@pytest_twisted.ensureDeferred
async def test_graceful_goaway_lets_open_streams_finish(scripted: ScriptedH2Server) -> None:
    a, da = start(scripted.url("/sse?n=30&delay=0.01"))
    b, db = start(scripted.url("/sse?n=30&delay=0.01"))
    await wait_for(lambda: scripted.requests == 2)
    await sleep(0.05)
    proto = scripted.protocols[0]
    proto.goaway(last_sid=max(proto.streams), code=ErrorCodes.NO_ERROR)
    ra, rb = await da, await db
    assert len(ra) == 31 and ra[-1] == StreamDone("stop")
    assert len(rb) == 31 and rb[-1] == StreamDone("stop")
    # The next call opens a new connection.
    again = await collect(nous_twisted.stream(scripted.url("/sse?n=2"), BODY, stream_backend="h2"))
    assert again[-1] == StreamDone("stop")
    assert scripted.connections == 2


@pytest_twisted.ensureDeferred
async def test_streams_above_last_stream_id_are_sent_again(scripted: ScriptedH2Server) -> None:
    def hook(proto: H2ServerProtocol, sid: int, path: str) -> bool:
        if proto.requests == 2 and proto is scripted.protocols[0]:
            proto.goaway(last_sid=sid - 2)  # this one is not processed
            return True
        return False

    scripted.on_request = hook
    a, da = start(scripted.url("/sse?n=20&delay=0.01"))
    await wait_for(lambda: scripted.requests == 1)
    b, db = start(scripted.url("/sse?n=5&delay=0.01"))
    ra, rb = await da, await db
    assert ra[-1] == StreamDone("stop") and len(ra) == 21
    assert rb[-1] == StreamDone("stop") and len(rb) == 6
    assert scripted.connections == 2
    assert scripted.requests == 3  # the first, the refused one, and its resend


@pytest_twisted.ensureDeferred
async def test_refused_stream_is_sent_again_with_its_body(scripted: ScriptedH2Server) -> None:
    refused = []

    def hook(proto: H2ServerProtocol, sid: int, path: str) -> bool:
        if not refused:
            refused.append(sid)
            proto.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            proto.flush()
            return True
        return False

    scripted.on_request = hook
    events = await collect(nous_twisted.stream(scripted.url("/sse?n=3"), BODY, stream_backend="h2"))
    assert events[-1] == StreamDone("stop")
    assert scripted.requests == 2 and scripted.connections == 1
    value = await nous_twisted.post(scripted.url("/json"), {"x": 1}, backend="h2")
    assert value["ok"] is True


@pytest_twisted.ensureDeferred
async def test_always_refused_gives_up(scripted: ScriptedH2Server) -> None:
    def hook(proto: H2ServerProtocol, sid: int, path: str) -> bool:
        proto.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        proto.flush()
        return True

    scripted.on_request = hook
    events = await collect(nous_twisted.stream(scripted.url("/sse?n=3"), BODY, stream_backend="h2"))
    assert isinstance(events[-1], StreamError) and isinstance(events[-1].error, TransportError)
    assert "refused" in str(events[-1].error)
    assert scripted.requests == 4


@pytest_twisted.ensureDeferred
async def test_goaway_with_an_error_and_a_close_truncates(scripted: ScriptedH2Server) -> None:
    def hook(proto: H2ServerProtocol, sid: int, path: str) -> bool:
        return "silent" in path  # accepted, never answered

    scripted.on_request = hook
    a = nous_twisted.stream(scripted.url("/sse?n=100&delay=0.01"), BODY, stream_backend="h2")
    first = await a.__anext__()
    b, db = start(scripted.url("/sse?silent=1"))
    await wait_for(lambda: scripted.requests == 2)
    proto = scripted.protocols[0]
    proto.goaway(last_sid=3, code=ErrorCodes.INTERNAL_ERROR, close=True)
    ra, rb = [first] + await collect(a), await db
    assert isinstance(ra[-1], StreamError) and isinstance(ra[-1].error, StreamTruncated)
    assert len(ra) >= 1
    # No byte of a response yet: a TransportError (retried per policy), not truncation.
    assert len(rb) == 1 and type(rb[0].error) is TransportError


@pytest_twisted.ensureDeferred
async def test_a_lost_connection_truncates_every_stream_but_keeps_their_events(scripted: ScriptedH2Server) -> None:
    streams = [nous_twisted.stream(scripted.url("/sse?n=100&delay=0.01"), BODY, stream_backend="h2") for _ in range(3)]
    for s in streams:
        assert (await s.__anext__())["i"] == 0
    scripted.protocols[0].transport.abortConnection()
    for s in streams:
        events = await collect(s)
        assert isinstance(events[-1], StreamError) and isinstance(events[-1].error, StreamTruncated)
        assert all(e["i"] == i + 1 for i, e in enumerate(events[:-1]))
    ok = await collect(nous_twisted.stream(scripted.url("/sse?n=2"), BODY, stream_backend="h2"))
    assert ok[-1] == StreamDone("stop")
