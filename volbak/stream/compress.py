"""Compression stages: zstd (default), gzip (for compatibility), none.

Each compressor is a push stage: ``write(chunk) -> bytes`` returns whatever output is
ready, ``finish() -> bytes`` flushes the end. zstd runs multi-threaded inside libzstd,
outside the GIL, so it overlaps with reading the Docker stream.

Stored archives are read back through ``Reader`` (pull, bounded output, every codec);
``decompressor`` is the push stage for a gzip stream an engine sends.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, Protocol

import zstandard

from ..errors import IntegrityError, UsageError

SUFFIX = {"zstd": ".zst", "gzip": ".gz", "none": ""}
ZSTD_LEVEL = 3


class Compressor(Protocol):
    def write(self, data: bytes | memoryview) -> bytes: ...
    def finish(self) -> bytes: ...


class Decompressor(Protocol):
    def write(self, data: bytes | memoryview) -> bytes: ...
    def pieces(self, data: bytes | memoryview, limit: int = ...) -> Iterator[bytes]: ...
    def finish(self) -> None: ...


def check(name: str) -> str:
    if name not in SUFFIX:
        raise UsageError(
            f"unknown compression '{name}' for --compress",
            hint="use one of: zstd, gzip, none",
        )
    return name


class _Identity:
    def write(self, data: bytes | memoryview) -> bytes:
        return bytes(data)

    def finish(self) -> bytes:
        return b""


class _Compressor:
    def __init__(self, obj: Any) -> None:
        self._c = obj

    def write(self, data: bytes | memoryview) -> bytes:
        return self._c.compress(data)

    def finish(self) -> bytes:
        return self._c.flush()


# One libzstd worker with 2 MiB jobs: compression runs beside the reader and writer
# threads, and memory stays ~45 MiB (the default job size for level 3 with two workers
# measured 160 MiB of RSS for the same throughput on 2 cores).
# The frame checksum (xxh64, as the zstd CLI writes by default) lets the decompressor
# itself catch a flipped bit in a stored (incompressible) block, where the frame
# format has nothing else to notice it.
ZSTD_THREADS = 1
ZSTD_JOB_SIZE = 2 * 2**20


def compressor(name: str, level: int | None = None) -> Compressor:
    if name == "zstd":
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL if level is None else level, threads=ZSTD_THREADS,
            job_size=ZSTD_JOB_SIZE, write_checksum=1)
        return _Compressor(zstandard.ZstdCompressor(compression_params=params).compressobj())
    if name == "gzip":
        return _Compressor(zlib.compressobj(6 if level is None else level, zlib.DEFLATED, 31))
    return _Identity()


class _Decompressor:
    """``write`` returns what is ready, ``finish`` checks that the stream ended properly
    (a truncated stream must not pass as whole)."""

    def __init__(self, name: str, obj: Any, errors: type[Exception] | tuple[type[Exception], ...]
                 ) -> None:
        self._name = name
        self._d = obj
        self._errors = errors

    def _corrupt(self, why: object) -> IntegrityError:
        return IntegrityError(
            f"the archive's {self._name} data is corrupt ({why})",
            hint="the stored backup is damaged; restore an older backup",
        )

    def _check_trailing(self) -> None:
        # Both codecs stop at the end of their stream and park the rest in unused_data
        # without complaint; bytes after the end mean the stream is not what was written.
        if self._d.eof and self._d.unused_data:
            raise self._corrupt("data after the end of the stream")

    def write(self, data: bytes | memoryview) -> bytes:
        try:
            out = self._d.decompress(data)
        except self._errors as e:
            raise self._corrupt(e) from None
        self._check_trailing()
        return out

    def pieces(self, data: bytes | memoryview, limit: int = 2**20) -> Iterator[bytes]:
        """Like ``write``, in pieces of at most ``limit`` bytes: a few MiB of gzip can
        inflate to gigabytes."""
        while data:
            try:
                out = self._d.decompress(data, limit)
            except zlib.error as e:
                raise self._corrupt(e) from None
            self._check_trailing()
            yield out
            data = self._d.unconsumed_tail

    def finish(self) -> None:
        if not self._d.eof:
            raise IntegrityError(
                f"the archive's {self._name} stream ends early (truncated backup)",
                hint="the stored backup is incomplete; restore an older backup",
            )


class _IdentityD:
    def write(self, data: bytes | memoryview) -> bytes:
        return bytes(data)

    def pieces(self, data: bytes | memoryview, limit: int = 2**20) -> Iterator[bytes]:
        yield bytes(data)

    def finish(self) -> None:
        pass


def decompressor(name: str) -> Decompressor:
    """A push decompressor for a stream an engine sends (its GET archive answers gzip
    when asked to); stored archives are read with ``Reader``, which also reads zstd."""
    if name == "gzip":
        return _Decompressor("gzip", zlib.decompressobj(31), zlib.error)
    if name == "none":
        return _IdentityD()
    raise ValueError(f"no push decompressor for {name!r}: read stored archives with Reader")


class _Source:
    def __init__(self, read: Any) -> None:
        self.read = read


class Reader:
    """A decompressing reader over ``read``: ``read(n)`` returns at most ``n`` bytes,
    so a small input that inflates hugely (the zeros of a sparse file, a hostile
    archive) never sits in memory at once. Truncation shows as an early end: the
    caller checks the stored object's hash and the tar end marker."""

    def __init__(self, name: str, read: Any) -> None:
        self._name = name
        self._read = read
        self._buf = b""
        if name == "zstd":
            self._z = zstandard.ZstdDecompressor().stream_reader(
                _Source(read), read_size=2**20, read_across_frames=True)
        elif name == "gzip":
            self._d = zlib.decompressobj(31)
            self._tail = b""

    def read(self, n: int) -> bytes:
        try:
            if self._name == "zstd":
                return self._z.read(n)
            if self._name == "gzip":
                return self._gzip(n)
        except (zstandard.ZstdError, zlib.error) as e:
            raise IntegrityError(
                f"the archive's {self._name} data is corrupt ({e})",
                hint="the stored backup is damaged; restore an older backup") from None
        return self._read(n)

    def _gzip(self, n: int) -> bytes:
        while True:
            data = self._tail or self._read(n)
            if not data:
                if not self._d.eof:
                    raise IntegrityError(
                        "the archive's gzip stream ends early (truncated backup)",
                        hint="the stored backup is incomplete; restore an older backup")
                return b""
            if self._d.eof:
                raise IntegrityError("the archive has data after its gzip stream",
                                     hint="the stored backup is damaged")
            out = self._d.decompress(data, n)
            self._tail = self._d.unconsumed_tail
            if out:
                return out
