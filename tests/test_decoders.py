"""The stream decoders and the LLM conventions: pure, no reactor."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from nous_twisted.decoders import JSONArrayDecoder, NDJSONDecoder, SSEDecoder, format_for
from nous_twisted.errors import BufferOverflow, DecodeError, ProviderError, StreamTruncated
from nous_twisted.events import StreamDone, StreamError


def run(decoder: Any, data: bytes, cuts: list[int] | None = None) -> list[Any]:
    """Every event the decoder gives, the terminal one last."""
    out: list[Any] = []
    pos = 0
    for size in cuts or []:
        out += decoder.feed(data[pos : pos + size])
        pos += size
    out += decoder.feed(data[pos:])
    if decoder.terminal is None:
        out += decoder.finish()
    out.append(decoder.terminal)
    return out


# -- SSE conventions -------------------------------------------------------------------


def test_openai_done() -> None:
    body = b'data: {"a":1}\n\ndata: {"a":2}\n\ndata: [DONE]\n\ndata: {"late":1}\n\n'
    assert run(SSEDecoder(), body) == [{"a": 1}, {"a": 2}, StreamDone("stop")]


def test_openai_error_object_is_provider_error() -> None:
    body = b'data: {"a":1}\n\ndata: {"error": {"message": "boom", "type": "server_error"}}\n\ndata: {"a":2}\n\n'
    events = run(SSEDecoder(), body)
    assert events[0] == {"a": 1}
    assert isinstance(events[1], StreamError) and isinstance(events[1].error, ProviderError)
    assert events[1].error.error_type == "server_error"
    assert len(events) == 2


def test_error_null_is_not_an_error() -> None:
    assert run(SSEDecoder(), b'data: {"a":1,"error":null}\n\n') == [{"a": 1, "error": None}, StreamDone("eof")]


def test_anthropic_sequence_with_ping_and_overloaded_error() -> None:
    def ev(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"

    body = (
        ev("message_start", {"type": "message_start", "message": {"id": "m"}})
        + ev("ping", {"type": "ping"})
        + ev("content_block_delta", {"type": "content_block_delta", "delta": {"text": "Hi"}})
        + ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    )
    events = run(SSEDecoder(), body)
    assert [e["type"] for e in events[:3]] == ["message_start", "ping", "content_block_delta"]
    err = events[3].error
    assert isinstance(err, ProviderError) and err.error_type == "overloaded_error"
    assert err.payload["error"]["message"] == "Overloaded"
    assert "overloaded_error" in str(err)


def test_anthropic_message_stop_ends() -> None:
    body = b'event: message_delta\ndata: {"type":"message_delta"}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n'
    assert run(SSEDecoder(), body) == [{"type": "message_delta"}, {"type": "message_stop"}, StreamDone("stop")]


def test_invalid_json_is_skipped_and_the_stream_goes_on() -> None:
    body = b'data: {"a":1}\n\ndata: {nope\n\ndata: {"a":2}\n\n'
    assert run(SSEDecoder(), body) == [{"a": 1}, {"a": 2}, StreamDone("eof")]


def test_invalid_utf8_in_json_string_is_replaced() -> None:
    assert run(SSEDecoder(), b'data: {"t":"a\xffb"}\n\n') == [{"t": "a\ufffdb"}, StreamDone("eof")]


def test_sse_oversized_event_is_terminal_overflow() -> None:
    events = run(SSEDecoder(max_event_bytes=100), b"data: " + b"x" * 500 + b"\n\n")
    assert isinstance(events[-1], StreamError) and isinstance(events[-1].error, BufferOverflow)


def test_sse_eof_without_end_signal() -> None:
    assert run(SSEDecoder(), b'data: {"a":1}\n\ndata: {"b":') == [{"a": 1}, StreamDone("eof")]


# -- NDJSON ----------------------------------------------------------------------------


def test_ollama_done_true() -> None:
    body = b'{"m":"a","done":false}\n\n{"m":"b","done":false}\r\n{"m":"","done":true}\n{"late":1}\n'
    assert run(NDJSONDecoder(), body) == [
        {"m": "a", "done": False}, {"m": "b", "done": False}, {"m": "", "done": True}, StreamDone("stop")
    ]


def test_ndjson_splits_on_newline_only() -> None:
    body = '{"t":"a\u2028b\u0085c"}\n'.encode()
    assert run(NDJSONDecoder(), body) == [{"t": "a\u2028b\u0085c"}, StreamDone("eof")]


def test_ndjson_error_line() -> None:
    events = run(NDJSONDecoder(), b'{"m":"a"}\n{"error":"model is overloaded"}\n')
    assert events[0] == {"m": "a"}
    assert isinstance(events[1].error, ProviderError) and "overloaded" in str(events[1].error)


def test_ndjson_invalid_line_skipped_and_last_line_without_newline() -> None:
    assert run(NDJSONDecoder(), b'{"a":1}\nnot json\n{"a":2}') == [{"a": 1}, {"a": 2}, StreamDone("eof")]


def test_ndjson_overflow() -> None:
    events = run(NDJSONDecoder(max_event_bytes=50), b'{"a":"' + b"x" * 100 + b'"}\n')
    assert isinstance(events[-1].error, BufferOverflow)


# -- JSON array --------------------------------------------------------------------------


def test_gemini_array_elements_as_they_complete() -> None:
    d = JSONArrayDecoder()
    assert d.feed(b'[{"text": "a]}\\"[{"}') == [{"text": 'a]}"[{'}]
    assert d.feed(b',\r\n{"b": [1, {"c": "}"}]}') == [{"b": [1, {"c": "}"}]}]
    assert d.feed(b"\n]") == []
    assert d.finish() == [] and d.terminal == StreamDone("eof")


def test_array_scalars_and_strings() -> None:
    assert run(JSONArrayDecoder(), b'[1, "x,]", true, null, -2.5e3]') == [1, "x,]", True, None, -2500.0, StreamDone("eof")]


def test_array_error_element() -> None:
    events = run(JSONArrayDecoder(), b'[{"a":1},{"error":{"code":503,"status":"UNAVAILABLE","message":"busy"}}]')
    assert events[0] == {"a": 1}
    assert isinstance(events[1].error, ProviderError) and events[1].error.error_type == "UNAVAILABLE"


def test_array_unclosed_is_truncated() -> None:
    events = run(JSONArrayDecoder(), b'[{"a":1},{"b":')
    assert events[0] == {"a": 1}
    assert isinstance(events[1].error, StreamTruncated)


def test_array_not_an_array() -> None:
    assert isinstance(run(JSONArrayDecoder(), b"hello")[-1].error, DecodeError)
    assert run(JSONArrayDecoder(), b'{"a": 1}') == [{"a": 1}, StreamDone("eof")]
    assert run(JSONArrayDecoder(), b"[]") == [StreamDone("eof")]


def test_array_overflow() -> None:
    events = run(JSONArrayDecoder(max_event_bytes=50), b'[{"a":"' + b"x" * 100 + b'"}]')
    assert isinstance(events[-1].error, BufferOverflow)


def test_format_for_content_type() -> None:
    assert format_for("text/event-stream; charset=utf-8") == "sse"
    assert format_for("Text/Event-Stream") == "sse"
    for ndjson in ("application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines",
                   " APPLICATION/X-NDJSON ; charset=utf-8"):
        assert format_for(ndjson) == "ndjson", ndjson
    assert format_for("application/json; charset=UTF-8") == "json-array"
    assert format_for("application/problem+json") == "json-array"
    assert format_for("application/vnd.api+JSON;v=2") == "json-array"


def test_format_for_absent_content_type_is_sse() -> None:
    for absent in (None, "", "   ", "; charset=utf-8"):
        assert format_for(absent) == "sse", absent


def test_format_for_other_content_types_is_none() -> None:
    """A captive portal's page is not an empty event stream (issue 7 item 5)."""
    for other in ("text/html", "text/html; charset=utf-8", "text/plain", "application/octet-stream",
                  "application/xml", "text/json", "application/jsonx", "application/json+xml", "+json",
                  "multipart/mixed", "garbage"):
        assert format_for(other) is None, other


