"""Recovery of a dead run's new target volume (found by scripts/chaos.py restore-new:
8 of 30 killed restores left a half-filled target that recovery kept)."""

from __future__ import annotations

import io
import tarfile
import time

import pytest
from conftest import LABELS

from volbak.engine import connect
from volbak.ops import journal, recovery

pytestmark = pytest.mark.docker


def _put_file(resources, image: str, volume: str) -> None:
    """Write one file into the volume's root through the archive API, as a restore does."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("half-restored.dat")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"half"))
    ctr = resources.container(image, ["true"], volumes={volume: {"bind": "/data", "mode": "rw"}})
    assert ctr.client.api.put_archive(ctr.id, "/data", buf.getvalue())
    ctr.remove()  # as the dead run's helper is by then: the volume is free to go


def test_dead_runs_target_is_removed_after_it_was_written(docker_host, docker_client, resources,
                                                          busybox_image, tmp_path):
    """Docker's CreatedAt of a local volume is its directory's ctime, which the first
    entry written into the root moves: recovery must still know the target as the dead
    run's own (by the run's nonce label) and remove it."""
    engine = connect(docker_host)
    name = resources.track_volume(resources.name("volbak-test-target"))
    nt = recovery.NewTargets(tmp_path)
    nt.volume(engine, name, {**LABELS, "volbak.restored-from": "v@20261201T000000Z"})
    before = docker_client.api.inspect_volume(name)
    time.sleep(1.1)  # CreatedAt has whole seconds
    _put_file(resources, busybox_image, name)
    after = docker_client.api.inspect_volume(name)
    assert after["Labels"][recovery.TARGET_LABEL]
    if after["CreatedAt"] == before["CreatedAt"]:
        pytest.skip("this engine's CreatedAt does not move with writes (not the local driver?)")
    for entry, _ in nt._items:
        entry.release()  # the run dies here: its entries are left to recovery
    [rec] = [e for e in journal.entries(tmp_path) if e["kind"] == "new-target"]
    assert not rec["live"]
    report = recovery.recover_all(connect, journal_dir=tmp_path)
    assert name not in {v["Name"] for v in docker_client.api.volumes()["Volumes"] or []}, report
    assert not [e for e in journal.entries(tmp_path) if e["kind"] == "new-target"]


def test_same_name_made_later_is_left_alone(docker_host, docker_client, resources, tmp_path):
    """The other side of the nonce: a volume of the same name and the same volbak labels
    that someone made after the run died is not the run's, and stays."""
    engine = connect(docker_host)
    name = resources.track_volume(resources.name("volbak-test-target"))
    labels = {**LABELS, "volbak.restored-from": "v@20261201T000000Z"}
    nt = recovery.NewTargets(tmp_path)
    nt.volume(engine, name, labels)
    for entry, _ in nt._items:
        entry.release()
    docker_client.api.remove_volume(name)
    docker_client.api.create_volume(name, labels=labels)  # someone else's, same labels
    recovery.recover_all(connect, journal_dir=tmp_path)
    assert docker_client.api.inspect_volume(name)["Labels"] == labels
    assert not [e for e in journal.entries(tmp_path) if e["kind"] == "new-target"]
