"""The fault matrix: every misbehaviour of a server, on both backends, post and stream.

Each cell scripts the bytes of a loopback server (tests/faultserver.py).  For
each cell, backend and mode the test checks the typed outcome the contract
(DESIGN.md, issue 7) promises, that the call ends in bounded time, and that
afterwards the client's file descriptors, the shared pool's open/idle/waiting
counts and the server's open connections are back to their baseline.  A
second test runs both backends on the same cell and compares the outcomes.
"""

from __future__ import annotations

import gzip
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred

import nous_twisted
from nous_twisted import (
    AgentStreamBackend,
    BufferOverflow,
    ConnectError,
    DecodeError,
    HTTPStatusError,
    RequestTimeout,
    StreamDone,
    StreamError,
    StreamTruncated,
    TransportError,
    TreqStreamBackend,
    post,
    stream,
)

from .faultserver import (
    ABORT,
    CLOSE,
    HOLD,
    LAST_CHUNK,
    FaultServer,
    Script,
    chunk,
    drip,
    every,
    head,
    open_fds,
    response,
    write,
)
from .helpers import get_reactor, refused_url, wait_for_baseline

BACKENDS = ("treq", "agent")
MODES = ("post", "stream")
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

JSON_BYTES = b'{"ok": true, "n": 1}'
JSON_VALUE = {"ok": True, "n": 1}
SSE = b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n'
SSE_EVENTS: list[Any] = [{"n": 1}, {"n": 2}, StreamDone("stop")]
SSE_LONG = b"".join(b'data: {"n": %d, "pad": "%s"}\n\n' % (i, b"p" * 40) for i in range(200)) + b"data: [DONE]\n\n"
SSE_LONG_DATA = [{"n": i, "pad": "p" * 40} for i in range(200)]

J = (("Content-Type", "application/json"),)
ES = (("Content-Type", "text/event-stream"),)
HEADERS_TOO_LARGE = re.compile(r"(?i)header")
SIZE_WORDS = re.compile(r"(?i)large|long|limit|exceed|big|size")


# -- expectations -------------------------------------------------------------------


class E:
    """Matches an error: its class, attributes (values or predicates) and message."""

    def __init__(self, cls: type[BaseException], match: str | None = None, not_cls: tuple[type, ...] = (),
                 **attrs: Any) -> None:
        self.cls = cls
        self.match = match
        self.not_cls = not_cls
        self.attrs = attrs

    def check(self, err: BaseException, where: str) -> None:
        assert isinstance(err, self.cls), f"{where}: expected {self.cls.__name__}, got {type(err).__name__}: {err}"
        assert not isinstance(err, self.not_cls), f"{where}: {type(err).__name__} is not acceptable here: {err}"
        if self.match is not None:
            assert re.search(self.match, str(err), re.I | re.S), (
                f"{where}: the message of {type(err).__name__} should match {self.match!r}: {err}"
            )
        for name, want in self.attrs.items():
            got = getattr(err, name, "<missing>")
            if callable(want):
                assert want(got), f"{where}: {type(err).__name__}.{name} = {got!r} is not acceptable"
            else:
                assert got == want, f"{where}: {type(err).__name__}.{name} = {got!r}, expected {want!r}"

    def __repr__(self) -> str:
        return f"E({self.cls.__name__}, {self.attrs})"


def headers_too_large(err: BaseException, where: str) -> None:
    E(TransportError).check(err, where)
    text = str(err)
    assert HEADERS_TOO_LARGE.search(text) and SIZE_WORDS.search(text), (
        f"{where}: the error should say the response headers were too large: {text}"
    )
    assert "closed cleanly" not in text, f"{where}: an oversized header is not a clean close: {text}"


class HeadersTooLarge(E):
    def __init__(self) -> None:
        super().__init__(TransportError)

    def check(self, err: BaseException, where: str) -> None:
        headers_too_large(err, where)


PostExpect = Callable[[Any, str], None]
StreamExpect = Callable[[list[Any], str], None]


