"""Migration between two real engines: fidelity, containers, ssh, clones, --stop, failures.

The CLI runs in-process (volbak.cli.main). Engine 2 is reached directly (unix://), through
the real sshd fixture (ssh://), or through a TCP proxy thread in front of its socket that
can cut a connection after N bytes (tcp://127.0.0.1:PORT), to break a transfer midway.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
from fidelity import diff_listings, listing, populate, volume_path

from volbak.cli import main
from volbak.engine import connect, read_tree_digest
from volbak.errors import IntegrityError
from volbak.stream.tar import TarParser

# Engine 1 is the migration source: through Podman's archive API owners are lost (documented),
# so the fidelity checks here run against dockerd only.
pytestmark = [pytest.mark.docker, pytest.mark.engines("docker")]


# -- fixtures -------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLBAK_STATE_DIR", str(tmp_path / "state"))  # --stop's journal


def _leftovers(client, before: set[str]) -> list[str]:
    # the low-level list: containers.list() inspects each one and races with removals
    out = [f"helper {c['Names']}" for c in
           client.api.containers(all=True, filters={"label": "volbak=helper"})]
    out += [f"staging {v.name}" for v in client.volumes.list(filters={"label": "volbak.managed"})]
    out += [f"anonymous volume {v.name}" for v in client.volumes.list()
            if v.name not in before and len(v.name) == 64]
    return out


@pytest.fixture
def nothing_left_behind(request):
    """No helper container, staging volume or anonymous volume on either engine may
    outlive a command (only for tests that need engines)."""
    clients = [request.getfixturevalue("docker_client")]
    if "docker_client2" in request.fixturenames or "resources2" in request.fixturenames:
        clients.append(request.getfixturevalue("docker_client2"))
    before = [{v.name for v in c.volumes.list()} for c in clients]
    yield
    left = [x for c, b in zip(clients, before, strict=True) for x in _leftovers(c, b)]
    assert not left, f"left behind: {left}"


@pytest.fixture
def run(capsys, nothing_left_behind):
    def run(*args: str, expect: int = 0) -> tuple[str, str]:
        rc = main(list(args))
        out, err = capsys.readouterr()
        assert rc == expect, f"exit {rc} (wanted {expect}); stderr:\n{err}"
        assert "Traceback" not in err
        if expect and expect != 130:
            assert "volbak: error: " in err and "\nhint: " in err, err
        return out, err

    return run


def _same(c1, v1: str, c2, v2: str) -> None:
    a, b = listing(volume_path(c1, v1)), listing(volume_path(c2, v2))
    assert a == b, diff_listings(a, b)


def _volumes(client) -> set[str]:
    return {v.name for v in client.volumes.list()}


def _unix_path(url: str) -> str:
    assert url.startswith("unix://"), f"the proxy needs a unix:// engine, got {url}"
    return url[len("unix://"):]


class CuttingProxy:
    """tcp://127.0.0.1:PORT in front of an engine's unix socket. A connection that has
    carried more than ``up`` bytes towards the engine (or ``down`` bytes back) is cut:
    both sockets are shut down, as when a network link drops. Small API calls pass."""

    def __init__(self, unix_path: str, up: int | None = None, down: int | None = None):
        self.path, self.up, self.down = unix_path, up, down
        self.cuts = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.url = f"tcp://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            engine = socket.socket(socket.AF_UNIX)
            try:
                engine.connect(self.path)
            except OSError:
                client.close()
                continue
            pair = (client, engine)
            threading.Thread(target=self._pipe, args=(client, engine, self.up, pair),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(engine, client, self.down, pair),
                             daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, limit: int | None, pair) -> None:
        n = 0
        try:
            while data := a.recv(1 << 16):
                n += len(data)
                if limit is not None and n > limit:
                    self.cuts += 1
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in pair:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()


@pytest.fixture
def proxy():
    made: list[CuttingProxy] = []

    def make(url: str, up: int | None = None, down: int | None = None) -> CuttingProxy:
        made.append(CuttingProxy(_unix_path(url), up, down))
        return made[-1]

    yield make
    for p in made:
        p.close()


def _random_volume(resources, client, mib: int) -> str:
    name = resources.volume().name
    root = volume_path(client, name)
    with open(root / "random.bin", "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(2**20))
    (root / "small").write_text("small file after the big one")
    return name


# -- the canonical digest (no engine) -------------------------------------------------------

def _tar(fmt: int, uname: str, mode: int = 0o644, data: bytes = b"hello",
         xattr: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        d = tarfile.TarInfo("data")
        d.type, d.mode, d.uid, d.uname, d.mtime = tarfile.DIRTYPE, 0o700, 999, uname, 1000
        tar.addfile(d)
        long = "data/" + "x" * 150 + "/" + "y" * 120
        for name in ("data/f", long):
            f = tarfile.TarInfo(name)
            f.size, f.mode, f.uid, f.uname, f.mtime = len(data), mode, 999, uname, 2000
            if xattr:
                f.pax_headers = {"SCHILY.xattr.security.capability": xattr}
            tar.addfile(f, io.BytesIO(data))
        link = tarfile.TarInfo("data/l")
        link.type, link.linkname, link.uname = tarfile.LNKTYPE, "data/f", uname
        tar.addfile(link)
    return buf.getvalue()


def _digest(data: bytes, chunk: int = 777) -> TarParser:
    d = TarParser(digest=True)
    for i in range(0, len(data), chunk):
        d.feed(data[i:i + chunk])
    d.check_complete()
    return d


def test_digest_ignores_encoding_and_names_but_not_content():
    gnu_tar, pax_tar = _tar(tarfile.GNU_FORMAT, "root"), _tar(tarfile.PAX_FORMAT, "postgres")
    gnu, pax = _digest(gnu_tar), _digest(pax_tar, chunk=1 << 20)
    assert gnu_tar != pax_tar
    assert gnu.hexdigest() == pax.hexdigest()
    assert (gnu.entries, gnu.file_bytes) == (4, 10)
    assert _digest(_tar(tarfile.PAX_FORMAT, "root", mode=0o4755)).hexdigest() != gnu.hexdigest()
    assert _digest(_tar(tarfile.PAX_FORMAT, "root", data=b"hellO")).hexdigest() != \
        gnu.hexdigest()
    cap = _digest(_tar(tarfile.PAX_FORMAT, "root", xattr="x")).hexdigest()
    assert cap != gnu.hexdigest()
    assert cap != _digest(_tar(tarfile.PAX_FORMAT, "root", xattr="y")).hexdigest()
    truncated = _tar(tarfile.PAX_FORMAT, "root")[:1536]
    d = TarParser(digest=True)
    d.feed(truncated)
    with pytest.raises(IntegrityError):
        d.check_complete()


# -- between two engines --------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_volume_migrates_with_every_byte_and_bit(compression, resources, resources2,
                                                 docker_client, docker_client2, docker_host,
                                                 docker_host2, run):
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=8 * 2**20)
    before = listing(volume_path(docker_client, src))
    resources2.track_volume(src)
    out, _ = run("migrate", src, "--from", docker_host, "--to", docker_host2, "--json",
                 "--compress", compression)
    summary = json.loads(out)
    _same(docker_client, src, docker_client2, src)
    assert listing(volume_path(docker_client, src)) == before  # the source is untouched
    root = volume_path(docker_client2, src).stat()
    assert (root.st_mode & 0o7777, root.st_uid, root.st_gid) == (0o700, 999, 999)
    (vol,) = summary["volumes"]
    assert (vol["volume"], vol["target"]) == (src, src)
    assert summary["entries"] == len(before) and summary["bytes"] > 8 * 2**20
    assert summary["verified"] == "canonical-digest" and summary["mb_per_s"] > 0
    assert summary["same_engine"] is False
    if compression == "gzip":
        assert summary["wire_bytes"] < summary["bytes"]
    else:
        assert summary["wire_bytes"] == summary["bytes"]
    # Both engines give the same canonical digest of the same tree (the digest exists
    # because engines on different hosts/versions write different headers).
    e1, e2 = connect(docker_host), connect(docker_host2)
    try:
        d1, d2 = (read_tree_digest(e, src) for e in (e1, e2))
    finally:
        e1.close()
        e2.close()
    assert d1.hexdigest() == d2.hexdigest() == vol["digest"]
    labels = docker_client2.volumes.get(src).attrs["Labels"]
    assert labels["volbak.migrated-from"] == src and labels["volbak-test"] == "1"


def test_empty_volume_and_many_small_files(resources, resources2, docker_client,
                                          docker_client2, docker_host, docker_host2, run):
    empty = resources.volume().name
    resources2.track_volume(empty)
    out, _ = run("migrate", empty, "--from", docker_host, "--to", docker_host2, "--json")
    assert json.loads(out)["entries"] == 1  # the root directory
    _same(docker_client, empty, docker_client2, empty)
    many = resources.volume().name
    root = volume_path(docker_client, many)
    for d in range(20):
        (root / f"d{d}").mkdir()
        for f in range(250):
            (root / f"d{d}" / f"f{f}").write_bytes(b"%d/%d\n" % (d, f))
    resources2.track_volume(many)
    out, _ = run("migrate", many, "--from", docker_host, "--to", docker_host2, "--json")
    assert json.loads(out)["entries"] == 1 + 20 + 20 * 250
    _same(docker_client, many, docker_client2, many)


def test_container_migrates_as_data_volume_container(resources, resources2, docker_client,
                                                     docker_client2, docker_host, docker_host2,
                                                     busybox_image, run):
    a, b = resources.volume().name, resources.volume().name
    populate(volume_path(docker_client, a), big=2**20)
    (volume_path(docker_client, b) / "cache.txt").write_text("cached")
    web = resources.container(busybox_image, ["true"], name=resources.name("volbak-web"),
                              volumes={a: {"bind": "/var/lib/app", "mode": "rw"},
                                       b: {"bind": "/cache", "mode": "rw"}})
    resources2.track_container(web.name)
    resources2.track_volume(a)
    resources2.track_volume(b)
    out, _ = run("migrate", "--container", web.name, "--from", docker_host,
                 "--to", docker_host2, "--json")
    summary = json.loads(out)
    assert summary["target_container"] == web.name
    assert {v["volume"] for v in summary["volumes"]} == {a, b}
    mounts = {m["Destination"]: m["Name"]
              for m in docker_client2.api.inspect_container(web.name)["Mounts"]}
    assert mounts == {"/var/lib/app": a, "/cache": b}
    _same(docker_client, a, docker_client2, a)
    _same(docker_client, b, docker_client2, b)
    # Again: the container exists on the target now.
    _, err = run("migrate", "--container", web.name, "--from", docker_host,
                 "--to", docker_host2, expect=8)
    assert "--as" in err


def test_container_clone_on_the_same_engine(resources, docker_client, docker_host,
                                            busybox_image, run):
    a = resources.volume().name
    (volume_path(docker_client, a) / "f").write_text("x")
    web = resources.container(busybox_image, ["true"], name=resources.name("volbak-web"),
                              volumes={a: {"bind": "/srv/data", "mode": "rw"}})
    clone = resources.track_container(resources.name("volbak-clone"))
    vol = resources.track_volume(f"{clone}_srv_data")
    _, err = run("migrate", "-c", web.name, "--from", docker_host, "--to", docker_host,
                 expect=8)
    assert "--as" in err
    run("migrate", "-c", web.name, "--from", docker_host, "--to", docker_host, "--as", clone)
    mounts = docker_client.api.inspect_container(clone)["Mounts"]
    assert [(m["Destination"], m["Name"]) for m in mounts] == [("/srv/data", vol)]
    _same(docker_client, a, docker_client, vol)


@pytest.mark.parametrize("transport", ["ssh", "paramiko"])
def test_migration_over_ssh(transport, sshd, resources, resources2, docker_client,
                            docker_client2, docker_host, run, monkeypatch):
    if transport == "paramiko":
        pytest.importorskip("paramiko")
        monkeypatch.setenv("VOLBAK_SSH", "paramiko")
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=16 * 2**20)
    target = resources2.track_volume(resources2.name("volbak-ssh"))
    with sshd.environ():
        out, _ = run("migrate", src, "--from", docker_host, "--to", sshd.url, "--as", target,
                     "--json")
    summary = json.loads(out)
    assert summary["target"] == sshd.url
    _same(docker_client, src, docker_client2, target)


def test_same_host_clone(resources, docker_client, docker_host, run):
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=2**20)
    clone = resources.track_volume(resources.name("volbak-clone"))
    out, _ = run("migrate", src, "--from", docker_host, "--to", docker_host, "--as", clone,
                 "--json")
    assert json.loads(out)["same_engine"] is True
    _same(docker_client, src, docker_client, clone)
    _, err = run("migrate", src, "--from", docker_host, "--to", docker_host, expect=2)
    assert "--as" in err
    _, err = run("migrate", src, "--to", docker_host, "-H", docker_host, "--as", src, expect=2)
    assert "--as" in err


def test_same_engine_through_another_url_is_recognised(resources, docker_client, docker_host,
                                                       proxy, run, monkeypatch):
    import volbak.ops.migrate as m

    src = resources.volume().name
    (volume_path(docker_client, src) / "f").write_text("x")
    other_url = proxy(docker_host).url
    _, err = run("migrate", src, "--from", docker_host, "--to", other_url, "--force",
                 expect=2)
    assert "--as" in err
    # Even if the engine IDs could not tell, the volume itself is recognised.
    monkeypatch.setattr(m, "same_engine", lambda a, b: False)
    run("migrate", src, "--from", docker_host, "--to", other_url, "--force", expect=2)
    assert (volume_path(docker_client, src) / "f").read_text() == "x"


def test_target_engine_is_noted_before_its_target_is_checked(resources, resources2,
                                                            docker_client, docker_client2,
                                                            docker_host, docker_host2, run,
                                                            monkeypatch):
    """Checking whether a --force target is empty reads it through a helper on the target
    engine. A run killed there left that helper for good (scripts/chaos.py
    migrate-force: recovery sweeps only engines a dead run noted, and the note came after
    the check), and the next migrate found the target "in use" (exit 8). So the engine
    is noted, and a dead run's helpers swept, before the check."""
    import volbak.ops.migrate as m
    from volbak.ops import journal

    src = resources.volume().name
    (volume_path(docker_client, src) / "f").write_text("new")
    target = resources2.volume().name
    (volume_path(docker_client2, target) / "g").write_text("old")
    seen: list[tuple[str, list[str]]] = []
    real = m.volume_is_empty

    def check(engine, name, image=None):
        # what recovery would sweep if the run died right now
        seen.append((engine.url, journal.run_engines()))
        return real(engine, name, image)

    monkeypatch.setattr(m, "volume_is_empty", check)
    # this test's run note, not one an earlier in-process run left (it lives to exit)
    journal.end_run()
    try:
        run("migrate", src, "--from", docker_host, "--to", docker_host2, "--as", target,
            "--force")
    finally:
        journal.end_run()
    assert seen and all(url in engines for url, engines in seen), seen
    assert (volume_path(docker_client2, target) / "f").read_text() == "new"


