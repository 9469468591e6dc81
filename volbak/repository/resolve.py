"""What the user may type where a backup is wanted, and what a repository location is.

References (``resolve``), tried in this order:

- ``latest``: the newest backup in the repository;
- ``VOLUME@STAMP``: one backup (the full ID);
- ``CONTAINER@STAMP``: a container's backup set (the ``set`` in ``list --json``);
- ``VOLUME@latest`` / ``CONTAINER@latest``: the newest backup of that volume / the newest
  set of that container;
- ``VOLUME`` / ``CONTAINER``: the same as ``@latest``;
- a unique prefix of any of these (``pgdata@202611``, ``3f2a9c1b@20261129T070001Z`` for a
  backup of an anonymous volume named ``3f2a9c1b…``, ``3f2a9c1b``), like Docker's short IDs.

A set resolves to one of its members; ``Repository.members`` gives them all.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import BackendError, NotFoundError, UsageError
from .manifest import MANIFEST_SUFFIX, BackupInfo

LATEST = "latest"

_HINT = ("run 'volbak list' to see the backup IDs; a volume or container name means its "
         "newest backup, NAME@latest too")


class Match:
    """Backups a reference can mean, and how it was read (for messages)."""

    def __init__(self, infos: list[BackupInfo], what: str) -> None:
        self.infos = infos
        self.what = what


def _unique(names: set[str], prefix: str) -> list[str]:
    return sorted(n for n in names if n.startswith(prefix))


def select(infos: list[BackupInfo], ref: str, every: bool = False) -> Match:
    """The backups ``ref`` names (newest first), maybe several; empty when none. With
    ``every``, a bare VOLUME or CONTAINER name means all of its backups."""
    if ref == LATEST:
        return Match(infos[:1], "the newest backup")
    name, at, stamp = ref.rpartition("@") if "@" in ref else (ref, "", LATEST)
    volumes = {i.volume for i in infos}
    containers = {i.manifest.container for i in infos if i.manifest.container}

    def of_volume(v: str) -> list[BackupInfo]:
        return [i for i in infos if i.volume == v]

    def of_container(c: str) -> list[BackupInfo]:
        return [i for i in infos if i.manifest.container == c]

    groups: list[tuple[str, Callable[[str], list[BackupInfo]], str]] = []
    if name in volumes:
        groups.append((f"volume '{name}'", of_volume, name))
    elif name in containers:
        groups.append((f"container '{name}'", of_container, name))
    else:
        cands = [("volume", v) for v in _unique(volumes, name)] + [
            ("container", c) for c in _unique(containers, name)]
        if len(cands) > 1:
            raise UsageError(
                f"'{name}' is the start of several names: "
                + ", ".join(f"{k} {n}" for k, n in cands[:6]),
                hint="type more of the name, or the full ID from 'volbak list'")
        if cands:
            kind, full = cands[0]
            groups.append((f"{kind} '{full}'", of_volume if kind == "volume" else of_container,
                           full))
    if not groups:
        return Match([], f"'{name}'")
    what, pick, full = groups[0]
    found = pick(full)
    if every and not at:
        return Match(found, f"the backups of {what}")
    if stamp == LATEST:
        newest = found[:1]
        if newest and newest[0].manifest.set and newest[0].manifest.container == full:
            return Match([i for i in found if i.manifest.set == newest[0].manifest.set],
                         f"the newest backup of {what}")
        return Match(newest, f"the newest backup of {what}")
    hits = [i for i in found if _stamp_of(i, full).startswith(stamp)]
    return Match(hits, f"{what} at {stamp}")


def _stamp_of(info: BackupInfo, name: str) -> str:
    """The stamp a user sees next to ``name``: the backup's own, or its set's."""
    if info.volume != name and info.manifest.set:
        return info.manifest.set.rpartition("@")[2]
    return info.stamp


def resolve(infos: list[BackupInfo], ref: str, url: str, *, one_volume: bool = False
            ) -> BackupInfo:
    """One backup for ``ref`` (see the module doc). With ``one_volume``, a set of
    several volumes is an error (the caller needs one volume's backup)."""
    m = select(infos, ref.strip())
    if not m.infos:
        raise NotFoundError(f"no backup matches '{ref}' in repository {url}", hint=_HINT)
    sets = {i.manifest.set or i.id for i in m.infos}
    if len(sets) > 1:
        raise UsageError(
            f"'{ref}' matches several backups: {', '.join(i.id for i in m.infos[:5])}"
            + (" ..." if len(m.infos) > 5 else ""),
            hint="type more of the ID (see 'volbak list')")
    if one_volume and len(m.infos) > 1:
        raise UsageError(
            f"'{ref}' is a backup set of {len(m.infos)} volumes: "
            + ", ".join(i.id for i in m.infos),
            hint="restore one of these IDs with --to-volume, or the set with --to-container")
    return m.infos[0]


# -- is this a repository? -------------------------------------------------------------------

def looks_like_repository(names: list[str]) -> bool:
    """A location is a repository when it holds a manifest, a volbak archive, or a
    repository config object at its top (other formats keep one there)."""
    for n in names:
        top, slash, rest = n.partition("/")
        if n.endswith(MANIFEST_SUFFIX):
            return True
        if slash and ".tar" in rest and rest[:1].isdigit():
            return True
        if not slash and (top.startswith(("config", "volbak"))):
            return True
    return False


def check_location(backend: object, url: str, create: bool) -> None:
    """Raise BackendError (exit 5) unless ``url`` is a repository, or (``create``) a
    place where one can be made: nothing there yet, or an empty directory."""
    from pathlib import Path

    root = getattr(backend, "root", None)
    if isinstance(root, Path) and root.exists() and not root.is_dir():
        raise BackendError(
            f"repository {url} is a file, not a repository directory",
            hint="pass the repository's directory with --repo (or VOLBAK_REPO)")
    names: list[str] = []
    for o in backend.list(""):  # type: ignore[attr-defined]
        names.append(o.name)
        if looks_like_repository(names[-1:]):
            return
        if len(names) >= 1000:
            break
    if names:
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        raise BackendError(
            f"{url} is not a volbak repository: it holds {len(names)}"
            f"{'+' if len(names) >= 1000 else ''} other object(s) ({shown}) and no backups",
            hint="check --repo / VOLBAK_REPO; a new repository needs an empty or new location")
    if not create:
        state = "an empty directory" if isinstance(root, Path) and root.is_dir() else (
            "does not exist" if isinstance(root, Path) else "holds nothing")
        raise BackendError(
            f"no repository at {url}: it {'is ' if state.startswith('an') else ''}{state}",
            hint="check --repo / VOLBAK_REPO / the config; the first 'volbak backup' "
            "creates the repository")
