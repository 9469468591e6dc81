"""One error tree for volbak, one exit code per kind of failure.

Library code raises these; the CLI's single top-level handler prints the message and
its ``hint:`` line and exits with ``exit_code``. Anything that is not a VolbakError is a
bug and keeps its traceback.
"""

from __future__ import annotations


class VolbakError(Exception):
    """Base of every error a user can cause or fix."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(VolbakError):
    """Bad flags or arguments (same code as click's own usage errors)."""

    exit_code = 2


class NotFoundError(VolbakError):
    """A volume, container, backup ID or object that does not exist."""

    exit_code = 3


class EngineError(VolbakError):
    """The Docker engine cannot be reached or refused a request."""

    exit_code = 4


class BackendError(VolbakError):
    """The repository (storage backend) failed: unreachable, not writable, full."""

    exit_code = 5


class ObjectNotFound(BackendError, NotFoundError):
    exit_code = 3


class BackendPermissionError(BackendError):
    pass


class BackendFullError(BackendError):
    pass


class BackendMissing(BackendError):
    """No plugin is installed for a repository URL's scheme."""


class IntegrityError(VolbakError):
    """Stored data is corrupt, truncated or incomplete."""

    exit_code = 6


class CryptoError(VolbakError):
    """Encryption or decryption failed: wrong key, bad key file, tampered data."""

    exit_code = 7


class TargetExistsError(VolbakError):
    """A restore or migration target already holds data (or is in use), or a file to
    create already exists."""

    exit_code = 8


class LockBusyError(VolbakError):
    exit_code = 9


class HookError(VolbakError):
    """A pre/post-backup hook failed."""

    exit_code = 10


class Interrupted(VolbakError):
    """Ctrl-C; cleanup has run."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler so every ``finally``
    block (helper removal, container restarts) runs; cleanup has run when it exits."""

    exit_code = 143


class VerifyFailed(VolbakError):
    """``verify`` found a damaged backup; the exit code is that of the first failure
    (6 integrity, 7 encryption), set per instance."""

    exit_code = 6


class JobFailed(VolbakError):
    """A job of ``volbak run`` failed; the exit code is that of the first failure."""

    exit_code = 1


# The one list of exit codes: the CLI's help and the README table are checked against
# it (tests/test_cli_errors.py).
EXIT_CODES: list[tuple[str, str]] = [
    ("0", "success"),
    ("1", "unexpected error (a bug: please report it with the traceback)"),
    (str(UsageError.exit_code), "bad usage: unknown flag, bad value, missing argument or key"),
    (str(NotFoundError.exit_code), "not found: volume, container, backup ID"),
    (str(EngineError.exit_code), "Docker engine unreachable or refused a request"),
    (str(BackendError.exit_code),
     "repository error: unreachable, not writable, disk full, plugin missing"),
    (str(IntegrityError.exit_code),
     "integrity: corrupt or truncated archive, damaged manifest, read-back mismatch"),
    (str(CryptoError.exit_code),
     "encryption: wrong key or passphrase, bad key file, tampered data"),
    (str(TargetExistsError.exit_code),
     "target already exists: restore/migrate target, keygen output file"),
    (str(LockBusyError.exit_code), "another volbak run holds the lock"),
    (str(HookError.exit_code), "a pre/post-backup hook failed"),
    (f"{Interrupted.exit_code} / {Terminated.exit_code}",
     "interrupted by Ctrl-C / terminated by SIGTERM (after cleanup)"),
]
