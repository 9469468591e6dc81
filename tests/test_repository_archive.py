"""The "archive" repository format through the Repository API on a local directory
(volbak.repository, volbak.repository.archive). No Docker engine needed."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import blake3
import pytest

from volbak.crypto.age import ScryptIdentity, ScryptRecipient, X25519Identity
from volbak.errors import CryptoError, IntegrityError, NotFoundError, UsageError
from volbak.local import LocalBackend
from volbak.repository import BackupInfo, Manifest, Repository
from volbak.repository.archive import object_hashes
from volbak.repository.manifest import iso
from volbak.stream.tar import TarParser

COMPRESSIONS = ["zstd", "gzip", "none"]
WHEN = dt.datetime(2026, 11, 29, 7, 0, 1, tzinfo=dt.UTC)


def tar_stream(seed: int = 0, size: int = 600_000) -> bytes:
    """A small tar like the engine sends: incompressible and compressible members."""
    rnd = __import__("random").Random(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("data/random", rnd.randbytes(size)),
                           ("data/text", b"line of text\n" * 20_000)):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


TAR = tar_stream()


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(LocalBackend(tmp_path / "repo"))


def manifest(volume: str = "vol", when: dt.datetime = WHEN) -> Manifest:
    return Manifest(volume={"name": volume, "driver": "local"}, created=iso(when),
                    tar={"size": len(TAR)})


def backup(repo: Repository, data: bytes = TAR, *, volume: str = "vol",
           when: dt.datetime = WHEN, compression: str = "zstd", recipients=(),
           step: int = 65_536, sha256: bool = False) -> BackupInfo:
    writer = repo.create_backup(volume, when, compression=compression, recipients=recipients,
                                sha256=sha256)
    with writer:
        for i in range(0, len(data), step):
            writer.write(memoryview(data)[i : i + step])
        return writer.commit(manifest(volume, when))


def read_back(repo: Repository, info: BackupInfo, identities=(), n: int = 100_000) -> bytes:
    out = []
    with repo.open_backup(info, identities) as reader:
        while data := reader.read(n):
            out.append(data)
    return b"".join(out)


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip(repo: Repository, compression: str) -> None:
    info = backup(repo, compression=compression)
    assert info.id == "vol@20261129T070001Z"
    [listed] = repo.list()
    assert listed.id == info.id
    m = listed.manifest
    assert (m.compression, m.repo_format, m.encryption) == (compression, "archive", None)
    assert m.object["name"] == "vol/20261129T070001Z.tar" + {"zstd": ".zst", "gzip": ".gz",
                                                              "none": ""}[compression]
    assert m.object["size"] == repo.backend.stat(m.object["name"]).size == listed.size
    stored = (repo.backend.root / m.object["name"]).read_bytes()
    assert m.object.keys() == {"name", "size", "blake3"}  # sha256 only when asked for
    assert m.object["blake3"] == blake3.blake3(stored).hexdigest()
    assert read_back(repo, listed) == TAR
    repo.check_stored(listed)


def test_sha256_on_request(repo: Repository) -> None:
    info = backup(repo, sha256=True)
    [listed] = repo.list()
    stored = (repo.backend.root / listed.manifest.object["name"]).read_bytes()
    assert (listed.manifest.object["sha256"], listed.manifest.object["blake3"]) == \
        (hashlib.sha256(stored).hexdigest(), blake3.blake3(stored).hexdigest())
    assert read_back(repo, info) == TAR
    repo.check_stored(info)


def test_sha256_is_refused_by_a_dedup_repository(repo: Repository, monkeypatch) -> None:
    monkeypatch.delenv("VOLBAK_REPO_FORMAT", raising=False)
    with pytest.raises(UsageError, match=r"is new, and would be a dedup repository.*--sha256"):
        repo.create_backup("vol", WHEN, sha256=True)
    assert repo.format == "new"  # not made a dedup repository on the way
    repo.init("dedup")
    with pytest.raises(UsageError, match=r"is a dedup repository.*--sha256") as e:
        repo.create_backup("vol", WHEN, sha256=True)
    assert "drop --sha256" in (e.value.hint or "")
    assert repo.list() == []


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_round_trip_encrypted(repo: Repository, compression: str) -> None:
    ident = X25519Identity.generate()
    other = X25519Identity.generate()
    info = backup(repo, compression=compression,
                  recipients=[ident.recipient(), other.recipient()])
    [listed] = repo.list()
    enc = listed.manifest.encryption
    assert enc == {"format": "age-v1", "passphrase": False,
                   "recipients": [str(ident.recipient()), str(other.recipient())]}
    assert listed.manifest.object["name"].endswith(".age")
    assert read_back(repo, listed, [ident]) == TAR
    assert read_back(repo, listed, [other]) == TAR
    raw = (repo.backend.root / info.manifest.object["name"]).read_bytes()
    assert raw.startswith(b"age-encryption.org/v1\n")
    assert str(ident) not in (repo.backend.root / info.manifest_name).read_text()


def test_round_trip_passphrase(repo: Repository) -> None:
    info = backup(repo, recipients=[ScryptRecipient(b"correct horse", work_factor=10)])
    assert info.manifest.encryption == {"format": "age-v1", "passphrase": True,
                                        "recipients": []}
    assert read_back(repo, repo.get(info.id), [ScryptIdentity(b"correct horse")]) == TAR
    with pytest.raises(CryptoError):
        repo.open_backup(info, [ScryptIdentity(b"wrong horse")])


@pytest.mark.parametrize("n", [1, 511, 2**20])
def test_read_sizes(repo: Repository, n: int) -> None:
    info = backup(repo, TAR[: 20 * 1024] if n == 1 else TAR)
    assert read_back(repo, info, n=n) == (TAR[: 20 * 1024] if n == 1 else TAR)


def test_empty_backup(repo: Repository) -> None:
    info = backup(repo, b"")
    assert read_back(repo, info) == b""


def test_list_order_get_and_members(repo: Repository) -> None:
    a = backup(repo, volume="a", when=WHEN)
    b = backup(repo, volume="a", when=WHEN + dt.timedelta(hours=1))
    c = backup(repo, volume="b", when=WHEN + dt.timedelta(minutes=1))
    same = backup(repo, volume="a", when=WHEN)  # same second: a new stamp
    assert same.stamp == a.stamp + "-1"
    assert [i.id for i in repo.list()] == [b.id, c.id, a.id, same.id] or \
        [i.id for i in repo.list()] == [b.id, c.id, same.id, a.id]
    assert [i.id for i in repo.list("b")] == [c.id]
    assert repo.get("a").id == b.id
    assert repo.get(a.id).id == a.id
    assert repo.volumes() == ["a", "b"]
    with pytest.raises(NotFoundError):
        repo.get("a@20000101T000000Z")
    with pytest.raises(NotFoundError):
        repo.get("nothing")


def test_delete_removes_manifest_then_data(repo: Repository) -> None:
    info = backup(repo)
    repo.delete(info)
    assert repo.list() == []
    assert files(repo.backend.root) == []


# -- abort --------------------------------------------------------------------------------


@pytest.mark.parametrize("recipients", [False, True])
def test_abort_leaves_no_object(repo: Repository, recipients: bool) -> None:
    rcpt = [X25519Identity.generate().recipient()] if recipients else []
    writer = repo.create_backup("vol", WHEN, recipients=rcpt)
    writer.write(TAR)
    writer.abort()
    writer.abort()  # idempotent
    assert repo.list() == []
    assert files(repo.backend.root) == []


def test_leaving_the_block_without_commit_aborts(repo: Repository) -> None:
    with pytest.raises(RuntimeError), repo.create_backup("vol", WHEN) as writer:
        writer.write(TAR)
        raise RuntimeError("tar stream broke")
    assert files(repo.backend.root) == []


def test_failing_manifest_write_removes_the_archive(repo: Repository, monkeypatch) -> None:
    writer = repo.create_backup("vol", WHEN)
    writer.write(TAR)

    def fail(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(repo, "write_manifest", fail)
    with pytest.raises(OSError):
        writer.commit(manifest())
    assert files(repo.backend.root) == []


def test_abort_after_commit_keeps_the_backup(repo: Repository) -> None:
    writer = repo.create_backup("vol", WHEN)
    writer.write(TAR)
    info = writer.commit(manifest())
    writer.abort()
    assert read_back(repo, info) == TAR


def test_sink_failure_aborts(repo: Repository, monkeypatch) -> None:
    from volbak.local import _LocalWriter

    writer = repo.create_backup("vol", WHEN, compression="none")

    def full(self, data) -> None:
        raise OSError("no space left on device")

    # (the object is made at the first write: patched where it comes from)
    monkeypatch.setattr(_LocalWriter, "write", full)
    with pytest.raises(OSError, match="no space"), writer:
        for _ in range(50):
            writer.write(TAR)
        writer.commit(manifest())
    assert files(repo.backend.root) == []


# -- damage -------------------------------------------------------------------------------


def consume(repo: Repository, info: BackupInfo, identities=(), n: int = 65_536) -> Exception:
    """Read the backup to its end; return the error. Fails the test if the reader
    returned the end (b"") before raising, or did not raise at all."""
    try:
        with repo.open_backup(info, identities) as reader:
            while True:
                data = reader.read(n)
                assert data, "the reader returned the end of a damaged backup"
    except (IntegrityError, CryptoError) as e:
        return e


def damage(repo: Repository, info: BackupInfo, how: str, pos: int) -> None:
    path = repo.backend.root / info.manifest.object["name"]
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[pos % len(raw)] ^= 0x04
    else:
        del raw[pos % len(raw):]
    path.write_bytes(bytes(raw))


def positions(size: int) -> list[int]:
    return sorted({0, 1, 5, 20, 100, 300, size // 3, size // 2, size - 40, size - 10,
                   size - 4, size - 1})


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_object_is_an_integrity_error(tmp_path: Path, compression: str,
                                              how: str) -> None:
    size = backup(Repository(LocalBackend(tmp_path / "probe")),
                  compression=compression).manifest.object["size"]
    for pos in positions(size):
        repo = Repository(LocalBackend(tmp_path / f"r{pos}"))
        info = backup(repo, compression=compression)
        assert info.manifest.object["size"] == size  # the codecs are deterministic
        damage(repo, info, how, pos)
        err = consume(repo, repo.get(info.id))
        assert isinstance(err, IntegrityError), (pos, err)
        with pytest.raises(IntegrityError):
            repo.check_stored(info)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_encrypted_object_never_passes(tmp_path: Path, compression: str,
                                               how: str) -> None:
    ident = X25519Identity.generate()
    for i, frac in enumerate([0.0, 0.001, 0.01, 0.1, 0.5, 0.9, 0.999, 0.9999]):
        repo = Repository(LocalBackend(tmp_path / f"r{i}"))
        info = backup(repo, compression=compression, recipients=[ident.recipient()])
        size = info.manifest.object["size"]
        damage(repo, info, how, max(0, min(size - 1, int(size * frac))))
        # A damaged age header or payload is refused by its authentication (a
        # CryptoError, exit 7); anything else by the stored hash (IntegrityError).
        try:
            err = consume(repo, info, [ident])
        except (IntegrityError, CryptoError) as e:  # raised by open_backup
            err = e
        assert isinstance(err, IntegrityError | CryptoError), (frac, err)
        with pytest.raises(IntegrityError):
            repo.check_stored(info)


def test_appended_bytes_are_an_integrity_error(repo: Repository) -> None:
    info = backup(repo, compression="none")
    path = repo.backend.root / info.manifest.object["name"]
    path.write_bytes(path.read_bytes() + b"\0" * 512)
    assert isinstance(consume(repo, info), IntegrityError)


def test_object_hashes_are_the_standard_ones() -> None:
    """The digests of "abc": the SHA-256 one is FIPS 180-2's example; the BLAKE3 one
    is what the blake3 package (the reference Rust implementation) gives."""
    hashes = object_hashes(sha256=True)
    assert object_hashes().keys() == {"blake3"}
    for h in hashes.values():
        h.update(b"abc")
    assert {name: h.hexdigest() for name, h in hashes.items()} == {
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "blake3": "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"}


def rewrite_object(repo: Repository, info: BackupInfo, **changes: str | None) -> BackupInfo:
    """The backup as listed after its manifest's object record was edited (None: the
    key removed, as in a manifest written before volbak recorded it)."""
    path = repo.backend.root / info.manifest_name
    d = json.loads(path.read_bytes())
    for key, value in changes.items():
        if value is None:
            del d["object"][key]
        else:
            d["object"][key] = value
    path.write_text(json.dumps(d))
    return repo.get(info.id)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damage_is_found_in_a_backup_with_sha256_alone(repo: Repository, how: str) -> None:
    info = rewrite_object(repo, backup(repo, compression="none", sha256=True), blake3=None)
    assert "blake3" not in info.manifest.object
    assert read_back(repo, info) == TAR
    repo.check_stored(info)
    damage(repo, info, how, len(TAR) // 2)
    assert isinstance(consume(repo, info), IntegrityError)
    with pytest.raises(IntegrityError):
        repo.check_stored(info)


def test_restore_checks_the_blake3_and_verify_checks_both(repo: Repository) -> None:
    """A manifest whose sha256 alone is wrong (edited, or written by a broken volbak):
    a restore's read passes on the BLAKE3; verify, with a key or without, does not."""
    from volbak.ops.verify import verify_backup

    info = backup(repo, compression="none", sha256=True)
    assert verify_backup(repo, info).ok
    wrong_sha = rewrite_object(repo, info, sha256="0" * 64)
    assert read_back(repo, wrong_sha) == TAR
    result = verify_backup(repo, wrong_sha)  # unencrypted: the full chain
    assert (result.ok, result.level, result.exit_code) == (False, "full", 6)
    with pytest.raises(IntegrityError):
        repo.check_stored(wrong_sha)
    wrong_b3 = rewrite_object(repo, wrong_sha, sha256=info.manifest.object["sha256"],
                              blake3="0" * 64)
    assert isinstance(consume(repo, wrong_b3), IntegrityError)
    with pytest.raises(IntegrityError):
        repo.check_stored(wrong_b3)


