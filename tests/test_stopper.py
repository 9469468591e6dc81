"""Stopping containers during a backup: always restarted, journal survives kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import docker
import docker.errors
import pytest

from volbak.errors import EngineError
from volbak.ops.stopper import (
    containers_to_stop,
    containers_using,
    default_journal_dir,
    engine_url_of,
    pending,
    recover,
    select_to_stop,
    stopped,
)

ROOT = Path(__file__).resolve().parents[1]
# a container that exits at once on SIGTERM, so stopping takes no 10 s
SERVICE = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


# ---------------------------------------------------------------- without an engine


class FakeContainer:
    def __init__(self, cid: str, name: str, log: list, status: str = "running",
                 labels: dict | None = None, fail_start: int = 0, journal: Path | None = None):
        self.id = cid
        self.name = name
        self.status = status
        self.labels = labels or {}
        self.attrs = {"Name": "/" + name}
        self.log = log
        self.fail_start = fail_start
        self.journal = journal

    def reload(self):
        pass

    def stop(self, timeout=None):
        if self.journal is not None:  # the intent must be on disk before any stop
            entries = [json.loads(p.read_text()) for p in self.journal.glob("*.json")]
            assert any(self.id in [c["id"] for c in e["containers"]] for e in entries)
        self.log.append(("stop", self.name))
        self.status = "exited"

    def start(self):
        if self.fail_start:
            self.fail_start -= 1
            raise docker.errors.APIError("engine says no")
        self.log.append(("start", self.name))
        self.status = "running"


class FakeClient:
    def __init__(self, containers):
        self.by_id = {c.id: c for c in containers}
        self.containers = self

    def get(self, cid):
        try:
            return self.by_id[cid]
        except KeyError:
            raise docker.errors.NotFound("gone") from None


def test_order_journal_and_restart_on_error(tmp_path):
    log: list = []
    cs = [FakeContainer(f"id{i}", f"c{i}", log, journal=tmp_path) for i in range(3)]
    cs[1].status = "exited"  # not running: left alone
    client = FakeClient(cs)
    with pytest.raises(RuntimeError, match="boom"), \
            stopped(client, cs, journal_dir=tmp_path, engine_url="unix:///x") as were:
        assert [c.name for c in were] == ["c0", "c2"]
        assert len(list(tmp_path.glob("*.json"))) == 1
        raise RuntimeError("boom")
    assert log == [("stop", "c0"), ("stop", "c2"), ("start", "c2"), ("start", "c0")]
    assert list(tmp_path.iterdir()) == []


def test_failed_restart_keeps_journal_and_recover_retries(tmp_path):
    log: list = []
    c = FakeContainer("id0", "db", log, fail_start=1)
    client = FakeClient([c])
    with pytest.raises(EngineError) as ei, stopped(client, [c], journal_dir=tmp_path,
                                                   engine_url="unix:///x"):
        raise ValueError("backup failed")
    assert "could not start again: db" in ei.value.message
    assert "backup failed" in ei.value.message
    assert "volbak recover" in ei.value.hint
    [entry] = pending(tmp_path)
    assert entry["engine"] == "unix:///x" and entry["live"] is False
    assert [(c["id"], c["name"]) for c in entry["containers"]] == [("id0", "db")]
    urls = []
    assert recover(lambda url: urls.append(url) or client, tmp_path) == ["db"]
    assert urls == ["unix:///x"] and c.status == "running"
    assert pending(tmp_path) == []


def test_recover_reports_unreachable_engine(tmp_path):
    log: list = []
    c = FakeContainer("id0", "db", log, fail_start=1)
    with pytest.raises(EngineError), stopped(FakeClient([c]), [c], journal_dir=tmp_path,
                                             engine_url="tcp://nowhere:1"):
        pass

    def factory(url):
        raise docker.errors.DockerException("connection refused")

    with pytest.raises(EngineError, match="cannot reach engine tcp://nowhere:1"):
        recover(factory, tmp_path)
    seen: list[str] = []
    assert recover(factory, tmp_path, on_error=seen.append) == []
    assert len(seen) == 1 and len(pending(tmp_path)) == 1


def test_interrupt_during_restart_is_deferred(tmp_path):
    log: list = []
    cs = [FakeContainer(f"id{i}", f"c{i}", log) for i in range(2)]

    def on_event(msg):
        if msg.startswith("starting"):
            # Ctrl-C while restarting, aimed at the main thread: a process-wide signal may
            # land in a leftover thread of another test, where only the CLI's handler
            # (util.signals.hold) holds it back, not the default one this test runs with
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    with pytest.raises(KeyboardInterrupt), \
            stopped(FakeClient(cs), cs, journal_dir=tmp_path, engine_url="x", on_event=on_event):
        pass
    # the KeyboardInterrupt came only after every container was started again
    assert [c.status for c in cs] == ["running", "running"]
    assert list(tmp_path.glob("*.json")) == []


def test_select_to_stop():
    log: list = []
    a = FakeContainer("a", "a", log, labels={"volbak.stop": "true"})
    b = FakeContainer("b", "b", log)
    c = FakeContainer("c", "c", log, labels={"volbak.stop": "no"})
    assert [x.id for x in select_to_stop([a, b, c, a])] == ["a"]
    assert [x.id for x in select_to_stop([a, b, c, a], force=True)] == ["a", "b", "c"]


def test_default_journal_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VOLBAK_STATE_DIR", str(tmp_path))
    assert default_journal_dir() == tmp_path / "journal"
    monkeypatch.delenv("VOLBAK_STATE_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_journal_dir() == Path("/var/lib/volbak/journal")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    assert default_journal_dir() == Path("/home/u/.state/volbak/journal")


# ---------------------------------------------------------------- real engine


@pytest.fixture
def service(resources, busybox_image):
    """A volume and a running container using it; plus a factory for more."""

    def make(volume, **kw):
        return resources.container(busybox_image, SERVICE, start=True,
                                   volumes={volume.name: {"bind": "/data", "mode": "rw"}}, **kw)

    return make


def status(client, c) -> str:
    return client.containers.get(c.id).status


@pytest.mark.docker
def test_containers_using(docker_client, resources, busybox_image, service):
    vol = resources.volume()
    other = resources.volume()
    a = service(vol)
    b = resources.container(busybox_image, SERVICE, start=True, volumes_from=[a.id])
    idle = resources.container(busybox_image, SERVICE,
                               volumes={vol.name: {"bind": "/data", "mode": "rw"}})
    service(other)
    assert {c.id for c in containers_using(docker_client, vol.name)} == {a.id, b.id}
    assert {c.id for c in containers_using(docker_client, vol.name, running_only=False)} == {
        a.id, b.id, idle.id}
    assert containers_using(docker_client, resources.name("nosuchvol")) == []
    opted = service(other, labels={"volbak.stop": "true"})
    assert [c.id for c in containers_to_stop(docker_client, [vol.name, other.name])] == [opted.id]
    assert len(containers_to_stop(docker_client, [vol.name, other.name], force=True)) == 4


@pytest.mark.docker
def test_engine_url_of(docker_client, docker_host):
    assert engine_url_of(docker_client) == docker_host


@pytest.mark.docker
def test_stopped_restarts_after_failure(docker_client, resources, service, tmp_path):
    vol = resources.volume()
    a, b = service(vol), service(vol)
    users = containers_using(docker_client, vol.name)
    with pytest.raises(RuntimeError), stopped(docker_client, users, journal_dir=tmp_path,
                                              timeout=5):
        assert status(docker_client, a) == "exited" and status(docker_client, b) == "exited"
        [entry] = pending(tmp_path)
        assert entry["live"] is True
        # a recover meanwhile (another volbak command) leaves a live run alone
        assert recover(lambda url: docker_client, tmp_path) == []
        assert status(docker_client, a) == "exited"
        raise RuntimeError("backup failed in the middle")
    assert status(docker_client, a) == "running" and status(docker_client, b) == "running"
    assert pending(tmp_path) == []


@pytest.mark.docker
def test_stopped_restarts_after_sigterm(docker_client, resources, service, tmp_path):
    vol = resources.volume()
    a = service(vol)

    def on_term(signum, frame):  # what the CLI does with SIGTERM
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(KeyboardInterrupt), stopped(docker_client, [a], journal_dir=tmp_path):
            assert status(docker_client, a) == "exited"
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            pytest.fail("SIGTERM did not interrupt")
    finally:
        signal.signal(signal.SIGTERM, old)
    assert status(docker_client, a) == "running"
    assert pending(tmp_path) == []


@pytest.mark.docker
def test_removed_container_does_not_block_restart(docker_client, resources, service, tmp_path):
    vol = resources.volume()
    a, b = service(vol), service(vol)
    with stopped(docker_client, [a, b], journal_dir=tmp_path):
        b.remove(force=True)
    assert status(docker_client, a) == "running"
    assert pending(tmp_path) == []


HOLDER = textwrap.dedent("""
    import sys, docker
    from pathlib import Path
    from volbak.ops.stopper import stopped
    client = docker.DockerClient(base_url=sys.argv[1], version="auto")
    cs = [client.containers.get(i) for i in sys.argv[3:]]
    with stopped(client, cs, journal_dir=Path(sys.argv[2]), engine_url=sys.argv[1]):
        print("stopped", flush=True)
        sys.stdin.read()           # until the test closes stdin (or kills us)
    print("done", flush=True)
