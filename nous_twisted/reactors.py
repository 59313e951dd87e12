"""Finding the reactor, and Deferreds that both kinds of coroutine can await.

Nothing here imports ``twisted.internet.reactor`` at module import time: the
reactor is resolved when a call needs it, so applications (and Scrapy) can
install the one they want first.

Awaiting a Deferred works in a coroutine driven by Twisted
(``ensureDeferred``, ``Deferred.fromCoroutine``, ``task.react``), but an
asyncio Task (``asyncio.create_task``, pytest-asyncio, Scrapy's asyncio
pipelines under ``AsyncioSelectorReactor``) refuses it: "Task got bad yield".
:class:`AwaitableDeferred` is a Deferred whose ``await`` works in both, so the
library returns one object to everybody, with no conversion by the user.

Theory of operation.  ``await d`` runs ``d.__await__()`` inside the step of
whatever drives the coroutine.  Outside an asyncio Task (no
``asyncio.current_task()``), only Twisted can be driving it, and the
Deferred's own ``__await__`` is used.  Inside a Task step, the driver may be
the Task, or a Twisted driver started within that step (``ensureDeferred``
runs the first step of its coroutine at once), and ``__await__`` cannot tell
which.  It then yields a :class:`_Bridge`, which is both: a Deferred (what
Twisted's driver waits on) and a Future look-alike (``_asyncio_future_blocking``,
``get_loop``, ``add_done_callback``, ``result``, ``cancel(msg)``: what a Task
waits on, as it does for any Future-compatible object).  Each driver uses
only its own half.  The result is read from the bridge itself after the
yield, whoever resumes it.

Cancellation maps both ways: cancelling the Task cancels the Deferred (which
aborts the call's connection) and the Task ends cancelled; cancelling the
Deferred raises ``asyncio.CancelledError`` in the Task.  The bridge takes the
Deferred's result, failure included, so no "Unhandled error in Deferred" is
left behind once the awaiting Task has received it.
"""

from __future__ import annotations

import asyncio
import sys
from asyncio.events import _get_running_loop
from collections.abc import Awaitable, Callable, Generator
from contextvars import Context
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def default_reactor(reactor: Any | None) -> Any:
    """The reactor to use: the one given, else the installed global one.

    Importing ``twisted.internet.reactor`` installs the default reactor when
    none is installed yet.  Inside a running asyncio loop with no Twisted
    reactor (Scrapy's reactorless mode, a plain asyncio program) that reactor
    would never run and every call would hang: fail clearly instead.
    """
    if reactor is not None:
        return reactor
    # Installing a reactor puts it in sys.modules: no import statement per call.
    installed = sys.modules.get("twisted.internet.reactor")
    if installed is not None:
        return installed
    if _get_running_loop() is not None:
        raise RuntimeError(
            "nous_twisted needs a running Twisted reactor, and this is an asyncio loop without "
            "one (Scrapy's TWISTED_REACTOR_ENABLED=False, or plain asyncio). Install "
            "twisted.internet.asyncioreactor before the loop starts (Scrapy: keep the reactor "
            "enabled, TWISTED_REACTOR = 'twisted.internet.asyncioreactor.AsyncioSelectorReactor'), "
            "or pass reactor= explicitly."
        )
    from twisted.internet import reactor as global_reactor

    return global_reactor


_PENDING: Any = object()  # a _Bridge's source has not fired
_CANCELLED: Any = object()  # a _Bridge's Task was cancelled


class AwaitableDeferred(Deferred[T]):
    """A Deferred that can be awaited from a Twisted-driven coroutine and
    from an asyncio Task alike (see the module docstring).

    In every other way it is a Deferred: ``addCallback``, ``cancel()``,
    ``yield`` in ``inlineCallbacks``, ``DeferredList``...  Make one with
    :func:`awaitable`, or construct it directly as a Deferred.
    """

    def __await__(self) -> Generator[Any, Any, T]:
        if not self.called or self.paused:
            loop = _get_running_loop()
            if loop is not None and asyncio.current_task(loop) is not None:
                bridge = _Bridge(self, loop)
                yield bridge
                return bridge.outcome()  # type: ignore[no-any-return]
        return (yield from Deferred.__iter__(self))

    __iter__ = __await__


def awaitable(d: Deferred[T]) -> AwaitableDeferred[T]:
    """``d`` as an :class:`AwaitableDeferred`, awaitable from both worlds.

    Returns ``d`` itself when it is one already; else a new one that takes
    ``d``'s result (as ``chainDeferred`` does: ``d`` then carries None) and
    whose ``cancel()`` cancels ``d``.  A chain rather than changing ``d``'s
    class in place: code holding ``d`` may test ``type(d) is Deferred``.
    """
    if isinstance(d, AwaitableDeferred):
        return d
    out: AwaitableDeferred[T] = AwaitableDeferred(lambda _: d.cancel())
    d.addBoth(_relay, out)
    return out


