"""Validating and preparing a request: URL, body, headers.

Everything a caller can get wrong is caught here, before any I/O, with a
TypeError or ValueError that says what was wrong.  Header values are never
echoed back: they may hold API keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from twisted.web.http_headers import Headers

HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]]

# RFC 9110 token characters: what a header field name may hold.
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")

_SECRET_HEADERS = frozenset(
    {
        b"authorization",
        b"proxy-authorization",
        b"x-api-key",
        b"api-key",
        b"x-goog-api-key",
        b"cookie",
    }
)


@dataclass(frozen=True)
class HTTPRequest:
    """A validated POST: what every backend receives.

    :ivar url: the URL as given (for messages, see :attr:`display_url`).
    :ivar url_bytes: the URL encoded for the wire.
    :ivar body: the encoded body.
    :ivar headers: name/value pairs as bytes, in order, names as given.
    """

    url: str
    url_bytes: bytes
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    display_url: str = field(default="")

    def twisted_headers(self) -> Headers:
        h = Headers()
        for name, value in self.headers:
            h.addRawHeader(name, value)
        return h

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{n.decode('latin-1')}: {'<redacted>' if n.lower() in _SECRET_HEADERS else v.decode('latin-1')}"
            for n, v in self.headers
        )
        return f"HTTPRequest(POST {self.display_url}, {len(self.body)} bytes, headers=[{shown}])"


def display_url(url: str) -> str:
    """The URL without its query and user info, where keys are put (Gemini's ``?key=``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"


# Validated URLs: most applications call a handful of endpoints, and checking
# one costs more than the rest of preparing a request.
_url_cache: dict[str, tuple[bytes, str]] = {}
_URL_CACHE_SIZE = 256


def _checked_url(url: object) -> tuple[str, bytes, str]:
    """(url, wire bytes, display form), validated once per distinct URL."""
    if type(url) is str:
        hit = _url_cache.get(url)
        if hit is not None:
            return url, hit[0], hit[1]
    url_str, url_bytes = _check_url(url)
    shown = display_url(url_str)
    if len(_url_cache) >= _URL_CACHE_SIZE:
        _url_cache.clear()
    _url_cache[url_str] = (url_bytes, shown)
    return url_str, url_bytes, shown


def _check_url(url: object) -> tuple[str, bytes]:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str such as 'https://api.openai.com/v1/chat/completions', not {type(url).__name__}")
    if any(c in url for c in "\r\n\x00 \t"):
        raise ValueError(f"url {display_url(url)!r} contains whitespace or control characters; percent-encode them")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise ValueError(f"url {display_url(url)!r} is not a valid URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"url {display_url(url)!r} has scheme {parts.scheme!r}; only 'http' and 'https' are supported"
        )
    if not parts.hostname:
        raise ValueError(f"url {display_url(url)!r} has no host")
    try:
        return url, url.encode("ascii")
    except UnicodeEncodeError:
        from hyperlink import EncodedURL

        return url, EncodedURL.from_text(url).to_uri().to_text().encode("ascii")


def encode_body(body: object) -> bytes:
    """JSON-encode a mapping or list with orjson; pass bytes through."""
    if isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, dict) or isinstance(body, list):
        obj: Any = body
    elif isinstance(body, Mapping):
        obj = dict(body)
    else:
        hint = " (encode it to bytes yourself, or pass the parsed dict)" if isinstance(body, str) else ""
        raise TypeError(f"body must be a Mapping, a list or bytes, not {type(body).__name__}{hint}")
    try:
        return orjson.dumps(obj)
    except TypeError as e:
        raise TypeError(f"body cannot be encoded as JSON: {e}") from None


def _as_bytes(what: str, x: object, index: int) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        try:
            return x.encode("latin-1") if what == "value" else x.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(
                f"header #{index} {what} has characters outside "
                f"{'Latin-1' if what == 'value' else 'ASCII'}; encode it (values: "
                "percent- or base64-encode) before sending"
            ) from None
    raise TypeError(f"header #{index} {what} must be str, not {type(x).__name__}")


def normalize_headers(headers: object) -> list[tuple[bytes, bytes]]:
    """Check and encode headers; messages never show a header value."""
    if headers is None:
        return []
    if isinstance(headers, (str, bytes)):
        raise TypeError("headers must be a mapping or an iterable of (name, value) pairs, not a string")
    if isinstance(headers, Mapping):
        items: Iterable[Any] = headers.items()
    elif isinstance(headers, Iterable):
        items = headers
    else:
        raise TypeError(
            f"headers must be a mapping or an iterable of (name, value) pairs, not {type(headers).__name__}"
        )
    out: list[tuple[bytes, bytes]] = []
    for i, item in enumerate(items):
        if not isinstance(item, tuple) or len(item) != 2:
            raise TypeError(f"header #{i} must be a (name, value) pair, not {type(item).__name__}")
        name = _as_bytes("name", item[0], i)
        value = _as_bytes("value", item[1], i)
        if not _TOKEN.match(name):
            shown = name.decode("latin-1")[:40]
            raise ValueError(f"header name {shown!r} is not a valid HTTP field name (letters, digits and !#$%&'*+-.^_`|~ only)")
        if _BAD_VALUE.search(value):
            raise ValueError(
                f"the value of header {name.decode('ascii')!r} contains CR, LF or NUL (value redacted); "
                "header injection is refused"
            )
        out.append((name, value.strip(b" \t")))
    return out


def _ensure(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    for n, _ in headers:
        if n.lower() == name:
            return
    headers.append((name, value))


def prepare(
    url: object, body: object, headers: object, *, accept: bytes | None = None
) -> HTTPRequest:
    """Validate the caller's arguments into an :class:`HTTPRequest`."""
    url_str, url_bytes, shown = _checked_url(url)
    encoded = encode_body(body)
    hs = normalize_headers(headers)
    _ensure(hs, b"content-type", b"application/json")
    if accept is not None:
        _ensure(hs, b"accept", accept)
    return HTTPRequest(url_str, url_bytes, encoded, tuple(hs), shown)
