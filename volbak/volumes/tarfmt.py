"""The tar records the direct source writes: POSIX ustar headers, PAX extended headers
with the usual ``SCHILY.xattr.*``, ``SCHILY.acl.*`` and GNU sparse 1.0 records (what GNU
tar writes with ``--format=posix --xattrs --acls --sparse``), and POSIX ACLs converted
between the kernel's xattr form and text. Reading is volbak.stream.tar's (the one tar
parser); the direct target takes its entries from there.

Names and values stay bytes throughout: a volume may hold names that are not UTF-8.
"""

from __future__ import annotations

import functools
import grp
import pwd
import struct
import zlib

from ..stream.tar import byte_sum

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)

REGULAR, HARDLINK, SYMLINK, CHARDEV, BLOCKDEV, DIRECTORY, FIFO = (
    b"0", b"1", b"2", b"3", b"4", b"5", b"6",
)

ACL_ACCESS_XATTR = "system.posix_acl_access"
ACL_DEFAULT_XATTR = "system.posix_acl_default"


def padding(size: int) -> int:
    return -size % BLOCK


# ------------------------------------------------------------------ writing


def _octal(value: int, width: int) -> bytes | None:
    """``value`` as a NUL-terminated octal field, or None when it does not fit."""
    if value < 0:
        return None
    text = b"%0*o" % (width - 1, value)
    return text + b"\0" if len(text) == width - 1 else None


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


