"""Races that a loaded machine (load 10+ on 2 cores) turned into test failures, each made
deterministic here: the signal lands at the worst instant, or the clock moves on.

- A SIGINT/SIGTERM that landed after the backup's temp file existed but before the
  caller's ``with`` owned its writer left the temp file (test_signal_mid_backup_cleans_up).
- A failed restore left its new target volume when its writes happened in a later second
  than its creation: dockerd's local driver reports a volume's ``CreatedAt`` as the
  ctime of its directory, which every write moves, and the undo took the moved time for
  "made later by someone else" (test_damaged_archive_fails_and_leaves_nothing).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from fidelity import volume_path

from volbak.local import LocalBackend


def _files(root) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


@contextlib.contextmanager
def _sigint_raises() -> Iterator[None]:
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _signal_after_create(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """LocalBackend.create_writer sends SIGINT to the main thread as soon as its temp file
    exists: the signal is then pending at the worst instant, whatever the load."""
    made: list[str] = []
    original = LocalBackend.create_writer

    def create_writer(self, name):
        w = original(self, name)
        made.append(name)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        return w

    monkeypatch.setattr(LocalBackend, "create_writer", create_writer)
    return made


def test_put_bytes_signal_right_after_the_temp_file_exists(tmp_path, monkeypatch):
    backend = LocalBackend(tmp_path / "repo")
    made = _signal_after_create(monkeypatch)
    with _sigint_raises(), pytest.raises(KeyboardInterrupt):
        backend.put_bytes("vol/obj", b"x")
    assert made == ["vol/obj"]
    assert _files(tmp_path / "repo") == []


@pytest.mark.docker
@pytest.mark.parametrize("source", ["api", "direct"])
def test_backup_signal_right_after_the_temp_file_exists(source, resources, docker_client,
                                                        docker_host, repo, monkeypatch,
                                                        engine_kind):
    from volbak.engine import connect
    from volbak.ops.backup import BackupOptions, backup_volume
    from volbak.repository import Repository

    if source == "direct" and (engine_kind != "docker" or os.geteuid() != 0):
        pytest.skip("direct needs root and a local dockerd")
    src = resources.volume().name
    if source == "direct":
        (volume_path(docker_client, src) / "f").write_text("x")
    made = _signal_after_create(monkeypatch)
    with _sigint_raises(), pytest.raises(KeyboardInterrupt):
        backup_volume(connect(docker_host), Repository(LocalBackend(repo)), src,
                      BackupOptions(source=source, compression="gzip"))
    assert made, "the backup never created its archive"
    assert _files(repo) == []
    helpers = docker_client.api.containers(all=True, filters={"label": "volbak=helper"})
    assert not helpers


@pytest.mark.docker
@pytest.mark.engines("docker")
def test_failed_new_target_is_removed_after_a_write_in_a_later_second(
        resources, docker_client, docker_host, tmp_path):
    from volbak.engine import connect
    from volbak.ops import journal, recovery
    from volbak.ops.restore import RESTORED_LABEL

    if os.geteuid() != 0:
        pytest.skip("writes into the volume through its host directory (root)")

    class Boom(Exception):
        pass

    engine = connect(docker_host)
    name = resources.track_volume(resources.name("volbak-restored"))
    with pytest.raises(Boom), recovery.new_targets(tmp_path / "journal") as nt:
        nt.volume(engine, name, {RESTORED_LABEL: "vol@20261202T000000Z"})
        created = docker_client.api.inspect_volume(name)["CreatedAt"]
        root = volume_path(docker_client, name)
        # What a restore does, only made sure to reach the next second (the unit of
        # CreatedAt): a bounded wait for the clock, nothing timed is asserted.
        for n in range(400):
            (root / f"f{n}").write_text("x")
            if docker_client.api.inspect_volume(name)["CreatedAt"] != created:
                break
            time.sleep(0.01)
        else:
            pytest.skip("this engine's CreatedAt does not follow writes")
        raise Boom
    assert name not in {v.name for v in docker_client.volumes.list()}
    assert not [e for e in journal.entries(tmp_path / "journal") if e["kind"] == "new-target"]


def test_a_signal_another_thread_receives_waits_for_deferred():
    """The kernel may hand a process-directed SIGTERM/SIGINT to any thread that does not
    block it; Python still runs the handler in the main thread, in the middle of a
    ``deferred()`` cleanup. The CLI's handler holds it until the block ends."""
    from volbak.cli import _on_signal
    from volbak.util.signals import deferred

    r, w = os.pipe()
    os.set_blocking(w, False)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)  # started outside deferred()
    t.start()
    old = signal.signal(signal.SIGINT, _on_signal)
    old_fd = signal.set_wakeup_fd(w)
    steps = []
    try:
        with pytest.raises(KeyboardInterrupt), deferred():
            signal.pthread_kill(t.ident, signal.SIGINT)
            os.read(r, 1)  # the C-level handler ran: Python's handler is due right now
            steps.append("cleanup went on")
            for _ in range(3):  # more chances for the pending handler to run
                steps.append("and on")
        steps.append("raised after the block")
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, old)
        stop.set()
        os.close(r)
        os.close(w)
    assert steps == ["cleanup went on", "and on", "and on", "and on", "raised after the block"]
