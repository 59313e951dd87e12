"""AwaitableDeferred: one object awaited from Twisted-driven coroutines and
from asyncio Tasks (issue 9, "awaitable everywhere").

The Twisted world runs under both reactors.  asyncio Tasks exist only under
``--reactor=asyncio`` (AsyncioSelectorReactor): those tests skip otherwise.
The calls are real (``post``, ``stream().consume``, ``shutdown``,
``FakeLLMServer``) against loopback servers.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed

import nous_twisted
from nous_twisted.reactors import AwaitableDeferred, awaitable
from nous_twisted.testing import FakeLLMServer, Fault

from .conftest import BACKENDS
from .helpers import LogCapture, get_reactor, pool_counts, sleep, wait_for

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def post(*args: Any, **kw: Any) -> AwaitableDeferred[Any]:
    # The lead wires awaitable() into api.post; until then the tests wrap it.
    return awaitable(nous_twisted.post(*args, **kw))


def is_asyncio_reactor() -> bool:
    return hasattr(get_reactor(), "_asyncioEventloop")


@pytest.fixture
def loop() -> asyncio.AbstractEventLoop:
    if not is_asyncio_reactor():
        pytest.skip("asyncio Tasks need AsyncioSelectorReactor: run with --reactor=asyncio")
    return get_reactor()._asyncioEventloop  # type: ignore[no-any-return]


def in_task(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> tuple[asyncio.Task[Any], Deferred[Any]]:
    """Run ``coro`` as an asyncio Task; the Deferred fires with its outcome."""
    task = loop.create_task(coro)
    return task, Deferred.fromFuture(task)


def unhandled(capture: LogCapture) -> list[str]:
    gc.collect()
    return [e.get("log_format", "") for e in capture.events if "Unhandled error" in str(e.get("log_format", ""))]


# -- the helper itself, on bare Deferreds ---------------------------------------


def test_awaitable_chains_a_plain_deferred() -> None:
    d: Deferred[int] = Deferred()
    out = awaitable(d)
    # d keeps its type: code holding it may test ``type(d) is Deferred``.
    assert type(d) is Deferred and isinstance(out, AwaitableDeferred) and isinstance(out, Deferred)
    assert awaitable(out) is out
    d.callback(3)
    assert out.result == 3
    failed: Deferred[int] = Deferred()
    out2 = awaitable(failed)
    failed.errback(ValueError("x"))
    errors: list[Any] = []
    out2.addErrback(errors.append)
    assert errors[0].check(ValueError)


def test_awaitable_chains_a_deferred_subclass_and_cancels_it() -> None:
    class Sub(Deferred[int]):
        pass

    cancelled: list[bool] = []
    d = Sub(lambda _: cancelled.append(True))
    out = awaitable(d)
    assert out is not d and isinstance(out, AwaitableDeferred)
    failures: list[Any] = []
    out.addErrback(failures.append)
    out.cancel()
    assert cancelled == [True]
    assert failures and failures[0].check(CancelledError)


def test_awaitable_subclass_result_and_late_result_after_cancel() -> None:
    class Sub(Deferred[int]):
        pass

    d = Sub(lambda _: None)  # a canceller that does not fire d: cancel() does
    out = awaitable(d)
    seen: list[Any] = []
    out.addBoth(seen.append)
    out.cancel()
    assert len(seen) == 1 and seen[0].check(CancelledError)
    d2 = Sub()
    out2 = awaitable(d2)
    d2.callback(7)
    assert out2.result == 7


@pytest_twisted.ensureDeferred
async def test_twisted_coroutine_awaits_it() -> None:
    d: Deferred[int] = Deferred()
    get_reactor().callLater(0.01, d.callback, 4)
    assert await awaitable(d) == 4
    assert await awaitable(succeed(5)) == 5  # already fired


@pytest_twisted.ensureDeferred
async def test_twisted_coroutine_gets_the_failure() -> None:
    d: Deferred[int] = Deferred()
    get_reactor().callLater(0.01, d.errback, ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        await awaitable(d)


@pytest_twisted.inlineCallbacks
def test_inline_callbacks_yield_it() -> Any:
    d: Deferred[int] = Deferred()
    get_reactor().callLater(0.01, d.callback, 6)
    value = yield awaitable(d)
    assert value == 6


def test_it_works_with_task_react_style_driving() -> None:
    # Deferred.fromCoroutine as task.react's main would use it, driven by hand.
    d: Deferred[int] = Deferred()

    async def main() -> int:
        return await awaitable(d) + 1

    result = Deferred.fromCoroutine(main())
    d.callback(1)
    assert result.result == 2


# -- the library's calls, Twisted world, both reactors --------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_twisted_world_post_shutdown_server_consume(backend: str) -> None:
    async with FakeLLMServer() as server:
        reply = await post(server.chat_url, BODY, backend=backend)
        assert reply["object"] == "chat.completion"
        d = post(server.chat_url, BODY, backend=backend)
        assert isinstance(d, Deferred)  # still a Deferred for Deferred code
        values: list[Any] = []
        d.addCallback(values.append)
        await d
        assert values and values[0]["object"] == "chat.completion"
        s = nous_twisted.stream(server.chat_url, dict(BODY, stream=True), stream_backend=backend)
        events: list[Any] = []
        terminal = await s.consume(events.append)
        assert terminal == nous_twisted.StreamDone("stop") and len(events) > 2
        done = nous_twisted.shutdown()
        assert isinstance(done, AwaitableDeferred)
        assert await done is None
    assert server.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_twisted_world_cancel_raises_cancelled() -> None:
    async with FakeLLMServer() as server:
        server.inject(Fault(stall_before_headers=True))
        d = post(server.chat_url, BODY)
        get_reactor().callLater(0.05, d.cancel)
        with pytest.raises(CancelledError):
            await d
        await wait_for(lambda: server.open_connections == 0, timeout=1.0)


# -- asyncio Tasks (AsyncioSelectorReactor only) --------------------------------


@pytest_twisted.ensureDeferred
async def test_task_awaits_bare_deferreds(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> Any:
        d: Deferred[int] = Deferred()
        get_reactor().callLater(0.01, d.callback, 1)
        a = await awaitable(d)
        b = await awaitable(succeed(2))
        e: Deferred[int] = Deferred()
        get_reactor().callLater(0.01, e.errback, ValueError("bad"))
        try:
            await awaitable(e)
        except ValueError as exc:
            c = str(exc)

        # A Twisted driver started inside the Task's step: its first await
        # runs in the Task step, yet Twisted drives it.
        async def inner() -> int:
            f: Deferred[int] = Deferred()
            get_reactor().callLater(0.01, f.callback, 3)
            return await awaitable(f)

        n = await awaitable(ensureDeferred(inner()))
        # asyncio's own combinators take it too.
        g = await asyncio.gather(awaitable(succeed(4)), awaitable(_later(5)))
        w = await asyncio.wait_for(awaitable(_later(6)), 5)
        return a, b, c, n, g, w

    with LogCapture() as capture:
        _, d = in_task(loop, body())
        assert await d == (1, 2, "bad", 3, [4, 5], 6)
    assert unhandled(capture) == []


def _later(value: Any, delay: float = 0.01) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    get_reactor().callLater(delay, d.callback, value)
    return d


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_task_post_shutdown_server_consume(loop: asyncio.AbstractEventLoop, backend: str) -> None:
    async def body() -> Any:
        async with FakeLLMServer() as server:
            reply = await post(server.chat_url, BODY, backend=backend)
            s = nous_twisted.stream(server.chat_url, dict(BODY, stream=True), stream_backend=backend)
            events: list[Any] = []
            terminal = await s.consume(events.append)
            s2 = nous_twisted.stream(server.chat_url, dict(BODY, stream=True), stream_backend=backend)
            iterated = [e async for e in s2]
            await nous_twisted.shutdown()
        return reply, terminal, len(events), iterated[-1], server.open_connections

    with LogCapture() as capture:
        _, d = in_task(loop, body())
        reply, terminal, n, last, still_open = await d
    assert reply["object"] == "chat.completion"
    assert terminal == nous_twisted.StreamDone("stop") and n > 2
    assert last == nous_twisted.StreamDone("stop")
    assert still_open == 0
    assert unhandled(capture) == []


@pytest_twisted.ensureDeferred
async def test_task_gets_http_errors_and_nothing_is_left_unhandled(loop: asyncio.AbstractEventLoop) -> None:
    async def body() -> Any:
        async with FakeLLMServer() as server:
            server.inject(Fault(status=429, retry_after=1))
            try:
                await post(server.chat_url, BODY)
            except nous_twisted.HTTPStatusError as e:
                return e.status, e.retry_after
        return None

    with LogCapture() as capture:
        _, d = in_task(loop, body())
        assert await d == (429, 1.0)
    assert unhandled(capture) == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest_twisted.ensureDeferred
async def test_cancelling_the_task_cancels_the_call_and_closes_the_connection(
    loop: asyncio.AbstractEventLoop, backend: str
) -> None:
    async with FakeLLMServer() as server:
        server.inject(Fault(stall_before_headers=True))
        call = post(server.chat_url, BODY, backend=backend)

        async def body() -> Any:
            return await call

        with LogCapture() as capture:
            task, d = in_task(loop, body())
            await wait_for(lambda: server.open_connections == 1, timeout=5.0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await d
            assert task.cancelled()
            assert call.called  # the Deferred was cancelled with the Task
            await wait_for(lambda: server.open_connections == 0, timeout=1.0)
            await wait_for(lambda: pool_counts()[0] == 0, timeout=1.0)
        assert unhandled(capture) == []


@pytest_twisted.ensureDeferred
async def test_cancelling_the_deferred_raises_cancelled_in_the_task(loop: asyncio.AbstractEventLoop) -> None:
    async with FakeLLMServer() as server:
        server.inject(Fault(stall_before_headers=True))
        call = post(server.chat_url, BODY)

        async def body() -> Any:
            return await call

        with LogCapture() as capture:
            task, d = in_task(loop, body())
            await wait_for(lambda: server.open_connections == 1, timeout=5.0)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await d
            assert task.cancelled()
            await wait_for(lambda: server.open_connections == 0, timeout=1.0)
        assert unhandled(capture) == []


@pytest_twisted.ensureDeferred
async def test_cancelling_a_task_waiting_on_a_bare_deferred_runs_its_canceller(
    loop: asyncio.AbstractEventLoop,
) -> None:
    ran: list[bool] = []
    d: Deferred[int] = Deferred(lambda _: ran.append(True))

    async def body() -> Any:
        return await awaitable(d)

    task, done = in_task(loop, body())
    await sleep(0.01)
    task.cancel("stop it")
    with pytest.raises(asyncio.CancelledError):
        await done
    assert ran == [True] and task.cancelled()
