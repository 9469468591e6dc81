"""Round-trip fidelity helpers: a tree full of traps, and a listing to compare trees.

    populate(src)                       # every trap a backup can fall into
    ... back up src, restore it to dst ...
    assert listing(src) == listing(dst), diff_listings(listing(src), listing(dst))

Tests run as root on the engines' host, so a volume's files are at
`volume_path(client, name)`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

# numeric ids that have no passwd/group entry
UID, GID = 999, 999
UID2, GID2 = 12345, 54321
BASE_MTIME = 1_600_000_000


def volume_path(client, name: str) -> Path:
    """Host directory of a local-driver volume (tests run as root on the engine host)."""
    return Path(client.volumes.get(name).attrs["Mountpoint"])


def _write(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _write_random(path: Path, size: int, chunk: int = 4 * 2**20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(chunk, left)
            f.write(os.urandom(n))
            left -= n
    return path


def populate(root: Path, *, big: int = 64 * 2**20) -> None:
    """Fill `root` (created if needed) with every fidelity trap.

    Content: random files, an empty file, a `big`-byte file, a sparse file; empty and
    nested empty dirs; relative, absolute, dangling and directory symlinks (targets
    verbatim); hardlinks with 2 and 3 names across dirs, one of them setuid; setuid,
    setgid, 0000 files, sticky, setgid and 0700 dirs; uid/gid without passwd entries
    on files, dirs and symlinks; distinct mtimes on everything (symlinks and dirs too);
    names with spaces, unicode, a newline, a leading dash, 255 bytes, and a path longer
    than 300 bytes; a fifo. The root itself ends 0700 and owned by 999:999.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    r = root

    # regular files
    _write_random(r / "files/small.bin", 1000)
    _write_random(r / "files/medium.bin", 300 * 1024 + 7)
    _write(r / "files/text.txt", b"hello volbak\n" * 100)
    _write(r / "files/empty")
    _write_random(r / "files/big.bin", big)
    sparse = r / "files/sparse.bin"
    with sparse.open("wb") as f:
        f.truncate(48 * 2**20)
        for off in (0, 8 * 2**20 + 123, 48 * 2**20 - 4096):
            f.seek(off)
            f.write(os.urandom(4096))

    # empty directories
    (r / "empty").mkdir()
    (r / "empty-nested/a/b/c").mkdir(parents=True)

    # symlinks, kept verbatim
    (r / "links").mkdir()
    os.symlink("../files/text.txt", r / "links/relative")
    os.symlink("/etc/hostname", r / "links/absolute")
    os.symlink("no/such/target", r / "links/dangling")
    os.symlink("../files", r / "links/to-dir")
    os.symlink("/nonexistent/abs/dangling", r / "links/absolute-dangling")

    # hardlinks: 2 names, 3 names across dirs, and a hardlinked setuid file
    _write_random(r / "hard/pair-a", 5000)
    os.link(r / "hard/pair-a", r / "hard/pair-b")
    _write_random(r / "hard/triple", 7000)
    (r / "hard-other/sub").mkdir(parents=True)
    os.link(r / "hard/triple", r / "hard-other/triple-2")
    os.link(r / "hard/triple", r / "hard-other/sub/triple-3")
    _write(r / "hard/setuid-linked", b"#!/bin/sh\necho hardlinked setuid\n")
    os.link(r / "hard/setuid-linked", r / "hard-other/setuid-linked-2")

    # special modes (applied after chown below: chown clears setuid/setgid)
    _write(r / "modes/setuid", b"#!/bin/sh\necho setuid\n")
    _write(r / "modes/setgid", b"#!/bin/sh\necho setgid\n")
    _write(r / "modes/no-perms", b"nobody may read me\n")
    _write(r / "modes/exec", b"#!/bin/sh\necho exec\n")
    (r / "modes/sticky").mkdir()
    _write(r / "modes/sticky/inside", b"x")
    (r / "modes/private").mkdir()
    _write(r / "modes/private/secret", b"s3cr3t\n")
    (r / "modes/setgid-dir").mkdir()

    # owners without passwd entries
    _write(r / "owners/file", b"owned by 999\n")
    (r / "owners/dir").mkdir()
    _write(r / "owners/dir/file2", b"owned by 12345\n")
    os.symlink("file", r / "owners/link")

    # names
    names = r / "names"
    names.mkdir()
    for n in ("with space", "ünïcödé-日本語", "new\nline", "-leading-dash", "tab\there"):
        _write(names / n, n.encode() + b"\n")
    _write(names / ("L" * 255), b"255-byte name\n")
    deep = names / "deep"
    rel = "names/deep"
    i = 0
    while len(rel.encode()) <= 320:
        seg = f"level{i:02d}-" + "d" * 40
        deep = deep / seg
        rel += "/" + seg
        i += 1
    _write(deep / ("f" * 100), b"deep and long path\n")

    # fifo
    (r / "special").mkdir()
    os.mkfifo(r / "special/fifo", 0o640)

    # ownership (lchown: never through symlinks)
    os.chown(r / "owners/file", UID, GID)
    os.chown(r / "owners/dir", UID2, GID2)
    os.chown(r / "owners/dir/file2", UID2, GID2)
    os.lchown(r / "owners/link", UID2, GID2)
    os.lchown(r / "links/dangling", UID, GID)
    os.chown(r / "hard/triple", UID2, GID2)
    os.chown(r / "hard/setuid-linked", UID, GID)
    os.chown(r / "modes/setuid", UID, GID)
    os.chown(r / "modes/setgid", UID2, GID2)
    os.chown(r / "special/fifo", UID, GID)

    # modes
    os.chmod(r / "modes/setuid", 0o4755)
    os.chmod(r / "modes/setgid", 0o2755)
    os.chmod(r / "hard/setuid-linked", 0o4750)
    os.chmod(r / "modes/no-perms", 0o000)
    os.chmod(r / "modes/exec", 0o755)
    os.chmod(r / "modes/sticky", 0o1777)
    os.chmod(r / "modes/private", 0o700)
    os.chmod(r / "modes/setgid-dir", 0o2775)
    os.chmod(r / "files/text.txt", 0o600)
    os.chmod(r / "hard/pair-a", 0o640)

    # mtimes: distinct, non-dirs first, then dirs deepest first, the root last
    dirs: list[Path] = []
    others: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(r):
        dirs.extend(Path(dirpath) / d for d in dirnames)
        others.extend(Path(dirpath) / f for f in filenames)
    t = BASE_MTIME
    for p in sorted(others):
        t += 1000
        os.utime(p, ns=(t * 10**9 + 123_456_789,) * 2, follow_symlinks=False)
    for p in sorted(dirs, key=lambda p: (-len(p.parts), p)):
        t += 1000
        os.utime(p, ns=(t * 10**9 + 987_654_321,) * 2, follow_symlinks=False)

    # the root itself, like PostgreSQL's data directory
    os.chown(r, UID, GID)
    os.chmod(r, 0o700)
    os.utime(r, (t + 1000, t + 1000))


