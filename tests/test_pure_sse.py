"""The SSE parser's rules, each from both sides, with exact values: reads
that hold whole events plus part of the next, exact limits, the BOM and CR
split across reads.  Reactor-free (these run under ``tox -e mutation``)."""

from __future__ import annotations

import re

import pytest

from nous_twisted.errors import BufferOverflow
from nous_twisted.sse import SSEEvent, SSEParser


def feed_all(p: SSEParser, *chunks: bytes) -> list[SSEEvent]:
    out: list[SSEEvent] = []
    for c in chunks:
        out += p.feed(c)
    return out


def overflow(p: SSEParser, match: str | None = None) -> bool:
    """The parser overflowed (and its message matches ``match``)."""
    assert p.overflow is not None, "the parser did not overflow"
    assert isinstance(p.overflow, BufferOverflow)
    if match is not None:
        assert re.search(match, str(p.overflow)), str(p.overflow)
    return True


def msg(data: bytes, id: str = "", event: str = "message") -> SSEEvent:
    return SSEEvent(event, data, id)


def test_partial_event_after_whole_events_in_one_read_is_kept() -> None:
    # the case: the middle read holds a whole event and part of the next
    p = SSEParser()
    assert p.feed(b'data: {"z":0}\n\n') == [msg(b'{"z":0}')]
    assert p.feed(b'data: {"a":1}\n\ndata: {"b"') == [msg(b'{"a":1}')]
    assert p.feed(b":2}\n\n") == [msg(b'{"b":2}')]
    assert p.events_dispatched == 3


def test_partial_field_line_after_whole_events_is_kept() -> None:
    p = SSEParser()
    assert p.feed(b"data: 1\n\ndata: 2\n\nevent: x\nda") == [msg(b"1"), msg(b"2")]
    assert p.feed(b"ta: 3\n\n") == [msg(b"3", event="x")]


def test_pending_event_then_whole_events_in_one_read() -> None:
    p = SSEParser()
    assert p.feed(b"data: a") == []
    assert p.feed(b"\n\ndata: b\n\ndata: c\n\n") == [msg(b"a"), msg(b"b"), msg(b"c")]
    assert p.feed(b"data: d\n") == []
    assert p.feed(b"\ndata: e\n\n") == [msg(b"d"), msg(b"e")]
    assert p.events_dispatched == 5


def test_fast_path_events_carry_the_last_event_id() -> None:
    p = SSEParser()
    assert p.feed(b"id: 7\ndata: a\n\n") == [msg(b"a", "7")]
    assert p.feed(b"data: b\n\ndata: c\n\n") == [msg(b"b", "7"), msg(b"c", "7")]


def test_event_type_is_reset_after_each_dispatch_and_blank_block() -> None:
    p = SSEParser()
    assert p.feed(b"event: a\ndata: 1\n\ndata: 2\n\n") == [msg(b"1", event="a"), msg(b"2")]
    assert p.feed(b"event: b\n\ndata: 3\n\n") == [msg(b"3")]


def test_field_forms() -> None:
    p = SSEParser()
    assert p.feed(b"data\n\n") == [msg(b"")]
    assert p.feed(b"data:x\n\n") == [msg(b"x")]
    assert p.feed(b"data:  two\n\n") == [msg(b" two")]
    assert p.feed(b"data: a\ndata: b\n\n") == [msg(b"a\nb")]
    assert p.feed(b"data: a\ndata\n\n") == [msg(b"a\n")]
    assert p.feed(b"Data: no\nevent\ndata: y\n\n") == [msg(b"y")]
    assert p.feed(b": comment\ndata: z\n\n") == [msg(b"z")]
    assert p.feed(b"event:type\ndata: w\n\n") == [msg(b"w", event="type")]


def test_id_and_retry() -> None:
    p = SSEParser()
    assert p.feed(b"id: 1\n\n") == []
    assert p.last_event_id == "1"
    p.feed(b"id: a\x00b\n\n")
    assert p.last_event_id == "1"
    p.feed(b"id\n\n")
    assert p.last_event_id == ""
    assert p.retry is None
    p.feed(b"retry: 1500\n\n")
    assert p.retry == 1500
    p.feed(b"retry: 15x\n\nretry: \xd9\xa1\n\nretry: -1\n\n")
    assert p.retry == 1500
    p.feed(b"retry:20\n\n")
    assert p.retry == 20


