"""The stream decoders' provider rules, each from both sides, with exact
values: end and error signals alone, exact limits, reads that end at awkward
places.  Reactor-free (these run under ``tox -e mutation``)."""

from __future__ import annotations

from typing import Any

import pytest

from nous_twisted.decoders import (
    JSONArrayDecoder,
    NDJSONDecoder,
    SSEDecoder,
    format_for,
    make_decoder,
)
from nous_twisted.errors import BufferOverflow, DecodeError, ProviderError, StreamTruncated
from nous_twisted.events import StreamDone, StreamError


def run(dec: Any, *chunks: bytes) -> list[Any]:
    out: list[Any] = []
    for c in chunks:
        out += dec.feed(c)
    out += dec.finish()
    return out


def error_of(dec: Any) -> Any:
    assert isinstance(dec.terminal, StreamError), dec.terminal
    return dec.terminal.error


# -- SSE --------------------------------------------------------------------


def test_sse_partial_event_after_whole_events_in_one_read() -> None:
    d = SSEDecoder()
    assert run(d, b'data: {"z":0}\n\n', b'data: {"a":1}\n\ndata: {"b"', b':2}\n\n') == [{"z": 0}, {"a": 1}, {"b": 2}]
    assert d.terminal == StreamDone("eof")
    assert d.events_seen == 3


def test_sse_event_error_without_an_error_key_is_a_provider_error() -> None:
    d = SSEDecoder()
    assert run(d, b'data: {"a":1}\n\nevent: error\ndata: {"message":"overloaded"}\n\ndata: {"b":2}\n\n') == [{"a": 1}]
    err = error_of(d)
    assert isinstance(err, ProviderError)
    assert err.payload == {"message": "overloaded"}
    assert err.error_type is None


def test_sse_error_key_without_event_error_is_a_provider_error() -> None:
    for body in (b'data: {"error":{"type":"rate_limit"}}\n\n', b'event: other\ndata: {"error":{"type":"rate_limit"}}\n\n'):
        d = SSEDecoder()
        assert run(d, b"data: 1\n\n", body, b"data: 2\n\n") == [1]
        err = error_of(d)
        assert isinstance(err, ProviderError)
        assert err.error_type == "rate_limit"


def test_sse_error_null_or_absent_is_data() -> None:
    d = SSEDecoder()
    assert run(d, b'data: 1\n\nevent: x\ndata: {"error":null}\n\ndata: {"error":null}\n\n') == [
        1, {"error": None}, {"error": None}]
    assert d.terminal == StreamDone("eof")


def test_sse_done_on_both_paths() -> None:
    d = SSEDecoder()
    assert run(d, b"data: 1\n\ndata: [DONE]\n\ndata: 2\n\n") == [1]
    assert d.terminal == StreamDone("stop")
    d = SSEDecoder()
    assert run(d, b"data: 1\n\nevent: x\ndata: [DONE]\n\ndata: 2\n\n") == [1]
    assert d.terminal == StreamDone("stop")
    d = SSEDecoder()
    assert run(d, b"data: 1\n\n: c\ndata: [DONE]\n\ndata: 2\n\n") == [1]
    assert d.terminal == StreamDone("stop")


def test_sse_message_stop_by_event_name_or_type() -> None:
    d = SSEDecoder()
    assert run(d, b'data: 0\n\nevent: message_stop\ndata: {"x":1}\n\ndata: 2\n\n') == [0, {"x": 1}]
    assert d.terminal == StreamDone("stop")
    d = SSEDecoder()
    stop = {"type": "message_stop"}
    assert run(d, b'data: 0\n\nevent: e\ndata: {"type":"message_stop"}\n\ndata: 2\n\n') == [0, stop]
    assert d.terminal == StreamDone("stop")
    d = SSEDecoder()
    assert run(d, b'data: 0\n\ndata: {"type":"message_stop"}\n\ndata: 2\n\n') == [0, stop]
    assert d.terminal == StreamDone("stop")
    d = SSEDecoder()
    assert run(d, b'data: 0\n\nevent: e\ndata: {"type":"delta"}\n\ndata: 2\n\n') == [0, {"type": "delta"}, 2]
    assert d.terminal == StreamDone("eof")


def test_sse_non_json_is_skipped_on_both_paths() -> None:
    d = SSEDecoder()
    assert run(d, b"data: 0\n\ndata: nope\n\nevent: e\ndata: nope\n\ndata: [1]\n\ndata: \"s\"\n\n") == [0, [1], "s"]
    assert d.events_seen == 5


