"""The one tar parser: watch a tar stream go by without copying it.

Feed it the stream in chunks of any size. It always counts entries and file bytes,
checks every header's checksum, knows whether the archive ended with its end marker,
and (with ``root``) refuses entries outside the archive's root directory. With
``digest=True`` it also computes a canonical per-entry digest (see ``hexdigest``), which
costs a BLAKE3 pass over the file contents (small ones go into the digest as they are,
``TreeDigest``); this pass runs twice in every restore and migrate, on what is sent and
on what is read back, but for what a sink compares instead (see ``Sink``). Without it
file data is skipped by arithmetic, so the cost per MiB of payload is near zero.
``on_entry`` sees each entry's parsed header; it may return a ``Sink`` that then
receives the entry's data (the direct target extracts this way, so the project has one
tar reader).

Understands ustar, GNU long names (L/K), PAX headers (x/g, including the ``size``
record Go's tar writer uses for files over 8 GiB) and base-256 numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import tarfile
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import blake3

from ..errors import IntegrityError

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_META_TYPES = {b"x", b"g", b"L", b"K"}
_FILE_TYPES = {b"0", b"\0", b"7"}
_NO_DATA_TYPES = {b"1", b"2", b"3", b"4", b"5", b"6"}
_USTAR = b"ustar\x0000"
MAX_META = 16 * 2**20  # one entry's PAX/long-name data, or a sparse map: memory stays bounded


def parse_number(field: bytes) -> int:
    try:  # the usual field first: octal digits, then NUL or space
        return int(field.partition(b"\0")[0], 8)
    except ValueError:
        pass
    if field and field[0] & 0x80:
        if field[0] == 0xFF:  # base-256, negative (GNU: mtimes before 1970)
            return int.from_bytes(field, "big", signed=True)
        n = int.from_bytes(field, "big")  # base-256 (GNU/star) for huge values
        return n - (1 << (8 * len(field) - 1))
    text = field.partition(b"\0")[0]  # (a quarter faster than split: 8 per entry)
    try:
        return int(text, 8)  # spaces around the digits are allowed, as int() allows them
    except ValueError:
        if text.strip(b" "):
            raise
        return 0


def byte_sum(block: bytes) -> int:
    """sum(block) for at most 512 bytes (a header), 4x faster than summing 512 ints, once
    per entry of every stream read or written: the sum of 256 bytes (at most 65,280) is
    below Adler-32's modulus, so the checksum's low half is exactly that sum plus 1."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:512]) & 0xFFFF) - 2


def checksum_ok(header: bytes) -> bool:
    """The header's bytes summed, its checksum field counted as spaces (the field's own
    sum by Adler-32 too, as byte_sum: a third of the time of summing 8 ints)."""
    field = header[148:156]
    return parse_number(field) == byte_sum(header) - (zlib.adler32(field) & 0xFFFF) + 1 + 8 * 32


def pax_records(data: bytes) -> dict[bytes, bytes]:
    """The key=value records of a PAX extended header's data (NUL padding after the
    last record is allowed; anything else malformed is an IntegrityError)."""
    space = data.find(b" ")
    if 0 < space < 4 and data[-1:] == b"\n" and data[:space].isdigit() \
            and int(data[:space]) == len(data):
        # one record (the direct source's mtime): no loop
        key, eq, value = data[space + 1:-1].partition(b"=")
        if eq:
            return {key: value}
    out = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise IntegrityError("the tar stream has a malformed PAX header") from None
        end = pos + length
        if space < 0 or length <= 0 or end > len(data) or data[end - 1:end] != b"\n":
            raise IntegrityError("the tar stream has a malformed PAX header")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise IntegrityError("the tar stream has a malformed PAX header")
        out[key] = value
        pos = end
    return out


