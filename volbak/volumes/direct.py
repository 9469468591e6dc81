"""A volume's directory on the engine's host as a tar stream, and back.

``DirectSource`` walks the volume's ``Mountpoint`` and produces the same layout as
``GET /containers/{id}/archive?path=/data`` (first the root ``data/``, carrying the
volume root's own mode, owner and mtime, then ``data/...`` depth-first, names sorted
bytewise, directories with a trailing slash, the first name of a hardlinked file as the
file and later names as links) but keeps everything the archive API drops: xattrs in
every namespace, POSIX ACLs (access and default, numeric ids), sparse files (GNU sparse
1.0), nanosecond mtimes. The stream is plain PAX, so ``zstd -d | tar x --xattrs
--xattrs-include='*' --acls`` restores it without volbak.

``DirectTarget`` extracts such a stream (or one from the archive API) into an empty
volume directory. Every path is resolved one component at a time below the target's
directory handle with ``O_NOFOLLOW``, so no entry can reach outside the target: absolute
names, ``..``, names outside the archive root, paths through a symlink the archive made
and hardlinks to such places are refused with ``IntegrityError`` naming the entry.

Why a Python writer and reader instead of driving GNU tar. Measured on this machine (2
cores, ext4, page cache warm, other test suites running: load 5-15, so wall times are
noisy and CPU seconds are the steadier figure):

==========================================  ======================  =====================
                                            1 GiB, one file         50,000 files, 192 MB
==========================================  ======================  =====================
GNU tar 1.34 ``-c --format=posix --xattrs
--acls --sparse --sort=name`` into a pipe   1030-1590 MB/s          0.48-0.98 s wall,
read by Python                                                      0.40-0.55 s CPU
DirectSource.read(1 MiB)                    1230-2160 MB/s          0.94-1.31 s wall,
                                                                    1.38-1.71 s CPU
GNU tar ``-x --xattrs --acls -p``           (not measured)          22-46 s wall, 7.5-8 s
                                                                    CPU
DirectTarget.write                          (~0.44 s, bench)        14-56 s wall, 8.6-10
                                                                    s CPU
==========================================  ======================  =====================

Large files: the Python source is faster (one copy from the page cache, no pipe).
Small files: GNU tar spends about 9 us of CPU per file, the Python source about 29 us
(20 of them in Python). Extraction costs the same either way: creating inodes
dominates. The Python writer is kept because it does what a tar subprocess cannot:
ACLs with numeric ids (GNU tar 1.34 writes user *names* even with ``--numeric-owner``);
small files read whole and re-read until their stat is unchanged, so each is consistent
in itself (tar pads or truncates and says so on stderr); warnings as data instead of
stderr text to parse; and one place per file where the dedup file cache can reuse the
chunk ids of an unchanged file without reading it, which a tar subprocess cannot skip.
"""

from __future__ import annotations

import atexit
import base64
import bisect
import collections
import contextlib
import dataclasses
import errno
import fcntl
import gc
import os
import pickle
import signal
import stat
import struct
import traceback
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import blake3

from ..errors import IntegrityError, NotFoundError, VolbakError
from ..stream.tar import (
    BIG_FILE,
    COMPARED,
    INLINE,
    PLAIN_PAX,
    SEGMENT,
    Entry,
    SparseHash,
    TarParser,
    TreeDigest,
    digest_record,
    inline,
    norm,
    parse_sparse_map,
    parse_time_ns,
)
from ..util.host import IOV_MAX, WRITE_MAX, write_all, writev_all
from ..util.signals import deferred
from . import FORK_ENTRIES, many_small_files, tarfmt
from .tarfmt import BLOCK

CHUNK = 2**20
SMALL = 2**20  # files up to this size are read whole, then checked unchanged
RETRIES = 3  # re-reads of a small file that changed while it was read
MAX_WARNINGS = 200  # messages kept; counts go on

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def show(name: bytes) -> str:
    """A path for messages: undecodable bytes and control characters escaped."""
    text = name.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass
class Report:
    """What a direct read or write noticed without failing: the caller records it."""

    warnings: list[str] = field(default_factory=list)
    warning_count: int = 0
    changed: int = 0  # files that changed while they were read
    excluded: int = 0  # names --exclude left out where the walk met them, and hard links
    skipped: int = 0  # sockets and other entries tar cannot hold, other filesystems
    entries: int = 0
    file_bytes: int = 0

    def warn(self, message: str) -> None:
        self.warning_count += 1
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)


def _proc(dfd: int, name: bytes) -> bytes:
    """A path naming ``name`` inside the open directory ``dfd`` (for the xattr calls,
    which take no dir_fd); its last component is never followed by the l* calls."""
    return b"/proc/self/fd/%d/%s" % (dfd, name)


# ------------------------------------------------------------------ source


