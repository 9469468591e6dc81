"""Finding and connecting to a Docker engine, and turning its failures into volbak
errors (``api_errors``) that name the engine."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.context import ContextAPI

from ..errors import EngineError, NotFoundError, UsageError

# What a call to an engine can raise besides a result: the engine refused, docker-py
# failed, the connection broke.
FAILURES = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


@dataclasses.dataclass
class Engine:
    client: docker.DockerClient
    url: str

    @property
    def api(self) -> docker.APIClient:
        return self.client.api

    @functools.cached_property
    def product(self) -> str:
        """"podman" or "docker": Podman's Docker-compatible API differs where it
        matters (archive entry names and owners, exec on stopped containers)."""
        with contextlib.suppress(Exception):
            names = [c.get("Name", "") for c in self.api.version().get("Components") or []]
            if any("podman" in n.lower() for n in names):
                return "podman"
        return "docker"

    @property
    def is_podman(self) -> bool:
        return self.product == "podman"

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


def same_engine(a: Engine, b: Engine) -> bool:
    """True if both talk to the same daemon, whatever the URL: same engine ID, host name
    and data root (engines cloned with their key file share an ID)."""
    if a.url == b.url:
        return True
    with contextlib.suppress(Exception):
        ia, ib = a.api.info(), b.api.info()
        keys = ("ID", "Name", "DockerRootDir")
        return bool(ia.get("ID")) and all(ia.get(k) == ib.get(k) for k in keys)
    return False
