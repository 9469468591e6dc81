"""The intent journal: entries are fsynced files whose owner's flock tells liveness."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from volbak.ops import journal
from volbak.util.host import owner


def test_entry_lifecycle(tmp_path):
    e = journal.Entry("replace", {"target": "t"}, tmp_path)
    [rec] = journal.entries(tmp_path)
    assert rec["kind"] == "replace" and rec["live"] and rec["pid"] == os.getpid()
    with journal.claim(e.path) as claimed:
        assert claimed is None  # its owner (us) is alive
    e.update(staging="s")
    [rec] = journal.entries(tmp_path)
    assert rec["staging"] == "s" and rec["live"]  # the lock moved with the rewrite
    assert not list(tmp_path.glob(".*partial"))
    e.remove()
    assert journal.entries(tmp_path) == []


def test_released_entry_is_claimed_once(tmp_path):
    e = journal.Entry("new-target", {"name": "v"}, tmp_path)
    e.release()
    [rec] = journal.entries(tmp_path)
    assert not rec["live"]
    with journal.claim(e.path) as claimed:
        assert claimed is not None and claimed["name"] == "v"
        with journal.claim(e.path) as again:
            assert again is None  # a concurrent recovery keeps off
        journal.forget(claimed["path"])
    assert journal.entries(tmp_path) == []


def test_dead_owner(tmp_path):
    code = ("import sys, os; from pathlib import Path; from volbak.ops import journal;"
            f"journal.Entry('stop', {{'engine': 'x', 'containers': []}}, Path({str(tmp_path)!r}));"
            "os._exit(0)")  # dies holding the entry, as kill -9 would
    subprocess.run([sys.executable, "-c", code], check=True)
    [rec] = journal.entries(tmp_path)
    assert rec["kind"] == "stop" and not rec["live"]


def test_old_entries_are_stop_entries(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"engine": "x", "containers": []}))
    (tmp_path / "b.json").write_text("[]")
    kinds = sorted(r["kind"] for r in journal.entries(tmp_path))
    assert kinds == ["stop", "unreadable"]


def test_owner_alive():
    host = socket.gethostname()
    assert journal.owner_alive(owner())
    assert journal.owner_alive("otherhost:1")  # unknown: never taken
    assert journal.owner_alive(None)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not journal.owner_alive(f"{host}:{p.pid}")


def _run_and_exit(tmp_path, unremoved: bool) -> None:
    code = ("from pathlib import Path; from volbak.ops import journal;"
            "from volbak.engine import helpers;"
            f"journal.touch_engine('unix:///e2', Path({str(tmp_path)!r}));"
            + ("helpers.note_unremoved('unix:///e2');" if unremoved else ""))
    subprocess.run([sys.executable, "-c", code], check=True)  # a normal exit (atexit runs)


def test_engines_note_outlives_a_run_that_left_a_helper(tmp_path):
    _run_and_exit(tmp_path, unremoved=False)
    assert journal.entries(tmp_path) == []
    _run_and_exit(tmp_path, unremoved=True)  # the engine refused to remove a helper
    [rec] = journal.entries(tmp_path)
    assert rec["kind"] == "engines" and rec["engines"] == ["unix:///e2"] and not rec["live"]


def test_recovery_keeps_the_note_while_a_helper_is_busy(tmp_path, monkeypatch):
    from volbak.engine.helpers import Sweep
    from volbak.ops import recovery

    _run_and_exit(tmp_path, unremoved=True)

    class FakeEngine:
        url = "unix:///e2"

        def close(self):
            pass

    sweeps = iter([Sweep(left=["c1"]), Sweep(removed=["c1"])])
    monkeypatch.setattr(recovery, "sweep_stale_helpers", lambda eng: next(sweeps))
    monkeypatch.setattr(recovery, "sweep_staging", lambda eng, keep: [])
    events: list[str] = []
    recovery.recover_all(lambda url: FakeEngine(), events.append, journal_dir=tmp_path)
    assert [r["kind"] for r in journal.entries(tmp_path)] == ["engines"]
    assert any("could not be removed yet" in e for e in events)
    rep = recovery.recover_all(lambda url: FakeEngine(), events.append, journal_dir=tmp_path)
    assert rep.removed_helpers == 1 and journal.entries(tmp_path) == []


def test_a_helper_is_never_created_before_its_engine_is_noted(tmp_path):
    """A run killed right after asking for a helper (migrate --force's emptiness check
    did, before the fix) must have noted the engine: recovery sweeps only noted ones."""
    code = """
