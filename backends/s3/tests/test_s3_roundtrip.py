"""A real volume backed up to, listed in, verified from and restored from S3 (moto's
HTTP server and SeaweedFS's S3 gateway on 127.0.0.1, see ``s3_server``), through the CLI
and the volbak-s3 plugin."""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from cli_runner import cli_runner
from fidelity import diff_listings, listing, populate, volume_path

pytestmark = pytest.mark.docker


@pytest.fixture
def s3_endpoint(s3_server, monkeypatch):
    """The server's URL, its keys in the environment (for boto3 and the CLI)."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server.endpoint


@pytest.fixture
def bucket(s3_endpoint):
    s3 = boto3.session.Session().client("s3", endpoint_url=s3_endpoint)
    name = f"volbak-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=obj["Key"])
    for up in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
    s3.delete_bucket(Bucket=name)


@pytest.fixture
def run(docker_host, s3_endpoint, bucket, capsys):
    return cli_runner(docker_host, f"s3://{bucket}/nightly", capsys,
                      ["-o", f"endpoint_url={s3_endpoint}", "-o", "part_size=5MiB"])


def test_round_trip_through_s3(resources, docker_client, run, s3_endpoint, bucket):
    src = resources.volume().name
    populate(volume_path(docker_client, src), big=24 * 2**20)  # several 5 MiB parts
    backup = json.loads(run("backup", src, "--compress", "none", "--json")[0])
    assert backup["size"] > 20 * 2**20
    s3 = boto3.session.Session().client("s3", endpoint_url=s3_endpoint)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"nightly/{src}/{backup['id'].split('@')[1]}.manifest.json",
                    f"nightly/{src}/{backup['id'].split('@')[1]}.tar"]
    head = s3.head_object(Bucket=bucket, Key=keys[1])
    assert "-" in head["ETag"]  # a multipart upload
    assert [x["id"] for x in json.loads(run("list", "--json")[0])] == [backup["id"]]
    run("verify", backup["id"])
    target = resources.track_volume(resources.name("volbak-restored"))
    run("restore", backup["id"], "--to-volume", target)
    a, b = listing(volume_path(docker_client, src)), listing(volume_path(docker_client, target))
    assert a == b, diff_listings(a, b)


def test_missing_bucket_is_a_clear_error(resources, docker_client, run):
    src = resources.volume().name
    _, err = run("backup", src, repo_path="s3://volbak-no-such-bucket/x", expect=5)
    assert "volbak-no-such-bucket" in err and "hint:" in err
