"""Migrate: volumes (or a data-volume container) from one engine straight into another.

    source helper (volume mounted read-only at /data)
      -> GET /containers/{id}/archive?path=/data     (gzip on the wire with --compress gzip:
                                                     the *source engine* compresses)
      -> Pump: reader thread, bounded queue          (flat memory, no temp file, no repo)
      -> TarDigest over the (decompressed) tar       (entries, bytes, canonical digest)
      -> PUT /containers/{id}/archive?path=/ of a target helper that mounts the new
         volume (or a staging volume) at /data       (the target engine decompresses)
    then GET archive of the target volume -> TarDigest -> must equal the source's.

Verification. The engine's tar output is *not* a function of the tree alone: headers carry
user and group names that the engine looks up in its own host's /etc/passwd (measured on
20.10: uid 0 is written as "root", uid 999 with no passwd entry as ""), and engines of
other versions write other header layouts. Two engines on the same machine do produce
byte-identical archives for identical trees (checked: same sha256), but across hosts a
raw sha256 would fail good migrations. So both sides are reduced to a canonical per-entry
digest instead: path, type, permission bits (with setuid/setgid/sticky), uid, gid, size,
mtime (seconds, all the archive API keeps), link target, device numbers, exported xattrs
and the sha256 of each file's content, in archive order (the engine walks in sorted
order). Names, atime/ctime and header encoding are left out. (A raw sha256 of the stream
is available, ``TarDigest(raw=True)``, but costs a second hash pass: on this 2-core VM
hashing competes with both engines for CPU, so it is not computed by default.)

What the digest cannot see is what the archive API itself drops (DESIGN.md): holes of
sparse files (read as data, written dense) and xattrs other than security.capability.

Compression on the wire (``--compress gzip``, default none). The archive API gzips a
GET response when asked (``Accept-Encoding: gzip``; the source engine compresses with Go's
gzip on its own host) and PUT archive takes a gzip-compressed tar (the target engine
decompresses), so volbak passes the compressed bytes through untouched and inflates only
a copy for the digest. Measured on this 2-core VM, 256 MiB volumes, engine 2 behind the
loopback sshd (transfer MB/s, none -> gzip): random data over ssh 78 -> 31, over unix
150 -> 44; text over ssh 58 -> 70 (wire 244 MiB -> 1 MiB), paramiko 79 -> 123. Go's gzip
runs at ~30-50 MB/s on incompressible data, so gzip pays off only with compressible data
on links slower than that (WAN, VPN); on a LAN or loopback it costs more than it saves.
An ssh link can compress by itself instead (``Compression yes`` in ~/.ssh/config, used
by the system ssh that volbak runs for ssh:// unless VOLBAK_SSH=paramiko).

Safety (as restore): the target volume must not exist, or be empty, unless ``force``;
existing data is replaced only from a staging volume on the target that holds the
complete, verified copy. Any failure before that removes every volume and helper the
migration created on the target. The source is only ever read (read-only mounts); with
``stop`` the containers using the source volumes are stopped for the transfer only and
always started again (volbak.stopper).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..engine import (
    ARCHIVE_ROOT,
    Engine,
    VolumeMount,
    VolumeTar,
    check_volume_name,
    connect,
    container_exists,
    container_volumes,
    containers,
    containers_using,
    create_data_container,
    create_volume,
    ensure_helper_image,
    helper,
    inspect_container,
    inspect_volume,
    put_volume_tar,
    read_tree_digest,
    remove_volume,
    same_engine,
    same_volume,
    staging_name,
    sweep_stale_helpers,
    volume_exists,
    volume_for,
    volume_is_empty,
    volume_size,
)
from ..errors import (
    EngineError,
    IntegrityError,
    NotFoundError,
    TargetExistsError,
    UsageError,
)
from ..stream import compress
from ..stream.pipeline import checked_chunks
from ..stream.tar import TarParser
from ..util.progress import Progress
from . import recovery
from .recovery import replace_from_staging

MIGRATED_LABEL = "volbak.migrated-from"
COMPRESSIONS = ("none", "gzip")
ROOT = "/" + ARCHIVE_ROOT

Event = Callable[[str], None]


@dataclasses.dataclass
class MigrateOptions:
    force: bool = False
    stop: bool = False
    compression: str = "none"  # on the wire: "gzip" makes the source engine compress
    helper_image: str | None = None
    progress: bool = False
    stop_timeout: int | None = None
    on_event: Event | None = None


@dataclasses.dataclass
class VolumeResult:
    volume: str  # on the source
    target: str  # on the target
    tar_bytes: int  # uncompressed tar stream
    wire_bytes: int  # what crossed the wire each way (compressed with gzip)
    entries: int
    file_bytes: int
    seconds: float  # the transfer itself
    verify_seconds: float
    digest: str  # canonical per-entry digest, equal on both sides
    replaced: bool = False

    @property
    def mb_per_s(self) -> float:
        return round(self.tar_bytes / max(self.seconds, 1e-9) / 1e6, 1)


@dataclasses.dataclass
class Migration:
    source: str  # engine URLs
    target: str
    compression: str
    volumes: list[VolumeResult]
    seconds: float
    same_engine: bool = False
    container: str | None = None
    target_container: str | None = None
    stopped: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        tar = sum(v.tar_bytes for v in self.volumes)
        moving = sum(v.seconds for v in self.volumes)
        return {
            "source": self.source,
            "target": self.target,
            "same_engine": self.same_engine,
            "container": self.container,
            "target_container": self.target_container,
            "compression": self.compression,
            "bytes": tar,
            "wire_bytes": sum(v.wire_bytes for v in self.volumes),
            "entries": sum(v.entries for v in self.volumes),
            "file_bytes": sum(v.file_bytes for v in self.volumes),
            "seconds": self.seconds,
            "transfer_seconds": round(moving, 3),
            "verify_seconds": round(sum(v.verify_seconds for v in self.volumes), 3),
            "mb_per_s": round(tar / max(moving, 1e-9) / 1e6, 1),
            "verified": "canonical-digest",
            "stopped": self.stopped,
            "volumes": [{**dataclasses.asdict(v), "mb_per_s": v.mb_per_s} for v in self.volumes],
        }


# -- streams --------------------------------------------------------------------------------

def _tar_chunks(stream: VolumeTar, parser: TarParser, bar: Progress | None,
                wire: list[int]) -> Iterator[bytes]:
    """The stream's raw chunks, unchanged, while the (inflated) tar goes through
    ``parser`` in a thread of its own, so that hashing overlaps with the network on both
    sides. The last chunk is held back until the archive (and the gzip stream) ended
    properly, so the target never gets a complete-looking but truncated archive."""
    dec = compress.decompressor("gzip" if stream.compressed else "none")

    def inspect(raw: bytes) -> None:
        for piece in dec.pieces(raw):
            parser.feed(piece)
            if bar:
                bar.update(len(piece))

    def read(n: int) -> bytes:
        raw = stream.read(n)
        wire[0] += len(raw)
        return raw

    def finish() -> None:
        dec.finish()
        parser.check_complete()

    return checked_chunks(read, inspect, finish, threaded=True)


# -- planning -------------------------------------------------------------------------------

@dataclasses.dataclass
class _Item:
    volume: str  # source
    target: str
    info: dict[str, Any]  # source volume inspect
    path: str = ROOT  # mount path in the source container (--container)
    exists: bool = False
    empty: bool = True
    fill_volume: str = ""  # the new target or a staging volume
    staging: bool = False
    created: bool = False
    digest: TarParser | None = None
    wire: int = 0
    seconds: float = 0.0
    verify_seconds: float = 0.0


def connect_engines(from_host: str | None, to_host: str | None) -> tuple[Engine, Engine]:
    """Connect to the source (``--from``, default like -H) and the target (``--to``)."""
    if not to_host:
        raise UsageError("say where to migrate to",
                         hint="pass --to URL|CONTEXT (or --to-context NAME)")
    src = connect(from_host, "--from")
    try:
        dst = connect(to_host, "--to")
    except BaseException:
        src.close()
        raise
    return src, dst


def _say(opts: MigrateOptions, text: str) -> None:
    if opts.on_event:
        opts.on_event(text)


def _check_target(dst: Engine, item: _Item, opts: MigrateOptions) -> None:
    item.exists = volume_exists(dst, item.target)
    if not item.exists:
        return
    item.empty = volume_is_empty(dst, item.target, opts.helper_image)
    if item.empty:
        return
    if not opts.force:
        raise TargetExistsError(
            f"volume '{item.target}' already exists on the target engine {dst.url} "
            "and is not empty",
            hint="migrate under another name with --as NAME, or add --force to replace its "
            "contents once the whole copy has arrived and been verified",
        )
    users = [c.name for c in containers_using(dst.client, item.target, running_only=False)]
    if users:
        raise TargetExistsError(
            f"volume '{item.target}' on {dst.url} is used by container(s) "
            f"{', '.join(users)}; --force cannot replace a volume in use",
            hint="remove those containers on the target first (their volume stays), or "
            "migrate under another name with --as NAME",
        )


@contextlib.contextmanager
def _stopped(src: Engine, volumes: Sequence[str], opts: MigrateOptions) -> Iterator[list[str]]:
    """Stop what uses the source volumes (--stop, or label volbak.stop=true) for the
    duration of the transfer; always start it again."""
    from . import stopper

    users = [c for v in volumes for c in containers_using(src.client, v)]
    victims = stopper.select_to_stop(users, force=opts.stop)
    left = sorted({containers.name(c) for c in users} - {containers.name(c) for c in victims})
    if left:
        _say(opts, f"warning: running container(s) {', '.join(left)} use the source volume(s); "
             "the copy may be inconsistent (--stop stops them during the transfer)")
    with stopper.stopped(src.client, victims, engine_url=src.url, on_event=opts.on_event,
                         timeout=opts.stop_timeout) as were:
        yield [containers.name(c) for c in were]


def _remove_volume(engine: Engine, name: str, leftovers: list[str]) -> None:
    """Remove a volume the migration created; failures are collected, not raised."""
    if not remove_volume(engine, name):
        leftovers.append(name)


# -- the transfer ---------------------------------------------------------------------------

def _transfer(src: Engine, dst: Engine, item: _Item, opts: MigrateOptions) -> None:
    """Stream one source volume into ``item.fill_volume`` on the target."""
    gzip = opts.compression == "gzip"
    total = volume_size(src, item.volume) if opts.progress else None
    digest = TarParser(digest=True, root=ARCHIVE_ROOT, owners=_owners_comparable(src, dst),
                       all_xattrs=False,
                       what=f"volume '{item.volume}' from engine {src.url}")
    wire = [0]
    t0 = time.monotonic()
    with helper(src, [VolumeMount(item.volume, ROOT)], opts.helper_image) as scid, \
            helper(dst, [VolumeMount(item.fill_volume, ROOT, read_only=False)],
                   opts.helper_image) as dcid, \
            Progress(f"migrate {item.volume}", total, opts.progress) as bar:
        stream = VolumeTar(src, scid, ARCHIVE_ROOT, gzip)
        chunks = _tar_chunks(stream, digest, bar, wire)
        try:
            try:
                put_volume_tar(dst, dcid, ARCHIVE_ROOT, chunks)
            except OSError as e:  # a socket error docker-py/requests did not wrap
                raise EngineError(f"writing into the helper container: lost the connection "
                                  f"to engine {dst.url}: {e}") from None
        finally:
            stream.close()  # unblocks the reader thread...
            chunks.close()  # ...and stops it, if the upload ended early
    item.seconds = time.monotonic() - t0
    item.digest = digest
    item.wire = wire[0]


def _owners_comparable(src: Engine, dst: Engine) -> bool:
    """Podman's archive API replaces owners, so through it they cannot be compared."""
    return not (src.is_podman or dst.is_podman)


