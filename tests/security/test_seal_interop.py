"""Sealed data against an independent JOSE implementation (joserfc), both ways.

joserfc needs two settings to read our JWEs, which any other JOSE library will need too:
``skid`` registered as a header parameter (joserfc refuses unknown header members by default),
and, with several recipients, ``verify_all_recipients=False`` (by default joserfc wants the
one key it is given to open every recipient entry).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from joserfc import jwe
from joserfc.errors import DecodeError, JoseError
from joserfc.jwk import OKPKey
from joserfc.registry import HeaderParameter

from eventwire_security import (
    MalformedSeal,
    SealBroken,
    SealingKey,
    SealSenderMismatch,
    open_seal,
    seal,
)

SENDER = "sender-signing-kid"
CONTEXT = b"acme.orders.created/evt-0001"
SKID = {"skid": HeaderParameter("Sender Key ID", "str")}
ALGORITHMS = ["ECDH-ES+A256KW", "A256GCM"]
REGISTRY = jwe.JWERegistry(header_registry=SKID, algorithms=ALGORITHMS, verify_all_recipients=False)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sealing_key(name: str) -> SealingKey:
    return SealingKey(hashlib.sha256(f"eventwire-test-sealing:{name}".encode()).digest())


def public_jwk(key: SealingKey) -> OKPKey:
    jwk: dict[str, str | list[str]] = {**key.public.to_jwk()}
    return OKPKey.import_key(jwk)


def private_jwk(key: SealingKey) -> OKPKey:
    jwk: dict[str, str | list[str]] = {**key.public.to_jwk(), "d": b64(key.private_bytes)}
    return OKPKey.import_key(jwk)


@pytest.fixture(scope="module")
def keys() -> list[SealingKey]:
    return [sealing_key(f"interop{index}") for index in range(3)]


def joserfc_seal(
    plaintext: bytes,
    keys: list[SealingKey],
    *,
    protected: dict[str, Any] | None = None,
    header: dict[str, Any] | None = None,
    aad: bytes | None = CONTEXT,
    registry: jwe.JWERegistry = REGISTRY,
) -> dict[str, Any]:
    """A general JSON JWE made by joserfc, shaped like ours unless told otherwise."""
    obj = jwe.GeneralJSONEncryption(
        protected or {"enc": "A256GCM", "skid": SENDER}, plaintext, aad=aad
    )
    for key in keys:
        members = header if header is not None else {"alg": "ECDH-ES+A256KW"}
        obj.add_recipient({**members, "kid": key.kid}, public_jwk(key))
    return dict(jwe.encrypt_json(obj, None, registry=registry))


def joserfc_open(
    data: Any, key: SealingKey, registry: jwe.JWERegistry = REGISTRY
) -> jwe.GeneralJSONEncryption | jwe.FlattenedJSONEncryption:
    return jwe.decrypt_json(data, private_jwk(key), registry=registry)


def test_kid_is_the_joserfc_thumbprint(keys: list[SealingKey]) -> None:
    for key in [*keys, SealingKey.generate(), SealingKey(bytes(32))]:
        assert public_jwk(key).thumbprint() == key.kid
        assert private_jwk(key).thumbprint() == key.kid
        assert public_jwk(key).as_dict() == key.public.to_jwk()


# --- (a) ours, opened by joserfc ---


@pytest.mark.parametrize("context", [b"", CONTEXT])
@pytest.mark.parametrize("size", [0, 1, 4096])
@pytest.mark.parametrize("count", [1, 3])
def test_joserfc_opens_our_seal(
    count: int, size: int, context: bytes, keys: list[SealingKey]
) -> None:
    plaintext = hashlib.shake_256(b"interop").digest(size) if size else b""
    sealed = seal(plaintext, [k.public for k in keys[:count]], sender_kid=SENDER, context=context)
    wire = json.loads(json.dumps(sealed))
    for key in keys[:count]:
        obj = joserfc_open(wire, key)
        assert obj.plaintext == plaintext
        assert obj.protected == {"enc": "A256GCM", "skid": SENDER}
        assert obj.aad == (context or None)


def test_joserfc_default_registry_opens_a_single_recipient_seal(keys: list[SealingKey]) -> None:
    sealed = seal(b"one", [keys[0].public], sender_kid=SENDER)
    registry = jwe.JWERegistry(header_registry=SKID, algorithms=ALGORITHMS)
    assert joserfc_open(sealed, keys[0], registry).plaintext == b"one"


def test_joserfc_refuses_our_seal_when_tampered(keys: list[SealingKey]) -> None:
    sealed = seal(b"secret", [keys[0].public], sender_kid=SENDER, context=CONTEXT)
    other_sender = {"enc": "A256GCM", "skid": "attacker"}
    for change in (
        {"protected": b64(json.dumps(other_sender, separators=(",", ":")).encode())},
        {"aad": b64(b"another context")},
        {"tag": b64(bytes(16))},
    ):
        with pytest.raises(DecodeError):
            joserfc_open({**sealed, **change}, keys[0])
    with pytest.raises(JoseError):  # not a recipient: its key opens no entry
        joserfc_open(sealed, keys[1])


# --- (b) joserfc's, opened by us ---


@pytest.mark.parametrize("aad", [None, CONTEXT])
@pytest.mark.parametrize("count", [1, 3])
def test_we_open_joserfc_seal(count: int, aad: bytes | None, keys: list[SealingKey]) -> None:
    plaintext = b"made by joserfc \xe2\x9c\x93"
    made = joserfc_seal(plaintext, keys[:count], aad=aad)
    assert set(made) == {"protected", "recipients", "iv", "ciphertext", "tag"} | (
        {"aad"} if aad else set()
    )
    for key in keys[:count]:
        opened = open_seal(made, key, expected_sender_kid=SENDER, context=aad or b"")
        assert opened == plaintext


def test_we_open_joserfc_seal_with_apu_and_apv(keys: list[SealingKey]) -> None:
    """apu/apv are standard ECDH-ES members (RFC 7518 4.6.1.2-3): accepted and fed to the KDF."""
    header = {"alg": "ECDH-ES+A256KW", "apu": b64(b"Alice"), "apv": b64(b"Bob")}
    made = joserfc_seal(b"with party info", keys[:2], header=header)
    entry = made["recipients"][0]["header"]
    assert (entry["apu"], entry["apv"]) == (b64(b"Alice"), b64(b"Bob"))
    for key in keys[:2]:
        assert open_seal(made, key, expected_sender_kid=SENDER, context=CONTEXT) == (
            b"with party info"
        )
    # They are bound: another party info derives another key-encryption key.
    entry["apv"] = b64(b"Eve")
    with pytest.raises(SealBroken):
        open_seal(made, keys[0], expected_sender_kid=SENDER, context=CONTEXT)
    del entry["apv"]
    with pytest.raises(SealBroken):
        open_seal(made, keys[0], expected_sender_kid=SENDER, context=CONTEXT)


def test_joserfc_seal_of_another_sender(keys: list[SealingKey]) -> None:
    made = joserfc_seal(b"x", keys[:1])
    with pytest.raises(SealSenderMismatch):
        open_seal(made, keys[0], expected_sender_kid="someone-else", context=CONTEXT)
    with pytest.raises(SealBroken):
        open_seal(made, keys[0], expected_sender_kid=SENDER, context=b"another context")


@pytest.mark.parametrize(
    ("protected", "header", "algorithms"),
    [
        # Valid JWEs our strict profile refuses, each MalformedSeal.
        ({"enc": "A256GCM", "skid": SENDER, "cty": "json"}, None, ALGORITHMS),
        ({"enc": "A256GCM", "skid": SENDER, "typ": "JWE"}, None, ALGORITHMS),
        ({"enc": "A256GCM", "skid": SENDER, "zip": "DEF"}, None, [*ALGORITHMS, "DEF"]),
        ({"enc": "A128GCM", "skid": SENDER}, None, ["ECDH-ES+A256KW", "A128GCM"]),
        ({"enc": "A256GCM"}, None, ALGORITHMS),
        (None, {"alg": "ECDH-ES+A128KW"}, ["ECDH-ES+A128KW", "A256GCM"]),
        (
            {"enc": "A256GCM", "skid": SENDER, "alg": "ECDH-ES+A256KW"},
            {},
            ALGORITHMS,
        ),
    ],
)
def test_joserfc_seals_outside_our_profile_are_malformed(
    protected: dict[str, Any] | None,
    header: dict[str, Any] | None,
    algorithms: list[str],
    keys: list[SealingKey],
) -> None:
    registry = jwe.JWERegistry(header_registry=SKID, algorithms=algorithms)
    made = joserfc_seal(b"x", keys[:1], protected=protected, header=header, registry=registry)
    assert joserfc_open(made, keys[0], registry).plaintext == b"x"
    with pytest.raises(MalformedSeal):
        open_seal(made, keys[0], expected_sender_kid=SENDER, context=CONTEXT)


def test_joserfc_direct_ecdh_es_is_malformed(keys: list[SealingKey]) -> None:
    registry = jwe.JWERegistry(header_registry=SKID, algorithms=["ECDH-ES", "A256GCM"])
    made = joserfc_seal(b"x", keys[:1], header={"alg": "ECDH-ES"}, registry=registry)
    assert made["recipients"][0]["encrypted_key"] == ""
    with pytest.raises(MalformedSeal):
        open_seal(made, keys[0], expected_sender_kid=SENDER, context=CONTEXT)


def test_joserfc_flattened_serialization_is_malformed(keys: list[SealingKey]) -> None:
    obj = jwe.FlattenedJSONEncryption({"enc": "A256GCM", "skid": SENDER}, b"x")
    obj.add_recipient({"alg": "ECDH-ES+A256KW", "kid": keys[0].kid}, public_jwk(keys[0]))
    made = dict(jwe.encrypt_json(obj, None, registry=REGISTRY))
    with pytest.raises(MalformedSeal):
        open_seal(made, keys[0], expected_sender_kid=SENDER)


def test_many_round_trips_both_ways(keys: list[SealingKey]) -> None:
    for index in range(30):
        plaintext = json.dumps({"n": index, "s": "\u00e9" * index}).encode()
        ours = seal(plaintext, [k.public for k in keys], sender_kid=SENDER, context=CONTEXT)
        theirs = joserfc_seal(plaintext, keys)
        key = keys[index % 3]
        assert joserfc_open(ours, key).plaintext == plaintext
        assert open_seal(theirs, key, expected_sender_kid=SENDER, context=CONTEXT) == plaintext
