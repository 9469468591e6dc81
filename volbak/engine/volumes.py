"""Volumes and containers on an engine: facts (inspect, users, size) and the changes
volbak makes (create, remove, copy, data-volume containers, name rules)."""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from typing import Any

import docker
import docker.errors
import requests.exceptions

from ..errors import EngineError, NotFoundError, UsageError
from ..util.signals import deferred
from .client import FAILURES, Engine, _short, api_errors
from .retry import TRANSIENT

MANAGED_LABEL = "volbak.managed"  # volumes/containers volbak created (staging, restores)
STAGING_PREFIX = "volbak-staging-"
ARCHIVE_ROOT = "data"  # helpers mount the volume at /data: tar entries are "data/..."


def inspect_volume(engine: Engine, name: str, flag: str = "VOLUME") -> dict[str, Any]:
    try:
        return engine.api.inspect_volume(name)
    except docker.errors.NotFound:
        raise NotFoundError(
            f"no volume '{name}' on engine {engine.url} ({flag})",
            hint="list volumes with 'docker volume ls'; -H/--host selects the engine",
        ) from None
    except FAILURES as e:
        raise EngineError(f"cannot inspect volume '{name}' on {engine.url}: {_short(e)}") from None


def volume_exists(engine: Engine, name: str) -> bool:
    try:
        inspect_volume(engine, name)
    except NotFoundError:
        return False
    return True


def inspect_container(engine: Engine, name: str, flag: str = "--container") -> dict[str, Any]:
    try:
        return engine.api.inspect_container(name)
    except docker.errors.NotFound:
        raise NotFoundError(
            f"no container '{name}' on engine {engine.url} ({flag})",
            hint="list containers with 'docker ps -a'; -H/--host selects the engine",
        ) from None
    except FAILURES as e:
        raise EngineError(f"cannot inspect container '{name}': {_short(e)}") from None


def describe_container(attrs: dict[str, Any]) -> dict[str, Any]:
    """What a runbook needs to recreate a container (no environment: it may hold secrets)."""
    hc = attrs.get("HostConfig") or {}
    return {
        "name": attrs["Name"].lstrip("/"),
        "id": attrs["Id"],
        "image": (attrs.get("Config") or {}).get("Image"),
        "running": bool((attrs.get("State") or {}).get("Running")),
        "mounts": [
            {
                "type": m.get("Type"),
                "name": m.get("Name"),
                "source": m.get("Source") if m.get("Type") == "bind" else None,
                "destination": m.get("Destination"),
                "rw": m.get("RW"),
            }
            for m in attrs.get("Mounts") or []
        ],
        "ports": hc.get("PortBindings") or {},
        "network_mode": hc.get("NetworkMode"),
        "links": hc.get("Links") or [],
        "restart_policy": (hc.get("RestartPolicy") or {}).get("Name"),
    }


def containers_using(client: docker.DockerClient, volume: str,
                     running_only: bool = True) -> list[Any]:
    """Containers (docker-py models, inspected) that mount the named volume, directly or
    through --volumes-from; only running ones unless ``running_only`` is False.
    Docker's ``volume`` filter also matches mount destinations, so the mounts are
    checked for the exact volume name."""
    filters: dict[str, Any] = {"volume": volume}
    if running_only:
        filters["status"] = "running"
    try:
        found = client.containers.list(all=not running_only, filters=filters,
                                       ignore_removed=True)
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
        raise EngineError(
            f"cannot list the containers using volume '{volume}': {_short(e)}") from None
    return [c for c in found
            if any(m.get("Type") == "volume" and m.get("Name") == volume
                   for m in c.attrs.get("Mounts") or [])]


def container_volumes(attrs: dict[str, Any]) -> list[tuple[str, str]]:
    """(volume name, mount path) of each volume mount of a container; binds are skipped."""
    return [
        (m["Name"], m["Destination"])
        for m in attrs.get("Mounts") or []
        if m.get("Type") == "volume" and m.get("Name")
    ]


def volume_size(engine: Engine, name: str) -> int | None:
    """Bytes used by a volume, as 'docker system df -v' reports it, if known."""
    with contextlib.suppress(Exception):
        for v in engine.api.df().get("Volumes") or []:
            if v.get("Name") == name:
                size = (v.get("UsageData") or {}).get("Size", -1)
                return size if size >= 0 else None
    return None


