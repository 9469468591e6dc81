"""The seam between operations and the ways a repository stores backups.

Operations hand a repository the *plain tar stream* of one volume and get it back the
same way; how it is stored (one compressed, encrypted object per backup, or
deduplicated chunks in packs) is the format's business. Every format MUST:

- store nothing that is listed before ``BackupWriter.commit()`` returns: the manifest
  is written last, and a backup without one is never listed;
- leave only unlisted garbage (which ``prune``/``cleanup`` removes) after ``abort()``,
  an exception, or a crash at any instant;
- check on read everything it stored (sizes, hashes, authentication) and raise
  ``IntegrityError`` (or ``CryptoError`` for a wrong key) no later than the read that
  returns the last byte, so a consumer never takes a damaged backup for a whole one;
- keep memory bounded independently of the backup's size.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manifest import BackupInfo, Manifest


class BackupWriter(abc.ABC):
    """Takes one volume's tar stream. Use as a context manager: leaving the block
    without ``commit()`` aborts."""

    @abc.abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """The next piece of the tar stream."""

    @abc.abstractmethod
    def commit(self, manifest: Manifest) -> BackupInfo:
        """Finish storing, fill in the format's part of ``manifest`` (``storage`` and
        ``repo_format``), write the manifest last, and return the listed backup."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop what this writer stored that nothing else references. Idempotent."""

    def __enter__(self) -> BackupWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class BackupReader(abc.ABC):
    """A stored backup's tar stream, checked as it is read."""

    @abc.abstractmethod
    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the tar stream; ``b""`` at the end, once every check
        has passed."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> BackupReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
