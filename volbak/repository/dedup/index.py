"""Index files: where each chunk is (pack, offset, length), sealed under the metadata key.

    _index/<64 hex>  = sealed( u32 n | JSON header (n bytes) | records of REC )
    header = {"v": 1, "supersedes": [index names], "packs": [{"name", "size", "blake3"}]}
    REC    = chunk id (32) | pack number in header (u32) | offset | length | raw length
             (u32 each) | key block number in the pack (u16)

A backup writes index files for the packs it wrote, after them and before its chunk
list and manifest (one per 65,536 new chunks, writer.INDEX_EVERY). Prune writes a
consolidated one whose ``supersedes`` names the files it replaces, then deletes those:
a loader ignores any file named in the ``supersedes`` of another present file, so a
prune interrupted in between loses nothing.

In memory a backup needs only to know which chunks exist: ``Index.load(ids_only=True)``
keeps every id's first 16 bytes in an IdSet (~18 bytes per chunk in one bytearray, no
object per id; see ID_TAIL), so 100 GiB of unique data at ~32 KiB per chunk (~3.3
million chunks) costs ~60 MiB, and the ids of the chunks the backup adds join it.
Locations are loaded by a restore for its own chunks only, into an IdSet that keeps
each id's first 16 bytes and its location (~32 bytes per chunk: ~100 MiB for the ~3.3
million chunks of a 100 GiB backup, where a dict took ~1 GiB). Prune's phase 1 loads
the ids the same way, marks the referenced ones in a byte per id (``IdSet.slot``) and
streams the records (``iter_records``) to sum the packs' bytes.
"""

from __future__ import annotations

import array
import dataclasses
import json
import os
import struct
from collections.abc import Iterable, Iterator

from ...backend import Backend
from ...errors import IntegrityError, NotFoundError
from .crypto import SealedReader, SealedWriter, records
from .packs import PackInfo

INDEX_PREFIX = "_index/"
REC = struct.Struct(">32sIIIIH")
# a location in an IdSet map: pack number, key block, offset, length, raw length
LOC = struct.Struct(">IHIII")
# a restore's (``fill``): the same without the raw length, which its chunk list holds
# (~14 MiB less for the 3.3 million chunks of a 100 GiB backup)
PLACE = struct.Struct(">IHII")
# A restore's ids by their first 16 bytes: keyed BLAKE3 outputs that agree in 128 bits
# do not occur (~n^2 / 2^129), and if they did the chunk read would fail its check
# against the whole id, an error and never wrong data.
LOC_TAIL = 14
# A backup's ids by their first 16 bytes too (kopia's content ids are 128 bits): keyed
# BLAKE3, so nobody without the chunk-id key can aim for a match, and by chance one in
# ~n*m / 2^128 for m lookups in n ids (~1e-25 at 100 GiB). Such a match would leave a
# chunk unstored, and the restore or full verify reading it would fail its check against
# the whole id. It saves ~16 bytes a chunk where the bound is tight (a first backup of
# 3.3 million chunks). Prune keeps whole ids: it decides what to delete.
ID_TAIL = 14
_U32 = struct.Struct(">I")


def new_index_name() -> str:
    return INDEX_PREFIX + os.urandom(32).hex()


@dataclasses.dataclass
class PackRef:
    name: str
    size: int
    blake3: str


@dataclasses.dataclass(frozen=True)
class Location:
    pack: str
    offset: int
    length: int
    raw: int
    key: int


def write_index(backend: Backend, key: bytes, packs: Iterable[PackInfo | tuple[PackRef, list]],
                supersedes: Iterable[str] = (), name: str | None = None) -> tuple[str, int]:
    """Stream an index file; returns its name and size. ``packs`` yields PackInfo, or
    (PackRef, [(chunk id, offset, length, raw, key)]) pairs."""
    items = list(packs)
    refs = [p if isinstance(p, PackInfo) else p[0] for p in items]

    def recs() -> Iterator[tuple[bytes, int, int, int, int, int]]:
        for no, p in enumerate(items):
            if isinstance(p, PackInfo):
                for e in p.entries:
                    yield e.id, no, e.offset, e.length, e.raw, e.key
            else:
                for cid, off, length, raw, k in p[1]:
                    yield cid, no, off, length, raw, k
    return write_index_records(backend, key, refs, recs(), supersedes, name)


