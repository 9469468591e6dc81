"""Running the volbak CLI in-process from tests, the way a user runs it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from volbak.cli import main

Run = Callable[..., tuple[str, str]]


def cli_runner(docker_host: str, repo: Path | str, capsys, extra: Sequence[str] = ()) -> Run:
    """``run(*args, expect=0, repo_path=None) -> (stdout, stderr)``: runs
    ``volbak ARGS -H docker_host --repo REPO EXTRA`` and checks its exit code (one code
    or a tuple of acceptable ones). A failure must be the documented one-line error
    with a hint, never a traceback."""

    def run(*args: str, expect: int | tuple[int, ...] = 0,
            repo_path: Path | str | None = None) -> tuple[str, str]:
        rc = main([*args, "-H", docker_host, "--repo", str(repo_path or repo), *extra])
        out, err = capsys.readouterr()
        wanted = expect if isinstance(expect, tuple) else (expect,)
        assert rc in wanted, f"exit {rc} (wanted {expect}); stderr:\n{err}"
        assert "Traceback" not in err
        if rc not in (0, 130, 143):
            assert "volbak: error: " in err and "\nhint: " in err, err
        return out, err

    return run