# -- any split, every decoder ------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(alphabet='ab"\\]}[{,\n\r\u2028\u00e9 ', max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(alphabet="ab\"]", max_size=3), children, max_size=3),
    max_leaves=8,
)


def _sse_body(values: list[Any], end: bool) -> bytes:
    body = b"".join(b"data: " + orjson.dumps(v) + b"\n\n" for v in values)
    return body + (b"data: [DONE]\n\n" if end else b"")


def _ndjson_body(values: list[Any], end: bool) -> bytes:
    body = b"".join(orjson.dumps(v) + b"\n" for v in values)
    return body + (b'{"done":true}\n' if end else b"")


def _array_body(values: list[Any], end: bool) -> bytes:
    return b"[" + b",\n ".join(orjson.dumps(v) for v in values) + b"]"


_split_cases = dict(values=st.lists(_json, max_size=8), end=st.booleans(), cuts=st.lists(st.integers(1, 9), max_size=40))


# (separate tests rather than parametrize: pytest-twisted and a parametrized
# @given do not mix)
@settings(max_examples=150)
@given(**_split_cases)
def test_sse_decoder_any_split(values: list[Any], end: bool, cuts: list[int]) -> None:
    check_any_split(SSEDecoder, _sse_body, values, end, cuts)


@settings(max_examples=150)
@given(**_split_cases)
def test_ndjson_decoder_any_split(values: list[Any], end: bool, cuts: list[int]) -> None:
    check_any_split(NDJSONDecoder, _ndjson_body, values, end, cuts)


