"""The file cache of dedup backups read directly on the host: unchanged big files are
not read again, their chunk ids are taken from the previous backup of the same volume.

Why it is correct. The dedup chunker cuts before and after the data (with its tar
padding) of every file of at least ``min`` bytes, so such a file's data is a whole
number of chunks that depend on its content alone. If a file's (path, device, inode,
size, mtime, ctime) equal what they were when the previous backup read it, its data is
those same chunks: the source writes the file's header as always (from the current
stat and xattrs) and, instead of the data, a ``Reused`` marker carrying the chunk ids;
the writer appends them to the chunk list without the bytes. The tar stream a restore
produces is byte for byte the one a full read would have produced, and so is the chunk
list. What the backup computes from the plain stream stays true: the tar parser counts
entries and file bytes from headers and takes the marker's length as data it skipped
(``TarParser.skip``), so the manifest's tar size, entry and byte counts are the same;
the dedup format records no hash of the whole plain stream (each chunk is checked
against its keyed id on restore, and the restored size against the manifest), so there
is nothing to recompute. The archive format is never given a marker.

What can make an entry wrong, and what is done about it:

- a change that keeps size, mtime and ctime: ctime cannot be set from user space, so
  only a change within one tick of the file system's coarse clock after the file was
  read. Files whose mtime or ctime is within ``RACY_NS`` of the moment they were
  stat'ed are not cached (git's "racily clean" rule), so that tick is always over;
- chunks removed by a prune since: every chunk id of an entry is looked up in the
  repository's index (which leaves out packs a GC plan will delete) before it is used,
  else the file is read;
- another repository, chunker parameters, volume directory: the cache file is per
  (repository id, volume) and its header names the repository, the chunker parameters
  and the mountpoint; any difference and it is ignored;
- a damaged or truncated cache file: it ends with a BLAKE3 of its content; any doubt
  and it is ignored (a full read, no error).

``--exclude``: the direct source leaves excluded paths out during its walk
(``DirectSource.exclude``, the stream filter's Matcher and hard-link rule), so no filter
sits between the source and the writer and the stream offsets the cache's regions and
``Reused`` markers refer to are the stream the writer gets. A cache written with other
patterns is still right: entries are per path, and a path left out last time is read.

Where: ``<state_dir>/file-cache/<repository id>/<volume>.cache`` (beside the journal),
mode 0600 in a 0700 directory, written to a temp file, fsynced and renamed only after
the backup's manifest is committed. It holds the volume's paths and the chunk ids
(keyed hashes) of its big files: nothing the host cannot read anyway, and never stored
in the repository. Memory: the previous cache is held whole, about 150 bytes per big
file plus 36 bytes per chunk (a 5 GiB volume of 1 MiB files: ~5,000 entries, ~1 MB).

Removal (``sweep``, after every successful save, best effort): a cache file of any
repository in that directory is removed when the mountpoint in its header no longer
exists on this host (the volume was deleted; the state directory is this host's own,
like the journal) or when it was not rewritten for ``MAX_AGE`` (30 days: the caches
of a repository no longer used, or of a volume no longer backed up, go this way; keeping
them longer would save at most one full read each); a temp file goes after
``TEMP_AGE`` (1 day: an interrupted save; a save takes seconds). Nothing else is
touched: only regular ``*.cache`` files and their temp files, found through directory
handles that follow no symlink. Removing a cache wrongly costs one full read of that
volume, never correctness.

Measured (``scripts/bench_direct.py --incremental-mib 5120 --only-incremental --rounds
2``, 2 cores shared with other jobs, load 10-13): 1,271 files of 256 KiB-8 MiB plus
2,000 small ones (5,375 MB of tar), 12 files (1%) changed: ``docker cp`` out 30.2 s,
incremental backup with the cache 3.2 s (0.106x; 1,259 files reused, peak RSS 123 MiB),
with ``--no-cache`` 83.5 s. What is left is the walk, headers and small files.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import stat
import struct
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from ..util.host import fsync_dir, state_dir

MAGIC = b"volbak-file-cache\n"
VERSION = 1
REC = struct.Struct(">32sI")  # chunk id | raw length, as in the dedup chunk list
_ENTRY = struct.Struct(">IQQQqqI")  # path length, dev, ino, size, mtime_ns, ctime_ns, chunks
_U32 = struct.Struct(">I")
RACY_NS = 2_000_000_000  # coarse file-system clocks tick in <= 10 ms; 2 s covers FAT too
MAX_AGE = 30 * 86400  # seconds: a cache file not rewritten for this long is removed
TEMP_AGE = 86400  # a temp file this old is no save in progress (a save takes seconds)
_HEAD_MAX = 1 << 16  # a cache file's JSON header is a few hundred bytes
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _pad(n: int) -> int:
    return n + (-n % 512)


def cache_dir() -> Path:
    return state_dir() / "file-cache"


def cache_path(repo_id: str, volume: str) -> Path:
    return cache_dir() / urllib.parse.quote(repo_id, safe="") / (
        urllib.parse.quote(volume, safe="") + ".cache")


class Reused:
    """In place of a file's data and padding in the tar stream: ``size`` bytes that
    are the chunks ``chunks`` (packed REC records) already in the repository."""

    __slots__ = ("chunks", "size")

    def __init__(self, size: int, chunks: bytes) -> None:
        self.size = size
        self.chunks = chunks

    def __len__(self) -> int:
        return self.size

    def pairs(self) -> Iterator[tuple[bytes, int]]:
        return REC.iter_unpack(self.chunks)


@dataclass
class _Stat:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Stat:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def key(self) -> tuple[int, int, int, int, int]:
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns)


@dataclass
class Region:
    """One big file's data in this backup's stream, waiting for its chunk ids."""

    path: bytes
    stat: _Stat
    start: int  # stream offset of the data
    end: int  # after the padding
    ok: bool  # False once the file turned out to change while read (or is racy)
    chunks: bytearray | None = None
    complete: bool = False


@dataclass
class Scope:
    """What a cache file must agree with to be used."""

    repository: str
    volume: str
    mountpoint: str
    chunker: tuple[int, ...]

    def header(self) -> dict[str, Any]:
        return {"v": VERSION, "repository": self.repository, "volume": self.volume,
                "mountpoint": self.mountpoint, "chunker": list(self.chunker)}


def load(path: Path, scope: Scope) -> tuple[dict[bytes, tuple[tuple, bytes]], str]:
    """(entries, status): path -> (stat key, packed chunk records). Anything unexpected
    is an empty cache with the reason as status; never an error."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, "none"
    except OSError as e:
        return {}, f"unreadable ({e.strerror})"
    try:
        return _parse(raw, scope), "used"
    except _Ignored as e:
        return {}, str(e)
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError):
        return {}, "corrupt"


