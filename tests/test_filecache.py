"""The dedup file cache (volbak.volumes.filecache) without an engine: a volume
directory read by DirectSource into a local dedup repository through the backup's own
streaming code; unchanged big files are reused without being read, the restored stream
is byte for byte a full read's, and every way the cache can be missing, wrong or stale
costs only speed."""

from __future__ import annotations

import datetime as dt
import os
import random
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from volbak.local import LocalBackend
from volbak.ops.backup import BackupOptions, stream_into
from volbak.repository import Manifest, Repository
from volbak.repository.dedup.keys import CHUNK_MIN
from volbak.stream.tar import TarParser
from volbak.volumes import TreeSource, filecache
from volbak.volumes.direct import DirectSource

KiB, MiB = 1 << 10, 1 << 20


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLBAK_HOST_KEY", str(tmp_path / "host-key.json"))
    monkeypatch.setenv("VOLBAK_REPO_FORMAT", "dedup")
    monkeypatch.setenv("VOLBAK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VOLBAK_GC_GRACE", "0")
    # files written a moment ago are "racily clean"; these tests write, then back up
    monkeypatch.setattr(filecache, "RACY_NS", 0)


CUT = CHUNK_MIN  # the chunker's minimum: files this big are cut into whole chunks


def make_volume(root: Path, seed: int = 1) -> dict[str, int]:
    """Big files of several shapes (below, at and above the chunker's minimum, above
    the source's whole-read limit), small files, a hardlinked big file, a sparse file."""
    rnd = random.Random(seed)
    root.mkdir()
    sizes = {"a/big1": 3 * MiB + 7, "a/big2": 2 * MiB, "a/exactly-min": CUT,
             "a/under-min": CUT - 1, "b/mid": CUT + 300 * KiB + 3, "b/text": CUT + 900 * KiB,
             "small.txt": 100, "empty": 0}
    for name, size in sizes.items():
        p = root / name
        p.parent.mkdir(exist_ok=True)
        data = rnd.randbytes(size) if name != "b/text" else (b"line of text\n" * size)[:size]
        p.write_bytes(data)
    os.link(root / "a/big2", root / "b/big2-link")
    with open(root / "sparse", "wb") as f:
        f.seek(5 * MiB)
        f.write(b"end")
    return sizes


_clock = [dt.datetime.now(dt.UTC).replace(microsecond=0)]


def backup(repo: Repository, root: Path, cache: bool = True, exclude=()) -> tuple:
    _clock[0] += dt.timedelta(seconds=1)
    with DirectSource(root) as d, repo.create_backup("vol", _clock[0]) as w:
        src = TreeSource(d.read, "direct", "test", lambda: [], lambda: d.report.changed, d)
        opts = BackupOptions(cache=cache, exclude=exclude)
        tar, session = stream_into(src, w, "vol", {"Mountpoint": str(root)}, opts)
        m = Manifest(volume={"name": "vol"}, created=_clock[0].isoformat(), tar=tar)
        info = w.commit(m)
        if session is not None:
            session.save()
    return info, tar, session


def full_stream(root: Path) -> bytes:
    with DirectSource(root) as d:
        return b"".join(iter(lambda: d.read(MiB), b""))


def restore(repo: Repository, info) -> bytes:
    out = bytearray()
    with repo.open_backup(info, ()) as r:
        while data := r.read(MiB):
            out += data
    return bytes(out)


def new_repo(tmp_path: Path) -> Repository:
    repo = Repository(LocalBackend(tmp_path / "repo"))
    repo.init("dedup", [])
    assert repo.dedup().chunker[0] == CUT  # else adapt CUT
    return repo


