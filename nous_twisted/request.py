"""Validating and preparing a request: URL, body, headers.

Everything a caller can get wrong is caught here, before any I/O, with a
TypeError or ValueError that says what was wrong.  The URL rules are those
the transport applies later (hyperlink's parse and ``to_uri()`` in treq,
``twisted.web.client.URI.fromBytes``, ``HostnameEndpoint``'s IDNA encoding,
``optionsForClientTLS``), so a URL accepted here is one the transport can
send, and one refused here fails now with a message instead of later with
``hyperlink.URLParseError`` or ``idna.IDNAError`` from deep inside.

Header values, URL user info and query values are never echoed back: they
are where API keys live.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import quote, unquote_plus

import idna
import orjson
import twisted
from hyperlink import EncodedURL
from twisted.web.http_headers import Headers

from ._version import __version__

HeadersArg = Mapping[str, str] | Iterable[tuple[str, str]]

# The library decodes these itself (bounded, on both backends), so it is the
# one to say what it accepts.  The lead's compression module owns the value.
ACCEPT_ENCODING = b"gzip, deflate"

# Sent unless the caller names its own: servers and gateways log it, and a
# provider's support asks for it.
USER_AGENT = f"nous-twisted/{__version__} Twisted/{twisted.__version__}".encode("ascii")

# RFC 9110 token characters: what a header field name may hold.
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# RFC 9110 5.5: a field value is VCHAR, obs-text, SP and HTAB; every other
# control byte is refused (CR/LF/NUL inject headers, the rest confuse peers).
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_FRAMING = "the library frames the body itself, and a second framing header makes the server read the rest of the body as the next request on the pooled connection"
_HOP = "connection management belongs to the pool (hop-by-hop headers are not the caller's to set)"
# Refused names, each with why; RFC 9110 7.6.1 lists the hop-by-hop ones.
_REFUSED_HEADERS: dict[bytes, str] = {
    b"content-length": _FRAMING,
    b"transfer-encoding": _FRAMING,
    b"trailer": _FRAMING,
    b"te": _HOP,
    b"host": "it is derived from the URL; put the host in the URL",
    b"connection": _HOP,
    b"keep-alive": _HOP,
    b"upgrade": _HOP,
    b"proxy-connection": _HOP,
}

# Header values a repr may show.  Short on purpose: anything else may be a
# credential under a vendor's own name (X-Auth-Token, Ocp-Apim-Subscription-
# Key, ...).  These say how to talk to the API, never who is talking:
# organisation and project ids are left out too, as they identify an
# account and nobody needs them to read a repr.
_SHOWN_HEADERS = frozenset(
    {
        b"accept",
        b"accept-encoding",
        b"content-type",
        b"user-agent",
        b"openai-beta",
        b"anthropic-version",
        b"anthropic-beta",
    }
)
_AUTH_HEADERS = frozenset({b"authorization", b"proxy-authorization"})

# Values shorter than this are not redacted from response bodies: short
# strings occur by chance in ordinary text, and no real key is that short.
MIN_SECRET_LENGTH = 8


class _WireURL(EncodedURL):
    """A URL whose text is already what goes on the wire.

    treq calls ``to_uri()`` on every URL it is given, and hyperlink 21's
    ``to_uri()`` IDNA-encodes IPv6 literals and fails on ``[::1]``
    (python-hyper/hyperlink#68, #188); our wire bytes are already ASCII.
    """

    def to_uri(self) -> _WireURL:
        return self


@dataclass(frozen=True)
class HTTPRequest:
    """A validated POST: what every backend receives.

    :ivar url: the URL as given (for messages, see :attr:`display_url`).
    :ivar url_bytes: the URL encoded for the wire: lower-case scheme, IDN
        hosts as punycode, non-ASCII path and query characters
        percent-encoded as UTF-8.
    :ivar body: the encoded body.
    :ivar headers: name/value pairs as bytes, in order, names as given.
    :ivar display_url: the URL without user info and query values.
    :ivar secrets: the request's values worth redacting if a server echoes
        them (longest first): see :func:`request_secrets`.
    :ivar method: ``b"POST"``, or ``b"GET"`` for ``Client.get`` (no body).
    :ivar pool_timeout: seconds to wait for a pool slot, None to wait in FIFO
        order as long as it takes.  It rides on the request, not as a new
        keyword of ``IHTTPBackend.post``, so users' backends keep working.
    :ivar proxy: the proxy this request goes through (a
        ``nous_twisted.proxy.Proxy``), or None for a direct connection.  The
        caller has already chosen it (argument, client, config, environment).
    """

    url: str
    url_bytes: bytes
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    display_url: str = field(default="")
    secrets: tuple[bytes, ...] = field(default=())
    method: bytes = b"POST"
    pool_timeout: float | None = None
    proxy: Any = None

    def twisted_headers(self) -> Headers:
        h = Headers()
        for name, value in self.headers:
            h.addRawHeader(name, value)
        return h

    def treq_url(self) -> EncodedURL:
        """:attr:`url_bytes` as a hyperlink URL that treq sends unchanged, so
        both backends put the same bytes on the wire and IPv6 hosts work."""
        return _WireURL.from_text(self.url_bytes.decode("ascii"))

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{n.decode('latin-1')}: {v.decode('latin-1') if n.lower() in _SHOWN_HEADERS else '<redacted>'}"
            for n, v in self.headers
        )
        return f"HTTPRequest(POST {self.display_url}, {len(self.body)} bytes, headers=[{shown}])"


# ---------------------------------------------------------------- URLs

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_HTTP_PREFIX = re.compile(r"(?i)https?:")
# Twisted's _ensureValidURI takes \x21-\x7e only; non-ASCII is ours to encode.
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_PORT = re.compile(r"[0-9]+")
# Everything printable in ASCII is left alone by the wire encoding: only
# non-ASCII characters are percent-encoded (as hyperlink's to_uri() does).
_ASCII_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


class _Parts(NamedTuple):
    scheme: str  # lower case
    host: str  # as given, IPv6 without brackets
    ipv6: bool
    port: int | None
    tail: str  # path, query and fragment, as given


def display_url(url: str) -> str:
    """The URL without its query and user info, where keys are put (Gemini's
    ``?key=``); safe on any string, valid URL or not."""
    try:
        parts = _parse(url)
    except ValueError:
        return _shown(url)
    return _display(parts)


def _display(p: _Parts) -> str:
    host = f"[{p.host}]" if p.ipv6 else p.host
    port = "" if p.port is None else f":{p.port}"
    path, sep, _ = _split_query(p.tail)
    return f"{p.scheme}://{host}{port}{path}{'?...' if sep == '?' else ''}"


def _split_query(tail: str) -> tuple[str, str, str]:
    """(path, "?" or "#" or "", what follows)."""
    for i, c in enumerate(tail):
        if c in "?#":
            return tail[:i], c, tail[i + 1 :]
    return tail, "", ""


def _shown(url: str) -> str:
    """A string that failed the URL checks, fit for a message: no query, no
    fragment, and nothing before an ``@`` after the scheme.  Aggressive on
    purpose: in ``http://user:pa/ss@host/`` the password runs past the first
    slash, so the whole span up to the last ``@`` goes."""
    head, sep, _ = _split_query(url)
    m = _SCHEME.match(head)
    start = m.end() if m else 0
    at = head.rfind("@", start)
    if at >= 0:
        head = head[:start] + head[at + 1 :]
    if len(head) > 200:
        head = head[:200] + "..."
    return head + ("?..." if sep == "?" else "")


def _parse(url: str) -> _Parts:
    """Split and check a URL as the transport will read it; ValueError with a
    message that shows no user info, query or header value."""
    if _CONTROL_OR_SPACE.search(url):
        raise ValueError(f"url {_shown(url)!r} contains whitespace or control characters; percent-encode them")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"url {_shown(url)!r} contains a lone surrogate, which has no UTF-8 form") from None
    m = _SCHEME.match(url)
    if m is None:
        if _HTTP_PREFIX.match(url):
            raise ValueError(f"url {_shown(url)!r} is malformed: write 'https://' (or 'http://') then the host")
        raise ValueError(f"url {_shown(url)!r} has no scheme; start it with https:// (or http:// for a plain-HTTP server)")
    scheme = m.group(1).lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"url {_shown(url)!r} has scheme {scheme!r}; only 'http' and 'https' are supported")
    start = m.end()
    end = len(url)
    for i in range(start, len(url)):
        if url[i] in "/?#":
            end = i
            break
    authority, tail = url[start:end], url[end:]
    if "\\" in authority:
        # WHATWG parsers read a backslash as the start of the path, RFC 3986
        # ones as part of the host: the URL means two things.
        raise ValueError(
            f"url {_shown(url)!r} has a backslash in its host part; use '/' to start the path"
        )
    if "@" in authority:
        raise ValueError(
            f"url {_shown(url)!r} contains user info (user:password@); credentials are not taken "
            "from the URL: put them in a header (Authorization) instead"
        )
    host, ipv6, port_text = _split_authority(url, authority)
    port = _check_port(url, port_text)
    if not host:
        raise ValueError(f"url {_shown(url)!r} has no host")
    if ipv6:
        _check_ipv6(url, host)
    else:
        _check_hostname(url, host)
    return _Parts(scheme, host, ipv6, port, tail)


def _split_authority(url: str, authority: str) -> tuple[str, bool, str | None]:
    """(host, is IPv6, port text or None when there is no ':')."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise ValueError(f"url {_shown(url)!r} has an unclosed '[' in its host")
        rest = authority[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"url {_shown(url)!r} has text after the IPv6 address; only ':port' may follow ']'")
        return authority[1:close], True, (rest[1:] if rest else None)
    if authority.count(":") > 1:
        raise ValueError(
            f"url {_shown(url)!r} has more than one ':' in its host part; write an IPv6 address in brackets, "
            "as in http://[::1]:8080/"
        )
    host, colon, port = authority.partition(":")
    return host, False, (port if colon else None)


def _check_port(url: str, text: str | None) -> int | None:
    # The port text is not echoed: in 'http://user:pa/ss@host' it is a password.
    if text is None:
        return None
    if text == "":
        raise ValueError(f"url {_shown(url)!r} has an empty port after ':'; remove the ':' or give the port")
    if not _PORT.fullmatch(text):
        hint = ""
        if "@" in _split_query(url)[0]:
            hint = " (if what precedes '@' is user:password, put the credentials in a header instead)"
        raise ValueError(f"url {_shown(url)!r} has a port that is not a number; give one in 1-65535{hint}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"url {_shown(url)!r} has port {port}, outside 1-65535")
    return port


def _check_ipv6(url: str, host: str) -> None:
    if "%" in host:
        # hyperlink's inet_pton refuses zone ids, and Twisted would take
        # '%25eth0' (the encoded form) as the zone's name.
        raise ValueError(f"url {_shown(url)!r}: IPv6 zone identifiers ('%...') are not supported")
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"url {_shown(url)!r}: [{host}] is not a valid IPv6 address") from None


def _check_hostname(url: str, host: str) -> None:
    """The IDNA encodings the transport does: hyperlink's ``to_uri()``
    (UTS 46 mapping, for treq and for non-ASCII hosts) and
    ``HostnameEndpoint``'s ``_idnaBytes`` (strict IDNA 2008, on the ASCII
    form it is handed).  Both check label syntax, hyphens, lengths (63 per
    label, 253 in all) and code points."""
    try:
        wire = idna.encode(host, uts46=True)
        idna.encode(wire.decode("ascii"))
        if host.isascii():
            idna.encode(host)
    except (idna.IDNAError, UnicodeError) as e:
        raise ValueError(
            f"url {_shown(url)!r}: host {host[:80]!r} is not a valid host name ({e}); "
            "host names are letters, digits and inner hyphens, in dot-separated labels of up to 63 characters"
        ) from None


def _wire_bytes(p: _Parts) -> bytes:
    if p.ipv6:
        host = f"[{p.host}]"
    elif p.host.isascii():
        host = p.host
    else:
        host = idna.encode(p.host, uts46=True).decode("ascii")
    port = "" if p.port is None else f":{p.port}"
    tail = p.tail if p.tail.isascii() else quote(p.tail, safe=_ASCII_SAFE)
    if tail and tail[0] != "/":
        # Twisted's URI.originForm would send "POST ?x=1 HTTP/1.1".
        tail = "/" + tail
    return f"{p.scheme}://{host}{port}{tail}".encode("ascii")


def _query_secrets(tail: str) -> tuple[bytes, ...]:
    """Query values long enough to be keys (Gemini's ``?key=``), as written
    and decoded, for redaction from echoed bodies."""
    _, sep, rest = _split_query(tail)
    if sep != "?":
        return ()
    query = rest.partition("#")[0]
    found: list[bytes] = []
    for pair in query.split("&"):
        value = pair.partition("=")[2]
        for form in (value, unquote_plus(value)):
            raw = form.encode("utf-8")
            if len(raw) >= MIN_SECRET_LENGTH and raw not in found:
                found.append(raw)
    return tuple(found)


class _CheckedURL(NamedTuple):
    url_bytes: bytes
    display: str
    query_secrets: tuple[bytes, ...]


# Validated URLs: most applications call a handful of endpoints, and checking
# one costs more than the rest of preparing a request.  Refused URLs raise
# before they get here, so they are never cached.
_url_cache: dict[str, _CheckedURL] = {}
_URL_CACHE_SIZE = 256


def _checked_url(url: object) -> tuple[str, _CheckedURL]:
    """The URL and its checked forms, validated once per distinct URL."""
    if type(url) is str:
        hit = _url_cache.get(url)
        if hit is not None:
            return url, hit
    url_str = _check_url_type(url)
    parts = _parse(url_str)
    checked = _CheckedURL(_wire_bytes(parts), _display(parts), _query_secrets(parts.tail))
    if len(_url_cache) >= _URL_CACHE_SIZE:
        _url_cache.clear()
    _url_cache[url_str] = checked
    return url_str, checked


def _check_url_type(url: object) -> str:
    if not isinstance(url, str):
        raise TypeError(f"url must be a str such as 'https://api.openai.com/v1/chat/completions', not {type(url).__name__}")
    return str(url)


_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def check_base_url(base_url: object) -> str | None:
    """Validate a client's ``base_url`` (None allowed); it may not carry a
    query or fragment, which every joined URL would lose or repeat."""
    if base_url is None:
        return None
    url_str, checked = _checked_url(base_url)
    if "?" in url_str or "#" in url_str:
        raise ValueError(
            f"base_url {checked.display!r} has a query or fragment; put query parameters in each call's path"
        )
    return url_str


def join_url(base_url: str | None, url: object) -> object:
    """The URL of a call, as httpx joins it: a full URL is used as it is; a
    relative one is appended to ``base_url``'s path (``base_url`` +
    ``"/chat/completions"`` keeps the base's ``/v1``)."""
    if not isinstance(url, str) or _ABSOLUTE.match(url):
        return url  # prepare() reports a wrong type
    if base_url is None:
        if not url.startswith("/"):
            return url  # "api.openai.com/v1": prepare() says the scheme is missing
        shown = url.split("?", 1)[0][:80]
        raise ValueError(
            f"{shown!r} is a relative URL and there is no base_url: pass a full URL "
            "('https://api.example.com/v1/chat/completions') or use Client(base_url=...)"
        )
    return base_url.rstrip("/") + "/" + url.lstrip("/")


def check_url(url: object) -> bytes:
    """Validate ``url`` as :func:`prepare` does; its wire bytes."""
    return _checked_url(url)[1].url_bytes


# ---------------------------------------------------------------- body

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
        encoded = orjson.dumps(obj)
    except TypeError as e:
        raise TypeError(f"body cannot be encoded as JSON: {e}") from None
    # orjson hands back its whole write buffer (4 KiB for a 100-byte body, 64
    # KiB for 5 KB): held by every request in flight, that is most of a
    # stream's memory.  An exact-size copy costs ~70 ns.
    return b"".join((encoded, b""))


# ---------------------------------------------------------------- headers

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
    """Check and encode headers; messages never show a header value.

    Refused with ValueError: invalid names, framing and hop-by-hop headers
    (``Content-Length``, ``Transfer-Encoding``, ``Host``, ``Connection``,
    ``Keep-Alive``, ``Upgrade``, ``TE``, ``Trailer``, ``Proxy-Connection``),
    and values holding a control character other than HTAB.  str values are
    encoded as Latin-1, bytes pass as they are; leading and trailing SP/HTAB
    are stripped.
    """
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
        why = _REFUSED_HEADERS.get(name.lower())
        if why is not None:
            raise ValueError(f"header {name.decode('ascii')!r} is refused: {why}; remove it")
        if _BAD_VALUE.search(value):
            raise ValueError(
                f"the value of header {name.decode('ascii')!r} contains a control character "
                "(CR, LF or NUL, or another byte below 0x20 other than tab, or DEL); value redacted; "
                "header injection is refused"
            )
        out.append((name, value.strip(b" \t")))
    return out


def _ensure(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes) -> None:
    for n, _ in headers:
        if n.lower() == name:
            return
    headers.append((name, value))


def request_secrets(
    headers: Iterable[tuple[bytes, bytes]], extra: Iterable[bytes] = ()
) -> tuple[bytes, ...]:
    """The values to redact if a server echoes them, longest first (so a
    whole ``Bearer X`` goes before ``X`` alone): every header value of
    :data:`MIN_SECRET_LENGTH` bytes or more outside the shown allowlist, the
    token alone of ``Authorization``/``Proxy-Authorization``, and ``extra``
    (the URL's query values)."""
    found = {s for s in extra if len(s) >= MIN_SECRET_LENGTH}
    for name, value in headers:
        lname = name.lower()
        if lname in _SHOWN_HEADERS:
            continue
        if len(value) >= MIN_SECRET_LENGTH:
            found.add(value)
        if lname in _AUTH_HEADERS:
            token = value.partition(b" ")[2].strip(b" \t")
            if len(token) >= MIN_SECRET_LENGTH:
                found.add(token)
    return tuple(sorted(found, key=len, reverse=True))


def merge_headers(
    defaults: Iterable[tuple[bytes, bytes]], call: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """A client's default headers under the call's: a name the call sets
    (in any case) replaces every default value of that name."""
    if not call:
        return list(defaults)
    named = {n.lower() for n, _ in call}
    return [h for h in defaults if h[0].lower() not in named] + call


def prepare(
    url: object,
    body: object,
    headers: object,
    *,
    accept: bytes | None = None,
    method: bytes = b"POST",
    defaults: Iterable[tuple[bytes, bytes]] = (),
    pool_timeout: float | None = None,
) -> HTTPRequest:
    """Validate the caller's arguments into an :class:`HTTPRequest`.

    ``defaults`` are already-normalised headers (a ``Client``'s) that apply
    unless ``headers`` names them.  Adds ``Content-Type: application/json``
    (to a request with a body), ``Accept`` when given and ``User-Agent``
    when the caller set none.  ``Accept-Encoding`` is the library's: the
    reply is decoded by the library itself, so a caller's value is dropped
    and ``gzip, deflate`` sent in its place on every request.  A GET has no
    body (``body`` must be None).
    """
    url_str, checked = _checked_url(url)
    if method == b"GET":
        if body is not None:
            raise TypeError("a GET request has no body: pass body=None")
        encoded = b""
    else:
        encoded = encode_body(body)
    hs, secrets = _prepared_headers(headers, tuple(defaults), method, accept)
    if checked.query_secrets:
        secrets = request_secrets(hs, checked.query_secrets)
    # HTTPRequest(...) sets its nine fields through object.__setattr__ (it is
    # frozen): one dict update is a third of that, on every request.
    request: HTTPRequest = _new(HTTPRequest)
    request.__dict__.update(
        url=url_str, url_bytes=checked.url_bytes, body=encoded, headers=hs, display_url=checked.display,
        secrets=secrets, method=method, pool_timeout=pool_timeout, proxy=None,
    )
    return request


_new = object.__new__


def _final_headers(
    headers: object, defaults: tuple[tuple[bytes, bytes], ...], method: bytes, accept: bytes | None
) -> tuple[tuple[bytes, bytes], ...]:
    hs = [h for h in merge_headers(defaults, normalize_headers(headers)) if h[0].lower() != b"accept-encoding"]
    if method != b"GET":
        _ensure(hs, b"content-type", b"application/json")
    if accept is not None:
        _ensure(hs, b"accept", accept)
    _ensure(hs, b"user-agent", USER_AGENT)
    hs.append((b"accept-encoding", ACCEPT_ENCODING))
    return tuple(hs)


# The headers of a call, as sent, and their secrets, per distinct (headers,
# client defaults, method, Accept): an application sends the same few header
# sets over and over, and checking one costs more than the rest of preparing
# the request.  Only plain dicts, lists and tuples of hashable items are
# cached (their content is the key); refused headers raise before they get
# here, so they are never cached.
_headers_cache: dict[Any, tuple[tuple[tuple[bytes, bytes], ...], tuple[bytes, ...]]] = {}
_HEADERS_CACHE_SIZE = 256


def _prepared_headers(
    headers: object, defaults: tuple[tuple[bytes, bytes], ...], method: bytes, accept: bytes | None
) -> tuple[tuple[tuple[bytes, bytes], ...], tuple[bytes, ...]]:
    given: Any = headers
    kind = type(given)
    if kind is dict:
        items = tuple(given.items())
    elif kind is tuple or kind is list:
        items = tuple(given)
    else:
        hs = _final_headers(headers, defaults, method, accept)
        return hs, request_secrets(hs)
    key = (items, defaults, method, accept)
    try:
        hit = _headers_cache.get(key)
    except TypeError:  # an unhashable item: checked (and refused) below, never cached
        hs = _final_headers(items, defaults, method, accept)
        return hs, request_secrets(hs)
    if hit is not None:
        return hit
    hs = _final_headers(items, defaults, method, accept)
    prepared = (hs, request_secrets(hs))
    if len(_headers_cache) >= _HEADERS_CACHE_SIZE:
        _headers_cache.clear()
    _headers_cache[key] = prepared
    return prepared