def write_index_records(backend: Backend, key: bytes, packs: list[PackInfo | PackRef],
                        recs: Iterable[tuple[bytes, int, int, int, int, int]],
                        supersedes: Iterable[str] = (), name: str | None = None,
                        ) -> tuple[str, int]:
    """Stream an index file of the records ``recs``: (chunk id, number of its pack in
    ``packs``, offset, length, raw length, key block), in any order."""
    name = name or new_index_name()
    refs = [{"name": p.name, "size": p.size, "blake3": p.blake3} for p in packs]
    head = json.dumps({"v": 1, "supersedes": sorted(supersedes), "packs": refs}).encode()
    with backend.create_writer(name) as w:
        sw = SealedWriter(w.write, key)
        sw.write(_U32.pack(len(head)) + head)
        buf = bytearray()
        for cid, no, off, length, raw, k in recs:
            buf += REC.pack(cid, no, off, length, raw, k)
            if len(buf) >= 1 << 20:
                sw.write(buf)
                buf.clear()
        sw.write(buf)
        sw.close()
        info = w.commit()
    return name, info.size


class IndexFile:
    """One index file, read as a stream: first the header, then the records."""

    def __init__(self, backend: Backend, name: str, key: bytes) -> None:
        self.name = name
        self._r = backend.open_reader(name)
        self._segs = SealedReader(self._r.read, key, f"index file {name}").segments()
        first = b""
        try:
            while len(first) < 4:
                first += next(self._segs)
            (n,) = _U32.unpack_from(first)
            while len(first) < 4 + n:
                first += next(self._segs)
            head = json.loads(first[4: 4 + n])
            self.supersedes: list[str] = list(head["supersedes"])
            self.packs = [PackRef(p["name"], int(p["size"]), p["blake3"]) for p in head["packs"]]
        except (StopIteration, ValueError, KeyError, TypeError):
            self.close()
            raise IntegrityError(f"index file {name} is truncated or malformed",
                                 hint="run 'volbak prune' to rebuild the index from the packs "
                                 "(--rebuild-index), or restore from another copy") from None
        except BaseException:
            self.close()
            raise
        self._rest = first[4 + n:]

    def records(self) -> Iterator[tuple[bytes, int, int, int, int, int]]:
        def segs() -> Iterator[bytes]:
            if self._rest:
                yield self._rest
            yield from self._segs
        try:
            for rec in records(segs(), REC.size):
                yield REC.unpack(rec)
        finally:
            self.close()

    def add_ids(self, into: IdSet, skipped: set[int]) -> None:
        """Just the chunk ids, into ``into`` (fast path for a backup's membership test)."""
        size = REC.size
        add = into.add_at

        def segs() -> Iterator[bytes]:
            if self._rest:
                yield self._rest
            yield from self._segs
        try:
            rest = b""
            for seg in segs():
                data = rest + seg if rest else seg
                end = len(data) - len(data) % size
                for o in range(0, end, size):
                    if not skipped or _U32.unpack_from(data, o + 32)[0] not in skipped:
                        add(data, o)
                rest = data[end:]
            if rest:
                raise IntegrityError(f"index file {self.name} ends in a partial record",
                                     hint="the repository was modified or damaged")
        finally:
            self.close()

    def close(self) -> None:
        self._r.close()


def _open_listed(backend: Backend, name: str, key: bytes) -> IndexFile:
    """An index file that a listing just named (gone now: a concurrent prune's doing)."""
    try:
        return IndexFile(backend, name, key)
    except NotFoundError:
        raise IntegrityError(f"index file {name} disappeared while it was read",
                             hint="another prune ran at the same time; run again") from None


def iter_records(backend: Backend, key: bytes, names: Iterable[str],
                 ) -> Iterator[tuple[bytes, str, int, int, int, int]]:
    """(chunk id, pack name, offset, length, raw length, key block) of every record of
    the index files ``names``, in order, decoding one file at a time: no location table
    in memory (prune sums the packs' bytes this way)."""
    for name in names:
        f = _open_listed(backend, name, key)
        packs = [p.name for p in f.packs]
        for cid, pno, off, length, raw, k in f.records():
            try:
                pack = packs[pno]
            except IndexError:
                raise IntegrityError(f"index file {name} names pack {pno} of {len(packs)}",
                                     hint="the repository was modified or damaged") from None
            yield cid, pack, off, length, raw, k


def index_packs(backend: Backend, key: bytes, names: Iterable[str]) -> list[PackRef]:
    """The packs the headers of the index files ``names`` list."""
    out: list[PackRef] = []
    for name in names:
        f = _open_listed(backend, name, key)
        f.close()
        out.extend(f.packs)
    return out


