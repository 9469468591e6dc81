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
import hashlib
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import docker.errors
import requests.exceptions

from ..engine.archive import ArchiveStream, put_archive
from ..engine.client import (
    ARCHIVE_ROOT,
    Engine,
    VolumeMount,
    api_errors,
    connect,
    container_volumes,
    containers_using,
    ensure_helper_image,
    helper,
    inspect_container,
    inspect_volume,
    sweep_stale_helpers,
    volume_exists,
    volume_size,
)
from ..errors import (
    EngineError,
    IntegrityError,
    NotFoundError,
    TargetExistsError,
    UsageError,
)
from ..stream.pump import CHUNK, Drain, Pump
from ..stream.tar import BLOCK, _checksum_ok, _parse_size, pax_records
from ..util.progress import Progress
from . import recovery
from .restore import (
    _check_volume_name,
    _create_volume,
    _volume_for,
    replace_from_staging,
    staging_name,
    volume_is_empty,
)

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


# -- the canonical digest of a tar stream --------------------------------------------------

_FILE_TYPES = {b"0", b"\0", b"7"}
_NO_DATA_TYPES = {b"1", b"2", b"3", b"4", b"5", b"6"}
_META_TYPES = {b"x", b"g", b"L", b"K"}
_USTAR = b"ustar\x0000"


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _norm(path: bytes) -> bytes:
    while path.startswith(b"./"):
        path = path[2:]
    return path.rstrip(b"/") or b"."


