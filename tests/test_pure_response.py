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
