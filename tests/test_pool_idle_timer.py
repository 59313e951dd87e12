"""The pool's idle timer across uses, and the cached connection handed out
without a Deferred (issue 8): the idle timeout still counts from a
connection's last use, a request longer than the idle timeout keeps its
connection, and the reactor's timer heap does not grow with requests."""

from __future__ import annotations

import pytest_twisted

import nous_twisted
from nous_twisted import PoolSettings, post
from nous_twisted.shared import get_shared
from nous_twisted.testing import FakeLLMServer

from .helpers import get_reactor, sleep, wait_for

CHAT = {"model": "m", "messages": []}


@pytest_twisted.ensureDeferred
async def test_idle_timeout_counts_from_the_last_use() -> None:
    nous_twisted.configure(pool=PoolSettings(idle_timeout=0.4))
    async with FakeLLMServer() as server:
        for _ in range(4):  # 4 x 0.25 s: longer than the timeout in all, never idle that long
            await post(server.chat_url, CHAT)
            await sleep(0.25)
        assert server.connections_made == 1
        assert server.open_connections == 1
        await wait_for(lambda: server.open_connections == 0, timeout=3.0)
        assert get_shared().pool.idle_connections() == 0


@pytest_twisted.ensureDeferred
async def test_a_request_longer_than_the_idle_timeout_keeps_its_connection() -> None:
    nous_twisted.configure(pool=PoolSettings(idle_timeout=0.2))
    async with FakeLLMServer(token_delay=0.1, reply_tokens=6) as server:  # ~0.6 s per reply
        await post(server.chat_url, CHAT)
        await post(server.chat_url, CHAT)  # its idle timer fires while it is busy
        assert server.connections_made == 1
        pool = get_shared().pool
        assert pool.idle_connections() == 1 and not pool._busy_timers
        await wait_for(lambda: server.open_connections == 0, timeout=3.0)  # and it still expires once idle


@pytest_twisted.ensureDeferred
async def test_sequential_posts_leave_no_timers_behind() -> None:
    nous_twisted.configure(pool=PoolSettings(idle_timeout=30))
    reactor = get_reactor()
    async with FakeLLMServer() as server:
        await post(server.chat_url, CHAT)
        before = len([c for c in reactor.getDelayedCalls() if c.active()])
        for _ in range(50):
            await post(server.chat_url, CHAT)
        after = [c for c in reactor.getDelayedCalls() if c.active()]
        assert len(after) <= before
        # one idle timer, the same object across the 50 uses
        pool = get_shared().pool
        (conn,) = [c for conns in pool._connections.values() for c in conns]
        timer = pool._timeouts[conn]
        await post(server.chat_url, CHAT)
        assert pool._timeouts[conn] is timer and timer.active()
        assert server.connections_made == 1


@pytest_twisted.ensureDeferred
async def test_a_busy_connection_lost_takes_its_timer_with_it() -> None:
    nous_twisted.configure(pool=PoolSettings(idle_timeout=30))
    async with FakeLLMServer(token_delay=0.2, reply_tokens=20) as server:
        await post(server.chat_url, {"model": "m", "messages": [], "max_tokens": 1}, timeout=30)
        pool = get_shared().pool
        d = post(server.chat_url, CHAT, timeout=30)
        await wait_for(lambda: len(pool._busy_timers) == 1)
        (timer,) = pool._busy_timers.values()
        d.cancel()
        await wait_for(lambda: not pool._busy_timers)
        assert not timer.active()
        try:
            await d
        except Exception:
            pass


@pytest_twisted.ensureDeferred
async def test_shutdown_cancels_busy_connections_timers() -> None:
    nous_twisted.configure(pool=PoolSettings(idle_timeout=30))
    async with FakeLLMServer(token_delay=0.2, reply_tokens=20) as server:
        await post(server.chat_url, {"model": "m", "messages": [], "max_tokens": 1})
        pool = get_shared().pool
        d = post(server.chat_url, CHAT, timeout=30)
        await wait_for(lambda: len(pool._busy_timers) == 1)
        (timer,) = pool._busy_timers.values()
        await nous_twisted.shutdown()
        assert not timer.active() and not pool._busy_timers
        try:
            await d
        except Exception:
            pass
