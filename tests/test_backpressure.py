"""Backpressure, measured by behaviour on a real socket: what the client takes
off the socket, what it buffers, and whether the server's writes block."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from nous_twisted import BufferOverflow, StreamDone, StreamError, TreqStreamBackend, stream

from .helpers import FloodServer, get_reactor, sleep, wait_for

CHAT = {"model": "m", "stream": True}
READ = 64 * 1024  # one socket read, at most, in Twisted


@pytest_twisted.ensureDeferred
async def test_agent_backend_strict_pull_under_a_slow_consumer() -> None:
    server = FloodServer(event_size=1024, total=50 * 1024 * 1024).listen()
    try:
        s = stream(server.url, CHAT, stream_backend="agent")
        processed = [0]
        worst_gap = [0]
        worst_buffered = [0]

        def on_event(event: Any) -> Deferred[None] | None:
            if not isinstance(event, dict):
                return None
            processed[0] += 1
            gap = s.bytes_received - processed[0] * 1024
            worst_gap[0] = max(worst_gap[0], gap)
            worst_buffered[0] = max(worst_buffered[0], s.buffered)
            d: Deferred[None] = Deferred()
            get_reactor().callLater(0.01, d.callback, None)  # 10 ms per event
            return d

        done = s.consume(on_event)
        await wait_for(lambda: processed[0] >= 120, timeout=10)
        # The server offered 50 MB as fast as it could; its writes blocked.
        assert server.pauses >= 1
        assert server.sent < 20 * 1024 * 1024, server.sent
        # The client never took more than a few hundred KiB beyond what the
        # consumer had processed, and never buffered more than one read's worth.
        assert worst_gap[0] <= 300 * 1024, worst_gap[0]
        assert s.max_buffered <= READ // 1024 + 1, s.max_buffered
        s.cancel()
        assert await done == StreamDone("cancelled")
        await wait_for(lambda: server.open == 0, timeout=1.0)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_treq_backend_watermarks_bound_the_buffer() -> None:
    server = FloodServer(event_size=256, total=50 * 1024 * 1024).listen()
    try:
        backend = TreqStreamBackend(high_water=500, low_water=50)
        s = stream(server.url, CHAT, stream_backend=backend)
        processed = [0]

        async def slow(event: Any) -> None:
            processed[0] += 1
            if processed[0] % 100 == 0:
                await sleep(0.02)

        done = s.consume(slow)
        await wait_for(lambda: processed[0] >= 5000, timeout=20)
        assert s.max_buffered <= 500 + READ // 256 + 1, s.max_buffered
        assert server.pauses >= 1
        assert s.bytes_received < 20 * 1024 * 1024
        s.cancel()
        await done
        await wait_for(lambda: server.open == 0, timeout=1.0)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_treq_backend_consumer_paused_past_max_pause_overflows() -> None:
    server = FloodServer(event_size=512).listen()
    try:
        # max_pause is generous so that the buffer fills well before it:
        # its exact timing is in test_timing.py.
        backend = TreqStreamBackend(high_water=100, low_water=10, max_pause=1.0)
        s = stream(server.url, CHAT, stream_backend=backend)
        seen: list[Any] = []
        full: list[tuple[int, bool, int]] = []

        def on_event(event: Any) -> None:
            seen.append(event)
            if len(seen) == 5:
                s.pauseProducing()

        def filled() -> bool:
            # Read ahead to the high-water mark while the consumer pauses.
            if s.buffered >= 100 and not full:
                full.append((len(seen), s.done, s.buffered))
            return bool(full)

        done = s.consume(on_event)
        await wait_for(filled)
        count, was_done, buffered = full[0]
        assert count == 5 and not was_done
        assert buffered <= 100 + READ // 512 + 1
        terminal = await done
        assert isinstance(terminal, StreamError) and isinstance(terminal.error, BufferOverflow)
        assert "max_pause" in str(terminal.error)
        await wait_for(lambda: server.open == 0, timeout=1.0)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_idle_timer_is_suspended_while_the_consumer_pauses() -> None:
    from nous_twisted.testing import FakeLLMServer

    async with FakeLLMServer(reply_tokens=6, token_delay=0.01) as server:
        for backend in ("treq", "agent"):
            # End to end, with wide margins (events 10 ms apart, a 0.5 s idle
            # limit, a 1 s pause); the rule's exact timing is in test_timing.py.
            s = stream(server.chat_url, CHAT, stream_backend=backend, timeout=0.5)
            seen: list[Any] = []

            def on_event(event: Any, s: Any = s, seen: list[Any] = seen) -> None:
                seen.append(event)
                if len(seen) == 1:
                    s.pauseProducing()
                    get_reactor().callLater(1.0, s.resumeProducing)  # longer than the idle limit

            assert await s.consume(on_event) == StreamDone("stop"), seen[-1]
