"""age v1 file encryption (https://age-encryption.org/v1, C2SP), streaming.

Only what volbak needs: X25519 recipients/identities, scrypt passphrases, the STREAM
payload (ChaCha20-Poly1305 over 64 KiB chunks), and reading ASCII armor. Output is
always binary age, readable by ``age -d``. Every primitive comes from ``cryptography``;
Bech32 and canonical base64 are implemented here.

Usage::

    w = EncryptWriter(dst, [X25519Recipient.parse("age1...")])
    w.write(data) ...; w.close()          # close() does not close dst

    r = DecryptReader(src, load_identity_file(path))   # header checked here
    while block := r.read(1 << 20): ...
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from volbak.errors import CryptoError, TargetExistsError
from volbak.util.host import write_all

__all__ = [
    "AgeArmorError",
    "AgeHMACError",
    "AgeHeaderError",
    "AgeKeyError",
    "AgeNoMatch",
    "AgePayloadError",
    "DecryptReader",
    "EncryptWriter",
    "Identity",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "Stanza",
    "X25519Identity",
    "X25519Recipient",
    "header_recipients",
    "load_identity_file",
    "parse_recipients",
    "read_passphrase_file",
    "write_identity_file",
]

# --------------------------------------------------------------------------- errors

_HINT_CORRUPT = "the encrypted data is damaged or was modified; use another copy of the backup"


class AgeHeaderError(CryptoError):
    """The age header is malformed (or uses an unsupported version)."""


class AgeHMACError(CryptoError):
    """A file key was unwrapped but the header MAC does not match."""


class AgePayloadError(CryptoError):
    """The encrypted payload is tampered with or truncated."""


class AgeNoMatch(CryptoError):
    """No identity (key or passphrase) opens the file."""


class AgeArmorError(CryptoError):
    """The ASCII armor (-----BEGIN AGE ENCRYPTED FILE-----) is malformed."""


class AgeKeyError(CryptoError):
    """A key, recipient, identity file or passphrase file cannot be used."""


# --------------------------------------------------------------------------- constants

_MAGIC = b"age-encryption.org/v1\n"
_MAGIC_PREFIX = b"age-encryption.org/"
_FOOTER = b"---"
_STANZA_PREFIX = b"-> "
_COLUMNS = 64
_BYTES_PER_LINE = _COLUMNS // 4 * 3
_FILE_KEY_SIZE = 16
_NONCE_SIZE = 16
_CHUNK = 64 * 1024
_TAG = 16
_ENC_CHUNK = _CHUNK + _TAG
_MAX_LINE = 64 * 1024
_MAX_HEADER = 16 * 1024 * 1024
_ZERO_NONCE = bytes(12)
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_X25519_LABEL = b"age-encryption.org/v1/X25519"
_ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
_ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
_ARMOR_MAX_WHITESPACE = 1024
_ARMOR_FAST_LINES = 1024
_WHITESPACE = b" \t\r\n\v\f"

# --------------------------------------------------------------------------- encodings

_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64encode(data: bytes) -> str:
    """Standard base64 without padding (age's encoding)."""
    return base64.b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(s: str | bytes) -> bytes:
    """Canonical, unpadded standard base64; raises ValueError on anything else."""
    raw = s.encode("ascii", "replace") if isinstance(s, str) else bytes(s)
    if len(raw) % 4 == 1 or not _B64_ALPHABET.issuperset(raw):
        raise ValueError("invalid base64")
    out = binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    if base64.b64encode(out).rstrip(b"=") != raw:
        raise ValueError("non-canonical base64")
    return out


_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_REV = {c: i for i, c in enumerate(_BECH32_CHARSET)}
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _bech32_polymod(values: Iterable[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _BECH32_GEN[i]
    return chk


def _bech32_hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out = []
    maxv = (1 << tobits) - 1
    for value in data:
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        raise ValueError("invalid bech32 padding")
    return out


def bech32_encode(hrp: str, data: bytes, *, upper: bool = False) -> str:
    """Bech32 (BIP 173 checksum, no length limit, as age uses it)."""
    hrp_l = hrp.lower()
    values = _convert_bits(data, 8, 5, True)
    polymod = _bech32_polymod([*_bech32_hrp_expand(hrp_l), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    s = hrp_l + "1" + "".join(_BECH32_CHARSET[v] for v in values + checksum)
    return s.upper() if upper else s


def bech32_decode(s: str) -> tuple[str, bytes]:
    """Returns (hrp in lower case, data); raises ValueError."""
    if s.lower() != s and s.upper() != s:
        raise ValueError("mixed case")
    if any(ord(c) < 33 or ord(c) > 126 for c in s):
        raise ValueError("invalid character")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s):
        raise ValueError("separator '1' at invalid position")
    hrp = s[:pos]
    try:
        values = [_BECH32_REV[c] for c in s[pos + 1 :]]
    except KeyError:
        raise ValueError("invalid character in data part") from None
    if _bech32_polymod([*_bech32_hrp_expand(hrp), *values]) != 1:
        raise ValueError("invalid checksum")
    return hrp, bytes(_convert_bits(values[:-6], 5, 8, False))


# --------------------------------------------------------------------------- stanzas


@dataclass
class Stanza:
    """One recipient stanza of an age header: ``-> type args...`` plus a body."""

    type: str
    args: list[str]
    body: bytes

    def encode(self) -> bytes:
        line = " ".join([self.type, *self.args])
        b64 = b64encode(self.body)
        lines = [b64[i : i + _COLUMNS] for i in range(0, len(b64), _COLUMNS)]
        if not lines or len(lines[-1]) == _COLUMNS:
            lines.append("")  # a body always ends with a short (maybe empty) line
        return ("-> " + line + "\n" + "".join(ln + "\n" for ln in lines)).encode("ascii")


class Recipient(Protocol):
    def wrap(self, file_key: bytes) -> list[Stanza]: ...


class Identity(Protocol):
    def unwrap(self, stanzas: list[Stanza]) -> bytes | None: ...


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _aead_unwrap(key: bytes, body: bytes, what: str) -> bytes | None:
    """Decrypt a wrapped file key; None if the key does not open it."""
    if len(body) != _FILE_KEY_SIZE + _TAG:
        raise AgeHeaderError(
            f"invalid {what} stanza: wrapped file key has the wrong size", hint=_HINT_CORRUPT
        )
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, body, None)
    except InvalidTag:
        return None


# --------------------------------------------------------------------------- X25519


def _is_secret(s: str) -> bool:
    return s.upper().startswith(("AGE-SECRET-KEY-", "AGE-PLUGIN-"))


def _shown(s: str) -> str:
    """How a malformed recipient is quoted in a message. It may be anything (a key typed
    in the wrong place, a secret key's data after a mangled prefix), so only its first
    characters are shown."""
    if s.lower().startswith("age1"):
        return repr(s[:12] + "...")
    return f"(a {len(s)}-character string that does not start with 'age1')"


class X25519Recipient:
    """A public key, ``age1...``."""

    def __init__(self, public_bytes: bytes) -> None:
        if len(public_bytes) != 32:
            raise AgeKeyError("an X25519 public key must be 32 bytes")
        self._pub = bytes(public_bytes)
        self._key = X25519PublicKey.from_public_bytes(self._pub)

    @classmethod
    def parse(cls, s: str) -> X25519Recipient:
        s = s.strip()
        if _is_secret(s):
            # An identity given where a recipient belongs: never echo it.
            raise AgeKeyError(
                "this is an age secret key (identity), not a recipient (public key)",
                hint="encrypt with its public key: -r age1... (shown by 'age-keygen -y FILE' "
                "or in the file's '# public key:' line); the secret key is for restore, -i FILE",
            )
        shown = _shown(s)
        if s.startswith(("ssh-", "ecdsa-")):
            raise AgeKeyError(
                "SSH public keys are not supported as recipients",
                hint="generate an age key with 'volbak keygen' or 'age-keygen'",
            )
        try:
            hrp, data = bech32_decode(s)
        except ValueError as e:
            raise AgeKeyError(f"malformed age recipient {shown}: {e}",
                              hint="a recipient is a public key, age1..., as printed by "
                              "'volbak keygen' or 'age-keygen -y FILE'") from None
        if hrp == "age1pq":
            raise AgeKeyError("post-quantum (age1pq) recipients are not supported")
        if hrp.startswith("age1"):
            raise AgeKeyError(f"age plugin recipients are not supported: {shown}")
        if hrp != "age" or len(data) != 32:
            raise AgeKeyError(f"malformed age recipient {shown}: not an X25519 public key")
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode("age", self._pub)

    def __repr__(self) -> str:
        return f"X25519Recipient({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, X25519Recipient) and other._pub == self._pub

    def __hash__(self) -> int:
        return hash(self._pub)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        eph = X25519PrivateKey.generate()
        share = eph.public_key().public_bytes_raw()
        shared = eph.exchange(self._key)
        wrap_key = _hkdf(shared, share + self._pub, _X25519_LABEL)
        body = ChaCha20Poly1305(wrap_key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza("X25519", [b64encode(share)], body)]


class X25519Identity:
    """A secret key, ``AGE-SECRET-KEY-1...``."""

    def __init__(self, secret_bytes: bytes) -> None:
        if len(secret_bytes) != 32:
            raise AgeKeyError("an X25519 secret key must be 32 bytes")
        self._secret = bytes(secret_bytes)
        self._key = X25519PrivateKey.from_private_bytes(self._secret)
        self._pub = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, s: str) -> X25519Identity:
        s = s.strip()
        if s.startswith("AGE-PLUGIN-"):
            raise AgeKeyError("age plugin identities are not supported")
        if s.upper().startswith("AGE-SECRET-KEY-PQ-"):
            raise AgeKeyError("post-quantum (AGE-SECRET-KEY-PQ-) identities are not supported")
        try:
            hrp, data = bech32_decode(s)
        except ValueError as e:  # never echo the string: it may be a secret key
            raise AgeKeyError(f"malformed age secret key: {e}") from None
        if hrp != "age-secret-key-" or len(data) != 32:
            raise AgeKeyError("malformed age secret key: not an X25519 identity")
        return cls(data)

    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._pub)

    def __str__(self) -> str:
        return bech32_encode("AGE-SECRET-KEY-", self._secret, upper=True)

    def __repr__(self) -> str:  # never show the secret
        return f"X25519Identity(recipient={str(self.recipient())!r})"

    def unwrap(self, stanzas: list[Stanza]) -> bytes | None:
        for st in stanzas:
            if st.type != "X25519":
                continue
            if len(st.args) != 1:
                raise AgeHeaderError(
                    "invalid X25519 stanza: wrong number of arguments", hint=_HINT_CORRUPT
                )
            try:
                share = b64decode(st.args[0])
            except ValueError:
                raise AgeHeaderError(
                    "invalid X25519 stanza: malformed share", hint=_HINT_CORRUPT
                ) from None
            if len(share) != 32:
                raise AgeHeaderError(
                    "invalid X25519 stanza: share has the wrong size", hint=_HINT_CORRUPT
                )
            try:
                shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:  # all-zero shared secret (low-order point)
                raise AgeHeaderError(
                    "invalid X25519 stanza: low-order share", hint=_HINT_CORRUPT
                ) from None
            wrap_key = _hkdf(shared, share + self._pub, _X25519_LABEL)
            file_key = _aead_unwrap(wrap_key, st.body, "X25519")
            if file_key is not None:
                return file_key
        return None


# --------------------------------------------------------------------------- scrypt


def _scrypt_key(passphrase: bytes, salt: bytes, work_factor: int) -> bytes:
    kdf = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << work_factor, r=8, p=1)
    return kdf.derive(passphrase)


