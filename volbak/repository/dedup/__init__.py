"""Repository format "dedup": content-defined chunks, deduplicated across backups,
compressed and encrypted into packs; the backup host can write but not read.

See docs/format-dedup.md for the objects and encodings. Modules: ``chunker`` (FastCDC
with cuts at big files' edges), ``crypto`` (sealed metadata, blobs, key wrapping),
``keys`` (config object, repository keys, host key file), ``packs``, ``index``,
``store`` (shared state, lock objects, GC plans), ``writer``, ``reader``, ``gc``.
"""

from __future__ import annotations

from .keys import CONFIG, RepoConfig, init_repository, load_config
from .store import DedupStore

__all__ = ["CONFIG", "DedupStore", "RepoConfig", "init_repository", "load_config"]