def test_sse_invalid_utf8_inside_a_string_is_replaced() -> None:
    d = SSEDecoder()
    assert run(d, b'data: 0\n\ndata: "a\xffb"\n\nevent: e\ndata: "c\xfe"\n\n') == [0, "a\ufffdb", "c\ufffd"]


def test_sse_non_dict_values_in_named_events_are_delivered() -> None:
    d = SSEDecoder()
    assert run(d, b"event: e\ndata: [1,2]\n\nevent: e\ndata: null\n\n") == [[1, 2], None]


def test_sse_nothing_after_the_terminal() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: 1\n\ndata: [DONE]\n\n") == [1]
    assert d.feed(b"data: 2\n\n") == []
    assert d.finish() == []
    assert d.terminal == StreamDone("stop")


def test_sse_terminal_in_the_fast_path_stops_the_rest_of_the_read() -> None:
    d = SSEDecoder()
    d.feed(b"data: 0\n\n")
    assert d.feed(b"data: [DONE]\n\ndata: 1\n\nevent: e\ndata: 2\n\n") == []
    assert d.terminal == StreamDone("stop")


def test_sse_overflow_keeps_the_events_of_earlier_reads() -> None:
    d = SSEDecoder(16)
    assert d.feed(b"data: 0\n\n") == [0]
    assert d.feed(b"data: 1\n\n") == [1]
    assert d.feed(b"data: " + b"9" * 20 + b"\n\n") == []
    err = error_of(d)
    assert isinstance(err, BufferOverflow)
    assert d.feed(b"data: 2\n\n") == []
    assert d.finish() == []


def test_sse_overflow_keeps_the_events_before_it_in_the_same_read() -> None:
    d = SSEDecoder(16)
    assert d.feed(b"data: 0\n\n") == [0]
    assert d.feed(b"data: 1\n\ndata: " + b"9" * 20 + b"\n\n") == [1]
    err = error_of(d)
    assert isinstance(err, BufferOverflow)
    assert d.feed(b"data: 2\n\n") == []
    assert d.finish() == []


def test_sse_eof_drops_the_partial_event() -> None:
    d = SSEDecoder()
    assert run(d, b"data: 1\n\ndata: 2\n") == [1]
    assert d.terminal == StreamDone("eof")


def test_sse_comments_are_not_events() -> None:
    d = SSEDecoder()
    assert run(d, b": ping\n\n: ping\n\n") == []
    assert d.events_seen == 0


# -- NDJSON -----------------------------------------------------------------


def test_ndjson_line_outgrowing_the_limit_across_reads_is_an_overflow() -> None:
    d = NDJSONDecoder(10)
    out = run(d, b"1\n12345", b"67890", b"1", b"\n2\n")
    assert out == [1]
    err = error_of(d)
    assert isinstance(err, BufferOverflow)
    assert str(err) == "an NDJSON line of at least 11 bytes is over the limit of 10 bytes"


def test_ndjson_line_at_the_limit_passes_one_over_fails() -> None:
    d = NDJSONDecoder(10)
    assert run(d, b"1234567890\n", b"12345", b"67890\n") == [1234567890, 1234567890]
    assert d.terminal == StreamDone("eof")
    d = NDJSONDecoder(10)
    assert run(d, b"2\n12345678901\n3\n") == [2]
    err = error_of(d)
    assert str(err) == "an NDJSON line of at least 11 bytes is over the limit of 10 bytes"
    d = NDJSONDecoder(10)
    assert run(d, b"123456", b"78901\n") == []
    assert isinstance(error_of(d), BufferOverflow)


def test_ndjson_last_line_without_newline_at_the_limit() -> None:
    d = NDJSONDecoder(3)
    assert run(d, b"123") == [123]
    d = NDJSONDecoder(3)
    assert run(d, b"12", b"34") == []
    assert isinstance(error_of(d), BufferOverflow)


def test_ndjson_nothing_after_an_error_line() -> None:
    d = NDJSONDecoder()
    out = run(d, b'{"a":1}\n{"error":"boom"}\n{"b":2}\n', b'{"c":3}\n')
    assert out == [{"a": 1}]
    err = error_of(d)
    assert isinstance(err, ProviderError)
    assert err.payload == {"error": "boom"}
    assert err.error_type is None