def value(expected: Any) -> PostExpect:
    def check(result: Any, where: str) -> None:
        assert not isinstance(result, BaseException), f"{where}: expected {expected!r}, got {type(result).__name__}: {result}"
        assert result == expected, f"{where}: expected {expected!r}, got {result!r}"

    return check


def error(matcher: E) -> PostExpect:
    def check(result: Any, where: str) -> None:
        assert isinstance(result, BaseException), f"{where}: expected {matcher}, got the value {result!r}"
        matcher.check(result, where)

    return check


def events(*expected: Any) -> StreamExpect:
    """Exactly these events: data values compared by ==, E(...) for the StreamError's error."""

    def check(got: list[Any], where: str) -> None:
        shown = [_show(e) for e in got]
        assert len(got) == len(expected), f"{where}: expected {len(expected)} events {list(expected)!r}, got {shown}"
        for i, (g, w) in enumerate(zip(got, expected, strict=True)):
            if isinstance(w, E):
                assert isinstance(g, StreamError), f"{where}: event {i}: expected StreamError({w}), got {shown}"
                w.check(g.error, f"{where}: event {i}")
            else:
                assert g == w, f"{where}: event {i}: expected {w!r}, got {shown}"

    return check


def prefix_then(data: list[Any], terminal: E) -> StreamExpect:
    """Some leading part of ``data`` (possibly none), then StreamError matching ``terminal``."""

    def check(got: list[Any], where: str) -> None:
        shown = [_show(e) for e in got]
        assert got, f"{where}: no events"
        head_, last = got[:-1], got[-1]
        assert head_ == data[: len(head_)], f"{where}: the data events are not a prefix of the body's: {shown}"
        assert isinstance(last, StreamError), f"{where}: expected StreamError({terminal}) last, got {shown}"
        terminal.check(last.error, where)

    return check


def _show(e: Any) -> Any:
    if isinstance(e, StreamError):
        return f"StreamError({type(e.error).__name__}: {e.error})"[:300]
    return e


# -- gzip material ------------------------------------------------------------------


def gz(data: bytes) -> bytes:
    return gzip.compress(data, 6, mtime=0)


def gzip_of_repeated(prefix: bytes, filler: bytes, total: int, suffix: bytes) -> bytes:
    """gzip of prefix + filler * n + suffix (about ``total`` bytes), made in
    steps so the test itself never holds the expanded body."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [c.compress(prefix)]
    block = filler * (1024 * 1024 // len(filler))
    done = 0
    while done < total:
        out.append(c.compress(block))
        done += len(block)
    out.append(c.compress(suffix))
    out.append(c.flush())
    return b"".join(out)


_cache: dict[str, bytes] = {}


def post_bomb() -> bytes:
    """A JSON document of ~80 MiB, gzip'd to well under a MiB: over the 64 MiB post limit."""
    if "post" not in _cache:
        _cache["post"] = gzip_of_repeated(b'{"a": "', b"0", 80 * 1024 * 1024, b'"}')
    return _cache["post"]


def stream_bomb() -> bytes:
    """An SSE body whose one event expands to 4 MiB (the cell's limit is 1 KiB)."""
    if "stream" not in _cache:
        _cache["stream"] = gzip_of_repeated(b'data: {"n": 1}\n\ndata: {"a": "', b"0", 4 * 1024 * 1024, b'"}\n\ndata: [DONE]\n\n')
    return _cache["stream"]


GZIP_CORRUPT = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 64  # BTYPE=11: an invalid block


def chunked(data: bytes, size: int) -> bytes:
    return b"".join(chunk(data[i : i + size]) for i in range(0, len(data), size)) + LAST_CHUNK


# -- cells --------------------------------------------------------------------------


