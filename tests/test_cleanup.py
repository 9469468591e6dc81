"""Garbage a killed run leaves in a repository: found by verify, removed by cleanup and
prune, never younger than the grace period; one damaged manifest hides nothing else."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time

import pytest
from cli_runner import cli_runner

from volbak.local import TMP_PREFIX, LocalBackend
from volbak.repository import Manifest, Repository


@pytest.fixture
def repo(tmp_path):
    return tmp_path / "repo"


@pytest.fixture
def run(repo, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VOLBAK_STATE_DIR", str(tmp_path / "state"))
    return cli_runner("unix:///nonexistent/engine.sock", repo, capsys)


def _backup(repo, volume: str, stamp: str) -> None:
    """A real (tiny, uncompressed) backup: the tar of an empty volume."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        root = tarfile.TarInfo("data")
        root.type = tarfile.DIRTYPE
        tar.addfile(root)
    data = buf.getvalue()
    r = Repository(LocalBackend(repo))
    name = f"{volume}/{stamp}.tar"
    r.backend.put_bytes(name, data)
    r.write_manifest(volume, stamp, Manifest(
        volume={"name": volume}, created=f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T00:00:00Z",
        compression="none", tar={"size": len(data), "entries": 1},
        object={"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


def _age(path, hours: float) -> None:
    t = time.time() - hours * 3600
    os.utime(path, (t, t))


def test_cleanup_removes_only_old_garbage(repo, run):
    _backup(repo, "db", "20261101T000000Z")
    orphan = repo / "db" / "20261102T000000Z.tar.zst"
    orphan.write_bytes(b"orphan")  # killed before manifest
    _age(orphan, 48)  # stored long ago, too (its stamp alone does not make it old)
    tmp = repo / "db" / f"{TMP_PREFIX}20261103T000000Z.tar.zst.abc"
    tmp.write_bytes(b"half")
    _age(tmp, 48)
    fresh = repo / "db" / f"{TMP_PREFIX}x.tar.zst.def"
    fresh.write_bytes(b"live")  # a run writing right now
    out, _ = run("cleanup", "--dry-run", "--json")
    report = json.loads(out)
    assert report["orphans"] == ["db/20261102T000000Z.tar.zst"]
    assert len(report["incomplete"]) == 1 and tmp.exists()
    out, _ = run("verify", "--all")
    assert "1 orphan archive(s) and 1 unfinished write(s)" in out
    run("cleanup")
    assert not tmp.exists() and fresh.exists()
    assert not (repo / "db" / "20261102T000000Z.tar.zst").exists()
    assert (repo / "db" / "20261101T000000Z.tar").exists()  # a listed backup is never touched
    out, _ = run("cleanup")
    assert "no garbage" in out


@pytest.mark.parametrize("content", [b"{}", b"[]", b'{"volume": {"name"', b"\x00\xff"])
def test_one_damaged_manifest_hides_nothing_else(repo, run, content):
    _backup(repo, "db", "20261101T000000Z")
    _backup(repo, "web", "20261101T000000Z")
    (repo / "web" / "20261101T000000Z.manifest.json").write_bytes(content)
    out, err = run("list", "--json")
    assert [b["id"] for b in json.loads(out)] == ["db@20261101T000000Z"]
    _, err = run("verify", "--all", expect=6)
    assert "web/20261101T000000Z.manifest.json" in err
    assert "malformed" in err or "JSON" in err
