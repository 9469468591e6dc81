"""What every command shares: the common options, the context they build (engine,
repository, output), and the option groups for keys.

Common options are accepted before the command name too (``volbak -H URL backup x``,
as with docker); a value given after the command wins. Defaults come, in this order,
from the flag, the environment (VOLBAK_REPO), the config (``--config FILE [--job
NAME]``, else the default config, see ``config.default_path``) and built-in defaults.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import BackendError, UsageError

ROOT_REPO = "/var/lib/volbak/repo"


def default_repo() -> str:
    """As root, a fixed path a disaster-recovery runbook can name; otherwise the
    user's XDG data directory."""
    if os.geteuid() == 0 and not os.environ.get("XDG_DATA_HOME"):
        return ROOT_REPO
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return str(Path(base) / "volbak" / "repo")


class Ctx:
    """What every command gets from the common options."""

    def __init__(self, host: str | None, repo: str | None, repo_options: tuple[str, ...],
                 as_json: bool, quiet: bool, config: str | None = None,
                 job: str | None = None) -> None:
        from ..config import Settings, default_path, load

        self.host = host
        path = config or default_path()
        if job and not path:
            raise UsageError("--job needs a config file",
                             hint="pass --config FILE or set VOLBAK_CONFIG")
        self.config = load(path) if path else None
        self.settings = self.config.settings(job) if self.config else Settings("")
        self.repo_url = (repo or os.environ.get("VOLBAK_REPO") or self.settings.repo
                         or default_repo())
        self.repo_options = (_parse_options(repo_options) if repo_options or repo
                             else dict(self.settings.repo_options))
        self.json = as_json
        self.quiet_flag = quiet
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

    def repo(self, create: bool = False) -> Any:
        """The repository. A location that is not a repository is an error (exit 5);
        one that does not exist yet (or is empty) is one only when not ``create``."""
        if self._repo is None:
            from ..backend import open_backend
            from ..repository import Repository

            repo = Repository(open_backend(self.repo_url, self.repo_options))
            try:
                repo.check_location(create)
            except BackendError:
                repo.close()
                raise
            self._repo = repo
        return self._repo

    def event(self, text: str) -> None:
        """Progress notes (stops, restarts, hooks, waiting) on stderr."""
        if not self.quiet:
            click.echo(f"volbak: {text}", err=True)

    def warn(self, text: str) -> None:
        """Warnings are shown even with --json (on stderr); -q silences them."""
        from ..util.redact import redact

        if not self.silent:
            click.echo(f"volbak: warning: {redact(text)}", err=True)

    def recover(self, engines: tuple[str, ...] = ()) -> None:
        """Finish or undo what dead volbak processes left (see ops.recovery)."""
        from ..engine import connect
        from ..ops.recovery import recover_all

        self.recovery = recover_all(
            connect, on_event=self.event, engines=engines,
            on_error=lambda msg: click.echo(f"volbak: warning: {msg}", err=True))
        self.recovered = self.recovery.started

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


# -- the options -----------------------------------------------------------------------------

def _host_option(f: Callable[..., Any], hidden: bool = False) -> Callable[..., Any]:
    return click.option("-H", "--host", metavar="URL|CONTEXT", hidden=hidden,
                        help="Docker engine: unix://, tcp://, ssh://user@host or a docker "
                        "context name. Default: DOCKER_HOST, then the current docker context.")(f)


def _repo_options(f: Callable[..., Any], hidden: bool = False) -> Callable[..., Any]:
    f = click.option("-o", "--repo-option", "repo_options", multiple=True, metavar="KEY=VALUE",
                     hidden=hidden,
                     help="Backend option, e.g. -o endpoint_url=http://127.0.0.1:9000 "
                     "for s3://.")(f)
    return click.option("--repo", metavar="PATH|URL", hidden=hidden,
                        help="Repository (env VOLBAK_REPO, then the config's repo). "
                        f"Default: {default_repo()}")(f)


def _config_options(f: Callable[..., Any], hidden: bool = False) -> Callable[..., Any]:
    f = click.option("--job", metavar="NAME", hidden=hidden,
                     help="Take the defaults from this job of the config file.")(f)
    return click.option("--config", metavar="FILE", hidden=hidden,
                        help="Config file whose repository and keys are the defaults "
                        "(default: $VOLBAK_CONFIG, /etc/volbak.toml as root, "
                        "~/.config/volbak.toml).")(f)


