"""A repository: backups stored as plain objects in a backend.

Layout, readable by a person with ``ls``::

    <repo>/<volume>/<stamp>.tar.zst[.age]     the archive (name depends on compression/encryption)
    <repo>/<volume>/<stamp>.manifest.json      written last: a backup without it is not listed

A backup's ID is ``<volume>@<stamp>`` with ``stamp`` like ``20261129T070001Z``.
Deleting removes the manifest first, so an interrupted delete never leaves a listed
backup whose archive is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from ..backend import Backend
from ..errors import IntegrityError, NotFoundError

MANIFEST_SUFFIX = ".manifest.json"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def make_stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(STAMP_FORMAT)


def parse_time(text: str) -> dt.datetime:
    """Parse the manifest's ISO 8601 ``created`` (always UTC)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


@dataclasses.dataclass
class BackupInfo:
    id: str
    volume: str
    stamp: str
    manifest: dict[str, Any]

    @property
    def manifest_name(self) -> str:
        return f"{self.volume}/{self.stamp}{MANIFEST_SUFFIX}"

    @property
    def data_name(self) -> str:
        return self.manifest["object"]["name"]

    @property
    def created(self) -> dt.datetime:
        return parse_time(self.manifest["created"])

    @property
    def size(self) -> int:
        return int(self.manifest["object"]["size"])

    def summary(self) -> dict[str, Any]:
        """The fields ``volbak list --json`` prints."""
        m = self.manifest
        return {
            "id": self.id,
            "volume": self.volume,
            "created": m["created"],
            "size": self.size,
            "compression": m["compression"],
            "encrypted": bool(m.get("encryption")),
            "container": m.get("container"),
            "set": m.get("set"),
            "entries": m.get("tar", {}).get("entries"),
        }


def split_id(backup_id: str) -> tuple[str, str]:
    volume, sep, stamp = backup_id.rpartition("@")
    if not sep or not volume or not stamp:
        raise ValueError(backup_id)
    return volume, stamp


class Repository:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def url(self) -> str:
        return self.backend.url

    def _load(self, name: str) -> BackupInfo:
        volume, _, file = name.rpartition("/")
        stamp = file[: -len(MANIFEST_SUFFIX)]
        raw = self.backend.get_bytes(name)
        try:
            manifest = json.loads(raw)
        except ValueError as e:
            raise IntegrityError(
                f"manifest {name} in {self.url} is not valid JSON: {e}",
                hint="the repository was modified by hand or the disk is damaged",
            ) from None
        return BackupInfo(f"{volume}@{stamp}", volume, stamp, manifest)

    def list(self, volume: str | None = None) -> list[BackupInfo]:
        """Complete backups (those with a manifest), newest first."""
        prefix = f"{volume}/" if volume else ""
        names = [
            o.name
            for o in self.backend.list(prefix)
            if o.name.endswith(MANIFEST_SUFFIX) and o.name.count("/") == 1
        ]
        infos = [self._load(n) for n in names]
        infos.sort(key=lambda i: (i.created, i.stamp), reverse=True)
        return infos

    def volumes(self) -> list[str]:
        return sorted({i.volume for i in self.list()})

    def get(self, ref: str) -> BackupInfo:
        """A backup ID, or a volume name meaning its newest complete backup."""
        if "@" in ref:
            try:
                volume, stamp = split_id(ref)
            except ValueError:
                raise NotFoundError(
                    f"malformed backup ID '{ref}'",
                    hint="IDs look like VOLUME@20261129T070001Z; see volbak list",
                ) from None
            name = f"{volume}/{stamp}{MANIFEST_SUFFIX}"
            try:
                return self._load(name)
            except NotFoundError:
                raise NotFoundError(
                    f"no backup '{ref}' in repository {self.url}",
                    hint="run 'volbak list' to see the backup IDs",
                ) from None
        found = self.list(ref)
        if not found:
            raise NotFoundError(
                f"no backup of volume '{ref}' in repository {self.url}",
                hint="run 'volbak list' to see the backups, or check --repo / VOLBAK_REPO",
            )
        return found[0]

    def members(self, info: BackupInfo) -> list[BackupInfo]:
        """All backups made in the same run as ``info`` (a container's volumes)."""
        set_id = info.manifest.get("set")
        if not set_id:
            return [info]
        return [i for i in self.list() if i.manifest.get("set") == set_id]

    def delete(self, info: BackupInfo) -> None:
        # Manifest first: from this point the backup is no longer listed, so a crash
        # before the archive is gone leaves only an unlisted orphan, never a listed
        # backup without data.
        self.backend.delete(info.manifest_name)
        with contextlib.suppress(NotFoundError):
            self.backend.delete(info.data_name)

    def write_manifest(self, volume: str, stamp: str, manifest: dict[str, Any]) -> BackupInfo:
        data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        self.backend.put_bytes(f"{volume}/{stamp}{MANIFEST_SUFFIX}", data)
        return BackupInfo(f"{volume}@{stamp}", volume, stamp, manifest)

    def orphans(self) -> Iterable[str]:
        """Archive objects with no manifest: left by a crashed backup or prune."""
        names = {o.name for o in self.backend.list()}
        listed = {n[: -len(MANIFEST_SUFFIX)] for n in names if n.endswith(MANIFEST_SUFFIX)}
        for n in sorted(names):
            vol, _, file = n.rpartition("/")
            if not n.endswith(MANIFEST_SUFFIX) and f"{vol}/{file.split('.', 1)[0]}" not in listed:
                yield n