class IdSet:
    """A set of 32-byte ids in ~34 bytes each, with no Python object per id; with
    ``value``, a map of ids to values of that many bytes.

    One bytearray of 65536 buckets (by the ids' first two bytes) of ``cap`` slots, each
    slot the next ``tail`` bytes of an id (30: the whole id, exact; fewer where a false
    match costs no data, see LOC_TAIL) and its value; ``_cnt`` says how many slots of a
    bucket are used.
    Ids are uniform, so a bucket holds n/65536 of them (~50 at 100 GiB of 32 KiB chunks:
    ``find`` scans ~1.5 KiB at C speed). The few ids of a full bucket go to a small set;
    when that set outgrows 1/64 of the ids, every bucket gets 25% more slots, in place
    (the buffer is extended and the buckets moved up from the last one). Exact: the whole
    id is compared. A Python set costs ~120 bytes per id, a list of bytes ~80."""

    NB = 65536

    def __init__(self, expect: int = 0, tail: int = 30, value: int = 0) -> None:
        lam = expect / self.NB
        self._t = tail
        self.W = tail + value
        self._cap = int(lam * 1.12) + 2
        self._raw = bytearray(self.NB * self._cap * self.W)
        self._cnt = array.array("I", bytes(4 * self.NB))
        self._over: dict[bytes, bytes] = {}  # key (the id's first 2 + tail bytes) -> value
        self._over_no: dict[bytes, int] | None = None  # slot()'s numbers of _over's ids
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def _find(self, cid: bytes) -> int:
        """Offset of ``cid``'s slot in the buckets, or -1 (it may still be in _over)."""
        k = cid[0] << 8 | cid[1]
        start = k * self._cap * self.W
        end = start + self._cnt[k] * self.W
        tail = cid[2:2 + self._t]
        raw = self._raw
        i = raw.find(tail, start, end)
        while i >= 0 and (i - start) % self.W:  # a match across two slots is not one
            i = raw.find(tail, i + 1, end)
        return i

    def __contains__(self, cid: bytes) -> bool:
        if len(cid) != 32:
            return False
        return self._find(cid) >= 0 or (bool(self._over) and cid[:2 + self._t] in self._over)

    def slot(self, cid: bytes) -> int:
        """A number for ``cid`` in range(self.slots()), or -1 if it is not in the set:
        stable while nothing is added, so a bytearray of that many flags can say things
        about the ids at one byte each (prune marks referenced ids this way). An id
        loaded twice has one number (the first slot that holds it)."""
        if len(cid) != 32:
            return -1
        i = self._find(cid)
        if i >= 0:
            return i // self.W
        if not self._over:
            return -1
        if self._over_no is None:
            base = self.NB * self._cap
            self._over_no = {c: base + j for j, c in enumerate(sorted(self._over))}
        return self._over_no.get(cid[:2 + self._t], -1)

    def slots(self) -> int:
        return self.NB * self._cap + len(self._over)

    def add(self, cid: bytes) -> None:
        if len(cid) != 32:
            raise ValueError("chunk ids are 32 bytes")
        if cid not in self:
            self.add_at(cid, 0)

    def get(self, cid: bytes) -> bytes | None:
        """The value stored with ``cid`` (b"" in a plain set), or None."""
        i = self._find(cid) if len(cid) == 32 else -1
        if i >= 0:
            return bytes(self._raw[i + self._t: i + self.W])
        return self._over.get(cid[:2 + self._t]) if self._over else None

    def vacant(self, cid: bytes) -> int:
        """Where ``cid``'s value goes (for ``put``) if ``cid`` is in the map with a value of
        zeros, the mark of "wanted, not found yet" (no location is zeros: a blob starts
        past its pack's header); else -1. (-2: the id sits in the overflow set.)"""
        i = self._find(cid) if len(cid) == 32 else -1
        if i >= 0:
            i += self._t
            return i if not any(self._raw[i: i - self._t + self.W]) else -1
        v = self._over.get(cid[:2 + self._t]) if self._over else None
        return -2 if v is not None and not any(v) else -1

    def put(self, where: int, cid: bytes, value: bytes) -> None:
        """Give ``cid`` its value at ``where`` (from ``vacant``)."""
        if where == -2:
            self._over[cid[:2 + self._t]] = value
        else:
            self._raw[where: where + len(value)] = value

    def add_at(self, data: bytes, o: int, value: bytes = b"") -> None:
        """Add the id at data[o: o + 32] (with its ``value``), not looking for it first
        (loading: an id in two index files costs a slot, membership is the same)."""
        k = data[o] << 8 | data[o + 1]
        c = self._cnt[k]
        t = self._t
        self._n += 1
        self._over_no = None
        if c < self._cap:
            at = (k * self._cap + c) * self.W
            self._raw[at: at + t] = data[o + 2: o + 2 + t]
            if t < self.W:  # zeros too: a moved bucket (_grow) leaves old bytes behind it
                self._raw[at + t: at + self.W] = value or bytes(self.W - t)
            self._cnt[k] = c + 1
            return
        self._over[bytes(data[o: o + 2 + t])] = bytes(value)
        if len(self._over) > 1024 + (self._n >> 6):
            self._grow()

    def _grow(self) -> None:
        old, new, w, raw, cnt = self._cap, self._cap + self._cap // 4 + 1, self.W, \
            self._raw, self._cnt
        more = self.NB * (new - old) * w
        zero = bytes(min(more, 1 << 20))
        while more:  # in pieces: no second buffer of the new size
            raw += zero[:more]
            more -= min(more, len(zero))
        for k in range(self.NB - 1, 0, -1):
            if cnt[k]:
                n = cnt[k] * w
                raw[k * new * w: k * new * w + n] = raw[k * old * w: k * old * w + n]
        self._cap = new
        over, self._over = self._over, {}
        self._n -= len(over)
        for key, value in over.items():
            self.add_at(key, 0, value)


