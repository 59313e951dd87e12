"""EventStream: the handle the user holds on a stream.

Three ways to read it: ``async for``, ``consume(on_event)``, or as an
``IPushProducer``; ``cancel()`` and ``async with`` stop it early.  It is a
thin reader over a :class:`~nous_twisted.streamcore.StreamCore`, and nothing
on the reactor's side refers to it: a handle nobody holds any more is
collected, and its finaliser cancels the core, which aborts the connection
and frees its pool slot (``async for`` does not close an iterator on
``break``; only this does).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from .events import StreamDone, StreamError
from .headers import ResponseHeaders
from .reactors import as_coroutine, awaitable
from .response import request_id_of, response_headers
from .stream_attempts import AttemptsCore
from .streamcore import END, NOTHING, StreamCore

Terminal = StreamDone | StreamError


def _abandoned(reactor: Any, core: StreamCore | AttemptsCore) -> None:
    # A finaliser may run in the middle of anything (it runs when the
    # collector does): let the reactor cancel at its next turn.
    if not core.done:
        reactor.callFromThread(core.cancel)


@implementer(IPushProducer)
class EventStream:
    """A stream of LLM events.  Made by :func:`nous_twisted.stream`.

    ``status`` and ``headers`` are set once the response headers arrive.
    """

    __slots__ = ("_core", "_mode", "_finalizer", "__weakref__")

    def __init__(self, core: StreamCore | AttemptsCore, reactor: Any) -> None:
        self._core = core
        self._mode: str | None = None
        self._finalizer = weakref.finalize(self, _abandoned, reactor, core)
        self._finalizer.atexit = False

    def __repr__(self) -> str:
        state = "done" if self._core.done else "open"
        return f"<EventStream {self._core.url} {state}, {self._core.buffered} buffered>"

    # -- public attributes, read from the core ------------------------------

    @property
    def url(self) -> str:
        """The URL, without its query string."""
        return self._core.url

    @property
    def format(self) -> str | None:
        """The wire format: given, or picked from the response Content-Type."""
        return self._core.format

    @property
    def timeout(self) -> float:
        return self._core.timeout

    @property
    def status(self) -> int | None:
        """The HTTP status, once the response headers arrived (None before)."""
        return self._core.status

    @property
    def headers(self) -> ResponseHeaders | None:
        """The response headers, once they arrived (None before): the same
        read-only mapping as ``Reply.headers`` and ``HTTPStatusError.headers``."""
        raw = self._core.headers
        return None if raw is None else response_headers(raw)

    @property
    def request_id(self) -> str | None:
        """The provider's request id (``x-request-id`` or ``request-id``), once
        the response headers arrived."""
        headers = self.headers
        return None if headers is None else request_id_of(headers)

    @property
    def done(self) -> bool:
        """True once the terminal event was produced (it may not have been
        read yet)."""
        return self._core.done

    @property
    def bytes_received(self) -> int:
        """Body bytes taken off the socket so far."""
        return self._core.bytes_received

    @property
    def buffered(self) -> int:
        """Events decoded and not yet delivered."""
        return self._core.buffered

    @property
    def max_buffered(self) -> int:
        """The most events ever queued at once."""
        return self._core.max_buffered

    # -- async for -------------------------------------------------------------

    def __aiter__(self) -> EventStream:
        self._set_mode("iter")
        return self

    async def __anext__(self) -> Any:
        core = self._core
        event = core.take()
        while event is NOTHING:
            # Wait, then take: an event is never handed over in flight, so a
            # read cancelled at any moment (asyncio.wait_for) loses nothing.
            await awaitable(core.wait())
            event = core.take()
        if event is END:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    # -- consume() ---------------------------------------------------------------

    def consume(self, on_event: Callable[[Any], Any]) -> Deferred[Terminal]:
        """Call ``on_event(event)`` for every event, the terminal one included.

        When ``on_event`` returns a Deferred or an awaitable, the next event
        waits for it.  The returned Deferred fires with the terminal event; if
        ``on_event`` raises (or its Deferred fails) the stream is cancelled and
        the Deferred fails with that error.  Cancelling it cancels the stream.
        """
        self._set_mode("consume")
        # consume() drives the stream to its end by itself: dropping the
        # handle now is fine, and cancelling the Deferred is how to stop it.
        self._finalizer.detach()
        return awaitable(_Consumer(self._core, on_event).start())

    def _set_mode(self, mode: str) -> None:
        if self._mode is None:
            self._mode = mode
            return
        if mode == "consume":
            raise RuntimeError(
                "consume() was already called on this EventStream"
                if self._mode == "consume"
                else "this EventStream is already read by 'async for'; use one way to read it"
            )
        if self._mode == "consume":
            raise RuntimeError("this EventStream is already read by consume(); use one way to read it")

    # -- IPushProducer -------------------------------------------------------------

    def pauseProducing(self) -> None:
        """Hold events back until :meth:`resumeProducing`; the idle timer
        stops (``max_pause`` bounds how long)."""
        self._core.pause()

    def resumeProducing(self) -> None:
        self._core.resume()

    def stopProducing(self) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Close the connection at once and end with ``StreamDone("cancelled")``.

        Events not yet delivered are dropped.  After the terminal event was
        delivered this does nothing.
        """
        self._core.cancel()