def parse_time_ns(text: bytes) -> int:
    """A PAX time ("123", "123.456", "-1.5") in nanoseconds."""
    whole, _, frac = text.partition(b".")
    if len(frac) == 9 and whole.isdigit() and frac.isdigit():  # as the direct source writes
        return int(whole) * 10**9 + int(frac)
    try:
        neg = text.startswith(b"-")
        whole, _, frac = text.lstrip(b"-").partition(b".")
        ns = int(whole or b"0") * 10**9 + int((frac[:9] or b"0").ljust(9, b"0"))
    except ValueError:
        raise IntegrityError("the tar stream has a malformed PAX time") from None
    return -ns if neg else ns


def parse_sparse_map(data: bytes | bytearray) -> tuple[list[tuple[int, int]], int] | None:
    """GNU sparse 1.0: the (offset, length) segments at the start of an entry's data,
    and the bytes the map takes (padded to a block); None while lines are missing."""
    lines = bytes(data).split(b"\n")
    if len(lines) < 2:
        return None
    try:
        count = int(lines[0])
        if count < 0:
            raise ValueError(count)
        if len(lines) < 2 + 2 * count:
            return None
        values = [int(x) for x in lines[1 : 1 + 2 * count]]
    except ValueError:
        raise IntegrityError("a sparse file's map in the tar stream is corrupt") from None
    text = sum(len(x) + 1 for x in lines[: 1 + 2 * count])
    return list(zip(values[::2], values[1::2], strict=True)), text + (-text % BLOCK)


def _sparse_01(pax: dict[bytes, bytes]) -> tuple[list[tuple[int, int]], int] | None:
    """GNU sparse 0.1 keeps its map in the PAX header: (segments, real size)."""
    if b"GNU.sparse.map" not in pax:
        return None
    try:
        values = [int(v) for v in pax[b"GNU.sparse.map"].split(b",") if v]
        real = int(pax.get(b"GNU.sparse.size", pax.get(b"GNU.sparse.realsize", b"0")))
    except ValueError:
        raise IntegrityError("the tar stream has a malformed sparse map") from None
    if len(values) % 2:
        raise IntegrityError("the tar stream has a malformed sparse map")
    return list(zip(values[::2], values[1::2], strict=True)), real


def _outside(path: bytes, root: bytes) -> bool:
    """Not ``root`` or below it, or climbing with "..": refused."""
    if path != root and not (path.startswith(root) and path[len(root):len(root) + 1] == b"/"):
        return True
    return b".." in path and b".." in path.split(b"/")


def _cstr(field: bytes) -> bytes:
    return field.partition(b"\0")[0]


def norm(path: bytes) -> bytes:
    """An entry name without leading "./" or "/" and trailing "/"."""
    while path.startswith(b"./"):
        path = path[2:]
    return path.strip(b"/") or b"."


@dataclasses.dataclass
class Entry:
    name: bytes  # normalised (see ``norm``)
    kind: bytes  # tar type flag; regular files are b"0"
    mode: int
    uid: int
    gid: int
    size: int  # data bytes (0 for links, dirs, devices)
    mtime: int
    link: bytes  # symlink target verbatim, or hardlink target normalised
    device: tuple[int, int]
    pax: dict[bytes, bytes]
    # Set only for ``on_entry`` (extraction needs them, counting and digesting do not):
    path: bytes = b""  # the name as the archive spells it (absolute, "..": not normalised)
    linkpath: bytes = b""  # the link target as spelled, hardlinks included
    mtime_ns: int = 0
    sparse: list[tuple[int, int]] | None = None  # data segments of a GNU sparse file
    realsize: int = 0  # the file's logical size (a sparse file's holes included)
    payload: int = 0  # data bytes the sink receives (a sparse 1.0 map is not among them)


class Sink(Protocol):
    """Receives one entry's data from ``on_entry``; ``close`` follows its last byte (at
    once when it has none). Not called when the stream ends early.

    A sink whose ``compares`` is true reads every byte back from where it wrote it and
    compares it with what it was given (the direct target's read-behind). A digesting
    parser then does not hash that content: the digest takes ``COMPARED`` for it, and
    whoever reads the tree back must give that only for a file that compared equal
    (and is unchanged since), and the file's real hash for any other."""

    compares: bool

    def write(self, data: memoryview) -> object: ...

    def close(self) -> None: ...


