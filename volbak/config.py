"""The job file of ``volbak run --config volbak.toml [JOB...]``.

Example::

    [defaults]
    repo = "/srv/backups"                  # a path (relative: to this file) or a URL
    recipients_file = "/etc/volbak/recipients.txt"
    compress = "zstd"                      # zstd | gzip | none
    sha256 = false                         # true: like `backup --sha256` (archive repositories)
    keep = { daily = 7, weekly = 4, monthly = 12 }
    on_failure = "mail -s 'volbak failed' root"
    webhook = "https://hooks.example.org/volbak"

    [jobs.databases]
    containers = ["postgres"]              # the volumes of these containers, as one set
    stop = true
    pre_backup = "pg_dumpall -U postgres > /var/lib/postgresql/data/dump.sql"
    cache = false                          # read every file (backup --no-cache)

    [jobs.media]
    volumes = ["photos", "music"]
    labels = ["backup=nightly"]            # and volumes with this label ("key": any value)
    repo = "s3://bucket/volbak"
    repo_options = { region = "eu-west-1" }
    passphrase_file = "/etc/volbak/passphrase"

Rules:

- Every key of ``[defaults]`` applies to each job that does not set it; a job's key
  replaces the default's value entirely (tables such as ``keep`` are not merged).
- Unknown keys are errors, so a typo is never silently ignored.
- Secrets are referenced by file path only: a key named like a password, passphrase,
  secret, token or private key (in a job, in ``[defaults]`` or in ``repo_options``) is
  refused unless it ends in ``_file``; so is an ``AGE-SECRET-KEY-`` value. Repository
  credentials come from the environment (e.g. ``AWS_SECRET_ACCESS_KEY``) or files.
- ``passphrase_file`` excludes ``recipients``/``recipients_file``.
- Relative paths (``repo``, ``*_file``) are relative to the config file's directory.
- Every error is a UsageError naming the file, the key path (``jobs.media.keep.daily``)
  and what was expected.

Usage::

    config = load("volbak.toml")
    for job in config.select(args.jobs):   # [] = every job, in file order
        ... job.volumes, job.repo, job.keep (a retention.Policy or None) ...
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import UsageError
from .ops.retention import KINDS, UNLIMITED, Policy

COMPRESSIONS = ("zstd", "gzip", "none")
JOB_KEYS = (
    "volumes", "containers", "labels", "repo", "repo_options", "recipients",
    "recipients_file", "passphrase_file", "compress", "stop", "pre_backup", "post_backup",
    "keep", "on_failure", "webhook", "identity_file", "cache", "sha256",
)
# Keys a job needs no volume for: what every other command reads as its defaults
# (``volbak list --config FILE [--job NAME]``).
SETTING_KEYS = ("repo", "repo_options", "recipients", "recipients_file", "passphrase_file",
                "compress", "identity_file", "sha256")
TOP_KEYS = ("defaults", "jobs")
_SECRET_RE = re.compile(
    r"pass(word|phrase|wd)?|secret|token|private[_-]?key|credential|api[_-]?key|identity",
    re.IGNORECASE,
)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_LABEL_RE = re.compile(r"^[^=\s]+(=[^\n]*)?$")
_AGE_RECIPIENT_RE = re.compile(r"^age1[02-9ac-hj-np-z]+$")


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    repo: str
    volumes: tuple[str, ...] = ()
    containers: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()  # "key=value" or "key", as for `docker volume ls -f label=`
    repo_options: dict[str, str] = dataclasses.field(default_factory=dict)
    recipients: tuple[str, ...] = ()
    recipients_file: Path | None = None
    passphrase_file: Path | None = None
    compress: str = "zstd"
    stop: bool = False
    pre_backup: str | None = None
    post_backup: str | None = None
    keep: Policy | None = None
    on_failure: str | None = None
    webhook: str | None = None
    identity_file: Path | None = None  # for restore/verify defaults; `run` never decrypts
    cache: bool = True  # false: like `backup --no-cache` (read every file)
    sha256: bool = False  # true: like `backup --sha256`

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients or self.recipients_file or self.passphrase_file)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The defaults a config gives the other commands (list, restore, verify, ...)."""

    source: str  # "FILE" or "FILE, job NAME": for messages
    repo: str | None = None
    repo_options: dict[str, str] = dataclasses.field(default_factory=dict)
    recipients: tuple[str, ...] = ()
    recipients_file: Path | None = None
    passphrase_file: Path | None = None
    compress: str | None = None
    identity_file: Path | None = None
    sha256: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    path: Path
    jobs: dict[str, Job]
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)  # parsed [defaults]

    def settings(self, job: str | None = None) -> Settings:
        """A job's settings (``--job NAME``); without a name the [defaults] table, or the
        only job when the file has one job and [defaults] names no repository."""
        if job is None and "repo" not in self.defaults and len(self.jobs) == 1:
            job = next(iter(self.jobs))
        if job is None:
            values = self.defaults
            source = str(self.path)
        else:
            values = dataclasses.asdict(self.select([job])[0])
            source = f"{self.path}, job {job}"
        return Settings(source, **{k: values[k] for k in SETTING_KEYS if values.get(k)})

    def select(self, names: Iterable[str] = ()) -> list[Job]:
        """The named jobs (in the order given), or all jobs in file order."""
        names = list(names)
        if not names:
            return list(self.jobs.values())
        unknown = [n for n in names if n not in self.jobs]
        if unknown:
            raise UsageError(
                f"{self.path}: no job named {', '.join(repr(n) for n in unknown)}",
                hint=f"jobs in this file: {', '.join(self.jobs) or 'none'}",
            )
        return [self.jobs[n] for n in dict.fromkeys(names)]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, dt.date | dt.time):
        return f"a date/time ({value})"
    return type(value).__name__


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent

    def error(self, key: str, expected: str, value: Any = dataclasses.MISSING,
              hint: str | None = None) -> UsageError:
        got = "" if value is dataclasses.MISSING else f", got {_kind(value)}"
        return UsageError(f"{self.path}: {key}: expected {expected}{got}",
                          hint=hint or "see the 'volbak run' section of the README")

    def check_keys(self, table: dict[str, Any], where: str, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key, value in table.items():
            self.check_secret(f"{where}.{key}" if where else key, key, value)
            if key not in allowed:
                raise UsageError(
                    f"{self.path}: {where + '.' if where else ''}{key}: unknown key",
                    hint=f"allowed here: {', '.join(allowed)}",
                )

    def check_secret(self, keypath: str, key: str, value: Any) -> None:
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "AGE-SECRET-KEY-" in v.upper() for v in values):
            raise UsageError(
                f"{self.path}: {keypath}: holds an age secret key; secrets must not be "
                "written in the config",
                hint="put identities in a file readable only by root and reference its path",
            )
        if _SECRET_RE.search(key) and not key.endswith("_file"):
            raise UsageError(
                f"{self.path}: {keypath}: secrets must not be written in the config",
                hint="reference a file instead (e.g. passphrase_file = \"/etc/volbak/pass\"); "
                "repository credentials come from the environment",
            )

    # --- value checkers ---------------------------------------------------------

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "a non-empty string", value)
        return value

    def names(self, key: str, value: Any, what: str) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(key, f"an array of {what} names", value)
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not _NAME_RE.match(item.lstrip("/")):
                raise self.error(f"{key}[{i}]", f"a {what} name", item)
            out.append(item.lstrip("/"))
        return tuple(out)

    def labels(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(key, "an array of 'key=value' (or 'key') strings", value)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not _LABEL_RE.match(item):
                raise self.error(f"{key}[{i}]", "a 'key=value' or 'key' string", item)
        return tuple(value)

    def path_value(self, key: str, value: Any) -> Path:
        p = Path(self.string(key, value)).expanduser()
        return p if p.is_absolute() else self.base / p

    def repo(self, key: str, value: Any) -> str:
        url = self.string(key, value)
        if "://" in url or url.startswith("/"):
            return url
        return str(self.path_value(key, url))

    def options(self, key: str, value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.error(key, "a table of option = value", value)
        out = {}
        for k, v in value.items():
            self.check_secret(f"{key}.{k}", k, v)
            if isinstance(v, bool):
                out[k] = "true" if v else "false"
            elif isinstance(v, str | int | float):
                out[k] = str(v)
            else:
                raise self.error(f"{key}.{k}", "a string, number or boolean", v)
        return out

    def recipients(self, key: str, value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.error(key, "an array of age recipients (age1...)", value)
        for i, item in enumerate(value):
            if not isinstance(item, str) or not _AGE_RECIPIENT_RE.match(item):
                raise self.error(f"{key}[{i}]", "an age recipient (age1...)", item)
        return tuple(value)

    def keep(self, key: str, value: Any) -> Policy:
        if not isinstance(value, dict):
            raise self.error(key, f"a table of {', '.join(KINDS)}", value)
        self.check_keys(value, key, KINDS)
        counts = {}
        for kind, n in value.items():
            if n == "unlimited":
                n = UNLIMITED
            elif isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise self.error(f"{key}.{kind}", "a non-negative integer or \"unlimited\"", n)
            counts[kind] = n
        policy = Policy(**counts)
        if policy.empty():
            raise self.error(key, f"at least one of {', '.join(KINDS)} above 0",
                             hint="remove 'keep' to keep every backup")
        return policy

    def job(self, name: str, table: dict[str, Any], defaults: dict[str, Any]) -> Job:
        where = f"jobs.{name}"
        merged: dict[str, tuple[str, Any]] = {k: (f"defaults.{k}", v) for k, v in defaults.items()}
        merged.update({k: (f"{where}.{k}", v) for k, v in table.items()})
        kw = self.values(merged)
        if "repo" not in kw:
            raise UsageError(f"{self.path}: {where}: no 'repo' (in the job or in [defaults])",
                             hint="add repo = \"/path/or/url\" to the job or to [defaults]")
        if not (kw.get("volumes") or kw.get("containers") or kw.get("labels")):
            raise UsageError(
                f"{self.path}: {where}: selects nothing: give volumes, containers or labels"
            )
        if "passphrase_file" in kw and ("recipients" in kw or "recipients_file" in kw):
            raise UsageError(
                f"{self.path}: {where}: passphrase_file cannot be combined with recipients",
                hint="age encrypts to a passphrase or to recipients, not both",
            )
        return Job(name=name, **kw)

    def values(self, merged: dict[str, tuple[str, Any]]) -> dict[str, Any]:
        """Checked values of a job's keys: {key: (key path for messages, raw value)}."""
        kw: dict[str, Any] = {}
        for k, (kp, v) in merged.items():
            if k in ("volumes", "containers"):
                kw[k] = self.names(kp, v, k[:-1])
            elif k == "labels":
                kw[k] = self.labels(kp, v)
            elif k == "repo":
                kw[k] = self.repo(kp, v)
            elif k == "repo_options":
                kw[k] = self.options(kp, v)
            elif k == "recipients":
                kw[k] = self.recipients(kp, v)
            elif k in ("recipients_file", "passphrase_file", "identity_file"):
                kw[k] = self.path_value(kp, v)
            elif k == "compress":
                if v not in COMPRESSIONS:
                    raise self.error(kp, " or ".join(repr(c) for c in COMPRESSIONS), v)
                kw[k] = v
            elif k in ("stop", "cache", "sha256"):
                if not isinstance(v, bool):
                    raise self.error(kp, "true or false", v)
                kw[k] = v
            elif k in ("pre_backup", "post_backup", "on_failure"):
                kw[k] = self.string(kp, v)
            elif k == "keep":
                kw[k] = self.keep(kp, v)
            elif k == "webhook":
                url = self.string(kp, v)
                if not re.match(r"^https?://[^\s/]+", url):
                    raise self.error(kp, "an http:// or https:// URL", v)
                kw[k] = url
            else:  # pragma: no cover - keys were checked against JOB_KEYS
                raise AssertionError(k)
        return kw

    def config(self, doc: dict[str, Any]) -> Config:
        self.check_keys(doc, "", TOP_KEYS)
        defaults = doc.get("defaults", {})
        if not isinstance(defaults, dict):
            raise self.error("defaults", "a table", defaults)
        self.check_keys(defaults, "defaults", JOB_KEYS)
        jobs = doc.get("jobs")
        if not isinstance(jobs, dict) or not jobs:
            raise self.error("jobs", "at least one [jobs.NAME] table",
                             *(() if jobs is None else (jobs,)))
        out: dict[str, Job] = {}
        for name, table in jobs.items():
            if not _NAME_RE.match(name):
                raise self.error(f"jobs.{name}", "a job name of letters, digits, '.', '_', '-'")
            if not isinstance(table, dict):
                raise self.error(f"jobs.{name}", "a table", table)
            self.check_keys(table, f"jobs.{name}", JOB_KEYS)
            out[name] = self.job(name, table, defaults)
        return Config(self.path, out,
                      self.values({k: (f"defaults.{k}", v) for k, v in defaults.items()}))


def parse(text: str, path: str | Path = "volbak.toml") -> Config:
    """Parse config text; ``path`` is used in messages and for relative paths."""
    path = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: invalid TOML: {e}") from None
    return _Parser(path).config(doc)


def default_path() -> Path | None:
    """The config every command reads when no --config is given: $VOLBAK_CONFIG (set
    to "" for none), else /etc/volbak.toml as root, else ~/.config/volbak.toml
    ($XDG_CONFIG_HOME); None when that file does not exist (not an error)."""
    env = os.environ.get("VOLBAK_CONFIG")
    if env is not None:
        return Path(env).expanduser() if env else None
    if os.geteuid() == 0:
        path = Path("/etc/volbak.toml")
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        path = Path(base) / "volbak.toml"
    return path if path.is_file() else None


def load(path: str | Path) -> Config:
    """Read and validate a job file."""
    path = Path(path).expanduser().absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist",
                         hint="pass --config PATH") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read config file {path}: {e}") from None
    return parse(text, path)
