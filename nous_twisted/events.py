"""The terminal events of a stream (data events are the decoded JSON values)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import NousHTTPError


@dataclass(frozen=True)
class StreamDone:
    """The stream ended normally.

    :ivar reason: ``"stop"`` (the provider's end signal), ``"eof"`` (the body
        ended cleanly with no end signal) or ``"cancelled"``.
    """

    reason: str


@dataclass(frozen=True)
class StreamError:
    """The stream ended with an error; ``error`` is a NousHTTPError."""

    error: NousHTTPError
