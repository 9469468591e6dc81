"""Writing one backup into a dedup repository.

Order of writes (each step only after the previous one is committed):
1. a lock object (see store.py), then read the GC plans and the index: chunks in packs a
   plan will delete are not reused;
2. new chunks into new packs (random names: nobody else knows them yet);
3. an index file for those packs, once they hold INDEX_EVERY new chunks and at the end
   (a chunk's location stays in memory only until then: with one index file at the
   end, a first backup of 3.4 million new chunks peaked at 1197 MiB);
4. the chunk list ``<volume>/<stamp>.chunks`` (sealed: chunk id | raw length per chunk);
5. the manifest (with the chunk list's size and BLAKE3), then the lock is released.

Abort deletes this run's packs that no index file names yet and none is being written
for; other runs may already reuse the indexed ones, so those stay as garbage for prune.

Threads: the caller's thread chunks; a pool of two hashes (keyed BLAKE3) and, for new
chunks only, compresses and encrypts, in batches of ~BATCH_BYTES (one future per batch:
at ~32 KiB chunks a future per chunk cost more than the hashing). Memory is bounded by
the queue depths (at most ~2 x DEPTH batches in flight) plus the index (see index.py).
"""

from __future__ import annotations

import contextlib
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import blake3
import zstandard

from ...errors import IntegrityError, NotFoundError
from ...stream.pump import _tune_malloc
from ...util.signals import deferred
from ..format import BackupWriter
from .chunker import Chunker
from .crypto import SealedWriter, encode_blob
from .index import ID_TAIL, write_index
from .packs import PACK_TARGET, KeyBlock, PackInfo, PackWriter
from .store import DedupStore, RepoLock

if TYPE_CHECKING:
    from .. import Repository
    from ..manifest import BackupInfo, Manifest

DEPTH = 4  # batches in flight per queue
BATCH_BYTES = 1 << 20  # chunks go to the pool in batches: one future per ~1 MiB, not per chunk
LIST_REC = struct.Struct(">32sI")
INDEX_EVERY = 65536  # chunks (~2 GiB at 32 KiB) per index file a backup writes as it goes
CHUNKS_SUFFIX = ".chunks"


def chunk_id(key: bytes, data: bytes | memoryview) -> bytes:
    return blake3.blake3(data, key=key).digest()


def chunk_ids(key: bytes, batch: list[bytes]) -> list[bytes]:
    return [blake3.blake3(data, key=key).digest() for data in batch]


class _Watched:
    """The chunk list's writer, telling a listener each (chunk id, length) record."""

    def __init__(self, inner: Any, listener: Callable[[bytes, int], Any]) -> None:
        self._inner = inner
        self._listener = listener
        self._part = b""

    def write(self, data: bytes) -> None:
        self._inner.write(data)
        buf = self._part + data if self._part else data
        end = len(buf) - len(buf) % LIST_REC.size
        for cid, raw in LIST_REC.iter_unpack(memoryview(buf)[:end]):
            self._listener(cid, raw)
        self._part = bytes(buf[end:])

    def close(self) -> None:
        self._inner.close()


