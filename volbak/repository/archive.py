"""Repository format "archive": one object per backup, readable with plain tools.

    <volume>/<stamp>.tar[.zst|.gz][.age]     tar -> compress -> [age]; hashed in the manifest
    <volume>/<stamp>.manifest.json           written last

So ``age -d | zstd -d | tar x`` restores a backup when volbak is not at hand.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import blake3

from ..errors import IntegrityError, NotFoundError, UsageError
from ..stream import compress
from ..stream.pump import CHUNK, Drain, HashSink
from ..util.signals import deferred
from .format import BackupReader, BackupWriter

if TYPE_CHECKING:
    from ..backend import ObjectWriter
    from . import Repository
    from .manifest import BackupInfo, Manifest


def encryption_record(recipients: Sequence[Any]) -> dict[str, Any] | None:
    """What the manifest says about encryption: public recipients only, never a secret."""
    if not recipients:
        return None
    from ..crypto.age import ScryptRecipient

    return {
        "format": "age-v1",
        "recipients": [str(r) for r in recipients if not isinstance(r, ScryptRecipient)],
        "passphrase": any(isinstance(r, ScryptRecipient) for r in recipients),
    }


# What a manifest records of its stored object, besides its size. blake3 is volbak's
# own: 0.18 s per GiB here against sha256's 0.6 s, and both a 1 GiB backup and a 1 GiB
# restore are CPU-bound on two cores (a sha256 took a fifth of the backup's CPU and a
# third of the restore's). sha256 only on request (``backup --sha256``), for sha256sum:
# b3sum is not even in Debian 12, while plain tools check the object anyway as they
# read it (zstd's frame checksum, age's authenticated chunks). Backups made before
# blake3 record sha256 alone, and are checked with it.
_HASHES = {"sha256": hashlib.sha256, "blake3": blake3.blake3}


def object_hashes(obj: dict[str, Any] | None = None, *, every: bool = True,
                  sha256: bool = False) -> dict[str, Any]:
    """Fresh hashers by name: for a new object (``obj`` None) blake3, and sha256 too
    with ``sha256``; for a stored one those its manifest records, or with
    ``every=False`` only the cheapest of those."""
    if obj is None:
        return {name: new() for name, new in _HASHES.items() if sha256 or name == "blake3"}
    names = [name for name in _HASHES if name in obj]
    if not every and "blake3" in names:
        names = ["blake3"]
    return {name: _HASHES[name]() for name in names}


def _matches(obj: dict[str, Any], hashed: HashSink) -> bool:
    return hashed.size == obj.get("size") and \
        all(digest == obj.get(name) for name, digest in hashed.hexdigests().items())


class ArchiveWriter(BackupWriter):
    """Compresses in the caller's thread; a drain thread encrypts, hashes and writes, so
    the three overlap."""

    def __init__(self, repo: Repository, volume: str, stamp: str, data_name: str,
                 compression: str, recipients: Sequence[Any], sha256: bool = False) -> None:
        self._repo = repo
        self._volume = volume
        self._stamp = stamp
        self.data_name = data_name
        self._compression = compression
        self._recipients = list(recipients)
        self._sha256 = sha256
        self._comp = compress.compressor(compression)
        # Nothing is stored until the first write: by then the caller's ``with`` block
        # owns this writer, so a signal at any instant after the temp file exists ends
        # in abort(). Created here, a signal landing before the caller's ``with`` took
        # the writer (a thread start waits for the scheduler: long under load) left
        # the temp file with nobody to remove it.
        self._writer: ObjectWriter | None = None
        self._sink: HashSink | None = None
        self._encrypt: Any = None
        self._drain: Drain | None = None
        self._done = False

    def _start(self) -> Drain:
        if self._drain is not None:
            return self._drain
        if self._writer is None:
            with deferred():  # the temp file exists from inside this call: owned at once
                self._writer = self._repo.backend.create_writer(self.data_name)
        self._sink = HashSink(object_hashes(sha256=self._sha256), self._writer.write)
        if self._recipients:
            from ..crypto.age import EncryptWriter

            self._encrypt = EncryptWriter(self._sink, self._recipients)
        self._drain = Drain(self._encrypt.write if self._encrypt else self._sink.write)
        return self._drain

    def write(self, data: bytes | memoryview) -> None:
        drain = self._drain if self._drain is not None else self._start()
        drain.write(self._comp.write(data))

    def commit(self, manifest: Manifest) -> BackupInfo:
        try:
            self._start()
            assert self._drain is not None and self._writer is not None
            assert self._sink is not None
            self._drain.write(self._comp.finish())
            self._drain.close()
            if self._encrypt:
                self._encrypt.close()
            stored = self._writer.commit()
            manifest.repo_format = "archive"
            manifest.compression = self._compression
            manifest.encryption = encryption_record(self._recipients)
            manifest.object = {"name": self.data_name, "size": stored.size,
                               **self._sink.hexdigests()}
            info = self._repo.write_manifest(self._volume, self._stamp, manifest)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return info

    def abort(self) -> None:
        """Any way out before the manifest is written (an error, Ctrl-C, SIGTERM even
        just after the archive's commit) removes the archive: a backup is there whole or
        not at all. The name is this run's own, so nobody else's data is touched."""
        if self._done:
            return
        # Held back from the first line: a second signal between these steps would
        # leave the temp file (the writer marked done but not yet aborted).
        with deferred():
            self._done = True
            if self._drain is not None:
                self._drain.abandon()
            if self._writer is None:
                return  # nothing was stored
            self._writer.abort()
            with contextlib.suppress(Exception):
                if not self._repo.has_manifest(self._volume, self._stamp):
                    self._repo.backend.delete(self.data_name)


class _HashingReader:
    def __init__(self, raw: Any, hashes: dict[str, Any]) -> None:
        self._raw = raw
        self.hashed = HashSink(hashes)

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hashed.write(data)
        return data


def _corrupt(info: BackupInfo, size: int) -> IntegrityError:
    obj = info.manifest.object or {}
    return IntegrityError(
        f"backup {info.id} is corrupt: the stored object {obj.get('name')} ({size} bytes) "
        "does not match its manifest's size and hashes",
        hint="the archive was damaged or truncated in storage; restore an older backup",
    )


class ArchiveReader(BackupReader):
    """stored object -> hash -> [age] -> decompress. Opening checks the encryption
    header, so a wrong key fails before any target exists. The hash is the cheapest the
    manifest records, or with ``every_hash`` each of them (verify)."""

    def __init__(self, repo: Repository, info: BackupInfo, identities: Sequence[Any],
                 *, every_hash: bool = False) -> None:
        self.info = info
        m = info.manifest
        compress.check(m.compression)
        try:
            self._raw = repo.backend.open_reader(info.manifest.object["name"])  # type: ignore[index]
        except NotFoundError:
            raise IntegrityError(
                f"backup {info.id} is listed but its archive "
                f"{(m.object or {}).get('name')} is missing from {repo.url}",
                hint="the repository was modified by hand or damaged; restore another backup",
            ) from None
        self._hashed = _HashingReader(self._raw, object_hashes(m.object, every=every_hash))
        self._read = self._hashed.read
        self._eof = False
        try:
            if m.encryption:
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
        self._plain = compress.Reader(m.compression, self._read)

    def read(self, n: int) -> bytes:
        if self._eof:
            return b""
        out = self._plain.read(n)
        if out:
            return out
        self._eof = True
        # drain what the decompressor did not need (there must be nothing) into the hash
        while self._read(2**20):
            pass
        obj = self.info.manifest.object or {}
        if not _matches(obj, self._hashed.hashed):
            raise _corrupt(self.info, self._hashed.hashed.size)
        return b""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()


def check_stored(repo: Repository, info: BackupInfo) -> None:
    """The stored object's size and every hash its manifest records, without any key."""
    obj = info.manifest.object or {}
    try:
        reader = repo.backend.open_reader(obj["name"])
    except NotFoundError:
        raise IntegrityError(f"backup {info.id} is listed but its archive {obj['name']} "
                             "is missing", hint="restore another backup") from None
    hashing = _HashingReader(reader, object_hashes(obj))
    try:
        while hashing.read(CHUNK):
            pass
    finally:
        reader.close()
    if not _matches(obj, hashing.hashed):
        raise _corrupt(info, hashing.hashed.size)
