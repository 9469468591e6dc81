#!/usr/bin/env python3
"""Direct volume access against `docker cp`, out and in, on one engine of this host.

    scripts/bench_direct.py --host unix:///run/volbak-NAME/docker.sock [--mib 1024]
                            [--files 50000] [--rounds 3] [--workdir /var/tmp]

Two volumes are filled directly in their Mountpoints (needs root): one file of --mib
MiB of random data, and --files small files (100-4000 bytes, 500 per directory). For
each: the tar stream is read out by `docker cp CTR:/data -` and by DirectSource (both
discarded), then written into a fresh volume by `docker cp - CTR:/` and by DirectTarget
(both from the same tar file in the page cache). Best of --rounds, MB/s of tar stream,
ratios direct / docker cp. Everything it creates carries the label volbak-bench=1 and is
removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker

from volbak.volumes.direct import DirectSource, DirectTarget

LABELS = {"volbak-bench": "1"}
IMAGE = "volbak-bench-empty:latest"


def best(rounds: int, fn: Callable[[], int]) -> tuple[float, int]:
    times, size = [], 0
    for _ in range(rounds):
        start = time.perf_counter()
        size = fn()
        times.append(time.perf_counter() - start)
    return min(times), size


def fill_big(path: Path, mib: int) -> None:
    subprocess.run(["dd", "if=/dev/urandom", f"of={path / 'blob'}", "bs=4M",
                    f"count={mib // 4}", "status=none"], check=True)


def fill_small(path: Path, files: int) -> None:
    rnd = random.Random(1)
    for i in range(files):
        d = path / f"d{i // 500:04d}"
        if i % 500 == 0:
            d.mkdir()
        (d / f"f{i % 500:04d}.txt").write_bytes(rnd.randbytes(rnd.randint(100, 4000)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    args = ap.parse_args()
    client = docker.DockerClient(base_url=args.host, version="auto", timeout=600)
    made_vols: list[str] = []
    made_ctrs: list[str] = []
    if not client.images.list(name=IMAGE):
        client.api.import_image_from_data(
            subprocess.run(["tar", "-c", "-T", "/dev/null"], capture_output=True,
                           check=True).stdout, repository=IMAGE.split(":")[0], tag="latest")

    def volume() -> tuple[str, Path]:
        vol = client.volumes.create(labels=LABELS)
        made_vols.append(vol.name)
        return vol.name, Path(client.api.inspect_volume(vol.name)["Mountpoint"])

    def helper(vol: str, ro: bool) -> str:
        ctr = client.api.create_container(
            IMAGE, "none", labels=LABELS,
            host_config=client.api.create_host_config(
                binds={vol: {"bind": "/data", "mode": "ro" if ro else "rw"}},
                network_mode="none"))
        made_ctrs.append(ctr["Id"])
        return ctr["Id"]

    def drop(cid: str, vol: str) -> None:
        client.api.remove_container(cid, force=True)
        client.api.remove_volume(vol, force=True)
        made_ctrs.remove(cid)
        made_vols.remove(vol)

    rows = []
    try:
        for label, fill, amount in (("1 file", fill_big, args.mib),
                                    ("small files", fill_small, args.files)):
            name, mp = volume()
            fill(mp, amount)
            cid = helper(name, ro=True)
            subprocess.run(["sync"], check=True)

            def cp_out(cid: str = cid) -> int:
                with subprocess.Popen(["docker", "-H", args.host, "cp", f"{cid}:/data", "-"],
                                      stdout=subprocess.PIPE) as p:
                    n = 0
                    while chunk := p.stdout.read(2**20):
                        n += len(chunk)
                assert p.returncode == 0
                return n

            def direct_out(mp: Path = mp) -> int:
                n = 0
                with DirectSource(mp) as src:
                    while chunk := src.read(2**20):
                        n += len(chunk)
                return n

            t_cp_out, size = best(args.rounds, cp_out)
            t_dir_out, _ = best(args.rounds, direct_out)
            rss_out = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            with tempfile.NamedTemporaryFile(dir=args.workdir, suffix=".tar") as tarf:
                with DirectSource(mp) as src:
                    while chunk := src.read(2**20):
                        tarf.write(chunk)
                tarf.flush()

                def cp_in(path: str = tarf.name) -> int:
                    vol, _ = volume()
                    target = helper(vol, ro=False)
                    with open(path, "rb") as f:
                        subprocess.run(["docker", "-H", args.host, "cp", "-", f"{target}:/"],
                                       stdin=f, check=True)
                    drop(target, vol)
                    return os.path.getsize(path)

                def direct_in(path: str = tarf.name) -> int:
                    vol, vmp = volume()
                    with open(path, "rb") as f, DirectTarget(vmp) as tgt:
                        while chunk := f.read(2**20):
                            tgt.write(chunk)
                    client.api.remove_volume(vol, force=True)
                    made_vols.remove(vol)
                    return os.path.getsize(path)

                # Volume creation and removal are inside both timings alike.
                t_cp_in, _ = best(args.rounds, cp_in)
                t_dir_in, _ = best(args.rounds, direct_in)
            rows.append((label, size, t_cp_out, t_dir_out, t_cp_in, t_dir_in, rss_out))
            drop(cid, name)
    finally:
        for cid in made_ctrs:
            client.api.remove_container(cid, force=True)
        for vol in made_vols:
            client.api.remove_volume(vol, force=True)
    print(f"{'volume':<12} {'MB':>6} {'cp out':>8} {'direct':>8} {'ratio':>6}  "
          f"{'cp in':>8} {'direct':>8} {'ratio':>6}")
    for label, size, a, b, c, d, _ in rows:
        mb = size / 1e6
        print(f"{label:<12} {mb:6.0f} {a:7.2f}s {b:7.2f}s {a / b:5.1f}x  "
              f"{c:7.2f}s {d:7.2f}s {c / d:5.1f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB "
          f"(after reading out: {rows[-1][6] / 1024:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