import os
from volbak.engine.helpers import VolumeMount, helper
import volbak.ops.journal  # noqa: F401 - registers the note

class Api:
    def inspect_image(self, image): return {}
    def create_host_config(self, **kw): return {}
    def create_container(self, *a, **kw):
        os._exit(0)  # dies as the engine creates the helper

class Engine:
    url = "unix:///e3"
    api = Api()

with helper(Engine(), [VolumeMount("v", "/data")]):
    pass
"""
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "VOLBAK_STATE_DIR": str(tmp_path)})
    [rec] = journal.entries(tmp_path / "journal")
    assert rec["kind"] == "engines" and rec["engines"] == ["unix:///e3"] and not rec["live"]


def test_a_helper_creation_cut_short_keeps_the_note(tmp_path):
    """Ctrl-C (or a timeout) while the engine creates a helper: it may exist with an id
    the run never learnt, so the run's note must outlive a normal exit."""
    code = """
from volbak.engine.helpers import VolumeMount, helper
import volbak.ops.journal  # noqa: F401 - registers the note

class Api:
    def inspect_image(self, image): return {}
    def create_host_config(self, **kw): return {}
    def create_container(self, *a, **kw): raise KeyboardInterrupt

class Engine:
    url = "unix:///e4"
    api = Api()

try:
    with helper(Engine(), [VolumeMount("v", "/data")]):
        pass
except KeyboardInterrupt:
    pass
"""
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "VOLBAK_STATE_DIR": str(tmp_path)})
    [rec] = journal.entries(tmp_path / "journal")
    assert rec["kind"] == "engines" and rec["engines"] == ["unix:///e4"] and not rec["live"]


def test_a_helper_removal_the_engine_holds_gives_up_and_keeps_the_note(tmp_path):
    """dockerd may hold a DELETE (after a GET archive cut short) until the client-wide
    timeout of 600 s, with signals held. The removal gives up after its own timeout and
    the note stays for the next command. The "engine" here answers nothing."""
    sock = tmp_path / "held.sock"
    code = f"""
import socket, threading, time
import docker
from volbak.engine.helpers import VolumeMount, helper
import volbak.ops.journal  # noqa: F401 - registers the note

srv = socket.socket(socket.AF_UNIX)
srv.bind({str(sock)!r})
srv.listen(8)
held = []
threading.Thread(target=lambda: [held.append(srv.accept()) for _ in iter(int, 1)],
                 daemon=True).start()

class Api(docker.APIClient):  # a real HTTP DELETE; the rest is not asked of the engine
    def inspect_image(self, image): return {{}}
    def create_host_config(self, **kw): return {{}}
    def create_container(self, *a, **kw): return {{"Id": "c1"}}

class Engine:
    url = "unix:///e5"
    api = Api(base_url="unix://{sock}", version="1.41", timeout=600)

t = time.monotonic()
with helper(Engine(), [VolumeMount("v", "/data")]):
    pass
print(round(time.monotonic() - t))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "VOLBAK_STATE_DIR": str(tmp_path)}).stdout
    assert int(out) < 60  # patience 10 s, each try its own timeout: far from 600 s
    [rec] = journal.entries(tmp_path / "journal")
    assert rec["kind"] == "engines" and rec["engines"] == ["unix:///e5"] and not rec["live"]


def test_ctrl_c_during_the_cleanup_at_exit_waits_and_is_dropped(tmp_path):
    """A Ctrl-C that lands while the run removes its note at exit: the note is still
    removed, and no "Exception ignored in atexit" traceback is printed."""
    code = f"""
import os, signal
from pathlib import Path
from volbak.ops import journal

remove = journal.Entry.remove
def interrupted(self):
    os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C right now
    remove(self)
journal.Entry.remove = interrupted
journal.touch_engine("unix:///e6", Path({str(tmp_path)!r}))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "Exception" not in r.stderr, \
        r.stderr
    assert journal.entries(tmp_path) == []
