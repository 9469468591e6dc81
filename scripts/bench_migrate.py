#!/usr/bin/env python3
"""Benchmark: `volbak migrate` of a random-data volume between two engines, against
`docker -H SRC cp SRCCTR:/data - | docker -H DST cp - DSTCTR:/` in the same run.

    scripts/bench_migrate.py                       # starts (and stops) two private engines
    scripts/bench_migrate.py --src URL --dst URL   # use running engines (volumes must be
                                                # local: the data is written on this host)
    scripts/bench_migrate.py --size-mib 256 --runs 2 --compress gzip

Prints MB/s (10^6 bytes of tar stream per second) of both, the ratios, and volbak's
peak RSS. volbak runs as a subprocess (`python -m volbak migrate ... --json`), so
its RSS is measured alone (wait4). Runs alternate between the two methods; the page
cache is warmed first. Figures: the median of the runs.

Two volbak figures are given: end to end (the whole command: connect, helpers, the
transfer and the verification, which reads the whole target volume back once more) and
the transfer alone (from the command's JSON summary), which is what `docker cp | docker
cp` does (without any check).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
if (VENV / "bin" / "python").exists() and Path(sys.prefix).resolve() != VENV.resolve():
    os.execv(VENV / "bin" / "python", [str(VENV / "bin" / "python"), __file__, *sys.argv[1:]])
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

ENGINES = ("bench-mig1", "bench-mig2")
IMAGE = "volbak-helper:empty"


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def engine(action: str, name: str) -> str:
    return sh(str(ROOT / "scripts" / "engine"), action, name)


def ensure_image(client: docker.DockerClient) -> None:
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        buf = io.BytesIO()
        tarfile.open(fileobj=buf, mode="w").close()
        repo, tag = IMAGE.split(":")
        client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)


def fill(path: Path, size: int) -> None:
    with open(path / "random.bin", "wb") as f:
        left = size
        while left:
            n = min(left, 8 * 2**20)
            f.write(os.urandom(n))
            left -= n
    (path / "small.txt").write_text("a small file after the big one\n")


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stdout) of one process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read()  # type: ignore[union-attr]
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    secs = time.monotonic() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()}")
    return secs, usage.ru_maxrss, out.decode()


def docker_cp(src: str, sctr: str, dst: str, dctr: str) -> float:
    t0 = time.monotonic()
    p1 = subprocess.Popen(["docker", "-H", src, "cp", f"{sctr}:/data", "-"],
                          stdout=subprocess.PIPE)
    p2 = subprocess.Popen(["docker", "-H", dst, "cp", "-", f"{dctr}:/"], stdin=p1.stdout)
    p1.stdout.close()  # type: ignore[union-attr]
    rc2, rc1 = p2.wait(), p1.wait()
    if rc1 or rc2:
        sys.exit(f"docker cp pipeline failed ({rc1}, {rc2})")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", help="source engine URL (default: start private engines)")
    ap.add_argument("--dst", help="target engine URL")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compress", default="none", choices=["none", "gzip"])
    args = ap.parse_args()
    if bool(args.src) != bool(args.dst):
        ap.error("give both --src and --dst, or neither")
    started: list[str] = []
    if not args.src:
        for name in ENGINES:
            started.append(name)
            engine("start", name)
        args.src, args.dst = (engine("host", n) for n in ENGINES)
    c1 = docker.DockerClient(base_url=args.src, version="auto", timeout=600)
    c2 = docker.DockerClient(base_url=args.dst, version="auto", timeout=600)
    tag = uuid.uuid4().hex[:8]
    vol, target = f"bench-src-{tag}", f"bench-dst-{tag}"
    made: list[tuple[docker.DockerClient, str, str]] = []  # (client, kind, name)
    try:
        for c in (c1, c2):
            ensure_image(c)
        c1.volumes.create(vol)
        made.append((c1, "volume", vol))
        fill(Path(c1.volumes.get(vol).attrs["Mountpoint"]), args.size_mib * 2**20)
        sctr = c1.containers.create(IMAGE, "x", volumes={vol: {"bind": "/data", "mode": "ro"}},
                                    network_mode="none")
        made.append((c1, "container", sctr.id))
        # warm the page cache
        subprocess.run(f"docker -H {args.src} cp {sctr.id}:/data - >/dev/null", shell=True,
                       check=True)

        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        volbak_cmd = [sys.executable, "-m", "volbak", "migrate", vol, "--from", args.src,
                      "--to", args.dst, "--as", target, "--json", "--compress", args.compress]
        cp_s, vb_s, vb_transfer, vb_verify, rss = [], [], [], [], []
        size = 0
        for i in range(args.runs):
            # docker cp | docker cp into a fresh volume
            c2.volumes.create(target)
            dctr = c2.containers.create(IMAGE, "x", network_mode="none",
                                        volumes={target: {"bind": "/data", "mode": "rw"}})
            try:
                cp_s.append(docker_cp(args.src, sctr.id, args.dst, dctr.id))
            finally:
                dctr.remove(force=True)
                c2.volumes.get(target).remove(force=True)
            # volbak migrate into a new volume
            secs, kib, out = run_measured(volbak_cmd, env)
            summary = json.loads(out)
            c2.volumes.get(target).remove(force=True)
            size = summary["bytes"]
            vb_s.append(secs)
            vb_transfer.append(summary["transfer_seconds"])
            vb_verify.append(summary["verify_seconds"])
            rss.append(kib)
            print(f"run {i + 1}: docker cp {size / cp_s[-1] / 1e6:.0f} MB/s; volbak "
                  f"{size / secs / 1e6:.0f} MB/s end to end, "
                  f"{size / summary['transfer_seconds'] / 1e6:.0f} MB/s transfer, "
                  f"verify {summary['verify_seconds']:.2f} s, RSS {kib / 1024:.0f} MiB",
                  flush=True)
        med = statistics.median
        cp_mbs = size / med(cp_s) / 1e6
        vb_mbs = size / med(vb_s) / 1e6
        tr_mbs = size / med(vb_transfer) / 1e6
        print(f"\nvolume: {args.size_mib} MiB random data, tar stream {size} bytes; "
              f"{args.runs} runs, median; wire compression {args.compress}")
        print(f"source {args.src} -> target {args.dst}")
        print(f"docker cp | docker cp:        {cp_mbs:7.0f} MB/s  ({med(cp_s):.2f} s)")
        print(f"volbak migrate, end to end:   {vb_mbs:7.0f} MB/s  ({med(vb_s):.2f} s, "
              f"verify {med(vb_verify):.2f} s)   ratio {vb_mbs / cp_mbs:.2f}")
        print(f"volbak migrate, transfer:     {tr_mbs:7.0f} MB/s  ({med(vb_transfer):.2f} s)"
              f"   ratio {tr_mbs / cp_mbs:.2f}")
        print(f"volbak peak RSS:              {max(rss) / 1024:7.0f} MiB")
    finally:
        for client, kind, name in reversed(made):
            with contextlib.suppress(Exception):
                if kind == "container":
                    client.api.remove_container(name, force=True)
                else:
                    client.api.remove_volume(name, force=True)
        with contextlib.suppress(Exception):
            c2.api.remove_volume(target, force=True)
        c1.close()
        c2.close()
        for name in started:
            engine("stop", name)


if __name__ == "__main__":
    main()