@settings(max_examples=150)
@given(**_split_cases)
def test_json_array_decoder_any_split(values: list[Any], end: bool, cuts: list[int]) -> None:
    check_any_split(JSONArrayDecoder, _array_body, values, end, cuts)


def check_any_split(decoder: Any, build: Any, values: list[Any], end: bool, cuts: list[int]) -> None:
    values = [v for v in values if not (isinstance(v, dict) and v.get("error") is not None)]
    body = build(values, end)
    whole = run(decoder(), body)
    assert run(decoder(), body, cuts) == whole
    assert run(decoder(), body, [1] * len(body)) == whole
    data = [e for e in whole if not isinstance(e, (StreamDone, StreamError))]
    expected: list[Any] = []
    for v in values:
        expected.append(v)
        if decoder is NDJSONDecoder and isinstance(v, dict) and v.get("done") is True:
            break  # "done": true ends NDJSON early
    else:
        if decoder is NDJSONDecoder and end:
            expected.append({"done": True})  # the end signal is itself delivered
    assert data == expected
    if decoder is not JSONArrayDecoder and end and len(expected) == len(values):
        assert whole[-1] == StreamDone("stop")


# -- events before an oversized one, and the exact limit (issue 7 item 11) ----------------


def _is_overflow(event: Any) -> bool:
    return isinstance(event, StreamError) and isinstance(event.error, BufferOverflow)


def test_sse_whole_events_and_the_start_of_the_next() -> None:
    d = SSEDecoder()
    assert d.feed(b'data: {"z":0}\n\n') == [{"z": 0}]
    assert d.feed(b'data: {"a":1}\n\ndata: {"b"') == [{"a": 1}]
    assert d.feed(b":2}\n\n") == [{"b": 2}]
    assert d.terminal is None


def test_sse_events_before_an_oversized_one_in_the_same_read() -> None:
    big = b"x" * 300
    for oversized in (b"data: " + big + b"\n\n",  # fast-path shape
                      b"event: e\ndata: " + big + b"\n\n",  # general path
                      b"data: " + big[:80] + b"\ndata: " + big[:80] + b"\n\n",  # the data buffer
                      b"data: " + big):  # a partial line outgrowing the limit
        for first in (b"", b'data: {"z":0}\n\n'):
            d = SSEDecoder(max_event_bytes=100)
            events = d.feed(first) if first else []
            events += d.feed(b'data: {"a":1}\n\nevent: m\ndata: {"b":2}\n\ndata: {"c":3}\n\n' + oversized)
            expected = ([{"z": 0}] if first else []) + [{"a": 1}, {"b": 2}, {"c": 3}]
            assert events == expected, oversized
            assert _is_overflow(d.terminal)
            assert d.feed(b'data: {"late":1}\n\n') == []


