"""A repository: where backups live, and the only way into storage for operations.

Operations ask the repository for a new backup (a writer that takes the tar stream), for
a stored backup's tar stream (a reader that checks it), for manifests as typed objects,
and for deletions; they never name storage objects themselves. The storage format sits
behind that seam (``format.py``): "archive" (``archive.py``) and "dedup" (``dedup/``).
A repository's format is fixed when it is created: a config object at its root
(``volbak-repo.json``) names it; no config but existing manifests means "archive" (made
before the config existed); an empty location gets the default format on its first
backup (``VOLBAK_REPO_FORMAT``, default "dedup") or whatever ``volbak init`` says.

A backup's ID is ``<volume>@<stamp>`` with ``stamp`` like ``20261129T070001Z``. Its
manifest, ``<volume>/<stamp>.manifest.json``, is written last: a backup without one is
never listed. Deleting removes the manifest first, so an interrupted delete never leaves
a listed backup whose data is gone.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable, Sequence
from typing import Any

from ..backend import Backend, ObjectInfo
from ..errors import IntegrityError, NotFoundError, UsageError
from .format import BackupReader, BackupWriter
from .manifest import (
    MANIFEST_SUFFIX,
    STAMP_FORMAT,
    BackupInfo,
    Manifest,
    make_stamp,
    parse_time,
    split_id,
)

__all__ = ["MANIFEST_SUFFIX", "STAMP_FORMAT", "BackupInfo", "BackupReader", "BackupWriter",
           "Manifest", "Repository", "make_stamp", "parse_time", "split_id"]


class Repository:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        # Manifests that could not be read by the last list(): (object name, message).
        # One damaged manifest must not hide the rest of the repository.
        self.damaged: list[tuple[str, str]] = []
        self._config: Any = None
        # Passphrase identities a dedup repository's host keys may be derived from when
        # this host has no host key file (dedup/store.py DedupStore._host_keys).
        self.derive_keys: list[Any] = []

    @property
    def url(self) -> str:
        return self.backend.url

    # -- format ---------------------------------------------------------------------------

    def config(self) -> Any:
        """The dedup config object, or None for an archive (or new) repository."""
        if self._config is None:
            from .dedup import load_config

            self._config = load_config(self.backend) or False
        return self._config or None

    @property
    def format(self) -> str:
        """"archive", "dedup", or "new" (an empty location)."""
        cfg = self.config()
        if cfg is not None:
            return cfg.format
        return "archive" if next(iter(self.backend.list()), None) is not None else "new"

    def init(self, fmt: str, recipients: Sequence[Any] = (),
             chunker: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a repository in an empty location (``volbak init``); ``chunker``
        ({"algorithm", "min", "avg", "max"}) overrides the defaults (benchmarks)."""
        from .dedup import init_repository
        from .dedup.keys import CONFIG, RepoConfig

        if fmt not in ("dedup", "archive"):
            raise UsageError(f"unknown repository format '{fmt}'", hint="use dedup or archive")
        if fmt == "archive":
            if self.format != "new":
                raise UsageError(f"{self.url} already holds a repository (or other files)",
                                 hint="'volbak init' only creates new repositories")
            cfg = RepoConfig(os.urandom(16).hex(), dt.datetime.now(dt.UTC).isoformat(), {},
                             None, format="archive")
            self.backend.put_bytes(CONFIG, cfg.to_json())
            self._config = cfg
            return {"format": "archive", "id": cfg.id, "host_key": None}
        cfg, _, path = init_repository(self.backend, list(recipients), chunker)
        self._config = cfg
        return {"format": "dedup", "id": cfg.id, "encrypted": cfg.encrypted,
                "host_key": str(path) if path else None}

    def dedup(self) -> Any:
        from .dedup import DedupStore

        cfg = self.config()
        if cfg is None or cfg.format != "dedup":
            raise UsageError(f"{self.url} is not a dedup repository")
        return DedupStore(self.backend, cfg, self.derive_keys)

    def close(self) -> None:
        self.backend.close()

    # -- manifests ------------------------------------------------------------------------

    def _load(self, name: str) -> BackupInfo:
        volume, _, file = name.rpartition("/")
        stamp = file[: -len(MANIFEST_SUFFIX)]
        manifest = Manifest.from_json(self.backend.get_bytes(name), f"{name} in {self.url}")
        return BackupInfo(f"{volume}@{stamp}", volume, stamp, manifest)

    def list(self, volume: str | None = None) -> list[BackupInfo]:
        """Complete backups (those with a readable manifest), newest first. Damaged
        manifests are skipped and recorded in ``self.damaged``."""
        prefix = f"{volume}/" if volume else ""
        names = [
            o.name
            for o in self.backend.list(prefix)
            if o.name.endswith(MANIFEST_SUFFIX) and o.name.count("/") == 1
        ]
        infos = []
        self.damaged = []
        for n in names:
            try:
                infos.append(self._load(n))
            except IntegrityError as e:
                self.damaged.append((n, e.message))
            except NotFoundError:
                continue  # deleted while listing
        infos.sort(key=lambda i: (i.created, i.stamp), reverse=True)
        return infos

    def volumes(self) -> list[str]:
        return sorted({i.volume for i in self.list()})

    def get(self, ref: str, *, one_volume: bool = False) -> BackupInfo:
        """The backup ``ref`` means: an ID, a set ID, ``latest``, ``NAME@latest``, a
        volume or container name (its newest backup), or a unique prefix of these
        (see resolve.py). A container set gives one member; see ``members``."""
        from .resolve import resolve

        ref = ref.strip()
        if "@" in ref and not ref.endswith("@latest"):
            with contextlib.suppress(ValueError, NotFoundError):
                # The common case, a full ID, without listing the repository.
                volume, stamp = split_id(ref)
                return self._load(f"{volume}/{stamp}{MANIFEST_SUFFIX}")
        return resolve(self.list(), ref, self.url, one_volume=one_volume)

    def find(self, ref: str) -> list[BackupInfo]:
        """Every backup ``ref`` names: all of a volume's or container's, or one backup
        or set; NotFoundError when none."""
        from .resolve import select

        infos = select(self.list(), ref.strip(), every=True).infos
        if not infos:
            raise NotFoundError(f"no backup matches '{ref}' in repository {self.url}",
                                hint="run 'volbak list' to see the backups, or check "
                                "--repo / VOLBAK_REPO")
        return infos

    def check_location(self, create: bool = False) -> None:
        """BackendError (exit 5) unless this location is a repository, or with
        ``create`` a new or empty place for one (see resolve.check_location)."""
        from .resolve import check_location

        check_location(self.backend, self.url, create)

    def members(self, info: BackupInfo) -> list[BackupInfo]:
        """All backups made in the same run as ``info`` (a container's volumes)."""
        if not info.manifest.set:
            return [info]
        return [i for i in self.list() if i.manifest.set == info.manifest.set]

    def has_manifest(self, volume: str, stamp: str) -> bool:
        try:
            self.backend.stat(f"{volume}/{stamp}{MANIFEST_SUFFIX}")
        except NotFoundError:
            return False
        return True

    def write_manifest(self, volume: str, stamp: str, manifest: Manifest) -> BackupInfo:
        self.backend.put_bytes(f"{volume}/{stamp}{MANIFEST_SUFFIX}", manifest.to_json())
        return BackupInfo(f"{volume}@{stamp}", volume, stamp, manifest)

    # -- backups --------------------------------------------------------------------------

    def _new_stamp(self, volume: str, when: dt.datetime, suffix: str) -> tuple[str, str]:
        """A stamp not used yet for this volume, and the archive's object name."""
        base = make_stamp(when)
        for n in range(1000):
            stamp = base if n == 0 else f"{base}-{n}"
            data = f"{volume}/{stamp}.tar{suffix}"
            if self.has_manifest(volume, stamp):
                continue
            try:
                self.backend.stat(data)
            except NotFoundError:
                return stamp, data
        raise UsageError(f"too many backups of '{volume}' in the same second")

    def create_backup(self, volume: str, when: dt.datetime, *, compression: str = "zstd",
                      recipients: Sequence[Any] = (), sha256: bool = False) -> BackupWriter:
        """A writer for one volume's tar stream; ``commit(manifest)`` lists the backup.
        ``sha256``: an archive also records its stored object's SHA-256 (for sha256sum)."""
        from ..stream import compress
        from .archive import ArchiveWriter

        found = self.format
        fmt = found if found != "new" else os.environ.get("VOLBAK_REPO_FORMAT") or "dedup"
        if fmt == "dedup" and sha256:  # before a new location becomes a dedup repository
            raise UsageError(
                f"repository {self.url} is "
                + ("new, and would be " if found == "new" else "")
                + "a dedup repository: it stores no single object whose SHA-256 "
                "--sha256 could record",
                hint="drop --sha256 (or the job's sha256 key), or create an archive "
                "repository first: volbak init --format archive")
        if found == "new" and fmt == "dedup":  # an archive one needs no config (as before)
            self.init(fmt, recipients)
        if fmt == "dedup":
            return self._create_dedup(volume, when, recipients)
        compress.check(compression)
        suffix = compress.SUFFIX[compression] + (".age" if recipients else "")
        stamp, data_name = self._new_stamp(volume, when, suffix)
        return ArchiveWriter(self, volume, stamp, data_name, compression, recipients, sha256)

    def _create_dedup(self, volume: str, when: dt.datetime, recipients: Sequence[Any]
                      ) -> BackupWriter:
        from ..crypto.age import ScryptRecipient
        from .dedup.writer import CHUNKS_SUFFIX, DedupWriter

        store = self.dedup()
        enc = store.config.encryption or {}
        given = {str(r) for r in recipients if not isinstance(r, ScryptRecipient)}
        store.derive += [r.identity() for r in recipients if isinstance(r, ScryptRecipient)]
        if recipients and (not enc or (given and given != set(enc.get("recipients", [])))
                           or (not given and not enc.get("passphrase"))):
            raise UsageError(
                f"repository {self.url} is a dedup repository: its encryption was set by "
                "'volbak init' and -r/-R/--passphrase-file cannot change it",
                hint="drop the encryption flags (the repository encrypts as set at init), "
                "or back up into another repository")
        base = make_stamp(when)
        for n in range(1000):
            stamp = base if n == 0 else f"{base}-{n}"
            if self.has_manifest(volume, stamp):
                continue
            try:
                self.backend.stat(f"{volume}/{stamp}{CHUNKS_SUFFIX}")
            except NotFoundError:
                return DedupWriter(self, store, volume, stamp)
        raise UsageError(f"too many backups of '{volume}' in the same second")

    def open_backup(self, info: BackupInfo, identities: Sequence[Any] = (), *,
                    every_hash: bool = False) -> BackupReader:
        """The backup's tar stream, checked as it is read (see format.BackupReader).
        A wrong or missing key fails here, before anything is read. An archive's stored
        object is checked with the cheapest hash its manifest records, or with
        ``every_hash`` with each (a dedup backup's chunks have one hash each)."""
        if info.manifest.repo_format == "dedup":
            from .dedup.reader import DedupReader

            return DedupReader(self.dedup(), info, identities)
        from .archive import ArchiveReader

        return ArchiveReader(self, info, identities, every_hash=every_hash)

    def check_stored(self, info: BackupInfo, identities: Sequence[Any] = ()) -> None:
        """What can be checked without any key: the stored data's sizes and hashes
        (dedup: the chunk list, the index entries, every pack used, with the host key
        file's metadata key)."""
        if info.manifest.repo_format == "dedup":
            from .dedup.reader import check_stored as check_dedup

            check_dedup(self.dedup(), info, identities)
            return
        from .archive import check_stored

        check_stored(self, info)

    def collect_garbage(self, **kw: Any) -> Any:
        """Dedup repositories: remove chunks no listed backup uses (see dedup/gc.py).
        Returns a report, or None for an archive repository (nothing to collect)."""
        if self.format != "dedup":
            return None
        from .dedup.gc import collect

        return collect(self, self.dedup(), **kw)

    def delete(self, info: BackupInfo) -> None:
        # Manifest first: from this point the backup is no longer listed, so a crash
        # before the data is gone leaves only an unlisted orphan, never a listed
        # backup without data.
        self.backend.delete(info.manifest_name)
        if info.manifest.object:
            with contextlib.suppress(NotFoundError):
                self.backend.delete(info.manifest.object["name"])
        chunks = (info.manifest.storage or {}).get("chunks")
        if info.manifest.repo_format == "dedup" and chunks:
            # The chunks themselves stay until a prune's garbage collection.
            with contextlib.suppress(NotFoundError):
                self.backend.delete(chunks)

    # -- garbage --------------------------------------------------------------------------

    def orphans(self) -> Iterable[str]:
        """Stored objects with no manifest: left by a crashed backup or prune."""
        return (o.name for o in self.orphan_objects())

    def orphan_objects(self) -> Iterable[ObjectInfo]:
        """``orphans`` with what the backend lists about each (size, mtime if known)."""
        objs = {o.name: o for o in self.backend.list()}
        listed = {n[: -len(MANIFEST_SUFFIX)] for n in objs if n.endswith(MANIFEST_SUFFIX)}
        for n in sorted(objs):
            if n.startswith("_") or "/" not in n:
                continue  # the dedup format's own objects and the config (see dedup/gc.py)
            vol, _, file = n.rpartition("/")
            if not n.endswith(MANIFEST_SUFFIX) and f"{vol}/{file.split('.', 1)[0]}" not in listed:
                yield objs[n]

    def delete_orphan(self, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            self.backend.delete(name)

    def incomplete_writes(self, older_than_seconds: float, *, remove: bool = False
                          ) -> list[str]:
        """Unfinished writes older than that (local temp files, S3 multipart uploads),
        as far as the backend can tell; removed first with ``remove``."""
        if remove:
            return list(self.backend.remove_incomplete(older_than_seconds))
        return list(self.backend.list_incomplete(older_than_seconds))
