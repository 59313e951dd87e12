"""When to retry a call, and how long to wait first: :class:`RetryPolicy`.

Pure: no reactor, no I/O, no sleeping.  The policy answers questions (is
this error worth another attempt? how long to wait?) and the client's loop
owns the waiting (``clock.callLater``) and the count that becomes
``Reply.attempts``, as urllib3's ``Retry`` answers and its pool sleeps.

What is retried, and why only that:

- a status in :attr:`RetryPolicy.statuses` (rate limits, overload, gateway
  failures: the request was refused before it did anything);
- ``ConnectError`` and ``RequestTimeout("connect")``: nothing was sent;
- a connection lost before any byte of the response (``TransportError``
  with ``before_response``): a stale keep-alive connection, a proxy reset;
- a receive or idle timeout only with ``retry_timeouts=True``: the server
  may have done the work (and billed it) already;
- never a TLS failure (a certificate does not fix itself), a pool wait, a
  body that does not decode or an error inside a stream.

The server has the last word: ``x-should-retry: true|false`` (OpenAI,
Anthropic) overrides the status list, and ``retry-after-ms``,
``Retry-After`` or Gemini's ``RetryInfo`` (already parsed into
``HTTPStatusError.retry_after``) set the delay when it is at most
:attr:`~RetryPolicy.max_retry_after`; a longer one falls back to the
backoff rather than park the call for an hour.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import ConnectError, HTTPStatusError, NousHTTPError, RequestTimeout, TLSError, TransportError

DEFAULT_STATUSES = (408, 409, 429, 500, 502, 503, 504, 529)

# 2 ** 62 seconds is past any max_delay; a larger exponent overflows a float.
_MAX_EXPONENT = 62


class Retry(NamedTuple):
    """The decision to retry: why, and after how many seconds."""

    reason: str
    delay: float


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"RetryPolicy.{name} must be a number of seconds, not {type(value).__name__}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"RetryPolicy.{name} must be a finite number of seconds >= 0, not {value!r}")
    return float(value)


def _statuses(value: object) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"RetryPolicy.statuses must be a collection of status codes, not {type(value).__name__}")
    out = []
    for code in value:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"RetryPolicy.statuses must hold ints, not {type(code).__name__} ({code!r})")
        if not 100 <= code <= 599:
            raise ValueError(f"RetryPolicy.statuses: {code} is not an HTTP status code (100-599)")
        out.append(code)
    return tuple(out)


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried.  Frozen; checked when made.

    :ivar max_retries: retries after the first attempt (0: never retry).
    :ivar initial_delay: seconds before the first retry when the server
        names no delay; doubled for each further retry.
    :ivar max_delay: the cap on that backoff, in seconds.
    :ivar jitter: the fraction of each backoff delay taken off at random
        (0.25: between 75% and 100% of it), so that clients refused
        together do not return together.
    :ivar statuses: the HTTP statuses worth a retry.
    :ivar max_retry_after: the longest server-named delay honoured, in
        seconds; a longer one falls back to the backoff.
    :ivar retry_timeouts: retry after a receive or idle timeout too (off by
        default: the server may have done, and billed, the work).
    """

    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    statuses: tuple[int, ...] = DEFAULT_STATUSES
    max_retry_after: float = 60.0
    retry_timeouts: bool = False

    def __post_init__(self) -> None:
        n = self.max_retries
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"RetryPolicy.max_retries must be an int, not {type(n).__name__}")
        if n < 0:
            raise ValueError(f"RetryPolicy.max_retries must be 0 or more, not {n}")
        for name in ("initial_delay", "max_delay", "max_retry_after"):
            object.__setattr__(self, name, _seconds(name, getattr(self, name)))
        j = self.jitter
        if isinstance(j, bool) or not isinstance(j, (int, float)):
            raise TypeError(f"RetryPolicy.jitter must be a number between 0 and 1, not {type(j).__name__}")
        if not 0 <= j <= 1:
            raise ValueError(f"RetryPolicy.jitter must be between 0 and 1, not {j!r}")
        object.__setattr__(self, "jitter", float(j))
        object.__setattr__(self, "statuses", _statuses(self.statuses))
        if not isinstance(self.retry_timeouts, bool):
            raise TypeError(f"RetryPolicy.retry_timeouts must be a bool, not {type(self.retry_timeouts).__name__}")

    @classmethod
    def coerce(cls, value: object, name: str = "retries") -> RetryPolicy | None:
        """``value`` as a policy: an int is ``max_retries`` with the default
        policy; a policy is itself; None is None (the caller falls back)."""
        if value is None or isinstance(value, RetryPolicy):
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(
                f"{name} must be an int (the number of retries), a RetryPolicy or None, not {type(value).__name__}"
            )
        if value < 0:
            raise ValueError(f"{name} must be 0 or more, not {value}")
        return cls(max_retries=value)

    def reason(self, error: BaseException) -> str | None:
        """Why ``error`` is worth another attempt, or None when it is not
        (whatever the count)."""
        if isinstance(error, HTTPStatusError):
            verdict = error.headers.get("x-should-retry", "").strip().lower()
            if verdict == "true":
                return f"HTTP {error.status}, x-should-retry: true"
            if verdict == "false":
                return None
            return f"HTTP {error.status}" if error.status in self.statuses else None
        if isinstance(error, RequestTimeout):
            if error.phase == "connect":
                return "connect timeout"
            if error.phase in ("receive", "idle") and self.retry_timeouts:
                return f"{error.phase} timeout"
            return None
        if isinstance(error, TLSError):
            return None
        if isinstance(error, ConnectError):
            return "connect error"
        if isinstance(error, TransportError) and error.before_response:
            return "connection lost before the response"
        return None

    def delay(self, retries_done: int, error: BaseException, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retries_done + 1``."""
        named = getattr(error, "retry_after", None)
        if isinstance(named, (int, float)) and 0 <= named <= self.max_retry_after:
            return float(named)
        backoff = min(self.initial_delay * 2.0 ** min(retries_done, _MAX_EXPONENT), self.max_delay)
        return backoff * (1.0 - self.jitter * rand())

    def next_retry(
        self, retries_done: int, error: BaseException, rand: Callable[[], float] = random.random
    ) -> Retry | None:
        """The retry to make after ``error``, or None to give up: the retries
        are spent, or the error is not worth one."""
        if retries_done >= self.max_retries:
            return None
        why = self.reason(error)
        if why is None:
            return None
        return Retry(why, self.delay(retries_done, error, rand))


def gave_up(error: Any, attempts: int) -> None:
    """Record on the final error how many attempts the call made."""
    if isinstance(error, NousHTTPError):
        error.attempts = attempts


__all__ = ["DEFAULT_STATUSES", "Retry", "RetryPolicy", "gave_up"]
