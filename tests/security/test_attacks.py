"""The envelope-level attacks of SECURITY.md, each refused with its exact error and reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

import pytest

from eventwire_security import (
    BadSignature,
    Identity,
    Keyring,
    MalformedEnvelope,
    OwnerMismatch,
    UnknownKey,
    sign_claims,
    verify_envelope,
)
from eventwire_security.hazmat import (
    sign_payload,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire_security import EnvelopeError

    Refused = Callable[..., EnvelopeError]
    Claims = Callable[..., dict[str, Any]]

B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def canonical_b64(text: bytes) -> bool:
    if any(c not in B64URL for c in text) or len(text) % 4 == 1:
        return False
    return b64(unb64(text)) == text


def replace_part(token: bytes, index: int, part: bytes) -> bytes:
    parts = token.split(b".")
    parts[index] = part
    return b".".join(parts)


# --- bit flips ---


def test_bit_flips_in_decoded_payload(token: bytes, keyring: Keyring, refused: Refused) -> None:
    payload = unb64(token.split(b".")[1])
    for index in range(len(payload)):
        for bit in (0x01, 0x20, 0x80):
            flipped = bytearray(payload)
            flipped[index] ^= bit
            refused(replace_part(token, 1, b64(bytes(flipped))), keyring, BadSignature)


def test_bit_flips_in_payload_text(token: bytes, keyring: Keyring, refused: Refused) -> None:
    # The payload text is covered verbatim by the signature: any change is a bad signature,
    # even one that is no longer base64url.
    payload = token.split(b".")[1]
    for index in range(len(payload)):
        for bit in range(8):
            flipped = bytearray(payload)
            flipped[index] ^= 1 << bit
            expected = MalformedEnvelope if b"." in flipped else BadSignature  # a 4th part
            refused(replace_part(token, 1, bytes(flipped)), keyring, expected)


def test_every_signature_bit(token: bytes, keyring: Keyring, refused: Refused) -> None:
    signature = unb64(token.split(b".")[2])
    assert len(signature) == 64
    for bit in range(512):
        flipped = bytearray(signature)
        flipped[bit // 8] ^= 1 << bit % 8
        refused(replace_part(token, 2, b64(bytes(flipped))), keyring, BadSignature)


def test_bit_flips_in_signature_text(token: bytes, keyring: Keyring, refused: Refused) -> None:
    signature = token.split(b".")[2]
    for index in range(len(signature)):
        for bit in range(8):
            flipped = bytearray(signature)
            flipped[index] ^= 1 << bit
            # Outside the alphabet (or a 4th part), or a non-canonical last character: malformed.
            expected = BadSignature if canonical_b64(bytes(flipped)) else MalformedEnvelope
            refused(replace_part(token, 2, bytes(flipped)), keyring, expected)


def test_bit_flips_in_decoded_header(
    alice: Identity, token: bytes, keyring: Keyring, refused: Refused
) -> None:
    header = unb64(token.split(b".")[0])
    kid_start = header.index(alice.kid.encode())
    kid_positions = range(kid_start, kid_start + len(alice.kid))
    for index in range(len(header)):
        # Bit 7 makes invalid UTF-8. Bit 0 keeps kid characters printable, so it names another
        # kid; anywhere else it breaks the JSON or renames "alg", "kid" or "Ed25519".
        low_bit = UnknownKey if index in kid_positions else MalformedEnvelope
        for bit, expected in ((0x80, MalformedEnvelope), (0x01, low_bit)):
            flipped = bytearray(header)
            flipped[index] ^= bit
            refused(replace_part(token, 0, b64(bytes(flipped))), keyring, expected)


def test_bit_flips_in_header_text(token: bytes, keyring: Keyring, refused: Refused) -> None:
    header = token.split(b".")[0]
    outcomes: set[type[Exception]] = set()
    for index in range(len(header)):
        for bit in range(8):
            flipped = bytearray(header)
            flipped[index] ^= 1 << bit
            with pytest.raises((MalformedEnvelope, UnknownKey)) as info:
                verify_envelope(replace_part(token, 0, bytes(flipped)), keyring)
            outcomes.add(type(info.value))
    assert outcomes == {MalformedEnvelope, UnknownKey}


# --- same meaning, other bytes ---


def test_payload_reserialized_with_the_same_meaning(
    token: bytes, keyring: Keyring, refused: Refused
) -> None:
    claims = json.loads(unb64(token.split(b".")[1]))
    variants = [
        json.dumps(claims).encode(),
        json.dumps(claims, separators=(",", ":"), sort_keys=True).encode(),
        json.dumps(claims, separators=(",", ":"), ensure_ascii=True).encode(),
        json.dumps(dict(reversed(list(claims.items()))), separators=(",", ":")).encode(),
        json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode() + b"\n",
        json.dumps(claims, indent=2, ensure_ascii=False).encode(),
    ]
    for payload in variants:
        assert json.loads(payload) == claims
        assert b64(payload) != token.split(b".")[1]
        refused(replace_part(token, 1, b64(payload)), keyring, BadSignature)


def test_header_reserialized_with_the_same_meaning(
    alice: Identity, token: bytes, keyring: Keyring, refused: Refused
) -> None:
    for header in (
        {"kid": alice.kid, "alg": "Ed25519"},
        json.dumps({"alg": "Ed25519", "kid": alice.kid}).encode(),
        b' {"alg":"Ed25519","kid":"' + alice.kid.encode() + b'"}',
        b'{"alg":"Ed\\u00325519","kid":"' + alice.kid.encode() + b'"}',
    ):
        raw = header if isinstance(header, bytes) else json.dumps(header).encode()
        refused(replace_part(token, 0, b64(raw)), keyring, BadSignature)


# --- algorithms and header members ---


@pytest.mark.parametrize(
    "alg",
    [
        *("none", "None", "NONE", "HS256", "ES256", "RS256", "PS256", "EdDSA", "Ed448"),
        *("ed25519", "ED25519", "Ed25519 ", " Ed25519", "Ed25519\u0000", "", None, 1, True),
        ["Ed25519"],
        {"a": 1},
    ],
)
def test_other_algorithms(
    alg: Any, *, alice: Identity, payload: bytes, keyring: Keyring, forge: Any, refused: Refused
) -> None:
    exc = refused(forge(alice, {"alg": alg, "kid": alice.kid}, payload), keyring, MalformedEnvelope)
    assert exc.detail.startswith(("alg must be 'Ed25519'", "protected header:"))


def test_alg_none_with_empty_signature(
    alice: Identity, token: bytes, keyring: Keyring, refused: Refused
) -> None:
    header = b64(json.dumps({"alg": "none", "kid": alice.kid}).encode())
    payload = token.split(b".")[1]
    refused(header + b"." + payload + b".", keyring, MalformedEnvelope)
    refused(header + b"." + payload, keyring, MalformedEnvelope)


def test_hs256_with_the_public_key_as_secret(
    alice: Identity, token: bytes, keyring: Keyring, refused: Refused
) -> None:
    header = b64(json.dumps({"alg": "HS256", "kid": alice.kid}).encode())
    signing_input = header + b"." + token.split(b".")[1]
    for secret in (alice.public_key.raw, json.dumps(alice.public_key.to_jwk()).encode()):
        mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
        refused(signing_input + b"." + b64(mac), keyring, MalformedEnvelope)


@pytest.mark.parametrize(
    "extra",
    [
        {"crit": ["b64"], "b64": False},
        {"b64": False},
        {"crit": ["exp"]},
        {"jku": "https://attacker.example/jwks"},
        {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}},
        {"x5u": "https://attacker.example/cert"},
        {"x5c": ["MIIB"]},
        {"typ": "JWT"},
        {"cty": "json"},
        {"zip": "DEF"},
        {"KID": "x"},
    ],
)
def test_extra_header_members(
    extra: Any, *, alice: Identity, payload: bytes, keyring: Keyring, forge: Any, refused: Refused
) -> None:
    header = {"alg": "Ed25519", "kid": alice.kid, **extra}
    exc = refused(forge(alice, header, payload), keyring, MalformedEnvelope)
    assert exc.detail in {
        "protected header must have exactly 'alg' and 'kid'",
        "protected header: nesting deeper than 1",  # list or object values
    }


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "Ed25519"},
        {"kid": "KID"},
        {},
        {"alg": "Ed25519", "kid": ""},
        {"alg": "Ed25519", "kid": None},
        {"alg": "Ed25519", "kid": 7},
        {"alg": "Ed25519", "kid": ["KID"]},
        {"alg": "Ed25519", "kid": {"kid": "KID"}},
        [{"alg": "Ed25519", "kid": "KID"}],
        "Ed25519",
        b'{"alg":"Ed25519","kid":"KID","kid":"KID"}',
        b'{"alg":"Ed25519","alg":"Ed25519","kid":"KID"}',
        b'{"alg":"Ed25519","kid":"KID"',
        b'{"alg":"Ed25519","kid":"KID"}x',
        b'{"alg":"Ed25519","kid":"KID","n":NaN}',
        b'{"alg":"Ed25519","kid":"KID","n":1e999}',
        b'{"alg":"Ed25519","kid":"\\ud800"}',
        b'{"alg":"Ed25519","kid":"\xff"}',
        b"\xef\xbb\xbf" + b'{"alg":"Ed25519","kid":"KID"}',
        b"",
        b"null",
    ],
)
def test_malformed_headers(
    header: Any, *, alice: Identity, payload: bytes, keyring: Keyring, forge: Any, refused: Refused
) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw = raw.replace(b"KID", alice.kid.encode())
    refused(forge(alice, raw, payload), keyring, MalformedEnvelope)


def test_oversized_header(
    alice: Identity, payload: bytes, keyring: Keyring, forge: Any, refused: Refused
) -> None:
    exc = refused(forge(alice, header_b64=b"A" * 513, payload=payload), keyring, MalformedEnvelope)
    assert exc.detail == "protected header too large"
    # Padding an otherwise valid header with whitespace up to 512 encoded bytes is still fine.
    raw = b'{"alg":"Ed25519","kid":"' + alice.kid.encode() + b'"}'
    raw += b" " * (384 - len(raw))
    assert len(b64(raw)) == 512
    assert verify_envelope(forge(alice, raw, payload), keyring).claims == json.loads(payload)
    refused(forge(alice, raw + b"   ", payload), keyring, MalformedEnvelope)


# --- keys and owners ---


def test_unknown_kid(
    alice: Identity,
    claims_of: Claims,
    payload: bytes,
    *,
    keyring: Keyring,
    forge: Any,
    refused: Refused,
) -> None:
    stranger = Identity.generate("acme", "alice")
    token = sign_claims(claims_of(stranger), stranger)
    exc = refused(token, keyring, UnknownKey)
    assert exc.kid == stranger.kid
    # A made-up kid with alice's signature: the lookup fails before any signature check.
    header = {"alg": "Ed25519", "kid": alice.kid[:-1] + ("A" if alice.kid[-1] != "A" else "B")}
    refused(forge(alice, header, payload), keyring, UnknownKey)
    refused(replace_part(token, 2, b"AAAA"), keyring, UnknownKey)


def test_kid_of_another_agent(
    bob: Identity, payload: bytes, keyring: Keyring, refused: Refused
) -> None:
    # Compromised bob signs, with its own valid key, an event that claims to come from alice.
    forged = sign_payload(payload, bob)
    exc = refused(forged, keyring, OwnerMismatch)
    assert exc.kid == bob.kid
    assert "'acme/alice'" in exc.detail
    assert "'acme/bob'" in exc.detail


def test_alices_kid_with_bobs_signature(
    alice: Identity,
    bob: Identity,
    payload: bytes,
    *,
    keyring: Keyring,
    forge: Any,
    refused: Refused,
) -> None:
    forged = forge(bob, {"alg": "Ed25519", "kid": alice.kid}, payload)
    assert refused(forged, keyring, BadSignature).kid == alice.kid


def test_tenant_mismatch(
    alice: Identity, eve: Identity, claims_of: Claims, keyring: Keyring, refused: Refused
) -> None:
    # Eve (tenant "evil") claims tenant acme; alice's own key cannot claim another tenant either.
    refused(sign_payload(json.dumps(claims_of(alice)).encode(), eve), keyring, OwnerMismatch)
    claims = claims_of(eve, tenant="acme")
    refused(sign_payload(json.dumps(claims).encode(), eve), keyring, OwnerMismatch)
    claims = claims_of(alice, tenant="evil")
    refused(sign_payload(json.dumps(claims).encode(), alice), keyring, OwnerMismatch)
    claims = claims_of(alice, source="evil/alice", tenant="evil")
    refused(sign_payload(json.dumps(claims).encode(), alice), keyring, OwnerMismatch)


def test_swapped_parts_between_agents(
    alice: Identity, bob: Identity, claims_of: Claims, keyring: Keyring, refused: Refused
) -> None:
    a = sign_claims(claims_of(alice), alice).split(b".")
    b = sign_claims(claims_of(bob), bob).split(b".")
    refused(b".".join([b[0], a[1], a[2]]), keyring, BadSignature)
    refused(b".".join([a[0], b[1], b[2]]), keyring, BadSignature)
    refused(b".".join([a[0], a[1], b[2]]), keyring, BadSignature)
    refused(b".".join([b[0], b[1], a[2]]), keyring, BadSignature)