class TarDigest:
    """Feed a tar stream in chunks of any size; ``hexdigest()`` is a sha256 over one
    canonical record per entry (see the module doc), equal for two archives of the same
    tree whatever their header encoding. Also counts entries and bytes, knows whether
    the archive ended properly and, with ``raw``, hashes the stream itself (a second
    sha256 pass: 1 GiB costs ~0.6 s of CPU more). Memory: one header."""

    def __init__(self, raw: bool = False) -> None:
        self._h = hashlib.sha256()
        self._raw = hashlib.sha256() if raw else None
        self.tar_bytes = 0
        self.entries = 0
        self.file_bytes = 0
        self.ended = False
        self._header = bytearray()
        self._left = 0  # data bytes of the current member still to come
        self._pad = 0  # then padding bytes to skip
        self._meta: bytearray | None = None  # collecting a PAX/GNU header's data
        self._meta_type = b""
        self._content: Any = None  # sha256 of the current file's data
        self._record: tuple[Any, ...] | None = None
        self._pax: dict[bytes, bytes] = {}
        self._gpax: dict[bytes, bytes] = {}
        self._longname: bytes | None = None
        self._longlink: bytes | None = None

    def feed(self, chunk: bytes | memoryview) -> None:
        if self._raw is not None:
            self._raw.update(chunk)
        self.tar_bytes += len(chunk)
        view = memoryview(chunk)
        pos, n = 0, len(view)
        while pos < n and not self.ended:
            if self._left:
                take = min(self._left, n - pos)
                piece = view[pos : pos + take]
                if self._meta is not None:
                    self._meta += piece
                elif self._content is not None:
                    self._content.update(piece)
                self._left -= take
                pos += take
                if not self._left:
                    self._end_member()
                continue
            if self._pad:
                take = min(self._pad, n - pos)
                self._pad -= take
                pos += take
                continue
            take = min(BLOCK - len(self._header), n - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) == BLOCK:
                header = bytes(self._header)
                self._header.clear()
                self._on_header(header)

    def _on_header(self, h: bytes) -> None:
        if h == bytes(BLOCK):
            self.ended = True
            return
        if not _checksum_ok(h):
            raise IntegrityError("the tar stream is corrupt (bad header checksum)")
        typ = h[156:157]
        size = _parse_size(h[124:136])
        if typ in _META_TYPES:
            self._meta = bytearray()
            self._meta_type = typ
        else:
            pax = {**self._gpax, **self._pax}
            self._pax = {}
            name = _cstr(h[0:100])
            if h[257:265] == _USTAR and h[345] != 0:
                name = _cstr(h[345:500]) + b"/" + name
            if self._longname is not None:
                name = self._longname
            link = self._longlink if self._longlink is not None else _cstr(h[157:257])
            self._longname = self._longlink = None
            name = pax.get(b"path", name)
            link = pax.get(b"linkpath", link)
            if b"size" in pax:
                size = int(pax[b"size"])
            if typ in _NO_DATA_TYPES:
                size = 0
            mtime = _parse_size(h[136:148])
            if b"mtime" in pax:
                mtime = int(pax[b"mtime"].split(b".")[0])
            uid = int(pax[b"uid"]) if b"uid" in pax else _parse_size(h[108:116])
            gid = int(pax[b"gid"]) if b"gid" in pax else _parse_size(h[116:124])
            device = (_parse_size(h[329:337]), _parse_size(h[337:345])) \
                if typ in (b"3", b"4") else (0, 0)
            xattrs = sorted((k.split(b".", 2)[2], v) for k, v in pax.items()
                            if k.startswith(b"SCHILY.xattr."))
            kind = b"0" if typ in _FILE_TYPES else typ
            if kind in (b"1", b"2") or b"linkpath" in pax:
                link = _norm(link) if kind == b"1" else link
            else:
                link = b""
            self._record = (_norm(name), kind, _parse_size(h[100:108]) & 0o7777, uid, gid,
                            size, mtime, link, device, xattrs)
            self._content = hashlib.sha256()
            self.entries += 1
            if kind == b"0":
                self.file_bytes += size
        self._left = size
        self._pad = -size % BLOCK
        if not size:
            self._end_member()

    def _end_member(self) -> None:
        if self._meta is not None:
            data = bytes(self._meta)
            self._meta = None
            if self._meta_type == b"x":
                self._pax = pax_records(data)
            elif self._meta_type == b"g":
                self._gpax.update(pax_records(data))
            elif self._meta_type == b"L":
                self._longname = _cstr(data)
            elif self._meta_type == b"K":
                self._longlink = _cstr(data)
            return
        if self._record is not None:
            record = repr((*self._record, self._content.hexdigest())).encode()
            self._h.update(len(record).to_bytes(4, "big") + record)
            self._record = None
            self._content = None

    def check_complete(self, where: str) -> None:
        if not self.ended or self._left or self._meta is not None:
            raise IntegrityError(
                f"the tar stream from {where} ended early (no end-of-archive marker)",
                hint="the connection or the engine broke off the transfer; run it again",
            )

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def raw_sha256(self) -> str | None:
        """sha256 of the tar stream itself, if asked for (``raw=True``)."""
        return self._raw.hexdigest() if self._raw is not None else None


# -- streams --------------------------------------------------------------------------------

def _tar_chunks(stream: ArchiveStream, digest: TarDigest, bar: Progress | None,
                wire: list[int], threaded: bool = False) -> Iterator[bytes]:
    """The stream's raw chunks, unchanged, while the (inflated) tar goes through
    ``digest`` (in a thread of its own with ``threaded``, so that hashing overlaps with
    the consumer's network writes). The last chunk is held back until the archive (and
    the gzip stream) ended properly, so a consumer never gets a complete-looking but
    truncated archive."""
    inflate = zlib.decompressobj(31) if stream.compressed else None

    def absorb(raw: bytes) -> None:
        if inflate is None:
            digest.feed(raw)
            if bar:
                bar.update(len(raw))
            return
        data = raw
        while data:  # bounded output: 4 MiB of gzip can inflate to gigabytes
            try:
                out = inflate.decompress(data, CHUNK)
            except zlib.error as e:
                raise IntegrityError(f"the gzip stream from {stream.engine.url} "
                                     f"is corrupt: {e}") from None
            digest.feed(out)
            if bar:
                bar.update(len(out))
            data = inflate.unconsumed_tail

    pump = Pump(stream.read, CHUNK)
    drain = Drain(absorb) if threaded else None
    pending = b""
    try:
        for raw in pump:
            wire[0] += len(raw)
            (drain.write if drain else absorb)(raw)
            if pending:
                yield pending
            pending = raw
        if drain:
            drain.close()
            drain = None
        if inflate is not None and not inflate.eof:
            raise IntegrityError(f"the gzip stream from {stream.engine.url} ended early",
                                 hint="the connection broke off the transfer; run it again")
        digest.check_complete(f"engine {stream.engine.url}")
    finally:
        if drain:
            drain.abandon()
        pump.stop()
    if pending:
        yield pending


