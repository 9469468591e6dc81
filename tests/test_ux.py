"""What a new user trips over (issue 13), checked through the CLI as a user runs it."""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
from pathlib import Path

import pytest
from fidelity import volume_path

from volbak.cli import main
from volbak.crypto import age

SECRET = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]{20,}")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Journal, locks and the default config of these tests stay in the temp dir."""
    monkeypatch.setenv("VOLBAK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("VOLBAK_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("VOLBAK_CONFIG", "")
    monkeypatch.delenv("VOLBAK_REPO", raising=False)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


def _filled(resources, docker_client, files: dict[str, str] | None = None) -> str:
    vol = resources.volume().name
    root = volume_path(docker_client, vol)
    for name, text in (files or {"f": "hello"}).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return vol


def _service(resources, busybox_image, volume: str, **kw):
    return resources.container(busybox_image, ["sleep", "3600"], start=True,
                               volumes={volume: {"bind": "/data", "mode": "rw"}}, **kw)


@pytest.fixture
def keyfile(tmp_path) -> Path:
    path = tmp_path / "backup.key"
    age.write_identity_file(path, age.X25519Identity.generate())
    return path


# -- 1. secret keys are never printed or sent ---

def test_identity_given_as_recipients_is_never_shown(run, keyfile, capsys):
    _, err = run("backup", "anything", "-R", str(keyfile), expect=7)
    assert not SECRET.search(err)
    assert str(keyfile) in err and "identity" in err
    public = keyfile.read_text().split("# public key: ")[1].split()[0]
    assert f"-r {public}" in err and "-i" in err
    secret = keyfile.read_text().splitlines()[-1]
    _, err = run("backup", "anything", "-r", secret, expect=7)
    assert secret not in err and not SECRET.search(err)
    _, err = run("backup", "anything", "-r", "age1" + secret[15:], expect=7)
    assert secret[15:] not in err


def test_job_summary_hook_and_webhook_never_get_the_secret(docker_host, tmp_path, keyfile,
                                                           resources, docker_client, capsys):
    got: list[bytes] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vol = _filled(resources, docker_client)
        (tmp_path / "volbak.toml").write_text(
            f'[jobs.nightly]\nvolumes = ["{vol}"]\nrepo = "repo"\n'
            f'recipients_file = "{keyfile.name}"\n'
            f'on_failure = "cat > {tmp_path}/failure.json"\n'
            f'webhook = "http://127.0.0.1:{server.server_port}/hook"\n')
        rc, out, err = cli(capsys, "run", "--config", str(tmp_path / "volbak.toml"),
                           "--json", "-H", docker_host)
    finally:
        server.shutdown()
    assert rc == 7
    failure = (tmp_path / "failure.json").read_text()
    for text in (out, err, failure, *(b.decode() for b in got)):
        assert not SECRET.search(text), text
    assert json.loads(out)["status"] == "failed" and "identity" in json.loads(out)["error"]
    assert got and "identity" in json.loads(got[0])["error"]


# -- 2. restore over a volume in use ---

def test_restore_force_stop_replaces_a_volume_in_use(run, resources, docker_client,
                                                     busybox_image):
    vol = _filled(resources, docker_client, {"f": "old", "sub/g": "old"})
    run("backup", vol)
    root = volume_path(docker_client, vol)
    (root / "f").write_text("changed")
    (root / "extra").write_text("to go")
    idle = resources.container(busybox_image, ["true"],
                               volumes={vol: {"bind": "/data", "mode": "rw"}})
    # a stopped container that merely mounts the volume is no reason to refuse
    out, _ = run("restore", vol, "--to-volume", vol, "--force")
    assert "(replaced)" in out
    assert sorted(p.name for p in root.iterdir()) == ["f", "sub"]
    assert (root / "f").read_text() == "old"
    (root / "f").write_text("changed again")
    svc = _service(resources, busybox_image, vol)
    _, err = run("restore", vol, "--to-volume", vol, "--force", expect=8)
    assert svc.name in err and "--stop" in err
    _, err = run("restore", vol, "--to-volume", vol, "--force", "--stop", "--stop-timeout", "1")
    assert f"stopping container {svc.name}" in err and f"starting container {svc.name}" in err
    svc.reload()
    assert svc.status == "running"
    assert (root / "f").read_text() == "old"
    idle.reload()
    assert idle.status == "created"


# -- 3. partial success is reported ---

def test_every_name_is_checked_before_anything_is_stored(run, resources, docker_client, repo):
    vol = _filled(resources, docker_client)
    _, err = run("backup", vol, "volbak-test-nosuch", expect=3)
    assert "volbak-test-nosuch" in err
    assert not list(repo.rglob("*.manifest.json"))


def test_failure_after_a_backup_says_what_was_stored(run, resources, docker_client,
                                                     busybox_image, docker_host, tmp_path,
                                                     capsys):
    vol = _filled(resources, docker_client)
    _service(resources, busybox_image, vol)
    out, err = run("backup", vol, "--post-backup", "exit 3", expect=10)
    stored = out.split()[0]
    assert f"stored before the failure: {stored}" in err
    (tmp_path / "volbak.toml").write_text(
        f'[jobs.j]\nvolumes = ["{vol}"]\nrepo = "repo2"\npost_backup = "exit 3"\n')
    rc, out, _ = cli(capsys, "run", "--config", str(tmp_path / "volbak.toml"), "--json",
                     "-H", docker_host)
    report = json.loads(out)
    assert rc == 10 and report["status"] == "failed"
    assert [b["volume"] for b in report["backups"]] == [vol]


# -- 4. data-volume containers, set IDs, short IDs, latest -------------------------------------

def test_data_volume_container_found_by_name_set_id_and_prefix(run, resources, docker_client,
                                                               busybox_image):
    name = resources.name("dbdata")
    ctr = resources.container(busybox_image, ["true"], name=name, volumes=["/dbdata"])
    anon = ctr.attrs["Mounts"][0]["Name"]
    resources.track_volume(anon)
    (volume_path(docker_client, anon) / "db").write_text("rows")
    out, _ = run("backup", "--container", name, "--json")
    info = json.loads(out.splitlines()[0])
    assert info["set"].startswith(f"{name}@")
    listed, _ = run("list", name)
    assert anon[:12] + "@" in listed and anon not in listed  # the short form
    ids, _ = run("list", "-q")
    assert ids.split() == [info["id"]]
    short = f"{anon[:12]}@{info['id'].split('@')[1]}"
    for ref in (name, info["set"], f"{name}@latest", "latest", short, anon[:8], info["id"][:70]):
        out, _ = run("show", ref, "--json")
        assert json.loads(out)["id"] == info["id"], ref
    target = resources.name("dbdata2")
    resources.track_container(target)
    resources.track_volume(f"{target}_dbdata")
    run("restore", info["set"], "--to-container", target)
    assert (volume_path(docker_client, f"{target}_dbdata") / "db").read_text() == "rows"
    _, err = run("show", "volbak-test-nosuch@latest", expect=3)
    assert "volbak list" in err


# -- 5. a location that is not a repository ---

def test_wrong_repository_is_an_error(run, tmp_path, capsys):
    _, err = run("list", repo_path=tmp_path / "nonexistent", expect=5)
    assert str(tmp_path / "nonexistent") in err and "does not exist" in err
    (tmp_path / "afile").write_text("x")
    _, err = run("list", repo_path=tmp_path / "afile", expect=5)
    assert "is a file" in err
    _, err = run("backup", "v", repo_path=tmp_path / "afile", expect=5)
    assert "is a file" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    _, err = run("list", repo_path=tmp_path / "other", expect=5)
    assert "not a volbak repository" in err and "notes.txt" in err
    rc, _, err = cli(capsys, "list", "--repo", "s4://x")
    assert rc == 5 and "pip install" not in err
    rc, _, err = cli(capsys, "list", "--repo", "s3://x", "-o", "endpoint_url=http://127.0.0.1:1")
    assert "pip install volbak-s4" not in err


# -- 6. --config / --job defaults, default config ----------------------------------------------

def test_commands_take_the_config_repository_and_key(run, resources, docker_client, docker_host,
                                                     tmp_path, keyfile, capsys, monkeypatch):
    vol = _filled(resources, docker_client)
    public = keyfile.read_text().split("# public key: ")[1].split()[0]
    conf = tmp_path / "conf" / "volbak.toml"
    conf.parent.mkdir()
    conf.write_text(f'[defaults]\nrepo = "myrepo"\nidentity_file = "../{keyfile.name}"\n'
                    f'recipients = ["{public}"]\nsha256 = true\n'
                    f'[jobs.nightly]\nvolumes = ["{vol}"]\n')
    rc, _, err = cli(capsys, "run", "--config", str(conf), "-H", docker_host)
    assert rc == 0, err
    rc, out, _ = cli(capsys, "list", "--config", str(conf), "--job", "nightly")
    assert rc == 0 and str(tmp_path / "conf" / "myrepo") in out and f"{vol}@" in out
    monkeypatch.setenv("VOLBAK_CONFIG", str(conf))
    rc, out, err = cli(capsys, "-H", docker_host, "backup", vol, "--json")
    assert rc == 0 and json.loads(out)["sha256"], err  # [defaults] sha256 = true
    rc, out, err = cli(capsys, "-H", docker_host, "verify")
    assert rc == 0 and "full" in out, err
    target = resources.name()
    resources.track_volume(target)
    rc, out, err = cli(capsys, "restore", vol, "--to-volume", target, "-H", docker_host)
    assert rc == 0, err
    # the command line wins over the config
    rc, _, err = cli(capsys, "list", "--repo", str(tmp_path / "nonexistent"))
    assert rc == 5


# -- 7. README install lines ---

def test_readme_install_matches_the_unit():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    first = readme.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "pip install -e ." not in first.split("python3 -m venv")[0]
    assert "python3 -m venv /opt/volbak" in first and "/usr/local/bin/volbak" in first
    assert "ExecStart=/usr/local/bin/volbak" in readme
    assert "externally-managed-environment" in readme or "pipx" in readme


# -- 8. docker habits ---

def test_common_options_before_the_command_and_click_errors(docker_host, resources,
                                                            docker_client, tmp_path, capsys):
    vol = _filled(resources, docker_client)
    repo = str(tmp_path / "r")
    rc, out, err = cli(capsys, "-H", docker_host, "--repo", repo, "backup", vol)
    assert rc == 0, err
    rc, out, _ = cli(capsys, "--repo", repo, "list", "-q")
    assert rc == 0 and out.strip().startswith(f"{vol}@") and len(out.split()) == 1
    rc, _, err = cli(capsys, "backup", "--nosuch")
    assert rc == 2
    assert err.startswith("volbak: error: No such option") and "--nosuch" in err
    assert "hint: see 'volbak backup --help'" in err and "Usage:" not in err
    rc, _, err = cli(capsys, "nosuchcommand")
    assert rc == 2 and err.startswith("volbak: error: ")


# -- 9. backups of different volumes at once ---

def test_backups_of_different_volumes_run_side_by_side(run, resources, docker_client,
                                                        docker_host, repo):
    from volbak.ops import lock

    a = _filled(resources, docker_client)
    b = _filled(resources, docker_client)
    run("backup", b)
    # what a running backup of `a` holds: the repository shared, its volume exclusively
    with lock.acquire([lock.repo_key(str(repo)), lock.volume_key(docker_host, a)],
                      shared=[lock.repo_key(str(repo))]):
        run("backup", b)  # another volume: goes ahead
        _, err = run("backup", a, expect=9)  # the same volume: exclusive
        assert f"volume '{a}'" in err
        _, err = run("prune", "--keep-last", "1", expect=9)  # prune: exclusive
        _, err = run("forget", b, expect=9)


# -- 10. forget, --keep-last 0, gone volumes ---------------------------------------------------

def test_forget_and_gone_volumes(run, resources, docker_client, repo):
    keep = _filled(resources, docker_client)
    gone = _filled(resources, docker_client)
    run("backup", keep)
    run("backup", gone)
    run("backup", gone)
    docker_client.volumes.get(gone).remove()
    out, _ = run("list")
    row = next(line for line in out.splitlines() if line.startswith(gone[:12]))
    assert row.rstrip().endswith("gone")
    assert "forget" in out
    listed = json.loads(run("list", "--json")[0])
    assert {i["volume"]: i["volume_exists"] for i in listed} == {keep: True, gone: False}
    out, _ = run("forget", gone, "--dry-run")
    assert out.count("would delete") == 2
    assert len(json.loads(run("list", gone, "--json")[0])) == 2
    _, err = run("prune", "--keep-last", "0", expect=2)
    assert "VOLUME" in err
    out, _ = run("prune", gone, "--keep-last", "0", "--dry-run")
    assert out.count("would delete") == 2
    run("forget", gone)
    assert json.loads(run("list", gone, "--json", expect=3)[0] or "[]") == []
    newest = json.loads(run("list", keep, "--json")[0])[0]["id"]
    run("forget", newest)
    assert not (repo / keep).exists()


# -- 11. consistency feedback ---

def test_backup_of_a_volume_in_use_warns_and_stop_says_how_long(run, resources, docker_client,
                                                                 busybox_image):
    vol = _filled(resources, docker_client)
    svc = _service(resources, busybox_image, vol)
    _, err = run("backup", vol)
    assert "warning" in err and svc.name in err and "--stop" in err
    _, err = run("backup", vol, "--stop", "--stop-timeout", "1")
    assert "warning" not in err
    assert f"stopping container {svc.name}" in err and "1 s" in err
    assert f"container {svc.name} stopped after" in err
    _, err = run("backup", vol, "--stop-timeout", "1", expect=2)


# -- 12. where is my backup ---

def test_text_output_names_the_repository(run, resources, docker_client, repo):
    vol = _filled(resources, docker_client)
    out, _ = run("backup", vol)
    assert f"stored in {repo}" in out
    assert f"repository {repo}" in run("list")[0]
    from volbak.cli.context import ROOT_REPO, default_repo

    if os.geteuid() == 0 and not os.environ.get("XDG_DATA_HOME"):
        assert default_repo() == ROOT_REPO == "/var/lib/volbak/repo"


# -- 13. the smaller ones ---

def test_options_a_command_would_ignore_are_not_offered(capsys):
    for cmd, hidden in (("show", "-H, --host"), ("recover", "-H, --host"),
                        ("recover", "--repo"), ("migrate", "--repo"), ("forget", "-H, --host")):
        rc, out, _ = cli(capsys, cmd, "--help")
        assert rc == 0 and hidden not in out, (cmd, hidden)
    rc, out, _ = cli(capsys, "list", "--help")
    assert "-H, --host" in out and "--repo" in out and "--config" in out


def test_keygen_stdout_and_existing_file(tmp_path, capsys):
    rc, out, err = cli(capsys, "keygen")
    assert rc == 0 and out.startswith("# created: ") and SECRET.search(out)
    assert err.startswith("Public key: age1")
    (tmp_path / "k").write_text("x")
    rc, _, err = cli(capsys, "keygen", "-o", str(tmp_path / "k"))
    assert rc == 8 and "already exists" in err


def test_volume_name_error_states_the_rule(run, resources, docker_client):
    vol = _filled(resources, docker_client)
    run("backup", vol)
    _, err = run("restore", vol, "--to-volume", "-bad name", expect=2)
    assert "letters, digits" in err.splitlines()[0]


def test_units_plurals_columns_exclude_and_dry_runs(run, resources, docker_client, docker_host,
                                                     busybox_image, tmp_path, capsys):
    from volbak.cli.context import fmt_rate

    assert fmt_rate(96_600_000, 1) == "96.6 MB/s"
    assert fmt_rate(500, 1) == "500 B/s" and fmt_rate(1_500, 1) == "1.5 kB/s"
    vol = _filled(resources, docker_client, {"keep": "k", "cache/x": "c", "a.tmp": "t"})
    out, _ = run("backup", vol, "--dry-run")
    assert f"would back up volume {vol}" in out and "nothing was done" in out
    assert not (tmp_path / "repo").exists()
    out, _ = run("backup", vol, "--exclude", "cache", "--exclude", "*.tmp")
    assert "2 entries" in out and " 0 MB/s" not in out
    assert re.search(r"[kMG]?B/s$", out.split("\n")[0])
    target = resources.name()
    resources.track_volume(target)
    run("restore", vol, "--to-volume", target)
    assert sorted(p.name for p in volume_path(docker_client, target).iterdir()) == ["keep"]
    out, _ = run("verify")  # no argument: every backup
    assert out.count("ok ") == 1
    run("backup", vol)
    out, _ = run("prune", vol, "--keep-last", "1", "--dry-run")
    lines = [line for line in out.splitlines() if "@" in line]
    assert len({line.index(vol) for line in lines}) == 1  # aligned
    (tmp_path / "volbak.toml").write_text(
        f'[jobs.j]\nvolumes = ["{vol}"]\nrepo = "{tmp_path / "repo"}"\nkeep = {{ last = 1 }}\n')
    rc, out, err = cli(capsys, "run", "--config", str(tmp_path / "volbak.toml"), "--dry-run",
                       "-H", docker_host)
    assert rc == 0 and "would back up volume" in out and "nothing was done" in out, err
    assert len(json.loads(run("list", "--json")[0])) == 2
