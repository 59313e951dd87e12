"""The one-pass response head reader (``nous_twisted.head``) and the one-write
request (``nous_twisted.body.OneWriteRequest``), issue 8.

Both replace a part of Twisted's HTTP/1.1 client for speed and must leave
everything as Twisted's own code would: the same parser state after any
head (or Twisted's parser used whole), the same bytes on the wire.  The
private attributes they rely on are checked here against this Twisted.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.web._newclient import DONE, STATUS, HTTPClientParser, Request
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers

from nous_twisted import post
from nous_twisted.body import BytesProducer, OneWriteRequest
from nous_twisted.head import hook_present, take_head
from nous_twisted.pool import _PooledProtocol
from nous_twisted.shared import get_shared

from .helpers import RawServer

# -- the head reader against Twisted's parser ------------------------------------


def _parser(method: bytes = b"POST") -> tuple[HTTPClientParser, list[bytes]]:
    finished: list[bytes] = []
    req = Request(method, b"/v1/chat", Headers({b"host": [b"h"]}), None)
    p = HTTPClientParser(req, finished.append)
    p.makeConnection(StringTransport())
    return p, finished


def _state(p: HTTPClientParser, finished: list[bytes], error: BaseException | None) -> dict[str, Any]:
    response = getattr(p, "response", None)
    return {
        "error": type(error) if error is not None else None,
        "state": p.state,
        "headers": sorted(p.headers._rawHeaders.items()),
        "conn": sorted(p.connHeaders._rawHeaders.items()),
        "response": None if response is None else (response.version, response.code, response.phrase, response.length),
        "finished": list(finished),
        "everReceived": p._everReceivedData,
    }


def _twisted(data: bytes, method: bytes = b"POST") -> dict[str, Any]:
    p, finished = _parser(method)
    error = None
    try:
        p.dataReceived(data)
    except Exception as e:
        error = e
    return _state(p, finished, error)


def _ours(data: bytes, method: bytes = b"POST") -> tuple[dict[str, Any], bool]:
    """The parser's state after ``take_head`` (and Twisted for the rest); whether it took the head."""
    p, finished = _parser(method)
    assert hook_present(p)
    error = None
    took = False
    try:
        rest = take_head(p, data)
        took = rest is not None
        p.dataReceived(data if rest is None else rest)
    except Exception as e:
        error = e
    return _state(p, finished, error), took


TYPICAL = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n"
    b"Date: Tue, 01 Dec 2026 21:00:00 GMT\r\nx-request-id: req_1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhello"
)


def test_hook_present_on_this_twisted() -> None:
    """Fails loudly when Twisted's parser or Headers changed what take_head relies on."""
    p, _ = _parser()
    assert hook_present(p), "this Twisted's HTTPClientParser/Headers changed: heads are parsed by Twisted"
    assert p.state == STATUS


def test_hook_refuses_what_it_does_not_know() -> None:
    class Sub(HTTPClientParser):
        pass

    req = Request(b"POST", b"/", Headers({b"host": [b"h"]}), None)
    sub = Sub(req, lambda rest: None)
    sub.makeConnection(StringTransport())
    assert not hook_present(sub)
    assert not hook_present(object())
    p, _ = _parser()
    p.dataReceived(b"HTTP/1.1 200 OK\r\n")  # no longer at the start of a response
    assert not hook_present(p)


def test_typical_head_is_taken_and_matches_twisted() -> None:
    ours, took = _ours(TYPICAL)
    assert took
    assert ours == _twisted(TYPICAL)
    assert ours["state"] == DONE  # the 5-byte body was framed by Twisted's decoder
    assert dict(ours["headers"])[b"Set-Cookie"] == [b"a=1", b"b=2"]
    assert dict(ours["conn"])[b"Content-Length"] == [b"5"]


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # LF line ends
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n",  # a bare CR in a value
        b"HTTP/1.1 200 OK\r\nX: a\r\n  folded\r\nContent-Length: 0\r\n\r\n",  # obsolete folding
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
        b"\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",  # an empty first line
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",  # the head not complete in this read
    ],
)
def test_unusual_heads_are_left_to_twisted(data: bytes) -> None:
    ours, took = _ours(data)
    assert not took
    assert ours == _twisted(data)


