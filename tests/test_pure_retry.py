"""RetryPolicy, reactor-free: what is retried, the delay, the checks."""

from __future__ import annotations

import copy
import pickle

import pytest

from nous_twisted.errors import (
    BadRequestError,
    ConnectError,
    DecodeError,
    HTTPStatusError,
    InternalServerError,
    ProviderError,
    RateLimitError,
    RequestTimeout,
    StreamTruncated,
    TLSError,
    TransportError,
)
from nous_twisted.headers import ResponseHeaders
from nous_twisted.retry import DEFAULT_STATUSES, Retry, RetryPolicy, gave_up


def status(code: int, retry_after: float | None = None, **headers: str) -> HTTPStatusError:
    return HTTPStatusError(code, {}, {k.replace("_", "-"): v for k, v in headers.items()}, None, retry_after)


def lost_before_response() -> TransportError:
    e = TransportError("lost")
    e.before_response = True
    return e


def test_defaults_are_the_documented_ones() -> None:
    p = RetryPolicy()
    assert (p.max_retries, p.initial_delay, p.max_delay, p.jitter) == (2, 0.5, 8.0, 0.25)
    assert p.statuses == (408, 409, 429, 500, 502, 503, 504, 529) == DEFAULT_STATUSES
    assert (p.max_retry_after, p.retry_timeouts) == (60.0, False)


@pytest.mark.parametrize("code", DEFAULT_STATUSES)
def test_each_default_status_is_retried(code: int) -> None:
    assert RetryPolicy().reason(status(code)) == f"HTTP {code}"


@pytest.mark.parametrize("code", [400, 401, 403, 404, 422, 501, 505])
def test_other_statuses_are_not(code: int) -> None:
    assert RetryPolicy().reason(status(code)) is None


def test_own_status_list() -> None:
    p = RetryPolicy(statuses=[418])
    assert p.statuses == (418,)
    assert p.reason(status(418)) == "HTTP 418"
    assert p.reason(status(429)) is None


def test_x_should_retry_wins_both_ways() -> None:
    p = RetryPolicy()
    assert p.reason(status(400, x_should_retry="true")) == "HTTP 400, x-should-retry: true"
    assert p.reason(status(400, x_should_retry=" TRUE ")) is not None
    assert p.reason(status(503, x_should_retry="false")) is None
    assert p.reason(status(503, x_should_retry="False")) is None
    # anything else: the status list decides
    assert p.reason(status(503, x_should_retry="maybe")) == "HTTP 503"
    assert p.reason(status(400, x_should_retry="maybe")) is None


def test_transport_failures() -> None:
    p = RetryPolicy()
    assert p.reason(ConnectError("refused")) == "connect error"
    assert p.reason(RequestTimeout("connect", 1.0)) == "connect timeout"
    assert p.reason(lost_before_response()) == "connection lost before the response"
    assert p.reason(TransportError("lost mid-body")) is None
    assert p.reason(StreamTruncated("cut")) is None
    assert p.reason(TLSError("untrusted")) is None
    assert p.reason(RequestTimeout("pool", 1.0)) is None
    assert p.reason(DecodeError("bad", b"x")) is None
    assert p.reason(ProviderError({"error": "overloaded"})) is None
    assert p.reason(ValueError("not ours")) is None


def test_timeouts_only_when_asked() -> None:
    assert RetryPolicy().reason(RequestTimeout("receive", 1.0)) is None
    assert RetryPolicy().reason(RequestTimeout("idle", 1.0)) is None
    p = RetryPolicy(retry_timeouts=True)
    assert p.reason(RequestTimeout("receive", 1.0)) == "receive timeout"
    assert p.reason(RequestTimeout("idle", 1.0)) == "idle timeout"
    assert p.reason(RequestTimeout("pool", 1.0)) is None
    assert p.reason(RequestTimeout("connect", 1.0)) == "connect timeout"


