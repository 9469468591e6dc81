"""Restore: backend -> sha256 -> [age] -> decompress -> tar check -> a *new* target.

Safety rules: a target volume that exists is never written directly. A new target is
created, filled, and removed again if anything fails. An existing one (empty, or
non-empty with ``force``) is filled only from a staging volume that already holds
the whole, verified archive.

Writes go through ``PUT /containers/{id}/archive`` at "/" of a helper whose volume
is mounted at ``/<archive_root>``: extracting at "/" (not at the mount path) is what
lets the engine find a hardlink's target again and keep its setuid bit, and it
restores the volume root's own mode and owner from the archive's first entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import docker.errors

from ..engine.archive import ArchiveStream, put_archive
from ..engine.client import (
    Engine,
    VolumeMount,
    api_errors,
    containers_using,
    ensure_helper_image,
    helper,
    sweep_stale_helpers,
    volume_exists,
)
from ..errors import IntegrityError, TargetExistsError, UsageError
from ..repository import BackupInfo, Repository
from ..stream import compress
from ..stream.pump import CHUNK, Pump
from ..stream.tar import TarScanner
from ..util.progress import Progress
from . import recovery

RESTORED_LABEL = "volbak.restored-from"


@dataclasses.dataclass
class RestoreOptions:
    identities: Sequence[Any] = ()  # age Identity objects, for encrypted backups
    force: bool = False
    helper_image: str | None = None
    progress: bool = False


@dataclasses.dataclass
class RestoreResult:
    backup: str
    volume: str
    tar_bytes: int
    entries: int
    seconds: float
    replaced: bool = False

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _HashingReader:
    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.h = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.h.update(data)
        self.size += len(data)
        return data


class BackupSource:
    """A stored backup opened for reading. Opening checks the encryption header, so
    a wrong key fails here, before any target exists."""

    def __init__(self, repo: Repository, info: BackupInfo, identities: Sequence[Any]) -> None:
        self.info = info
        self.compression = compress.check(info.manifest["compression"])
        self._raw = repo.backend.open_reader(info.data_name)
        self._hashed = _HashingReader(self._raw)
        self._read = self._hashed.read
        try:
            if info.manifest.get("encryption"):
                from ..crypto.age import DecryptReader

                if not identities:
                    raise UsageError(
                        f"backup {info.id} is encrypted and no key was given",
                        hint="pass --identity FILE or --passphrase-file FILE",
                    )
                self._read = DecryptReader(self._hashed, list(identities)).read
        except BaseException:
            self.close()
            raise
        self.scanner = TarScanner()
        self.tar_bytes = 0

    def chunks(self, bar: Progress | None = None) -> Iterator[bytes]:
        """The verified tar stream. The last chunk is held back until the stored
        object's hash, the compression stream and the tar end marker all check out,
        so a consumer never receives a complete archive that is not the backup.

        Reading, hashing, decryption, decompression and the tar check run in the pump
        thread, so they overlap with the consumer's upload to the engine."""
        dec = compress.decompressor(self.compression)

        def plain(n: int) -> bytes:
            while raw := self._read(n):
                out = dec.write(raw)
                if out:
                    self.scanner.feed(out)
                    self.tar_bytes += len(out)
                    return out
            dec.finish()
            self._verify()
            return b""

        pump = Pump(plain, CHUNK)
        pending = b""
        try:
            for out in pump:
                if bar:
                    bar.update(len(out))
                if pending:
                    yield pending
                pending = out
        finally:
            pump.stop()
        if pending:
            yield pending

    def _verify(self) -> None:
        obj = self.info.manifest["object"]
        if self._hashed.size != obj["size"] or self._hashed.h.hexdigest() != obj["sha256"]:
            raise IntegrityError(
                f"backup {self.info.id} is corrupt: the stored object {obj['name']} "
                f"({self._hashed.size} bytes) does not match its manifest's sha256/size",
                hint="the archive was damaged or truncated in storage; restore an older backup",
            )
        self.scanner.check_complete()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()


def _mount_root(info: BackupInfo) -> str:
    return "/" + info.manifest.get("archive_root", "data")


def volume_is_empty(engine: Engine, name: str, image: str | None = None) -> bool:
    with helper(engine, [VolumeMount(name, "/data")], image) as cid:
        src = ArchiveStream(engine, cid, "/data")
        try:
            scanner = TarScanner()
            while scanner.entries < 2 and not scanner.ended:
                data = src.read(64 * 1024)
                if not data:
                    break
                scanner.feed(data)
            return scanner.entries < 2
        finally:
            src.close()


def _create_volume(engine: Engine, name: str, labels: dict[str, str],
                   driver: str = "local", options: dict[str, str] | None = None) -> None:
    with api_errors(engine, f"creating volume '{name}'"):
        engine.api.create_volume(name, driver=driver, driver_opts=options or None, labels=labels)


def remove_volume(engine: Engine, name: str) -> None:
    recovery.remove_volume(engine, name)  # never raises: a lost engine is left to recovery


def _fill(engine: Engine, source: BackupSource, volume: str, opts: RestoreOptions) -> None:
    info = source.info
    total = info.manifest.get("tar", {}).get("size")
    root = _mount_root(info)
    with helper(engine, [VolumeMount(volume, root, read_only=False)], opts.helper_image) as cid, \
            Progress(f"restore {info.volume}", total, opts.progress) as bar:
        put_archive(engine, cid, "/", source.chunks(bar))


