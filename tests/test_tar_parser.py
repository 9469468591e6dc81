"""The one tar parser (volbak.stream.tar.TarParser) against archives written by Python's
tarfile in the USTAR, GNU and PAX formats. No Docker engine needed."""

from __future__ import annotations

import io
import random
import tarfile

import blake3
import pytest

from volbak.errors import IntegrityError
from volbak.stream.tar import (
    BLOCK,
    Entry,
    TarParser,
    checksum_ok,
    parse_number,
    parse_time_ns,
    pax_records,
)

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
MTIME = 1_700_000_000
LONG_DIR = "data/" + "d" * 120  # > 100 chars: ustar prefix field, GNU 'L', PAX 'path'
LONG_FILE = LONG_DIR + "/" + "f" * 90
LONG_TARGET = "../" + "t" * 150  # > 100 chars: GNU 'K', PAX 'linkpath' (not ustar)


def member(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"", mode: int = 0o644,
           uid: int = 1000, gid: int = 1000, mtime: float = MTIME, link: str = "",
           dev: tuple[int, int] = (0, 0), pax: dict[str, str] | None = None
           ) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.uname, ti.gname = "user", "group"
    ti.mtime = mtime
    ti.linkname = link
    ti.devmajor, ti.devminor = dev
    ti.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    if pax:
        ti.pax_headers = dict(pax)
    return ti, data


def basic_tree(content: bytes = b"hello world\n" * 100, mode: int = 0o644) -> list:
    """Members every format can hold."""
    return [
        member("data", tarfile.DIRTYPE, mode=0o755),
        member("data/a.txt", data=content, mode=mode),
        member("data/empty", data=b""),
        member("data/setuid", data=b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
        member("data/hard", tarfile.LNKTYPE, link="data/setuid", mode=0o4755, uid=0, gid=0),
        member("data/sym", tarfile.SYMTYPE, link="a.txt", mode=0o777),
        member("data/fifo", tarfile.FIFOTYPE, mode=0o600),
        member("data/null", tarfile.CHRTYPE, dev=(1, 3), mode=0o666),
        member("data/sda", tarfile.BLKTYPE, dev=(8, 0), mode=0o660),
        member(LONG_DIR, tarfile.DIRTYPE, mode=0o700),
        member(LONG_FILE, data=b"x" * 1000),
        member("data/big", data=bytes(range(256)) * 300),  # 76,800 bytes: several blocks
    ]


def extended_tree() -> list:
    """Members ustar cannot hold: long link targets, ids beyond 7 octal digits."""
    return [
        member("data", tarfile.DIRTYPE, mode=0o755),
        member("data/longsym", tarfile.SYMTYPE, link=LONG_TARGET),
        member("data/" + "h" * 110, data=b"target"),
        member("data/longhard", tarfile.LNKTYPE, link="data/" + "h" * 110),
        member("data/bigid", data=b"ids", uid=2**30, gid=2**31 + 5),
    ]


def build(members: list, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=FORMATS[fmt], **kw) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isfile() else None)
    return buf.getvalue()


def parse(archive: bytes, step: int | None = None, **kw) -> tuple[TarParser, list[Entry]]:
    entries: list[Entry] = []
    p = TarParser(on_entry=entries.append, **kw)
    step = step or len(archive) or 1
    for i in range(0, len(archive), step):
        p.feed(archive[i : i + step])
    return p, entries


def digest(archive: bytes, **kw) -> str:
    p, _ = parse(archive, digest=True, **kw)
    p.check_complete()
    return p.hexdigest()