_ZEROS = bytes(2**20)


class SparseHash:
    """BLAKE3 of a sparse file's logical content, fed the data of its ``segments``
    (offset, length) in order; holes hash as zeros."""

    def __init__(self, realsize: int, segments: list[tuple[int, int]]) -> None:
        self._h = blake3.blake3()
        self._real = realsize
        self._segments = segments
        self._pos = 0  # logical offset hashed so far
        self._seg = 0  # index of the segment being fed
        self._seg_left = 0
        self._next_segment()

    def _zeros(self, upto: int) -> None:
        while self._pos < upto:
            n = min(upto - self._pos, len(_ZEROS))
            self._h.update(_ZEROS[:n])
            self._pos += n

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while len(view) and self._seg_left:
            take = min(self._seg_left, len(view))
            self._h.update(view[:take])
            self._pos += take
            self._seg_left -= take
            view = view[take:]
            if not self._seg_left:
                self._seg += 1
                self._next_segment()

    def _next_segment(self) -> None:
        while self._seg < len(self._segments):
            offset, size = self._segments[self._seg]
            self._zeros(offset)
            if size:
                self._seg_left = size
                return
            self._seg += 1
        self._zeros(self._real)

    def hexdigest(self) -> str:
        self._zeros(self._real)
        return self._h.hexdigest()


BIG_FILE = 1 << 20


class _Behind:
    """BLAKE3 of a big file's data, hashed in a thread of the parser's own while the
    caller writes it. Where the parser also extracts (the direct target), hashing in
    line made a 1 GiB restore into tmpfs 0.58 s against 0.38 s with the hash beside
    the writes (both release the GIL); small files keep the plain hasher (a hand-off
    costs more than their hash)."""

    def __init__(self, parser: TarParser) -> None:
        if parser._hash_pool is None:
            parser._hash_pool = ThreadPoolExecutor(1, thread_name_prefix="volbak-hash")
        self._pool = parser._hash_pool
        self._h = blake3.blake3()
        self._last: Future[Any] | None = None

    def update(self, data: bytes | memoryview) -> None:
        self._last = self._pool.submit(self._h.update, data)

    def hexdigest(self) -> str:
        if self._last is not None:
            self._last.result()
        return self._h.hexdigest()


COMPARED = "compared"  # a content the sink compared byte for byte (see Sink)


class _Compared:
    """The content of a file its sink compares: nothing to hash (a 1 GiB restore's
    BLAKE3 pass, 0.3 s of CPU of about 2.4 on this machine's two cores)."""

    @staticmethod
    def update(data: bytes | memoryview) -> None:
        pass

    @staticmethod
    def hexdigest() -> str:
        return COMPARED


# PAX keys that carry no xattr or ACL: an entry with only these has none to digest
PLAIN_PAX = frozenset({b"mtime", b"atime", b"ctime", b"path", b"linkpath", b"size", b"uid",
                       b"gid", b"uname", b"gname", b"hdrcharset"})


