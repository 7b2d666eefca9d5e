"""Event signatures (wire format v1): a detached JWS with an unencoded payload (RFC 7797) over
the exact body bytes, checked against joserfc both ways and fuzzed."""

from __future__ import annotations

import base64
import json
import os
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import OKPKey

from eventwire_security import (
    ALG,
    BadSignature,
    EnvelopeError,
    Identity,
    Keyring,
    MalformedClaims,
    MalformedEnvelope,
    OversizedEnvelope,
    OwnerMismatch,
    UnknownKey,
    message_id,
    sign_event,
    verify_event,
)
from eventwire_security.hazmat import (
    detached_signing_input,
    encode_claims,
    read_detached,
    sign_detached,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    Claims = Callable[..., dict[str, Any]]

ED25519 = ["Ed25519"]
EXAMPLES = int(os.environ.get("EVENTWIRE_FUZZ_EXAMPLES", "300"))


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unb64(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def public_jwk(identity: Identity) -> OKPKey:
    return OKPKey.import_key({**identity.public_key.to_jwk()})


def private_jwk(identity: Identity) -> OKPKey:
    seed = b64(identity.seed).decode()
    return OKPKey.import_key({**identity.public_key.to_jwk(), "d": seed})


def detached(header: dict[str, Any] | bytes, body: bytes, signer: Identity) -> str:
    """A detached JWS with any protected header, signed over ``b64(header) "." body``."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    protected = b64(raw)
    return (protected + b".." + b64(signer.sign(protected + b"." + body))).decode()


def test_the_header_value_and_what_it_signs(alice: Identity, claims_of: Claims) -> None:
    event = sign_event(claims_of(alice), alice)
    assert event.body == encode_claims(claims_of(alice))  # the body is the claims document
    protected, empty, signature = event.signature.split(".")
    assert empty == ""
    assert json.loads(unb64(protected)) == {
        "alg": "Ed25519",
        "b64": False,
        "crit": ["b64"],
        "kid": alice.kid,
    }
    assert ALG == "Ed25519"
    signing_input = detached_signing_input(event.body, alice.kid)
    assert signing_input == protected.encode() + b"." + event.body
    alice.public_key.verify(signing_input, unb64(signature))  # raises if it does not verify
    assert event.message_id == message_id(event.signature) == message_id(signature.encode())
    verified = verify_event(event.body, event.signature, Keyring.of(alice))
    assert verified.claims == claims_of(alice)
    assert verified.token == event.body
    assert verified.signer == alice.trusted()


def test_joserfc_verifies_our_event_signature(alice: Identity, claims_of: Claims) -> None:
    event = sign_event(claims_of(alice), alice)
    obj = jws.deserialize_compact(
        event.signature, public_jwk(alice), algorithms=ED25519, payload=event.body
    )
    assert obj.protected == {"alg": "Ed25519", "b64": False, "crit": ["b64"], "kid": alice.kid}
    assert obj.payload == event.body
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(
            event.signature, public_jwk(alice), algorithms=ED25519, payload=event.body + b" "
        )


def test_an_event_signed_by_joserfc_verifies_with_us(alice: Identity, claims_of: Claims) -> None:
    body = encode_claims(claims_of(alice))
    header = {"alg": "Ed25519", "b64": False, "crit": ["b64"], "kid": alice.kid}
    value = jws.serialize_compact(header, body, private_jwk(alice), algorithms=ED25519)
    protected, payload, signature = value.split(".")
    assert payload == ""  # joserfc detaches an unencoded payload, as RFC 7797 section 5.2 allows
    ours = sign_detached(body, alice)
    assert ours.split(".")[2] == signature  # Ed25519 is deterministic: the same bytes
    assert verify_event(body, f"{protected}..{signature}", Keyring.of(alice)).claims == (
        claims_of(alice)
    )


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        ({"alg": "Ed25519", "kid": "K"}, "exactly 'alg', 'b64', 'crit' and 'kid'"),
        ({"alg": "Ed25519", "b64": True, "crit": ["b64"], "kid": "K"}, '"b64": false'),
        ({"alg": "Ed25519", "b64": False, "crit": [], "kid": "K"}, '"b64": false'),
        ({"alg": "Ed25519", "b64": False, "crit": ["b64", "x"], "kid": "K"}, '"b64": false'),
        ({"alg": "Ed25519", "b64": 0, "crit": ["b64"], "kid": "K"}, '"b64": false'),
        ({"alg": "EdDSA", "b64": False, "crit": ["b64"], "kid": "K"}, "alg must be"),
        ({"alg": "none", "b64": False, "crit": ["b64"], "kid": "K"}, "alg must be"),
        ({"alg": "HS256", "b64": False, "crit": ["b64"], "kid": "K"}, "alg must be"),
        ({"alg": "Ed25519", "b64": False, "crit": ["b64"], "kid": ""}, "kid must be"),
        ({"alg": "Ed25519", "b64": False, "crit": ["b64"], "kid": "K", "x": 1}, "exactly"),
        ({"alg": "Ed25519", "b64": False, "crit": [["b64"]], "kid": "K"}, "nesting"),
    ],
)
def test_headers_other_than_ours_are_malformed(
    alice: Identity, claims_of: Claims, header: dict[str, Any], detail: str
) -> None:
    header = {k: (alice.kid if v == "K" else v) for k, v in header.items()}
    body = encode_claims(claims_of(alice))
    with pytest.raises(MalformedEnvelope) as info:
        verify_event(body, detached(header, body, alice), Keyring.of(alice))
    assert detail in info.value.detail


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "..",
        "a.b.c",
        "a..b..c",
        "é..x",
        "x" * 700,
        b"\xff..\xff",
        7,
    ],
)
def test_signature_values_that_are_not_a_detached_jws(
    alice: Identity, claims_of: Claims, value: Any
) -> None:
    with pytest.raises(MalformedEnvelope):
        verify_event(encode_claims(claims_of(alice)), value, Keyring.of(alice))


def test_a_compact_jws_in_the_header_is_not_an_event_signature(
    alice: Identity, claims_of: Claims
) -> None:
    from eventwire_security import sign_claims

    token = sign_claims(claims_of(alice), alice).decode()
    with pytest.raises(MalformedEnvelope):
        verify_event(encode_claims(claims_of(alice)), token, Keyring.of(alice))


def test_body_and_key_refusals(alice: Identity, bob: Identity, claims_of: Claims) -> None:
    ring = Keyring.of(alice)
    event = sign_event(claims_of(alice), alice)
    with pytest.raises(BadSignature):
        verify_event(event.body.replace(b"42", b"43"), event.signature, ring)
    with pytest.raises(BadSignature):  # the same meaning, other bytes
        verify_event(json.dumps(json.loads(event.body)).encode(), event.signature, ring)
    with pytest.raises(UnknownKey):
        verify_event(event.body, sign_detached(event.body, bob), ring)
    with pytest.raises(OversizedEnvelope):
        verify_event(event.body, event.signature, ring, max_bytes=len(event.body) - 1)
    impostor = encode_claims(claims_of(bob))  # names bob, signed by alice
    with pytest.raises(OwnerMismatch):
        verify_event(impostor, sign_detached(impostor, alice), ring)
    duplicated = b'{"source":"acme/alice","source":"acme/alice"}'
    with pytest.raises(MalformedClaims):
        verify_event(duplicated, sign_detached(duplicated, alice), ring)


def test_the_claims_are_read_only_after_the_signature(alice: Identity) -> None:
    """Garbage under a valid header is a bad signature, never a parse error."""
    ring = Keyring.of(alice)
    envelope = read_detached(b"\xff{not json", sign_detached(b"other", alice), ring)
    with pytest.raises(BadSignature):
        envelope.verify()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_events_are_refused_or_identical(
    data: st.DataObject, alice: Identity, bob: Identity, claims_of: Claims
) -> None:
    """Any change to the body or the header value: refused with a typed error, or (a change
    that leaves the bytes as they were) accepted as exactly the original."""
    ring = Keyring.of(alice, bob)
    signer = data.draw(st.sampled_from([alice, bob]))
    event = sign_event(claims_of(signer), signer)
    body, value = bytearray(event.body), bytearray(event.signature.encode())
    target = data.draw(st.sampled_from(["body", "signature", "both"]))
    for part in (body, value) if target == "both" else (body if target == "body" else value,):
        for _ in range(data.draw(st.integers(1, 4))):
            mutate(data, part)
    try:
        result = verify_event(bytes(body), bytes(value), ring)
    except EnvelopeError:
        return  # refused, with a reason (EnvelopeError requires one)
    assert bytes(body) == event.body
    assert result.claims == claims_of(signer)
    assert result.signer.kid == signer.kid


def mutate(data: st.DataObject, part: bytearray) -> None:
    kind = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
    if not part:
        part.extend(data.draw(st.binary(min_size=1, max_size=4)))
        return
    at = data.draw(st.integers(0, len(part) - 1))
    if kind == "flip":
        part[at] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "insert":
        part[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    elif kind == "delete":
        del part[at]
    else:
        del part[at:]
