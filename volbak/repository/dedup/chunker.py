"""Content-defined chunking of a tar stream, with cuts at the edges of big files.

FastCDC (pyfastcdc, 64 KiB / 256 KiB / 1 MiB) finds cut points from the content, so an
insertion moves only the chunks around it. On a tar stream that alone leaves one
weakness: a file whose mtime changed gets a new header, and the chunk holding that
header also holds the first bytes of the file's data (and the end of the previous
file), so both are stored again. So the chunker follows the tar headers as they pass
and adds hard cuts before and after the data of every file of at least ``min`` bytes:
a big file's data then chunks the same wherever it sits in the stream and whatever its
header says, and small files and headers group together as before.

The header tracking is only a hint: on anything it does not understand (a bad checksum,
a size it cannot read) it stops cutting and the stream is chunked by content alone.
Correctness never depends on it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from pyfastcdc import FastCDC

from ...stream.tar import BLOCK, checksum_ok, parse_number

_META = {b"x", b"g", b"L", b"K"}
_NO_DATA = {b"1", b"2", b"3", b"4", b"5", b"6"}
# How much to gather before running the chunker over the buffer: every run re-reads
# the last (unfinished) chunk (<= max, 128 KiB by default), so runs over a few MiB keep
# that cost small; more only raises peak memory.
_BATCH = 2 << 20


def _pad(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


class TarCuts:
    """Follows tar headers in a stream fed piecewise; ``cuts`` gets the offsets at
    which a chunk must end."""

    def __init__(self, min_file: int, spans: bool = False) -> None:
        self.min_file = min_file
        self._keep_spans = spans
        self.cuts: deque[int] = deque()
        self.spans: deque[tuple[int, int]] = deque()  # (start, end) of each big file's data
        self._pos = 0  # stream offset of the next byte fed
        self._next = 0  # offset of the next header block
        self._head = bytearray()
        self._pax_size: int | None = None
        self._pax = bytearray()
        self._pax_end = -1
        self.enabled = True

    def feed(self, data: bytes | memoryview) -> None:
        mv = memoryview(data)
        end = self._pos + len(mv)
        while self.enabled:
            if self._pax_end > 0:  # gathering a PAX header's data for its size record
                take = min(end, self._pax_end) - max(self._pos, self._pax_end - self._paxlen)
                if take > 0:
                    start = max(self._pos, self._pax_end - self._paxlen) - self._pos
                    self._pax += mv[start: start + take]
                if end < self._pax_end:
                    break
                self._on_pax()
            if self._next >= end:
                break
            start = max(self._next, self._pos)
            need = BLOCK - len(self._head)
            piece = mv[start - self._pos: start - self._pos + need]
            self._head += piece
            if len(self._head) < BLOCK:
                break
            self._header(bytes(self._head))
            self._head.clear()
        self._pos = end

    def skip(self, n: int) -> bool:
        """Pass over ``n`` bytes if they are exactly the data and padding of the file
        whose header was fed last; else False and nothing changes."""
        if not self.enabled or self._head or self._pax_end > 0 or self._next != self._pos + n:
            return False
        self._pos += n
        return True

    def _on_pax(self) -> None:
        for rec in bytes(self._pax).split(b"\n"):
            _, _, kv = rec.partition(b" ")
            if kv.startswith(b"size="):
                try:
                    self._pax_size = int(kv[5:])
                except ValueError:
                    self.enabled = False
        self._pax.clear()
        self._pax_end = -1

    def _header(self, h: bytes) -> None:
        at = self._next
        if h == bytes(BLOCK):
            self.enabled = False  # end of archive: nothing more to cut
            return
        try:
            ok = checksum_ok(h)
            size = parse_number(h[124:136])
        except ValueError:
            ok = False
        if not ok:
            self.enabled = False
            return
        typ = h[156:157]
        data = at + BLOCK
        if typ in _META:
            if typ == b"x" and size <= 64 * 1024:
                self._paxlen = size
                self._pax_end = data + size
            self._next = data + _pad(size)
            return
        if self._pax_size is not None:
            size, self._pax_size = self._pax_size, None
        if typ in _NO_DATA:
            size = 0
        self._next = data + _pad(size)
        if size >= self.min_file:
            self.cuts.append(data)
            self.cuts.append(self._next)
            if self._keep_spans:
                self.spans.append((data, self._next))  # padding in the last block


class Chunker:
    """Feed the tar stream with ``write``; ``emit(chunk)`` gets each chunk in order
    (a bytes object the callee may keep).

    ``blocks``: the data of every big file is cut into blocks of ``avg_size`` bytes
    counted from the file's first byte (the last one shorter), not by content. A write
    in place (a database page, a VM image, a log's tail) then dirties exactly the blocks
    it touches; content-defined chunks around it dirty about 1.4 chunks per write (size
    bias and re-synchronisation, measured), and an insertion in the middle of a big file,
    which CDC absorbs, costs the rest of that one file. Headers and small files are
    still chunked by content."""

    def __init__(self, emit: Callable[[bytes], None], min_size: int, avg_size: int,
                 max_size: int, tar_aware: bool = True, blocks: bool = False) -> None:
        self._cdc = FastCDC(avg_size=avg_size, min_size=min_size, max_size=max_size)
        self._emit = emit
        self._block = avg_size if blocks and tar_aware else 0
        self._tar = TarCuts(min_size, bool(self._block)) if tar_aware else None
        self._buf = bytearray()
        self._base = 0  # stream offset of self._buf[0]

    def write(self, data: bytes | memoryview) -> None:
        if self._tar is not None:
            self._tar.feed(data)
        self._buf += data
        self._run(final=False)

    def finish(self) -> None:
        self._run(final=True)

    @property
    def file_cut_min(self) -> int | None:
        """Files of at least this many bytes have their data (with padding) cut into
        whole chunks of their own; None when the chunker does not follow tar headers."""
        return self._tar.min_file if self._tar is not None else None

    def skip(self, n: int) -> bool:
        """Pass over ``n`` bytes of the stream that are the whole data (with padding) of
        a big file, which the caller has as chunks already: only right after that file's
        header, where the buffer was just cut. False (nothing changed) elsewhere."""
        t = self._tar
        if t is None or self._buf or not t.cuts or t.cuts[0] != self._base + n \
                or not t.skip(n):
            return False
        t.cuts.popleft()
        self._base += n
        return True

    def _cut(self, end: int, whole: bool) -> None:
        """Chunk self._buf[:end]; with ``whole`` the last piece is a chunk too,
        otherwise it stays in the buffer for the next run."""
        with memoryview(self._buf) as view:
            spans = [(c.offset, c.length) for c in self._cdc.cut_buf(view[:end])]
        if not whole and spans:
            spans.pop()  # unfinished: its end depends on bytes not yet here
        buf = self._buf
        for off, n in spans:
            self._emit(bytes(buf[off: off + n]))
        done = spans[-1][0] + spans[-1][1] if spans else 0
        del self._buf[:done]
        self._base += done

    def _blocks(self, final: bool) -> bool:
        """In fixed-block mode, inside a big file's data: cut whole blocks. False when
        the data goes on beyond what is buffered (wait for more)."""
        assert self._tar is not None
        spans, block = self._tar.spans, self._block
        while spans and spans[0][1] <= self._base:
            spans.popleft()
        if not spans or spans[0][0] > self._base:
            return True  # not in a big file's data: content decides
        end = spans[0][1]
        buf = self._buf
        n = 0
        with memoryview(buf) as view:
            while True:
                step = min(block, end - self._base - n)
                if n + step > len(buf):
                    break
                self._emit(bytes(view[n: n + step]))
                n += step
                if self._base + n >= end:
                    break
        del buf[:n]
        self._base += n
        return self._base >= end or final

    def _run(self, final: bool) -> None:
        cuts = self._tar.cuts if self._tar is not None else None
        while True:
            if self._block and not self._blocks(final):
                return
            top = self._base + len(self._buf)
            while cuts and cuts[0] <= self._base:
                cuts.popleft()
            if cuts and cuts[0] <= top:
                self._cut(cuts.popleft() - self._base, whole=True)
                continue
            if final:
                if self._buf:
                    self._cut(len(self._buf), whole=True)
                return
            if len(self._buf) >= _BATCH:
                before = self._base
                self._cut(len(self._buf), whole=False)
                if self._base == before:
                    return
                continue
            return