def test_unchanged_files_are_reused_and_the_stream_is_identical(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    first, p1, s1 = backup(repo, root)
    assert s1.stats.status == "none" and s1.stats.files_reused == 0
    # big1, big2, exactly-min, mid, text (not: under-min, small, sparse, the link)
    assert s1.stats.files_read == 5 and s1.stats.saved == 5
    path = filecache.cache_path(repo.dedup().config.id, "vol")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert restore(repo, first) == full_stream(root)

    with open(root / "a/big1", "r+b") as f:  # one changed file, one metadata change
        f.seek(MiB)
        f.write(b"changed")
    os.chmod(root / "b/mid", 0o600)
    second, p2, s2 = backup(repo, root)
    st = s2.stats
    assert st.status == "used"
    assert st.files_reused == 3 and st.files_read == 2  # big1 changed, mid's ctime moved
    assert st.bytes_reused == 2 * MiB + CUT + CUT + 900 * KiB
    want = full_stream(root)
    assert restore(repo, second) == want
    # what the backup counted as it went is what a full read of the stream counts
    full = TarParser(root="data")
    full.feed(want)
    assert (p2["size"], p2["entries"]) == (full.tar_bytes, full.entries) == (
        len(want), p1["entries"])
    # file bytes are the files' sizes (a sparse file's holes count, as through the API)
    inodes = {(p.stat().st_ino, p.stat().st_size) for p in root.rglob("*")
              if p.is_file() and not p.is_symlink()}
    assert p2["file_bytes"] == p1["file_bytes"] == sum(size for _, size in inodes)
    assert second.manifest.storage["chunk_count"] == first.manifest.storage["chunk_count"]
    repo.check_stored(second)

    read = []
    real_pread = os.pread

    def pread(fd: int, n: int, off: int) -> bytes:
        data = real_pread(fd, n, off)
        read.append(len(data))
        return data

    os.pread = pread  # type: ignore[assignment]
    try:
        third, _, s3 = backup(repo, root)  # nothing changed: every big file reused
    finally:
        os.pread = real_pread  # type: ignore[assignment]
    assert s3.stats.files_reused == 5 and s3.stats.files_read == 0
    # only the small files and the sparse file's data were read
    assert 0 < sum(read) < CUT + 100 + 64 * KiB < s3.stats.bytes_reused
    assert restore(repo, third) == full_stream(root)


def test_no_cache_reads_everything_and_writes_the_cache_afresh(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    backup(repo, root)
    info, _, s = backup(repo, root, cache=False)
    assert s.stats.status == "off (--no-cache)"
    assert s.stats.files_reused == 0 and s.stats.files_read == 5 and s.stats.saved == 5
    assert restore(repo, info) == full_stream(root)
    _, _, s = backup(repo, root)
    assert s.stats.files_reused == 5


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_corrupt_cache_file_means_a_full_read(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    backup(repo, root)
    path = filecache.cache_path(repo.dedup().config.id, "vol")
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x10
    elif damage == "truncate":
        raw = raw[: len(raw) - 40]
    elif damage == "garbage":
        raw = bytearray(b"not a cache at all")
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    info, _, s = backup(repo, root)
    assert s.stats.status == "corrupt" and s.stats.files_reused == 0
    assert restore(repo, info) == full_stream(root)
    _, _, s = backup(repo, root)  # and the next one has a good cache again
    assert s.stats.status == "used" and s.stats.files_reused == 5


def test_pruned_chunks_are_read_again(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    first, _, _ = backup(repo, root)
    repo.delete(first)
    now = dt.datetime.now(dt.UTC)
    repo.collect_garbage(now=now)
    repo.collect_garbage(now=now + dt.timedelta(hours=1))
    assert not list(repo.backend.list("_packs/"))  # every chunk gone
    info, _, s = backup(repo, root)
    assert s.stats.status == "used"
    assert s.stats.files_reused == 0 and s.stats.chunks_gone == 5
    assert restore(repo, info) == full_stream(root)


def test_a_planned_gc_is_not_reused(tmp_path: Path) -> None:
    """Chunks in packs a GC plan will delete are left out of the index a backup loads:
    the cache must not bring them back."""
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    first, _, _ = backup(repo, root)
    repo.delete(first)
    repo.collect_garbage(now=dt.datetime.now(dt.UTC))  # plans, deletes nothing yet
    info, _, s = backup(repo, root)
    assert s.stats.files_reused == 0 and s.stats.chunks_gone == 5
    assert restore(repo, info) == full_stream(root)


def test_stale_scope_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    backup(repo, root)
    cid = repo.dedup().config.id
    path = filecache.cache_path(cid, "vol")
    good = filecache.Scope(cid, "vol", str(root), (1, 2, 3, 4))
    entries, status = filecache.load(path, good)
    assert status == "stale (chunker differs)" and entries == {}
    moved = filecache.Scope(cid, "vol", "/elsewhere", (1, 2, 3, 4))
    assert filecache.load(path, moved)[1].startswith("stale")
    assert filecache.load(tmp_path / "nope.cache", good) == ({}, "none")


def test_a_replaced_file_with_the_same_size_and_mtime_is_read(tmp_path: Path) -> None:
    """Another inode (or a ctime that moved) under an old name and mtime is read."""
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    backup(repo, root)
    big = root / "a/big2"
    st = big.stat()
    data = bytearray(big.read_bytes())
    data[0] ^= 1
    os.unlink(root / "b/big2-link")
    big.unlink()
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))
    info, _, s = backup(repo, root)
    assert s.stats.files_read == 1 and s.stats.files_reused == 4
    assert restore(repo, info) == full_stream(root)


def test_racy_files_are_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(filecache, "RACY_NS", 3600 * 10**9)  # everything is "just written"
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    _, _, s = backup(repo, root)
    assert s.stats.saved == 0
    _, _, s = backup(repo, root)
    assert s.stats.files_reused == 0 and s.stats.files_read == 5


def test_a_file_changing_while_read_is_not_cached(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    real_pread = os.pread
    hit = []

    def pread(fd: int, n: int, off: int) -> bytes:
        data = real_pread(fd, n, off)
        if not hit and os.fstat(fd).st_size == 3 * MiB + 7 and off >= MiB:
            hit.append(1)
            with open(root / "a/big1", "r+b") as f:  # a write while it is being read
                f.write(b"X")
        return data

    monkeypatch.setattr(os, "pread", pread)
    _, _, s = backup(repo, root)
    monkeypatch.setattr(os, "pread", real_pread)
    assert hit
    assert s.stats.saved == 4  # big1 changed while read: not cached
    _, _, s = backup(repo, root)
    assert s.stats.files_read == 1 and s.stats.files_reused == 4


def test_exclude_uses_the_cache_and_archive_format_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct source leaves excluded paths out during its walk, so the stream's
    offsets are the cache's: a backup with --exclude reuses files and restores what the
    stream filter would have kept."""
    from volbak.stream.exclude import ExcludeFilter

    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)

    def filtered() -> bytes:
        with DirectSource(root) as d:
            f = ExcludeFilter(d.read, ["b"], "data")
            return b"".join(iter(lambda: f.read(MiB), b""))

    _, _, s = backup(repo, root, exclude=["b"])
    assert s.stats.status == "none" and s.stats.saved == 3  # big1, big2, exactly-min
    info, _, s = backup(repo, root, exclude=["b"])
    assert s.stats.status == "used"
    assert (s.stats.files_reused, s.stats.files_read) == (3, 0)
    assert restore(repo, info) == filtered()
    # other patterns next time: what was left out before is read, the rest reused
    info, _, s = backup(repo, root)
    assert (s.stats.files_reused, s.stats.files_read) == (3, 2)
    assert restore(repo, info) == full_stream(root)
    monkeypatch.setenv("VOLBAK_REPO_FORMAT", "archive")
    arch = Repository(LocalBackend(tmp_path / "arch"))
    _, _, s = backup(arch, root)
    assert s is None


def _cache_file(repo_id: str, volume: str, mountpoint: Path | str, age_days: float = 0,
                now: float | None = None) -> Path:
    path = filecache.cache_path(repo_id, volume)
    filecache.write(path, filecache.Scope(repo_id, volume, str(mountpoint), (1, 2, 3, 4)), [])
    _age(path, age_days, now)
    return path


def _age(path: Path, days: float, now: float | None = None) -> None:
    t = (now or dt.datetime.now(dt.UTC).timestamp()) - days * 86400
    os.utime(path, (t, t), follow_symlinks=False)


def test_sweep_removes_only_cache_files_of_gone_volumes_and_old_ones(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    now = dt.datetime.now(dt.UTC).timestamp()
    kept = [
        _cache_file("repo-a", "live", live, 29),
        _cache_file("repo-b", "live", live),  # the same volume in another repository
        _cache_file("repo-a", "just-written", tmp_path / "gone-too"),  # `keep`
    ]
    removed = [
        _cache_file("repo-a", "gone", tmp_path / "gone"),
        _cache_file("repo-b", "gone", "/nonexistent/volumes/x/_data"),
        _cache_file("repo-b", "old", live, 31),
        _cache_file("repo-a", "under-a-file", tmp_path / "afile" / "x"),
    ]
    (tmp_path / "afile").write_bytes(b"")
    d = filecache.cache_dir() / "repo-a"
    for name, data, days, goes in (
            (".live.cache.123.tmp", b"partial", 2, True),  # an interrupted save
            (".live.cache.456.tmp", b"partial", 0, False),  # a save in progress
            ("corrupt.cache", b"garbage", 0, False),  # no header: only its age counts
            ("corrupt-old.cache", b"garbage", 40, True),
            ("notes.txt", b"not ours", 400, False)):
        (d / name).write_bytes(data)
        _age(d / name, days)
        (removed if goes else kept).append(d / name)
    # symlinks and directories are never removed, nor anything they point to
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.cache"
    victim.write_bytes(b"not the cache's")
    _age(victim, 400)
    os.symlink(victim, d / "link.cache")
    _age(d / "link.cache", 400)
    os.symlink(outside, filecache.cache_dir() / "linked-repo")
    (d / "dir.cache").mkdir()
    _age(d / "dir.cache", 400)
    kept += [victim, d / "link.cache", d / "dir.cache"]

    assert filecache.sweep(keep=kept[2], now=now) == len(removed)
    assert [p for p in kept if not os.path.lexists(p)] == []
    assert [p for p in removed if os.path.lexists(p)] == []
    assert filecache.sweep(keep=kept[2], now=now) == 0


def test_sweep_after_a_backup_and_never_failing_it(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "vol"
    make_volume(root)
    repo = new_repo(tmp_path)
    assert filecache.sweep() == 0  # no cache directory yet
    gone = _cache_file(repo.dedup().config.id, "removed-volume", tmp_path / "removed")
    _, _, s = backup(repo, root)
    assert s.stats.saved == 5 and s.stats.removed == 1 and not gone.exists()
    assert s.path.exists()

    def broken(**kwargs: object) -> int:
        raise RuntimeError("a bug in the sweep")

    monkeypatch.setattr(filecache, "sweep", broken)
    info, _, s = backup(repo, root)
    assert s.stats.saved == 5 and s.stats.removed is None and s.stats.save_error is None
    assert s.stats.files_reused == 5
    assert restore(repo, info) == full_stream(root)


def test_session_matches_chunks_to_regions() -> None:
    """Regions are kept only when chunks start at their start and end at their end."""
    s = filecache.Session(filecache.Scope("r", "v", "/m", (1,)), Path("/nonexistent"), 1,
                          lambda c: True, clock=lambda: 10**30)
    st = SimpleNamespace(st_dev=1, st_ino=7, st_size=1024, st_mtime_ns=0, st_ctime_ns=0)
    a = s.region(b"a", st, 100, 1024)  # [100, 1124): two chunks
    b = s.region(b"b", st, 1200, 1024)  # starts inside a chunk: dropped
    c = s.region(b"c", st, 3000, 1024)  # [3000, 4024): one chunk running past it
    d = s.region(b"d", st, 5000, 1000)  # [5000, 6024): padded to 1024
    for n in (100, 500, 524, 200, 1000, 676, 1100, 900, 1024):
        s.on_chunk(bytes([n % 256]) * 32, n)
    assert a.complete and len(a.chunks) == 2 * filecache.REC.size
    assert not b.complete and not c.complete
    assert d.complete and len(d.chunks) == filecache.REC.size


def test_cache_file_round_trip(tmp_path: Path) -> None:
    scope = filecache.Scope("rid", "vol", "/mnt", (64, 256, 1024))
    st = filecache._Stat(1, 2, 3, 4, 5)
    path = tmp_path / "d" / "x.cache"
    recs = filecache.REC.pack(b"\x01" * 32, 512) + filecache.REC.pack(b"\x02" * 32, 7)
    assert filecache.write(path, scope, [(b"data/\xff name", st, recs)]) == 1
    entries, status = filecache.load(path, scope)
    assert status == "used"
    assert entries == {b"data/\xff name": ((1, 2, 3, 4, 5), recs)}
    assert not [p for p in path.parent.iterdir() if p.name != "x.cache"]  # no temp left


def test_skipping_is_refused_where_it_cannot_be_accounted_for() -> None:
    """The chunker takes skipped data only exactly where a big file's data (with
    padding) is."""
    import io
    import tarfile

    from volbak.repository.dedup.chunker import Chunker

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("data/f")
        ti.size = 100_000
        t.addfile(ti, io.BytesIO(bytes(100_000)))
    header = buf.getvalue()[:512]
    padded = 100_000 + (-100_000 % 512)
    chunks: list[bytes] = []
    c = Chunker(chunks.append, CUT, 4 * CUT, 16 * CUT)
    c.write(header[:100])
    assert not c.skip(padded)  # the header is not complete yet
    c.write(header[100:])
    assert not c.skip(padded + 512) and not c.skip(padded - 512)
    assert c.skip(padded)
    assert chunks == [header] and not c.skip(padded)
