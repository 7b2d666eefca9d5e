"""Known answers: RFC 8032 section 7.1 (Ed25519), RFC 8037 appendix A, Wycheproof-style edges."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nacl.exceptions
import nacl.signing
import pytest

from eventwire_security import (
    BadSignature,
    Identity,
    Keyring,
    MalformedEnvelope,
    Principal,
    PublicKey,
    sign_claims,
    verify_envelope,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire_security import EnvelopeError

ED25519_L = 2**252 + 27742317777372353535851937790883648493
ED25519_P = 2**255 - 19


def unb64(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@dataclass(frozen=True)
class Vector:
    name: str
    secret: str
    public: str
    message: str
    signature: str


TEST_1024_MESSAGE = (
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98fa6e264bf09efe12"
    "ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d879de7c0046dc4996d9e773f4bc9efe57"
    "38829adb26c81b37c93a1b270b20329d658675fc6ea534e0810a4432826bf58c941efb65d57a338b"
    "bd2e26640f89ffbc1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe"
    "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e06203b33890cc9b8"
    "32f79ef80560ccb9a39ce767967ed628c6ad573cb116dbefefd75499da96bd68a8a97b928a8bbc10"
    "3b6621fcde2beca1231d206be6cd9ec7aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53"
    "f1d8ac70bdcb7ed185ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2"
    "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24554119a831a9aad6"
    "079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f27088d78b7e883c8759d2c4f5c65adb7553"
    "878ad575f9fad878e80a0c9ba63bcbcc2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2"
    "cf65bd92dd597b0707e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba"
    "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51addd3b75a2b1ae078"
    "4504df543af8969be3ea7082ff7fc9888c144da2af58429ec96031dbcad3dad9af0dcbaaaf268cb8"
    "fcffead94f3c7ca495e056a9b47acdb751fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301"
    "651339e22904cc8c42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8"
    "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34dff7310fdc82aebfd9"
    "04b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08d78ff4ef5d63653a65040cf9bfd4aca7"
    "984a74d37145986780fc0b16ac451649de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a"
    "3ca8e1b939ae49e488acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3"
    "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e6aed3fb0f9cd71a4"
    "3dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5fb93246f6b1116398a346f1a641f3b041"
    "e989f7914f90cc2c7fff357876e506b50d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d9"
    "0d11faa933a15ef1369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d"
    "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c0618983f8741c5ef"
    "68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0"
)

# RFC 8032 section 7.1, "Test Vectors for Ed25519" (SECRET KEY, PUBLIC KEY, MESSAGE, SIGNATURE).
RFC8032_VECTORS = [
    Vector(
        "TEST 1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    Vector(
        "TEST 2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    Vector(
        "TEST 3",
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    Vector(
        "TEST 1024",
        "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
        "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
        TEST_1024_MESSAGE,
        "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350"
        "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
    ),
    Vector(
        "TEST SHA(abc)",
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]


def test_vector_messages_are_what_the_rfc_says() -> None:
    assert len(bytes.fromhex(TEST_1024_MESSAGE)) == 1023
    assert bytes.fromhex(RFC8032_VECTORS[-1].message) == hashlib.sha512(b"abc").digest()


@pytest.mark.parametrize("vector", RFC8032_VECTORS, ids=lambda v: v.name)
def test_rfc8032_public_key_and_signature(vector: Vector) -> None:
    identity = Identity(Principal("t", "a"), bytes.fromhex(vector.secret))
    assert identity.public_key.raw == bytes.fromhex(vector.public)
    assert identity.sign(bytes.fromhex(vector.message)) == bytes.fromhex(vector.signature)
    assert identity.seed == bytes.fromhex(vector.secret)


@pytest.mark.parametrize("vector", RFC8032_VECTORS, ids=lambda v: v.name)
def test_rfc8032_verify(vector: Vector) -> None:
    key = PublicKey(bytes.fromhex(vector.public))
    message = bytes.fromhex(vector.message)
    signature = bytes.fromhex(vector.signature)
    key.verify(message, signature)  # raises BadSignature if it does not verify
    bad = [(message + b"\x00", signature), (message, signature[:63]), (message, signature + b"\0")]
    for index in (0, 31, 32, 63):
        tampered = bytearray(signature)
        tampered[index] ^= 0x01
        bad.append((message, bytes(tampered)))
    for data, sig in bad:
        with pytest.raises(BadSignature):
            key.verify(data, sig)


# RFC 8037 appendix A: the OKP key of A.1/A.2 is RFC 8032 TEST 1; A.3 gives its thumbprint.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC8037_JWS = (
    b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
    b"hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)


def test_rfc8037_jwk_and_thumbprint() -> None:
    identity = Identity(Principal("t", "a"), unb64(RFC8037_D))
    assert identity.seed == bytes.fromhex(RFC8032_VECTORS[0].secret)
    assert identity.public_key.to_jwk() == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert identity.kid == RFC8037_THUMBPRINT


def test_rfc8037_a4_signature() -> None:
    identity = Identity(Principal("t", "a"), unb64(RFC8037_D))
    header, payload, signature = RFC8037_JWS.split(b".")
    assert unb64(header) == b'{"alg":"EdDSA"}'
    assert unb64(payload) == b"Example of Ed25519 signing"
    assert identity.sign(header + b"." + payload) == unb64(signature)
    identity.public_key.verify(header + b"." + payload, unb64(signature))


def test_rfc8037_a4_jws_is_refused_without_kid(refused: Callable[..., EnvelopeError]) -> None:
    identity = Identity(Principal("t", "a"), unb64(RFC8037_D))
    exc = refused(RFC8037_JWS, Keyring.of(identity), MalformedEnvelope)
    assert "exactly 'alg' and 'kid'" in str(exc)


# Wycheproof-style signature edge cases, through the envelope.

SMALL_ORDER_R = [
    bytes([1]) + bytes(31),  # the identity
    bytes(32),  # order 4
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),  # order 2
    bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),  # order 8
    bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),  # order 8
]


def _with_signature(token: bytes, signature: bytes) -> bytes:
    header, payload, _ = token.split(b".")
    return header + b"." + payload + b"." + b64(signature)


def _signature_variants(signature: bytes) -> dict[str, bytes]:
    r, s = signature[:32], int.from_bytes(signature[32:], "little")
    variants = {
        "s-plus-l": r + (s + ED25519_L).to_bytes(32, "little"),
        "s-plus-2l": r + (s + 2 * ED25519_L).to_bytes(32, "little"),
        "s-equals-l": r + ED25519_L.to_bytes(32, "little"),
        "s-all-ones": r + b"\xff" * 32,
        "s-zero": r + bytes(32),
        "r-and-s-swapped": signature[32:] + signature[:32],
        "all-zero": bytes(64),
        "all-ones": b"\xff" * 64,
        # R with its x sign bit flipped, and R replaced by a non-canonical y >= p.
        "r-sign-flipped": r[:31] + bytes([r[31] ^ 0x80]) + signature[32:],
        "r-non-canonical": (ED25519_P + 1).to_bytes(32, "little") + signature[32:],
    }
    for index, point in enumerate(SMALL_ORDER_R):
        variants[f"r-small-order-{index}"] = point + signature[32:]
        variants[f"r-small-order-{index}-s-zero"] = point + bytes(32)
    return variants


def test_signature_edge_cases_are_bad_signatures(
    alice: Identity,
    keyring: Keyring,
    claims_of: Callable[..., dict[str, object]],
    refused: Callable[..., EnvelopeError],
) -> None:
    token = sign_claims(claims_of(alice), alice)
    signature = unb64(token.rsplit(b".", 1)[1])
    assert verify_envelope(token, keyring).token == token
    variants = _signature_variants(signature)
    assert len(variants) == 20
    for name, variant in variants.items():
        assert len(variant) == 64, name
        assert variant != signature, name
        exc = refused(_with_signature(token, variant), keyring, BadSignature)
        assert exc.kid == alice.kid, name


def test_another_keys_signature_over_the_same_input_is_refused(
    alice: Identity,
    bob: Identity,
    keyring: Keyring,
    claims_of: Callable[..., dict[str, object]],
    refused: Callable[..., EnvelopeError],
) -> None:
    token = sign_claims(claims_of(alice), alice)
    signing_input = token.rsplit(b".", 1)[0]
    refused(_with_signature(token, bob.sign(signing_input)), keyring, BadSignature)


def test_small_order_key_forgery_is_refused_by_libsodium() -> None:
    # Under the identity point as public key, R = identity and S = 0 "verify" any message in a
    # cofactorless check that does not reject small-order keys (cryptography/OpenSSL does accept
    # it, see SECURITY.md). libsodium refuses it, and PublicKey never admits such a key.
    identity_point = bytes([1]) + bytes(31)
    forged = identity_point + bytes(32)
    with pytest.raises(nacl.exceptions.BadSignatureError):
        nacl.signing.VerifyKey(identity_point).verify(b"any message", forged)