def test_head_over_the_line_limit_is_left_to_twisted() -> None:
    p, _ = _parser()
    p.MAX_LENGTH = 100
    data = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200 + b"\r\n\r\n"
    assert take_head(p, data) is None
    assert p.state == STATUS and not p._everReceivedData


def test_head_request_is_left_to_twisted() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    ours, took = _ours(data, method=b"HEAD")
    assert not took
    assert ours == _twisted(data, method=b"HEAD")


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",  # non-integer status
        b"HTTP/1.1\r\nContent-Length: 0\r\n\r\n",  # one part only
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 0\r\n\r\n",  # invalid field name
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",  # conflicting length
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",  # unknown transfer coding
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nbody",
        b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",  # no reason phrase
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Spaces:   v  \t\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_errors_and_framing_match_twisted(data: bytes) -> None:
    ours, took = _ours(data)
    assert ours == _twisted(data)


_NAME = st.sampled_from(
    [b"Content-Type", b"content-length", b"X-Request-Id", b"Connection", b"keep-alive", b"Set-Cookie",
     b"transfer-encoding", b"Retry-After", b"x-ratelimit-remaining-requests", b"Server", b"WWW-Authenticate"]
) | st.binary(min_size=1, max_size=12)
_VALUE = st.binary(max_size=30)


@settings(max_examples=400, deadline=None)
@given(
    status=st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 429 Too Many Requests", b"HTTP/1.1 500",
                            b"HTTP/1.0 404 Not Found", b"HTTP/1.1 2x0 Odd", b"HTTP/1.1 101 Switching"]),
    fields=st.lists(st.tuples(_NAME, _VALUE), max_size=8),
    body=st.binary(max_size=40),
    sep=st.sampled_from([b":", b": ", b":  \t"]),
)
def test_any_head_leaves_the_parser_as_twisted_does(
    status: bytes, fields: list[tuple[bytes, bytes]], body: bytes, sep: bytes
) -> None:
    data = status + b"\r\n" + b"".join(n + sep + v + b"\r\n" for n, v in fields) + b"\r\n" + body
    ours, _ = _ours(data)
    assert ours == _twisted(data)


# -- the head reader on real connections ------------------------------------------


def _connections() -> list[_PooledProtocol]:
    pool = get_shared().pool
    return [c for conns in pool._connections.values() for c in conns]


@pytest_twisted.ensureDeferred
async def test_pooled_connections_take_heads_in_one_pass() -> None:
    """The pool's protocol uses take_head on this Twisted (``_fast_parse``),
    and the reply (head, headers, body) is what the server sent."""
    body = b'{"ok": true, "n": 1}'

    def reply(p: Any) -> None:
        p.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: req_42\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        p.buffer, p.handled = b"", False

    raw = RawServer(reply).listen()
    try:
        for _ in range(3):
            reply_ = await post(raw.url + "/v1", {"a": 1}, backend="agent", full_response=True)
            assert reply_.value == {"ok": True, "n": 1}
            assert reply_.headers["x-request-id"] == "req_42"
        (protocol,) = [c for c in _connections() if c.transport.getPeer().port == raw.port.getHost().port]
        assert protocol._fast_parse is True
    finally:
        await raw.stop()


@pytest_twisted.ensureDeferred
async def test_head_split_across_reads_goes_through_twisted() -> None:
    """A head whose end comes in a later read is parsed by Twisted's parser."""
    from .helpers import sleep

    async def later(p: Any) -> None:
        p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        await sleep(0.05)
        p.transport.write(b"Content-Length: 2\r\n\r\n{}")

    raw = RawServer(lambda p: Deferred.fromCoroutine(later(p))).listen()
    try:
        assert await post(raw.url + "/v1", {"a": 1}, backend="agent") == {}
    finally:
        await raw.stop()


# -- the one-write request -----------------------------------------------------------