class Entry(NamedTuple):
    path: str
    type: str
    mode: int  # full st_mode, with setuid/setgid/sticky
    uid: int
    gid: int
    size: int  # 0 for dirs: their size depends on the filesystem
    mtime: int  # seconds
    target: str | None  # symlink target, verbatim
    sha256: str | None  # regular files
    hardlink: str | None  # smallest path sharing the inode within the tree, else None


_TYPES = {
    stat.S_IFDIR: "dir",
    stat.S_IFREG: "file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFSOCK: "socket",
}


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def listing(root: Path) -> list[Entry]:
    """Every entry under `root` (root itself as '.'), sorted by path."""
    root_s = os.fspath(root)
    raw: list[tuple[str, str, os.stat_result]] = [(".", root_s, os.lstat(root_s))]
    stack = [(".", root_s)]
    while stack:
        rel, full = stack.pop()
        with os.scandir(full) as it:
            for de in it:
                r = de.name if rel == "." else f"{rel}/{de.name}"
                st = de.stat(follow_symlinks=False)
                raw.append((r, de.path, st))
                if stat.S_ISDIR(st.st_mode):
                    stack.append((r, de.path))
    raw.sort(key=lambda x: x[0])
    groups: dict[tuple[int, int], list[str]] = {}
    for r, _, st in raw:
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            groups.setdefault((st.st_dev, st.st_ino), []).append(r)
    out = []
    for r, full, st in raw:
        kind = _TYPES.get(stat.S_IFMT(st.st_mode), "other")
        names = groups.get((st.st_dev, st.st_ino)) if kind != "dir" else None
        out.append(
            Entry(
                path=r,
                type=kind,
                mode=st.st_mode,
                uid=st.st_uid,
                gid=st.st_gid,
                size=0 if kind == "dir" else st.st_size,
                mtime=int(st.st_mtime),
                target=os.readlink(full) if kind == "symlink" else None,
                sha256=_sha256(full) if kind == "file" else None,
                hardlink=min(names) if names and len(names) > 1 else None,
            )
        )
    return out


def _show(field: str, value) -> str:
    if field == "mode" and isinstance(value, int):
        return oct(value)
    return repr(value)


def diff_listings(
    a: Iterable[Entry], b: Iterable[Entry], *, ignore: Iterable[str] = (), limit: int = 60
) -> str:
    """Human-readable differences between two listings ('' if equal), for assertion
    messages. `ignore` names Entry fields not to compare (e.g. {"mtime"})."""
    skip = set(ignore)
    am = {e.path: e for e in a}
    bm = {e.path: e for e in b}
    lines = []
    for p in sorted(am.keys() | bm.keys()):
        ea, eb = am.get(p), bm.get(p)
        if eb is None:
            lines.append(f"only in a: {p!r} ({ea.type})")
        elif ea is None:
            lines.append(f"only in b: {p!r} ({eb.type})")
        else:
            for field in Entry._fields[1:]:
                if field in skip:
                    continue
                va, vb = getattr(ea, field), getattr(eb, field)
                if va != vb:
                    lines.append(f"{p!r}: {field} {_show(field, va)} != {_show(field, vb)}")
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more differences"]
    return "\n".join(lines)
