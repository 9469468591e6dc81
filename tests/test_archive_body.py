"""The chunked HTTP body decoder behind ArchiveStream (volbak.engine.archive._ChunkedBody),
fed by a fake buffered reader. No Docker engine needed."""

from __future__ import annotations

import os

import pytest

from volbak.engine.archive import _ChunkedBody


class Scripted:
    """A buffered reader whose ``read1(n)`` returns the scripted pieces in order (at
    most ``n`` bytes of each, the rest on the next call), then b"" forever."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = [p for p in pieces if p]
        self.calls = 0

    def read1(self, n: int) -> bytes:
        self.calls += 1
        if not self._pieces:
            return b""
        head = self._pieces[0]
        out, rest = head[:n], head[n:]
        if rest:
            self._pieces[0] = rest
        else:
            self._pieces.pop(0)
        return out


def frame(chunks: list[bytes], *, ext: bytes = b"", trailers: bytes = b"") -> bytes:
    """A chunked body: each chunk as SIZE[;ext] CRLF DATA CRLF, then 0 CRLF [trailers] CRLF."""
    out = b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks)
    return out + b"0" + ext + b"\r\n" + trailers + b"\r\n"


def read_all(body: _ChunkedBody, n: int) -> bytes:
    out = []
    while data := body.read(n):
        assert len(data) <= n
        out.append(data)
    return b"".join(out)


PAYLOAD = [b"hello", b"", b"x", os.urandom(300), b"\r\n0\r\n\r\n", b"tail"]
PAYLOAD = [c for c in PAYLOAD if c]  # an empty chunk would end the body
WANT = b"".join(PAYLOAD)
WIRE = frame(PAYLOAD)


@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
def test_split_in_two_at_every_byte(cut: int) -> None:
    body = _ChunkedBody(Scripted([WIRE[:cut], WIRE[cut:]]))
    assert read_all(body, 2**20) == WANT


def test_one_byte_per_read1() -> None:
    src = Scripted([WIRE[i : i + 1] for i in range(len(WIRE))])
    assert read_all(_ChunkedBody(src), 7) == WANT


@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 299, 300, 301, 4096])
def test_read_sizes_smaller_and_larger_than_chunks(n: int) -> None:
    body = _ChunkedBody(Scripted([WIRE[i : i + 13] for i in range(0, len(WIRE), 13)]))
    got = []
    while data := body.read(n):
        got.append(data)
    assert b"".join(got) == WANT
    # Every read but the last is full: the decoder crosses chunk boundaries itself.
    assert all(len(g) == n for g in got[:-1])


@pytest.mark.parametrize("ext", [b";name=value", b";a=1;b=\"x y\"", b";flag"])
def test_chunk_extensions_are_ignored(ext: bytes) -> None:
    wire = frame(PAYLOAD, ext=ext)
    for cut in range(0, len(wire) + 1, 3):
        body = _ChunkedBody(Scripted([wire[:cut], wire[cut:]]))
        assert read_all(body, 100) == WANT


@pytest.mark.parametrize("trailers", [b"", b"X-Trailer: 1\r\n", b"A: b\r\nC: d\r\n"])
def test_final_chunk_with_and_without_trailers(trailers: bytes) -> None:
    wire = frame([b"abc", b"defg"], trailers=trailers)
    body = _ChunkedBody(Scripted([wire]))
    assert body.read(100) == b"abcdefg"
    assert body.read(100) == b""
    assert body.read(100) == b""  # stays at the end


def test_final_chunk_without_trailing_crlf_still_ends() -> None:
    # Some servers close right after "0\r\n"; the zero chunk is the end either way.
    body = _ChunkedBody(Scripted([b"3\r\nabc\r\n0\r\n"]))
    assert read_all(body, 10) == b"abc"


def test_uppercase_and_padded_hex_sizes() -> None:
    data = os.urandom(0xAB)
    body = _ChunkedBody(Scripted([b"00AB\r\n" + data + b"\r\n0\r\n\r\n"]))
    assert read_all(body, 1000) == data


def test_large_chunks_across_many_reads() -> None:
    big = [os.urandom(3 * 2**20 + 7), os.urandom(2**20), os.urandom(1)]
    wire = frame(big)
    # Pieces smaller than BLOCK, so chunks straddle many refills.
    src = Scripted([wire[i : i + 777_777] for i in range(0, len(wire), 777_777)])
    body = _ChunkedBody(src)
    assert read_all(body, 2**20) == b"".join(big)


def test_large_chunk_read_in_block_sized_pieces() -> None:
    big = os.urandom(5 * 2**20 + 3)
    src = Scripted([frame([big])])
    body = _ChunkedBody(src)
    assert read_all(body, 2**20) == big
    # read1 is asked for BLOCK bytes: a few calls per MiB, not one per chunk line.
    assert src.calls <= 5 + 3


def eof_cases() -> list[bytes]:
    wire = frame([b"abcdef", b"ghij"])
    end = wire.index(b"0\r\n\r\n")
    # Every prefix that stops before the zero-length chunk's size line is complete.
    return [wire[:cut] for cut in range(end + 1)]


@pytest.mark.parametrize("truncated", eof_cases())
def test_eof_before_the_final_chunk_raises(truncated: bytes) -> None:
    body = _ChunkedBody(Scripted([truncated]))
    with pytest.raises(EOFError):
        read_all(body, 3)


@pytest.mark.parametrize("n", [1, 4, 100])
def test_eof_mid_chunk_never_looks_like_the_end(n: int) -> None:
    body = _ChunkedBody(Scripted([b"a\r\n01234"]))  # 10 bytes announced, 5 sent
    got = b""
    with pytest.raises(EOFError):
        while True:
            data = body.read(n)
            assert data, "a short body must raise, never return b'' as if complete"
            got += data
    assert got == b"01234"[: len(got)]


def test_garbage_size_line_raises() -> None:
    body = _ChunkedBody(Scripted([b"zz\r\nabc\r\n0\r\n\r\n"]))
    with pytest.raises(ValueError):
        body.read(10)
