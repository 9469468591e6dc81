"""Backup: volume (directly on the host, or a helper container and the archive API)
-> tar -> repository (compress -> [age] -> hash -> backend, or dedup chunks).

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
from collections.abc import Callable, Sequence
from typing import Any

from .. import FORMAT_VERSION, __version__
from ..engine import (
    ARCHIVE_ROOT,
    Engine,
    container_volumes,
    containers_using,
    describe_container,
    inspect_container,
    inspect_volume,
    sweep_stale_helpers,
    volume_size,
)
from ..errors import NotFoundError
from ..repository import BackupInfo, Manifest, Repository, make_stamp
from ..repository.format import BackupWriter
from ..repository.manifest import iso
from ..stream import compress
from ..stream.pipeline import pump_into
from ..stream.tar import TarParser
from ..util.progress import Progress
from ..util.signals import deferred
from ..volumes import TreeSource, open_source


@dataclasses.dataclass
class BackupOptions:
    compression: str = "zstd"
    recipients: Sequence[Any] = ()  # age Recipient objects; empty = not encrypted
    helper_image: str | None = None
    progress: bool = False
    source: str = "auto"  # auto | direct | api (volbak.volumes.select)
    exclude: Sequence[str] = ()  # patterns of paths inside the volume to leave out
    cache: bool = True  # dedup + direct: reuse unchanged files' chunks (volumes.filecache)
    sha256: bool = False  # archive: record the stored object's SHA-256 beside its BLAKE3


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
    compress.check(opts.compression)
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
    total = volume_size(engine, volume) if opts.progress else None
    t0 = time.monotonic()
    # Three threads: the pump reads the volume, this one scans and compresses, the
    # repository writer's drain encrypts, hashes and stores.
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(open_source(engine, volume, vol, ARCHIVE_ROOT, opts.source,
                                              opts.helper_image))
        # A writer may store something as it is made (the dedup lock and chunk list):
        # held signals make "made" and "owned by this with block" one step.
        with deferred():
            writer = stack.enter_context(repo.create_backup(
                volume, started, compression=opts.compression, recipients=opts.recipients,
                sha256=opts.sha256))
        bar = stack.enter_context(Progress(f"backup {volume}", total, opts.progress))
        tar, cache = stream_into(src, writer, volume, vol, opts, bar.update)
        manifest = Manifest(
            volume={
                "name": volume,
                "driver": vol.get("Driver"),
                "driver_options": vol.get("Options") or {},
                "labels": vol.get("Labels") or {},
                "scope": vol.get("Scope"),
            },
            created=iso(started),
            tar={**tar, "changed_while_read": src.changed()},
            mount_path=mount_path,
            archive_root=ARCHIVE_ROOT,
            containers=[describe_container(c) for c in users],
            container=container,
            set=set_id,
            source_engine={"url": engine.url, "host": socket.gethostname()},
            source=src.kind,
            warnings=src.warnings(),
            format=FORMAT_VERSION,
            volbak_version=__version__,
        )
        if opts.exclude:
            manifest.extra["exclude"] = list(opts.exclude)
        if cache is not None:
            manifest.extra["file_cache"] = cache.stats.as_dict()
        manifest.duration_seconds = round(time.monotonic() - t0, 3)
        info = writer.commit(manifest)
        if cache is not None:
            cache.save()  # only after the manifest: a failed backup leaves the old cache
            # what the host's cache became is this run's news, not part of the backup
            info.manifest.extra["file_cache"] = cache.stats.as_dict()
        return info


def stream_into(src: TreeSource, writer: BackupWriter, volume: str, vol: dict[str, Any],
                opts: BackupOptions, progress: Callable[[int], Any] | None = None
                ) -> tuple[dict[str, int], Any]:
    """The volume's tar stream into ``writer``. Returns the stream's size, entries and
    file bytes (the manifest's ``tar``), and the file cache session (``volumes.
    filecache``) to save after the commit, or None where the cache does not apply."""
    direct = src.direct
    read = src.read
    if opts.exclude and direct is not None:
        # left out during the walk: the stream's offsets stay the file cache's
        direct.exclude(opts.exclude)
    elif opts.exclude:
        from ..stream.exclude import ExcludeFilter

        read = ExcludeFilter(src.read, opts.exclude, ARCHIVE_ROOT).read
    cache = _file_cache(src, writer, volume, vol, opts)
    write = writer.write
    if cache is not None:
        from ..volumes.filecache import Reused

        def write(data: Any) -> None:
            if isinstance(data, Reused):
                writer.append_known(data.pairs(), len(data))  # type: ignore[attr-defined]
            else:
                writer.write(data)

    if direct is not None:
        # volbak wrote this stream itself and counted it as it went: parsing it again
        # would find nothing new, and took a third of a small-file backup's time
        # (50,000 files: 1.6 s against 1.05 s), the walk waiting for the GIL. For the
        # same reason the walk of many small files runs in a process of its own, where
        # its bytes are plain (50,000 files: 0.94-1.26 s against 1.16-1.44 s; it would
        # cost 1 GiB in one file 2.5 s against 1.95 s, the pipe's copies).
        if cache is None and direct.many_small_files():
            read = direct.forked()
        size = pump_into(read, write, None, progress)
        r = direct.report
        return {"size": size, "entries": r.entries, "file_bytes": r.file_bytes}, cache
    parser = TarParser(root=ARCHIVE_ROOT, what=f"volume '{volume}' as read")
    pump_into(read, write, parser.feed, progress)
    parser.check_complete()
    return {"size": parser.tar_bytes, "entries": parser.entries,
            "file_bytes": parser.file_bytes}, cache


def _file_cache(src: Any, writer: Any, volume: str, vol: dict[str, Any],
                opts: BackupOptions) -> Any:
    """The file cache session of a dedup backup read directly on the host, else None.
    With ``--no-cache`` nothing is reused but the cache is still written afresh."""
    if src.direct is None or not hasattr(writer, "append_known"):
        return None
    cut = writer.file_cut_min
    if not cut:
        return None
    from ..volumes import filecache

    scope = filecache.Scope(writer.repository_id, volume, str(vol.get("Mountpoint")),
                            (cut, *writer.chunker_params))
    session = filecache.start(scope, cut, writer.has_chunk, enabled=opts.cache,
                              why_off="off (--no-cache)")
    writer.watch_chunks(session.on_chunk)
    src.direct.use_cache(session)
    return session


def backup_container(
    engine: Engine, repo: Repository, name: str, opts: BackupOptions,
    on_stored: Callable[[BackupInfo], Any] | None = None,
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
    out = []
    for vol, path in vols:
        out.append(backup_volume(engine, repo, vol, opts, container=cname, mount_path=path,
                                 set_id=set_id, flag="--container"))
        if on_stored:
            on_stored(out[-1])
    return out
