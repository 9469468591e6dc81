"""Job files (volbak.toml) and the alerts of unattended runs (volbak.notify)."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from volbak.config import Job, load, parse
from volbak.errors import UsageError
from volbak.ops.notify import on_failure, post_webhook, redact_url
from volbak.ops.retention import UNLIMITED, Policy

RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"

GOOD = f"""
[defaults]
repo = "backups"
compress = "zstd"
keep = {{ daily = 7, weekly = 4 }}
recipients = ["{RECIPIENT}"]
on_failure = "logger volbak failed"

[jobs.databases]
containers = ["postgres", "/redis"]
stop = true
pre_backup = "pg_dumpall > /data/dump.sql"
post_backup = "rm /data/dump.sql"
keep = {{ last = 3, monthly = "unlimited" }}

[jobs.media]
cache = false
sha256 = true
volumes = ["photos", "music"]
labels = ["backup=nightly", "volbak.include"]
repo = "s3://bucket/prefix"
repo_options = {{ region = "eu-west-1", path_style = true, part_size_mb = 64 }}
recipients_file = "~/recipients.txt"
compress = "gzip"
webhook = "https://hooks.example.org/T0/secret-token"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "volbak.toml"
    p.write_text(text)
    return p


def test_good_config(tmp_path):
    cfg = load(write(tmp_path, GOOD))
    assert list(cfg.jobs) == ["databases", "media"]
    db, media = cfg.jobs["databases"], cfg.jobs["media"]
    assert db == Job(
        name="databases", repo=str(tmp_path / "backups"), containers=("postgres", "redis"),
        recipients=(RECIPIENT,), compress="zstd", stop=True,
        pre_backup="pg_dumpall > /data/dump.sql", post_backup="rm /data/dump.sql",
        keep=Policy(last=3, monthly=UNLIMITED), on_failure="logger volbak failed",
    )
    assert media.repo == "s3://bucket/prefix"
    assert media.volumes == ("photos", "music")
    assert media.labels == ("backup=nightly", "volbak.include")
    assert media.repo_options == {"region": "eu-west-1", "path_style": "true",
                                  "part_size_mb": "64"}
    assert media.recipients_file == Path.home() / "recipients.txt"
    assert media.keep == Policy(daily=7, weekly=4)  # from [defaults]
    assert media.compress == "gzip" and media.stop is False
    assert media.cache is False and db.cache is True  # backup --no-cache
    assert media.sha256 is True and db.sha256 is False  # backup --sha256
    assert cfg.settings("media").sha256 and not cfg.settings("databases").sha256
    assert media.encrypted and db.encrypted
    assert [j.name for j in cfg.select()] == ["databases", "media"]
    assert [j.name for j in cfg.select(["media", "databases", "media"])] == [
        "media", "databases"]


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    sub = tmp_path / "etc"
    sub.mkdir()
    p = sub / "v.toml"
    p.write_text('[jobs.a]\nvolumes=["v"]\nrepo="../repo"\npassphrase_file="pass"\n')
    job = load(p).jobs["a"]
    assert job.passphrase_file == sub / "pass"
    assert Path(job.repo) == sub / "../repo"
    assert job.keep is None and job.compress == "zstd" and not job.recipients


def test_unknown_job_selected(tmp_path):
    cfg = load(write(tmp_path, GOOD))
    with pytest.raises(UsageError) as ei:
        cfg.select(["nightly"])
    assert "no job named 'nightly'" in ei.value.message
    assert "databases, media" in ei.value.hint


