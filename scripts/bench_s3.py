#!/usr/bin/env python3
"""Throughput and memory of volbak's S3 writer against boto3's own upload_fileobj.

    scripts/bench_s3.py [--size 1GiB] [--part-size 8MiB] [--concurrency 4] [--repeat 1]

Writes the same SIZE bytes twice into a bucket on a local S3 endpoint: once through
S3Backend's writer (write() of 1 MiB chunks, then commit()), once with boto3's
``upload_fileobj`` reading a non-seekable stream of the same bytes, with the same part
size and concurrency (TransferConfig). Each upload runs in a fresh child process that
reports its wall time, its own CPU time and its own peak RSS (resource.getrusage), so the
two are measured alike and the server's memory and CPU are not counted. On a busy
machine wall time is noisy; the client CPU time is the steadier measure of overhead.

The endpoint is VOLBAK_TEST_S3_ENDPOINT if set; otherwise a moto server is started on
127.0.0.1 as a separate process and stopped afterwards. moto keeps objects in memory, so
give the machine about 3 x SIZE of RAM, and note that on one machine the server competes
for the CPU: the figures compare the two clients, not S3.

The data is incompressible random bytes: a 16 MiB random block is made once and the
stream is cut from it at shifting offsets, so making the data costs next to nothing.
Unless VOLBAK_TEST_S3_ENDPOINT is given, every run gets a fresh moto server (moto slows
down as data accumulates, which would favour whichever client ran first); the order
alternates and the best of --repeat runs counts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

MiB = 1024 * 1024
CHUNK = 1 * MiB
POOL = 16 * MiB


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text}")
    unit = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * unit)


def chunks(size: int) -> Iterator[memoryview]:
    """SIZE incompressible bytes in CHUNK pieces, cut from one random block."""
    rng = secrets.token_bytes(POOL + CHUNK)
    view = memoryview(rng)
    sent = 0
    i = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        off = (i * 7919 * 4099) % POOL  # shifting offsets: no two nearby chunks alike
        yield view[off : off + n]
        sent += n
        i += 1


class Stream:
    """A non-seekable file-like object over chunks(), for upload_fileobj."""

    def __init__(self, first: memoryview, rest: Iterator[memoryview]) -> None:
        self._it = rest
        self._rest = first

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if not self._rest:
                try:
                    self._rest = next(self._it)
                except StopIteration:
                    break
            take = len(self._rest) if n < 0 else min(n - len(out), len(self._rest))
            out += self._rest[:take]
            self._rest = self._rest[take:]
        return bytes(out)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


def child(args: argparse.Namespace) -> None:
    """Run one upload in this (fresh) process and print its figures as JSON."""
    from boto3.s3.transfer import TransferConfig
    from volbak_s3 import S3Backend

    key = f"bench/{args.run}-{secrets.token_hex(4)}"
    b = S3Backend(
        args.bucket,
        endpoint_url=args.endpoint,
        part_size=args.part_size,
        concurrency=args.concurrency,
        checksums=args.checksums,
    )
    client = b._client  # the same client set-up for both
    source = chunks(args.size)
    first = next(source)  # the random block is made before the clock starts
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    base_rss = ru0.ru_maxrss * 1024
    t0 = time.perf_counter()
    if args.run == "volbak":
        with b.create_writer(key) as w:
            w.write(first)
            for c in source:
                w.write(c)
            w.commit()
    else:
        cfg = TransferConfig(
            multipart_threshold=args.part_size,
            multipart_chunksize=args.part_size,
            max_concurrency=args.concurrency,
        )
        client.upload_fileobj(Stream(first, source), args.bucket, key, Config=cfg)
    elapsed = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
    head = client.head_object(Bucket=args.bucket, Key=key)
    assert head["ContentLength"] == args.size, head["ContentLength"]
    client.delete_object(Bucket=args.bucket, Key=key)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "cpu": cpu,
                "peak_rss": rss,
                "base_rss": base_rss,
                "etag": head["ETag"],
            }
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                sys.exit("bench_s3.py: the moto server did not start (pip install 'moto[server]')")
            time.sleep(0.1)
    proc.kill()
    sys.exit("bench_s3.py: the moto server did not start within 30 s")


def run_child(args: argparse.Namespace, which: str, bucket: str, endpoint: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--run",
        which,
        "--bucket",
        bucket,
        "--endpoint",
        endpoint,
        "--size",
        str(args.size),
        "--part-size",
        str(args.part_size),
        "--concurrency",
        str(args.concurrency),
        "--checksums",
        args.checksums,
    ]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def one_run(args: argparse.Namespace, which: str) -> dict:
    """One upload; against a fresh moto server unless VOLBAK_TEST_S3_ENDPOINT is given
    (moto slows down as it accumulates data, which would favour whichever runs first)."""
    import boto3

    server = None
    endpoint = os.environ.get("VOLBAK_TEST_S3_ENDPOINT")
    if not endpoint:
        server, endpoint = start_moto()
    bucket = f"volbak-bench-{secrets.token_hex(4)}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    try:
        r = run_child(args, which, bucket, endpoint)
        r["endpoint"] = endpoint + (" (moto, started here)" if server else "")
        return r
    finally:
        for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=bucket)
        client.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=parse_size, default=1 << 30, help="bytes (default 1GiB)")
    ap.add_argument("--part-size", type=parse_size, default=8 * MiB, help="default 8MiB")
    ap.add_argument("--concurrency", type=int, default=4, help="default 4")
    ap.add_argument(
        "--checksums",
        choices=["when_supported", "when_required"],
        default="when_supported",
        help="botocore's request/response checksum setting, for both clients",
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the best counts")
    ap.add_argument("--run", choices=["volbak", "boto3"], help=argparse.SUPPRESS)
    ap.add_argument("--bucket", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    if args.run:
        child(args)
        return

    print(
        f"{args.size / MiB:.0f} MiB of random data, part size {args.part_size / MiB:.0f} MiB, "
        f"concurrency {args.concurrency}, checksums {args.checksums}, {args.repeat} runs each "
        "(alternating)",
        flush=True,
    )
    runs: dict[str, list[dict]] = {"volbak": [], "boto3": []}
    for i in range(args.repeat):
        for which in ("volbak", "boto3") if i % 2 == 0 else ("boto3", "volbak"):
            r = one_run(args, which)
            runs[which].append(r)
            print(
                f"  run {i + 1} {which:<6} {args.size / MiB / r['seconds']:7.1f} MiB/s  "
                f"client CPU {r['cpu']:5.2f} s  peak RSS {r['peak_rss'] / MiB:6.1f} MiB",
                flush=True,
            )
    print(f"endpoint {runs['volbak'][0]['endpoint']}")
    summary: dict[str, dict[str, float]] = {}
    for which, label in (
        ("volbak", "volbak S3Backend writer"),
        ("boto3", "boto3 upload_fileobj"),
    ):
        rs = runs[which]
        best = min(r["seconds"] for r in rs)
        med = statistics.median(r["seconds"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        rss = max(r["peak_rss"] for r in rs)
        base = min(r["base_rss"] for r in rs)
        summary[which] = {"best": best, "median": med}
        print(
            f"  {label:<24} best {args.size / MiB / best:6.1f} MiB/s"
            f"  median {args.size / MiB / med:6.1f} MiB/s"
            f"  client CPU {cpu:5.2f} s  peak RSS {rss / MiB:6.1f} MiB"
            f" (+{(rss - base) / MiB:.1f} over {base / MiB:.1f} before the upload)"
        )
    v, b = summary["volbak"], summary["boto3"]
    print(
        f"  throughput ratio volbak / boto3: best {b['best'] / v['best']:.2f}, "
        f"median {b['median'] / v['median']:.2f}"
    )
    bound = args.part_size * (args.concurrency + 1)
    print(f"  volbak's documented buffer bound: {bound / MiB:.0f} MiB (part size x (c + 1))")


if __name__ == "__main__":
    main()
