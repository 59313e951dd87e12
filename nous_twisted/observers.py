"""Watching calls: :func:`observe` and the :class:`CallEvent` it delivers.

This is where metrics plug in (Prometheus, OpenTelemetry, Scrapy stats).
Every call reports its steps: ``"start"``, ``"retry"``, ``"response"``
(any HTTP status), ``"failure"`` (the attempt's error) and, for streams,
``"stream_end"``.  Events carry what a dashboard needs and nothing secret:
the URL as displayed (no user info, query values redacted), never header
values of the request.

As Twisted's log publisher does, every observer is called and one that
raises cannot break a call or the other observers: it is logged and removed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from .errors import ConnectError, DecodeError, HTTPStatusError, RequestTimeout, TLSError, TransportError
from .headers import ResponseHeaders

log = Logger(namespace="nous_twisted")

START = "start"
RETRY = "retry"
RESPONSE = "response"
FAILURE = "failure"
STREAM_END = "stream_end"


@dataclass(frozen=True)
class CallEvent:
    """One step of one call.

    :ivar kind: ``"start"``, ``"retry"``, ``"response"``, ``"failure"`` or
        ``"stream_end"``.
    :ivar method: ``"POST"`` or ``"GET"``.
    :ivar url: the URL as displayed (no user info, query values redacted).
    :ivar backend: the backend's name (``"treq"``, ``"agent"``, ...).
    :ivar attempt: the attempt this step belongs to (1 for the first).
    :ivar stream: True for ``stream()`` calls.
    :ivar status: ``"response"``: the HTTP status.
    :ivar headers: ``"response"``: the response headers.
    :ivar request_id: ``"response"``: the provider's request id, if any.
    :ivar elapsed: seconds since the call started.
    :ivar error_type: ``"failure"`` (and ``"retry"``): the error's class name.
    :ivar phase: ``"failure"``: where it failed: ``"pool"``, ``"connect"``,
        ``"receive"`` or ``"idle"`` for timeouts, ``"connect"`` for
        connect and TLS errors, ``"transport"`` for other transport errors,
        ``"status"`` for HTTP errors, ``"decode"`` or ``"stream"``.
    :ivar reason: ``"retry"``: why; ``"stream_end"``: the terminal reason
        (``"stop"``, ``"eof"``, ``"cancelled"``, or the error's class name).
    :ivar delay: ``"retry"``: seconds until the next attempt.
    :ivar events: ``"stream_end"``: data events delivered.
    :ivar bytes_received: ``"stream_end"``: body bytes received.
    :ivar usage: ``"stream_end"`` and ``"response"``: token counts when the
        provider reported them (``prompt_tokens``, ``completion_tokens``,
        ``total_tokens``; see :func:`usage_of`).
    """

    kind: str
    method: str
    url: str
    backend: str
    attempt: int
    stream: bool = False
    status: int | None = None
    headers: ResponseHeaders | None = None
    request_id: str | None = None
    elapsed: float | None = None
    error_type: str | None = None
    phase: str | None = None
    reason: str | None = None
    delay: float | None = None
    events: int | None = None
    bytes_received: int | None = None
    usage: Mapping[str, int] | None = None


Observer = Callable[[CallEvent], object]

_observers: list[Observer] = []


def observe(callback: Observer) -> Callable[[], None]:
    """Call ``callback(event)`` with a :class:`CallEvent` at each step of
    every call; returns the function that unsubscribes it.

    A callback that raises is logged and removed.  Callbacks run on the
    reactor thread, inside the call: keep them short.
    """
    if not callable(callback):
        raise TypeError(f"observe() needs a callable, not {type(callback).__name__}")
    _observers.append(callback)

    def unsubscribe() -> None:
        if callback in _observers:
            _observers.remove(callback)

    return unsubscribe


def watched() -> bool:
    """True when someone observes calls (the client skips the work otherwise)."""
    return bool(_observers)


def emit(event: CallEvent) -> None:
    """Deliver ``event`` to every observer."""
    for callback in tuple(_observers):
        try:
            callback(event)
        except Exception:
            if callback in _observers:
                _observers.remove(callback)
            log.failure("nous_twisted: observer {observer!r} raised and was removed", observer=callback)


def failure_phase(error: BaseException) -> str:
    """Where a call failed, for :attr:`CallEvent.phase`."""
    if isinstance(error, RequestTimeout):
        return error.phase
    if isinstance(error, HTTPStatusError):
        return "status"
    if isinstance(error, (TLSError, ConnectError)):
        return "connect"
    if isinstance(error, TransportError):
        return "transport"
    if isinstance(error, DecodeError):
        return "decode"
    return "stream"


def _ints(source: Mapping[str, Any], names: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for theirs, ours in names.items():
        v = source.get(theirs)
        if isinstance(v, int) and not isinstance(v, bool):
            out[ours] = v
    return out


_OPENAI = {"prompt_tokens": "prompt_tokens", "completion_tokens": "completion_tokens", "total_tokens": "total_tokens"}
_ANTHROPIC = {"input_tokens": "prompt_tokens", "output_tokens": "completion_tokens"}
_OLLAMA = {"prompt_eval_count": "prompt_tokens", "eval_count": "completion_tokens"}
_GEMINI = {"promptTokenCount": "prompt_tokens", "candidatesTokenCount": "completion_tokens", "totalTokenCount": "total_tokens"}


def usage_of(value: Any) -> dict[str, int] | None:
    """Token counts in one reply or stream event, in OpenAI's names.

    OpenAI's ``usage`` (the last chunk of a stream with
    ``stream_options.include_usage``), Anthropic's ``usage`` (in
    ``message_start``'s message, then ``message_delta``), Ollama's
    ``prompt_eval_count``/``eval_count`` and Gemini's ``usageMetadata``.
    None when the value reports none.
    """
    if type(value) is not dict:
        return None
    usage = value.get("usage")
    if usage is None and value.get("type") == "message_start":
        message = value.get("message")
        usage = message.get("usage") if isinstance(message, dict) else None
    if isinstance(usage, dict):
        found = _ints(usage, _OPENAI) or _ints(usage, _ANTHROPIC)
        return found or None
    meta = value.get("usageMetadata")
    if isinstance(meta, dict):
        return _ints(meta, _GEMINI) or None
    if "eval_count" in value or "prompt_eval_count" in value:
        return _ints(value, _OLLAMA) or None
    return None


def merge_usage(total: dict[str, int] | None, found: dict[str, int]) -> dict[str, int]:
    """Fold one event's counts into a stream's: each count is the latest
    seen (providers report running totals, Anthropic in two halves)."""
    merged = dict(total or {})
    merged.update(found)
    if "total_tokens" not in found and "prompt_tokens" in merged and "completion_tokens" in merged:
        merged["total_tokens"] = merged["prompt_tokens"] + merged["completion_tokens"]
    return merged


__all__ = ["CallEvent", "emit", "failure_phase", "merge_usage", "observe", "usage_of", "watched"]