# -- changes volbak makes -------------------------------------------------------------------

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]+$")


def check_volume_name(name: str, flag: str = "--to-volume") -> None:
    if not _NAME_OK.match(name):
        raise UsageError(
            f"invalid volume name '{name}' ({flag}): a name has 2 or more characters, "
            "letters, digits, '_', '.' or '-', and starts with a letter or digit",
            hint="Docker's rule for volume and container names: [a-zA-Z0-9][a-zA-Z0-9_.-]+",
        )


def volume_for(container: str, mount_path: str) -> str:
    """The volume name a restored/migrated container's mount gets: ``NAME_<path>``."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", mount_path.strip("/")) or "root"
    return f"{container}_{slug}"


def staging_name() -> str:
    return f"{STAGING_PREFIX}{secrets.token_hex(6)}"


def create_volume(engine: Engine, name: str, labels: dict[str, str],
                  driver: str = "local", options: dict[str, str] | None = None) -> None:
    with api_errors(engine, f"creating volume '{name}'"):
        engine.api.create_volume(name, driver=driver, driver_opts=options or None, labels=labels)


def remove_volume(engine: Engine, name: str, patience: float = 15) -> bool:
    """Remove a volume volbak made; True once it is gone, never raises. A helper (or the
    engine's extraction process after a broken transfer) may hold it for a moment, so
    refusals are retried for ``patience`` seconds; a lost engine is not retried. Signals
    wait until the attempt is over.

    Gone means inspect says NotFound: a forced removal the driver could not carry out
    drops only the engine's record, and the local driver brings the volume (with its
    half-written content) back on the next lookup. So force is the last resort."""
    start = time.monotonic()
    deadline = start + patience
    # A dropped connection is retried briefly (a pooled connection the engine closed
    # after an aborted transfer fails once); an engine that stays away is not waited for.
    lost_until = start + min(3.0, patience)
    with deferred():
        while True:
            last = time.monotonic() > deadline
            try:
                engine.api.remove_volume(name, force=last)
                engine.api.inspect_volume(name)
            except docker.errors.NotFound:
                return True
            except docker.errors.APIError:
                pass  # refused (in use for a moment): retried until ``patience``
            except TRANSIENT:
                if time.monotonic() > lost_until:
                    return False
            if last:
                return False
            time.sleep(0.3)


def container_exists(engine: Engine, name: str) -> bool:
    try:
        inspect_container(engine, name)
    except NotFoundError:
        return False
    return True


def create_data_container(engine: Engine, name: str, mounts: list[tuple[str, str]],
                          labels: dict[str, str], image: str | None = None) -> None:
    """A data-volume container (created, never started) mounting (path, volume) pairs,
    like the Docker tutorial's ``docker create -v /dbdata --name dbdata``."""
    from .helpers import ensure_helper_image

    image = ensure_helper_image(engine, image)
    host_config = engine.api.create_host_config(
        mounts=[docker.types.Mount(p, v, type="volume") for p, v in mounts],
        network_mode="none",
    )
    with api_errors(engine, f"creating data-volume container '{name}'"):
        engine.api.create_container(
            image, name=name, command=["/volbak-data-container"], host_config=host_config,
            labels=labels, network_disabled=True,
        )


def volume_is_empty(engine: Engine, name: str, image: str | None = None) -> bool:
    from ..stream.tar import TarParser
    from .archive import VolumeTar
    from .helpers import VolumeMount, helper

    with helper(engine, [VolumeMount(name, "/data")], image) as cid:
        src = VolumeTar(engine, cid, "data")
        try:
            parser = TarParser()
            while parser.entries < 2 and not parser.ended:
                data = src.read(64 * 1024)
                if not data:
                    break
                parser.feed(data)
            return parser.entries < 2
        finally:
            src.close()


def copy_volume(engine: Engine, src: str, dst: str, image: str | None = None) -> None:
    """Copy one volume's whole tree (root mode and owner included) into another."""
    from ..stream.pump import CHUNK
    from .archive import VolumeTar, put_volume_tar
    from .helpers import VolumeMount, helper

    with helper(engine, [VolumeMount(src, "/data")], image) as scid, \
            helper(engine, [VolumeMount(dst, "/data", read_only=False)], image) as dcid:
        stream = VolumeTar(engine, scid, "data")
        try:
            put_volume_tar(engine, dcid, "data", iter(lambda: stream.read(CHUNK), b""))
        finally:
            stream.close()


