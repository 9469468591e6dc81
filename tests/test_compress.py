"""Compression stages (volbak.stream.compress). No Docker engine needed."""

from __future__ import annotations

import contextlib
import gzip
import io
import random
import zlib

import pytest
import zstandard

from volbak.errors import IntegrityError, UsageError
from volbak.stream import compress

NAMES = ["zstd", "gzip", "none"]
PUSH = ["gzip", "none"]  # decompressor(): engine streams; stored archives use Reader
# Seeded: a run that fails can be run again with the same bytes.
_RANDOM = random.Random(14)
DATA = _RANDOM.randbytes(300_000) + b"compressible " * 200_000 + _RANDOM.randbytes(1000)


def compress_all(name: str, data: bytes, step: int = 65_536) -> bytes:
    c = compress.compressor(name)
    out = [c.write(data[i : i + step]) for i in range(0, len(data), step)]
    out.append(c.finish())
    return b"".join(out)


def decompress_all(name: str, blob: bytes, step: int = 10_000, pieces: bool = False) -> bytes:
    if name == "zstd":
        return read_all(name, blob, step)
    d = compress.decompressor(name)
    out = []
    for i in range(0, len(blob), step):
        if pieces:
            out.extend(d.pieces(blob[i : i + step]))
        else:
            out.append(d.write(memoryview(blob)[i : i + step]))
    d.finish()
    return b"".join(out)


def read_all(name: str, blob: bytes, n: int = 10_000) -> bytes:
    r = compress.Reader(name, io.BytesIO(blob).read)
    out = []
    while chunk := r.read(n):
        assert len(chunk) <= n
        out.append(chunk)
    return b"".join(out)


@pytest.mark.parametrize("name", NAMES)
def test_reader_round_trip(name: str) -> None:
    assert read_all(name, compress_all(name, DATA)) == DATA
    assert read_all(name, compress_all(name, b"")) == b""


def test_no_push_decompressor_for_zstd() -> None:
    with pytest.raises(ValueError, match="Reader"):
        compress.decompressor("zstd")


@pytest.mark.parametrize("name", PUSH)
@pytest.mark.parametrize("pieces", [False, True])
def test_round_trip(name: str, pieces: bool) -> None:
    blob = compress_all(name, DATA)
    assert decompress_all(name, blob, pieces=pieces) == DATA


@pytest.mark.parametrize("name", PUSH)
def test_round_trip_empty(name: str) -> None:
    assert decompress_all(name, compress_all(name, b"")) == b""


def test_standard_formats() -> None:
    # The runbook restores with plain tools: the output is ordinary zstd / gzip.
    assert zstandard.ZstdDecompressor().decompressobj().decompress(
        compress_all("zstd", DATA)) == DATA
    assert gzip.decompress(compress_all("gzip", DATA)) == DATA
    assert compress_all("none", DATA) == DATA


def test_foreign_streams_decompress() -> None:
    assert decompress_all("gzip", gzip.compress(DATA, 1)) == DATA
    assert decompress_all("zstd", zstandard.ZstdCompressor(level=1).compress(DATA)) == DATA


def test_compression_actually_compresses() -> None:
    text = b"compressible " * 100_000
    for name in ("zstd", "gzip"):
        assert len(compress_all(name, text)) < len(text) // 20


def test_truncated_stream_fails_at_finish() -> None:
    blob = compress_all("gzip", DATA)
    for cut in (0, 1, 10, len(blob) // 2, len(blob) - 1):
        d = compress.decompressor("gzip")
        d.write(blob[:cut])
        with pytest.raises(IntegrityError, match="ends early"):
            d.finish()


@pytest.mark.parametrize("name", ["zstd", "gzip"])
def test_truncated_stream_never_reads_as_whole(name: str) -> None:
    # Reader: gzip says so itself; a cut zstd stream ends early without a word (the
    # caller's size/hash and tar end-marker checks catch it; a cut in the trailing
    # frame checksum even yields all the data).
    blob = compress_all(name, DATA)
    for cut in (1, 10, len(blob) // 2):
        with contextlib.suppress(IntegrityError):
            assert read_all(name, blob[:cut]) != DATA


@pytest.mark.parametrize("name", ["zstd", "gzip"])
def test_garbage_is_an_integrity_error(name: str) -> None:
    with pytest.raises(IntegrityError):
        decompress_all(name, b"this is not compressed data at all" * 10)


@pytest.mark.parametrize("name", ["zstd", "gzip"])
@pytest.mark.parametrize("pieces", [False, True])
def test_bit_flips_are_integrity_errors(name: str, pieces: bool) -> None:
    blob = compress_all(name, DATA)
    # No flip may yield different data without an IntegrityError (by finish() at the
    # latest), and no library exception may escape. A flip may change nothing: deflate
    # ignores the padding bits after a stored block's header, so the data come out whole.
    for pos in range(0, len(blob), max(1, len(blob) // 97)):
        bad = bytearray(blob)
        bad[pos] ^= 0x10
        try:
            out = decompress_all(name, bytes(bad), pieces=pieces)
        except IntegrityError:
            continue
        assert out == DATA, f"flip at {pos} of {len(blob)} passed with different data"


@pytest.mark.parametrize("name", ["zstd", "gzip"])
def test_trailing_data_after_the_stream_is_an_integrity_error(name: str) -> None:
    blob = compress_all(name, b"payload")
    with pytest.raises(IntegrityError):
        decompress_all(name, blob + b"trailing garbage", step=len(blob) + 100)


def test_zstd_frames_carry_a_checksum() -> None:
    params = zstandard.get_frame_parameters(compress_all("zstd", DATA))
    assert params.has_checksum


def test_old_zstd_frames_without_checksum_still_decompress() -> None:
    blob = zstandard.ZstdCompressor(write_checksum=False).compress(DATA)
    assert decompress_all("zstd", blob) == DATA


def test_pieces_bounds_gzip_output() -> None:
    bomb = gzip.compress(bytes(64 * 2**20), 9)  # 64 MiB of zeros in ~64 KiB
    d = compress.decompressor("gzip")
    total = 0
    for out in d.pieces(bomb, limit=2**20):
        assert len(out) <= 2**20
        total += len(out)
    d.finish()
    assert total == 64 * 2**20


def test_pieces_default_limit() -> None:
    d = compress.decompressor("gzip")
    sizes = [len(p) for p in d.pieces(gzip.compress(bytes(5 * 2**20)))]
    assert max(sizes) <= 2**20 and sum(sizes) == 5 * 2**20


@pytest.mark.parametrize("name", ["none"])
def test_pieces_other_codecs_give_everything(name: str) -> None:
    blob = compress_all(name, DATA)
    d = compress.decompressor(name)
    assert b"".join(d.pieces(blob)) == DATA
    d.finish()


def test_levels() -> None:
    text = b"compressible " * 100_000
    fast = compress.compressor("gzip", level=1)
    small = compress.compressor("gzip", level=9)
    a = fast.write(text) + fast.finish()
    b = small.write(text) + small.finish()
    assert zlib.decompress(a, 31) == zlib.decompress(b, 31) == text
    z = compress.compressor("zstd", level=1)
    assert decompress_all("zstd", z.write(text) + z.finish()) == text


def test_check() -> None:
    for name in NAMES:
        assert compress.check(name) == name
    with pytest.raises(UsageError, match="bzip2") as e:
        compress.check("bzip2")
    assert "zstd, gzip, none" in (e.value.hint or "")
    assert set(compress.SUFFIX) == set(NAMES)
