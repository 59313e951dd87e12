"""Content-Encoding decoding through its public surface, exact: every
header form, bounded pulls at every size, gzip members and trailing bytes,
raw and wrapped deflate, truncation, corruption, limits at +-1.
Reactor-free (these run under ``tox -e mutation``)."""

from __future__ import annotations

import gzip
import random
import zlib

import pytest

from nous_twisted.compression import STEP, Decompressor, decompress_all, decompressor_for
from nous_twisted.errors import BufferOverflow, DecodeError, StreamTruncated

TEXT = b"".join(b"line %d of some text that compresses\n" % i for i in range(120))
NOISE = random.Random(12).randbytes(40_000)  # incompressible: compressed > 16 KiB


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zl(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def decoder(encoding: str) -> Decompressor:
    d = decompressor_for(encoding)
    assert d is not None
    return d


def drain(d: Decompressor, step: int, cap: int = 20_000) -> bytes:
    out = []
    for _ in range(cap):  # a decoder that never runs dry fails, not hangs
        if not d.has_output:
            break
        piece = d.pull(step)
        assert len(piece) <= step
        out.append(piece)
    else:
        raise AssertionError("has_output stays True")
    assert d.pull(step) == b""
    return b"".join(out)


def decode(encoding: str, body: bytes, read: int = 1 << 20, step: int = STEP, cap: int = 20_000) -> bytes:
    d = decoder(encoding)
    out = []
    for i in range(0, len(body), read):
        d.push(body[i : i + read])
        out.append(drain(d, step, cap))
    d.close()
    return b"".join(out)


# -- which decoder -------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", b"", "identity", " Identity , ,", b"identity"])
def test_no_decoding(value: str | bytes | None) -> None:
    assert decompressor_for(value) is None


@pytest.mark.parametrize("value, name", [
    ("gzip", "gzip"),
    (" X-GZIP ", "gzip"),
    (b"gzip", "gzip"),
    ("Deflate", "deflate"),
    ("identity, gzip", "gzip"),
    ("deflate, gzip", "deflate, gzip"),
    ("gzip,deflate", "gzip, deflate"),
])
def test_encoding_names(value: str | bytes, name: str) -> None:
    d = decompressor_for(value)
    assert d is not None and d.encoding == name
    assert repr(d) == f"<Decompressor {name} in=0 out=0>"


def test_unsupported_encodings_are_named() -> None:
    with pytest.raises(DecodeError) as e:
        decompressor_for("gzip, BR")
    assert str(e.value) == (
        "the response has Content-Encoding 'br', which nous_twisted cannot decode: it asked only for gzip or "
        "deflate (Accept-Encoding: gzip, deflate); the server or a proxy ignored that"
    )
    assert e.value.raw == b""
    with pytest.raises(DecodeError) as e:
        decompressor_for("a" * 101)
    assert f"Content-Encoding {'a' * 100 + '...'!r}, which" in str(e.value)
    with pytest.raises(DecodeError) as e:
        decompressor_for("a" * 100)
    assert f"Content-Encoding {'a' * 100!r}, which" in str(e.value)


# -- decoding, any split, any step ------------------------------------------------


@pytest.mark.parametrize("encoding, body", [
    ("gzip", gz(TEXT)),
    ("deflate", zl(TEXT)),
    ("deflate", raw_deflate(TEXT)),
    ("gzip, deflate", zl(gz(TEXT))),
    ("deflate, gzip", gz(zl(TEXT))),
])
@pytest.mark.parametrize("read, step", [(1, 7), (3, 1), (1000, 1000), (1 << 20, STEP), (1 << 20, 1)])
def test_round_trip(encoding: str, body: bytes, read: int, step: int) -> None:
    assert decode(encoding, body, read, step) == TEXT


@pytest.mark.parametrize("encoding, body", [
    ("gzip", gz(NOISE)),
    ("deflate", zl(NOISE)),
    ("deflate", raw_deflate(NOISE)),
    ("gzip, gzip", gz(gz(NOISE))),
])
def test_large_incompressible_input_in_one_push(encoding: str, body: bytes) -> None:
    assert len(body) > 16 * 1024
    assert decode(encoding, body) == NOISE
    assert decode(encoding, body, step=5000) == NOISE
    assert decode(encoding, body, read=20_000, step=STEP) == NOISE


def test_pulls_are_bounded_and_has_output_is_exact() -> None:
    d = decoder("gzip")
    d.push(gz(b"x" * 100_000))
    sizes = []
    while d.has_output:
        sizes.append(len(d.pull(30_000)))
    assert sizes == [30_000, 30_000, 30_000, 10_000]
    assert d.has_output is False and d.pull() == b""
    assert d.total_out == 100_000
    d.close()


def test_pull_of_exactly_the_rest_then_nothing() -> None:
    d = decoder("deflate")
    d.push(zl(b"abc"))
    assert d.pull(3) == b"abc"
    assert d.has_output is False
    assert d.pull(1) == b""
    d.close()


def test_one_byte_pulls() -> None:
    d = decoder("gzip")
    d.push(gz(b"abc"))
    assert [d.pull(1), d.pull(1), d.pull(1)] == [b"a", b"b", b"c"]
    assert d.has_output is False
    d.close()


def test_has_output_after_push_and_counts() -> None:
    d = decoder("gzip")
    assert d.has_output is False
    body = gz(b"hello")
    d.push(body[:1])
    assert d.total_in == 1
    d.push(b"")
    assert d.total_in == 1
    d.push(bytearray(body[1:]))
    assert d.total_in == len(body)
    assert d.has_output is True
    assert d.pull() == b"hello"
    assert repr(d) == f"<Decompressor gzip in={len(body)} out=5>"


def test_pushed_bytearray_is_copied() -> None:
    d = decoder("gzip")
    buf = bytearray(gz(b"hello"))
    d.push(buf)
    buf[:] = b"\x00" * len(buf)
    assert d.pull() == b"hello"


def test_pull_needs_a_positive_length() -> None:
    d = decoder("gzip")
    for bad in (0, -1):
        with pytest.raises(ValueError) as e:
            d.pull(bad)
        assert str(e.value) == f"max_length must be at least 1, not {bad}"


# -- gzip members, trailing bytes ------------------------------------------------------


@pytest.mark.parametrize("read, step", [
    (1, 3), (2, 3), (10, 3), (10, 1), (1000, 100),
    (1000, 1), (1000, 3), (1000, 5),
])
def test_gzip_members_are_concatenated(read: int, step: int) -> None:
    body = gz(b"one ") + gz(b"two ") + gz(b"three")
    assert decode("gzip", body, read, step, cap=100) == b"one two three"


def test_gzip_trailing_garbage_is_ignored() -> None:
    for tail in (b"\x00" * 10, b"\x1f", b"\x1fx" + gz(b"more"), b"junk"):
        assert decode("gzip", gz(b"data") + tail, 1) == b"data"
        assert decode("gzip", gz(b"data") + tail) == b"data"


def test_gzip_later_member_must_be_valid() -> None:
    d = decoder("gzip")
    d.push(gz(b"data") + b"\x1f\x8b" + b"\xff" * 20)
    with pytest.raises(DecodeError):
        drain(d, STEP)


def test_gzip_later_member_must_be_whole() -> None:
    d = decoder("gzip")
    d.push(gz(b"data") + gz(b"more")[:12])
    assert drain(d, STEP).startswith(b"data")
    with pytest.raises(StreamTruncated):
        d.close()


def test_gzip_magic_alone_after_a_member_is_truncation() -> None:
    # the two magic bytes began a member: the body ended inside it
    d = decoder("gzip")
    d.push(gz(b"data") + b"\x1f\x8b")
    assert drain(d, STEP) == b"data"
    with pytest.raises(StreamTruncated):
        d.close()


def test_deflate_trailing_bytes_are_ignored() -> None:
    assert decode("deflate", zl(b"data") + b"trailing junk") == b"data"
    assert decode("deflate", raw_deflate(b"data") + b"\x00\x00", 1) == b"data"


def test_deflate_detection_by_the_first_two_bytes() -> None:
    # a valid zlib header, window and check bits right: zlib-wrapped
    for level in (0, 1, 6, 9):
        assert decode("deflate", zlib.compress(TEXT, level), 1) == TEXT
    # a preset-dictionary flag means "not zlib" here, as zlib would refuse it
    assert decode("deflate", raw_deflate(b""), 1) == b""
    c = zlib.compressobj(wbits=9)  # a smaller window: still a zlib header
    assert decode("deflate", c.compress(TEXT) + c.flush(), 1) == TEXT


# -- truncation and corruption -----------------------------------------------------------


@pytest.mark.parametrize("encoding, body", [
    ("gzip", gz(TEXT)),
    ("deflate", zl(TEXT)),
    ("deflate", raw_deflate(TEXT)),
])
def test_truncated_bodies(encoding: str, body: bytes) -> None:
    what = "gzip member" if encoding == "gzip" else "deflate stream"
    for cut in (1, 2, 5, len(body) // 2, len(body) - 1):
        d = decoder(encoding)
        d.push(body[:cut])
        drain(d, STEP)
        with pytest.raises(StreamTruncated) as e:
            d.close()
        assert str(e.value) == (
            f"the {encoding} Content-Encoding body ended inside a {what} (truncated compressed data: the "
            "connection closed early, or the server cut the body)"
        )


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "gzip, deflate"])
def test_empty_bodies_are_not_truncated(encoding: str) -> None:
    d = decoder(encoding)
    assert d.pull() == b""
    d.close()
    d = decoder(encoding)
    d.push(b"")
    d.close()