def test_ndjson_error_null_is_data_and_done_must_be_true() -> None:
    d = NDJSONDecoder()
    assert run(d, b'{"error":null}\n{"done":1}\n{"done":false}\n[1]\n') == [
        {"error": None}, {"done": 1}, {"done": False}, [1]]
    assert d.terminal == StreamDone("eof")


def test_ndjson_done_true_is_delivered_and_ends() -> None:
    d = NDJSONDecoder()
    assert run(d, b'{"done":true,"x":1}\n{"y":2}\n') == [{"done": True, "x": 1}]
    assert d.terminal == StreamDone("stop")
    assert d.feed(b"3\n") == []


def test_ndjson_blank_lines_and_crlf() -> None:
    d = NDJSONDecoder()
    assert run(d, b"\n\r\n  \n1\r\n\t\n2") == [1, 2]
    assert d.events_seen == 2


def test_ndjson_invalid_lines_are_counted_and_skipped() -> None:
    d = NDJSONDecoder()
    assert run(d, b"x\n1\ny") == [1]
    assert d.events_seen == 3
    assert d.terminal == StreamDone("eof")


def test_ndjson_partial_line_joined_across_reads() -> None:
    d = NDJSONDecoder()
    assert d.feed(b'{"a"') == []
    assert d.feed(b":") == []
    assert d.feed(b'1}\n{"b":2}\n{"c"') == [{"a": 1}, {"b": 2}]
    assert d.feed(b"") == []
    assert d.finish() == []
    assert d.terminal == StreamDone("eof")


def test_ndjson_error_in_the_last_unterminated_line() -> None:
    d = NDJSONDecoder()
    assert run(d, b'1\n{"error":{"code":429}}') == [1]
    err = error_of(d)
    assert err.error_type == "429"


def test_ndjson_invalid_utf8_is_replaced() -> None:
    assert run(NDJSONDecoder(), b'"a\xff"\n') == ["a\ufffd"]


# -- JSON array ---------------------------------------------------------------


def truncated(d: Any) -> None:
    err = error_of(d)
    assert isinstance(err, StreamTruncated)
    assert str(err) == "the body ended inside the JSON array (no closing ']')"


@pytest.mark.parametrize("cut", [b"[", b"[1,", b"[1, ", b'[{"a":1},', b'[{"a":1}', b'[{"a":', b'["a', b"[1"])
def test_array_cut_anywhere_inside_is_truncated(cut: bytes) -> None:
    d = JSONArrayDecoder()
    run(d, cut)
    truncated(d)


def test_array_cut_right_after_a_comma_keeps_the_elements() -> None:
    d = JSONArrayDecoder()
    assert run(d, b'[{"a":1},') == [{"a": 1}]
    truncated(d)


def test_array_closed_is_eof_and_trailing_bytes_are_ignored() -> None:
    d = JSONArrayDecoder()
    assert run(d, b' [ 1 , "x" ,{"a":[2]}, [3] ,null,true ] garbage [') == [1, "x", {"a": [2]}, [3], None, True]
    assert d.terminal == StreamDone("eof")
    assert d.events_seen == 6


@pytest.mark.parametrize("body", [b"", b" \r\n\t", b"[]", b"[ \n]"])
def test_array_empty_bodies_are_eof(body: bytes) -> None:
    d = JSONArrayDecoder()
    assert run(d, body) == []
    assert d.terminal == StreamDone("eof")
    assert d.events_seen == 0


def test_array_strings_with_brackets_and_escapes() -> None:
    body = b'["a]b", "c\\"]", {"k":"}\\\\"}, "\\\\", 7]'
    expected = ["a]b", 'c"]', {"k": "}\\"}, "\\", 7]
    d = JSONArrayDecoder()
    assert run(d, body) == expected
    for size in (1, 2, 3):
        d = JSONArrayDecoder()
        assert run(d, *[body[i : i + size] for i in range(0, len(body), size)]) == expected
        assert d.terminal == StreamDone("eof")


def test_array_scalar_closing_the_array() -> None:
    d = JSONArrayDecoder()
    assert run(d, b"[1,2", b"3]") == [1, 23]
    assert d.terminal == StreamDone("eof")


def test_array_nested_arrays_split() -> None:
    d = JSONArrayDecoder()
    assert run(d, b"[[1,[2]", b"],[", b"]]") == [[1, [2]], []]


