"""The chunked decoders (nous_twisted/chunked.py): equivalent to Twisted's
``_ChunkedTransferDecoder`` on any input split anywhere, installed on real
connections through Twisted's private hook, and loud when that hook moves."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.web import http
from twisted.web._newclient import HTTPClientParser, Request
from twisted.web.http import _ChunkedTransferDecoder, _DataLoss, _MalformedChunkedDataError
from twisted.web.http_headers import Headers

from nous_twisted import StreamDone, StreamError, chunked, post, stream
from nous_twisted.chunked import ChunkedDecoder, HttptoolsChunkedDecoder, decoder_class, install_decoder

from .helpers import LogCapture, RawServer, get_reactor, wait_for

HAVE_HTTPTOOLS = chunked._HttpResponseParser is not None


class EagerHttptoolsChunkedDecoder(HttptoolsChunkedDecoder):
    """Starts llhttp on reads of any size, so that short inputs test it too."""

    __slots__ = ()
    min_read = 0


OURS: list[type[ChunkedDecoder]] = [ChunkedDecoder] + (
    [HttptoolsChunkedDecoder, EagerHttptoolsChunkedDecoder] if HAVE_HTTPTOOLS else []
)
ours = pytest.mark.parametrize("cls", OURS, ids=lambda c: c.__name__)


# -- equivalence with Twisted's decoder ---------------------------------------


def trace(cls: Callable[..., Any], reads: list[bytes], max_trailer: int | None = None) -> dict[str, Any]:
    """Everything observable about decoding ``reads`` with ``cls``: the
    payload delivered during each read (as the list of callback arguments),
    the finish calls, the first exception, noMoreData's outcome and the state."""
    calls: list[bytes] = []
    finished: list[bytes] = []
    decoder = cls(calls.append, finished.append)
    if max_trailer is not None:
        decoder._maxTrailerHeadersSize = max_trailer
    per_read: list[list[bytes]] = []
    error = None
    for data in reads:
        try:
            decoder.dataReceived(data)
        except Exception as e:
            error = (type(e), str(e))
        per_read.append(list(calls))
        calls.clear()
        if error is not None:
            break
    try:
        decoder.noMoreData()
        end = None
    except _DataLoss as e:
        end = str(e)
    return {
        "per_read": per_read,
        "finished": finished,
        "error": error,
        "end": end,
        "state": decoder.state,
        "trailers": [bytes(t) for t in decoder._trailerHeaders],
    }


def assert_equivalent(reads: list[bytes], max_trailer: int | None = None) -> list[dict[str, Any]]:
    want = trace(_ChunkedTransferDecoder, reads, max_trailer)
    got_all = []
    for cls in OURS:
        got = trace(cls, reads, max_trailer)
        got_all.append(got)
        # One read, at most one delivery: the same bytes Twisted delivered in it.
        joined = [[b"".join(calls)] if calls else [] for calls in want["per_read"]]
        assert got["per_read"] == joined, (cls.__name__, reads)
        for key in ("finished", "error", "end", "state", "trailers"):
            assert got[key] == want[key], (cls.__name__, key, reads)
    return got_all


_EXT_BYTES = b"\t =;\"abcxyz019-_.,\\\x7f\x00\x80\xff\r\n"


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    """Mostly well-formed chunked bodies, in the shapes servers send and in
    the shapes the grammar allows (extensions, leading zeros, upper-case hex,
    trailers, bytes after the end)."""
    payload = st.one_of(
        st.binary(min_size=1, max_size=30),
        st.sampled_from(
            [b"\r\n", b"\r", b"\n", b"0\r\n\r\n", b'data: {"a": 1}\n\n', b"x" * 300, b"int x = 1;", b";", b"\r\nab;",
             b"\r\n" + b"a" * 30 + b";x"]
        ),
    )
    out = []
    for data in draw(st.lists(payload, max_size=8)):
        size = b"%x" % len(data)
        style = draw(st.integers(0, 7))
        if style == 1:
            size = size.upper()
        elif style == 2:
            size = b"0" * draw(st.integers(1, 3)) + size
        if style == 3:
            size += b";" + draw(st.binary(max_size=6).map(lambda b: bytes(_EXT_BYTES[c % len(_EXT_BYTES)] for c in b)))
        out.append(size + b"\r\n" + data + b"\r\n")
    last = b"0"
    if draw(st.integers(0, 5)) == 0:
        last += b"; name=value"
    out.append(last + b"\r\n")
    for _ in range(draw(st.integers(0, 2))):
        out.append(draw(st.sampled_from([b"Server-Timing: total;dur=1", b"X: y", b"A:" + b"b" * 40])) + b"\r\n")
    out.append(b"\r\n")
    out.append(draw(st.sampled_from([b"", b"", b"rest", b"HTTP/1.1 200 OK\r\n"])))
    return b"".join(out)


