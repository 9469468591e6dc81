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