def test_id_invalid_utf8_is_replaced() -> None:
    p = SSEParser()
    assert p.feed(b"id: \xff\ndata: x\n\n") == [msg(b"x", "\ufffd")]
    assert p.feed(b"event: \xfe\ndata: y\n\n") == [msg(b"y", "\ufffd", "\ufffd")]


def test_bom_forms() -> None:
    assert SSEParser().feed(b"\xef\xbb\xbfdata: a\n\n") == [msg(b"a")]
    p = SSEParser()
    assert feed_all(p, b"\xef", b"\xbb", b"\xbf", b"data: a\n\n") == [msg(b"a")]
    p = SSEParser()
    assert feed_all(p, b"\xef\xbb", b"\xbfdata: a\n\n") == [msg(b"a")]
    # only the first BOM goes: a second one is part of the field name
    p = SSEParser()
    assert p.feed(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n") == [msg(b"b")]
    # bytes that start like a BOM but are not one stay
    p = SSEParser()
    assert feed_all(p, b"\xef", b"data: a\n\n") == []
    assert p.feed(b"data: b\n\n") == [msg(b"b")]
    p = SSEParser()
    assert feed_all(p, b"d", b"ata: a\n\n") == [msg(b"a")]


def test_bom_alone_then_fast_path() -> None:
    p = SSEParser()
    assert p.feed(b"\xef\xbb\xbf") == []
    assert p.feed(b"data: a\n\ndata: b\n\n") == [msg(b"a"), msg(b"b")]


def test_cr_line_ends_split_across_reads() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n") == []
    assert p.feed(b"\r\n") == [msg(b"a")]
    assert p.feed(b"data: b\r\r") == [msg(b"b")]
    # the LF opening this read belongs to the CR that ended the last one
    assert p.feed(b"\ndata: c\n\n") == [msg(b"c")]
    assert p.feed(b"data: d\r") == []
    assert p.feed(b"data: e\r\r") == [msg(b"d\ne")]
    assert p.feed(b"data: f\n\n") == [msg(b"f")]


def test_lf_after_cr_only_once() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n\n") == [msg(b"a")]


def test_empty_reads_change_nothing() -> None:
    p = SSEParser()
    assert p.feed(b"") == []
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"") == []
    assert p.feed(b"\n\n") == [msg(b"a")]


def test_close_drops_partial_line_and_event() -> None:
    p = SSEParser()
    assert p.feed(b"event: e\ndata: a\ndat") == []
    p.close()
    # "dat" was dropped: this is a line of an unknown field "a", no event
    assert p.feed(b"a: b\n\n") == []
    p.feed(b"data: x\n")
    p.close()
    assert p.feed(b"\n") == []
    assert p.feed(b"data: y\n\n") == [msg(b"y")]
    assert p.events_dispatched == 1


# -- limits: == the limit passes, one byte over fails -------------------------


@pytest.mark.parametrize("split", [False, True])
def test_line_at_the_limit_passes_one_over_fails(split: bool) -> None:
    line = b"event: " + b"e" * 9  # 16 bytes
    p = SSEParser(16)
    chunks = [line[:5], line[5:], b"\ndata: x\n\n"] if split else [line + b"\ndata: x\n\n"]
    assert feed_all(p, *chunks) == [msg(b"x", event="e" * 9)]
    p = SSEParser(15)
    assert feed_all(p, *chunks) == []
    assert overflow(p, "at least 16 bytes is over the limit of 15 bytes")


def test_partial_line_over_the_limit_fails_before_its_end() -> None:
    p = SSEParser(8)
    assert p.feed(b"event: a") == []  # 8 bytes pending
    assert p.feed(b"b") == []
    assert overflow(p, "at least 9 bytes is over the limit of 8 bytes")


def test_event_data_at_the_limit_passes_one_over_fails() -> None:
    # data size counts each line plus its newline: 3 + 1 + 3 + 1 = 8
    body = b"event: t\ndata: abc\ndata: def\n\n"
    assert SSEParser(9).feed(body) == [msg(b"abc\ndef", event="t")]
    p = SSEParser(7)
    assert p.feed(b"data:abc\ndata:def\n\n") == []
    assert overflow(p, "at least 8 bytes is over the limit of 7 bytes")
    assert SSEParser(8).feed(b"data:abc\ndata:def\n\n") == [msg(b"abc\ndef")]


