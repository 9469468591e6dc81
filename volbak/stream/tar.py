"""The one tar parser: watch a tar stream go by without copying it.

Feed it the stream in chunks of any size. It always counts entries and file bytes,
checks every header's checksum, knows whether the archive ended with its end marker,
and (with ``root``) refuses entries outside the archive's root directory. With
``digest=True`` it also computes a canonical per-entry digest (see ``hexdigest``), which
costs a sha256 pass over the file contents; without it file data is skipped by
arithmetic, so the cost per MiB of payload is near zero. ``on_entry`` sees each entry's
parsed header (for path checks on the direct restore path).

Understands ustar, GNU long names (L/K), PAX headers (x/g, including the ``size``
record Go's tar writer uses for files over 8 GiB) and base-256 numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import queue
import tarfile
import threading
from collections.abc import Callable
from typing import Any

from ..errors import IntegrityError

BLOCK = 512
_META_TYPES = {b"x", b"g", b"L", b"K"}
_FILE_TYPES = {b"0", b"\0", b"7"}
_NO_DATA_TYPES = {b"1", b"2", b"3", b"4", b"5", b"6"}
_USTAR = b"ustar\x0000"


def parse_number(field: bytes) -> int:
    if field and field[0] == 0xFF:  # base-256, negative (GNU: mtimes before 1970)
        return int.from_bytes(field, "big", signed=True)
    if field and field[0] & 0x80:  # base-256 (GNU/star) for huge values
        n = int.from_bytes(field, "big")
        return n - (1 << (8 * len(field) - 1))
    text = field.split(b"\0", 1)[0].strip(b" \0")
    return int(text, 8) if text else 0


def checksum_ok(header: bytes) -> bool:
    want = parse_number(header[148:156])
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


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


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


_ZEROS = bytes(2**20)


class _SparseHash:
    """sha256 of a GNU sparse 1.0 file's logical content, fed its stored data: the map
    (decimal lines, padded to a block), then the data segments; holes hash as zeros."""

    def __init__(self, realsize: int) -> None:
        self._h = hashlib.sha256()
        self._real = realsize
        self._map = bytearray()
        self._segments: list[tuple[int, int]] | None = None
        self._map_len = 0
        self._pos = 0  # logical offset hashed so far
        self._seg = 0  # index of the segment being fed
        self._seg_left = 0
        self.done = False

    def _zeros(self, upto: int) -> None:
        while self._pos < upto:
            n = min(upto - self._pos, len(_ZEROS))
            self._h.update(_ZEROS[:n])
            self._pos += n

    def _parse_map(self) -> bool:
        lines = bytes(self._map).split(b"\n")
        if len(lines) < 2:
            return False
        try:
            count = int(lines[0])
            if len(lines) < 2 + 2 * count:
                return False
            values = [int(x) for x in lines[1 : 1 + 2 * count]]
        except ValueError:
            raise IntegrityError("a sparse file's map in the tar stream is corrupt") from None
        text = sum(len(x) + 1 for x in lines[: 1 + 2 * count])
        self._map_len = text + (-text % BLOCK)
        self._segments = list(zip(values[::2], values[1::2], strict=True))
        return True

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._segments is None:
            self._map += view
            if not self._parse_map():
                return
            view = memoryview(bytes(self._map))[self._map_len:]
            self._map = bytearray()
            self._next_segment()
        while len(view) and self._segments is not None and self._seg_left:
            take = min(self._seg_left, len(view))
            self._h.update(view[:take])
            self._pos += take
            self._seg_left -= take
            view = view[take:]
            if not self._seg_left:
                self._seg += 1
                self._next_segment()

    def _next_segment(self) -> None:
        assert self._segments is not None
        while self._seg < len(self._segments):
            offset, size = self._segments[self._seg]
            self._zeros(offset)
            if size:
                self._seg_left = size
                return
            self._seg += 1
        self._zeros(self._real)
        self.done = True

    def hexdigest(self) -> str:
        if not self.done and self._segments is not None:
            self._zeros(self._real)
        return self._h.hexdigest()


class TarParser:
    """See the module docstring. Read the counters after feeding."""

    def __init__(self, *, digest: bool = False, root: str | None = None,
                 on_entry: Callable[[Entry], None] | None = None,
                 what: str = "the archive", owners: bool = True,
                 all_xattrs: bool = True) -> None:
        self.entries = 0
        self.file_bytes = 0
        self.tar_bytes = 0
        self.attr_entries = 0  # entries with xattrs/ACLs beyond a capability (digest mode)
        self.ended = False  # saw the end-of-archive zero block
        self._digest = hashlib.sha256() if digest else None
        self._root = root.strip("/").encode() if root is not None else None
        self._on_entry = on_entry
        self._what = what
        self._owners = owners  # digest uid/gid (not where an engine replaces them)
        # all xattrs and ACLs, or only what the archive API can write (a capability)
        self._all_xattrs = all_xattrs
        self._header = bytearray()
        self._left = 0  # data bytes of the current member still to come
        self._pad = 0  # then padding bytes to skip
        self._meta: bytearray | None = None  # collecting a PAX/GNU header's data
        self._meta_type = b""
        self._content: Any = None  # sha256 of the current file's data (digest mode)
        self._finished: Any = None
        self._record: tuple[Any, ...] | None = None
        self._pax: dict[bytes, bytes] = {}
        self._gpax: dict[bytes, bytes] = {}
        self._longname: bytes | None = None
        self._longlink: bytes | None = None

    def feed(self, chunk: bytes | memoryview) -> None:
        self.tar_bytes += len(chunk)
        view = memoryview(chunk)
        pos, n = 0, len(view)
        while pos < n and not self.ended:
            if self._left:
                take = min(self._left, n - pos)
                if self._meta is not None:
                    self._meta += view[pos : pos + take]
                elif self._content is not None:
                    self._content.update(view[pos : pos + take])
                    if getattr(self._content, "done", False):
                        self._finished, self._content = self._content, None
                self._left -= take
                pos += take
                if not self._left:
                    self._end_member()
                continue
            if self._pad:
                take = min(self._pad, n - pos)
                self._pad -= take
                pos += take
                continue
            take = min(BLOCK - len(self._header), n - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) == BLOCK:
                header = bytes(self._header)
                self._header.clear()
                self._on_header(header)

    def skip(self, n: int) -> None:
        """Count ``n`` bytes that are exactly the current file's data and padding
        without seeing them (the dedup file cache reuses an unchanged file's chunks
        without reading it). Only where the data is not needed: not in digest mode."""
        if (self._digest is not None or self._on_entry is not None or self._meta is not None
                or self._header or not self._left or self._left + self._pad != n):
            raise IntegrityError(
                "internal error: the tar stream skipped data it cannot account for",
                hint="run the backup again with --no-cache")
        self.tar_bytes += n
        self._left = self._pad = 0
        self._end_member()

    def _corrupt(self, why: str) -> IntegrityError:
        return IntegrityError(
            f"the tar stream of {self._what} is corrupt ({why})",
            hint="the stored backup or the transfer is damaged; restore an older backup "
            "or run it again",
        )

    def _on_header(self, h: bytes) -> None:
        if h == bytes(BLOCK):
            self.ended = True
            return
        # A damaged header must be an IntegrityError, not the ValueError of a
        # non-octal field or PAX value.
        try:
            if not checksum_ok(h):
                raise self._corrupt("bad header checksum")
            typ = h[156:157]
            size = parse_number(h[124:136])
            if typ in _META_TYPES:
                self._meta = bytearray()
                self._meta_type = typ
            else:
                size = self._on_entry_header(h, typ, size)
        except ValueError as e:
            raise self._corrupt(f"unreadable header field: {e}") from None
        self._left = size
        self._pad = -size % BLOCK
        if not size:
            self._end_member()

    def _on_entry_header(self, h: bytes, typ: bytes, size: int) -> int:
        pax = {**self._gpax, **self._pax} if self._gpax else self._pax
        self._pax = {}
        name = _cstr(h[0:100])
        if h[257:265] == _USTAR and h[345] != 0:
            name = _cstr(h[345:500]) + b"/" + name
        if self._longname is not None:
            name = self._longname
        link = self._longlink if self._longlink is not None else _cstr(h[157:257])
        self._longname = self._longlink = None
        if pax:
            # GNU sparse 1.0 (the direct source's sparse files) keeps the real name here
            name = pax.get(b"GNU.sparse.name") or pax.get(b"path", name)
            link = pax.get(b"linkpath", link)
            if b"size" in pax:
                size = int(pax[b"size"])
        if typ in _NO_DATA_TYPES:
            size = 0
        name = norm(name)
        # ".." would climb out of the root after the prefix check; a hardlink's target
        # must be inside too, or the engine links to a file of the helper's own tree.
        outside = None
        if self._root is not None:
            root = self._root
            outside = next((p for p in (name, norm(link) if typ == b"1" else root)
                            if (p != root and not p.startswith(root + b"/"))
                            or b".." in p.split(b"/")), None)
        if outside is not None:
            raise IntegrityError(
                f"{self._what} holds an entry outside its root '{root.decode()}/': "
                f"{outside.decode(errors='replace')!r}",
                hint="the archive was not made by volbak from this volume (or by an engine "
                "that names entries differently); it is not restored",
            )
        self.entries += 1
        kind = b"0" if typ in _FILE_TYPES else typ
        if kind == b"0":
            self.file_bytes += size
        if self._digest is None and self._on_entry is None:
            return size
        mtime = parse_number(h[136:148])
        if b"mtime" in pax:
            mtime = int(pax[b"mtime"].split(b".")[0])
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
        if self._on_entry is not None:
            self._on_entry(entry)
        if self._digest is not None:
            # xattrs and POSIX ACLs, where the stream carries them (the direct source)
            if any(k.startswith((b"SCHILY.xattr.", b"SCHILY.acl.")) and
                   k != b"SCHILY.xattr.security.capability" for k in pax):
                self.attr_entries += 1
            kept = (b"SCHILY.xattr.", b"SCHILY.acl.") if self._all_xattrs \
                else (b"SCHILY.xattr.security.capability",)
            xattrs = sorted((k.split(b".", 1)[1], v) for k, v in pax.items()
                            if k.startswith(kept))
            owner = (uid, gid) if self._owners else ()
            sparse = kind == b"0" and pax.get(b"GNU.sparse.major") == b"1"
            # A sparse file is digested by its content, holes read as zeros, so a copy
            # written densely (through the archive API) compares equal.
            real = int(pax.get(b"GNU.sparse.realsize", size)) if sparse else size
            self._record = (name, kind, entry.mode, *owner, real, mtime, link, device, xattrs)
            self._content = _SparseHash(real) if sparse else hashlib.sha256()
        return size

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
        if self._record is not None and self._digest is not None:
            content = self._content or self._finished
            record = repr((*self._record, content.hexdigest())).encode()
            self._digest.update(len(record).to_bytes(4, "big") + record)
            self._record = None
            self._content = None

    def check_complete(self) -> None:
        if not self.ended or self._left or self._meta is not None:
            raise IntegrityError(
                f"{self._what} ends early: the tar stream has no end marker (truncated)",
                hint="the stored backup is incomplete or the transfer broke off; restore an "
                "older backup or run it again",
            )

    def hexdigest(self) -> str:
        """sha256 over one canonical record per entry: path, type, permission bits, uid,
        gid, size, mtime (seconds), link target, device numbers, exported xattrs and the
        sha256 of the content, in archive order. User/group names, atime/ctime and
        header encoding are left out, so two engines' archives of one tree agree."""
        assert self._digest is not None, "TarParser(digest=True) needed"
        return self._digest.hexdigest()


class Renamed:
    """A tar stream with every entry renamed by ``rename`` (names and hardlink
    targets), re-encoded as PAX; for engines whose archive API names entries
    differently (Podman: "/a" instead of "data/a"). Read it like the source:
    ``read(n)``. It runs Python's tarfile in a thread with a bounded queue, so memory
    stays flat whatever the file sizes."""

    def __init__(self, read: Callable[[int], bytes], rename: Callable[[str], str],
                 owners: Callable[[Any], None] | None = None) -> None:
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
