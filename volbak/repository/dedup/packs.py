"""Packs: many encrypted chunks (blobs) in one object of about PACK_TARGET bytes.

    "VBPACK01" | u32 header length | header | blob ... | trailer | u32 trailer length
    header  = u16 n, then n times: key id (16) | kind (u8: 0 plain, 1 age) | u32 len | key block
    blob    = nonce (12) | AES-256-GCM(content key, flag | chunk, aad = chunk id)
    trailer = sealed(metadata key) TRAILER_REC records: id | offset | length | raw len | key no

A pack written by a backup has one key block (its own random content key, wrapped to the
recipients); a pack made by repacking copies blobs as they are and carries the key
blocks of every pack they came from, so repacking needs no private key. The trailer lets
the index be rebuilt from the packs alone. Names are random: ``_packs/<xx>/<64 hex>``;
the index records each pack's size and BLAKE3 hash for structural verification.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

import blake3

from ...errors import IntegrityError, NotFoundError
from .crypto import KEY_AGE, SealedWriter, unseal, wrap_key

if TYPE_CHECKING:
    from ...backend import Backend

MAGIC = b"VBPACK01"
PACK_PREFIX = "_packs/"
PACK_TARGET = 32 << 20
_FLUSH = 1 << 20
_U32 = struct.Struct(">I")
_KEYHEAD = struct.Struct(">16sBI")
TRAILER_REC = struct.Struct(">32sIIIH")


def new_pack_name() -> str:
    h = os.urandom(32).hex()
    return f"{PACK_PREFIX}{h[:2]}/{h}"


@dataclasses.dataclass(frozen=True)
class KeyBlock:
    id: bytes  # 16 bytes
    kind: int
    block: bytes

    @classmethod
    def new(cls, recipients: Sequence[object]) -> tuple[KeyBlock, bytes]:
        key = os.urandom(32)
        kind, block = wrap_key(key, recipients)
        return cls(os.urandom(16), kind, block), key

    def encode(self) -> bytes:
        return _KEYHEAD.pack(self.id, self.kind, len(self.block)) + self.block


@dataclasses.dataclass
class PackEntry:
    id: bytes
    offset: int
    length: int
    raw: int
    key: int  # index into the pack's key blocks


@dataclasses.dataclass
class PackInfo:
    name: str
    size: int
    blake3: str
    entries: list[PackEntry]


def encode_header(keyblocks: Sequence[KeyBlock]) -> bytes:
    body = struct.pack(">H", len(keyblocks)) + b"".join(k.encode() for k in keyblocks)
    return MAGIC + _U32.pack(len(body)) + body


def parse_header(data: bytes, name: str) -> tuple[list[KeyBlock], int]:
    """Key blocks and the header's total length; ``data`` must hold the whole header."""
    if data[:8] != MAGIC or len(data) < 14:
        raise IntegrityError(f"pack {name} has no valid header",
                             hint="the repository was modified or damaged")
    (hlen,) = _U32.unpack_from(data, 8)
    if len(data) < 12 + hlen:
        raise ValueError(12 + hlen)  # caller reads more
    (n,) = struct.unpack_from(">H", data, 12)
    pos, out = 14, []
    for _ in range(n):
        kid, kind, blen = _KEYHEAD.unpack_from(data, pos)
        pos += _KEYHEAD.size
        out.append(KeyBlock(kid, kind, bytes(data[pos: pos + blen])))
        pos += blen
    if pos != 12 + hlen or any(k.kind > KEY_AGE for k in out):
        raise IntegrityError(f"pack {name} has a malformed header",
                             hint="the repository was modified or damaged")
    return out, 12 + hlen


def read_header(backend: Backend, name: str) -> tuple[list[KeyBlock], int]:
    want = 64 * 1024
    while True:
        data = backend.read_range(name, 0, want)
        try:
            return parse_header(data, name)
        except ValueError as e:
            if len(data) < want:
                raise IntegrityError(f"pack {name} is truncated",
                                     hint="the repository was modified or damaged") from None
            want = int(e.args[0])


class PackWriter:
    """Streams one pack into the backend."""

    def __init__(self, backend: Backend, keyblocks: Sequence[KeyBlock], metadata_key: bytes,
                 name: str | None = None) -> None:
        self.name = name or new_pack_name()
        self.keyblocks = list(keyblocks)
        self._metadata_key = metadata_key
        self._w = backend.create_writer(self.name)
        self._h = blake3.blake3()
        self._buf = bytearray()
        self.size = 0
        self.entries: list[PackEntry] = []
        self._put(encode_header(self.keyblocks))

    def _put(self, data: bytes) -> None:
        # Gathered into ~1 MiB writes: at ~32 KiB chunks a write per blob was a
        # syscall (or a request) per blob.
        self._buf += data
        self.size += len(data)
        if len(self._buf) >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            self._w.write(bytes(self._buf))
            self._h.update(self._buf)
            self._buf.clear()

    def add(self, chunk_id: bytes, blob: bytes, raw: int, key: int = 0) -> None:
        self.entries.append(PackEntry(chunk_id, self.size, len(blob), raw, key))
        self._put(blob)

    def finish(self) -> PackInfo:
        out = bytearray()
        sw = SealedWriter(out.extend, self._metadata_key)
        for e in self.entries:
            sw.write(TRAILER_REC.pack(e.id, e.offset, e.length, e.raw, e.key))
        sw.close()
        self._put(bytes(out) + _U32.pack(len(out)))
        self._flush()
        self._w.commit()
        return PackInfo(self.name, self.size, self._h.hexdigest(), self.entries)

    def abort(self) -> None:
        self._w.abort()


def read_trailer(backend: Backend, name: str, size: int, metadata_key: bytes) -> list[PackEntry]:
    """The pack's own list of blobs (to rebuild an index without the old one)."""
    (tlen,) = _U32.unpack(backend.read_range(name, max(0, size - 4), 4))
    if size < 14 + 4 + tlen:
        raise IntegrityError(f"pack {name} is truncated (its trailer length is wrong)",
                             hint="the repository was modified or damaged")
    raw = unseal(backend.read_range(name, size - 4 - tlen, tlen), metadata_key,
                 f"the trailer of pack {name}")
    return [PackEntry(*TRAILER_REC.unpack_from(raw, o))
            for o in range(0, len(raw), TRAILER_REC.size)]


def pack_exists(backend: Backend, name: str) -> int | None:
    try:
        return backend.stat(name).size
    except NotFoundError:
        return None
