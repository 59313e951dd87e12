"""The fault matrix (tests/test_faults.py) on HTTP/2: each cell's misbehaviour
scripted as frames by a TLS server offering ALPN h2 (tests/h2faultserver.py),
run through the h2 backends, post and stream, must give the outcome the
HTTP/1.1 cell promises (its own checks, reused) and, cell by cell, the same
outcome as the agent backend on the HTTP/1.1 script (types, statuses,
bodies, phases).  After each call the client's fds, the h2 registry and the
server's connections are back to their baseline.  Both reactors.

The HTTP/1.1 cells and their HTTP/2 form:

- ``close_mid_headers``: a HEADERS frame cut short, then FIN;
  ``close_mid_chunk``: a DATA frame cut short (HTTP/2 has no chunks);
  ``short_content_length``: DATA short of content-length, then FIN;
  ``byte_drip``: every byte of the frames alone (one TLS record each);
  ``keepalive_only_stall``: a DATA frame of ``: ping`` every 50 ms;
  ``interim_1xx``: informational HEADERS (100, 103) before the final ones;
  the rest (statuses, Retry-After, header sizes, UTF-8, JSON, gzip, br,
  text/html, redirect, stalls, closes, resets) as HEADERS and DATA frames.
- ``chunk_extensions_and_trailers`` becomes ``trailers``: HTTP/2 has no
  chunked framing (so no chunk extensions), its trailers are a last HEADERS
  frame with END_STREAM.
- Cannot exist on HTTP/2: ``http10_close_delimited`` (no HTTP/1.0 and no
  close-delimited body: a body ends with END_STREAM, or is cut off) and
  ``connection_close_body`` (``Connection`` is a connection-specific field,
  forbidden in HTTP/2 responses, RFC 9113 8.2.2; ``h2`` rejects it as a
  protocol error).
- ``header_line_100k``: HTTP/2 has no header lines; a header field over
  64 KiB fails as the HTTP/1.1 line limit does, and a header list over
  256 KiB (``header_block_320k``) as the HTTP/1.1 head limit (both the
  library's limits, advertised in SETTINGS_MAX_HEADER_LIST_SIZE).

HTTP/2-only cells: RST_STREAM before the headers and after an event, an
error GOAWAY (then the close) before the headers and after an event, and a
protocol error (a frame no server may send) in the same read as the
response's headers and first event, or as a DATA frame past content-length
with END_STREAM: ``TransportError`` before any response byte,
``StreamTruncated`` after an event (post: ``StreamTruncated``, a
``TransportError``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import pytest
import pytest_twisted
import trustme

import nous_twisted
from nous_twisted import StreamDone, StreamError, StreamTruncated, TransportError
from nous_twisted.backends.h2_stream import H2StreamBackend
from nous_twisted.h2pool import get_h2pool
from nous_twisted.shared import get_shared

from .faultserver import ABORT, CLOSE, HOLD, open_fds
from .h2faultserver import (
    DATA,
    HEADERS,
    D,
    DripRest,
    EveryData,
    Goaway,
    H,
    H2FaultServer,
    H2Script,
    Raw,
    Rst,
    T,
    Together,
    frame,
    response,
)
from .h2server import tls_options
from .helpers import refused_url, wait_for
from .test_faults import (
    BODY,
    CELL_BY_NAME,
    GZIP_CORRUPT,
    JSON_BYTES,
    MODES,
    SSE,
    SSE_LONG,
    E,
    PostExpect,
    StreamExpect,
    error,
    events,
    gz,
    normalize,
    post_bomb,
    run_cell,
    stream_bomb,
)

J = (("content-type", "application/json"),)
ES = (("content-type", "text/event-stream"),)
EVENT1 = b'data: {"n": 1}\n\n'


def cut_headers(sid: int) -> bytes:
    """A HEADERS frame claiming 100 bytes, of which 10 come."""
    return frame(HEADERS, 0x4, sid, b"\x88" * 10, length=100)


def cut_data(sid: int) -> bytes:
    return frame(DATA, 0, sid, b'data: {"n"', length=64)


def bad_frame(sid: int) -> bytes:
    """A WINDOW_UPDATE of 0 on the connection: a protocol error (RFC 9113 6.9)."""
    return frame(0x8, 0, 0, b"\x00\x00\x00\x00")


def chunks(data: bytes, size: int, end: bool = True) -> list[Any]:
    parts: list[Any] = [D(data[i : i + size]) for i in range(0, len(data), size)]
    return parts + ([D(b"", end=True)] if end else [])


@dataclass
class H2Cell:
    name: str
    post: H2Script | Callable[[], H2Script] | None
    stream: H2Script | Callable[[], H2Script] | None
    #: the HTTP/1.1 cell whose expectations (and agent outcome) it shares; None: h2 only
    twin: str | None = None
    post_expect: PostExpect | None = None
    stream_expect: StreamExpect | None = None

    def script(self, mode: str) -> H2Script | None:
        s = self.post if mode == "post" else self.stream
        return s() if callable(s) else s

    def expect(self, mode: str) -> Any:
        if self.twin is not None:
            cell = CELL_BY_NAME[self.twin]
            return cell.post_expect if mode == "post" else cell.stream_expect
        return self.post_expect if mode == "post" else self.stream_expect


def _status_cells() -> list[H2Cell]:
    err_json = b'{"error": {"message": "bad model", "type": "invalid_request_error"}}'
    html = b"<html><body><h1>502 oops</h1></body></html>"
    out = []
    for name, status, body, hdrs in (
        ("status_400_json", 400, err_json, J),
        ("status_500_html", 500, html, (("content-type", "text/html"),)),
        ("status_503_empty", 503, b"", ()),
    ):
        script = response(status, body, hdrs)
        out.append(H2Cell(name, script, script, twin=name))
    body = b'{"error": {"message": "slow down"}}'

    def date_script() -> H2Script:
        return response(429, body, (*J, ("retry-after", formatdate(time.time() + 30, usegmt=True))))

    for name, script in (
        ("retry_after_seconds", response(429, body, (*J, ("retry-after", "7")))),
        ("retry_after_date", date_script),
        ("retry_after_garbage", response(429, body, (*J, ("retry-after", "soon, maybe")))),
    ):
        out.append(H2Cell(name, script, script, twin=name))
    return out


def _build() -> list[H2Cell]:
    big = (("x-big", "a" * 100_000),)
    many = tuple((f"x-h{i}", "v" * 56) for i in range(5000))
    normal = (("x-normal", "n" * 8192),)
    gz_sse = gz(SSE_LONG)
    html = b"<html><body>Sign in to the Wi-Fi</body></html>"
    oversized = b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: {"pad": "' + b"x" * 4000 + b'"}\n\ndata: [DONE]\n\n'
    cells = [
        H2Cell("refused", None, None, twin="refused"),
        H2Cell("close_before_headers", [CLOSE], [CLOSE], twin="close_before_headers"),
        H2Cell("rst_before_headers", [ABORT], [ABORT], twin="rst_before_headers"),
        H2Cell("close_mid_headers", [Raw(cut_headers), CLOSE], [Raw(cut_headers), CLOSE], twin="close_mid_headers"),
        H2Cell("close_mid_chunk",
               [H(200, (*J, ("content-length", "32"))), D(JSON_BYTES[:8]), Raw(cut_data), CLOSE],
               [H(200, ES), D(EVENT1), Raw(cut_data), CLOSE], twin="close_mid_chunk"),
        H2Cell("short_content_length",
               [H(200, (*J, ("content-length", "100"))), D(JSON_BYTES), CLOSE],
               [H(200, (*ES, ("content-length", "200"))), D(EVENT1), CLOSE], twin="short_content_length"),
        H2Cell("stall_before_headers", [HOLD], [HOLD], twin="stall_before_headers"),
        H2Cell("stall_mid_body",
               [H(200, (*J, ("content-length", "100"))), D(JSON_BYTES), HOLD],
               [H(200, ES), D(EVENT1), HOLD], twin="stall_mid_body"),
        H2Cell("byte_drip",
               [DripRest(), *response(200, JSON_BYTES, J)],
               [DripRest(), H(200, ES), *chunks(SSE, 7)], twin="byte_drip"),
        H2Cell("keepalive_only_stall",
               [H(200, ES), EveryData(b": ping\n\n", 0.05)],
               [H(200, ES), EveryData(b": ping\n\n", 0.05)], twin="keepalive_only_stall"),
        H2Cell("oversized_event", None, [H(200, ES), D(oversized, end=True)], twin="oversized_event"),
        H2Cell("header_line_100k", response(200, JSON_BYTES, (*J, *big)), [H(200, (*ES, *big)), D(SSE, end=True)],
               twin="header_line_100k"),
        H2Cell("header_block_320k", response(200, JSON_BYTES, (*J, *many)), [H(200, (*ES, *many)), D(SSE, end=True)],
               twin="header_block_320k"),
        H2Cell("header_8k_is_fine", response(200, JSON_BYTES, (*J, *normal)),
               [H(200, (*ES, *normal)), D(SSE, end=True)], twin="header_8k_is_fine"),
        H2Cell("invalid_utf8", response(200, b'{"t": "a\xffb"}', J),
               [H(200, ES), D(b'data: {"t": "a\xffb"}\n\ndata: [DONE]\n\n', end=True)], twin="invalid_utf8"),
        H2Cell("invalid_json", response(200, b'{"t": not json', J),
               [H(200, ES), D(b'data: {not json}\n\ndata: {"n": 1}\n\ndata: [DONE]\n\n', end=True)],
               twin="invalid_json"),
        *_status_cells(),
        H2Cell("redirect_302", response(302, b"", (("location", "/elsewhere"),)),
               response(302, b"", (("location", "/elsewhere"),)), twin="redirect_302"),
        H2Cell("trailers",
               [H(200, J), D(JSON_BYTES[:6]), D(JSON_BYTES[6:]), T((("x-trailer", "yes"), ("x-other", "1")))],
               [H(200, ES), D(SSE[:10]), D(SSE[10:]), T((("x-trailer", "yes"),))],
               twin="chunk_extensions_and_trailers"),
        H2Cell("interim_1xx",
               [H(100), H(103, (("link", "</a.css>; rel=preload"),)), *response(200, JSON_BYTES, J)],
               [H(100), H(103, (("link", "</a.css>; rel=preload"),)), H(200, ES), D(SSE, end=True)],
               twin="interim_1xx"),
        H2Cell("gzip_valid", response(200, gz(JSON_BYTES), (*J, ("content-encoding", "gzip"))),
               [H(200, (*ES, ("content-encoding", "gzip"))), *chunks(gz_sse, 97)], twin="gzip_valid"),
        H2Cell("gzip_corrupt", response(200, GZIP_CORRUPT, (*J, ("content-encoding", "gzip"))),
               [H(200, (*ES, ("content-encoding", "gzip"))), D(GZIP_CORRUPT, end=True)], twin="gzip_corrupt"),
        H2Cell("gzip_truncated", response(200, gz(JSON_BYTES)[:-10], (*J, ("content-encoding", "gzip"))),
               [H(200, (*ES, ("content-encoding", "gzip"))), *chunks(gz_sse[: len(gz_sse) // 2], 97)],
               twin="gzip_truncated"),
        H2Cell("gzip_bomb", lambda: response(200, post_bomb(), (*J, ("content-encoding", "gzip"))),
               lambda: [H(200, (*ES, ("content-encoding", "gzip"))), *chunks(stream_bomb(), 16384)],
               twin="gzip_bomb"),
        H2Cell("unknown_encoding_br", response(200, b"\x0b\x02\x80{}\x03", (*J, ("content-encoding", "br"))),
               [H(200, (*ES, ("content-encoding", "br"))), D(b"\x0b\x02\x80{}\x03", end=True)],
               twin="unknown_encoding_br"),
        H2Cell("text_html_200", response(200, html, (("content-type", "text/html"),)),
               response(200, html, (("content-type", "text/html"),)), twin="text_html_200"),
        # -- HTTP/2 only ---------------------------------------------------------------
        H2Cell("rst_stream_before_headers", [Rst()], [Rst()],
               post_expect=error(E(TransportError, not_cls=(StreamTruncated,))),
               stream_expect=events(E(TransportError, not_cls=(StreamTruncated,)))),
        H2Cell("rst_stream_after_event",
               [H(200, (*J, ("content-length", "32"))), D(JSON_BYTES[:8]), Rst()],
               [H(200, ES), D(EVENT1), Rst()],
               post_expect=error(E(StreamTruncated)), stream_expect=events({"n": 1}, E(StreamTruncated))),
        H2Cell("goaway_error_before_headers", [Goaway(), CLOSE], [Goaway(), CLOSE],
               post_expect=error(E(TransportError, not_cls=(StreamTruncated,))),
               stream_expect=events(E(TransportError, not_cls=(StreamTruncated,)))),
        H2Cell("goaway_error_after_event",
               [H(200, (*J, ("content-length", "32"))), D(JSON_BYTES[:8]), Goaway(), CLOSE],
               [H(200, ES), D(EVENT1), Goaway(), CLOSE],
               post_expect=error(E(StreamTruncated)), stream_expect=events({"n": 1}, E(StreamTruncated))),
        H2Cell("protocol_error_before_headers", [Raw(bad_frame)], [Raw(bad_frame)],
               post_expect=error(E(TransportError, match="protocol error", not_cls=(StreamTruncated,))),
               stream_expect=events(E(TransportError, match="protocol error", not_cls=(StreamTruncated,)))),
        H2Cell("protocol_error_mid_batch",
               [Together([H(200, (*J, ("content-length", "32"))), D(JSON_BYTES[:8]), Raw(bad_frame)])],
               [Together([H(200, ES), D(EVENT1), Raw(bad_frame)])],
               post_expect=error(E(StreamTruncated, match="protocol error")),
               stream_expect=events({"n": 1}, E(StreamTruncated, match="protocol error"))),
        H2Cell("data_past_content_length",
               [Together([H(200, (*J, ("content-length", "8"))), D(JSON_BYTES[:8]), D(JSON_BYTES[8:], end=True)])],
               [Together([H(200, (*ES, ("content-length", str(len(EVENT1))))), D(EVENT1),
                          D(b'data: {"n": 2}\n\n', end=True)])],
               post_expect=error(E(StreamTruncated, match="protocol error")),
               stream_expect=events({"n": 1}, E(StreamTruncated, match="protocol error"))),
    ]
    return cells


CELLS = _build()
BY_NAME = {c.name: c for c in CELLS}
CASES = [(c.name, m) for c in CELLS for m in MODES if c.name == "refused" or c.script(m) is not None]
NOT_ON_H2 = {"http10_close_delimited", "connection_close_body"}


def test_every_http11_cell_has_an_h2_form_or_a_reason() -> None:
    twins = {c.twin for c in CELLS if c.twin is not None}
    assert twins | NOT_ON_H2 == set(CELL_BY_NAME), set(CELL_BY_NAME) - twins - NOT_ON_H2
    assert not twins & NOT_ON_H2
    for c in CELLS:
        if c.twin is not None:
            http11 = CELL_BY_NAME[c.twin]
            for mode in MODES:
                # a mode the HTTP/1.1 cell has, the h2 one has too
                assert (http11.script(mode) is not None or http11.refused) == (
                    c.script(mode) is not None or c.name == "refused"), (c.name, mode)


# -- running one call -----------------------------------------------------------------


@pytest.fixture
def short_idle(clean_state: None, ca_file: str) -> None:
    nous_twisted.configure(ca_bundle=ca_file, pool=nous_twisted.PoolSettings(timeout=100))


def _h2_backend(cell: H2Cell) -> Any:
    kw = CELL_BY_NAME[cell.twin].stream_backend_kw if cell.twin else {}
    return H2StreamBackend(**kw) if kw else "h2"


def _limits(cell: H2Cell) -> tuple[float, float]:
    if cell.twin is not None:
        http11 = CELL_BY_NAME[cell.twin]
        return http11.timeout, http11.connect_timeout
    return 2.0, 1.0


async def _call(cell: H2Cell, mode: str, url: str) -> Any:
    from .helpers import get_reactor

    timeout, connect_timeout = _limits(cell)
    limit = timeout + connect_timeout + 5.0
    if mode == "post":
        d = nous_twisted.post(url, BODY, backend="h2", timeout=timeout, connect_timeout=connect_timeout)
        d.addTimeout(limit, get_reactor())
        try:
            return await d
        except nous_twisted.NousHTTPError as e:
            return e
    got: list[Any] = []
    s = nous_twisted.stream(url, BODY, stream_backend=_h2_backend(cell), timeout=timeout,
                            connect_timeout=connect_timeout)
    timer = get_reactor().callLater(limit, s.cancel)
    async for event in s:
        got.append(event)
    assert timer.active(), f"{cell.name}/{mode}: the stream did not end within {limit} s"
    timer.cancel()
    return got


def _h2_idle() -> bool:
    pool = get_h2pool(get_shared())
    return not any(h.conns or h.attempts or h.waiters for h in pool.hosts.values())


async def run_h2(cell: H2Cell, mode: str, ca: trustme.CA) -> Any:
    where = f"{cell.name}/{mode}/h2"
    if cell.name == "refused":
        url = (await refused_url()).replace("http://", "https://")
        fds = open_fds()
        outcome = await _call(cell, mode, url)
        await wait_for(lambda: open_fds() <= fds and _h2_idle(), timeout=3.0)
        return outcome
    script = cell.script(mode)
    assert script is not None
    async with H2FaultServer([script], tls_options(ca, [b"h2"])) as server:
        fds = open_fds()
        outcome = await _call(cell, mode, server.url())
        try:
            await wait_for(lambda: server.open_connections == 0 and open_fds() <= fds and _h2_idle(), timeout=3.0)
        except AssertionError:
            raise AssertionError(f"{where}: not back to baseline: server connections {server.open_connections}, "
                                 f"fds {open_fds()} (baseline {fds}), h2 idle {_h2_idle()}") from None
        if cell.name == "redirect_302":
            assert len(server.requests) == 1, f"{where}: {len(server.requests)} requests (no redirect followed)"
    return outcome


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize(("cell_name", "mode"), CASES)
@pytest_twisted.ensureDeferred
async def test_h2_fault(cell_name: str, mode: str, short_idle: None, ca: trustme.CA) -> None:
    cell = BY_NAME[cell_name]
    where = f"{cell.name}/{mode}/h2"
    outcome = await run_h2(cell, mode, ca)
    if mode == "stream":
        terminals = [e for e in outcome if isinstance(e, (StreamDone, StreamError))]
        assert len(terminals) == 1 and outcome[-1] is terminals[0], f"{where}: exactly one terminal event, last: {outcome}"
    expect = cell.expect(mode)
    assert expect is not None
    expect(outcome, where)


@pytest.mark.parametrize(("cell_name", "mode"), [(n, m) for n, m in CASES if BY_NAME[n].twin is not None])
@pytest_twisted.ensureDeferred
async def test_h2_agrees_with_the_agent_backend(cell_name: str, mode: str, short_idle: None, ca: trustme.CA) -> None:
    cell = BY_NAME[cell_name]
    assert cell.twin is not None
    h2 = normalize(await run_h2(cell, mode, ca))
    agent = normalize(await run_cell(CELL_BY_NAME[cell.twin], mode, "agent"))
    assert h2 == agent, f"{cell.name}/{mode}: h2 gave {h2!r:.600}, the agent backend gave {agent!r:.600}"



@pytest_twisted.ensureDeferred
async def test_a_protocol_error_ends_each_stream_by_what_it_received(short_idle: None, ca: trustme.CA) -> None:
    """One read carries the second stream's headers and first event, then a
    frame no server may send: that stream ends StreamTruncated after its
    event, its sibling (no response byte yet) TransportError, retried by no
    one; both on one connection."""
    scripts: list[H2Script] = [[HOLD], [Together([H(200, ES), D(EVENT1), Raw(bad_frame)])]]
    async with H2FaultServer(scripts, tls_options(ca, [b"h2"])) as server:
        first = nous_twisted.stream(server.url(), BODY, stream_backend="h2", timeout=5.0)
        await wait_for(lambda: len(server.requests) == 1)
        second = nous_twisted.stream(server.url(), BODY, stream_backend="h2", timeout=5.0)
        got = []
        for s in (first, second):
            got.append([e async for e in s])
        assert server.connections == 1 and len(server.requests) == 2
    waiting, answered = got
    assert len(waiting) == 1 and isinstance(waiting[0], StreamError), waiting
    E(TransportError, match="protocol error", not_cls=(StreamTruncated,)).check(waiting[0].error, "first")
    events({"n": 1}, E(StreamTruncated, match="protocol error"))(answered, "second")
