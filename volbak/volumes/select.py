"""Which way a run reads or writes a volume: ``direct`` on the engine's host, or the
engine's archive ``api``.

Direct needs all of: the engine reached through a local unix socket (so the volume's
``Mountpoint`` is a path on this host), the volume driver ``local`` (other drivers'
mountpoints exist only while mounted, or elsewhere), and the directory there and
readable (backup) or writable (restore) by this process: root, or the user a rootless
engine runs as. ``auto`` takes direct when it can and says why not otherwise;
``direct`` that cannot be honoured is a usage error.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from ..errors import UsageError

CHOICES = ("auto", "direct", "api")
_HINT = "use --source api (or --source auto) to go through the engine's archive API"


def _local_socket(engine_url: str) -> bool:
    return engine_url.startswith(("unix://", "http+unix://")) or engine_url.startswith("/")


def _why_not(engine_url: str, volume_inspect: dict[str, Any], write: bool) -> str | None:
    if not _local_socket(engine_url):
        return f"the engine {engine_url} is not reached through a local unix socket"
    driver = volume_inspect.get("Driver") or ""
    if driver != "local":
        return f"the volume's driver is {driver or 'unknown'!r}, not 'local'"
    mountpoint = volume_inspect.get("Mountpoint") or ""
    if not mountpoint:
        return "the engine reports no Mountpoint for the volume"
    try:
        st = os.stat(mountpoint, follow_symlinks=False)
    except FileNotFoundError:
        return f"the volume's directory {mountpoint} is not on this host"
    except PermissionError:
        return f"the volume's directory {mountpoint} is not accessible to this user"
    except OSError as e:
        return f"the volume's directory {mountpoint} cannot be examined ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return f"the volume's Mountpoint {mountpoint} is not a directory here"
    want = os.R_OK | os.X_OK | (os.W_OK if write else 0)
    if not os.access(mountpoint, want):
        return (f"the volume's directory {mountpoint} is not "
                f"{'writable' if write else 'readable'} by this user")
    if os.geteuid() != 0 and st.st_uid != os.geteuid():
        # A volume of a rootful engine read as another user: files below it will not
        # all be readable, and owners cannot be restored.
        return (f"the volume's directory {mountpoint} belongs to uid {st.st_uid}; "
                "direct access needs root or the engine's own user")
    return None


def choose(engine_url: str, volume_inspect: dict[str, Any], requested: str, *,
           write: bool = False) -> tuple[str, str]:
    """("direct" | "api", reason) for a run on one volume. ``write`` for a restore
    (the directory of the new, empty volume must be writable). ``requested`` is the
    ``--source`` value; ``direct`` that cannot be honoured raises UsageError."""
    if requested not in CHOICES:
        raise UsageError(f"--source must be one of {', '.join(CHOICES)}, not {requested!r}")
    if requested == "api":
        return "api", "requested with --source api"
    why = _why_not(engine_url, volume_inspect, write)
    if why is None:
        where = volume_inspect.get("Mountpoint")
        return "direct", f"local volume, {where} {'writable' if write else 'readable'} here"
    if requested == "direct":
        raise UsageError(f"--source direct is not possible: {why}", hint=_HINT)
    return "api", why
