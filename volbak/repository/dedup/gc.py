"""Garbage collection of a dedup repository, without any private key.

Two phases a grace period apart (kopia's model), guarded by lock objects (restic's):

Phase 1 (every prune): chunks referenced by listed backups are live. Packs with no live
chunk, packs in no index file (a crashed or still running backup's), and packs that were
repacked (their live blobs copied, still encrypted, into new packs) go into a new GC
plan ``_gc/<stamp>-<hex>``. Nothing is deleted. From then on new backups do not reuse
chunks in planned packs (they store them again).

Phase 2 (a later prune): a plan older than the grace period whose creation no live
backup lock predates (within CLOCK_SKEW) is carried out: references are computed afresh
from the manifests listed *now*; a planned pack still holding the only copy of a live
chunk is kept (a backup finished meanwhile reuses it), an unindexed pack that got indexed
is kept; the rest is deleted in this order: a consolidated index file superseding every
index file read, the packs, the superseded index files, the plan.

The rule, in one line: a pack is deleted only when, after a grace period, no backup that
could have seen it as reusable is still running and no listed backup needs it.

Every step is idempotent and ordered so that a prune killed at any instant leaves only
garbage the next prune removes (packs nobody references, superseded index files, plans).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ...errors import IntegrityError, NotFoundError
from ..manifest import MANIFEST_SUFFIX, STAMP_FORMAT
from .index import (
    INDEX_PREFIX,
    PackRef,
    index_packs,
    iter_records,
    write_index,
    write_index_records,
)
from .packs import (
    PACK_PREFIX,
    PACK_TARGET,
    KeyBlock,
    PackInfo,
    PackWriter,
    read_header,
    read_trailer,
)
from .reader import read_chunk_list
from .store import CLOCK_SKEW, DedupStore, gc_grace, list_locks, lock_stale, now_utc
from .writer import CHUNKS_SUFFIX

if TYPE_CHECKING:
    from .. import Repository

# restic's prune policy (its --max-unused 5%): partly dead packs are repacked, most dead
# first, until the dead bytes left in kept packs are at most this fraction of the live
# bytes. A fixed per-pack threshold (repack below 70% live) left a simulated year of
# nightly backups at 0.42x of 20 archives, mostly dead space in 70-95% live packs.
MAX_UNUSED = 0.05
REPACK_MIN_DEAD = 256 * 1024  # a pack with less dead than this is never worth a copy


@dataclasses.dataclass
class GCReport:
    packs: int = 0
    pack_bytes: int = 0
    live_bytes: int = 0
    planned: int = 0
    repacked: int = 0
    deleted_packs: int = 0
    deleted_bytes: int = 0
    kept_from_plan: int = 0
    deferred_plans: int = 0
    plans_done: int = 0
    orphan_lists: int = 0

    def summary(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _listed(repo: Repository) -> list[Any]:
    infos = repo.list()
    if repo.damaged:
        raise IntegrityError(
            f"{len(repo.damaged)} manifest(s) cannot be read ({repo.damaged[0][0]}): "
            "not collecting garbage, the chunks they use are unknown",
            hint="fix or delete the damaged manifest; 'volbak verify --all' lists them")
    return infos


def _chunk_ids(store: DedupStore, infos: list[Any], key: bytes) -> Iterator[bytes]:
    """The chunk ids the listed backups use, one backup's chunk list at a time."""
    for info in infos:
        if info.manifest.repo_format == "dedup":
            for cid, _ in read_chunk_list(store, info, key):
                yield cid


def _delete(store: DedupStore, name: str) -> bool:
    try:
        store.backend.delete(name)
    except NotFoundError:
        return False
    return True