def test_sse_partial_line_outgrowing_the_limit_across_reads() -> None:
    d = SSEDecoder(max_event_bytes=100)
    assert d.feed(b'data: {"a":1}\n\ndata: "' + b"x" * 50) == [{"a": 1}]
    assert d.terminal is None
    assert d.feed(b"y" * 30) == []
    assert d.terminal is None  # 87 bytes pending
    assert d.feed(b"z" * 30) == []
    assert _is_overflow(d.terminal)


def test_sse_an_end_signal_before_the_oversized_event_wins() -> None:
    d = SSEDecoder(max_event_bytes=100)
    assert d.feed(b'data: {"a":1}\n\ndata: [DONE]\n\ndata: ' + b"x" * 300 + b"\n\n") == [{"a": 1}]
    assert d.terminal == StreamDone("stop")


def test_sse_exact_limit() -> None:
    limit = 64
    for prefix in (b"", b"event: m\n"):
        line = b'data: "' + b"x" * (limit - 8) + b'"'  # exactly the limit
        assert len(line) == limit
        for extra, ok in ((b"", True), (b"x", False)):
            body = prefix + line.replace(b'x"', b"x" + extra + b'"') + b"\n\n"
            for cuts in (None, [9], [1] * len(body)):
                events = run(SSEDecoder(max_event_bytes=limit), body, cuts)
                if ok:
                    assert events == ["x" * (limit - 8), StreamDone("eof")]
                else:
                    assert len(events) == 1 and _is_overflow(events[0])


def test_ndjson_lines_before_an_oversized_one_in_the_same_read() -> None:
    for oversized in (b'"' + b"x" * 300 + b'"\n', b'"' + b"x" * 300):
        d = NDJSONDecoder(max_event_bytes=100)
        events = d.feed(b'{"a":1}\n{"b":2}\n' + oversized)
        assert events == [{"a": 1}, {"b": 2}]
        assert _is_overflow(d.terminal)
    d = NDJSONDecoder()
    assert d.feed(b'{"z":0}\n') == [{"z": 0}]
    assert d.feed(b'{"a":1}\n{"b"') == [{"a": 1}]
    assert d.feed(b":2}\n") == [{"b": 2}]


def test_ndjson_exact_limit() -> None:
    limit = 64
    line = b'"' + b"x" * (limit - 2) + b'"'
    for body, ok in ((line + b"\n", True), (line + b"\r\n", False), (line + b" \n", False), (line, True)):
        for cuts in (None, [5], [1] * len(body)):
            events = run(NDJSONDecoder(max_event_bytes=limit), body, cuts)
            if ok:
                assert events == ["x" * (limit - 2), StreamDone("eof")], (body, cuts)
            else:
                assert len(events) == 1 and _is_overflow(events[0]), (body, cuts)


def test_json_array_elements_before_an_oversized_one_in_the_same_read() -> None:
    for oversized in (b'{"s":"' + b"x" * 300 + b'"}]', b'{"s":"' + b"x" * 300, b"1" * 300 + b","):
        d = JSONArrayDecoder(max_event_bytes=100)
        assert d.feed(b'[{"a":1},\n{"b":2},' + oversized) == [{"a": 1}, {"b": 2}]
        assert _is_overflow(d.terminal)
    d = JSONArrayDecoder()
    assert d.feed(b'[{"z":0}') == [{"z": 0}]
    assert d.feed(b',{"a":1},{"b"') == [{"a": 1}]
    assert d.feed(b":2}]") == [{"b": 2}]


