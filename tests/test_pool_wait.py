"""The wait for a pool slot is its own phase (issue 9).

``pool_timeout`` (None: wait in FIFO order as long as it takes) bounds the
wait for a slot; ``connect_timeout`` covers DNS, TCP and TLS only, from the
moment the slot is granted.  The arithmetic runs on a MemoryReactorClock;
the loopback tests run real calls on both backends, posts and streams.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.python.failure import Failure

import nous_twisted
from nous_twisted import PoolSettings, RequestTimeout, StreamDone, StreamError
from nous_twisted.pool import send_with_ticket
from nous_twisted.request import prepare
from nous_twisted.resolve import resolve_http_backend, resolve_stream_backend
from nous_twisted.testing import FakeLLMServer, Fault

from .conftest import BACKENDS
from .helpers import pool_counts, wait_for
from .test_timing import EPS, KEY, URL, FakeEndpoint, make_pool

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def ask(pool: Any, endpoint: FakeEndpoint, connect: float = 2.0, pool_timeout: float | None = None) -> list[Any]:
    """Ask for a connection under a ticket; returns a list that gets the outcome."""
    outcome: list[Any] = []
    d = send_with_ticket(
        lambda: pool.getConnection(KEY, endpoint), connect, lambda: None, URL, True, pool_timeout=pool_timeout
    )
    d.addBoth(outcome.append)
    return outcome


def error_of(outcome: list[Any]) -> BaseException:
    assert outcome and isinstance(outcome[0], Failure), outcome
    return outcome[0].value  # type: ignore[no-any-return]


# -- the arithmetic, on a clock --------------------------------------------------


def test_pool_timeout_expires_with_a_pool_error_and_leaves_the_queue() -> None:
    reactor, pool = make_pool(max_connections=1)
    endpoint = FakeEndpoint()
    ask(pool, endpoint)  # takes the only slot
    waiting = ask(pool, endpoint, connect=0.1, pool_timeout=0.5)
    assert pool.waiting(KEY) == 1
    reactor.advance(0.5 - EPS / 10)
    assert waiting == []  # connect_timeout (0.1) does not apply to the wait
    reactor.advance(EPS / 10)
    error = error_of(waiting)
    assert isinstance(error, RequestTimeout) and error.phase == "pool" and error.timeout == 0.5
    assert URL in str(error) and "PoolSettings.max_connections" in str(error) and "pool_timeout" in str(error)
    assert pool.waiting(KEY) == 0
    endpoint.complete(0).connectionLost(Failure(ierror.ConnectionDone()))  # the slot frees: nobody is served
    assert endpoint.pending == []


def test_without_pool_timeout_the_wait_is_unbounded_and_connect_starts_at_the_grant() -> None:
    reactor, pool = make_pool(max_connections=1)
    endpoint = FakeEndpoint()
    ask(pool, endpoint)
    first = endpoint.complete(0)
    waiting = ask(pool, endpoint, connect=2.0)
    reactor.advance(1000)
    assert waiting == [] and pool.waiting(KEY) == 1
    first.connectionLost(Failure(ierror.ConnectionDone()))  # slot granted now: the connect clock starts
    assert pool.waiting(KEY) == 0 and len(endpoint.pending) == 1
    reactor.advance(2.0 - EPS)
    assert waiting == []
    reactor.advance(EPS)
    error = error_of(waiting)
    assert isinstance(error, RequestTimeout) and error.phase == "connect" and error.step == "tcp"
    assert pool.open_connections(KEY) == 0


def test_a_slot_granted_in_time_cancels_the_pool_timer() -> None:
    reactor, pool = make_pool(max_connections=1)
    endpoint = FakeEndpoint()
    ask(pool, endpoint)
    first = endpoint.complete(0)
    waiting = ask(pool, endpoint, connect=5.0, pool_timeout=1.0)
    reactor.advance(1.0 - EPS)
    first.connectionLost(Failure(ierror.ConnectionDone()))
    endpoint.complete(0)
    assert waiting and not isinstance(waiting[0], Failure)
    reactor.advance(100)
    assert len(waiting) == 1 and reactor.getDelayedCalls() == []


def test_pool_timeout_zero_fails_at_once_only_when_the_pool_is_full() -> None:
    reactor, pool = make_pool(max_connections=1)
    endpoint = FakeEndpoint()
    first = ask(pool, endpoint, pool_timeout=0)
    assert first == [] and len(endpoint.pending) == 1  # a free slot: no wait at all
    second = ask(pool, endpoint, pool_timeout=0)
    error = error_of(second)
    assert isinstance(error, RequestTimeout) and error.phase == "pool" and pool.waiting(KEY) == 0


def test_fifo_order_survives_timeouts_and_cancels_in_o1() -> None:
    reactor, pool = make_pool(max_connections=1)
    endpoint = FakeEndpoint()
    ask(pool, endpoint)
    first = endpoint.complete(0)
    ds = [ask(pool, endpoint, connect=30.0, pool_timeout=pt) for pt in (1.0, None, None, None)]
    assert pool.waiting(KEY) == 4
    reactor.advance(1.0)  # waiter 0 times out
    assert isinstance(error_of(ds[0]), RequestTimeout) and pool.waiting(KEY) == 3
    scans = pool.waiter_scans
    first.connectionLost(Failure(ierror.ConnectionDone()))
    assert pool.waiter_scans == scans + 1  # one marked entry skipped, no queue walk
    second = endpoint.complete(0)
    assert ds[1] and not ds[2] and not ds[3]
    second.connectionLost(Failure(ierror.ConnectionDone()))
    endpoint.complete(0)
    assert ds[2] and not ds[3]
    assert pool.waiting(KEY) == 1


def test_cancelling_a_waiting_call_frees_its_place() -> None:
    reactor, pool = make_pool(max_connections=1)
    endpoint = FakeEndpoint()
    ask(pool, endpoint)
    first = endpoint.complete(0)
    d1 = send_with_ticket(lambda: pool.getConnection(KEY, endpoint), 30.0, lambda: None, URL, True, pool_timeout=10.0)
    later = ask(pool, endpoint, pool_timeout=None)
    assert pool.waiting(KEY) == 2
    d1.cancel()
    failures: list[Failure] = []
    d1.addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    assert pool.waiting(KEY) == 1
    first.connectionLost(Failure(ierror.ConnectionDone()))
    endpoint.complete(0)
    assert later and not isinstance(later[0], Failure)
    assert reactor.getDelayedCalls() == []  # d1's pool timer went with it


def test_close_all_fails_waiters_and_stops_their_timers() -> None:
    reactor, pool = make_pool(max_connections=1)
    endpoint = FakeEndpoint()
    ask(pool, endpoint)
    endpoint.complete(0)
    waiting = ask(pool, endpoint, pool_timeout=5.0)
    pool.close_all(wait=0.1)
    assert isinstance(error_of(waiting), nous_twisted.TransportError)
    assert all(call.getTime() <= 0.1 for call in reactor.getDelayedCalls())


# -- real calls on loopback -----------------------------------------------------


def call_post(url: str, backend: str, **kw: Any) -> Deferred[Any]:
    """A post with ``pool_timeout`` on its request (the lead adds the keyword to
    ``nous_twisted.post``; the backend contract is the request)."""
    pool_timeout = kw.pop("pool_timeout", None)
    request = dataclasses.replace(prepare(url, BODY, ()), pool_timeout=pool_timeout)
    d: Deferred[Any] = resolve_http_backend(backend).post(
        request, timeout=kw.get("timeout", 30.0), connect_timeout=kw.get("connect_timeout", 30.0),
        agent=None, reactor=None,
    )
    return d


def call_stream(url: str, backend: str, **kw: Any) -> Deferred[Any]:
    """A stream read to its end; fires with (events, terminal)."""
    pool_timeout = kw.pop("pool_timeout", None)
    request = dataclasses.replace(
        prepare(url, dict(BODY, stream=True), (), accept=b"text/event-stream"), pool_timeout=pool_timeout
    )
    s = resolve_stream_backend(backend).stream(
        request, timeout=kw.get("timeout", 30.0), connect_timeout=kw.get("connect_timeout", 30.0),
        format=None, agent=None, reactor=None,
    )
    events: list[Any] = []
    return s.consume(events.append).addCallback(lambda terminal: (events, terminal))


@pytest.mark.parametrize("kind", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_forty_slow_calls_through_eight_connections_all_succeed(backend: str, kind: str) -> None:
    # The crawl of issue 9: 8 connections, 2 s calls, connect_timeout=1; the
    # last calls wait ~8 s for a slot and must not fail with RequestTimeout("connect").
    nous_twisted.configure(pool=PoolSettings(max_connections=8))
    async with FakeLLMServer(reply_tokens=4, token_delay=0.5) as server:
        call = call_post if kind == "post" else call_stream
        ds = [call(server.chat_url, backend, connect_timeout=1.0) for _ in range(40)]
        await wait_for(lambda: pool_counts()[2] > 0, timeout=5.0)
        assert pool_counts()[0] == 8 and pool_counts()[2] == 32
        results = await DeferredList(ds, consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        assert failures == [], failures[:1]
        if kind == "stream":
            # 4 tokens, the finish chunk, then the terminal event
            assert all(terminal == StreamDone("stop") and len(events) == 6 for _, (events, terminal) in results)
        assert server.max_open_connections <= 8 and len(server.requests) == 40


@pytest.mark.parametrize("kind", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_a_wait_over_pool_timeout_is_a_pool_timeout(backend: str, kind: str) -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=1))
    async with FakeLLMServer() as server:
        server.inject(Fault(stall_before_headers=True))
        blocker = call_post(server.chat_url, backend)
        await wait_for(lambda: server.open_connections == 1)
        if kind == "post":
            try:
                await call_post(server.chat_url, backend, pool_timeout=0.5, connect_timeout=0.1)
            except RequestTimeout as e:
                error: Any = e
            else:  # pragma: no cover
                raise AssertionError("no pool timeout")
        else:
            events, terminal = await call_stream(server.chat_url, backend, pool_timeout=0.5, connect_timeout=0.1)
            assert events == [terminal] and isinstance(terminal, StreamError)  # no data event
            error = terminal.error
        assert isinstance(error, RequestTimeout) and error.phase == "pool" and error.timeout == 0.5
        assert "max_connections" in str(error)
        assert pool_counts()[2] == 0 and len(server.requests) == 1
        blocker.cancel()
        blocker.addErrback(lambda f: f.trap(CancelledError))


@pytest.mark.parametrize("kind", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_cancelling_a_waiting_call_frees_its_place_on_loopback(backend: str, kind: str) -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=1))
    async with FakeLLMServer(reply_tokens=2, token_delay=0.2) as server:
        call = call_post if kind == "post" else call_stream
        first = call(server.chat_url, backend)
        second = call(server.chat_url, backend)
        third = call(server.chat_url, backend)
        await wait_for(lambda: pool_counts()[2] == 2)
        second.cancel()
        if kind == "post":
            second.addErrback(lambda f: f.trap(CancelledError))
        assert pool_counts()[2] == 1
        results = await DeferredList([first, third], consumeErrors=True)
        assert all(ok for ok, _ in results), results
        assert len(server.requests) == 2  # the cancelled call never reached the server
