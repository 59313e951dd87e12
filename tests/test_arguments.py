"""Bad arguments fail at once, with clear messages that never show secrets."""

from __future__ import annotations

from typing import Any

import pytest

from nous_twisted import post
from nous_twisted.request import prepare

from .helpers import LogCapture

URL = "http://127.0.0.1:9/v1/chat/completions"
SECRET = "sk-live-0123456789SECRET"


@pytest.mark.parametrize(
    "url,exc,match",
    [
        (b"http://x/", TypeError, "url must be a str"),
        (None, TypeError, "url must be a str"),
        ("ftp://x/y", ValueError, "only 'http' and 'https'"),
        ("http:///path", ValueError, "has no host"),
        ("http://x:99999/", ValueError, "outside 1-65535"),
        ("http://x:/y", ValueError, "empty port"),
        ("http://a..b/y", ValueError, "not a valid host name"),
        ("http://user:pass@x/y", ValueError, "put them in a header"),
        ("api.openai.com/v1", ValueError, "has no scheme; start it with https://"),
        ("http://x/a b", ValueError, "whitespace"),
        ("http://x/a\r\nInjected: 1", ValueError, "control characters"),
    ],
)
def test_bad_urls(url: Any, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        post(url, {})


@pytest.mark.parametrize(
    "body,exc,match",
    [
        ("{}", TypeError, "encode it to bytes"),
        (42, TypeError, "Mapping, a list or bytes"),
        (None, TypeError, "Mapping, a list or bytes"),
        ({"x": object()}, TypeError, "cannot be encoded as JSON"),
    ],
)
def test_bad_bodies(body: Any, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        post(URL, body)


@pytest.mark.parametrize(
    "headers,exc,match",
    [
        ("Authorization: x", TypeError, "not a string"),
        (42, TypeError, "mapping or an iterable"),
        ([("a",)], TypeError, "pair"),
        ({"Bad Name": "v"}, ValueError, "not a valid HTTP field name"),
        ({"X": 5}, TypeError, "must be str"),
        ({"Authorization": f"Bearer {SECRET}\r\nX-Evil: 1"}, ValueError, "CR, LF or NUL"),
        ({"Authorization": f"Bearer {SECRET}\n"}, ValueError, "CR, LF or NUL"),
        ({"Authorization": f"Bearer {SECRET}\u20ac"}, ValueError, "Latin-1"),
        ({"Authorization": f"Bearer {SECRET}\x01"}, ValueError, "control character"),
        ({"Authorization": f"Bearer {SECRET}\x7f"}, ValueError, "control character"),
        ({"Content-Length": "0"}, ValueError, "'Content-Length' is refused"),
        ([("transfer-encoding", "chunked")], ValueError, "'transfer-encoding' is refused"),
        ({"Connection": "close"}, ValueError, "'Connection' is refused"),
    ],
)
def test_bad_headers_never_echo_values(headers: Any, exc: type, match: str) -> None:
    with LogCapture() as logs, pytest.raises(exc, match=match) as info:
        post(URL, {}, headers)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert SECRET not in logs.text()


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        ({"timeout": 0}, ValueError, "timeout must be a positive"),
        ({"timeout": "10"}, TypeError, "timeout must be a number"),
        ({"connect_timeout": -1}, ValueError, "connect_timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"agent": object()}, TypeError, "IAgent"),
    ],
)
def test_bad_options(kw: dict[str, Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        post(URL, {}, **kw)


# Every header that carries a credential in the APIs this library serves.
SECRET_HEADERS = ["Authorization", "Proxy-Authorization", "x-api-key", "api-key", "x-goog-api-key", "Cookie"]


def test_request_repr_redacts_secrets_and_query() -> None:
    # Only an allowlist of harmless headers is shown (tests/test_request.py has the full table).
    headers = {name: f"{SECRET}-{i}" for i, name in enumerate(SECRET_HEADERS)}
    headers["X-Trace"] = "t1"
    req = prepare(URL + "?key=GOOGLEKEY", {"a": 1}, headers)
    text = repr(req)
    assert SECRET not in text and "GOOGLEKEY" not in text
    # What is shown: the URL without its query, the body size, every header's
    # name, and the values of the harmless ones.
    assert text.startswith(f"HTTPRequest(POST {URL}?..., 7 bytes, headers=[")
    for name in [*SECRET_HEADERS, "X-Trace"]:
        assert f"{name}: <redacted>" in text
    assert "content-type: application/json" in text and "accept-encoding: gzip, deflate" in text


@pytest.mark.parametrize("name", SECRET_HEADERS)
@pytest.mark.parametrize(
    "bad,message",
    [
        ("\r\nX-Evil: 1", "the value of header {name!r} contains a control character (CR, LF or NUL, or another "
         "byte below 0x20 other than tab, or DEL); value redacted; header injection is refused"),
        ("\x00", "the value of header {name!r} contains a control character (CR, LF or NUL, or another "
         "byte below 0x20 other than tab, or DEL); value redacted; header injection is refused"),
        ("\u20ac", "header #0 value has characters outside Latin-1; encode it (values: percent- or "
         "base64-encode) before sending"),
    ],
    ids=["crlf", "nul", "euro"],
)
def test_refused_values_show_the_header_never_the_value(name: str, bad: str, message: str) -> None:
    with LogCapture() as logs, pytest.raises(ValueError) as info:
        post(URL, {}, {name: f"{SECRET}{bad}"})
    assert str(info.value) == message.format(name=name)
    assert SECRET not in repr(info.value) and SECRET not in logs.text()


def test_prepare_adds_content_type_once() -> None:
    req = prepare(URL, [1, 2], [("content-type", "application/json; charset=utf-8")])
    assert [v for n, v in req.headers if n.lower() == b"content-type"] == [b"application/json; charset=utf-8"]
    assert req.body == b"[1,2]"
    req = prepare(URL, {"a": "é"}, {})
    assert (b"content-type", b"application/json") in req.headers
    assert req.body == '{"a":"é"}'.encode()


def test_non_ascii_url_is_encoded() -> None:
    req = prepare("http://127.0.0.1:9/v1/modèle", {}, ())
    assert req.url_bytes == b"http://127.0.0.1:9/v1/mod%C3%A8le"
