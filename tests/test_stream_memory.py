"""What an open stream holds (issue 8: memory per open stream): nothing it no
longer needs.  Behaviour only, never timing: the encoded body is its own
size, the request body is let go once the response has begun, the stream's
objects are collected after its end, and an open stream with nothing
queued keeps no queue of its own."""

from __future__ import annotations

import gc
import sys
import tracemalloc
import weakref
from typing import Any

import pytest
import pytest_twisted

from nous_twisted import StreamDone, stream
from nous_twisted.request import encode_body
from nous_twisted.testing import FakeLLMServer

from .helpers import sleep, wait_for

BACKENDS = ("treq", "agent")
CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def test_the_encoded_body_costs_its_own_size() -> None:
    # orjson returns its whole write buffer (4 KiB for these ~80 bytes): a
    # request in flight holds its body, thousands of streams hold thousands.
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        body = encode_body(CHAT)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert body.startswith(b'{"model":"m"')
    assert grown < len(body) + 256, grown


def test_a_larger_encoded_body_costs_its_own_size() -> None:
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        body = encode_body(big)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(body) > 5000
    assert grown < len(body) + 256, grown  # orjson's buffer here is 64 KiB


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_the_request_body_is_released_once_the_response_has_begun(backend: str) -> None:
    # bytes are passed through as given: this very object is what the
    # request carries, and its reference count says who still holds it.
    body = b'{"model": "m", "stream": true, "messages": [], "pad": "' + b"p" * 1000 + b'"}'
    async with FakeLLMServer(reply_tokens=20, token_delay=0.05) as server:
        gc.collect()
        baseline = sys.getrefcount(body)
        s = stream(server.chat_url, body, stream_backend=backend)
        assert sys.getrefcount(body) > baseline  # in flight: held for a resend
        it = s.__aiter__()
        first = await it.__anext__()
        assert isinstance(first, dict)
        gc.collect()
        assert sys.getrefcount(body) == baseline, gc.get_referrers(body)
        s.cancel()
        rest = [e async for e in it]
        assert rest[-1] == StreamDone("cancelled")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_an_ended_stream_leaves_nothing_behind(backend: str) -> None:
    async with FakeLLMServer(reply_tokens=5) as server:
        s = stream(server.chat_url, CHAT, stream_backend=backend)
        core = s._core
        refs = [weakref.ref(s), weakref.ref(core)]
        events = [e async for e in s]
        assert events[-1] == StreamDone("stop")
        del s, core
        # The last event is delivered from inside the read that carried it:
        # the parser's frames are still on the stack until the reactor's turn.
        await sleep(0.01)
        gc.collect()
        assert [r() for r in refs] == [None, None]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_an_open_stream_with_nothing_queued_holds_no_queue(backend: str) -> None:
    from nous_twisted import streamcore

    async with FakeLLMServer(reply_tokens=20, token_delay=0.05) as server:
        s = stream(server.chat_url, CHAT, stream_backend=backend)
        it = s.__aiter__()
        await it.__anext__()
        await wait_for(lambda: s.buffered == 0)
        # the shared empty queue, not one list (or deque) per open stream
        assert s._core._queue is streamcore._EMPTY or s._core._queue == []
        assert streamcore._EMPTY == []  # never appended to
        s.cancel()
        [e async for e in it]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_an_abandoned_open_stream_is_collected_and_cancelled(backend: str) -> None:
    async with FakeLLMServer(reply_tokens=50, token_delay=0.05) as server:
        s = stream(server.chat_url, CHAT, stream_backend=backend)
        core = s._core
        ref = weakref.ref(s)

        async def first(s: Any) -> Any:
            async for event in s:
                return event

        assert isinstance(await first(s), dict)
        del s
        gc.collect()
        assert ref() is None  # no weakref.finalize record keeps anything
        await wait_for(lambda: core.done)
        assert core.take() == StreamDone("cancelled")