class Index:
    """Chunk id -> location, from every live index file (see module doc for memory).

    ``skip``: packs whose chunks are left out (packs a GC plan will delete: a backup must
    not reuse them). ``fill``: an IdSet map (tail LOC_TAIL, value PLACE) of the wanted
    ids with values of zeros (a restore's): only their locations are loaded, into it,
    and ``located`` counts them."""

    def __init__(self, ids: IdSet) -> None:
        self.packs: list[PackRef] = []
        self._pack_no: dict[str, int] = {}
        self.ids = ids  # the ids, each with its LOC unless the load was ids_only
        self.files: list[str] = []  # the live index files read
        self.superseded: list[str] = []  # present, but replaced by another
        self.sizes: dict[str, int] = {}
        self.located = 0

    def _pack(self, ref: PackRef) -> int:
        no = self._pack_no.get(ref.name)
        if no is None:
            no = self._pack_no[ref.name] = len(self.packs)
            self.packs.append(ref)
        return no

    @classmethod
    def load(cls, backend: Backend, key: bytes, skip: set[str] = frozenset(),  # type: ignore[assignment]
             fill: IdSet | None = None, ids_only: bool = False,
             tail: int = 30) -> Index:
        """``tail``: for an ids_only load, the bytes kept of each id after its first
        two (30: exact; ID_TAIL for a backup)."""
        names = {o.name: o.size for o in backend.list(INDEX_PREFIX)}
        records = sum(names.values()) // REC.size
        if fill is not None:
            ids = fill
        elif ids_only:
            ids = IdSet(records, tail=tail)
        else:
            ids = IdSet(records, tail=LOC_TAIL, value=LOC.size)
        idx = cls(ids)
        heads: list[tuple[str, list[str]]] = []
        for name in sorted(names):
            try:
                f = IndexFile(backend, name, key)
            except NotFoundError:
                continue  # superseded and deleted by a prune meanwhile
            f.close()
            heads.append((name, f.supersedes))
        gone = {s for _, sup in heads for s in sup if s in names}
        for name, _ in heads:
            if name in gone:
                idx.superseded.append(name)
                continue
            try:
                f = IndexFile(backend, name, key)
            except NotFoundError:
                raise IntegrityError(f"index file {name} disappeared while it was read",
                                     hint="another prune ran at the same time; run again") from None
            idx.files.append(name)
            idx.sizes[name] = names[name]
            skipped = {i for i, p in enumerate(f.packs) if p.name in skip}
            if ids_only:  # no pack table either: a backup only asks "is it stored?"
                f.add_ids(ids, skipped)
                continue
            nos = [idx._pack(p) for p in f.packs]
            for cid, pno, off, length, raw, k in f.records():
                if pno in skipped:
                    continue
                if fill is not None:  # the first record of an id counts
                    where = fill.vacant(cid)
                    if where != -1:
                        fill.put(where, cid, PLACE.pack(nos[pno], k, off, length))
                        idx.located += 1
                elif cid not in ids:
                    ids.add_at(cid, 0, LOC.pack(nos[pno], k, off, length, raw))
        return idx

    def __contains__(self, cid: bytes) -> bool:
        return cid in self.ids

    def get(self, cid: bytes, raw: int = -1) -> Location | None:
        """``raw``: the chunk's raw length, for a ``fill`` load's map, which leaves it
        out (else -1 in the answer)."""
        v = self.ids.get(cid)
        if not v or not any(v):  # absent, an ids_only load, or wanted and not found
            return None
        if len(v) == PLACE.size:
            pno, k, off, length = PLACE.unpack(v)
        else:
            pno, k, off, length, raw = LOC.unpack(v)
        return Location(self.packs[pno].name, off, length, raw, k)

    def pack_of(self, cid: bytes) -> str:
        loc = self.get(cid)
        if loc is None:
            raise KeyError(cid)
        return loc.pack