def test_from_defaults_like_host(resources, resources2, docker_client, docker_client2,
                                 docker_host, docker_host2, run, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", docker_host)
    src = resources.volume().name
    (volume_path(docker_client, src) / "f").write_text("x")
    resources2.track_volume(src)
    out, _ = run("migrate", src, "--to", docker_host2, "--json")
    assert json.loads(out)["source"] == docker_host
    _same(docker_client, src, docker_client2, src)


def test_context_names_work_for_both_ends(resources, resources2, docker_client,
                                         docker_client2, docker_host, docker_host2, run,
                                         tmp_path, monkeypatch):
    import subprocess

    config = tmp_path / "docker-config"
    config.mkdir()
    # docker-py finds the contexts next to config.json only if that file exists
    (config / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    for name, url in (("volbak-src", docker_host), ("volbak-dst", docker_host2)):
        subprocess.run(["docker", "context", "create", name, "--docker", f"host={url}"],
                       check=True, capture_output=True)
    src = resources.volume().name
    (volume_path(docker_client, src) / "f").write_text("x")
    resources2.track_volume(src)
    out, _ = run("migrate", src, "--from-context", "volbak-src", "--to-context", "volbak-dst",
                 "--json")
    summary = json.loads(out)
    assert (summary["source"], summary["target"]) == (docker_host, docker_host2)
    _same(docker_client, src, docker_client2, src)
    clone = resources.track_volume(resources.name("volbak-ctxclone"))
    run("migrate", src, "--from", "volbak-src", "--to", "volbak-src", "--as", clone)
    _same(docker_client, src, docker_client, clone)
    _, err = run("migrate", src, "--from", docker_host, "--to-context", "no-such-context",
                 expect=2)
    assert "no-such-context" in err


def _started_at(client, cid: str) -> str:
    return client.api.inspect_container(cid)["State"]["StartedAt"]


def test_stop_stops_users_and_starts_them_again(resources, resources2, docker_client,
                                                docker_client2, docker_host, docker_host2,
                                                busybox_image, run):
    src = resources.volume().name
    (volume_path(docker_client, src) / "f").write_text("x")
    app = resources.container(busybox_image, ["sleep", "3600"], start=True,
                              volumes={src: {"bind": "/data", "mode": "rw"}})
    first = _started_at(docker_client, app.id)
    target = resources2.track_volume(resources2.name("volbak-stop"))
    out, _ = run("migrate", src, "--from", docker_host, "--to", docker_host2, "--as", target,
                 "--stop", "--stop-timeout", "1", "--json")
    assert json.loads(out)["stopped"] == [app.name]
    app.reload()
    assert app.status == "running" and _started_at(docker_client, app.id) != first


def test_stop_restarts_even_when_the_migration_fails(resources, resources2, docker_client,
                                                     docker_client2, docker_host,
                                                     docker_host2, busybox_image, proxy, run):
    src = _random_volume(resources, docker_client, 24)
    app = resources.container(busybox_image, ["sleep", "3600"], start=True,
                              volumes={src: {"bind": "/data", "mode": "rw"}})
    first = _started_at(docker_client, app.id)
    cut = proxy(docker_host2, up=4 * 2**20)
    target = resources2.track_volume(resources2.name("volbak-stopfail"))
    run("migrate", src, "--from", docker_host, "--to", cut.url, "--as", target,
        "--stop", "--stop-timeout", "1", expect=4)
    assert cut.cuts
    app.reload()
    assert app.status == "running" and _started_at(docker_client, app.id) != first
    assert target not in _volumes(docker_client2)


# -- failures -------------------------------------------------------------------------------

def test_unreachable_target_engine(resources, docker_client, docker_host, run):
    src = resources.volume().name
    _, err = run("migrate", src, "--from", docker_host, "--to", "unix:///nonexistent/d.sock",
                 expect=4)
    assert "unix:///nonexistent/d.sock" in err and "--to" in err


def test_missing_source_volume_names_from(docker_host, docker_host2, run):
    _, err = run("migrate", "no-such-volume-xyz", "--from", docker_host, "--to", docker_host2,
                 expect=3)
    assert "no-such-volume-xyz" in err and "--from" in err and docker_host in err
    _, err = run("migrate", "-c", "no-such-ctr-xyz", "--from", docker_host,
                 "--to", docker_host2, expect=3)
    assert "no-such-ctr-xyz" in err and "--from" in err


def test_bad_usage(docker_host, run):
    run("migrate", "v", "--from", docker_host, expect=2)  # no --to
    run("migrate", "--to", docker_host, expect=2)  # nothing to migrate
    run("migrate", "v", "-c", "c", "--to", docker_host, expect=2)
    run("migrate", "v", "--to", docker_host, "--to-context", "other", expect=2)
    run("migrate", "v", "--to-context", "tcp://1.2.3.4:2375", expect=2)
    run("migrate", "v", "--to", docker_host, "--as", "bad/name", "--from", docker_host,
        expect=2)


def test_existing_target_is_refused_then_replaced_with_force(
        resources, resources2, docker_client, docker_client2, docker_host, docker_host2, run):
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=2**20)
    target = resources2.volume(labels={"keep": "me"}).name
    (volume_path(docker_client2, target) / "precious").write_text("keep me")
    before = listing(volume_path(docker_client2, target))
    _, err = run("migrate", src, "--from", docker_host, "--to", docker_host2, "--as", target,
                 expect=8)
    assert target in err and "--force" in err and "--as" in err
    assert listing(volume_path(docker_client2, target)) == before
    out, _ = run("migrate", src, "--from", docker_host, "--to", docker_host2, "--as", target,
                 "--force", "--json")
    assert json.loads(out)["volumes"][0]["replaced"] is True
    _same(docker_client, src, docker_client2, target)
    assert docker_client2.volumes.get(target).attrs["Labels"]["keep"] == "me"


def test_existing_empty_target_is_filled(resources, resources2, docker_client, docker_client2,
                                         docker_host, docker_host2, run):
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=2**20)
    target = resources2.volume().name
    run("migrate", src, "--from", docker_host, "--to", docker_host2, "--as", target)
    _same(docker_client, src, docker_client2, target)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_connection_to_target_drops_mid_transfer(compression, resources, resources2,
                                                 docker_client, docker_client2, docker_host,
                                                 docker_host2, proxy, run):
    src = _random_volume(resources, docker_client, 32)
    before = listing(volume_path(docker_client, src))
    cut = proxy(docker_host2, up=8 * 2**20)
    target = resources2.track_volume(resources2.name("volbak-cut"))
    vols2 = _volumes(docker_client2)
    _, err = run("migrate", src, "--from", docker_host, "--to", cut.url, "--as", target,
                 "--compress", compression, expect=4)
    assert cut.cuts and cut.url in err
    assert _volumes(docker_client2) == vols2  # no target, no staging volume
    assert listing(volume_path(docker_client, src)) == before