def _verify(src: Engine, dst: Engine, item: _Item, opts: MigrateOptions) -> None:
    assert item.digest is not None
    t0 = time.monotonic()
    with Progress(f"verify {item.target}", item.digest.tar_bytes, opts.progress) as bar:
        got = read_tree_digest(dst, item.fill_volume, ARCHIVE_ROOT, opts.helper_image,
                               gzip=opts.compression == "gzip", progress=bar.update,
                               owners=_owners_comparable(src, dst))
    item.verify_seconds = time.monotonic() - t0
    if got.hexdigest() != item.digest.hexdigest() or got.entries != item.digest.entries:
        raise IntegrityError(
            f"verification failed: volume '{item.fill_volume}' on {dst.url} does not hold "
            f"what was read from '{item.volume}' ({got.entries} entries, "
            f"{got.file_bytes} file bytes; read {item.digest.entries} entries, "
            f"{item.digest.file_bytes} file bytes)",
            hint="the target engine did not store the archive faithfully (full disk? a "
            "filesystem without uid/xattr support?); nothing was replaced",
        )


def _run(src: Engine, dst: Engine, items: list[_Item],
         opts: MigrateOptions) -> tuple[list[str], Callable[[], None]]:
    """Check every target, transfer every volume (under --stop), verify, then replace
    staged targets. Returns the stopped container names and an undo for the volumes
    created on the target (for a later step of the caller that may still fail)."""
    if opts.compression not in COMPRESSIONS:
        raise UsageError(f"unknown wire compression '{opts.compression}' (--compress)",
                         hint="use one of: none, gzip")
    for item in items:
        check_volume_name(item.target, "--as")
    sweep_stale_helpers(src)
    sweep_stale_helpers(dst)
    recovery.note_engine(src)
    recovery.note_engine(dst)
    for item in items:
        _check_target(dst, item, opts)
    nt = recovery.current_targets()
    ensure_helper_image(src, opts.helper_image)
    ensure_helper_image(dst, opts.helper_image)

    leftovers: list[str] = []

    def undo() -> None:
        for it in items:
            if it.created:
                _remove_volume(dst, it.fill_volume, leftovers)
                it.created = False

    stopped: list[str] = []
    try:
        with _stopped(src, [i.volume for i in items], opts) as stopped:
            for item in items:
                labels = {**(item.info.get("Labels") or {}), MIGRATED_LABEL: item.volume}
                if item.exists:  # filled only from a complete, verified staging copy
                    item.staging = True
                    item.fill_volume = staging_name()
                    labels = recovery.staging_labels({MIGRATED_LABEL: item.volume})
                else:
                    item.fill_volume = item.target
                    if volume_exists(dst, item.target):  # made by someone since the check
                        raise TargetExistsError(
                            f"volume '{item.target}' appeared on {dst.url} during the "
                            "migration", hint="run the migration again")
                if item.staging:
                    create_volume(dst, item.fill_volume, labels)
                else:
                    nt.volume(dst, item.fill_volume, labels)
                item.created = True
                _say(opts, f"migrating volume {item.volume} -> {item.target} on {dst.url}")
                _transfer(src, dst, item, opts)
        # The source is released (and its containers running again); check the copies.
        for item in items:
            _verify(src, dst, item, opts)
    except BaseException as e:
        undo()
        if leftovers and isinstance(e, Exception):
            raise EngineError(
                f"{e}; and could not remove volume(s) {', '.join(leftovers)} that this "
                f"migration created on {dst.url}",
                hint=f"remove them with 'docker -H {dst.url} volume rm NAME'",
            ) from e
        raise
    # Everything arrived and checks out: only now are existing targets touched.
    for n, item in enumerate(items):
        if item.staging:
            try:
                replace_from_staging(dst, item.fill_volume, item.target, item.empty,
                                     opts.helper_image, "--as", what="migrated",
                                     rerun="rerun the migration")
            except BaseException:
                for later in items[n + 1 :]:
                    if later.created and later.staging:
                        _remove_volume(dst, later.fill_volume, leftovers)
                raise
            item.created = False  # staging consumed; the target is the user's volume
    return stopped, undo


