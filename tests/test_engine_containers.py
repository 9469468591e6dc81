"""volbak.engine.containers without an engine: docker-py failures become volbak errors
with the engine's words; an exec refused on a stopped container is NotRunning on
dockerd (409) and on Podman (500, "container state improper")."""

from __future__ import annotations

import docker.errors
import pytest
import requests

from volbak.engine import containers
from volbak.errors import EngineError, NotFoundError


class Resp:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.reason = "x"
        self.url = "http://engine/exec"


class FakeAPI:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def exec_create(self, *a, **kw):
        raise self.error


class FakeContainer:
    def __init__(self, error: Exception, status: str = "running", name: str = "db") -> None:
        self.id = "0123456789abcdef"
        self.name = name
        self.status = status
        self.attrs = {"Name": "/" + name}
        self.client = type("C", (), {"api": FakeAPI(error)})()

    def reload(self) -> None:
        pass


def api_error(status: int, text: str) -> docker.errors.APIError:
    return docker.errors.APIError(text, Resp(status), explanation=text)


def test_failures_keep_the_engine_words() -> None:
    with pytest.raises(NotFoundError, match="no such container"), containers.failures():
        raise docker.errors.NotFound("no such container")
    with pytest.raises(EngineError, match="connection refused"), containers.failures():
        raise requests.exceptions.ConnectionError("connection refused")
    with pytest.raises(EngineError, match="broken pipe"), containers.failures():
        raise BrokenPipeError("broken pipe")


@pytest.mark.parametrize(("error", "status", "want"), [
    (api_error(409, "container is not running"), "exited", containers.NotRunning),
    (api_error(500, "container state improper"), "exited", containers.NotRunning),
    (api_error(500, "something else"), "running", EngineError),
    (docker.errors.NotFound("gone"), "running", NotFoundError),
])
def test_exec_create_refusals(error: Exception, status: str, want: type) -> None:
    with pytest.raises(want) as err:
        containers.exec_create(FakeContainer(error, status), ["true"])
    assert type(err.value) is want


def test_name() -> None:
    c = FakeContainer(RuntimeError(), name="web")
    assert containers.name(c) == "web"
    c.name = ""
    assert containers.name(c) == "web"  # from attrs
    c.attrs = {}
    assert containers.name(c) == "0123456789ab"


def test_helper_delete_falls_back_to_the_public_call() -> None:
    """If docker-py's private request helpers change, the helper is still removed."""
    from volbak.engine import helpers

    class Api:
        removed: list = []

        def _url(self, *a):  # a private helper that changed its signature
            raise TypeError("changed")

        def remove_container(self, cid, v, force):
            self.removed.append((cid, v, force))

    class Engine:
        api = Api()

    helpers._delete(Engine(), "c1", timeout=1)
    assert Api.removed == [("c1", False, True)]