""")


def spawn(docker_host, journal: Path, *containers) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, docker_host, str(journal), *[c.id for c in containers]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    assert p.stdout.readline().strip() == "stopped"
    return p


@pytest.mark.docker
def test_recover_after_kill_9(docker_client, docker_host, resources, service, tmp_path):
    vol = resources.volume()
    a, b = service(vol), service(vol)
    p = spawn(docker_host, tmp_path, a, b)
    try:
        assert status(docker_client, a) == "exited" and status(docker_client, b) == "exited"
    finally:
        p.kill()
        p.wait()
    # the dead run's intent survived; nothing restarted the containers yet
    [entry] = pending(tmp_path)
    assert entry["live"] is False and entry["pid"] == p.pid
    assert status(docker_client, a) == "exited"
    factory_calls = []

    def factory(url):
        factory_calls.append(url)
        return docker.DockerClient(base_url=url, version="auto")

    started = recover(factory, tmp_path)
    assert sorted(started) == sorted([a.name, b.name])
    assert factory_calls == [docker_host]
    assert status(docker_client, a) == "running" and status(docker_client, b) == "running"
    assert pending(tmp_path) == [] and list(tmp_path.iterdir()) == []
    assert recover(factory, tmp_path) == []


@pytest.mark.docker
def test_live_run_is_not_recovered_and_restarts_itself(docker_client, docker_host, resources,
                                                       service, tmp_path):
    vol = resources.volume()
    a = service(vol)
    p = spawn(docker_host, tmp_path, a)
    try:
        assert recover(lambda url: docker_client, tmp_path) == []
        assert status(docker_client, a) == "exited"
        out, _ = p.communicate("", timeout=60)
        assert out.strip() == "done"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert status(docker_client, a) == "running"
    assert pending(tmp_path) == []
