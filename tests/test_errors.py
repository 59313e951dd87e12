"""errors.py alone (no reactor): every error survives copy and pickle with
its attributes; RequestTimeout names its phase and step."""

from __future__ import annotations

import copy
import pickle
import sys
from collections.abc import Callable
from typing import Any

import pytest

import nous_twisted.errors as errors_module
from nous_twisted.errors import (
    AuthenticationError,
    BackendConfigError,
    BadRequestError,
    BufferOverflow,
    ConflictError,
    ConnectError,
    DecodeError,
    HTTPStatusError,
    InternalServerError,
    NotFoundError,
    NousHTTPError,
    PermissionDeniedError,
    ProviderError,
    RateLimitError,
    RequestTimeout,
    StreamTruncated,
    TLSError,
    TransportError,
    UnprocessableEntityError,
)


class RetryExhausted(TransportError):
    """A later subclass with a constructor of its own, and no __reduce__."""

    def __init__(self, attempts: int, last: NousHTTPError) -> None:
        self.attempts = attempts
        self.last = last
        super().__init__(f"gave up after {attempts} attempts: {last}")


def _status() -> HTTPStatusError:
    return HTTPStatusError(
        429,
        {"error": {"message": "slow down", "details": [1, 2]}},
        {"retry-after": "3", "x-request-id": "req_1"},
        "req_1",
        3.0,
        "https://api.example/v1",
    )


FACTORIES: dict[str, Callable[[], NousHTTPError]] = {
    "NousHTTPError": lambda: NousHTTPError("plain"),
    "BackendConfigError": lambda: BackendConfigError("NOUS_HTTP_BACKEND", "nope", "unknown backend", "treq, agent"),
    "HTTPStatusError": _status,
    "TransportError": lambda: TransportError("the connection was lost"),
    "ConnectError": lambda: ConnectError("connection refused by 127.0.0.1:9"),
    "TLSError": lambda: TLSError("certificate verify failed"),
    "RequestTimeout": lambda: RequestTimeout("connect", 5.0, "https://api.example/v1", step="tls"),
    "StreamTruncated": lambda: StreamTruncated("the body ended mid-chunk"),
    "DecodeError": lambda: DecodeError("HTTP 200: the body is not JSON", b"<html>\xff"),
    "BufferOverflow": lambda: BufferOverflow("an event over 10 MiB"),
    "ProviderError": lambda: ProviderError({"error": {"message": "Overloaded"}}, "overloaded_error"),
    "RateLimitError": lambda: RateLimitError(429, "slow", {"retry-after": "1"}, None, 1.0, "https://api.example/"),
    "RetryExhausted": lambda: RetryExhausted(3, _status()),
    "BadRequestError": lambda: BadRequestError(400, "bad", {}, None, None),
    "AuthenticationError": lambda: AuthenticationError(401, "no key", {}, "req_2", None),
    "PermissionDeniedError": lambda: PermissionDeniedError(403, "no", {}, None, None),
    "NotFoundError": lambda: NotFoundError(404, "no model", {}, None, None),
    "ConflictError": lambda: ConflictError(409, "busy", {}, None, None),
    "UnprocessableEntityError": lambda: UnprocessableEntityError(422, "bad value", {}, None, None),
    "InternalServerError": lambda: InternalServerError(503, "overloaded", {"retry-after": "2"}, None, 2.0),
}


def test_every_public_error_is_covered() -> None:
    public = {name for name in errors_module.__all__}
    assert public <= set(FACTORIES)
    for name in public:
        assert issubclass(getattr(errors_module, name), NousHTTPError)


def _same(a: NousHTTPError, b: NousHTTPError, top: bool = True) -> None:
    assert type(b) is type(a)
    assert b is not a or not top  # copy.copy shares what the error holds
    assert str(b) == str(a) and repr(b) == repr(a)
    assert b.args == a.args
    assert b.message == a.message
    assert set(vars(b)) == set(vars(a))
    for name, value in vars(a).items():
        other = vars(b)[name]
        if isinstance(value, NousHTTPError):
            _same(value, other, top=False)
        else:
            assert other == value, name


def _copies(err: NousHTTPError) -> list[tuple[str, NousHTTPError]]:
    out = [("copy", copy.copy(err)), ("deepcopy", copy.deepcopy(err))]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        out.append((f"pickle{protocol}", pickle.loads(pickle.dumps(err, protocol))))
    return out


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_errors_copy_and_pickle_with_their_attributes(name: str) -> None:
    err = FACTORIES[name]()
    for how, clone in _copies(err):
        try:
            _same(err, clone)
        except AssertionError as e:
            raise AssertionError(f"{name} via {how}: {e}") from None