def _read_digest(engine: Engine, volume: str, gzip: bool, image: str | None,
                 raw: bool = False, bar: Progress | None = None) -> TarDigest:
    digest = TarDigest(raw)
    with helper(engine, [VolumeMount(volume, ROOT)], image) as cid:
        stream = ArchiveStream(engine, cid, ROOT, gzip)
        try:
            for _ in _tar_chunks(stream, digest, bar, [0]):
                pass
        finally:
            stream.close()
    return digest


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
    digest: TarDigest | None = None
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


def same_engine(a: Engine, b: Engine) -> bool:
    """True if both talk to the same daemon, whatever the URL: same engine ID, host name
    and data root (engines cloned with their key file share an ID)."""
    if a.url == b.url:
        return True
    with contextlib.suppress(Exception):
        ia, ib = a.api.info(), b.api.info()
        keys = ("ID", "Name", "DockerRootDir")
        return bool(ia.get("ID")) and all(ia.get(k) == ib.get(k) for k in keys)
    return False


def _is_same_volume(dst: Engine, name: str, info: dict[str, Any]) -> bool:
    """Whether volume ``name`` on ``dst`` is the source volume itself (seen through
    another URL of the same engine): same mount point and creation time."""
    try:
        other = dst.api.inspect_volume(name)
    except docker.errors.NotFound:
        return False
    except (docker.errors.APIError, requests.exceptions.RequestException):
        return True  # cannot tell: be safe
    return all(other.get(k) == info.get(k) for k in ("Mountpoint", "CreatedAt", "Driver"))


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
    left = sorted({stopper._name(c) for c in users} - {stopper._name(c) for c in victims})
    if left:
        _say(opts, f"warning: running container(s) {', '.join(left)} use the source volume(s); "
             "the copy may be inconsistent (--stop stops them during the transfer)")
    with stopper.stopped(src.client, victims, engine_url=src.url, on_event=opts.on_event,
                         timeout=opts.stop_timeout) as were:
        yield [stopper._name(c) for c in were]


def _remove_volume(engine: Engine, name: str, leftovers: list[str]) -> None:
    """Remove a volume the migration created; the engine may hold it for a moment after
    a broken transfer, so wait a little. Failures are collected, not raised."""
    deadline = time.monotonic() + 15
    while True:
        try:
            engine.api.remove_volume(name, force=True)
            return
        except docker.errors.NotFound:
            return
        except (docker.errors.APIError, requests.exceptions.RequestException, OSError):
            if time.monotonic() > deadline:
                leftovers.append(name)
                return
            time.sleep(0.3)


# -- the transfer ---------------------------------------------------------------------------

