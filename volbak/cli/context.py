"""What every command shares: the common options, the context they build (engine,
repository, output), and the option groups for keys."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError


def default_repo() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return str(Path(base) / "volbak" / "repo")


class Ctx:
    """What every command gets from the common options."""

    def __init__(self, host: str | None, repo: str | None, repo_options: tuple[str, ...],
                 as_json: bool, quiet: bool) -> None:
        self.host = host
        self.repo_url = repo or os.environ.get("VOLBAK_REPO") or default_repo()
        self.repo_options = _parse_options(repo_options)
        self.json = as_json
        self.quiet = quiet or as_json
        self.silent = quiet  # -q itself: not even warnings
        self._engine: Any = None
        self._repo: Any = None
        self.recovered: list[str] = []
        self.recovery: Any = None

    @property
    def progress(self) -> bool:
        from ..util.progress import on_terminal

        return not self.quiet and on_terminal()

    def engine(self) -> Any:
        if self._engine is None:
            from ..engine.client import connect

            self._engine = connect(self.host)
        return self._engine

    def repo(self) -> Any:
        if self._repo is None:
            from ..backend import open_backend
            from ..repository import Repository

            self._repo = Repository(open_backend(self.repo_url, self.repo_options))
        return self._repo

    def event(self, text: str) -> None:
        """Progress notes (stops, restarts, hooks, waiting) on stderr."""
        if not self.quiet:
            click.echo(f"volbak: {text}", err=True)

    def recover(self, engines: tuple[str, ...] = ()) -> None:
        """Finish or undo what dead volbak processes left (see ops.recovery)."""
        from ..engine import connect
        from ..ops.recovery import recover_all

        self.recovery = recover_all(
            connect, on_event=self.event, engines=engines,
            on_error=lambda msg: click.echo(f"volbak: warning: {msg}", err=True))
        self.recovered = self.recovery.started

    def warn(self, text: str) -> None:
        """Warnings reach stderr even with --json (cron mails stderr); only -q hides them."""
        if not self.silent:
            click.echo(f"volbak: warning: {text}", err=True)

    def say(self, text: str) -> None:
        if not self.quiet:
            click.echo(text)

    def emit(self, obj: Any) -> None:
        if self.json:
            click.echo(json.dumps(obj, sort_keys=True, default=str))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        if self._repo is not None:
            self._repo.close()


def _parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise UsageError(f"bad -o/--repo-option '{p}'", hint="use -o KEY=VALUE")
        out[key.strip()] = value
    return out


def common(f: Callable[..., Any]) -> Callable[..., Any]:
    """-H, --repo, -o, --json, -q on every command, placed after the command name."""

    @click.option("-H", "--host", metavar="URL|CONTEXT",
                  help="Docker engine: unix://, tcp://, ssh://user@host or a docker context "
                  "name. Default: DOCKER_HOST, then the current docker context.")
    @click.option("--repo", metavar="PATH|URL",
                  help=f"Repository (env VOLBAK_REPO). Default: {default_repo()}")
    @click.option("-o", "--repo-option", "repo_options", multiple=True, metavar="KEY=VALUE",
                  help="Backend option, e.g. -o endpoint_url=http://127.0.0.1:9000 for s3://.")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output on stdout.")
    @click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
    @functools.wraps(f)
    def wrapper(host: str | None, repo: str | None, repo_options: tuple[str, ...],
                as_json: bool, quiet: bool, **kw: Any) -> Any:
        ctx = Ctx(host, repo, repo_options, as_json, quiet)
        try:
            ctx.recover()
            return f(ctx, **kw)
        finally:
            ctx.close()

    return wrapper


def fmt_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def encryption_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--passphrase", "ask_passphrase", is_flag=True,
                     help="Encrypt with a passphrase asked on the terminal.")(f)
    f = click.option("--passphrase-file", metavar="FILE",
                     help="Encrypt with the passphrase in FILE (env VOLBAK_PASSPHRASE_FILE).")(f)
    f = click.option("--recipients-file", "-R", multiple=True, metavar="FILE",
                     help="Encrypt to the age recipients listed in FILE.")(f)
    f = click.option("--recipient", "-r", multiple=True, metavar="age1...",
                     help="Encrypt to this age public key (repeatable). No secret needed.")(f)
    return f


def decryption_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--passphrase-file", metavar="FILE",
                     help="Passphrase in FILE (env VOLBAK_PASSPHRASE_FILE); without it, "
                     "a passphrase backup asks on the terminal.")(f)
    f = click.option("--identity", "-i", multiple=True, metavar="FILE",
                     help="age identity file (from 'volbak keygen' or age-keygen).")(f)
    return f


def source_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--source", type=click.Choice(["auto", "direct", "api"]), default="auto",
        show_default=True,
        help="How the volume is read/written: 'direct' on its directory on this host "
        "(local engine, root: every attribute, faster), 'api' through the engine's "
        "archive API (remote engines), 'auto' direct where possible.")(f)