def _split_name(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) fields for a ustar header, or None when a PAX path is needed."""
    if len(name) <= 100:
        return b"", name
    # ustar may split a long name at a slash: prefix up to 155 bytes, name up to 100.
    cut = name.find(b"/", max(0, len(name) - 101))
    while 0 < cut <= 155:
        if len(name) - cut - 1 <= 100 and name[cut + 1:]:
            return name[:cut], name[cut + 1:]
        cut = name.find(b"/", cut + 1)
    return None


_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
# Values from these up do not fit ustar's 7- and 11-digit octal fields: they go to PAX
# (ids, sizes, mtimes) or are written as 0 (device numbers).
MAX7, MAX11 = 8**7, 8**11


def _ustar(name: bytes, typ: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
           linkname: bytes, devmajor: int, devminor: int, prefix: bytes = b"") -> bytes:
    # Values that do not fit are in the PAX header; their ustar fields hold zero.
    fields = [
        name, b"%07o\0" % mode, b"%07o\0" % (uid if uid < MAX7 else 0),
        b"%07o\0" % (gid if gid < MAX7 else 0), b"%011o\0" % (size if size < MAX11 else 0),
        b"%011o\0" % (mtime if 0 <= mtime < MAX11 else 0), b"        ", typ, linkname,
        b"ustar\x0000", b"", b"", b"%07o\0" % (devmajor if devmajor < MAX7 else 0),
        b"%07o\0" % (devminor if devminor < MAX7 else 0), prefix,
    ]
    # The padding struct adds is zeros: summing the bare fields is the same, cheaper.
    fields[6] = b"%06o\0 " % byte_sum(b"".join(fields))
    return _USTAR.pack(*fields)


@functools.lru_cache(maxsize=64)
def _ids(mode: int, uid: int, gid: int) -> bytes:
    return b"%07o\0%07o\0%07o\0" % (mode, uid, gid)


# after the type flag of an entry with no link name and no device: the magic, empty
# user and group names, device numbers 0, no prefix; and its bytes' sum
_PLAIN_TAIL = bytes(100) + b"ustar\x0000" + bytes(64) + b"0000000\0" * 2 + bytes(167)
_PAD30 = bytes(BLOCK - 30)
_PLAIN_TAIL_SUM = byte_sum(_PLAIN_TAIL) + 8 * 32  # and the checksum field's spaces


def _ustar_plain(name: bytes, typ: bytes, mode: int, uid: int, gid: int, size: int,
                 mtime: int) -> bytes:
    """``_ustar`` of an entry with no link name, device or prefix, all values in range
    (files and directories): its bytes, in half the time
    (test_direct.test_header_fast_path_writes_the_general_paths_bytes compares)."""
    head = b"%b%b%011o\0%011o\0" % (name.ljust(100, b"\0"), _ids(mode, uid, gid), size,
                                     mtime)
    # 148 bytes sum to less than Adler-32's modulus: the low half is their sum plus 1
    check = (zlib.adler32(head) & 0xFFFF) - 1 + typ[0] + _PLAIN_TAIL_SUM
    return b"".join((head, b"%06o\0 " % check, typ, _PLAIN_TAIL))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def header(name: bytes, typ: bytes, *, mode: int, uid: int, gid: int, mtime_ns: int,
           size: int = 0, linkname: bytes = b"", devmajor: int = 0, devminor: int = 0,
           pax: list[tuple[bytes, bytes]] | None = None) -> bytes:
    """One entry's header block(s): a PAX extended header when anything does not fit
    ustar (long names, large ids or sizes, sub-second mtimes, xattrs, ACLs, sparse maps),
    then the ustar header."""
    seconds, ns = divmod(mtime_ns, 10**9)
    if (not pax and len(name) <= 100 and len(linkname) <= 100 and uid < MAX7
            and gid < MAX7 and size < MAX11 and 0 <= seconds < MAX11):
        # Most entries: ustar, and at most the mtime's nanoseconds in PAX. The same
        # bytes as the general path below (test_direct), in a third of its time.
        main = _ustar_plain(name, typ, mode, uid, gid, size, seconds) \
            if not linkname and not devmajor and not devminor else \
            _ustar(name, typ, mode, uid, gid, size, seconds, linkname, devmajor, devminor)
        if not ns:
            return main
        if 10**9 <= seconds < 10**10:  # 2001 to 2286: the record is 30 bytes
            return b"".join((_pax_header(30, seconds), b"30 mtime=%d.%09d\n" % (seconds, ns),
                             _PAD30, main))
        data = pax_record(b"mtime", b"%d.%09d" % (seconds, ns))
        return b"".join((_pax_header(len(data), seconds), data,
                         bytes(padding(len(data))), main))
    return _header(name, typ, mode, uid, gid, mtime_ns, size, linkname, devmajor, devminor,
                   pax)


def small_file(name: bytes, mode: int, uid: int, gid: int, mtime_ns: int, data: bytes
               ) -> bytes:
    """A regular file's whole entry: ``header(name, REGULAR, size=len(data), ...)``,
    ``data`` and its padding, in one piece: for the usual small file (short name, small
    ids, an mtime from 2001 to 2242) without ``header``'s keyword call and checks, and
    with one join, the walk's biggest share of Python time after its syscalls
    (test_direct compares the bytes)."""
    size = len(data)
    seconds, ns = divmod(mtime_ns, 1_000_000_000)
    if (len(name) > 100 or uid >= MAX7 or gid >= MAX7 or size >= MAX11
            or not 10**9 <= seconds < MAX11):
        return b"".join((header(name, REGULAR, mode=mode, uid=uid, gid=gid,
                                mtime_ns=mtime_ns, size=size), data, bytes(padding(size))))
    main = _ustar_plain(name, REGULAR, mode, uid, gid, size, seconds)
    if not ns:
        return b"".join((main, data, bytes(padding(size))))
    return b"".join((_pax_header(30, seconds), b"30 mtime=%d.%09d\n" % (seconds, ns), _PAD30,
                     main, data, bytes(padding(size))))


@functools.lru_cache(maxsize=16)
def _pax_header(size: int, seconds: int) -> bytes:
    """The ustar block before a PAX header's data; files written together share it."""
    return _ustar(b"././@PaxHeader", b"x", 0o644, 0, 0, size, seconds, b"", 0, 0)