def read_tree_digest(engine: Engine, volume: str, root: str = ARCHIVE_ROOT,
                     image: str | None = None, gzip: bool = False,
                     progress: Any = None, owners: bool | None = None,
                     all_xattrs: bool = False) -> Any:
    """Read a volume back through the archive API and return the finished TarParser
    (digest mode): what restore and migrate compare with what they wrote."""
    from ..stream import compress
    from ..stream.pipeline import checked_chunks
    from ..stream.tar import TarParser
    from .archive import VolumeTar
    from .helpers import VolumeMount, helper

    if owners is None:
        owners = not engine.is_podman
    parser = TarParser(digest=True, root=root, owners=owners, all_xattrs=all_xattrs,
                       what=f"volume '{volume}' as read back from {engine.url}")
    with helper(engine, [VolumeMount(volume, "/" + root)], image) as cid:
        stream = VolumeTar(engine, cid, root, gzip)
        dec = compress.decompressor("gzip" if stream.compressed else "none")

        def inspect(raw: bytes) -> None:
            for piece in dec.pieces(raw):
                parser.feed(piece)

        def finish() -> None:
            dec.finish()
            parser.check_complete()

        try:
            for _ in checked_chunks(stream.read, inspect, finish, progress=progress):
                pass
        finally:
            stream.close()
    return parser


def same_volume(dst: Engine, name: str, info: dict[str, Any]) -> bool:
    """Whether volume ``name`` on ``dst`` is the source volume itself (seen through
    another URL of the same engine): same mount point and creation time."""
    try:
        other = dst.api.inspect_volume(name)
    except docker.errors.NotFound:
        return False
    except (docker.errors.APIError, requests.exceptions.RequestException):
        return True  # cannot tell: be safe
    return all(other.get(k) == info.get(k) for k in ("Mountpoint", "CreatedAt", "Driver"))


def list_volumes(engine: Engine, label: str) -> list[dict[str, Any]]:
    """The volumes carrying ``label`` (``KEY`` or ``KEY=VALUE``), as the engine lists
    them (Name, Labels...)."""
    try:
        return engine.api.volumes(filters={"label": label}).get("Volumes") or []
    except FAILURES as e:
        raise EngineError(f"cannot list volumes with label {label} on {engine.url}: "
                          f"{_short(e)}") from None


def volumes_with_label(engine: Engine, label: str) -> list[str]:
    """Names of the volumes carrying ``label``, sorted."""
    return sorted(v["Name"] for v in list_volumes(engine, label))


def delete_volume(engine: Engine, name: str, why: str) -> None:
    """Remove a user's volume on purpose (replacing it); errors are raised."""
    with api_errors(engine, f"removing volume '{name}' {why}"):
        engine.api.remove_volume(name)


def clear_volume(engine: Engine, name: str, image: str | None = None) -> None:
    """Empty a volume in place (its root directory stays): for replacing the contents
    of a volume that containers mount, which the engine will not let us remove.

    Helpers have no shell, so the deletion is done by the archive API itself: its
    extractor replaces an existing path with a non-directory entry of the same name by
    removing the whole subtree first. An entry named like the mount point removes every
    file under it; removing the mount point itself then fails ("device or resource
    busy"), which is expected. What counts is the check that follows: the volume must
    be empty, or EngineError names it."""
    import io
    import tarfile

    from .archive import put_archive
    from .helpers import VolumeMount, helper

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo(ARCHIVE_ROOT))
    with helper(engine, [VolumeMount(name, "/" + ARCHIVE_ROOT, read_only=False)],
                image) as cid, contextlib.suppress(EngineError):
        put_archive(engine, cid, "/", iter([buf.getvalue()]))
    if not volume_is_empty(engine, name, image):
        raise EngineError(f"could not empty volume '{name}' on {engine.url} to replace it",
                          hint="this engine's archive API does not remove files; stop and "
                          "remove the containers using it, or restore to a new volume")
