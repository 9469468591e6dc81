"""Watch a tar stream go by without copying it: count entries, sum file sizes, and
know whether the archive ended properly.

Only headers are parsed; file data is skipped by arithmetic, so the cost per MiB of
payload is near zero. Understands ustar, GNU long names (L/K), PAX headers (x/g,
including the ``size`` record Go's tar writer uses for files over 8 GiB) and base-256
sizes.
"""

from __future__ import annotations

from ..errors import IntegrityError

BLOCK = 512
_META_TYPES = {b"x", b"g", b"L", b"K"}


def _parse_size(field: bytes) -> int:
    if field and field[0] & 0x80:  # base-256 (GNU/star) for huge sizes
        n = int.from_bytes(field, "big")
        return n - (1 << (8 * len(field) - 1))
    text = field.split(b"\0", 1)[0].strip(b" \0")
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    want = _parse_size(header[148:156])
    got = sum(header[:148]) + 8 * 32 + sum(header[156:])
    return want == got


def pax_records(data: bytes) -> dict[bytes, bytes]:
    """The key=value records of a PAX extended header's data."""
    out = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise IntegrityError("the tar stream has a malformed PAX header") from None
        if length <= 0:
            break
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key] = value
        pos += length
    return out


class TarScanner:
    """Feed it the stream in chunks of any size; read the counters afterwards."""

    def __init__(self) -> None:
        self.entries = 0
        self.file_bytes = 0
        self.ended = False  # saw the end-of-archive zero block
        self._skip = 0  # bytes of data (plus padding) still to skip
        self._header = bytearray()
        self._meta: bytearray | None = None  # collecting a PAX/GNU header's data
        self._meta_left = 0
        self._pax_size: int | None = None

    def feed(self, chunk: bytes | memoryview) -> None:
        view = memoryview(chunk)
        pos, n = 0, len(view)
        while pos < n:
            if self.ended:
                return  # trailing zero padding after the end marker
            if self._skip:
                take = min(self._skip, n - pos)
                if self._meta is not None and self._meta_left:
                    m = min(take, self._meta_left)
                    self._meta += view[pos : pos + m]
                    self._meta_left -= m
                self._skip -= take
                pos += take
                if not self._skip and self._meta is not None:
                    found = pax_records(bytes(self._meta)).get(b"size")
                    if found is not None:
                        self._pax_size = int(found)
                    self._meta = None
                continue
            need = BLOCK - len(self._header)
            take = min(need, n - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) == BLOCK:
                self._on_header(bytes(self._header))
                self._header.clear()

    def _on_header(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            self.ended = True
            return
        if not _checksum_ok(header):
            raise IntegrityError(
                "the archive's tar stream is corrupt (bad header checksum)",
                hint="the stored backup is damaged; restore an older backup",
            )
        size = _parse_size(header[124:136])
        typ = header[156:157]
        if typ in _META_TYPES:
            self._meta = bytearray() if typ == b"x" else None
            self._meta_left = size if typ == b"x" else 0
        else:
            if self._pax_size is not None:
                size = self._pax_size
                self._pax_size = None
            self.entries += 1
            if typ in (b"0", b"\0", b"7"):
                self.file_bytes += size
            else:
                size = 0 if typ in (b"1", b"2", b"3", b"4", b"5", b"6") else size
        self._skip = (size + BLOCK - 1) // BLOCK * BLOCK

    def check_complete(self) -> None:
        if not self.ended:
            raise IntegrityError(
                "the archive ends early: the tar stream has no end marker (truncated backup)",
                hint="the stored backup is incomplete; restore an older backup",
            )