_NOISE = b"\r\n;0123456789abcdefABCDEFxX- \t\\\x00\x7fg"


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` with a few bytes replaced, inserted or deleted."""
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 2))
        byte = draw(st.sampled_from(list(_NOISE)))
        if op == 0:
            data[i] = byte
        elif op == 1:
            data.insert(i, byte)
        else:
            del data[i]
    return bytes(data)


def split(draw: st.DrawFn, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
    reads = []
    start = 0
    for cut in cuts + [len(body)]:
        reads.append(body[start:cut])  # empty reads too
        start = cut
    return reads


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_well_formed_bodies_split_anywhere(data: st.DataObject) -> None:
    body = data.draw(chunked_bodies())
    if data.draw(st.booleans()):
        body = body[: data.draw(st.integers(0, len(body)))]  # the connection dropped
    assert_equivalent(split(data.draw, body))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_malformed_bodies_split_anywhere(data: st.DataObject) -> None:
    body = data.draw(chunked_bodies().flatmap(mutated))
    assert_equivalent(split(data.draw, body))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_trailer_limit_split_anywhere(data: st.DataObject) -> None:
    # Twisted's trailer limit depends on where reads end; so does ours.
    body = data.draw(chunked_bodies())
    assert_equivalent(split(data.draw, body), max_trailer=data.draw(st.integers(0, 60)))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_long_size_lines_split_anywhere(data: st.DataObject) -> None:
    # The 1024-byte limit on the size line, reached by leading zeros (which
    # llhttp accepts without limit) or extensions, whole or across reads.
    n = data.draw(st.sampled_from([1000, 1005, 1018, 1019, 1020, 1021, 1022, 1023, 1024, 1025, 2000]))
    if data.draw(st.booleans()):
        line = b"0" * (n - 1) + b"5"
    else:
        line = b"5;" + b"x" * (n - 2)
    body = b"3\r\nabc\r\n" + line + b"\r\nhello\r\n0\r\n\r\n"
    assert_equivalent(split(data.draw, body))


@pytest.mark.parametrize("zeros", [1007, 1008, 1018, 1022, 1023, 1024, 1100])
def test_long_size_line_among_many_chunks(zeros: int) -> None:
    # Many chunks in one read give llhttp plenty of framing bytes to hide a
    # long (leading-zero) size line in; Twisted's limit must still hold.
    # One-digit sizes: 5 framing bytes a chunk, the least the bound allows for.
    small = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in [b"x" * 9] * 300)
    body = small + b"0" * zeros + b"5\r\nhello\r\n" + small + b"0\r\n\r\n"
    after = len(small) + zeros + 12  # just after the chunk with the long size line
    for cut in (0, 100, len(small), len(small) + 500, len(small) + zeros + 3, after, after + 1000, len(body)):
        assert_equivalent([body[:cut], body[cut:]])


def test_llhttp_reports_one_payload_piece_per_chunk_and_read() -> None:
    # What chunked._long_size_line relies on: in one read, at most one payload
    # piece per chunk begun in it, plus one for a chunk begun earlier.
    if not HAVE_HTTPTOOLS:
        pytest.skip("httptools is not installed")
    sizes = [1, 2, 100, 5000, 70000, 3, 1, 1]
    body = b"".join(b"%x\r\n" % n + b"y" * n + b"\r\n" for n in sizes)
    for cut in list(range(0, 200)) + list(range(5000, 5300)) + [len(body) - 5]:
        sink = chunked._Sink()
        parser = chunked._HttpResponseParser(sink)
        parser.feed_data(chunked._HEAD)
        for read in (body[:cut], body[cut:]):
            parser.feed_data(read)
            begun = sum(p is chunked._BEGUN for p in sink.parts)
            ended = sum(p is chunked._ENDED for p in sink.parts)
            pieces = len(sink.parts) - begun - ended
            assert pieces <= begun + 1 and ended <= begun + 1, cut
            assert len(sink.parts) // 3 <= begun
            sink.parts.clear()


def test_sse_stream_in_reads_of_every_size() -> None:
    event = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    body = b"".join(b"%x\r\n" % len(event) + event + b"\r\n" for _ in range(200)) + b"0\r\n\r\n"
    for size in list(range(1, 80)) + [1000, 4096, 65536]:
        reads = [body[i : i + size] for i in range(0, len(body), size)]
        for got in assert_equivalent(reads):
            assert b"".join(b"".join(c) for c in got["per_read"]) == event * 200


@pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools is not installed")
def test_httptools_decoder_keeps_llhttp_across_reads_ending_anywhere_inside_chunks() -> None:
    # The state worked out after each read lets llhttp go on: reads ending in
    # a size line, inside a payload, between payload and CR, CR and LF, at a
    # boundary.  (A fallback to the pure decoder would drop the parser.)
    body = b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n3\r\n\r\n\r\r\n"
    kept = 0
    for cut in range(1, len(body)):
        out: list[bytes] = []
        d = EagerHttptoolsChunkedDecoder(out.append, out.append)
        d.dataReceived(body[:cut])
        first = d._parser is not None
        d.dataReceived(body[cut:])
        kept += first and d._parser is not None
        assert b"".join(out) == b"hello0123456789abcdef\r\n\r", cut
        assert d.state == "CHUNK_LENGTH"
    assert kept == len(body) - 1


@pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools is not installed")
def test_httptools_decoder_starts_llhttp_only_on_long_reads() -> None:
    # A slow stream (one short chunk per read) never pays for llhttp's memory;
    # a read of many chunks starts it, and it then goes on with short reads.
    event = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
    chunk = b"%x\r\n" % len(event) + event + b"\r\n"
    out: list[bytes] = []
    d = HttptoolsChunkedDecoder(out.append, out.append)
    for _ in range(5):
        d.dataReceived(chunk)
        assert d._parser is None
    d.dataReceived(chunk * 20)
    assert d._parser is not None
    d.dataReceived(chunk)
    d.dataReceived(b"0\r\n\r\n")
    assert out == [event] * 5 + [event * 20, event, b""]


@pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools is not installed")
def test_httptools_decoder_keeps_llhttp_for_semicolons_in_payloads() -> None:
    # Code in a completion is full of ';': only one that may start a chunk
    # extension (after a CRLF and hex digits) sends a read to the pure decoder.
    event = b'data: {"choices":[{"delta":{"content":"int x = 1; f(x);"}}]}\n\n'
    chunk = b"%x\r\n" % len(event) + event + b"\r\n"
    out: list[bytes] = []
    d = HttptoolsChunkedDecoder(out.append, out.append)
    for _ in range(3):
        d.dataReceived(chunk * 30)
        assert d._parser is not None
    d.dataReceived(chunk * 29 + b"%x;ext=1\r\n" % len(event) + event + b"\r\n")
    assert d._parser is None
    assert out == [event * 30] * 4


@pytest.mark.skipif(not HAVE_HTTPTOOLS, reason="httptools is not installed")
def test_httptools_decoder_hands_what_llhttp_judges_differently_to_the_pure_decoder() -> None:
    cases = [
        b"3;a=\"\\\"\"\r\nabc\r\n",  # llhttp accepts a backslash in a quoted extension; Twisted does not
        b"0" * 1100 + b"3\r\nabc\r\n",  # llhttp has no limit on the size line
        b"ffffffffffffffffffff\r\nabc",  # llhttp: overflow; Twisted: a very long chunk
        b"3\r\nabc\r\n0\r\nX: y\r\n\r\nrest",  # trailers and the bytes after the end
    ]
    for body in cases:
        for cut in range(len(body) + 1):
            assert_equivalent([body[:cut], body[cut:]])


# Twisted's own tests for its decoder (twisted/web/test/test_http.py,
# ChunkedTransferEncodingTests), with the payloads of one read joined.


@ours
def test_twisted_decoding(cls: type[ChunkedDecoder]) -> None:
    out: list[bytes] = []
    p = cls(out.append, lambda rest: None)
    p.dataReceived(b"3\r\nabc\r\n5\r\n12345\r\n")
    p.dataReceived(b"a\r\n0123456789\r\n")
    assert out == [b"abc12345", b"0123456789"]


@ours
def test_twisted_short_and_empty_reads(cls: type[ChunkedDecoder]) -> None:
    out: list[bytes] = []
    finished: list[bytes] = []
    p = cls(out.append, finished.append)
    p.dataReceived(b"")
    for byte in b"3\r\nabc\r\n5\r\n12345\r\n0\r\n\r\n":
        p.dataReceived(bytes([byte]))
        p.dataReceived(b"")
    assert out == [b"a", b"b", b"c", b"1", b"2", b"3", b"4", b"5"]
    assert finished == [b""] and list(p._trailerHeaders) == []


@ours
def test_twisted_long(cls: type[ChunkedDecoder]) -> None:
    out: list[bytes] = []
    finished: list[bytes] = []
    p = cls(out.append, finished.append)
    p.dataReceived(b"a;\r\n12345")
    p.dataReceived(b"67890")
    p.dataReceived(b"\r\n0;\r\n\r\n...")
    assert out == [b"12345", b"67890"] and finished == [b"..."]


@ours
def test_twisted_newlines_and_extensions(cls: type[ChunkedDecoder]) -> None:
    out: list[bytes] = []
    cls(out.append, lambda rest: None).dataReceived(b"2\r\n\r\n\r\n")
    cls(out.append, lambda rest: None).dataReceived(b"3; x-foo=bar\r\nabc\r\n")
    assert out == [b"\r\n", b"abc"]


@ours
@pytest.mark.parametrize(
    "data",
    [b"3; " + bytes([b]) + b"\r\nabc\r\n" for b in [*range(0, 9), *range(10, 32), 0x5C, 0x7F]]
    + [
        b"3;" + b"." * http.maxChunkSizeLineLength + b"\r\nabc\r\n",
        b"." * (http.maxChunkSizeLineLength + 1),
        b"bloop\r\nabc\r\n",
        b"-3\r\nabc\r\n",
        b"0x3\r\nabc\r\n",
        b"3 \r\nabc\r\n",
        b"+3\r\nabc\r\n",
        b"3_0\r\nabc\r\n",
    ],
)
def test_twisted_malformed(cls: type[ChunkedDecoder], data: bytes) -> None:
    p = cls(lambda b: None, lambda b: None)
    with pytest.raises(_MalformedChunkedDataError) as e:
        p.dataReceived(data)
    t = _ChunkedTransferDecoder(lambda b: None, lambda b: None)
    with pytest.raises(_MalformedChunkedDataError) as te:
        t.dataReceived(data)
    assert str(e.value) == str(te.value)


@ours
def test_twisted_malformed_chunk_end_delivers_the_chunk_first(cls: type[ChunkedDecoder]) -> None:
    out: list[bytes] = []
    p = cls(out.append, lambda b: None)
    with pytest.raises(_MalformedChunkedDataError, match="Chunk did not end with CRLF"):
        p.dataReceived(b"1\r\nx\r\n3\r\nabc!!!!")
    assert out == [b"xabc"]
    with pytest.raises(_DataLoss, match="'CRLF' state"):
        p.noMoreData()


@ours
def test_twisted_finish_extra_and_after_finished(cls: type[ChunkedDecoder]) -> None:
    finished: list[bytes] = []
    p = cls(lambda b: None, finished.append)
    p.dataReceived(b"0\r\n\r\nhello")
    assert finished == [b"hello"]
    p.noMoreData()
    p.dataReceived(b"")  # as Twisted: nothing to do
    with pytest.raises(RuntimeError):
        p.dataReceived(b"hello")


@ours
def test_twisted_early_connection_lose(cls: type[ChunkedDecoder]) -> None:
    p = cls(lambda b: None, lambda b: None)
    p.dataReceived(b"0\r\n\r")
    with pytest.raises(_DataLoss) as e:
        p.noMoreData()
    assert str(e.value) == (
        "Chunked decoder in 'TRAILER' state, still expecting more data to get to 'FINISHED' state."
    )


@ours
def test_twisted_reentrant_finished_no_more_data(cls: type[ChunkedDecoder]) -> None:
    calls: list[bool] = []

    def finished(rest: bytes) -> None:
        parser.noMoreData()
        calls.append(True)

    parser = cls(lambda b: None, finished)
    parser.dataReceived(b"0\r\n\r\n")
    assert calls == [True]


@ours
def test_twisted_trailer_headers(cls: type[ChunkedDecoder]) -> None:
    out: list[bytes] = []
    finished: list[bytes] = []
    p = cls(out.append, finished.append)
    p.dataReceived(b"3\r\nabc\r\n5\r\n12345\r\n")
    p.dataReceived(
        b"a\r\n0123456789\r\n0\r\nServer-Timing: total;dur=123.4\r\nExpires: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n"
    )
    assert out == [b"abc12345", b"0123456789"] and finished == [b""]
    assert p._trailerHeaders == [b"Server-Timing: total;dur=123.4", b"Expires: Wed, 21 Oct 2015 07:28:00 GMT"]


@ours
def test_twisted_trailer_limits(cls: type[ChunkedDecoder]) -> None:
    p = cls(lambda b: None, lambda b: None)
    p._maxTrailerHeadersSize = 10
    with pytest.raises(_MalformedChunkedDataError, match="Trailer headers data is too long"):
        p.dataReceived(b"3\r\nabc\r\n0\r\nTotal-Trailer: header;greater-then=10\r\n\r\n")
    p = cls(lambda b: None, lambda b: None)
    p._maxTrailerHeadersSize = 10
    p.dataReceived(b"3\r\nabc\r\n0\r\n01234567")
    p.dataReceived(b"\r")
    with pytest.raises(_MalformedChunkedDataError):
        p.dataReceived(b"A")


# -- the hook ----------------------------------------------------------------


def _parser() -> tuple[HTTPClientParser, list[bytes], list[bytes]]:
    """An HTTPClientParser for a POST whose response body is collected."""
    rests: list[bytes] = []
    request = Request(b"POST", b"/", Headers(), None)
    parser = HTTPClientParser(request, rests.append)
    parser.makeConnection(StringTransport())
    body: list[bytes] = []

    class Collect(Protocol):
        def dataReceived(self, data: bytes) -> None:
            body.append(data)

    parser._responseDeferred.addCallback(lambda response: response.deliverBody(Collect()))
    return parser, body, rests


RESPONSE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nnext"


def test_twisted_still_has_the_hook_this_relies_on() -> None:
    # If this fails, Twisted changed HTTPClientParser: the faster decoder is
    # no longer installed (and chunked.install_decoder logs that at debug).
    # Read twisted/web/_newclient.py allHeadersReceived and adapt chunked.py.
    assert HTTPClientParser._transferDecoders == {b"chunked": _ChunkedTransferDecoder}, (
        "twisted.web._newclient.HTTPClientParser._transferDecoders changed: see nous_twisted/chunked.py"
    )
    before = dict(chunked.created)
    parser, body, rests = _parser()
    assert install_decoder(parser) is True
    parser.dataReceived(RESPONSE)
    assert isinstance(parser.bodyDecoder, decoder_class()), (
        "HTTPClientParser no longer builds its decoder from the instance's _transferDecoders"
    )
    assert chunked.created[decoder_class().kind] == before[decoder_class().kind] + 1
    assert body == [b"abcde"] and rests == [b"next"]


def test_without_the_hook_twisted_decoder_keeps_working(monkeypatch: pytest.MonkeyPatch) -> None:
    class ChangedParser(HTTPClientParser):  # as a future Twisted might have it
        _transferDecoders = {b"chunked": lambda data, finish: _ChunkedTransferDecoder(data, finish)}

    monkeypatch.setattr(chunked, "_hook_missing_logged", False)
    request = Request(b"POST", b"/", Headers(), None)
    rests: list[bytes] = []
    body: list[bytes] = []
    with LogCapture() as logs:
        for _ in range(2):
            parser = ChangedParser(request, rests.append)
            parser.makeConnection(StringTransport())
            assert install_decoder(parser) is False
            assert "_transferDecoders" not in vars(parser)

            class Collect(Protocol):
                def dataReceived(self, data: bytes) -> None:
                    body.append(data)

            parser._responseDeferred.addCallback(lambda response: response.deliverBody(Collect()))
            parser.dataReceived(RESPONSE)
            assert type(parser.bodyDecoder) is _ChunkedTransferDecoder
    assert body == [b"abc", b"de"] * 2 and rests == [b"next"] * 2
    said = [e for e in logs.events if e.get("log_namespace") == "nous_twisted.chunked"]
    assert len(said) == 1 and said[0]["log_level"].name == "debug", logs.text()
    assert "_transferDecoders" in said[0]["log_format"]


def test_no_speedups_environment_variable() -> None:
    code = "from nous_twisted import chunked; print(chunked.decoder_class().__name__)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def chosen(value: str | None) -> str:
        e = dict(env)
        e.pop("NOUS_TWISTED_NO_SPEEDUPS", None)
        if value is not None:
            e["NOUS_TWISTED_NO_SPEEDUPS"] = value
        return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, check=True).stdout.strip()

    assert chosen("1") == "ChunkedDecoder"
    fast = "HttptoolsChunkedDecoder" if importlib.util.find_spec("httptools") else "ChunkedDecoder"
    assert chosen(None) == fast
    assert chosen("") == fast


# -- on real connections -----------------------------------------------------


def chunked_server(body_chunks: list[bytes], content_type: bytes) -> RawServer:
    """Answers once per connection with ``body_chunks`` as HTTP chunks, written
    one transport write each (so one socket read holds many of them)."""

    def respond(protocol: Protocol) -> None:
        t = protocol.transport
        assert t is not None
        t.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        for c in body_chunks:
            t.write(b"%x\r\n" % len(c) + c + b"\r\n")
        t.write(b"0\r\n\r\n")
        t.loseConnection()

    return RawServer(respond).listen()


EVENTS = [{"i": i, "text": "tok" * (i % 7)} for i in range(600)]
SSE = [b"data: " + orjson.dumps(e) + b"\n\n" for e in EVENTS]
# Events cut across chunks as well as one per chunk.
SSE_CHUNKS = SSE[:300] + [b"".join(SSE[300:])[i : i + 7] for i in range(0, len(b"".join(SSE[300:])), 7)]


async def _run_both_decoders(monkeypatch: pytest.MonkeyPatch, run: Callable[[], Deferred[Any]]) -> list[Any]:
    """``run()`` with the installed decoder, then with Twisted's (through the
    same hook): both results, and that the installed one was used."""
    kind = decoder_class().kind
    before = chunked.created[kind]
    ours_result = await run()
    assert chunked.created[kind] > before, "the installed decoder was not used"
    monkeypatch.setitem(chunked._DECODERS, b"chunked", _ChunkedTransferDecoder)
    before = chunked.created[kind]
    twisted_result = await run()
    assert chunked.created[kind] == before
    return [ours_result, twisted_result]


@pytest.mark.parametrize("backend", ["treq", "agent"])
@pytest_twisted.ensureDeferred
async def test_stream_through_the_installed_decoder(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    server = chunked_server(SSE_CHUNKS, b"text/event-stream")
    try:

        async def run() -> list[Any]:
            return [e async for e in stream(server.url + "/v1/chat/completions", {"stream": True}, stream_backend=backend)]

        ours_events, twisted_events = await _run_both_decoders(monkeypatch, lambda: Deferred.fromCoroutine(run()))
        assert ours_events == twisted_events == EVENTS + [StreamDone("eof")]
    finally:
        await server.stop()


@pytest.mark.parametrize("backend", ["treq", "agent"])
@pytest_twisted.ensureDeferred
async def test_post_through_the_installed_decoder(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    reply = orjson.dumps({"choices": [{"message": {"content": "x" * 5000}}], "events": EVENTS})
    server = chunked_server([reply[i : i + 5] for i in range(0, len(reply), 5)], b"application/json")
    try:
        results = await _run_both_decoders(
            monkeypatch, lambda: post(server.url + "/v1/chat/completions", {"m": 1}, backend=backend)
        )
        assert results[0] == results[1] == orjson.loads(reply)
    finally:
        await server.stop()


@pytest.mark.parametrize("backend", ["treq", "agent"])
@pytest_twisted.ensureDeferred
async def test_malformed_framing_fails_the_stream_as_with_twisted(
    monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    def respond(protocol: Protocol) -> None:
        t = protocol.transport
        assert t is not None
        t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for c in SSE[:50]:
            t.write(b"%x\r\n" % len(c) + c + b"\r\n")
        t.write(b"5\r\nabcdeXX")  # no CRLF after the payload

    server = RawServer(respond).listen()
    try:

        async def run() -> list[Any]:
            out = [e async for e in stream(server.url + "/v1/chat/completions", {"stream": True}, stream_backend=backend)]
            return [type(e.error).__name__ if isinstance(e, StreamError) else e for e in out]

        ours_events, twisted_events = await _run_both_decoders(monkeypatch, lambda: Deferred.fromCoroutine(run()))
        assert ours_events == twisted_events
        assert ours_events[:50] == EVENTS[:50] and len(ours_events) == 51 and isinstance(ours_events[50], str)
    finally:
        await server.stop()


class _SmallChunkFlood:
    """Endless SSE, one HTTP chunk per ``event_size``-byte event, as fast as
    TCP allows (a streaming producer: paused when the client stops reading)."""

    def __init__(self, event_size: int) -> None:
        event = b'data: {"pad": "' + b"x" * (event_size - 19) + b'"}\n\n'
        assert len(event) == event_size
        self.block = (b"%x\r\n" % len(event) + event + b"\r\n") * 64
        self.pauses = 0
        self.sent = 0
        self.server = RawServer(self._start)

    def _start(self, protocol: Protocol) -> None:
        flood = self
        t: Any = protocol.transport
        t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")

        class Producer:
            paused = False

            def pauseProducing(self) -> None:
                self.paused = True
                flood.pauses += 1

            def resumeProducing(self) -> None:
                self.paused = False
                while not self.paused and t.connected and flood.sent < 50 * 1024 * 1024:
                    flood.sent += len(flood.block)
                    t.write(flood.block)

            def stopProducing(self) -> None:
                self.paused = True

        producer = Producer()
        t.registerProducer(producer, True)
        producer.resumeProducing()


@pytest_twisted.ensureDeferred
async def test_strict_pull_still_bounded_by_one_read_with_many_small_chunks() -> None:
    event_size = 200
    flood = _SmallChunkFlood(event_size)
    flood.server.listen()
    kind = decoder_class().kind
    before = chunked.created[kind]
    try:
        s = stream(flood.server.url + "/v1/chat/completions", {"stream": True}, stream_backend="agent")
        processed = [0]

        def on_event(event: Any) -> Deferred[None] | None:
            if not isinstance(event, dict):
                return None
            processed[0] += 1
            if processed[0] % 50:
                return None
            d: Deferred[None] = Deferred()
            get_reactor().callLater(0.005, d.callback, None)
            return d

        done = s.consume(on_event)
        await wait_for(lambda: processed[0] >= 20000, timeout=30)
        assert chunked.created[kind] > before
        assert flood.pauses >= 1
        # One socket read (64 KiB at most) is one delivery: the events it
        # holds, never those of two reads.
        assert s.max_buffered <= 64 * 1024 // event_size + 1, s.max_buffered
        s.cancel()
        assert await done == StreamDone("cancelled")
    finally:
        await flood.server.stop()