# -- what it reads ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_fields_of_every_kind(fmt: str) -> None:
    archive = build(basic_tree(), fmt)
    p, entries = parse(archive)
    p.check_complete()
    by = {e.name: e for e in entries}
    assert list(by) == [b"data", b"data/a.txt", b"data/empty", b"data/setuid", b"data/hard",
                        b"data/sym", b"data/fifo", b"data/null", b"data/sda",
                        LONG_DIR.encode(), LONG_FILE.encode(), b"data/big"]
    assert p.entries == 12
    assert p.file_bytes == 1200 + 10 + 1000 + 76_800
    assert p.tar_bytes == len(archive)
    a = by[b"data/a.txt"]
    assert (a.kind, a.mode, a.uid, a.gid, a.size, a.mtime, a.link) == \
        (b"0", 0o644, 1000, 1000, 1200, MTIME, b"")
    assert by[b"data"].kind == b"5"
    assert by[b"data/setuid"].mode == 0o4755
    hard = by[b"data/hard"]
    assert (hard.kind, hard.link, hard.size) == (b"1", b"data/setuid", 0)
    sym = by[b"data/sym"]
    assert (sym.kind, sym.link, sym.mode) == (b"2", b"a.txt", 0o777)
    assert by[b"data/fifo"].kind == b"6"
    assert (by[b"data/null"].kind, by[b"data/null"].device) == (b"3", (1, 3))
    assert (by[b"data/sda"].kind, by[b"data/sda"].device) == (b"4", (8, 0))
    assert by[LONG_FILE.encode()].size == 1000


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_long_links_and_big_ids(fmt: str) -> None:
    archive = build(extended_tree(), fmt)
    p, entries = parse(archive)
    p.check_complete()
    by = {e.name: e for e in entries}
    assert by[b"data/longsym"].link == LONG_TARGET.encode()
    assert by[b"data/longhard"].link == b"data/" + b"h" * 110
    assert (by[b"data/bigid"].uid, by[b"data/bigid"].gid) == (2**30, 2**31 + 5)
    assert p.entries == 5


def test_pax_records_override_the_header() -> None:
    ti, data = member("data/short", data=b"abc", uid=5, gid=6, pax={
        "path": "data/from-pax", "uid": "70000000", "gid": "80000000",
        "mtime": "1700000123.75", "SCHILY.xattr.security.capability": "\x01\x02",
    })
    sym = member("data/s", tarfile.SYMTYPE, link="x", pax={"linkpath": "y" * 200})
    archive = build([(ti, data), sym], "pax")
    p, entries = parse(archive)
    p.check_complete()
    e, s = entries
    assert (e.name, e.uid, e.gid, e.mtime, e.size) == \
        (b"data/from-pax", 70000000, 80000000, 1700000123, 3)
    assert e.pax[b"SCHILY.xattr.security.capability"] == b"\x01\x02"
    assert s.link == b"y" * 200


def test_pax_global_header_applies_to_later_entries() -> None:
    archive = build([member("data/a", data=b"1"), member("data/b", data=b"2")], "pax",
                    pax_headers={"uid": "4242", "comment": "global"})
    _, entries = parse(archive)
    assert [e.uid for e in entries] == [4242, 4242]


def test_pax_size_record_wins_over_the_header() -> None:
    # Go's tar writer puts sizes >= 8 GiB in a PAX record and 0 in the header.
    payload = b"q" * 700
    ti, _ = member("data/f", data=payload, pax={"size": str(len(payload))})
    ti.size = len(payload)
    header = ti.tobuf(tarfile.PAX_FORMAT)
    # Zero the ustar size field and fix the checksum, as a writer that relies on PAX does.
    last = bytearray(header[-BLOCK:])
    last[124:136] = b"00000000000\0"
    last[148:156] = b"        "
    last[148:156] = b"%06o\0 " % sum(last)
    header = header[:-BLOCK] + bytes(last)
    archive = header + payload + bytes(-len(payload) % BLOCK) + bytes(2 * BLOCK)
    p, entries = parse(archive)
    p.check_complete()
    assert entries[0].size == 700 and p.file_bytes == 700


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_file_over_8_gib(fmt: str) -> None:
    size = 8 * 2**30 + 3  # beyond 11 octal digits: base-256 (GNU) or a PAX record
    ti, _ = member("data/huge")
    ti.size = size
    header = ti.tobuf(FORMATS[fmt])
    if fmt == "gnu":
        assert header[124] & 0x80  # base-256 size field
    else:
        assert b" size=%d\n" % size in header
    p, entries = parse(header)
    zeros = memoryview(bytes(64 * 2**20))
    left = size + (-size % BLOCK)
    while left:  # file data fed lazily: skipped by arithmetic, never stored
        take = min(left, len(zeros))
        p.feed(zeros[:take])
        left -= take
    assert not p.ended
    with pytest.raises(IntegrityError):
        p.check_complete()
    p.feed(bytes(2 * BLOCK))
    p.check_complete()
    assert entries[0].size == size and p.file_bytes == size
    assert p.tar_bytes == len(header) + size + (-size % BLOCK) + 2 * BLOCK