class DirectSource:
    """The tree at ``path`` as a tar stream: ``read(n)`` up to n bytes (b"" at the end),
    ``close()``. Memory stays bounded: one file piece (``CHUNK``) and one directory
    listing per level of depth at a time.

    ``report`` collects warnings (sockets skipped, other filesystems not entered, files
    that changed or vanished while read). Errors that make the backup incomplete
    (unreadable entries, the directory itself disappearing) raise."""

    def __init__(self, path: str | bytes, root: str = "data") -> None:
        self.path = os.fsencode(path)
        self.root = os.fsencode(root).strip(b"/")
        self.report = Report()
        try:
            self._rootfd = os.open(self.path, _O_DIR)
        except FileNotFoundError:
            raise NotFoundError(f"the volume's directory {show(self.path)} does not exist",
                                hint="is the volume local to this host? try --source api"
                                ) from None
        except OSError as e:
            raise VolbakError(
                f"cannot open the volume's directory {show(self.path)}: {e.strerror}",
                hint="run volbak as root (or the engine's user), or use --source api",
            ) from None
        self._root_st = os.fstat(self._rootfd)
        self._dev = self._root_st.st_dev
        self._links: dict[tuple[int, int], list] = {}  # (dev, ino) -> [name, links left]
        self._fds: list[int] = []
        self._gen = self._generate()
        self._rest: bytes | memoryview = b""
        self._failed: BaseException | None = None
        self._closed = False
        self._produced = 0  # stream bytes handed out by the generator so far
        self._cache: Any = None
        self._rereads: Rereads | None = None
        self._walker: _Walker | None = None
        self._exclude: Any = None  # stream.exclude.Matcher
        self._unindexed: list[bytes] = []  # excluded names not yet looked at for links
        self._gone: set[tuple[int, int]] = set()  # inodes whose first name was excluded
        self._head = tarfmt.header  # or a WalkDigest's, which records instead of writing
        self._walk_digest: WalkDigest | None = None
        self._split = False  # a part of a split digest: a file of several names ends it
        self._stopped = False  # the walk came to its stop (split_digest)

    def use_cache(self, session: Any) -> None:
        """Take unchanged big files' data from the dedup file cache (filecache.Session)
        instead of reading them: ``read`` then returns a ``filecache.Reused`` marker, on
        its own, in place of such a file's data and padding. Only for a consumer that
        understands it (the dedup writer), and before the first ``read``."""
        self._cache = session

    def many_small_files(self) -> bool:
        """Whether the tree starts like many small files (``volumes.many_small_files``
        of the regular files among its first FORK_ENTRIES * 2 entries, breadth first:
        names and sizes only, a few us each). Only a guess, for ``forked``."""
        want = 2 * FORK_ENTRIES
        seen = files = size = 0
        dirs = [self._rootfd]
        try:
            while dirs and seen < want:
                dfd = dirs.pop(0)
                try:
                    with os.scandir(dfd) as it:
                        for e in it:
                            seen += 1
                            if e.is_dir(follow_symlinks=False) and len(dirs) < 64:
                                dirs.append(os.open(e.name, _O_DIR, dir_fd=dfd))
                            elif e.is_file(follow_symlinks=False):
                                files += 1
                                size += e.stat(follow_symlinks=False).st_size
                            if seen >= want:
                                break
                finally:
                    if dfd != self._rootfd:
                        os.close(dfd)
        except OSError:
            return False
        finally:
            for dfd in dirs:
                if dfd != self._rootfd:
                    os.close(dfd)
        return many_small_files(files, size)

    def forked(self) -> Callable[[int], bytes]:
        """``read``, the walk done by a forked child (see _Walker) where there are two
        cores or more; before the first ``read``, and not with the file cache (its
        markers are no bytes). ``report`` is complete once it returned b""."""
        assert self._cache is None and not self._produced
        if _cores() < 2:
            return self.read
        self._walker = _Walker(self)
        return self._walker.read

    def _serve_walk(self, fd: int) -> Report:
        """The forked child's side of ``_Walker``: the walk's pieces, about a CHUNK at
        a time in one writev, not joined first as ``read`` joins them (50,000 small
        files: a tenth of the child's lines, and a copy of every byte, spared)."""
        batch: list[bytes | memoryview] = []
        size = 0
        for piece in self._gen:
            batch.append(piece)
            size += len(piece)
            if size >= CHUNK or len(batch) >= IOV_MAX:
                writev_all(fd, batch)
                batch, size = [], 0
        writev_all(fd, batch)
        return self.report

    def use_rereads(self, rereads: Rereads | None) -> None:
        """For ``digest``: take tar.COMPARED for the content of a big file a
        DirectTarget read back while writing it, where it is unchanged since (see
        Rereads), instead of reading it again."""
        self._rereads = rereads

    def exclude(self, patterns: Sequence[str]) -> None:
        """Leave out what ``backup --exclude`` leaves out, during the walk, before the
        first ``read``: the stream is then byte for byte what ``stream.exclude.
        ExcludeFilter`` makes of the full one (same Matcher, and a later name of a file
        whose first name is left out is left out too), but excluded directories are not
        entered and excluded files not read, and the stream's offsets stay the file
        cache's (a filter after the source would shift them under its markers)."""
        from ..stream.exclude import Matcher

        self._exclude = Matcher(patterns) if patterns else None

    # -- the stream

    def read(self, n: int = CHUNK) -> bytes:
        pieces: list[bytes | memoryview] = []
        got = 0
        while got < n:
            piece = self._rest
            self._rest = b""
            if not piece:
                if self._failed is not None:  # a finished generator would look like EOF
                    raise self._failed
                try:
                    piece = next(self._gen, b"")
                except BaseException as e:
                    self._failed = e
                    raise
                if not piece:
                    break
                self._produced += len(piece)
            if not isinstance(piece, bytes | memoryview):  # a filecache.Reused
                if pieces:
                    self._rest = piece
                    break
                return piece  # type: ignore[return-value]
            room = n - got
            if len(piece) > room:
                view = memoryview(piece)
                piece, self._rest = view[:room], view[room:]
            pieces.append(piece)
            got += len(piece)
        if len(pieces) == 1 and isinstance(pieces[0], bytes):
            return pieces[0]
        return b"".join(pieces)

    def digest(self, *, owners: bool = True, all_xattrs: bool = True,
               progress: Callable[[int], Any] | None = None) -> WalkDigest:
        """The tree's digest, entry count and file bytes, equal to a digesting
        TarParser's over the stream ``read`` would give (``stream.tar.digest_record``),
        with no stream between them: read-back after a direct restore (50,000 small
        files: 0.6 s against 1.4 s for the walk and a parse of its stream). Instead of
        ``read``, not after it. ``tree_digest`` reads big trees in two parts at once."""
        return self._digest(WalkDigest(owners, all_xattrs), self._gen, progress)

    def _digest(self, walk: WalkDigest, gen: Iterator[bytes],
                progress: Callable[[int], Any] | None) -> WalkDigest:
        self._walk_digest = walk
        self._head = walk.head
        done = 0
        for piece in gen:
            if piece:
                walk.update(piece)
                done += len(piece)
            elif walk.known_bytes:
                done += walk.known_bytes
                walk.known_bytes = 0
            if progress and done >= CHUNK:
                progress(done)
                done = 0
        walk.finish()
        done += walk.known_bytes
        walk.known_bytes = 0
        if progress and done:
            progress(done)
        return walk

    def split_digest(self, at: bytes, *, owners: bool, all_xattrs: bool,
                     progress: Callable[[int], Any] | None = None) -> WalkDigest | None:
        """``digest`` in two processes: this one walks the entries before ``at`` (a
        stream name, the first of a TreeDigest segment), a forked child the rest, and
        their segments join. None where the two parts cannot stand for one walk (a file
        with several names, whose first name the other part may hold; ``at`` not where
        it was; the child failed): ``digest`` on a new source then gives the answer, and
        the bytes this one showed to ``progress`` are taken back (it will show them
        again)."""
        shown = 0

        def counted(n: int) -> None:
            nonlocal shown
            shown += n
            progress(n)  # type: ignore[misc]

        got = self._split_digest(at, owners, all_xattrs, counted if progress else None)
        if got is None and shown:
            progress(-shown)  # type: ignore[misc]
        return got

    def _split_digest(self, at: bytes, owners: bool, all_xattrs: bool,
                      progress: Callable[[int], Any] | None) -> WalkDigest | None:
        if not at.startswith(self.root + b"/"):
            return None
        self._split = True

        def rest(_: int) -> tuple[int, int, int, bytes]:
            # The fork shares open file descriptions, a directory's read offset among
            # them: the two processes listing the root through one handle would each
            # see part of it (a failed split, or a wrong digest).
            self._rootfd = os.open(".", _O_DIR, dir_fd=self._rootfd)
            part = self._digest(WalkDigest(owners, all_xattrs), self._generate(start=at), None)
            return part.entries, part.file_bytes, part.attr_entries, part.tree.segments()

        child = _Forked(rest, to_child=False)
        try:
            walk = self._digest(WalkDigest(owners, all_xattrs), self._generate(stop=at),
                                progress)
            if not self._stopped or walk.tree.count % SEGMENT:
                return None
            self._check_root()
            try:
                entries, file_bytes, attrs, segments = child.result()
            except (VolbakError, RuntimeError):  # _Unsplittable there, or a failure
                return None
            walk.tree.extend(segments, entries)
            walk.entries += entries
            walk.file_bytes += file_bytes
            walk.attr_entries += attrs
            if progress:
                progress(file_bytes)
            return walk
        except _Unsplittable:
            return None
        finally:
            child.stop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._walker is not None:
            self._walker.stop()
        # A reader thread may still be inside the generator (closing on a signal):
        # it then fails on the closed handles below, which is what stopping means.
        with contextlib.suppress(ValueError):
            self._gen.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        with contextlib.suppress(OSError):
            os.close(self._rootfd)

    def __enter__(self) -> DirectSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the walk

    def _generate(self, start: bytes | None = None, stop: bytes | None = None
                  ) -> Iterator[bytes]:
        """The walk; from the entry named ``start`` on, or up to (not including) the
        one named ``stop``: the two parts of ``split_digest``."""
        if start is None:
            yield self._dir_header(self.root + b"/", self._rootfd, self._root_st)
            stack: list[tuple[int, bytes, Iterator[tuple[bytes, bool]]]] = [
                (self._rootfd, self.root + b"/", iter(self._listing(self._rootfd, self.root)))
            ]
        else:
            stack = self._stack_at(start)
        whole = self._cache is None and self._walk_digest is None
        digest = self._walk_digest
        while stack:
            dfd, prefix, names = stack[-1]
            item = next(names, None)
            if item is None:
                stack.pop()
                if dfd != self._rootfd:
                    self._fds.remove(dfd)
                    os.close(dfd)
                continue
            name, plain = item
            rel = prefix + name
            if rel == stop:
                self._stopped = True
                return
            if self._exclude is not None and self._excluded(rel):
                continue
            # Most entries are files with one name: open, fstat, read, no lstat first.
            if plain:
                if whole:
                    piece = self._whole_file(dfd, name, rel)
                    if piece is not None:
                        yield piece
                        continue
                elif digest is not None and self._digest_small(digest, dfd, name, rel):
                    yield b""  # for _digest's progress: digest.known_bytes
                    continue
                if (yield from self._plain_file(dfd, name, rel)):
                    continue
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                self.report.warn(f"{show(rel)}: vanished before it was read")
                continue
            except OSError as e:
                raise self._error(rel, e) from None
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                child = self._open_dir(dfd, name, rel, st)
                if child is None:
                    continue
                cfd, cst = child
                yield self._dir_header(rel + b"/", cfd, cst)
                if cst.st_dev != self._dev:
                    self.report.skipped += 1
                    self.report.warn(f"{show(rel)}: another filesystem is mounted here; "
                                     "its contents are not backed up")
                    self._fds.remove(cfd)
                    os.close(cfd)
                    continue
                stack.append((cfd, rel + b"/", iter(self._listing(cfd, rel))))
            elif st.st_dev != self._dev:
                self.report.skipped += 1
                self.report.warn(f"{show(rel)}: on another filesystem (a mount); skipped")
            elif stat.S_ISSOCK(mode):
                self.report.skipped += 1
                self.report.warn(f"{show(rel)}: a socket; tar cannot hold it, skipped")
            elif self._exclude is not None and self._first_name_excluded(st):
                self.report.excluded += 1  # a link to a name not archived: unrestorable
            elif link := self._hardlink(st, rel):
                self.report.entries += 1
                yield self._head(rel, tarfmt.HARDLINK, mode=stat.S_IMODE(mode),
                                 uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                                 linkname=link)
            elif stat.S_ISREG(mode):
                yield from self._file(dfd, name, rel)
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(name, dir_fd=dfd)
                except FileNotFoundError:
                    self.report.warn(f"{show(rel)}: vanished before it was read")
                    continue
                self.report.entries += 1
                yield self._head(rel, tarfmt.SYMLINK, mode=stat.S_IMODE(mode),
                                 uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                                 linkname=target, pax=self._attrs(_proc(dfd, name), rel))
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                typ = (tarfmt.CHARDEV if stat.S_ISCHR(mode) else
                       tarfmt.BLOCKDEV if stat.S_ISBLK(mode) else tarfmt.FIFO)
                dev = st.st_rdev if typ != tarfmt.FIFO else 0
                self.report.entries += 1
                yield self._head(rel, typ, mode=stat.S_IMODE(mode), uid=st.st_uid,
                                 gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                                 devmajor=os.major(dev), devminor=os.minor(dev),
                                 pax=self._attrs(_proc(dfd, name), rel))
            else:
                self.report.skipped += 1
                self.report.warn(f"{show(rel)}: an entry of unknown type; skipped")
        self._check_root()
        if self._walk_digest is None:
            yield tarfmt.END_OF_ARCHIVE

    def _stack_at(self, name: bytes) -> list[tuple[int, bytes, Iterator[tuple[bytes, bool]]]]:
        """The walk's stack of directories as it stands when entry ``name`` comes next."""
        parts = name[len(self.root) + 1:].split(b"/")
        stack = []
        dfd, prefix = self._rootfd, self.root + b"/"
        for depth, part in enumerate(parts, 1):
            listing = self._listing(dfd, prefix[:-1])
            k = bisect.bisect_left(listing, (part,))
            if k == len(listing) or listing[k][0] != part:
                raise _Unsplittable
            if depth == len(parts):  # this entry comes next; above, the one after its parent
                stack.append((dfd, prefix, iter(listing[k:])))
                return stack
            stack.append((dfd, prefix, iter(listing[k + 1:])))
            st = os.stat(part, dir_fd=dfd, follow_symlinks=False)
            child = self._open_dir(dfd, part, prefix + part, st) if stat.S_ISDIR(st.st_mode) \
                else None
            if child is None or child[1].st_dev != self._dev:
                raise _Unsplittable
            dfd, prefix = child[0], prefix + part + b"/"
        raise AssertionError("unreachable")

    def _listing(self, dfd: int, rel: bytes) -> list[tuple[bytes, bool]]:
        """(name, looks like a plain file) sorted bytewise, as dockerd's archive (Go's
        filepath.Walk) orders them. The hint comes from readdir's d_type, free."""
        try:
            with os.scandir(dfd) as it:
                return sorted((os.fsencode(e.name), e.is_file(follow_symlinks=False))
                              for e in it)
        except OSError as e:
            raise self._error(rel, e) from None

    def _open_dir(self, dfd: int, name: bytes, rel: bytes, st: os.stat_result
                  ) -> tuple[int, os.stat_result] | None:
        try:
            cfd = os.open(name, _O_DIR, dir_fd=dfd)
        except FileNotFoundError:
            self.report.warn(f"{show(rel)}: vanished before it was read")
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):  # replaced by a symlink or file
                self.report.changed += 1
                self.report.warn(f"{show(rel)}: replaced while it was read; skipped")
                return None
            raise self._error(rel, e) from None
        self._fds.append(cfd)
        return cfd, os.fstat(cfd)

    def _excluded(self, rel: bytes) -> bool:
        inner = rel[len(self.root) + 1:]
        # Every directory above was tested and not matched (a matched one is not entered).
        if not self._exclude.last(inner.decode("utf-8", "surrogateescape")):
            return False
        self.report.excluded += 1
        self._unindexed.append(inner)
        return True

    def _first_name_excluded(self, st: os.stat_result) -> bool:
        """Was an earlier name of this inode (in stream order) left out? The excluded
        names are looked at only now, when a kept name of a new multi-link inode turns
        up, so a tree without hard links never walks what it excludes."""
        if st.st_nlink < 2 or stat.S_ISDIR(st.st_mode):
            return False
        key = (st.st_dev, st.st_ino)
        if key in self._links:  # its first name was archived
            return False
        if self._unindexed:
            self._index_excluded()
        return key in self._gone

    def _index_excluded(self) -> None:
        """Note the multi-link inodes below the names excluded so far. Best effort: what
        cannot be read is passed over, and a later name of such an inode is then
        archived as a file (more than the stream filter keeps, never a broken link)."""
        pending, self._unindexed = self._unindexed, []
        for inner in pending:
            *parents, last = inner.split(b"/")
            opened: list[int] = []
            try:
                dfd = self._rootfd
                for part in parents:
                    dfd = os.open(part, _O_DIR, dir_fd=dfd)
                    opened.append(dfd)
                st = os.stat(last, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    self._note_gone(st)
                elif st.st_dev == self._dev:
                    self._index_below(last, dfd)
            except OSError:
                continue
            finally:
                for fd in opened:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _index_below(self, name: bytes, parent: int) -> None:
        # fwalk opens each directory below its parent's handle and follows no symlink;
        # what it cannot read it passes over
        for _, dirs, files, dfd in os.fwalk(name, dir_fd=parent, follow_symlinks=False):
            for f in files:
                with contextlib.suppress(OSError):
                    self._note_gone(os.stat(f, dir_fd=dfd, follow_symlinks=False))
            same = []
            for d in dirs:
                with contextlib.suppress(OSError):
                    if os.stat(d, dir_fd=dfd, follow_symlinks=False).st_dev == self._dev:
                        same.append(d)
            dirs[:] = same

    def _note_gone(self, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key not in self._links:  # else archived before this name
            self._gone.add(key)

    def _hardlink(self, st: os.stat_result, rel: bytes) -> bytes | None:
        """The earlier name of this inode if it was already archived."""
        if st.st_nlink < 2 or stat.S_ISDIR(st.st_mode):
            return None
        if self._split:
            raise _Unsplittable
        key = (st.st_dev, st.st_ino)
        seen = self._links.get(key)
        if seen is None:
            self._links[key] = [rel, st.st_nlink - 1]
            return None
        seen[1] -= 1
        if seen[1] <= 0:  # every name seen: forget it, so memory follows open link sets
            del self._links[key]
        return seen[0]

    def _dir_header(self, rel: bytes, fd: int, st: os.stat_result) -> bytes:
        self.report.entries += 1
        return self._head(rel, tarfmt.DIRECTORY, mode=stat.S_IMODE(st.st_mode),
                          uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                          pax=self._attrs(fd, rel))

    def _attrs(self, target: int | bytes, rel: bytes) -> list[tuple[bytes, bytes]]:
        """xattrs and ACLs as PAX records; ``target`` an fd or a path not followed."""
        follow = isinstance(target, int)
        try:
            names = sorted(os.listxattr(target, follow_symlinks=follow))
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.ENOENT):
                return []
            raise self._error(rel, e) from None
        records = []
        for name in names:
            try:
                value = os.getxattr(target, name, follow_symlinks=follow)
            except OSError as e:
                if e.errno == errno.ENODATA:  # removed since it was listed
                    continue
                raise self._error(rel, e) from None
            if name in (tarfmt.ACL_ACCESS_XATTR, tarfmt.ACL_DEFAULT_XATTR):
                try:
                    text = tarfmt.acl_to_text(value)
                except ValueError:
                    self.report.warn(f"{show(rel)}: unreadable ACL {name}; kept as xattr")
                else:
                    kind = b"access" if name == tarfmt.ACL_ACCESS_XATTR else b"default"
                    records.append((b"SCHILY.acl." + kind, text))
                    continue
            records.append((b"SCHILY.xattr." + os.fsencode(name), value))
        return records

    def _open_file(self, dfd: int, name: bytes) -> int:
        try:
            return os.open(name, _O_FILE | os.O_NOATIME, dir_fd=dfd)
        except PermissionError:  # O_NOATIME needs ownership (or root); plain open then
            return os.open(name, _O_FILE, dir_fd=dfd)

    def _plain_file(self, dfd: int, name: bytes, rel: bytes
                    ) -> Generator[bytes, None, bool]:
        """A regular file with one name on our filesystem, archived; False (nothing
        yielded) for anything else, which the general path then looks at."""
        try:
            fd = self._open_file(dfd, name)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1 or st.st_dev != self._dev:
                return False
            yield from self._file_body(fd, rel, st)
            return True
        except OSError as e:
            raise self._error(rel, e) from None
        finally:
            os.close(fd)

    def _small_plain(self, dfd: int, name: bytes, limit: int, unchanged: bool
                     ) -> tuple[os.stat_result, bytes] | None:
        """The usual small file's status and whole content, read in one go: one name, on
        our filesystem, no xattrs, no holes, at most ``limit`` bytes, and with
        ``unchanged`` the same after the read as before (see _same). None for anything
        else (the general path then looks at it, and says what it is)."""
        try:
            fd = self._open_file(dfd, name)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            size = st.st_size
            if (size > limit or st.st_nlink > 1 or not stat.S_ISREG(st.st_mode)
                    or st.st_dev != self._dev or st.st_blocks * 512 < size
                    or os.listxattr(fd)):
                return None
            data = os.pread(fd, size + 1, 0)
            after = os.fstat(fd) if unchanged else st
        except OSError:  # xattrs that cannot be listed too
            return None
        finally:
            os.close(fd)
        if len(data) != size or (unchanged and not _same(st, after)):
            return None
        return after, data

    def _whole_file(self, dfd: int, name: bytes, rel: bytes) -> bytes | None:
        """The usual small file (_small_plain, unchanged while read) as one piece:
        header, data, padding, the bytes _file_body yields in two, with a third of the
        calls (50,000 files walked in about 0.5 s against 0.6 s). None for anything
        else, which _plain_file then reads again."""
        got = self._small_plain(dfd, name, SMALL, True)
        if got is None:
            return None
        st, data = got
        report = self.report
        report.entries += 1
        report.file_bytes += len(data)
        return tarfmt.small_file(rel, st.st_mode & 0o7777, st.st_uid, st.st_gid,
                                 st.st_mtime_ns, data)

    def _digest_small(self, digest: WalkDigest, dfd: int, name: bytes, rel: bytes) -> bool:
        """The read-back's usual small file (_small_plain, its content inline in the
        digest: tar.INLINE) digested at once, as the general path's head, update and
        finish would (WalkDigest.small_file), without its generators and keyword calls:
        50,000 small files digested in 0.61-0.77 s of CPU against 0.76-0.89 s. It reads
        once, as _read_small does for a read-back. False, having digested nothing, for
        anything else."""
        got = self._small_plain(dfd, name, INLINE, False)
        if got is None:
            return False
        st, data = got
        self.report.entries += 1
        self.report.file_bytes += len(data)
        digest.small_file(rel, st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns,
                          data)
        return True

    def _file(self, dfd: int, name: bytes, rel: bytes) -> Iterator[bytes]:
        try:
            fd = self._open_file(dfd, name)
        except FileNotFoundError:
            self.report.warn(f"{show(rel)}: vanished before it was read")
            return
        except OSError as e:
            if e.errno == errno.ELOOP:
                self.report.changed += 1
                self.report.warn(f"{show(rel)}: replaced while it was read; skipped")
                return
            raise self._error(rel, e) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.report.changed += 1
                self.report.warn(f"{show(rel)}: replaced while it was read; skipped")
                return
            yield from self._file_body(fd, rel, st)
        except OSError as e:
            raise self._error(rel, e) from None
        finally:
            os.close(fd)

    def _file_body(self, fd: int, rel: bytes, st: os.stat_result) -> Iterator[bytes]:
        pax = self._attrs(fd, rel)
        sparse = st.st_size > 0 and st.st_blocks * 512 < st.st_size
        cache = self._cache
        if cache is not None and not sparse and st.st_size >= cache.min_size:
            reused = cache.lookup(rel, st)
            # The chunker follows PAX headers up to 64 KiB (chunker.TarCuts); behind a
            # bigger one (huge xattrs) it might not cut, so such a file is read.
            if reused is not None and sum(len(k) + len(v) + 32 for k, v in pax) < 60_000:
                # As good as read at this fstat: the same instant a read would begin.
                header = self._file_header(rel, st, st.st_size, pax)
                cache.region(rel, st, self._produced + len(header), st.st_size)
                cache.reused(st.st_size)
                yield header
                yield reused
                return
            cache.stats.files_read += 1
        if self._rereads is not None and self._walk_digest is not None and not sparse \
                and st.st_size >= Rereads.MIN:
            known = self._rereads.get(st)
            if known is not None:
                yield self._file_header(rel, st, st.st_size, pax)
                self._walk_digest.known(known, st.st_size)
                return
        if st.st_size <= SMALL and not sparse:
            changed = self.report.changed
            data, st = self._read_small(fd, rel, st)
            header = self._file_header(rel, st, len(data), pax)
            if cache is not None and len(data) >= cache.min_size:
                cache.region(rel, st, self._produced + len(header), len(data)).ok &= \
                    changed == self.report.changed
            yield header
            if data:
                yield data if self._walk_digest is not None else \
                    data + b"\0" * tarfmt.padding(len(data))
            return
        yield from self._read_large(fd, rel, st, pax, sparse)

    def _file_header(self, rel: bytes, st: os.stat_result, size: int,
                     pax: list[tuple[bytes, bytes]]) -> bytes:
        self.report.entries += 1
        self.report.file_bytes += size
        return self._head(rel, tarfmt.REGULAR, mode=stat.S_IMODE(st.st_mode),
                          uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                          size=size, pax=pax)

    def _read_small(self, fd: int, rel: bytes, st: os.stat_result
                    ) -> tuple[bytes, os.stat_result]:
        """The whole content, read again while the file changes under us. A read-back
        (``digest``) reads once: there a change fails the comparison anyway, and the
        check cost an fstat per file."""
        if self._walk_digest is not None:
            data = os.pread(fd, st.st_size + 1, 0)
            if len(data) == st.st_size:
                return data, st
        for _ in range(RETRIES):
            data = os.pread(fd, st.st_size + 1, 0)
            after = os.fstat(fd)
            if len(data) == st.st_size and _same(st, after):
                return data, after
            st = after
            if st.st_size > SMALL:
                break
        self.report.changed += 1
        self.report.warn(f"{show(rel)}: changed while it was read")
        data = os.pread(fd, min(st.st_size, SMALL), 0)
        return data, st

    def _read_large(self, fd: int, rel: bytes, st: os.stat_result,
                    pax: list[tuple[bytes, bytes]], sparse: bool) -> Iterator[bytes]:
        size = st.st_size
        segments = _data_segments(fd, size) if sparse else [(0, size)]
        if sparse and len(segments) == 1 and segments[0] == (0, size):
            sparse = False  # "sparse" only by preallocation or compression; store plainly
        name = rel
        payload = sum(n for _, n in segments)
        if sparse:
            head, tail = rel.rsplit(b"/", 1)
            name = head + b"/GNUSparseFile.0/" + tail
            pax = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                   (b"GNU.sparse.name", rel), (b"GNU.sparse.realsize", b"%d" % size),
                   *pax]
            if segments[-1][0] + segments[-1][1] < size:
                segments.append((size, 0))  # GNU tar marks a trailing hole this way
            mapblock = tarfmt.sparse_map_block(segments)
            payload += len(mapblock)
        self.report.entries += 1
        self.report.file_bytes += size
        header = self._head(name, tarfmt.REGULAR, mode=stat.S_IMODE(st.st_mode),
                            uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns,
                            size=payload, pax=pax)
        region = None
        if self._cache is not None and not sparse and size >= self._cache.min_size:
            region = self._cache.region(rel, st, self._produced + len(header), size)
        yield header
        if sparse:
            yield mapblock
        short = False
        for offset, length in segments:
            pos, end = offset, offset + length
            while pos < end:
                piece = os.pread(fd, min(CHUNK, end - pos), pos)
                if not piece:  # shrank: keep the entry's promised length
                    short = True
                    piece = bytes(min(CHUNK, end - pos))
                pos += len(piece)
                yield piece
        if payload % BLOCK and self._walk_digest is None:
            yield bytes(tarfmt.padding(payload))
        if short or not _same(st, os.fstat(fd)):
            if region is not None:
                region.ok = False
            self.report.changed += 1
            self.report.warn(f"{show(rel)}: changed while it was read"
                             + (" (it shrank; the rest is zeros)" if short else ""))

    def _check_root(self) -> None:
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except OSError:
            now = None
        gone = os.fstat(self._rootfd).st_nlink == 0
        if gone or now is None or (now.st_dev, now.st_ino) != (self._dev, self._root_st.st_ino):
            raise NotFoundError(
                f"the volume's directory {show(self.path)} disappeared during the backup",
                hint="was the volume removed? nothing was recorded; run the backup again",
            )

    def _error(self, rel: bytes, e: OSError) -> VolbakError:
        if e.errno == errno.ENOENT and not os.path.isdir(self.path):
            return NotFoundError(
                f"the volume's directory {show(self.path)} disappeared during the backup",
                hint="was the volume removed? nothing was recorded; run the backup again")
        return VolbakError(
            f"cannot read {show(rel)} in {show(self.path)}: {e.strerror or e}",
            hint="run volbak as root (or the engine's user), or use --source api",
        )


