"""The dedup format through the CLI with real engines: backup -> list -> restore ->
verify -> dump; and two engines backing up into one repository while a third process
prunes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest
from fidelity import diff_listings, listing, populate, volume_path

from volbak.crypto.age import X25519Identity, write_identity_file

pytestmark = pytest.mark.docker


@pytest.fixture
def key(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLBAK_REPO_FORMAT", "dedup")
    ident = X25519Identity.generate()
    write_identity_file(tmp_path / "key.txt", ident)
    return tmp_path / "key.txt", str(ident.recipient())


def test_backup_list_restore_verify_dump(resources, docker_client, run, repo, key, tmp_path):
    keyfile, recipient = key
    src = resources.volume().name
    root = volume_path(docker_client, src)
    populate(root, big=4 * 2**20)
    run("init", "-r", recipient)
    run("init", "-r", recipient, expect=2)  # refuses an existing repository
    out, _ = run("backup", src, "--json")
    first = json.loads(out)
    assert first["format"] == "dedup" and first["encrypted"]
    (root / "more.txt").write_text("a small change\n")
    out, _ = run("backup", src, "--json")
    second = json.loads(out)
    assert second["size"] < first["size"] / 4
    # --sha256 records the hash of an archive's one object: a dedup repository has none
    _, err = run("backup", src, "--sha256", expect=2)
    assert "is a dedup repository" in err and "hint: drop --sha256" in err
    assert "Traceback" not in err
    listed = json.loads(run("list", "--json")[0])
    assert [b["format"] for b in listed] == ["dedup", "dedup"]
    shown = json.loads(run("show", second["id"], "--json")[0])
    assert shown["repo_format"] == "dedup" and shown["storage"]["chunks"]
    # restore needs the identity: without it exit 7, and nothing is created
    target = resources.name("volbak-dd-restored")
    resources.track_volume(target)
    run("restore", second["id"], "--to-volume", target, expect=7)
    assert not [v for v in docker_client.volumes.list() if v.name == target]
    run("restore", second["id"], "--to-volume", target, "-i", str(keyfile))
    la, lb = listing(root), listing(volume_path(docker_client, target))
    assert la == lb, diff_listings(la, lb)
    out, _ = run("verify", src)
    assert "structure only" in out
    out, _ = run("verify", src, "-i", str(keyfile))
    assert "full" in out
    run("dump", second["id"], "-i", str(keyfile), "-O", str(tmp_path / "x.tar"))
    with tarfile.open(tmp_path / "x.tar") as t:
        assert any(n.endswith("more.txt") for n in t.getnames())
    # a deleted pack: structural verify and restore both fail with exit 6
    pack = next(p for p in (repo / "_packs").rglob("*") if p.is_file())
    pack.unlink()
    run("verify", second["id"], expect=6)
    run("restore", second["id"], "--to-volume", resources.name("volbak-dd-x"), "-i",
        str(keyfile), expect=6)


def test_two_engines_back_up_while_a_third_process_prunes(
        resources, resources2, docker_client, docker_client2, docker_host, docker_host2,
        repo, key, tmp_path):
    keyfile, recipient = key
    env = {**os.environ, "VOLBAK_GC_GRACE": "0", "VOLBAK_LOCK_DIR": str(tmp_path / "locks-p")}
    base = [sys.executable, "-m", "volbak"]
    subprocess.run([*base, "init", "-r", recipient, "--repo", str(repo)], check=True, env=env)
    vols = []
    for res, client, host in ((resources, docker_client, docker_host),
                              (resources2, docker_client2, docker_host2)):
        v = res.volume().name
        populate(volume_path(client, v), big=8 * 2**20)
        vols.append((v, host))
    loops = []
    # Each engine's backups and the pruner act as separate hosts: their own flock
    # directories (the per-host lock is not what protects a shared repository).
    for n, (v, host) in enumerate(vols):
        henv = {**env, "VOLBAK_LOCK_DIR": str(tmp_path / f"locks-{n}")}
        script = (f"for i in 1 2 3; do {sys.executable} -m volbak backup {v} -H {host} "
                  f"--repo {repo} -q || exit 1; done")
        loops.append(subprocess.Popen(["sh", "-c", script], env=henv))
    pruned = 0
    while any(p.poll() is None for p in loops):
        r = subprocess.run([*base, "prune", "--keep-last", "1", "--repo", str(repo), "-q"],
                           env=env, capture_output=True, text=True)
        assert r.returncode in (0, 9), r.stderr  # 9: another prune holds the lock
        pruned += 1
    assert [p.wait() for p in loops] == [0, 0]
    assert pruned >= 1
    subprocess.run([*base, "prune", "--keep-last", "1", "--repo", str(repo), "-q"],
                   env=env, check=True)
    for (v, host), (res, client) in zip(vols, ((resources, docker_client),
                                               (resources2, docker_client2)), strict=True):
        target = res.name("volbak-dd-two")
        res.track_volume(target)
        subprocess.run([*base, "restore", v, "--to-volume", target, "-H", host, "--repo",
                        str(repo), "-i", str(keyfile), "-q"], env=env, check=True)
        la, lb = listing(volume_path(client, v)), listing(volume_path(client, target))
        assert la == lb, diff_listings(la, lb)