def test_base256_numbers() -> None:
    assert parse_number(b"\x80" + (12345).to_bytes(7, "big")) == 12345
    assert parse_number(b"\x80" + bytes(10) + (2**40).to_bytes(1 + 5, "big")[-1:]) == 0
    assert parse_number(b"\x80\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x03") == 2**65 + 3
    assert parse_number(b"0000644\0") == 0o644
    assert parse_number(b"   644 \0") == 0o644
    assert parse_number(b"\0" * 8) == 0


@pytest.mark.parametrize("value", [-1, -2, -(2**40)])
def test_base256_negative_numbers(value: int) -> None:
    # GNU writes negative values (mtimes before 1970) as two's complement with 0xff.
    field = tarfile.itn(value, 12, tarfile.GNU_FORMAT)
    assert field[0] == 0xFF
    assert parse_number(field) == value


def test_negative_mtime_agrees_between_gnu_and_pax() -> None:
    tree = [member("data", tarfile.DIRTYPE), member("data/old", data=b"1969", mtime=-86400)]
    _, gnu = parse(build(tree, "gnu"))
    _, pax = parse(build(tree, "pax"))
    assert gnu[1].mtime == pax[1].mtime == -86400
    assert digest(build(tree, "gnu")) == digest(build(tree, "pax"))


def test_pax_records_parsing() -> None:
    assert pax_records(b"11 path=ab\n16 uid=12345678\n") == {b"path": b"ab", b"uid": b"12345678"}
    assert pax_records(b"13 k=a b = c\n") == {b"k": b"a b = c"}
    with pytest.raises(IntegrityError):
        pax_records(b"xx path=ab\n")


def test_short_cuts_answer_as_the_general_code() -> None:
    """parse_number, pax_records, parse_time_ns and checksum_ok take a short cut for
    what volbak writes (octal fields, one PAX record, nanosecond times): the same
    answers, and the same refusals, as the general code around it."""
    assert pax_records(b"30 mtime=1764790000.123456789\n") == {b"mtime": b"1764790000.123456789"}
    assert pax_records(b"8 k=a=b\n") == {b"k": b"a=b"}
    for bad in (b"31 mtime=1764790000.123456789\n", b"29 mtime=1764790000.123456789\n",
                b"8 mtime\n", b"9 k=abc\0", b"-7 k=ab\n"):
        with pytest.raises(IntegrityError):
            pax_records(bad)
    assert parse_time_ns(b"1764790000.123456789") == 1764790000123456789
    assert parse_time_ns(b"1764790000.000000001") == 1764790000000000001
    assert parse_time_ns(b"1.1234567891") == 1123456789
    assert parse_time_ns(b"-1.500000000") == -1500000000
    assert parse_time_ns(b"12") == 12 * 10**9
    with pytest.raises(IntegrityError):
        parse_time_ns(b"1.12345678x")
    for field, value in ((b"0000644\0", 0o644), (b"0000644 ", 0o644), (b"644\0\0\0\0\0", 0o644),
                         (b"  644  \0", 0o644), (b"\0" * 8, 0), (b" " * 8, 0)):
        assert parse_number(field) == value
    with pytest.raises(ValueError):
        parse_number(b"00006x4\0")
    rng = random.Random(5)
    archive = build(basic_tree(), "pax") + build(basic_tree(), "gnu")
    for h in [archive[i:i + BLOCK] for i in range(0, len(archive), BLOCK)]:
        for _ in range(20):
            h = bytes(rng.randrange(256) if rng.random() < 0.02 else c for c in h)
            field = h[148:156]
            try:
                stored = parse_number(field)
            except ValueError:
                continue
            assert checksum_ok(h) == (stored == sum(h) - sum(field) + 8 * 32)
        ok = bytearray(h)
        ok[148:156] = b"%06o\0 " % (sum(h[:148]) + sum(h[156:]) + 8 * 32)
        assert checksum_ok(bytes(ok))


# -- what it refuses ----------------------------------------------------------------------