class ScryptRecipient:
    """Encrypt to a passphrase. Must be the only recipient of a file."""

    def __init__(self, passphrase: bytes, work_factor: int = 18) -> None:
        if not passphrase:
            raise AgeKeyError("the passphrase is empty")
        if not 1 <= work_factor <= 30:
            raise AgeKeyError(f"scrypt work factor {work_factor} is out of range 1..30")
        self._passphrase = bytes(passphrase)
        self._work_factor = work_factor

    def __repr__(self) -> str:
        return f"ScryptRecipient(work_factor={self._work_factor})"

    def identity(self) -> ScryptIdentity:
        """The identity of the same passphrase (dedup repositories derive keys from it)."""
        return ScryptIdentity(self._passphrase)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        salt = os.urandom(16)
        key = _scrypt_key(self._passphrase, salt, self._work_factor)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza("scrypt", [b64encode(salt), str(self._work_factor)], body)]


class ScryptIdentity:
    """Decrypt with a passphrase; refuses work factors above ``max_work_factor``."""

    def __init__(self, passphrase: bytes, max_work_factor: int = 22) -> None:
        if not passphrase:
            raise AgeKeyError("the passphrase is empty")
        self._passphrase = bytes(passphrase)
        self._max = max_work_factor

    def __repr__(self) -> str:
        return f"ScryptIdentity(max_work_factor={self._max})"

    def unwrap(self, stanzas: list[Stanza]) -> bytes | None:
        for st in stanzas:
            if st.type != "scrypt":
                continue
            if len(stanzas) != 1:
                raise AgeHeaderError(
                    "an scrypt stanza must be the only one in the header", hint=_HINT_CORRUPT
                )
            if len(st.args) != 2:
                raise AgeHeaderError(
                    "invalid scrypt stanza: wrong number of arguments", hint=_HINT_CORRUPT
                )
            try:
                salt = b64decode(st.args[0])
            except ValueError:
                raise AgeHeaderError(
                    "invalid scrypt stanza: malformed salt", hint=_HINT_CORRUPT
                ) from None
            if len(salt) != 16:
                raise AgeHeaderError(
                    "invalid scrypt stanza: salt has the wrong size", hint=_HINT_CORRUPT
                )
            wf = st.args[1]
            if not wf.isascii() or not wf.isdigit() or wf.startswith("0"):
                raise AgeHeaderError(
                    "invalid scrypt stanza: malformed work factor", hint=_HINT_CORRUPT
                )
            if len(wf) > 3 or int(wf) > self._max:
                shown = wf if len(wf) <= 5 else wf[:5] + "..."
                raise AgeHeaderError(
                    f"scrypt work factor {shown} exceeds the maximum of {self._max}",
                    hint="the file needs too much CPU and memory to open; "
                    "it was not made by volbak or age with default settings",
                )
            key = _scrypt_key(self._passphrase, salt, int(wf))
            return _aead_unwrap(key, st.body, "scrypt")
        return None