class _Ignored(Exception):
    pass


def _parse(raw: bytes, scope: Scope) -> dict[bytes, tuple[tuple, bytes]]:
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 4 + 32:
        raise _Ignored("corrupt")
    body, digest = raw[:-32], raw[-32:]
    if blake3.blake3(body).digest() != digest:
        raise _Ignored("corrupt")
    pos = len(MAGIC)
    (hlen,) = _U32.unpack_from(body, pos)
    pos += 4
    head = json.loads(body[pos:pos + hlen])
    pos += hlen
    want = scope.header()
    for k in ("v", "repository", "volume", "mountpoint", "chunker"):
        if head.get(k) != want[k]:
            raise _Ignored(f"stale ({k} differs)")
    out: dict[bytes, tuple[tuple, bytes]] = {}
    for _ in range(int(head["files"])):
        plen, dev, ino, size, mtime, ctime, n = _ENTRY.unpack_from(body, pos)
        pos += _ENTRY.size
        name = body[pos:pos + plen]
        pos += plen
        chunks = body[pos:pos + n * REC.size]
        pos += n * REC.size
        if len(name) != plen or len(chunks) != n * REC.size:
            raise _Ignored("corrupt")
        out[name] = ((dev, ino, size, mtime, ctime), chunks)
    if pos != len(body):
        raise _Ignored("corrupt")
    return out