class WalkDigest:
    """A tree digest taken during DirectSource's walk: ``head`` stands in for
    ``tarfmt.header`` and returns nothing, and the walk's pieces come to ``update`` (a
    file's data; first the map block of a sparse one). Its records are those a
    digesting TarParser makes of the stream the walk would have written, through the
    same ``digest_record``; tests compare the two on the full fidelity tree."""

    def __init__(self, owners: bool, all_xattrs: bool) -> None:
        self.owners = owners
        self._all_xattrs = all_xattrs
        self.tree = TreeDigest()
        self.entries = 0
        self.file_bytes = 0
        self.attr_entries = 0
        self._record: bytes | None = None
        self._content: Any = None
        self._sparse_real: int | None = None  # a sparse file whose map block comes next
        # files' bytes not shown to ``update`` (``known``, ``small_file``), for progress
        self.known_bytes = 0

    def head(self, name: bytes, typ: bytes, *, mode: int, uid: int, gid: int,
             mtime_ns: int, size: int = 0, linkname: bytes = b"", devmajor: int = 0,
             devminor: int = 0, pax: list[tuple[bytes, bytes]] | None = None) -> bytes:
        self.finish()
        records = dict(pax or ())
        real = size
        if records.get(b"GNU.sparse.major") == b"1":
            name = records[b"GNU.sparse.name"]
            real = self._sparse_real = int(records[b"GNU.sparse.realsize"])
        # what the parser reads back of tarfmt's encoding: device numbers too big for
        # ustar as 0
        mtime = _read_seconds(mtime_ns)
        big = tarfmt.MAX7
        device = (devmajor if devmajor < big else 0, devminor if devminor < big else 0) \
            if typ in (tarfmt.CHARDEV, tarfmt.BLOCKDEV) else (0, 0)
        link = norm(linkname) if typ == tarfmt.HARDLINK else \
            linkname if typ == tarfmt.SYMLINK else b""
        self._record, attrs = digest_record(norm(name), typ, mode, uid, gid, real, mtime,
                                            link, device, records, self.owners,
                                            self._all_xattrs)
        self.attr_entries += attrs
        self.entries += 1
        if typ == tarfmt.REGULAR:
            self.file_bytes += real
        if self._sparse_real is not None:
            self._content = None
        elif inline(real):
            self.tree.begin(self._record, real)
            self._content = self.tree
        else:
            self._content = blake3.blake3()
        return b""

    def small_file(self, name: bytes, mode: int, uid: int, gid: int, mtime_ns: int,
                   data: bytes) -> None:
        """``head``, ``update`` and the next ``finish`` of a regular file without PAX
        records whose content goes into the tree inline (tar.inline), in one call."""
        self.finish()
        size = len(data)
        record, _ = digest_record(norm(name), tarfmt.REGULAR, mode, uid, gid, size,
                                  _read_seconds(mtime_ns), b"", (0, 0), {}, self.owners,
                                  self._all_xattrs)
        self.entries += 1
        self.file_bytes += size
        self.known_bytes += size
        tree = self.tree
        tree.begin(record, size)
        tree.update(data)
        tree.end()

    def known(self, hexdigest: str, size: int) -> None:
        """The current file's content hash, from a read-behind (Rereads)."""
        assert self._content is not self.tree, "a file the tree takes inline is read"
        self._content = _Known(hexdigest)
        self.known_bytes += size

    def update(self, data: bytes | memoryview) -> None:
        if self._content is None:  # a sparse file's map block, whole in one piece
            assert self._sparse_real is not None
            parsed = parse_sparse_map(data)
            assert parsed is not None and parsed[1] == len(data)
            self._content = SparseHash(self._sparse_real, parsed[0])
            self._sparse_real = None
            return
        self._content.update(data)

    def finish(self) -> None:
        if self._record is not None:
            if self._content is None:  # the walk yields a sparse file's map after its head
                raise AssertionError("a sparse entry without its map block")
            if self._content is self.tree:
                self.tree.end()
            else:
                self.tree.add(self._record, self._content.hexdigest())
            self._record = None

    def hexdigest(self) -> str:
        return self.tree.hexdigest()