def test_backoff_doubles_and_caps_without_jitter() -> None:
    p = RetryPolicy(initial_delay=0.5, max_delay=3.0, jitter=0.0, max_retries=10)
    err = ConnectError("x")
    assert [p.delay(n, err) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert p.delay(10_000, err) == 3.0  # no overflow


def test_jitter_takes_off_up_to_its_fraction() -> None:
    p = RetryPolicy(initial_delay=1.0, jitter=0.25)
    err = ConnectError("x")
    assert p.delay(0, err, rand=lambda: 0.0) == 1.0
    assert p.delay(0, err, rand=lambda: 1.0) == 0.75
    assert p.delay(1, err, rand=lambda: 0.5) == pytest.approx(2.0 * 0.875)
    for _ in range(200):
        assert 0.75 <= p.delay(0, err) <= 1.0


def test_server_delay_wins_when_short_enough() -> None:
    p = RetryPolicy(initial_delay=0.5, jitter=0.0, max_retry_after=10.0)
    assert p.delay(0, status(429, retry_after=7.0)) == 7.0
    assert p.delay(0, status(429, retry_after=10.0)) == 10.0
    assert p.delay(0, status(429, retry_after=0.0)) == 0.0
    # longer than max_retry_after: the backoff, not an hour's wait
    assert p.delay(1, status(429, retry_after=3600.0)) == 1.0
    assert p.delay(0, status(429, retry_after=None)) == 0.5


def test_next_retry_counts() -> None:
    p = RetryPolicy(max_retries=2, jitter=0.0)
    err = status(503)
    assert p.next_retry(0, err) == Retry("HTTP 503", 0.5)
    assert p.next_retry(1, err) == Retry("HTTP 503", 1.0)
    assert p.next_retry(2, err) is None
    assert p.next_retry(0, status(400)) is None
    assert RetryPolicy(max_retries=0).next_retry(0, err) is None


def test_coerce() -> None:
    assert RetryPolicy.coerce(None) is None
    p = RetryPolicy(max_retries=5)
    assert RetryPolicy.coerce(p) is p
    assert RetryPolicy.coerce(3) == RetryPolicy(max_retries=3)
    assert RetryPolicy.coerce(0) == RetryPolicy(max_retries=0)
    with pytest.raises(TypeError, match="retries must be an int"):
        RetryPolicy.coerce(True)
    with pytest.raises(TypeError, match="not str"):
        RetryPolicy.coerce("3")
    with pytest.raises(ValueError, match="configure.*0 or more"):
        RetryPolicy.coerce(-1, "configure(retries=...)")


@pytest.mark.parametrize(
    "kwargs, error, text",
    [
        ({"max_retries": -1}, ValueError, "max_retries must be 0 or more"),
        ({"max_retries": 1.5}, TypeError, "max_retries must be an int"),
        ({"max_retries": True}, TypeError, "max_retries must be an int"),
        ({"initial_delay": -0.1}, ValueError, "initial_delay must be a finite"),
        ({"max_delay": float("inf")}, ValueError, "max_delay must be a finite"),
        ({"max_retry_after": float("nan")}, ValueError, "max_retry_after must be a finite"),
        ({"initial_delay": "1"}, TypeError, "initial_delay must be a number"),
        ({"initial_delay": False}, TypeError, "initial_delay must be a number"),
        ({"jitter": 1.5}, ValueError, "jitter must be between 0 and 1"),
        ({"jitter": -0.1}, ValueError, "jitter must be between 0 and 1"),
        ({"jitter": "x"}, TypeError, "jitter must be a number"),
        ({"jitter": True}, TypeError, "jitter must be a number"),
        ({"statuses": "429"}, TypeError, "statuses must be a collection"),
        ({"statuses": 429}, TypeError, "statuses must be a collection"),
        ({"statuses": [429.0]}, TypeError, "statuses must hold ints"),
        ({"statuses": [True]}, TypeError, "statuses must hold ints"),
        ({"statuses": [99]}, ValueError, "99 is not an HTTP status"),
        ({"statuses": [600]}, ValueError, "600 is not an HTTP status"),
        ({"retry_timeouts": 1}, TypeError, "retry_timeouts must be a bool"),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_edges_are_accepted() -> None:
    p = RetryPolicy(max_retries=0, initial_delay=0, max_delay=0, jitter=1, statuses=[100, 599], max_retry_after=0)
    assert p.initial_delay == 0.0 and isinstance(p.initial_delay, float)
    assert p.jitter == 1.0 and isinstance(p.jitter, float)
    assert p.statuses == (100, 599)


def test_policy_is_frozen_and_hashable() -> None:
    p = RetryPolicy()
    with pytest.raises(AttributeError):
        p.max_retries = 3  # type: ignore[misc]
    assert hash(p) == hash(RetryPolicy())


def test_gave_up_records_attempts() -> None:
    e = ConnectError("x")
    assert e.attempts == 1
    gave_up(e, 3)
    assert e.attempts == 3
    assert pickle.loads(pickle.dumps(e)).attempts == 3
    gave_up(ValueError("not ours"), 3)  # ignored


def test_status_subclasses() -> None:
    from nous_twisted.errors import status_error_class

    assert status_error_class(429) is RateLimitError
    assert status_error_class(400) is BadRequestError
    assert status_error_class(500) is InternalServerError
    assert status_error_class(503) is InternalServerError
    assert status_error_class(418) is HTTPStatusError
    err = RateLimitError(429, {}, {"Retry-After": "1"}, None, 1.0)
    assert isinstance(err, HTTPStatusError)
    assert err.headers["retry-after"] == "1"
    clone = copy.copy(err)
    assert type(clone) is RateLimitError and clone.status == 429
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is RateLimitError and again.headers == {"retry-after": "1"}


def test_response_headers_mapping() -> None:
    h = ResponseHeaders([("X-Thing", "a"), ("x-thing", "b"), ("Content-Type", "application/json")])
    assert h["x-thing"] == "a, b"
    assert h["X-THING"] == "a, b"
    assert "Content-Type" in h and "nope" not in h and 3 not in h
    assert list(h) == ["x-thing", "content-type"]
    assert len(h) == 2
    assert h.get_list("x-thing") == ["a", "b"]
    assert h.get_list("absent") == []
    assert h == {"x-thing": "a, b", "content-type": "application/json"}
    assert h.get("absent") is None
    with pytest.raises(TypeError):
        h["x"] = "y"  # type: ignore[index]
    assert pickle.loads(pickle.dumps(h)) == h
    raw = ResponseHeaders.from_raw([(b"X-A", [b"1", b"2"]), (b"x-a", [b"3"])])
    assert raw["x-a"] == "1, 2, 3"
    assert "ResponseHeaders({'x-a': '1, 2, 3'})" == repr(raw)


# Whole messages, so that a changed word or type name is seen.
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"max_retries": 1.5}, TypeError, "RetryPolicy.max_retries must be an int, not float"),
        ({"max_retries": -1}, ValueError, "RetryPolicy.max_retries must be 0 or more, not -1"),
        ({"initial_delay": "1"}, TypeError, "RetryPolicy.initial_delay must be a number of seconds, not str"),
        ({"max_delay": None}, TypeError, "RetryPolicy.max_delay must be a number of seconds, not NoneType"),
        ({"max_retry_after": -1}, ValueError, "RetryPolicy.max_retry_after must be a finite number of seconds >= 0, not -1"),
        ({"max_delay": float("inf")}, ValueError, "RetryPolicy.max_delay must be a finite number of seconds >= 0, not inf"),
        ({"jitter": "x"}, TypeError, "RetryPolicy.jitter must be a number between 0 and 1, not str"),
        ({"jitter": 1.5}, ValueError, "RetryPolicy.jitter must be between 0 and 1, not 1.5"),
        ({"statuses": "429"}, TypeError, "RetryPolicy.statuses must be a collection of status codes, not str"),
        ({"statuses": 429}, TypeError, "RetryPolicy.statuses must be a collection of status codes, not int"),
        ({"statuses": [429.0]}, TypeError, "RetryPolicy.statuses must hold ints, not float (429.0)"),
        ({"statuses": [599, 600]}, ValueError, "RetryPolicy.statuses: 600 is not an HTTP status code (100-599)"),
        ({"retry_timeouts": 1}, TypeError, "RetryPolicy.retry_timeouts must be a bool, not int"),
    ],
)
def test_exact_messages(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as e:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert type(e.value) is error
    assert str(e.value) == message


def test_exact_coerce_messages() -> None:
    with pytest.raises(TypeError) as e:
        RetryPolicy.coerce(2.0)
    assert str(e.value) == "retries must be an int (the number of retries), a RetryPolicy or None, not float"
    with pytest.raises(ValueError) as e2:
        RetryPolicy.coerce(-2)
    assert str(e2.value) == "retries must be 0 or more, not -2"


def test_next_retry_uses_the_server_delay_and_the_given_rand() -> None:
    p = RetryPolicy(initial_delay=1.0, jitter=0.5, max_retries=3)
    # the error's own delay, not the backoff
    assert p.next_retry(1, status(429, retry_after=3.0), rand=lambda: 1.0) == Retry("HTTP 429", 3.0)
    # the backoff, jittered by the rand given (not random.random)
    assert p.next_retry(1, status(503), rand=lambda: 1.0) == Retry("HTTP 503", 1.0)
    assert p.next_retry(0, status(503), rand=lambda: 0.0) == Retry("HTTP 503", 1.0)
    assert p.next_retry(2, ConnectError("x"), rand=lambda: 0.5) == Retry("connect error", 3.0)


def test_server_delay_of_an_int_and_out_of_range_values() -> None:
    p = RetryPolicy(initial_delay=2.0, jitter=0.0, max_retry_after=5.0)
    got = p.delay(0, status(429, retry_after=3))
    assert got == 3.0 and type(got) is float
    assert p.delay(0, status(429, retry_after=-1.0)) == 2.0  # a negative delay is not honoured
    assert p.delay(0, status(429, retry_after=5.0000001)) == 2.0


def test_x_should_retry_absent_or_empty_leaves_it_to_the_status_list() -> None:
    p = RetryPolicy()
    assert p.reason(status(503, x_should_retry="")) == "HTTP 503"
    assert p.reason(status(400, x_should_retry="")) is None
    # header names are case-insensitive
    err = HTTPStatusError(400, {}, {"X-Should-Retry": "true"}, None, None)
    assert p.reason(err) == "HTTP 400, x-should-retry: true"