def _wire(cls: type[Request], producer: Any, persistent: bool = True) -> bytes:
    headers = Headers()
    for name, value in [(b"Authorization", b"Bearer k"), (b"content-type", b"application/json"), (b"host", b"h:1")]:
        headers.addRawHeader(name, value)
    t = StringTransport()
    d = cls._construct(b"POST", b"/v1/x?y=1", headers, producer, persistent=persistent, parsedURI=None)
    fired = d.writeTo(t)
    done: list[Any] = []
    fired.addBoth(done.append)
    assert done == [None]
    return t.value()


@pytest.mark.parametrize("persistent", [True, False])
def test_one_write_request_sends_what_twisted_sends(persistent: bool) -> None:
    body = b'{"model": "m"}'
    ours = _wire(OneWriteRequest, BytesProducer(body), persistent)
    assert ours == _wire(Request, BytesProducer(body), persistent)
    assert ours.endswith(b"\r\n\r\n" + body) and b"Content-Length: 14\r\n" in ours


def test_one_write_request_other_producers_take_twisteds_path() -> None:
    import io

    from twisted.internet.task import Clock, Cooperator

    clock = Clock()
    coop = Cooperator(scheduler=lambda f: clock.callLater(0, f))  # type: ignore[arg-type,return-value]
    headers = Headers({b"host": [b"h"]})
    t = StringTransport()
    producer = FileBodyProducer(io.BytesIO(b"abc"), cooperator=coop)
    d = OneWriteRequest._construct(b"POST", b"/", headers, producer, persistent=True, parsedURI=None).writeTo(t)
    assert not d.called  # produced later, by the cooperator, as with Twisted's Request
    clock.advance(0)
    clock.advance(0)
    assert t.value().endswith(b"\r\n\r\nabc")


def test_one_write_request_released_body_fails_as_before() -> None:
    producer = BytesProducer(b"abc")
    producer.release()
    headers = Headers({b"host": [b"h"]})
    d = OneWriteRequest._construct(b"POST", b"/", headers, producer, persistent=True, parsedURI=None).writeTo(
        StringTransport()
    )
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures, "a released body must not be sent"


def test_one_write_request_refuses_a_second_host_as_twisted_does() -> None:
    from twisted.web._newclient import BadHeaders

    headers = Headers({b"host": [b"a", b"b"]})
    with pytest.raises(BadHeaders):
        OneWriteRequest._construct(b"POST", b"/", headers, BytesProducer(b"x"), persistent=True, parsedURI=None).writeTo(
            StringTransport()
        )


# -- the request head made once per (method, URL, header set) ----------------------------


def _headers(pairs: list[tuple[bytes, bytes]]) -> Headers:
    h = Headers()
    for name, value in pairs:
        h.addRawHeader(name, value)
    return h


HEAD_PAIRS = [(b"Authorization", b"Bearer k"), (b"content-type", b"application/json"), (b"X-Two", b"a"),
              (b"x-two", b"b"), (b"host", b"h:1")]


@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("body", [b'{"model": "m"}', b"", None])
def test_a_prepared_head_sends_what_twisted_sends(persistent: bool, body: bytes | None) -> None:
    from nous_twisted.body import head_parts

    headers = _headers(HEAD_PAIRS)
    parts = head_parts(b"POST" if body is not None else b"GET", b"/v1/x?y=1", headers, persistent)
    assert parts is not None
    method = b"POST" if body is not None else b"GET"

    def wire(request: Request, producer: Any) -> bytes:
        t = StringTransport()
        done: list[Any] = []
        request.writeTo(t).addBoth(done.append)
        assert done == [None]
        return t.value()

    ours = wire(OneWriteRequest.with_head(method, b"/v1/x?y=1", headers, None if body is None else BytesProducer(body),
                                          persistent, None, parts), None)
    theirs = wire(Request._construct(method, b"/v1/x?y=1", headers, None if body is None else BytesProducer(body),
                                     persistent=persistent, parsedURI=None), None)
    assert ours == theirs
    assert (b"Connection: close\r\n" in ours) is (not persistent)


