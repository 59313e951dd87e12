"""Content-Encoding decoding: round trips, any split, the bound, corrupt and
truncated bodies, exact ``has_output``.  Pure, no reactor."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nous_twisted.compression import (
    ACCEPT_ENCODING,
    STEP,
    Decompressor,
    decompress_all,
    decompressor_for,
)
from nous_twisted.errors import BufferOverflow, DecodeError, StreamTruncated

MiB = 1024 * 1024


def gz(data: bytes, level: int = 6) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def zl(data: bytes, level: int = 6, wbits: int = 15) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


def raw(data: bytes, level: int = 6) -> bytes:
    return zl(data, level, -15)


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gz,
    "x-gzip": gz,
    "deflate": zl,
    "deflate-raw": raw,  # sent as "deflate"
}


def encode(names: list[str], data: bytes) -> tuple[str, bytes]:
    """``data`` with the codings applied in order, and its Content-Encoding."""
    for name in names:
        data = ENCODERS[name](data)
    header = ", ".join("deflate" if n == "deflate-raw" else n for n in names)
    return header, data


def decode(
    encoding: str | bytes, body: bytes, cuts: list[int] | None = None, max_length: int = STEP
) -> bytes:
    """Push ``body`` in pieces of the ``cuts`` sizes, pulling dry after each,
    and check on the way that every pull is bounded and has_output exact."""
    d = decompressor_for(encoding)
    assert d is not None
    out: list[bytes] = []
    pos = 0
    pieces = []
    for size in cuts or []:
        pieces.append(body[pos : pos + size])
        pos += size
    pieces.append(body[pos:])
    for piece in pieces:
        d.push(piece)
        first = d.pull(max_length)  # right after a push has_output only says "may"
        assert len(first) <= max_length
        out.append(first)
        if not first:
            assert not d.has_output
        while True:
            more = d.has_output
            got = d.pull(max_length)
            assert len(got) <= max_length
            assert bool(got) == more, "has_output must say exactly whether pull() gives bytes"
            if not got:
                break
            out.append(got)
    d.close()
    result = b"".join(out)
    assert d.total_out == len(result)
    assert d.total_in == len(body)
    return result


# -- names and headers ----------------------------------------------------------------


def test_constants() -> None:
    assert ACCEPT_ENCODING == b"gzip, deflate"
    assert STEP == 64 * 1024


@pytest.mark.parametrize("value", [None, "", b"", "identity", " Identity ", "identity, identity", " , "])
def test_no_decoding(value: str | bytes | None) -> None:
    assert decompressor_for(value) is None


@pytest.mark.parametrize("value", ["br", "zstd", "compress", "gzip, br", "br, gzip", "gzip;q=1", "\u00e9t\u00e9",
                                   b"x-compress", "deflate , snappy"])
def test_unknown_encoding_is_a_decode_error_naming_it(value: str | bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decompressor_for(value)
    message = str(info.value)
    bad = [t.strip() for t in (value.decode("latin-1") if isinstance(value, bytes) else value).split(",")]
    bad = [t for t in bad if t.lower() not in ("gzip", "deflate", "x-gzip")]
    assert repr(bad[0].lower()) in message
    assert "gzip" in message and "deflate" in message and "asked only" in message
    assert info.value.raw == b""


def test_a_long_unknown_encoding_is_shortened_in_the_message() -> None:
    with pytest.raises(DecodeError) as info:
        decompressor_for("x" * 10_000)
    assert len(str(info.value)) < 400


# -- round trips ------------------------------------------------------------------------

TEXT = b"".join(b'data: {"choices":[{"delta":{"content":"token %d"}}]}\n\n' % i for i in range(3000))


@pytest.mark.parametrize("names", [["gzip"], ["x-gzip"], ["deflate"], ["deflate-raw"], ["deflate", "gzip"],
                                   ["gzip", "gzip"], ["deflate-raw", "deflate"], ["gzip", "deflate", "gzip"]])
def test_round_trip(names: list[str]) -> None:
    header, body = encode(names, TEXT)
    assert decode(header, body) == TEXT
    assert decode(header.upper().replace(",", " ,\t"), body, max_length=1000) == TEXT
    assert decode(header.encode(), body, [7] * 50, max_length=333) == TEXT


def test_identity_entries_are_skipped_in_a_list() -> None:
    assert decode("identity, gzip", gz(TEXT)) == TEXT


@pytest.mark.parametrize("level", range(10))
@pytest.mark.parametrize("wbits", [9, 12, 15])
def test_deflate_zlib_or_raw_is_told_by_the_header(level: int, wbits: int) -> None:
    """Every zlib header zlib writes is read as zlib, and every raw stream it
    writes as raw (a raw stream can look like a zlib header only with a
    non-final stored block whose padding bits are set: no encoder does that)."""
    assert decode("deflate", zl(TEXT, level, wbits)) == TEXT
    assert decode("deflate", zl(TEXT, level, -wbits)) == TEXT
    assert decode("deflate", zl(b"", level, wbits)) == b""
    assert decode("deflate", zl(b"", level, -wbits)) == b""


def test_empty_body_is_empty_and_not_truncated() -> None:
    for enc in ("gzip", "deflate", "deflate, gzip"):
        d = decompressor_for(enc)
        assert d is not None
        assert not d.has_output and d.pull() == b""
        d.push(b"")
        assert not d.has_output
        d.close()
        assert d.total_out == 0
    assert decode("gzip", gz(b"")) == b""


def test_gzip_members_concatenate() -> None:
    body = gz(b"hello ") + gz(b"") + gz(b"world", level=9)
    assert decode("gzip", body) == b"hello world"
    assert decode("gzip", body, [1] * len(body), max_length=1) == b"hello world"
    # a member that ends in a call where zlib stops at max_length, with the
    # next member in the same input (zlib's bookkeeping differs at the end)
    assert decode("gzip", gz(b"z" * 500) * 2, max_length=156) == b"z" * 1000


# -- any split, any step -------------------------------------------------------------------

_names = st.lists(st.sampled_from(sorted(ENCODERS)), min_size=1, max_size=3)
_data = st.one_of(st.binary(max_size=3000), st.integers(0, 20_000).map(lambda n: b"z" * n),
                  st.sampled_from([TEXT[:6000], TEXT[:1000], b""]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_names, _data, st.lists(st.integers(1, 300), max_size=20), st.integers(1, 100_000), st.booleans())
def test_any_split_and_any_step_give_the_same_bytes(
    names: list[str], data: bytes, cuts: list[int], max_length: int, multi: bool
) -> None:
    header, body = encode(names, data)
    if multi and all(n in ("gzip", "x-gzip") for n in names):
        # one more member of the same layered data (behind a deflate layer
        # it would be bytes after the deflate stream's end: ignored)
        body += gz(encode(names[:-1], data)[1])
        data += data
    assert decode(header, body, cuts, max_length) == data


@settings(max_examples=50, deadline=None)
@given(_names, st.binary(max_size=400), st.integers(1, 50))
def test_one_byte_at_a_time(names: list[str], data: bytes, max_length: int) -> None:
    header, body = encode(names, data)
    assert decode(header, body, [1] * len(body), max_length) == data


# -- the bound -----------------------------------------------------------------------------------


def _bomb() -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(b"\0" * MiB) for _ in range(100)]
    return b"".join(parts) + c.flush()


BOMB = _bomb()  # 100 MiB of zeros in ~100 KiB of gzip


@pytest.mark.parametrize("max_length", [1, 4096, STEP, 100_000])
def test_a_bomb_pushed_at_once_comes_out_in_bounded_steps(max_length: int) -> None:
    assert len(BOMB) < 200 * 1024
    d = decompressor_for("gzip")
    assert d is not None
    d.push(BOMB)
    want = MiB if max_length > 1 else 64 * 1024  # (1-byte steps: fewer of them)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        got = 0
        while got < want:
            assert d.has_output
            out = d.pull(max_length)
            # a bomb always has more: every pull is full, never more
            assert len(out) == max_length
            assert out.count(0) == len(out)
            got += len(out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert d.total_out == got
    assert d.has_output
    # Only one step (plus zlib's window and a sliced input step) was ever
    # held: decoding the whole bomb at once would peak at 100 MiB.
    assert peak < max_length + 512 * 1024, peak


def test_a_bomb_through_two_layers_is_bounded_too() -> None:
    body = gz(BOMB, level=9)
    d = decompressor_for("gzip, gzip")
    assert d is not None
    d.push(body)
    tracemalloc.start()
    try:
        for _ in range(16):
            assert len(d.pull(STEP)) == STEP
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB, peak


def test_decompress_all_stops_a_bomb_at_the_limit() -> None:
    tracemalloc.start()
    try:
        with pytest.raises(BufferOverflow, match="over the limit of 1048576 bytes once decoded"):
            decompress_all("gzip", [BOMB[i : i + 16384] for i in range(0, len(BOMB), 16384)], MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB, peak


def test_decompress_all() -> None:
    body = gz(TEXT)
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    assert decompress_all("gzip", chunks, len(TEXT)) == TEXT  # exactly the limit passes
    with pytest.raises(BufferOverflow):
        decompress_all("gzip", chunks, len(TEXT) - 1)  # one byte over fails
    assert decompress_all(None, [b"ab", b"c"], 3) == b"abc"
    assert decompress_all("identity", [], 0) == b""
    with pytest.raises(BufferOverflow):
        decompress_all(None, [b"ab", b"cd"], 3)
    with pytest.raises(DecodeError):
        decompress_all("br", [b"x"], 10)
    with pytest.raises(DecodeError):
        decompress_all("gzip", [b"not gzip"], 10)
    with pytest.raises(StreamTruncated):
        decompress_all("gzip", [body[:-4]], len(TEXT))


# -- corrupt ---------------------------------------------------------------------------------------


def _pull_all(d: Decompressor, body: bytes, step: int = 1000) -> bytes:
    d.push(body)
    out = []
    while d.has_output:
        out.append(d.pull(step))
    d.close()
    return b"".join(out)


@pytest.mark.parametrize("case", ["not-gzip", "bad-method", "flipped", "crc", "isize", "html"])
def test_corrupt_gzip_is_a_decode_error(case: str) -> None:
    body = bytearray(gz(TEXT))
    if case == "not-gzip":
        body = bytearray(b"plain text, not gzip at all")
    elif case == "bad-method":
        body[2] = 7
    elif case == "flipped":
        body[len(body) // 2] ^= 0xFF
    elif case == "crc":
        body[-8] ^= 1
    elif case == "isize":
        body[-1] ^= 1
    else:
        body = bytearray(b"<html>" + b"x" * 5000)
    d = decompressor_for("gzip")
    assert d is not None
    with pytest.raises(DecodeError) as info:
        _pull_all(d, bytes(body))
    assert "gzip Content-Encoding body is corrupt" in str(info.value)
    assert info.value.raw == bytes(body[:1024])
    # the error stays: nothing more is decoded
    with pytest.raises(DecodeError):
        d.pull()
    with pytest.raises(DecodeError):
        d.close()


@pytest.mark.parametrize("body", [b"\x78\x9c" + b"\xff" * 20, raw(TEXT)[:5] + b"\xff" * 40, b"\x07" * 10,
                                  zl(TEXT)[:-4] + b"\x00\x00\x00\x00"])
def test_corrupt_deflate_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode("deflate", body)
    assert "deflate Content-Encoding body is corrupt" in str(info.value)
    assert info.value.raw == body[:1024]


def test_corrupt_error_arises_on_any_split() -> None:
    body = bytearray(gz(TEXT))
    body[-6] ^= 0x10
    for cut in (1, 7, 100, len(body) - 1):
        with pytest.raises(DecodeError):
            decode("gzip", bytes(body), [cut], max_length=97)


# -- truncated -------------------------------------------------------------------------------------


@pytest.mark.parametrize("enc,body", [
    ("gzip", gz(TEXT)[:-8]),  # no trailer
    ("gzip", gz(TEXT)[:-1]),  # part of the trailer
    ("gzip", gz(TEXT)[:200]),  # mid-data
    ("gzip", gz(TEXT)[:5]),  # mid-header
    ("gzip", gz(b"a") + gz(b"b")[:-3]),  # a later member cut
    ("gzip", gz(b"a") + b"\x1f\x8b"),  # a later member that is only its magic
    ("deflate", zl(TEXT)[:-4]),  # no Adler-32
    ("deflate", zl(TEXT)[:100]),
    ("deflate", raw(TEXT)[:-1]),
    ("deflate", b"\x78"),  # one byte: not even the header
    ("deflate, gzip", gz(zl(TEXT)[:-2])),  # the inner coding cut, the outer whole
])
def test_truncated_is_stream_truncated_at_close(enc: str, body: bytes) -> None:
    d = decompressor_for(enc)
    assert d is not None
    d.push(body)
    while d.has_output:
        d.pull(4096)
    with pytest.raises(StreamTruncated, match="ended inside a"):
        d.close()


def test_close_before_pulled_dry_is_a_caller_bug() -> None:
    d = decompressor_for("gzip")
    assert d is not None
    d.push(gz(TEXT))
    d.pull(10)
    with pytest.raises(RuntimeError, match="pulled dry"):
        d.close()


# -- trailing bytes --------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [b"\x00" * 100, b"\x00", b"garbage after the member", b"\x1f", b"\n",
                                  b"\x1f\x00" + gz(b"ignored too")])
def test_gzip_trailing_garbage_is_ignored(tail: bytes) -> None:
    body = gz(b"hello") + tail
    assert decode("gzip", body) == b"hello"
    assert decode("gzip", body, [1] * len(body), max_length=2) == b"hello"


def test_gzip_later_member_must_be_valid() -> None:
    with pytest.raises(DecodeError):
        decode("gzip", gz(b"hello") + b"\x1f\x8b\x07" + b"\x00" * 20)


def test_bytes_after_a_deflate_stream_are_ignored() -> None:
    assert decode("deflate", zl(b"hello") + b"trailing") == b"hello"
    assert decode("deflate", raw(b"hello") + b"\x00" * 10, [1] * 20) == b"hello"


# -- has_output ------------------------------------------------------------------------------------


def test_has_output_exact_at_the_edges() -> None:
    body = gz(b"x" * 1000)
    d = decompressor_for("gzip")
    assert d is not None
    assert not d.has_output
    d.push(body)
    assert d.has_output  # may: nothing looked at yet
    assert len(d.pull(1000)) == 1000
    assert not d.has_output  # exactly all of it: nothing more, and pull says so
    assert d.pull() == b""
    d.close()

    d = decompressor_for("gzip")
    assert d is not None
    d.push(body)
    assert len(d.pull(999)) == 999
    assert d.has_output
    assert d.pull(5) == b"x"
    assert not d.has_output


def test_has_output_false_after_input_that_yields_nothing() -> None:
    body = gz(b"abc")
    d = decompressor_for("gzip")
    assert d is not None
    d.push(body[:5])  # part of the header
    assert d.has_output
    assert d.pull() == b""
    assert not d.has_output
    d.push(body[5:-8])
    assert d.pull() == b"abc"
    assert not d.has_output
    d.push(body[-8:])  # the trailer: no output, but it must be read
    assert d.has_output
    assert d.pull() == b""
    assert not d.has_output
    d.close()


def test_output_zlib_holds_with_all_input_consumed_is_still_pulled() -> None:
    """zlib can take all the input and still hold output (a long match); an
    empty unconsumed tail must not read as "no more"."""
    for n in range(20, 60):
        head = BOMB[:n]
        full = len(zlib.decompressobj(31).decompress(head))
        if full < 3000:
            continue
        d = decompressor_for("gzip")
        assert d is not None
        d.push(head)
        got = 0
        while d.has_output:
            got += len(d.pull(1000))
        assert got == full
        return
    raise AssertionError("no prefix of the bomb gave enough output")