def copy_volume(engine: Engine, src: str, dst: str, image: str | None = None) -> None:
    """Copy one volume's whole tree (root mode and owner included) into another."""
    with helper(engine, [VolumeMount(src, "/data")], image) as scid, \
            helper(engine, [VolumeMount(dst, "/data", read_only=False)], image) as dcid:
        stream = ArchiveStream(engine, scid, "/data")
        try:
            put_archive(engine, dcid, "/", iter(lambda: stream.read(CHUNK), b""))
        finally:
            stream.close()


def restore_to_volume(
    engine: Engine, repo: Repository, info: BackupInfo, target: str, opts: RestoreOptions
) -> RestoreResult:
    _check_volume_name(target)
    sweep_stale_helpers(engine)
    recovery.note_engine(engine)
    ensure_helper_image(engine, opts.helper_image)
    t0 = time.monotonic()
    exists = volume_exists(engine, target)
    empty = not exists or volume_is_empty(engine, target, opts.helper_image)
    if exists and not empty:
        if not opts.force:
            raise TargetExistsError(
                f"volume '{target}' already exists and is not empty (--to-volume)",
                hint="pick a new volume name, or add --force to replace its contents "
                "once the whole backup has been read and verified",
            )
        users = [c.name for c in containers_using(engine.client, target, running_only=False)]
        if users:
            raise TargetExistsError(
                f"volume '{target}' is used by container(s) {', '.join(users)}; "
                "--force cannot replace a volume in use",
                hint="remove those containers first (their volume stays), or restore "
                "to a new volume name",
            )
    source = BackupSource(repo, info, opts.identities)
    try:
        labels = {RESTORED_LABEL: info.id}
        if not exists:
            with recovery.new_targets() as nt:
                nt.volume(engine, target, labels)
                _fill(engine, source, target, opts)
        else:
            _replace_via_staging(engine, source, target, empty, opts)
    finally:
        source.close()
    return RestoreResult(info.id, target, source.tar_bytes, source.scanner.entries,
                         round(time.monotonic() - t0, 3), replaced=exists and not empty)


def _replace_via_staging(engine: Engine, source: BackupSource, target: str, empty: bool,
                         opts: RestoreOptions) -> None:
    staging = fill_staging(engine, lambda vol: _fill(engine, source, vol, opts),
                           {RESTORED_LABEL: source.info.id})
    # From here the backup is fully read and verified; only now is the target touched.
    replace_from_staging(engine, staging, target, empty, opts.helper_image)


staging_name = recovery.staging_name
fill_staging = recovery.fill_staging
replace_from_staging = recovery.replace_from_staging


_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")


def _check_volume_name(name: str, flag: str = "--to-volume") -> None:
    if not _NAME_OK.match(name):
        raise UsageError(
            f"invalid volume name '{name}' ({flag})",
            hint="names use letters, digits, '_', '.', '-' and start with a letter or digit",
        )


def _volume_for(container: str, mount_path: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", mount_path.strip("/")) or "root"
    return f"{container}_{slug}"


def restore_to_container(
    engine: Engine, repo: Repository, info: BackupInfo, name: str, opts: RestoreOptions
) -> list[RestoreResult]:
    """Restore a backup, and every backup taken with it from the same container,
    into new volumes mounted at the same paths in a new data-volume container."""
    _check_volume_name(name, "--to-container")
    try:
        engine.api.inspect_container(name)
    except docker.errors.NotFound:
        pass
    else:
        raise TargetExistsError(
            f"container '{name}' already exists (--to-container)",
            hint="pick a new container name; the restore creates it",
        )
    members = sorted(repo.members(info), key=lambda i: i.manifest.get("mount_path") or "")
    paths = [m.manifest.get("mount_path") or "/data" for m in members]
    if len(set(paths)) != len(paths):
        raise IntegrityError(f"backup set of {info.id} has two volumes at the same path")
    plan = [(m, p, _volume_for(name, p)) for m, p in zip(members, paths, strict=True)]
    # Check every target before writing anything.
    for _, _, vol in plan:
        if volume_exists(engine, vol) and not opts.force:
            raise TargetExistsError(
                f"volume '{vol}' for container '{name}' already exists (--to-container)",
                hint="pick another container name, or --force to replace its contents",
            )
    created: list[str] = []
    results = []
    try:
        with recovery.new_targets() as nt:
            for member, _path, vol in plan:
                new = not volume_exists(engine, vol)
                results.append(restore_to_volume(engine, repo, member, vol, opts))
                if new:
                    created.append(vol)
            image = ensure_helper_image(engine, opts.helper_image)
            host_config = engine.api.create_host_config(
                mounts=[docker.types.Mount(p, v, type="volume") for _, p, v in plan],
                network_mode="none",
            )
            nt.container(engine, name, {RESTORED_LABEL: info.manifest.get("set") or info.id})
            with api_errors(engine, f"creating data-volume container '{name}'"):
                engine.api.create_container(
                    image, name=name, command=["/volbak-data-container"], host_config=host_config,
                    labels={RESTORED_LABEL: info.manifest.get("set") or info.id},
                    network_disabled=True,
                )
    except BaseException:
        for vol in created:
            remove_volume(engine, vol)
        raise
    return results

