"""Turning a raw response into a value or a typed error.

Shared by every non-streaming backend, so that the same bytes give the same
result whichever backend moved them; the stream backends use the status-error
half for non-2xx streams.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from .errors import DecodeError, HTTPStatusError, status_error_class
from .headers import ResponseHeaders

log = Logger(namespace="nous_twisted")

LOGGED_BODY_BYTES = 500


@dataclass(frozen=True)
class RawResponse:
    """What a backend hands back: the status, the headers and the whole body."""

    status: int
    headers: Headers
    body: bytes


@dataclass(frozen=True)
class Reply:
    """A successful reply with its metadata: what ``post(...,
    full_response=True)`` fires with.

    :ivar value: the decoded JSON body (``{}`` for an empty body).
    :ivar status: the HTTP status (2xx).
    :ivar headers: the response headers (rate-limit headers and the like),
        the same read-only mapping as ``HTTPStatusError.headers``.
    :ivar request_id: the provider's request id (``x-request-id`` or
        ``request-id``), or None.
    :ivar elapsed: seconds from the call to the reply, retries and their
        waits included.
    :ivar attempts: how many attempts the call took (1 without a retry).
    """

    value: Any
    status: int
    headers: ResponseHeaders
    request_id: str | None
    elapsed: float
    attempts: int = 1


def response_headers(headers: Headers) -> ResponseHeaders:
    """Twisted's ``Headers`` as the public read-only mapping."""
    return ResponseHeaders.from_raw(headers.getAllRawHeaders())


def request_id_of(headers: ResponseHeaders) -> str | None:
    """The provider's request id: OpenAI's ``x-request-id``, Anthropic's ``request-id``."""
    return headers.get("x-request-id") or headers.get("request-id")


def header_dict(headers: Headers) -> dict[str, str]:
    """Lower-case names; repeated values joined with ", "."""
    out: dict[str, str] = {}
    for name, values in headers.getAllRawHeaders():
        out[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
    return out


def decode_error_body(body: bytes) -> Any:
    """The decoded JSON when it parses, else the text."""
    if not body:
        return ""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")


_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def _float(text: str) -> float | None:
    try:
        v = float(text.strip())
    except ValueError:
        return None
    if v != v or v < 0 or v == float("inf"):
        return None
    return v


def parse_retry_after(headers: dict[str, str], body: Any, now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms``, ``Retry-After`` (seconds or an
    HTTP date) or a Google ``RetryInfo.retryDelay`` in the body; None if absent."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        v = _float(ms)
        if v is not None:
            return v / 1000.0
    ra = headers.get("retry-after")
    if ra is not None:
        v = _float(ra)
        if v is not None:
            return v
        try:
            when = parsedate_to_datetime(ra)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None and when.tzinfo is not None:
            now = time.time() if now is None else now
            return max(0.0, when.timestamp() - now)
    return _google_retry_delay(body)


def _google_retry_delay(body: Any) -> float | None:
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return None
    err = body.get("error")
    if not isinstance(err, dict):
        return None
    details = err.get("details")
    if not isinstance(details, list):
        return None
    for d in details:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = d.get("retryDelay")
            if isinstance(delay, str):
                m = _DELAY.match(delay)
                if m:
                    return float(m.group(1))
            elif isinstance(delay, dict):  # {"seconds": 30, "nanos": 0}
                try:
                    return float(delay.get("seconds", 0)) + float(delay.get("nanos", 0)) / 1e9
                except (TypeError, ValueError):
                    return None
    return None


REDACTED = b"[redacted]"


def redact(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    """``data`` with every occurrence of each secret replaced by
    ``[redacted]``; ``secrets`` longest first (as ``HTTPRequest.secrets``
    is), so a whole ``Bearer X`` goes before ``X`` alone.  One ``in`` test
    per secret when nothing matches, the common case."""
    for s in secrets:
        if s in data:
            data = data.replace(s, REDACTED)
    return data


def _redact_headers(hd: dict[str, str], secrets: tuple[bytes, ...]) -> dict[str, str]:
    if not secrets:
        return hd
    out = {}
    for name, value in hd.items():
        raw = value.encode("latin-1")
        clean = redact(raw, secrets)
        out[name] = value if clean is raw else clean.decode("latin-1")
    return out


def status_error(
    status: int, headers: Headers, body: bytes, url: str, secrets: tuple[bytes, ...] = ()
) -> HTTPStatusError:
    """The HTTPStatusError for a non-2xx response; logs it at debug (the
    caller receives it and decides whether it is worth more).

    ``secrets`` (``HTTPRequest.secrets``) are replaced by ``[redacted]`` in
    the body bytes before anything is decoded, so neither the error's
    message nor its ``body`` nor the log line carries a key the server
    echoed (a 401 quoting the key it refused)."""
    body = redact(body, secrets)
    hd = _redact_headers(header_dict(headers), secrets)
    decoded = decode_error_body(body)
    headers_map = ResponseHeaders(hd)
    err = status_error_class(status)(
        status,
        decoded,
        headers_map,
        request_id_of(headers_map),
        parse_retry_after(hd, decoded),
        url,
    )
    if status == 407:
        # Only a proxy sends 407 (RFC 9110 15.5.8): say so, or it reads as the API's.
        err.message += (
            "; the proxy asked for credentials: give them in the proxy URL "
            "(http://user:password@host:port), or check the ones given"
        )
        err.args = (err.message,)
    log.debug(
        "POST {url} failed: HTTP {status}: {body}",
        url=url,
        status=status,
        body=body[:LOGGED_BODY_BYTES].decode("utf-8", "replace"),
    )
    return err


def to_value(raw: RawResponse, url: str, secrets: tuple[bytes, ...] = ()) -> Any:
    """The decoded JSON of a 2xx response; raise the typed error otherwise
    (see :func:`status_error` for ``secrets``)."""
    status = raw.status
    if not 200 <= status < 300:
        raise status_error(status, raw.headers, raw.body, url, secrets)
    body = raw.body
    if not body or body.isspace():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        error = str(e)
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as u:
        # orjson says "surrogates not allowed" or the like: name the real fault.
        problem = f"the body is not valid UTF-8 (byte 0x{body[u.start]:02x} at offset {u.start})"
    else:
        problem = f"the body is not JSON ({error})"
    body = redact(body, secrets)
    log.debug(
        "POST {url}: HTTP {status}: {problem}: {body}",
        url=url,
        status=status,
        problem=problem,
        body=body[:LOGGED_BODY_BYTES].decode("utf-8", "replace"),
    )
    raise DecodeError(f"HTTP {status} from {url}: {problem}; the raw bytes are in .raw", body)