def collect(repo: Repository, store: DedupStore, *, grace: dt.timedelta | None = None,
            now: dt.datetime | None = None, repack: bool = True) -> GCReport:
    keys = store.meta_keys()
    meta = keys.metadata
    grace = gc_grace() if grace is None else grace
    report = GCReport()
    lock = store.prune_lock()
    try:
        now = now or now_utc()
        locks = list_locks(store.backend)  # liveness by the real clock, always
        live_backups = [lk for lk in locks if lk["kind"] == "backup" and lk["alive"]]
        _phase2(repo, store, meta, grace, now, live_backups, report)
        _phase1(repo, store, meta, keys, now, repack, report)
        _orphan_lists(store, grace, report)
        for lk in locks:  # dead lock objects, long dead
            if lk["kind"] != "?" and (now - lk["refreshed_at"]).total_seconds() > 2 * lock_stale():
                _delete(store, lk["name"])
    finally:
        lock.release()
    return report


def _phase2(repo: Repository, store: DedupStore, meta: bytes, grace: dt.timedelta,
            now: dt.datetime, live: list[dict[str, Any]], report: GCReport) -> None:
    due = []
    for plan in store.plans(meta):
        if now - plan["created_at"] < grace or any(
                lk["created_at"] < plan["created_at"] + CLOCK_SKEW for lk in live):
            report.deferred_plans += 1
        else:
            due.append(plan)
    if not due:
        return
    stored = {o.name: o.size for o in store.backend.list(PACK_PREFIX)}
    cand = {p for plan in due for p in plan["packs"] if p in stored}
    infos = _listed(repo)  # before the index: a listed backup's index file is read
    usage = _Usage(store, meta, _chunk_ids(store, infos, meta))
    for keep in usage.only_in(cand):  # the only copy of a live chunk: a backup reused it
        cand.discard(keep)
        report.kept_from_plan += 1
    if cand:
        packs, recs = usage.consolidated(cand)
        write_index_records(store.backend, meta, packs, recs,
                            supersedes=usage.files + usage.superseded)
        for name in sorted(cand):
            if _delete(store, name):
                report.deleted_packs += 1
                report.deleted_bytes += stored.get(name, 0)
        for name in usage.files + usage.superseded:
            _delete(store, name)
    for plan in due:
        _delete(store, plan["name"])
        report.plans_done += 1


# flags of an id in _Usage; each pass that takes an id's first record owns a bit
_REF, _COUNTED, _SEEN, _OUTSIDE, _FIRST, _FINAL, _WRITTEN = 1, 2, 4, 8, 16, 32, 64