def test_close_before_pulled_dry() -> None:
    d = decoder("gzip")
    d.push(gz(b"abc"))
    with pytest.raises(RuntimeError) as e:
        d.close()
    assert str(e.value) == "Decompressor.close() called before its output was pulled dry"


def test_corrupt_data_is_a_sticky_decode_error() -> None:
    body = b"\x1f\x8b\x08\x00" + b"\xff" * 2000
    d = decoder("gzip")
    for i in range(0, len(body), 100):
        d.push(body[i : i + 100])
    with pytest.raises(DecodeError) as e:
        drain(d, STEP)
    assert str(e.value).startswith("the gzip Content-Encoding body is corrupt (zlib: ")
    assert str(e.value).endswith("); the server sent data that is not valid gzip")
    assert e.value.raw == body[:1024]
    first = e.value
    with pytest.raises(DecodeError) as e2:
        d.pull()
    assert e2.value is first
    with pytest.raises(DecodeError) as e3:
        d.close()
    assert e3.value is first
    d.push(b"more")
    assert d.total_in == len(body) + 4


def test_corrupt_deflate_names_deflate() -> None:
    d = decoder("deflate")
    d.push(b"\x78\x9c" + b"\xff" * 10)
    with pytest.raises(DecodeError) as e:
        drain(d, STEP)
    assert str(e.value).endswith("not valid deflate")
    assert e.value.raw == b"\x78\x9c" + b"\xff" * 10