def flip(archive: bytes, offset: int) -> bytes:
    b = bytearray(archive)
    b[offset] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("offset", [0, 99, 124, 148, 156, 300, 511])
def test_bad_checksum(fmt: str, offset: int) -> None:
    archive = flip(build(basic_tree(), fmt), offset)
    with pytest.raises(IntegrityError, match="corrupt"):
        parse(archive)


@pytest.mark.parametrize("block", [b"x" * BLOCK, b"\xff" * BLOCK, b"\0" * 511 + b"\x01",
                                   b"ustar" * 102 + b"xx"])
def test_garbage_header_is_an_integrity_error(block: bytes) -> None:
    with pytest.raises(IntegrityError):
        parse(block + bytes(2 * BLOCK))


def with_checksum(header: bytearray) -> bytes:
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


@pytest.mark.parametrize("field,value", [((124, 136), b"99999999999\0"),  # not octal
                                         ((100, 108), b"zzzzzzz\0")])
def test_unparsable_numbers_with_valid_checksum(field: tuple[int, int], value: bytes) -> None:
    ti, _ = member("data/x", data=b"")
    header = bytearray(ti.tobuf(tarfile.USTAR_FORMAT))
    header[field[0] : field[1]] = value
    with pytest.raises(IntegrityError):
        parse(with_checksum(header) + bytes(2 * BLOCK), digest=True)