def _output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")(f)
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable output on stdout.")(f)


def group_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The common options on the group itself: ``volbak -H URL backup x``."""
    return _host_option(_repo_options(_config_options(_output_options(f))))


_KEYS = ("host", "repo", "repo_options", "as_json", "quiet", "config", "job")


def merged(given: dict[str, Any]) -> dict[str, Any]:
    """Command options over the group's (``volbak [OPTS] CMD [OPTS]``)."""
    outer = (click.get_current_context().find_root().obj or {})
    out = {}
    for k in _KEYS:
        inner = given.pop(k, None)
        if k == "repo_options":
            out[k] = tuple(outer.get(k) or ()) + tuple(inner or ())
        else:
            out[k] = inner if inner not in (None, False) else outer.get(k)
    return out


def common(f: Callable[..., Any] | None = None, *, engine: bool = True,
           repo: bool = True) -> Any:
    """The common options of a command: -H (only where an engine is used), --repo/-o and
    --config/--job (only where a repository is used), --json and -q."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(**kw: Any) -> Any:
            o = merged(kw)
            ctx = Ctx(o["host"], o["repo"], o["repo_options"], bool(o["as_json"]),
                      bool(o["quiet"]), o["config"], o["job"])
            try:
                ctx.recover()
                return f(ctx, **kw)
            finally:
                ctx.close()

        # Options a command does not use are still accepted (a script that passes -H to
        # every command keeps working, as 'volbak -H URL show ID' does) but not offered.
        out: Callable[..., Any] = _output_options(wrapper)
        out = _repo_options(_config_options(out, hidden=not repo), hidden=not repo)
        return _host_option(out, hidden=not engine)

    return deco(f) if f is not None else deco


def fmt_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def fmt_rate(nbytes: float, seconds: float) -> str:
    """Decimal units with three significant digits, as the progress bar shows them
    (``96.6 MB/s``); small transfers get small units rather than ``0 MB/s``."""
    rate = nbytes / max(seconds, 1e-9)
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if rate < 999.5 or unit == "GB/s":
            return f"{rate:.3g} {unit}"
        rate /= 1000
    return f"{rate:.3g} GB/s"  # pragma: no cover


def plural(n: int | None, word: str, many: str | None = None) -> str:
    if n is None:
        return f"? {many or word + 's'}"
    return f"{n} {word if n == 1 else (many or word + 's')}"


def encryption_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--passphrase", "ask_passphrase", is_flag=True,
                     help="Encrypt with a passphrase asked on the terminal.")(f)
    f = click.option("--passphrase-file", metavar="FILE",
                     help="Encrypt with the passphrase in FILE (env VOLBAK_PASSPHRASE_FILE).")(f)
    f = click.option("--recipients-file", "-R", multiple=True, metavar="FILE",
                     help="Encrypt to the age recipients (public keys) listed in FILE.")(f)
    f = click.option("--recipient", "-r", multiple=True, metavar="age1...",
                     help="Encrypt to this age public key (repeatable). No secret needed.")(f)
    return f


def decryption_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--passphrase-file", metavar="FILE",
                     help="Passphrase in FILE (env VOLBAK_PASSPHRASE_FILE); without it, "
                     "a passphrase backup asks on the terminal.")(f)
    f = click.option("--identity", "-i", multiple=True, metavar="FILE",
                     help="age identity file (from 'volbak keygen' or age-keygen); default: "
                     "the config's identity_file.")(f)
    return f


def key_files(ctx: Ctx, identity: tuple[str, ...], passphrase_file: str | None
              ) -> tuple[tuple[str, ...], str | None]:
    """Decryption key files: the flags, else the config's."""
    s = ctx.settings
    if not identity and not passphrase_file:
        identity = (str(s.identity_file),) if s.identity_file else ()
        passphrase_file = str(s.passphrase_file) if s.passphrase_file else None
    return identity, passphrase_file


def source_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--source", type=click.Choice(["auto", "direct", "api"]), default="auto",
        show_default=True,
        help="How the volume is read/written: 'direct' on its directory on this host "
        "(local engine, root: every attribute, faster), 'api' through the engine's "
        "archive API (remote engines), 'auto' direct where possible.")(f)