def test_corruption_found_by_the_read_ahead_byte() -> None:
    body = zl(b"abc")[:-4] + b"\x00\x00\x00\x00"  # bad Adler-32 after the data
    d = decoder("deflate")
    d.push(body)
    with pytest.raises(DecodeError):
        drain(d, 3)


# -- decompress_all ---------------------------------------------------------------------


def test_decompress_all_exact_limits() -> None:
    body = gz(b"x" * 1000)
    chunks = [body[i : i + 10] for i in range(0, len(body), 10)]
    assert decompress_all("gzip", chunks, 1000) == b"x" * 1000
    with pytest.raises(BufferOverflow) as e:
        decompress_all("gzip", chunks, 999)
    assert str(e.value) == "the response body is over the limit of 999 bytes once decoded (gzip)"
    assert decompress_all(None, [b"ab", b"cd"], 4) == b"abcd"
    with pytest.raises(BufferOverflow) as e:
        decompress_all("identity", [b"ab", b"cde"], 4)
    assert str(e.value) == "the response body is over the limit of 4 bytes"


BOMB = gz(b"\x00" * (20 * 1024 * 1024))  # made once per run: 20 KiB in, 20 MiB out


def test_decompress_all_of_a_bomb_stops_at_the_limit() -> None:
    with pytest.raises(BufferOverflow):
        decompress_all("gzip", [BOMB], 100_000)