def digest_record(name: bytes, kind: bytes, mode: int, uid: int, gid: int, real: int,
                  mtime: int, link: bytes, device: tuple[int, int], pax: dict[bytes, bytes],
                  owners: bool, all_xattrs: bool) -> tuple[bytes, bool]:
    """One entry's canonical record for the tree digest (see ``TarParser.hexdigest``),
    its content's hash still to come; and whether it carries xattrs or ACLs beyond a
    capability. The parser and the direct source's digest walk (``volumes.direct``)
    both use it, so a tree read either way digests the same. Names, link targets and
    xattrs are length-prefixed, so no two records run together. Made and added to the
    digest in 1.5 us, against 3.1-3.5 us as the ``repr`` of a tuple: twice per entry
    of every restore (the parse and the read-back)."""
    xattrs: list[tuple[bytes, bytes]] = []
    attrs = False
    if not pax.keys() <= PLAIN_PAX:
        # xattrs and POSIX ACLs, where the stream carries them (the direct source)
        attrs = any(k.startswith((b"SCHILY.xattr.", b"SCHILY.acl.")) and
                    k != b"SCHILY.xattr.security.capability" for k in pax)
        kept = (b"SCHILY.xattr.", b"SCHILY.acl.") if all_xattrs \
            else (b"SCHILY.xattr.security.capability",)
        xattrs = sorted((k.split(b".", 1)[1], v) for k, v in pax.items() if k.startswith(kept))
    record = b"%d:%s%d:%s%s%s %d %d %d %d %d" % (
        len(name), name, len(link), link, kind, b"%d,%d" % (uid, gid) if owners else b"-",
        mode, real, mtime, device[0], device[1])
    if xattrs:
        record += b"".join(b" %d:%s%d:%s" % (len(k), k, len(v), v) for k, v in xattrs)
    return record, attrs


SEGMENT = 4096  # entries per segment of a TreeDigest
INLINE = 64 * 1024  # content up to this size goes into the digest as it is, not its hash


def inline(real: int) -> bool:
    """Whether a content that has no hash of its own anyway (as a sparse file's, or one
    a sink compared, has) goes into a TreeDigest as its bytes (``begin``), not as its
    hash (``add``): every reader of a tree must decide alike."""
    return real <= INLINE


class TreeDigest:
    """A tree's digest: BLAKE3 over its entries taken SEGMENT entries at a time, in
    archive order. Segments, so a tree can be read back in two parts at once, split at
    a segment's first entry (the parser's ``marks``), and give the digest one reading
    of it gives (``volumes.direct.tree_digest``).

    An entry is its record (``digest_record``) and its content: a small one's bytes as
    they are (``begin``, ``update``, ``end``), a big or sparse one's BLAKE3 (``add``).
    Hashing small files one by one cost 3 us each, a new hasher and its digest, in the
    parse and again in the read-back (50,000 files: 0.15 s of each); their bytes go
    through one hasher here at full speed. Each entry is framed: a 4-byte length, then
    the record and " " with the hex hash, or the record and " =" followed by exactly
    the record's size in bytes; so no two trees hash the same bytes."""

    def __init__(self) -> None:
        self.count = 0
        self._segment = blake3.blake3()
        self._buf = bytearray()  # what the segment's hasher gets next, in one call
        self._done = bytearray()  # the finished segments' digests: 32 bytes each
        self._extended = False
        self._left = -1  # content bytes an entry begun still owes; -1: none begun

    def add(self, record: bytes, content: str) -> None:
        data = b"%s %s" % (record, content.encode())
        self._buf += len(data).to_bytes(4, "big")
        self._buf += data
        self._next()

    def begin(self, record: bytes, size: int) -> None:
        """An entry whose ``size`` content bytes follow through ``update``, then ``end``."""
        self._buf += (len(record) + 2).to_bytes(4, "big")
        self._buf += record
        self._buf += b" ="
        self._left = size

    def update(self, data: bytes | memoryview) -> None:
        self._buf += data
        self._left -= len(data)

    def end(self) -> None:
        if self._left:
            # never two trees with the same bytes: a content that was not its record's
            # size makes this digest equal no other
            self._buf += b"\0short\0" + os.urandom(16)
        self._left = -1
        self._next()

    def _next(self) -> None:
        self.count += 1
        if not self.count % SEGMENT:
            self._segment.update(self._buf)
            self._buf.clear()
            self._done += self._segment.digest()
            self._segment = blake3.blake3()
        elif len(self._buf) >= 2**20:
            self._segment.update(self._buf)
            self._buf.clear()

    def segments(self) -> bytes:
        """Every segment's digest, the unfinished last one included."""
        if self._extended or not self.count % SEGMENT:
            return bytes(self._done)
        last = self._segment.copy()
        last.update(self._buf)
        return bytes(self._done) + last.digest()

    def extend(self, segments: bytes, count: int) -> None:
        """Append the rest of the tree: another digest's ``segments`` and ``count``.
        Nothing is added after it."""
        if self.count % SEGMENT:
            raise ValueError("a tree digest extended in the middle of a segment")
        self._done += segments
        self.count += count
        self._extended = True

    def hexdigest(self) -> str:
        return blake3.blake3(self.segments()).hexdigest()


