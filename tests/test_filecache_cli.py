"""The dedup file cache through the CLI with a real engine and the direct source:
unchanged files are not read (the backup's --json says how many were reused, and the
restores prove nothing was lost), --no-cache, a corrupt cache file, and a prune that
removes the cached chunks."""

from __future__ import annotations

import json
import os
import random

import pytest
from fidelity import diff_listings, listing, populate, volume_path

from volbak.crypto.age import X25519Identity, write_identity_file
from volbak.volumes import filecache

pytestmark = pytest.mark.docker

MiB = 1 << 20
BIG = 8  # big files the test adds to the fidelity tree


@pytest.fixture
def env(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the direct source needs root")
    monkeypatch.setenv("VOLBAK_REPO_FORMAT", "dedup")
    monkeypatch.setenv("VOLBAK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VOLBAK_GC_GRACE", "0")
    # the test writes files and backs them up at once: without this they are all
    # "racily clean" and never cached (the CLI runs in-process)
    monkeypatch.setattr(filecache, "RACY_NS", 0)
    ident = X25519Identity.generate()
    write_identity_file(tmp_path / "key.txt", ident)
    return str(tmp_path / "key.txt"), str(ident.recipient())


def test_incremental_backups_reuse_unchanged_files(resources, docker_client, run, env,
                                                   tmp_path):
    keyfile, recipient = env
    src = resources.volume().name
    root = volume_path(docker_client, src)
    populate(root, big=4 * MiB + 5)
    (root / "blobs").mkdir()
    for i in range(BIG):
        (root / f"blobs/b{i}").write_bytes(random.Random(i).randbytes(2 * MiB + i))
    run("init", "-r", recipient)

    def backup(*args: str) -> dict:
        out, _ = run("backup", src, "--source", "direct", "--json", *args)
        info = json.loads(out)
        assert info["source"] == "direct" and info["format"] == "dedup"
        return info

    def restored(info: dict) -> list:
        target = resources.name("volbak-fc")
        resources.track_volume(target)
        run("restore", info["id"], "--to-volume", target, "-i", keyfile)
        return listing(volume_path(docker_client, target))

    first = backup()
    fc = first["file_cache"]
    assert fc["status"] == "none" and fc["files_reused"] == 0
    big = fc["files_read"]
    assert big >= BIG + 1 and fc["saved"] == big
    before = listing(root)

    with open(root / "blobs/b3", "r+b") as f:
        f.seek(MiB + 17)
        f.write(b"one changed page")
    second = backup()
    fc = second["file_cache"]
    assert fc["status"] == "used"
    assert (fc["files_reused"], fc["files_read"]) == (big - 1, 1)
    assert fc["bytes_reused"] >= (BIG - 1) * 2 * MiB
    assert second["tar_size"] == first["tar_size"] and second["entries"] == first["entries"]
    after = listing(root)
    got = restored(first)
    assert got == before, diff_listings(before, got)
    got = restored(second)
    assert got == after, diff_listings(after, got)
    out, _ = run("verify", second["id"], "-i", keyfile)
    assert "full" in out

    # --no-cache reads everything (and writes the cache afresh)
    info = backup("--no-cache")
    assert info["file_cache"]["status"].startswith("off")
    assert (info["file_cache"]["files_reused"], info["file_cache"]["files_read"]) == (0, big)

    # a corrupt cache file: a full read, no error
    store = json.loads(run("show", second["id"], "--json")[0])["storage"]["repository"]
    path = filecache.cache_path(store, src)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    info = backup()
    assert info["file_cache"]["status"] == "corrupt"
    assert info["file_cache"]["files_reused"] == 0
    got = restored(info)
    assert got == after, diff_listings(after, got)

    # every backup pruned and its chunks collected: the cache's chunk ids are gone
    run("prune", src, "--keep-last", "0")
    run("prune", "--keep-last", "1")  # its garbage collection deletes what the first planned
    assert not run("list", "--json")[0].strip("[]\n ")
    info = backup()
    fc = info["file_cache"]
    assert fc["status"] == "used" and fc["files_reused"] == 0 and fc["chunks_gone"] == big
    got = restored(info)
    assert got == after, diff_listings(after, got)
    assert backup()["file_cache"]["files_reused"] == big


def test_backups_with_exclude_reuse_unchanged_files(resources, docker_client, run, env,
                                                    engine_kind):
    """The direct source leaves --exclude's paths out during its walk: the cache is
    used, and the restore is what the archive API's stream filter keeps."""
    keyfile, recipient = env
    src = resources.volume().name
    root = volume_path(docker_client, src)
    populate(root, big=4 * MiB + 5)
    (root / "blobs/cache").mkdir(parents=True)
    for i in range(BIG):
        (root / f"blobs/b{i}").write_bytes(random.Random(i).randbytes(2 * MiB + i))
        (root / f"blobs/cache/c{i}").write_bytes(random.Random(100 + i).randbytes(MiB))
    (root / "blobs/x.tmp").write_bytes(random.Random(99).randbytes(MiB))
    (root / "later").mkdir()
    os.link(root / "blobs/cache/c0", root / "later/c0-link")  # its first name is left out
    os.link(root / "blobs/b0", root / "later/b0-link")  # a link to a kept name
    excl = ("--exclude", "cache", "--exclude", "*.tmp", "--exclude", "files/big.bin")
    run("init", "-r", recipient)

    def backup(*args: str) -> dict:
        out, _ = run("backup", src, "--json", *excl, *args)
        return json.loads(out)

    def restored(info: dict) -> list:
        target = resources.name("volbak-fc")
        resources.track_volume(target)
        run("restore", info["id"], "--to-volume", target, "-i", keyfile)
        return listing(volume_path(docker_client, target))

    first = backup("--source", "direct")
    fc = first["file_cache"]
    assert fc["status"] == "none" and fc["files_reused"] == 0
    big = fc["files_read"]
    assert big >= BIG and fc["saved"] == big
    # the cache of a volume deleted since goes after the next backup; this one's stays
    path = filecache.cache_path(
        json.loads(run("show", first["id"], "--json")[0])["storage"]["repository"], src)
    gone = path.with_name("deleted-volume.cache")
    filecache.write(gone, filecache.Scope("r", "deleted-volume", str(root) + "-gone", (1,)),
                    [])
    second = backup("--source", "direct")
    fc = second["file_cache"]
    assert fc["status"] == "used" and (fc["files_reused"], fc["files_read"]) == (big, 0)
    assert fc["removed"] == 1 and not gone.exists() and path.exists()
    assert fc["bytes_reused"] >= BIG * 2 * MiB
    assert second["entries"] == first["entries"]

    api = backup("--source", "api")
    assert api["source"] == "api" and "file_cache" not in api
    got, want = restored(second), restored(api)
    if engine_kind == "podman":  # its archive API replaces owners, rounds mtimes (README)
        assert [e.path for e in got] == [e.path for e in want]
    else:
        assert got == want, diff_listings(want, got)
    paths = {e.path for e in got}
    assert {"blobs/b0", "later/b0-link", "files/small.bin"} <= paths
    assert not paths & {"blobs/cache", "blobs/x.tmp", "later/c0-link", "files/big.bin"}
    show = json.loads(run("show", second["id"], "--json")[0])
    assert show["exclude"] == list(excl[1::2])
