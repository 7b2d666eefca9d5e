"""Envelope shape, size, input type and base64url strictness: all refused before parsing."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import pytest

from eventwire_security import (
    BadSignature,
    Identity,
    Keyring,
    MalformedEnvelope,
    OversizedEnvelope,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire_security import EnvelopeError

    Refused = Callable[..., EnvelopeError]

B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def replace_part(token: bytes, index: int, part: bytes) -> bytes:
    parts = token.split(b".")
    parts[index] = part
    return b".".join(parts)


def test_every_truncation(token: bytes, keyring: Keyring, refused: Refused) -> None:
    for length in range(len(token)):
        refused(token[:length], keyring, MalformedEnvelope)
    for start in range(1, len(token)):
        refused(token[start:], keyring, MalformedEnvelope)


@pytest.mark.parametrize(
    "shape",
    [b"", b".", b"..", b"...", b"a", b"a.b", b"a.b.c.d", b"a.b.c.d.e", b".x.", b"\n"],
)
def test_wrong_number_of_parts(shape: bytes, keyring: Keyring, refused: Refused) -> None:
    refused(shape, keyring, MalformedEnvelope)


def test_extra_parts_around_a_valid_token(token: bytes, keyring: Keyring, refused: Refused) -> None:
    for variant in (token + b".", b"." + token, token + b".x", token.replace(b".", b"..", 1)):
        refused(variant, keyring, MalformedEnvelope)
    h, p, s = token.split(b".")
    refused(h + b"." + p + b"." + b"." + s, keyring, MalformedEnvelope)  # JWE-like 4 parts
    refused(b".".join([h, b"", p, b"", s]), keyring, MalformedEnvelope)  # JWE-like 5 parts


def test_oversized(token: bytes, keyring: Keyring, refused: Refused) -> None:
    exc = refused(b"A" * (1024 * 1024 + 1), keyring, OversizedEnvelope)
    assert isinstance(exc, MalformedEnvelope)
    refused(token + b"A" * (1024 * 1024), keyring, OversizedEnvelope)
    refused(token, keyring, OversizedEnvelope, max_bytes=100)
    refused(token, keyring, OversizedEnvelope, max_bytes=0)


@pytest.mark.parametrize("value", [None, 1, 1.5, [], {}, object(), "a.b.c"])
def test_non_bytes_input(value: object, keyring: Keyring, refused: Refused) -> None:
    refused(value, keyring, MalformedEnvelope)


def test_str_token_is_refused(token: bytes, keyring: Keyring, refused: Refused) -> None:
    exc = refused(token.decode(), keyring, MalformedEnvelope)
    assert exc.detail == "expected bytes, got str"


def test_padding_and_foreign_characters(token: bytes, keyring: Keyring, refused: Refused) -> None:
    h, p, s = token.split(b".")
    assert len(s) % 4 != 0
    padded = h + b"=" * (-len(h) % 4 or 2)
    for bad_h in (padded, h + b"=", h[:5] + b"+" + h[6:], h + b" ", h + b"\n"):
        refused(b".".join([bad_h, p, s]), keyring, MalformedEnvelope)
    for bad_s in (s + b"==", s + b"=", s[:5] + b"/" + s[6:], b" " + s, s + b"\r\n", s + b"\x00"):
        refused(b".".join([h, p, bad_s]), keyring, MalformedEnvelope)
    # Standard base64 of the same bytes.
    standard = base64.standard_b64encode(unb64(s))
    assert standard != s
    refused(b".".join([h, p, standard]), keyring, MalformedEnvelope)
    # A non-ASCII byte anywhere in the header or signature.
    refused(b".".join([h + "é".encode(), p, s]), keyring, MalformedEnvelope)
    refused(b".".join([h, p, s[:-1] + b"\xff"]), keyring, MalformedEnvelope)
    # The payload part is signed text, verified before it is decoded: without the key, padding
    # or foreign characters there break the signature (signed ones: see test_claims.py).
    for bad_p in (p + b"==", p + b"=", b"+" + p[1:], p + b"\n", p + "é".encode()):
        refused(b".".join([h, bad_p, s]), keyring, BadSignature)


def test_non_canonical_base64_trailing_bits(
    token: bytes, keyring: Keyring, refused: Refused
) -> None:
    h, _, s = token.split(b".")
    for part, index in ((h, 0), (s, 2)):
        if len(part) % 4 == 0:
            continue  # no unused bits to set
        last = B64URL.index(part[-1])
        for low in range(1, 4 if len(part) % 4 == 3 else 16):
            variant = part[:-1] + bytes([B64URL[last ^ low]])
            assert unb64(variant) == unb64(part)  # same bytes, different text
            refused(replace_part(token, index, variant), keyring, MalformedEnvelope)


@pytest.mark.parametrize("length", [0, 1, 32, 63, 65, 96, 128])
def test_signature_of_wrong_length(
    alice: Identity, token: bytes, keyring: Keyring, refused: Refused, length: int
) -> None:
    signature = (unb64(token.split(b".")[2]) * 3)[:length]
    exc = refused(replace_part(token, 2, b64(signature)), keyring, MalformedEnvelope)
    assert exc.detail == "an Ed25519 signature is 64 bytes"
    assert exc.kid == alice.kid