def _transfer(src: Engine, dst: Engine, item: _Item, opts: MigrateOptions) -> None:
    """Stream one source volume into ``item.fill_volume`` on the target."""
    gzip = opts.compression == "gzip"
    total = volume_size(src, item.volume) if opts.progress else None
    digest = TarDigest()
    wire = [0]
    t0 = time.monotonic()
    with helper(src, [VolumeMount(item.volume, ROOT)], opts.helper_image) as scid, \
            helper(dst, [VolumeMount(item.fill_volume, ROOT, read_only=False)],
                   opts.helper_image) as dcid, \
            Progress(f"migrate {item.volume}", total, opts.progress) as bar:
        stream = ArchiveStream(src, scid, ROOT, gzip)
        chunks = _tar_chunks(stream, digest, bar, wire, threaded=True)
        try:
            try:
                put_archive(dst, dcid, "/", chunks)
            except OSError as e:  # a socket error docker-py/requests did not wrap
                raise EngineError(f"writing into the helper container: lost the connection "
                                  f"to engine {dst.url}: {e}") from None
        finally:
            stream.close()  # unblocks the reader thread...
            chunks.close()  # ...and stops it, if the upload ended early
    item.seconds = time.monotonic() - t0
    item.digest = digest
    item.wire = wire[0]


def _verify(dst: Engine, item: _Item, opts: MigrateOptions) -> None:
    assert item.digest is not None
    t0 = time.monotonic()
    with Progress(f"verify {item.target}", item.digest.tar_bytes, opts.progress) as bar:
        got = _read_digest(dst, item.fill_volume, opts.compression == "gzip",
                           opts.helper_image, bar=bar)
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
        _check_volume_name(item.target, "--as")
    for item in items:
        _check_target(dst, item, opts)
    sweep_stale_helpers(src)
    sweep_stale_helpers(dst)
    recovery.note_engine(src)
    recovery.note_engine(dst)
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
                    _create_volume(dst, item.fill_volume, labels)
                else:
                    nt.volume(dst, item.fill_volume, labels)
                item.created = True
                _say(opts, f"migrating volume {item.volume} -> {item.target} on {dst.url}")
                _transfer(src, dst, item, opts)
        # The source is released (and its containers running again); check the copies.
        for item in items:
            _verify(dst, item, opts)
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
    _check_volume_name(target, "--as")
    same = same_engine(src, dst)
    info = _source_volume(src, volume, "VOLUME")
    if target == volume and (same or _is_same_volume(dst, target, info)):
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
    _check_volume_name(new_name, "--as")
    vols = container_volumes(attrs)
    if not vols:
        raise UsageError(
            f"container '{cname}' has no volumes to migrate (--container)",
            hint="bind mounts are not migrated; use 'docker inspect' to see its mounts",
        )
    same = same_engine(src, dst)
    try:
        dst.api.inspect_container(new_name)
    except docker.errors.NotFound:
        pass
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise EngineError(f"cannot inspect containers on {dst.url}: {e}") from None
    else:
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
            by_source[vol] = _Item(vol, _volume_for(new_name, path) if renamed else vol,
                                   _source_volume(src, vol, f"a volume of --container {cname}"),
                                   path)
            items.append(by_source[vol])
        mounts.append((path, by_source[vol].target))
    with recovery.new_targets() as nt:
        stopped, undo = _run(src, dst, items, opts)
        _create_data_container(dst, nt, new_name, mounts, cname, undo, opts)
    return Migration(src.url, dst.url, opts.compression, [_result(i) for i in items],
                     round(time.monotonic() - t0, 3), same, container=cname,
                     target_container=new_name, stopped=stopped)


def _create_data_container(dst: Engine, nt: Any, new_name: str, mounts: list[tuple[str, str]],
                           cname: str, undo: Callable[[], None], opts: MigrateOptions) -> None:
    try:
        image = ensure_helper_image(dst, opts.helper_image)
        host_config = dst.api.create_host_config(
            mounts=[docker.types.Mount(p, t, type="volume") for p, t in mounts],
            network_mode="none",
        )
        nt.container(dst, new_name, {MIGRATED_LABEL: cname})
        with api_errors(dst, f"creating data-volume container '{new_name}'"):
            dst.api.create_container(
                image, name=new_name, command=["/volbak-data-container"],
                host_config=host_config, labels={MIGRATED_LABEL: cname},
                network_disabled=True,
            )
    except BaseException:
        undo()
        raise
