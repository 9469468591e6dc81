"""Backup: helper container -> tar -> compress -> [age] -> sha256 -> backend.

Nothing is staged on disk. The archive object is committed first, the manifest
last: a backup without a manifest is never listed, so a crash or a full disk leaves
nothing that looks like a backup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import socket
import time
from collections.abc import Sequence
from typing import Any

from .. import FORMAT_VERSION, __version__
from ..engine.archive import ArchiveStream
from ..engine.client import (
    ARCHIVE_ROOT,
    Engine,
    VolumeMount,
    container_volumes,
    containers_using,
    describe_container,
    helper,
    inspect_container,
    inspect_volume,
    sweep_stale_helpers,
    volume_size,
)
from ..errors import NotFoundError, UsageError
from ..repository import MANIFEST_SUFFIX, BackupInfo, Repository, make_stamp
from ..stream import compress
from ..stream.pump import Drain, HashSink, Pump
from ..stream.tar import TarScanner
from ..util.progress import Progress
from ..util.signals import deferred


@dataclasses.dataclass
class BackupOptions:
    compression: str = "zstd"
    recipients: Sequence[Any] = ()  # age Recipient objects; empty = not encrypted
    helper_image: str | None = None
    progress: bool = False


def _names(repo: Repository, volume: str, now: dt.datetime, suffix: str) -> tuple[str, str]:
    """A stamp not used yet for this volume, and the archive's object name."""
    base = make_stamp(now)
    for n in range(1000):
        stamp = base if n == 0 else f"{base}-{n}"
        data = f"{volume}/{stamp}.tar{suffix}"
        try:
            repo.backend.stat(f"{volume}/{stamp}{MANIFEST_SUFFIX}")
        except NotFoundError:
            try:
                repo.backend.stat(data)
            except NotFoundError:
                return stamp, data
    raise UsageError(f"too many backups of '{volume}' in the same second")


def _encryption(recipients: Sequence[Any]) -> dict[str, Any] | None:
    if not recipients:
        return None
    from ..crypto.age import ScryptRecipient

    return {
        "format": "age-v1",
        "recipients": [str(r) for r in recipients if not isinstance(r, ScryptRecipient)],
        "passphrase": any(isinstance(r, ScryptRecipient) for r in recipients),
    }


def backup_volume(
    engine: Engine,
    repo: Repository,
    volume: str,
    opts: BackupOptions,
    *,
    container: str | None = None,
    mount_path: str | None = None,
    set_id: str | None = None,
    flag: str = "VOLUME",
) -> BackupInfo:
    """Back up one named volume; returns the listed backup."""
    compression = compress.check(opts.compression)
    vol = inspect_volume(engine, volume, flag)
    users = [c.attrs for c in containers_using(engine.client, volume, running_only=False)]
    if mount_path is None:
        mount_path = next(
            (m["Destination"] for c in users for m in c.get("Mounts") or []
             if m.get("Name") == volume),
            "/" + ARCHIVE_ROOT,
        )
    sweep_stale_helpers(engine)
    started = dt.datetime.now(dt.UTC)
    suffix = compress.SUFFIX[compression] + (".age" if opts.recipients else "")
    stamp, data_name = _names(repo, volume, started, suffix)
    total = volume_size(engine, volume) if opts.progress else None
    t0 = time.monotonic()

    scanner = TarScanner()
    comp = compress.compressor(compression)
    try:
        with helper(engine, [VolumeMount(volume, "/" + ARCHIVE_ROOT)], opts.helper_image) as cid, \
                repo.backend.create_writer(data_name) as writer, \
                Progress(f"backup {volume}", total, opts.progress) as bar:
            # Three threads: the pump reads Docker, this one scans and compresses, the
            # drain encrypts, hashes and writes.
            sink = HashSink(writer.write)
            encrypt = None
            if opts.recipients:
                from ..crypto.age import EncryptWriter

                encrypt = EncryptWriter(sink, list(opts.recipients))
            drain = Drain(encrypt.write if encrypt else sink.write)
            src = ArchiveStream(engine, cid, "/" + ARCHIVE_ROOT)
            pump = Pump(src.read)
            tar_size = 0
            try:
                for chunk in pump:
                    scanner.feed(chunk)
                    tar_size += len(chunk)
                    drain.write(comp.write(chunk))
                    bar.update(len(chunk))
                scanner.check_complete()
                drain.write(comp.finish())
                drain.close()
                if encrypt:
                    encrypt.close()
            except BaseException:
                drain.abandon()
                raise
            finally:
                pump.stop()
                src.close()
            stored = writer.commit()

        manifest = {
            "format": FORMAT_VERSION,
            "volbak_version": __version__,
            "created": started.isoformat().replace("+00:00", "Z"),
            "duration_seconds": round(time.monotonic() - t0, 3),
            "volume": {
                "name": volume,
                "driver": vol.get("Driver"),
                "driver_options": vol.get("Options") or {},
                "labels": vol.get("Labels") or {},
                "scope": vol.get("Scope"),
            },
            "mount_path": mount_path,
            "archive_root": ARCHIVE_ROOT,
            "containers": [describe_container(c) for c in users],
            "container": container,
            "set": set_id,
            "source_engine": {"url": engine.url, "host": socket.gethostname()},
            "compression": compression,
            "encryption": _encryption(opts.recipients),
            "object": {"name": data_name, "size": stored.size, "sha256": sink.hexdigest()},
            "tar": {"size": tar_size, "entries": scanner.entries, "file_bytes": scanner.file_bytes},
        }
        return repo.write_manifest(volume, stamp, manifest)
    except BaseException:
        # Until the manifest is written, any way out (an error, Ctrl-C, or SIGTERM
        # landing anywhere, even just after the archive's commit) removes the archive:
        # a backup is there whole or not at all. The name is this run's own (_names).
        # If the manifest did get written, the backup is complete: keep it.
        with deferred(), contextlib.suppress(Exception):
            try:
                repo.backend.stat(f"{volume}/{stamp}{MANIFEST_SUFFIX}")
            except NotFoundError:
                repo.backend.delete(data_name)
        raise


def backup_container(
    engine: Engine, repo: Repository, name: str, opts: BackupOptions
) -> list[BackupInfo]:
    """Back up every volume of a container, as one set (restorable together)."""
    attrs = inspect_container(engine, name)
    vols = container_volumes(attrs)
    if not vols:
        raise NotFoundError(
            f"container '{name}' has no volumes to back up (--container)",
            hint="bind mounts are not backed up; use 'docker inspect' to see its mounts",
        )
    cname = attrs["Name"].lstrip("/")
    set_id = f"{cname}@{make_stamp(dt.datetime.now(dt.UTC))}"
    return [
        backup_volume(engine, repo, vol, opts, container=cname, mount_path=path,
                      set_id=set_id, flag="--container")
        for vol, path in vols
    ]
