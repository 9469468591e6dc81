"""The dedup format's symmetric building blocks.

- ``seal``/``SealedWriter``/``SealedReader``: metadata objects (index files, chunk lists,
  GC plans) under the repository's metadata key, as a STREAM of AES-256-GCM segments
  (the construction age uses: a per-object salt, a counter nonce whose last byte marks
  the final segment), so truncation, reordering and splicing are all detected and an
  object of any size streams in bounded memory.
- blobs: one chunk, compressed, under its pack's content key, bound to its chunk id.
- ``wrap_key``/``unwrap_key``: a pack's content key as a small age file, readable only
  with an identity; in an unencrypted repository the key is stored as is.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ...errors import IntegrityError

SEAL_MAGIC = b"VBSEAL01"
SEGMENT = 1 << 20  # plaintext bytes per sealed segment
_TAG = 16
_LEN = struct.Struct(">I")
NONCE = 12
RAW, ZSTD = 0, 1
ZSTD_LEVEL = 3


class SealError(IntegrityError):
    """A metadata object fails authentication: damaged, truncated or another key."""


def _subkey(key: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(hashes.SHA256(), 32, salt, b"volbak sealed object").derive(key))


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class SealedWriter:
    """Seal a stream of plaintext into ``write`` in segments of SEGMENT bytes."""

    def __init__(self, write: Callable[[bytes], Any], key: bytes) -> None:
        salt = os.urandom(16)
        self._aead = _subkey(key, salt)
        self._write = write
        self._buf = bytearray()
        self._counter = 0
        write(SEAL_MAGIC + salt)

    def _seal(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        ct = self._aead.encrypt(_nonce(self._counter, last), bytes(data), None)
        self._write(_LEN.pack(len(ct)) + ct)
        self._counter += 1

    def write(self, data: bytes | memoryview) -> None:
        self._buf += data
        while len(self._buf) > SEGMENT:
            self._seal(memoryview(self._buf)[:SEGMENT], False)
            del self._buf[:SEGMENT]

    def close(self) -> None:
        self._seal(self._buf, True)
        self._buf = bytearray()


class SealedReader:
    """The plaintext segments of a sealed object read with ``read(n)``; raises SealError
    on any damage, including a missing final segment."""

    def __init__(self, read: Callable[[int], bytes], key: bytes, what: str) -> None:
        self._read = read
        self._what = what
        head = self._exact(len(SEAL_MAGIC) + 16)
        if head[: len(SEAL_MAGIC)] != SEAL_MAGIC:
            raise self._bad("not a sealed volbak object")
        self._aead = _subkey(key, head[len(SEAL_MAGIC):])
        self._counter = 0
        self._done = False

    def _bad(self, why: str) -> SealError:
        return SealError(f"{self._what} is damaged: {why}",
                         hint="the repository was modified or damaged, or the key is wrong; "
                         "'volbak verify --all' shows which backups are affected")

    def _exact(self, n: int) -> bytes:
        parts = []
        while n:
            b = self._read(n)
            if not b:
                raise self._bad("truncated")
            parts.append(b)
            n -= len(b)
        return b"".join(parts)

    def segments(self) -> Iterator[bytes]:
        while not self._done:
            (n,) = _LEN.unpack(self._exact(4))
            if n < _TAG or n > SEGMENT + _TAG:
                raise self._bad("bad segment length")
            ct = self._exact(n)
            for last in (False, True):
                try:
                    pt = self._aead.decrypt(_nonce(self._counter, last), ct, None)
                except InvalidTag:
                    continue
                break
            else:
                raise self._bad("authentication failed")
            self._counter += 1
            if last:
                self._done = True
                if self._read(1):
                    raise self._bad("trailing data")
            if pt:
                yield pt


def seal(data: bytes, key: bytes) -> bytes:
    out = io.BytesIO()
    w = SealedWriter(out.write, key)
    w.write(data)
    w.close()
    return out.getvalue()


def unseal(data: bytes, key: bytes, what: str) -> bytes:
    return b"".join(SealedReader(io.BytesIO(data).read, key, what).segments())


def records(segments: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Fixed-size records across segment boundaries."""
    rest = b""
    for seg in segments:
        data = rest + seg if rest else seg
        end = len(data) - len(data) % size
        for off in range(0, end, size):
            yield data[off: off + size]
        rest = data[end:]
    if rest:
        raise IntegrityError("a volbak metadata object ends in a partial record",
                             hint="the repository was modified or damaged")


# -- blobs -----------------------------------------------------------------------------

_cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)


@functools.lru_cache(maxsize=64)
def _aead(key: bytes) -> AESGCM:
    # One per content key, not per blob: at ~32 KiB chunks the key setup was a
    # measurable share of the work. AESGCM keeps no state between calls.
    return AESGCM(key)


def encode_blob(chunk: bytes | memoryview, chunk_id: bytes, key: bytes,
                cctx: zstandard.ZstdCompressor | None = None) -> bytes:
    """nonce | AES-256-GCM(flag | payload, aad=chunk id); flag says zstd or raw."""
    comp = (cctx or _cctx).compress(chunk)
    body = b"\x01" + comp if len(comp) < len(chunk) else b"\x00" + bytes(chunk)
    nonce = os.urandom(NONCE)
    return nonce + _aead(key).encrypt(nonce, body, chunk_id)


def decode_blob(blob: bytes | memoryview, chunk_id: bytes, key: bytes, raw_len: int,
                dctx: zstandard.ZstdDecompressor | None = None) -> bytes:
    """The chunk, or None if authentication fails (the caller names what failed)."""
    blob = memoryview(blob)
    try:  # views, not copies: a copy of each blob was ~1/5 of the decryption's time
        body = _aead(key).decrypt(blob[:NONCE], blob[NONCE:], chunk_id)
    except InvalidTag:
        return None  # type: ignore[return-value]
    if body[:1] == b"\x01":
        try:
            return (dctx or zstandard.ZstdDecompressor()).decompress(
                memoryview(body)[1:], max_output_size=raw_len)
        except zstandard.ZstdError:
            return None  # type: ignore[return-value]
    return body[1:]


# -- content keys ------------------------------------------------------------------------

KEY_PLAIN, KEY_AGE = 0, 1


def wrap_key(key: bytes, recipients: Sequence[Any]) -> tuple[int, bytes]:
    if not recipients:
        return KEY_PLAIN, key
    from ...crypto.age import EncryptWriter

    out = io.BytesIO()
    w = EncryptWriter(out, recipients)
    w.write(key)
    w.close()
    return KEY_AGE, out.getvalue()


def unwrap_key(kind: int, block: bytes, identities: Sequence[Any]) -> bytes:
    """Raises CryptoError for a wrong or missing identity."""
    if kind == KEY_PLAIN:
        return block
    from ...crypto.age import DecryptReader

    key = DecryptReader(io.BytesIO(block), list(identities)).read()
    if len(key) != 32:
        raise IntegrityError("a pack's content key has the wrong length",
                             hint="the repository was modified or damaged")
    return key
