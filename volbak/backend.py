"""The storage backend contract and the plugin registry.

A backend is a flat store of named objects. Names are relative, '/'-separated keys
("pgdata/20261129T070001Z.tar.zst"): never empty, no leading '/', no '.' or '..'
component. Every backend MUST:

- make an object visible only when its writer's ``commit()`` returns: a reader, ``stat``
  or ``list`` never sees a partly written object, and ``commit()`` replaces an existing
  object of the same name atomically;
- leave nothing behind (no temp file, no multipart upload) after ``abort()``, after the
  writer's context exits without ``commit()``, or after an exception while writing;
- stream in both directions with memory bounded independently of the object's size;
- ``read_range(name, offset, length)`` return exactly the object's bytes
  ``[offset, offset+length)`` (fewer only where the object ends; ``length=None`` means
  to the end); the default reads and discards, a backend SHOULD fetch only the range;
- ``list(prefix)`` every committed object whose name starts with ``prefix``, at any depth,
  in any order; ``stat``/``open_reader``/``delete`` of a missing name raise ObjectNotFound;
- raise only errors from ``volbak.errors`` (BackendError and its subclasses); never a
  library's own exception type.

Optional: object ages. ``ObjectInfo.mtime`` is when the object was stored (POSIX
seconds, by the store's clock: its commit, or the start of its upload, as S3 reports
multipart uploads); ``list`` and ``stat`` SHOULD fill it in, and then it MUST NOT be
earlier than the start of the writer that stored it (give or take the store's rounding
of times to whole seconds). ``None`` (the default, and what older plugins give) means
unknown: cleanup then never removes an orphan object by its age, it only reports it.

Optional: unfinished writes. A writer killed before ``commit()``/``abort()`` (a crash,
SIGKILL, a lost network) can leave a temp file or a multipart upload behind, invisible to
``list`` and possibly large. A backend that can find them implements
``list_incomplete(older_than_seconds)`` and ``remove_incomplete(older_than_seconds)``
(the defaults find nothing). Both return one line per unfinished write, starting with the
name of the object it was writing ("vol/x.tar (multipart upload ..., started ...)"), and
they MUST:

- consider only what this repository's own writers leave (temp files under its root,
  multipart uploads under its prefix, never a sibling prefix or anything else);
- never list or remove anything begun or written to less than ``older_than_seconds``
  ago: a live writer on another host may still be using it, so when in doubt (coarse or
  skewed clocks) count an unfinished write as younger, not older;
- ``list_incomplete`` changes nothing; ``remove_incomplete`` removes and returns what it
  listed, and something that vanished meanwhile (its writer finished) is not an error.

Backends are found through the ``volbak.backends`` entry-point group, keyed by URL
scheme, and imported only when a repository URL uses them. A plain path means ``file``.
``volbak.testing`` holds the contract test suite every backend runs.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import re
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import BinaryIO, ClassVar

from .errors import BackendMissing, UsageError
from .util.signals import deferred

ENTRY_POINT_GROUP = "volbak.backends"

# Plugins we know the distribution name of, for the install hint.
KNOWN_PLUGINS = {"s3": "volbak-s3"}


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    # Optional (see the module doc). Not compared: equality stays (name, size), as it was
    # before backends reported times.
    mtime: float | None = dataclasses.field(default=None, compare=False)


class ObjectWriter(abc.ABC):
    """Streams one object into a backend. Use as a context manager: leaving the
    block without ``commit()`` (or with an exception) aborts."""

    _done = False

    @abc.abstractmethod
    def write(self, data: bytes | memoryview) -> None: ...

    @abc.abstractmethod
    def _commit(self) -> ObjectInfo: ...

    @abc.abstractmethod
    def _abort(self) -> None: ...

    def commit(self) -> ObjectInfo:
        if self._done:
            raise RuntimeError("writer already finished")
        try:
            info = self._commit()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return info

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._abort()

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class Backend(abc.ABC):
    """See the module docstring for the rules every method MUST follow."""

    scheme: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str, options: Mapping[str, str]) -> Backend:
        """Open the repository at ``url``; ``options`` come from ``-o key=value``."""

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Where this repository is, for messages (never includes secrets)."""

    @abc.abstractmethod
    def create_writer(self, name: str) -> ObjectWriter: ...

    @abc.abstractmethod
    def open_reader(self, name: str) -> BinaryIO:
        """A readable stream (``read(n)``, ``close()``) of a committed object."""

    @abc.abstractmethod
    def stat(self, name: str) -> ObjectInfo: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    @abc.abstractmethod
    def delete(self, name: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has nothing to release."""

    def list_incomplete(self, older_than_seconds: float) -> list[str]:
        """Unfinished writes begun (or last written) more than ``older_than_seconds``
        ago, one line each starting with the object's name. Optional (see the module
        doc); the default finds none."""
        return []

    def remove_incomplete(self, older_than_seconds: float) -> list[str]:
        """Remove what ``list_incomplete(older_than_seconds)`` lists and return it.
        Optional (see the module doc); the default removes nothing."""
        return []

    def put_bytes(self, name: str, data: bytes) -> ObjectInfo:
        with contextlib.ExitStack() as stack:
            # Created and taken by the stack with signals held: a signal landing
            # between the temp object's creation and the ``with`` would leave it.
            with deferred():
                w = stack.enter_context(self.create_writer(name))
            w.write(data)
            return w.commit()

    def read_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset+length)`` of a committed object (to its end if
        ``length`` is None). This default streams and discards the prefix, so older
        plugins keep working; backends override it with a real ranged read."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        r = self.open_reader(name)
        try:
            skip = offset
            while skip:
                got = r.read(min(skip, 1 << 20))
                if not got:
                    return b""
                skip -= len(got)
            if length is None:
                return r.read()
            parts, want = [], length
            while want:
                got = r.read(want)
                if not got:
                    break
                parts.append(got)
                want -= len(got)
            return b"".join(parts)
        finally:
            r.close()

    def get_bytes(self, name: str) -> bytes:
        r = self.open_reader(name)
        try:
            return r.read()
        finally:
            r.close()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_NAME_RE = re.compile(r"^[^/]+(/[^/]+)*$")


def check_name(name: str) -> str:
    """Reject names a backend must never be asked for."""
    if not _NAME_RE.match(name) or any(p in (".", "..") for p in name.split("/")):
        raise ValueError(f"invalid object name {name!r}")
    return name


def scheme_of(url: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", url)
    return m.group(1).lower() if m else "file"


def open_backend(url: str, options: Mapping[str, str] | None = None) -> Backend:
    """Open a repository URL with the plugin registered for its scheme."""
    if not url:
        raise UsageError("empty repository URL", hint="pass --repo PATH|URL or set VOLBAK_REPO")
    scheme = scheme_of(url)
    eps = entry_points(group=ENTRY_POINT_GROUP, name=scheme)
    if not eps:
        dist = KNOWN_PLUGINS.get(scheme)
        # Only a plugin we know exists is worth an install line; for any other scheme
        # (a typo such as s4://) that line would send the user to a name that may not
        # exist, or to someone else's package.
        raise BackendMissing(
            f"no storage backend is installed for '{scheme}://' (repository {url})",
            hint=f"install the plugin: pip install {dist}" if dist else
            f"known schemes: file (a plain path), {', '.join(sorted(KNOWN_PLUGINS))}; "
            "check the repository URL",
        )
    cls = next(iter(eps)).load()
    return cls.from_url(url, options or {})