@dataclass
class Cell:
    name: str
    post_script: Script | Callable[[], Script] | None
    stream_script: Script | Callable[[], Script] | None
    post_expect: PostExpect | None
    stream_expect: StreamExpect | None
    timeout: float = 2.0
    connect_timeout: float = 1.0
    refused: bool = False
    stream_backend_kw: dict[str, Any] = field(default_factory=dict)
    extra_check: Callable[[FaultServer, str], None] | None = None

    def script(self, mode: str) -> Script | None:
        s = self.post_script if mode == "post" else self.stream_script
        return s() if callable(s) else s


def both(script: Script) -> tuple[Script, Script]:
    return script, script


def _status_cells() -> list[Cell]:
    err_json = b'{"error": {"message": "bad model", "type": "invalid_request_error"}}'
    err_value = {"error": {"message": "bad model", "type": "invalid_request_error"}}
    html = b"<html><body><h1>502 oops</h1></body></html>"
    cells = []
    for name, status, body, hdrs, want_body in (
        ("status_400_json", 400, err_json, J, err_value),
        ("status_500_html", 500, html, (("Content-Type", "text/html"),), html.decode()),
        ("status_503_empty", 503, b"", (), ""),
    ):
        script = [write(response(status, body, hdrs))]
        matcher = E(HTTPStatusError, status=status, body=want_body)
        cells.append(Cell(name, script, script, error(matcher), events(matcher)))
    return cells


def _retry_after_cells() -> list[Cell]:
    body = b'{"error": {"message": "slow down"}}'
    def date_script() -> Script:
        # Computed at run time: the date must be 30 s ahead when the test runs.
        return [write(response(429, body, (*J, ("Retry-After", formatdate(time.time() + 30, usegmt=True)))))]

    cells = []
    for name, script, pred in (
        ("retry_after_seconds", [write(response(429, body, (*J, ("Retry-After", "7"))))],
         lambda v: v == 7.0),
        ("retry_after_date", date_script, lambda v: v is not None and 24.0 <= v <= 31.0),
        ("retry_after_garbage", [write(response(429, body, (*J, ("Retry-After", "soon, maybe"))))],
         lambda v: v is None),
    ):
        matcher = E(HTTPStatusError, status=429, retry_after=pred)
        cells.append(Cell(name, script, script, error(matcher), events(matcher)))
    return cells


def _one_request(server: FaultServer, where: str) -> None:
    assert len(server.requests) == 1, f"{where}: the server saw {len(server.requests)} requests, expected 1 (no redirect followed)"