class _Usage:
    """Prune's view of the index at ~35 bytes per chunk (a backup's ids-only load plus
    one flag byte per id) instead of location tables and a set of references (~270 and
    more): every question is a pass over the index files' records, one file at a time.

    A chunk counts once, at its first record in the order Index.load reads them (live
    index files by name, records in file order): a chunk stored twice (a backup that
    could not reuse a planned pack's copy) has its bytes in the first pack only."""

    def __init__(self, store: DedupStore, meta: bytes, refs: Iterable[bytes]) -> None:
        self._backend, self._meta = store.backend, meta
        index = store.load_index(meta, ids_only=True)
        self.files = index.files
        self.superseded = index.superseded
        self._ids = index.ids
        assert self._ids is not None
        self.refs: dict[str, PackRef] = {}  # the first header's, as Index.load keeps
        for p in index_packs(self._backend, meta, self.files):
            self.refs.setdefault(p.name, p)
        self.indexed = set(self.refs)
        self._flags = bytearray(self._ids.slots())
        slot, flags = self._ids.slot, self._flags
        for cid in refs:
            s = slot(cid)
            if s >= 0:  # missing chunks are verify's business; nothing to keep
                flags[s] |= _REF

    def _first(self, bit: int, skip: set[str] = frozenset(),  # type: ignore[assignment]
               ) -> Iterator[tuple[bool, tuple[bytes, str, int, int, int, int]]]:
        """Each chunk's first record outside the packs ``skip``, with whether it is
        referenced (``bit``: a flag this pass owns, so a pass can be made once per bit)."""
        slot, flags = self._ids.slot, self._flags  # type: ignore[union-attr]
        for rec in iter_records(self._backend, self._meta, self.files):
            if skip and rec[1] in skip:
                continue
            s = slot(rec[0])
            if s < 0 or flags[s] & bit:
                continue  # s < 0: a record the load did not see cannot be; be safe
            flags[s] |= bit
            yield bool(flags[s] & _REF), rec

    def sums(self) -> tuple[dict[str, int], dict[str, int]]:
        """Per pack: bytes of blobs, bytes of live blobs."""
        blobs: dict[str, int] = collections.Counter()
        live: dict[str, int] = collections.Counter()
        for ref, (_, pack, _, length, _, _) in self._first(_COUNTED):
            blobs[pack] += length
            if ref:
                live[pack] += length
        return blobs, live

    def live_entries(self, packs: set[str]) -> dict[str, list[tuple[int, bytes, int, int, int]]]:
        """The live blobs of ``packs`` only: (offset, chunk id, length, raw, key block)."""
        out: dict[str, list[tuple[int, bytes, int, int, int]]] = collections.defaultdict(list)
        for ref, (cid, pack, off, length, raw, k) in self._first(_SEEN):
            if ref and pack in packs:
                out[pack].append((off, cid, length, raw, k))
        return out

    def only_in(self, cand: set[str]) -> set[str]:
        """The packs of ``cand`` holding the first record of a referenced chunk that
        has no record outside ``cand``."""
        slot, flags = self._ids.slot, self._flags  # type: ignore[union-attr]
        first: dict[int, str] = {}  # referenced ids whose first record is in cand
        for cid, pack, *_ in iter_records(self._backend, self._meta, self.files):
            s = slot(cid)
            if s < 0:
                continue
            f = flags[s]
            if pack not in cand:
                flags[s] = f | _OUTSIDE
            if not f & _FIRST:
                flags[s] |= _FIRST
                if f & _REF and pack in cand:
                    first[s] = pack
        return {pack for s, pack in first.items() if not flags[s] & _OUTSIDE}

    def consolidated(self, cand: set[str]) -> tuple[list[PackRef], Iterator[
            tuple[bytes, int, int, int, int, int]]]:
        """One index's packs and records: each chunk's first record outside ``cand``
        (what Index.load(skip=cand) keeps), for packs with at least one such record."""
        used: dict[str, int] = {}
        for _, (_, pack, *_) in self._first(_FINAL, cand):
            used.setdefault(pack, len(used))
        packs = [self.refs[name] for name in used]

        def recs() -> Iterator[tuple[bytes, int, int, int, int, int]]:
            for _, (cid, pack, off, length, raw, k) in self._first(_WRITTEN, cand):
                yield cid, used[pack], off, length, raw, k
        return packs, recs()


def _phase1(repo: Repository, store: DedupStore, meta: bytes, keys: Any, now: dt.datetime,
            repack: bool, report: GCReport) -> None:
    planned = store.planned_packs(meta)
    stored = {o.name: o.size for o in store.backend.list(PACK_PREFIX)}
    infos = _listed(repo)  # before the index: a listed backup's index file is read
    usage = _Usage(store, meta, _chunk_ids(store, infos, meta))
    blobs, live = usage.sums()
    report.packs = len(stored)
    report.pack_bytes = sum(stored.values())
    report.live_bytes = sum(live.values())
    plan: list[str] = []
    partly: list[str] = []
    for name in stored:
        if name in planned:
            continue
        if name not in usage.indexed:
            plan.append(name)  # unindexed: a crashed backup's, or one still running
        elif not live[name]:
            plan.append(name)
        elif blobs[name] > live[name]:
            partly.append(name)
    to_repack = _choose_repacks(partly, blobs, live, report.live_bytes) if repack else []
    if to_repack:
        packs = _repack(store, meta, sorted(to_repack), usage.live_entries(set(to_repack)))
        if packs:
            write_index(store.backend, meta, packs)
        plan.extend(to_repack)
        report.repacked = len(to_repack)
    if plan:
        store.write_plan(meta, plan, now)
        report.planned = len(plan)


def _choose_repacks(partly: list[str], blobs: dict[str, int], live: dict[str, int],
                    live_total: int) -> list[str]:
    """The partly dead packs to repack: most dead first, until what stays dead is
    within MAX_UNUSED of the live bytes."""
    dead = sum(blobs[n] - live[n] for n in partly)
    out = []
    for name in sorted(partly, key=lambda n: (live[n] / blobs[n], n)):
        if dead <= MAX_UNUSED * live_total:
            break
        if blobs[name] - live[name] >= REPACK_MIN_DEAD:
            out.append(name)
            dead -= blobs[name] - live[name]
    return out


