"""Interop with an independent JOSE implementation (joserfc): kid thumbprints and JWS both ways."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import OKPKey

from eventwire_security import (
    Identity,
    Keyring,
    MalformedEnvelope,
    Principal,
    message_id,
    sign_claims,
    verify_envelope,
)
from eventwire_security.hazmat import (
    encode_claims,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire_security import EnvelopeError

    Claims = Callable[..., dict[str, Any]]

# The fully-specified alg of RFC 9864, which joserfc verifies when it is asked for by name.
EDDSA = ["Ed25519"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(identity: Identity) -> OKPKey:
    jwk: dict[str, str | list[str]] = {**identity.public_key.to_jwk()}
    return OKPKey.import_key(jwk)


def private_jwk(identity: Identity) -> OKPKey:
    jwk: dict[str, str | list[str]] = {**identity.public_key.to_jwk(), "d": b64(identity.seed)}
    return OKPKey.import_key(jwk)


@pytest.mark.parametrize("seed", [bytes(32), bytes(range(32)), b"\xff" * 32, b"kid" * 10 + b"!!"])
def test_kid_matches_joserfc_thumbprint(seed: bytes) -> None:
    identity = Identity(Principal("t", "a"), seed)
    key = public_jwk(identity)
    assert identity.kid == key.thumbprint()
    assert key.as_dict() == {**identity.public_key.to_jwk()}
    assert private_jwk(identity).thumbprint() == identity.kid


def test_generated_kids_match_joserfc() -> None:
    for _ in range(20):
        identity = Identity.generate("t", "a")
        assert identity.kid == public_jwk(identity).thumbprint()


def test_our_token_verifies_with_joserfc(alice: Identity, claims_of: Claims) -> None:
    claims = claims_of(alice)
    token = sign_claims(claims, alice)
    obj = jws.deserialize_compact(token, public_jwk(alice), algorithms=EDDSA)
    assert obj.headers() == {"alg": "Ed25519", "kid": alice.kid}
    assert obj.protected == {"alg": "Ed25519", "kid": alice.kid}
    assert obj.payload == encode_claims(claims)
    assert json.loads(obj.payload) == claims


def test_joserfc_refuses_our_token_under_another_key(
    alice: Identity, bob: Identity, claims_of: Claims
) -> None:
    token = sign_claims(claims_of(alice), alice)
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(token, public_jwk(bob), algorithms=EDDSA)
    h, p, s = token.split(b".")
    tampered = h + b"." + p[:-2] + (b"AA" if p[-2:] != b"AA" else b"BB") + b"." + s
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(tampered, public_jwk(alice), algorithms=EDDSA)


def test_joserfc_token_verifies_with_us(
    alice: Identity, keyring: Keyring, claims_of: Claims
) -> None:
    claims = claims_of(alice)
    payload = json.dumps(claims, ensure_ascii=False).encode()
    token = jws.serialize_compact(
        {"alg": "Ed25519", "kid": alice.kid}, payload, private_jwk(alice), algorithms=EDDSA
    )
    assert isinstance(token, str)
    result = verify_envelope(token.encode(), keyring)
    assert result.claims == claims
    assert result.signer == alice.trusted()
    assert result.token == token.encode()


def test_joserfc_and_we_produce_identical_bytes(alice: Identity, claims_of: Claims) -> None:
    # Same compact header serialization, same payload bytes, deterministic Ed25519.
    claims = claims_of(alice)
    ours = sign_claims(claims, alice)
    theirs = jws.serialize_compact(
        {"alg": "Ed25519", "kid": alice.kid},
        encode_claims(claims),
        private_jwk(alice),
        algorithms=EDDSA,
    ).encode()
    assert theirs == ours
    assert message_id(theirs) == message_id(ours)


def test_joserfc_header_in_another_order_verifies(
    alice: Identity, keyring: Keyring, claims_of: Claims
) -> None:
    claims = claims_of(alice)
    token = jws.serialize_compact(
        {"kid": alice.kid, "alg": "Ed25519"}, encode_claims(claims), private_jwk(alice), EDDSA
    ).encode()
    assert token != sign_claims(claims, alice)
    assert verify_envelope(token, keyring).claims == claims


@pytest.mark.parametrize("extra", [{"typ": "JWT"}, {"cty": "application/json"}])
def test_joserfc_token_with_extra_members_is_refused(
    alice: Identity,
    keyring: Keyring,
    claims_of: Claims,
    refused: Callable[..., EnvelopeError],
    extra: dict[str, str],
) -> None:
    token = jws.serialize_compact(
        {"alg": "Ed25519", "kid": alice.kid, **extra},
        encode_claims(claims_of(alice)),
        private_jwk(alice),
        algorithms=EDDSA,
    ).encode()
    jws.deserialize_compact(token, public_jwk(alice), algorithms=EDDSA)  # valid JWS for joserfc
    refused(token, keyring, MalformedEnvelope)


def test_joserfc_verifies_many_of_our_tokens(alice: Identity, bob: Identity) -> None:
    for index in range(50):
        for identity in (alice, bob):
            claims = {
                "source": identity.principal.source,
                "tenant": identity.principal.tenant,
                "n": index,
                "s": "\u00e9" * index,
            }
            obj = jws.deserialize_compact(
                sign_claims(claims, identity), public_jwk(identity), algorithms=EDDSA
            )
            assert json.loads(obj.payload) == claims