class TarParser:
    """See the module docstring. Read the counters after feeding."""

    def __init__(self, *, digest: bool = False, root: str | None = None,
                 on_entry: Callable[[Entry], Sink | None] | None = None,
                 what: str = "the archive", owners: bool = True,
                 all_xattrs: bool = True) -> None:
        self.entries = 0
        self.file_bytes = 0
        self.tar_bytes = 0
        self.attr_entries = 0  # entries with xattrs/ACLs beyond a capability (digest mode)
        self.ended = False  # saw the end-of-archive zero block
        self._digest = TreeDigest() if digest else None
        self.links = 0  # hard link entries
        # (digest mode) the name of each segment's first entry but the first: where a
        # read-back may split the tree (TreeDigest)
        self.marks: list[bytes] = []
        self._root = root.strip("/").encode() if root is not None else None
        # set by an extractor that takes over a digesting parser (DirectTarget)
        self.on_entry = on_entry
        self._what = what
        self.owners = owners  # digest uid/gid (not where an engine replaces them)
        # all xattrs and ACLs, or only what the archive API can write (a capability)
        self._all_xattrs = all_xattrs
        self._header = bytearray()
        self._left = 0  # data bytes of the current member still to come
        self._pad = 0  # then padding bytes to skip
        self._meta: bytearray | None = None  # collecting a PAX/GNU header's data
        self._meta_type = b""
        self._map: bytearray | None = None  # collecting a GNU sparse 1.0 map
        self._entry: Entry | None = None  # the entry whose map is being collected
        # (digest mode) what takes the current entry's content: a hash of it, or the
        # tree digest itself (a small one, ``inline``)
        self._content: Any = None
        self._sink: Sink | None = None  # the on_entry consumer of the current data
        self._record: bytes | None = None
        self._pax: dict[bytes, bytes] = {}
        self._gpax: dict[bytes, bytes] = {}
        self._longname: bytes | None = None
        self._longlink: bytes | None = None
        self._hash_pool: ThreadPoolExecutor | None = None  # see _Behind

    def feed(self, chunk: bytes | memoryview) -> None:
        self.tar_bytes += len(chunk)
        view = memoryview(chunk)
        pos, n = 0, len(view)
        while pos < n and not self.ended:
            if self._left:
                take = min(self._left, n - pos)
                self._left -= take
                pos += take
                self._data(view[pos - take : pos])
                continue
            if self._pad:
                take = min(self._pad, n - pos)
                self._pad -= take
                pos += take
                continue
            if not self._header and n - pos >= BLOCK:  # the usual case: no copy to a buffer
                header = bytes(view[pos : pos + BLOCK])
                pos += BLOCK
                self._on_header(header)
                # the usual member: its data and padding whole in this chunk, taken at
                # once (two turns of this loop fewer, twice per entry with a PAX header)
                left = self._left
                if left and pos + left + self._pad <= n:
                    piece = view[pos : pos + left]
                    pos += left + self._pad
                    self._left = self._pad = 0
                    self._data(piece)
                continue
            take = min(BLOCK - len(self._header), n - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) == BLOCK:
                header = bytes(self._header)
                self._header.clear()
                self._on_header(header)

    def _data(self, piece: memoryview) -> None:
        """A member's next data; its end when no more is to come."""
        if self._meta is not None:
            self._meta += piece
        elif self._map is not None:
            self._map_piece(piece)
        else:
            if self._content is not None:
                self._content.update(piece)
            if self._sink is not None:
                self._sink.write(piece)
        if not self._left:
            self._end_member()

    def _corrupt(self, why: str) -> IntegrityError:
        return IntegrityError(
            f"the tar stream of {self._what} is corrupt ({why})",
            hint="the stored backup or the transfer is damaged; restore an older backup "
            "or run it again",
        )

    def _on_header(self, h: bytes) -> None:
        if h == _ZERO_BLOCK:
            self.ended = True
            if self._hash_pool is not None:  # every file's hash was taken at its end
                self._hash_pool.shutdown(wait=False)
                self._hash_pool = None
            return
        entry = None
        # A damaged header must be an IntegrityError, not the ValueError of a
        # non-octal field or PAX value.
        try:
            if not checksum_ok(h):
                raise self._corrupt("bad header checksum")
            typ = h[156:157]
            size = parse_number(h[124:136])
            if typ in _META_TYPES:
                if not 0 <= size <= MAX_META:
                    raise self._corrupt(f"an oversized extended header ({size} bytes)")
                self._meta = bytearray()
                self._meta_type = typ
            else:
                size, entry = self._on_entry_header(h, typ, size)
                if size < 0:
                    raise self._corrupt("a negative size")
        except ValueError as e:
            raise self._corrupt(f"unreadable header field: {e}") from None
        self._left = size
        self._pad = -size % BLOCK
        if entry is not None:
            # outside the try: a consumer's own ValueError is no corrupt header
            if entry.kind == b"0" and entry.pax.get(b"GNU.sparse.major") == b"1":
                self._entry, self._map = entry, bytearray()
            else:
                self._begin(entry)
        if not size:
            self._end_member()

    def _on_entry_header(self, h: bytes, typ: bytes, size: int) -> tuple[int, Entry | None]:
        pax = {**self._gpax, **self._pax} if self._gpax else self._pax
        self._pax = {}
        name = _cstr(h[0:100])
        if h[345] and h[257:265] == _USTAR:
            name = _cstr(h[345:500]) + b"/" + name
        if self._longname is not None:
            name, self._longname = self._longname, None
        if self._longlink is not None:
            link, self._longlink = self._longlink, None
        else:
            link = _cstr(h[157:257])
        if pax:
            # GNU sparse (the direct source's sparse files) keeps the real name here
            name = pax.get(b"GNU.sparse.name") or pax.get(b"path", name)
            link = pax.get(b"linkpath", link)
            if b"size" in pax:
                size = int(pax[b"size"])
        if typ in _NO_DATA_TYPES:
            size = 0
        raw_name, raw_link = name, link
        name = norm(name)
        # ".." would climb out of the root after the prefix check; a hardlink's target
        # must be inside too, or the engine links to a file of the helper's own tree.
        outside = None
        if self._root is not None:
            root = self._root
            if _outside(name, root):
                outside = name
            elif typ == b"1" and _outside(norm(link), root):
                outside = norm(link)
        if outside is not None:
            raise IntegrityError(
                f"{self._what} holds an entry outside its root '{root.decode()}/': "
                f"{outside.decode(errors='replace')!r}",
                hint="the archive was not made by volbak from this volume (or by an engine "
                "that names entries differently); it is not restored",
            )
        self.entries += 1
        kind = b"0" if typ in _FILE_TYPES else typ
        sparse = kind == b"0" and pax.get(b"GNU.sparse.major") == b"1"
        # A sparse file counts (and digests) by its content, holes read as zeros, so a
        # copy written densely (through the archive API) compares equal.
        real = int(pax.get(b"GNU.sparse.realsize", size)) if sparse else size
        if kind == b"0":
            self.file_bytes += real
        if self._digest is None and self.on_entry is None:
            return size, None
        mtime = int(pax[b"mtime"].partition(b".")[0]) if b"mtime" in pax \
            else parse_number(h[136:148])
        uid = int(pax[b"uid"]) if b"uid" in pax else parse_number(h[108:116])
        gid = int(pax[b"gid"]) if b"gid" in pax else parse_number(h[116:124])
        device = (parse_number(h[329:337]), parse_number(h[337:345])) \
            if typ in (b"3", b"4") else (0, 0)
        if kind == b"1":
            link = norm(link)
        elif kind != b"2" and b"linkpath" not in pax:
            link = b""
        entry = Entry(name, kind, parse_number(h[100:108]) & 0o7777, uid, gid, size, mtime,
                      link, device, pax)
        entry.realsize, entry.payload = real, size
        if self.on_entry is not None:
            entry.path, entry.linkpath = raw_name, raw_link
            entry.mtime_ns = parse_time_ns(pax[b"mtime"]) if b"mtime" in pax \
                else mtime * 10**9
            if not sparse and kind == b"0" and not pax.keys() <= PLAIN_PAX:
                old = _sparse_01(pax)
                if old is not None:
                    entry.sparse, entry.realsize = old
        if self._digest is not None:
            if self.entries % SEGMENT == 1 and self.entries > 1:
                self.marks.append(name)
            self.links += kind == b"1"
            self._record, attrs = digest_record(name, kind, entry.mode, uid, gid, real, mtime,
                                                link, device, pax, self.owners,
                                                self._all_xattrs)
            self.attr_entries += attrs
        return size, entry

    def _begin(self, entry: Entry) -> None:
        """The entry's header (and sparse map) is read: its data comes next."""
        if self.on_entry is not None:
            self._sink = self.on_entry(entry)
        if self._digest is not None:
            if entry.sparse is not None and entry.pax.get(b"GNU.sparse.major") == b"1":
                self._content = SparseHash(entry.realsize, entry.sparse)
            elif self._sink is not None and self._sink.compares:
                self._content = _Compared
            elif inline(entry.size):
                self._digest.begin(self._record, entry.size)  # type: ignore[arg-type]
                self._content = self._digest
            else:
                self._content = _Behind(self) if self.on_entry is not None and \
                    entry.size >= BIG_FILE else blake3.blake3()

    def _map_piece(self, piece: memoryview) -> None:
        """Collect a GNU sparse 1.0 map from the start of the entry's data; once it is
        complete, the entry begins and the rest of the data goes on as usual."""
        assert self._map is not None and self._entry is not None
        self._map += piece
        if len(self._map) > MAX_META:
            raise self._corrupt(f"entry {self._entry.name!r} has an oversized sparse map")
        parsed = parse_sparse_map(self._map)
        if parsed is None or len(self._map) < parsed[1]:
            return
        segments, map_len = parsed
        entry, rest = self._entry, memoryview(bytes(self._map))[map_len:]
        self._map = self._entry = None
        entry.sparse = segments
        entry.payload = entry.size - map_len
        self._begin(entry)
        if len(rest):
            if self._content is not None:
                self._content.update(rest)
            if self._sink is not None:
                self._sink.write(rest)

    def _end_member(self) -> None:
        if self._meta is not None:
            data = bytes(self._meta)
            self._meta = None
            if self._meta_type == b"x":
                self._pax = pax_records(data)
            elif self._meta_type == b"g":
                self._gpax.update(pax_records(data))
            elif self._meta_type == b"L":
                self._longname = _cstr(data)
            elif self._meta_type == b"K":
                self._longlink = _cstr(data)
            return
        if self._map is not None:
            assert self._entry is not None
            raise self._corrupt(f"entry {self._entry.name!r} has a bad sparse map")
        if self._record is not None and self._digest is not None:
            if self._content is self._digest:
                self._digest.end()
            else:
                self._digest.add(self._record, self._content.hexdigest())
            self._record = None
            self._content = None
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.close()

    def check_complete(self) -> None:
        if not self.ended or self._left or self._meta is not None:
            raise IntegrityError(
                f"{self._what} ends early: the tar stream has no end marker (truncated)",
                hint="the stored backup is incomplete or the transfer broke off; restore an "
                "older backup or run it again",
            )

    def hexdigest(self) -> str:
        """A TreeDigest of one canonical record per entry: path, type, permission bits,
        uid, gid, size, mtime (seconds), link target, device numbers, exported xattrs and
        the content (up to ``INLINE`` bytes as it is, else its BLAKE3), in archive order.
        User/group names, atime/ctime and header encoding are left out, so two engines'
        archives of one tree agree."""
        assert self._digest is not None, "TarParser(digest=True) needed"
        return self._digest.hexdigest()