def _repack(store: DedupStore, meta: bytes, names: list[str],
            live: dict[str, list[tuple[int, bytes, int, int, int]]]) -> list[PackInfo]:
    """Copy live blobs as they are (still encrypted) into new packs, carrying the key
    blocks they need: no private key is involved."""
    out: list[PackInfo] = []
    writer: PackWriter | None = None
    key_nos: dict[bytes, int] = {}
    for name in names:
        blocks, _ = read_header(store.backend, name)
        data = store.backend.read_range(name)
        entries = sorted(live[name], key=lambda e: e[0])
        if writer is not None and (writer.size >= PACK_TARGET
                                   or any(b.id not in key_nos for b in blocks)):
            out.append(writer.finish())
            writer = None
        if writer is None:
            kbs = _dedup_blocks(blocks)
            key_nos = {b.id: i for i, b in enumerate(kbs)}
            writer = PackWriter(store.backend, kbs, meta)
        for off, cid, length, raw, k in entries:
            writer.add(cid, data[off: off + length], raw, key_nos[blocks[k].id])
    if writer is not None:
        out.append(writer.finish())
    return out


def _dedup_blocks(blocks: list[KeyBlock]) -> list[KeyBlock]:
    seen: dict[bytes, KeyBlock] = {}
    for b in blocks:
        seen.setdefault(b.id, b)
    return list(seen.values())


def _orphan_lists(store: DedupStore, grace: dt.timedelta, report: GCReport) -> None:
    """Chunk lists of backups that never got their manifest (crashed runs): older than
    the grace period by the real clock, and no live lock names them (locks are listed
    after the names, so a run that starts meanwhile is young anyway)."""
    now = now_utc()
    names = {o.name for o in store.backend.list()}
    busy = {lk.get("what") for lk in list_locks(store.backend) if lk["alive"]}
    for name in sorted(names):
        if not name.endswith(CHUNKS_SUFFIX) or name.startswith("_"):
            continue
        base = name[: -len(CHUNKS_SUFFIX)]
        if base + MANIFEST_SUFFIX in names:
            continue
        vol, _, stamp = base.rpartition("/")
        if f"{vol}@{stamp}" in busy:
            continue
        try:
            when = dt.datetime.strptime(stamp.split("-")[0], STAMP_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        if now - when > grace and _delete(store, name):
            report.orphan_lists += 1


def rebuild_index(store: DedupStore) -> tuple[str, int, list[str]]:
    """Write one index file from the trailers of every pack, superseding every index
    file present (readable or not), for a lost, truncated or damaged index. Needs only
    the metadata key (the host key file): a pack's trailer is sealed under it and lists
    each blob's chunk id, offset, lengths and key block; the blobs themselves stay
    sealed. Returns the new index's name, the packs indexed, and the packs whose trailer
    cannot be read (left out: the next prune plans them as unindexed garbage)."""
    meta = store.meta_keys().metadata
    import blake3

    lock = store.prune_lock()
    try:
        packs, bad = [], []
        for o in sorted(store.backend.list(PACK_PREFIX), key=lambda o: o.name):
            try:
                entries = read_trailer(store.backend, o.name, o.size, meta)
            except NotFoundError:
                continue  # deleted by a prune meanwhile
            except (IntegrityError, ValueError, struct.error):
                bad.append(o.name)
                continue
            h = blake3.blake3()
            r = store.backend.open_reader(o.name)
            try:
                while data := r.read(1 << 20):
                    h.update(data)
            finally:
                r.close()
            packs.append(PackInfo(o.name, o.size, h.hexdigest(), entries))
        old = [o.name for o in store.backend.list(INDEX_PREFIX)]
        name, _ = write_index(store.backend, meta, packs, supersedes=old)
        for o in old:
            with contextlib.suppress(NotFoundError):
                store.backend.delete(o)
    finally:
        lock.release()
    return name, len(packs), bad