def test_json_array_exact_limit() -> None:
    limit = 64
    element = b'{"s":"' + b"x" * (limit - 8) + b'"}'
    assert len(element) == limit
    for body, ok in ((b"[" + element + b"]", True), (b"[" + element.replace(b'x"', b'xx"') + b"]", False),
                     (b"[ " + element + b" ,\n" + element + b"\n]", True)):
        for cuts in (None, [3], [1] * len(body)):
            events = run(JSONArrayDecoder(max_event_bytes=limit), body, cuts)
            if ok:
                assert events[-1] == StreamDone("eof") and all(e == {"s": "x" * (limit - 8)} for e in events[:-1])
            else:
                assert len(events) == 1 and _is_overflow(events[0]), (body, cuts)


# -- realistic reads: several whole events plus part of the next, and one end or error signal --------------

_ENDINGS = ("none", "end", "error")
_ERROR = {"error": {"type": "overloaded_error", "message": "busy"}}


def _sse_ending(values: list[Any], ending: str) -> bytes:
    body = _sse_body(values, ending == "end")
    if ending == "error":
        body += b"event: error\ndata: " + orjson.dumps(_ERROR) + b"\n\n" + b"data: {\"after\": 1}\n\n"
    return body


def _ndjson_ending(values: list[Any], ending: str) -> bytes:
    body = _ndjson_body(values, ending == "end")
    if ending == "error":
        body += orjson.dumps(_ERROR) + b"\n" + b'{"after": 1}\n'
    return body


def _array_ending(values: list[Any], ending: str) -> bytes:
    items = [orjson.dumps(v) for v in values] + ([orjson.dumps(_ERROR), b'{"after": 1}'] if ending == "error" else [])
    return b"[" + b",\n ".join(items) + b"]"


# Reads from one byte up to several whole events plus a partial one (events
# here are 10 to 80 bytes), as sockets deliver them under load.
_realistic_cases = dict(
    values=st.lists(_json, max_size=8),
    ending=st.sampled_from(_ENDINGS),
    cuts=st.lists(st.one_of(st.integers(1, 12), st.integers(13, 400)), max_size=30),
)


def check_realistic(decoder: Any, build: Any, values: list[Any], ending: str, cuts: list[int]) -> None:
    values = [v for v in values if not (isinstance(v, dict) and v.get("error") is not None)]
    values = [v for v in values if not (isinstance(v, dict) and (v.get("done") is True or v.get("type") == "message_stop"))]
    body = build(values, ending)
    whole = run(decoder(), body)

    def norm(events: list[Any]) -> list[Any]:  # errors compare by identity: compare their type and text
        return [(type(e.error), str(e.error)) if isinstance(e, StreamError) else e for e in events]

    assert norm(run(decoder(), body, cuts)) == norm(whole)
    terminal = whole[-1]
    if ending == "error":
        assert isinstance(terminal, StreamError) and isinstance(terminal.error, ProviderError), whole
        assert {"after": 1} not in whole  # nothing after the error signal
    elif ending == "end" and decoder is not JSONArrayDecoder:
        assert terminal == StreamDone("stop"), whole
    else:
        assert terminal == StreamDone("eof"), whole
    assert sum(1 for e in whole if isinstance(e, (StreamDone, StreamError))) == 1


@settings(max_examples=150)
@given(**_realistic_cases)
def test_sse_decoder_realistic_reads(values: list[Any], ending: str, cuts: list[int]) -> None:
    check_realistic(SSEDecoder, _sse_ending, values, ending, cuts)


@settings(max_examples=150)
@given(**_realistic_cases)
def test_ndjson_decoder_realistic_reads(values: list[Any], ending: str, cuts: list[int]) -> None:
    check_realistic(NDJSONDecoder, _ndjson_ending, values, ending, cuts)


@settings(max_examples=150)
@given(**_realistic_cases)
def test_json_array_decoder_realistic_reads(values: list[Any], ending: str, cuts: list[int]) -> None:
    check_realistic(JSONArrayDecoder, _array_ending, values, ending, cuts)


def test_ndjson_keepalive_blank_lines_are_not_events() -> None:
    d = NDJSONDecoder()
    assert d.feed(b"\n\r\n  \n") == [] and d.events_seen == 0
    assert d.feed(b'{"a": 1}\n\n') == [{"a": 1}] and d.events_seen == 1