def _relay(result: Any, out: Deferred[Any]) -> None:
    # When ``out`` is cancelled its canceller cancels ``d``, which fires ``d``
    # (a Deferred cancel always does) and so ``out`` through here; a result
    # arriving after ``out`` fired some other way is dropped, not raised.
    if not out.called:
        if isinstance(result, Failure):
            out.errback(result)
        else:
            out.callback(result)


class _Bridge(Deferred[Any]):
    """What :meth:`AwaitableDeferred.__await__` yields inside an asyncio
    Task step: a Deferred for a Twisted driver, a Future for a Task.

    Which driver took it is known once it calls ``add_done_callback``
    (a Task) or adds callbacks (Twisted); from then on the other half is
    unused.  ``result`` is a method here (asyncio's name), so the Deferred
    half is fired only for a Twisted driver, whose firing sets the
    attribute ``result`` as Deferreds do.
    """

    # A Task checks this attribute to accept a Future-compatible object, and
    # sets it to False when it starts waiting.
    _asyncio_future_blocking = True

    def __init__(self, source: Deferred[Any], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(self._cancel_source)
        self._source = source
        self._loop = loop
        self._outcome: Any = _PENDING
        self._done_callbacks: list[tuple[Callable[[Any], object], Context | None]] | None = None
        self._cancel_message: Any = None
        source.addBoth(self._source_fired)

    def __repr__(self) -> str:
        # Deferred's repr shows ``result``, which is a method here until the
        # Deferred half fires: that repr would recurse.
        state = "pending" if self._outcome is _PENDING else "done"
        return f"<awaiting {self._source!r} ({state})>"

    # -- the source ---------------------------------------------------------

    def _source_fired(self, result: Any) -> None:
        if self._outcome is not _PENDING:
            # The Task was cancelled first: this is the cancelled source's
            # failure (or a late result), taken so that nothing is left
            # unhandled.
            return None
        self._outcome = result
        if self._done_callbacks is not None:
            self._schedule_callbacks()
        else:
            # A Twisted driver (or nobody yet): fire the Deferred half.
            Deferred.callback(self, result)
        return None

    def _cancel_source(self, _: Deferred[Any]) -> None:
        self._source.cancel()

    def outcome(self) -> Any:
        """The source's result, or raise its failure, after the driver resumed."""
        out = self._outcome
        if out is _PENDING:  # pragma: no cover - both drivers resume only once fired
            raise RuntimeError("awaited result read before the Deferred fired")
        if out is _CANCELLED:
            raise asyncio.CancelledError(self._cancel_message)
        if isinstance(out, Failure):
            if self._done_callbacks is not None and out.check(CancelledError):
                # The Deferred was cancelled under a Task: asyncio's own
                # exception, so the Task ends cancelled as asyncio code expects.
                raise asyncio.CancelledError()
            out.raiseException()
        return out

    # -- the Future half (used by an asyncio Task only) ---------------------

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def add_done_callback(self, fn: Callable[[Any], object], *, context: Context | None = None) -> None:
        if self._done_callbacks is None:
            self._done_callbacks = []
        self._done_callbacks.append((fn, context))
        if self._outcome is not _PENDING:
            self._schedule_callbacks()

    def remove_done_callback(self, fn: Callable[[Any], object]) -> int:
        callbacks = self._done_callbacks or []
        kept = [(f, c) for f, c in callbacks if f != fn]
        self._done_callbacks = kept
        return len(callbacks) - len(kept)

    def _schedule_callbacks(self) -> None:
        callbacks, self._done_callbacks = self._done_callbacks or [], []
        for fn, context in callbacks:
            self._loop.call_soon(fn, self, context=context)

    def done(self) -> bool:
        return self._outcome is not _PENDING

    def cancelled(self) -> bool:
        return self._outcome is _CANCELLED

    def result(self) -> Any:  # type: ignore[override]
        if self._outcome is _PENDING:
            raise asyncio.InvalidStateError("result is not set")
        return self.outcome()

    def exception(self) -> BaseException | None:
        try:
            self.result()
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            return e
        return None

    def cancel(self, msg: Any = None) -> bool:  # type: ignore[override]
        if self._done_callbacks is None:
            # Twisted's driver cancelling the Deferred it waits on.
            Deferred.cancel(self)
            return True
        if self._outcome is not _PENDING:
            return False
        # A Task being cancelled: cancel the source (aborting the call), and
        # end cancelled whatever the source fails with.
        self._outcome = _CANCELLED
        self._cancel_message = msg
        self._source.cancel()
        self._schedule_callbacks()
        return True


async def as_coroutine(thing: Awaitable[Any]) -> Any:
    """Any awaitable as a coroutine, for ``Deferred.fromCoroutine``."""
    return await thing


__all__ = ["AwaitableDeferred", "as_coroutine", "awaitable", "default_reactor"]
