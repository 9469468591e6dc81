"""A backup's manifest: what was backed up, from where, and how it is stored.

Stored as JSON next to the data (``<volume>/<stamp>.manifest.json``), written last.
The JSON layout of format 1 is kept exactly (``object`` for the archive's stored object);
fields this version does not know are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from ..errors import IntegrityError

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST_SUFFIX = ".manifest.json"


def make_stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime(STAMP_FORMAT)


def parse_time(text: str) -> dt.datetime:
    """Parse the manifest's ISO 8601 ``created`` (always UTC)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def split_id(backup_id: str) -> tuple[str, str]:
    volume, sep, stamp = backup_id.rpartition("@")
    if not sep or not volume or not stamp:
        raise ValueError(backup_id)
    return volume, stamp


_KNOWN = ("format", "volbak_version", "created", "duration_seconds", "volume", "mount_path",
          "archive_root", "containers", "container", "set", "source_engine", "source",
          "compression", "encryption", "object", "tar", "repo_format", "storage", "warnings")


@dataclasses.dataclass
class Manifest:
    """The fields volbak reads; ``to_dict`` gives the stored JSON object."""

    volume: dict[str, Any]  # name, driver, driver_options, labels, scope
    created: str  # ISO 8601 UTC
    tar: dict[str, Any] = dataclasses.field(default_factory=dict)  # size, entries, file_bytes
    compression: str = "zstd"
    encryption: dict[str, Any] | None = None  # format, recipients, passphrase
    mount_path: str | None = None
    archive_root: str = "data"
    containers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    container: str | None = None
    set: str | None = None
    source_engine: dict[str, Any] = dataclasses.field(default_factory=dict)
    source: str = "api"  # how the volume was read: "api" (archive API) or "direct"
    duration_seconds: float = 0.0
    format: int = 1
    volbak_version: str = ""
    repo_format: str = "archive"  # "archive" | "dedup"
    object: dict[str, Any] | None = None  # archive format: name, size, sha256
    storage: dict[str, Any] | None = None  # other formats' own record
    warnings: list[str] = dataclasses.field(default_factory=list)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def volume_name(self) -> str:
        return self.volume["name"]

    @property
    def created_at(self) -> dt.datetime:
        return parse_time(self.created)

    @property
    def stored_size(self) -> int:
        """Bytes this backup added to the repository (its own objects)."""
        if self.object is not None:
            return int(self.object["size"])
        return int((self.storage or {}).get("size", 0))

    @property
    def entries(self) -> int | None:
        return self.tar.get("entries")

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        for key in ("object", "storage"):
            if d[key] is None:
                del d[key]
        if not d["warnings"]:
            del d["warnings"]
        return {**self.extra, **d}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Manifest:
        """Parse a stored manifest; anything malformed is an IntegrityError naming it."""
        try:
            if not isinstance(d, dict):
                raise TypeError(f"a JSON {type(d).__name__}, not an object")
            vol = d["volume"]
            if not isinstance(vol, dict) or not isinstance(vol.get("name"), str):
                raise TypeError("'volume.name' missing")
            parse_time(d["created"])
            m = cls(
                volume=vol, created=d["created"], tar=dict(d.get("tar") or {}),
                compression=str(d.get("compression", "none")),
                encryption=d.get("encryption") or None,
                mount_path=d.get("mount_path"), archive_root=d.get("archive_root", "data"),
                containers=list(d.get("containers") or []), container=d.get("container"),
                set=d.get("set"), source_engine=dict(d.get("source_engine") or {}),
                source=d.get("source", "api"),
                duration_seconds=float(d.get("duration_seconds") or 0.0),
                format=int(d.get("format", 1)), volbak_version=d.get("volbak_version", ""),
                repo_format=d.get("repo_format", "archive"), object=d.get("object"),
                storage=d.get("storage"), warnings=list(d.get("warnings") or []),
                extra={k: v for k, v in d.items() if k not in _KNOWN},
            )
            if m.repo_format == "archive":
                obj = m.object
                if not isinstance(obj, dict) or not {"name", "size"} <= obj.keys() or \
                        not {"sha256", "blake3"} & obj.keys():
                    raise TypeError("'object' (name, size, sha256 or blake3) missing")
                if not isinstance(obj["name"], str) or not isinstance(obj["size"], int):
                    raise TypeError("'object' name or size of the wrong type")
                if not all(isinstance(obj.get(k, ""), str) for k in ("sha256", "blake3")):
                    raise TypeError("'object' sha256 or blake3 of the wrong type")
        # AttributeError: a "created" that is not a string (parse_time calls .replace).
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise IntegrityError(
                f"manifest {where} is malformed ({e})",
                hint="the repository was modified by hand or the disk is damaged; "
                "'volbak verify --all' lists every damaged backup",
            ) from None
        return m

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        try:
            data = json.loads(raw)
        except ValueError as e:
            raise IntegrityError(
                f"manifest {where} is not valid JSON: {e}",
                hint="the repository was modified by hand or the disk is damaged",
            ) from None
        return cls.from_dict(data, where)


@dataclasses.dataclass
class BackupInfo:
    """A listed backup: its ID and manifest."""

    id: str
    volume: str
    stamp: str
    manifest: Manifest

    @property
    def manifest_name(self) -> str:
        return f"{self.volume}/{self.stamp}{MANIFEST_SUFFIX}"

    @property
    def created(self) -> dt.datetime:
        return self.manifest.created_at

    @property
    def size(self) -> int:
        return self.manifest.stored_size

    def summary(self) -> dict[str, Any]:
        """The fields ``volbak list --json`` prints."""
        m = self.manifest
        return {
            "id": self.id,
            "volume": self.volume,
            "created": m.created,
            "size": self.size,
            "compression": m.compression,
            "encrypted": bool(m.encryption),
            "container": m.container,
            "set": m.set,
            "entries": m.entries,
            "format": m.repo_format,
            "source": m.source,
        }
