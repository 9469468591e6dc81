"""age v1: the C2SP testkit vectors, round trips, keys and key files."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import zlib
from pathlib import Path

import pytest

from volbak.crypto import age
from volbak.errors import CryptoError, TargetExistsError

TESTKIT = Path(__file__).parent / "data" / "age-testkit"

EXPECT = {
    "header failure": age.AgeHeaderError,
    "HMAC failure": age.AgeHMACError,
    "payload failure": age.AgePayloadError,
    "no match": age.AgeNoMatch,
    "armor failure": age.AgeArmorError,
}


def _load_vector(path: Path):
    data = path.read_bytes()
    head, _, body = data.partition(b"\n\n")
    meta: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        meta.setdefault(key, []).append(value)
    if meta.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return meta, body


VECTORS = sorted(p.name for p in TESTKIT.iterdir() if p.name != "README.md")


@pytest.mark.parametrize("name", VECTORS)
def test_testkit_vector(name):
    meta, body = _load_vector(TESTKIT / name)
    identities: list = []
    pq = [s for s in meta.get("identity", []) if s.startswith("AGE-SECRET-KEY-PQ-")]
    for s in meta.get("identity", []):
        if s not in pq:
            identities.append(age.X25519Identity.parse(s))
    for p in meta.get("passphrase", []):
        identities.append(age.ScryptIdentity(p.encode()))
    if pq and not identities:
        pytest.skip("post-quantum mlkem768x25519 recipients are not implemented in volbak")
    if not identities:
        identities.append(age.X25519Identity.generate())
    expect = meta["expect"][0]
    released = hashlib.sha256()
    if expect == "success":
        r = age.DecryptReader(io.BytesIO(body), identities)
        while block := r.read(64 * 1024):
            released.update(block)
        assert released.hexdigest() == meta["payload"][0]
        return
    with pytest.raises(EXPECT[expect]) as ei:
        r = age.DecryptReader(io.BytesIO(body), identities)
        while block := r.read(64 * 1024):
            released.update(block)
    # Whatever plaintext was released before the error must match the payload hash.
    if "payload" in meta:
        assert released.hexdigest() == meta["payload"][0]
    assert isinstance(ei.value, CryptoError)
    assert ei.value.exit_code == 7
    assert "\n" not in ei.value.message


def test_testkit_has_vectors_and_readme():
    assert (TESTKIT / "README.md").is_file()
    assert len(VECTORS) > 100


# --------------------------------------------------------------------------- round trips


def _encrypt(data: bytes, recipients, write_size: int | None = None) -> bytes:
    out = io.BytesIO()
    w = age.EncryptWriter(out, recipients)
    if write_size is None:
        w.write(data)
    else:
        for i in range(0, len(data), write_size):
            w.write(data[i : i + write_size])
    w.close()
    return out.getvalue()


def _decrypt(blob: bytes, identities, read_size: int = -1) -> bytes:
    r = age.DecryptReader(io.BytesIO(blob), identities)
    if read_size < 0:
        return r.read()
    parts = []
    while block := r.read(read_size):
        parts.append(block)
    return b"".join(parts)


@pytest.fixture(scope="module")
def key():
    return age.X25519Identity.generate()


SIZES = [0, 1, 65535, 65536, 65537, 2 * 65536, 2 * 65536 + 1, 3 * 1024 * 1024 + 17]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_sizes(key, size):
    data = os.urandom(size)
    blob = _encrypt(data, [key.recipient()])
    chunks = max(1, -(-size // 65536))
    header = blob.split(b"\n--- ")[0]
    assert len(blob) == len(header) + len("\n--- ") + 43 + 1 + 16 + size + 16 * chunks
    assert _decrypt(blob, [key]) == data
    assert _decrypt(blob, [key], 4096) == data
    assert _decrypt(blob, [key], 100_000) == data


@pytest.mark.parametrize("write_size", [1, 7, 4096, 65535, 65536, 65537, 8 * 1024 * 1024])
def test_round_trip_write_sizes(key, write_size):
    data = os.urandom(200_003 if write_size < 4096 else 3 * 65536)
    blob = _encrypt(data, [key.recipient()], write_size)
    assert _decrypt(blob, [key]) == data
    assert _decrypt(blob, [key], 1 if write_size == 1 else 65536) == data
    # The chunking does not depend on how the writes were split.
    assert len(blob) == len(_encrypt(data, [key.recipient()]))


def test_writes_of_memoryview_and_bytearray(key):
    data = os.urandom(70_000)
    out = io.BytesIO()
    w = age.EncryptWriter(out, [key.recipient()])
    w.write(bytearray(data[:10]))
    w.write(memoryview(data)[10:])
    w.write(b"")
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError):
        w.write(b"x")
    assert _decrypt(out.getvalue(), [key]) == data


def test_context_manager_does_not_finalize_on_error(key):
    out = io.BytesIO()
    with pytest.raises(RuntimeError), age.EncryptWriter(out, [key.recipient()]) as w:
        w.write(b"partial")
        raise RuntimeError
    with pytest.raises(age.AgePayloadError, match="truncated"):
        _decrypt(out.getvalue(), [key])


def test_many_recipients():
    keys = [age.X25519Identity.generate() for _ in range(20)]
    data = os.urandom(100_000)
    blob = _encrypt(data, [k.recipient() for k in keys])
    assert blob.count(b"-> X25519 ") == 20
    for k in (keys[0], keys[7], keys[-1]):
        assert _decrypt(blob, [k]) == data
    other = age.X25519Identity.generate()
    assert _decrypt(blob, [other, keys[3]]) == data
    with pytest.raises(age.AgeNoMatch) as ei:
        _decrypt(blob, [other])
    assert "--identity" in ei.value.hint


def test_scrypt_round_trip():
    data = os.urandom(70_000)
    blob = _encrypt(data, [age.ScryptRecipient(b"correct horse", work_factor=10)])
    assert b"-> scrypt " in blob
    assert _decrypt(blob, [age.ScryptIdentity(b"correct horse")]) == data
    with pytest.raises(age.AgeNoMatch, match="passphrase") as ei:
        _decrypt(blob, [age.ScryptIdentity(b"wrong")])
    assert "--passphrase-file" in ei.value.hint
    with pytest.raises(age.AgeNoMatch):
        _decrypt(blob, [age.X25519Identity.generate()])


def test_scrypt_work_factor_cap():
    blob = _encrypt(b"x", [age.ScryptRecipient(b"pw", work_factor=12)])
    with pytest.raises(age.AgeHeaderError, match="exceeds the maximum of 11"):
        _decrypt(blob, [age.ScryptIdentity(b"pw", max_work_factor=11)])
    assert _decrypt(blob, [age.ScryptIdentity(b"pw", max_work_factor=12)]) == b"x"


def test_scrypt_must_be_alone(key):
    with pytest.raises(CryptoError, match="cannot be combined"):
        _encrypt(b"x", [age.ScryptRecipient(b"pw", work_factor=10), key.recipient()])


def test_wrong_key_fails_before_plaintext(key):
    blob = _encrypt(os.urandom(1000), [key.recipient()])
    with pytest.raises(age.AgeNoMatch):
        age.DecryptReader(io.BytesIO(blob), [age.X25519Identity.generate()])


def test_tampered_payload_and_header(key):
    data = os.urandom(3 * 65536 + 5)
    blob = bytearray(_encrypt(data, [key.recipient()]))
    hdr_end = blob.index(b"\n--- ") + 1 + 48 + 16
    bad = bytearray(blob)
    bad[hdr_end + 65552 + 3] ^= 1  # second chunk
    r = age.DecryptReader(io.BytesIO(bytes(bad)), [key])
    assert r.read(65536) == data[:65536]
    with pytest.raises(age.AgePayloadError, match="chunk 1"):
        r.read(65536)
    with pytest.raises(age.AgePayloadError):  # the error is sticky
        r.read(1)
    # Truncated at a chunk boundary: the missing last-chunk flag is detected.
    with pytest.raises(age.AgePayloadError, match="truncated"):
        _decrypt(bytes(blob[: hdr_end + 2 * 65552]), [key])
    with pytest.raises(age.AgePayloadError):
        _decrypt(bytes(blob[:-1]), [key])
    with pytest.raises(age.AgePayloadError, match="chunk 3"):
        _decrypt(bytes(blob) + b"x", [key])
    # After a full-size final chunk, extra bytes are trailing data.
    full = _encrypt(data[:65536], [key.recipient()])
    r = age.DecryptReader(io.BytesIO(full + b"x"), [key])
    assert r.read(65536) == data[:65536]
    with pytest.raises(age.AgePayloadError, match="trailing"):
        r.read(65536)
    # A flipped bit in a stanza body: no match; in the MAC: HMAC failure.
    mac_at = blob.index(b"\n--- ") + 5
    bad = bytearray(blob)
    bad[mac_at] = ord("A") if bad[mac_at] != ord("A") else ord("B")
    with pytest.raises(age.AgeHMACError):
        _decrypt(bytes(bad), [key])


class _Trickle(io.RawIOBase):
    """A source that returns at most 1000 bytes per read (like a socket)."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)

    def read(self, n=-1):
        return self._f.read(min(n, 1000) if n >= 0 else 1000)


