"""Talking to a Docker engine: finding it, helper containers, volume facts.

Helpers are created from an image with an empty filesystem that volbak imports by
itself, so it works on engines with no images and no registry: a created (never
started) container is enough for the archive API to read and write its volumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import socket
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.context import ContextAPI
from docker.types import LogConfig, Mount

from ..errors import EngineError, NotFoundError, UsageError
from ..util.signals import deferred

HELPER_IMAGE = "volbak-helper:empty"
HELPER_LABEL = "volbak"  # value "helper"; the before-stop check looks for this key
OWNER_LABEL = "volbak.owner"  # "<hostname>:<pid>" of the volbak process that made it
MANAGED_LABEL = "volbak.managed"  # volumes/containers volbak created (staging, restores)
ARCHIVE_ROOT = "data"  # helpers mount the volume at /data: tar entries are "data/..."


@dataclasses.dataclass
class Engine:
    client: docker.DockerClient
    url: str

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


def _context_host(name: str) -> tuple[str, Any]:
    try:
        ctx = ContextAPI.get_context(name)
    except docker.errors.DockerException as e:
        raise UsageError(f"cannot read docker context '{name}': {e}") from None
    if ctx is None:
        raise UsageError(
            f"no docker context named '{name}'",
            hint="list them with 'docker context ls'; or pass an engine URL to -H/--host",
        )
    tls = ctx.TLSConfig if getattr(ctx, "TLSConfig", None) else None
    return ctx.Host or "unix:///var/run/docker.sock", tls


def resolve_host(host: str | None, flag: str = "-H/--host") -> tuple[str, Any, str]:
    """Return (url, tls, where-it-came-from) the way the docker CLI decides; ``flag``
    names the option ``host`` came from in messages."""
    if host and "://" not in host:
        url, tls = _context_host(host)
        return url, tls, f"context '{host}'" + ("" if flag == "-H/--host" else f" ({flag})")
    if host:
        return host, _tls_from_env(), flag
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"], _tls_from_env(), "DOCKER_HOST"
    name = os.environ.get("DOCKER_CONTEXT") or _current_context()
    if name and name != "default":
        url, tls = _context_host(name)
        return url, tls, f"context '{name}'"
    return "unix:///var/run/docker.sock", None, "the default socket"


def _current_context() -> str | None:
    with contextlib.suppress(Exception):
        return ContextAPI.get_current_context_name()
    return None


def _tls_from_env() -> Any:
    if not os.environ.get("DOCKER_TLS_VERIFY") and not os.environ.get("DOCKER_CERT_PATH"):
        return None
    try:
        return docker.utils.kwargs_from_env().get("tls")
    except docker.errors.DockerException as e:
        raise UsageError(f"bad TLS settings in DOCKER_CERT_PATH/DOCKER_TLS_VERIFY: {e}") from None


def connect(host: str | None = None, flag: str = "-H/--host") -> Engine:
    """Connect and check the engine answers; ``host`` is a URL or a context name, given
    by option ``flag`` (named in error messages)."""
    url, tls, origin = resolve_host(host, flag)
    kwargs: dict[str, Any] = {"base_url": url, "version": "auto", "timeout": 600}
    if tls:
        kwargs["tls"] = tls
    if url.startswith("ssh://"):
        # The system ssh honours ~/.ssh/config and the agent, as the docker CLI does.
        kwargs["use_ssh_client"] = os.environ.get("VOLBAK_SSH", "ssh") != "paramiko"
    try:
        client = docker.DockerClient(**kwargs)
        client.api.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
        env = os.environ.get("DOCKER_HOST")
        raise EngineError(
            f"cannot reach the Docker engine at {url} (from {origin}; "
            f"DOCKER_HOST={env or 'unset'}): {_short(e)}",
            hint=f"is dockerd running there? pass the engine with {flag} URL|CONTEXT"
            + (" or set DOCKER_HOST" if flag == "-H/--host" else ""),
        ) from None
    return Engine(client, url)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]


@contextlib.contextmanager
def api_errors(engine: Engine, what: str) -> Iterator[None]:
    """Turn docker-py/requests failures into volbak errors naming the engine."""
    try:
        yield
    except docker.errors.NotFound as e:
        raise NotFoundError(f"{what}: not found on engine {engine.url} ({_explain(e)})") from None
    except docker.errors.APIError as e:
        raise EngineError(f"{what}: engine {engine.url} refused: {_explain(e)}") from None
    except (requests.exceptions.RequestException, docker.errors.DockerException) as e:
        raise EngineError(
            f"{what}: lost the connection to engine {engine.url}: {_short(e)}",
            hint="check that the engine is still running and reachable",
        ) from None


def _explain(e: docker.errors.APIError) -> str:
    return str(e.explanation or e).strip()


# -- helper image and containers ---------------------------------------------------------


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
        repo, tag = HELPER_IMAGE.split(":")
        with api_errors(engine, "importing the helper image"):
            engine.api.import_image_from_data(
                _empty_tar(), repository=repo, tag=tag, changes=["LABEL volbak.helper=1"]
            )
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        raise EngineError(f"cannot inspect images on engine {engine.url}: {_short(e)}") from None
    return HELPER_IMAGE


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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
    host_config = engine.api.create_host_config(
        mounts=[Mount(m.path, m.volume, type="volume", read_only=m.read_only) for m in mounts],
        network_mode="none",
        log_config=LogConfig(type="none"),
    )
    with api_errors(engine, "creating the helper container"):
        cid = engine.api.create_container(
            image,
            command=["/volbak-helper-is-never-started"],
            host_config=host_config,
            labels={HELPER_LABEL: "helper", OWNER_LABEL: _owner()},
            network_disabled=True,
        )["Id"]
    try:
        yield cid
    finally:
        remove_container(engine, cid)


def remove_container(engine: Engine, cid: str) -> None:
    """Remove a helper; never its volumes (v=False). Signals wait until it is gone.

    Right after an aborted transfer the engine may still be finishing its tar process
    and refuse the removal for a moment, so failures are retried for about 10 s."""
    with deferred():
        for delay in (0, 0.1, 0.3, 0.6, 1, 2, 3, 3):
            time.sleep(delay)
            try:
                engine.api.remove_container(cid, v=False, force=True)
                return
            except docker.errors.NotFound:
                return
            except (docker.errors.APIError, requests.exceptions.RequestException):
                continue


def sweep_stale_helpers(engine: Engine, timeout: float = 10) -> list[str]:
    """Remove helpers left by a volbak process on this host that died (kill -9).

    Best effort, with a short timeout: after a client vanished mid-transfer, the 20.10
    engine can keep its tar process blocked and refuse to remove that container (seen
    here); that must not hold up the backup that is starting now."""
    removed = []
    host = socket.gethostname()
    api = engine.api
    with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
        for c in api.containers(all=True, filters={"label": f"{HELPER_LABEL}=helper"}):
            owner = (c.get("Labels") or {}).get(OWNER_LABEL, "")
            ohost, _, pid = owner.rpartition(":")
            if ohost == host and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(requests.exceptions.RequestException):
                    res = api._delete(api._url("/containers/{0}", c["Id"]),
                                      params={"v": False, "force": True}, timeout=timeout)
                    if res.status_code < 300:
                        removed.append(c["Id"])
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- volumes and containers ----------------------------------------------------------------


def inspect_volume(engine: Engine, name: str, flag: str = "VOLUME") -> dict[str, Any]:
    try:
        return engine.api.inspect_volume(name)
    except docker.errors.NotFound:
        raise NotFoundError(
            f"no volume '{name}' on engine {engine.url} ({flag})",
            hint="list volumes with 'docker volume ls'; -H/--host selects the engine",
        ) from None
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
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
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
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
