"""Stream decoders: body bytes in, normalised events out.

One decoder per wire format (SSE, NDJSON, JSON array), each applying the LLM
providers' conventions on top: end signals, in-stream errors, JSON decoding.
Pure: no I/O, no reactor; the EventStream drives them.

Every decoder has the same surface:

- ``feed(chunk) -> list`` of decoded data events completed by ``chunk``;
- ``terminal``: None, or the terminal event (``StreamDone``/``StreamError``)
  once the stream's end signal or an in-stream error was seen; nothing is
  decoded after it;
- ``finish() -> list``: the body ended cleanly; returns any last data events,
  and ``terminal`` is set afterwards;
- ``events_seen``: how many events the wire carried (skipped ones included),
  so the caller can tell real events from keep-alive bytes.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import orjson
from twisted.logger import Logger

from .errors import BufferOverflow, DecodeError, ProviderError, StreamTruncated
from .events import StreamDone, StreamError
from .sse import DEFAULT_MAX_EVENT_BYTES, SSEParser

log = Logger(namespace="nous_twisted.decoders")

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _decode(data: bytes, where: str) -> tuple[bool, Any]:
    """(True, value) or (False, None) for data that is not JSON (logged)."""
    try:
        return True, _loads(data)
    except _JSONDecodeError:
        pass
    # orjson refuses invalid UTF-8; the SSE standard says U+FFFD instead.
    try:
        return True, _loads(data.decode("utf-8", "replace"))
    except _JSONDecodeError:
        log.debug("skipping {where} that is not JSON: {data!r}", where=where, data=data[:200])
        return False, None


def _provider_error(obj: Any) -> ProviderError:
    err = obj.get("error") if isinstance(obj, dict) else None
    etype = None
    if isinstance(err, dict):
        t = err.get("type") or err.get("status") or err.get("code")
        etype = str(t) if t is not None else None
    return ProviderError(obj, etype)


class Decoder(Protocol):
    terminal: StreamDone | StreamError | None

    @property
    def events_seen(self) -> int: ...

    def feed(self, chunk: bytes) -> list[Any]: ...

    def finish(self) -> list[Any]: ...


class SSEDecoder:
    """SSE with the OpenAI and Anthropic conventions.

    - ``data: [DONE]`` (OpenAI) and an Anthropic ``message_stop`` end the
      stream with ``StreamDone("stop")``;
    - ``event: error``, or a data object with a top-level ``"error"``, ends it
      with ``StreamError(ProviderError)``;
    - data that is not JSON is skipped (logged at debug level).
    """

    __slots__ = ("_parser", "terminal")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._parser = SSEParser(max_event_bytes)
        self.terminal: StreamDone | StreamError | None = None

    @property
    def events_seen(self) -> int:
        return self._parser.events_dispatched

    def feed(self, chunk: bytes) -> list[Any]:
        if self.terminal is not None:
            return []
        datas, rest = self._parser.feed_messages(chunk)
        if datas is not None:
            out = self._messages(datas)
            if not rest or self.terminal is not None:
                return out
        else:
            out = []
        parser = self._parser
        events = parser.feed(rest)
        for ev in events:
            if ev.event == "message":
                # the same rules as _messages, one event at a time
                out += self._messages([ev.data])
                if self.terminal is not None:
                    break
                continue
            data = ev.data
            if data == b"[DONE]":
                self.terminal = StreamDone("stop")
                break
            ok, obj = _decode(data, "an SSE event")
            if not ok:
                continue
            if ev.event == "error" or (type(obj) is dict and obj.get("error") is not None):
                self.terminal = StreamError(_provider_error(obj))
                break
            out.append(obj)
            if ev.event == "message_stop" or (type(obj) is dict and obj.get("type") == "message_stop"):
                self.terminal = StreamDone("stop")
                break
        if self.terminal is None and parser.overflow is not None:
            # The events completed before the oversized one went out first.
            self.terminal = StreamError(parser.overflow)
        return out

    def _messages(self, datas: list[bytes]) -> list[Any]:
        """Decode the data of ``message`` events: the per-event hot path."""
        out: list[Any] = []
        append = out.append
        loads = _loads
        for data in datas:
            try:
                obj = loads(data)
            except _JSONDecodeError:
                if data == b"[DONE]":
                    self.terminal = StreamDone("stop")
                    break
                ok, obj = _decode(data, "an SSE event")
                if not ok:
                    continue
            if type(obj) is dict:
                if obj.get("error") is not None:
                    self.terminal = StreamError(_provider_error(obj))
                    break
                append(obj)
                if obj.get("type") == "message_stop":
                    self.terminal = StreamDone("stop")
                    break
            else:
                append(obj)
        return out

    def finish(self) -> list[Any]:
        if self.terminal is None:
            self._parser.close()  # an event not closed by a blank line is dropped
            self.terminal = StreamDone("eof")
        return []


class NDJSONDecoder:
    """Newline-delimited JSON (Ollama).

    Split on ``\\n`` only (a trailing ``\\r`` is stripped), never on Unicode
    line separators; empty lines are skipped; ``"done": true`` ends the stream
    after that object is delivered; ``{"error": ...}`` is a ProviderError.
    """

    __slots__ = ("max_line_bytes", "_pieces", "_pending", "terminal", "events_seen")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_line_bytes = max_event_bytes
        self._pieces: list[bytes] = []
        self._pending = 0
        self.terminal: StreamDone | StreamError | None = None
        self.events_seen = 0

    def feed(self, chunk: bytes) -> list[Any]:
        if self.terminal is not None or not chunk:
            return []
        if b"\n" not in chunk:
            self._hold(chunk)
            return []
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if self._pieces:
            self._pieces.append(lines[0])
            lines[0] = b"".join(self._pieces)
            self._pieces = []
            self._pending = 0
        out: list[Any] = []
        for line in lines:
            if self._line(line, out):
                return out
        if tail:
            self._hold(tail)
        return out

    def _line(self, line: bytes, out: list[Any]) -> bool:
        """Decode one line into ``out``; True once the stream has ended."""
        if len(line) > self.max_line_bytes:
            self.terminal = StreamError(self._overflow(len(line)))
            return True
        if line[-1:] == b"\r":
            line = line[:-1]
        if not line or line.isspace():
            return False
        self.events_seen += 1
        ok, obj = _decode(line, "an NDJSON line")
        if not ok:
            return False
        if type(obj) is dict:
            if obj.get("error") is not None:
                self.terminal = StreamError(_provider_error(obj))
                return True
            out.append(obj)
            if obj.get("done") is True:
                self.terminal = StreamDone("stop")
                return True
            return False
        out.append(obj)
        return False

    def _hold(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._pending += len(piece)
        if self._pending > self.max_line_bytes:
            self._pieces = []
            self.terminal = StreamError(self._overflow(self._pending))

    def _overflow(self, size: int) -> BufferOverflow:
        return BufferOverflow(
            f"an NDJSON line of at least {size} bytes is over the limit of {self.max_line_bytes} bytes"
        )

    def finish(self) -> list[Any]:
        out: list[Any] = []
        if self.terminal is None:
            # A last line without its newline still counts: it is complete JSON.
            if self._pieces:
                line = b"".join(self._pieces)
                self._pieces = []
                self._line(line, out)
            if self.terminal is None:
                self.terminal = StreamDone("eof")
        return out


# Outside strings, the characters that change the scanner's state.
_STRUCT = re.compile(rb'[\[\]{}",]')
# Inside a string, the characters that may end it.
_IN_STRING = re.compile(rb'["\\]')
_WS = b" \t\r\n"

# JSONArrayDecoder._state values (ints, compared in the scanning loop).
_BEFORE = 0
_BETWEEN = 1
_ELEMENT = 2
_AFTER = 3


class JSONArrayDecoder:
    """One JSON array delivered incrementally (Gemini without ``alt=sse``).

    Each top-level element is emitted as soon as it is complete; strings and
    escapes are tracked so brackets inside strings do not count.  There is no
    end signal: a clean end after the closing ``]`` is ``StreamDone("eof")``;
    a body that ends inside the array is truncated.

    Its ``_state`` is one of ``_BEFORE`` (nothing but whitespace yet, waiting
    for ``[``, or ``{`` for a lone object), ``_BETWEEN`` (inside the array,
    between elements), ``_ELEMENT`` (inside an element: ``_depth``,
    ``_in_string`` and ``_escape`` track it) or ``_AFTER`` (after ``]``, or
    after a lone object; later bytes are ignored).
    """

    __slots__ = (
        "max_element_bytes",
        "_pieces",
        "_size",
        "_depth",
        "_in_string",
        "_escape",
        "_state",
        "_single",
        "terminal",
        "events_seen",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_element_bytes = max_event_bytes
        self._pieces: list[bytes] = []
        self._size = 0
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._state = _BEFORE
        self._single = False
        self.terminal: StreamDone | StreamError | None = None
        self.events_seen = 0

    def feed(self, chunk: bytes) -> list[Any]:
        if self.terminal is not None or not chunk:
            return []
        out: list[Any] = []
        pos = 0
        n = len(chunk)
        start = 0  # where the current element's bytes begin in this chunk
        while pos < n:
            state = self._state
            if state == _ELEMENT:
                if self._in_string:
                    if self._escape:
                        self._escape = False
                        pos += 1
                        continue
                    m = _IN_STRING.search(chunk, pos)
                    if m is None:
                        pos = n
                        break
                    pos = m.end()
                    if chunk[m.start()] == 92:  # backslash
                        self._escape = True
                    else:
                        self._in_string = False
                        if self._depth == 0:  # a top-level string element ends
                            self._emit(chunk[start:pos], out)
                            if self.terminal is not None:
                                return out
                    continue
                m = _STRUCT.search(chunk, pos)
                if m is None:
                    pos = n
                    break
                c = chunk[m.start()]
                if c == 34:  # '"'
                    self._in_string = True
                    pos = m.end()
                elif c == 123 or c == 91:  # { [
                    self._depth += 1
                    pos = m.end()
                elif c == 125 or c == 93:  # } ]
                    if self._depth == 0:  # the array closes after a scalar
                        self._emit(chunk[start : m.start()], out)
                        self._state = _AFTER
                        pos = m.end()
                        continue
                    self._depth -= 1
                    pos = m.end()
                    if self._depth == 0:
                        self._emit(chunk[start:pos], out)
                        if self.terminal is not None:
                            return out
                else:  # ","
                    if self._depth == 0:  # a scalar element ends
                        self._emit(chunk[start : m.start()], out)
                        if self.terminal is not None:
                            return out
                    pos = m.end()
            else:
                c = chunk[pos]
                if c in _WS:
                    pos += 1
                elif state == _BEFORE:
                    if c == 91:  # "["
                        self._state = _BETWEEN
                        pos += 1
                    elif c == 123:  # "{": a lone object, as a server that ignored streaming sends
                        self._single = True
                        self._state = _ELEMENT
                        self._depth = 1
                        start = pos
                        pos += 1
                    else:
                        self.terminal = StreamError(DecodeError(
                            f"the body is not a JSON array (starts with {chunk[pos:pos + 20]!r})",
                            chunk[pos : pos + 200],
                        ))
                        return out
                elif state == _BETWEEN:
                    if c == 44:  # ","
                        pos += 1
                    elif c == 93:  # "]"
                        self._state = _AFTER
                        pos += 1
                    else:
                        self._state = _ELEMENT
                        start = pos
                        self._depth = 0
                        if c == 34:
                            self._in_string = True
                            pos += 1
                        elif c == 123 or c == 91:
                            self._depth = 1
                            pos += 1
                        # a scalar: scan on from here
                else:  # after "]": ignore trailing bytes
                    pos = n
        if self._state == _ELEMENT:
            piece = chunk[start:]
            if piece:
                self._pieces.append(piece)
                self._size += len(piece)
                if self._size > self.max_element_bytes:
                    self._pieces = []
                    self.terminal = StreamError(BufferOverflow(
                        f"a JSON array element of at least {self._size} bytes is over the limit "
                        f"of {self.max_element_bytes} bytes"
                    ))
        return out

    def _emit(self, last: bytes, out: list[Any]) -> None:
        if self._pieces:
            self._pieces.append(last)
            data = b"".join(self._pieces)
            self._pieces = []
        else:
            data = last
        self._size = 0
        self._state = _AFTER if self._single else _BETWEEN
        self._depth = 0
        data = data.strip()
        if not data:
            return
        if len(data) > self.max_element_bytes:
            self.terminal = StreamError(BufferOverflow(
                f"a JSON array element of {len(data)} bytes is over the limit of {self.max_element_bytes} bytes"
            ))
            return
        self.events_seen += 1
        ok, obj = _decode(data, "a JSON array element")
        if not ok:
            return
        if type(obj) is dict and obj.get("error") is not None:
            self.terminal = StreamError(_provider_error(obj))
            return
        out.append(obj)

    def finish(self) -> list[Any]:
        if self.terminal is None:
            if self._state == _AFTER:
                self.terminal = StreamDone("eof")
            elif self._state == _BEFORE:
                # An empty body: nothing was streamed, and nothing is missing.
                self.terminal = StreamDone("eof")
            else:
                self.terminal = StreamError(StreamTruncated(
                    "the body ended inside the JSON array (no closing ']')"
                ))
        return []


FORMATS: dict[str, type[SSEDecoder] | type[NDJSONDecoder] | type[JSONArrayDecoder]] = {
    "sse": SSEDecoder,
    "ndjson": NDJSONDecoder,
    "json-array": JSONArrayDecoder,
}

_BY_CONTENT_TYPE = {
    "text/event-stream": "sse",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/x-jsonlines": "ndjson",
    "application/json": "json-array",
}


def format_for(content_type: str | None) -> str | None:
    """The wire format for a response Content-Type, or None when it names no
    stream format.

    ``text/event-stream`` is SSE; ``application/x-ndjson``, ``ndjson``,
    ``jsonl`` and ``x-jsonlines`` are NDJSON; ``application/json`` and any
    ``application/<x>+json`` are a JSON array.  Case and parameters do not
    matter.  An absent or empty Content-Type is SSE, since servers that stream
    often omit it.  Anything else (``text/html`` from a captive portal or a
    misrouted gateway) is None: the caller ends the stream with a
    DecodeError naming the type, rather than reading the page as an empty
    stream.
    """
    if not content_type:
        return "sse"
    media = content_type.split(";", 1)[0].strip().lower()
    if not media:
        return "sse"
    fmt = _BY_CONTENT_TYPE.get(media)
    if fmt is None and media.startswith("application/") and media.endswith("+json"):
        fmt = "json-array"
    return fmt


def make_decoder(fmt: str, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> Decoder:
    return FORMATS[fmt](max_event_bytes)