# --------------------------------------------------------------------------- key files


def parse_recipients(lines: Iterable[str], where: str = "recipients file"
                     ) -> list[X25519Recipient]:
    """Parse a recipients file: one ``age1...`` per line, ``#`` comments, blank lines.
    An identity file given instead is refused without quoting any of it."""
    out = []
    lines = list(lines)
    for n, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if _is_secret(s):
            public = [x.split(":", 1)[1].strip() for x in lines
                      if x.strip().lower().startswith("# public key:")]
            raise AgeKeyError(
                f"{where} holds an age identity (a secret key), not recipients",
                hint=("encrypt to its public key instead: -r " + public[0] if public else
                      "encrypt to its public key: -r age1... ('age-keygen -y FILE' prints it)")
                + "; keep the identity file for restore (-i FILE), off the backup host",
            )
        try:
            out.append(X25519Recipient.parse(s))
        except AgeKeyError as e:
            raise AgeKeyError(f"{where}, line {n}: {e.message}", hint=e.hint) from None
    return out


def _identity_file_error(path: os.PathLike | str, what: str) -> AgeKeyError:
    return AgeKeyError(
        f"identity file {os.fspath(path)}: {what}",
        hint="pass a file made by 'volbak keygen' or 'age-keygen' with --identity",
    )


