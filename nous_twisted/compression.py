"""HTTP Content-Encoding (gzip, deflate), decoded incrementally and bounded.

Pure: no reactor, no I/O.  The caller pushes compressed bytes as they arrive
and pulls decoded bytes in steps of at most ``max_length``, as urllib3 does
with ``decompress(data, max_length)`` and ``unconsumed_tail``; so one
compressed socket read is never expanded all at once, strict pull
backpressure holds on compressed bodies, and a gzip bomb costs what the
consumer asks for, not what the sender packed::

    d = decompressor_for(headers.get("content-encoding"))
    d.push(chunk)
    while d.has_output:
        deliver(d.pull(STEP))   # pause here when the consumer is full
    ...
    d.close()                   # at the end of the body, after pulling dry

Choices (each one what urllib3 does, unless said otherwise):

- ``deflate`` means zlib-wrapped (RFC 1950) data, but servers (old IIS and
  Apache modules) also send raw RFC 1951 deflate.  The first two bytes decide:
  a valid zlib header (method 8, window <= 32 KiB, FCHECK right, no preset
  dictionary) means zlib, anything else raw deflate.  This is the test zlib
  itself applies first; urllib3 and httpx reach the same choice by trying zlib
  and retrying raw on the header error.
- gzip bodies of several members decode to the concatenation of the members.
  After a complete member, bytes that do not start with the gzip magic
  (``1f 8b``), such as zero padding, are trailing garbage and are ignored
  with everything after them, as urllib3, curl and browsers ignore them.  Bytes
  that do start with the magic are a member and must be whole and valid (here
  we are stricter than urllib3, which drops a corrupt later member silently).
- Bytes after the end of a deflate stream are ignored (zlib's
  ``unused_data``, which urllib3 never looks at).
- A body with no bytes at all decodes to nothing and is not truncated.
- Corrupt data is :class:`DecodeError` (from :meth:`Decompressor.pull`; push
  only queues); a body that ends inside a gzip member or deflate stream is
  :class:`StreamTruncated` (from :meth:`Decompressor.close`; urllib3 does not
  check this).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from .errors import BufferOverflow, DecodeError, StreamTruncated

ACCEPT_ENCODING = b"gzip, deflate"
"""The ``Accept-Encoding`` the library sends on every request."""

STEP = 64 * 1024
"""The default largest pull, in decoded bytes."""

# The most compressed input handed to zlib in one call.  zlib copies the input
# it did not consume into ``unconsumed_tail`` on every call that stops at
# ``max_length``; slicing the input keeps that copy small however much the
# caller pushed at once (a 100 KiB gzip bomb pulled in 64 KiB steps would
# otherwise copy ~100 KiB per step).
_IN_STEP = 16 * 1024

_RAW_HEAD = 1024  # bytes of compressed input kept for a DecodeError's ``raw``
_GZIP_MAGIC = b"\x1f\x8b"

_NAMES = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}

# _ZlibStage._state values.
_DETECT = 0  # deflate: waiting for the first two bytes to tell zlib from raw
_MEMBER = 1  # inside a gzip member or deflate stream
_BETWEEN = 2  # gzip: a member ended; the next two bytes say member or garbage
_DONE = 3  # the stream ended (deflate) or trailing garbage began (gzip): input is dropped


class _Stage(Protocol):
    @property
    def more(self) -> bool:
        """True when :meth:`read` may give output without more input."""

    def feed(self, data: bytes) -> None: ...

    def read(self, limit: int) -> list[bytes]:
        """Decoded pieces totalling at most ``limit`` (>= 1) bytes; fewer only
        when no more can come without more input."""

    def finish(self) -> None: ...


class _ZlibStage:
    """One gzip or deflate coding over a queue of the caller's own bytes
    objects (no copies, no joins: a 1-byte-at-a-time feed stays linear)."""

    __slots__ = ("name", "_queue", "_off", "_queued", "_state", "_zlib", "_pending", "_fed", "_head")

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: deque[bytes] = deque()
        self._off = 0  # bytes of _queue[0] already consumed
        self._queued = 0  # bytes in the queue, less _off
        self._zlib: zlib._Decompress | None = None
        # zlib filled the last max_length it was given: it may hold more
        # output, which decompress(b"") releases.
        self._pending = False
        self._fed = False  # any byte reached the current member (gzip) or stream
        self._head = b""  # the first bytes of the input, for DecodeError.raw
        if name == "gzip":
            self._state = _MEMBER  # zlib checks the first header itself
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        else:
            self._state = _DETECT

    @property
    def more(self) -> bool:
        if self._pending:
            return True
        if self._state == _MEMBER:
            return self._queued > 0
        return self._queued >= 2  # _DETECT, _BETWEEN: two bytes decide (_DONE holds none)

    def feed(self, data: bytes) -> None:
        if not data or self._state == _DONE:
            return
        if len(self._head) < _RAW_HEAD:
            self._head += data[: _RAW_HEAD - len(self._head)]
        self._queue.append(data)
        self._queued += len(data)

    def read(self, limit: int) -> list[bytes]:
        parts: list[bytes] = []
        queue = self._queue
        while limit > 0:
            state = self._state
            if state == _MEMBER:
                if queue:
                    head = queue[0]
                    off = self._off
                    if off == 0 and len(head) <= _IN_STEP:
                        chunk: bytes | memoryview = head
                    else:
                        chunk = memoryview(head)[off : off + _IN_STEP]
                elif self._pending:
                    chunk = b""
                else:
                    break
                d = self._zlib
                assert d is not None
                try:
                    out = d.decompress(chunk, limit)
                except zlib.error as e:
                    raise self._corrupt(str(e)) from None
                # At the end of a stream zlib leaves the rest in unused_data
                # (and, in CPython 3.11, in unconsumed_tail as well).
                used = len(chunk) - len(d.unused_data if d.eof else d.unconsumed_tail)
                if used:
                    self._fed = True
                    self._consume(used)
                if out:
                    parts.append(out)
                    limit -= len(out)
                self._pending = limit == 0 and not d.eof
                if d.eof:
                    self._zlib = None
                    self._state = _BETWEEN if self.name == "gzip" else _DONE
                    if self._state == _DONE:
                        self._drop()
            elif state == _DONE:
                break
            else:
                two = self._peek2()
                if two is None:
                    break
                self._start(two)
        return parts

    def finish(self) -> None:
        if (self._state == _MEMBER and self._fed) or (self._state == _DETECT and self._queued):
            what = "gzip member" if self.name == "gzip" else "deflate stream"
            raise StreamTruncated(
                f"the {self.name} Content-Encoding body ended inside a {what} "
                f"(truncated compressed data: the connection closed early, or the server "
                f"cut the body)"
            )

    def _start(self, two: bytes) -> None:
        """Leave _DETECT or _BETWEEN, given the next two bytes."""
        if self._state == _DETECT:
            cmf, flg = two[0], two[1]
            wrapped = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0 and not flg & 0x20
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            self._state = _MEMBER
        elif two == _GZIP_MAGIC:
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self._state = _MEMBER
            self._fed = False
        else:
            self._state = _DONE  # trailing garbage: ignored, as urllib3 does
            self._drop()

    def _peek2(self) -> bytes | None:
        if self._queued < 2:
            return None
        head = self._queue[0]
        off = self._off
        if len(head) - off >= 2:
            return head[off : off + 2]
        return head[off:] + self._queue[1][:1]

    def _consume(self, n: int) -> None:
        self._queued -= n
        off = self._off + n
        queue = self._queue
        while queue and off >= len(queue[0]):
            off -= len(queue.popleft())
        self._off = off

    def _drop(self) -> None:
        self._queue.clear()
        self._off = 0
        self._queued = 0

    def _corrupt(self, detail: str) -> DecodeError:
        self._drop()
        self._state = _DONE
        return DecodeError(
            f"the {self.name} Content-Encoding body is corrupt (zlib: {detail}); the server "
            f"sent data that is not valid {self.name}",
            self._head,
        )


class _Chain:
    """Two codings: ``inner`` undoes the last one applied, ``outer`` takes its
    output.  ``outer`` gets one bounded piece at a time, only once it is dry."""

    __slots__ = ("inner", "outer")

    def __init__(self, inner: _Stage, outer: _Stage) -> None:
        self.inner = inner
        self.outer = outer

    @property
    def more(self) -> bool:
        return self.outer.more or self.inner.more

    def feed(self, data: bytes) -> None:
        self.inner.feed(data)

    def read(self, limit: int) -> list[bytes]:
        parts = self.outer.read(limit)
        got = sum(map(len, parts))
        while got < limit and self.inner.more:
            for piece in self.inner.read(_IN_STEP):
                self.outer.feed(piece)
            more = self.outer.read(limit - got)
            parts += more
            got += sum(map(len, more))
        return parts

    def finish(self) -> None:
        self.inner.finish()
        self.outer.finish()


class Decompressor:
    """Incremental, bounded decoding of one response body's Content-Encoding.

    :ivar total_out: decoded bytes returned by :meth:`pull` so far.
    :ivar total_in: compressed bytes pushed so far.
    """

    __slots__ = ("encoding", "_stage", "_carry", "_error", "total_out", "total_in")

    def __init__(self, encoding: str, stage: _Stage) -> None:
        self.encoding = encoding  # the normalised Content-Encoding, for messages
        self._stage = stage
        # One byte read ahead after a full pull, so that has_output is exact.
        self._carry = b""
        self._error: DecodeError | None = None
        self.total_out = 0
        self.total_in = 0

    def push(self, data: bytes) -> None:
        """Queue compressed bytes, split anywhere.  Nothing is decoded (nor
        copied) here: :meth:`pull` does the work, in bounded steps."""
        if data:
            if type(data) is not bytes:
                data = bytes(data)  # the caller may reuse a bytearray
            self.total_in += len(data)
            self._stage.feed(data)

    def pull(self, max_length: int = STEP) -> bytes:
        """At most ``max_length`` decoded bytes; ``b""`` only when no more can
        come without more input.

        :raises DecodeError: the compressed data is corrupt (and stays so).
        """
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, not {max_length!r}")
        if self._error is not None:
            raise self._error
        stage = self._stage
        carry = self._carry
        try:
            if carry:
                parts = [carry]
                if max_length > 1:
                    parts += stage.read(max_length - 1)
            else:
                parts = stage.read(max_length)
            out = parts[0] if len(parts) == 1 else b"".join(parts)
            # Read one byte ahead after a full pull: either more is on its
            # way (has_output stays True) or this pull emptied the stream.
            ahead = stage.read(1) if len(out) == max_length else None
        except DecodeError as e:
            self._error = e
            self._carry = b""
            raise
        self._carry = ahead[0] if ahead else b""
        self.total_out += len(out)
        return out

    @property
    def has_output(self) -> bool:
        """True when :meth:`pull` may return bytes without more input.  After
        any pull this is exact (False means the next pull returns ``b""``);
        after a push it is True until a pull has looked at the new bytes."""
        return bool(self._carry) or self._stage.more

    def close(self) -> None:
        """The body ended: check that the compressed data was complete.

        :raises StreamTruncated: it ended inside a gzip member or deflate stream.
        :raises RuntimeError: called before the output was pulled dry.
        """
        if self._error is not None:
            raise self._error
        if self.has_output:
            raise RuntimeError("Decompressor.close() called before its output was pulled dry")
        self._stage.finish()

    def __repr__(self) -> str:
        return f"<Decompressor {self.encoding} in={self.total_in} out={self.total_out}>"


def _unsupported(encoding: str) -> DecodeError:
    shown = encoding if len(encoding) <= 100 else encoding[:100] + "..."
    return DecodeError(
        f"the response has Content-Encoding {shown!r}, which nous_twisted cannot decode: "
        f"it asked only for gzip or deflate (Accept-Encoding: {ACCEPT_ENCODING.decode()}); "
        f"the server or a proxy ignored that",
        b"",
    )


def decompressor_for(content_encoding: str | bytes | None) -> Decompressor | None:
    """A :class:`Decompressor` for a Content-Encoding header value, or None
    when the body is not encoded (absent, empty or ``identity``).

    A list (``"deflate, gzip"``) names the codings in the order they were
    applied (RFC 9110 8.4); they are undone in reverse.  Case and spaces do
    not matter; ``x-gzip`` is ``gzip``; ``identity`` entries are skipped.

    :raises DecodeError: a coding other than gzip or deflate (``raw`` is empty).
    """
    if not content_encoding:
        return None
    if isinstance(content_encoding, bytes):
        content_encoding = content_encoding.decode("latin-1")
    names: list[str] = []
    for token in content_encoding.split(","):
        token = token.strip().lower()
        if not token or token == "identity":
            continue
        name = _NAMES.get(token)
        if name is None:
            raise _unsupported(token)
        names.append(name)
    if not names:
        return None
    # The last coding applied is undone first.
    stage: _Stage = _ZlibStage(names[-1])
    for name in reversed(names[:-1]):
        stage = _Chain(stage, _ZlibStage(name))
    return Decompressor(", ".join(names), stage)


def decompress_all(encoding: str | bytes | None, chunks: Iterable[bytes], limit: int) -> bytes:
    """The whole decoded body of ``chunks`` (for ``post``), bounded.

    :raises BufferOverflow: the decoded body is over ``limit`` bytes; decoding
        stops there, so a bomb costs at most ``limit`` + one step of memory.
    :raises DecodeError: unknown or corrupt encoding.
    :raises StreamTruncated: the compressed data is incomplete.
    """
    d = decompressor_for(encoding)
    out: list[bytes] = []
    total = 0
    for chunk in chunks:
        if d is None:
            out.append(chunk)
            total += len(chunk)
        else:
            d.push(chunk)
            while total <= limit and d.has_output:
                piece = d.pull(min(STEP, limit - total + 1))
                out.append(piece)
                total += len(piece)
        if total > limit:
            what = f" once decoded ({d.encoding})" if d is not None else ""
            raise BufferOverflow(f"the response body is over the limit of {limit} bytes{what}")
    if d is not None:
        d.close()
    return b"".join(out)
