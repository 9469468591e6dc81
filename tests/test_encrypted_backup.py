"""Encrypted backups end to end on a real engine, and interop with the `age` CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from fidelity import diff_listings, listing, populate, volume_path

from volbak.cli import main

pytestmark = pytest.mark.docker
needs_age = pytest.mark.skipif(not shutil.which("age") or not shutil.which("zstd"),
                               reason="the age and zstd CLIs are needed for interop")


@pytest.fixture
def key(tmp_path, capsys) -> tuple[Path, str]:
    path = tmp_path / "backup.key"
    assert main(["keygen", "-o", str(path)]) == 0
    recipient = capsys.readouterr().out.strip()
    assert recipient.startswith("age1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return path, recipient


@pytest.fixture
def source(resources, docker_client) -> str:
    name = resources.volume().name
    populate(volume_path(docker_client, name), big=6 * 2**20)
    return name


def _target(resources) -> str:
    return resources.track_volume(resources.name("volbak-restored"))


def _stored(repo: Path, volume: str) -> Path:
    (obj,) = (repo / volume).glob("*.age")
    return obj


def test_recipient_round_trip_and_manifest(source, key, run, resources, docker_client):
    path, recipient = key
    out, _ = run("backup", source, "-r", recipient, "--json")
    assert json.loads(out)["encrypted"] is True
    shown = json.loads(run("show", source, "--json")[0])
    assert shown["encryption"] == {"format": "age-v1", "recipients": [recipient],
                                   "passphrase": False}
    target = _target(resources)
    run("restore", source, "--to-volume", target, "-i", str(path))
    a, b = listing(volume_path(docker_client, source)), listing(volume_path(docker_client, target))
    assert a == b, diff_listings(a, b)


def test_passphrase_file_and_env(source, run, resources, tmp_path, monkeypatch):
    pfile = tmp_path / "pass"
    pfile.write_text("correct horse battery staple\n")
    run("backup", source, "--passphrase-file", str(pfile))
    monkeypatch.setenv("VOLBAK_PASSPHRASE_FILE", str(pfile))
    run("restore", source, "--to-volume", _target(resources))
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    target = _target(resources)
    _, err = run("restore", source, "--to-volume", target, "--passphrase-file", str(wrong),
                 expect=7)
    assert "hint:" in err and "nope" not in err


def test_wrong_key_fails_before_touching_any_target(source, key, run, resources, docker_client,
                                                    tmp_path, capsys):
    _, recipient = key
    run("backup", source, "-r", recipient)
    other = tmp_path / "other.key"
    assert main(["keygen", "-o", str(other)]) == 0
    capsys.readouterr()
    target = _target(resources)
    _, err = run("restore", source, "--to-volume", target, "-i", str(other), expect=7)
    assert "--identity" in err
    assert target not in {v.name for v in docker_client.volumes.list()}
    existing = resources.volume().name
    (volume_path(docker_client, existing) / "keep").write_text("me")
    before = listing(volume_path(docker_client, existing))
    run("restore", source, "--to-volume", existing, "--force", "-i", str(other), expect=7)
    assert listing(volume_path(docker_client, existing)) == before
    _, err = run("restore", source, "--to-volume", target, expect=2)
    assert "--identity" in err


@pytest.mark.parametrize("damage", ["tamper", "truncate"])
def test_damaged_encrypted_backup(damage, source, key, run, resources, docker_client, repo):
    path, recipient = key
    run("backup", source, "-r", recipient)
    obj = _stored(repo, source)
    data = bytearray(obj.read_bytes())
    if damage == "tamper":
        data[len(data) // 2] ^= 1
    else:
        del data[-100:]
    obj.write_bytes(bytes(data))
    target = _target(resources)
    run("restore", source, "--to-volume", target, "-i", str(path), expect=(6, 7))
    assert target not in {v.name for v in docker_client.volumes.list()}
    out, _ = run("verify", source, "-i", str(path), "--json", expect=(6, 7))
    assert json.loads(out)["ok"] is False and json.loads(out)["level"] == "full"
    out, _ = run("verify", source, "--json", expect=6)  # no key: the stored hash still catches it
    res = json.loads(out)
    assert (res["ok"], res["level"]) == (False, "hash")


@needs_age
def test_runbook_without_volbak(source, key, run, repo, tmp_path, docker_client):
    """The README's runbook: age -d -i KEY <stored file> | zstd -t checks it whole (and
    fails on a damaged copy), sha256sum -c too for a backup made with --sha256, then
    age -d | zstd -d | tar x gives back the volume."""
    path, recipient = key
    run("backup", source, "-r", recipient, "--sha256")
    (mfile,) = (repo / source).glob("*.manifest.json")
    subprocess.run(["sha256sum", "-c", "--strict"], check=True, text=True, capture_output=True,
                   input=f"{json.loads(mfile.read_text())['object']['sha256']}  "
                         f"{_stored(repo, source)}\n")
    damaged = tmp_path / "damaged.age"
    data = bytearray(_stored(repo, source).read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(data)
    for stored, rc in ((_stored(repo, source), 0), (damaged, 1)):
        check = subprocess.run(["bash", "-c", f"set -o pipefail; age -d -i {path} {stored} "
                                "| zstd -t"], capture_output=True)
        assert check.returncode == rc, check.stderr
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        f"age -d -i {path} {_stored(repo, source)} | zstd -d | tar -x --numeric-owner -p -C {out}",
        shell=True, check=True)
    a, b = listing(volume_path(docker_client, source)), listing(out / "data")
    assert a == b, diff_listings(a, b)


@needs_age
def test_file_encrypted_by_age_is_restored(source, run, repo, resources, docker_client,
                                           tmp_path):
    """Re-encrypt a stored backup with the age CLI to an age-keygen key: volbak restores it."""
    run("backup", source, "--compress", "zstd")
    (plain,) = (repo / source).glob("*.tar.zst")
    key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True,
                               text=True).stdout.strip()
    enc = plain.with_name(plain.name + ".age")
    subprocess.run(["age", "-r", recipient, "-o", str(enc), str(plain)], check=True)
    (mfile,) = (repo / source).glob("*.manifest.json")
    manifest = json.loads(mfile.read_text())
    manifest["object"] = {"name": f"{source}/{enc.name}", "size": enc.stat().st_size,
                          "sha256": hashlib.sha256(enc.read_bytes()).hexdigest()}
    manifest["encryption"] = {"format": "age-v1", "recipients": [recipient], "passphrase": False}
    mfile.write_text(json.dumps(manifest))
    os.unlink(plain)
    target = _target(resources)
    run("restore", source, "--to-volume", target, "-i", str(key))
    a, b = listing(volume_path(docker_client, source)), listing(volume_path(docker_client, target))
    assert a == b, diff_listings(a, b)