class _Known:
    def __init__(self, hexdigest: str) -> None:
        self._hexdigest = hexdigest

    def hexdigest(self) -> str:
        return self._hexdigest


class _Unsplittable(Exception):
    """The tree cannot be digested in parts (DirectSource.split_digest)."""


def tree_digest(path: str | bytes, root: str = "data", *, owners: bool = True,
                all_xattrs: bool = True, progress: Callable[[int], Any] | None = None,
                split_at: bytes | None = None, rereads: Rereads | None = None
                ) -> WalkDigest:
    """The digest of the tree at ``path`` (DirectSource.digest), in two processes when
    ``split_at`` names a place to split it (a TarParser's ``marks``): a read-back takes
    about half the time on two cores (50,000 small files: 0.6 s in one). ``rereads``:
    see DirectSource.use_rereads."""
    if split_at is not None:
        with DirectSource(path, root) as src:
            src.use_rereads(rereads)
            got = src.split_digest(split_at, owners=owners, all_xattrs=all_xattrs,
                                   progress=progress)
        if got is not None:
            return got
    with DirectSource(path, root) as src:
        src.use_rereads(rereads)
        return src.digest(owners=owners, all_xattrs=all_xattrs, progress=progress)


def _cores() -> int:
    """The CPUs this process may run on: a forked helper needs a second one."""
    return len(os.sched_getaffinity(0))