def test_connection_drop_with_force_leaves_the_target_as_it_was(
        resources, resources2, docker_client, docker_client2, docker_host, docker_host2,
        proxy, run):
    src = _random_volume(resources, docker_client, 32)
    target = resources2.volume().name
    (volume_path(docker_client2, target) / "precious").write_text("keep me")
    before = listing(volume_path(docker_client2, target))
    vols2 = _volumes(docker_client2)
    cut = proxy(docker_host2, up=8 * 2**20)
    run("migrate", src, "--from", docker_host, "--to", cut.url, "--as", target, "--force",
        expect=4)
    assert listing(volume_path(docker_client2, target)) == before
    assert _volumes(docker_client2) == vols2


def test_connection_to_source_drops_mid_transfer(resources, resources2, docker_client,
                                                 docker_client2, docker_host, docker_host2,
                                                 proxy, run):
    src = _random_volume(resources, docker_client, 32)
    before = listing(volume_path(docker_client, src))
    cut = proxy(docker_host, down=8 * 2**20)
    target = resources2.track_volume(resources2.name("volbak-srccut"))
    vols2 = _volumes(docker_client2)
    _, err = run("migrate", src, "--from", cut.url, "--to", docker_host2, "--as", target,
                 expect=4)
    assert cut.cuts and cut.url in err
    assert _volumes(docker_client2) == vols2
    assert listing(volume_path(docker_client, src)) == before


