"""The test infrastructure itself: fidelity helpers, engines, image, resources, S3, ssh."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tarfile

import docker
import docker.errors
import pytest
from conftest import BUSYBOX_IMAGE, TEST_LABEL, Resources, ensure_busybox_image
from fidelity import diff_listings, listing, populate, volume_path

SMALL = 2 * 2**20


def _by_path(entries):
    return {e.path: e for e in entries}


def test_populate_has_every_trap(tmp_path):
    root = tmp_path / "v"
    populate(root, big=SMALL)
    m = _by_path(listing(root))
    assert stat.S_IMODE(m["."].mode) == 0o700 and (m["."].uid, m["."].gid) == (999, 999)
    assert m["files/empty"].size == 0 and m["files/big.bin"].size == SMALL
    assert m["links/dangling"].target == "no/such/target"
    assert m["links/absolute"].target == "/etc/hostname"
    assert (m["links/dangling"].uid, m["owners/link"].uid) == (999, 12345)
    assert m["hard/pair-b"].hardlink == "hard/pair-a"
    triple = "hard-other/sub/triple-3"  # the smallest of the three names
    assert m[triple].hardlink == m["hard/triple"].hardlink == triple
    assert m["hard-other/setuid-linked-2"].mode & stat.S_ISUID
    assert m["modes/setuid"].mode & stat.S_ISUID and m["modes/setgid"].mode & stat.S_ISGID
    assert m["modes/sticky"].mode & stat.S_ISVTX
    assert stat.S_IMODE(m["modes/no-perms"].mode) == 0
    assert m["special/fifo"].type == "fifo"
    assert "names/new\nline" in m and "names/-leading-dash" in m
    assert any(len(os.path.basename(p).encode()) == 255 for p in m)
    assert max(len(p.encode()) for p in m) > 300
    assert len({e.mtime for e in m.values() if e.hardlink is None}) > 40
    assert m["empty-nested/a/b/c"].type == "dir"


def test_listing_survives_cp_and_tar_and_sees_changes(tmp_path):
    src = tmp_path / "src"
    populate(src, big=SMALL)
    a = listing(src)

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", "--", src, copy], check=True)
    assert diff_listings(a, listing(copy)) == ""

    archive = tmp_path / "a.tar"
    subprocess.run(["tar", "-C", src, "--numeric-owner", "-cf", archive, "."], check=True)
    out = tmp_path / "untar"
    out.mkdir()
    subprocess.run(["tar", "-C", out, "--numeric-owner", "-xpf", archive], check=True)
    assert diff_listings(a, listing(out)) == ""
    assert listing(out) == a

    os.chmod(copy / "files/small.bin", 0o604)
    os.utime(copy / "files/text.txt", (1, 1))
    os.lchown(copy / "owners/link", 1, 1)
    (copy / "hard/pair-b").unlink()
    shutil.copy2(copy / "hard/pair-a", copy / "hard/pair-b")
    d = diff_listings(a, listing(copy))
    assert "'files/small.bin': mode 0o100644 != 0o100604" in d
    assert "'files/text.txt': mtime" in d
    assert "'owners/link': uid 12345 != 1" in d
    assert "'hard/pair-b': hardlink 'hard/pair-a' != None" in d
    (copy / "names/with space").write_bytes(b"changed\n")
    assert "'names/with space': sha256" in diff_listings(a, listing(copy))
    (copy / "special/fifo").unlink()
    assert "only in a: 'special/fifo' (fifo)" in diff_listings(a, listing(copy))


def test_two_engines_are_distinct(docker_client, docker_client2):
    assert docker_client.info()["ID"] != docker_client2.info()["ID"]


@pytest.mark.parametrize("engine", [1, 2])
def test_busybox_runs_on_each_engine(engine, request):
    suffix = "" if engine == 1 else "2"
    client = request.getfixturevalue(f"docker_client{suffix}")
    res = request.getfixturevalue(f"resources{suffix}")
    request.getfixturevalue(f"busybox_image{suffix}")
    img = client.images.get(BUSYBOX_IMAGE)
    assert img.labels.get(TEST_LABEL) == "1"
    vol = res.volume()
    ctr = res.container(
        BUSYBOX_IMAGE,
        ["sh", "-c", "echo hello > /data/f && id -u && ls /data"],
        volumes={vol.name: {"bind": "/data", "mode": "rw"}},
        log_config={"type": "json-file"},
    )
    assert ctr.labels[TEST_LABEL] == "1"
    ctr.start()
    assert ctr.wait(timeout=60)["StatusCode"] == 0
    assert ctr.logs().decode().split() == ["0", "f"]
    assert (volume_path(client, vol.name) / "f").read_text() == "hello\n"


def test_resources_cleanup_even_on_other_engine(docker_client, docker_client2, busybox_image):
    from conftest import Resources

    res = Resources(docker_client)
    other = res.on(docker_client2)
    assert res.on(docker_client) is res
    v1 = res.volume()
    c1 = res.container(BUSYBOX_IMAGE, ["true"], volumes={v1.name: {"bind": "/d"}})
    v2 = other.volume(labels={"extra": "x"})
    assert v2.attrs["Labels"] == {**Resources.labels, "extra": "x"}
    assert v2.attrs["Labels"][TEST_LABEL] == "1"
    res.cleanup()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(c1.id)
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(v1.name)
    with pytest.raises(docker.errors.NotFound):
        docker_client2.volumes.get(v2.name)


def test_volume_round_trip_through_archive_api(tmp_path, docker_client, resources, busybox_image):
    """populate() a volume on the host, read it back with the archive API, compare."""
    vol = resources.volume()
    root = volume_path(docker_client, vol.name)
    populate(root, big=SMALL)
    ctr = resources.container(BUSYBOX_IMAGE, ["true"], volumes={vol.name: {"bind": "/v"}})
    stream, _ = ctr.get_archive("/v", chunk_size=2**20)
    archive = tmp_path / "v.tar"
    with archive.open("wb") as f:
        for chunk in stream:
            f.write(chunk)
    out = tmp_path / "out"
    out.mkdir()
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    subprocess.run(["tar", "-C", out, "--numeric-owner", "-xpf", archive], check=True)
    top = out / os.path.commonpath(names)
    assert diff_listings(listing(root), listing(top)) == ""


def test_s3_endpoint_answers(s3_endpoint):
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
        config=Config(request_checksum_calculation="when_required"),
    )
    s3.create_bucket(Bucket="volbak-infra")
    s3.put_object(Bucket="volbak-infra", Key="k", Body=b"v")
    assert s3.get_object(Bucket="volbak-infra", Key="k")["Body"].read() == b"v"


def test_ssh_reaches_engine2_with_paramiko(sshd, docker_client2):
    pytest.importorskip("paramiko")
    client = sshd.client()
    try:
        assert client.info()["ID"] == docker_client2.info()["ID"]
    finally:
        client.close()


def test_ssh_reaches_engine2_with_ssh_cli(sshd, docker_client2):
    pytest.importorskip("paramiko")  # docker-py wants it for any ssh:// URL
    client = sshd.client(use_ssh_client=True)
    try:
        assert client.info()["ID"] == docker_client2.info()["ID"]
        assert client.version()["ApiVersion"]
    finally:
        client.close()
    out = subprocess.run(
        ["docker", "-H", sshd.url, "info", "--format", "{{.ID}}"],
        env={**os.environ, **sshd.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == docker_client2.info()["ID"]


def test_sweep_spares_a_live_concurrent_session(docker_client):
    import conftest

    live = conftest._session_of(1)  # pid 1 outlives this test: a "concurrent" session
    names = {}
    for who, session in (("live", live), ("dead", "999999999-1"), ("ours", conftest.SESSION)):
        labels = {TEST_LABEL: "1", conftest.SESSION_LABEL: session}
        names[who] = docker_client.volumes.create(labels=labels).name
    try:
        conftest.sweep(docker_client)
        left = {v.name for v in docker_client.volumes.list(filters={"label": TEST_LABEL})}
        assert names["live"] in left
        assert names["dead"] not in left and names["ours"] not in left
    finally:
        for name in names.values():
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.volumes.get(name).remove(force=True)


def test_podman_service_runs_test_containers(podman_host):
    """scripts/podman's service: API version negotiated, the test image imported under
    its tag (Podman ignores import's `tag` parameter), a started container works (its
    default_ulimits), and the volume's data is where inspect says."""
    client = docker.DockerClient(base_url=podman_host, version="auto")
    res = Resources(client)
    try:
        assert "podman" in str(client.version()).lower()
        assert client.api.api_version >= "1.40"
        ensure_busybox_image(client)
        assert client.images.get(BUSYBOX_IMAGE).labels.get(TEST_LABEL) == "1"
        vol = res.volume()
        ctr = res.container(
            BUSYBOX_IMAGE,
            ["sh", "-c", "echo hello > /data/f && ls /data"],
            volumes={vol.name: {"bind": "/data", "mode": "rw"}},
        )
        ctr.start()
        assert ctr.wait(timeout=60)["StatusCode"] == 0
        assert ctr.logs().decode().split() == ["f"]
        assert (volume_path(client, vol.name) / "f").read_text() == "hello\n"
    finally:
        res.cleanup()
        client.close()


def test_engine_kinds_parametrize_engine_1(engine_kind, docker_host):
    """With VOLBAK_TEST_ENGINES=docker,podman this runs twice, engine 1 being each."""
    client = docker.DockerClient(base_url=docker_host, version="auto")
    try:
        is_podman = "podman" in str(client.version()).lower()
    finally:
        client.close()
    assert is_podman == (engine_kind == "podman")
