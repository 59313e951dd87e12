"""Response handling, exact: the 2xx boundary, Retry-After forms without an
injected clock, Google retryDelay shapes, and the debug log lines (which
carry no secret).  Reactor-free (these run under ``tox -e mutation``)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from twisted.logger import LogLevel, formatEvent
from twisted.web.http_headers import Headers

from nous_twisted.errors import DecodeError, HTTPStatusError
from nous_twisted.response import RawResponse, parse_retry_after, status_error, to_value

from .helpers import LogCapture

URL = "https://api.example/v1/x"


def mine(cap: LogCapture) -> list[Any]:
    return [e for e in cap.events if e.get("log_namespace") == "nous_twisted"]


@pytest.mark.parametrize("status", [199, 300, 301, 304])
def test_outside_2xx_is_an_error(status: int) -> None:
    with pytest.raises(HTTPStatusError) as e:
        to_value(RawResponse(status, Headers(), b'{"a":1}'), URL)
    assert e.value.status == status


@pytest.mark.parametrize("status", [200, 201, 299])
def test_inside_2xx_is_a_value(status: int) -> None:
    assert to_value(RawResponse(status, Headers(), b'{"a":1}'), URL) == {"a": 1}


def _orjson_reason(body: bytes) -> str:
    # orjson's own wording, which changed in 3.12 ("..., expected a JSON value"):
    # the message must quote it exactly, whichever orjson setup.cfg allows is installed
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as e:
        return str(e)
    raise AssertionError(f"{body!r} parsed")


def test_not_json_message_and_log_are_exact() -> None:
    reason = _orjson_reason(b"<html>KEY-12345678</html>")
    assert reason.startswith("unexpected character") and reason.endswith(": line 1 column 1 (char 0)")
    with LogCapture() as cap:
        with pytest.raises(DecodeError) as e:
            to_value(RawResponse(200, Headers(), b"<html>KEY-12345678</html>"), URL, (b"KEY-12345678",))
    assert str(e.value) == f"HTTP 200 from {URL}: the body is not JSON ({reason}); the raw bytes are in .raw"
    assert e.value.raw == b"<html>[redacted]</html>"
    events = mine(cap)
    assert [formatEvent(ev) for ev in events] == [
        f"POST {URL}: HTTP 200: the body is not JSON ({reason}): <html>[redacted]</html>"
    ]
    assert events[0]["log_level"] == LogLevel.debug


def test_logged_body_is_cut_at_500_bytes() -> None:
    with LogCapture() as cap:
        with pytest.raises(DecodeError):
            to_value(RawResponse(201, Headers(), b"x" * 600), URL)
    assert formatEvent(mine(cap)[0]).endswith(": " + "x" * 500)
    with LogCapture() as cap:
        status_error(503, Headers(), b"y" * 600, URL)
    assert formatEvent(mine(cap)[0]) == f"POST {URL} failed: HTTP 503: " + "y" * 500


def test_status_error_log_line_is_exact_and_redacted() -> None:
    with LogCapture() as cap:
        err = status_error(
            401, Headers({b"x-request-id": [b"req-1"]}), b'{"error":"bad key sk-12345678"}', URL, (b"sk-12345678",)
        )
    events = mine(cap)
    assert [formatEvent(ev) for ev in events] == [f'POST {URL} failed: HTTP 401: {{"error":"bad key [redacted]"}}']
    assert events[0]["log_level"] == LogLevel.debug
    assert err.request_id == "req-1"
    assert err.body == {"error": "bad key [redacted]"}


def test_retry_after_dates_against_the_real_clock() -> None:
    future = parse_retry_after({"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"}, None)
    assert future is not None and 0 < future <= 4102444800 - time.time() + 1
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, None) == 0.0


@pytest.mark.parametrize("delay, expected", [
    ({"seconds": 3}, 3.0),
    ({"nanos": 500000000}, 0.5),
    ({"seconds": "2", "nanos": 250000000}, 2.25),
    ({}, 0.0),
    ({"seconds": "x"}, None),
    ({"seconds": None}, None),
    ("1.5s", 1.5),
    (" 7s ", 7.0),
    ("7", None),
    (7, None),
])
def test_google_retry_delay_forms(delay: Any, expected: float | None) -> None:
    body = {"error": {"details": ["a string", {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                               "retryDelay": delay}]}}
    assert parse_retry_after({}, body) == expected


def test_google_retry_info_needs_its_type() -> None:
    body = {"error": {"details": [{"retryDelay": "5s"}, {"@type": "x.RetryInfoX", "retryDelay": "6s"}]}}
    assert parse_retry_after({}, body) is None
    body = {"error": {"details": [{"@type": "google.rpc.RetryInfo", "retryDelay": "6s"}]}}
    assert parse_retry_after({}, [body]) == 6.0


# -- the Client's additions: per-status classes, Reply, headers, request ids ----


def test_status_error_picks_the_class_and_keeps_the_mapping() -> None:
    from nous_twisted.errors import AuthenticationError, InternalServerError, RateLimitError
    from nous_twisted.headers import ResponseHeaders

    h = Headers({b"X-Request-Id": [b"req_9"], b"Retry-After": [b"2"]})
    err = status_error(429, h, b'{"error": {"message": "slow"}}', "https://h/x")
    assert type(err) is RateLimitError and err.retry_after == 2.0 and err.request_id == "req_9"
    assert isinstance(err.headers, ResponseHeaders) and err.headers["x-request-id"] == "req_9"
    assert type(status_error(401, Headers(), b"", "u")) is AuthenticationError
    assert type(status_error(502, Headers(), b"", "u")) is InternalServerError
    assert type(status_error(418, Headers(), b"", "u")) is HTTPStatusError


def test_a_407_says_the_proxy_asked_for_credentials() -> None:
    err = status_error(407, Headers(), b"", "http://h/x")
    assert str(err) == (
        "HTTP 407 from http://h/x; the proxy asked for credentials: give them in the proxy URL "
        "(http://user:password@host:port), or check the ones given"
    )
    assert err.args == (str(err),)
    assert "proxy" not in str(status_error(408, Headers(), b"", "http://h/x"))


def test_request_id_of_and_response_headers() -> None:
    from nous_twisted.response import request_id_of, response_headers

    openai = response_headers(Headers({b"X-Request-Id": [b"req_1"], b"Request-Id": [b"other"]}))
    assert request_id_of(openai) == "req_1"
    anthropic = response_headers(Headers({b"Request-Id": [b"req_2"]}))
    assert request_id_of(anthropic) == "req_2"
    assert request_id_of(response_headers(Headers())) is None
    assert request_id_of(response_headers(Headers({b"x-request-id": [b""], b"request-id": [b"r3"]}))) == "r3"
    both = response_headers(Headers({b"X-Thing": [b"a", b"b"]}))
    assert dict(both) == {"x-thing": "a, b"}


def test_reply_is_frozen_with_its_fields() -> None:
    import dataclasses

    from nous_twisted.headers import ResponseHeaders
    from nous_twisted.response import Reply

    r = Reply({"a": 1}, 200, ResponseHeaders({"x": "1"}), "req", 0.5)
    assert (r.value, r.status, r.request_id, r.elapsed, r.attempts) == ({"a": 1}, 200, "req", 0.5, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.status = 201  # type: ignore[misc]