def test_short_reads_from_source(key):
    data = os.urandom(200_000)
    blob = _encrypt(data, [key.recipient()])
    r = age.DecryptReader(_Trickle(blob), [key])
    assert r.read() == data


def _armor(blob: bytes, eol: str = "\n") -> bytes:
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    text = ["-----BEGIN AGE ENCRYPTED FILE-----", *lines, "-----END AGE ENCRYPTED FILE-----"]
    return (eol.join(text) + eol).encode()


@pytest.mark.parametrize("size", [1000, 48 * 1024, 300_001])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_armored_input(key, size, eol):
    data = os.urandom(size)
    blob = _encrypt(data, [key.recipient()])
    armored = _armor(blob, eol)
    assert _decrypt(armored, [key]) == data
    assert _decrypt(b" \n\t\n" + armored + b"\n \n", [key], 4096) == data
    # A corrupted line deep inside the armor is an armor error, not garbage plaintext.
    pos = len(armored) * 3 // 4
    pos = armored.index(b"\n", pos) - 3
    bad = armored[:pos] + b"*" + armored[pos + 1 :]
    with pytest.raises(age.AgeArmorError):
        _decrypt(bad, [key])


def test_not_an_age_file(key):
    with pytest.raises(age.AgeArmorError, match="not an age file"):
        _decrypt(b"garbage that is not age\n", [key])
    with pytest.raises(age.AgeHeaderError, match="empty"):
        _decrypt(b"", [key])


