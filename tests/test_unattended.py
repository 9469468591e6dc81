"""Unattended operation on a real engine: --stop always restarts, hooks, recover after
kill -9, prune over a synthetic history, locking between concurrent runs, verify,
and config-file jobs."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fidelity import volume_path

from volbak.cli import main
from volbak.local import LocalBackend
from volbak.repository import Manifest, Repository

pytestmark = pytest.mark.docker


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """Journal and locks of these tests stay in the test's temp dir."""
    monkeypatch.setenv("VOLBAK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VOLBAK_LOCK_DIR", str(tmp_path / "locks"))


def _spawn(docker_host: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "volbak", *args, "-H", docker_host],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _service(resources, busybox_image, volume: str, **labels: str):
    """A running container using ``volume`` at /data."""
    return resources.container(busybox_image, ["sleep", "3600"], start=True, labels=labels,
                               volumes={volume: {"bind": "/data", "mode": "rw"}})


def _running(container) -> bool:
    container.reload()
    return container.status == "running"


def _fill(docker_client, volume: str, mib: int) -> None:
    with open(volume_path(docker_client, volume) / "random", "wb") as f:
        for _ in range(mib // 8):
            f.write(os.urandom(8 * 2**20))


def _wait_until(pred, proc: subprocess.Popen, hung: float = 600) -> None:
    """Wait for ``pred`` while ``proc`` runs. Bounded by the run itself, not by a
    deadline of ours: at load 13 on 2 cores the 30 s this once allowed ran out before
    a --stop backup (interpreter start, then `docker stop` of a service that ignores
    SIGTERM) had stopped its service. ``hung`` only ends a run that never gets there."""
    deadline = time.monotonic() + hung
    while not pred():
        if proc.poll() is not None and not pred():
            _, err = proc.communicate()
            pytest.fail(f"volbak exited ({proc.returncode}) before the awaited state: {err}")
        assert time.monotonic() < deadline, f"volbak hung for {hung:g} s"
        time.sleep(0.05)


# -- --stop -------------------------------------------------------------------------------------

def test_stop_restarts_after_success_and_label_opt_in(resources, docker_client, busybox_image,
                                                      run):
    vol = resources.volume().name
    plain = _service(resources, busybox_image, vol)
    opted = _service(resources, busybox_image, vol, **{"volbak.stop": "true"})
    _, err = run("backup", vol)  # without --stop only the opted-in container stops
    # the other one is only warned about (it keeps running), never stopped
    assert opted.name in err and f"stopping container {plain.name}" not in err
    assert _running(plain) and _running(opted)
    _, err = run("backup", vol, "--stop")
    assert plain.name in err and opted.name in err
    assert _running(plain) and _running(opted)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_stop_restarts_after_failed_backup(resources, docker_client, busybox_image, run,
                                           tmp_path):
    vol = resources.volume().name
    _fill(docker_client, vol, 16)
    svc = _service(resources, busybox_image, vol)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    try:
        run("backup", vol, "--stop", expect=5, repo_path=small)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert _running(svc)


def test_stop_restarts_after_sigterm(resources, docker_client, busybox_image, docker_host,
                                     repo):
    vol = resources.volume().name
    _fill(docker_client, vol, 384)
    svc = _service(resources, busybox_image, vol)
    proc = _spawn(docker_host, "backup", vol, "--stop", "--compress", "gzip",
                  "--repo", str(repo))
    _wait_until(lambda: not _running(svc), proc)
    _wait_until(lambda: list(repo.rglob("*.tar*")), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert _running(svc)


def test_recover_after_kill_9(resources, docker_client, busybox_image, docker_host, repo, run):
    vol = resources.volume().name
    _fill(docker_client, vol, 384)
    svc = _service(resources, busybox_image, vol)
    proc = _spawn(docker_host, "backup", vol, "--stop", "--compress", "gzip",
                  "--repo", str(repo))
    _wait_until(lambda: not _running(svc), proc)
    _wait_until(lambda: list(repo.rglob("*.tar*")), proc)
    proc.kill()
    proc.communicate(timeout=30)
    assert not _running(svc)
    # The helper left by the killed process is swept by the next run on this host.
    out, err = run("recover")
    assert svc.name in out + err
    assert _running(svc)
    run("backup", vol)


def test_helpers_of_dead_processes_are_swept(resources, docker_client, docker_host):
    """A helper whose volbak process died (kill -9) is removed by the next run."""
    from volbak.engine import (
        HELPER_LABEL,
        OWNER_LABEL,
        connect,
        ensure_helper_image,
        sweep_stale_helpers,
    )

    dead = subprocess.Popen(["true"])
    dead.wait()
    engine = connect(docker_host)
    image = ensure_helper_image(engine)
    labels = {HELPER_LABEL: "helper", OWNER_LABEL: f"{socket.gethostname()}:{dead.pid}"}
    stale = resources.container(image, ["x"], labels=labels)
    alive = resources.container(image, ["x"], labels={
        HELPER_LABEL: "helper", OWNER_LABEL: f"{socket.gethostname()}:{os.getpid()}"})
    assert stale.id in sweep_stale_helpers(engine).removed
    left = {c.id for c in docker_client.containers.list(all=True)}
    assert stale.id not in left and alive.id in left


# -- hooks --------------------------------------------------------------------------------------

def test_hooks_run_in_order_and_are_backed_up(resources, docker_client, busybox_image, run):
    vol = resources.volume().name
    _service(resources, busybox_image, vol, **{"volbak.pre-backup": "echo pre >> /data/log",
                                               "volbak.post-backup": "echo post >> /data/log"})
    backup_id = json.loads(run("backup", vol, "--json")[0])["id"]
    assert (volume_path(docker_client, vol) / "log").read_text() == "pre\npost\n"
    target = resources.track_volume(resources.name("volbak-restored"))
    run("restore", backup_id, "--to-volume", target)
    assert (volume_path(docker_client, target) / "log").read_text() == "pre\n"


def test_failing_pre_hook_aborts_but_post_hook_and_restart_run(resources, docker_client,
                                                               busybox_image, run, repo):
    vol = resources.volume().name
    svc = _service(resources, busybox_image, vol)
    _, err = run("backup", vol, "--stop", "--pre-backup", "echo dumping; exit 3",
                 "--post-backup", "echo post >> /data/log", expect=10)
    assert svc.name in err and "pre-backup" in err and "3" in err
    assert (volume_path(docker_client, vol) / "log").read_text() == "post\n"
    assert _running(svc)
    _, err = run("list", "--json", expect=5)  # nothing stored: no repository yet
    assert "no repository" in err


# -- prune --------------------------------------------------------------------------------------

def _synthetic_history(repo: Path, volume: str, times: list[dt.datetime]) -> list[str]:
    r = Repository(LocalBackend(repo))
    ids = []
    for t in times:
        stamp = t.strftime("%Y%m%dT%H%M%SZ")
        name = f"{volume}/{stamp}.tar.zst"
        r.backend.put_bytes(name, b"x")
        r.write_manifest(volume, stamp, Manifest(
            volume={"name": volume}, created=t.isoformat().replace("+00:00", "Z"),
            object={"name": name, "size": 1, "sha256": "0" * 64}))
        ids.append(f"{volume}@{stamp}")
    return ids


def test_prune_keeps_exactly_the_expected_set(run, repo):
    base = dt.datetime(2026, 11, 1, 3, 0, tzinfo=dt.UTC)
    # two backups a day for 20 days, plus one a month for the 6 months before
    times = [base + dt.timedelta(days=d, hours=h) for d in range(20) for h in (0, 12)]
    times += [dt.datetime(2026, m, 15, tzinfo=dt.UTC) for m in range(5, 11)]
    ids = _synthetic_history(repo, "db", times)
    _synthetic_history(repo, "other", [base])
    out, _ = run("prune", "--keep-last", "3", "--keep-daily", "5", "--keep-monthly", "3",
                 "--volume", "db", "--json")
    decisions = [json.loads(line) for line in out.splitlines()]
    assert len(decisions) == len(ids)
    kept = {x["id"] for x in json.loads(run("list", "db", "--json")[0])}
    by_time = dict(zip(times, ids, strict=True))
    last3 = {by_time[t] for t in sorted(times)[-3:]}
    days = sorted({t.date() for t in times}, reverse=True)[:5]
    daily = {by_time[max(t for t in times if t.date() == d)] for d in days}
    months = sorted({(t.year, t.month) for t in times}, reverse=True)[:3]
    monthly = {by_time[max(t for t in times if (t.year, t.month) == m)] for m in months}
    assert kept == last3 | daily | monthly
    assert [x["id"] for x in json.loads(run("list", "other", "--json")[0])]  # untouched
    # every kept backup's archive is still there; deleted ones are fully gone
    files = {p.name for p in (repo / "db").iterdir()}
    assert len(files) == 2 * len(kept)


def test_prune_refuses_empty_policy(run):
    _, err = run("prune", expect=2)
    assert "keep" in err


# -- locking ------------------------------------------------------------------------------------

def test_concurrent_runs_do_not_interleave(resources, docker_client, docker_host, tmp_path,
                                           repo):
    vol = resources.volume().name
    _fill(docker_client, vol, 256)
    config = tmp_path / "volbak.toml"
    config.write_text(f'[jobs.nightly]\nvolumes = ["{vol}"]\nrepo = "{repo}"\ncompress = "gzip"\n')
    first = _spawn(docker_host, "run", "--config", str(config), "--json")
    _wait_until(lambda: list(repo.rglob("*.tar*")), first)
    busy = _spawn(docker_host, "run", "--config", str(config), "--json")
    _, err = busy.communicate(timeout=60)
    assert busy.returncode == 9, err
    assert "in use" in err and "--wait" in err
    waiter = _spawn(docker_host, "run", "--config", str(config), "--json", "--wait", "300")
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    out2, err2 = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, err2
    a, b = json.loads(out1)["backups"][0], json.loads(out2)["backups"][0]
    first_done = dt.datetime.fromisoformat(a["created"].replace("Z", "+00:00")) + \
        dt.timedelta(seconds=json.loads(out1)["seconds"] - 1)
    assert dt.datetime.fromisoformat(b["created"].replace("Z", "+00:00")) >= first_done


# -- verify -------------------------------------------------------------------------------------

def test_verify_catches_a_bit_flip(resources, docker_client, run, repo):
    vol = resources.volume().name
    _fill(docker_client, vol, 8)
    run("backup", vol)
    run("backup", vol)
    out, _ = run("verify", "--all", "--json")
    assert all(json.loads(line)["ok"] for line in out.splitlines())
    obj = sorted((repo / vol).glob("*.tar.zst"))[0]
    data = bytearray(obj.read_bytes())
    data[len(data) // 3] ^= 4
    obj.write_bytes(bytes(data))
    out, err = run("verify", vol, "--json", expect=6)
    results = {r["id"]: r for r in map(json.loads, out.splitlines())}
    assert sorted(r["ok"] for r in results.values()) == [False, True]
    assert "FAILED" in err


# -- config-file jobs ---------------------------------------------------------------------------

def test_invalid_config_names_file_and_key(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[jobs.x]\nvolumes = ["a"]\nrepo = "/r"\nkeep = { daily = "seven" }\n')
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "jobs.x.keep.daily" in err


def test_job_runs_backup_retention_and_failure_alert(resources, docker_client, docker_host,
                                                     tmp_path, repo, capsys):
    vol = resources.volume(labels={"backup": "nightly"}).name
    (volume_path(docker_client, vol) / "f").write_text("x")
    alert = tmp_path / "alert.json"
    config = tmp_path / "volbak.toml"
    config.write_text(f"""
[defaults]
repo = "{repo}"
keep = {{ last = 1 }}
on_failure = "cat > {alert}"

[jobs.labelled]
labels = ["backup=nightly"]
sha256 = true

[jobs.broken]
volumes = ["volbak-no-such-volume"]
""")
    for _ in range(2):
        rc = main(["run", "--config", str(config), "labelled", "--json", "-H", docker_host])
        assert rc == 0, capsys.readouterr().err
        time.sleep(1.1)
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert reports[1]["pruned"] == [reports[0]["backups"][0]["id"]]
    [kept] = Repository(LocalBackend(repo)).list(vol)
    assert {"sha256", "blake3"} <= kept.manifest.object.keys()  # the job's sha256 = true
    rc = main(["run", "--config", str(config), "--json", "-H", docker_host])
    out, err = capsys.readouterr()
    assert rc == 3, err
    statuses = {r["job"]: r["status"] for r in map(json.loads, out.splitlines())}
    assert statuses == {"labelled": "ok", "broken": "failed"}
    sent = json.loads(alert.read_text())
    assert sent["job"] == "broken" and "volbak-no-such-volume" in sent["error"]


