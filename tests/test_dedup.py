"""The dedup repository format without an engine: round trips through a local backend,
deduplication, damage, keys, garbage collection under concurrency and crashes."""

from __future__ import annotations

import datetime as dt
import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest

from volbak.crypto.age import ScryptIdentity, ScryptRecipient, X25519Identity
from volbak.errors import CryptoError, IntegrityError, UsageError
from volbak.local import LocalBackend
from volbak.repository import Manifest, Repository
from volbak.repository.dedup.gc import rebuild_index

MiB = 1 << 20


def make_tar(files: dict[str, bytes], mtime: int = 1000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in sorted(files.items()):
            ti = tarfile.TarInfo(f"data/{name}")
            ti.size = len(data)
            ti.mtime = mtime
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def sample_files(seed: int = 0, n: int = 40) -> dict[str, bytes]:
    rnd = random.Random(seed)
    out = {}
    for i in range(n):
        size = rnd.choice([10, 3000, 70_000, 400_000, 1_500_000])
        out[f"f{i:03}"] = random.Random(i).randbytes(size) if i % 3 else (
            b"text line %d\n" % i) * (size // 12 + 1)
    return out


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLBAK_HOST_KEY", str(tmp_path / "host-key.json"))
    monkeypatch.setenv("VOLBAK_REPO_FORMAT", "dedup")


def new_repo(tmp_path: Path, recipients: list | None = None) -> Repository:
    repo = Repository(LocalBackend(tmp_path / "repo"))
    repo.init("dedup", recipients or [])
    return repo


_clock = [dt.datetime.now(dt.UTC).replace(microsecond=0)]


def backup(repo: Repository, volume: str, stream: bytes, piece: int = 300_001):
    _clock[0] += dt.timedelta(seconds=1)
    with repo.create_backup(volume, _clock[0]) as w:
        for i in range(0, len(stream), piece):
            w.write(stream[i: i + piece])
        return w.commit(Manifest(volume={"name": volume}, created=_clock[0].isoformat(),
                                 tar={"size": len(stream)}))


def restore(repo: Repository, info, identities=()) -> bytes:
    out = bytearray()
    with repo.open_backup(info, identities) as r:
        while data := r.read(100_000):
            out += data
    return bytes(out)


def pack_names(repo: Repository) -> list[str]:
    return sorted(o.name for o in repo.backend.list("_packs/"))


# -- round trips ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["plain", "age", "passphrase"])
def test_round_trip_and_dedup(tmp_path: Path, kind: str) -> None:
    ident = X25519Identity.generate()
    recips, idents = {"plain": ([], []),
                      "age": ([ident.recipient()], [ident]),
                      "passphrase": ([ScryptRecipient(b"pw", work_factor=10)],
                                     [ScryptIdentity(b"pw")])}[kind]
    repo = new_repo(tmp_path, recips)
    assert repo.format == "dedup"
    files = sample_files()
    first = make_tar(files)
    a = backup(repo, "vol", first)
    assert a.manifest.repo_format == "dedup"
    assert restore(repo, a, idents) == first
    # ~1% change: one edit in place, one append, one new file, one file gone, new mtimes
    files["f004"] = files["f004"][:1000] + b"X" + files["f004"][1001:]
    files["f007"] += b"appended"
    files["new"] = os.urandom(5000)
    del files["f010"]
    second = make_tar(files, mtime=2000)
    b = backup(repo, "vol", second)
    assert restore(repo, b, idents) == second
    assert b.manifest.storage["size"] < 0.1 * a.manifest.storage["size"]
    repo.check_stored(a)
    repo.check_stored(b)
    assert all(i.summary()["format"] == "dedup" for i in repo.list())


def test_empty_location_becomes_dedup_and_unchanged_stream_adds_almost_nothing(
        tmp_path: Path) -> None:
    repo = Repository(LocalBackend(tmp_path / "repo"))
    assert repo.format == "new"
    stream = make_tar(sample_files(1))
    a = backup(repo, "v", stream)
    assert Repository(LocalBackend(tmp_path / "repo")).format == "dedup"
    b = backup(repo, "v", stream)
    assert b.manifest.storage["new_chunks"] == 0 and b.manifest.storage["packs"] == 0
    assert restore(repo, b) == stream == restore(repo, a)


def test_empty_stream(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    info = backup(repo, "v", b"")
    assert restore(repo, info) == b""


# -- damage -------------------------------------------------------------------------------

def test_bit_flipped_pack(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    stream = make_tar(sample_files())
    info = backup(repo, "v", stream)
    pack = tmp_path / "repo" / pack_names(repo)[0]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x10
    pack.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=info.id):
        restore(repo, info)
    with pytest.raises(IntegrityError, match=info.id):
        repo.check_stored(info)


def test_missing_pack(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    info = backup(repo, "v", make_tar(sample_files()))
    repo.backend.delete(pack_names(repo)[0])
    with pytest.raises(IntegrityError, match=info.id):
        repo.check_stored(info)
    with pytest.raises(IntegrityError, match=info.id):
        restore(repo, info)


def test_truncated_index_then_rebuilt(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    stream = make_tar(sample_files())
    info = backup(repo, "v", stream)
    (idx,) = list((tmp_path / "repo" / "_index").iterdir())
    idx.write_bytes(idx.read_bytes()[:-40])
    with pytest.raises(IntegrityError, match="index"):
        restore(repo, info)
    rebuild_index(repo.dedup())
    assert restore(repo, info) == stream


def test_missing_chunk_list(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    info = backup(repo, "v", make_tar(sample_files(2, 5)))
    repo.backend.delete(info.manifest.storage["chunks"])
    with pytest.raises(IntegrityError, match=info.id):
        restore(repo, info)


@pytest.mark.parametrize("damage", ["flip", "append", "swap"])
def test_damaged_chunk_list(tmp_path: Path, damage: str) -> None:
    """The chunk list is streamed (read twice by a restore) and checked against the
    manifest at each end: a damaged one fails restore and verify naming the backup."""
    repo = new_repo(tmp_path)
    info = backup(repo, "v", make_tar(sample_files(2, 5)))
    other = backup(repo, "w", make_tar(sample_files(3, 5)))
    path = tmp_path / "repo" / info.manifest.storage["chunks"]
    data = path.read_bytes()
    if damage == "flip":
        data = data[:-20] + bytes([data[-20] ^ 1]) + data[-19:]
    elif damage == "append":
        data += b"\0"
    else:  # another backup's whole, valid list in its place
        data = (tmp_path / "repo" / other.manifest.storage["chunks"]).read_bytes()
    path.write_bytes(data)
    with pytest.raises(IntegrityError, match=info.id):
        restore(repo, info)
    with pytest.raises(IntegrityError, match=info.id):
        repo.check_stored(info)
    assert restore(repo, other)


def test_chunk_missing_from_the_index(tmp_path: Path) -> None:
    from volbak.repository.dedup.index import write_index

    repo = new_repo(tmp_path)
    info = backup(repo, "v", make_tar(sample_files(2, 5)))
    store = repo.dedup()
    (idx,) = list((tmp_path / "repo" / "_index").iterdir())
    idx.unlink()
    write_index(store.backend, store.meta_keys().metadata, [])  # an empty, valid index
    with pytest.raises(IntegrityError, match=f"{info.id}.*in no index file"):
        restore(repo, info)
    with pytest.raises(IntegrityError, match=f"{info.id}.*in no index file"):
        repo.check_stored(info)


def test_a_big_backup_indexes_its_packs_as_it_goes(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Pack locations are held only until an index file names them (a first backup of
    100 GiB held 1.2 GiB of them). An abort deletes only the packs not yet indexed:
    other runs may already reuse the indexed ones, which stay as garbage for prune."""
    from volbak.repository.dedup import writer

    monkeypatch.setattr(writer, "INDEX_EVERY", 30)  # chunks
    monkeypatch.setattr(writer, "PACK_TARGET", 400_000)
    repo = new_repo(tmp_path)
    stream = make_tar(sample_files(0, 40))
    info = backup(repo, "v", stream)
    names = info.manifest.storage["index"]
    assert len(names) > 2 and sorted(names) == sorted(
        o.name for o in repo.backend.list("_index/"))
    assert info.manifest.storage["packs"] == len(pack_names(repo))
    assert restore(repo, info) == stream

    before = set(pack_names(repo))
    _clock[0] += dt.timedelta(seconds=1)
    other = make_tar({"r": os.urandom(24 * MiB)})  # more than the chunks in flight
    with pytest.raises(RuntimeError), repo.create_backup("w", _clock[0]) as w:
        w.write(other)
        raise RuntimeError("the volume's read failed")
    indexed = {p.name for p in repo.dedup().load_index(
        repo.dedup().meta_keys().metadata).packs}
    new = set(pack_names(repo)) - before
    assert new and new <= indexed
    assert restore(repo, info) == stream


def test_an_index_write_that_fails_after_storing_loses_no_pack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An index file stored whose commit still raised (an answer lost on the way): the
    abort must not delete the packs it names, which another run may reuse."""
    from volbak.repository.dedup import writer

    monkeypatch.setattr(writer, "INDEX_EVERY", 30)
    monkeypatch.setattr(writer, "PACK_TARGET", 400_000)
    repo = new_repo(tmp_path)
    real = writer.write_index

    def stored_then_lost(*a, **kw):
        real(*a, **kw)
        raise OSError("connection reset after the upload")

    monkeypatch.setattr(writer, "write_index", stored_then_lost)
    with pytest.raises(OSError), repo.create_backup("v", _clock[0]) as w:
        w.write(make_tar(sample_files(0, 40)))
    index = repo.dedup().load_index(repo.dedup().meta_keys().metadata)
    named = {p.name for p in index.packs}
    assert named and named <= set(pack_names(repo))


# -- keys -----------------------------------------------------------------------------

def test_wrong_and_missing_identity(tmp_path: Path) -> None:
    ident = X25519Identity.generate()
    repo = new_repo(tmp_path, [ident.recipient()])
    info = backup(repo, "v", make_tar(sample_files(3, 5)))
    with pytest.raises(CryptoError) as e:
        restore(repo, info, [X25519Identity.generate()])
    assert e.value.exit_code == 7
    with pytest.raises(CryptoError):
        restore(repo, info, [])


def test_host_key_file_holds_no_identity_and_is_private(tmp_path: Path) -> None:
    ident = X25519Identity.generate()
    new_repo(tmp_path, [ident.recipient()])
    path = tmp_path / "host-key.json"
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert "AGE-SECRET-KEY" not in text and str(ident.recipient()) in text


def test_missing_host_key_file(tmp_path: Path) -> None:
    ident = X25519Identity.generate()
    repo = new_repo(tmp_path, [ident.recipient()])
    (tmp_path / "host-key.json").unlink()
    with pytest.raises(UsageError, match=r"host-key\.json"):
        backup(repo, "v", b"x" * 1024)
    assert not list(repo.backend.list("v/"))
    # With the identity the host key file can be written again, and backups work.
    from volbak.repository.dedup.keys import unlock, write_host_key

    store = repo.dedup()
    write_host_key(store.config, unlock(repo.backend, store.config, [ident])[0], repo.url)
    info = backup(repo, "v", b"y" * 1024)
    assert restore(repo, info, [ident]) == b"y" * 1024


def test_init_refuses_existing(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    with pytest.raises(UsageError):
        repo.init("dedup", [])
    with pytest.raises(UsageError):
        repo.init("archive", [])


def test_archive_repository_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLBAK_REPO_FORMAT", "archive")
    repo = Repository(LocalBackend(tmp_path / "repo"))
    stream = make_tar(sample_files(4, 5))
    info = backup(repo, "v", stream)
    assert info.manifest.repo_format == "archive" and info.manifest.object
    assert Repository(LocalBackend(tmp_path / "repo")).format == "archive"
    assert restore(repo, info) == stream
    assert repo.collect_garbage() is None


# -- garbage collection -------------------------------------------------------------------

LATER = dt.timedelta(days=1)


def gc(repo: Repository, when: dt.datetime | None = None, **kw):
    return repo.collect_garbage(now=when or dt.datetime.now(dt.UTC), **kw)


def test_gc_two_phases_deletes_only_garbage(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    s1 = make_tar(sample_files(5))
    s2 = make_tar(sample_files(6))
    a = backup(repo, "v", s1)
    b = backup(repo, "w", s2)
    before = pack_names(repo)
    repo.delete(a)
    r1 = gc(repo)
    assert r1.planned >= 1 and r1.deleted_packs == 0
    assert set(before) <= set(pack_names(repo))  # nothing deleted before the grace period
    r2 = gc(repo, dt.datetime.now(dt.UTC) + LATER)
    assert r2.deleted_packs >= 1 and r2.plans_done == 1
    assert restore(repo, b) == s2
    repo.check_stored(b)


def test_gc_repacks_partly_dead_packs_without_identity(tmp_path: Path) -> None:
    ident = X25519Identity.generate()
    repo = new_repo(tmp_path, [ident.recipient()])
    keep = {f"k{i}": os.urandom(300_000) for i in range(4)}
    drop = {f"d{i}": os.urandom(300_000) for i in range(12)}
    a = backup(repo, "v", make_tar({**keep, **drop}))
    stream = make_tar(keep)
    b = backup(repo, "v", stream)
    repo.delete(a)
    r = gc(repo)  # runs with the host key file only
    assert r.repacked == 1
    gc(repo, dt.datetime.now(dt.UTC) + LATER)
    assert restore(repo, b, [ident]) == stream
    assert sum(o.size for o in repo.backend.list("_packs/")) < 3 * 1_300_000


def test_repack_choice_is_most_dead_first_until_5_percent_is_left() -> None:
    from volbak.repository.dedup.gc import MAX_UNUSED, REPACK_MIN_DEAD, _choose_repacks

    m = 1 << 20
    blobs = {"a": 32 * m, "b": 32 * m, "c": 32 * m, "d": 32 * m, "tiny": 2 * m}
    live = {"a": 30 * m, "b": 16 * m, "c": 28 * m, "d": 32 * m - REPACK_MIN_DEAD + 1,
            "tiny": m // 2}
    total = sum(live.values())
    partly = list(blobs)
    got = _choose_repacks(partly, blobs, live, total)
    assert got[:2] == ["tiny", "b"]  # the most dead (by fraction) first
    left = sum(blobs[n] - live[n] for n in partly if n not in got)
    assert left <= MAX_UNUSED * total and "d" not in got  # never a pack of too little dead
    assert _choose_repacks(["a"], blobs, live, total) == []  # 2 MiB dead is within 5%


def test_backup_running_during_prune_never_loses_a_pack(tmp_path: Path) -> None:
    """A backup that read the index before a plan was made keeps the packs it reuses
    alive: phase 2 waits for its lock, then sees its manifest."""
    repo = new_repo(tmp_path)
    files = sample_files(7)
    a = backup(repo, "v", make_tar(files))
    repo.delete(a)  # every pack of a is now unreferenced
    _clock[0] += dt.timedelta(seconds=1)
    w = repo.create_backup("w", _clock[0])  # lock + index read: a's chunks look reusable
    stream = make_tar(files)
    w.write(stream[: len(stream) // 2])
    gc(repo)  # plans a's packs
    far = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=20)
    r = gc(repo, far)  # the writer's lock predates the plan: deferred
    assert r.deferred_plans >= 1 and r.deleted_packs == 0
    w.write(stream[len(stream) // 2:])
    b = w.commit(Manifest(volume={"name": "w"}, created=_clock[0].isoformat(),
                          tar={"size": len(stream)}))
    r = gc(repo, far + LATER)  # lock gone; b references the planned packs: kept
    assert r.kept_from_plan >= 1
    assert restore(repo, b) == stream
    repo.check_stored(b)


def test_backup_started_after_plan_does_not_reuse_planned_packs(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    stream = make_tar(sample_files(8))
    a = backup(repo, "v", stream)
    repo.delete(a)
    gc(repo)
    b = backup(repo, "v", stream)  # stores the chunks again
    assert b.manifest.storage["new_chunks"] == a.manifest.storage["new_chunks"]
    gc(repo, dt.datetime.now(dt.UTC) + LATER)
    assert restore(repo, b) == stream


def test_concurrent_backups_and_prunes(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    new_repo(tmp_path)
    streams = {f"vol{i}": make_tar(sample_files(10 + i, 15)) for i in range(3)}
    errors: list[BaseException] = []
    done: list = []

    def worker(vol: str) -> None:
        try:
            r = Repository(LocalBackend(repo_path))
            for _ in range(3):
                done.append(backup(r, vol, streams[vol]))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(v,)) for v in streams]
    for t in threads:
        t.start()
    pruner = Repository(LocalBackend(repo_path))
    while any(t.is_alive() for t in threads):
        for info in pruner.list()[3:]:
            pruner.delete(info)
        gc(pruner, dt.datetime.now(dt.UTC) + LATER)
    for t in threads:
        t.join()
    assert not errors, errors
    gc(pruner, dt.datetime.now(dt.UTC) + LATER)
    for info in pruner.list():
        assert restore(pruner, info) == streams[info.volume]


def test_interrupted_prune_at_every_step(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    infos = [backup(repo, "v", make_tar(sample_files(20 + i, 12))) for i in range(4)]
    keep = infos[-1]
    stream = restore(repo, keep)
    for i in infos[:-1]:
        repo.delete(i)
    gc(repo)
    real = {"put_bytes": repo.backend.put_bytes, "delete": repo.backend.delete,
            "create_writer": repo.backend.create_writer}

    class Crash(BaseException):
        pass

    def crashing(f, step: int, count: list[int]):
        def wrapper(name: str, *a, **kw):
            count[0] += 1
            if count[0] == step:
                raise Crash
            return f(name, *a, **kw)
        return wrapper

    for step in range(1, 40):
        count = [0]
        for k, f in real.items():
            setattr(repo.backend, k, crashing(f, step, count))
        try:
            gc(repo, dt.datetime.now(dt.UTC) + LATER)
            finished = True
        except Crash:
            finished = False
        for k in real:
            delattr(repo.backend, k)
        assert restore(repo, keep) == stream
        repo.check_stored(keep)
        if finished:
            break
        # A dead prune's lock would block the next prune until it goes stale.
        for o in list(repo.backend.list("_locks/")):
            repo.backend.delete(o.name)
    assert step > 5  # the prune did crash at several points before finishing
    # Converges: later prunes remove every leftover.
    for _ in range(3):
        gc(repo, dt.datetime.now(dt.UTC) + 2 * LATER)
    assert restore(repo, keep) == stream
    assert not list(repo.backend.list("_gc/"))
    used = repo.dedup()
    from volbak.repository.dedup.reader import read_chunk_list

    meta = used.meta_keys().metadata
    index = used.load_index(meta)
    need = {index.pack_of(c) for c, _ in read_chunk_list(used, keep, meta)}
    assert set(pack_names(repo)) == need


# -- crashes of real processes --------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import datetime as dt, os, sys, time
    from pathlib import Path
    from volbak.local import LocalBackend
    from volbak.repository import Manifest, Repository
    repo = Repository(LocalBackend(Path(sys.argv[1])))
    if sys.argv[2] == "backup":
        w = repo.create_backup("v", dt.datetime.now(dt.UTC))
        n = 0
        while True:  # endless new data: killed while packs are being written
            w.write(os.urandom(1 << 20))
            n += 1
            if n == 40:
                print("packs written", flush=True)
    else:
        now = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        real = repo.backend.delete
        def slow(name):
            real(name)
            print("deleted", name, flush=True)
            time.sleep(30)
        repo.backend.delete = slow
        repo.collect_garbage(now=now)
""")


def _run_until_killed(tmp_path: Path, mode: str, marker: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    p = subprocess.Popen([sys.executable, str(script), str(tmp_path / "repo"), mode],
                         stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith(marker):
                break
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait()


def test_sigkill_during_backup_leaves_only_garbage(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    repo = new_repo(tmp_path)
    stream = make_tar(sample_files(30, 10))
    keep = backup(repo, "w", stream)
    _run_until_killed(tmp_path, "backup", "packs written")
    assert [i.id for i in repo.list()] == [keep.id]
    assert len(pack_names(repo)) > 1
    later = dt.datetime.now(dt.UTC) + LATER
    monkeypatch.setenv("VOLBAK_LOCK_STALE", "0")  # the dead run's lock counts as stale
    monkeypatch.setenv("VOLBAK_GC_GRACE", "0")
    gc(repo, later)  # its packs (in no index) are planned
    gc(repo, later + LATER)
    meta = repo.dedup().meta_keys().metadata
    index = repo.dedup().load_index(meta)
    assert set(pack_names(repo)) == {p.name for p in index.packs}
    assert not [o.name for o in repo.backend.list("v/")]
    assert restore(repo, keep) == stream


def test_sigkill_during_prune(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    infos = [backup(repo, "v", make_tar(sample_files(40 + i, 12))) for i in range(3)]
    for i in infos[:-1]:
        repo.delete(i)
    stream = restore(repo, infos[-1])
    gc(repo)
    _run_until_killed(tmp_path, "prune", "deleted")
    for o in list(repo.backend.list("_locks/")):  # the killed prune's lock, as if stale
        repo.backend.delete(o.name)
    gc(repo, dt.datetime.now(dt.UTC) + 2 * LATER)
    assert restore(repo, infos[-1]) == stream
    repo.check_stored(infos[-1])


# -- the standalone extractor -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["plain", "age", "passphrase"])
def test_standalone_extractor(tmp_path: Path, kind: str) -> None:
    from volbak.crypto.age import write_identity_file

    ident = X25519Identity.generate()
    write_identity_file(tmp_path / "key.txt", ident)
    (tmp_path / "pass.txt").write_text("pw\n")
    recips = {"plain": [], "age": [ident.recipient()],
              "passphrase": [ScryptRecipient(b"pw", work_factor=10)]}[kind]
    repo = new_repo(tmp_path, recips)
    stream = make_tar(sample_files(50, 12))
    info = backup(repo, "v", stream)
    flags = {"plain": [], "age": ["-i", str(tmp_path / "key.txt")],
             "passphrase": ["-p", str(tmp_path / "pass.txt")]}[kind]
    script = Path(__file__).resolve().parent.parent / "scripts" / "volbak_extract.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "repo"), info.id, *flags],
                         capture_output=True, check=True).stdout
    assert out == stream
    pack = tmp_path / "repo" / pack_names(repo)[0]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 1
    pack.write_bytes(bytes(data))
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "repo"), info.id, *flags],
                         capture_output=True)
    assert bad.returncode == 1 and b"volbak_extract" in bad.stderr


def test_passphrase_repository_derives_host_keys_without_a_key_file(tmp_path: Path) -> None:
    repo = new_repo(tmp_path, [ScryptRecipient(b"pw", work_factor=10)])
    key_file = tmp_path / "host-key.json"
    written = key_file.read_bytes()
    key_file.unlink()  # a second backup host: the passphrase, no key file
    stream = make_tar(sample_files(3, 8))
    with pytest.raises(UsageError, match=str(key_file)):
        backup(Repository(LocalBackend(tmp_path / "repo")), "v", stream)
    again = Repository(LocalBackend(tmp_path / "repo"))
    _clock[0] += dt.timedelta(seconds=1)
    with again.create_backup("v", _clock[0],
                             recipients=[ScryptRecipient(b"pw", work_factor=10)]) as w:
        w.write(stream)
        info = w.commit(Manifest(volume={"name": "v"}, created=_clock[0].isoformat(),
                                 tar={"size": len(stream)}))
    assert not key_file.exists()  # derived, never written
    with pytest.raises(CryptoError):  # a wrong passphrase derives nothing
        bad = Repository(LocalBackend(tmp_path / "repo"))
        bad.derive_keys.append(ScryptIdentity(b"wrong"))
        bad.collect_garbage(now=dt.datetime.now(dt.UTC))
    pruner = Repository(LocalBackend(tmp_path / "repo"))
    pruner.derive_keys.append(ScryptIdentity(b"pw"))
    assert pruner.collect_garbage(now=dt.datetime.now(dt.UTC)).packs >= 1
    assert restore(again, info, [ScryptIdentity(b"pw")]) == stream
    key_file.write_bytes(written)  # the same keys as the derived ones
    assert restore(repo, info, [ScryptIdentity(b"pw")]) == stream
    repo.check_stored(info)


def test_prune_rebuild_index_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from volbak.cli import cli

    repo = new_repo(tmp_path, [X25519Identity.generate().recipient()])
    stream = make_tar(sample_files(4, 10))
    info = backup(repo, "v", stream)
    for idx in (tmp_path / "repo" / "_index").iterdir():
        idx.write_bytes(idx.read_bytes()[:-40])  # truncated
    with pytest.raises(IntegrityError, match="index"):
        repo.check_stored(info)
    res = CliRunner().invoke(cli, ["prune", "--repo", str(tmp_path / "repo"),
                                   "--rebuild-index", "--json"])
    assert res.exit_code == 0, res.output
    assert '"rebuilt_index"' in res.output
    fresh = Repository(LocalBackend(tmp_path / "repo"))
    fresh.check_stored(fresh.list()[0])  # no identity: the host key file was enough
    assert len(list((tmp_path / "repo" / "_index").iterdir())) == 1


def test_idset_slots_are_stable_and_distinct() -> None:
    from volbak.repository.dedup.index import IdSet

    ids = IdSet()  # tiny buckets: many ids go to the overflow set and buckets grow
    members = [b"\0\1" + os.urandom(30) for _ in range(1500)] + [os.urandom(32) for _ in range(500)]
    for cid in members:
        ids.add(cid)
    ids.add_at(members[0], 0)  # loaded twice: one number
    assert ids._over  # both kinds of numbers are tested
    slots = [ids.slot(cid) for cid in members]
    assert len(set(slots)) == len(members)
    assert all(0 <= s < ids.slots() for s in slots)
    assert slots == [ids.slot(cid) for cid in members]
    assert ids.slot(os.urandom(32)) == -1 and ids.slot(b"short") == -1


def test_gc_usage_streamed_matches_location_table(tmp_path: Path) -> None:
    """Phase 1's streamed sums equal those of the full location table, with chunks
    stored twice (in two index files, and twice in one) counted at their first record."""
    import collections

    from volbak.repository.dedup.gc import _Usage
    from volbak.repository.dedup.index import PackRef, write_index

    repo = new_repo(tmp_path)
    store = repo.dedup()
    meta = store.meta_keys().metadata
    rnd = random.Random(5)
    seen: list[bytes] = []
    for f in range(3):
        packs = []
        for p in range(4):
            entries = []
            for i in range(200):
                cid = rnd.choice(seen) if seen and rnd.random() < 0.2 else os.urandom(32)
                seen.append(cid)
                entries.append((cid, 100 + i * 1000, rnd.randrange(1, 1000), 1000, 0))
            packs.append((PackRef(f"_packs/{f}-{p}", 1, "0" * 64), entries))
        packs.append((PackRef(f"_packs/{f}-empty", 1, "0" * 64), []))
        write_index(store.backend, meta, packs)
    refs = [rnd.choice(seen) for _ in range(900)] + [os.urandom(32) for _ in range(20)]

    index = store.load_index(meta)
    blobs: dict[str, int] = collections.Counter()
    for cid in set(seen):  # each id at its first record, as Index.load keeps it
        loc = index.get(cid)
        blobs[loc.pack] += loc.length
    live: dict[str, int] = collections.Counter()
    live_ids: dict[str, set] = collections.defaultdict(set)
    for cid in set(refs):
        loc = index.get(cid)
        if loc is not None:
            live[loc.pack] += loc.length
            live_ids[loc.pack].add((loc.offset, cid, loc.length, loc.raw, loc.key))

    usage = _Usage(store, meta, iter(refs))
    assert usage.indexed == {p.name for p in index.packs}
    got_blobs, got_live = usage.sums()
    assert +got_blobs == +blobs and +got_live == +live
    some = {"_packs/0-1", "_packs/2-3", "_packs/1-empty"}
    got = usage.live_entries(some)
    assert {k: set(v) for k, v in got.items()} == {k: live_ids[k] for k in some if live_ids[k]}
    assert all(len(v) == len(set(v)) for v in got.values())
    # phase 2: planned packs holding the only copy of a live chunk are kept; the
    # consolidated index holds what Index.load(skip=cand) holds
    cand = {f"_packs/{f}-{p}" for f in range(3) for p in range(4) if (f + p) % 2} | {
        "_packs/0-empty"}
    full = store.load_index(meta)
    rest = store.load_index(meta, skip=cand)
    kept = {full.pack_of(cid) for cid in set(refs) if cid not in rest and cid in full}
    assert kept and kept <= cand
    assert usage.only_in(cand) == kept
    cand -= kept
    final = store.load_index(meta, skip=cand)
    packs, recs = usage.consolidated(cand)
    got_recs = [(cid, packs[no].name, off, length, raw, k) for cid, no, off, length, raw, k in recs]
    want = {(cid, loc.pack, loc.offset, loc.length, loc.raw, loc.key)
            for cid in set(seen) if (loc := final.get(cid))}
    assert len(got_recs) == len(want) and set(got_recs) == want
    assert {p.name: p for p in packs} == {p.name: p for p in final.packs if p.name not in cand
                                          and any(r[1] == p.name for r in want)}


def test_a_dead_local_runs_lock_does_not_block_prune(tmp_path: Path) -> None:
    """A prune whose repository went away while it released its lock (an S3 server
    killed) leaves the lock object; on the same machine its dead pid frees it at once,
    and the next prune clears it away. A live or foreign lock still blocks."""
    import json
    import socket

    from volbak.errors import LockBusyError
    from volbak.repository.dedup.store import (
        LOCK_PREFIX,
        DedupStore,
        list_locks,
        machine_id,
    )

    if machine_id() is None:
        pytest.skip("no machine id on this host")
    (tmp_path / "locks").mkdir()
    backend = LocalBackend(tmp_path / "locks")
    gone = subprocess.Popen(["true"])
    gone.wait()
    info = {"kind": "prune", "what": "prune", "host": socket.gethostname(),
            "machine": machine_id(), "created": "2026-01-01T00:00:00Z",
            "refreshed": dt.datetime.now(dt.UTC).isoformat()}
    backend.put_bytes(f"{LOCK_PREFIX}prune-dead", json.dumps({**info, "pid": gone.pid}).encode())
    backend.put_bytes(f"{LOCK_PREFIX}prune-live", json.dumps({**info, "pid": os.getpid()}).encode())
    backend.put_bytes(f"{LOCK_PREFIX}prune-foreign",
                      json.dumps({**info, "pid": gone.pid, "machine": "elsewhere"}).encode())
    alive = {d["name"].rsplit("-", 1)[1]: d["alive"] for d in list_locks(backend)}
    assert alive == {"dead": False, "live": True, "foreign": True}

    store = DedupStore.__new__(DedupStore)  # only the backend matters to prune_lock
    store.backend = backend
    store.config = None  # type: ignore[assignment]
    with pytest.raises(LockBusyError):
        store.prune_lock()  # the live and the foreign locks still count
    backend.delete(f"{LOCK_PREFIX}prune-live")
    backend.delete(f"{LOCK_PREFIX}prune-foreign")
    lock = store.prune_lock()
    assert [o.name for o in backend.list(LOCK_PREFIX)] == [lock.name]
    lock.release()