def test_header_recipients(key):
    blob = _encrypt(b"x", [key.recipient(), age.X25519Identity.generate().recipient()])
    stanzas = age.header_recipients(io.BytesIO(blob))
    assert [s.type for s in stanzas] == ["X25519", "X25519"]


# --------------------------------------------------------------------------- keys


def test_bech32_round_trip():
    for _ in range(20):
        raw = os.urandom(32)
        s = age.bech32_encode("age", raw)
        assert age.bech32_decode(s) == ("age", raw)
        assert age.bech32_decode(s.upper()) == ("age", raw)
    with pytest.raises(ValueError, match="checksum"):
        age.bech32_decode(s[:-1] + ("q" if s[-1] != "q" else "p"))
    with pytest.raises(ValueError, match="mixed"):
        age.bech32_decode(s[:5] + s[5:].upper())


def test_bech32_known_vectors():
    # BIP 173 valid test strings.
    for s in ["A12UEL5L", "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw"]:
        age.bech32_decode(s)
    # Key pair from the testkit / age documentation.
    ident = age.X25519Identity.parse(
        "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX"
    )
    assert str(ident.recipient()) == (
        "age1zvkyg2lqzraa2lnjvqej32nkuu0ues2s82hzrye869xeexvn73equnujwj"
    )


def test_key_round_trip(key):
    s = str(key)
    assert s.startswith("AGE-SECRET-KEY-1") and s.isupper()
    again = age.X25519Identity.parse(s)
    assert str(again) == s
    r = str(key.recipient())
    assert r.startswith("age1") and len(r) == 62
    assert age.X25519Recipient.parse(r) == key.recipient()
    assert s not in repr(key)


@pytest.mark.parametrize(
    "bad",
    ["", "age1", "age1qqqqqqqq", "ssh-ed25519 AAAA", "age1pq1abcdefg", "AGE-SECRET-KEY-1XYZ"],
)
def test_bad_recipient(bad):
    with pytest.raises(age.AgeKeyError):
        age.X25519Recipient.parse(bad)