def _read_seconds(mtime_ns: int) -> int:
    """The mtime the parser reads back of tarfmt's encoding: the PAX mtime's integer
    part, truncated towards zero."""
    return mtime_ns // 10**9 if mtime_ns >= 0 else -(-mtime_ns // 10**9)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) == (
        b.st_size, b.st_mtime_ns, b.st_ctime_ns, b.st_ino)


def _data_segments(fd: int, size: int) -> list[tuple[int, int]]:
    """(offset, length) of the data regions of a file, by SEEK_DATA/SEEK_HOLE."""
    segments = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole from here on
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segments.append((start, end - start))
            pos = end
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return [(0, size)]
    return segments or [(size, 0)]


# ------------------------------------------------------------------ target


@dataclass(slots=True)
class _Entry:
    name: bytes
    typ: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: Sequence[tuple[str, bytes]]
    acl_access: bytes | None
    acl_default: bytes | None
    sparse: list[tuple[int, int]] | None
    realsize: int


@dataclass(slots=True)
class _New:
    owner: tuple[int, int]  # (uid, gid) of a file made in a directory
    umask: int | None  # what the kernel takes from its mode; None: unknown (an ACL)


def _umask() -> int | None:
    """The process's umask, read without setting it (os.umask would set it for every
    thread at once); None where /proc does not say (Linux before 4.7)."""
    with contextlib.suppress(OSError, ValueError, IndexError), \
            open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"Umask:"):
                return int(line.split()[1], 8)
    return None


@dataclass
class _DirAttrs:
    mode: int
    mtime_ns: int
    atime_ns: int
    acl_access: bytes | None
    acl_default: bytes | None