def _result(item: _Item) -> VolumeResult:
    d = item.digest
    assert d is not None
    return VolumeResult(
        volume=item.volume, target=item.target, tar_bytes=d.tar_bytes, wire_bytes=item.wire,
        entries=d.entries, file_bytes=d.file_bytes, seconds=round(item.seconds, 3),
        verify_seconds=round(item.verify_seconds, 3), digest=d.hexdigest(),
        replaced=item.exists and not item.empty,
    )


_FROM_HINT = "list {what} with 'docker -H {url} {cmd}'; --from selects the source engine"


def _source_volume(src: Engine, name: str, flag: str) -> dict[str, Any]:
    try:
        return inspect_volume(src, name, flag)
    except NotFoundError as e:
        raise NotFoundError(f"{e.message}, the --from engine", hint=_FROM_HINT.format(
            url=src.url, what="volumes", cmd="volume ls")) from None


# -- the API --------------------------------------------------------------------------------

def migrate_volume(src: Engine, dst: Engine, volume: str, opts: MigrateOptions,
                   target: str | None = None) -> Migration:
    """Copy the named volume from ``src`` into volume ``target`` (default: the same
    name) on ``dst``, verified; see the module doc for the safety rules."""
    t0 = time.monotonic()
    target = target or volume
    check_volume_name(target, "--as")
    same = same_engine(src, dst)
    info = _source_volume(src, volume, "VOLUME")
    if target == volume and (same or same_volume(dst, target, info)):
        raise UsageError(
            f"the target is the same engine and the same volume '{volume}'",
            hint="to clone a volume on one engine, name the copy with --as NEWNAME",
        )
    item = _Item(volume, target, info)
    with recovery.new_targets():
        stopped, _ = _run(src, dst, [item], opts)
    return Migration(src.url, dst.url, opts.compression, [_result(item)],
                     round(time.monotonic() - t0, 3), same, stopped=stopped)