def test_tampered_target_fails_verification(resources, resources2, docker_client,
                                            docker_client2, docker_host, docker_host2,
                                            monkeypatch, run):
    """If the target does not hold what was read, nothing is kept (or replaced)."""
    import volbak.ops.migrate as m

    src = resources.volume().name
    (volume_path(docker_client, src) / "f").write_text("original")
    target = resources2.track_volume(resources2.name("volbak-tamper"))
    real = m.read_tree_digest

    def tampered(engine, volume, *a, **kw):
        (volume_path(docker_client2, volume) / "f").write_text("changed!")
        return real(engine, volume, *a, **kw)

    monkeypatch.setattr(m, "read_tree_digest", tampered)
    _, err = run("migrate", src, "--from", docker_host, "--to", docker_host2, "--as", target,
                 expect=6)
    assert "verification failed" in err
    assert target not in _volumes(docker_client2)


def test_interrupt_cleans_up_the_target(resources, resources2, docker_client, docker_client2,
                                        docker_host, docker_host2, run, monkeypatch):
    import volbak.ops.migrate as m

    src = _random_volume(resources, docker_client, 8)
    target = resources2.track_volume(resources2.name("volbak-int"))

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(m, "_verify", interrupted)
    # (no bound on its duration: a timed assertion, and the load decides it)
    _, err = run("migrate", src, "--from", docker_host, "--to", docker_host2, "--as", target,
                 expect=130)
    assert "interrupted" in err
    assert target not in _volumes(docker_client2)