def load_identity_file(path: os.PathLike | str) -> list[X25519Identity]:
    """Read an age identity file (``AGE-SECRET-KEY-1...`` lines, ``#`` comments)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except FileNotFoundError:
        raise _identity_file_error(path, "no such file") from None
    except OSError as e:
        raise _identity_file_error(path, e.strerror or str(e)) from None
    if data.startswith(_MAGIC_PREFIX) or data.lstrip().startswith(_ARMOR_BEGIN):
        raise _identity_file_error(path, "passphrase-protected identity files are not supported")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _identity_file_error(path, "not a text file") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        try:
            out.append(X25519Identity.parse(s))
        except AgeKeyError as e:
            raise _identity_file_error(path, f"line {n}: {e.message}") from None
    if not out:
        raise _identity_file_error(path, "no identities found")
    return out


def identity_file_text(identity: X25519Identity) -> str:
    """An identity file's content, as age-keygen writes it."""
    created = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return f"# created: {created}\n# public key: {identity.recipient()}\n{identity}\n"


def write_identity_file(path: os.PathLike | str, identity: X25519Identity) -> None:
    """Create ``path`` (mode 0600, never overwriting) holding ``identity`` like age-keygen."""
    text = identity_file_text(identity).encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise TargetExistsError(
            f"key file {os.fspath(path)} already exists; refusing to overwrite it",
            hint="choose another path, or move the old key away if you really mean to replace it",
        ) from None
    except OSError as e:
        raise AgeKeyError(f"cannot create key file {os.fspath(path)}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        write_all(fd, text)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def read_passphrase_file(path: os.PathLike | str) -> bytes:
    """The first line of ``path`` without its line ending."""
    hint = "put the passphrase on the first line of the file given to --passphrase-file"
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError as e:
        raise AgeKeyError(
            f"cannot read passphrase file {os.fspath(path)}: {e.strerror or e}", hint=hint
        ) from None
    line = data.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        raise AgeKeyError(f"passphrase file {os.fspath(path)} is empty", hint=hint)
    return line


# --------------------------------------------------------------------------- input


class _BufReader:
    """Pushback buffer over anything with ``read(n)``; short reads allowed."""

    def __init__(self, src) -> None:
        self._src = src
        self._buf = b""
        self._eof = False

    def _more(self, n: int = 8192) -> bool:
        if self._eof:
            return False
        data = self._src.read(n)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def peek(self, n: int) -> bytes:
        while len(self._buf) < n and self._more(n - len(self._buf)):
            pass
        return self._buf[:n]

    def readline(self, limit: int, exc: type[CryptoError]) -> bytes:
        """One line including its b"\\n"; without it only at EOF."""
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                if i >= limit:
                    break
                line, self._buf = self._buf[: i + 1], self._buf[i + 1 :]
                return line
            if len(self._buf) > limit:
                break
            start = len(self._buf)
            if not self._more():
                line, self._buf = self._buf, b""
                return line
        raise exc("line too long", hint=_HINT_CORRUPT)

    def skip(self, n: int) -> None:
        """Drop n bytes that peek() returned."""
        self._buf = self._buf[n:]

    def read(self, n: int) -> bytes:
        if self._buf:
            out, self._buf = self._buf[:n], self._buf[n:]
            return out
        if self._eof:
            return b""
        data = self._src.read(n)
        if not data:
            self._eof = True
            return b""
        return data

    def read_full(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) == n or not data:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            data = self.read(n - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)


class _ArmorReader:
    """Strict decoder of the age ASCII armor (PEM, 64 columns, padded base64)."""

    def __init__(self, src: _BufReader) -> None:
        self._src = src
        self._started = False
        self._done = False
        self._unread = b""
        self._slow = 0

    def _line(self) -> bytes:
        line = self._src.readline(_ARMOR_MAX_WHITESPACE + 2, AgeArmorError)
        if not line:
            raise AgeArmorError("armored file is truncated: missing end line", hint=_HINT_CORRUPT)
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        return line

    def _start(self) -> None:
        skipped = 0
        while True:
            line = self._line()
            if line.strip(_WHITESPACE):
                break
            skipped += len(line) + 1
            if skipped > _ARMOR_MAX_WHITESPACE:
                raise AgeArmorError("too much leading whitespace before the armor")
        if line != _ARMOR_BEGIN:
            raise AgeArmorError(
                "input is not an age file: it starts with neither the age header "
                "nor '-----BEGIN AGE ENCRYPTED FILE-----'",
                hint="check that the file is an age-encrypted backup",
            )
        self._started = True

    def _finish(self) -> None:
        rest = b""
        while len(rest) <= _ARMOR_MAX_WHITESPACE:
            data = self._src.read(_ARMOR_MAX_WHITESPACE + 1 - len(rest))
            if not data:
                break
            rest += data
        if rest.strip(_WHITESPACE):
            raise AgeArmorError("data after the end of the armored file", hint=_HINT_CORRUPT)
        if len(rest) > _ARMOR_MAX_WHITESPACE:
            raise AgeArmorError("too much trailing whitespace after the armored file")
        self._done = True

    def _decode_line(self) -> bytes:
        if not self._started:
            self._start()
        line = self._line()
        if line == _ARMOR_END:
            self._finish()
            return b""
        if len(line) > _COLUMNS:
            raise AgeArmorError("armor line longer than 64 columns", hint=_HINT_CORRUPT)
        try:
            data = binascii.a2b_base64(line, strict_mode=True)
        except binascii.Error:
            raise AgeArmorError("invalid base64 in armor", hint=_HINT_CORRUPT) from None
        if not data or base64.b64encode(data) != line:
            raise AgeArmorError("invalid base64 in armor", hint=_HINT_CORRUPT)
        if len(data) < _BYTES_PER_LINE:
            if self._line() != _ARMOR_END:
                raise AgeArmorError(
                    "armor: short line not followed by the end line", hint=_HINT_CORRUPT
                )
            self._finish()
        return data

    def _decode_block(self) -> bytes:
        """Many full LF-terminated 64-column lines at once, else one line."""
        if not self._started:
            self._start()
        if self._slow > 0:
            self._slow -= 1
            return self._decode_line()
        blk = self._src.peek(_ARMOR_FAST_LINES * (_COLUMNS + 1))
        m = len(blk) // (_COLUMNS + 1)
        if m > 1:
            blk = blk[: m * (_COLUMNS + 1)]
            if blk[_COLUMNS :: _COLUMNS + 1] == b"\n" * m and blk.count(b"\n") == m:
                try:
                    data = binascii.a2b_base64(blk.replace(b"\n", b""), strict_mode=True)
                except binascii.Error:
                    data = b""
                # Full 64-column lines without padding are always canonical.
                if len(data) == m * _BYTES_PER_LINE:
                    self._src.skip(len(blk))
                    return data
        self._slow = 64  # near the end, or CRLF lines: go line by line for a while
        return self._decode_line()

    def read(self, n: int) -> bytes:
        parts = []
        while n > 0:
            if not self._unread:
                if self._done:
                    break
                self._unread = self._decode_block()
                continue
            part, self._unread = self._unread[:n], self._unread[n:]
            parts.append(part)
            n -= len(part)
        return b"".join(parts)


def _parse_header(src: _BufReader) -> tuple[list[Stanza], bytes, bytes]:
    """Returns (stanzas, header bytes covered by the MAC, MAC)."""

    def fail(msg: str) -> AgeHeaderError:
        return AgeHeaderError(f"invalid age header: {msg}", hint=_HINT_CORRUPT)

    raw = []
    total = 0

    def line() -> bytes:
        nonlocal total
        ln = src.readline(_MAX_LINE, AgeHeaderError)
        if not ln.endswith(b"\n"):
            raise fail("unexpected end of input")
        total += len(ln)
        if total > _MAX_HEADER:
            raise fail("header too large")
        raw.append(ln)
        return ln

    first = src.readline(_MAX_LINE, AgeHeaderError)
    if first != _MAGIC:
        if first.startswith(_MAGIC_PREFIX):
            raise AgeHeaderError(
                "unsupported age format version",
                hint="this file needs a newer age implementation",
            )
        raise fail("missing 'age-encryption.org/v1' line")
    raw.append(first)
    stanzas = []
    ln = line()
    while True:
        if ln.startswith(_FOOTER):
            mac_b64 = ln[len(_FOOTER) : -1]
            if not mac_b64.startswith(b" "):
                raise fail("malformed MAC line")
            try:
                mac = b64decode(mac_b64[1:])
            except ValueError:
                raise fail("malformed MAC") from None
            if len(mac) != 32:
                raise fail("MAC has the wrong size")
            raw[-1] = _FOOTER
            return stanzas, b"".join(raw), mac
        if not ln.startswith(_STANZA_PREFIX):
            raise fail("expected a stanza or the MAC line")
        args = ln[len(_STANZA_PREFIX) : -1].split(b" ")
        for a in args:
            if not a or any(c < 33 or c > 126 for c in a):
                raise fail("malformed stanza argument")
        body = []
        while True:
            ln = line()
            content = ln[:-1]
            if len(content) > _COLUMNS:
                raise fail("stanza body line longer than 64 columns")
            try:
                body.append(b64decode(content))
            except ValueError:
                raise fail("malformed stanza body") from None
            if len(content) < _COLUMNS:
                break
        dec = [a.decode("ascii") for a in args]
        stanzas.append(Stanza(dec[0], dec[1:], b"".join(body)))
        ln = line()


def _open_source(src) -> _BufReader:
    """Detect ASCII armor; return a reader of the binary age file."""
    buf = src if isinstance(src, _BufReader) else _BufReader(src)
    start = buf.peek(len(_MAGIC_PREFIX))
    if not start:
        raise AgeHeaderError("input is empty, not an age file", hint=_HINT_CORRUPT)
    if _MAGIC_PREFIX.startswith(start) or start.startswith(_MAGIC_PREFIX):
        return buf
    return _BufReader(_ArmorReader(buf))


def _header_mac(file_key: bytes, header: bytes) -> bytes:
    h = crypto_hmac.HMAC(_hkdf(file_key, b"", b"header"), hashes.SHA256())
    h.update(header)
    return h.finalize()


def header_recipients(src) -> list[Stanza]:
    """Parse only the header of an age file and return its stanzas (no key needed)."""
    stanzas, _, _ = _parse_header(_open_source(src))
    _check_scrypt_alone(stanzas)
    return stanzas


def _check_scrypt_alone(stanzas: list[Stanza]) -> None:
    if len(stanzas) > 1 and any(s.type == "scrypt" for s in stanzas):
        raise AgeHeaderError(
            "invalid age header: an scrypt stanza must be the only one", hint=_HINT_CORRUPT
        )


def _no_match(stanzas: list[Stanza], identities: list) -> AgeNoMatch:
    types = {s.type for s in stanzas}
    have_pass = any(isinstance(i, ScryptIdentity) for i in identities)
    have_key = any(not isinstance(i, ScryptIdentity) for i in identities)
    if types == {"scrypt"}:
        if have_pass:
            return AgeNoMatch(
                "wrong passphrase: it does not decrypt this backup",
                hint="pass the passphrase the backup was made with in --passphrase-file",
            )
        return AgeNoMatch(
            "this backup is encrypted with a passphrase, and no passphrase was given",
            hint="pass the passphrase with --passphrase-file",
        )
    if "X25519" in types and not have_key:
        return AgeNoMatch(
            "this backup is encrypted to public keys, and no identity was given",
            hint="pass the identity file that matches one of the backup's recipients "
            "with --identity",
        )
    return AgeNoMatch(
        "no identity matches any of the backup's recipients (wrong key or passphrase)",
        hint="pass the identity file that matches one of the backup's recipients with "
        "--identity, or the right --passphrase-file",
    )


# --------------------------------------------------------------------------- STREAM


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class EncryptWriter:
    """Streaming age encryption into ``dst`` (anything with ``write(bytes)``).

    The header is written at construction. ``close()`` writes the final chunk and does
    not close ``dst``; a ``with`` block closes only when it exits without an exception,
    so an aborted stream stays detectably truncated. Memory use is one 64 KiB chunk.
    """

    def __init__(self, dst, recipients: Iterable[Recipient]) -> None:
        recipients = list(recipients)
        if not recipients:
            raise AgeKeyError(
                "no recipients to encrypt to",
                hint="pass --recipient, --recipients-file or --passphrase-file",
            )
        file_key = os.urandom(_FILE_KEY_SIZE)
        stanzas = [st for r in recipients for st in r.wrap(file_key)]
        if len(stanzas) > 1 and any(s.type == "scrypt" for s in stanzas):
            raise CryptoError(
                "a passphrase cannot be combined with other recipients",
                hint="use either --passphrase-file or public-key recipients, not both",
            )
        header = _MAGIC + b"".join(st.encode() for st in stanzas) + _FOOTER
        mac = _header_mac(file_key, header)
        nonce = os.urandom(_NONCE_SIZE)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._dst = dst
        self._buf = bytearray()
        self._counter = 0
        self._closed = False
        self._write_all(header + b" " + b64encode(mac).encode("ascii") + b"\n" + nonce)

    def _seal(self, chunk, last: bool) -> None:
        self._write_all(self._aead.encrypt(_nonce(self._counter, last), chunk, None))
        self._counter += 1

    def _write_all(self, data: bytes) -> None:
        n = self._dst.write(data)
        if n is not None and n < len(data):  # a raw stream may write partially
            view = memoryview(data)[n:]
            while view:
                view = view[self._dst.write(view) :]

    def write(self, data) -> None:
        if self._closed:
            raise ValueError("write to a closed EncryptWriter")
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        if not len(mv):
            return
        buf = self._buf
        if buf:
            if len(buf) == _CHUNK:  # more data follows, so this chunk is not the last
                self._seal(buf, False)
                buf.clear()
            else:
                take = _CHUNK - len(buf)
                buf += mv[:take]
                mv = mv[take:]
                if not len(mv):
                    return
                self._seal(buf, False)
                buf.clear()
        # Whole chunks straight from the caller's buffer; keep the last one back.
        while len(mv) > _CHUNK:
            self._seal(mv[:_CHUNK], False)
            mv = mv[_CHUNK:]
        buf += mv

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._seal(self._buf, True)
        self._buf = bytearray()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> EncryptWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True


class DecryptReader:
    """Streaming age decryption of ``src`` (anything with ``read(n)``).

    The header is parsed and authenticated in the constructor, so a wrong key fails
    before any plaintext. ASCII armor is detected automatically. Only authenticated
    chunks are returned; a tampered or truncated payload raises AgePayloadError.
    """

    def __init__(self, src, identities: Iterable[Identity]) -> None:
        identities = list(identities)
        reader = _open_source(src)
        stanzas, header, mac = _parse_header(reader)
        _check_scrypt_alone(stanzas)
        if not identities:
            raise AgeKeyError(
                "no identity to decrypt with",
                hint="pass --identity or --passphrase-file",
            )
        file_key = None
        for ident in identities:
            file_key = ident.unwrap(stanzas)
            if file_key is not None:
                break
        if file_key is None:
            raise _no_match(stanzas, identities)
        if not hmac.compare_digest(_header_mac(file_key, header), mac):
            raise AgeHMACError(
                "age header MAC mismatch: the header was modified", hint=_HINT_CORRUPT
            )
        nonce = reader.read_full(_NONCE_SIZE)
        if len(nonce) != _NONCE_SIZE:
            raise AgeHeaderError("invalid age file: truncated payload nonce", hint=_HINT_CORRUPT)
        self.stanzas = stanzas
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._src = reader
        self._counter = 0
        self._chunk = b""
        self._off = 0
        self._last = False  # the last chunk has been decrypted
        self._eof = False  # ... and the end of input checked
        self._err: AgePayloadError | None = None

    def _fail(self, msg: str) -> AgePayloadError:
        self._err = AgePayloadError(msg, hint=_HINT_CORRUPT)
        return self._err

    def _next_chunk(self) -> bool:
        """Decrypt the next chunk into self._chunk; False at the (verified) end."""
        if self._err is not None:
            raise self._err
        if self._last:
            if not self._eof:
                if self._src.read(1):
                    raise self._fail("encrypted payload has trailing data after its end")
                self._eof = True
            return False
        enc = self._src.read_full(_ENC_CHUNK)
        n = len(enc)
        last = n < _ENC_CHUNK
        if n == 0:
            raise self._fail("encrypted payload is truncated (its final chunk is missing)")
        if last and self._counter and n == _TAG:
            raise self._fail("encrypted payload is malformed: empty final chunk")
        try:
            out = self._aead.decrypt(_nonce(self._counter, last), enc, None)
        except InvalidTag:
            out = None
        if out is None and not last:
            try:  # a full-size final chunk
                out = self._aead.decrypt(_nonce(self._counter, True), enc, None)
                last = True
            except InvalidTag:
                out = None
        if out is None:
            if last and n < _ENC_CHUNK:
                raise self._fail(
                    f"encrypted payload is truncated or modified (chunk {self._counter})"
                )
            raise self._fail(f"encrypted payload was modified (chunk {self._counter})")
        self._counter += 1
        self._last = last
        self._chunk = out
        self._off = 0
        return True

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (exactly ``n`` unless at the end); all if ``n < 0``."""
        if n is None or n < 0:
            parts = [self._chunk[self._off :]]
            self._chunk, self._off = b"", 0
            while self._next_chunk():
                parts.append(self._chunk)
            self._chunk = b""
            return b"".join(parts)
        if n == 0:
            return b""
        avail = len(self._chunk) - self._off
        if avail >= n:
            off = self._off
            self._off = off + n
            return self._chunk[off : off + n]
        parts = []
        want = n
        while True:
            if avail:
                piece = (
                    self._chunk
                    if (self._off == 0 and avail <= want)
                    else (self._chunk[self._off : self._off + want])
                )
                parts.append(piece)
                self._off += len(piece)
                want -= len(piece)
                if not want:
                    break
            if not self._next_chunk():
                break
            avail = len(self._chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readinto(self, b) -> int:
        """Fill ``b`` (exactly, unless at the end) without an intermediate copy."""
        view = memoryview(b).cast("B")
        want = len(view)
        pos = 0
        while pos < want:
            avail = len(self._chunk) - self._off
            if not avail:
                if not self._next_chunk():
                    break
                continue
            take = min(avail, want - pos)
            view[pos : pos + take] = memoryview(self._chunk)[self._off : self._off + take]
            self._off += take
            pos += take
        return pos

    def readable(self) -> bool:
        return True