class Rereads:
    """Big files read back while they are written: every byte is read back from the
    target right behind its write and compared with the stream's bytes written there.
    A file read back whole and equal is recorded by inode with the size, mtime and
    ctime it had once finished. The digesting parser took ``tar.COMPARED`` for its
    content, as the comparing sink spared it the hash (tar.Sink); the read-back after
    the extraction (``DirectSource.use_rereads``) takes the same instead of reading
    the file again where its inode still has that size, mtime and ctime: anything that
    wrote to it since, or changed its attributes, or linked it, moved its ctime (to the
    kernel clock's tick, a few ms: a change within the tick of our last one would not
    show; nothing but the restore writes to its new volume). A file not recorded (a
    read that failed, came short or differed) is read again and hashed, which cannot
    give COMPARED: the restore fails its verification.

    Every byte is still read from the target after it was written, as the read-back
    after the whole extraction reads it (both from the page cache), but in a thread
    beside the writes instead of after them. A 1 GiB restore (tmpfs, 2 cores) spent
    0.3-0.5 s reading its file back after the writes; with the reading beside them it
    took 1.53-2.68 s (median 1.73 s of four) against 1.65-2.15 s (median 2.04 s).
    Comparing instead of hashing a second time: 1 GiB read back in 0.17 s against
    0.29-0.35 s; and the parser's BLAKE3 pass of it is spared (0.3 s of CPU). Sparse
    files and small ones are read back after, as before."""

    MIN = BIG_FILE

    def __init__(self) -> None:
        # (dev, inode) -> (size, mtime_ns, ctime_ns) of each file read back equal
        self.files: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._pool: ThreadPoolExecutor | None = None

    def start(self, fd: int) -> _Reread:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="volbak-reread")
        return _Reread(self._pool, fd)

    def finish(self, reread: _Reread, fd: int, size: int) -> None:
        """The file is complete, its attributes set: wait for its reading, and record
        it where every byte was read back equal."""
        same = reread.wait()
        st = os.fstat(fd)
        if same and reread.pos == st.st_size == size:
            self.files[(st.st_dev, st.st_ino)] = (st.st_size, st.st_mtime_ns,
                                                  st.st_ctime_ns)

    def linked(self, before: os.stat_result, after: os.stat_result) -> None:
        """The restore linked a recorded file (a hardlink entry): that moved its ctime,
        and nothing else. Without this, the read-back would read the file again, and
        fail (see above)."""
        key = (before.st_dev, before.st_ino)
        got = self.files[key]
        if (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == key + got[:2]:
            self.files[key] = (after.st_size, after.st_mtime_ns, after.st_ctime_ns)

    def get(self, st: os.stat_result) -> str | None:
        """What the digest takes for the file's content (tar.COMPARED) if it was read
        back equal and is unchanged since."""
        if self.files.get((st.st_dev, st.st_ino)) == (st.st_size, st.st_mtime_ns,
                                                       st.st_ctime_ns):
            return COMPARED
        return None

    def close(self) -> None:
        """Stop reading (before the files' handles close: a handle's number may be
        reused)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _Reread:
    """One file's read-behind: each range, once written, is read in the pool's one
    thread (so in order) and compared with the stream's bytes written there, which it
    holds until then (at most BEHIND ranges and the one being written)."""

    STEP = 4 * CHUNK  # bytes written before they are handed to the thread
    BEHIND = 2

    def __init__(self, pool: ThreadPoolExecutor, fd: int) -> None:
        self._pool = pool
        self._fd = fd
        self.pos = 0  # bytes written
        self._sent = 0  # of them, handed to be read
        self._views: list[memoryview] = []  # written since
        self._bad = False  # a read failed, came short or differed
        self._jobs: collections.deque[Future[Any]] = collections.deque()
        self._buf = bytearray(CHUNK)  # the thread's

    def written(self, view: memoryview) -> None:
        # The parser's pieces are views of immutable chunks; anything else is copied,
        # so that nothing can change the bytes before they are compared.
        self._views.append(view if isinstance(view.obj, bytes) else memoryview(bytes(view)))
        self.pos += len(view)
        if self.pos - self._sent >= self.STEP:
            self._send()

    def _send(self) -> None:
        while len(self._jobs) >= self.BEHIND:
            self._jobs.popleft().result()
        self._jobs.append(self._pool.submit(self._check, self._sent, self._views))
        self._views = []
        self._sent = self.pos

    def _check(self, pos: int, views: list[memoryview]) -> None:
        buf = self._buf
        step = len(buf)
        try:
            for view in views:
                for at in range(0, len(view), step):
                    if self._bad:
                        return
                    part = view[at:at + step]
                    n = len(part)
                    # into one buffer (fresh ones cost page faults) and compared as a
                    # bytearray: memcmp (a memoryview compares byte by byte)
                    self._bad = os.preadv(self._fd, [memoryview(buf)[:n]], pos) != n \
                        or not buf.startswith(part)
                    pos += n
        except OSError:
            self._bad = True

    def wait(self) -> bool:
        """Whether every byte written was read back equal."""
        if self._sent < self.pos:
            self._send()
        while self._jobs:
            self._jobs.popleft().result()
        return not self._bad


class _FileSink:
    """Receives one regular file's data (with its sparse map) from the tar parser and
    writes it; ``close`` applies the file's attributes."""

    def __init__(self, target: DirectTarget, fd: int, entry: _Entry,
                 segments: list[tuple[int, int]], reread: _Reread | None = None, *,
                 owned: bool = False, moded: bool = False) -> None:
        self.target = target
        self.fd = fd
        self.entry = entry
        self.reread = reread  # where the file is read behind its writes
        # ... then the read-behind compares every byte, and the parser need not hash
        # them (tar.Sink): Rereads records the file only if they all compared equal
        self.compares = reread is not None
        self.owned = owned  # made with the entry's owner: no chown
        self.moded = moded  # made with the entry's mode: no chmod
        self.segments = segments if entry.sparse is None and entry.size else \
            [s for s in segments if s[1]]
        self._i = 0
        self._left = self.segments[0][1] if self.segments else 0
        # one segment, small, not read behind: written by one os.write as a rule
        self._whole = len(self.segments) == 1 and self._left <= WRITE_MAX and reread is None
        if self.segments and self.segments[0][0]:
            os.lseek(fd, self.segments[0][0], os.SEEK_SET)

    def write(self, view: memoryview) -> None:
        try:
            if self._whole and len(view) == self._left:  # the usual: all in one write
                done = os.write(self.fd, view)
                self._left -= done
                if not self._left:
                    return
                view = view[done:]
            while view:
                take = min(self._left, len(view), WRITE_MAX)
                done = os.write(self.fd, view[:take])
                if self.reread is not None:
                    self.reread.written(view[:done])
                view = view[done:]
                self._left -= done
                if not self._left and self._i + 1 < len(self.segments):
                    self._i += 1
                    offset, self._left = self.segments[self._i]
                    os.lseek(self.fd, offset, os.SEEK_SET)
        except OSError as e:
            raise self.target._oserror(self.entry.name, e) from None

    def close(self) -> None:
        self.target._finish_file()


class DirectTarget:
    """Extract a tar stream into the existing directory ``path`` (an empty new volume).

    Feed it with ``write(data)`` and finish with ``close()`` (which checks the archive
    ended properly and applies the directories' modes, ACLs and mtimes), or call
    ``abort()`` to stop; ``extract(chunks)`` does all three. Entries must be named
    ``<root>/...``; the ``<root>/`` entry's mode, owner, xattrs and mtime go to ``path``
    itself. Refused (``IntegrityError`` naming the entry): absolute names, ``..``,
    names outside ``<root>``, paths through a symlink or a non-directory, hardlinks to
    such places or to entries not yet extracted, corrupt headers, a truncated stream.
    Nothing is ever written outside ``path``. ``report`` collects warnings (attributes
    the host refused, e.g. owners when not root)."""

    DIR_CACHE = 64

    def __init__(self, path: str | bytes, root: str = "data",
                 parser: TarParser | None = None, *, fork: bool = False,
                 rereads: Rereads | None = None) -> None:
        """``parser``: a TarParser (e.g. in digest mode) to extract with, so that a
        caller who needs the stream's digest does not parse it a second time. ``fork``:
        apply the entries in a forked child while this process parses (``_Child``);
        worth it for many small files, not for big ones. ``rereads``: read big files
        back while writing them, into it (not with ``fork``)."""
        self.path = os.fsencode(path)
        self.root = os.fsencode(root).strip(b"/")
        self.report = Report()
        try:
            self._tfd = os.open(self.path, _O_DIR)
        except OSError as e:
            raise VolbakError(
                f"cannot open the target directory {show(self.path)}: {e.strerror}",
                hint="run volbak as root (or the engine's user), or use --source api",
            ) from None
        self._root_user = os.geteuid() == 0
        self._umask = _umask()
        # per directory (its parts): the owner and mode a new file gets in it (_New)
        self._new: dict[tuple[bytes, ...], _New] = {}
        # Paths are checked here, against the names as the archive spells them, not by
        # the parser's root check: a target must also refuse absolute names and links.
        self.parser = parser or TarParser()
        self.parser.on_entry = self._on_entry
        self._sink: _FileSink | None = None
        self._dirs: dict[tuple[bytes, ...], _DirAttrs] = {}
        self._cache: dict[tuple[bytes, ...], int] = {}
        self._closed = False
        assert not (fork and rereads), "a forked child's read-behind would stay there"
        self._rereads = rereads
        self._child: _Child | None = None  # (None in the child itself)
        if fork and _cores() > 1:
            self._child = _Child(self)

    # -- feeding

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.parser.feed(memoryview(data).cast("B"))

    def extract(self, chunks: Iterable[bytes]) -> Report:
        try:
            for chunk in chunks:
                self.write(chunk)
            self.close()
        except BaseException:
            self.abort()
            raise
        return self.report

    def close(self) -> None:
        if self._closed:
            return
        if not self.parser.ended:
            self.abort()
            raise IntegrityError(
                "the archive ended early (truncated tar stream)",
                hint="the stored backup is damaged; restore an older backup",
            )
        try:
            if self._child is None:
                self._apply_dirs()
            else:
                entries = self.report.entries  # counted here, the rest there
                self.report = self._child.finish()
                self.report.entries = entries
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop, closing every handle; what was extracted so far stays. A child
        applying the entries is stopped (and waited for) first."""
        if self._closed:
            return
        self._closed = True
        if self._child is not None:
            self._child.stop()
        if self._rereads is not None:  # first: it reads through the files' handles
            self._rereads.close()
        if self._sink is not None:
            with contextlib.suppress(OSError):
                os.close(self._sink.fd)
            self._sink = None
        for fd in self._cache.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._cache.clear()
        with contextlib.suppress(OSError):
            os.close(self._tfd)

    def __enter__(self) -> DirectTarget:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- entries, from the tar parser

    def _on_entry(self, e: Entry) -> _FileSink | None:
        pax = e.pax
        xattrs: Sequence[tuple[str, bytes]] = ()  # (one object, pickled in a byte)
        acl_access = acl_default = None
        if not pax.keys() <= PLAIN_PAX:  # most entries carry only an mtime
            if pax.get(b"GNU.sparse.major") == b"1" and e.kind != b"0":
                raise IntegrityError(f"the archive's entry {show(e.path)} is a sparse non-file")
            if e.sparse is None and (b"GNU.sparse.offset" in pax
                                     or b"GNU.sparse.numblocks" in pax):
                raise IntegrityError("the archive uses GNU sparse format 0.0, which volbak "
                                     "does not read", hint="extract this archive with GNU tar")
            xattrs, acl_access, acl_default = _xattrs(pax.items())
        fields = (  # _Entry's, in order: keywords took 3x as long (0.9 against 0.3 us)
            e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.mtime_ns,
            parse_time_ns(pax[b"atime"]) if b"atime" in pax else e.mtime_ns,
            e.linkpath, e.device[0], e.device[1], xattrs, acl_access, acl_default,
            e.sparse, e.realsize,
        )
        self.report.entries += 1
        if self._child is not None:
            return self._child.entry(fields, e.payload)
        return self._dispatch(_Entry(*fields), e.payload)

    def _serve(self, ops: int) -> Report:
        """The forked child's side of ``_Child``: apply the entries and write their data
        as ``_on_entry`` and the parser would have, then the directories' attributes;
        the report is the answer."""
        try:
            with open(ops, "rb", buffering=_Child.BATCH, closefd=False) as f:
                left = 0  # data of the current file still to come
                for entries, data in _Child.receive(f):
                    pos = 0
                    for fields, payload in [((), 0), *entries] if left else entries:
                        if fields:
                            if self._dispatch(_Entry(*fields), payload) is None:
                                continue
                            left = payload
                        take = min(left, len(data) - pos)
                        if take:
                            self._sink.write(data[pos:pos + take])  # type: ignore[union-attr]
                            pos += take
                            left -= take
                        if not left:
                            self._sink.close()  # type: ignore[union-attr]
            self._apply_dirs()
            return self.report
        finally:
            self.abort()

    def _dispatch(self, entry: _Entry, payload: int) -> _FileSink | None:
        """Extract one entry; a regular file returns the sink for its data."""
        parts = self._parts(entry.name, entry)
        typ = entry.typ
        if typ == tarfmt.REGULAR:
            return self._regular(parts, entry, payload)
        if typ == tarfmt.DIRECTORY:
            self._directory(parts, entry)
        elif typ == tarfmt.SYMLINK:
            self._special(parts, entry, lambda n, d: os.symlink(entry.linkname, n, dir_fd=d))
        elif typ == tarfmt.HARDLINK:
            self._hardlink(parts, entry)
        elif typ in (tarfmt.CHARDEV, tarfmt.BLOCKDEV):
            kind = stat.S_IFCHR if typ == tarfmt.CHARDEV else stat.S_IFBLK
            dev = os.makedev(entry.devmajor, entry.devminor)
            self._special(parts, entry, lambda n, d: os.mknod(n, kind | 0o600, dev, dir_fd=d))
        elif typ == tarfmt.FIFO:
            self._special(parts, entry, lambda n, d: os.mkfifo(n, 0o600, dir_fd=d))
        elif typ == b"S":
            raise IntegrityError(
                f"the archive's entry {show(entry.name)} uses the old GNU sparse format, "
                "which volbak does not read",
                hint="extract this archive with GNU tar",
            )
        else:  # the parser skips its data
            self.report.skipped += 1
            self.report.warn(f"{show(entry.name)}: unknown tar entry type {typ!r}; skipped")
        return None

    def _parts(self, name: bytes, entry: _Entry, what: str = "entry") -> tuple[bytes, ...]:
        """The path below the target for an archive name, or IntegrityError. ``what`` is
        "entry" for the entry's own name, "hardlink" for its link target."""
        if b"\0" in name or not name:
            raise self._refuse_path(entry, "has an empty or NUL-containing name")
        if name.startswith(b"/"):
            raise self._refuse_path(entry, "has an absolute name" if what == "entry" else
                                    f"links to the absolute name {show(name)}")
        parts = name.split(b"/")
        if b"" in parts or b"." in parts:  # (a directory's trailing slash)
            parts = [p for p in parts if p not in (b"", b".")]
        if b".." in parts:
            raise self._refuse_path(entry, "has a '..' component" if what == "entry" else
                                    f"links to {show(name)}, which has a '..' component")
        if not parts or parts[0] != self.root:
            raise self._refuse_path(entry, f"is outside the archive's root {show(self.root)}/"
                                    if what == "entry" else
                                    f"links to {show(name)}, outside {show(self.root)}/")
        return tuple(parts[1:])

    def _refuse_path(self, entry: _Entry, why: str) -> IntegrityError:
        return IntegrityError(
            f"refusing the archive: entry {show(entry.name)} {why}",
            hint="this archive was not written by volbak or has been tampered with; "
                 "nothing was written outside the target",
        )

    def _dir_fd(self, parts: tuple[bytes, ...], entry: _Entry, create: bool = True) -> int:
        """An open handle on the directory ``parts`` below the target, each component
        opened with O_NOFOLLOW below the previous one, so a symlink anywhere is refused."""
        if not parts:
            return self._tfd
        cached = self._cache.get(parts)
        if cached is not None:
            return cached
        parent = self._dir_fd(parts[:-1], entry, create)
        name = parts[-1]
        try:
            fd = os.open(name, _O_DIR, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise self._refuse_path(entry, f"needs {show(b'/'.join(parts))}, which the "
                                        "archive has not created") from None
            # Archives may omit parent directories: make them as tar does.
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
                fd = os.open(name, _O_DIR, dir_fd=parent)
            except OSError as e:
                raise self._oserror(entry.name, e) from None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                what = "a symlink" if _is_link(name, parent) else "a non-directory"
                raise self._refuse_path(entry, f"passes through {what} "
                                        f"({show(b'/'.join(parts))})") from None
            raise self._oserror(entry.name, e) from None
        if len(self._cache) >= self.DIR_CACHE:
            old = next(iter(self._cache))
            os.close(self._cache.pop(old))
        self._cache[parts] = fd
        return fd

    def _new_in(self, parts: tuple[bytes, ...], fd: int) -> _New:
        """What a file made in the directory ``parts`` (open as ``fd``) gets from the
        kernel: our uid, the directory's group if it is setgid (else ours), and its
        mode less the umask, unless a default ACL there decides the mode instead. Where
        the rule were wrong for some filesystem, the read-back would say so (it
        compares owners and modes) and the restore would fail, not pass."""
        new = self._new.get(parts)
        if new is None:
            st = os.fstat(fd)
            try:
                acl = tarfmt.ACL_DEFAULT_XATTR in os.listxattr(fd)
            except OSError:
                acl = True  # unknown: chmod every file, as before
            new = _New((os.geteuid(), st.st_gid if st.st_mode & stat.S_ISGID
                        else os.getegid()), None if acl else self._umask)
            self._new[parts] = new
        return new

    def _make_room(self, parent: int, name: bytes, entry: _Entry) -> None:
        """A later entry of the same name replaces an earlier non-directory (tar's rule);
        a directory is never replaced."""
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise self._refuse_path(entry, "would replace a directory")
        os.unlink(name, dir_fd=parent)

    def _regular(self, parts: tuple[bytes, ...], entry: _Entry,
                 payload: int) -> _FileSink:
        if not parts:
            raise self._refuse_path(entry, "would replace the target directory")
        parent = self._dir_fd(parts[:-1], entry)
        name = parts[-1]
        behind = self._rereads is not None and entry.sparse is None and \
            entry.size >= Rereads.MIN
        flags = (os.O_RDWR if behind else os.O_WRONLY) | os.O_CREAT | os.O_EXCL | \
            os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            new = self._new_in(parts[:-1], parent)
            # Made with its final mode where the kernel gives it exactly that, so the
            # usual file needs no chmod (1.5 us of a small file's ~15 us); else 0600,
            # and chmod once its owner is set (which would clear setuid/setgid).
            mode = entry.mode if new.umask is not None and \
                not entry.mode & (~0o777 | new.umask) else None
            try:
                fd = os.open(name, flags, 0o600 if mode is None else mode, dir_fd=parent)
            except FileExistsError:  # O_EXCL: never follows a symlink that is there
                self._make_room(parent, name, entry)
                fd = os.open(name, flags, 0o600 if mode is None else mode, dir_fd=parent)
        except OSError as e:
            raise self._oserror(entry.name, e) from None
        segments = entry.sparse if entry.sparse is not None else [(0, entry.size)]
        # The segments must hold exactly the data that follows, inside the real size.
        if entry.sparse is not None and (
                any(offset < 0 or length < 0 or offset + length > entry.realsize
                    for offset, length in segments)
                or sum(n for _, n in segments) != payload):
            os.close(fd)
            raise IntegrityError(f"the archive's entry {show(entry.name)} has a bad sparse map")
        self._sink = _FileSink(self, fd, entry, segments,
                               self._rereads.start(fd) if behind else None,  # type: ignore
                               owned=(entry.uid, entry.gid) == new.owner, moded=mode is not None)
        self.report.file_bytes += payload
        return self._sink

    def _finish_file(self) -> None:
        sink, self._sink = self._sink, None
        assert sink is not None
        entry = sink.entry
        fd = sink.fd
        try:
            if entry.sparse is not None:
                os.ftruncate(fd, entry.realsize)
            if not sink.owned:
                try:
                    os.fchown(fd, entry.uid, entry.gid)
                except PermissionError:
                    self._chown(entry, lambda: os.fchown(fd, entry.uid, entry.gid))
            if entry.xattrs:
                self._set_xattrs(fd, entry.xattrs, entry.name)  # after chown: it drops caps
            if not sink.moded:
                os.fchmod(fd, entry.mode)
            if entry.acl_access is not None:
                self._set_acls(fd, entry.acl_access, None, entry.name)
            os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
            if sink.reread is not None:
                self._rereads.finish(sink.reread, fd, entry.size)  # type: ignore[union-attr]
        except OSError as e:
            raise self._oserror(entry.name, e) from None
        finally:
            if sink.reread is not None:  # its reads must be done before the handle goes
                sink.reread.wait()
            os.close(fd)

    def _directory(self, parts: tuple[bytes, ...], entry: _Entry) -> None:
        if parts:
            parent = self._dir_fd(parts[:-1], entry)
            name = parts[-1]
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            except OSError as e:
                raise self._oserror(entry.name, e) from None
            try:
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=parent)
                    st = None
                if st is None:
                    os.mkdir(name, 0o700, dir_fd=parent)
            except OSError as e:
                raise self._oserror(entry.name, e) from None
        fd = self._dir_fd(parts, entry)
        self._new.pop(parts, None)  # its group and xattrs change here
        try:
            self._chown(entry, lambda: os.fchown(fd, entry.uid, entry.gid))
            self._set_xattrs(fd, entry.xattrs, entry.name)
        except OSError as e:
            raise self._oserror(entry.name, e) from None
        # Mode, ACLs and mtime wait until the end: a read-only or default-ACL directory
        # would change how its children are created, and each child bumps its mtime.
        self._dirs[parts] = _DirAttrs(entry.mode, entry.mtime_ns, entry.atime_ns,
                                      entry.acl_access, entry.acl_default)

    def _special(self, parts: tuple[bytes, ...], entry: _Entry,
                 make: Callable[[bytes, int], None]) -> None:
        if not parts:
            raise self._refuse_path(entry, "would replace the target directory")
        parent = self._dir_fd(parts[:-1], entry)
        name = parts[-1]
        try:
            self._make_room(parent, name, entry)
            make(name, parent)
            self._chown(entry, lambda: os.chown(name, entry.uid, entry.gid, dir_fd=parent,
                                                follow_symlinks=False))
            self._set_xattrs(_proc(parent, name), entry.xattrs, entry.name)
            if entry.typ != tarfmt.SYMLINK:
                # Just made by us in a directory only we write: not a symlink.
                os.chmod(name, entry.mode, dir_fd=parent)
                self._set_acls(_proc(parent, name), entry.acl_access, None, entry.name)
            os.utime(name, ns=(entry.atime_ns, entry.mtime_ns), dir_fd=parent,
                     follow_symlinks=False)
        except OSError as e:
            raise self._oserror(entry.name, e) from None

    def _hardlink(self, parts: tuple[bytes, ...], entry: _Entry) -> None:
        if not parts:
            raise self._refuse_path(entry, "would replace the target directory")
        source = self._parts(entry.linkname, entry, what="hardlink")
        if not source:
            raise self._refuse_path(entry, "links to the archive's root directory")
        src_parent = self._dir_fd(source[:-1], entry, create=False)
        parent = self._dir_fd(parts[:-1], entry)
        name = parts[-1]
        try:
            src = os.stat(source[-1], dir_fd=src_parent, follow_symlinks=False)
        except FileNotFoundError:
            raise self._refuse_path(entry, f"links to {show(entry.linkname)}, which the "
                                    "archive has not created") from None
        if stat.S_ISDIR(src.st_mode):
            raise self._refuse_path(entry, f"links to the directory {show(entry.linkname)}")
        try:
            if (src_parent, source[-1]) != (parent, name):
                self._make_room(parent, name, entry)
                # Never follows a symlink: linkat without AT_SYMLINK_FOLLOW links it.
                os.link(source[-1], name, src_dir_fd=src_parent, dst_dir_fd=parent,
                        follow_symlinks=False)
                if self._rereads is not None and self._rereads.get(src) is not None:
                    self._rereads.linked(src, os.stat(name, dir_fd=parent,
                                                      follow_symlinks=False))
        except OSError as e:
            raise self._oserror(entry.name, e) from None

    # -- attributes

    def _chown(self, entry: _Entry, do: Callable[[], None]) -> None:
        try:
            do()
        except PermissionError:
            if self._root_user:
                raise
            self.report.warn(f"{show(entry.name)}: owner {entry.uid}:{entry.gid} not set "
                             "(not running as root)")

    def _set_xattrs(self, target: int | bytes, xattrs: Sequence[tuple[str, bytes]],
                    name: bytes) -> None:
        follow = isinstance(target, int)
        for key, value in xattrs:
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES, errno.EINVAL):
                    raise
                self.report.warn(f"{show(name)}: extended attribute {key} not restored "
                                 f"({e.strerror})")

    def _set_acls(self, target: int | bytes, access: bytes | None, default: bytes | None,
                  name: bytes) -> None:
        follow = isinstance(target, int)
        for key, text in ((tarfmt.ACL_ACCESS_XATTR, access),
                          (tarfmt.ACL_DEFAULT_XATTR, default)):
            if text is None:
                continue
            try:
                value = tarfmt.acl_from_text(text)
            except ValueError as e:
                self.report.warn(f"{show(name)}: ACL not restored ({e})")
                continue
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EINVAL):
                    raise
                self.report.warn(f"{show(name)}: ACL not restored ({e.strerror})")

    def _apply_dirs(self) -> None:
        # Deepest first: nothing below a directory changes after its attributes are set.
        for parts in sorted(self._dirs, key=len, reverse=True):
            attrs = self._dirs[parts]
            name = self.root + b"/" + b"/".join(parts)
            fd = self._tfd
            for part in parts:  # one component at a time: paths may exceed PATH_MAX
                try:
                    child = os.open(part, _O_DIR, dir_fd=fd)
                finally:
                    if fd != self._tfd:
                        os.close(fd)
                fd = child
            try:
                os.fchmod(fd, attrs.mode)
                self._set_acls(fd, attrs.acl_access, attrs.acl_default, name)
                os.utime(fd, ns=(attrs.atime_ns, attrs.mtime_ns))
            except OSError as e:
                raise self._oserror(name, e) from None
            finally:
                if parts:
                    os.close(fd)

    def _oserror(self, name: bytes, e: OSError) -> VolbakError:
        return VolbakError(
            f"cannot extract {show(name)} into {show(self.path)}: {e.strerror or e}",
            hint="is the target volume's directory writable by volbak? "
                 "otherwise use --source api",
        )


