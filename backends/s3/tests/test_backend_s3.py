"""The S3 backend against real S3 HTTP servers on 127.0.0.1: moto's server mode and
SeaweedFS's S3 gateway (the ``s3_server`` fixture runs each test on both).

``scripts/test`` exports the endpoints of the servers it started; without them the
fixtures start their own (tests/conftest.py). Every bucket a test creates is removed in
teardown, with any multipart upload left in it (and a test fails if one was left).
Tests that need moto's own behaviour (IAM enforcement, an in-process server) say so in
their names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3")
volbak_s3 = pytest.importorskip("volbak_s3", reason="pip install -e backends/s3")

from volbak_s3 import S3Backend, max_object_size, part_size_for  # noqa: E402
from volbak_s3 import s3 as s3mod  # noqa: E402

from volbak.backend import open_backend  # noqa: E402
from volbak.errors import (  # noqa: E402
    BackendError,
    BackendMissing,
    BackendPermissionError,
    ObjectNotFound,
    UsageError,
)
from volbak.testing import BackendContract, payload  # noqa: E402

MiB = 1024 * 1024
TiB = 1024 * 1024 * MiB
REGION = "us-east-1"


# -- the server and the credentials -----------------------------------------------------


def _start_moto() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@pytest.fixture
def endpoint(s3_server, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server's URL, with its keys in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server.endpoint


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials; nothing from the real environment or ~/.aws leaks in."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def raw_client(endpoint: str, key_id: str | None = None, secret: str | None = None):
    """A plain boto3 client with these keys, else those in the environment (see
    ``endpoint``); a session of its own, as boto3's default one keeps the first keys it
    found."""
    return boto3.session.Session(key_id, secret).client(
        "s3", endpoint_url=endpoint, region_name=REGION
    )


def uploads_in(client, bucket: str) -> list[dict]:
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


MOTO_INITIATED = (
    "moto reports every multipart upload as initiated on 2010-11-10, so the age rules of "
    "list_incomplete/remove_incomplete can only be checked against a real server"
)


def keys_in(client, bucket: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.fixture
def bucket(endpoint: str) -> Iterator[str]:
    """A fresh bucket, emptied and removed in teardown; no multipart upload may remain."""
    name = f"volbak-test-{secrets.token_hex(6)}"
    client = raw_client(endpoint)
    client.create_bucket(Bucket=name)
    try:
        yield name
        assert uploads_in(client, name) == [], "a multipart upload was left behind"
    finally:
        for up in uploads_in(client, name):
            client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)
        client.close()


# -- the contract suite ------------------------------------------------------------------


class TestS3Backend(BackendContract):
    incomplete_write_size = 9 * MiB  # more than the first 8 MiB part: a multipart upload
    # whole-second timestamps, 1 s of slack, and the first part's upload time
    incomplete_wait = 5.0

    @pytest.fixture
    def backend(self, endpoint: str, bucket: str, s3_server) -> Iterator[S3Backend]:
        if s3_server.kind == "moto":
            self.finds_incomplete = False  # MOTO_INITIATED
        with S3Backend.from_url(f"s3://{bucket}/repo/prefix", {"endpoint_url": endpoint}) as b:
            yield b


class TestS3BackendNoPrefixSmallParts(BackendContract):
    """No prefix, path-style, checksums=when_required (MinIO/R2/B2 mode), 5 MiB parts so
    the 20 MiB stream goes through a multipart upload of several parts."""

    # The documented bound 5 MiB x (2 + 1), plus slack for botocore (about 2 MiB
    # measured). Checked only against a server in another process: tracemalloc sees this
    # process, and a moto the fixtures started in-process would count (see backend).
    stream_memory_limit: int | None = 21 * MiB
    incomplete_write_size = 6 * MiB
    incomplete_wait = 5.0

    @pytest.fixture
    def backend(self, endpoint: str, bucket: str, s3_server) -> Iterator[S3Backend]:
        if s3_server.kind == "moto" and not os.environ.get("VOLBAK_TEST_S3_ENDPOINT"):
            self.stream_memory_limit = None  # in-process moto: skip the memory check
        if s3_server.kind == "moto":
            self.finds_incomplete = False  # MOTO_INITIATED
        opts = {
            "endpoint_url": endpoint,
            "path_style": "true",
            "checksums": "when_required",
            "part_size": "5MiB",
            "concurrency": "2",
        }
        with S3Backend.from_url(f"s3://{bucket}", opts) as b:
            yield b


# -- multipart ---------------------------------------------------------------------------


def test_multipart_uses_parts_and_bounds_memory(endpoint: str, bucket: str) -> None:
    b = S3Backend(bucket, "mp", endpoint_url=endpoint, part_size=5 * MiB, concurrency=2)
    data = payload(23 * MiB, seed=20)
    with b.create_writer("vol/big") as w:
        for i in range(0, len(data), 1_000_003):
            w.write(data[i : i + 1_000_003])
            assert keys_in(b._client, bucket) == []  # nothing visible before commit
        info = w.commit()
    assert info.size == len(data)
    head = raw_client(endpoint).head_object(Bucket=bucket, Key="mp/vol/big", PartNumber=1)
    assert head["PartsCount"] == 5  # 4 x 5 MiB + 3 MiB
    assert head["ContentLength"] == 5 * MiB  # part 1 alone
    etag = raw_client(endpoint).head_object(Bucket=bucket, Key="mp/vol/big")["ETag"]
    assert etag.strip('"').endswith("-5")
    # The documented bound: part size x (concurrency + 1).
    assert 5 * MiB < w.peak_buffered <= 5 * MiB * (2 + 1)
    assert w.buffered == 0
    assert b.get_bytes("vol/big") == data


def test_small_object_is_a_single_put(endpoint: str, bucket: str) -> None:
    b = S3Backend(bucket, endpoint_url=endpoint, part_size=5 * MiB)
    b.put_bytes("exactly-one-part", payload(5 * MiB, seed=21))
    etag = raw_client(endpoint).head_object(Bucket=bucket, Key="exactly-one-part")["ETag"]
    assert "-" not in etag


def test_commit_multipart_with_checksums_modes(endpoint: str, bucket: str) -> None:
    for mode in ("when_supported", "when_required"):
        b = S3Backend(bucket, endpoint_url=endpoint, part_size=5 * MiB, checksums=mode)
        data = payload(11 * MiB, seed=22)
        b.put_bytes(f"ck/{mode}", data)
        assert b.get_bytes(f"ck/{mode}") == data


@pytest.mark.parametrize("how", ["abort", "exception", "no-commit"])
def test_abandoned_multipart_leaves_no_upload(endpoint: str, bucket: str, how: str) -> None:
    b = S3Backend(bucket, "ab", endpoint_url=endpoint, part_size=5 * MiB, concurrency=2)
    client = raw_client(endpoint)
    with contextlib.suppress(KeyError), b.create_writer("vol/x") as w:
        w.write(payload(16 * MiB, seed=23))
        assert len(uploads_in(client, bucket)) == 1  # parts really went up
        if how == "abort":
            w.abort()
        elif how == "exception":
            raise KeyError("boom")
    assert uploads_in(client, bucket) == []
    assert keys_in(client, bucket) == []
    with pytest.raises(ObjectNotFound):
        b.stat("vol/x")


def test_part_size_schedule() -> None:
    assert part_size_for(1, 8 * MiB) == 8 * MiB
    assert part_size_for(900, 8 * MiB) == 8 * MiB
    assert part_size_for(901, 8 * MiB) == 16 * MiB
    assert part_size_for(10_000, 8 * MiB) == 5 * 1024 * MiB  # capped at S3's 5 GiB
    for first in (5 * MiB, 8 * MiB, 64 * MiB, 5 * 1024 * MiB):
        assert max_object_size(first) >= 5 * TiB
        assert all(5 * MiB <= part_size_for(n, first) <= 5 * 1024 * MiB for n in (1, 5000, 10_000))


# -- a connection cut in the middle of an upload ----------------------------------------


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 in front of the S3 endpoint. Until ``budget`` bytes have
    gone upstream in total it forwards everything; after that it cuts (RST) every
    connection that sends more than ``after`` further bytes: small requests (the abort)
    still pass, part uploads die mid-body, retries included."""

    def __init__(
        self, upstream: str, budget: int, after: int = 256 * 1024, down: int | None = None
    ) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port.rstrip("/")))
        self.budget = budget
        self.after = after
        self.down = down  # if set, cut any connection after this many bytes downstream
        self.total = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            self._conns += [client, up]
            threading.Thread(target=self._pump_up, args=(client, up), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(up, client), daemon=True).start()

    @staticmethod
    def _reset(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            # shutdown() also wakes the other pump's recv() on this socket.
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _pump_up(self, src: socket.socket, dst: socket.socket) -> None:
        since_trip = 0
        try:
            while data := src.recv(65536):
                with self._lock:
                    tripped = self.total >= self.budget
                    self.total += len(data)
                if tripped:
                    since_trip += len(data)
                    if since_trip > self.after:
                        with self._lock:
                            self.cuts += 1
                        self._reset(src, dst)
                        return
                dst.sendall(data)
        except OSError:
            pass
        self._reset(src, dst)

    def _pump_down(self, src: socket.socket, dst: socket.socket) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                sent += len(data)
                if self.down is not None and sent > self.down:
                    with self._lock:
                        self.cuts += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        self._reset(src, dst)

    def close(self) -> None:
        self._stop = True
        self._sock.close()
        self._reset(*self._conns)


@pytest.fixture
def fast_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    # One retry, so the test does not sit through botocore's full backoff.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")


def test_connection_cut_mid_multipart_leaves_nothing(
    endpoint: str, bucket: str, fast_fail: None
) -> None:
    proxy = CuttingProxy(endpoint, budget=11 * MiB)  # two parts pass, the third is cut
    try:
        b = S3Backend(bucket, "cut", endpoint_url=proxy.url, part_size=5 * MiB, concurrency=2)
        data = payload(30 * MiB, seed=24)
        with pytest.raises(BackendError) as ei, b.create_writer("vol/x") as w:
            for i in range(0, len(data), MiB):
                w.write(data[i : i + MiB])
            w.commit()
        assert "connection to S3 endpoint" in str(ei.value)
        assert ei.value.hint and "endpoint_url" in ei.value.hint
        assert proxy.cuts >= 1
        assert proxy.total > 10 * MiB  # parts really went through before the cut
    finally:
        proxy.close()
    client = raw_client(endpoint)
    assert uploads_in(client, bucket) == []  # aborted through the same flaky link
    assert keys_in(client, bucket) == []


def test_connection_cut_single_put_leaves_nothing(
    endpoint: str, bucket: str, fast_fail: None
) -> None:
    proxy = CuttingProxy(endpoint, budget=0)
    try:
        b = S3Backend(bucket, endpoint_url=proxy.url)
        with pytest.raises(BackendError, match="connection to S3 endpoint"):
            b.put_bytes("small", payload(2 * MiB, seed=25))
        assert proxy.cuts >= 1
    finally:
        proxy.close()
    assert keys_in(raw_client(endpoint), bucket) == []


def test_connection_cut_while_reading(endpoint: str, bucket: str, fast_fail: None) -> None:
    data = payload(4 * MiB, seed=26)
    S3Backend(bucket, endpoint_url=endpoint).put_bytes("obj", data)
    proxy = CuttingProxy(endpoint, budget=1 << 40, down=MiB)
    try:
        b = S3Backend(bucket, endpoint_url=proxy.url)
        r = b.open_reader("obj")
        got = bytearray()
        with pytest.raises(BackendError) as ei:
            while block := r.read(256 * 1024):
                got += block
        r.close()
        assert "connection to S3 endpoint" in str(ei.value)
        # (A reset may also discard what the client had received but not yet read.)
        assert len(got) < len(data)
        assert proxy.cuts >= 1
    finally:
        proxy.close()


def test_unreachable_endpoint(fast_fail: None) -> None:
    s = socket.create_server(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    b = S3Backend("bkt", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(BackendError) as ei:
        list(b.list())
    assert "cannot reach S3 endpoint" in str(ei.value)
    assert "-o endpoint_url" in ei.value.hint


# -- a frozen endpoint: bounded timeouts and retries -----------------------------------


class Blackhole:
    """A TCP server on 127.0.0.1 that accepts every connection, reads what comes and never
    answers: a frozen S3 endpoint, whichever server is behind."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()

    @staticmethod
    def _swallow(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass

    def close(self) -> None:
        self._sock.close()
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.close()


# Small limits, so the test takes seconds: a request then gives up after 2 attempts of at
# most 1 + 2 s plus botocore's backoff (under 1 s), and the abort after the same again.
FROZEN_LIMITS = {"connect_timeout": "1", "read_timeout": "2", "retries": "1"}
# Far above those ~15 s and far below what botocore's defaults took (~15 minutes): the
# check is that the limits bound the wait at all, not how fast this machine is.
FROZEN_BOUND = 120


@pytest.mark.parametrize("how", ["sigstop", "blackhole"])
def test_frozen_endpoint_fails_within_the_limits(
    s3_server, endpoint: str, bucket: str, how: str
) -> None:
    """sigstop: the real server is frozen (SIGSTOP) with a multipart upload under way, so
    its parts and then the abort time out; the upload left behind is then found and
    removed by remove_incomplete once the server runs again. blackhole: an endpoint that
    never answers, from the first request on."""
    hole = None
    if how == "sigstop":
        if s3_server.pid is None:
            pytest.skip(f"needs a server process of its own to freeze ({s3_server.kind} has none)")
        url = endpoint
    else:
        hole = Blackhole()
        url = hole.url
    opts = {"endpoint_url": url, "part_size": "5MiB", "concurrency": "2", **FROZEN_LIMITS}
    b = S3Backend.from_url(f"s3://{bucket}/frozen", opts)
    w = b.create_writer("vol/x")
    frozen = False
    try:
        if how == "sigstop":
            w.write(payload(6 * MiB, seed=30))  # the upload exists, part 1 is on its way
            os.kill(s3_server.pid, signal.SIGSTOP)
            frozen = True
        t0 = time.monotonic()
        with pytest.raises(BackendError) as ei:
            for i in range(4):
                w.write(payload(6 * MiB, seed=31 + i))
            w.commit()
        waited = time.monotonic() - t0
    finally:
        w.abort()
        if frozen:
            os.kill(s3_server.pid, signal.SIGCONT)
        if hole is not None:
            hole.close()
    msg, hint = str(ei.value), ei.value.hint or ""
    assert "\n" not in msg
    assert url in msg
    assert "did not answer in time" in msg, msg
    assert "-o connect_timeout=1 -o read_timeout=2 -o retries=1" in msg
    assert "-o read_timeout=" in hint and "-o retries=" in hint
    assert waited < FROZEN_BOUND, f"waited {waited:.0f} s"
    if how == "sigstop":
        # Running again: whatever the abort could not remove is found and removed now
        # (the server may still work through the requests it had queued, abort included).
        again = S3Backend.from_url(f"s3://{bucket}/frozen", {"endpoint_url": endpoint})
        assert all(line.startswith("vol/x ") for line in again.list_incomplete(0))
        again.remove_incomplete(0)
        assert again.list_incomplete(0) == []
        assert list(again.list()) == []


def test_limits_options_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    b = S3Backend.from_url("s3://b", {"endpoint_url": "http://127.0.0.1:9"})
    assert (b.connect_timeout, b.read_timeout, b.retries) == (10, 30, 2)
    cfg = b._client.meta.config
    assert (cfg.connect_timeout, cfg.read_timeout) == (10, 30)
    assert cfg.retries["total_max_attempts"] == 3
    assert b._abort_client.meta.config.retries["total_max_attempts"] == 2
    b = S3Backend.from_url(
        "s3://b",
        {"connect_timeout": "2.5", "read_timeout": "120s", "retries": "0"},
    )
    assert (b.connect_timeout, b.read_timeout, b.retries) == (2.5, 120, 0)
    assert b._client.meta.config.retries["total_max_attempts"] == 1
    assert b._abort_client.meta.config.retries["total_max_attempts"] == 1
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")  # the AWS chain, when -o retries is not given
    assert S3Backend.from_url("s3://b", {}).retries == 6
    assert S3Backend.from_url("s3://b", {"retries": "1"}).retries == 1
    for key, bad in [
        ("connect_timeout", "0"),
        ("read_timeout", "-1"),
        ("read_timeout", "soon"),
        ("retries", "many"),
        ("retries", "99"),
    ]:
        with pytest.raises(UsageError, match=key):
            S3Backend.from_url("s3://b", {key: bad})


# -- unfinished multipart uploads ---------------------------------------------------------


def test_incomplete_uploads_only_under_the_prefix(s3_server, endpoint: str, bucket: str) -> None:
    """Uploads of a sibling prefix ("team/ab" beside "team/a"), of the bucket root and
    fresh ones are never listed nor removed."""
    if s3_server.kind == "moto":
        pytest.skip(MOTO_INITIATED)
    client = raw_client(endpoint)
    ids = {}
    for key in ("team/a/vol/x.tar", "team/ab/vol/x.tar", "vol/x.tar", "team/a-vol"):
        ids[key] = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    a = S3Backend(bucket, "team/a", endpoint_url=endpoint)
    try:
        assert a.list_incomplete(3600) == []
        time.sleep(2.1)  # whole-second timestamps and one second of slack
        listed = a.list_incomplete(0)
        assert len(listed) == 1 and listed[0].startswith("vol/x.tar (multipart upload ")
        assert ids["team/a/vol/x.tar"] in listed[0]
        assert a.remove_incomplete(0) == listed
        left = sorted(u["Key"] for u in uploads_in(client, bucket))
        assert left == ["team/a-vol", "team/ab/vol/x.tar", "vol/x.tar"]
    finally:
        for up in uploads_in(client, bucket):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])


def test_incomplete_upload_still_fed_is_not_taken(endpoint: str, bucket: str) -> None:
    """Started long enough ago, but a part arrived recently: a live writer's."""
    client = raw_client(endpoint)
    up = client.create_multipart_upload(Bucket=bucket, Key="r/vol/big")["UploadId"]
    try:
        time.sleep(3.1)  # older than 1 s + 1 s of slack + whole-second timestamps
        b = S3Backend(bucket, "r", endpoint_url=endpoint)
        assert len(b.list_incomplete(0)) == 1
        client.upload_part(
            Bucket=bucket, Key="r/vol/big", UploadId=up, PartNumber=1, Body=b"x" * 1024
        )
        assert b.list_incomplete(1) == []
        assert b.remove_incomplete(1) == []
        assert len(uploads_in(client, bucket)) == 1
    finally:
        client.abort_multipart_upload(Bucket=bucket, Key="r/vol/big", UploadId=up)


# -- credentials and buckets -------------------------------------------------------------


@pytest.fixture
def auth_endpoint(
    aws_env: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str]]]:
    """A moto server of our own (in-process) with IAM auth enforced: moto checks
    signatures and policies once ``settings.INITIAL_NO_AUTH_ACTION_COUNT`` requests have
    been served, so we set it to 0 after making a user. Yields the endpoint and the
    valid keys of a user allowed everything on S3."""
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin

    server, url = _start_moto()
    iam = boto3.client("iam", endpoint_url=url, region_name=REGION)
    user = f"volbak-{secrets.token_hex(4)}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="s3",
        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
        '"Action":"s3:*","Resource":"*"}]}',
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    creds = {"id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    reader = f"{user}-ro"  # may list and read, not write
    iam.create_user(UserName=reader)
    iam.put_user_policy(
        UserName=reader,
        PolicyName="s3ro",
        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
        '"Action":["s3:ListBucket","s3:GetObject"],"Resource":"*"}]}',
    )
    rkey = iam.create_access_key(UserName=reader)["AccessKey"]
    creds |= {"ro_id": rkey["AccessKeyId"], "ro_secret": rkey["SecretAccessKey"]}
    bucket = f"volbak-auth-{secrets.token_hex(4)}"
    raw_client(url).create_bucket(Bucket=bucket)
    creds["bucket"] = bucket
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    try:
        yield url, creds
    finally:
        monkeypatch.undo()
        c = raw_client(url, "testing", "testing")
        for k in keys_in(c, bucket):
            c.delete_object(Bucket=bucket, Key=k)
        c.delete_bucket(Bucket=bucket)
        iam.delete_access_key(UserName=user, AccessKeyId=creds["id"])
        iam.delete_user_policy(UserName=user, PolicyName="s3")
        iam.delete_user(UserName=user)
        iam.delete_access_key(UserName=reader, AccessKeyId=creds["ro_id"])
        iam.delete_user_policy(UserName=reader, PolicyName="s3ro")
        iam.delete_user(UserName=reader)
        server.stop()


def test_wrong_credentials_moto_iam(auth_endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    url, creds = auth_endpoint
    bucket = creds["bucket"]

    def backend(key_id: str, secret: str) -> S3Backend:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        return S3Backend(bucket, endpoint_url=url)

    # The right keys work.
    good = backend(creds["id"], creds["secret"])
    good.put_bytes("ok", b"fine")
    assert good.get_bytes("ok") == b"fine"

    for key_id, secret, code in [
        ("AKIAUNKNOWNKEY000000", "whatever", "InvalidAccessKeyId"),
        (creds["id"], "not-the-secret", "SignatureDoesNotMatch"),
    ]:
        bad = backend(key_id, secret)
        for op in (
            lambda b=bad: list(b.list()),
            lambda b=bad: b.put_bytes("x", b"x"),
            lambda b=bad: b.get_bytes("ok"),
        ):
            with pytest.raises(BackendPermissionError) as ei:
                op()
            assert code in str(ei.value)
            assert "AWS_PROFILE" in ei.value.hint and "AWS_ACCESS_KEY_ID" in ei.value.hint

    # Valid keys whose policy does not allow writing: AccessDenied, also for multipart.
    ro = backend(creds["ro_id"], creds["ro_secret"])
    ro.part_size = 5 * MiB
    assert [o.name for o in ro.list()] == ["ok"]
    assert ro.get_bytes("ok") == b"fine"
    for op in (
        lambda: ro.put_bytes("x", b"x"),
        lambda: ro.put_bytes("x", payload(6 * MiB)),
        lambda: ro.delete("ok"),
    ):
        with pytest.raises(BackendPermissionError, match="AccessDenied") as ei:
            op()
        assert "AWS_PROFILE" in ei.value.hint
    assert good.get_bytes("ok") == b"fine"


def test_no_credentials(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    b = S3Backend("any-bucket", endpoint_url=endpoint)
    with pytest.raises(BackendPermissionError) as ei:
        list(b.list())
    assert "AWS_ACCESS_KEY_ID" in ei.value.hint


def test_missing_bucket(endpoint: str) -> None:
    name = f"volbak-missing-{secrets.token_hex(4)}"
    b = S3Backend(name, "p", endpoint_url=endpoint, part_size=5 * MiB)
    ops = [
        lambda: list(b.list()),
        lambda: b.stat("x"),
        lambda: b.get_bytes("x"),
        lambda: b.put_bytes("x", b"small"),
        lambda: b.put_bytes("x", payload(6 * MiB)),  # multipart path
        lambda: b.delete("x"),
    ]
    for op in ops:
        with pytest.raises(BackendError) as ei:
            op()
        assert not isinstance(ei.value, ObjectNotFound)
        assert str(ei.value) == f"bucket '{name}' does not exist at {endpoint}"
        assert ei.value.hint


# -- listing under prefixes --------------------------------------------------------------


def test_repositories_under_prefixes_are_separate(endpoint: str, bucket: str) -> None:
    a = S3Backend(bucket, "team/a", endpoint_url=endpoint)
    ab = S3Backend(bucket, "team/ab", endpoint_url=endpoint)
    root = S3Backend(bucket, endpoint_url=endpoint)
    a.put_bytes("vol/1", b"a1")
    a.put_bytes("vol/2", b"a2")
    ab.put_bytes("vol/1", b"ab1")
    assert sorted(o.name for o in a.list()) == ["vol/1", "vol/2"]
    assert [o.name for o in ab.list()] == ["vol/1"]
    assert [o.name for o in a.list("vol/2")] == ["vol/2"]
    assert sorted(o.name for o in root.list("team/")) == [
        "team/a/vol/1",
        "team/a/vol/2",
        "team/ab/vol/1",
    ]
    assert ab.get_bytes("vol/1") == b"ab1"
    # A console's "folder" marker and foreign keys are not objects of ours.
    root._client.put_object(Bucket=bucket, Key="team/a/folder/", Body=b"")
    assert sorted(o.name for o in a.list()) == ["vol/1", "vol/2"]
    a.delete("vol/1")
    with pytest.raises(ObjectNotFound):
        a.delete("vol/1")
    assert [o.name for o in ab.list()] == ["vol/1"]


def test_list_paginates(endpoint: str, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    b = S3Backend(bucket, "many", endpoint_url=endpoint)
    monkeypatch.setattr(b, "list_page_size", 7)
    for i in range(30):
        b._client.put_object(Bucket=bucket, Key=f"many/v/{i:04d}", Body=b"x")
    assert [o.name for o in b.list("v/")] == [f"v/{i:04d}" for i in range(30)]


def test_errors_on_invalid_list_prefix_are_still_mapped(endpoint: str) -> None:
    # The prefix of list() need not be a valid object name ("pg/"), also in messages.
    b = S3Backend(f"volbak-missing-{secrets.token_hex(4)}", "p", endpoint_url=endpoint)
    with pytest.raises(BackendError, match="does not exist"):
        list(b.list("pg/"))


# -- URLs, options and plugin discovery --------------------------------------------------


def test_open_backend_finds_the_plugin(endpoint: str, bucket: str) -> None:
    b = open_backend(f"s3://{bucket}/x", {"endpoint_url": endpoint})
    assert isinstance(b, S3Backend)
    assert b.url == f"s3://{bucket}/x"
    assert b.prefix == "x"


def test_missing_plugin_hint() -> None:
    # an unknown scheme (a typo, s4://) gets no install line: only known plugins do
    with pytest.raises(BackendMissing) as ei:
        open_backend("foo://x")
    assert "pip install" not in ei.value.hint and "s3" in ei.value.hint


def test_missing_boto3_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3mod, "boto3", None)
    with pytest.raises(BackendMissing) as ei:
        open_backend("s3://bucket")
    assert "pip install volbak-s3" in ei.value.hint


def test_options() -> None:
    with pytest.raises(UsageError, match="colour"):
        S3Backend.from_url("s3://b", {"colour": "blue"})
    with pytest.raises(UsageError):
        S3Backend.from_url("s3://", {})
    with pytest.raises(UsageError):
        S3Backend.from_url("s3://b/../x", {})
    with pytest.raises(UsageError, match="part_size"):
        S3Backend.from_url("s3://b", {"part_size": "1MiB"})
    with pytest.raises(UsageError):
        S3Backend.from_url("s3://b", {"path_style": "maybe"})
    with pytest.raises(UsageError):
        S3Backend.from_url("s3://b", {"sse": "rot13"})
    with pytest.raises(UsageError):
        S3Backend.from_url("s3://b", {"checksums": "never"})
    with pytest.raises(UsageError):
        S3Backend.from_url("s3://b", {"concurrency": "0"})
    with pytest.raises(UsageError, match="profile"):
        S3Backend.from_url("s3://b", {"profile": "nope"})
    b = S3Backend.from_url(
        "s3://b/p/q/",
        {
            "endpoint_url": "http://127.0.0.1:9",
            "region": "eu-west-1",
            "path_style": "true",
            "storage_class": "STANDARD_IA",
            "sse_kms_key_id": "k-1",
            "checksums": "when_required",
            "part_size": "16MiB",
            "concurrency": "8",
        },
    )
    assert (b.bucket, b.prefix, b.part_size, b.concurrency) == ("b", "p/q", 16 * MiB, 8)
    assert b._extra == {
        "StorageClass": "STANDARD_IA",
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "k-1",
    }
    assert b.endpoint == "http://127.0.0.1:9"
    assert b._client.meta.region_name == "eu-west-1"


def test_endpoint_from_environment(endpoint: str, bucket: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    b = open_backend(f"s3://{bucket}")
    b.put_bytes("env", b"1")
    assert b.get_bytes("env") == b"1"


def test_storage_class_and_sse_are_applied(endpoint: str, bucket: str) -> None:
    opts = {
        "endpoint_url": endpoint,
        "storage_class": "STANDARD_IA",
        "sse": "AES256",
        "part_size": "5MiB",
    }
    b = S3Backend.from_url(f"s3://{bucket}", opts)
    b.put_bytes("single", b"x" * 100)
    b.put_bytes("multi", payload(6 * MiB, seed=27))
    client = raw_client(endpoint)
    for key in ("single", "multi"):
        head = client.head_object(Bucket=bucket, Key=key)
        assert head.get("StorageClass") == "STANDARD_IA", key
        assert head.get("ServerSideEncryption") == "AES256", key
