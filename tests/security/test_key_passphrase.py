"""New key files need a passphrase of at least 8 bytes; files written before still open."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from eventwire_security import (
    MIN_PASSPHRASE_BYTES,
    Identity,
    PassphraseRequired,
    PassphraseTooShort,
    SecurityError,
    read_identity,
    write_identity,
)

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    return directory


def test_a_new_key_file_refuses_a_short_passphrase(key_dir: Path) -> None:
    alice = Identity.generate("acme", "alice")
    with pytest.raises(PassphraseTooShort) as refused:
        write_identity(key_dir / "alice.key", alice, b"1234567")
    error = refused.value
    assert (error.minimum, error.length, error.reason) == (8, 7, "passphrase-too-short")
    assert isinstance(error, PassphraseRequired)
    assert isinstance(error, SecurityError)
    assert str(error) == (
        "passphrase-too-short: a new key file needs a passphrase of at least 8 bytes, got 7 "
        f"({key_dir / 'alice.key'})"
    )
    assert not (key_dir / "alice.key").exists()
    write_identity(key_dir / "alice.key", alice, b"x" * MIN_PASSPHRASE_BYTES)
    assert read_identity(key_dir / "alice.key", b"x" * 8).kid == alice.kid


def test_a_key_file_written_with_a_short_passphrase_still_opens(key_dir: Path) -> None:
    """A file as eventwire wrote it before the minimum (the documented format, by hand)."""
    bob = Identity.generate("acme", "bob")
    pem = Ed25519PrivateKey.from_private_bytes(bob.seed).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    document = {
        "format": "eventwire-key/1", "tenant": "acme", "agent": "bob", "kid": bob.kid,
        "pkcs8_pem": pem.decode("ascii"),
    }  # fmt: skip
    path = key_dir / "bob.key"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(document, file)
    assert read_identity(path, b"pw").kid == bob.kid
