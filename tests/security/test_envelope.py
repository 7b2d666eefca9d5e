"""Signing and verifying envelopes: the accepted path, its exact shape, and message ids."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import TYPE_CHECKING, Any

import pytest

from eventwire_security import (
    ALG,
    DEFAULT_MAX_BYTES,
    Identity,
    Keyring,
    MalformedClaims,
    OversizedEnvelope,
    OwnerMismatch,
    VerifiedEnvelope,
    message_id,
    sign_claims,
    verify_envelope,
)
from eventwire_security.hazmat import (
    encode_claims,
    sign_payload,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire_security import EnvelopeError


def unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


def test_round_trip(
    alice: Identity, keyring: Keyring, claims_of: Callable[..., dict[str, Any]]
) -> None:
    claims = claims_of(alice)
    token = sign_claims(claims, alice)
    result = verify_envelope(token, keyring)
    assert isinstance(result, VerifiedEnvelope)
    assert result.claims == claims
    assert result.signer == alice.trusted()
    assert result.signer.principal == alice.principal
    assert result.token == token
    assert type(result.token) is bytes
    with pytest.raises(AttributeError):
        result.claims = {}  # type: ignore[misc]


def test_token_shape(alice: Identity, claims_of: Callable[..., dict[str, Any]]) -> None:
    claims = claims_of(alice)
    token = sign_claims(claims, alice)
    assert isinstance(token, bytes)
    header, payload, signature = token.split(b".")
    expected = json.dumps({"alg": "Ed25519", "kid": alice.kid}, separators=(",", ":"))
    assert unb64(header) == expected.encode()
    assert json.loads(unb64(header)) == {"alg": ALG, "kid": alice.kid}
    assert ALG == "Ed25519"
    assert unb64(payload) == encode_claims(claims)
    assert len(signature) == 86
    assert b"=" not in token
    alice.public_key.verify(header + b"." + payload, unb64(signature))


def test_encode_claims_is_compact_utf8() -> None:
    claims = {"b": 1, "a": ["é", "\u2713", 1.5, None, True], "c": {"x": ""}}
    assert encode_claims(claims) == '{"b":1,"a":["é","✓",1.5,null,true],"c":{"x":""}}'.encode()


@pytest.mark.parametrize(
    "bad",
    [
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": -float("inf")},
        {"x": object()},
        {"x": b"bytes"},
        {"x": {1, 2}},
        {"x": "\ud800"},
        {"\udfff": 1},
    ],
    ids=["nan", "inf", "-inf", "object", "bytes", "set", "lone-surrogate", "surrogate-key"],
)
def test_encode_claims_refuses_non_json(bad: dict[str, Any]) -> None:
    with pytest.raises(MalformedClaims) as info:
        encode_claims(bad)
    assert info.value.reason == "malformed-claims"
    assert info.value.detail.startswith("claims are not JSON: ")


def test_sign_claims_refuses_bad_claims_through_encode(alice: Identity) -> None:
    with pytest.raises(MalformedClaims):
        sign_claims({"source": "acme/alice", "tenant": "acme", "x": float("nan")}, alice)


@pytest.mark.parametrize(
    "override",
    [
        {"source": "acme/bob"},
        {"source": "evil/alice"},
        {"tenant": "evil"},
        {"source": "evil/alice", "tenant": "evil"},
        {"source": None},
        {"source": ["acme/alice"]},
        {"tenant": "ACME"},
        {"source": "acme/alice "},
    ],
)
def test_sign_claims_refuses_claims_naming_someone_else(
    alice: Identity, claims_of: Callable[..., dict[str, Any]], override: dict[str, Any]
) -> None:
    with pytest.raises(OwnerMismatch) as info:
        sign_claims(claims_of(alice, **override), alice)
    assert info.value.reason == "owner-mismatch"
    assert info.value.kid == alice.kid
    assert "acme/alice" in info.value.detail


@pytest.mark.parametrize("missing", ["source", "tenant"])
def test_sign_claims_refuses_claims_without_owner(
    alice: Identity, claims_of: Callable[..., dict[str, Any]], missing: str
) -> None:
    claims = claims_of(alice)
    del claims[missing]
    with pytest.raises(OwnerMismatch):
        sign_claims(claims, alice)


def test_signing_is_deterministic(
    alice: Identity, bob: Identity, claims_of: Callable[..., dict[str, Any]]
) -> None:
    claims = claims_of(alice)
    first, second = sign_claims(claims, alice), sign_claims(dict(claims), alice)
    assert first == second
    assert message_id(first) == message_id(second)
    assert sign_payload(encode_claims(claims), alice) == first
    other = sign_claims(claims_of(alice, id="evt-0002"), alice)
    assert other != first
    assert message_id(other) != message_id(first)
    assert message_id(sign_claims(claims_of(bob), bob)) != message_id(first)


def test_message_id_is_the_hash_of_the_signature(
    alice: Identity, claims_of: Callable[..., dict[str, Any]]
) -> None:
    token = sign_claims(claims_of(alice), alice)
    signature = token.split(b".")[2]
    expected = base64.urlsafe_b64encode(hashlib.sha256(signature).digest()).rstrip(b"=").decode()
    assert message_id(token) == expected
    assert len(expected) == 43
    assert message_id(token) == message_id(bytes(token))
    assert message_id(token + b" ") != message_id(token)
    assert message_id(b"") == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"


def test_same_claims_in_another_key_order_is_another_event(
    alice: Identity, keyring: Keyring, claims_of: Callable[..., dict[str, Any]]
) -> None:
    claims = claims_of(alice)
    reordered = dict(reversed(list(claims.items())))
    a, b = sign_claims(claims, alice), sign_claims(reordered, alice)
    assert a != b
    assert verify_envelope(a, keyring).claims == verify_envelope(b, keyring).claims


@pytest.mark.parametrize("wrap", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_bytes_like_tokens(
    alice: Identity,
    keyring: Keyring,
    claims_of: Callable[..., dict[str, Any]],
    wrap: Callable[[bytes], Any],
) -> None:
    token = sign_claims(claims_of(alice), alice)
    result = verify_envelope(wrap(token), keyring)
    assert result.token == token
    assert type(result.token) is bytes
    assert result.claims == claims_of(alice)


def test_max_bytes_boundary(
    alice: Identity,
    keyring: Keyring,
    claims_of: Callable[..., dict[str, Any]],
    refused: Callable[..., EnvelopeError],
) -> None:
    token = sign_claims(claims_of(alice), alice)
    assert verify_envelope(token, keyring, max_bytes=len(token)).token == token
    exc = refused(token, keyring, OversizedEnvelope, max_bytes=len(token) - 1)
    assert exc.detail == f"{len(token)} bytes > limit {len(token) - 1}"
    assert DEFAULT_MAX_BYTES == 1024 * 1024


def test_large_event_under_the_default_limit(
    alice: Identity, keyring: Keyring, claims_of: Callable[..., dict[str, Any]]
) -> None:
    claims = claims_of(alice, blob="x" * 700_000)
    token = sign_claims(claims, alice)
    assert len(token) < DEFAULT_MAX_BYTES
    assert verify_envelope(token, keyring).claims == claims


def test_unicode_claims_round_trip(
    alice: Identity, keyring: Keyring, claims_of: Callable[..., dict[str, Any]]
) -> None:
    claims = claims_of(alice, text="日本語 \U0001f600 \u0000 \n\t\"\\ '", **{"kéy": 1})
    assert verify_envelope(sign_claims(claims, alice), keyring).claims == claims


def test_claims_beyond_the_owner_are_free_form(
    alice: Identity, keyring: Keyring, claims_of: Callable[..., dict[str, Any]]
) -> None:
    # The envelope only pins source and tenant; the SDK checks the event schema.
    claims = {"tenant": "acme", "source": "acme/alice", "anything": {"goes": [[], {}]}}
    assert verify_envelope(sign_claims(claims, alice), keyring).claims == claims
    assert verify_envelope(sign_claims(claims_of(alice), alice), keyring).claims["id"] == "evt-0001"