def build_cells() -> list[Cell]:
    cells = [
        Cell("refused", None, None, error(E(ConnectError)), events(E(ConnectError)), refused=True),
        Cell("close_before_headers", [CLOSE], [CLOSE],
             error(E(TransportError, not_cls=(RequestTimeout,))), events(E(TransportError, not_cls=(RequestTimeout,)))),
        Cell("rst_before_headers", [ABORT], [ABORT],
             error(E(TransportError, not_cls=(RequestTimeout,))), events(E(TransportError, not_cls=(RequestTimeout,)))),
        Cell("close_mid_headers",
             [write(b"HTTP/1.1 200 OK\r\nContent-Type: appl"), CLOSE],
             [write(b"HTTP/1.1 200 OK\r\nContent-Type: text/ev"), CLOSE],
             error(E(TransportError, not_cls=(RequestTimeout,))), events(E(TransportError, not_cls=(RequestTimeout,)))),
        Cell("close_mid_chunk",
             [write(head(headers=J) + b"20\r\n" + JSON_BYTES[:8]), CLOSE],
             [write(head() + chunk(b'data: {"n": 1}\n\n') + b"40\r\ndata: {\"n\""), CLOSE],
             error(E(TransportError, not_cls=(RequestTimeout,))), events({"n": 1}, E(StreamTruncated))),
        Cell("short_content_length",
             [write(response(200, JSON_BYTES, (*J, ("Content-Length", "100")), length=False)), CLOSE],
             [write(response(200, b'data: {"n": 1}\n\n', (*ES, ("Content-Length", "200")), length=False)), CLOSE],
             error(E(TransportError, not_cls=(RequestTimeout,))), events({"n": 1}, E(StreamTruncated))),
        Cell("stall_before_headers", [HOLD], [HOLD],
             error(E(RequestTimeout, phase="receive")), events(E(RequestTimeout, phase="idle")), timeout=0.5),
        Cell("stall_mid_body",
             [write(response(200, JSON_BYTES, (*J, ("Content-Length", "100")), length=False)), HOLD],
             [write(head() + chunk(b'data: {"n": 1}\n\n')), HOLD],
             error(E(RequestTimeout, phase="receive")), events({"n": 1}, E(RequestTimeout, phase="idle")),
             timeout=0.5),
        Cell("byte_drip",
             [drip(response(200, JSON_BYTES, J))],
             [drip(head() + chunked(SSE, 7))],
             value(JSON_VALUE), events(*SSE_EVENTS), timeout=5.0),
        Cell("keepalive_only_stall",
             [write(head()), every(chunk(b": ping\n\n"), 0.05)],
             [write(head()), every(chunk(b": ping\n\n"), 0.05)],
             error(E(RequestTimeout, phase="receive")), events(E(RequestTimeout, phase="idle")), timeout=0.5),
        Cell("oversized_event", None,
             [write(head() + chunk(b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: {"pad": "' + b"x" * 4000
                                   + b'"}\n\ndata: [DONE]\n\n') + LAST_CHUNK)],
             None, events({"n": 1}, {"n": 2}, E(BufferOverflow)), stream_backend_kw={"max_event_bytes": 1024}),
        Cell("header_line_100k",
             [write(response(200, JSON_BYTES, (*J, ("X-Big", "a" * 100_000))))],
             [write(head(headers=(*ES, ("X-Big", "a" * 100_000))) + chunk(SSE) + LAST_CHUNK)],
             error(HeadersTooLarge()), events(HeadersTooLarge())),
        Cell("header_block_320k",
             [write(response(200, JSON_BYTES, (*J, *((f"X-H{i}", "v" * 56) for i in range(5000)))))],
             [write(head(headers=(*ES, *((f"X-H{i}", "v" * 56) for i in range(5000)))) + chunk(SSE) + LAST_CHUNK)],
             error(HeadersTooLarge()), events(HeadersTooLarge())),
        Cell("header_8k_is_fine",
             [write(response(200, JSON_BYTES, (*J, ("X-Normal", "n" * 8192))))],
             [write(head(headers=(*ES, ("X-Normal", "n" * 8192))) + chunk(SSE) + LAST_CHUNK)],
             value(JSON_VALUE), events(*SSE_EVENTS)),
        Cell("invalid_utf8",
             [write(response(200, b'{"t": "a\xffb"}', J))],
             [write(head() + chunk(b'data: {"t": "a\xffb"}\n\ndata: [DONE]\n\n') + LAST_CHUNK)],
             error(E(DecodeError, match=r"utf-?8")), events({"t": "a\ufffdb"}, StreamDone("stop"))),
        Cell("invalid_json",
             [write(response(200, b'{"t": not json', J))],
             [write(head() + chunk(b'data: {not json}\n\ndata: {"n": 1}\n\ndata: [DONE]\n\n') + LAST_CHUNK)],
             error(E(DecodeError)), events({"n": 1}, StreamDone("stop"))),
        *_status_cells(),
        *_retry_after_cells(),
        Cell("redirect_302",
             [write(response(302, b"", (("Location", "/elsewhere"),)))],
             [write(response(302, b"", (("Location", "/elsewhere"),)))],
             error(E(HTTPStatusError, status=302)), events(E(HTTPStatusError, status=302)),
             extra_check=_one_request),
        Cell("http10_close_delimited",
             [write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + JSON_BYTES), CLOSE],
             [write(b"HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + SSE), CLOSE],
             value(JSON_VALUE), events(*SSE_EVENTS)),
        Cell("connection_close_body",
             [write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + JSON_BYTES),
              CLOSE],
             [write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n" + SSE), CLOSE],
             value(JSON_VALUE), events(*SSE_EVENTS)),
        Cell("chunk_extensions_and_trailers",
             [write(head(headers=J) + chunk(JSON_BYTES[:6], b";ext=1") + chunk(JSON_BYTES[6:], b';name="v v"')
                    + b"0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n")],
             [write(head() + chunk(SSE[:10], b";a=b") + chunk(SSE[10:], b";x") + b"0\r\nX-Trailer: yes\r\n\r\n")],
             value(JSON_VALUE), events(*SSE_EVENTS)),
        Cell("interim_1xx",
             [write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                    + response(200, JSON_BYTES, J))],
             [write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                    + head() + chunk(SSE) + LAST_CHUNK)],
             value(JSON_VALUE), events(*SSE_EVENTS)),
        Cell("gzip_valid",
             [write(response(200, gz(JSON_BYTES), (*J, ("Content-Encoding", "gzip"))))],
             [write(head(headers=(*ES, ("Content-Encoding", "gzip"))) + chunked(gz(SSE_LONG), 97))],
             value(JSON_VALUE), events(*SSE_LONG_DATA, StreamDone("stop"))),
        Cell("gzip_corrupt",
             [write(response(200, GZIP_CORRUPT, (*J, ("Content-Encoding", "gzip"))))],
             [write(head(headers=(*ES, ("Content-Encoding", "gzip"))) + chunk(GZIP_CORRUPT) + LAST_CHUNK)],
             error(E(DecodeError)), events(E(DecodeError))),
        Cell("gzip_truncated",
             [write(response(200, gz(JSON_BYTES)[:-10], (*J, ("Content-Encoding", "gzip"))))],
             [write(head(headers=(*ES, ("Content-Encoding", "gzip")))
                    + chunked(gz(SSE_LONG)[: len(gz(SSE_LONG)) // 2], 97))],
             error(E(StreamTruncated)), prefix_then(SSE_LONG_DATA, E(StreamTruncated))),
        Cell("gzip_bomb",
             lambda: [write(response(200, post_bomb(), (*J, ("Content-Encoding", "gzip"))))],
             lambda: [write(head(headers=(*ES, ("Content-Encoding", "gzip"))) + chunked(stream_bomb(), 16384))],
             error(E(BufferOverflow)), events({"n": 1}, E(BufferOverflow)), timeout=5.0,
             stream_backend_kw={"max_event_bytes": 1024}),
        Cell("unknown_encoding_br",
             [write(response(200, b"\x0b\x02\x80{}\x03", (*J, ("Content-Encoding", "br"))))],
             [write(head(headers=(*ES, ("Content-Encoding", "br"))) + chunk(b"\x0b\x02\x80{}\x03") + LAST_CHUNK)],
             error(E(DecodeError, match=r"\bbr\b")), events(E(DecodeError, match=r"\bbr\b"))),
        Cell("text_html_200",
             [write(response(200, b"<html><body>Sign in to the Wi-Fi</body></html>", (("Content-Type", "text/html"),)))],
             [write(response(200, b"<html><body>Sign in to the Wi-Fi</body></html>", (("Content-Type", "text/html"),)))],
             error(E(DecodeError)), events(E(DecodeError, match=r"text/html"))),
    ]
    return cells


CELLS = build_cells()
CELL_BY_NAME = {c.name: c for c in CELLS}
CASES = [(c.name, m) for c in CELLS for m in MODES if c.refused or c.script(m) is not None]


# -- running one call -------------------------------------------------------------------


@pytest.fixture
def short_idle(clean_state: None) -> None:
    # Idle keep-alive connections close after 100 ms, so "back to baseline"
    # is reached by itself after a clean reply: nothing is forced shut.
    nous_twisted.configure(pool=nous_twisted.PoolSettings(timeout=100))


def stream_backend(name: str, kw: dict[str, Any]) -> Any:
    if not kw:
        return name
    return TreqStreamBackend(**kw) if name == "treq" else AgentStreamBackend(**kw)


async def run_call(cell: Cell, mode: str, backend: str, url: str) -> Any:
    """The call's outcome: the value or the exception (post), the list of events (stream).
    Fails if it has not ended within a generous bound."""
    limit = cell.timeout + cell.connect_timeout + 5.0
    if mode == "post":
        d = post(url, BODY, backend=backend, timeout=cell.timeout, connect_timeout=cell.connect_timeout)
        d.addTimeout(limit, get_reactor())
        try:
            return await d
        except BaseException as e:  # noqa: B036 - the outcome under test
            if type(e).__name__ in ("TimeoutError", "CancelledError") and not isinstance(e, nous_twisted.NousHTTPError):
                raise AssertionError(f"post did not end within {limit} s") from e
            return e

    async def collect() -> list[Any]:
        got: list[Any] = []
        async for event in stream(url, BODY, stream_backend=stream_backend(backend, cell.stream_backend_kw),
                                  timeout=cell.timeout, connect_timeout=cell.connect_timeout):
            got.append(event)
        return got

    cd: Deferred[list[Any]] = ensureDeferred(collect())
    cd.addTimeout(limit, get_reactor())
    try:
        return await cd
    except Exception as e:
        if type(e).__name__ in ("TimeoutError", "CancelledError"):
            raise AssertionError(f"stream did not end within {limit} s") from e
        raise


async def run_cell(cell: Cell, mode: str, backend: str) -> Any:
    where = f"{cell.name}/{mode}/{backend}"
    if cell.refused:
        url = await refused_url()
        fds = open_fds()
        outcome = await run_call(cell, mode, backend, url)
        await wait_for_baseline(fds, None, what=where)
        return outcome
    script = cell.script(mode)
    assert script is not None
    async with FaultServer(list(script)) as server:
        fds = open_fds()
        outcome = await run_call(cell, mode, backend, server.url())
        await wait_for_baseline(fds, server, what=where)
        if cell.extra_check is not None:
            cell.extra_check(server, where)
    return outcome


def normalize(outcome: Any) -> Any:
    """An outcome made comparable between backends (errors by type and fields;
    a Retry-After date gives a delay that moves with the clock: its value is
    checked by the cell, here only its presence)."""

    def err(e: BaseException) -> Any:
        ra = getattr(e, "retry_after", None)
        return ("error", type(e).__name__, getattr(e, "status", None), repr(getattr(e, "body", None)),
                getattr(e, "phase", None), None if ra is None else "a number")

    if isinstance(outcome, BaseException):
        return err(outcome)
    if isinstance(outcome, list):
        return [err(e.error) if isinstance(e, StreamError) else e for e in outcome]
    return ("value", outcome)


# -- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("cell_name", "mode"), CASES)
@pytest_twisted.ensureDeferred
async def test_fault(cell_name: str, mode: str, backend: str, short_idle: None) -> None:
    cell = CELL_BY_NAME[cell_name]
    outcome = await run_cell(cell, mode, backend)
    where = f"{cell.name}/{mode}/{backend}"
    if mode == "post":
        assert cell.post_expect is not None
        cell.post_expect(outcome, where)
    else:
        assert cell.stream_expect is not None
        terminals = [e for e in outcome if isinstance(e, (StreamDone, StreamError))]
        assert len(terminals) == 1 and outcome[-1] is terminals[0], f"{where}: exactly one terminal event, last: {outcome}"
        cell.stream_expect(outcome, where)


@pytest.mark.parametrize(("cell_name", "mode"), CASES)
@pytest_twisted.ensureDeferred
async def test_backends_agree(cell_name: str, mode: str, short_idle: None) -> None:
    cell = CELL_BY_NAME[cell_name]
    results = [normalize(await run_cell(cell, mode, b)) for b in BACKENDS]
    assert results[0] == results[1], f"{cell.name}/{mode}: treq gave {results[0]!r:.600}, agent gave {results[1]!r:.600}"
