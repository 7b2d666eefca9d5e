"""Key files: encrypted PKCS#8 in a JSON document, 0600, O_EXCL, no symlinks, typed errors."""

from __future__ import annotations

import json
import os
import stat
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventwire_security import Identity, SecurityError
from eventwire_security._keyfile import (
    FORMAT,
    MAX_FILE_BYTES,
    PASSPHRASE_ENV,
    KeyFileError,
    KeyFileExists,
    KeyFileInvalid,
    KeyFileLocked,
    KeyFileMissing,
    KeyFileUnsafe,
    PassphraseRequired,
    passphrase_from_env,
    read_identity,
    write_identity,
)

if TYPE_CHECKING:
    from pathlib import Path

PASS = b"correct horse battery staple"
REASONS: dict[type[KeyFileError], str] = {
    KeyFileExists: "key-file-exists",
    KeyFileMissing: "key-file-missing",
    KeyFileUnsafe: "key-file-unsafe",
    KeyFileLocked: "key-file-locked",
    KeyFileInvalid: "key-file-invalid",
    PassphraseRequired: "passphrase-required",
}


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def key_path(key_dir: Path, alice: Identity) -> Path:
    path = key_dir / "alice.key"
    write_identity(path, alice, PASS)
    return path


def refused(cls: type[KeyFileError], call: Any, *args: Any) -> KeyFileError:
    with pytest.raises(cls) as info:
        call(*args)
    exc = info.value
    assert type(exc) is cls, f"expected {cls.__name__}, got {type(exc).__name__}: {exc}"
    assert exc.reason == REASONS[cls]
    assert str(exc).startswith(f"{REASONS[cls]}: ")
    assert isinstance(exc, SecurityError)
    return exc