def test_decompress_all_checks_the_end() -> None:
    body = gz(b"abc")
    with pytest.raises(StreamTruncated):
        decompress_all("gzip", [body[:-3]], 100)
    assert decompress_all("deflate, gzip", [gz(zl(b"abc"))], 3) == b"abc"
    assert decompress_all("gzip", [], 0) == b""


# -- edges found by mutation testing --------------------------------------------


def test_has_output_is_exact_after_a_pull_of_exactly_the_rest() -> None:
    d = decoder("gzip")
    d.push(gz(b"x" * 100_000))
    assert d.pull(50_000) == b"x" * 50_000
    assert d.has_output is True
    assert d.pull(50_000) == b"x" * 50_000
    assert d.has_output is False
    assert d.pull() == b""
    d.close()


def test_two_byte_pulls_are_full() -> None:
    d = decoder("gzip")
    d.push(gz(b"abcdefg"))
    assert [d.pull(2) for _ in range(5)] == [b"ab", b"cd", b"ef", b"g", b""]


def test_no_output_after_a_decode_error() -> None:
    d = decoder("gzip")
    d.push(b"\x1f\x8b\x08\x00" + b"\xff" * 100)
    with pytest.raises(DecodeError) as e:
        d.pull(1)
    assert "zlib: Error -3 while decompressing data" in str(e.value)
    assert d.has_output is False


def test_gzip_is_not_zlib() -> None:
    d = decoder("gzip")
    d.push(zl(b"abc"))
    with pytest.raises(DecodeError):
        d.pull()
    d = decoder("gzip")
    d.push(gz(b"abc") + zl(b"def"))  # not a member (no magic): trailing garbage
    assert drain(d, STEP) == b"abc"


def test_a_member_whose_magic_is_split_across_pushes() -> None:
    first, second = gz(b"one "), gz(b"two")
    d = decoder("gzip")
    d.push(first + second[:1])
    d.push(second[1:])
    assert drain(d, STEP) == b"one two"
    d.close()


def test_zlib_header_detection_edges() -> None:
    # Raw deflate stored blocks whose first two bytes look almost like a zlib
    # header: CINFO 8 (window over 32 KiB), and a wrong FCHECK.
    data = bytes(range(28))
    window_too_large = b"\x88\x1c\x00\xe3\xff" + data + b"\x01\x00\x00\xff\xff"
    assert decode("deflate", window_too_large) == data
    assert decode("deflate", window_too_large, 1) == data
    bad_check = b"\x78\x05\x00\xfa\xff" + b"hello" + b"\x01\x00\x00\xff\xff"
    assert decode("deflate", bad_check) == b"hello"


def test_bytes_after_a_deflate_stream_are_never_decoded() -> None:
    assert decode("deflate", zl(b"data") + gz(b"more")) == b"data"
    assert decode("deflate", raw_deflate(b"data") + gz(b"more"), 1) == b"data"


def test_has_output_is_exact_before_trailing_garbage() -> None:
    d = decoder("gzip")
    d.push(gz(b"abc") + b"\x00" * 10)
    assert d.pull(3) == b"abc"
    assert d.has_output is False
    d.close()
