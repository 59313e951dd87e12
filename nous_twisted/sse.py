"""A Server-Sent Events parser, to the letter of the WHATWG HTML standard.

Pure: bytes in, events out; no I/O, no reactor.  It works on bytes and
decodes field values one line at a time, which equals decoding the whole
stream (line ends are ASCII, and no UTF-8 sequence contains CR or LF), with
invalid bytes becoming U+FFFD.  Each byte is looked at a bounded number of
times however the stream is split: a partial line is kept as a list of
pieces, never re-scanned.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import BufferOverflow

DEFAULT_MAX_EVENT_BYTES = 10 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    """One dispatched event. ``data`` is UTF-8 bytes (decode with
    ``"replace"``, or hand it to a JSON parser); see :meth:`text`."""

    event: str
    data: bytes
    id: str

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


_tuple_new = tuple.__new__
_ONE_LINE_EVENT = re.compile(rb"data: ([^\n]*)\n\n")


def _str(value: bytes) -> str:
    return value.decode("utf-8", "replace")


class SSEParser:
    """Incremental SSE parser.

    ``feed(chunk)`` returns the events completed by ``chunk``.  At the end of
    the body call :meth:`close`: an event not closed by a blank line is
    discarded, as the standard says.

    :param max_event_bytes: the largest line (its bytes without the line end)
        or event data (each line's value plus LF) accepted.  A larger one, or
        a partial line that outgrows it across reads, sets :attr:`overflow`
        to a :class:`BufferOverflow`: the ``feed`` that meets it still returns
        the events completed before it, and the parser takes nothing more.
    """

    __slots__ = (
        "max_event_bytes",
        "last_event_id",
        "retry",
        "_pieces",
        "_pending",
        "_skip_lf",
        "_at_start",
        "_data",
        "_data_size",
        "_event",
        "events_dispatched",
        "overflow",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self.last_event_id = ""
        self.retry: int | None = None
        # "no mutate" on the next three lines: every mutant of them is
        # equivalent.  The first feed() runs _strip_bom, which sets _pieces and
        # _pending before anything reads them, and at the very start nothing
        # is pending, so skipping one leading LF (an empty line) changes no
        # event.
        self._pieces: list[bytes] = []  # the partial line, in pieces  # pragma: no mutate
        self._pending = 0  # bytes in _pieces  # pragma: no mutate
        self._skip_lf = False  # the last chunk ended in CR: a leading LF is part of it  # pragma: no mutate
        self._at_start = True  # the BOM may still come
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = b""
        self.events_dispatched = 0
        self.overflow: BufferOverflow | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk or self.overflow is not None:
            return []
        if self._at_start:
            chunk = self._strip_bom(chunk)
            if not chunk:
                return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 10:  # b"\n"
                chunk = chunk[1:]
                if not chunk:
                    return []
        if b"\r" in chunk:
            if chunk[-1] == 13:  # b"\r": its LF may open the next chunk
                self._skip_lf = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            datas, rest = self.feed_messages(chunk)
            if datas is not None:
                last_id = self.last_event_id
                new = _tuple_new  # skips NamedTuple's Python-level __new__
                events = [new(SSEEvent, ("message", d, last_id)) for d in datas]
                if rest:
                    events += self.feed(rest)
                return events
            if self._pieces or self._data:
                # Finish the pending event the general way; after its blank
                # line nothing is pending, and the rest may take the fast path.
                end = chunk.find(b"\n\n") + 2
                if 1 < end < len(chunk):
                    return self._lines(chunk[:end]) + self.feed(chunk[end:])
        return self._lines(chunk)

    def _lines(self, chunk: bytes) -> list[SSEEvent]:
        """The general path: ``chunk`` has no CR (line ends are LF)."""
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
            if len(lines[0]) > self.max_event_bytes:
                self._overflow(len(lines[0]))
                return []
        out: list[SSEEvent] = []
        limit = self.max_event_bytes
        for line in lines:
            if not line:
                if self._data:
                    out.append(self._dispatch())
                else:
                    self._event = b""
                continue
            if len(line) > limit:
                self._overflow(len(line))
                return out  # the events before it are whole: deliver them
            if line[0] == 58:  # b":": a comment
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
                self._data_size += len(value) + 1
                if self._data_size > limit:
                    self._overflow(self._data_size)
                    return out
            elif name == b"event":
                self._event = value
            elif name == b"id":
                if b"\x00" not in value:
                    self.last_event_id = _str(value)
            elif name == b"retry":
                if value.isdigit() and value.isascii():
                    self.retry = int(value)
            # any other field is ignored
        if tail:
            self._hold(tail)
        return out

    def _fast(self, chunk: bytes) -> list[bytes] | None:
        """Whole events of one ``data: `` line each, ending in a blank line,
        nothing pending (the caller checked).  Returns their data, or None
        when the bytes are anything else; the general path then gives exactly
        what this would."""
        end = len(chunk) - 2
        if chunk.startswith(b"data: ") and chunk.find(b"\n", 6) == end:
            # One event of one line: how token streams usually arrive, one
            # event per read.  The limit is on the line, "data: " included.
            if end > self.max_event_bytes:
                return None
            self.events_dispatched += 1
            return [chunk[6:end]]
        datas: list[bytes] = _ONE_LINE_EVENT.findall(chunk)
        # The matches tile the bytes exactly (8 = "data: " + "\n\n"), or
        # something else is in there: a comment, a field, a multi-line event.
        if not datas or sum(map(len, datas)) + 8 * len(datas) != len(chunk):
            return None
        # The general path's limit is on the line, "data: " included; a
        # longer one is left to it, to overflow there.
        if max(map(len, datas)) > self.max_event_bytes - 6:
            return None
        self.events_dispatched += len(datas)
        return datas

    def feed_messages(self, chunk: bytes) -> tuple[list[bytes] | None, bytes]:
        """The fast path: ``(datas, rest)`` where ``datas`` is the data of the
        ``message`` events that ``chunk`` opens with, when they are whole
        one-line ``data:`` events and nothing is pending, and ``rest`` the
        bytes after them, still to :meth:`feed`.  ``(None, chunk)`` when the
        fast path does not apply: feed the whole chunk."""
        if (self._at_start or self._skip_lf or self._pieces or self._data or self._event or b"\r" in chunk
                or self.overflow is not None):
            return None, chunk
        cut = chunk.rfind(b"\n\n")
        # "no mutate": cut == 0 (the read opens with a blank line) declines
        # either way, as _fast(b"\n\n") finds no event.
        if cut < 0:  # pragma: no mutate
            return None, chunk
        cut += 2
        datas = self._fast(chunk if cut == len(chunk) else chunk[:cut])
        if datas is None:
            return None, chunk
        return datas, chunk[cut:]

    def close(self) -> None:
        """The body ended: drop a partial line and an undispatched event."""
        self._pieces = []
        self._pending = 0
        self._data = []
        self._data_size = 0
        self._event = b""

    def _strip_bom(self, chunk: bytes) -> bytes:
        have = b"".join(self._pieces) + chunk if self._pieces else chunk
        if len(have) < 3 and _BOM.startswith(have):
            # Could still be a BOM: wait for more.  (Only at the very start,
            # so this holds at most two bytes.)
            self._pieces = [have]
            # "no mutate": the next feed() runs this method again, which
            # resets _pending; nothing reads it in between.
            self._pending = len(have)  # pragma: no mutate
            return b""
        self._at_start = False
        self._pieces = []
        self._pending = 0
        if have.startswith(_BOM):
            return have[3:]
        return have

    def _hold(self, piece: bytes) -> None:
        self._pieces.append(piece)
        self._pending += len(piece)
        if self._pending > self.max_event_bytes:
            self._overflow(self._pending)

    def _dispatch(self) -> SSEEvent:
        data = self._data
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        event = _str(self._event) if self._event else "message"
        self._data = []
        self._data_size = 0
        self._event = b""
        self.events_dispatched += 1
        return SSEEvent(event, payload, self.last_event_id)

    def _overflow(self, size: int) -> None:
        self._pieces = []
        self._pending = 0
        self._data = []
        self._data_size = 0
        self.overflow = BufferOverflow(
            f"an SSE line or event of at least {size} bytes is over the limit of "
            f"{self.max_event_bytes} bytes"
        )
