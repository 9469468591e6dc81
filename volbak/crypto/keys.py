"""Turning key flags into age recipients and identities.

Passphrases come only from a file (``--passphrase-file`` / VOLBAK_PASSPHRASE_FILE) or
a terminal prompt: never from a command-line value, never into a log.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError

PASSPHRASE_ENV = "VOLBAK_PASSPHRASE_FILE"


def _passphrase_file(path: str | None) -> str | None:
    return path or os.environ.get(PASSPHRASE_ENV) or None


def _read_file(path: str, flag: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read {flag} {path}: {e.strerror}",
                         hint=f"check the path given to {flag}") from None


def _prompt(confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise UsageError(
            "a passphrase is needed but there is no terminal to ask on",
            hint=f"pass --passphrase-file FILE or set {PASSPHRASE_ENV}",
        )
    # getpass reads from the terminal itself (not stdin) and echoes nothing.
    value = getpass.getpass("Passphrase: ", stream=sys.stderr)
    if confirm and getpass.getpass("Repeat for confirmation: ", stream=sys.stderr) != value:
        raise UsageError("the two passphrases do not match", hint="type the same one twice")
    if not value:
        raise UsageError("empty passphrase")
    return value.encode()


def recipients(
    recipient: Sequence[str], recipients_file: Sequence[str], passphrase_file: str | None,
    ask_passphrase: bool = False,
) -> list[Any]:
    """Recipients to encrypt to; empty means the backup is not encrypted."""
    from . import age

    out: list[Any] = []
    for r in recipient:
        out.append(age.X25519Recipient.parse(r.strip()))
    for f in recipients_file:
        out.extend(age.parse_recipients(_read_file(f, "--recipients-file"),
                                        f"recipients file {f}"))
    pfile = _passphrase_file(passphrase_file)
    if pfile or ask_passphrase:
        if out:
            raise UsageError(
                "a passphrase cannot be combined with --recipient/--recipients-file",
                hint="age allows a passphrase only as the sole recipient; choose one",
            )
        phrase = age.read_passphrase_file(pfile) if pfile else _prompt(confirm=True)
        out.append(age.ScryptRecipient(phrase))
    return out


def identities(
    identity: Sequence[str], passphrase_file: str | None, encryption: dict[str, Any] | None = None,
) -> list[Any]:
    """Identities to decrypt with. If none are given and the backup was made with a
    passphrase, ask for it on the terminal."""
    from . import age

    out: list[Any] = []
    for f in identity:
        out.extend(age.load_identity_file(f))
    pfile = _passphrase_file(passphrase_file)
    if pfile:
        out.append(age.ScryptIdentity(age.read_passphrase_file(pfile)))
    enc = encryption or {}
    if not out and enc.get("passphrase") and sys.stdin.isatty():
        out.append(age.ScryptIdentity(_prompt(confirm=False)))
    return out