def test_overflow_resets_the_state() -> None:
    p = SSEParser(10)
    p.feed(b"data: 12\n")
    assert p.feed(b"data: 12345678901\n\n") == []
    assert overflow(p)
    # An overflow ends the stream: the parser takes nothing more.
    assert p.feed(b"\ndata: ok\n\n") == []


def test_limit_does_not_depend_on_the_split() -> None:
    body = b"data: " + b"x" * 10 + b"\n\n"
    whole = SSEParser(10)
    assert whole.feed(body) == []
    assert overflow(whole)


def test_fast_path_limit_falls_back_to_the_general_path() -> None:
    p = SSEParser(4)
    assert p.feed(b"data: 12345\n\n") == []
    assert overflow(p)


def test_feed_messages_contract() -> None:
    p = SSEParser()
    # at the very start the BOM may still come: the fast path waits
    assert p.feed_messages(b"data: 1\n\ndata: 2\n\ndata: 3") == (None, b"data: 1\n\ndata: 2\n\ndata: 3")
    assert p.events_dispatched == 0
    p.feed(b"data: 0\n\n")
    assert p.feed_messages(b"data: 1\n\ndata: 2\n\ndata: 3") == ([b"1", b"2"], b"data: 3")
    assert p.events_dispatched == 3
    assert p.feed_messages(b"data: 1\n\n") == ([b"1"], b"")
    assert p.feed_messages(b"data: 1\n") == (None, b"data: 1\n")
    assert p.feed_messages(b": c\n\ndata: 1\n\n") == (None, b": c\n\ndata: 1\n\n")
    assert p.feed_messages(b"data: 1\r\n\r\n") == (None, b"data: 1\r\n\r\n")
    assert p.feed_messages(b"data: a\ndata: b\n\n") == (None, b"data: a\ndata: b\n\n")
    p.feed(b"event: x\n")
    assert p.feed_messages(b"data: 1\n\n") == (None, b"data: 1\n\n")
    assert p.events_dispatched == 4


def test_feed_messages_declines_while_anything_is_pending() -> None:
    for pending in (b"data: a", b"data: a\n", b"data: a\r"):
        p = SSEParser()
        p.feed(b"data: 0\n\n")
        p.feed(pending)
        assert p.feed_messages(b"data: 1\n\n") == (None, b"data: 1\n\n")


def test_events_dispatched_counts_both_paths() -> None:
    p = SSEParser()
    p.feed(b"data: 1\n\n")
    p.feed(b"data: 2\n\ndata: 3\n\n")
    p.feed(b"event: e\ndata: 4\n\n")
    p.feed(b": keep-alive\n\n")
    assert p.events_dispatched == 4


def test_text_property() -> None:
    assert msg(b"caf\xc3\xa9 \xff").text == "caf\u00e9 \ufffd"


# -- state after a dispatch, a close and an overflow -----------------------------


def at_the_limits(p: SSEParser) -> list[SSEEvent]:
    """With max_event_bytes=8: a held line of exactly 8 bytes, a line joined
    from pieces, another held line of 8, then 8 bytes of event data: each at
    its limit, so any count left over from before overflows."""
    return feed_all(p, b"event: a", b"\nevent: b", b"\ndata: ab\ndata: cd\ndata: e\n\n")


def test_limits_start_from_zero() -> None:
    assert at_the_limits(SSEParser(8)) == [msg(b"ab\ncd\ne", event="b")]


def test_limits_start_from_zero_after_a_dispatch() -> None:
    p = SSEParser(8)
    assert p.feed(b"data: ab\ndata: cd\n\n") == [msg(b"ab\ncd")]
    assert at_the_limits(p) == [msg(b"ab\ncd\ne", event="b")]


def test_limits_start_from_zero_after_close() -> None:
    p = SSEParser(8)
    p.feed(b"event: x\ndata: ab\nevent")
    p.close()
    assert at_the_limits(p) == [msg(b"ab\ncd\ne", event="b")]


def test_nothing_is_taken_after_an_overflow() -> None:
    p = SSEParser(8)
    assert p.feed(b"data: ab\ndata: cd\ndata: ef\nevent: q") == []
    assert overflow(p)
    assert p.feed(b"\n") == []
    assert p.feed(b"data: ok\n\n") == []

def test_close_leaves_no_event_type_behind() -> None:
    p = SSEParser()
    p.feed(b"event: e\ndata: a\n")
    p.close()
    assert p.feed(b"data: y\n\n") == [msg(b"y")]