@pytest.mark.parametrize(
    ("text", "keypath", "expected"),
    [
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nkeep={daily="seven"}',
         "jobs.a.keep.daily", "expected a non-negative integer or \"unlimited\", got a string"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nkeep={daily=-1}',
         "jobs.a.keep.daily", "got an integer (-1)"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nkeep={dayly=3}',
         "jobs.a.keep.dayly", "unknown key"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nkeep={daily=0}',
         "jobs.a.keep", "at least one of last, hourly"),
        ('[jobs.a]\nvolume=["v"]\nrepo="/r"', "jobs.a.volume", "unknown key"),
        ('[jobs.a]\nvolumes="v"\nrepo="/r"', "jobs.a.volumes", "an array of volume names"),
        ('[jobs.a]\nvolumes=["v", 3]\nrepo="/r"', "jobs.a.volumes[1]", "a volume name"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\ncompress="bzip2"', "jobs.a.compress",
         "'zstd' or 'gzip' or 'none'"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nstop="yes"', "jobs.a.stop", "true or false"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\ncache=0', "jobs.a.cache", "true or false"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nsha256="yes"', "jobs.a.sha256", "true or false"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nwebhook="ftp://x"', "jobs.a.webhook",
         "an http:// or https:// URL"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nrecipients=["ssh-ed25519 AAAA"]',
         "jobs.a.recipients[0]", "an age recipient"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nlabels=[{a=1}]', "jobs.a.labels[0]",
         "'key=value'"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nrepo_options={x=[1]}', "jobs.a.repo_options.x",
         "a string, number or boolean"),
        ('[defaults]\ncompres="zstd"\n[jobs.a]\nvolumes=["v"]\nrepo="/r"', "defaults.compres",
         "unknown key"),
        ('[defaults]\nkeep={daily=true}\n[jobs.a]\nvolumes=["v"]\nrepo="/r"',
         "defaults.keep.daily", "got a boolean"),
        ('[job.a]\nvolumes=["v"]', "job", "unknown key"),
        ('[jobs.a]\nvolumes=["v"]', "jobs.a", "no 'repo'"),
        ('[jobs.a]\nrepo="/r"', "jobs.a", "selects nothing"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\npassphrase_file="/p"\nrecipients_file="/r"',
         "jobs.a", "cannot be combined"),
        ('[defaults]\nrepo="/r"', "jobs", "at least one [jobs.NAME] table"),
        ('jobs = 3', "jobs", "got an integer (3)"),
        ('[jobs."a b"]\nvolumes=["v"]\nrepo="/r"', "jobs.a b", "a job name"),
    ],
)
def test_invalid_config_names_file_key_and_expectation(tmp_path, text, keypath, expected):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as ei:
        load(path)
    msg = ei.value.message
    assert msg.startswith(f"{path}: {keypath}:"), msg
    assert expected in msg, msg
    assert ei.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "keypath"),
    [
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\npassphrase="hunter2"', "jobs.a.passphrase"),
        ('[defaults]\npassword="x"\n[jobs.a]\nvolumes=["v"]\nrepo="/r"', "defaults.password"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="s3://b"\nrepo_options={secret_access_key="x"}',
         "jobs.a.repo_options.secret_access_key"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="s3://b"\nrepo_options={session_token="x"}',
         "jobs.a.repo_options.session_token"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nidentity="AGE-SECRET-KEY-1QQQ"', "jobs.a.identity"),
        ('[jobs.a]\nvolumes=["v"]\nrepo="/r"\nrecipients=["AGE-SECRET-KEY-1QQQ"]',
         "jobs.a.recipients"),
    ],
)
def test_inline_secrets_are_refused(tmp_path, text, keypath):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as ei:
        load(path)
    assert ei.value.message.startswith(f"{path}: {keypath}"), ei.value.message
    assert "must not be written in the config" in ei.value.message
    assert "hunter2" not in ei.value.message and "QQQ" not in ei.value.message


def test_invalid_toml_and_missing_file(tmp_path):
    path = write(tmp_path, "[jobs.a\nvolumes=")
    with pytest.raises(UsageError, match=r"volbak\.toml: invalid TOML: .*line 1"):
        load(path)
    with pytest.raises(UsageError, match="does not exist"):
        load(tmp_path / "nope.toml")
    assert parse('[jobs.x]\nvolumes=["v"]\nrepo="/r"').jobs["x"].repo == "/r"


# ---------------------------------------------------------------- notify


SUMMARY = {"job": "nightly", "status": "failed", "exit_code": 5, "error": "disk full"}


def test_on_failure_gets_json_on_stdin_and_env(tmp_path):
    out = tmp_path / "got"
    r = on_failure(f'cat > {out}; echo "$VOLBAK_JOB $VOLBAK_STATUS $VOLBAK_EXIT_CODE"', SUMMARY)
    assert r.ok, r
    assert json.loads(out.read_text()) == SUMMARY
    assert r.output.strip() == "nightly failed 5"


def test_on_failure_problems_are_reported_not_raised():
    r = on_failure("echo oops >&2; exit 3", SUMMARY)
    assert not r.ok and "exited with code 3" in r.detail and "oops" in r.output
    r = on_failure("sleep 5", SUMMARY, timeout=0.3)
    assert not r.ok and "timed out" in r.detail


class Hook(http.server.BaseHTTPRequestHandler):
    received: list = []
    status = 204

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(Hook.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Hook.received = []
    Hook.status = 204
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_webhook_posts_json(server):
    r = post_webhook(f"{server}/hooks/T0/token123?x=1", SUMMARY)
    assert r.ok, r
    assert Hook.received == [("/hooks/T0/token123?x=1", "application/json", SUMMARY)]
    assert "token123" not in r.detail


def test_webhook_errors_are_reported_not_raised(server):
    Hook.status = 500
    r = post_webhook(f"{server}/secret-path", SUMMARY)
    assert not r.ok and "HTTP 500" in r.detail and "secret-path" not in r.detail
    # nothing listens on this port any more
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = post_webhook(f"http://127.0.0.1:{port}/x", SUMMARY, timeout=2)
    assert not r.ok and "unreachable" in r.detail
    r = post_webhook("ftp://example.org/x", SUMMARY)
    assert not r.ok


def test_webhook_timeout():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)  # accepts the connection but never answers
    try:
        r = post_webhook(f"http://127.0.0.1:{s.getsockname()[1]}/", SUMMARY, timeout=0.5)
    finally:
        s.close()
    assert not r.ok and ("0.5 s" in r.detail or "timed out" in r.detail), r.detail


def test_redact_url():
    assert redact_url("https://user:pw@hooks.example.org:8443/T0/token?k=v") == \
        "https://hooks.example.org:8443/…"
    assert redact_url("http://example.org") == "http://example.org"