def test_cli_help_lists_the_forms():
    from click.testing import CliRunner

    from volbak.cli import cli

    out = CliRunner().invoke(cli, ["migrate", "--help"]).output
    for flag in ("--from", "--to", "--to-context", "--from-context", "--as", "--force",
                 "--stop", "--compress", "--container", "--json"):
        assert flag in out


def test_module_entry_point_runs(docker_host):
    """`python -m volbak` (used for signal tests) must import the migrate command."""
    out = subprocess.run([sys.executable, "-m", "volbak", "migrate", "--help"],
                         capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_transfer_cleans_up_both_engines(sig, code, resources, resources2,
                                                    docker_client, docker_client2,
                                                    docker_host, docker_host2,
                                                    nothing_left_behind):
    src = _random_volume(resources, docker_client, 256)
    before = listing(volume_path(docker_client, src))
    target = resources2.track_volume(resources2.name("volbak-sig"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "volbak", "migrate", src, "--from", docker_host,
         "--to", docker_host2, "--as", target, "--compress", "gzip"],  # gzip: slow enough
        stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # only a hung run ends here: load decides the rest
    while not docker_client2.api.containers(all=True, filters={"label": "volbak=helper"}):
        assert proc.poll() is None, f"the migration ended before the signal: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "the migration hung"
        time.sleep(0.05)
    time.sleep(0.5)  # into the transfer
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert target not in _volumes(docker_client2)
    assert listing(volume_path(docker_client, src)) == before