def test_identity_parse_error_hides_secret(key):
    s = str(key)
    bad = s[:-2] + ("Q" if s[-2] != "Q" else "P") + s[-1]
    with pytest.raises(age.AgeKeyError) as ei:
        age.X25519Identity.parse(bad)
    assert bad not in str(ei.value) and bad[16:30] not in str(ei.value)


def test_parse_recipients_file(key):
    other = age.X25519Identity.generate().recipient()
    lines = ["# team keys", "", f"{key.recipient()}", f"  {other}  \n", "# end"]
    assert age.parse_recipients(lines) == [key.recipient(), other]
    with pytest.raises(age.AgeKeyError, match="line 3"):
        age.parse_recipients(["# x", "", "age1bogus"])


def test_identity_file_mode_and_excl(tmp_path, key):
    path = tmp_path / "key.txt"
    age.write_identity_file(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("# created: ")
    assert f"# public key: {key.recipient()}\n" in text
    assert text.endswith(f"{key}\n")
    [loaded] = age.load_identity_file(path)
    assert str(loaded) == str(key)
    with pytest.raises(TargetExistsError, match="already exists") as ei:
        age.write_identity_file(path, age.X25519Identity.generate())
    assert ei.value.hint
    assert path.read_text() == text  # untouched


def test_identity_file_errors(tmp_path, key):
    with pytest.raises(age.AgeKeyError, match="no such file"):
        age.load_identity_file(tmp_path / "missing")
    p = tmp_path / "empty"
    p.write_text("# nothing\n\n")
    with pytest.raises(age.AgeKeyError, match="no identities"):
        age.load_identity_file(p)
    p = tmp_path / "bad"
    secret = str(key)
    p.write_text(f"# ok\n{secret}\n{secret[:-1]}\n")
    with pytest.raises(age.AgeKeyError, match="line 3") as ei:
        age.load_identity_file(p)
    assert secret[:-1] not in str(ei.value)
    p = tmp_path / "two"
    other = age.X25519Identity.generate()
    p.write_text(f"{key}\r\n\r\n{other}\n")
    assert [str(i) for i in age.load_identity_file(p)] == [str(key), str(other)]


def test_read_passphrase_file(tmp_path):
    p = tmp_path / "pw"
    p.write_bytes(b"s3cret pass\nsecond line\n")
    assert age.read_passphrase_file(p) == b"s3cret pass"
    p.write_bytes(b"crlf\r\n")
    assert age.read_passphrase_file(p) == b"crlf"
    p.write_bytes(b"no newline")
    assert age.read_passphrase_file(p) == b"no newline"
    p.write_bytes(b"\nlater")
    with pytest.raises(age.AgeKeyError, match="empty") as ei:
        age.read_passphrase_file(p)
    assert "--passphrase-file" in ei.value.hint
    with pytest.raises(age.AgeKeyError):
        age.read_passphrase_file(tmp_path / "missing")


def test_canonical_base64():
    assert age.b64decode(age.b64encode(b"\x00\xff\x10")) == b"\x00\xff\x10"
    for bad in ["AA==", "AB", "A", "A\n", "A B", "AAA=", "AAB"]:
        with pytest.raises(ValueError):
            age.b64decode(bad)


def test_readinto(key):
    data = os.urandom(3 * 65536 + 123)
    blob = _encrypt(data, [key.recipient()])
    r = age.DecryptReader(io.BytesIO(blob), [key])
    buf = bytearray(100_000)
    got = bytearray()
    while n := r.readinto(buf):
        got += buf[:n]
    assert got == data


class _PartialWriter:
    """A raw sink that accepts at most 1000 bytes per write()."""

    def __init__(self):
        self.data = bytearray()

    def write(self, b):
        b = bytes(b[:1000])
        self.data += b
        return len(b)


def test_partial_writes_to_destination(key):
    data = os.urandom(150_000)
    sink = _PartialWriter()
    w = age.EncryptWriter(sink, [key.recipient()])
    w.write(data)
    w.close()
    assert _decrypt(bytes(sink.data), [key]) == data