def test_with_head_sets_what_requests_init_sets() -> None:
    """``OneWriteRequest.with_head`` skips ``Request.__init__`` (its checks
    ran when the head was made): it must set every attribute it sets."""
    from nous_twisted.body import head_parts

    headers = _headers(HEAD_PAIRS)
    parts = head_parts(b"POST", b"/v1", headers, True)
    assert parts is not None
    ours = OneWriteRequest.with_head(b"POST", b"/v1", headers, None, True, "parsed", parts)
    theirs = Request._construct(b"POST", b"/v1", headers, None, persistent=True, parsedURI="parsed")
    assert set(vars(theirs)) <= set(vars(ours)), "Request.__init__ sets attributes with_head does not: update it"
    assert {k: vars(ours)[k] for k in vars(theirs)} == vars(theirs)


@pytest.mark.parametrize("why", ["two hosts", "no host", "bad uri", "bad method"])
def test_head_parts_gives_way_where_twisted_refuses(why: str) -> None:
    """What Twisted refuses is not cached: its own path raises in context."""
    from nous_twisted.body import head_parts

    pairs = [p for p in HEAD_PAIRS if p[0] != b"host"]
    hosts = {"two hosts": [(b"host", b"a"), (b"host", b"b")], "no host": []}.get(why, [(b"host", b"h")])
    uri = b"/a b" if why == "bad uri" else b"/v1"
    method = b"PO ST" if why == "bad method" else b"POST"
    assert head_parts(method, uri, _headers(pairs + hosts), True) is None


@pytest_twisted.ensureDeferred
async def test_the_shared_agent_makes_each_head_once() -> None:
    """Two header sets to one URL: two heads made, each reused, and every
    request on the wire as the caller's headers say, with one Host."""
    seen: list[bytes] = []

    def reply(p: Any) -> None:
        seen.append(p.buffer)
        p.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        p.buffer, p.handled = b"", False

    raw = RawServer(reply).listen()
    agent = get_shared().agent
    agent._heads.clear()
    try:
        for _ in range(3):
            assert await post(raw.url + "/v1", {"a": 1}, {"X-A": "1"}, backend="agent") == {}
            assert await post(raw.url + "/v1", {"a": 1}, {"X-B": "2"}, backend="agent") == {}
        assert len(agent._heads) == 2
        assert len(set(seen[0::2])) == 1 and len(set(seen[1::2])) == 1
        first, second = seen[0], seen[1]
        assert b"\r\nX-A: 1\r\n" in first and f"\r\nHost: 127.0.0.1:{raw.port.getHost().port}\r\n".encode() in first
        assert b"\r\nX-B: 2\r\n" in second and b"X-A" not in second
        assert all(s.lower().count(b"\r\nhost: ") == 1 for s in seen)
        assert first.endswith(b'\r\n\r\n{"a":1}') and b"\r\nContent-Length: 7\r\n" in first
    finally:
        await raw.stop()


def test_the_shared_agent_keeps_a_bounded_number_of_heads() -> None:
    from nous_twisted.endpoints import MAX_CACHED_URLS
    from nous_twisted.request import prepare

    agent = get_shared().agent
    agent._heads.clear()
    for i in range(MAX_CACHED_URLS + 5):
        request = prepare("http://127.0.0.1:9/v1", {}, {"X-N": str(i)})
        key = (request.method, b"/v1", request.headers, b"127.0.0.1:9", True)
        agent._head(key, request)
        assert len(agent._heads) <= MAX_CACHED_URLS


def test_request_with_endpoint_keeps_twisteds_shape() -> None:
    """``SharedAgent._requestWithEndpoint`` replaces Twisted's: Agent.request
    calls it with the same arguments, which must still be these."""
    import inspect

    from twisted.web.client import Agent

    from nous_twisted.endpoints import SharedAgent

    theirs = list(inspect.signature(Agent._requestWithEndpoint).parameters)
    ours = list(inspect.signature(SharedAgent._requestWithEndpoint).parameters)
    assert ours[: len(theirs)] == theirs and ours[len(theirs):] == ["parts"]
