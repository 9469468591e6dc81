"""The repository config object, the keys of a dedup repository, and the host key file.

Keys (each 32 random bytes, made by ``init``):
- chunk-id key: keys BLAKE3, so a chunk's id says nothing about its content to anyone
  without the key;
- metadata key: seals index files, chunk lists and GC plans (crypto.SealedWriter).

Who holds what:
- the backup host: the *host key file* (0600) with both keys and the age recipients.
  With it the host deduplicates, writes packs (each pack's content key is wrapped to
  the recipients), reads the index and chunk lists, prunes; it cannot decrypt a pack.
- the repository: ``_keys/repo.age``, both keys as an age file to the recipients, so the
  holder of an identity can restore on a new machine with nothing but the repository;
  for a passphrase repository also ``_keys/passphrase.age``, a generated X25519 identity
  encrypted with the passphrase (packs are wrapped to its public key, so the backup host
  needs no passphrase either).
- an unencrypted repository keeps both keys in clear in its config object.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import os
import secrets
from pathlib import Path
from typing import Any

from ...backend import Backend
from ...errors import CryptoError, IntegrityError, NotFoundError, UsageError
from ...util.host import state_dir

CONFIG = "volbak-repo.json"
REPO_KEYS = "_keys/repo.age"
PASSPHRASE_IDENTITY = "_keys/passphrase.age"
HOST_KEY_ENV = "VOLBAK_HOST_KEY"

# Measured (scripts/bench_dedup.py, docs/format-dedup.md "Chunking"): 32 KiB blocks in big
# files' data keep a second backup after 1% scattered change under 5% of the first.
CHUNK_MIN, CHUNK_AVG, CHUNK_MAX = 8 * 1024, 32 * 1024, 128 * 1024
CHUNK_ALGORITHM = "fastcdc+tar+blocks"
ALGORITHMS = ("fastcdc+tar", "fastcdc+tar+blocks", "fastcdc")


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


@dataclasses.dataclass
class Keys:
    chunk_id: bytes
    metadata: bytes
    recipients: list[Any]  # age recipients packs are wrapped to; empty = unencrypted


@dataclasses.dataclass
class RepoConfig:
    id: str
    created: str
    chunker: dict[str, Any]
    encryption: dict[str, Any] | None  # {"format", "recipients", "passphrase"}
    keys: dict[str, str] | None = None  # unencrypted repositories only
    format: str = "dedup"
    version: int = 2

    def to_json(self) -> bytes:
        d = {"volbak_repository": self.version, "format": self.format, "id": self.id,
             "created": self.created, "chunker": self.chunker,
             "encryption": self.encryption}
        if self.keys:
            d["keys"] = self.keys
        return json.dumps(d, indent=2, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> RepoConfig:
        try:
            d = json.loads(raw)
            if d.get("format") not in ("dedup", "archive"):
                raise ValueError(f"unknown format {d.get('format')!r}")
            if int(d.get("volbak_repository", 0)) > 2:
                raise ValueError("made by a newer volbak")
            return cls(id=str(d.get("id", "")), created=str(d.get("created", "")),
                       chunker=dict(d.get("chunker") or {}), encryption=d.get("encryption"),
                       keys=d.get("keys"), format=d["format"],
                       version=int(d.get("volbak_repository", 2)))
        except (ValueError, TypeError, AttributeError) as e:
            raise IntegrityError(f"repository config {where} is unreadable ({e})",
                                 hint="upgrade volbak, or check the repository location") from None

    @property
    def encrypted(self) -> bool:
        return bool(self.encryption)

    def plain_keys(self) -> Keys:
        k = self.keys or {}
        return Keys(_unb64(k["chunk_id"]), _unb64(k["metadata"]), [])


def load_config(backend: Backend) -> RepoConfig | None:
    try:
        raw = backend.get_bytes(CONFIG)
    except NotFoundError:
        return None
    return RepoConfig.from_json(raw, f"{CONFIG} in {backend.url}")


# -- the host key file -------------------------------------------------------------------

def host_key_path(repo_id: str) -> Path:
    env = os.environ.get(HOST_KEY_ENV)
    return Path(env) if env else state_dir() / "host-keys" / f"{repo_id}.json"


def write_host_key(config: RepoConfig, keys: Keys, url: str) -> Path:
    path = host_key_path(config.id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    body = json.dumps({"volbak_host_key": 1, "repository": config.id, "url": url,
                       "chunk_id": _b64(keys.chunk_id), "metadata": _b64(keys.metadata),
                       "recipients": [str(r) for r in keys.recipients]}, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, body.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_host_key(config: RepoConfig, url: str) -> Keys:
    from ...crypto.age import X25519Recipient

    path = host_key_path(config.id)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(
            f"repository {url} is encrypted and this host has no key file for it: {path}",
            hint=f"the host key file is written by 'volbak init'; copy it here from the host "
            f"that ran init (or set {HOST_KEY_ENV}), or write it with "
            "'volbak init --host-key -i IDENTITY' (or --passphrase-file)") from None
    except (OSError, ValueError) as e:
        raise CryptoError(f"cannot read the host key file {path}: {e}",
                          hint=f"check the file, or point {HOST_KEY_ENV} at the right one"
                          ) from None
    try:
        if d["repository"] != config.id:
            raise ValueError(f"it belongs to repository {d['repository']}, not {config.id}")
        return Keys(_unb64(d["chunk_id"]), _unb64(d["metadata"]),
                    [X25519Recipient.parse(r) for r in d["recipients"]])
    except (KeyError, TypeError, ValueError) as e:
        raise CryptoError(f"host key file {path} is unusable: {e}",
                          hint=f"point {HOST_KEY_ENV} at this repository's host key file") from None


# -- init and unlocking -----------------------------------------------------------------

def _age_encrypt(data: bytes, recipients: list[Any]) -> bytes:
    import io

    from ...crypto.age import EncryptWriter

    out = io.BytesIO()
    w = EncryptWriter(out, recipients)
    w.write(data)
    w.close()
    return out.getvalue()


def _age_decrypt(data: bytes, identities: list[Any]) -> bytes:
    import io

    from ...crypto.age import DecryptReader

    return DecryptReader(io.BytesIO(data), identities).read()


def _keys_json(keys: Keys) -> bytes:
    return json.dumps({"chunk_id": _b64(keys.chunk_id), "metadata": _b64(keys.metadata)}).encode()


def init_repository(backend: Backend, recipients: list[Any],
                    chunker: dict[str, Any] | None = None
                    ) -> tuple[RepoConfig, Keys, Path | None]:
    """Create a dedup repository in an empty location. Writes key objects, the host key
    file, and the config object last (its presence is what makes the repository)."""
    from ...crypto.age import ScryptRecipient, X25519Identity

    if load_config(backend) is not None or next(iter(backend.list()), None) is not None:
        raise UsageError(f"{backend.url} already holds a repository (or other files)",
                         hint="'volbak init' only creates new repositories; pick an empty "
                         "location with --repo")
    keys = Keys(secrets.token_bytes(32), secrets.token_bytes(32), [])
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    chunker = {"algorithm": CHUNK_ALGORITHM, "min": CHUNK_MIN, "avg": CHUNK_AVG,
               "max": CHUNK_MAX, **(chunker or {})}
    if chunker["algorithm"] not in ALGORITHMS or not \
            0 < chunker["min"] <= chunker["avg"] <= chunker["max"]:
        raise UsageError(f"bad chunker settings {chunker}")
    config = RepoConfig(secrets.token_hex(16), now, chunker, None)
    passphrase = [r for r in recipients if isinstance(r, ScryptRecipient)]
    if not recipients:
        config.keys = {"chunk_id": _b64(keys.chunk_id), "metadata": _b64(keys.metadata)}
        backend.put_bytes(CONFIG, config.to_json())
        return config, keys, None
    if passphrase:
        ident = X25519Identity.generate()
        backend.put_bytes(PASSPHRASE_IDENTITY, _age_encrypt(str(ident).encode(), passphrase))
        keys.recipients = [ident.recipient()]
    else:
        keys.recipients = list(recipients)
    config.encryption = {"format": "age-v1", "passphrase": bool(passphrase),
                         "recipients": [] if passphrase else [str(r) for r in recipients]}
    backend.put_bytes(REPO_KEYS, _age_encrypt(_keys_json(keys), keys.recipients))
    path = write_host_key(config, keys, backend.url)
    backend.put_bytes(CONFIG, config.to_json())
    return config, keys, path


def unlock(backend: Backend, config: RepoConfig, identities: list[Any]) -> tuple[Keys, list[Any]]:
    """Keys and usable identities from an age identity or passphrase (no host key file).
    A wrong or missing identity raises CryptoError (exit 7)."""
    from ...crypto.age import AgeKeyError, X25519Identity, X25519Recipient

    if not config.encrypted:
        return config.plain_keys(), []
    idents = list(identities)
    if not idents:
        raise AgeKeyError(f"repository {backend.url} is encrypted and no key was given",
                          hint="pass --identity FILE or --passphrase-file FILE")
    if config.encryption and config.encryption.get("passphrase"):
        try:
            raw = backend.get_bytes(PASSPHRASE_IDENTITY)
        except NotFoundError:
            raise IntegrityError(f"{PASSPHRASE_IDENTITY} is missing from {backend.url}",
                                 hint="the repository was damaged") from None
        idents = [X25519Identity.parse(_age_decrypt(raw, idents).decode().strip()), *idents]
    try:
        raw = backend.get_bytes(REPO_KEYS)
    except NotFoundError:
        raise IntegrityError(f"{REPO_KEYS} is missing from {backend.url}",
                             hint="the repository was damaged") from None
    d = json.loads(_age_decrypt(raw, idents))
    recips = [X25519Recipient.parse(r) for r in (config.encryption or {}).get("recipients", [])]
    if not recips:
        recips = [i.recipient() for i in idents if isinstance(i, X25519Identity)][:1]
    return Keys(_unb64(d["chunk_id"]), _unb64(d["metadata"]), recips), idents
