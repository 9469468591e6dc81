"""Reading a backup back from a dedup repository, and checking one without a key.

The reader opens the repository keys with the identity (a wrong one fails before any
read), reads the chunk list once to learn which chunks it needs, loads the index entries
of just those chunks, then reads the list again and streams the chunks in its order:
adjacent blobs of a pack are fetched with one ranged read (up to RUN_BYTES), and a pool
of two threads fetches, decrypts, decompresses and checks up to PREFETCH runs ahead.
Every chunk is checked against its keyed BLAKE3 id, and each reading of the chunk list
against the manifest's size and BLAKE3 at its end; anything missing or wrong is an
IntegrityError naming the backup.

Memory follows the backup's number of distinct chunks, not its size in Python objects:
the list is streamed both times, and the chunks wanted are an IdSet map (index.LOC_TAIL)
that the index load fills with their locations, about 32 bytes per chunk: ~100 MiB for
the ~3.3 million chunks of a 100 GiB backup. The raw length of each chunk comes from
the list (the index's copy is not loaded): a wrong one fails the chunk's check.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import blake3
import zstandard

from ...errors import IntegrityError, NotFoundError, VolbakError
from ...stream.pump import _tune_malloc
from ..format import BackupReader
from .crypto import SealedReader, decode_blob, records, unwrap_key
from .index import LOC_TAIL, PLACE, IdSet, Index, Location
from .packs import read_header
from .store import DedupStore
from .writer import LIST_REC

if TYPE_CHECKING:
    from ..manifest import BackupInfo

RUN_BYTES = 4 << 20
PREFETCH = 3


def _damaged(info: BackupInfo, what: str) -> IntegrityError:
    return IntegrityError(f"backup {info.id} is damaged: {what}",
                          hint="the repository was modified or damaged; restore another backup "
                          "('volbak verify --all' lists which ones are whole)")


LIST_BLOCK = 4 << 20


class _Ranged:
    """``read(n)`` of an object by ranged reads of LIST_BLOCK. A restore reads its chunk
    list as it fetches, for as long as the restore takes: one streamed GET held open
    that long, idle between reads, could be dropped by an S3 server."""

    def __init__(self, store: DedupStore, name: str) -> None:
        self._backend = store.backend
        self._name = name
        self._pos = 0
        self._buf = b""
        self._off = 0

    def read(self, n: int) -> bytes:
        if self._off >= len(self._buf):
            self._buf = self._backend.read_range(self._name, self._pos, LIST_BLOCK)
            self._pos += len(self._buf)
            self._off = 0
        out = self._buf[self._off: self._off + n]
        self._off += len(out)
        return out


def read_chunk_list(store: DedupStore, info: BackupInfo, key: bytes
                    ) -> Iterator[tuple[bytes, int]]:
    """The backup's (chunk id, raw size) pairs, streamed. The object's size and BLAKE3
    are checked against the manifest at its end, so what a consumer does before that
    must be undoable: collecting ids (the reader's first reading, prune), or fetching
    chunks each checked against its id into a restore whose stream then fails at the
    end, before it reports success (the reader's second reading)."""
    st = info.manifest.storage or {}
    name = str(st.get("chunks"))
    source = _Ranged(store, name)
    h = blake3.blake3()
    size = 0

    def read(n: int) -> bytes:
        nonlocal size
        data = source.read(n)
        h.update(data)
        size += len(data)
        return data

    try:
        segs = SealedReader(read, key, f"chunk list {name}").segments()
        for r in records(segs, LIST_REC.size):
            yield LIST_REC.unpack(r)
    except NotFoundError:
        raise _damaged(info, f"its chunk list {name} is missing") from None
    except IntegrityError:
        raise _damaged(info, f"its chunk list {name} is damaged or not its own") from None
    if size != st.get("chunks_size") or h.hexdigest() != st.get("chunks_blake3"):
        raise _damaged(info, f"its chunk list {name} does not match the manifest")


def _locate(store: DedupStore, info: BackupInfo, key: bytes) -> Index:
    """The index entries of the backup's chunks; an IntegrityError if any is missing.
    The map of locations is first the set of wanted ids (values of zeros), so no second
    set is held beside it. It is sized for the list's records, which bounds the
    distinct ids: a backup of repeated chunks costs what one of distinct chunks does."""
    n = int((info.manifest.storage or {}).get("chunks_size") or 0) // LIST_REC.size
    wanted = IdSet(n, tail=LOC_TAIL, value=PLACE.size)
    for cid, _ in read_chunk_list(store, info, key):
        wanted.add(cid)
    index = store.load_index(key, fill=wanted)
    missing = len(wanted) - index.located
    if missing > 0:
        raise _damaged(info, f"{missing} of its chunks are in no index file")
    return index


class _Keys:
    """Pack content keys, unwrapped once per key block."""

    def __init__(self, store: DedupStore, identities: list[Any]) -> None:
        self._store = store
        self._identities = identities
        self._cache: dict[tuple[str, int], bytes] = {}
        self._lock = threading.Lock()

    def get(self, pack: str, key_no: int) -> bytes:
        k = self._cache.get((pack, key_no))
        if k is not None:
            return k
        with self._lock:
            blocks, _ = read_header(self._store.backend, pack)
            by_id: dict[bytes, bytes] = {}
            for no, b in enumerate(blocks):
                key = by_id.get(b.id)
                if key is None:
                    key = by_id[b.id] = unwrap_key(b.kind, b.block, self._identities)
                self._cache[(pack, no)] = key
        if (pack, key_no) not in self._cache:
            raise IntegrityError(f"pack {pack} has no key block {key_no}",
                                 hint="the repository was modified or damaged")
        return self._cache[(pack, key_no)]


class DedupReader(BackupReader):
    def __init__(self, store: DedupStore, info: BackupInfo, identities: Sequence[Any]) -> None:
        _tune_malloc()
        self.info = info
        self._store = store
        keys, idents = store.read_keys(list(identities))  # wrong/missing identity: here
        self._id_key = keys.chunk_id
        self._meta_key = keys.metadata
        self._index = _locate(store, info, keys.metadata)
        self._pack_keys = _Keys(store, idents)
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="volbak-restore")
        self._local = threading.local()
        self._futs: collections.deque[Future[list[bytes]]] = collections.deque()
        self._runs = self._plan()
        self._buf = b""
        self._off = 0
        self._parts: collections.deque[bytes] = collections.deque()
        self._eof = False
        self.tar_bytes = 0

    def _plan(self) -> Iterator[tuple[str, int, int, list[tuple[bytes, Location]]]]:
        """Runs of blobs that are adjacent in one pack, in the backup's order."""
        run: list[tuple[bytes, Location]] = []
        for cid, raw in read_chunk_list(self._store, self.info, self._meta_key):
            loc = self._index.get(cid, raw)
            if loc is None:
                raise _damaged(self.info, "one of its chunks is in no index file")
            if run:
                last = run[-1][1]
                start = run[0][1].offset
                if (loc.pack != last.pack or loc.offset != last.offset + last.length
                        or loc.offset + loc.length - start > RUN_BYTES):
                    yield run[0][1].pack, start, last.offset + last.length - start, run
                    run = []
            run.append((cid, loc))
        if run:
            last = run[-1][1]
            yield run[0][1].pack, run[0][1].offset, last.offset + last.length - \
                run[0][1].offset, run

    def _fetch(self, pack: str, offset: int, length: int,
               run: list[tuple[bytes, Location]]) -> list[bytes]:
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        try:
            data = self._store.backend.read_range(pack, offset, length)
        except NotFoundError:
            raise _damaged(self.info, f"pack {pack} is missing") from None
        if len(data) != length:
            raise _damaged(self.info, f"pack {pack} is truncated")
        mv = memoryview(data)
        out = []
        for cid, loc in run:
            key = self._pack_keys.get(pack, loc.key)
            blob = mv[loc.offset - offset: loc.offset - offset + loc.length]
            chunk = decode_blob(blob, cid, key, loc.raw, dctx)
            if chunk is None or len(chunk) != loc.raw or \
                    blake3.blake3(chunk, key=self._id_key).digest() != cid:
                raise _damaged(self.info, f"a chunk in pack {pack} at offset {loc.offset} "
                               "fails its check")
            out.append(chunk)
        return out

    def _fill(self) -> bool:
        while len(self._futs) < PREFETCH:
            run = next(self._runs, None)
            if run is None:
                break
            self._futs.append(self._pool.submit(self._fetch, *run))
        if not self._futs:
            return False
        try:
            self._parts.extend(self._futs.popleft().result())
        except VolbakError:
            raise
        return True

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (whole chunks joined: at ~32 KiB chunks, a chunk per call
        made the restore path's per-call costs dominate)."""
        out: list[bytes] = []
        got = 0
        while got < n:
            if self._off >= len(self._buf):
                if not self._parts and (out or not self._more()):
                    break
                if not self._parts:
                    continue
                self._buf, self._off = self._parts.popleft(), 0
            piece = self._buf[self._off: self._off + n - got] if self._off or \
                len(self._buf) > n - got else self._buf
            self._off += len(piece)
            got += len(piece)
            out.append(piece)
        self.tar_bytes += got
        return out[0] if len(out) == 1 else b"".join(out)

    def _more(self) -> bool:
        """Wait for the next run; False at the end (after checking the size)."""
        while not self._parts:
            if self._eof or not self._fill():
                if not self._eof:
                    self._eof = True
                    want = (self.info.manifest.tar or {}).get("size")
                    if want is not None and want != self.tar_bytes:
                        raise _damaged(self.info, f"it holds {self.tar_bytes} bytes, its "
                                       f"manifest says {want}")
                return False
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def check_stored(store: DedupStore, info: BackupInfo, identities: Sequence[Any] = ()) -> None:
    """Structure without the identity: the chunk list matches the manifest, every chunk
    is in the index, every pack it uses exists with the indexed size and BLAKE3."""
    keys = store.meta_keys(list(identities))
    index = _locate(store, info, keys.metadata)
    packs = set()
    for cid, _ in read_chunk_list(store, info, keys.metadata):
        if cid not in index:
            raise _damaged(info, "one of its chunks is in no index file")
        packs.add(index.pack_of(cid))
    refs = {p.name: p for p in index.packs if p.name in packs}
    for name in sorted(packs):
        check_pack(store, info, refs[name].name, refs[name].size, refs[name].blake3)


def check_pack(store: DedupStore, info: BackupInfo, name: str, size: int, digest: str) -> None:
    h = blake3.blake3()
    got = 0
    try:
        r = store.backend.open_reader(name)
    except NotFoundError:
        raise _damaged(info, f"pack {name} is missing") from None
    try:
        while data := r.read(1 << 20):
            h.update(data)
            got += len(data)
    finally:
        r.close()
    if got != size or h.hexdigest() != digest:
        raise _damaged(info, f"pack {name} has {got} bytes and another hash than indexed")
