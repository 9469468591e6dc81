#!/usr/bin/env python3
"""Direct volume access against `docker cp`, out and in, on one engine of this host.

    scripts/bench_direct.py --host unix:///run/volbak-NAME/docker.sock [--mib 1024]
                            [--files 50000] [--rounds 3] [--workdir /var/tmp]
                            [--incremental-mib 5120 [--only-incremental]]

Two volumes are filled directly in their Mountpoints (needs root): one file of --mib
MiB of random data, and --files small files (100-4000 bytes, 500 per directory). For
each: the tar stream is read out by `docker cp CTR:/data -` and by DirectSource (both
discarded), then written into a fresh volume by `docker cp - CTR:/` and by DirectTarget
(both from the same tar file in the page cache). Best of --rounds, MB/s of tar stream,
ratios direct / docker cp. Everything it creates carries the label volbak-bench=1 and is
removed at the end.

With --incremental-mib N, the dedup file cache (issue 14): a volume of N MiB in random
files of 256 KiB to 8 MiB (plus 2,000 small files) is backed up into an encrypted dedup
repository through the direct source (backup_volume, as `volbak backup` does); then 1%
of the files get an 8 KiB page rewritten and it is backed up again: with the file cache,
and again with --no-cache. Each against `docker cp CTR:/data -` of the whole volume in
the same run (best of --rounds). The volume is filled, then left 2 s, so that no file
is "racily clean" (filecache.RACY_NS) when the first backup reads it.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
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


def fill_files(path: Path, mib: int) -> list[Path]:
    rnd = random.Random(7)
    big: list[Path] = []
    left = mib * 2**20
    while left > 0:
        d = path / f"d{len(big) // 100:03d}"
        d.mkdir(exist_ok=True)
        size = min(left, rnd.randint(256 * 2**10, 8 * 2**20))
        p = d / f"blob{len(big):05d}"
        with open(p, "wb") as f:
            for off in range(0, size, 2**22):
                f.write(os.urandom(min(2**22, size - off)))
        big.append(p)
        left -= size
    (path / "small").mkdir()
    for i in range(2000):
        (path / f"small/f{i:04d}").write_bytes(rnd.randbytes(rnd.randint(100, 4000)))
    return big


def bench_incremental(args: argparse.Namespace, client: docker.DockerClient,
                      volume: Callable[[], tuple[str, Path]],
                      helper: Callable[[str, bool], str]) -> None:
    from volbak.crypto.age import X25519Identity
    from volbak.engine.client import connect
    from volbak.local import LocalBackend
    from volbak.ops.backup import BackupOptions, backup_volume
    from volbak.repository import Repository

    work = Path(tempfile.mkdtemp(prefix="volbak-bench-inc-", dir=args.workdir))
    os.environ["VOLBAK_STATE_DIR"] = str(work / "state")
    os.environ["VOLBAK_HOST_KEY"] = str(work / "host.key")
    try:
        name, mp = volume()
        t = time.perf_counter()
        files = fill_files(mp, args.incremental_mib)
        subprocess.run(["sync"], check=True)
        print(f"filled {len(files)} big files, {args.incremental_mib} MiB, "
              f"in {time.perf_counter() - t:.0f} s", flush=True)
        time.sleep(2.1)
        cid = helper(name, True)

        def cp_out() -> int:
            with subprocess.Popen(["docker", "-H", args.host, "cp", f"{cid}:/data", "-"],
                                  stdout=subprocess.PIPE) as p:
                n = 0
                while chunk := p.stdout.read(2**20):
                    n += len(chunk)
            assert p.returncode == 0
            return n

        t_cp, size = best(args.rounds, cp_out)
        print(f"docker cp out: {t_cp:.2f} s ({size / 1e6 / t_cp:.0f} MB/s)", flush=True)
        repo = Repository(LocalBackend(work / "repo"))
        repo.init("dedup", [X25519Identity.generate().recipient()])
        engine = connect(args.host)

        def run(cache: bool = True) -> tuple[float, object]:
            t0 = time.perf_counter()
            info = backup_volume(engine, repo, name, BackupOptions(source="direct",
                                                                  cache=cache))
            return time.perf_counter() - t0, info

        t_first, first = run()
        rnd = random.Random(11)
        changed = rnd.sample(files, max(1, len(files) // 100))
        for p in changed:
            with open(p, "r+b") as f:
                f.seek(rnd.randrange(0, max(1, p.stat().st_size - 8192)) // 8192 * 8192)
                f.write(os.urandom(8192))
        time.sleep(2.1)  # the changed files must not be racily clean for the next run
        t_inc, inc = run()
        t_nc, nc = run(cache=False)
        fc = inc.manifest.extra["file_cache"]  # type: ignore[attr-defined]
        print(f"volume {size / 1e6:.0f} MB tar, {len(files)} big files, "
              f"{len(changed)} changed (1%)")
        for label, secs, info in (("first dedup backup", t_first, first),
                                  ("incremental, file cache", t_inc, inc),
                                  ("incremental, --no-cache", t_nc, nc)):
            m = info.manifest  # type: ignore[attr-defined]
            print(f"{label:<26} {secs:7.2f} s  {secs / t_cp:5.3f}x docker cp  "
                  f"stored {m.storage['new_bytes'] / 1e6:8.1f} MB new")
        print(f"file cache: {fc['files_reused']} files reused "
              f"({fc['bytes_reused'] / 1e6:.0f} MB), {fc['files_read']} read; "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        engine.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", required=True)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--incremental-mib", type=int, default=0)
    ap.add_argument("--only-incremental", action="store_true")
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
        if args.incremental_mib:
            bench_incremental(args, client, volume, helper)
            if args.only_incremental:
                return 0
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