def test_array_lone_object() -> None:
    d = JSONArrayDecoder()
    assert run(d, b' {"a":', b'[1]} {"b":2}') == [{"a": [1]}]
    assert d.terminal == StreamDone("eof")
    d = JSONArrayDecoder()
    run(d, b'{"a":1')
    truncated(d)


def test_array_not_an_array() -> None:
    d = JSONArrayDecoder()
    assert run(d, b"  hello world, this is not JSON at all") == []
    err = error_of(d)
    assert isinstance(err, DecodeError)
    assert str(err) == "the body is not a JSON array (starts with b'hello world, this is')"
    assert err.raw == b"hello world, this is not JSON at all"


def test_array_error_element_ends_and_nothing_follows() -> None:
    for body in (b'[1,{"error":{"status":"UNAVAILABLE"}},2]', b'[1, {"error":{"status":"UNAVAILABLE"}} , 2]'):
        d = JSONArrayDecoder()
        assert run(d, body) == [1]
        err = error_of(d)
        assert isinstance(err, ProviderError)
        assert err.error_type == "UNAVAILABLE"
    d = JSONArrayDecoder()
    assert run(d, b'[{"error":null},2]') == [{"error": None}, 2]


def test_array_error_string_element_top_level() -> None:
    d = JSONArrayDecoder()
    assert run(d, b'["a", "b"]') == ["a", "b"]
    assert d.events_seen == 2


def test_array_invalid_element_is_skipped() -> None:
    d = JSONArrayDecoder()
    assert run(d, b"[1, nope, 2]") == [1, 2]
    assert d.events_seen == 3


def test_array_element_at_the_limit_passes_one_over_fails() -> None:
    d = JSONArrayDecoder(7)
    assert run(d, b'[{"a":1}, "abcde"]') == [{"a": 1}, "abcde"]
    assert d.terminal == StreamDone("eof")
    d = JSONArrayDecoder(7)
    assert run(d, b'[{"a":1},', b'{"a":', b'12}]') == [{"a": 1}]
    err = error_of(d)
    assert isinstance(err, BufferOverflow)
    assert str(err) == "a JSON array element of 8 bytes is over the limit of 7 bytes"
    d = JSONArrayDecoder(7)
    assert run(d, b'[{"a":', b'12', b'3}]') == []
    assert str(error_of(d)) == "a JSON array element of 9 bytes is over the limit of 7 bytes"
    d = JSONArrayDecoder(7)
    assert run(d, b'[{"a":', b'12', b'34', b'}]') == []
    assert str(error_of(d)) == "a JSON array element of at least 9 bytes is over the limit of 7 bytes"
    d = JSONArrayDecoder(7)
    assert run(d, b'[{"a":', b'1', b'}]') == [{"a": 1}]
    d = JSONArrayDecoder(7)
    assert run(d, b'[{"a":', b'1}]') == [{"a": 1}]


def test_array_element_limit_counts_the_trimmed_element() -> None:
    d = JSONArrayDecoder(3)
    assert run(d, b"[123  ,  456]") == [123, 456]


def test_array_nothing_after_terminal() -> None:
    d = JSONArrayDecoder()
    assert d.feed(b"x") == []
    assert d.feed(b"[1]") == []
    assert d.finish() == []
    assert isinstance(error_of(d), DecodeError)


# -- formats ------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype, fmt",
    [
        ("text/event-stream", "sse"),
        ("TEXT/Event-Stream ; charset=utf-8", "sse"),
        ("application/x-ndjson", "ndjson"),
        ("application/ndjson", "ndjson"),
        ("application/jsonl; charset=utf-8", "ndjson"),
        (" application/json ;x=y", "json-array"),
        ("text/plain", None),  # not an event stream: the stream ends with DecodeError
        ("", "sse"),
        (None, "sse"),
    ],
)
def test_format_for(ctype: str | None, fmt: str) -> None:
    assert format_for(ctype) == fmt


def test_make_decoder_passes_the_limit() -> None:
    sse = make_decoder("sse", 5)
    assert isinstance(sse, SSEDecoder)
    sse.feed(b"data: 123456\n\n")
    assert isinstance(error_of(sse), BufferOverflow)
    nd = make_decoder("ndjson", 5)
    assert isinstance(nd, NDJSONDecoder)
    assert nd.max_line_bytes == 5
    arr = make_decoder("json-array", 5)
    assert isinstance(arr, JSONArrayDecoder)
    assert arr.max_element_bytes == 5
    assert make_decoder("ndjson").max_line_bytes == 10 * 1024 * 1024  # type: ignore[attr-defined]