def document(path: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(path.read_bytes())
    return value


def rewrite(path: Path, data: bytes | dict[str, Any], mode: int = 0o600) -> None:
    """Replace the key file with ``data`` (a document or raw bytes), keeping mode 0600."""
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(raw)
    os.chmod(path, mode)


def test_round_trip(key_path: Path, alice: Identity) -> None:
    identity = read_identity(key_path, PASS)
    assert identity.principal == alice.principal
    assert identity.kid == alice.kid
    assert identity.seed == alice.seed
    assert identity.sign(b"m") == alice.sign(b"m")
    assert read_identity(str(key_path), PASS).kid == alice.kid


def test_file_format(key_path: Path, alice: Identity) -> None:
    doc = document(key_path)
    assert set(doc) == {"format", "tenant", "agent", "kid", "pkcs8_pem"}
    assert doc["format"] == FORMAT
    assert (doc["tenant"], doc["agent"], doc["kid"]) == ("acme", "alice", alice.kid)
    assert doc["pkcs8_pem"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert alice.seed not in key_path.read_bytes()
    key = serialization.load_pem_private_key(doc["pkcs8_pem"].encode(), PASS)
    assert isinstance(key, Ed25519PrivateKey)
    assert key.private_bytes_raw() == alice.seed


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_mode_is_0600_whatever_the_umask(key_dir: Path, alice: Identity, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_identity(key_dir / "k", alice, PASS)
    finally:
        os.umask(old)
    assert stat.S_IMODE((key_dir / "k").stat().st_mode) == 0o600


def test_refuses_to_overwrite(key_path: Path, alice: Identity, bob: Identity) -> None:
    before = key_path.read_bytes()
    exc = refused(KeyFileExists, write_identity, key_path, bob, PASS)
    assert exc.path == str(key_path)
    refused(KeyFileExists, write_identity, key_path, alice, PASS)
    assert key_path.read_bytes() == before
    assert read_identity(key_path, PASS).kid == alice.kid


def test_symlinked_path_refused_on_write(key_dir: Path, tmp_path: Path, alice: Identity) -> None:
    target = tmp_path / "elsewhere"
    link = key_dir / "alice.key"
    link.symlink_to(target)  # dangling: O_CREAT would create the target if followed
    refused(KeyFileUnsafe, write_identity, link, alice, PASS)
    assert not target.exists()
    target.write_bytes(b"precious")
    refused(KeyFileUnsafe, write_identity, link, alice, PASS)
    assert target.read_bytes() == b"precious"


def test_symlinked_path_refused_on_read(key_path: Path, key_dir: Path) -> None:
    link = key_dir / "link.key"
    link.symlink_to(key_path)
    refused(KeyFileUnsafe, read_identity, link, PASS)


def test_symlinked_parent_refused(key_path: Path, key_dir: Path, tmp_path: Path) -> None:
    parent_link = tmp_path / "linked"
    parent_link.symlink_to(key_dir, target_is_directory=True)
    refused(KeyFileUnsafe, read_identity, parent_link / key_path.name, PASS)
    identity = Identity.generate("acme", "carol")
    refused(KeyFileUnsafe, write_identity, parent_link / "carol.key", identity, PASS)
    assert not (key_dir / "carol.key").exists()


def test_parent_writable_by_others(key_path: Path, key_dir: Path, alice: Identity) -> None:
    for mode in (0o777, 0o770, 0o702):
        key_dir.chmod(mode)
        exc = refused(KeyFileUnsafe, read_identity, key_path, PASS)
        assert isinstance(exc, KeyFileUnsafe)
        assert exc.mode == mode
        refused(KeyFileUnsafe, write_identity, key_dir / "new.key", alice, PASS)
    key_dir.chmod(0o1777)  # sticky, like /tmp: others cannot replace our file
    assert read_identity(key_path, PASS).kid == alice.kid
    key_dir.chmod(0o755)
    assert read_identity(key_path, PASS).kid == alice.kid


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601, 0o610, 0o700 | 0o004])
def test_loose_mode_refused_on_read(key_path: Path, mode: int) -> None:
    key_path.chmod(mode)
    exc = refused(KeyFileUnsafe, read_identity, key_path, PASS)
    assert isinstance(exc, KeyFileUnsafe)
    assert exc.mode == mode
    assert f"mode {mode:04o}" in str(exc)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_owner_only_modes_accepted(key_path: Path, alice: Identity, mode: int) -> None:
    key_path.chmod(mode)
    assert read_identity(key_path, PASS).kid == alice.kid


def test_not_a_regular_file(key_dir: Path) -> None:
    fifo = key_dir / "fifo.key"
    os.mkfifo(fifo, 0o600)
    refused(KeyFileUnsafe, read_identity, fifo, PASS)  # and does not hang
    (key_dir / "dir.key").mkdir(mode=0o700)
    refused(KeyFileUnsafe, read_identity, key_dir / "dir.key", PASS)


def test_missing(key_dir: Path, alice: Identity) -> None:
    refused(KeyFileMissing, read_identity, key_dir / "absent.key", PASS)
    refused(KeyFileMissing, read_identity, key_dir / "no" / "such.key", PASS)
    refused(KeyFileMissing, write_identity, key_dir / "no" / "such.key", alice, PASS)


@pytest.mark.parametrize("name", ["", ".", ".."])
def test_path_without_file_name(key_dir: Path, alice: Identity, name: str) -> None:
    path = f"{key_dir}/{name}"
    refused(KeyFileInvalid, write_identity, path, alice, PASS)
    refused(KeyFileInvalid, read_identity, path, PASS)


def test_relative_path(key_dir: Path, alice: Identity, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(key_dir)
    write_identity("rel.key", alice, PASS)
    assert read_identity("rel.key", PASS).kid == alice.kid


@pytest.mark.parametrize("wrong", [b"wrong", PASS + b" ", PASS[:-1], b"\x00" * 8])
def test_wrong_passphrase(key_path: Path, wrong: bytes) -> None:
    refused(KeyFileLocked, read_identity, key_path, wrong)


def test_every_wrong_passphrase_is_locked(key_path: Path) -> None:
    """About one wrong passphrase in 256 decrypts to noise with valid padding; cryptography
    then fails parsing the inner key instead of saying "incorrect password". 2,000 tries
    hit that case with a probability of 99.96%; each must still be a locked file."""
    for attempt in range(2000):
        refused(KeyFileLocked, read_identity, key_path, f"wrong-{attempt}".encode())


def test_damaged_ciphertext_is_locked(key_path: Path) -> None:
    """CBC without a MAC: a damaged last block looks exactly like a wrong passphrase."""
    doc = document(key_path)
    lines = doc["pkcs8_pem"].split("\n")
    body = lines[-3]
    lines[-3] = body[:-6] + ("A" if body[-6] != "A" else "B") + body[-5:]
    doc["pkcs8_pem"] = "\n".join(lines)
    rewrite(key_path, doc)
    refused(KeyFileLocked, read_identity, key_path, PASS)


def test_empty_and_bad_passphrases(key_path: Path, key_dir: Path, alice: Identity) -> None:
    refused(PassphraseRequired, write_identity, key_dir / "empty.key", alice, b"")
    assert not (key_dir / "empty.key").exists()
    refused(PassphraseRequired, read_identity, key_path, b"")
    refused(PassphraseRequired, write_identity, key_dir / "long.key", alice, b"x" * 1024)
    write_identity(key_dir / "max.key", alice, b"x" * 1023)
    assert read_identity(key_dir / "max.key", b"x" * 1023).kid == alice.kid
    with pytest.raises(TypeError):
        read_identity(key_path, PASS.decode())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        write_identity(key_dir / "t.key", alice.public_key, PASS)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"format": "eventwire-key/1"}',
        b"\xff\xfe",
        b'{"a": NaN}',
        b" " * (MAX_FILE_BYTES + 1),
    ],
)
def test_corrupted_file(key_path: Path, raw: bytes) -> None:
    rewrite(key_path, raw)
    refused(KeyFileInvalid, read_identity, key_path, PASS)