def test_overflow_sizes_in_messages() -> None:
    p = SSEParser(8)
    p.feed(b"event")
    p.feed(b": abcd\n")  # joined from pieces: 11 bytes
    assert str(p.overflow) == "an SSE line or event of at least 11 bytes is over the limit of 8 bytes"
    p = SSEParser(8)
    p.feed(b"data: ab\ndata: cd\ndata: ef\n\n")  # data: 3 + 3 + 3
    assert str(p.overflow) == "an SSE line or event of at least 9 bytes is over the limit of 8 bytes"


def test_only_the_first_lf_after_a_cr_is_skipped() -> None:
    p = SSEParser()
    assert p.feed(b"data: a\r") == []
    assert p.feed(b"\n") == []
    assert p.feed(b"\n") == [msg(b"a")]


def test_cr_never_takes_the_fast_path() -> None:
    p = SSEParser()
    p.feed(b"data: 0\n\n")
    assert p.feed_messages(b"data: 1\r\n\n") == (None, b"data: 1\r\n\n")
    assert p.feed(b"data: 1\r\n\n") == [msg(b"1")]


def test_limit_applies_from_the_first_bytes() -> None:
    # the first two bytes are not a BOM's start: they are a line, held and counted
    p = SSEParser(1)
    assert p.feed(b"ab") == []
    assert overflow(p)
    assert SSEParser(1).feed(b"\xef\xbb") == []  # maybe a BOM: held, not counted


# -- the fast path's edges: feed_messages answers exactly as documented --------


def started(max_event_bytes: int) -> SSEParser:
    """A parser past the start (where the BOM may still come), nothing pending."""
    p = SSEParser(max_event_bytes)
    assert p.feed(b":\n\n") == []
    return p


def test_one_event_fast_path_at_the_limit_and_one_over() -> None:
    # The limit is on the line, "data: " included: 10 bytes pass, 11 do not.
    p = started(10)
    assert p.feed_messages(b"data: 1234\n\n") == ([b"1234"], b"")
    assert p.events_dispatched == 1
    assert p.feed_messages(b"data: 12345\n\n") == (None, b"data: 12345\n\n")
    assert p.events_dispatched == 1
    assert p.feed(b"data: 1234\n\n") == [msg(b"1234")]
    assert p.feed(b"data: 12345\n\n") == []
    assert overflow(p, "at least 11 bytes .* limit of 10 bytes")


def test_several_events_fast_path_at_the_limit_and_one_over() -> None:
    p = started(10)
    assert p.feed_messages(b"data: 1234\n\ndata: x\n\n") == ([b"1234", b"x"], b"")
    assert p.feed_messages(b"data: x\n\ndata: 1234\n\n") == ([b"x", b"1234"], b"")
    assert p.events_dispatched == 4
    assert p.feed_messages(b"data: x\n\ndata: 12345\n\n") == (None, b"data: x\n\ndata: 12345\n\n")
    assert p.events_dispatched == 4


def test_one_event_fast_path_takes_only_data_lines() -> None:
    # Field names are case-sensitive: "DATA" is an unknown field, no event.
    p = started(100)
    assert p.feed_messages(b"DATA: x\n\n") == (None, b"DATA: x\n\n")
    assert p.feed(b"DATA: x\n\n") == []
    assert p.events_dispatched == 0
    # An empty data line and then another field line: one event, data b"".
    assert p.feed_messages(b"data: \nfoo\n\n") == (None, b"data: \nfoo\n\n")
    assert p.feed(b"data: \nfoo\n\n") == [msg(b"")]
    # An extra blank line is not a one-line data event: the fast path declines.
    assert p.feed_messages(b"data: x\n\n\n") == (None, b"data: x\n\n\n")
    assert p.feed(b"data: x\n\n\n") == [msg(b"x")]
    assert p.feed_messages(b"data: \n\n") == ([b""], b"")


def test_overflow_releases_what_the_parser_held() -> None:
    # The limit bounds memory: an overflow drops the held line pieces and the
    # event's data at once, not at close().
    p = started(20)
    assert p.feed(b"data: abc\ndata: 1234") == []
    assert p.feed(b"567890123456789") == []
    assert overflow(p, "at least 25 bytes")
    assert (p._pieces, p._pending, p._data, p._data_size) == ([], 0, [], 0)
    q = started(10)
    assert q.feed(b"data: abc\ndata: xyz\ndata: 12\n") == []
    assert overflow(q, "at least 11 bytes")
    assert (q._pieces, q._pending, q._data, q._data_size) == ([], 0, [], 0)