def test_provider_error_types() -> None:
    cases = [
        (b'{"error":{"type":"t","status":"s","code":"c"}}', "t"),
        (b'{"error":{"status":"s","code":"c"}}', "s"),
        (b'{"error":{"code":0}}', "0"),
        (b'{"error":{"type":"","code":"c"}}', "c"),
        (b'{"error":{"message":"m"}}', None),
        (b'{"error":"text"}', None),
    ]
    for line, etype in cases:
        d = NDJSONDecoder()
        run(d, line + b"\n")
        assert error_of(d).error_type == etype, line


# -- edges found by mutation testing --------------------------------------------


def test_skipped_data_is_logged_at_debug_with_what_it_was() -> None:
    from twisted.logger import LogLevel, formatEvent

    from .helpers import LogCapture

    cases = [
        (NDJSONDecoder(), [b"nope\r\n"], "skipping an NDJSON line that is not JSON: b'nope'"),
        (JSONArrayDecoder(), [b"[nope]"], "skipping a JSON array element that is not JSON: b'nope'"),
        (SSEDecoder(), [b"data: 0\n\n", b"data: nope\n\n"], "skipping an SSE event that is not JSON: b'nope'"),
        (SSEDecoder(), [b"event: e\ndata: nope\n\n"], "skipping an SSE event that is not JSON: b'nope'"),
        (NDJSONDecoder(), [b"x" * 300 + b"\n"], "skipping an NDJSON line that is not JSON: b'" + "x" * 200 + "'"),
    ]
    for dec, chunks, text in cases:
        with LogCapture() as cap:
            run(dec, *chunks)
        mine = [e for e in cap.events if e.get("log_namespace") == "nous_twisted.decoders"]
        assert [formatEvent(e) for e in mine] == [text]
        assert mine[0]["log_level"] == LogLevel.debug


def test_sse_non_json_in_a_batch_skips_only_that_event() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: 0\n\n") == [0]
    assert d.feed(b"data: nope\n\ndata: 1\n\n") == [1]


def test_sse_done_with_crlf_after_a_fast_read() -> None:
    d = SSEDecoder()
    assert d.feed(b"data: 0\n\n") == [0]
    assert d.feed(b"data: [DONE]\r\n\n") == []
    assert d.terminal == StreamDone("stop")


def test_format_for_with_several_parameters() -> None:
    assert format_for("application/x-ndjson; a=b; c=d") == "ndjson"


def test_array_limits_start_from_zero_for_each_element() -> None:
    d = JSONArrayDecoder(7)
    assert run(d, b"[1,", b"1234567", b"]") == [1, 1234567]
    assert d.terminal == StreamDone("eof")
    d = JSONArrayDecoder(7)
    assert run(d, b'   {"a":', b"1}") == [{"a": 1}]  # leading blanks are not the element's


def test_array_not_an_array_keeps_200_bytes() -> None:
    d = JSONArrayDecoder()
    run(d, b"x" * 300)
    assert error_of(d).raw == b"x" * 200


@pytest.mark.parametrize("junk", [b"#", b"|", b"\\"])
def test_array_junk_scalars_are_skipped(junk: bytes) -> None:
    d = JSONArrayDecoder()
    assert run(d, b"[" + junk + b", 1]") == [1]
    assert d.terminal == StreamDone("eof")
    assert d.events_seen == 2


def test_ndjson_overflow_is_seen_before_the_line_ends() -> None:
    d = NDJSONDecoder(10)
    assert d.feed(b"12345") == []
    assert d.feed(b"67890") == []
    assert d.terminal is None
    assert d.feed(b"1") == []
    assert isinstance(error_of(d), BufferOverflow)


def test_ndjson_limit_starts_from_zero_after_a_joined_line() -> None:
    d = NDJSONDecoder(10)
    assert d.feed(b"123") == []
    assert d.feed(b"45\n1234567890") == [12345]
    assert d.terminal is None
    assert run(d, b"\n") == [1234567890]


def test_ndjson_last_line_in_pieces() -> None:
    assert run(NDJSONDecoder(), b"12", b"34") == [1234]