def _edit(doc: dict[str, Any], change: str) -> dict[str, Any]:
    edited = dict(doc)
    pem: str = doc["pkcs8_pem"]
    if change == "extra-field":
        edited["comment"] = "hi"
    elif change == "missing-field":
        del edited["kid"]
    elif change == "format":
        edited["format"] = "eventwire-key/2"
    elif change == "int-tenant":
        edited["tenant"] = 7
    elif change == "bad-tenant":
        edited["tenant"] = "acme/evil"
    elif change == "truncated-pem":
        edited["pkcs8_pem"] = pem[: len(pem) // 2]
    elif change == "structure-flip":
        edited["pkcs8_pem"] = pem.replace("MIG", "MIH", 1)
    elif change == "non-ascii-pem":
        edited["pkcs8_pem"] = pem.replace("M", "\u041c", 2)
    elif change == "plain-pkcs8":
        key = serialization.load_pem_private_key(pem.encode(), PASS)
        plain = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        edited["pkcs8_pem"] = plain.decode()
    return edited


@pytest.mark.parametrize(
    "change",
    [
        "extra-field",
        "missing-field",
        "format",
        "int-tenant",
        "bad-tenant",
        "truncated-pem",
        "structure-flip",
        "non-ascii-pem",
        "plain-pkcs8",
    ],
)
def test_malformed_document(key_path: Path, change: str) -> None:
    rewrite(key_path, _edit(document(key_path), change))
    refused(KeyFileInvalid, read_identity, key_path, PASS)


def test_duplicate_json_keys(key_path: Path) -> None:
    raw = key_path.read_bytes().replace(b'"tenant": "acme"', b'"tenant": "acme", "tenant": "x"')
    rewrite(key_path, raw)
    refused(KeyFileInvalid, read_identity, key_path, PASS)


def test_other_key_type(key_path: Path) -> None:
    ec_pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASS),
    )
    doc = document(key_path)
    doc["pkcs8_pem"] = ec_pem.decode()
    rewrite(key_path, doc)
    exc = refused(KeyFileInvalid, read_identity, key_path, PASS)
    assert "Ed25519" in str(exc)


def test_kid_mismatch(key_path: Path, bob: Identity) -> None:
    doc = document(key_path)
    doc["kid"] = bob.kid
    rewrite(key_path, doc)
    exc = refused(KeyFileInvalid, read_identity, key_path, PASS)
    assert bob.kid in str(exc)


def test_failed_write_leaves_no_file(
    key_dir: Path, alice: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        write_identity(key_dir / "partial.key", alice, PASS)
    assert not (key_dir / "partial.key").exists()


def test_passphrase_from_env(
    key_dir: Path, alice: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    exc = refused(PassphraseRequired, passphrase_from_env)
    assert PASSPHRASE_ENV in str(exc)
    monkeypatch.setenv(PASSPHRASE_ENV, "")
    refused(PassphraseRequired, passphrase_from_env)
    monkeypatch.setenv(PASSPHRASE_ENV, "sécret-phrase")
    assert passphrase_from_env() == "sécret-phrase".encode()
    write_identity(key_dir / "env.key", alice, passphrase_from_env())
    assert read_identity(key_dir / "env.key", "sécret-phrase".encode()).kid == alice.kid
    monkeypatch.setenv("OTHER_PASSPHRASE", "other")
    assert passphrase_from_env("OTHER_PASSPHRASE") == b"other"
    monkeypatch.delenv("OTHER_PASSPHRASE")
    refused(PassphraseRequired, passphrase_from_env, "OTHER_PASSPHRASE")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand a file to another user")
def test_foreign_owner_refused(key_path: Path, key_dir: Path) -> None:
    os.chown(key_path, 4242, -1)
    exc = refused(KeyFileUnsafe, read_identity, key_path, PASS)
    assert "uid 4242" in str(exc)
    os.chown(key_path, 0, -1)
    os.chown(key_dir, 4242, -1)
    refused(KeyFileUnsafe, read_identity, key_path, PASS)
