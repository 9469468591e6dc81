"""Facts about this host that several parts share: where volbak keeps its state, how a
directory entry is made durable, whether a process is alive, who owns what a run made."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def state_dir() -> Path:
    """Journal, host keys and caches: ``$VOLBAK_STATE_DIR``, else /var/lib/volbak as
    root, else ``$XDG_STATE_HOME/volbak``."""
    env = os.environ.get("VOLBAK_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/volbak")
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "volbak"


# write(2) calls of at most this much. On this machine's kernel (6.18, a VM) a write of
# 512 KiB or more into the page cache costs 10-25x the system time of the same bytes in
# 256 KiB pieces (dd of 1 GiB: bs=1M 6-8 s, bs=256K or 64K 0.22 s; reads are not
# affected), and an unencrypted backup wrote its archive in 1 MiB pieces (7.8 s against
# 3.8 s for the same volume encrypted, whose age chunks are 64 KiB). Elsewhere the cap
# costs four syscalls per MiB.
WRITE_MAX = 256 * 1024


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of ``data`` to ``fd``, in pieces of at most WRITE_MAX (a short write is
    continued, never lost)."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view[:WRITE_MAX]):]


IOV_MAX = 512  # pieces per writev: below every kernel's IOV_MAX (1024 on Linux)


def writev_all(fd: int, pieces: list[bytes | memoryview]) -> None:
    """All of ``pieces`` (at most IOV_MAX) to ``fd``, in order, in one writev where the
    file takes it (a pipe: the direct source's walker); a short write is continued."""
    while pieces:
        done = os.writev(fd, pieces)
        for i, piece in enumerate(pieces):
            if done < len(piece):
                pieces = [memoryview(piece)[done:], *pieces[i + 1:]]
                break
            done -= len(piece)
        else:
            return


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def owner() -> str:
    """This process as an owner label: ``<hostname>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"
