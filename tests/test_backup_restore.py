"""Backup and restore on a real engine: fidelity round trips, bad input, failures.

Every test runs the real CLI entry point in-process (or as a subprocess for signals)
against the test engine, with a repository in a temp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fidelity import diff_listings, listing, populate, volume_path

from volbak.cli import main

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def nothing_left_behind(docker_client):
    """No helper container, staging volume or anonymous volume may outlive a command."""
    before = {v.name for v in docker_client.volumes.list()}
    yield
    # the low-level list: containers.list() inspects each one and races with removals
    helpers = docker_client.api.containers(all=True, filters={"label": "volbak=helper"})
    assert not helpers, f"helper containers left: {[c['Names'] for c in helpers]}"
    staging = docker_client.volumes.list(filters={"label": "volbak.managed"})
    assert not staging, f"staging volumes left: {[v.name for v in staging]}"
    anon = [v.name for v in docker_client.volumes.list()
            if v.name not in before and len(v.name) == 64]
    assert not anon, f"anonymous volumes left: {anon}"


def _new_target(resources) -> str:
    return resources.track_volume(resources.name("volbak-restored"))


def _same(client, a: str, b: str) -> None:
    la, lb = listing(volume_path(client, a)), listing(volume_path(client, b))
    assert la == lb, diff_listings(la, lb)


# -- fidelity ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("compression", "source"),
                         [("zstd", "direct"), ("zstd", "api"), ("gzip", "api"), ("none", "direct")])
def test_round_trip_keeps_every_byte_and_bit(compression, source, resources, docker_client, run,
                                             repo, engine_kind):
    if engine_kind == "podman" and source == "api":
        pytest.skip("Podman's archive API replaces owners (documented; the direct path keeps "
                    "them): test_podman_api_backup_warns covers that path")
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=(64 if compression == "zstd" else 4) * 2**20)
    out, _ = run("backup", src, "--compress", compression, "--json", "--source", source)
    summary = json.loads(out)
    assert summary["volume"] == src and summary["compression"] == compression
    assert summary["source"] == source
    target = _new_target(resources)
    out, _ = run("restore", summary["id"], "--to-volume", target, "--source", source, "--json")
    assert json.loads(out)["verified"] == "read-back"  # owners compared too
    _same(docker_client, src, target)
    root = volume_path(docker_client, target)
    st = root.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o700, 999, 999)


def test_sub_second_mtimes_restore_through_the_archive_api(resources, docker_client, run):
    """A direct backup keeps nanosecond mtimes. Podman's GET archive rounds them to the
    nearest second (dockerd truncates, as the digest does): written as they are through
    Podman's API, half of them read back 1 s later and the restore failed (exit 6)."""
    src = resources.volume().name
    root = volume_path(docker_client, src)
    (root / "d").mkdir()
    for i, frac in enumerate((0, 200_000_000, 500_000_000, 700_000_000, 999_999_999)):
        f = root / "d" / f"f{i}"
        f.write_bytes(b"x" * i)
        os.utime(f, ns=(1_700_000_000 * 10**9 + frac,) * 2)
    os.utime(root / "d", ns=(1_700_000_000_700_000_000,) * 2)
    out, _ = run("backup", src, "--json", "--source", "direct")
    target = _new_target(resources)
    out, _ = run("restore", json.loads(out)["id"], "--to-volume", target, "--source", "api",
                 "--json")
    assert json.loads(out)["verified"].startswith("read-back")
    back = volume_path(docker_client, target) / "d"
    # whole seconds, never later than the original (dockerd keeps the fraction)
    assert all(p.stat().st_mtime_ns // 10**9 == 1_700_000_000
               for p in [back, *back.iterdir()])


@pytest.mark.slow
def test_round_trip_file_over_8_gib(resources, docker_client, run):
    """Over 8 GiB a tar header needs a PAX size record: the stream scanner must follow."""
    src = resources.volume().name
    root = volume_path(docker_client, src)
    with open(root / "huge.img", "wb") as f:
        f.write(os.urandom(1 << 20))
        f.seek(8 * 2**30 + 12345)
        f.write(os.urandom(1 << 20))
    (root / "after").write_bytes(b"entry after the huge file")
    out, _ = run("backup", src, "--json")
    summary = json.loads(out)
    assert summary["entries"] == 3
    target = _new_target(resources)
    run("restore", src, "--to-volume", target)
    _same(docker_client, src, target)


