"""Helper containers: how volbak sees a volume through the engine.

Helpers are created from an image with an empty filesystem that volbak imports by
itself, so it works on engines with no images and no registry: a created (never
started) container is enough for the archive API to read and write its volumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import socket
import tarfile
from collections.abc import Callable, Iterator

import docker.errors
import requests.exceptions
from docker.types import LogConfig, Mount

from ..errors import EngineError
from ..util.host import owner, pid_alive
from .client import Engine, _short, api_errors
from .retry import retry

HELPER_IMAGE = "volbak-helper:empty"
HELPER_LABEL = "volbak"  # value "helper"; the before-stop check looks for this key
OWNER_LABEL = "volbak.owner"  # "<hostname>:<pid>" of the volbak process that made it

# Engines on which this process failed to remove a helper it made (or may have made):
# the run's journal note must then outlive the run, so the next command's recovery
# sweeps them again.
_unremoved: set[str] = set()


def engines_with_unremoved_helpers() -> set[str]:
    return set(_unremoved)


def note_unremoved(url: str) -> None:
    """A helper on engine ``url`` may outlive this process."""
    _unremoved.add(url)


# Called with an engine's URL before any helper is created on it. The run journal
# (ops.journal) registers itself here, so a run killed at any instant, even in a
# pre-flight check, has noted every engine that may hold its helpers.
_before_create: list[Callable[[str], None]] = []


def on_helper_create(hook: Callable[[str], None]) -> None:
    if hook not in _before_create:
        _before_create.append(hook)



def _empty_tar() -> bytes:
    buf = io.BytesIO()
    tarfile.open(fileobj=buf, mode="w").close()
    return buf.getvalue()


def ensure_helper_image(engine: Engine, image: str | None = None) -> str:
    """The image helpers are created from: the user's --helper-image, or an empty one
    volbak imports itself (no registry needed)."""
    if image:
        with api_errors(engine, f"helper image '{image}' (--helper-image)"):
            engine.api.inspect_image(image)
        return image
    try:
        engine.api.inspect_image(HELPER_IMAGE)
    except docker.errors.ImageNotFound:
        # The tag goes inside ``repository``: Podman ignores the separate ``tag``
        # parameter (it would tag ":latest"); dockerd accepts both forms.
        with api_errors(engine, "importing the helper image"):
            engine.api.import_image_from_data(
                _empty_tar(), repository=HELPER_IMAGE, changes=["LABEL volbak.helper=1"]
            )
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise EngineError(f"cannot inspect images on engine {engine.url}: {_short(e)}") from None
    return HELPER_IMAGE


@dataclasses.dataclass(frozen=True)
class VolumeMount:
    volume: str
    path: str
    read_only: bool = True


@contextlib.contextmanager
def helper(
    engine: Engine, mounts: list[VolumeMount], image: str | None = None
) -> Iterator[str]:
    """A created, never started container that sees the given volumes. It has no
    network and no logs, and is removed on every way out (its named volumes stay)."""
    image = ensure_helper_image(engine, image)
    for hook in _before_create:
        hook(engine.url)
    host_config = engine.api.create_host_config(
        mounts=[Mount(m.path, m.volume, type="volume", read_only=m.read_only) for m in mounts],
        network_mode="none",
        log_config=LogConfig(type="none"),
    )
    try:
        with api_errors(engine, "creating the helper container"):
            cid = engine.api.create_container(
                image,
                command=["/volbak-helper-is-never-started"],
                host_config=host_config,
                labels={HELPER_LABEL: "helper", OWNER_LABEL: owner()},
                network_disabled=True,
            )["Id"]
    except BaseException:
        # Interrupted (a signal, a timeout) after the engine took the request, it may
        # have made the helper all the same, with an id we never learnt: keep the note.
        note_unremoved(engine.url)
        raise
    try:
        yield cid
    finally:
        if not remove_container(engine, cid):
            note_unremoved(engine.url)


def remove_container(engine: Engine, cid: str, patience: float = 10.0) -> bool:
    """Remove a helper (or another container volbak made); never its volumes (v=False).
    True once it is gone. Signals wait until it is gone.

    Right after an aborted transfer the engine may still be finishing its tar process
    and refuse the removal for a moment, so failures are retried for ``patience`` s."""
    done, _ = retry(lambda: _delete(engine, cid, max(patience, 1.0)), seconds=patience)
    return done


def _delete(engine: Engine, cid: str, timeout: float) -> None:
    """DELETE /containers/ID (force, volumes kept) that gives up after ``timeout``: a
    SIGTERM that cut a GET archive short can leave dockerd 20.10 holding the removal
    until the client-wide timeout (600 s, with signals held: chaos saw a migrate hang
    so). docker-py's remove_container has no per-call timeout; its private request
    helpers do. If they change, the public call (client-wide timeout) is used."""
    api = engine.api
    try:
        res = api._delete(api._url("/containers/{0}", cid),
                          params={"v": False, "force": True}, timeout=timeout)
    except (AttributeError, TypeError):
        api.remove_container(cid, v=False, force=True)
        return
    api._raise_for_status(res)


@dataclasses.dataclass
class Sweep:
    removed: list[str] = dataclasses.field(default_factory=list)
    # still there: the engine refused, or could not be asked (then it is ["?"])
    left: list[str] = dataclasses.field(default_factory=list)


def sweep_stale_helpers(engine: Engine, timeout: float = 10) -> Sweep:
    """Remove helpers left by a volbak process on this host that died (kill -9).

    Best effort, with a short timeout: after a client vanished mid-transfer, the 20.10
    engine can keep its tar process blocked and refuse to remove that container (seen
    here); that must not hold up the backup that is starting now. Recovery keeps its
    note of the engine while ``left`` is not empty, so a later run tries again."""
    out = Sweep()
    host = socket.gethostname()
    api = engine.api
    try:
        found = api.containers(all=True, filters={"label": f"{HELPER_LABEL}=helper"})
    except (docker.errors.APIError, requests.exceptions.RequestException):
        out.left.append("?")
        return out
    for c in found:
        owner = (c.get("Labels") or {}).get(OWNER_LABEL, "")
        ohost, _, pid = owner.rpartition(":")
        if ohost == host and pid.isdigit() and not pid_alive(int(pid)):
            if _remove_with_timeout(engine, c["Id"], timeout):
                out.removed.append(c["Id"])
            else:
                out.left.append(c["Id"])
    return out


def _remove_with_timeout(engine: Engine, cid: str, timeout: float) -> bool:
    try:
        _delete(engine, cid, timeout)
    except (requests.exceptions.RequestException, docker.errors.APIError):
        return False
    return True