class DedupWriter(BackupWriter):
    def __init__(self, repo: Repository, store: DedupStore, volume: str, stamp: str) -> None:
        self._repo = repo
        self._store = store
        self._backend = store.backend
        self._volume = volume
        self._stamp = stamp
        _tune_malloc()
        self._keys = store.write_keys()  # a missing host key file fails before any write
        self._lock = RepoLock(self._backend, "backup", f"{volume}@{stamp}")
        self._done = False
        self._pool: ThreadPoolExecutor | None = None
        self._pack: PackWriter | None = None
        self._list_w: Any = None
        self._unindexed: list[PackInfo] = []  # finished packs no index file names yet
        self._indexes: list[str] = []
        self._stored = 0  # bytes of this run's packs and index files
        self._pack_count = 0
        try:
            meta = self._keys.metadata
            self._index = store.load_index(meta, skip=store.planned_packs(meta), ids_only=True,
                                           tail=ID_TAIL)
            self._keyblock, self._content_key = KeyBlock.new(self._keys.recipients)
            # New ids join the compact index (a set would cost ~120 bytes a chunk).
            self._session = self._index.ids
            self._batch: list[bytes] = []
            self._batch_bytes = 0
            self._enc_batch: list[tuple[bytes, bytes]] = []
            self._enc_bytes = 0
            self._hashq: deque[tuple[list[bytes], Future[list[bytes]]]] = deque()
            self._encq: deque[tuple[list[tuple[bytes, bytes]], Future[list[bytes]]]] = deque()
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="volbak-dedup")
            self._local = threading.local()
            self._chunker = Chunker(self._on_chunk, *store.chunker, tar_aware=store.chunk_tar,
                                    blocks=store.chunk_blocks)
            self.chunks_name = f"{volume}/{stamp}{CHUNKS_SUFFIX}"
            self._list_w = self._backend.create_writer(self.chunks_name)
            self._list_h = blake3.blake3()
            self._list_size = 0
            self._list = SealedWriter(self._list_write, meta)
            self.chunks = self.new_chunks = self.raw_bytes = self.new_raw = 0
        except BaseException:
            self.abort()
            raise

    # -- the pipeline -------------------------------------------------------------------

    def _list_write(self, data: bytes) -> None:
        self._list_w.write(data)
        self._list_h.update(data)
        self._list_size += len(data)

    def write(self, data: bytes | memoryview) -> None:
        self._chunker.write(data)

    def _on_chunk(self, data: bytes) -> None:
        self._batch.append(data)
        self._batch_bytes += len(data)
        if self._batch_bytes >= BATCH_BYTES:
            self._submit_hashes()
            self._advance(False)

    def _submit_hashes(self) -> None:
        if self._batch:
            assert self._pool is not None
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._hashq.append((batch, self._pool.submit(chunk_ids, self._keys.chunk_id, batch)))

    def _submit_encodes(self) -> None:
        if self._enc_batch:
            assert self._pool is not None
            batch, self._enc_batch, self._enc_bytes = self._enc_batch, [], 0
            self._encq.append((batch, self._pool.submit(self._encode_all, batch)))

    def _encode(self, data: bytes, cid: bytes) -> bytes:
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:  # a compressor must not be shared between threads
            cctx = self._local.cctx = zstandard.ZstdCompressor(level=3)
        return encode_blob(data, cid, self._content_key, cctx)

    def _encode_all(self, batch: list[tuple[bytes, bytes]]) -> list[bytes]:
        return [self._encode(data, cid) for cid, data in batch]

    def _advance(self, final: bool) -> None:
        hq, eq = self._hashq, self._encq
        if final:
            self._submit_hashes()
        while hq and (final or len(hq) > DEPTH or hq[0][1].done()):
            batch, fut = hq.popleft()
            for data, cid in zip(batch, fut.result(), strict=True):
                self._list.write(LIST_REC.pack(cid, len(data)))
                self.chunks += 1
                self.raw_bytes += len(data)
                if cid in self._index or cid in self._session:
                    continue
                self._session.add(cid)
                self.new_chunks += 1
                self.new_raw += len(data)
                self._enc_batch.append((cid, data))
                self._enc_bytes += len(data)
                if self._enc_bytes >= BATCH_BYTES:
                    self._submit_encodes()
        if final:
            self._submit_encodes()
        while eq and (final or len(eq) > DEPTH or eq[0][1].done()):
            batch, fut = eq.popleft()
            for (cid, data), blob in zip(batch, fut.result(), strict=True):
                if self._pack is None:
                    self._pack = PackWriter(self._backend, [self._keyblock],
                                            self._keys.metadata)
                self._pack.add(cid, blob, len(data))
                if self._pack.size >= PACK_TARGET:
                    self._finish_pack()

    def _finish_pack(self) -> None:
        if self._pack is not None:
            pack, self._pack = self._pack, None
            info = pack.finish()
            self._unindexed.append(info)
            self._stored += info.size
            self._pack_count += 1
            if sum(len(p.entries) for p in self._unindexed) >= INDEX_EVERY:
                self._write_index()

    def _write_index(self) -> None:
        if self._unindexed:
            # Off the list before the write: a write that fails may still have stored
            # the file (a commit whose answer was lost), and abort must not delete packs
            # it may name. If it did not, prune removes them as unindexed garbage.
            packs, self._unindexed = self._unindexed, []
            name, size = write_index(self._backend, self._keys.metadata, packs)
            self._indexes.append(name)
            self._stored += size

    # -- the file cache (volbak.volumes.filecache) ---------------------------------------

    @property
    def repository_id(self) -> str:
        return self._store.config.id

    @property
    def file_cut_min(self) -> int | None:
        return self._chunker.file_cut_min

    @property
    def chunker_params(self) -> tuple[int, ...]:
        return tuple(self._store.chunker)

    def has_chunk(self, cid: bytes) -> bool:
        """In the index this run loaded (packs a GC plan will delete left out)."""
        return cid in self._index

    def watch_chunks(self, listener: Callable[[bytes, int], Any]) -> None:
        """``listener(chunk id, raw length)`` for every chunk of the stream, in order."""
        self._list = _Watched(self._list, listener)

    def append_known(self, chunks: Iterable[tuple[bytes, int]], size: int) -> None:
        """The next ``size`` bytes of the stream (a big file's data and padding, right
        after its header) are ``chunks``, already in the repository: list them without
        the bytes. The chunker must agree that they are whole chunks of their own."""
        if not self._chunker.skip(size):
            raise IntegrityError(
                "internal error: reused chunks do not fall on the chunker's cuts",
                hint="run the backup again with --no-cache")
        self._advance(True)  # what came before is listed first
        for cid, raw in chunks:
            if cid not in self._index and cid not in self._session:
                raise IntegrityError("internal error: a reused chunk is not in the index",
                                     hint="run the backup again with --no-cache")
            self._list.write(LIST_REC.pack(cid, raw))
            self.chunks += 1
            self.raw_bytes += raw

    # -- commit / abort -----------------------------------------------------------------

    def commit(self, manifest: Manifest) -> BackupInfo:
        try:
            self._chunker.finish()
            self._advance(True)
            self._finish_pack()
            self._write_index()
            self._list.close()
            self._list_w.commit()
            self._lock.check()
            stored = self._stored + self._list_size
            manifest.repo_format = "dedup"
            manifest.compression = "zstd"
            manifest.encryption = self._store.encryption_record()
            manifest.storage = {
                "repository": self._store.config.id,
                "chunks": self.chunks_name, "chunks_size": self._list_size,
                "chunks_blake3": self._list_h.hexdigest(),
                "chunk_count": self.chunks, "new_chunks": self.new_chunks,
                "new_bytes": self.new_raw, "packs": self._pack_count,
                "index": self._indexes, "size": stored,
            }
            info = self._repo.write_manifest(self._volume, self._stamp, manifest)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._shutdown()
        self._lock.release()
        return info

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with deferred():
            self._shutdown()
            if self._pack is not None:
                self._pack.abort()
            if self._list_w is not None:
                self._list_w.abort()
            with contextlib.suppress(Exception):
                if not self._repo.has_manifest(self._volume, self._stamp):
                    with contextlib.suppress(NotFoundError):
                        self._backend.delete(self.chunks_name)
                    # Unindexed: no other run can have reused these packs.
                    for p in self._unindexed:
                        with contextlib.suppress(NotFoundError):
                            self._backend.delete(p.name)
            if hasattr(self, "_lock"):
                self._lock.release()