@pytest.mark.parametrize("record", ["size=abc", "uid=-x", "mtime=soon"])
def test_unparsable_pax_values(record: str) -> None:
    key, _, value = record.partition("=")
    ti, data = member("data/x", data=b"", pax={key: value})
    with pytest.raises(IntegrityError):
        parse(build([(ti, data)], "pax"), digest=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_input(fmt: str) -> None:
    archive = build(basic_tree(), fmt)
    end = len(archive.rstrip(b"\0"))
    end += -end % BLOCK  # the end marker's first block starts here
    for cut in [*range(0, end, 97), end - 1, end, end + BLOCK - 1]:
        p, _ = parse(archive[:cut])
        with pytest.raises(IntegrityError, match="ends early"):
            p.check_complete()
    p, _ = parse(archive[: end + BLOCK])  # one zero block is enough
    p.check_complete()


def test_truncated_inside_a_pax_header() -> None:
    ti, data = member("data/x", data=b"abc", pax={"path": "data/" + "p" * 600})
    archive = build([(ti, data)], "pax")
    p, _ = parse(archive[: BLOCK + 100])
    with pytest.raises(IntegrityError):
        p.check_complete()


@pytest.mark.parametrize("trailer", [bytes(BLOCK), bytes(20 * BLOCK), bytes(7),
                                     b"garbage after the end"])
def test_anything_after_the_end_marker_is_ignored(trailer: bytes) -> None:
    archive = build(basic_tree(), "pax")
    p, entries = parse(archive + trailer)
    p.check_complete()
    assert p.entries == len(entries) == 12


@pytest.mark.parametrize("name", ["/a", "a", "datax/y", "/etc/passwd", "./other/f", "dat"])
def test_root_refuses_entries_outside(name: str) -> None:
    archive = build([member("data", tarfile.DIRTYPE), member(name, data=b"x")], "pax")
    with pytest.raises(IntegrityError, match="outside its root"):
        parse(archive, root="data")


@pytest.mark.parametrize("name", ["data/../etc/passwd", "data/a/../../x", "data/.."])
def test_root_refuses_dot_dot(name: str) -> None:
    archive = build([member("data", tarfile.DIRTYPE), member(name, data=b"x")], "pax")
    with pytest.raises(IntegrityError, match="outside its root"):
        parse(archive, root="data")


def test_root_refuses_hardlinks_to_outside() -> None:
    archive = build([member("data", tarfile.DIRTYPE),
                     member("data/h", tarfile.LNKTYPE, link="etc/shadow")], "pax")
    with pytest.raises(IntegrityError, match="outside its root"):
        parse(archive, root="data")


@pytest.mark.parametrize("name", ["data", "/data", "./data", "data/", "/data/x", "./data/x/y",
                                  "data/..x/f"])
def test_root_accepts_entries_inside(name: str) -> None:
    archive = build([member(name, data=b"x")], "pax")
    p, _ = parse(archive, root="/data/")
    p.check_complete()
    assert p.entries == 1


def test_without_root_anything_goes() -> None:
    archive = build([member("/a", data=b"x"), member("b/c", data=b"y")], "pax")
    _, entries = parse(archive)
    assert [e.name for e in entries] == [b"a", b"b/c"]


# -- the digest ---------------------------------------------------------------------------


def test_digest_equal_across_formats() -> None:
    digests = {fmt: digest(build(basic_tree(), fmt)) for fmt in FORMATS}
    assert len(set(digests.values())) == 1, digests


def test_digest_equal_across_gnu_and_pax_for_extended_members() -> None:
    assert digest(build(extended_tree(), "gnu")) == digest(build(extended_tree(), "pax"))


def test_digest_ignores_user_names_and_leading_dot_slash() -> None:
    tree = basic_tree()
    other = []
    for ti, data in basic_tree():
        ti.uname, ti.gname = "someone", "else"
        ti.name = "./" + ti.name
        other.append((ti, data))
    assert digest(build(tree, "pax")) == digest(build(other, "pax"))


def changed(**kw) -> str:
    return digest(build(basic_tree(**kw), "pax"))


def test_digest_changes_with_content_and_mode() -> None:
    base = changed()
    assert changed(content=b"hello world\n" * 99 + b"hello World\n") != base
    assert changed(mode=0o600) != base


@pytest.mark.parametrize("field,value", [("uid", 1), ("gid", 1), ("mtime", MTIME + 1),
                                         ("name", "data/b.txt")])
def test_digest_changes_with_metadata(field: str, value: object) -> None:
    tree = basic_tree()
    setattr(tree[1][0], field, value)
    assert digest(build(tree, "pax")) != digest(build(basic_tree(), "pax"))


def test_digest_changes_with_xattr() -> None:
    def tree(value: str | None) -> list:
        t = basic_tree()
        if value is not None:
            t[1][0].pax_headers = {"SCHILY.xattr.security.capability": value}
        return t

    none, one, other = (digest(build(tree(v), "pax")) for v in (None, "\x01", "\x02"))
    assert len({none, one, other}) == 3


def test_digest_changes_with_link_target() -> None:
    tree = basic_tree()
    tree[5][0].linkname = "other"
    assert digest(build(tree, "pax")) != digest(build(basic_tree(), "pax"))


def test_digest_frames_contents_taken_as_they_are() -> None:
    """Small contents go into the digest as bytes: a byte moved from one file to the
    next, a content shorter than its record says, or one hashed instead, all differ."""
    from volbak.stream.tar import BIG_FILE, INLINE, TreeDigest

    def files(*contents: bytes) -> str:
        return digest(build([member(f"data/{i}", data=c) for i, c in enumerate(contents)],
                            "pax"))

    assert files(b"ab", b"c") != files(b"a", b"bc")
    assert files(b"", b"abc") != files(b"abc", b"")

    def tree(content: bytes, given: bytes, hashed: bool = False) -> str:
        d = TreeDigest()
        record = b"1:a0:0 %d" % len(content)
        if hashed:
            d.add(record, blake3.blake3(given).hexdigest())
        else:
            d.begin(record, len(content))
            d.update(given)
            d.end()
        return d.hexdigest()

    assert tree(b"abc", b"abc") == tree(b"abc", b"abc")
    assert tree(b"abc", b"ab") != tree(b"abc", b"abc")
    assert tree(b"abc", b"ab") != tree(b"abc", b"ab")  # a short content equals nothing
    assert tree(b"abc", b"abc", hashed=True) != tree(b"abc", b"abc")
    assert INLINE < BIG_FILE  # a compared file (Rereads.MIN) is never inline


def test_digest_needs_digest_mode() -> None:
    p = TarParser()
    with pytest.raises(AssertionError):
        p.hexdigest()


# -- chunking never matters ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_feeding_in_any_chunk_size_gives_identical_results(fmt: str) -> None:
    tree = basic_tree() + (extended_tree()[1:] if fmt != "ustar" else [])
    archive = build(tree, fmt) + bytes(3 * BLOCK)
    results = set()
    for step in (1, 511, 512, 513, 2**20):
        p, entries = parse(archive, step, digest=True)
        p.check_complete()
        results.add((p.entries, p.file_bytes, p.tar_bytes, p.hexdigest(), repr(entries)))
    assert len(results) == 1


def test_feeding_memoryviews_and_bytearrays() -> None:
    archive = build(basic_tree(), "gnu")
    a = TarParser(digest=True)
    a.feed(archive)
    b = TarParser(digest=True)
    for i in range(0, len(archive), 1000):
        b.feed(memoryview(bytearray(archive[i : i + 1000])))
    assert a.hexdigest() == b.hexdigest()


def test_sparse_digest_does_not_depend_on_chunking(tmp_path) -> None:
    """A GNU sparse 1.0 map is collected whole before the data is hashed: a chunk
    boundary inside the map's padding once shifted the data (and the digest)."""
    from volbak.volumes.direct import DirectSource

    with open(tmp_path / "holes", "wb") as f:
        f.seek(1 << 20)
        f.write(b"x" * 1000)
        f.truncate(3 << 20)
    with DirectSource(tmp_path) as src:
        archive = b"".join(iter(lambda: src.read(2**20), b""))
    assert b"GNU.sparse.major" in archive
    digests = {digest(archive, step=step) for step in (2**20, 4096, 700, 513, 1)}
    assert len(digests) == 1


def test_an_extracting_parser_digests_big_files_the_same() -> None:
    """With ``on_entry`` (the direct target), a big file is hashed beside the writes
    (``_Behind``): the digest must not change, whatever the piece sizes."""
    import os

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, size in (("data/big", 3 * 2**20 + 5), ("data/small", 10),
                           ("data/big2", 2**20)):
            ti = tarfile.TarInfo(name)
            ti.size = size
            t.addfile(ti, io.BytesIO(os.urandom(size)))
    raw = buf.getvalue()
    plain = TarParser(digest=True, root="data")
    plain.feed(raw)
    extracting = TarParser(digest=True, root="data", on_entry=lambda e: None)
    for i in range(0, len(raw), 70_001):
        extracting.feed(raw[i: i + 70_001])
    assert extracting.ended and extracting.hexdigest() == plain.hexdigest()


def test_content_a_sink_compares_is_not_hashed(monkeypatch) -> None:
    """A sink that compares what it wrote (the direct target's read-behind) spares the
    parser the content's hash: the digest takes COMPARED for it, and only for it; a
    big content gets its hash, a small one goes into the digest as it is."""
    from volbak.stream import tar as tarmod

    big = b"b" * (tarmod.INLINE + 1)
    files = (("data/compared", b"a" * 5000), ("data/hashed", big), ("data/small", b"c" * 10))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    written: list[tuple[bytes, bytes]] = []

    class Sink:
        def __init__(self, entry: Entry) -> None:
            self.entry, self.data = entry, b""
            self.compares = entry.name.endswith(b"compared")

        def write(self, data: memoryview) -> None:
            self.data += bytes(data)

        def close(self) -> None:
            written.append((self.entry.name, self.data))

    p = TarParser(digest=True, root="data", on_entry=Sink)
    hashed, added, inlined = [], [], []
    real = tarmod.blake3.blake3
    add, begin = tarmod.TreeDigest.add, tarmod.TreeDigest.begin
    monkeypatch.setattr(tarmod.blake3, "blake3", lambda *a: hashed.append(1) or real(*a))
    monkeypatch.setattr(tarmod.TreeDigest, "add", lambda self, record, content: (
        added.append((record.split(b" ")[0], content)), add(self, record, content)))
    monkeypatch.setattr(tarmod.TreeDigest, "begin", lambda self, record, size: (
        inlined.append((record.split(b" ")[0], size)), begin(self, record, size)))
    p.feed(buf.getvalue())
    monkeypatch.undo()
    assert written == [(n.encode(), d) for n, d in files]
    assert inlined == [(b"10:data/small0:00,0", 10)]
    assert added == [(b"13:data/compared0:00,0", tarmod.COMPARED),
                     (b"11:data/hashed0:00,0", real(big).hexdigest())]
    assert len(hashed) == 1  # the big file's, not the compared one's
    assert p.hexdigest() != digest(buf.getvalue())
