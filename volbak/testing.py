"""The backend contract test suite, shipped with the core so plugins can run it.

Every backend's test module runs the whole suite in three lines::

    from volbak.testing import BackendContract

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend(self): yield make_a_fresh_empty_backend()

The ``backend`` fixture MUST yield a fresh, empty backend and clean up after it. Each
test checks one MUST of the contract in ``volbak.backend``'s docstring. Needs pytest.
"""

from __future__ import annotations

import hashlib
import random
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from .backend import Backend, ObjectInfo
from .errors import ObjectNotFound

MiB = 1024 * 1024

# Uneven write sizes: tiny, odd, around 64 KiB and 1 MiB boundaries, bigger than a MiB.
_CHUNK_SIZES = (1, 7, 65_535, 65_537, 4096, 1 * MiB + 3, 333_333, 2 * MiB - 1, 17)


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible bytes."""
    return random.Random(seed).randbytes(size)


def uneven_chunks(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    pos = i = 0
    while pos < len(data):
        n = _CHUNK_SIZES[i % len(_CHUNK_SIZES)]
        yield view[pos : pos + n]
        pos += n
        i += 1


def read_in_chunks(backend: Backend, name: str, n: int) -> bytes:
    """Read an object back with ``read(n)`` calls, checking none returns more than n."""
    out = bytearray()
    r = backend.open_reader(name)
    try:
        while True:
            block = r.read(n)
            assert len(block) <= n, f"read({n}) returned {len(block)} bytes"
            if not block:
                break
            out += block
        assert r.read(n) == b"", "read after EOF must return b''"
    finally:
        r.close()
    return bytes(out)


def names(backend: Backend, prefix: str = "") -> list[str]:
    return sorted(o.name for o in backend.list(prefix))


INVALID_NAMES = ["", "/abs", "a//b", "a/", ".", "..", "a/../b", "./a", "a/.", "../a"]


class BackendContract:
    """Subclass in a test module and provide a ``backend`` fixture (see module doc)."""

    # Size of the streamed round-trip object; a backend can lower it if it is slow.
    large_size: int = 20 * MiB
    # Most bytes Python may allocate at once while streaming large_size bytes in and out
    # (measured with tracemalloc, so only meaningful when no server runs in-process);
    # None skips the check.
    stream_memory_limit: int | None = None
    # Unfinished writes (list_incomplete/remove_incomplete, optional): whether the backend
    # finds them, how many bytes an unfinished writer must write before something exists
    # (S3: more than one part), the age the test passes, and how long it waits before it
    # expects the first writer listed: the age, plus the time its data takes to arrive,
    # plus whatever slack the backend keeps (whole-second timestamps: about 2 s).
    finds_incomplete: bool = True
    # Object times (ObjectInfo.mtime, optional): how far (seconds) a reported time may lie
    # outside [writer's start, commit's return] by our clock: rounding to whole seconds,
    # and the skew between this host's clock and the store's.
    mtime_slack: float = 2.0
    incomplete_write_size: int = 100_000
    incomplete_age: float = 1.0
    incomplete_wait: float = 2.0

    @pytest.fixture
    def backend(self) -> Iterator[Backend]:  # pragma: no cover - overridden
        raise NotImplementedError("a BackendContract subclass must define a backend fixture")

    # -- round trips ------------------------------------------------------------------

    def test_empty_backend_lists_nothing(self, backend: Backend) -> None:
        assert list(backend.list()) == []
        assert list(backend.list("x")) == []

    def test_roundtrip_zero_bytes(self, backend: Backend) -> None:
        with backend.create_writer("vol/empty") as w:
            info = w.commit()
        assert info == ObjectInfo("vol/empty", 0)
        assert backend.get_bytes("vol/empty") == b""
        assert backend.stat("vol/empty").size == 0
        assert [(o.name, o.size) for o in backend.list()] == [("vol/empty", 0)]

    def test_roundtrip_small(self, backend: Backend) -> None:
        data = b"hello, volbak\n"
        with backend.create_writer("vol/small") as w:
            w.write(data[:5])
            w.write(memoryview(data)[5:])
            info = w.commit()
        assert info == ObjectInfo("vol/small", len(data))
        assert backend.get_bytes("vol/small") == data

    def test_roundtrip_large_streamed(self, backend: Backend) -> None:
        data = payload(self.large_size, seed=1)
        with backend.create_writer("vol/large.bin") as w:
            for chunk in uneven_chunks(data):
                w.write(chunk)
            info = w.commit()
        assert info.size == len(data)
        assert backend.stat("vol/large.bin").size == len(data)
        got = read_in_chunks(backend, "vol/large.bin", 1 * MiB + 11)
        assert len(got) == len(data)
        assert got == data

    def test_streaming_memory_is_bounded(self, backend: Backend) -> None:
        if self.stream_memory_limit is None:
            pytest.skip("this backend sets no stream_memory_limit")
        data = payload(self.large_size, seed=7)
        want = hashlib.sha256(data).hexdigest()
        tracemalloc.start()
        try:
            with backend.create_writer("vol/mem") as w:
                for chunk in uneven_chunks(data):
                    w.write(chunk)
                w.commit()
            _, peak_write = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            h = hashlib.sha256()
            r = backend.open_reader("vol/mem")
            try:
                while block := r.read(1 * MiB):
                    h.update(block)
            finally:
                r.close()
            _, peak_read = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert h.hexdigest() == want
        assert peak_write <= self.stream_memory_limit, f"writing held {peak_write} bytes"
        assert peak_read <= self.stream_memory_limit, f"reading held {peak_read} bytes"

    def test_reader_read_n_and_read_all(self, backend: Backend) -> None:
        data = payload(300_000, seed=2)
        backend.put_bytes("r/obj", data)
        assert read_in_chunks(backend, "r/obj", 4096) == data
        r = backend.open_reader("r/obj")
        try:
            head = r.read(10)
            assert head == data[:10]
            assert r.read() == data[10:]
        finally:
            r.close()

    def test_put_get_bytes(self, backend: Backend) -> None:
        info = backend.put_bytes("a/b.json", b'{"x": 1}')
        assert info == ObjectInfo("a/b.json", 8)
        assert backend.get_bytes("a/b.json") == b'{"x": 1}'

    def test_read_range(self, backend: Backend) -> None:
        data = payload(300_001, seed=8)
        backend.put_bytes("r/ranged", data)
        for off, n in [(0, 10), (5, 1), (65_536, 70_000), (299_990, 11), (0, 300_001),
                       (123, None), (299_999, 50), (300_001, 5), (400_000, 3), (7, 0)]:
            want = data[off:] if n is None else data[off: off + n]
            assert backend.read_range("r/ranged", off, n) == want, (off, n)
        assert backend.read_range("r/ranged") == data
        with pytest.raises(ObjectNotFound):
            backend.read_range("no/such", 0, 10)
        with pytest.raises(ObjectNotFound):
            backend.read_range("no/such", 0, 0)

    # -- visibility and atomicity -----------------------------------------------------

    def test_invisible_before_commit(self, backend: Backend) -> None:
        with backend.create_writer("vol/pending") as w:
            w.write(payload(100_000, seed=3))
            assert list(backend.list()) == []
            with pytest.raises(ObjectNotFound):
                backend.stat("vol/pending")
            with pytest.raises(ObjectNotFound):
                backend.open_reader("vol/pending")
            w.commit()
        assert names(backend) == ["vol/pending"]

    def test_commit_replaces_existing(self, backend: Backend) -> None:
        backend.put_bytes("vol/obj", b"old contents, longer than the new")
        with backend.create_writer("vol/obj") as w:
            w.write(b"new")
            # Until commit the old object stays whole and readable.
            assert backend.get_bytes("vol/obj") == b"old contents, longer than the new"
            w.commit()
        assert backend.get_bytes("vol/obj") == b"new"
        assert backend.stat("vol/obj").size == 3
        assert names(backend) == ["vol/obj"]

    def test_abort_leaves_nothing(self, backend: Backend) -> None:
        w = backend.create_writer("vol/aborted")
        w.write(payload(200_000, seed=4))
        w.abort()
        w.abort()  # idempotent
        assert list(backend.list()) == []
        with pytest.raises(ObjectNotFound):
            backend.stat("vol/aborted")

    def test_exception_inside_with_leaves_nothing(self, backend: Backend) -> None:
        class Boom(Exception):
            pass

        with pytest.raises(Boom), backend.create_writer("vol/boom") as w:
            w.write(payload(200_000, seed=5))
            raise Boom
        assert list(backend.list()) == []
        with pytest.raises(ObjectNotFound):
            backend.open_reader("vol/boom")

    def test_leaving_with_without_commit_leaves_nothing(self, backend: Backend) -> None:
        with backend.create_writer("vol/forgotten") as w:
            w.write(b"data nobody committed")
        assert list(backend.list()) == []

    def test_abort_of_replacement_keeps_old(self, backend: Backend) -> None:
        backend.put_bytes("vol/keep", b"original")
        with backend.create_writer("vol/keep") as w:
            w.write(b"replacement that is abandoned")
            w.abort()
        assert backend.get_bytes("vol/keep") == b"original"
        assert names(backend) == ["vol/keep"]

    def test_commit_twice_is_an_error(self, backend: Backend) -> None:
        with backend.create_writer("vol/once") as w:
            w.write(b"x")
            w.commit()
            with pytest.raises(RuntimeError):
                w.commit()
        assert backend.get_bytes("vol/once") == b"x"

    # -- unfinished writes (optional) ---------------------------------------------------

    def test_incomplete_writes_found_by_age_and_removed(self, backend: Backend) -> None:
        if not self.finds_incomplete:
            pytest.skip("unfinished writes are not found here (finds_incomplete = False)")
        age = self.incomplete_age
        backend.put_bytes("vol/done", b"committed")
        old = backend.create_writer("vol/old")
        try:
            old.write(payload(self.incomplete_write_size, seed=11))
            # Younger than the age: never listed, never removed.
            assert backend.list_incomplete(3600) == []
            assert backend.remove_incomplete(3600) == []
            time.sleep(self.incomplete_wait)
            new = backend.create_writer("vol/new")
            try:
                new.write(payload(self.incomplete_write_size, seed=12))
                listed = backend.list_incomplete(age)
                assert len(listed) == 1, listed
                assert listed[0].startswith("vol/old"), listed
                assert "\n" not in listed[0]
                assert backend.list_incomplete(age) == listed  # listing changes nothing
                assert backend.list_incomplete(3600) == []
                assert backend.remove_incomplete(age) == listed
                assert backend.list_incomplete(age) == []
                assert backend.remove_incomplete(age) == []
                # The fresh writer is untouched and still commits.
                new.write(b"tail")
                new.commit()
            finally:
                new.abort()
        finally:
            old.abort()  # its temp file or upload is gone already: must not raise
        assert names(backend) == ["vol/done", "vol/new"]
        want = payload(self.incomplete_write_size, seed=12) + b"tail"
        assert backend.get_bytes("vol/new") == want
        assert backend.get_bytes("vol/done") == b"committed"
        assert backend.list_incomplete(0) == []

    # -- listing ----------------------------------------------------------------------

    def test_list_by_prefix_any_depth(self, backend: Backend) -> None:
        objs = {
            "top": b"1",
            "pg/20261129T070001Z.tar.zst": b"22",
            "pg/20261129T070001Z.manifest.json": b"333",
            "pg/deeper/nested/obj": b"4444",
            "pgadmin/x": b"55555",
            "redis/y": b"666666",
        }
        for name, data in objs.items():
            backend.put_bytes(name, data)
        assert {(o.name, o.size) for o in backend.list()} == {(n, len(d)) for n, d in objs.items()}
        assert names(backend, "pg/") == [
            "pg/20261129T070001Z.manifest.json",
            "pg/20261129T070001Z.tar.zst",
            "pg/deeper/nested/obj",
        ]
        assert names(backend, "pg") == [*names(backend, "pg/"), "pgadmin/x"]
        assert names(backend, "pg/deeper/") == ["pg/deeper/nested/obj"]
        assert names(backend, "pg/2026") == [
            "pg/20261129T070001Z.manifest.json",
            "pg/20261129T070001Z.tar.zst",
        ]
        assert names(backend, "nope/") == []
        assert names(backend, "to") == ["top"]

    def test_names_with_spaces_and_unicode(self, backend: Backend) -> None:
        odd = ["my volume/back up 1.tar", "données/été ☃.bin", "日本/データ", "a b/c+d=e&f%20"]
        for i, name in enumerate(odd):
            backend.put_bytes(name, name.encode() * (i + 1))
        assert names(backend) == sorted(odd)
        for i, name in enumerate(odd):
            assert backend.get_bytes(name) == name.encode() * (i + 1)
            assert backend.stat(name).size == len(name.encode()) * (i + 1)
        assert names(backend, "données/") == ["données/été ☃.bin"]
        assert names(backend, "my volume/") == ["my volume/back up 1.tar"]

    # -- object times (optional) -------------------------------------------------------

    def test_mtime_when_reported(self, backend: Backend) -> None:
        """A backend that reports ``mtime`` reports it in ``list`` and ``stat`` alike, as
        POSIX seconds between the writer's start and the commit's return; one that does
        not reports None everywhere (unknown: cleanup never ages by it)."""
        sizes = {"t/small": 10, "t/large": self.incomplete_write_size}
        spans = {}
        for name, size in sizes.items():
            t0 = time.time()
            with backend.create_writer(name) as w:
                w.write(payload(size, seed=13))
                info = w.commit()
            spans[name] = (t0, time.time())
            assert info.mtime is None or isinstance(info.mtime, float)
        listed = {o.name: o.mtime for o in backend.list("t/")}
        stated = {n: backend.stat(n).mtime for n in sizes}
        assert sorted(listed) == sorted(sizes)
        if all(v is None for v in [*listed.values(), *stated.values()]):
            pytest.skip("this backend reports no object times (mtime None: allowed)")
        for name, (t0, t1) in spans.items():
            for where, when in (("list", listed[name]), ("stat", stated[name])):
                assert isinstance(when, float), f"{where}({name!r}).mtime is {when!r}"
                assert t0 - self.mtime_slack <= when <= t1 + self.mtime_slack, (
                    f"{where}({name!r}).mtime {when} outside [{t0}, {t1}]")
            assert abs(listed[name] - stated[name]) <= 1.0 + 1e-6  # whole-second rounding
        # Equality ignores the time: plugins built before it existed compare (name, size).
        assert backend.stat("t/small") == ObjectInfo("t/small", 10)

    # -- stat / delete / missing -----------------------------------------------------

    def test_stat_size(self, backend: Backend) -> None:
        backend.put_bytes("s/one", payload(12_345, seed=6))
        assert backend.stat("s/one") == ObjectInfo("s/one", 12_345)

    def test_delete(self, backend: Backend) -> None:
        backend.put_bytes("d/a", b"a")
        backend.put_bytes("d/b", b"b")
        backend.delete("d/a")
        assert names(backend) == ["d/b"]
        with pytest.raises(ObjectNotFound):
            backend.stat("d/a")
        with pytest.raises(ObjectNotFound):
            backend.open_reader("d/a")
        backend.delete("d/b")
        assert list(backend.list()) == []

    def test_delete_missing(self, backend: Backend) -> None:
        with pytest.raises(ObjectNotFound):
            backend.delete("no/such")

    def test_open_reader_and_stat_missing(self, backend: Backend) -> None:
        backend.put_bytes("there", b"x")
        with pytest.raises(ObjectNotFound):
            backend.open_reader("no/such")
        with pytest.raises(ObjectNotFound):
            backend.stat("no/such")
        with pytest.raises(ObjectNotFound):
            backend.get_bytes("the")  # a prefix of a real name is not an object

    @pytest.mark.parametrize("bad", INVALID_NAMES)
    def test_invalid_names_rejected(self, backend: Backend, bad: str) -> None:
        with pytest.raises(ValueError):
            backend.create_writer(bad)
        with pytest.raises(ValueError):
            backend.open_reader(bad)
        with pytest.raises(ValueError):
            backend.stat(bad)
        with pytest.raises(ValueError):
            backend.delete(bad)
        assert list(backend.list()) == []
