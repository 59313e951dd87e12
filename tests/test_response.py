"""response.py alone (no reactor): raw responses to values or typed errors,
Retry-After in all its forms, and secrets a server echoes back."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

import orjson
import pytest
from twisted.logger import LogLevel
from twisted.web.http_headers import Headers

from nous_twisted.errors import DecodeError, HTTPStatusError
from nous_twisted.request import prepare
from nous_twisted.response import RawResponse, parse_retry_after, redact, status_error, to_value

from .helpers import LogCapture

URL = "https://api.example/v1/chat/completions"
KEY = "sk-live-0123456789abcdef"


def raw(status: int, body: bytes = b"", **headers: str) -> RawResponse:
    h = Headers()
    for name, value in headers.items():
        h.addRawHeader(name.replace("_", "-").encode(), value.encode("latin-1"))
    return RawResponse(status, h, body)


def error_of(r: RawResponse, secrets: tuple[bytes, ...] = ()) -> HTTPStatusError:
    with pytest.raises(HTTPStatusError) as info:
        to_value(r, URL, secrets)
    return info.value


# ---------------------------------------------------------------- 2xx


@pytest.mark.parametrize("status", [200, 201, 202, 299])
def test_2xx_json(status: int) -> None:
    assert to_value(raw(status, b'{"a":[1,"\xc3\xa9"]}'), URL) == {"a": [1, "é"]}
    assert to_value(raw(status, b"[1,2]"), URL) == [1, 2]


@pytest.mark.parametrize("body", [b"", b" \r\n\t"])
def test_2xx_empty_is_an_empty_dict(body: bytes) -> None:
    assert to_value(raw(200, body), URL) == {}
    assert to_value(raw(204, body), URL) == {}


@pytest.mark.parametrize("body", [b"<html><body>Sign in to the Wi-Fi</body></html>", b'{"a": ', b"data: {}\n\n"])
def test_2xx_not_json_is_a_decode_error_with_the_raw_bytes(body: bytes) -> None:
    with pytest.raises(DecodeError, match=r"HTTP 200 from https://api\.example/v1/chat/completions: the body is not JSON") as info:
        to_value(raw(200, body, content_type="text/html"), URL)
    assert info.value.raw == body


@pytest.mark.parametrize("body", [b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', b"\xc3"])
def test_2xx_invalid_utf8_is_named_as_such(body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        to_value(raw(200, body), URL)
    message = str(info.value)
    assert "the body is not valid UTF-8" in message and "surrogates" not in message
    assert info.value.raw == body


# ---------------------------------------------------------------- non-2xx


@pytest.mark.parametrize("status", [301, 302, 304, 307, 308])
def test_3xx_is_an_error_not_followed(status: int) -> None:
    err = error_of(raw(status, b"", location="https://elsewhere.example/"))
    assert err.status == status and err.body == ""
    assert err.headers["location"] == "https://elsewhere.example/"
    assert str(err) == f"HTTP {status} from {URL}"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 529])
def test_4xx_5xx_with_a_json_body(status: int) -> None:
    body = {"error": {"message": "Something went wrong", "type": "invalid_request_error"}}
    err = error_of(raw(status, orjson.dumps(body), x_request_id="req_abc"))
    assert (err.status, err.body, err.request_id, err.retry_after, err.url) == (status, body, "req_abc", None, URL)
    assert str(err) == f"HTTP {status} from {URL}: Something went wrong (request id req_abc)"


def test_anthropic_request_id_and_error_shape() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    err = error_of(raw(529, body, request_id="req_011CSHoEeqs5C35K2UUqR7Fy"))
    assert err.request_id == "req_011CSHoEeqs5C35K2UUqR7Fy"
    assert str(err).endswith(": Overloaded (request id req_011CSHoEeqs5C35K2UUqR7Fy)")


def test_html_and_empty_error_bodies() -> None:
    err = error_of(raw(502, b"<html><h1>502 Bad Gateway</h1></html>", content_type="text/html"))
    assert err.body == "<html><h1>502 Bad Gateway</h1></html>"
    assert str(err) == f"HTTP 502 from {URL}: <html><h1>502 Bad Gateway</h1></html>"
    err = error_of(raw(500))
    assert err.body == "" and str(err) == f"HTTP 500 from {URL}"
    err = error_of(raw(500, b"\xff\xfe broken"))
    assert err.body == "\ufffd\ufffd broken"


def test_repeated_headers_are_joined_and_names_lower_case() -> None:
    h = Headers()
    h.addRawHeader(b"X-Thing", b"a")
    h.addRawHeader(b"x-thing", b"b")
    err = status_error(418, h, b"", URL)
    assert err.headers == {"x-thing": "a, b"}


# ---------------------------------------------------------------- retry-after

NOW = 1_700_000_000.0


def _http_date(ts: float) -> str:
    return format_datetime(datetime.fromtimestamp(ts, timezone.utc), usegmt=True)


@pytest.mark.parametrize(
    "headers,expected",
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),  # the precise one wins
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after": _http_date(NOW + 30)}, 30.0),
        ({"retry-after": _http_date(NOW - 3600)}, 0.0),  # a date already past: retry now
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "Wed, 99 Foo 2024 25:61:00 GMT"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00"}, None),  # no zone: not an HTTP date
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, "", now=NOW) == expected


def _gemini(delay: Any) -> dict[str, Any]:
    return {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
            ],
        }
    }


@pytest.mark.parametrize(
    "body,expected",
    [
        (_gemini("30s"), 30.0),
        (_gemini("1.5s"), 1.5),
        (_gemini(" 12s "), 12.0),
        (_gemini({"seconds": 30, "nanos": 500_000_000}), 30.5),
        (_gemini({"seconds": "4"}), 4.0),
        ([_gemini("9s")], 9.0),  # Gemini wraps errors in a list on some endpoints
        (_gemini("30"), None),
        (_gemini("soon"), None),
        (_gemini({"seconds": "x"}), None),
        ({"error": {"details": "nope"}}, None),
        ({"error": "flat"}, None),
        ("text", None),
        ([], None),
    ],
)
def test_google_retry_delay(body: Any, expected: float | None) -> None:
    assert parse_retry_after({}, body) == expected


def test_retry_after_reaches_the_error() -> None:
    err = error_of(raw(429, orjson.dumps(_gemini("20s"))))
    assert err.retry_after == 20.0 and str(err).endswith("; retry after 20 s")
    err = error_of(raw(503, b"", retry_after="3"))
    assert err.retry_after == 3.0


# ---------------------------------------------------------------- secrets echoed back


def test_an_echoed_key_is_redacted_in_message_body_headers_and_log() -> None:
    req = prepare(URL + "?key=AIzaQUERYSECRET", {}, {"Authorization": f"Bearer {KEY}", "X-Trace": "t1"})
    body = orjson.dumps(
        {"error": {"message": f"Incorrect API key provided: {KEY}. Query key AIzaQUERYSECRET.", "echo": f"Bearer {KEY}"}}
    )
    with LogCapture() as logs:
        err = error_of(raw(401, body, www_authenticate=f'Bearer realm="{KEY}"'), req.secrets)
    texts = [str(err), repr(err), orjson.dumps(err.body).decode(), repr(err.headers), logs.text()]
    for text in texts:
        assert KEY not in text and "AIzaQUERYSECRET" not in text
    assert err.body == {"error": {"message": "Incorrect API key provided: [redacted]. Query key [redacted].", "echo": "[redacted]"}}
    assert str(err) == f"HTTP 401 from {URL}: Incorrect API key provided: [redacted]. Query key [redacted]."
    assert err.headers["www-authenticate"] == 'Bearer realm="[redacted]"'
    assert "[redacted]" in logs.text()


def test_redaction_happens_before_decoding_and_truncation() -> None:
    # A key in non-JSON text, and one that the 500-byte log cut would split.
    body = b"x" * 490 + KEY.encode() + b" <html>" + KEY.encode()
    with LogCapture() as logs:
        err = error_of(raw(403, body), (KEY.encode(),))
    assert err.body == "x" * 490 + "[redacted] <html>[redacted]"
    assert KEY[:8] not in logs.text()


def test_2xx_decode_error_is_redacted_too() -> None:
    body = f"<html>your key {KEY}</html>".encode()
    with LogCapture() as logs, pytest.raises(DecodeError) as info:
        to_value(raw(200, body), URL, (KEY.encode(),))
    assert info.value.raw == b"<html>your key [redacted]</html>"
    assert KEY not in logs.text() and KEY not in str(info.value)


def test_redact_leaves_clean_bodies_untouched() -> None:
    body = b'{"error": {"message": "nothing secret here"}}'
    assert redact(body, (KEY.encode(), b"another-secret")) is body
    assert redact(b"a KEY and a KEY", (b"KEY",)) == b"a [redacted] and a [redacted]"


# ---------------------------------------------------------------- logging level


def test_handled_failures_are_logged_at_debug_only() -> None:
    with LogCapture() as logs:
        error_of(raw(429, b'{"error": {"message": "slow down"}}', retry_after="1"))
        with pytest.raises(DecodeError):
            to_value(raw(200, b"<html>"), URL)
        with pytest.raises(DecodeError):
            to_value(raw(200, b"\xff"), URL)
    ours = [e for e in logs.events if e.get("log_namespace") == "nous_twisted"]
    assert len(ours) == 3
    assert {e["log_level"] for e in ours} == {LogLevel.debug}
    assert ours[0]["status"] == 429 and "slow down" in ours[0]["body"]
