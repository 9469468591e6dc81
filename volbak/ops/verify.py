"""Verify stored backups by reading them back.

With the key (or for unencrypted backups) the whole chain is checked: stored sha256
and size, decryption, decompression and the tar stream up to its end marker. Without
the key of an encrypted backup only the stored object's sha256 and size can be
checked, and the result says so (``level="hash"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from typing import Any

from ..errors import IntegrityError, VolbakError
from ..repository import BackupInfo, Repository
from ..stream.pump import CHUNK
from .restore import BackupSource


@dataclasses.dataclass
class VerifyResult:
    id: str
    ok: bool
    level: str  # "full" or "hash"
    seconds: float
    tar_bytes: int | None = None
    entries: int | None = None
    error: str | None = None
    exit_code: int = 0

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_hash(repo: Repository, info: BackupInfo) -> None:
    obj = info.manifest["object"]
    h = hashlib.sha256()
    size = 0
    reader = repo.backend.open_reader(info.data_name)
    try:
        while data := reader.read(CHUNK):
            h.update(data)
            size += len(data)
    finally:
        reader.close()
    if size != obj["size"] or h.hexdigest() != obj["sha256"]:
        raise IntegrityError(
            f"backup {info.id} is corrupt: stored object {obj['name']} ({size} bytes) "
            "does not match its manifest's sha256/size",
            hint="restore from an older backup; this one cannot be trusted",
        )


def verify_backup(repo: Repository, info: BackupInfo, identities: Sequence[Any] = ()
                  ) -> VerifyResult:
    full = not info.manifest.get("encryption") or bool(identities)
    t0 = time.monotonic()
    result = VerifyResult(info.id, True, "full" if full else "hash", 0.0)
    try:
        if full:
            source = BackupSource(repo, info, identities)
            try:
                for _ in source.chunks():
                    pass
            finally:
                source.close()
            result.tar_bytes, result.entries = source.tar_bytes, source.scanner.entries
        else:
            _check_hash(repo, info)
    except VolbakError as e:
        result.ok, result.error, result.exit_code = False, e.message, e.exit_code
    result.seconds = round(time.monotonic() - t0, 3)
    return result