def test_deepcopy_copies_mutable_attributes() -> None:
    err = _status()
    clone = copy.deepcopy(err)
    assert clone.body == err.body and clone.body is not err.body
    assert clone.headers is not err.headers


def test_attributes_added_later_and_notes_survive() -> None:
    err = _status()
    if sys.version_info >= (3, 11):
        err.add_note("while calling the summariser")
    else:  # no add_note before 3.11: the attribute it sets is what must survive
        err.__notes__ = ["while calling the summariser"]  # type: ignore[attr-defined]
    err.attempt = 2  # type: ignore[attr-defined]
    for _, clone in _copies(err):
        assert clone.__notes__ == ["while calling the summariser"]
        assert clone.attempt == 2  # type: ignore[attr-defined]


def test_a_clone_can_still_be_raised_and_caught_as_its_bases() -> None:
    clone = pickle.loads(pickle.dumps(FACTORIES["RateLimitError"]()))
    with pytest.raises(HTTPStatusError) as info:
        raise clone
    assert info.value.status == 429 and info.value.retry_after == 1.0
    assert isinstance(pickle.loads(pickle.dumps(FACTORIES["BackendConfigError"]())), ValueError)


# ---------------------------------------------------------------- hierarchy


def test_docstring_tree_matches_the_classes() -> None:
    doc = errors_module.__doc__ or ""
    for name in errors_module.__all__:
        assert f"── {name}" in doc, name
    for sub in (ConnectError, TLSError, RequestTimeout, StreamTruncated):
        assert issubclass(sub, TransportError)
    for sub in (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError, ConflictError,
                UnprocessableEntityError, RateLimitError, InternalServerError):
        assert sub.__bases__ == (HTTPStatusError,)
    for top in (BackendConfigError, HTTPStatusError, TransportError, DecodeError, BufferOverflow, ProviderError):
        assert top.__bases__[0] is NousHTTPError
    assert issubclass(BackendConfigError, ValueError)


# ---------------------------------------------------------------- RequestTimeout


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ("connect", 5.0, "http://h/"),
            "connect timeout after 5 s for http://h/; raise connect_timeout, or check that the host is "
            "reachable and the pool (PoolSettings.max_connections) is not saturated",
        ),
        (("receive", 180.0, "http://h/"), "receive timeout after 180 s for http://h/; raise timeout= if the model needs longer to answer"),
        (("idle", 2.5, ""), "idle timeout after 2.5 s; raise timeout= (the idle limit between two stream events)"),
        (
            ("pool", 1.0, "http://h/"),
            "pool timeout after 1 s for http://h/; waiting for a free pool connection: "
            "raise pool_timeout or PoolSettings.max_connections",
        ),
        (("weird", 1.0, ""), "weird timeout after 1 s"),
    ],
)
def test_timeout_messages(args: tuple[Any, ...], expected: str) -> None:
    err = RequestTimeout(*args)
    assert str(err) == expected
    assert (err.phase, err.timeout, err.step) == (args[0], args[1], None)


@pytest.mark.parametrize(
    "step,during,hint",
    [
        ("dns", "during the DNS lookup", "check the DNS resolver"),
        ("tcp", "during the TCP connect", "check that the host is reachable"),
        ("tls", "during the TLS handshake", "check that the port speaks TLS"),
        ("pool", "while waiting for a free pool connection", "raise pool_timeout or PoolSettings.max_connections"),
    ],
)
def test_connect_timeout_names_its_step(step: str, during: str, hint: str) -> None:
    err = RequestTimeout("connect", 5, "https://api.example/v1", step=step)
    assert err.step == step
    assert str(err).startswith(f"connect timeout after 5 s for https://api.example/v1 {during}; ")
    assert hint in str(err)


def test_describe_names_an_exception_class_once() -> None:
    from twisted.internet import error as ierror

    from nous_twisted.failures import describe

    class LibraryError(Exception):
        def __str__(self) -> str:
            return "LibraryError: expected 10 bytes, received 20"

    assert describe(LibraryError()) == "LibraryError: expected 10 bytes, received 20"
    assert describe(ValueError("bad")) == "ValueError: bad"
    assert describe(ValueError("ValueErrorish text")) == "ValueError: ValueErrorish text"
    assert describe(ValueError()) == "ValueError"
    assert describe(ierror.ConnectionRefusedError()) == "connection refused"