def write(path: Path, scope: Scope, entries: Iterable[tuple[bytes, _Stat, bytes]]) -> int:
    """Write a cache file atomically (temp file, fsync, rename, fsync the directory);
    returns the number of entries."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        os.chmod(path.parent.parent, 0o700)
        os.chmod(path.parent, 0o700)
    items = list(entries)
    h = blake3.blake3()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            def put(data: bytes) -> None:
                f.write(data)
                h.update(data)

            head = json.dumps({**scope.header(), "files": len(items)}).encode()
            put(MAGIC + _U32.pack(len(head)) + head)
            for name, st, chunks in items:
                put(_ENTRY.pack(len(name), st.dev, st.ino, st.size, st.mtime_ns, st.ctime_ns,
                                len(chunks) // REC.size) + name + chunks)
            f.write(h.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return len(items)


@dataclass
class Stats:
    status: str = "off"  # used | none | corrupt | stale (...) | off (why)
    files_reused: int = 0
    bytes_reused: int = 0
    files_read: int = 0  # big files read (new, changed, or not in the cache)
    chunks_gone: int = 0  # cached files read again because a chunk left the index
    saved: int | None = None  # entries in the cache written after the backup
    save_error: str | None = None
    removed: int | None = None  # other cache files swept after the save (see ``sweep``)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Session:
    """One backup's use of the cache: the source asks ``lookup`` and announces every
    big file's data with ``region``; the writer reports every chunk to ``on_chunk``
    (in stream order); ``save`` after the manifest writes the new cache."""

    scope: Scope
    path: Path
    min_size: int  # files of at least this size are hard-cut (whole chunks)
    known: Callable[[bytes], bool]  # is this chunk id in the repository's index
    old: dict[bytes, tuple[tuple, bytes]] = field(default_factory=dict)
    stats: Stats = field(default_factory=Stats)
    clock: Callable[[], int] = time.time_ns

    def __post_init__(self) -> None:
        # appended by the source's thread, consumed by the writer's: deque ops are atomic
        self._regions: collections.deque[Region] = collections.deque()
        self._cur: Region | None = None
        self._pos = 0
        self._done: list[Region] = []

    # -- the source's side

    def lookup(self, path: bytes, st: os.stat_result) -> Reused | None:
        entry = self.old.pop(path, None)  # each path is asked once: free as we go
        if entry is None or entry[0] != _Stat.of(st).key():
            return None
        chunks = entry[1]
        total = 0
        for cid, raw in REC.iter_unpack(chunks):
            if not self.known(cid):
                self.stats.chunks_gone += 1
                return None
            total += raw
        if total != _pad(st.st_size):
            return None
        return Reused(total, chunks)

    def region(self, path: bytes, st: os.stat_result, start: int, size: int) -> Region:
        """The data of ``path`` (``size`` bytes, stat ``st`` taken before it was read)
        starts at stream offset ``start``; the caller clears ``ok`` if it changed."""
        now = self.clock()
        racy = max(st.st_mtime_ns, st.st_ctime_ns) > now - RACY_NS
        r = Region(path, _Stat.of(st), start, start + _pad(size), not racy)
        self._regions.append(r)
        return r

    def reused(self, size: int) -> None:
        self.stats.files_reused += 1
        self.stats.bytes_reused += size

    # -- the writer's side

    def on_chunk(self, cid: bytes, raw: int) -> None:
        start, end = self._pos, self._pos + raw
        self._pos = end
        cur = self._cur
        if cur is None:
            regions = self._regions
            while regions and regions[0].start < end:
                r = regions.popleft()
                if r.start == start:  # a region not starting at a cut is not kept
                    cur = self._cur = r
                    r.chunks = bytearray()
                    break
            if cur is None:
                return
        assert cur.chunks is not None
        cur.chunks += REC.pack(cid, raw)
        if end >= cur.end:
            cur.complete = end == cur.end
            if cur.complete:
                self._done.append(cur)
            self._cur = None

    # -- after the manifest

    def save(self) -> None:
        """Write the new cache: the big files of this backup that stayed unchanged while
        read. A failure costs only speed next time, so it is recorded, not raised."""
        entries = [(r.path, r.stat, bytes(r.chunks or b"")) for r in self._done
                   if r.ok and r.complete]
        try:
            self.stats.saved = write(self.path, self.scope, entries)
        except OSError as e:
            self.stats.save_error = f"{self.path}: {e.strerror or e}"
            return
        with contextlib.suppress(Exception):  # housekeeping: never fails a stored backup
            self.stats.removed = sweep(keep=self.path)


def sweep(keep: Path | None = None, now: float | None = None) -> int:
    """Remove the cache files no backup will use: those whose volume directory (the
    header's mountpoint) no longer exists on this host, those not rewritten for
    ``MAX_AGE``, and temp files older than ``TEMP_AGE``; ``keep`` (the file just
    written) is left alone. Only ``*.cache`` files and their temp files directly in
    ``<cache_dir>/<repository id>/`` are ever removed, through directory handles that
    follow no symlink. Best effort: anything unreadable or unexpected is left as it is.
    Returns how many files were removed."""
    now = time.time() if now is None else now
    try:
        top = os.open(cache_dir(), _O_DIR)
    except OSError:
        return 0
    removed = 0
    try:
        for sub in _dirs(top):
            try:
                dfd = os.open(sub, _O_DIR, dir_fd=top)
            except OSError:
                continue
            try:
                for name in os.listdir(dfd):
                    if keep is not None and (sub, name) == (keep.parent.name, keep.name):
                        continue
                    if _stale(dfd, name, now):
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=dfd)
                            removed += 1
            finally:
                os.close(dfd)
    finally:
        os.close(top)
    return removed


def _dirs(top: int) -> list[str]:
    with os.scandir(top) as it:
        return [e.name for e in it if e.is_dir(follow_symlinks=False)]


def _stale(dfd: int, name: str, now: float) -> bool:
    temp = name.startswith(".") and name.endswith(".tmp") and ".cache." in name
    if not (temp or name.endswith(".cache")):
        return False
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    age = now - st.st_mtime
    if temp:
        return age > TEMP_AGE
    if age > MAX_AGE:
        return True
    mountpoint = _mountpoint(dfd, name)
    if mountpoint is None:
        return False  # unreadable or not ours: only its age removes it
    try:
        os.stat(mountpoint)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # there but not visible to us (another user's engine): keep it
    return False


def _mountpoint(dfd: int, name: str) -> str | None:
    """The header's mountpoint; not checked against the trailing hash (that would mean
    reading the whole file): a damaged header at worst costs that volume one full read."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    try:
        head = os.pread(fd, len(MAGIC) + 4, 0)
        if len(head) != len(MAGIC) + 4 or not head.startswith(MAGIC):
            return None
        (hlen,) = _U32.unpack_from(head, len(MAGIC))
        if hlen > _HEAD_MAX:
            return None
        header = json.loads(os.pread(fd, hlen, len(head)))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    mountpoint = header.get("mountpoint") if isinstance(header, dict) else None
    return mountpoint if isinstance(mountpoint, str) and mountpoint.startswith("/") else None


def start(scope: Scope, min_size: int, known: Callable[[bytes], bool],
          enabled: bool = True, why_off: str = "off") -> Session:
    path = cache_path(scope.repository, scope.volume)
    s = Session(scope, path, min_size, known)
    if not enabled:
        s.stats.status = why_off
        return s
    s.old, s.stats.status = load(path, scope)
    return s