def test_container_backup_restores_as_data_volume_container(
        resources, docker_client, busybox_image, run):
    a, b = resources.volume().name, resources.volume().name
    populate(volume_path(docker_client, a), big=2**20)
    (volume_path(docker_client, b) / "cache.txt").write_text("cached")
    web = resources.container(busybox_image, ["true"], volumes={
        a: {"bind": "/var/lib/app", "mode": "rw"}, b: {"bind": "/cache", "mode": "rw"}})
    out, _ = run("backup", "--container", web.name, "--json")
    backups = [json.loads(line) for line in out.splitlines()]
    assert {x["volume"] for x in backups} == {a, b}
    assert len({x["set"] for x in backups}) == 1
    assert all(x["container"] == web.name for x in backups)

    web2 = resources.name("volbak-web2")
    resources.track_container(web2)
    for path in ("var_lib_app", "cache"):
        resources.track_volume(f"{web2}_{path}")
    run("restore", backups[0]["id"], "--to-container", web2)
    mounts = {m["Destination"]: m["Name"]
              for m in docker_client.api.inspect_container(web2)["Mounts"]}
    assert set(mounts) == {"/var/lib/app", "/cache"}
    _same(docker_client, a, mounts["/var/lib/app"])
    _same(docker_client, b, mounts["/cache"])
    # The same container name again is refused and changes nothing.
    run("restore", backups[0]["id"], "--to-container", web2, expect=8)


def test_list_and_show(resources, docker_client, run, busybox_image, engine_kind):
    src = resources.volume(labels={"app": "db"}).name
    (volume_path(docker_client, src) / "f").write_text("x")
    resources.container(busybox_image, ["true"], name=resources.name("volbak-user"),
                        volumes={src: {"bind": "/var/lib/db", "mode": "rw"}},
                        ports={"5432/tcp": None})
    first = json.loads(run("backup", src, "--json")[0])
    time.sleep(1.1)  # distinct second-resolution IDs
    second = json.loads(run("backup", src, "--json", "--sha256")[0])
    listed = json.loads(run("list", "--json")[0])
    assert [x["id"] for x in listed] == [second["id"], first["id"]]
    for x in listed:
        assert {"id", "volume", "created", "size", "compression"} <= set(x)
        assert x["created"].endswith("Z") and x["size"] > 0
    shown = json.loads(run("show", src, "--json")[0])
    assert shown["id"] == second["id"]
    assert shown["volume"]["labels"]["app"] == "db"
    assert shown["mount_path"] == "/var/lib/db"
    (user,) = shown["containers"]
    # Podman names images in full (docker.io/library/...)
    assert user["image"].endswith(busybox_image) and user["network_mode"] == "none"
    if engine_kind == "docker":  # Podman reports no port bindings for a created container
        assert "5432/tcp" in user["ports"]
    text = run("list")[0]
    assert second["id"] in text and "ID" in text
    # the stored object's hashes: in backup --json, the manifest and show's text; the
    # sha256 only with --sha256
    assert first["sha256"] is None and len(first["blake3"]) == 64
    assert (second["sha256"], second["blake3"]) == \
        (shown["object"]["sha256"], shown["object"]["blake3"])
    assert len(second["sha256"]) == len(second["blake3"]) == 64
    text = run("show", second["id"])[0]
    assert f"sha256 {second['sha256']}" in text and f"blake3 {second['blake3']}" in text


# -- refusing to overwrite, --force -----------------------------------------------------------

def test_existing_target_is_refused_then_replaced_with_force(resources, docker_client, run):
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=2**20)
    run("backup", src)
    target = resources.volume().name
    (volume_path(docker_client, target) / "precious").write_text("keep me")
    before = listing(volume_path(docker_client, target))
    _, err = run("restore", src, "--to-volume", target, expect=8)
    assert target in err and "--force" in err
    assert listing(volume_path(docker_client, target)) == before
    run("restore", src, "--to-volume", target, "--force")
    _same(docker_client, src, target)


def test_existing_empty_target_is_filled(resources, docker_client, run):
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=2**20)
    run("backup", src)
    target = resources.volume().name
    run("restore", src, "--to-volume", target)
    _same(docker_client, src, target)


# -- damaged repositories -------------------------------------------------------------------

def _stored_object(repo: Path, volume: str) -> Path:
    (obj,) = [p for p in (repo / volume).iterdir() if ".tar" in p.name]
    return obj


