"""Restore: repository -> checked tar stream -> a *new* target, then read back.

Safety rules: a target volume that exists is never written directly. A new target is
created, filled, and removed again if anything fails. An existing one (empty, or
non-empty with ``force``) is filled only from a staging volume that already holds
the whole, verified archive.

Writes go through ``PUT /containers/{id}/archive`` at "/" of a helper whose volume
is mounted at ``/<archive_root>``: extracting at "/" (not at the mount path) is what
lets the engine find a hardlink's target again and keep its setuid bit, and it
restores the volume root's own mode and owner from the archive's first entry.

A restore reports success only after reading the written volume back: the canonical
per-entry digest (stream/tar.py) of what was sent must equal the target's.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from .. import volumes
from ..engine import (
    Engine,
    check_volume_name,
    container_exists,
    containers_using,
    create_data_container,
    ensure_helper_image,
    inspect_volume,
    sweep_stale_helpers,
    volume_exists,
    volume_for,
    volume_is_empty,
)
from ..errors import IntegrityError, TargetExistsError
from ..repository import BackupInfo, BackupReader, Repository
from ..repository.manifest import Manifest
from ..stream.pipeline import checked_chunks
from ..stream.tar import TarParser
from ..util.progress import Progress
from ..volumes import owners_comparable, read_back, write_tree
from ..volumes.select import choose
from . import recovery
from .recovery import fill_staging, replace_from_staging
from .stopper import stopped

RESTORED_LABEL = "volbak.restored-from"


@dataclasses.dataclass
class RestoreOptions:
    identities: Sequence[Any] = ()  # age Identity objects, for encrypted backups
    force: bool = False
    helper_image: str | None = None
    progress: bool = False
    source: str = "auto"  # auto | direct | api (volbak.volumes.select)
    on_warning: Callable[[str], Any] | None = None
    stop: bool = False  # stop running users of a --force target while it is replaced
    stop_timeout: int | None = None
    on_event: Callable[[str], None] | None = None


@dataclasses.dataclass
class RestoreResult:
    backup: str
    volume: str
    tar_bytes: int
    entries: int
    seconds: float
    replaced: bool = False
    # How the restored volume was checked: read back and compared entry by entry with
    # what was sent ("read-back"), or so without owners ("read-back-without-owners"),
    # where the engine's archive API replaces them on read (Podman; documented).
    verified: str = "read-back"

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _many_small_files(m: Manifest) -> bool:
    """Whether a direct restore of the backup ``m`` should write in a second process:
    for many small files it saves about a quarter of the time (the parse and the
    writes are both mostly Python); big files would only pay for two more copies of
    their data."""
    return volumes.many_small_files(m.tar.get("entries") or 0, m.tar.get("file_bytes") or 0)


def _fill(engine: Engine, reader: BackupReader, info: BackupInfo, volume: str,
          opts: RestoreOptions) -> TarParser:
    """Stream the backup into ``volume``, then read it back the same way and compare."""
    m = info.manifest
    root = m.archive_root
    vol = inspect_volume(engine, volume)
    kind, _ = choose(engine.url, vol, opts.source, write=True)
    owners = owners_comparable(engine, kind)
    parser = TarParser(digest=True, root=root, owners=owners, all_xattrs=kind == "direct",
                       what=f"backup {info.id}")
    # The direct target parses the stream to extract it: it digests it in the same pass.
    # (A second parser in the reader thread cost ~1 s of 6 on 50,000 small files: both
    # passes are Python under one GIL.) The archive API gets the stream as it is.
    direct = kind == "direct"
    with Progress(f"restore {info.volume}", m.tar.get("size"), opts.progress) as bar:
        chunks = checked_chunks(reader.read, None if direct else parser.feed,
                                None if direct else parser.check_complete, progress=bar.update)
        written = write_tree(engine, volume, vol, root, chunks, kind, opts.helper_image,
                             parser if direct else None, fork=direct and _many_small_files(m))
        if direct:
            parser.check_complete()
    with Progress(f"verify {volume}", parser.tar_bytes, opts.progress) as bar:
        got = read_back(engine, volume, vol, root, kind, owners=owners, all_xattrs=kind == "direct",
                        image=opts.helper_image, progress=bar.update, sent=parser,
                        written=written)
    if got.hexdigest() != parser.hexdigest() or got.entries != parser.entries:
        raise IntegrityError(
            f"verification failed: volume '{volume}' on {engine.url} does not hold what was "
            f"read from backup {info.id} ({got.entries} entries, {got.file_bytes} file "
            f"bytes read back; {parser.entries} entries, {parser.file_bytes} file bytes sent)",
            hint="the engine did not store the archive faithfully (full disk? a filesystem "
            "without uid/xattr support? an engine whose archive API differs?); nothing was "
            "replaced",
        )
    if kind != "direct" and parser.attr_entries and opts.on_warning:
        opts.on_warning(
            f"{parser.attr_entries} entries of backup {info.id} carry extended attributes "
            "or ACLs that the engine's archive API cannot write: they were not restored "
            "(restore on the engine's host with --source direct to keep them)")
    return parser


def restore_to_volume(
    engine: Engine, repo: Repository, info: BackupInfo, target: str, opts: RestoreOptions
) -> RestoreResult:
    check_volume_name(target)
    sweep_stale_helpers(engine)
    recovery.note_engine(engine)
    ensure_helper_image(engine, opts.helper_image)
    t0 = time.monotonic()
    exists = volume_exists(engine, target)
    empty = not exists or volume_is_empty(engine, target, opts.helper_image)
    if exists and not empty and not opts.force:
        raise TargetExistsError(
            f"volume '{target}' already exists and is not empty (--to-volume)",
            hint="pick a new volume name, or add --force to replace its contents "
            "once the whole backup has been read and verified",
        )
    # Containers that merely mount the target are no obstacle (the content is replaced
    # in place); running ones must be stopped for it (--stop), and are started again.
    users = containers_using(engine.client, target, running_only=False) if exists else []
    running = [c for c in users if c.status in ("running", "restarting", "paused")]
    if running and not empty and not opts.stop:
        raise TargetExistsError(
            f"volume '{target}' is in use by running container(s) "
            f"{', '.join(c.name for c in running)}",
            hint="add --stop to stop them while the contents are replaced (they are "
            "started again), or restore to a new volume name")
    labels = {RESTORED_LABEL: info.id}
    with repo.open_backup(info, opts.identities) as reader:  # a wrong key fails here
        if not exists:
            # journalled first: if this run dies, recovery removes the half-made volume
            with recovery.new_targets() as nt:
                nt.volume(engine, target, labels)
                parser = _fill(engine, reader, info, target, opts)
        else:
            result: list[TarParser] = []
            staging = fill_staging(
                engine, lambda vol: result.append(_fill(engine, reader, info, vol, opts)),
                labels)
            # From here the backup is fully read and verified; only now is the target
            # touched, and only now are its users stopped.
            with stopped(engine.client, running if opts.stop else [], engine_url=engine.url,
                         timeout=opts.stop_timeout, on_event=opts.on_event):
                replace_from_staging(engine, staging, target, empty, opts.helper_image,
                                     in_use=bool(users))
            parser = result[0]
    return RestoreResult(info.id, target, parser.tar_bytes, parser.entries,
                         round(time.monotonic() - t0, 3), replaced=exists and not empty,
                         verified="read-back" if parser.owners else "read-back-without-owners")


def restore_to_container(
    engine: Engine, repo: Repository, info: BackupInfo, name: str, opts: RestoreOptions
) -> list[RestoreResult]:
    """Restore a backup, and every backup taken with it from the same container,
    into new volumes mounted at the same paths in a new data-volume container."""
    check_volume_name(name, "--to-container")
    if container_exists(engine, name):
        raise TargetExistsError(
            f"container '{name}' already exists (--to-container)",
            hint="pick a new container name; the restore creates it",
        )
    members = sorted(repo.members(info), key=lambda i: i.manifest.mount_path or "")
    paths = [m.manifest.mount_path or "/data" for m in members]
    if len(set(paths)) != len(paths):
        raise IntegrityError(f"backup set of {info.id} has two volumes at the same path")
    plan = [(m, p, volume_for(name, p)) for m, p in zip(members, paths, strict=True)]
    # Check every target before writing anything.
    for _, _, vol in plan:
        if volume_exists(engine, vol) and not opts.force:
            raise TargetExistsError(
                f"volume '{vol}' for container '{name}' already exists (--to-container)",
                hint="pick another container name, or --force to replace its contents",
            )
    results = []
    with recovery.new_targets() as nt:  # every new volume stays journalled until the end
        for member, _path, vol in plan:
            results.append(restore_to_volume(engine, repo, member, vol, opts))
        labels = {RESTORED_LABEL: info.manifest.set or info.id}
        nt.container(engine, name, labels)
        create_data_container(engine, name, [(p, v) for _, p, v in plan], labels,
                              opts.helper_image)
    return results
