"""The direct volume path (volbak.volumes): a host directory to a tar stream and back
with every attribute, GNU tar interop both ways, hostile archives refused with nothing
written outside the target, the source/target selector, and the layout against a real
engine's ``GET archive``.

Needs the Debian packages attr (setfattr), acl (setfacl/getfacl) and libcap2-bin
(setcap); tests that need root skip without it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fidelity import populate

from volbak.errors import IntegrityError, NotFoundError, UsageError, VolbakError
from volbak.stream.tar import TarParser
from volbak.volumes import direct, select, tarfmt
from volbak.volumes.direct import DirectSource, DirectTarget

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (owners, trusted.*, devices)")


def _tools(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            pytest.skip(f"{name} is not installed (Debian packages attr, acl, libcap2-bin)")


# ------------------------------------------------------------------ a tree and a listing


def build_tree(root: Path) -> None:
    """fidelity.populate's traps plus what only the direct path keeps: xattrs in every
    namespace, ACLs, file capabilities, more sparse shapes, devices, a socket (skipped),
    names that are not UTF-8, nanosecond and pre-1970 mtimes, the root's own xattrs."""
    _tools("setfattr", "setfacl", "setcap")
    populate(root, big=3 * 2**20 + 5)
    r = root
    (r / "x").mkdir()
    (r / "x/user").write_bytes(b"xattrs\n")
    subprocess.run(["setfattr", "-n", "user.note", "-v", "hello", r / "x/user"], check=True)
    subprocess.run(["setfattr", "-n", "user.bin", "-v", "0x00ff00fe0a0d", r / "x/user"],
                   check=True)
    subprocess.run(["setfattr", "-n", "trusted.t", "-v", "trusted-value", r / "x/user"],
                   check=True)
    subprocess.run(["setfattr", "-n", "security.volbak", "-v", "sec", r / "x/user"],
                   check=True)
    os.symlink("user", r / "x/link-with-xattr")
    subprocess.run(["setfattr", "-h", "-n", "trusted.on-link", "-v", "1",
                    r / "x/link-with-xattr"], check=True)
    (r / "x/dir").mkdir()
    subprocess.run(["setfattr", "-n", "user.dir", "-v", "d", r / "x/dir"], check=True)
    # ACLs: access on a file, default and access on directories
    (r / "acl").mkdir()
    (r / "acl/file").write_bytes(b"acl\n")
    subprocess.run(["setfacl", "-m", "u:1000:rw,g:2000:r,u:4242:---", r / "acl/file"], check=True)
    (r / "acl/defaults").mkdir()
    subprocess.run(["setfacl", "-d", "-m", "u:1000:rwx,g:3000:rx", r / "acl/defaults"],
                   check=True)
    subprocess.run(["setfacl", "-m", "u:1001:rx", r / "acl/defaults"], check=True)
    # capabilities (security.capability), on a hardlinked, setuid-free file
    (r / "caps").mkdir()
    (r / "caps/ping").write_bytes(b"\x7fELF pretend\n")
    os.chmod(r / "caps/ping", 0o755)
    subprocess.run(["setcap", "cap_net_raw+ep", r / "caps/ping"], check=True)
    # sparse shapes: leading hole, trailing hole, only a hole, small sparse
    sp = r / "sparse"
    sp.mkdir()
    for name, size, writes in (
        ("lead-hole", 20 * 2**20, [(12 * 2**20, b"tail" * 1024)]),
        ("trail-hole", 20 * 2**20, [(0, b"head" * 2048)]),
        ("all-hole", 9 * 2**20, []),
        ("small", 256 * 1024, [(128 * 1024, b"x" * 4096)]),
        ("many", 8 * 2**20, [(i * 2**20, os.urandom(8192)) for i in range(0, 8, 2)]),
    ):
        with open(sp / name, "wb") as f:
            f.truncate(size)
            for off, data in writes:
                f.seek(off)
                f.write(data)
    # devices and a socket
    if ROOT:
        os.mknod(r / "special/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(r / "special/loopish", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
        os.chown(r / "special/null", 5, 6)
    s = socket.socket(socket.AF_UNIX)
    s.bind(os.fspath(r / "special/sock"))
    s.close()
    # names: not UTF-8, very long path (> 255 bytes in one name is impossible)
    bad = os.fsencode(r / "names") + b"/latin1-\xe9t\xe9-\xff"
    with open(bad, "wb") as f:
        f.write(b"bytes name\n")
    # mtimes: nanoseconds, pre-1970, far future
    os.utime(r / "x/user", ns=(1, 1_700_000_000_123_456_789))
    os.utime(r / "files/empty", ns=(1, -86_400 * 365 * 10 * 10**9 - 5))
    os.utime(r / "caps/ping", ns=(1, 8**11 * 10**9 + 7))  # beyond ustar's 11 digits
    # the root's own attributes (populate made it 0700 999:999)
    subprocess.run(["setfattr", "-n", "user.root", "-v", "r", r], check=True)
    subprocess.run(["setfacl", "-d", "-m", "g:4000:rx", r], check=True)
    for d in ("x", "acl", "caps", "sparse", "special", "names"):
        os.utime(r / d, ns=(1, 1_650_000_000_000_000_001))
    os.utime(r, ns=(1, 1_660_000_000_000_000_002))


def _xattrs(path: bytes) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def listing(root: Path | bytes) -> dict[bytes, tuple]:
    """path -> (type, mode, uid, gid, size, mtime_ns, link target, sha256, xattrs,
    hardlink group, sparse blocks) for everything below root, root itself as b"."."""
    root = os.fsencode(root)
    out: dict[bytes, tuple] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    stack = [b"."]
    while stack:
        rel = stack.pop()
        full = root if rel == b"." else root + b"/" + rel[2:]
        st = os.lstat(full)
        mode = st.st_mode
        kind = stat.S_IFMT(mode)
        digest = target = blocks = None
        if stat.S_ISREG(mode):
            with open(full, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if st.st_blocks * 512 < st.st_size:
                blocks = st.st_blocks
        elif stat.S_ISLNK(mode):
            target = os.readlink(full)
        elif stat.S_ISDIR(mode):
            stack.extend(rel + b"/" + n for n in os.listdir(full))
        if not stat.S_ISDIR(mode) and st.st_nlink > 1:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        out[rel] = (kind, stat.S_IMODE(mode), st.st_uid, st.st_gid,
                    0 if stat.S_ISDIR(mode) else st.st_size, st.st_mtime_ns, target, digest,
                    _xattrs(full), st.st_ino, blocks,
                    st.st_rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0)
    groups = {ino: min(names) for ino, names in inodes.items()}
    for rel, entry in out.items():
        key = (os.lstat(root if rel == b"." else root + b"/" + rel[2:]).st_dev, entry[9])
        out[rel] = (*entry[:9], groups.get(key), *entry[10:])
    return out


def getfacl(root: Path) -> list[str]:
    """getfacl's view of every ACL below root, paths relative, sorted."""
    text = subprocess.run(["getfacl", "-R", "-P", "-n", "-p", "."], cwd=root, check=True,
                          capture_output=True).stdout.decode("utf-8", "backslashreplace")
    blocks = (block.strip() for block in text.split("\n\n"))
    return sorted(b for b in blocks if b and not b.startswith("# file: ./special/sock\n"))


def diff(a: dict, b: dict) -> str:
    fields = ("type", "mode", "uid", "gid", "size", "mtime_ns", "target", "sha256",
              "xattrs", "hardlink", "sparse_blocks", "rdev")
    lines = []
    for path in sorted(a.keys() | b.keys()):
        if path not in b or path not in a:
            lines.append(f"{path!r} only in {'a' if path in a else 'b'}")
            continue
        for name, va, vb in zip(fields, a[path], b[path], strict=True):
            if va != vb:
                lines.append(f"{path!r}: {name} {va!r} != {vb!r}")
    return "\n".join(lines[:60])


def _without_sockets(entries: dict) -> dict:
    return {p: e for p, e in entries.items() if e[0] != stat.S_IFSOCK}


def read_all(source: DirectSource, n: int = 2**20) -> Iterator[bytes]:
    with source:
        while chunk := source.read(n):
            yield chunk


@pytest.fixture(params=[False, True], ids=["one-process", "forked"])
def fork(request) -> bool:
    """Extraction in one process, or with the entries written by a forked child."""
    return request.param


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if not ROOT:
        pytest.skip("building the full tree needs root (owners, trusted.*, devices)")
    src = tmp_path / "src"
    build_tree(src)
    return src


# ------------------------------------------------------------------ round trips


@needs_root
def test_round_trip_keeps_everything(tree: Path, tmp_path: Path, fork: bool) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    source = DirectSource(tree)
    report = DirectTarget(dst, fork=fork).extract(read_all(source, 100_000))
    assert report.warnings == []
    assert source.report.skipped == 1
    assert any("sock" in w and "socket" in w for w in source.report.warnings)
    before, after = _without_sockets(listing(tree)), listing(dst)
    assert before == after, diff(before, after)
    assert getfacl(tree) == getfacl(dst)
    # holes came back as holes
    assert os.stat(dst / "sparse/all-hole").st_blocks == 0
    assert os.stat(dst / "files/sparse.bin").st_blocks * 512 < 1024 * 1024


@needs_root
@pytest.mark.parametrize("parent", ["setgid", "default-acl", "umask"])
def test_new_files_get_the_entrys_owner_and_mode_whatever_the_parent_gives(
        tmp_path: Path, fork: bool, parent: str, request) -> None:
    """A file is made with its final mode and no chown where the kernel would give it
    the entry's owner and mode anyway: a setgid target (its group for new files), a
    default ACL (it, not the umask, decides their mode) or a strict umask must not
    make that guess wrong."""
    dst = tmp_path / "dst"
    dst.mkdir()
    os.chown(dst, 0, 4321)
    os.chmod(dst, 0o2777)
    if parent == "default-acl":
        _tools("setfacl")
        subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::---,o::---", dst], check=True)
    if parent == "umask":
        old = os.umask(0o077)
        request.addfinalizer(lambda: os.umask(old))
    def entry(name: str, uid: int, gid: int, mode: int, data: bytes | None = b"x"):
        info, _ = _dir(name) if data is None else _file(name, data)
        info.uid, info.gid, info.mode = uid, gid, mode
        return info, data

    files = {"a": (0, 4321, 0o644), "b": (0, 0, 0o644), "c": (0, 4321, 0o666),
             "d": (0, 4321, 0o4755), "e": (5, 6, 0o000), "s/f": (0, 0, 0o640),
             "s/g": (0, 4321, 0o600)}
    data = _tar(entry("data", 0, 4321, 0o2777, None), entry("data/s", 0, 4321, 0o2755, None),
                *(entry(f"data/{n}", *v) for n, v in files.items()))
    direct.extract(dst, [data], fork=fork)
    got = {n: (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
           for n in files for st in [os.stat(dst / n)]}
    assert got == files


@needs_root
def test_stream_layout_is_the_archive_apis(tree: Path) -> None:
    data = b"".join(read_all(DirectSource(tree, root="data")))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = tar.getmembers()
    assert members[0].name == "data" and members[0].isdir()
    assert members[0].mode == 0o700 and (members[0].uid, members[0].gid) == (999, 999)
    names = [m.name for m in members]
    assert all(n == "data" or n.startswith("data/") for n in names)
    # depth-first, names sorted bytewise within each directory (as Go's Walk does)
    parts = [os.fsencode(n).split(b"/") for n in names]
    assert parts == sorted(parts)
    byname = {m.name: m for m in members}
    first, second = "data/hard/setuid-linked", "data/hard-other/setuid-linked-2"
    assert byname[first].isfile() and byname[second].islnk()
    assert byname[second].linkname == first
    assert data.endswith(bytes(1024)) and len(data) % 512 == 0


@needs_root
def test_gnu_tar_extracts_the_stream(tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"".join(read_all(DirectSource(tree))))
    listed = subprocess.run(["tar", "-tvf", archive], check=True, capture_output=True)
    assert b"data/sparse/lead-hole" in listed.stdout
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-x", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
                    "--same-owner", "-p", "-C", out, "-f", archive], check=True)
    before, after = _without_sockets(listing(tree)), listing(out / "data")
    assert before == after, diff(before, after)
    assert getfacl(tree) == getfacl(out / "data")


@needs_root
def test_target_extracts_gnu_tar_archives(tree: Path, tmp_path: Path) -> None:
    made = subprocess.run(
        ["tar", "-c", "--format=posix", "--xattrs", "--xattrs-include=*", "--acls", "--sparse",
         "--numeric-owner", "--sort=name", "--transform=s,^\\.,data,S", "-C", tree,
         "-f", "-", "."],
        capture_output=True,
    )
    assert made.returncode in (0, 1), made.stderr  # 1: "socket ignored"
    dst = tmp_path / "dst"
    dst.mkdir()
    report = direct.extract(dst, [made.stdout[i:i + 65536]
                                  for i in range(0, len(made.stdout), 65536)])
    assert report.warnings == []
    before, after = _without_sockets(listing(tree)), listing(dst)
    assert before == after, diff(before, after)
    assert getfacl(tree) == getfacl(dst)


def test_acl_text_round_trip() -> None:
    text = b"user::rw-\nuser:1000:rw-\ngroup::r--\ngroup:2000:r--\nmask::rw-\nother::---\n"
    blob = tarfmt.acl_from_text(text)
    assert tarfmt.acl_to_text(blob) == text
    assert tarfmt.acl_from_text(b"u::rw-,g::r--,o::---,u:7:r-x,m::r-x") == tarfmt.acl_from_text(
        b"user::rw-\nuser:7:r-x\ngroup::r--\nmask::r-x\nother::---\n")


# ------------------------------------------------------------------ changes while reading


def test_small_file_changing_while_read_is_read_again(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"one")
    calls = []
    real = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real(fd, n, offset)
        if not calls:  # the file changes right after its first read
            (src / "f").write_bytes(b"two, longer")
        calls.append(n)
        return data

    monkeypatch.setattr(direct.os, "pread", pread)
    source = DirectSource(src)
    data = b"".join(read_all(source))
    monkeypatch.undo()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("data/f").read() == b"two, longer"
    assert source.report.changed == 0 and source.report.warnings == []


def test_file_that_keeps_changing_is_reported(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "busy").write_bytes(b"0")
    (src / "big").write_bytes(os.urandom(3 * 2**20))
    real = os.pread
    counter = iter(range(10**6))

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real(fd, n, offset)
        k = next(counter)
        (src / "busy").write_bytes(b"x" * (k + 2))
        with open(src / "big", "r+b") as f:
            f.write(b"%d" % k)
        return data

    monkeypatch.setattr(direct.os, "pread", pread)
    source = DirectSource(src)
    data = b"".join(read_all(source))
    monkeypatch.undo()
    assert source.report.changed == 2
    assert any("busy" in w and "changed" in w for w in source.report.warnings)
    assert any("big" in w and "changed" in w for w in source.report.warnings)
    dst = tmp_path / "dst"
    dst.mkdir()
    direct.extract(dst, [data])  # still a well-formed stream
    assert (dst / "big").stat().st_size == 3 * 2**20


def test_volume_directory_disappearing_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub/f").write_bytes(b"x")
    source = DirectSource(src)
    assert source.read(512)  # the root's header; nothing listed yet
    shutil.rmtree(src)
    with pytest.raises(NotFoundError, match="disappeared"):
        while source.read(2**20):
            pass
    with pytest.raises(NotFoundError):  # never a clean-looking end after a failure
        source.read(2**20)
    source.close()


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        DirectSource(tmp_path / "nope")


@needs_root
def test_other_filesystems_are_not_entered(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "keep").write_bytes(b"k")
    if subprocess.run(["mount", "-t", "tmpfs", "volbak-test", src / "mnt"]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (src / "mnt/hidden").write_bytes(b"other fs")
        source = DirectSource(src)
        data = b"".join(read_all(source))
    finally:
        subprocess.run(["umount", src / "mnt"], check=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert "data/mnt" in names and "data/keep" in names and "data/mnt/hidden" not in names
    assert any("mnt" in w and "another filesystem" in w for w in source.report.warnings)


# ------------------------------------------------------------------ --exclude in the walk

EXCLUDE = ["cache", "*.tmp", "var/log", "/s/sparse", "w/*/drop"]


def exclude_tree(root: Path) -> None:
    """Anchored and unanchored matches at several depths, and hard links whose first
    name (in stream order) is left out, kept, or left out deep inside an excluded
    directory."""
    def put(rel: str, data: bytes = b"") -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data or rel.encode() * 50)
        return p

    for rel in ("keep.txt", "a/keep", "a/cache/x", "a/cache/sub/y", "deep/a/b/cache/c/f",
                "deep/a/b/kept", "var/log/app.log", "var/logs/kept", "var/kept",
                "b/log/kept.log", "w/1/drop", "w/1/keep", "w/2/x/drop", "x.tmp.keep"):
        put(rel)
    (root / "empty-cache-parent/cache").mkdir(parents=True)
    (root / "links").mkdir()
    os.symlink("../keep.txt", root / "links/cache")  # a symlink called cache: left out
    os.symlink("cache", root / "links/to-cache")  # kept: patterns match names, not targets
    # first name excluded by a name pattern: the later names go too
    os.link(put("a.tmp"), put("c/a-link", b"-").parent / "a-link2")
    # first name kept: later names are links, except those excluded themselves
    os.link(put("b/x-link"), root / "x.tmp")
    # three names: kept first, excluded second, kept third (a link to the first)
    t1 = put("d/t1")
    (root / "e/cache").mkdir(parents=True)
    os.link(t1, root / "e/cache/t2")
    os.link(t1, put("f/t3", b"-").parent / "t3b")
    # three names, the first deep inside an excluded directory
    tri = put("cache/deeper/tri")
    (root / "m").mkdir()
    (root / "n").mkdir()
    os.link(tri, root / "m/tri2")
    os.link(tri, root / "n/tri3")
    # a sparse file left out by an anchored pattern, with a link after it
    (root / "s").mkdir()
    with open(root / "s/sparse", "wb") as f:
        f.seek(5 * 2**20)
        f.write(b"end")
    (root / "t").mkdir()
    os.link(root / "s/sparse", root / "t/sparse-link")


def test_exclude_in_the_walk_is_the_stream_filter(tmp_path: Path) -> None:
    """DirectSource.exclude gives byte for byte the stream ExcludeFilter makes of the
    full one, so the restore is the same; the walk does not enter excluded directories."""
    from volbak.stream.exclude import ExcludeFilter

    src = tmp_path / "src"
    exclude_tree(src)
    walked = DirectSource(src)
    walked.exclude(EXCLUDE)
    direct_stream = b"".join(read_all(walked, 100_000))
    with DirectSource(src) as full:
        filt = ExcludeFilter(full.read, EXCLUDE, "data")
        filtered = b"".join(iter(lambda: filt.read(100_000), b""))
    assert direct_stream == filtered
    with tarfile.open(fileobj=io.BytesIO(direct_stream)) as tar:
        names = {m.name.removeprefix("data/") for m in tar.getmembers()}
        sparse_kept = [m.name for m in tar.getmembers() if m.issparse()]
    assert not sparse_kept  # the only sparse file is left out
    assert {"keep.txt", "a/keep", "deep/a/b/kept", "var/logs/kept", "var/kept",
            "b/log/kept.log", "w/1/keep", "x.tmp.keep", "links/to-cache", "b/x-link",
            "d/t1", "f/t3b", "m", "n", "t", "empty-cache-parent"} <= names
    for gone in ("a/cache", "a/cache/x", "deep/a/b/cache", "var/log", "var/log/app.log",
                 "w/1/drop", "w/2/x/drop", "links/cache", "a.tmp", "c/a-link2", "x.tmp",
                 "e/cache", "e/cache/t2", "cache", "m/tri2", "n/tri3", "s/sparse",
                 "t/sparse-link", "empty-cache-parent/cache"):
        assert gone not in names, gone
    # names met by the walk (directories once) and the four links to left-out names
    assert walked.report.excluded == 12 + 4
    assert filt.excluded > walked.report.excluded  # the filter counts directories' contents

    out = {}
    for label, stream in (("walk", direct_stream), ("filter", filtered)):
        dst = tmp_path / label
        dst.mkdir()
        DirectTarget(dst).extract(iter([stream]))
        out[label] = listing(dst)
    assert out["walk"] == out["filter"], diff(out["walk"], out["filter"])
    assert out["walk"][b"./f/t3b"][9] == b"./d/t1"  # still one inode, as in the source


def test_exclude_without_hard_links_never_walks_what_it_leaves_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    for rel in ("cache/a", "cache/b/c", "keep", "sub/x.tmp", "sub/y"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    opened: list[str] = []
    real_open = os.open

    def spy(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    source = DirectSource(src)
    source.exclude(["cache", "*.tmp"])
    monkeypatch.setattr(DirectSource, "_index_excluded", lambda self: pytest.fail("walked"))
    monkeypatch.setattr(os, "open", spy)
    with tarfile.open(fileobj=io.BytesIO(b"".join(read_all(source)))) as tar:
        assert tar.getnames() == ["data", "data/keep", "data/sub", "data/sub/y"]
    assert "cache" not in opened and "x.tmp" not in opened
    assert source.report.excluded == 2


# ------------------------------------------------------------------ hostile archives


def _tar(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT
         ) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def _file(name: str, data: bytes = b"pwned\n", pax: dict | None = None
          ) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if pax:
        info.pax_headers = pax
    return info, data


def _link(name: str, target: str, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def _hostile(out: Path) -> dict[str, list]:
    o = os.fspath(out)
    return {
        "dotdot": [_dir("data"), _file("data/../x")],
        "dotdot-top": [_dir("data"), _file("../x")],
        "dotdot-deep": [_dir("data"), _file("data/a/../../../outside/x")],
        "absolute": [_dir("data"), _file(f"{o}/x")],
        "outside-root": [_dir("data"), _file("other/x")],
        "pax-path": [_dir("data"), _file("data/ok", pax={"path": "data/../../outside/x"})],
        "symlink-abs-then-file": [_dir("data"), _link("data/link", o),
                                  _file("data/link/x")],
        "symlink-rel-then-file": [_dir("data"), _link("data/link", "../../outside"),
                                  _file("data/link/x")],
        "symlink-chain": [_dir("data"), _link("data/a", "b"), _link("data/b", o),
                          _file("data/a/x")],
        "symlink-then-dir": [_dir("data"), _link("data/link", o), _dir("data/link/sub")],
        "symlink-deeper": [_dir("data"), _link("data/link", o), _file("data/link/a/b/x")],
        "dir-replaced-by-symlink": [_dir("data"), _dir("data/d"), _link("data/d", o),
                                    _file("data/d/x")],
        "hardlink-dotdot": [_dir("data"), _link("data/h", "../../etc/passwd", hard=True)],
        "hardlink-absolute": [_dir("data"), _link("data/h", f"{o}/secret", hard=True)],
        "hardlink-outside-root": [_dir("data"), _link("data/h", "other/secret", hard=True)],
        "hardlink-through-symlink": [_dir("data"), _link("data/l", o),
                                     _link("data/h", "data/l/secret", hard=True)],
        "hardlink-missing": [_dir("data"), _link("data/h", "data/nothing", hard=True)],
    }


@pytest.mark.parametrize("case", sorted(_hostile(Path("/x"))))
def test_hostile_archive_is_refused(case: str, tmp_path: Path, fork: bool) -> None:
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret").write_bytes(b"secret\n")
    target = tmp_path / "volumes" / "vol" / "_data"
    target.mkdir(parents=True)
    before = sorted(p for p in tmp_path.rglob("*") if target not in (p, *p.parents))
    data = _tar(*_hostile(out)[case])
    with pytest.raises(IntegrityError, match="refusing the archive") as err:
        direct.extract(target, [data[i:i + 700] for i in range(0, len(data), 700)],
                       fork=fork)
    assert str(err.value).startswith("refusing the archive: entry ")
    after = sorted(p for p in tmp_path.rglob("*") if target not in (p, *p.parents))
    assert after == before
    assert (out / "secret").read_bytes() == b"secret\n" and (out / "secret").stat().st_nlink == 1
    assert list(out.iterdir()) == [out / "secret"]


def test_hostile_refusal_names_the_entry(tmp_path: Path, fork: bool) -> None:
    data = _tar(_dir("data"), _link("data/link", "/tmp"), _file("data/link/evil"))
    with pytest.raises(IntegrityError, match=r"data/link/evil.*symlink") as err:
        direct.extract(tmp_path, [data], fork=fork)
    assert err.value.hint


def test_replacing_a_symlink_with_a_file_writes_inside(tmp_path: Path, fork: bool) -> None:
    out = tmp_path / "outside"
    out.mkdir()
    target = tmp_path / "t"
    target.mkdir()
    data = _tar(_dir("data"), _link("data/x", os.fspath(out / "f")), _file("data/x", b"in"))
    direct.extract(target, [data], fork=fork)
    assert (target / "x").read_bytes() == b"in" and not (target / "x").is_symlink()
    assert list(out.iterdir()) == []


def test_gnu_long_names_are_checked_too(tmp_path: Path, fork: bool) -> None:
    out = tmp_path / "outside"
    out.mkdir()
    target = tmp_path / "t"
    target.mkdir()
    name = "data/" + "a/" * 60 + "../" * 62 + "outside/x"
    data = _tar(_dir("data"), _file(name), fmt=tarfile.GNU_FORMAT)
    with pytest.raises(IntegrityError, match=r"'\.\.'"):
        direct.extract(target, [data], fork=fork)
    assert list(out.iterdir()) == []


def test_truncated_and_corrupt_archives(tmp_path: Path, fork: bool) -> None:
    data = _tar(_dir("data"), _file("data/f", b"x" * 5000))
    with pytest.raises(IntegrityError, match="ended early"):
        direct.extract(tmp_path / ".", [data[:3000]], fork=fork)
    bad = bytearray(data)
    bad[600] ^= 0xFF  # inside the second header
    (tmp_path / "2").mkdir()
    with pytest.raises(IntegrityError, match="checksum"):
        direct.extract(tmp_path / "2", [bytes(bad)], fork=fork)
    _no_child_left()


# ------------------------------------------------------------------ the forked writer


def _many_files(root: Path) -> None:
    """More entries than one batch holds (4,096), files bigger than one batch's data
    (1 MiB), empty files and hard links: every way a batch can end."""
    for d in range(5):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(1000):
            (root / f"d{d}/f{i:04d}").write_bytes(os.urandom(i % 3 * 700))
    (root / "big").write_bytes(os.urandom(2_500_000))
    (root / "exact").write_bytes(os.urandom(1 << 20))
    os.link(root / "big", root / "d0/big-too")
    os.chmod(root / "d1", 0o750)
    os.utime(root / "d2", ns=(1, 1_500_000_000_000_000_001))


@pytest.mark.parametrize("fork", [False, True])
def test_short_writes_of_a_file_are_continued(tmp_path: Path, monkeypatch, fork: bool
                                              ) -> None:
    """A write that takes only part of a file's data (a full pipe, a signal) is
    continued where it stopped: for a small file written in one call as for a big one."""
    files = {"empty": b"", "small": os.urandom(5000), "big": os.urandom(300_000)}
    archive = _tar(_dir("data"), *(_file(f"data/{n}", d) for n, d in files.items()))
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, memoryview(data)[:1000]))
    DirectTarget(tmp_path, fork=fork).extract([archive])
    assert {n: (tmp_path / n).read_bytes() for n in files} == files
    _no_child_left()


@pytest.mark.parametrize("step", [65536, 1_048_577])
def test_forked_extraction_is_the_one_process_extraction(tmp_path: Path, step: int) -> None:
    src = tmp_path / "src"
    _many_files(src)
    data = b"".join(read_all(DirectSource(src)))
    reports = {}
    for fork in (False, True):
        dst = tmp_path / f"dst-{fork}"
        dst.mkdir()
        reports[fork] = DirectTarget(dst, fork=fork).extract(
            data[i:i + step] for i in range(0, len(data), step))
    one, two = listing(tmp_path / "dst-False"), listing(tmp_path / "dst-True")
    assert one == two, diff(one, two)
    assert listing(src) == one, diff(listing(src), one)
    assert reports[True] == reports[False]
    assert reports[True].entries == 1 + 5 + 5000 + 3 and reports[True].warnings == []
    _no_child_left()


def test_forked_extraction_reports_the_childs_warnings(tmp_path: Path, monkeypatch) -> None:
    """Warnings happen where the files are written, in the child: they reach the
    caller's report."""
    def refused(*args):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "fchown", refused)
    data = _tar(_dir("data"), _file("data/a"), _file("data/b"))
    reports = []
    for fork in (False, True):
        (tmp_path / str(fork)).mkdir()
        reports.append(direct.extract(tmp_path / str(fork), [data], fork=fork))
    assert reports[0] == reports[1]
    assert reports[1].warning_count == 3  # the root and both files
    assert "owner 0:0 not set" in reports[1].warnings[-1]


def test_forked_extraction_child_killed_is_an_error(tmp_path: Path, monkeypatch) -> None:
    real = DirectTarget._dispatch

    def killed(self, entry, payload):
        if entry.name.endswith(b"f3"):
            os.kill(os.getpid(), signal.SIGKILL)  # in the child
        return real(self, entry, payload)

    monkeypatch.setattr(DirectTarget, "_dispatch", killed)
    data = _tar(_dir("data"), *(_file(f"data/f{i}", os.urandom(5000)) for i in range(500)))
    with pytest.raises(VolbakError, match="forked helper process ended unexpectedly") as err:
        direct.extract(tmp_path, [data[i:i + 4096] for i in range(0, len(data), 4096)],
                       fork=True)
    assert err.value.hint
    assert sorted(os.listdir(tmp_path)) == ["f0", "f1", "f2"]
    _no_child_left()


def test_forked_extraction_bug_keeps_its_traceback(tmp_path: Path, monkeypatch) -> None:
    def broken(self, entry, payload):
        raise ValueError("a bug in the child")

    monkeypatch.setattr(DirectTarget, "_dispatch", broken)
    with pytest.raises(RuntimeError,
                       match=r"(?s)helper process failed.*Traceback.*a bug in the child"):
        direct.extract(tmp_path, [_tar(_dir("data"))], fork=True)
    _no_child_left()


FORK_AFTER_GARBAGE = """
import gc, os, sys, time
from volbak.stream.compress import compressor
from volbak.volumes import direct
gc.disable()  # the garbage below must still be there when the child starts
c = compressor("zstd")  # volbak's own: one libzstd worker thread
for _ in range(8):
    c.write(os.urandom(1 << 20))  # past a job's size: the worker runs, then waits
time.sleep(0.5)  # for more work, on a condition variable
cycle = [c]
cycle.append(cycle)
del c, cycle
real = direct.DirectTarget._dispatch

def collecting(self, entry, payload):  # in the child
    gc.collect()
    return real(self, entry, payload)

direct.DirectTarget._dispatch = collecting
direct.extract(sys.argv[1], [open(sys.argv[2], "rb").read()], fork=True)
print("ok")
"""


def test_forked_child_leaves_the_parents_garbage_alone(tmp_path: Path) -> None:
    """A collection in the child must not free the parent's objects: a multithreaded
    zstd compressor's free waits for worker threads the fork did not copy (it hung)."""
    (tmp_path / "t.tar").write_bytes(_tar(_dir("data"), _file("data/a"), _file("data/b")))
    (tmp_path / "dst").mkdir()
    out = subprocess.run([sys.executable, "-c", FORK_AFTER_GARBAGE, str(tmp_path / "dst"),
                          str(tmp_path / "t.tar")], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout == "ok\n", out.stderr
    assert sorted(os.listdir(tmp_path / "dst")) == ["a", "b"]


@pytest.mark.parametrize("received_by", ["main thread", "other thread"])
def test_forked_helper_interrupted_as_it_starts_is_stopped(monkeypatch,
                                                          received_by: str) -> None:
    """A Ctrl-C while the helper is forked is held until its pid is known, then
    stops it: no helper outlives the interruption. Also where another thread received
    it, under Python's own SIGINT handler (util.signals.deferred holds it there too)."""
    real, forked = os.fork, []
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    r, w = os.pipe()
    os.set_blocking(w, False)

    def fork():
        pid = real()
        if pid:
            forked.append(pid)
            if received_by == "main thread":  # blocked there: handled after the block
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            else:
                signal.pthread_kill(other.ident, signal.SIGINT)
                os.read(r, 1)  # its C-level handler ran: Python's is due in this block
        return pid

    monkeypatch.setattr(os, "fork", fork)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    old_fd = signal.set_wakeup_fd(w)
    try:
        with pytest.raises(KeyboardInterrupt):
            direct._Forked(lambda fd: time.sleep(60), to_child=True)
        assert forked and not Path(f"/proc/{forked[0]}").exists()
    finally:  # a failure here must not leave the child to fail the tests after it
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, old)
        stop.set()
        os.close(r)
        os.close(w)
        for pid in forked:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


@pytest.mark.parametrize("failing", ["pipe", "fork"])
def test_forked_helper_that_cannot_start_leaves_no_handle(monkeypatch, failing: str) -> None:
    """A second pipe or the fork failing (out of file handles, of processes): the
    error comes out, and the pipes made for the child are closed."""
    real_pipe, pipes = os.pipe, []

    def pipe():
        if failing == "pipe" and pipes:
            raise OSError(errno.EMFILE, "Too many open files")
        pipes.append(1)
        return real_pipe()

    def fork():
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    before = sorted(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(os, "pipe", pipe)
    monkeypatch.setattr(os, "fork", fork)
    with pytest.raises(OSError):
        direct._Forked(lambda fd: None, to_child=True)
    assert pipes and sorted(os.listdir("/proc/self/fd")) == before


def test_forked_helper_no_owner_stopped_is_stopped_at_exit() -> None:
    """A helper whose owner never stopped it (a signal before the owner held it) is
    stopped as the process exits, not left to outlive it."""
    script = ("import time\n"
              "from volbak.volumes import direct\n"
              "proc = direct._Forked(lambda fd: time.sleep(60), to_child=True)\n"
              "print(proc._pid, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert not Path(f"/proc/{int(out)}").exists()


def test_forked_extraction_interrupted_leaves_no_child(tmp_path: Path) -> None:
    data = _tar(_dir("data"), *(_file(f"data/f{i}", os.urandom(3000)) for i in range(2000)))

    def interrupted():
        yield data[:len(data) // 2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        direct.extract(tmp_path, interrupted(), fork=True)
    _no_child_left()
    written = len(os.listdir(tmp_path))
    assert 0 < written < 2000
    time.sleep(0.2)
    assert len(os.listdir(tmp_path)) == written  # nothing more after the caller is back


# ------------------------------------------------------------------ the forked walk


def _read_to_end(read) -> bytes:
    out = []
    while chunk := read(2**20):
        out.append(chunk)
    return b"".join(out)


@needs_root
def test_forked_walk_is_the_walk(tree: Path) -> None:
    one = DirectSource(tree)
    want = b"".join(read_all(one))
    with DirectSource(tree) as two:
        got = _read_to_end(two.forked())
        assert got == want
        assert two.report == one.report and two.report.skipped == 1
    _no_child_left()


def test_forked_walk_continues_short_writes(tmp_path: Path, monkeypatch) -> None:
    """The child writes its pieces with writev: a write that takes only part of them
    (a signal, a pipe that fills) is continued where it stopped, nothing lost."""
    _many_files(tmp_path / "src")
    want = b"".join(read_all(DirectSource(tmp_path / "src")))
    real = os.writev
    monkeypatch.setattr(os, "writev", lambda fd, pieces: real(fd, [memoryview(
        b"".join(bytes(p) for p in pieces[:3]))[:4099]]))
    with DirectSource(tmp_path / "src") as source:
        assert _read_to_end(source.forked()) == want
    _no_child_left()


def test_forked_walk_leaves_out_what_exclude_does(tmp_path: Path) -> None:
    _many_files(tmp_path / "src")
    one = DirectSource(tmp_path / "src")
    one.exclude(["d1", "*/f00*"])
    with DirectSource(tmp_path / "src") as two:
        two.exclude(["d1", "*/f00*"])
        assert _read_to_end(two.forked()) == b"".join(read_all(one))
        assert two.report.entries == one.report.entries < 5000


def test_forked_walk_failing_is_an_error(tmp_path: Path, monkeypatch) -> None:
    """The child's error (a volume directory gone mid-walk) comes back to the reader;
    the end of the pipe is never taken for a clean end."""
    src = tmp_path / "src"
    _many_files(src)
    real = DirectSource._listing

    def gone(self, *args, **kwargs):
        shutil.rmtree(src, ignore_errors=True)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DirectSource, "_listing", gone)
    with DirectSource(src) as source, pytest.raises(NotFoundError, match="disappeared"):
        _read_to_end(source.forked())
    _no_child_left()


def test_forked_walk_killed_is_an_error(tmp_path: Path, monkeypatch) -> None:
    _many_files(tmp_path / "src")
    real = DirectSource._whole_file

    def killed(self, dfd, name, rel):
        if rel.endswith(b"d3/f0500"):
            os.kill(os.getpid(), signal.SIGKILL)  # in the child
        return real(self, dfd, name, rel)

    monkeypatch.setattr(DirectSource, "_whole_file", killed)
    with DirectSource(tmp_path / "src") as source, \
            pytest.raises(VolbakError, match="helper process ended unexpectedly"):
        _read_to_end(source.forked())
    _no_child_left()


def test_forked_walk_stopped_leaves_no_child(tmp_path: Path) -> None:
    _many_files(tmp_path / "src")
    with DirectSource(tmp_path / "src") as source:
        assert source.forked()(65536)
    _no_child_left()


def test_one_core_forks_no_helper(tmp_path: Path, monkeypatch) -> None:
    def no_fork(*args, **kwargs):
        raise AssertionError("forked on one core")

    monkeypatch.setattr(direct, "_cores", lambda: 1)
    monkeypatch.setattr(direct, "_Forked", no_fork)
    _many_files(tmp_path / "src")
    with DirectSource(tmp_path / "src") as source:
        data = _read_to_end(source.forked())
    (tmp_path / "dst").mkdir()
    DirectTarget(tmp_path / "dst", fork=True).extract([data])
    assert listing(tmp_path / "dst") == listing(tmp_path / "src")


def test_many_small_files_is_a_guess_from_the_first_entries(tmp_path: Path) -> None:
    _many_files(tmp_path / "many")
    (tmp_path / "few").mkdir()
    for i in range(500):
        (tmp_path / f"few/f{i}").write_bytes(b"x")
    (tmp_path / "big").mkdir()
    for i in range(1500):
        with open(tmp_path / f"big/f{i}", "wb") as f:
            f.truncate(2**20)  # sizes, not blocks, count
    for name, want in (("many", True), ("few", False), ("big", False)):
        with DirectSource(tmp_path / name) as source:
            assert source.many_small_files() == want, name
            assert _read_to_end(source.read)  # the guess left the walk as it was


# ------------------------------------------------------------------ read behind the writes


def _big_files(root: Path) -> None:
    root.mkdir()
    (root / "big").write_bytes(os.urandom(3 * 2**20 + 5))
    os.link(root / "big", root / "big-link")  # linked once read behind: its ctime moves
    (root / "exact").write_bytes(os.urandom(2**20))  # the smallest read behind
    (root / "below").write_bytes(os.urandom(2**20 - 1))
    with open(root / "holes", "wb") as f:  # sparse: read back after, as before
        f.seek(4 * 2**20)
        f.write(b"end")
    (root / "small").write_bytes(b"x")


def _extract_reading_behind(src: Path, dst: Path) -> tuple[TarParser, direct.Rereads]:
    dst.mkdir()
    parser = TarParser(digest=True, root="data")
    rereads = direct.Rereads()
    DirectTarget(dst, parser=parser, rereads=rereads).extract(read_all(DirectSource(src)))
    return parser, rereads


def test_read_behind_gives_the_read_backs_digest(tmp_path: Path, monkeypatch) -> None:
    _big_files(tmp_path / "src")
    parser, rereads = _extract_reading_behind(tmp_path / "src", tmp_path / "dst")
    assert sorted(os.stat(tmp_path / "dst" / n).st_ino for n in ("big", "exact")) == \
        sorted(ino for _, ino in rereads.files)
    taken = []
    real = direct.Rereads.get
    monkeypatch.setattr(direct.Rereads, "get",
                        lambda self, st: taken.append(real(self, st)) or taken[-1])
    shown = []
    got = direct.tree_digest(tmp_path / "dst", rereads=rereads, progress=shown.append)
    assert len([t for t in taken if t is not None]) == 2  # neither file read again
    assert (got.hexdigest(), got.entries, got.file_bytes) == \
        (parser.hexdigest(), parser.entries, parser.file_bytes)
    read = []
    direct.tree_digest(tmp_path / "dst", progress=read.append)
    assert sum(shown) == sum(read)  # the bar still counts the files not read again


@pytest.mark.parametrize("change", ["content", "hardlink"])
def test_read_behind_of_a_file_changed_since_is_not_taken(tmp_path: Path, change: str) -> None:
    """Same size, same mtime, but changed after it was read: its ctime says so, and the
    read-back reads it again. The parser did not hash what was compared: both fail the
    verification (nothing but the restore writes to its new volume)."""
    _big_files(tmp_path / "src")
    parser, rereads = _extract_reading_behind(tmp_path / "src", tmp_path / "dst")
    big = tmp_path / "dst" / "big"
    st = big.stat()
    if change == "content":
        with open(big, "r+b") as f:
            f.seek(2**20)
            f.write(b"changed")
        os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    else:
        os.link(big, tmp_path / "elsewhere")
        os.unlink(tmp_path / "elsewhere")
    assert rereads.get(big.stat()) is None
    got = direct.tree_digest(tmp_path / "dst", rereads=rereads)
    assert got.hexdigest() != parser.hexdigest()


def test_linking_a_file_changed_since_its_read_keeps_its_old_record(tmp_path: Path) -> None:
    """A hardlink entry refreshes its file's record only where the link moved nothing
    but the ctime; a file whose size or mtime changed since it was read back keeps its
    old record, so the read-back reads it again."""
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    rereads = direct.Rereads()
    for change, taken in ((False, direct.COMPARED), (True, None)):
        st = f.stat()
        record = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        rereads.files[(st.st_dev, st.st_ino)] = record
        if change:
            with open(f, "ab") as out:
                out.write(b"more")
        time.sleep(0.02)  # past the ctime's tick: the link moves it, and only it
        os.link(f, tmp_path / "link")
        os.unlink(tmp_path / "link")
        after = f.stat()
        rereads.linked(st, after)
        assert rereads.get(after) == taken
        if change:
            assert rereads.files[(st.st_dev, st.st_ino)] == record


@pytest.mark.parametrize("how", ["error", "other-bytes"])
def test_read_behind_that_fails_fails_the_read_back(tmp_path: Path, how: str,
                                                     monkeypatch) -> None:
    """A read behind the writes that fails, or reads back other bytes than were
    written, records nothing: the read-back reads the file, and as the parser did not
    hash what it compared, the digests differ (the restore fails its verification)."""
    real = os.preadv

    def failing(fd, buffers, pos):
        if pos >= 2**20:
            if how == "error":
                raise OSError(errno.EIO, "Input/output error")
            n = real(fd, buffers, pos)
            buffers[0][n // 2] ^= 1
            return n
        return real(fd, buffers, pos)

    _big_files(tmp_path / "src")
    data = b"".join(read_all(DirectSource(tmp_path / "src")))
    (tmp_path / "dst").mkdir()
    parser = TarParser(digest=True, root="data")
    rereads = direct.Rereads()
    with monkeypatch.context() as m:
        m.setattr(os, "preadv", failing)
        DirectTarget(tmp_path / "dst", parser=parser, rereads=rereads).extract([data])
    assert [ino for _, ino in rereads.files] == [os.stat(tmp_path / "dst/exact").st_ino]
    got = direct.tree_digest(tmp_path / "dst", rereads=rereads)
    assert got.hexdigest() != parser.hexdigest()
    assert direct.tree_digest(tmp_path / "dst").hexdigest() != parser.hexdigest()


def test_read_behind_of_a_reused_buffer_compares_what_was_written(tmp_path: Path) -> None:
    """A caller that feeds the target from one buffer it refills: the read-behind
    compares with the bytes written, not with what the buffer holds by then."""
    _big_files(tmp_path / "src")
    data = b"".join(read_all(DirectSource(tmp_path / "src")))
    (tmp_path / "dst").mkdir()
    parser = TarParser(digest=True, root="data")
    rereads = direct.Rereads()
    target = DirectTarget(tmp_path / "dst", parser=parser, rereads=rereads)
    buf = bytearray(2**19)
    for at in range(0, len(data), len(buf)):
        piece = data[at:at + len(buf)]
        buf[:len(piece)] = piece
        target.write(memoryview(buf)[:len(piece)])
    target.close()
    assert sorted(ino for _, ino in rereads.files) == \
        sorted(os.stat(tmp_path / "dst" / n).st_ino for n in ("big", "exact"))
    assert direct.tree_digest(tmp_path / "dst", rereads=rereads).hexdigest() == \
        parser.hexdigest()


def test_read_behind_stops_with_the_extraction(tmp_path: Path) -> None:

    _big_files(tmp_path / "src")
    data = b"".join(read_all(DirectSource(tmp_path / "src")))

    def interrupted():
        yield data[:2 * 2**20]  # inside "big"
        raise KeyboardInterrupt

    (tmp_path / "dst").mkdir()
    rereads = direct.Rereads()
    with pytest.raises(KeyboardInterrupt):
        DirectTarget(tmp_path / "dst", rereads=rereads).extract(interrupted())
    assert not [t for t in threading.enumerate() if t.name.startswith("volbak-reread")]
    assert rereads.files == {}


def test_archive_api_style_stream_extracts(tmp_path: Path) -> None:
    """What dockerd's GET archive sends (ustar/PAX from Go, names with uname/gname,
    second mtimes, a hardlink after its file) extracts through the target."""
    f = tarfile.TarInfo("data/a")
    f.mode, f.uid, f.gid, f.mtime, f.uname = 0o4755, 1234, 5678, 1_600_000_000, "x"
    h = tarfile.TarInfo("data/sub/b")
    h.type, h.linkname, h.mode, h.uid, h.gid = tarfile.LNKTYPE, "data/a", 0o4755, 1234, 5678
    root = tarfile.TarInfo("data")
    root.type, root.mode, root.uid, root.gid, root.mtime = tarfile.DIRTYPE, 0o750, 7, 8, 99
    data = _tar((root, None), (f, b"payload"), _dir("data/sub"), (h, None),
                fmt=tarfile.USTAR_FORMAT)
    direct.extract(tmp_path, [data])
    st = os.stat(tmp_path / "sub/b")
    if ROOT:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert stat.S_IMODE(st.st_mode) == 0o4755  # setuid kept on the hardlinked file
        assert (os.stat(tmp_path).st_uid, os.stat(tmp_path).st_gid) == (7, 8)
    assert st.st_nlink == 2 and (tmp_path / "a").read_bytes() == b"payload"
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o750
    assert os.stat(tmp_path).st_mtime == 99


# ------------------------------------------------------------------ the selector


def _inspect(mountpoint: Path, driver: str = "local") -> dict:
    return {"Name": "v", "Driver": driver, "Mountpoint": os.fspath(mountpoint)}


def test_select(tmp_path: Path) -> None:
    sock = "unix:///run/docker.sock"
    vol = _inspect(tmp_path)
    assert select.choose(sock, vol, "auto")[0] == "direct"
    assert select.choose(sock, vol, "direct")[0] == "direct"
    assert select.choose(sock, vol, "direct", write=True)[0] == "direct"
    assert select.choose(sock, vol, "api") == ("api", "requested with --source api")
    for url in ("tcp://10.0.0.1:2375", "ssh://me@host", "http://localhost:2375"):
        how, why = select.choose(url, vol, "auto")
        assert how == "api" and "unix socket" in why
        with pytest.raises(UsageError) as err:
            select.choose(url, vol, "direct")
        assert "--source api" in (err.value.hint or "")
    how, why = select.choose(sock, _inspect(tmp_path, "rexray"), "auto")
    assert how == "api" and "rexray" in why
    how, why = select.choose(sock, _inspect(tmp_path / "missing"), "auto")
    assert how == "api" and "not on this host" in why
    with pytest.raises(UsageError):
        select.choose(sock, _inspect(tmp_path / "missing"), "direct")
    with pytest.raises(UsageError, match="--source"):
        select.choose(sock, vol, "sideways")


def _as_nobody(fn) -> str:
    """fn() run in a child process as uid/gid 65534; what it returned, or its error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            out = repr(fn())
        except BaseException as e:
            out = f"{type(e).__name__}: {e} hint: {getattr(e, 'hint', None)}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    return text


@needs_root
def test_select_falls_back_without_permission(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o755)
    inspect = {"Driver": "local", "Mountpoint": os.fspath(vol)}
    sock = "unix:///run/docker.sock"
    assert _as_nobody(lambda: select.choose(sock, inspect, "auto")[0]) == "'api'"
    out = _as_nobody(lambda: select.choose(sock, inspect, "direct", write=True))
    assert out.startswith("UsageError") and "--source api" in out
    out = _as_nobody(lambda: DirectSource(vol))
    assert out.startswith("VolbakError: cannot open") and "--source api" in out


def test_unreadable_directory_as_non_root(tmp_path: Path) -> None:
    if ROOT:
        pytest.skip("root reads everything")
    vol = tmp_path / "vol"
    vol.mkdir(mode=0)
    with pytest.raises(VolbakError, match="cannot open"):
        DirectSource(vol)


# ------------------------------------------------------------------ a real engine


@pytest.mark.docker
@pytest.mark.engines("docker")  # Podman's GET names entries "/a" and replaces owners
def test_direct_source_matches_get_archive(resources, busybox_image: str, docker_host: str
                                           ) -> None:
    if not ROOT:
        pytest.skip("reading a volume's directory needs root")
    vol = resources.volume()
    inspect = resources.client.api.inspect_volume(vol.name)
    how, why = select.choose(docker_host, inspect, "auto")
    if how != "direct":
        pytest.skip(f"the engine's volumes are not local here: {why}")
    mp = Path(inspect["Mountpoint"])
    populate(mp, big=2 * 2**20 + 3)
    os.mknod(mp / "special/null", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    ctr = resources.container(busybox_image, "true", volumes={vol.name: {"bind": "/data",
                                                                         "mode": "ro"}})
    bits, _ = ctr.get_archive("/data", chunk_size=2**20)
    api_tar = b"".join(bits)
    our_tar = b"".join(read_all(DirectSource(mp)))

    def facts(tar: tarfile.TarFile) -> list[tuple]:
        out = []
        for m in tar:
            data = tar.extractfile(m).read() if m.isreg() else None
            digest = hashlib.sha256(data).hexdigest() if data is not None else None
            # dockerd (Go) puts the file type bits into the mode field too
            out.append((m.name, m.type, stat.S_IMODE(m.mode), m.uid, m.gid, int(m.mtime),
                        m.linkname, m.devmajor, m.devminor, digest))
        return out

    with tarfile.open(fileobj=io.BytesIO(api_tar)) as api, \
            tarfile.open(fileobj=io.BytesIO(our_tar)) as ours:
        theirs_f, ours_f = facts(api), facts(ours)
    # dockerd stores sparse files as plain data: the same bytes, another entry shape
    assert [f[0] for f in ours_f] == [f[0] for f in theirs_f]
    assert ours_f == theirs_f


@pytest.mark.docker
def test_direct_target_into_a_new_volume(resources, busybox_image: str, tmp_path: Path
                                         ) -> None:
    if not ROOT:
        pytest.skip("writing a volume's directory needs root")
    src = tmp_path / "src"
    build_tree(src)
    vol = resources.volume()
    mp = Path(resources.client.api.inspect_volume(vol.name)["Mountpoint"])
    direct.extract(mp, read_all(DirectSource(src)))
    before, after = _without_sockets(listing(src)), listing(mp)
    assert before == after, diff(before, after)
    # and a container sees it
    out = resources.client.containers.run(busybox_image, ["cat", "/data/files/text.txt"],
                                          volumes={vol.name: {"bind": "/data", "mode": "ro"}},
                                          network_mode="none", remove=True,
                                          labels={"volbak-test": "1"})
    assert out == b"hello volbak\n" * 100


# ------------------------------------------------------------------ through the one tar parser


@pytest.mark.parametrize("step", [1, 7, 511, 513])
def test_sparse_and_pax_entries_survive_any_chunking(tmp_path: Path, step: int,
                                                      fork: bool) -> None:
    """The target reads through TarParser: a sparse map, PAX records and data split at
    any byte still extract to the same files (holes as holes)."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "holey", "wb") as f:
        f.seek(1 << 20)
        f.write(b"middle")
        f.truncate(3 << 20)
    (src / ("long-" + "n" * 150)).write_bytes(b"pax path\n")
    os.utime(src / "holey", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    data = b"".join(read_all(DirectSource(src)))
    assert b"GNU.sparse.major" in data
    dst = tmp_path / "dst"
    dst.mkdir()
    DirectTarget(dst, fork=fork).extract(data[i:i + step] for i in range(0, len(data), step))
    holey = dst / "holey"
    assert holey.read_bytes() == (src / "holey").read_bytes()
    assert holey.stat().st_blocks * 512 < 1 << 20
    assert holey.stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert (dst / ("long-" + "n" * 150)).read_bytes() == b"pax path\n"


@pytest.mark.parametrize("sparse_map", [b"1\n0\n99999999\n", b"2\n0\n3\n", b"-1\n",
                                        b"x\n", b"1\n-5\n1\n"])
def test_bad_sparse_maps_are_refused(tmp_path: Path, sparse_map: bytes, fork: bool) -> None:
    body = sparse_map + b"\0" * (-len(sparse_map) % 512) + b"abc"
    info = tarfile.TarInfo("data/s")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": "data/s", "GNU.sparse.realsize": "10"}
    data = _tar(_dir("data"), (info, body))
    with pytest.raises(IntegrityError, match="sparse"):
        direct.extract(tmp_path, [data], fork=fork)


def test_old_gnu_sparse_formats_are_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("data/s")
    info.pax_headers = {"GNU.sparse.offset": "0", "GNU.sparse.numblocks": "1"}
    with pytest.raises(IntegrityError, match=r"sparse format 0\.0"):
        direct.extract(tmp_path, [_tar(_dir("data"), (info, b"abc"))])


def test_sparse_0_1_map_in_pax_extracts(tmp_path: Path, fork: bool) -> None:
    info = tarfile.TarInfo("data/s")
    info.pax_headers = {"GNU.sparse.map": "4,3", "GNU.sparse.size": "10",
                        "GNU.sparse.name": "data/s"}
    direct.extract(tmp_path, [_tar(_dir("data"), (info, b"abc"))], fork=fork)
    assert (tmp_path / "s").read_bytes() == b"\0\0\0\0abc\0\0\0"


def test_header_fast_path_writes_the_general_paths_bytes() -> None:
    """tarfmt.header's short cut for the usual entry (short names, small ids, at most
    nanoseconds in PAX) must write what the general path writes, at every boundary."""
    import random

    rng = random.Random(7)
    names = [b"data/a", b"data/" + b"n" * 95, b"data/" + b"n" * 96, b"data/\xff\xfe"]
    for _ in range(2000):
        kw = dict(
            mode=rng.choice([0o644, 0o7777, 0]),
            uid=rng.choice([0, 1000, 8**7 - 1, 8**7]),
            gid=rng.choice([0, 8**7 - 1, 8**7, 2**32 - 1]),
            mtime_ns=rng.choice([0, 10**9, 1764656000123456789, 8**11 * 10**9 - 1,
                                 8**11 * 10**9, -1, -(10**9), 10**18 - 1, 10**18 + 1,
                                 10**19 - 1, 10**19 + 1]),
            size=rng.choice([0, 1, 8**11 - 1, 8**11]),
            linkname=rng.choice([b"", b"x" * 100, b"x" * 101]),
            devmajor=rng.choice([0, 8, 8**7]),
            devminor=rng.choice([0, 3]),
        )
        name = rng.choice(names)
        typ = rng.choice([tarfmt.REGULAR, tarfmt.SYMLINK, tarfmt.DIRECTORY])
        fast = tarfmt.header(name, typ, **kw)
        general = tarfmt._header(name, typ, pax=None, **kw)
        assert fast == general, kw
        assert len(fast) % 512 == 0


def test_small_file_entry_is_header_data_and_padding() -> None:
    """tarfmt.small_file, the walk's one piece for the usual small file, is the general
    header, the data and its padding, on both sides of every limit of its short cut."""
    import random

    rng = random.Random(11)
    names = [b"data/a", b"data/" + b"n" * 95, b"data/" + b"n" * 96, b"data/\xff\xfe",
             b"data/d/" + b"p" * 100]
    for _ in range(3000):
        name = rng.choice(names)
        data = rng.randbytes(rng.choice([0, 1, 511, 512, 513, 4000]))
        mode = rng.choice([0o644, 0o7777, 0])
        uid = rng.choice([0, 1000, 8**7 - 1, 8**7])
        gid = rng.choice([0, 8**7 - 1, 8**7, 2**32 - 1])
        mtime_ns = rng.choice([0, 10**9 - 1, 10**9, 1764656000123456789, 1764656000 * 10**9,
                               8**11 * 10**9 - 1, 8**11 * 10**9, 10**19 + 1, -1, -(10**9)])
        general = tarfmt._header(name, tarfmt.REGULAR, mode, uid, gid, mtime_ns, len(data),
                                 b"", 0, 0, None)
        assert tarfmt.small_file(name, mode, uid, gid, mtime_ns, data) == \
            general + data + bytes(-len(data) % 512)


@needs_root
@pytest.mark.parametrize("owners,all_xattrs", [(True, True), (False, True), (True, False)])
def test_walk_digest_is_the_parsers_digest_of_the_stream(tree: Path, owners: bool,
                                                         all_xattrs: bool, monkeypatch) -> None:
    """The read-back of a direct restore digests during the walk; it must agree with a
    digesting parser over the stream the walk writes, on every kind of entry, those its
    short cut for small files takes (_digest_small) and those next to its limits."""
    from volbak.stream.tar import INLINE

    (tree / "sparse" / "holes-only").write_bytes(b"")
    os.truncate(tree / "sparse" / "holes-only", 3 * 2**20)
    os.utime(tree / "files" / "text.txt", ns=(1, -1_500_000_000))  # negative, sub-second
    (tree / "files" / "inline").write_bytes(b"i" * INLINE)
    (tree / "files" / "inline+1").write_bytes(b"j" * (INLINE + 1))
    parser = TarParser(digest=True, root="data", owners=owners, all_xattrs=all_xattrs)
    for chunk in read_all(DirectSource(tree)):
        parser.feed(chunk)
    parser.check_complete()
    took = []
    real = DirectSource._digest_small

    def counted(self, digest, dfd, name, rel):  # type: ignore[no-untyped-def]
        done = real(self, digest, dfd, name, rel)
        if done:
            took.append(rel)
        return done

    monkeypatch.setattr(DirectSource, "_digest_small", counted)
    with DirectSource(tree) as src:
        walk = src.digest(owners=owners, all_xattrs=all_xattrs)
    assert b"data/files/inline" in took and b"data/files/text.txt" in took
    assert b"data/files/inline+1" not in took
    assert (walk.hexdigest(), walk.entries, walk.file_bytes, walk.attr_entries) == (
        parser.hexdigest(), parser.entries, parser.file_bytes, parser.attr_entries)
    assert walk.attr_entries > 0 or not all_xattrs
    # and it sees a change the way the parser does
    os.chmod(tree / "files" / "text.txt", 0o751)
    with DirectSource(tree) as src:
        assert src.digest(owners=owners, all_xattrs=all_xattrs).hexdigest() != \
            parser.hexdigest()


# ------------------------------------------------------------------ read-back in two parts


def _split_tree(root: Path) -> None:
    """Names that sort differently bytewise and by component ("a.b" < "a/" < "a0"),
    deep paths, empty directories, symlinks: where a split may fall."""
    for d in ("a", "a.b", "a0", "b/c/d", "b/c/e", "b/empty", "z"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(9):
        for d in ("a", "a.b", "b/c/d", "z"):
            (root / d / f"f{i}").write_bytes(os.urandom(i * 300))
    (root / "a" / "link").symlink_to("../nowhere")
    (root / "b" / "c" / "e" / "x").write_bytes(b"x")


@pytest.fixture
def small_segments(monkeypatch) -> int:
    """Segments of 5 entries, so a small tree has many places to split."""
    import volbak.volumes
    from volbak.stream import tar

    monkeypatch.setattr(tar, "SEGMENT", 5)
    monkeypatch.setattr(direct, "SEGMENT", 5)
    monkeypatch.setattr(volbak.volumes, "SEGMENT", 5)
    return 5


def _parsed(root: Path) -> TarParser:
    parser = TarParser(digest=True, root="data")
    for chunk in read_all(DirectSource(root)):
        parser.feed(chunk)
    parser.check_complete()
    return parser


def _no_child_left() -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def _summary(d) -> tuple:
    return d.hexdigest(), d.entries, d.file_bytes, d.attr_entries


def test_tree_digest_extended_is_the_digest_of_the_whole(small_segments: int) -> None:
    from volbak.stream.tar import TreeDigest

    # every other entry's content goes in as it is, in two pieces
    records = [(b"data/%d 0 644 %d" % (i, i), "c" if i % 2 else b"x" * i) for i in range(23)]

    def add(d: TreeDigest, record: bytes, content: str | bytes) -> None:
        if isinstance(content, str):
            d.add(record, content)
            return
        d.begin(record, len(content))
        d.update(content[:3])
        d.update(content[3:])
        d.end()

    whole = TreeDigest()
    for r in records:
        add(whole, *r)
    for at in range(0, 24, small_segments):
        first, rest = TreeDigest(), TreeDigest()
        for r in records[:at]:
            add(first, *r)
        for r in records[at:]:
            add(rest, *r)
        first.extend(rest.segments(), rest.count)
        assert (first.hexdigest(), first.count) == (whole.hexdigest(), whole.count)
    odd = TreeDigest()
    odd.add(*records[1])
    with pytest.raises(ValueError):
        odd.extend(b"", 0)


def test_split_read_back_is_the_whole_read_back(tmp_path: Path, small_segments: int) -> None:
    """The two processes' parts give the digest one walk gives, split at any mark;
    and a change on either side of the split shows."""
    root = tmp_path / "v"
    _split_tree(root)
    parser = _parsed(root)
    assert len(parser.marks) > 6
    assert {m.count(b"/") for m in parser.marks} >= {2, 3, 4}  # depths of the stack built
    for at in parser.marks:
        with DirectSource(root) as src:
            split = src.split_digest(at, owners=True, all_xattrs=True)
        assert split is not None, at
        assert _summary(split) == _summary(parser), at
    _no_child_left()
    first, last = parser.marks[0], parser.marks[-1]
    for changed in (root / "a" / "f1", root / "z" / "f8"):
        os.chmod(changed, 0o600)
        for at in (first, last):
            got = direct.tree_digest(root, split_at=at)
            assert got.hexdigest() != parser.hexdigest()
        os.chmod(changed, 0o644)
    assert direct.tree_digest(root, split_at=first).hexdigest() == parser.hexdigest()


def test_split_read_back_falls_back_to_one_walk(tmp_path: Path, small_segments: int,
                                                monkeypatch) -> None:
    """Where the parts cannot stand for one walk, ``tree_digest`` walks once."""
    root = tmp_path / "v"
    _split_tree(root)
    parser = _parsed(root)
    at = parser.marks[len(parser.marks) // 2]
    # a name that is not in the tree (what was written is not what was sent)
    for gone in (b"data/a/nothing", b"data/nothing/f1", b"elsewhere/a"):
        with DirectSource(root) as src:
            assert src.split_digest(gone, owners=True, all_xattrs=True) is None
        assert _summary(direct.tree_digest(root, split_at=gone)) == _summary(parser)
    # the bytes a failed split showed are taken back: the bar counts the tree once
    seen: list[int] = []
    once: list[int] = []
    direct.tree_digest(root, split_at=b"data/a/nothing", progress=seen.append)
    direct.tree_digest(root, progress=once.append)
    assert sum(seen) == sum(once) > 0 and min(seen) < 0
    seen.clear()
    with DirectSource(root) as src:
        assert src.split_digest(b"data/a/nothing", owners=True, all_xattrs=True,
                                progress=seen.append) is None
    assert sum(seen) == 0 and seen
    # a file with two names: its first name may be in the other part
    os.link(root / "z" / "f3", root / "a" / "hard")
    linked = _parsed(root)
    with DirectSource(root) as src:
        assert src.split_digest(at, owners=True, all_xattrs=True) is None
    assert _summary(direct.tree_digest(root, split_at=at)) == _summary(linked)
    os.unlink(root / "a" / "hard")
    parser = _parsed(root)  # the link and unlink moved a/'s mtime
    # the child failing
    monkeypatch.setattr(DirectSource, "_stack_at", lambda self, name: 1 / 0)
    with DirectSource(root) as src:
        assert src.split_digest(at, owners=True, all_xattrs=True) is None
    assert _summary(direct.tree_digest(root, split_at=at)) == _summary(parser)
    _no_child_left()


def test_read_back_splits_where_the_sent_stream_allows(tmp_path: Path, small_segments: int,
                                                       monkeypatch) -> None:
    from volbak.volumes import read_back

    root = tmp_path / "v"
    _split_tree(root)
    parser = _parsed(root)
    seen = []
    real = DirectSource.split_digest
    monkeypatch.setattr(DirectSource, "split_digest",
                        lambda self, at, **kw: seen.append(at) or real(self, at, **kw))
    info = {"Mountpoint": str(root)}
    got = read_back(None, "v", info, "data", "direct", sent=parser)
    assert len(seen) == 1
    # the two parts' entries differ by at most a segment
    first = (parser.marks.index(seen[0]) + 1) * small_segments
    assert abs(first - (parser.entries - first)) <= small_segments, (first, parser.entries)
    assert _summary(got) == _summary(parser)
    parser.links = 1  # a stream with hard links is read back in one walk
    assert _summary(read_back(None, "v", info, "data", "direct", sent=parser)) == \
        _summary(parser)
    assert len(seen) == 1


def test_split_read_back_interrupted_leaves_no_child(tmp_path: Path, small_segments: int,
                                                      monkeypatch) -> None:
    root = tmp_path / "v"
    _split_tree(root)
    at = _parsed(root).marks[0]
    real = DirectSource._generate

    def parent_interrupted(self, start=None, stop=None):
        if stop is not None:
            raise KeyboardInterrupt
        return real(self, start, stop)

    monkeypatch.setattr(DirectSource, "_generate", parent_interrupted)
    with DirectSource(root) as src, pytest.raises(KeyboardInterrupt):
        src.split_digest(at, owners=True, all_xattrs=True)
    _no_child_left()


def test_files_whose_xattrs_cannot_be_listed_take_the_general_path(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """A filesystem without xattr support: the one-piece path steps aside, and the
    stream is what it was."""
    root = tmp_path / "v"
    _split_tree(root)
    want = b"".join(read_all(DirectSource(root)))
    calls = []

    def unlistable(target, *a, **kw):
        calls.append(target)
        raise OSError(errno.ENOTSUP, "not supported")

    monkeypatch.setattr(direct.os, "listxattr", unlistable)
    assert b"".join(read_all(DirectSource(root))) == want
    assert calls

