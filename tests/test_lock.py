"""Locks: contention between processes, takeover after SIGKILL, ordering, messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from volbak.errors import LockBusyError, VolbakError
from volbak.ops import lock as lockmod
from volbak.ops.lock import acquire, holder, key_filename, lock_dir, repo_key, volume_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def ldir(tmp_path, monkeypatch):
    d = tmp_path / "locks"
    monkeypatch.setenv("VOLBAK_LOCK_DIR", str(d))
    return d


def spawn_holder(ldir: Path, keys: list[str], hold: float = 30) -> subprocess.Popen:
    """A child that takes the locks, prints 'locked', and holds them for `hold` seconds."""
    code = textwrap.dedent(f"""
        import sys, time
        from volbak.ops.lock import acquire
        with acquire({keys!r}):
            print("locked", flush=True)
            time.sleep({hold})
    """)
    env = dict(os.environ, VOLBAK_LOCK_DIR=str(ldir), PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()


def test_keys_and_filenames():
    assert repo_key("/srv/backups/") == repo_key("file:///srv/backups")
    assert repo_key("s3://bucket/prefix") == "repo:s3://bucket/prefix"
    k = volume_key("unix:///run/docker.sock", "pg/../../etc")
    name = key_filename(k)
    assert "/" not in name and name.endswith(".lock") and not name.startswith(".")
    assert key_filename("a") != key_filename("b")
    # same slug, different keys: still different files
    assert key_filename("volume:x#a b") != key_filename("volume:x#a_b")


def test_lock_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv("VOLBAK_LOCK_DIR", str(tmp_path))
    assert lock_dir() == tmp_path
    monkeypatch.delenv("VOLBAK_LOCK_DIR")
    monkeypatch.setattr(lockmod.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert lock_dir() == Path("/run/user/1000/volbak")
    monkeypatch.setattr(lockmod.os, "geteuid", lambda: 0)
    assert lock_dir() == Path("/run/volbak-locks")


def test_acquire_release_in_process(ldir):
    with acquire(["repo:/a"]) as lk:
        assert lk.held
        info = holder("repo:/a")
        assert info["pid"] == os.getpid() and info["key"] == "repo:/a"
        # not re-entrant: a second acquire of the same key fails like any other holder
        with pytest.raises(LockBusyError):
            acquire(["repo:/a"])
    assert not lk.held
    assert holder("repo:/a") is None
    with acquire(["repo:/a"]):
        pass


def test_other_process_holds_lock(ldir):
    key = repo_key("/srv/backups")
    p = spawn_holder(ldir, [key])
    try:
        t0 = time.monotonic()
        with pytest.raises(LockBusyError) as ei:
            acquire([key])
        assert time.monotonic() - t0 < 1
        err = ei.value
        assert err.exit_code == 9
        assert "repository /srv/backups" in err.message
        assert f"pid {p.pid}" in err.message
        assert "--wait" in err.hint
        # waiting a little is not enough either, and says how long it waited
        t0 = time.monotonic()
        with pytest.raises(LockBusyError) as ei:
            acquire([key], wait=0.5)
        assert time.monotonic() - t0 >= 0.5
        assert "waited 0.5 s" in ei.value.hint
    finally:
        stop(p)


def test_wait_until_holder_finishes(ldir):
    key = volume_key("unix:///var/run/docker.sock", "pgdata")
    p = spawn_holder(ldir, [key], hold=1.0)
    try:
        seen = []
        t0 = time.monotonic()
        with acquire([key], wait=20, on_wait=lambda k, h: seen.append((k, h.get("pid")))):
            waited = time.monotonic() - t0
        assert 0.3 < waited < 15
        assert seen == [(key, p.pid)]
    finally:
        stop(p)


def test_holder_killed_with_sigkill_is_taken_over_at_once(ldir):
    key = repo_key("/srv/backups")
    p = spawn_holder(ldir, [key])
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    # the file still names the dead holder, but the kernel dropped its flock
    t0 = time.monotonic()
    with acquire([key], wait=0):
        assert time.monotonic() - t0 < 0.5
        assert holder(key)["pid"] == os.getpid()


def test_all_or_nothing_and_sorted(ldir):
    p = spawn_holder(ldir, ["k2"])
    try:
        with pytest.raises(LockBusyError):
            acquire(["k3", "k2", "k1"])
        # k1 was taken first (sorted order) and must have been let go again
        assert holder("k1") is None and holder("k3") is None
        with acquire(["k1", "k3", "k1"]) as lk:
            assert lk.keys == ["k1", "k3"]
    finally:
        stop(p)


def test_opposite_orders_do_not_deadlock(ldir):
    # two children ask for the same pair in opposite orders, each with a long wait
    env = dict(os.environ, VOLBAK_LOCK_DIR=str(ldir), PYTHONPATH=str(ROOT))
    code = textwrap.dedent("""
        import sys, time
        from volbak.ops.lock import acquire
        keys = sys.argv[1:]
        for _ in range(20):
            with acquire(keys, wait=30):
                time.sleep(0.01)
        print("ok")
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, *ks], stdout=subprocess.PIPE, env=env,
                         text=True)
        for ks in (["a", "b"], ["b", "a"])
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outs == ["ok", "ok"]


def test_unwritable_lock_dir(monkeypatch, tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    monkeypatch.setenv("VOLBAK_LOCK_DIR", str(f / "sub"))
    with pytest.raises(VolbakError) as ei:
        acquire(["x"])
    assert "VOLBAK_LOCK_DIR" in (ei.value.hint or "")
