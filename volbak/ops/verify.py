"""Verify stored backups by reading them back.

With the key (or for unencrypted backups) the whole chain is checked: the stored
object's size and every hash its manifest records (blake3; sha256 in older backups
and those made with --sha256: a restore checks only the cheaper one), decryption,
decompression and the tar stream up to its end marker. Without the key of an encrypted
backup only the stored object's size and hashes can be checked, and the result says so
(``level="hash"``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from ..errors import VolbakError
from ..repository import BackupInfo, Repository
from ..stream.pipeline import checked_chunks
from ..stream.tar import TarParser


@dataclasses.dataclass
class VerifyResult:
    id: str
    ok: bool
    level: str  # "full", "hash" (archive, no key) or "structure" (dedup, no identity)
    seconds: float
    tar_bytes: int | None = None
    entries: int | None = None
    error: str | None = None
    exit_code: int = 0

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify_backup(repo: Repository, info: BackupInfo, identities: Sequence[Any] = ()
                  ) -> VerifyResult:
    full = not info.manifest.encryption or bool(identities)
    t0 = time.monotonic()
    level = "full" if full else ("structure" if info.manifest.repo_format == "dedup" else "hash")
    result = VerifyResult(info.id, True, level, 0.0)
    try:
        if full:
            parser = TarParser(root=info.manifest.archive_root, what=f"backup {info.id}")
            with repo.open_backup(info, identities, every_hash=True) as reader:
                for _ in checked_chunks(reader.read, parser.feed, parser.check_complete):
                    pass
            result.tar_bytes, result.entries = parser.tar_bytes, parser.entries
        else:
            repo.check_stored(info)
    except VolbakError as e:
        result.ok, result.error, result.exit_code = False, e.message, e.exit_code
    result.seconds = round(time.monotonic() - t0, 3)
    return result
