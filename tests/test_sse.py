"""The SSE parser against the WHATWG rules, a reference written from the spec,
and every way of splitting the bytes."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nous_twisted.errors import BufferOverflow
from nous_twisted.sse import SSEEvent, SSEParser


def parse(data: bytes, chunks: list[int] | None = None) -> list[SSEEvent]:
    p = SSEParser()
    out: list[SSEEvent] = []
    if chunks is None:
        out += p.feed(data)
    else:
        pos = 0
        for size in chunks:
            out += p.feed(data[pos : pos + size])
            pos += size
        out += p.feed(data[pos:])
    p.close()
    return out


def reference(data: bytes) -> list[tuple[str, str, str]]:
    """The event stream interpretation of the HTML standard, step by step, on
    a decoded string: deliberately naive, for agreement tests."""
    text = data.decode("utf-8", "replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines: list[str] = []
    cur = ""
    i = 0
    complete = False
    while i < len(text):
        c = text[i]
        if c == "\r":
            lines.append(cur)
            cur = ""
            if i + 1 < len(text) and text[i + 1] == "\n":
                i += 1
        elif c == "\n":
            lines.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    complete = cur == ""
    del complete  # a trailing partial line is never processed
    events = []
    data_buf = ""
    event_type = ""
    last_id = ""
    for line in lines:
        if line == "":
            if data_buf == "":
                event_type = ""
                continue
            if data_buf.endswith("\n"):
                data_buf = data_buf[:-1]
            events.append((event_type or "message", data_buf, last_id))
            data_buf = ""
            event_type = ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "event":
            event_type = value
        elif name == "data":
            data_buf += value + "\n"
        elif name == "id":
            if "\0" not in value:
                last_id = value
    return events


def as_tuples(events: list[SSEEvent]) -> list[tuple[str, str, str]]:
    return [(e.event, e.text, e.id) for e in events]


# -- the rules, one by one --------------------------------------------------------


def test_bom_is_stripped_once_even_split() -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n"
    for split in ([1], [2], [1, 1], [3]):
        assert as_tuples(parse(stream, split)) == [("message", "a", "")]
    # only one: a second BOM is data
    assert as_tuples(parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n")) == []
    assert as_tuples(parse(b"\xef\xbb\xbfdata: \xef\xbb\xbfa\n\n")) == [("message", "\ufeffa", "")]


def test_line_ends_crlf_lf_cr_and_split_crlf() -> None:
    for stream in (b"data: a\r\n\r\n", b"data: a\n\n", b"data: a\r\r", b"data: a\r\n\n", b"data: a\n\r\n"):
        for cut in range(1, len(stream)):
            assert as_tuples(parse(stream, [cut])) == [("message", "a", "")], (stream, cut)
    # CR at the end of one chunk, LF at the start of the next: ONE line end
    assert as_tuples(parse(b"data: a\r\ndata: b\r\n\r\n", [8])) == [("message", "a\nb", "")]


def test_unicode_separators_are_data() -> None:
    stream = "data: a\u2028b\u2029c\u0085d\n\n".encode()
    assert as_tuples(parse(stream)) == [("message", "a\u2028b\u2029c\u0085d", "")]


def test_comment_is_ignored() -> None:
    assert as_tuples(parse(b": ping\n\n:\n\ndata: x\n\n")) == [("message", "x", "")]


def test_field_parsing() -> None:
    assert as_tuples(parse(b"data:a\n\n")) == [("message", "a", "")]
    assert as_tuples(parse(b"data:  a\n\n")) == [("message", " a", "")]
    assert as_tuples(parse(b"data\n\n")) == [("message", "", "")]
    assert as_tuples(parse(b"data: a:b\n\n")) == [("message", "a:b", "")]


def test_multi_line_data_and_trailing_lf() -> None:
    assert as_tuples(parse(b"data: a\ndata: b\ndata\n\n")) == [("message", "a\nb\n", "")]


def test_event_only_block_dispatches_nothing() -> None:
    """httpx-sse and the SDKs dispatch an empty event here."""
    assert parse(b"event: ping\n\n") == []
    assert parse(b"retry: 10\n\n") == []
    # and the event type does not leak into the next event
    assert as_tuples(parse(b"event: ping\n\ndata: x\n\n")) == [("message", "x", "")]


def test_id_does_not_make_phantom_events() -> None:
    """The SDKs dispatch an empty event on every blank line after any id:."""
    assert as_tuples(parse(b"id: 1\n\n\n\ndata: x\n\n\n\n")) == [("message", "x", "1")]


def test_id_persists_and_nul_is_ignored() -> None:
    events = parse(b"id: 7\ndata: a\n\ndata: b\n\nid: x\x00y\ndata: c\n\nid\ndata: d\n\n")
    assert [e.id for e in events] == ["7", "7", "7", ""]


@pytest.mark.parametrize("value,expected", [(b"5", 5), (b"+5", None), (b"1_0", None), (b"5s", None), (b" 5", 5),
                                            (b"-1", None), (b"\xd9\xa5", None), (b"", None)])
def test_retry_only_ascii_digits(value: bytes, expected: int | None) -> None:
    p = SSEParser()
    p.feed(b"retry:" + value + b"\n\n")
    assert p.retry == expected


def test_case_sensitive_fields_unknown_ignored_default_type() -> None:
    assert parse(b"Data: a\n\nDATA: b\n\n") == []
    assert as_tuples(parse(b"foo: bar\ndata: a\n\n")) == [("message", "a", "")]
    assert as_tuples(parse(b"event: Message\ndata: a\n\n")) == [("Message", "a", "")]


def test_unterminated_event_is_discarded() -> None:
    assert as_tuples(parse(b"data: a\n\ndata: b\n")) == [("message", "a", "")]
    assert as_tuples(parse(b"data: a\n\ndata: b")) == [("message", "a", "")]


def test_invalid_utf8_becomes_replacement_never_raises() -> None:
    events = parse(b"data: a\xff\xfeb\xe2\x82\n\n")
    assert events[0].text == "a\ufffd\ufffdb\ufffd"
    # split inside a multi-byte sequence changes nothing
    stream = "data: \u00e9\u20ac\U0001f600\n\n".encode()
    for cut in range(1, len(stream)):
        assert as_tuples(parse(stream, [cut])) == [("message", "\u00e9\u20ac\U0001f600", "")]


def test_oversized_event_is_buffer_overflow() -> None:
    p = SSEParser(max_event_bytes=1000)
    assert p.feed(b"data: " + b"x" * 2000) == []  # one long partial line
    assert isinstance(p.overflow, BufferOverflow) and "limit of 1000 bytes" in str(p.overflow)
    assert p.feed(b"\n\ndata: a\n\n") == []  # it takes nothing more
    p = SSEParser(max_event_bytes=1000)
    for _ in range(30):
        p.feed(b"data: " + b"x" * 50 + b"\n")  # many lines, one event
    assert isinstance(p.overflow, BufferOverflow)
    p = SSEParser(max_event_bytes=1000)
    assert len(p.feed((b"data: " + b"x" * 900 + b"\n\n") * 20)) == 20  # under the limit, fine
    assert p.overflow is None


def _overflowing(stream: bytes, limit: int, cuts: list[int]) -> tuple[list[SSEEvent], BufferOverflow | None]:
    p = SSEParser(max_event_bytes=limit)
    out: list[SSEEvent] = []
    pos = 0
    for size in cuts:
        out += p.feed(stream[pos : pos + size])
        pos += size
    out += p.feed(stream[pos:])
    return out, p.overflow


@pytest.mark.parametrize("oversized", [
    b"data: " + b"x" * 200 + b"\n\n",  # one long line (fast-path shape)
    b": comment\ndata: " + b"x" * 200 + b"\n\n",  # the same on the general path
    b"data: " + b"x" * 60 + b"\n" + (b"data: " + b"y" * 60 + b"\n") * 3 + b"\n",  # the data buffer outgrows it
    b"data: " + b"x" * 200,  # a partial line that outgrows it
    b"event: " + b"e" * 200 + b"\n",  # any field line
])
def test_events_before_an_oversized_one_are_returned(oversized: bytes) -> None:
    before = b'data: {"a":1}\n\nevent: x\ndata: 2\n\ndata: 3\n\n'
    stream = before + oversized + b"data: after\n\n"
    for cuts in ([], [len(before) - 5], [len(before) + 3], [20, 40, 60], [1] * 60):
        events, overflow = _overflowing(stream, 100, cuts)
        assert as_tuples(events) == [("message", '{"a":1}', ""), ("x", "2", ""), ("message", "3", "")], cuts
        assert isinstance(overflow, BufferOverflow), cuts


def test_exact_limit_passes_one_byte_more_overflows() -> None:
    limit = 50
    exact = b"data: " + b"x" * (limit - 6)  # a line of exactly the limit
    for line, ok in ((exact, True), (exact + b"x", False)):
        for prefix in (b"", b": c\n"):  # the fast path and the general path
            stream = prefix + line + b"\n\n"
            for cuts in ([], [7], [1] * len(stream)):
                events, overflow = _overflowing(stream, limit, cuts)
                assert (overflow is None) is ok, (line, prefix, cuts)
                assert len(events) == (1 if ok else 0)
    # the data buffer: values plus one LF each
    two = b"data: " + b"x" * 24 + b"\ndata: " + b"y" * 24 + b"\n\n"  # 25 + 25 = 50
    assert _overflowing(two, 50, [])[1] is None
    assert isinstance(_overflowing(two, 49, [])[1], BufferOverflow)


# -- properties --------------------------------------------------------------------

_pieces = st.sampled_from(
    [b"data: ", b"data:", b"data", b"event: ", b"event:x", b"id: ", b"id: 1", b"id:\x00", b"retry: 5", b": c",
     b":", b"\n", b"\r", b"\r\n", b"\n\n", b"\r\n\r\n", b"{\"a\": 1}", b"x", b" ", b"\xef\xbb\xbf", b"\xff",
     "\u00e9\u2028".encode(), b"unknown: v", b"[DONE]", b"\xe2\x82"]
)
_streams = st.lists(_pieces, max_size=40).map(b"".join)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_streams, st.lists(st.integers(min_value=1, max_value=12), max_size=30))
def test_any_split_gives_the_same_events(stream: bytes, cuts: list[int]) -> None:
    assert parse(stream, cuts) == parse(stream)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_streams)
def test_agrees_with_the_reference(stream: bytes) -> None:
    assert as_tuples(parse(stream)) == reference(stream)


@settings(max_examples=100)
@given(_streams)
def test_one_byte_at_a_time(stream: bytes) -> None:
    assert parse(stream, [1] * len(stream)) == parse(stream)


# -- cost ----------------------------------------------------------------------------


def test_linear_in_the_bytes() -> None:
    """A 4 MiB event fed in 1 KiB chunks costs about what it costs whole.

    A parser that re-scans or re-copies its buffer per chunk does ~4096x the
    work here (gigabytes copied); the factor allowed is generous.
    """
    event = b"data: " + b"x" * (4 * 1024 * 1024) + b"\n\n"
    chunks = [event[i : i + 1024] for i in range(0, len(event), 1024)]

    def cost(feed_chunks: list[bytes]) -> float:
        best = float("inf")
        for _ in range(3):
            p = SSEParser()
            t = time.process_time()
            n = 0
            for c in feed_chunks:
                n += len(p.feed(c))
            best = min(best, time.process_time() - t)
            assert n == 1
        return best

    whole = cost([event])
    split = cost(chunks)
    assert split <= max(30 * whole, 0.25), (whole, split)