class Renamed:
    """A tar stream with every entry renamed by ``rename`` (names and hardlink
    targets), re-encoded as PAX; for engines whose archive API names entries
    differently (Podman: "/a" instead of "data/a"). Read it like the source:
    ``read(n)``. It runs Python's tarfile in a thread with a bounded queue, so memory
    stays flat whatever the file sizes."""

    def __init__(self, read: Callable[[int], bytes], rename: Callable[[str], str],
                 owners: Callable[[Any], None] | None = None,
                 whole_seconds: bool = False) -> None:
        """``whole_seconds``: mtimes truncated to whole seconds (as dockerd's archive
        API reads them and the digest counts them)."""
        self._whole_seconds = whole_seconds
        self._q: Any = queue.Queue(8)
        self._buf = b""
        self._done = False
        self._stop = threading.Event()
        self._read, self._rename, self._owners = read, rename, owners
        self._t = threading.Thread(target=self._run, name="volbak-rename", daemon=True)
        self._t.start()

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise EOFError("reader closed")

    def _run(self) -> None:
        outer = self

        class _In:
            def read(self, n: int = -1) -> bytes:
                return outer._read(n if n > 0 else 2**20)

        class _Out:
            def write(self, data: bytes) -> int:
                if data:
                    outer._put(bytes(data))
                return len(data)

        try:
            with tarfile.open(fileobj=_In(), mode="r|") as tin, \
                    tarfile.open(fileobj=_Out(), mode="w|", format=tarfile.PAX_FORMAT) as tout:
                for m in tin:
                    # tarfile writes a member's old PAX path/linkpath over its new name
                    m.pax_headers.pop("path", None)
                    m.pax_headers.pop("linkpath", None)
                    m.name = self._rename(m.name)
                    if m.islnk():
                        m.linkname = self._rename(m.linkname)
                    if self._owners:
                        self._owners(m)
                    if self._whole_seconds and "mtime" in m.pax_headers:
                        # from the text: tarfile's float makes .999999999 the next second
                        m.mtime = int(m.pax_headers.pop("mtime").split(".")[0])
                    tout.addfile(m, tin.extractfile(m) if m.isreg() else None)
            self._put(None)
        except BaseException as e:
            if isinstance(e, tarfile.TarError):
                e = IntegrityError(f"the tar stream cannot be re-read: {e}")
            with contextlib.suppress(EOFError):
                self._put(e)

    def read(self, n: int) -> bytes:
        while len(self._buf) < n and not self._done:
            item = self._q.get()
            if item is None:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._buf += item
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def close(self) -> None:
        self._stop.set()
        self._t.join(timeout=5)


def under_root(root: str) -> Callable[[str], str]:
    """Podman's archive names ("", "/a") -> volbak's ("data", "data/a")."""
    def rename(name: str) -> str:
        rest = name.strip("/")
        while rest.startswith("./"):
            rest = rest[2:]
        return f"{root}/{rest}" if rest and rest != "." else root
    return rename


def relative_to(root: str) -> Callable[[str], str]:
    """volbak's names ("data", "data/a") -> names relative to the mount (".", "a")."""
    def rename(name: str) -> str:
        rest = name.strip("/")
        if rest == root:
            return "."
        return rest[len(root) + 1:] if rest.startswith(root + "/") else rest
    return rename