# Children forked and not yet waited for. Each owner stops its own on every way out,
# but a signal can land after the fork and before an owner holds the child (returned
# from a constructor, not yet inside the owner's ``try``): a Ctrl-C then left a writer
# that outlived volbak (full run, docker, test_signal_mid_forked_restore_cleans_up).
# Whatever is still here when the interpreter exits is stopped then.
_LIVE: set[_Forked] = set()


@atexit.register
def _stop_live() -> None:
    for proc in list(_LIVE):
        proc.stop()


class _Forked:
    """One part of a job done by a forked child, joined to this process by a pipe:
    ``work(fd)`` runs in the child with its end of the pipe (it reads it with
    ``to_child``, else writes it, if it has more to send than its answer) and must not
    close it; what it returns, or the
    VolbakError it raises, is the child's answer (``result``; a bug comes back as a
    RuntimeError with its traceback). The child ignores SIGINT and SIGTERM: the caller
    stops it on every way out (``stop`` kills it and waits), so that a Ctrl-C reaches
    the caller as an interruption, not as a helper that died; where the caller is
    gone, the pipe's end stops the child. It never returns into the caller's code."""

    PIPE = 2 * CHUNK  # a batch in the pipe while the other side works on the one before

    def __init__(self, work: Callable[[int], Any], *, to_child: bool) -> None:
        self._pid = 0
        self.fd = self._answer = -1
        try:
            self._start(work, to_child)
        except BaseException:  # a signal held while it started comes out here
            self.stop()
            raise

    def _start(self, work: Callable[[int], Any], to_child: bool) -> None:
        # Signals held until the child is known (a Ctrl-C just after the fork left a
        # child nobody stopped); the child never leaves this block, and ignores both.
        with deferred():
            fds: list[int] = []  # closed again where no child comes of them
            try:
                r, w = os.pipe()
                fds += (r, w)
                for size in (self.PIPE, self.PIPE // 2):  # more than pipe-max-size: root
                    with contextlib.suppress(OSError):
                        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, size)
                        break
                answer_r, answer_w = os.pipe()
                fds += (answer_r, answer_w)
                pid = os.fork()
            except BaseException:
                for fd in fds:
                    os.close(fd)
                raise
            mine, theirs = (w, r) if to_child else (r, w)
            if pid == 0:  # the child
                code = 1
                try:
                    # The parent's garbage is not ours to collect: freeing a
                    # multithreaded zstd compressor waits for its worker threads, which a
                    # fork does not copy (a CI run hung there). Objects made from here
                    # on are collected.
                    gc.freeze()
                    os.close(mine)
                    os.close(answer_r)
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        signal.signal(sig, signal.SIG_IGN)
                    code = _answer(work, theirs, answer_w)
                finally:
                    os._exit(code)
            os.close(theirs)
            os.close(answer_w)
            self.fd, self._answer = mine, answer_r
            self._pid = pid
            _LIVE.add(self)

    def result(self) -> Any:
        """Close this end of the pipe and wait for the child: its answer, or its
        error raised."""
        kind, what = self._result()
        if kind != "ok":
            raise self._error(kind, what)
        return what

    def failure(self) -> BaseException:
        """The error that stopped the child (where the pipe broke)."""
        return self._error(*self._result())

    def _result(self) -> tuple[str, Any]:
        os.close(self.fd)
        self.fd = -1
        with open(self._answer, "rb") as f:
            self._answer = -1
            data = f.read()
        _, status = os.waitpid(self._pid, 0)
        self._pid = 0
        _LIVE.discard(self)
        try:
            return pickle.loads(data) if data else ("died", status)
        except Exception:
            return ("died", status)

    @staticmethod
    def _error(kind: str, what: Any) -> BaseException:
        if kind == "error":
            return what
        if kind == "bug":
            return RuntimeError(f"the forked helper process failed:\n{what}")
        return VolbakError(f"the forked helper process ended unexpectedly (wait status "
                           f"{what})", hint="see the system log (killed for lack of memory?)")

    def stop(self) -> None:
        """Kill the child (if it still runs) and wait for it: after this it writes
        nothing more."""
        if self._pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            self._pid = 0
            _LIVE.discard(self)
        for fd in (self.fd, self._answer):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self._answer = -1


