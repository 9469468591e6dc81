"""Containers volbak stops, starts again and runs hooks in (docker-py's container
models: ``id``, ``name``, ``status``, ``labels``, ``attrs``).

Every function raises volbak's errors carrying the engine's own words, so callers put
their context in front: NotFoundError when the container is gone, EngineError for any
other refusal or a lost connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors

from ..errors import EngineError, NotFoundError
from .client import FAILURES


class NotRunning(EngineError):
    """An exec was refused because the container is not running."""


@contextlib.contextmanager
def failures() -> Iterator[None]:
    """docker-py, requests and socket failures as NotFoundError/EngineError with the
    library's text (for a client factory, or anything else that talks to an engine)."""
    try:
        yield
    except docker.errors.NotFound as e:
        raise NotFoundError(str(e)) from None
    except FAILURES as e:
        raise EngineError(str(e)) from None


def name(container: Any) -> str:
    """The container's name for messages (its short ID if it has none)."""
    shown = getattr(container, "name", None) or container.attrs.get("Name", "") \
        or container.id[:12]
    return shown.lstrip("/")


def get(client: docker.DockerClient, cid: str) -> Any:
    with failures():
        return client.containers.get(cid)


def reload(container: Any) -> None:
    """Refresh ``status`` and ``attrs``."""
    with failures():
        container.reload()


def stop(container: Any, timeout: int | None = None) -> None:
    """``docker stop``: None waits the container's own StopTimeout (or the engine's)."""
    with failures():
        if timeout is None:
            container.stop()
        else:
            container.stop(timeout=timeout)


def start(container: Any) -> None:
    with failures():
        container.start()


def engine_url_of(client: docker.DockerClient) -> str:
    """The URL a client talks to, as the user would write it (unix://, tcp://, ssh://).
    docker-py keeps the socket path and ssh host only in its adapter's attributes; where
    they are missing, its public ``base_url``."""
    api = client.api
    adapter = getattr(api, "_custom_adapter", None)
    sock = getattr(adapter, "socket_path", None)
    if sock:
        return f"unix://{sock}"
    ssh_host = getattr(adapter, "ssh_host", None)
    if ssh_host:
        return ssh_host if "://" in ssh_host else f"ssh://{ssh_host}"
    base = api.base_url
    if base.startswith("http://"):
        return "tcp://" + base[len("http://"):]
    return base


# -- exec (hooks) ------------------------------------------------------------------------------


def _running(container: Any) -> bool:
    try:
        container.reload()
    except FAILURES:
        return True  # cannot tell: report the engine's own words
    return container.status == "running"


def exec_create(container: Any, cmd: list[str]) -> str:
    """Create an exec of ``cmd`` (stdout and stderr, no tty); its ID. NotRunning when
    the container is stopped."""
    api = container.client.api
    try:
        return api.exec_create(container.id, cmd, stdout=True, stderr=True, tty=False)["Id"]
    except docker.errors.NotFound as e:
        raise NotFoundError(str(e)) from None
    except docker.errors.APIError as e:
        why = e.explanation or str(e)
        # dockerd answers 409 for a stopped container, Podman 500 ("container state
        # improper"): ask the container itself rather than trust the status code.
        if e.status_code == 409 or "not running" in str(why) or not _running(container):
            raise NotRunning(str(why)) from None
        raise EngineError(str(why)) from None
    except FAILURES as e:
        raise EngineError(str(e)) from None


def exec_output(container: Any, exec_id: str) -> Iterator[bytes]:
    """Start the exec and yield its output (stdout and stderr interleaved)."""
    with failures():
        yield from container.client.api.exec_start(exec_id, stream=True, demux=False)


def exec_exit_code(container: Any, exec_id: str) -> int | None:
    """The exec's exit code, None while the engine has not recorded one."""
    with failures():
        info = container.client.api.exec_inspect(exec_id)
    if not info.get("Running") and info.get("ExitCode") is not None:
        return int(info["ExitCode"])
    return None
