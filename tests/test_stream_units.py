"""Pump, Drain and the two pipeline shapes (volbak.stream.pump, volbak.stream.pipeline).
No Docker engine needed. Threads are checked with threading.enumerate(): every test
ends with exactly the threads it started with."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from volbak.stream.pipeline import checked_chunks, pump_into
from volbak.stream.pump import QUEUE_DEPTH, Drain, HashSink, Pump


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    # Threads told to stop may need a moment to notice (Pump polls every 0.2 s): wait
    # for each, without a deadline, rather than assert on timing.
    for t in set(threading.enumerate()) - before:
        if t.name.startswith("volbak-"):
            t.join()
    leaked = [t.name for t in set(threading.enumerate()) - before]
    assert not leaked, f"threads left running: {leaked}"


class Source:
    """``read(n)`` over scripted pieces; ``fail`` raises after them instead of EOF."""

    def __init__(self, pieces: list[bytes], fail: BaseException | None = None) -> None:
        self.pieces = list(pieces)
        self.fail = fail
        self.reads = 0

    def read(self, n: int) -> bytes:
        self.reads += 1
        if self.pieces:
            return self.pieces.pop(0)
        if self.fail is not None:
            raise self.fail
        return b""


def numbered(count: int) -> list[bytes]:
    return [b"%06d" % i for i in range(count)]


# -- Pump ---------------------------------------------------------------------------------


def test_pump_preserves_order() -> None:
    pieces = numbered(500)
    pump = Pump(Source(pieces).read, depth=2)
    try:
        assert list(pump) == pieces
    finally:
        pump.stop()


def test_pump_empty_source() -> None:
    pump = Pump(Source([]).read)
    try:
        assert list(pump) == []
    finally:
        pump.stop()


def test_pump_passes_its_chunk_size() -> None:
    asked: list[int] = []

    def read(n: int) -> bytes:
        asked.append(n)
        return b"" if len(asked) > 3 else b"x"

    pump = Pump(read, chunk=12345)
    try:
        list(pump)
    finally:
        pump.stop()
    assert set(asked) == {12345}


@pytest.mark.parametrize("exc", [OSError("disk gone"), ValueError("bad"),
                                 KeyboardInterrupt()])
def test_pump_reader_error_surfaces_in_consumer(exc: BaseException) -> None:
    pump = Pump(Source([b"a", b"b"], fail=exc).read)
    got = []
    try:
        with pytest.raises(type(exc)) as raised:
            for chunk in pump:
                got.append(chunk)
        assert raised.value is exc
    finally:
        pump.stop()
    assert got == [b"a", b"b"]  # everything read before the error came first


def test_pump_stop_with_full_queue_and_no_consumer() -> None:
    src = Source(numbered(10_000))
    pump = Pump(src.read, depth=2)
    # Wait until the reader is blocked on the full queue.
    while src.reads < 3:
        threading.Event().wait(0.01)
    pump.stop()
    assert not pump._t.is_alive()
    assert src.reads < 10  # it stopped reading instead of draining the source


def test_pump_consumer_breaks_early_then_stop() -> None:
    pump = Pump(Source(numbered(1000)).read, depth=1)
    try:
        for i, _ in enumerate(pump):
            if i == 5:
                break
    finally:
        pump.stop()
    assert not pump._t.is_alive()


def test_pump_stop_while_reader_is_slow() -> None:
    release = threading.Event()
    entered = threading.Event()

    def read(n: int) -> bytes:
        entered.set()
        release.wait()
        return b"late"

    pump = Pump(read)
    entered.wait()
    stopper = threading.Thread(target=pump.stop)
    stopper.start()
    release.set()  # the reader returns; the pump must notice the stop and exit
    stopper.join()
    pump._t.join()
    assert not pump._t.is_alive()


# -- Drain --------------------------------------------------------------------------------


def test_drain_preserves_order() -> None:
    out: list[bytes] = []
    drain = Drain(out.append, depth=2)
    pieces = numbered(500)
    for p in pieces:
        drain.write(p)
    drain.close()
    assert out == pieces


def test_drain_skips_empty_writes() -> None:
    out: list[bytes] = []
    drain = Drain(out.append)
    drain.write(b"")
    drain.write(b"a")
    drain.close()
    assert out == [b"a"]


def test_drain_sink_error_raised_by_close() -> None:
    def sink(data: bytes) -> None:
        raise OSError("no space left")

    drain = Drain(sink)
    drain.write(b"x")
    with pytest.raises(OSError, match="no space left"):
        drain.close()


def test_drain_sink_error_raised_by_a_later_write() -> None:
    failed = threading.Event()

    def sink(data: bytes) -> None:
        failed.set()
        raise ValueError("sink broke")

    drain = Drain(sink, depth=1)
    drain.write(b"first")
    failed.wait()
    while drain._error is None:  # set just after the sink raised
        threading.Event().wait(0.01)
    with pytest.raises(ValueError, match="sink broke"):
        drain.write(b"second")
    drain.abandon()


def test_drain_keeps_consuming_after_a_sink_error() -> None:
    # After a failure the worker discards instead of calling the sink again, so the
    # producer's blocking put never hangs on a full queue.
    calls = []

    def sink(data: bytes) -> None:
        calls.append(data)
        raise OSError("broken pipe")

    drain = Drain(sink, depth=1)
    with pytest.raises(OSError):
        for p in numbered(200):
            drain.write(p)
        drain.close()
    drain.abandon()
    assert len(calls) == 1


def test_drain_abandon_with_full_queue_and_blocked_sink() -> None:
    release = threading.Event()
    entered = threading.Event()
    seen: list[bytes] = []

    def sink(data: bytes) -> None:
        seen.append(data)
        entered.set()
        release.wait()

    drain = Drain(sink, depth=QUEUE_DEPTH)
    drain.write(b"in-sink")
    entered.wait()
    for p in numbered(QUEUE_DEPTH):  # fills the queue exactly
        drain.write(p)
    assert drain._q.full()
    drain.abandon()
    release.set()  # the sink returns: the worker must see the end marker and exit
    drain._t.join()
    assert seen == [b"in-sink"]  # nothing queued was written after abandon
    with pytest.raises(RuntimeError, match="abandoned"):
        drain.write(b"more")


def test_drain_abandon_with_slow_sink() -> None:
    seen: list[bytes] = []

    def sink(data: bytes) -> None:
        threading.Event().wait(0.005)
        seen.append(data)

    drain = Drain(sink, depth=2)
    for p in numbered(6):
        drain.write(p)
    drain.abandon()
    drain._t.join()
    assert seen == numbered(6)[: len(seen)]  # a prefix, in order


def test_drain_abandon_twice_and_after_close() -> None:
    drain = Drain(lambda d: None)
    drain.write(b"a")
    drain.close()
    drain.abandon()
    drain.abandon()
    other = Drain(lambda d: None)
    other.abandon()
    other.abandon()
    other._t.join()


def test_drain_abandon_keeps_the_original_error() -> None:
    def sink(data: bytes) -> None:
        raise OSError("first")

    drain = Drain(sink)
    drain.write(b"x")
    with pytest.raises(OSError):
        drain.close()
    drain.abandon()
    assert isinstance(drain._error, OSError)


def test_hash_sink() -> None:
    import hashlib

    import blake3

    out: list[bytes] = []
    hs = HashSink({"sha256": hashlib.sha256(), "blake3": blake3.blake3()}, out.append)
    for p in (b"ab", b"", memoryview(b"cd")):
        hs.write(p)
    assert [bytes(p) for p in out] == [b"ab", b"cd"]
    assert hs.size == 4
    assert hs.hexdigests() == {"sha256": hashlib.sha256(b"abcd").hexdigest(),
                               "blake3": blake3.blake3(b"abcd").hexdigest()}
    counted = HashSink({})  # nothing to hand on to: only hashed and counted
    counted.write(b"abc")
    assert (counted.size, counted.hexdigests()) == (3, {})


# -- pipeline -----------------------------------------------------------------------------


def test_pump_into_copies_inspects_and_counts() -> None:
    pieces = numbered(50)
    out: list[bytes] = []
    seen: list[bytes] = []
    progress: list[int] = []
    total = pump_into(Source(pieces).read, out.append, seen.append, progress.append)
    assert out == seen == pieces
    assert total == sum(map(len, pieces)) == sum(progress)


def test_pump_into_inspect_error_stops_the_reader() -> None:
    src = Source(numbered(10_000))

    def inspect(data: bytes) -> None:
        if data == b"000003":
            raise ValueError("bad tar")

    out: list[bytes] = []
    with pytest.raises(ValueError, match="bad tar"):
        pump_into(src.read, out.append, inspect)
    assert out == numbered(3)
    assert src.reads < 100


def test_pump_into_write_error() -> None:
    def write(data: bytes) -> None:
        raise OSError("full")

    with pytest.raises(OSError, match="full"):
        pump_into(Source(numbered(100)).read, write)


def test_pump_into_reader_error() -> None:
    with pytest.raises(ConnectionError):
        pump_into(Source([b"a"], fail=ConnectionError("cut")).read, lambda d: None)


@pytest.mark.parametrize("threaded", [False, True])
def test_checked_chunks_all_pieces_when_finish_passes(threaded: bool) -> None:
    pieces = numbered(40)
    inspected: list[bytes] = []
    progress: list[int] = []
    got = list(checked_chunks(Source(pieces).read, inspected.append, lambda: None,
                              progress=progress.append, threaded=threaded))
    assert got == pieces
    assert inspected == pieces
    assert sum(progress) == sum(map(len, pieces))


@pytest.mark.parametrize("threaded", [False, True])
def test_checked_chunks_last_piece_held_until_finish(threaded: bool) -> None:
    pieces = numbered(5)
    finished = []
    got: list[bytes] = []

    def finish() -> None:
        # Everything but the last piece is already out; the last is not.
        assert got == pieces[:-1]
        finished.append(True)

    for data in checked_chunks(Source(pieces).read, lambda d: None, finish,
                               threaded=threaded):
        if data == pieces[-1]:
            assert finished == [True]
        got.append(data)
    assert got == pieces


@pytest.mark.parametrize("threaded", [False, True])
def test_checked_chunks_failing_finish_hides_the_last_piece(threaded: bool) -> None:
    pieces = numbered(5)

    def finish() -> None:
        raise ValueError("no end marker")

    got: list[bytes] = []
    with pytest.raises(ValueError, match="no end marker"):
        for data in checked_chunks(Source(pieces).read, lambda d: None, finish,
                                   threaded=threaded):
            got.append(data)
    assert got == pieces[:-1]


@pytest.mark.parametrize("threaded", [False, True])
def test_checked_chunks_single_piece_failing_finish_yields_nothing(threaded: bool) -> None:
    def finish() -> None:
        raise ValueError("truncated")

    got: list[bytes] = []
    with pytest.raises(ValueError):
        for data in checked_chunks(Source([b"only"]).read, lambda d: None, finish,
                                   threaded=threaded):
            got.append(data)
    assert got == []


@pytest.mark.parametrize("threaded", [False, True])
def test_checked_chunks_inspect_error_hides_the_last_piece(threaded: bool) -> None:
    pieces = numbered(6)

    def inspect(data: bytes) -> None:
        if data == pieces[-1]:
            raise ValueError("bad checksum")

    finished = []
    got: list[bytes] = []
    with pytest.raises(ValueError, match="bad checksum"):
        for data in checked_chunks(Source(pieces).read, inspect, lambda: finished.append(1),
                                   threaded=threaded):
            got.append(data)
    assert pieces[-1] not in got
    assert finished == []


@pytest.mark.parametrize("threaded", [False, True])
def test_checked_chunks_reader_error(threaded: bool) -> None:
    src = Source(numbered(3), fail=ConnectionError("cut"))
    got: list[bytes] = []
    with pytest.raises(ConnectionError):
        for data in checked_chunks(src.read, lambda d: None, lambda: None, threaded=threaded):
            got.append(data)
    assert got == numbered(3)[:-1]


@pytest.mark.parametrize("threaded", [False, True])
def test_checked_chunks_consumer_stops_early(threaded: bool) -> None:
    src = Source(numbered(10_000))
    gen = checked_chunks(src.read, lambda d: None, lambda: None, threaded=threaded)
    for i, _ in enumerate(gen):
        if i == 3:
            break
    gen.close()  # what a consumer's failure does: the finally stops both threads
    assert src.reads < 100


def test_checked_chunks_threaded_inspects_in_another_thread() -> None:
    threads = set()

    def inspect(data: bytes) -> None:
        threads.add(threading.current_thread().name)

    list(checked_chunks(Source(numbered(5)).read, inspect, lambda: None, threaded=True))
    assert threads == {"volbak-drain"}


def test_write_all_writes_in_bounded_pieces_and_continues_short_writes(monkeypatch):
    import os

    from volbak.util import host

    sizes: list[int] = []
    got = bytearray()

    def short_write(fd: int, data: memoryview) -> int:
        n = min(len(data), 100_000)  # the kernel may take less than it is given
        sizes.append(len(data))
        got.extend(data[:n])
        return n

    monkeypatch.setattr(os, "write", short_write)
    data = bytes(range(256)) * 5000  # 1.28 MB
    host.write_all(3, data)
    assert bytes(got) == data
    assert max(sizes) <= host.WRITE_MAX
