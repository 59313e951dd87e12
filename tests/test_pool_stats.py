"""pool_stats(): the shared pool's connections per host, now and at their
largest (issue 9), checked against real traffic on loopback, on both
backends, posts and streams, and on a clock for the exact transitions."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error as ierror
from twisted.internet.defer import DeferredList
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

import nous_twisted
from nous_twisted import PoolSettings, pool_stats
from nous_twisted.pool import HostPoolStats
from nous_twisted.shared import host_key
from nous_twisted.testing import FakeLLMServer

from .conftest import BACKENDS
from .helpers import pool_counts, wait_for
from .test_pool_wait import call_post, call_stream
from .test_timing import KEY, URL, FakeEndpoint, cached_connection, make_pool

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def stats_of(server: FakeLLMServer) -> HostPoolStats:
    return pool_stats()[f"http://127.0.0.1:{server.port}"]


# -- pure and clock ---------------------------------------------------------------


def test_host_key_format() -> None:
    assert host_key((b"http", b"llm.test", 80)) == "http://llm.test:80"
    assert host_key((b"https", b"::1", 8443)) == "https://[::1]:8443"
    assert host_key((b"https", b"api.test", 443, None)) == "https://api.test:443"
    assert host_key((b"https", b"api.test", 443, "http://proxy:3128")) == "https://api.test:443 via http://proxy:3128"
    assert host_key("odd") == "odd"


def test_stats_are_frozen_and_exported() -> None:
    s = HostPoolStats(1, 0, 1, 0, 1, 0, 1, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.open = 2  # type: ignore[misc]
    assert "pool_stats" in nous_twisted.__all__ and nous_twisted.pool_stats is pool_stats


def test_a_reactor_without_a_pool_has_no_stats_and_gets_none() -> None:
    from nous_twisted.shared import _shared

    reactor = MemoryReactorClock()
    assert pool_stats(reactor) == {}
    assert reactor not in _shared  # asking did not make a pool


def test_every_transition_on_a_clock() -> None:
    from twisted.internet.defer import CancelledError

    from nous_twisted.pool import send_with_ticket

    reactor, pool = make_pool(max_connections=2)
    endpoint = FakeEndpoint()
    assert pool.stats() == {}
    ds = [pool.getConnection(KEY, endpoint) for _ in range(3)]
    assert pool.stats()[KEY] == HostPoolStats(2, 0, 2, 1, 2, 0, 2, 1)  # two opening, one waiting
    ds[2].cancel()
    ds[2].addErrback(lambda f: f.trap(CancelledError))
    first = endpoint.complete(0)
    endpoint.complete(0)
    assert pool.stats()[KEY] == HostPoolStats(2, 0, 2, 0, 2, 0, 2, 1)
    first.connectionLost(Failure(ierror.ConnectionDone()))
    assert pool.stats()[KEY] == HostPoolStats(1, 0, 1, 0, 2, 0, 2, 1)
    # A timed-out waiter leaves the numbers as a cancelled one does.
    waiting = send_with_ticket(lambda: pool.getConnection(KEY, endpoint), 1.0, lambda: None, URL, True)
    assert pool.stats()[KEY].open == 2 and pool.stats()[KEY].waiting == 0
    waiting.cancel()
    waiting.addErrback(lambda f: None)


def test_idle_and_reuse_on_a_clock() -> None:
    reactor, pool = make_pool(max_connections=4)
    protocol = cached_connection(reactor, pool)  # one request answered: its connection is cached
    assert pool.stats()[KEY] == HostPoolStats(1, 1, 0, 0, 1, 1, 1, 0)
    got: list[Any] = []
    pool.getConnection(KEY, FakeEndpoint()).addCallback(got.append)  # handed out again
    assert got and pool.stats()[KEY] == HostPoolStats(1, 0, 1, 0, 1, 1, 1, 0)
    protocol.connectionLost(Failure(ierror.ConnectionDone()))
    assert pool.stats()[KEY] == HostPoolStats(0, 0, 0, 0, 1, 1, 1, 0)


# -- real traffic -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["post", "stream"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_stats_in_flight_after_and_after_shutdown(backend: str, kind: str) -> None:
    nous_twisted.configure(pool=PoolSettings(max_connections=3, timeout=30_000))
    async with FakeLLMServer(reply_tokens=4, token_delay=0.25) as server:
        call = call_post if kind == "post" else call_stream
        ds = [call(server.chat_url, backend) for _ in range(5)]
        await wait_for(lambda: len(server.requests) == 3)
        now = stats_of(server)
        assert (now.open, now.idle, now.in_use, now.waiting) == (3, 0, 3, 2)
        assert (now.max_open, now.max_in_use, now.max_waiting) == (3, 3, 2)
        assert pool_counts() == (3, 0, 2)  # the same numbers the pool itself reports
        results = await DeferredList(ds, consumeErrors=True)
        assert all(ok for ok, _ in results), results
        await wait_for(lambda: stats_of(server).idle == 3)
        after = stats_of(server)
        assert after == HostPoolStats(
            open=3, idle=3, in_use=0, waiting=0, max_open=3, max_idle=3, max_in_use=3, max_waiting=2
        )
        assert server.connections_made == 3  # the waiters reused the connections
        await nous_twisted.shutdown()
        await wait_for(lambda: stats_of(server).open == 0)
        closed = stats_of(server)
        assert (closed.open, closed.idle, closed.in_use, closed.waiting) == (0, 0, 0, 0)
        assert (closed.max_open, closed.max_waiting) == (3, 2)  # the largest seen survive shutdown
        # The next call makes a new pool, whose numbers start afresh.
        await call(server.chat_url, backend)
        fresh = stats_of(server)
        assert (fresh.max_open, fresh.max_waiting) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_hosts_are_counted_apart() -> None:
    async with FakeLLMServer() as a, FakeLLMServer() as b:
        await DeferredList([call_post(a.chat_url, "treq"), call_post(b.chat_url, "agent"), call_post(b.chat_url, "treq")])
        stats = pool_stats()
        assert set(stats) == {f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{b.port}"}
        assert stats_of(a).max_open == 1 and stats_of(b).max_open == 2
