#!/usr/bin/env python3
"""Turn a backup in a volbak *dedup* repository into a tar stream, without volbak.

    volbak_extract.py REPO_DIR VOLUME@STAMP [-i IDENTITY_FILE | -p PASSPHRASE_FILE] > x.tar
    volbak_extract.py REPO_DIR --list

One file; needs only Python >= 3.11 and the PyPI packages cryptography, zstandard and
blake3. REPO_DIR is a local copy of the repository (for S3: `aws s3 sync` it first).
Every chunk is checked against its id; any damage stops with exit status 1.
The format is described in docs/format-dedup.md of volbak.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import io
import json
import struct
import sys
from pathlib import Path

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt


class Damaged(Exception):
    pass


def hkdf(ikm: bytes, salt: bytes, info: bytes, n: int = 32) -> bytes:
    return HKDF(hashes.SHA256(), n, salt, info).derive(ikm)


# -- age v1 (decryption only: X25519 identities, scrypt passphrases) -----------------------

_BECH = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def bech32_decode(s: str) -> bytes:
    s = s.lower()
    _, _, data = s.rpartition("1")
    vals = [_BECH.index(c) for c in data][:-6]  # checksum not verified: key files are local
    acc = bits = 0
    out = bytearray()
    for v in vals:
        acc = (acc << 5) | v
        bits += 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out)


def b64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def age_decrypt(data: bytes, identities: list, passphrase: bytes | None) -> bytes:
    f = io.BytesIO(data)
    if f.readline() != b"age-encryption.org/v1\n":
        raise Damaged("not an age file")
    stanzas = []
    while True:
        line = f.readline()
        if line.startswith(b"---"):
            mac_line = line
            break
        if not line.startswith(b"-> "):
            raise Damaged("bad age header")
        args = line[3:].decode().split()
        body = b""
        while True:
            bl = f.readline().rstrip(b"\n")
            body += b64(bl.decode())
            if len(bl) < 64:
                break
        stanzas.append((args, body))
    header = data[: f.tell() - len(mac_line)] + b"---"
    file_key = None
    for args, body in stanzas:
        try:
            if args[0] == "X25519":
                share = b64(args[1])
                for ident in identities:
                    pub = ident.public_key().public_bytes_raw()
                    shared = ident.exchange(X25519PublicKey.from_public_bytes(share))
                    key = hkdf(shared, share + pub, b"age-encryption.org/v1/X25519")
                    try:
                        file_key = ChaCha20Poly1305(key).decrypt(bytes(12), body, None)
                        break
                    except InvalidTag:
                        continue
            elif args[0] == "scrypt" and passphrase is not None:
                salt = b"age-encryption.org/v1/scrypt" + b64(args[1])
                key = Scrypt(salt, 32, 2 ** int(args[2]), 8, 1).derive(passphrase)
                file_key = ChaCha20Poly1305(key).decrypt(bytes(12), body, None)
        except InvalidTag:
            continue
        if file_key:
            break
    if file_key is None:
        sys.exit("volbak_extract: no identity or passphrase opens this repository")
    h = chmac.HMAC(hkdf(file_key, b"", b"header"), hashes.SHA256())
    h.update(header)
    if not hmac.compare_digest(h.finalize(), b64(mac_line[4:].strip().decode())):
        raise Damaged("age header MAC mismatch")
    nonce = f.read(16)
    aead = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))
    payload = f.read()
    out = bytearray()
    size = 65536 + 16
    chunks = [payload[o: o + size] for o in range(0, len(payload), size)] or [b""]
    for counter, chunk in enumerate(chunks):
        last = counter == len(chunks) - 1
        out += aead.decrypt(counter.to_bytes(11, "big") + (b"\1" if last else b"\0"), chunk, None)
    return bytes(out)


# -- volbak's own objects ------------------------------------------------------------------

def unseal(data: bytes, key: bytes, what: str) -> bytes:
    if data[:8] != b"VBSEAL01":
        raise Damaged(f"{what}: not a sealed object")
    aead = AESGCM(hkdf(key, data[8:24], b"volbak sealed object"))
    pos, counter, out = 24, 0, bytearray()
    while True:
        (n,) = struct.unpack_from(">I", data, pos)
        ct = data[pos + 4: pos + 4 + n]
        pos += 4 + n
        last = pos >= len(data)
        try:
            out += aead.decrypt(counter.to_bytes(11, "big") + (b"\1" if last else b"\0"), ct, None)
        except InvalidTag:
            raise Damaged(f"{what} fails authentication") from None
        counter += 1
        if last:
            return bytes(out)


def load_keys(repo: Path, cfg: dict, identities: list, passphrase: bytes | None):
    if not cfg.get("encryption"):
        k = cfg["keys"]
        return b64(k["chunk_id"]), b64(k["metadata"]), []
    if cfg["encryption"].get("passphrase"):
        ident = age_decrypt((repo / "_keys/passphrase.age").read_bytes(), [], passphrase)
        identities = [X25519PrivateKey.from_private_bytes(bech32_decode(ident.decode().strip()))]
    keys = json.loads(age_decrypt((repo / "_keys/repo.age").read_bytes(), identities, None))
    return b64(keys["chunk_id"]), b64(keys["metadata"]), identities


def load_index(repo: Path, meta: bytes, want: set[bytes]) -> dict[bytes, tuple]:
    files = {}
    for p in sorted((repo / "_index").iterdir()) if (repo / "_index").exists() else []:
        if p.name.startswith("."):
            continue
        body = unseal(p.read_bytes(), meta, f"index {p.name}")
        (n,) = struct.unpack_from(">I", body)
        files[f"_index/{p.name}"] = (json.loads(body[4: 4 + n]), body[4 + n:])
    gone = {s for head, _ in files.values() for s in head["supersedes"]}
    loc = {}
    for name, (head, recs) in files.items():
        if name in gone:
            continue
        for o in range(0, len(recs), 50):
            cid, pno, off, length, raw, k = struct.unpack_from(">32sIIIIH", recs, o)
            if cid in want and cid not in loc:
                loc[cid] = (head["packs"][pno]["name"], off, length, raw, k)
    return loc


def pack_keys(repo: Path, name: str, identities: list) -> list[bytes]:
    with open(repo / name, "rb") as f:
        head = f.read(12)
        if head[:8] != b"VBPACK01":
            raise Damaged(f"pack {name} has no header")
        body = f.read(struct.unpack(">I", head[8:])[0])
    (n,), pos, keys = struct.unpack_from(">H", body), 2, []
    for _ in range(n):
        _kid, kind, blen = struct.unpack_from(">16sBI", body, pos)
        pos += 21
        block = body[pos: pos + blen]
        pos += blen
        keys.append(block if kind == 0 else age_decrypt(block, identities, None))
    return keys


def extract(repo: Path, backup_id: str, identities: list, passphrase: bytes | None, out) -> None:
    cfg = json.loads((repo / "volbak-repo.json").read_bytes())
    id_key, meta, identities = load_keys(repo, cfg, identities, passphrase)
    volume, _, stamp = backup_id.rpartition("@")
    manifest = json.loads((repo / volume / f"{stamp}.manifest.json").read_bytes())
    st = manifest["storage"]
    raw_list = (repo / st["chunks"]).read_bytes()
    if blake3.blake3(raw_list).hexdigest() != st["chunks_blake3"]:
        raise Damaged("the chunk list does not match the manifest")
    chunk_list = unseal(raw_list, meta, "chunk list")
    ids = [struct.unpack_from(">32sI", chunk_list, o) for o in range(0, len(chunk_list), 36)]
    loc = load_index(repo, meta, {c for c, _ in ids})
    keys: dict[str, list[bytes]] = {}
    dctx = zstandard.ZstdDecompressor()
    for cid, raw in ids:
        if cid not in loc:
            raise Damaged("a chunk is in no index file")
        pack, off, length, _, k = loc[cid]
        if pack not in keys:
            keys[pack] = pack_keys(repo, pack, identities)
        with open(repo / pack, "rb") as f:
            f.seek(off)
            blob = f.read(length)
        try:
            body = AESGCM(keys[pack][k]).decrypt(blob[:12], blob[12:], cid)
        except InvalidTag:
            raise Damaged(f"a chunk in {pack} fails authentication") from None
        chunk = dctx.decompress(body[1:], max_output_size=raw) if body[0] == 1 else body[1:]
        if blake3.blake3(chunk, key=id_key).digest() != cid:
            raise Damaged(f"a chunk in {pack} does not match its id")
        out.write(chunk)
    out.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path)
    ap.add_argument("backup", nargs="?")
    ap.add_argument("--list", action="store_true", help="list the backups")
    ap.add_argument("-i", "--identity", action="append", default=[])
    ap.add_argument("-p", "--passphrase-file")
    a = ap.parse_args()
    if a.list or not a.backup:
        for m in sorted(a.repo.glob("*/*.manifest.json")):
            print(f"{m.parent.name}@{m.name.split('.')[0]}")
        return 0
    idents = [X25519PrivateKey.from_private_bytes(bech32_decode(line.strip()))
              for f in a.identity for line in Path(f).read_text().splitlines()
              if line.startswith("AGE-SECRET-KEY-1")]
    phrase = None
    if a.passphrase_file:  # the first line, as volbak reads it
        phrase = Path(a.passphrase_file).read_bytes().split(b"\n", 1)[0].removesuffix(b"\r")
    try:
        extract(a.repo, a.backup, idents, phrase, sys.stdout.buffer)
    except (Damaged, OSError, KeyError, ValueError) as e:
        print(f"volbak_extract: {a.backup}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
