"""Leaving paths out of a tar stream as it goes by (``backup --exclude``).

Entries are copied through unchanged, or dropped whole: a dropped entry takes its PAX
or GNU long-name headers and its data with it; the end marker and anything after it pass
unchanged. File data of kept entries is passed on as it arrives, never buffered whole.

Patterns use shell wildcards (``fnmatch``) against paths relative to the volume root:

- without a '/', a pattern matches the name of an entry or of any directory above it,
  anywhere in the tree (``cache`` leaves out every directory called cache, ``*.tmp``
  every file ending in .tmp) - like ``tar --exclude``;
- with a '/', it is anchored at the volume root (``var/log`` or ``/var/log``) and leaves
  out that path and everything below it.

The volume root itself is never left out. A hard link to a file that is left out is
left out too (the archive could not be restored otherwise).

This filter serves the archive API's stream. The direct source applies the same Matcher
during its walk instead (``DirectSource.exclude``): it need not enter what is left out,
and the dedup file cache needs the stream's offsets to be the source's.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

from .tar import _META_TYPES, _NO_DATA_TYPES, BLOCK, _cstr, norm, parse_number, pax_records

Read = Callable[[int], bytes]


class Matcher:
    def __init__(self, patterns: Sequence[str]) -> None:
        self.anywhere = [p for p in patterns if "/" not in p.strip("/")]
        self.anchored = [p.strip("/") for p in patterns if "/" in p.strip("/")]

    def __call__(self, rel: str) -> bool:
        parts = rel.split("/")
        for i in range(len(parts)):
            if any(fnmatch.fnmatchcase(parts[i], p) for p in self.anywhere):
                return True
            head = "/".join(parts[: i + 1])
            if any(fnmatch.fnmatchcase(head, p) for p in self.anchored):
                return True
        return False

    def last(self, rel: str) -> bool:
        """``self(rel)`` for a walker that tested every directory above ``rel`` and did
        not enter those that matched: only the last name and the whole path are left."""
        name = rel.rpartition("/")[2]
        return (any(fnmatch.fnmatchcase(name, p) for p in self.anywhere)
                or any(fnmatch.fnmatchcase(rel, p) for p in self.anchored))


class ExcludeFilter:
    """``read(n)`` of the filtered stream, over the unfiltered stream's ``read``."""

    def __init__(self, read: Read, patterns: Sequence[str], root: str = "data") -> None:
        self._src = read
        self._match = Matcher(patterns)
        self._root = root.strip("/").encode()
        self._buf = bytearray()
        self._eof = False
        self._pending = bytearray()  # meta headers (and their data) of the next entry
        self._pax: dict[bytes, bytes] = {}
        self._longname: bytes | None = None
        self._longlink: bytes | None = None
        self._copy = 0  # data bytes of the current kept entry still to copy
        self._skip = 0  # bytes of the current dropped entry still to skip
        self._through = False  # after the end marker: copy everything
        self._dropped: set[bytes] = set()
        self.excluded = 0  # entries left out

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n and not self._eof:
            data = self._src(max(n - len(self._buf), 1 << 16))
            if not data:
                self._eof = True
            else:
                self._buf += data
        return len(self._buf) >= n

    def _take(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _rel(self, name: bytes) -> str | None:
        name = norm(name)
        if name == self._root or name == b".":
            return None
        if name.startswith(self._root + b"/"):
            name = name[len(self._root) + 1:]
        return name.decode("utf-8", "surrogateescape")

    def read(self, n: int) -> bytes:
        out = bytearray()
        while not out:
            if self._through:
                if not self._fill(1):
                    break
                out += self._take(len(self._buf))
            elif self._copy:
                if not self._fill(1):
                    break  # truncated: the tar parser after us says so
                k = min(self._copy, len(self._buf), max(n, BLOCK))
                out += self._take(k)
                self._copy -= k
            elif self._skip:
                if not self._fill(1):
                    break
                k = min(self._skip, len(self._buf))
                del self._buf[:k]
                self._skip -= k
            elif self._fill(BLOCK):
                out += self._header()
            elif self._buf:
                out += self._take(len(self._buf))  # a truncated tail, passed on as it is
            else:
                break
        return bytes(out)

    def _header(self) -> bytes:
        header = self._take(BLOCK)
        if header == bytes(BLOCK):
            self._through = True
            return bytes(self._pending) + header
        kind = header[156:157]
        size = parse_number(header[124:136])
        padded = size + (-size % BLOCK)
        if kind in _META_TYPES:
            self._fill(padded)
            data = self._take(padded)
            if kind == b"g":
                return header + data  # global: applies to every entry, keep it
            self._pending += header + data
            if kind == b"x":
                self._pax.update(pax_records(data[:size]))
            elif kind == b"L":
                self._longname = _cstr(data[:size])
            elif kind == b"K":
                self._longlink = _cstr(data[:size])
            return b""
        if b"size" in self._pax:
            size = int(self._pax[b"size"])
        if kind in _NO_DATA_TYPES:
            size = 0
        padded = size + (-size % BLOCK)
        # a GNU sparse 1.0 entry's header names dir/GNUSparseFile.0/file; its real name
        # is what the patterns and later hard links refer to
        name = self._pax.get(b"GNU.sparse.name") or self._pax.get(b"path") or self._longname
        if name is None:
            name = _cstr(header[0:100])
            if header[257:263] == b"ustar\x00" and header[345:500].strip(b"\0"):
                name = _cstr(header[345:500]) + b"/" + name
        link = self._pax.get(b"linkpath") or self._longlink or _cstr(header[157:257])
        pending = bytes(self._pending)
        self._pending.clear()
        self._pax, self._longname, self._longlink = {}, None, None
        rel = self._rel(name)
        drop = rel is not None and self._match(rel)
        if not drop and kind == b"1" and norm(link) in self._dropped:
            drop = True
        if drop:
            self._dropped.add(norm(name))
            self.excluded += 1
            self._skip = padded
            return b""
        self._copy = padded
        return pending + header
