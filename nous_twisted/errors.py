"""The typed errors of nous_twisted.

Every failure the library reports is a :class:`NousHTTPError`.  Messages name
what went wrong and how to fix it; they never carry header values or query
strings, which is where API keys live.

The hierarchy::

    Exception
     └── NousHTTPError
          ├── BackendConfigError      (also a ValueError)
          ├── HTTPStatusError         (non-2xx)
          │    ├── BadRequestError           400
          │    ├── AuthenticationError       401
          │    ├── PermissionDeniedError     403
          │    ├── NotFoundError             404
          │    ├── ConflictError             409
          │    ├── UnprocessableEntityError  422
          │    ├── RateLimitError            429
          │    └── InternalServerError       >= 500
          ├── TransportError
          │    ├── ConnectError
          │    ├── TLSError
          │    ├── RequestTimeout
          │    └── StreamTruncated
          ├── DecodeError
          ├── BufferOverflow
          └── ProviderError

Every error survives ``pickle`` and ``copy`` with its attributes (they cross
process boundaries in multiprocessing, Celery and Scrapy pipelines): see
:meth:`NousHTTPError.__reduce__`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .headers import ResponseHeaders


class NousHTTPError(Exception):
    """The base of every error nous_twisted reports.

    :ivar attempts: how many attempts the call made before it gave up with
        this error (1 when it was not retried).
    """

    attempts: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # urllib3's exceptions give __reduce__ to the errors whose
        # constructors take more than the message.  Here the rebuild skips
        # __init__ altogether and restores args and attributes, so every
        # subclass round-trips, whatever its constructor, without its own.
        return _rebuild, (type(self), self.args), self.__dict__.copy()


def _rebuild(cls: type[NousHTTPError], args: tuple[Any, ...]) -> NousHTTPError:
    """An error of class ``cls`` with ``args``, its ``__init__`` not run:
    pickle then restores the attributes from the state."""
    err = cls.__new__(cls)
    err.args = args
    return err


class BackendConfigError(NousHTTPError, ValueError):
    """A backend setting names nothing usable.

    :ivar setting: where the value came from (an argument, an environment
        variable, a configuration key).
    :ivar value: the offending value, as text.
    """

    def __init__(self, setting: str, value: object, problem: str, accepted: str) -> None:
        self.setting = setting
        self.value = value
        super().__init__(f"{setting} = {value!r}: {problem}. Accepted: {accepted}.")


class HTTPStatusError(NousHTTPError):
    """The server answered with a status outside 2xx (redirects are not followed).

    :ivar status: the HTTP status code.
    :ivar body: the decoded JSON body when it parses, else the body as text;
        a value of the request's own (a key the server echoed) is replaced
        by ``[redacted]``.
    :ivar headers: the response headers, a read-only
        :class:`~nous_twisted.headers.ResponseHeaders` (lower-case names,
        repeated values joined with ``", "``), the same type as
        ``Reply.headers`` and ``EventStream.headers``.
    :ivar request_id: the provider's request id (``x-request-id`` or
        ``request-id``), or None.
    :ivar retry_after: seconds to wait before retrying, or None.
    """

    def __init__(
        self,
        status: int,
        body: Any,
        headers: Mapping[str, str],
        request_id: str | None,
        retry_after: float | None,
        url: str = "",
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers if isinstance(headers, ResponseHeaders) else ResponseHeaders(headers)
        self.request_id = request_id
        self.retry_after = retry_after
        self.url = url
        detail = _error_detail(body)
        parts = [f"HTTP {status}"]
        if url:
            parts.append(f"from {url}")
        message = " ".join(parts)
        if detail:
            message += f": {detail}"
        if request_id:
            message += f" (request id {request_id})"
        if retry_after is not None:
            message += f"; retry after {retry_after:g} s"
        super().__init__(message)


class BadRequestError(HTTPStatusError):
    """HTTP 400: the request is malformed (a bad parameter, a body the API refuses)."""


class AuthenticationError(HTTPStatusError):
    """HTTP 401: the API key is missing, wrong or revoked."""


class PermissionDeniedError(HTTPStatusError):
    """HTTP 403: the key is valid but may not use this model or endpoint."""


class NotFoundError(HTTPStatusError):
    """HTTP 404: no such endpoint or model (check the base URL and the model name)."""


class ConflictError(HTTPStatusError):
    """HTTP 409: the request conflicts with the resource's state (retryable by default)."""


class UnprocessableEntityError(HTTPStatusError):
    """HTTP 422: the body is well-formed but its values are refused."""


class RateLimitError(HTTPStatusError):
    """HTTP 429: too many requests or tokens; ``retry_after`` says when to retry."""


class InternalServerError(HTTPStatusError):
    """HTTP 500 and above: the provider failed or is overloaded (retryable by default)."""


_STATUS_CLASSES: dict[int, type[HTTPStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status: int) -> type[HTTPStatusError]:
    """The most specific :class:`HTTPStatusError` class for ``status``."""
    if status >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status, HTTPStatusError)


