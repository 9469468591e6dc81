"""Interoperability of volbak.age with the reference ``age`` / ``age-keygen`` CLIs."""

from __future__ import annotations

import io
import os
import pty
import select
import shutil
import subprocess
import time

import pytest

from volbak.crypto import age

pytestmark = pytest.mark.skipif(
    shutil.which("age") is None or shutil.which("age-keygen") is None,
    reason="the 'age' and 'age-keygen' CLIs are not on PATH (Debian package 'age')",
)

SIZE = 5 * 1024 * 1024 + 12345  # several MiB, not a multiple of the 64 KiB chunk


@pytest.fixture(scope="module")
def payload() -> bytes:
    return os.urandom(SIZE)


def _encrypt(data: bytes, recipients) -> bytes:
    out = io.BytesIO()
    w = age.EncryptWriter(out, recipients)
    for i in range(0, len(data), 1 << 20):
        w.write(data[i : i + (1 << 20)])
    w.close()
    return out.getvalue()


def _decrypt(blob: bytes, identities) -> bytes:
    r = age.DecryptReader(io.BytesIO(blob), identities)
    parts = []
    while block := r.read(1 << 20):
        parts.append(block)
    return b"".join(parts)


def _age(*args: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(["age", *args], input=stdin, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _with_tty(argv: list[str], passphrase: str, timeout: float = 120) -> tuple[int, str]:
    """Run argv with a pty as its controlling terminal; answer every passphrase prompt.

    ``age -p`` and ``age -d`` on a passphrase file read the passphrase from /dev/tty
    only, so a pipe on stdin does not work.
    """
    pid, fd = pty.fork()
    if pid == 0:  # child
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    output = b""
    answered = 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            output += data
            prompts = output.lower().count(b"passphrase")
            while answered < prompts:
                answered += 1
                try:
                    os.write(fd, passphrase.encode() + b"\n")
                except OSError:
                    break
        else:
            os.kill(pid, 9)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_volbak_encrypt_age_decrypt(tmp_path, payload):
    ident = age.X25519Identity.generate()
    keyfile = tmp_path / "key.txt"
    age.write_identity_file(keyfile, ident)
    (tmp_path / "enc.age").write_bytes(_encrypt(payload, [ident.recipient()]))
    out = _age("-d", "-i", str(keyfile), str(tmp_path / "enc.age"))
    assert out == payload


def test_age_encrypt_volbak_decrypt(tmp_path, payload):
    ident = age.X25519Identity.generate()
    blob = _age("-r", str(ident.recipient()), stdin=payload)
    assert _decrypt(blob, [ident]) == payload


def test_age_armored_volbak_decrypt(payload):
    ident = age.X25519Identity.generate()
    data = payload[: 1 << 20]
    blob = _age("-a", "-r", str(ident.recipient()), stdin=data)
    assert blob.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    assert _decrypt(blob, [ident]) == data


def test_multiple_recipients_both_ways(tmp_path, payload):
    ours = [age.X25519Identity.generate() for _ in range(3)]
    rfile = tmp_path / "recipients.txt"
    rfile.write_text("# team\n" + "".join(f"{i.recipient()}\n" for i in ours))
    blob = _age("-R", str(rfile), stdin=payload)
    assert _decrypt(blob, [ours[2]]) == payload
    recipients = age.parse_recipients(rfile.read_text().splitlines())
    (tmp_path / "enc.age").write_bytes(_encrypt(payload, recipients))
    keyfile = tmp_path / "k1.txt"
    age.write_identity_file(keyfile, ours[1])
    assert _age("-d", "-i", str(keyfile), str(tmp_path / "enc.age")) == payload


def test_age_keygen_key_used_by_volbak(tmp_path, payload):
    keyfile = tmp_path / "agekey.txt"
    subprocess.run(["age-keygen", "-o", str(keyfile)], check=True, capture_output=True)
    [ident] = age.load_identity_file(keyfile)
    pub = subprocess.run(
        ["age-keygen", "-y", str(keyfile)], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert str(ident.recipient()) == pub
    assert age.parse_recipients([pub]) == [ident.recipient()]
    # volbak encrypts to the age-keygen key; age decrypts.
    (tmp_path / "enc.age").write_bytes(_encrypt(payload, [age.X25519Recipient.parse(pub)]))
    assert _age("-d", "-i", str(keyfile), str(tmp_path / "enc.age")) == payload
    # age encrypts to it; volbak decrypts with the key file.
    blob = _age("-r", pub, stdin=payload)
    assert _decrypt(blob, age.load_identity_file(keyfile)) == payload


def test_volbak_keygen_key_used_by_age(tmp_path, payload):
    ident = age.X25519Identity.generate()
    keyfile = tmp_path / "ourkey.txt"
    age.write_identity_file(keyfile, ident)
    pub = subprocess.run(
        ["age-keygen", "-y", str(keyfile)], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert pub == str(ident.recipient())
    blob = _age("-e", "-i", str(keyfile), stdin=payload)  # age encrypts to the key file
    assert _decrypt(blob, age.load_identity_file(keyfile)) == payload


def test_wrong_key_from_age_is_no_match(payload):
    blob = _age("-r", str(age.X25519Identity.generate().recipient()), stdin=b"secret")
    with pytest.raises(age.AgeNoMatch):
        _decrypt(blob, [age.X25519Identity.generate()])


def test_passphrase_volbak_encrypt_age_decrypt(tmp_path, payload):
    pw = "correct horse battery staple"
    enc = tmp_path / "enc.age"
    enc.write_bytes(_encrypt(payload, [age.ScryptRecipient(pw.encode())]))
    out = tmp_path / "out.bin"
    code, transcript = _with_tty(["age", "-d", "-o", str(out), str(enc)], pw)
    assert code == 0, transcript
    assert out.read_bytes() == payload
    # A wrong passphrase is refused by age too.
    code, _ = _with_tty(["age", "-d", "-o", str(tmp_path / "bad.bin"), str(enc)], "wrong")
    assert code != 0


def test_passphrase_age_encrypt_volbak_decrypt(tmp_path, payload):
    pw = "hunter2 hunter2"
    src = tmp_path / "in.bin"
    src.write_bytes(payload)
    enc = tmp_path / "enc.age"
    code, transcript = _with_tty(["age", "-p", "-o", str(enc), str(src)], pw)
    assert code == 0, transcript
    blob = enc.read_bytes()
    assert b"\n-> scrypt " in blob
    pwfile = tmp_path / "pw.txt"
    pwfile.write_text(pw + "\n")
    assert _decrypt(blob, [age.ScryptIdentity(age.read_passphrase_file(pwfile))]) == payload
    with pytest.raises(age.AgeNoMatch):
        _decrypt(blob, [age.ScryptIdentity(b"wrong")])