def migrate_container(src: Engine, dst: Engine, name: str, opts: MigrateOptions,
                      new_name: str | None = None) -> Migration:
    """Copy every volume of container ``name`` and create a data-volume container
    ``new_name`` (default: the same name) on ``dst`` that mounts them at the same paths.

    Without a new name the volumes keep their names; with one they are named
    ``<new_name>_<mount path>`` (as restore --to-container does). The target container
    must not exist; each target volume follows the volume rules (new, empty, --force)."""
    t0 = time.monotonic()
    try:
        attrs = inspect_container(src, name, "--container")
    except NotFoundError as e:
        raise NotFoundError(f"{e.message}, the --from engine", hint=_FROM_HINT.format(
            url=src.url, what="containers", cmd="ps -a")) from None
    cname = attrs["Name"].lstrip("/")
    new_name = new_name or cname
    check_volume_name(new_name, "--as")
    vols = container_volumes(attrs)
    if not vols:
        raise UsageError(
            f"container '{cname}' has no volumes to migrate (--container)",
            hint="bind mounts are not migrated; use 'docker inspect' to see its mounts",
        )
    same = same_engine(src, dst)
    if container_exists(dst, new_name):
        raise TargetExistsError(
            f"container '{new_name}' already exists on the target engine {dst.url}",
            hint="name the new data-volume container with --as NAME"
            + (" (the target is the same engine as the source)" if same else ""),
        )
    renamed = new_name != cname
    items: list[_Item] = []
    mounts: list[tuple[str, str]] = []  # (mount path, target volume)
    by_source: dict[str, _Item] = {}
    for vol, path in sorted(vols, key=lambda v: v[1]):
        if vol not in by_source:  # one volume mounted at two paths is copied once
            by_source[vol] = _Item(vol, volume_for(new_name, path) if renamed else vol,
                                   _source_volume(src, vol, f"a volume of --container {cname}"),
                                   path)
            items.append(by_source[vol])
        mounts.append((path, by_source[vol].target))
    with recovery.new_targets() as nt:
        stopped, undo = _run(src, dst, items, opts)
        try:
            nt.container(dst, new_name, {MIGRATED_LABEL: cname})
            create_data_container(dst, new_name, mounts, {MIGRATED_LABEL: cname},
                                  opts.helper_image)
        except BaseException:
            undo()
            raise
    return Migration(src.url, dst.url, opts.compression, [_result(i) for i in items],
                     round(time.monotonic() - t0, 3), same, container=cname,
                     target_container=new_name, stopped=stopped)