class _Consumer:
    """Drives ``on_event`` from the core; holds no reference to the handle.

    Cancelling :attr:`done` cancels the stream, and ``on_event`` still gets
    the terminal ``StreamDone("cancelled")``, after any Deferred it returned
    for the previous event has fired; ``done`` fires with it at once (a
    cancelled Deferred must fire before ``cancel()`` returns).
    """

    __slots__ = ("_busy", "_stepping", "_stopped", "_sync", "core", "done", "on_event")

    def __init__(self, core: StreamCore | AttemptsCore, on_event: Callable[[Any], Any]) -> None:
        self.core = core
        self.on_event = on_event
        self.done: Deferred[Terminal] = Deferred(self._cancel)
        self._busy = False  # waiting for a Deferred that on_event returned
        self._stepping = False
        self._stopped = False  # on_event failed: nothing more is delivered
        self._sync: list[Any] = []

    def start(self) -> Deferred[Terminal]:
        self.step()
        return self.done

    def _cancel(self, done: Deferred[Terminal]) -> None:
        self.core.cancel()
        if self._busy:
            done.callback(StreamDone("cancelled"))
        else:
            self.step()  # delivers the terminal and fires done

    def step(self, _: object = None) -> None:
        core = self.core
        while not self._stopped:
            event = core.take()
            if event is NOTHING:
                core.when_ready(self.step)
                return
            if event is END:
                return
            last = isinstance(event, (StreamDone, StreamError))
            try:
                result = self.on_event(event)
            except Exception:
                self.failed(Failure())
                return
            if result is not None and (isinstance(result, Deferred) or hasattr(result, "__await__")):
                d = result if isinstance(result, Deferred) else Deferred.fromCoroutine(as_coroutine(result))
                # Trampoline: a Deferred that has fired already continues this
                # loop instead of recursing once per event.
                self._stepping = True
                self._busy = True
                d.addBoth(self._after, event, last)
                self._stepping = False
                if not self._sync:
                    return
                self._busy = False
                outcome = self._sync.pop()
                if isinstance(outcome, Failure):
                    self.failed(outcome)
                    return
            if last:
                self._finish(event)
                return

    def _finish(self, terminal: Any) -> None:
        self._stopped = True
        if not self.done.called:
            self.done.callback(terminal)

    def _after(self, result: Any, event: Any, last: bool) -> None:
        if self._stepping:
            self._sync.append(result)
            return
        self._busy = False
        if isinstance(result, Failure):
            self.failed(result)
        elif last:
            self._finish(event)
        else:
            self.step()

    def failed(self, failure: Failure) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.core.cancel()
        if not self.done.called:
            self.done.errback(failure)