def _header(name: bytes, typ: bytes, mode: int, uid: int, gid: int, mtime_ns: int,
            size: int, linkname: bytes, devmajor: int, devminor: int,
            pax: list[tuple[bytes, bytes]] | None) -> bytes:
    records = list(pax or ())
    split = _split_name(name)
    if split is None:
        records.append((b"path", name))
        split = b"", name[:100]
    if len(linkname) > 100:
        records.append((b"linkpath", linkname))
    for key, value, width in ((b"uid", uid, 8), (b"gid", gid, 8), (b"size", size, 12)):
        if _octal(value, width) is None:
            records.append((key, b"%d" % value))
    seconds, ns = divmod(mtime_ns, 10**9)
    if ns or _octal(seconds, 12) is None:
        if mtime_ns < 0:
            records.append((b"mtime", b"-%d.%09d" % divmod(-mtime_ns, 10**9)))
        else:
            records.append((b"mtime", b"%d.%09d" % (seconds, ns)))
    out = []
    if records:
        if not all(_is_utf8(v) for k, v in records if k in (b"path", b"linkpath")):
            records.insert(0, (b"hdrcharset", b"BINARY"))
        data = b"".join(pax_record(k, v) for k, v in records)
        out.append(_ustar(b"././@PaxHeader", b"x", 0o644, 0, 0, len(data), max(seconds, 0),
                          b"", 0, 0))
        out.append(data + b"\0" * padding(len(data)))
    prefix, short = split
    out.append(_ustar(short, typ, mode, uid, gid, size, max(seconds, 0), linkname, devmajor,
                      devminor, prefix))
    return b"".join(out)


def sparse_map_block(segments: list[tuple[int, int]]) -> bytes:
    """The map GNU sparse 1.0 puts at the start of the entry's data, padded."""
    text = b"%d\n" % len(segments) + b"".join(b"%d\n%d\n" % seg for seg in segments)
    return text + b"\0" * padding(len(text))


# ------------------------------------------------------------------ POSIX ACLs

_ACL_VERSION = 2
_TAGS = {1: "user", 2: "user", 4: "group", 8: "group", 0x10: "mask", 0x20: "other"}
_NAMED = {2, 8}  # ACL_USER, ACL_GROUP carry an id
_UNDEFINED_ID = 0xFFFFFFFF


def acl_to_text(blob: bytes) -> bytes:
    """The kernel's ``system.posix_acl_*`` value as ACL text with numeric ids, one entry
    a line (the layout GNU tar writes; GNU tar 1.34 writes user *names* even with
    --numeric-owner, which restores the wrong people on another host)."""
    if len(blob) < 4 or (len(blob) - 4) % 8 or struct.unpack_from("<I", blob)[0] != 2:
        raise ValueError("not a POSIX ACL xattr")
    lines = []
    for off in range(4, len(blob), 8):
        tag, perm, ident = struct.unpack_from("<HHI", blob, off)
        if tag not in _TAGS:
            raise ValueError(f"unknown ACL tag {tag}")
        rwx = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        who = str(ident) if tag in _NAMED else ""
        lines.append(f"{_TAGS[tag]}:{who}:{rwx}\n")
    return "".join(lines).encode()


def acl_from_text(text: bytes) -> bytes:
    """ACL text (numeric ids or names, comma or newline separated, ``#`` comments, the
    short tags ``u g m o``) in the kernel's xattr form, entries in the order it wants."""
    entries = []
    for raw in text.decode("utf-8", "surrogateescape").replace(",", "\n").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(":")
        if len(parts) != 3:
            raise ValueError(f"bad ACL entry {line!r}")
        kind, who, rwx = (p.strip() for p in parts)
        kind = {"u": "user", "g": "group", "m": "mask", "o": "other"}.get(kind, kind)
        perm = 0
        for c in rwx:
            perm |= {"r": 4, "w": 2, "x": 1, "-": 0}.get(c, -1 << 8)
        if perm < 0:
            raise ValueError(f"bad ACL permissions {line!r}")
        if kind in ("user", "group") and who:
            tag = 2 if kind == "user" else 8
            ident = _acl_id(who, kind)
        elif kind in ("user", "group", "mask", "other") and not who:
            tag = {"user": 1, "group": 4, "mask": 0x10, "other": 0x20}[kind]
            ident = _UNDEFINED_ID
        else:
            raise ValueError(f"bad ACL entry {line!r}")
        entries.append((tag, ident, perm))
    entries.sort()
    return struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for tag, ident, perm in entries
    )


def _acl_id(who: str, kind: str) -> int:
    if who.isdigit():
        return int(who)
    try:
        return pwd.getpwnam(who).pw_uid if kind == "user" else grp.getgrnam(who).gr_gid
    except KeyError:
        raise ValueError(f"unknown {kind} {who!r} in an ACL") from None
