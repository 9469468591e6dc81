"""How volbak reads and writes a volume's tree: through the engine's archive API or
directly on the host.

- ``direct``: a tar source and a tar target that work on the volume's directory (its
  ``Mountpoint``) on the engine's own host, keeping every attribute.
- ``select``: which of the two a run uses, and why.
- ``tarfmt``: the PAX/ustar records both directions share.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..engine import (
    PODMAN_LOSSES,
    Engine,
    VolumeMount,
    VolumeTar,
    helper,
    inspect_volume,
    put_volume_tar,
)
from ..stream.tar import SEGMENT, TarParser
from .select import CHOICES, choose

if TYPE_CHECKING:
    from .direct import WalkDigest

__all__ = ["CHOICES", "TreeSource", "copy_tree", "open_source", "owners_comparable", "read_back",
           "write_tree"]


# Many small files: from this many entries on, under this many bytes a file on average,
# a direct backup walks and a direct restore writes in a second process (50,000 files:
# about a quarter less time); with big files the pipe's two copies cost more than that.
FORK_ENTRIES = 1000
FORK_AVERAGE = 256 * 1024


def many_small_files(files: int, file_bytes: int) -> bool:
    """The rule both sides apply: a restore to the backup's counts, a backup to the
    first entries of its walk."""
    return files >= FORK_ENTRIES and file_bytes < files * FORK_AVERAGE


@dataclasses.dataclass
class TreeSource:
    """A volume's tree being read as a tar stream named "<root>/..."."""

    read: Callable[[int], bytes]
    kind: str  # "direct" | "api"
    why: str  # why this kind was chosen
    warnings: Callable[[], list[str]]  # what the read noticed (complete once read)
    changed: Callable[[], int] = lambda: 0  # files that changed while they were read
    direct: Any = None  # the DirectSource (kind "direct"): for the dedup file cache


@contextlib.contextmanager
def open_source(engine: Engine, volume: str, inspect: dict[str, Any], root: str,
                requested: str = "auto", image: str | None = None) -> Iterator[TreeSource]:
    """Read ``volume`` directly on the host when possible (``requested`` auto|direct),
    else through a helper container and the archive API."""
    kind, why = choose(engine.url, inspect, requested)
    if kind == "direct":
        from .direct import DirectSource

        with DirectSource(inspect["Mountpoint"], root) as src:
            r = src.report
            yield TreeSource(src.read, kind, why,
                             lambda: [*r.warnings] + ([f"{r.warning_count - len(r.warnings)} "
                                                      "more warnings not listed"]
                                                     if r.warning_count > len(r.warnings)
                                                     else []),
                             lambda: r.changed, src)
        return
    with helper(engine, [VolumeMount(volume, "/" + root)], image) as cid:
        tar = VolumeTar(engine, cid, root)
        try:
            losses = [] if tar.owners_kept else [PODMAN_LOSSES]
            yield TreeSource(tar.read, kind, why, lambda: losses)
        finally:
            tar.close()


def write_tree(engine: Engine, volume: str, info: dict[str, Any], root: str,
               chunks: Iterator[bytes], kind: str, image: str | None = None,
               parser: TarParser | None = None, fork: bool = False) -> Any:
    """Write a tar stream named "<root>/..." into the (new, empty) ``volume`` (``info``:
    its inspect), the way ``choose(..., write=True)`` decided. ``parser`` (direct only):
    extract with it, so that it sees, counts and digests the whole stream; ``fork``
    (direct only): write the entries in a second process (see DirectTarget). Returns
    what ``read_back`` may take as ``written``: the direct path's big files read back
    while they were written (direct.Rereads), or None."""
    if kind == "direct":
        from .direct import DirectTarget, Rereads

        rereads = None if fork else Rereads()
        DirectTarget(info["Mountpoint"], root, parser, fork=fork, rereads=rereads
                     ).extract(chunks)
        return rereads
    assert parser is None, "only the direct target parses the stream itself"
    with helper(engine, [VolumeMount(volume, "/" + root, read_only=False)], image) as cid:
        put_volume_tar(engine, cid, root, chunks)
    return None


def owners_comparable(engine: Engine, kind: str) -> bool:
    """Podman's archive API replaces owners on read: through it they cannot be compared."""
    return kind == "direct" or not engine.is_podman


def read_back(engine: Engine, volume: str, info: dict[str, Any], root: str, kind: str, *,
              owners: bool = True, all_xattrs: bool = True, image: str | None = None,
              progress: Callable[[int], Any] | None = None,
              sent: TarParser | None = None, written: Any = None) -> TarParser | WalkDigest:
    """Read a volume back the way it was written and return its digest (``hexdigest()``,
    ``entries``, ``file_bytes``), to compare with what was sent: ``sent``, the parser
    that digested it, tells the direct path where the tree can be read in two parts;
    ``written``, what ``write_tree`` returned, which files it read back already."""
    if kind != "direct":
        from ..engine import read_tree_digest

        return read_tree_digest(engine, volume, root, image, progress=progress, owners=owners,
                                all_xattrs=all_xattrs)
    from .direct import tree_digest

    return tree_digest(info["Mountpoint"], root, owners=owners, all_xattrs=all_xattrs,
                       progress=progress, split_at=split_mark(sent), rereads=written)


def split_mark(sent: TarParser | None) -> bytes | None:
    """Where a read-back of what ``sent`` parsed splits into two equal parts: the mark
    nearest the middle entry; none where a file has several names (a part could not
    tell its first name). marks[i] begins entry (i + 1) * SEGMENT + 1: marks[len // 2]
    gave this process 57 % of 50,000 entries (0.56-0.62 s of CPU, the child 0.40-0.44)."""
    if not sent or not sent.marks or sent.links:
        return None
    i = round(sent.entries / (2 * SEGMENT)) - 1
    return sent.marks[max(0, min(len(sent.marks) - 1, i))]


def copy_tree(engine: Engine, src: str, dst: str, root: str = "data",
              requested: str = "auto", image: str | None = None) -> str:
    """Copy volume ``src``'s whole tree (root mode and owner included) into the empty
    volume ``dst``: directly on the host when both allow it (every attribute kept),
    else through the archive API. Returns the way it went."""
    src_info, dst_info = inspect_volume(engine, src), inspect_volume(engine, dst)
    read_kind, _ = choose(engine.url, src_info, requested)
    write_kind, _ = choose(engine.url, dst_info, requested, write=True)
    if read_kind == write_kind == "direct":
        from ..stream.pump import CHUNK
        from .direct import DirectSource, DirectTarget

        with DirectSource(src_info["Mountpoint"], root) as source:
            DirectTarget(dst_info["Mountpoint"], root).extract(
                iter(lambda: source.read(CHUNK), b""))
        return "direct"
    from ..engine import copy_volume

    copy_volume(engine, src, dst, image)
    return "api"


def clear_tree(engine: Engine, volume: str, requested: str = "auto",
               image: str | None = None) -> None:
    """Empty a volume in place, its root directory kept (containers mount it, so the
    engine will not remove it): directly on the host where possible, else through the
    archive API (engine.clear_volume)."""
    info = inspect_volume(engine, volume)
    kind, _ = choose(engine.url, info, requested, write=True)
    if kind != "direct":
        from ..engine import clear_volume

        clear_volume(engine, volume, image)
        return
    import os
    import shutil

    root = info["Mountpoint"]
    # rmtree works through directory handles and never follows a symlink out
    with os.scandir(root) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
