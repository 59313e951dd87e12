"""Translating Twisted's and treq's failures into the library's errors.

The one boundary where foreign exceptions become :mod:`nous_twisted.errors`
(as httpx's transports do): the exchanges hand every failure they did not
raise themselves to :func:`classify`.
"""

from __future__ import annotations

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
    _WrapperException,
)

from .errors import ConnectError, NousHTTPError, TLSError, TransportError

try:
    from OpenSSL.SSL import Error as _SSLError
except ImportError:  # pragma: no cover
    _SSLError = ()  # type: ignore[assignment,misc]
try:
    from service_identity import VerificationError as _VerificationError
except ImportError:  # pragma: no cover
    _VerificationError = ()  # type: ignore[assignment,misc]


def is_tls_failure(value: BaseException) -> bool:
    return isinstance(value, (_SSLError, _VerificationError))


def reasons(value: BaseException | None) -> list[BaseException]:
    """The exceptions inside Twisted's ResponseFailed & co., or ``value`` itself."""
    if isinstance(value, _WrapperException):
        return [r.value for r in value.reasons if r.value is not None]
    return [] if value is None else [value]


def describe(e: BaseException) -> str:
    """A short text for an exception, for messages (never header values)."""
    text = str(e).strip()
    if isinstance(e, ierror.ConnectionRefusedError):
        return "connection refused"
    if is_tls_failure(e) and e.args and isinstance(e.args[0], list):
        # OpenSSL's list of (lib, func, reason) tuples: keep the reasons.
        parts = [t[-1] for t in e.args[0] if isinstance(t, tuple) and t]
        if parts:
            return "; ".join(str(p) for p in parts)
    name = type(e).__name__
    if text.startswith(name + ":"):
        return text  # some libraries (h2) put the class name in the message already
    return f"{name}: {text}" if text else name


def classify(failure: Failure, url: str) -> Failure:
    """Map a Twisted/treq failure onto the library's errors.

    Our own errors and cancellation pass through; an exception we do not
    recognise passes through too, rather than hide a bug behind a vague name.
    """
    value = failure.value
    if isinstance(value, (NousHTTPError, CancelledError)):
        return failure
    found = reasons(value)
    for r in found:
        if isinstance(r, (NousHTTPError, CancelledError)):
            return Failure(r)
    for r in found:
        if is_tls_failure(r):
            return Failure(TLSError(f"TLS handshake with {url} failed: {describe(r)}"))
    if isinstance(value, ierror.DNSLookupError):
        return Failure(ConnectError(f"cannot resolve the host of {url}: {describe(value)}"))
    if isinstance(value, (ierror.ConnectError, ConnectionRefusedError)):
        return Failure(ConnectError(f"cannot connect to {url}: {describe(value)}"))
    if isinstance(value, _WrapperException) or isinstance(
        value, (ierror.ConnectionLost, ierror.ConnectionDone, ConnectionError)
    ):
        what = ", ".join(describe(r) for r in found)
        if isinstance(value, (ResponseNeverReceived, RequestNotSent, RequestTransmissionFailed)):
            error = TransportError(f"the connection to {url} was lost before any byte of the response: {what}")
            error.before_response = True
            return Failure(error)
        return Failure(TransportError(f"the connection to {url} failed before a complete response: {what}"))
    return failure
