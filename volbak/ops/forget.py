"""Forgetting chosen backups (``volbak forget``), e.g. those of volumes that are gone.

Deletion goes through ``Repository.delete`` (manifest first), so an interrupted forget
never leaves a listed backup without its data. A backup of a container set is forgotten
with the whole set: a set restores as one (``restore --to-container``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from ..errors import NotFoundError, ObjectNotFound
from ..repository import BackupInfo, Repository


def expand_sets(repo: Repository, infos: Iterable[BackupInfo]) -> list[BackupInfo]:
    """``infos`` plus the other members of their sets, without duplicates, newest first."""
    out: dict[str, BackupInfo] = {}
    everything = None
    for i in infos:
        out[i.id] = i
        if i.manifest.set:
            everything = everything if everything is not None else repo.list()
            out.update({m.id: m for m in everything if m.manifest.set == i.manifest.set})
    return sorted(out.values(), key=lambda i: (i.created, i.stamp), reverse=True)


def forget(repo: Repository, infos: Iterable[BackupInfo], dry_run: bool = False,
           on_delete: Callable[[BackupInfo], None] | None = None) -> list[BackupInfo]:
    """Delete ``infos`` (unless ``dry_run``); returns them."""
    chosen = list(infos)
    for info in chosen:
        if dry_run:
            continue
        # Already gone (forgotten meanwhile by someone else) is the outcome we wanted.
        with contextlib.suppress(NotFoundError, ObjectNotFound):
            repo.delete(info)
        if on_delete:
            on_delete(info)
    return chosen
