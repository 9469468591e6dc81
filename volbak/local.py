"""The local-directory backend: plain files a person can read.

Objects are files under the repository directory; a name's '/' separators are
subdirectories. A write goes to a hidden temp file beside its target, is fsynced,
renamed into place, and the directory is fsynced, so a crash leaves either the old
state or the complete object, and listing skips the temp files. The temp files a crash
leaves are found by ``list_incomplete``/``remove_incomplete`` by their age: the time of
their last write (mtime), so one still being written is never taken.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from .backend import Backend, ObjectInfo, ObjectWriter, check_name
from .errors import (
    BackendError,
    BackendFullError,
    BackendPermissionError,
    ObjectNotFound,
    UsageError,
)
from .util.host import fsync_dir, write_all

TMP_PREFIX = ".volbak-tmp-"


def _translate(exc: OSError, what: str) -> BackendError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BackendFullError(
            f"no space left writing {what}",
            hint="free space on the repository's disk or point --repo elsewhere",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BackendPermissionError(
            f"repository is not writable: {what} ({exc.strerror})",
            hint="check the directory's permissions or pass another --repo",
        )
    if exc.errno == errno.ENOENT:
        return ObjectNotFound(f"no such object: {what}")
    return BackendError(f"repository I/O error on {what}: {exc.strerror or exc}")


class _LocalWriter(ObjectWriter):
    def __init__(self, final: Path, display: str) -> None:
        self._final = final
        self._display = display
        self._tmp = final.parent / f"{TMP_PREFIX}{final.name}.{secrets.token_hex(6)}"
        self._size = 0
        for attempt in range(8):
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self._tmp, "xb", buffering=0)  # noqa: SIM115 - closed in commit/abort
                break
            except (FileNotFoundError, FileExistsError) as e:
                # A delete of the directory's last object (LocalBackend.delete) removed
                # it between mkdir's own check and its answer (FileExistsError), or
                # between our mkdir and open (FileNotFoundError): make it again.
                if attempt == 7:
                    raise _translate(e, display) from None
            except OSError as e:
                raise _translate(e, display) from None

    def write(self, data: bytes | memoryview) -> None:
        try:
            write_all(self._f.fileno(), data)
        except OSError as e:
            self.abort()
            raise _translate(e, self._display) from None
        self._size += len(data)

    def _commit(self) -> ObjectInfo:
        try:
            os.fsync(self._f.fileno())
            self._f.close()
            os.rename(self._tmp, self._final)
            fsync_dir(self._final.parent)
        except OSError as e:
            raise _translate(e, self._display) from None
        return ObjectInfo(self._display, self._size)

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()
        if "/" in self._display:  # the volume's directory, if this left it empty
            with contextlib.suppress(OSError):
                self._tmp.parent.rmdir()


class LocalBackend(Backend):
    scheme = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, str]) -> LocalBackend:
        if options:
            raise UsageError(
                f"the local repository takes no options (got {', '.join(options)})",
                hint="remove the -o/--repo-option flags",
            )
        path = url[len("file://") :] if url.startswith("file://") else url
        return cls(Path(path).expanduser().absolute())

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def create_writer(self, name: str) -> ObjectWriter:
        return _LocalWriter(self._path(name), name)

    def open_reader(self, name: str) -> BinaryIO:
        try:
            return open(self._path(name), "rb")
        except OSError as e:
            raise _translate(e, name) from None

    def read_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        try:
            with open(self._path(name), "rb", buffering=0) as f:
                if length is None:
                    f.seek(offset)
                    return f.read()
                return os.pread(f.fileno(), length, offset)
        except OSError as e:
            raise _translate(e, name) from None

    def stat(self, name: str) -> ObjectInfo:
        try:
            st = self._path(name).stat()
        except OSError as e:
            raise _translate(e, name) from None
        return ObjectInfo(name, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.exists():
            return
        try:
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                rel = os.path.relpath(dirpath, self.root)
                for fn in sorted(filenames):
                    if fn.startswith(TMP_PREFIX):
                        continue
                    name = fn if rel == "." else f"{rel}/{fn}"
                    if name.startswith(prefix):
                        with contextlib.suppress(FileNotFoundError):
                            st = os.lstat(os.path.join(dirpath, fn))
                            yield ObjectInfo(name, st.st_size, st.st_mtime)
        except OSError as e:
            raise _translate(e, prefix or str(self.root)) from None

    def _incomplete(self, older_than_seconds: float) -> Iterator[tuple[Path, str]]:
        """Temp files last written before now - age, with their one-line description."""
        if not self.root.exists():
            return
        cutoff = time.time() - older_than_seconds
        try:
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames.sort()
                for fn in sorted(filenames):
                    if not fn.startswith(TMP_PREFIX):
                        continue
                    path = Path(dirpath) / fn
                    try:
                        st = path.lstat()
                    except FileNotFoundError:
                        continue  # its writer committed or aborted meanwhile
                    if not stat.S_ISREG(st.st_mode) or st.st_mtime >= cutoff:
                        continue
                    rel = path.relative_to(self.root)
                    # TMP_PREFIX + final name + "." + random suffix (see _LocalWriter)
                    name = str(rel.parent / fn[len(TMP_PREFIX) :].rpartition(".")[0])
                    name = name.removeprefix("./")
                    when = datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC)
                    yield path, (
                        f"{name} (temp file {rel}, {st.st_size} bytes, last written "
                        f"{when:%Y-%m-%dT%H:%M:%SZ})"
                    )
        except OSError as e:
            raise _translate(e, str(self.root)) from None

    def list_incomplete(self, older_than_seconds: float) -> list[str]:
        return [what for _, what in self._incomplete(older_than_seconds)]

    def remove_incomplete(self, older_than_seconds: float) -> list[str]:
        removed = []
        for path, what in list(self._incomplete(older_than_seconds)):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise _translate(e, what) from None
            removed.append(what)
            if path.parent != self.root:  # the volume's directory, if this left it empty
                with contextlib.suppress(OSError):
                    path.parent.rmdir()
        return removed

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            path.unlink()
        except OSError as e:
            raise _translate(e, name) from None
        # Drop the volume's directory once its last backup is gone.
        with contextlib.suppress(OSError):
            if path.parent != self.root:
                path.parent.rmdir()