@pytest.mark.parametrize("damage", ["bitflip", "truncate"])
def test_damaged_archive_fails_and_leaves_nothing(damage, resources, docker_client, run, repo):
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=8 * 2**20)
    run("backup", src)
    obj = _stored_object(repo, src)
    data = bytearray(obj.read_bytes())
    if damage == "bitflip":
        data[len(data) // 2] ^= 0x10
    else:
        del data[len(data) * 2 // 3:]
    obj.write_bytes(bytes(data))

    target = _new_target(resources)
    _, err = run("restore", src, "--to-volume", target, expect=6)
    assert "corrupt" in err or "truncated" in err or "ends early" in err
    assert target not in {v.name for v in docker_client.volumes.list()}

    existing = resources.volume().name
    (volume_path(docker_client, existing) / "precious").write_text("keep me")
    before = listing(volume_path(docker_client, existing))
    run("restore", src, "--to-volume", existing, "--force", expect=6)
    assert listing(volume_path(docker_client, existing)) == before


def test_backup_without_manifest_is_not_listed(resources, docker_client, run, repo):
    src = resources.volume().name
    (volume_path(docker_client, src) / "f").write_text("x")
    backup_id = json.loads(run("backup", src, "--json")[0])["id"]
    (manifest,) = (repo / src).glob("*.manifest.json")
    manifest.unlink()
    assert json.loads(run("list", "--json")[0]) == []
    _, err = run("restore", backup_id, "--to-volume", _new_target(resources), expect=3)
    assert backup_id in err


# -- bad input ------------------------------------------------------------------------------

def test_unknown_volume_container_and_backup(run):
    _, err = run("backup", "no-such-volume-xyz", expect=3)
    assert "no-such-volume-xyz" in err
    _, err = run("backup", "--container", "no-such-ctr-xyz", expect=3)
    assert "no-such-ctr-xyz" in err and "--container" in err
    # nothing was stored, so there is no repository yet: that is said, not "no backup"
    _, err = run("restore", "no-such-volume-xyz", "--to-volume", "x", expect=5)
    assert "no repository" in err
    _, err = run("restore", "vol@20000101T000000Z", "--to-volume", "x", expect=5)
    assert "no repository" in err


def test_unreachable_engine_names_host_and_docker_host(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    rc = main(["backup", "v", "--repo", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 4
    assert "unix:///nonexistent/docker.sock" in err and "DOCKER_HOST" in err and "hint:" in err


def test_bad_repository_url_names_the_plugin(run):
    # only a plugin volbak knows of gets an install line (see tests/test_backend_s3.py)
    _, err = run("list", repo_path="nosuch://bucket/x", expect=5)
    assert "nosuch://" in err and "pip install" not in err


# -- the repository's disk --------------------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@needs_root
def test_repository_not_writable(resources, docker_client, run, tmp_path):
    src = resources.volume().name
    (volume_path(docker_client, src) / "f").write_text("x")
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        _, err = run("backup", src, repo_path=ro, expect=5)
    assert "not writable" in err


@needs_root
def test_full_disk_leaves_no_backup(resources, docker_client, run, tmp_path):
    src = resources.volume().name
    (volume_path(docker_client, src) / "random").write_bytes(os.urandom(24 * 2**20))
    with _tmpfs(tmp_path / "small", "size=4m") as small:
        _, err = run("backup", src, repo_path=small, expect=5)
        assert "no space" in err
        leftovers = [f for _, _, files in os.walk(small) for f in files]
        assert leftovers == []
        _, err = run("list", "--json", repo_path=small, expect=5)  # still no repository
        assert "empty directory" in err


def test_direct_keeps_xattrs_acls_and_holes(resources, docker_client, run):
    """What the archive API cannot carry, the direct path keeps (issue 14)."""
    if not shutil.which("setfacl") or not shutil.which("setfattr"):
        pytest.skip("needs setfacl/setfattr (Debian: acl, attr)")
    src = resources.volume().name
    root = volume_path(docker_client, src)
    f = root / "f"
    f.write_text("x")
    subprocess.run(["setfattr", "-n", "user.note", "-v", "kept", str(f)], check=True)
    subprocess.run(["setfattr", "-n", "trusted.t", "-v", "1", str(f)], check=True)
    subprocess.run(["setfacl", "-m", "u:1234:rw", str(f)], check=True)
    (root / "d").mkdir()
    subprocess.run(["setfacl", "-d", "-m", "g:4321:rx", str(root / "d")], check=True)
    with open(root / "holes", "wb") as h:
        h.seek(64 * 2**20)
        h.write(b"end")
    run("backup", src)
    target = _new_target(resources)
    run("restore", src, "--to-volume", target)
    out = volume_path(docker_client, target)

    def attrs(p):
        xa = subprocess.run(["getfattr", "-d", "-m", "-", "--absolute-names", str(p)],
                            capture_output=True, text=True).stdout.splitlines()[1:]
        acl = subprocess.run(["getfacl", "-n", "--absolute-names", "-p", str(p)],
                             capture_output=True, text=True).stdout.splitlines()[1:]
        return xa, acl

    for rel in ("f", "d"):
        assert attrs(root / rel) == attrs(out / rel)
    assert (out / "holes").stat().st_blocks * 512 < 2**20  # holes stay holes
    _same(docker_client, src, target)


def _forks(monkeypatch, helper: type) -> list[bytes]:
    """The directories a forked helper (direct._Child, direct._Walker) is made for,
    as they are made."""
    made = []
    real = helper.__init__

    def spied(self, tree):
        made.append(tree.path)
        real(self, tree)

    monkeypatch.setattr(helper, "__init__", spied)
    return made


def test_direct_restore_in_two_processes_keeps_every_byte_and_bit(resources, docker_client, run,
                                                                 monkeypatch):
    """A direct restore of many small files writes them in a forked child (issue 14): the
    fidelity tree still comes back whole, and the read-back checks it."""
    from volbak import volumes
    from volbak.volumes import direct

    monkeypatch.setattr(volumes, "FORK_ENTRIES", 10)  # the tree is ~100 entries
    monkeypatch.setattr(volumes, "FORK_AVERAGE", 2**30)  # and holds a 48 MiB sparse file
    forked = _forks(monkeypatch, direct._Child)
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=3 * 2**20)
    run("backup", src, "--source", "direct")
    target = _new_target(resources)
    out, _ = run("restore", src, "--to-volume", target, "--source", "direct", "--json")
    assert json.loads(out)["verified"] == "read-back"
    assert forked == [os.fsencode(volume_path(docker_client, target))]
    _same(docker_client, src, target)


def test_direct_backup_of_many_small_files_walks_in_a_second_process(
        resources, docker_client, run, monkeypatch):
    """Many small files: the direct backup's walk runs in a forked child (issue 14), and
    the backup is still the whole tree, counted."""
    from volbak.volumes import direct

    walks = _forks(monkeypatch, direct._Walker)
    src = resources.volume().name
    root = volume_path(docker_client, src)
    populate(root, big=2 * 2**20)
    for d in range(3):
        (root / f"many{d}").mkdir()
        for i in range(1000):
            (root / f"many{d}/f{i}").write_bytes(os.urandom(i % 5 * 300))
    out, _ = run("backup", src, "--source", "direct", "--json")
    assert walks == [os.fsencode(root)]
    backup_id = json.loads(out)["id"]
    out, _ = run("show", backup_id, "--json")
    assert json.loads(out)["tar"]["entries"] == sum(1 for _ in root.rglob("*")) + 1  # the root
    target = _new_target(resources)
    run("restore", backup_id, "--to-volume", target, "--source", "direct")
    _same(docker_client, src, target)


def test_many_small_files_choose_two_processes() -> None:
    from volbak.ops.restore import _many_small_files
    from volbak.repository.manifest import Manifest
    from volbak.volumes import FORK_AVERAGE, FORK_ENTRIES

    def manifest(entries, file_bytes):
        return Manifest(volume={}, created="", tar={"entries": entries, "file_bytes": file_bytes})

    assert _many_small_files(manifest(50_000, 192 * 2**20))
    assert not _many_small_files(manifest(FORK_ENTRIES - 1, 1))
    assert not _many_small_files(manifest(2, 2**30))  # a big file: the pipe costs more
    assert not _many_small_files(manifest(10_000, 10_000 * FORK_AVERAGE))
    assert not _many_small_files(manifest(None, None))  # an old manifest: one process


# -- signals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["api", "direct"])
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_backup_cleans_up(sig, code, source, resources, docker_client, docker_host,
                                     repo):
    src = resources.volume().name
    with open(volume_path(docker_client, src) / "random", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(8 * 2**20))
    proc = subprocess.Popen(
        [sys.executable, "-m", "volbak", "backup", src, "-H", docker_host, "--source", source,
         "--repo", str(repo), "--compress", "gzip"],  # gzip: slow enough to interrupt
        stderr=subprocess.PIPE, text=True)
    # Until the archive is being written, however long the run takes to get there under
    # load (30 s of ours once ran out first at load 13 and the signal came too early).
    deadline = time.monotonic() + 600  # only a hung run ends here
    while not list(repo.rglob("*.tar*")):
        assert proc.poll() is None, f"the backup ended before the signal: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the backup hung"
        time.sleep(0.05)
    if source == "api":
        assert docker_client.api.containers(all=True, filters={"label": "volbak=helper"})
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert [f for _, _, files in os.walk(repo) for f in files] == []


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _small_files(root: Path) -> None:
    for d in range(20):
        (root / f"d{d}").mkdir()
        for i in range(1000):
            (root / f"d{d}/f{i}").write_bytes(os.urandom(2000))


def _interrupted(args: list[str], ready, sig: int, group: bool) -> tuple[int, str, list[int]]:
    """Run ``volbak ARGS``; once it has forked a helper and ``ready()``, send it ``sig``
    (to its process group with ``group``, as Ctrl-C does). Its exit code, stderr, and
    the helpers it had."""
    proc = subprocess.Popen([sys.executable, "-m", "volbak", *args], stderr=subprocess.PIPE,
                            text=True, start_new_session=group)
    deadline = time.monotonic() + 600  # only a hung run ends here
    while not ((children := _children(proc.pid)) and ready()):
        assert proc.poll() is None, f"the run ended before the signal: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the run hung"
        time.sleep(0.01)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err and "helper" not in err
    return proc.returncode, err, children


def _gone(children: list[int]) -> None:
    for child in children:
        assert not Path(f"/proc/{child}").exists(), f"the helper {child} outlived its run"


@pytest.mark.parametrize(("sig", "code", "group"), [(signal.SIGTERM, 143, False),
                                                   (signal.SIGINT, 130, False),
                                                   (signal.SIGINT, 130, True)])
def test_signal_mid_forked_restore_cleans_up(sig, code, group, resources, docker_client,
                                             docker_host, repo, run):
    """A signal while a forked child writes the files of a direct restore: the child is
    stopped before the new volume is removed, and nothing is left (issue 14)."""
    src = resources.volume().name
    _small_files(volume_path(docker_client, src))
    run("backup", src, "--source", "direct", "--compress", "gzip")
    target = resources.track_volume(resources.name("volbak-restored"))
    # the writer is forked as the extraction begins
    rc, err, children = _interrupted(
        ["restore", src, "--to-volume", target, "-H", docker_host, "--repo", str(repo),
         "--source", "direct"], lambda: True, sig, group)
    assert rc == code, err
    assert target not in {v.name for v in docker_client.volumes.list()}
    _gone(children)


@pytest.mark.parametrize(("sig", "code", "group"), [(signal.SIGTERM, 143, False),
                                                   (signal.SIGINT, 130, True)])
def test_signal_mid_forked_backup_cleans_up(sig, code, group, resources, docker_client,
                                            docker_host, repo):
    """A signal while a forked child walks a volume of many small files: the run's own
    exit code, nothing in the repository, and the walker gone (issue 14)."""
    src = resources.volume().name
    _small_files(volume_path(docker_client, src))
    rc, err, children = _interrupted(
        ["backup", src, "-H", docker_host, "--source", "direct", "--repo", str(repo),
         "--compress", "gzip"], lambda: list(repo.rglob("*.tar*")), sig, group)
    assert rc == code, err
    assert [f for _, _, files in os.walk(repo) for f in files] == []
    _gone(children)


def test_interrupt_after_archive_commit_leaves_nothing(resources, docker_client, docker_host,
                                                       repo, monkeypatch):
    """A signal can land between the archive's commit and the manifest: the archive must
    go too, or the repository keeps an unlisted orphan."""
    from volbak.engine import connect
    from volbak.local import LocalBackend
    from volbak.ops.backup import BackupOptions, backup_volume
    from volbak.repository import Repository

    src = resources.volume().name
    (volume_path(docker_client, src) / "f").write_text("x")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Repository, "write_manifest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        backup_volume(connect(docker_host), Repository(LocalBackend(repo)), src, BackupOptions())
    assert [f for _, _, files in os.walk(repo) for f in files] == []


def test_podman_api_backup_warns(resources, docker_client, run, engine_kind):
    """Through Podman's archive API owners are lost: the backup says so, loudly and in the
    manifest; the content, modes and names still round-trip (issue 11)."""
    if engine_kind != "podman":
        pytest.skip("Podman only")
    src = resources.volume().name
    root = volume_path(docker_client, src)
    (root / "d").mkdir()
    (root / "d" / "f").write_text("x")
    os.chmod(root / "d" / "f", 0o4755)
    out, err = run("backup", src, "--source", "api", "--json")
    assert "replaces every owner" in err
    backup = json.loads(out)
    shown = json.loads(run("show", backup["id"], "--json")[0])
    assert any("Podman" in w for w in shown["warnings"])
    target = _new_target(resources)
    out, _ = run("restore", backup["id"], "--to-volume", target, "--source", "api", "--json")
    assert json.loads(out)["verified"] == "read-back-without-owners"
    got = volume_path(docker_client, target)
    assert (got / "d" / "f").read_text() == "x"
    assert (got / "d" / "f").stat().st_mode & 0o7777 == 0o4755