def test_missing_object(repo: Repository) -> None:
    info = backup(repo)
    (repo.backend.root / info.manifest.object["name"]).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        repo.open_backup(info)
    with pytest.raises(IntegrityError, match="missing"):
        repo.check_stored(info)


def test_reader_output_is_a_complete_tar(repo: Repository) -> None:
    info = backup(repo)
    p = TarParser(root="data")
    with repo.open_backup(info) as reader:
        while data := reader.read(2**20):
            p.feed(data)
    p.check_complete()
    assert p.entries == 2


# -- keys ---------------------------------------------------------------------------------


def test_wrong_key_fails_at_open(repo: Repository) -> None:
    info = backup(repo, recipients=[X25519Identity.generate().recipient()])
    with pytest.raises(CryptoError):
        repo.open_backup(info, [X25519Identity.generate()])


def test_missing_key_fails_at_open(repo: Repository) -> None:
    info = backup(repo, recipients=[X25519Identity.generate().recipient()])
    with pytest.raises(UsageError, match="no key"):
        repo.open_backup(info)


def test_key_for_unencrypted_backup_is_ignored(repo: Repository) -> None:
    info = backup(repo)
    assert read_back(repo, info, [X25519Identity.generate()]) == TAR


# -- damaged manifests --------------------------------------------------------------------