def _error_detail(body: Any) -> str:
    """The provider's own error message, when the body carries one."""
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message")
            if isinstance(msg, str):
                return msg[:300]
        elif isinstance(err, str):
            return err[:300]
    if isinstance(body, str):
        return body[:300]
    return ""


class TransportError(NousHTTPError):
    """The exchange failed below HTTP: connection, TLS, timeouts, truncation.

    :ivar before_response: True when the connection was lost after the
        request was sent and before any byte of the response arrived (a
        retry policy may resend it); False when a response had begun or it
        is not known.
    """

    before_response: bool = False


class ConnectError(TransportError):
    """No connection could be made (refused, unreachable, DNS failure)."""


class TLSError(TransportError):
    """The TLS handshake failed: an untrusted certificate, a host-name mismatch."""


class RequestTimeout(TransportError):
    """A timeout expired.

    :ivar phase: ``"connect"`` (DNS, TCP connect, TLS handshake, or waiting
        for a pool slot where no ``pool_timeout`` applies; through a proxy,
        its connect and CONNECT exchange too), ``"pool"``
        (waiting for a free pool connection, over ``pool_timeout``),
        ``"receive"`` (the whole response of ``post``) or ``"idle"`` (the gap
        between two stream events).
    :ivar timeout: the limit that expired, in seconds.
    :ivar step: within the connect phase, the step that ran out: ``"dns"``,
        ``"tcp"``, ``"tls"``, ``"pool"`` or ``"proxy"`` (the proxy's reply to
        CONNECT); None when not known.
    """

    def __init__(self, phase: str, timeout: float, url: str = "", step: str | None = None) -> None:
        self.phase = phase
        self.timeout = timeout
        self.step = step
        where = f" for {url}" if url else ""
        during = f" {_STEPS[step]}" if step in _STEPS else (f" during {step}" if step else "")
        hint = _STEP_HINTS.get(step or "", "") if phase == "connect" else ""
        hint = hint or _PHASE_HINTS.get(phase, "")
        super().__init__(f"{phase} timeout after {timeout:g} s{where}{during}" + (f"; {hint}" if hint else ""))


_STEPS = {
    "dns": "during the DNS lookup",
    "tcp": "during the TCP connect",
    "tls": "during the TLS handshake",
    "pool": "while waiting for a free pool connection",
    "proxy": "while the proxy opened the tunnel (CONNECT)",
}
_POOL_HINT = "raise pool_timeout or PoolSettings.max_connections"
_STEP_HINTS = {
    "dns": "raise connect_timeout, or check the DNS resolver",
    "tcp": "raise connect_timeout, or check that the host is reachable (firewall, proxy, port)",
    "tls": "raise connect_timeout, or check that the port speaks TLS",
    "pool": _POOL_HINT,
    "proxy": "raise connect_timeout, or check the proxy (is it up, does it allow CONNECT to this host and port?)",
}
_PHASE_HINTS = {
    "connect": "raise connect_timeout, or check that the host is reachable "
    "and the pool (PoolSettings.max_connections) is not saturated",
    "pool": f"waiting for a free pool connection: {_POOL_HINT}",
    "receive": "raise timeout= if the model needs longer to answer",
    "idle": "raise timeout= (the idle limit between two stream events)",
}


class StreamTruncated(TransportError):
    """The response body ended uncleanly (connection lost mid-body, an
    unterminated chunked body, or a stream ended before its end signal)."""


class DecodeError(NousHTTPError):
    """A 2xx body that cannot be decoded: not JSON, not UTF-8, or compressed
    in a way that does not decode.

    :ivar raw: the raw body bytes (or their first part), the request's own
        secrets replaced by ``[redacted]``.
    """

    def __init__(self, message: str, raw: bytes) -> None:
        self.raw = raw
        super().__init__(message)


class BufferOverflow(NousHTTPError):
    """An event, line or body over the size limit, or a consumer that held a
    stream paused past the backpressure limit."""


class ProviderError(NousHTTPError):
    """An error the provider delivered inside a successful stream.

    :ivar error_type: the provider's error type (``"overloaded_error"``, ...) or None.
    :ivar payload: the decoded error object as the provider sent it.
    """

    def __init__(self, payload: Any, error_type: str | None = None) -> None:
        self.payload = payload
        self.error_type = error_type
        detail = _error_detail(payload) or "the provider reported an error"
        prefix = f"{error_type}: " if error_type else ""
        super().__init__(f"provider error in stream: {prefix}{detail}")


__all__ = [
    "AuthenticationError",
    "BackendConfigError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "UnprocessableEntityError",
    "BufferOverflow",
    "ConnectError",
    "DecodeError",
    "HTTPStatusError",
    "NousHTTPError",
    "ProviderError",
    "RequestTimeout",
    "StreamTruncated",
    "TLSError",
    "TransportError",
]
