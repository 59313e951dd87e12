"""Lean decoders for HTTP/1.1 ``Transfer-Encoding: chunked`` response bodies.

Twisted decodes chunked bodies with ``twisted.web.http._ChunkedTransferDecoder``:
a state machine that dispatches through ``getattr`` and edits a ``bytearray``
for every chunk, about 2 µs per chunk, which on an LLM stream (one chunk per
event) is the largest single cost of Twisted's HTTP client.  This module has
two drop-in replacements with its exact interface and semantics:

- :class:`ChunkedDecoder`, pure Python: ``find``/slice/``int`` over the read, no
  per-byte loop, linear in the bytes however they are split;
- :class:`HttptoolsChunkedDecoder`, when ``httptools`` is importable (the
  ``speed`` extra): the chunk framing is parsed in C by llhttp, and every read
  whose framing llhttp cannot be trusted to judge exactly as Twisted does (see
  the class) is decoded by the pure decoder instead.

Both differ from Twisted's in one deliberate way: the payload of every chunk
found in ONE ``dataReceived`` call is handed to ``dataCallback`` in ONE call
(one socket read, at most one delivery).  They never join across reads, so a
consumer that pauses the transport (strict pull) still receives at most one
read's worth.  Everything else is identical: the bytes delivered, the
``finishCallback(rest)``, the errors (``_MalformedChunkedDataError`` with the
same messages, after delivering what came before the fault), the limits on the
chunk-size line (1024 bytes) and the trailer section (64 KiB), the quirks of
those limits when data is split, and the state names in ``noMoreData``'s
``_DataLoss``.

:func:`install_decoder` puts the chosen class on one ``HTTPClientParser``
instance: Twisted's parser reads its private ``_transferDecoders`` map only in
``allHeadersReceived``, after the request is written.  Where a Twisted release
changed that attribute, nothing is installed (logged once, at debug) and
Twisted's decoder keeps working; ``tests/test_chunked.py`` fails loudly then.

Set ``NOUS_TWISTED_NO_SPEEDUPS`` to a non-empty value to ignore ``httptools``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from typing import Any

from twisted.logger import Logger
from twisted.web.http import _ChunkedTransferDecoder, _DataLoss, _MalformedChunkedDataError

__all__ = [
    "ChunkedDecoder",
    "HttptoolsChunkedDecoder",
    "MAX_CHUNK_SIZE_LINE",
    "MAX_TRAILER_BYTES",
    "decoder_class",
    "install_decoder",
    "created",
]

log = Logger(namespace="nous_twisted.chunked")

#: Twisted's ``twisted.web.http.maxChunkSizeLineLength``: a chunk-size line
#: (extensions included, CRLF excluded) of this many bytes or more is an error.
MAX_CHUNK_SIZE_LINE = 1024
#: Twisted's default ``_maxTrailerHeadersSize``: bytes of trailer lines, CRLFs included.
MAX_TRAILER_BYTES = 2**16

_HEX_DIGITS = b"0123456789abcdefABCDEF"
# The bytes Twisted allows in chunk extensions (twisted.web.http._chunkExtChars):
# HTAB, SP, visible ASCII except backslash and DEL, and obs-text.
_EXT_CHARS = bytes([9]) + bytes(b for b in range(32, 127) if b != 92) + bytes(range(128, 256))

# Chunk-size lines already validated (no extension), to their value: the common
# sizes of a stream repeat, and one dict lookup replaces validation plus int().
_SIZES: dict[bytes, int] = {}
_SIZES_MAX = 4096

# Internal states.  Twisted's names, for noMoreData's message and `state`.
_LENGTH, _BODY, _CRLF, _TRAILER, _FINISHED = 0, 1, 2, 3, 4
_STATE_NAMES = ("CHUNK_LENGTH", "BODY", "CRLF", "TRAILER", "FINISHED")

#: How many decoders of each kind were created (``"pure"``, ``"httptools"``):
#: lets a test prove which decoder a real connection used.
created: dict[str, int] = {"pure": 0, "httptools": 0}


def _size_of(line: bytes) -> int:
    """The chunk size on a chunk-size line (CRLF excluded), validated exactly
    as Twisted does; caches extension-free lines."""
    semi = line.find(b";")
    raw = line if semi < 0 else line[:semi]
    if not raw or raw.translate(None, _HEX_DIGITS):
        raise _MalformedChunkedDataError("Chunk-size must be an integer.")
    size = int(raw, 16)
    if semi >= 0:
        ext = line[semi + 1 :]
        if ext and ext.translate(None, _EXT_CHARS):
            # Twisted formats the bytearray it holds.
            raise _MalformedChunkedDataError(f"Invalid characters in chunk extensions: {bytearray(ext)!r}.")
    elif len(_SIZES) < _SIZES_MAX:
        _SIZES[line] = size
    return size


class ChunkedDecoder:
    """Decodes a chunked body: ``dataCallback(payload)`` once per
    ``dataReceived`` that completed or continued any chunk, then
    ``finishCallback(rest)`` with the bytes after the terminating chunk.

    The interface of ``twisted.web.http._ChunkedTransferDecoder``;
    ``dataReceived`` raises ``_MalformedChunkedDataError`` on bad framing (after
    delivering the payload that preceded it) and ``RuntimeError`` after the end,
    ``noMoreData`` raises ``_DataLoss`` before the end.
    """

    __slots__ = (
        "dataCallback",
        "finishCallback",
        "_state",
        "_remaining",
        "_buffer",
        "_trailerHeaders",
        "_receivedTrailerHeadersSize",
        "_maxTrailerHeadersSize",
    )

    kind = "pure"

    def __init__(self, dataCallback: Callable[[bytes], object], finishCallback: Callable[[bytes], object]) -> None:
        self.dataCallback = dataCallback
        self.finishCallback = finishCallback
        self._state = _LENGTH
        self._remaining = 0  # payload bytes still to come in the current chunk (state BODY)
        # Unparsed bytes carried to the next read: a partial chunk-size line,
        # a partial CRLF after a chunk, or a partial trailer line.
        self._buffer = b""
        self._trailerHeaders: list[bytes] | tuple[()] = ()  # a list once there are any
        self._receivedTrailerHeadersSize = 0
        self._maxTrailerHeadersSize = MAX_TRAILER_BYTES
        created[self.kind] += 1

    @property
    def state(self) -> str:
        """Twisted's name for the current state."""
        return _STATE_NAMES[self._state]

    def dataReceived(self, data: bytes) -> None:
        """Decode one read's worth of the body."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        n = len(data)
        if not n:
            return
        state = self._state
        if state == _FINISHED:
            raise RuntimeError("_ChunkedTransferDecoder.dataReceived called after last chunk was processed")
        parts: list[bytes] = []
        append = parts.append
        find = data.find
        sizes = _SIZES.get
        pos = 0
        rest: bytes | None = None
        try:
            while pos < n:
                if state == _LENGTH:
                    # Twisted's limit: a CRLF at offset >= 1024 of the line, or
                    # more than 1024 bytes without one, is an error.
                    eol = find(b"\r\n", pos, pos + MAX_CHUNK_SIZE_LINE + 1)
                    if eol < 0:
                        if n - pos > MAX_CHUNK_SIZE_LINE:
                            raise _MalformedChunkedDataError(
                                f"Chunk size line exceeds maximum of {MAX_CHUNK_SIZE_LINE} bytes."
                            )
                        self._buffer = data[pos:]
                        break
                    line = data[pos:eol]
                    size = sizes(line)
                    if size is None:
                        size = _size_of(line)
                    pos = eol + 2
                    if not size:
                        state = _TRAILER
                        continue
                    end = pos + size
                    # The common case: the whole chunk and its CRLF are here.
                    if end + 2 <= n and data[end] == 13 and data[end + 1] == 10:
                        append(data[pos:end])
                        pos = end + 2
                        continue
                    state = _BODY
                    self._remaining = size
                    continue
                if state == _BODY:
                    end = pos + self._remaining
                    if end <= n:
                        parts.append(data[pos:end])
                        pos = end
                        state = _CRLF
                        continue
                    parts.append(data[pos:])
                    self._remaining = end - n
                    break
                if state == _CRLF:
                    if n - pos < 2:
                        self._buffer = data[pos:]
                        break
                    if data[pos] != 13 or data[pos + 1] != 10:
                        raise _MalformedChunkedDataError("Chunk did not end with CRLF")
                    pos += 2
                    state = _LENGTH
                    continue
                # _TRAILER: rare, so Twisted's steps, literally (its size
                # check depends on how the data was split; so does this one).
                eol = data.find(b"\r\n", pos)
                if eol < 0:
                    expected = self._receivedTrailerHeadersSize + n - pos + (1 if data[n - 1] == 13 else 2)
                    if expected > self._maxTrailerHeadersSize:
                        raise _MalformedChunkedDataError("Trailer headers data is too long.")
                    self._buffer = data[pos:]
                    break
                if eol > pos:
                    if not self._trailerHeaders:
                        self._trailerHeaders = []
                    self._trailerHeaders.append(data[pos:eol])
                    self._receivedTrailerHeadersSize += eol + 2 - pos
                    pos = eol + 2
                    if self._receivedTrailerHeadersSize > self._maxTrailerHeadersSize:
                        raise _MalformedChunkedDataError("Trailer headers data is too long.")
                    continue
                rest = data[eol + 2 :]
                break
        except _MalformedChunkedDataError:
            # Twisted has delivered the chunks before the fault by now.
            self._state = state
            self._deliver(parts)
            raise
        self._state = state
        if parts:
            self.dataCallback(parts[0] if len(parts) == 1 else b"".join(parts))
        if rest is not None:
            self._state = _FINISHED
            self.finishCallback(rest)

    def _deliver(self, parts: list[bytes]) -> None:
        if len(parts) == 1:
            self.dataCallback(parts[0])
        elif parts:
            self.dataCallback(b"".join(parts))

    def noMoreData(self) -> None:
        """Raise ``_DataLoss`` unless the terminating chunk was received."""
        if self._state != _FINISHED:
            raise _DataLoss(
                f"Chunked decoder in {_STATE_NAMES[self._state]!r} state, "
                "still expecting more data to get to 'FINISHED' state."
            )


_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
# A chunk's CRLF, then the last chunk without trailers.
_LAST_CHUNK = b"\r\n0\r\n\r\n"
# A chunk-size line of 1024+ bytes that llhttp accepts has no extension (reads
# with ';' never reach llhttp) and at most 16 significant hex digits (more
# overflow in llhttp), so it holds a run of 1008+ zeros, which covers a whole
# block of 504 starting at a multiple of 504.  (bytes.find(b"0" * 1000) is no
# help: CPython's skip tables confuse "0" with "p", and it crawls on text.)
_ZEROS = b"0" * 504


def _httptools_parser_class() -> Any:
    if os.environ.get("NOUS_TWISTED_NO_SPEEDUPS"):
        return None
    try:
        from httptools import HttpResponseParser
    except ImportError:
        return None
    return HttpResponseParser


_HttpResponseParser = _httptools_parser_class()


def _no_extension(data: bytes) -> bool:
    """Whether no ``;`` in ``data`` can start a chunk extension (llhttp and
    Twisted accept different ones): none follows a CRLF and hex digits.
    False when unsure (the read then goes to the pure decoder)."""
    i = data.find(b";")
    for _ in range(64):  # past that many, not worth it
        if i < 0:
            return True
        before = data[max(i - 24, 0) : i]
        head = before.rstrip(_HEX_DIGITS)
        # (all hex: maybe a longer size line, or one begun in the previous read)
        if len(head) < len(before) and (not head or head.endswith(b"\r\n")):
            return False
        if i == 0:  # maybe after a size line's digits in the previous read
            return False
        i = data.find(b";", i + 1)
    return False


def _long_size_line(data: bytes, payload: bytes, parts: list[bytes]) -> bool:
    """Whether llhttp may have passed a size line of 1024+ bytes in ``data``
    (Twisted's limit; llhttp has none); O(1) for the usual reads."""
    # parts holds, per chunk begun in this read, a begin mark, at most one
    # payload piece and an end mark (llhttp reports a payload in one piece per
    # read), plus maybe a piece and an end mark of a chunk begun earlier: so
    # at least len(parts) // 3 size lines were completed here.  Next to a long
    # line, the others take 1+ byte and a CRLF each, and all but the last
    # chunk's payload a CRLF after it: 5 bytes a chunk (less at the edges).
    lines = len(parts) // 3
    if len(data) - len(payload) - 5 * max(lines - 2, 0) < MAX_CHUNK_SIZE_LINE:
        return False
    startswith = data.startswith
    return any(startswith(_ZEROS, i) for i in range(0, len(data) - len(_ZEROS) + 1, len(_ZEROS)))


class _Mark(bytes):
    """An empty bytes object told apart by identity: llhttp's chunk events go
    into the payload list as marks, and ``b"".join`` skips them for free."""

    __slots__ = ()


_BEGUN = _Mark()  # a chunk-size line was parsed
_ENDED = _Mark()  # a chunk's payload and its CRLF were parsed


class _Sink:
    """The callbacks llhttp calls: all C-level (no Python frame per chunk)."""

    __slots__ = ("parts", "on_body", "on_chunk_header", "on_chunk_complete", "open", "on_message_complete")

    def __init__(self) -> None:
        parts: list[bytes] = []
        self.parts = parts
        self.on_body = parts.append
        self.on_chunk_header = partial(parts.append, _BEGUN)
        self.on_chunk_complete = partial(parts.append, _ENDED)
        self.open = [True]  # emptied at the end of the body
        self.on_message_complete = self.open.clear


#: Reads shorter than this do not start llhttp: a read holding one chunk costs
#: no less there, and a stream of such reads (a slow stream) then never pays
#: llhttp's memory (about 1 KiB per connection).
LLHTTP_MIN_READ = 512


class HttptoolsChunkedDecoder(ChunkedDecoder):
    """:class:`ChunkedDecoder` whose reads are framed by llhttp, in C, while
    llhttp can be trusted to judge them exactly as Twisted does.

    The decoder keeps the pure decoder's state (``_state``, ``_remaining``,
    ``_buffer``) in step with llhttp's after every read, worked out from the
    read's tail and the last chunk events (O(1) per read).  A read goes to
    llhttp only when none of its ``;`` can start a chunk extension (llhttp
    and Twisted accept different ones) and it does not complete an over-long
    size line begun in an earlier read (llhttp has no limit on the size line).
    Its result is used only when llhttp raised nothing, passed no size line of
    1024+ bytes, did not reach the end of the body, and the state after it is
    one this class can name exactly; anything else, including the last read
    (trailers, the bytes after the body, every error with Twisted's message),
    is decoded by the pure decoder from the state at the start of the read:
    nothing of that read was delivered yet.  llhttp is then dropped, and a
    fresh parser starts at the next chunk boundary.
    """

    __slots__ = ("_parser", "_sink")

    kind = "httptools"
    #: Reads shorter than this do not start llhttp (they continue it).
    min_read = LLHTTP_MIN_READ

    def __init__(self, dataCallback: Callable[[bytes], object], finishCallback: Callable[[bytes], object]) -> None:
        super().__init__(dataCallback, finishCallback)
        self._parser: Any = None
        self._sink: _Sink | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._parser is None and (self._state != _LENGTH or self._buffer or len(data) < self.min_read):
            # llhttp can only start at a chunk boundary.
            ChunkedDecoder.dataReceived(self, data)
            return
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return
        if data[-7:] == _LAST_CHUNK:
            # The usual last read: chunks, then the last chunk, no trailer.
            # llhttp takes all but the last chunk; after a chunk boundary the
            # rest is known without parsing: the end, with nothing after it.
            saved = self._state, self._remaining, self._buffer
            payload = self._llhttp(data[:-5])
            if payload is not None and self._state == _LENGTH and not self._buffer:
                self._parser = self._sink = None
                self._state = _FINISHED
                if payload:
                    self.dataCallback(payload)
                self.finishCallback(b"")
                return
            self._state, self._remaining, self._buffer = saved
        else:
            payload = self._llhttp(data)
            if payload is not None:
                if payload:
                    self.dataCallback(payload)
                return
        self._parser = self._sink = None
        ChunkedDecoder.dataReceived(self, data)

    def _llhttp(self, data: bytes) -> bytes | None:
        """The payload of ``data`` parsed by llhttp, with the pure decoder's
        state moved past it; None (state untouched) where llhttp cannot be
        trusted with it."""
        if not (
            (data.find(b";") < 0 or _no_extension(data))
            and (not self._buffer or self._state != _LENGTH or self._line_ends_in_limit(data))
        ):
            return None
        parser = self._parser
        if parser is None:
            self._sink = _Sink()
            parser = self._parser = _HttpResponseParser(self._sink)
            parser.feed_data(_HEAD)
        sink = self._sink
        assert sink is not None
        parts = sink.parts
        try:
            parser.feed_data(data)
        except Exception:
            parts.clear()
            return None  # llhttp rejected it: the pure decoder says how Twisted does
        payload = b"".join(parts)
        ok = (
            sink.open
            and (len(data) - len(payload) < MAX_CHUNK_SIZE_LINE or not _long_size_line(data, payload, parts))
            and (
                # The common end: a chunk boundary.
                (parts and parts[-1] is _ENDED and data[-2:] == b"\r\n" and self._at_boundary())
                or self._settle(data, parts)
            )
        )
        parts.clear()
        return payload if ok else None

    def _at_boundary(self) -> bool:
        self._state = _LENGTH
        self._buffer = b""
        return True

    def _line_ends_in_limit(self, data: bytes) -> bool:
        """Whether the partial size line in ``_buffer`` stays within Twisted's
        limit once ``data`` is added (llhttp has none)."""
        line = self._buffer + data[: MAX_CHUNK_SIZE_LINE + 1]
        eol = line.find(b"\r\n")
        return eol < MAX_CHUNK_SIZE_LINE if eol >= 0 else len(self._buffer) + len(data) <= MAX_CHUNK_SIZE_LINE

    def _settle(self, data: bytes, parts: list[bytes]) -> bool:
        """Set the pure decoder's state to where llhttp stopped in ``data``;
        False when that state cannot be named exactly (or Twisted would have
        failed where llhttp did not)."""
        n = len(data)
        if not parts:
            # No event: a size line grew, or the CR after a chunk's payload came.
            if self._state == _LENGTH:
                line = self._buffer + data
                if len(line) > MAX_CHUNK_SIZE_LINE:
                    return False
                self._buffer = line
                return True
            if self._state == _CRLF and not self._buffer and data == b"\r":
                self._buffer = data
                return True
            return False
        last = parts[-1]
        if last is _ENDED:
            # At a chunk boundary, maybe with a partial size line after it.
            i = data.rfind(b"\r\n")
            if i >= 0:
                tail = data[i + 2 :]
            elif len(parts) == 1 and self._state == _CRLF and self._buffer == b"\r" and data[0] == 10:
                tail = data[1:]  # the CRLF straddled the reads
            else:
                return False
            if len(tail) > MAX_CHUNK_SIZE_LINE:
                return False
            self._state = _LENGTH
            self._buffer = tail
            return True
        if last is _BEGUN:
            # A size line ended the read; its payload has not begun.
            return self._open_chunk(data, n - 2, 0, 0, len(parts) == 1)
        got = len(last)
        if len(parts) == 1:
            # More of the chunk that was open when the read began.
            if self._state != _BODY:
                return False
            remaining = self._remaining - got
            if remaining > 0:
                self._remaining = remaining
                return True
            tail = data[got:]
            if remaining or (tail and tail != b"\r"):
                return False
            self._state = _CRLF
            self._buffer = tail
            return True
        if parts[-2] is not _BEGUN:
            return False
        # A chunk begun in this read, its payload `last` and maybe the CR after it.
        first = len(parts) == 2
        if data[n - got - 2 : n - got] == b"\r\n":
            return self._open_chunk(data, n - got - 2, got, 0, first)
        if data[n - 1] == 13 and data[n - got - 3 : n - got - 1] == b"\r\n":
            return self._open_chunk(data, n - got - 3, got, 1, first)
        return False

    def _open_chunk(self, data: bytes, line_end: int, got: int, cr: int, first: bool) -> bool:
        """State after a read that ends inside a chunk whose size line ends at
        ``line_end`` in ``data``, with ``got`` payload bytes and ``cr`` (0 or 1)
        bytes of its CRLF after it."""
        if data[line_end : line_end + 2] != b"\r\n":
            return False
        start = data.rfind(b"\r\n", 0, line_end)
        if start >= 0 and not first:
            line = data[start + 2 : line_end]
        elif start < 0 and first and self._state == _LENGTH:
            line = self._buffer + data[:line_end]  # the size line began in an earlier read
        else:
            return False
        if not line or len(line) >= MAX_CHUNK_SIZE_LINE or line.translate(None, _HEX_DIGITS):
            return False
        remaining = int(line, 16) - got
        if remaining < 0 or remaining == -got:  # (a size of 0: the trailers are the pure decoder's)
            return False
        self._buffer = b"\r" if cr else b""
        if cr and remaining:
            return False
        if remaining:
            self._state = _BODY
            self._remaining = remaining
        else:
            self._state = _CRLF
        return True


def decoder_class() -> type[ChunkedDecoder]:
    """The decoder :func:`install_decoder` installs: httptools' when importable
    (and ``NOUS_TWISTED_NO_SPEEDUPS`` is unset or empty), else the pure one."""
    return HttptoolsChunkedDecoder if _HttpResponseParser is not None else ChunkedDecoder


_DECODERS: dict[bytes, type[ChunkedDecoder]] = {b"chunked": decoder_class()}
_hook_missing_logged = False


def hook_present(parser: object) -> bool:
    """Whether ``parser`` still has the attribute :func:`install_decoder` relies
    on: a ``_transferDecoders`` dict mapping ``b"chunked"`` to Twisted's decoder."""
    decoders = getattr(type(parser), "_transferDecoders", None)
    return isinstance(decoders, dict) and decoders.get(b"chunked") is _ChunkedTransferDecoder


def install_decoder(parser: object) -> bool:
    """Make ``parser`` (a ``twisted.web._newclient.HTTPClientParser``, before
    its response headers arrive) decode a chunked body with :func:`decoder_class`.

    Returns whether it did; where Twisted changed the hook it does nothing
    (Twisted's decoder keeps working) and logs that once, at debug level.
    """
    global _hook_missing_logged
    if hook_present(parser):
        parser._transferDecoders = _DECODERS  # type: ignore[attr-defined]
        return True
    if not _hook_missing_logged:
        _hook_missing_logged = True
        log.debug(
            "this Twisted's HTTPClientParser has no _transferDecoders hook: chunked bodies are decoded by Twisted's decoder"
        )
    return False