BAD_MANIFESTS = {
    "empty object": b"{}",
    "array": b"[]",
    "string": b'"x"',
    "null": b"null",
    "truncated": None,  # the first half of a valid manifest
    "empty file": b"",
    "not utf-8": b"\xff\xfe{",
    "created is a number": {"created": 5},
    "created is null": {"created": None},
    "created is garbage": {"created": "yesterday"},
    "volume is a string": {"volume": "vol"},
    "object missing": {"object": None},
    "object incomplete": {"object": {"name": "x"}},
    "object without a hash": {"object": {"name": "x", "size": 1}},
    "object size is text": {"object": {"name": "x", "size": "big", "sha256": "0"}},
    "object blake3 is a number": {"object": {"name": "x", "size": 1, "sha256": "0",
                                             "blake3": 5}},
    "tar is a list": {"tar": [1, 2]},
    "duration is text": {"duration_seconds": "long"},
}


@pytest.mark.parametrize("what", BAD_MANIFESTS)
def test_damaged_manifests_are_skipped_and_recorded(repo: Repository, what: str) -> None:
    good = backup(repo, volume="good")
    victim = backup(repo, volume="bad")
    path = repo.backend.root / victim.manifest_name
    bad = BAD_MANIFESTS[what]
    if bad is None:
        bad = path.read_bytes()[: len(path.read_bytes()) // 2]
    elif isinstance(bad, dict):
        bad = json.dumps({**json.loads(path.read_bytes()), **bad}).encode()
    path.write_bytes(bad)
    listed = repo.list()
    assert [i.id for i in listed] == [good.id]
    assert [name for name, _ in repo.damaged] == [victim.manifest_name]
    assert all(msg for _, msg in repo.damaged)
    with pytest.raises(IntegrityError):
        repo.get(victim.id)
    assert repo.get("good").id == good.id


def test_damaged_list_is_reset(repo: Repository) -> None:
    info = backup(repo)
    path = repo.backend.root / info.manifest_name
    original = path.read_bytes()
    path.write_bytes(b"{}")
    repo.list()
    assert len(repo.damaged) == 1
    path.write_bytes(original)
    assert [i.id for i in repo.list()] == [info.id]
    assert repo.damaged == []


def test_unknown_manifest_fields_are_kept(repo: Repository) -> None:
    d = json.loads((repo.backend.root / backup(repo).manifest_name).read_bytes())
    d["future_field"] = {"x": 1}
    m = Manifest.from_dict(d, "test")
    assert json.loads(m.to_json())["future_field"] == {"x": 1}


def test_orphans(repo: Repository) -> None:
    info = backup(repo)
    writer = repo.create_backup("vol", WHEN + dt.timedelta(seconds=5))
    writer.write(TAR)
    writer._drain.close()
    writer._writer.commit()  # the data is stored, then the process "dies"
    assert list(repo.orphans()) == ["vol/20261129T070006Z.tar.zst"]
    repo.delete_orphan("vol/20261129T070006Z.tar.zst")
    assert list(repo.orphans()) == []
    assert [i.id for i in repo.list()] == [info.id]
    assert os.path.exists(repo.backend.root / info.manifest.object["name"])
