"""The contract suite over LocalBackend, plus local-only cases (temp files, a read-only
repository, a full disk), the last two on small tmpfs mounts made by the test."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from volbak.backend import Backend, open_backend
from volbak.errors import BackendFullError, BackendPermissionError, UsageError
from volbak.local import TMP_PREFIX, LocalBackend
from volbak.testing import BackendContract, payload


class TestLocalBackend(BackendContract):
    stream_memory_limit = 4 * 1024 * 1024  # the caller's chunks plus a read(1 MiB) block

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[LocalBackend]:
        yield LocalBackend(tmp_path / "repo")


def _files(root: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_temp_files_never_listed(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path)
    b.put_bytes("vol/done", b"done")
    with b.create_writer("vol/pending") as w:
        w.write(b"half")
        on_disk = _files(tmp_path)
        assert len(on_disk) == 2
        assert any(os.path.basename(f).startswith(TMP_PREFIX) for f in on_disk)
        assert [o.name for o in b.list()] == ["vol/done"]
        w.commit()
    assert _files(tmp_path) == ["vol/done", "vol/pending"]
    # A temp file a crash left behind is not listed either.
    (tmp_path / "vol" / f"{TMP_PREFIX}crashed.123").write_bytes(b"junk")
    assert sorted(o.name for o in b.list()) == ["vol/done", "vol/pending"]


def test_from_url_forms_and_options(tmp_path: Path) -> None:
    assert open_backend(str(tmp_path)).url == str(tmp_path)
    assert open_backend(f"file://{tmp_path}").url == str(tmp_path)
    with pytest.raises(UsageError):
        open_backend(str(tmp_path), {"x": "y"})


def test_missing_root_lists_nothing(tmp_path: Path) -> None:
    assert list(LocalBackend(tmp_path / "not-yet").list()) == []


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """Mount small tmpfs file systems under tmp_path; unmounted in teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        mnt = tmp_path / name
        mnt.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in reversed(mounted):
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_repository(tmpfs) -> None:
    ro = tmpfs("ro", "size=1m,ro")
    b = LocalBackend(ro)
    with pytest.raises(BackendPermissionError) as ei:
        b.put_bytes("vol/x", b"data")
    assert ei.value.hint
    with pytest.raises(BackendPermissionError):
        b.create_writer("top-level")
    assert _files(ro) == []


def test_read_only_existing_subdir(tmpfs) -> None:
    """The volume's directory exists already, so the failure is creating the temp file."""
    mnt = tmpfs("rw", "size=1m")
    (mnt / "vol").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    with pytest.raises(BackendPermissionError):
        LocalBackend(mnt).put_bytes("vol/x", b"data")


def test_full_disk_leaves_nothing(tmpfs) -> None:
    full = tmpfs("full", "size=1m")
    b = LocalBackend(full)
    b.put_bytes("vol/small", b"fits")
    data = payload(3 * 1024 * 1024, seed=9)
    with pytest.raises(BackendFullError) as ei, b.create_writer("vol/big") as w:
        for i in range(0, len(data), 256 * 1024):
            w.write(data[i : i + 256 * 1024])
        w.commit()
    assert ei.value.hint
    # No temp file, no partial object; the earlier object is untouched.
    assert _files(full) == ["vol/small"]
    assert [o.name for o in b.list()] == ["vol/small"]
    assert b.get_bytes("vol/small") == b"fits"
    # And the space is free again.
    b.put_bytes("vol/after", payload(512 * 1024, seed=10))
    assert sorted(o.name for o in b.list()) == ["vol/after", "vol/small"]


def test_crashed_temp_files_found_by_age(tmp_path: Path) -> None:
    """What a killed writer leaves: found once older than the age (by its last write),
    removed with its then empty directory; committed objects and fresh temp files stay."""
    b = LocalBackend(tmp_path)
    b.put_bytes("keep/obj", b"committed")
    day = 86400
    old = tmp_path / "gone" / f"{TMP_PREFIX}20261129T070001Z.tar.zst.0123456789ab"
    old.parent.mkdir()
    old.write_bytes(b"x" * 1000)
    os.utime(old, (time.time() - 2 * day, time.time() - 2 * day))
    top = tmp_path / f"{TMP_PREFIX}top.aaaaaaaaaaaa"  # at the root, an hour old
    top.write_bytes(b"")
    os.utime(top, (time.time() - 3600, time.time() - 3600))
    fresh = tmp_path / "keep" / f"{TMP_PREFIX}obj.bbbbbbbbbbbb"
    fresh.write_bytes(b"being written")
    listed = b.list_incomplete(day)
    assert len(listed) == 1
    assert listed[0].startswith("gone/20261129T070001Z.tar.zst (temp file gone/.volbak-tmp-")
    assert "1000 bytes" in listed[0]
    assert sorted(x.split(" ")[0] for x in b.list_incomplete(60)) == [
        "gone/20261129T070001Z.tar.zst",
        "top",
    ]
    assert b.remove_incomplete(day) == listed
    assert not old.parent.exists()  # its directory went with it
    assert top.exists() and fresh.exists()
    assert b.get_bytes("keep/obj") == b"committed"
    assert Backend.list_incomplete(b, 0) == [] and Backend.remove_incomplete(b, 0) == []


def test_incomplete_of_a_missing_repository(tmp_path: Path) -> None:
    b = LocalBackend(tmp_path / "not-yet")
    assert b.list_incomplete(0) == [] and b.remove_incomplete(0) == []


def test_a_write_survives_a_delete_emptying_its_directory(tmp_path: Path,
                                                          monkeypatch) -> None:
    """A delete of a directory's last object removes the directory; a writer that made
    it a moment before makes it again (concurrent lock objects under ``_locks/``)."""
    b = LocalBackend(tmp_path)
    real_mkdir = Path.mkdir
    raced = []

    def mkdir_then_lose_it(self: Path, *args, **kwargs) -> None:
        real_mkdir(self, *args, **kwargs)
        if self.name == "_locks" and not raced:
            raced.append(self)
            b.put_bytes("_locks/other", b"x")
            b.delete("_locks/other")  # the last object: the directory goes with it
            assert not self.exists()

    monkeypatch.setattr(Path, "mkdir", mkdir_then_lose_it)
    b.put_bytes("_locks/mine", b"lock")
    assert raced
    assert b.get_bytes("_locks/mine") == b"lock"

    # pathlib's mkdir(exist_ok=True) raises FileExistsError when the directory it found
    # there is gone by the time it checks (the error CI saw)
    def mkdir_finds_it_gone(self: Path, *args, **kwargs) -> None:
        if self.name == "_ids" and len(raced) == 1:
            raced.append(self)
            raise FileExistsError(17, "File exists", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir_finds_it_gone)
    b.put_bytes("_ids/mine", b"id")
    assert len(raced) == 2
    assert b.get_bytes("_ids/mine") == b"id"