def _answer(work: Callable[[int], Any], fd: int, out: int) -> int:
    """The forked child's whole life (see _Forked): its exit code."""
    try:
        result: tuple[str, Any] = ("ok", work(fd))
    except (EOFError, BrokenPipeError):  # the parent is gone, or stopped: no one asks
        return 1
    except VolbakError as e:
        result = ("error", e)
    except BaseException:  # a bug: its traceback goes to the parent's error
        result = ("bug", traceback.format_exc())
    finally:
        # First: a parent blocked on the pipe then fails over to reading the answer,
        # instead of the two waiting on each other.
        os.close(fd)
    try:
        data = pickle.dumps(result)
    except Exception:  # an error with an attribute pickle cannot take
        data = pickle.dumps(("error", VolbakError(str(result[1]),
                                                  hint=getattr(result[1], "hint", None))))
    write_all(out, data)
    return 0


class _Child:
    """A DirectTarget's entries applied in a forked child while this process parses
    (and digests) the stream. On 50,000 small files (tmpfs, 2 cores) the extraction
    took 1.7-1.9 s this way against 2.1-2.8 s in one process: the parse and the writes
    are both mostly Python, which threads would run one at a time under the GIL. The
    child gets the entries in order and extracts exactly what one process would; big
    files pay for it with two more copies of their data, so the caller chooses
    (``ops.restore``).

    For the parser it is the sink of every regular file. A batch is a length-prefixed
    pickle of the entries' fields and payload sizes, followed by the data: a file's data
    follows its entry, and a batch ends early only inside a file's data."""

    BATCH = 1 << 20  # data bytes per batch: what is in flight stays small
    HEAD = struct.Struct(">II")  # the entries' pickle, then the data: their lengths

    def __init__(self, target: DirectTarget) -> None:
        self._entries: list[tuple[tuple[Any, ...], int]] = []
        self._data = bytearray()
        self._proc = _Forked(target._serve, to_child=True)

    compares = False  # (tar.Sink) the child's writes are not read behind

    def entry(self, fields: tuple[Any, ...], payload: int) -> _Child | None:
        self._entries.append((fields, payload))
        if len(self._entries) >= 4096:
            self._flush()
        return self if fields[1] == tarfmt.REGULAR else None

    def write(self, view: memoryview) -> None:
        self._data += view
        if len(self._data) >= self.BATCH:
            self._flush()

    def close(self) -> None:
        pass  # the child closes a file once its payload is written

    def _send(self, *parts: bytes | bytearray) -> None:
        try:
            for part in parts:
                write_all(self._proc.fd, part)
        except BrokenPipeError:  # the child stopped: its answer says why
            raise self._proc.failure() from None

    def _flush(self) -> None:
        entries = pickle.dumps(self._entries, pickle.HIGHEST_PROTOCOL)
        self._send(self.HEAD.pack(len(entries), len(self._data)), entries, self._data)
        self._entries.clear()
        self._data.clear()

    @staticmethod
    def receive(f: Any) -> Iterator[tuple[list[tuple[tuple[Any, ...], int]], memoryview]]:
        """The child's side: each batch's entries and data, until the end (a batch
        without entries or data)."""
        while True:
            head = f.read(_Child.HEAD.size)
            if len(head) < _Child.HEAD.size:
                raise EOFError
            n, size = _Child.HEAD.unpack(head)
            if not n and not size:
                return
            entries, data = f.read(n), f.read(size)
            if len(entries) < n or len(data) < size:
                raise EOFError
            yield pickle.loads(entries), memoryview(data)

    def finish(self) -> Report:
        """The last batch and the end marker; then the child's report, or its error."""
        self._flush()
        self._send(self.HEAD.pack(0, 0))
        return self._proc.result()

    def stop(self) -> None:
        self._proc.stop()


class _Walker:
    """A DirectSource's stream made by a forked child: the walk (Python, and several
    syscalls per file) runs on a core of its own instead of waiting for the GIL behind
    this process's compressing and hashing threads at each of its syscalls (50,000
    small files, tmpfs, 2 cores: a backup in 0.94-1.26 s against 1.16-1.44 s with the
    walk in a thread). The bytes are those ``read`` gives; the child's report, or its
    error, comes at the end."""

    def __init__(self, source: DirectSource) -> None:
        self._source = source
        self._proc: _Forked | None = _Forked(source._serve_walk, to_child=False)

    def read(self, n: int = CHUNK) -> bytes:
        if self._proc is None:
            return b""
        data = os.read(self._proc.fd, n)
        if not data:  # the end, or the child stopped: its answer says which
            proc, self._proc = self._proc, None
            report = proc.result()
            for f in dataclasses.fields(Report):  # in place: callers hold the object
                setattr(self._source.report, f.name, getattr(report, f.name))
        return data

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None


def extract(path: str | bytes, chunks: Iterable[bytes], root: str = "data", *,
            fork: bool = False) -> Report:
    """Extract the tar stream ``chunks`` into ``path``; see DirectTarget."""
    return DirectTarget(path, root, fork=fork).extract(chunks)


# ------------------------------------------------------------------ entry helpers


def _is_link(name: bytes, parent: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _xattrs(records: Iterable[tuple[bytes, bytes]]
            ) -> tuple[list[tuple[str, bytes]], bytes | None, bytes | None]:
    """xattrs (SCHILY and libarchive records) and ACL texts of one entry. A raw
    ``system.posix_acl_*`` xattr (GNU tar stores both) wins over the text: it holds ids."""
    xattrs: dict[str, bytes] = {}
    acls: dict[str, bytes] = {}
    for key, value in records:
        if key.startswith(b"SCHILY.xattr."):
            xattrs[os.fsdecode(key[len(b"SCHILY.xattr."):])] = value
        elif key.startswith(b"LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(key[len(b"LIBARCHIVE.xattr."):])
            with contextlib.suppress(ValueError):
                xattrs[os.fsdecode(name)] = base64.b64decode(value + b"==")
        elif key == b"SCHILY.acl.access":
            acls["access"] = value
        elif key == b"SCHILY.acl.default":
            acls["default"] = value
    for kind, xname in (("access", tarfmt.ACL_ACCESS_XATTR),
                        ("default", tarfmt.ACL_DEFAULT_XATTR)):
        raw = xattrs.pop(xname, None)
        if raw is not None:
            with contextlib.suppress(ValueError):
                acls[kind] = tarfmt.acl_to_text(raw)
    return list(xattrs.items()), acls.get("access"), acls.get("default")
