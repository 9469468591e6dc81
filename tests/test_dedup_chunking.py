"""Chunking in fixed blocks inside big files, and the compact id set (no engine)."""

from __future__ import annotations

import io
import os
import random
import tarfile

from volbak.repository.dedup.chunker import Chunker
from volbak.repository.dedup.index import IdSet

K = 1024


def _tar(files: dict[str, bytes], mtime: int = 1_700_000_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), mtime
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _chunks(stream: bytes, blocks: bool, piece: int = 100_000) -> list[bytes]:
    out: list[bytes] = []
    c = Chunker(out.append, 8 * K, 32 * K, 128 * K, blocks=blocks)
    for o in range(0, len(stream), piece):
        c.write(stream[o: o + piece])
    c.finish()
    return out


def test_blocks_cut_big_files_from_their_first_byte() -> None:
    rnd = random.Random(1)
    db = rnd.randbytes(1_000_000)
    files = {"small": b"x" * 300, "db": db, "tail": rnd.randbytes(5000)}
    stream = _tar(files)
    for piece in (1, 4096, 100_000, len(stream)):
        chunks = _chunks(stream, True, piece) if piece > 1 else _chunks(stream[:200_000], True)
        assert b"".join(chunks) == (stream if piece > 1 else stream[:200_000])
    chunks = _chunks(stream, True)
    start = stream.index(db[:64])
    offs, pos = [], 0
    for ch in chunks:
        offs.append(pos)
        pos += len(ch)
    inside = [o for o in offs if start <= o < start + len(db)]
    assert inside == list(range(start, start + len(db), 32 * K))


def test_a_page_write_dirties_one_block() -> None:
    rnd = random.Random(2)
    db = bytearray(rnd.randbytes(2_000_000))
    files = {"a.txt": b"hello\n" * 100, "db": bytes(db)}
    first = set(_chunks(_tar(files), True))
    at = 8192 * 100
    db[at: at + 8192] = rnd.randbytes(8192)
    files["db"] = bytes(db)
    second = _chunks(_tar(files, mtime=1_700_000_100), True)
    new = [c for c in second if c not in first]
    # the block with the page, and the small chunk with the changed header
    assert len(new) == 2 and sorted(len(c) for c in new)[-1] == 32 * K


def test_content_defined_without_blocks_still_round_trips() -> None:
    stream = _tar({"f": os.urandom(300_000), "g": b"y" * 70_000})
    assert b"".join(_chunks(stream, False)) == stream


def test_idset_is_exact_and_grows() -> None:
    ids = [os.urandom(32) for _ in range(70_000)]
    s = IdSet()  # no expectation: it must grow in place
    for cid in ids:
        s.add(cid)
    s.add(ids[0])
    assert len(s) == len(ids)
    assert all(cid in s for cid in ids)
    assert not any(os.urandom(32) in s for _ in range(20_000))
    near = bytearray(ids[5])
    near[31] ^= 1
    assert bytes(near) not in s and ids[5][:31] not in s
    loaded = IdSet(len(ids))
    blob = b"".join(ids)
    for o in range(0, len(blob), 32):
        loaded.add_at(blob, o)
    assert all(cid in loaded for cid in ids[::7])


def test_idset_map_keeps_values_through_growth() -> None:
    """The restore's location map: values survive buckets overflowing and growing; ids
    are told apart by their first 2 + tail bytes only."""
    ids = [os.urandom(32) for _ in range(70_000)]
    m = IdSet(tail=14, value=5)  # no expectation: overflow, then growth in place
    for n, cid in enumerate(ids):
        m.add_at(cid, 0, n.to_bytes(5, "big"))
    assert len(m) == len(ids)
    assert all(m.get(cid) == n.to_bytes(5, "big") for n, cid in enumerate(ids))
    assert all(m.get(os.urandom(32)) is None for _ in range(20_000))
    same_head = ids[9][:16] + bytes(16)  # equal in the 16 bytes kept: the same key
    assert m.get(same_head) == (9).to_bytes(5, "big") and same_head in m
    near = bytearray(ids[9])
    near[15] ^= 1
    assert m.get(bytes(near)) is None
    assert IdSet().get(ids[0]) is None and IdSet(tail=6).get(b"short") is None


def test_idset_map_of_wanted_ids_is_filled_once() -> None:
    """A restore's map starts as the wanted ids with values of zeros (``vacant``); the
    first value put counts; slots taken after growth moved buckets hold zeros, not the
    bytes a bucket left behind; ids in the overflow set fill the same way."""
    ids = [os.urandom(32) for _ in range(140_000)]
    first, later = ids[:70_000], ids[70_000:]
    m = IdSet(tail=14, value=5)  # no expectation: overflow and growth while adding
    for cid in first:
        m.add(cid)
    assert m._over  # some ids sit in the overflow set
    assert m.vacant(os.urandom(32)) == -1 and m.vacant(b"short") == -1
    for n, cid in enumerate(first):
        where = m.vacant(cid)
        assert where != -1
        m.put(where, cid, (n + 1).to_bytes(5, "big"))
    assert all(m.vacant(cid) == -1 for cid in first)  # the first value counts
    cap = m._cap
    for cid in later:  # growth moves buckets full of values
        m.add(cid)
    assert m._cap > cap
    assert all(m.get(cid) == (n + 1).to_bytes(5, "big") for n, cid in enumerate(first))
    assert all(m.vacant(cid) != -1 and not any(m.get(cid)) for cid in later)
