"""A stream call across its attempts: retry before the first event, observe the end.

:class:`AttemptsCore` offers the reader's side of a
:class:`~nous_twisted.streamcore.StreamCore` (``take``, ``wait``,
``when_ready``, ``pause``, ``resume``, ``cancel`` and the public
attributes) over a sequence of attempt cores, so the user's
:class:`~nous_twisted.eventstream.EventStream` handle never changes while the
call is retried underneath it.  A failure is retried only while no data
event has been delivered: once the consumer has seen an event, a retry would
show it the reply twice.

It is used only when a call has retries or observers; a plain stream reads
its attempt's core directly, at no cost per event.

States: ``_core`` is the attempt being read; between attempts it is None and
``_timer`` holds the backoff; ``_final`` is a terminal event of our own (a
cancel during the backoff), delivered once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from .events import StreamDone, StreamError
from .headers import ResponseHeaders
from .observers import (
    FAILURE,
    RESPONSE,
    RETRY,
    STREAM_END,
    CallEvent,
    emit,
    failure_phase,
    merge_usage,
    usage_of,
)
from .response import request_id_of, response_headers
from .retry import RetryPolicy, gave_up
from .streamcore import END, NOTHING, StreamCore

log = Logger(namespace="nous_twisted")


class AttemptsCore:
    """The reader's side of a stream call that may take several attempts."""

    __slots__ = (
        "__weakref__", "_attempt", "_clock", "_core", "_delivered", "_describe", "_events", "_final",
        "_headers", "_observed", "_paused", "_policy", "_responded", "_start", "_started_at", "_timer",
        "_usage", "_waiter",
    )

    def __init__(
        self,
        clock: Any,
        start: Callable[[], StreamCore],
        policy: RetryPolicy | None,
        describe: Callable[..., CallEvent] | None,
    ) -> None:
        """
        :param start: starts one attempt and returns its core.
        :param policy: the retry policy, or None for no retries.
        :param describe: makes the call's CallEvents (``describe(kind,
            attempt, **fields)``) when observed; None when nobody observes.
        """
        self._clock = clock
        self._start = start
        self._policy = policy
        self._describe = describe
        self._observed = describe is not None
        self._started_at = clock.seconds()
        self._attempt = 1
        self._delivered = False
        self._events = 0
        self._usage: dict[str, int] | None = None
        self._responded = False
        self._headers: ResponseHeaders | None = None
        self._paused = False
        self._timer: IDelayedCall | None = None
        self._final: Any = None
        self._waiter: Any = None
        self._core: StreamCore | None = start()

    def __repr__(self) -> str:
        return f"<AttemptsCore attempt {self._attempt} {self._core!r}>"

    # -- attributes the handle reads -------------------------------------------

    @property
    def url(self) -> str:
        return self._core.url if self._core is not None else ""

    @property
    def format(self) -> str | None:
        return self._core.format if self._core is not None else None

    @property
    def timeout(self) -> float:
        return self._core.timeout if self._core is not None else 0.0

    @property
    def status(self) -> int | None:
        return self._core.status if self._core is not None else None

    @property
    def headers(self) -> Any:
        return self._core.headers if self._core is not None else None

    @property
    def bytes_received(self) -> int:
        return self._core.bytes_received if self._core is not None else 0

    @property
    def buffered(self) -> int:
        return self._core.buffered if self._core is not None else 0

    @property
    def max_buffered(self) -> int:
        return self._core.max_buffered if self._core is not None else 0

    @property
    def done(self) -> bool:
        if self._core is None:
            return self._final is not None
        return self._core.done

    @property
    def attempts(self) -> int:
        return self._attempt

    # -- the reader's side ---------------------------------------------------

    def take(self) -> Any:
        core = self._core
        if core is None:
            final = self._final
            if final is None:
                return NOTHING
            if final is END:
                return END
            self._final = END
            return final
        event = core.take()
        if type(event) is dict and not self._observed:
            self._delivered = True
            return event
        if event is NOTHING or event is END:
            return event
        if self._observed and not self._responded and core.status is not None:
            self._responded = True
            self._report_response(core)
        if isinstance(event, StreamError):
            return self._failed(event)
        if isinstance(event, StreamDone):
            self._report_end(event.reason)
            return event
        self._delivered = True
        if self._observed:
            self._events += 1
            found = usage_of(event)
            if found is not None:
                self._usage = merge_usage(self._usage, found)
        return event

    def wait(self) -> Deferred[None]:
        core = self._core
        if core is not None:
            return core.wait()
        d: Deferred[None] = Deferred(self._wait_cancelled)
        if self._final is not None:
            d.callback(None)
        else:
            self._waiter = d
        return d

    def when_ready(self, ready: Callable[[], object]) -> None:
        core = self._core
        if core is not None:
            core.when_ready(ready)
        elif self._final is not None:
            ready()
        else:
            self._waiter = ready

    def _wait_cancelled(self, d: Deferred[None]) -> None:
        if self._waiter is d:
            self._waiter = None

    def pause(self) -> None:
        self._paused = True
        if self._core is not None:
            self._core.pause()

    def resume(self) -> None:
        self._paused = False
        if self._core is not None:
            self._core.resume()

    def cancel(self) -> None:
        core = self._core
        if core is not None:
            core.cancel()
            return
        if self._final is not None:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._final = StreamDone("cancelled")
        self._report_end("cancelled")
        self._wake()

    # -- attempts ----------------------------------------------------------------

    def _failed(self, event: StreamError) -> Any:
        error = event.error
        policy = self._policy
        retry = None
        if policy is not None and not self._delivered:
            retry = policy.next_retry(self._attempt - 1, error)
        if self._observed:
            self._emit(
                FAILURE, error_type=type(error).__name__, phase=failure_phase(error),
            )
        if retry is None:
            gave_up(error, self._attempt)
            self._report_end(type(error).__name__)
            return event
        log.info(
            "retrying {url} in {delay:.2f} s (attempt {next} of {most}): {reason}",
            url=self.url, delay=retry.delay, next=self._attempt + 1,
            most=policy.max_retries + 1 if policy is not None else 1, reason=retry.reason,
        )
        if self._observed:
            self._emit(RETRY, reason=retry.reason, delay=retry.delay, error_type=type(error).__name__)
        # The failed attempt has ended and released its connection: nothing
        # is held during the wait.
        self._core = None
        self._responded = False
        self._timer = self._clock.callLater(retry.delay, self._next_attempt)
        return NOTHING

    def _next_attempt(self) -> None:
        self._timer = None
        self._attempt += 1
        core = self._start()
        if self._paused:
            core.pause()
        self._core = core
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is None:
            return
        self._waiter = None
        if isinstance(w, Deferred):
            w.callback(None)
        else:
            w()

    # -- observing -----------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        assert self._describe is not None
        emit(self._describe(kind, self._attempt, elapsed=self._clock.seconds() - self._started_at, **fields))

    def _report_response(self, core: StreamCore) -> None:
        raw = core.headers
        headers = response_headers(raw) if raw is not None else ResponseHeaders()
        self._emit(RESPONSE, status=core.status, headers=headers, request_id=request_id_of(headers))

    def _report_end(self, reason: str) -> None:
        if self._observed:
            self._emit(
                STREAM_END, reason=reason, events=self._events, bytes_received=self.bytes_received,
                usage=self._usage,
            )


__all__ = ["AttemptsCore"]
