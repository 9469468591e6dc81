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
    """A restore or migration target already holds data."""

    exit_code = 8


class LockBusyError(VolbakError):
    exit_code = 9


class HookError(VolbakError):
    """A pre/post-backup hook failed."""

    exit_code = 10


class Interrupted(VolbakError):
    """Ctrl-C or SIGTERM; cleanup has run."""

    exit_code = 130
