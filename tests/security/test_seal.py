"""Sealed data (JWE, ECDH-ES+A256KW with X25519, A256GCM): keys, round trips and attacks.

Which error each attack gets:
- anything that is not the exact expected shape (members, types, algorithms, base64url,
  sizes, a non-canonical ``epk``): :class:`MalformedSeal` (the keys inside a recipient entry
  are decoded only by that recipient);
- a ``skid`` other than the expected sender (re-signing, or a re-encoded protected header
  naming another sender): :class:`SealSenderMismatch`, checked before any cryptography;
- no entry for the key: :class:`NotARecipient`;
- every cryptographic failure (tampered ciphertext, tag, iv, encrypted key, epk, a protected
  header re-encoded with the same members, another context, a wrong private key behind a
  matching kid, swapped recipient entries): :class:`SealBroken`, always with the same text.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventwire_security import EnvelopeError, KeyRejected, SecurityError, sign_claims
from eventwire_security import verify_envelope as verify
from eventwire_security._seal import (
    MAX_RECIPIENTS,
    InvalidRecipients,
    MalformedSeal,
    NotARecipient,
    RecipientKey,
    SealBroken,
    SealError,
    SealingKey,
    SealSenderMismatch,
    open_seal,
    seal,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire_security import Identity, Keyring

REASONS: dict[type[SealError], str] = {
    MalformedSeal: "malformed-seal",
    NotARecipient: "not-a-recipient",
    SealBroken: "seal-broken",
    SealSenderMismatch: "seal-sender-mismatch",
}
P = 2**255 - 19
ORDER_8 = (
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
)
# Every 32-byte encoding X25519 maps to a point of order 1, 2, 4 or 8 (RFC 7748 masks the top
# bit, so each value below also appears with bit 255 set): 0, 1, the two points of order 8,
# p-1, and the aliases p and p+1 of 0 and 1.
LOW_ORDER_U = [0, 1, *ORDER_8, P - 1, P, P + 1]
LOW_ORDER = [u.to_bytes(32, "little") for u in LOW_ORDER_U] + [
    (u | 1 << 255).to_bytes(32, "little") for u in LOW_ORDER_U
]
CONTEXT = b"acme.orders.created/evt-0001"
PLAINTEXT = bytes(range(64))
SIZES = [0, 1, 4096, 100_000]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def flip(text: str, index: int, bit: int = 0) -> str:
    """Flip one bit of the decoded bytes of a base64url member and re-encode it."""
    data = bytearray(unb64(text))
    data[index] ^= 1 << bit
    return b64(bytes(data))


def header_b64(header: dict[str, Any] | str) -> str:
    text = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    return b64(text.encode())


def sealing_key(name: str) -> SealingKey:
    return SealingKey(hashlib.sha256(f"eventwire-test-sealing:{name}".encode()).digest())


def refused(
    cls: type[SealError],
    jwe: Any,
    key: SealingKey,
    sender: str,
    context: bytes = b"",
) -> SealError:
    """Assert ``open_seal`` refuses with exactly ``cls`` and its stable reason code."""
    with pytest.raises(cls) as info:
        open_seal(jwe, key, expected_sender_kid=sender, context=context)
    exc = info.value
    assert type(exc) is cls, f"expected exactly {cls.__name__}, got {type(exc).__name__}: {exc}"
    assert exc.reason == REASONS[cls]
    assert str(exc).startswith(f"{REASONS[cls]}: ")
    return exc


@pytest.fixture(scope="module")
def keys() -> list[SealingKey]:
    return [sealing_key(f"r{index}") for index in range(12)]


@pytest.fixture(scope="module")
def outsider() -> SealingKey:
    return sealing_key("outsider")


@pytest.fixture(scope="module")
def sender(alice: Identity) -> str:
    """The sender's signing kid, as the SDK passes it."""
    return alice.kid


@pytest.fixture
def jwe(keys: list[SealingKey], sender: str) -> dict[str, Any]:
    """A fresh JWE of PLAINTEXT to keys[0..2] with CONTEXT."""
    return seal(PLAINTEXT, [k.public for k in keys[:3]], sender_kid=sender, context=CONTEXT)


# --- keys ---


def test_rfc7748_vector() -> None:
    # RFC 7748 section 6.1: Alice's and Bob's keys and their shared secret.
    alice = SealingKey(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob = SealingKey(
        bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    )
    assert alice.public.raw.hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert bob.public.raw.hex() == (
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    assert alice._exchange(bob.public.raw).hex() == shared
    assert bob._exchange(alice.public.raw).hex() == shared


def test_kid_is_the_rfc7638_thumbprint(keys: list[SealingKey]) -> None:
    for key in keys:
        x = b64(key.public.raw)
        members = f'{{"crv":"X25519","kty":"OKP","x":"{x}"}}'.encode()
        assert key.kid == key.public.kid == b64(hashlib.sha256(members).digest())
        assert key.public.to_jwk() == {"kty": "OKP", "crv": "X25519", "x": x}


def test_sealing_keys_differ_from_signing_kids(alice: Identity, keys: list[SealingKey]) -> None:
    # Same raw bytes as an Ed25519 key would still get another kid: crv is in the thumbprint.
    assert alice.kid not in {key.kid for key in keys}
    assert RecipientKey(alice.public_key.raw).kid != alice.kid


def test_generate_and_private_bytes_round_trip() -> None:
    first, second = SealingKey.generate(), SealingKey.generate()
    assert first.public != second.public
    again = SealingKey.from_private_bytes(first.private_bytes)
    assert again.public == first.public
    assert again.kid == first.kid
    assert repr(first) == f"SealingKey(kid={first.kid!r})"
    assert first.private_bytes.hex() not in repr(first)


@pytest.mark.parametrize("data", [b"", bytes(31), bytes(33), "k" * 32, bytearray(32), None])
def test_private_key_of_wrong_length_or_type(data: Any) -> None:
    with pytest.raises(KeyRejected, match="an X25519 private key is 32 bytes"):
        SealingKey(data)
    with pytest.raises(KeyRejected, match="an X25519 private key is 32 bytes"):
        SealingKey.from_private_bytes(data)


@pytest.mark.parametrize("data", [b"", bytes(31), b"\x09" + bytes(32), "k" * 32, None])
def test_public_key_of_wrong_length_or_type(data: Any) -> None:
    with pytest.raises(KeyRejected, match="an X25519 public key is 32 bytes"):
        RecipientKey(data)


def test_recipient_key_is_frozen_and_compares_by_bytes(keys: list[SealingKey]) -> None:
    key = keys[0].public
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.raw = bytes(32)  # type: ignore[misc]
    assert key == RecipientKey(key.raw)
    assert hash(key) == hash(RecipientKey(key.raw))
    assert RecipientKey.from_jwk(key.to_jwk()) == key


@pytest.mark.parametrize(
    "change",
    [
        {"d": "AAAA"},
        {"kid": "x"},
        {"crv": "Ed25519"},
        {"kty": "EC"},
        {"x": 1},
        {"x": "AAAA"},
        {"x": "=padded="},
    ],
)
def test_recipient_jwk_is_strict(keys: list[SealingKey], change: dict[str, Any]) -> None:
    with pytest.raises(KeyRejected):
        RecipientKey.from_jwk({**keys[0].public.to_jwk(), **change})


def test_recipient_jwk_refuses_padding_and_non_canonical_x(keys: list[SealingKey]) -> None:
    x = keys[0].public.to_jwk()["x"]
    for bad in (x + "=", x[:-1] + "+", base64.b64encode(keys[0].public.raw).decode()):
        if bad != x:
            with pytest.raises(KeyRejected):
                RecipientKey.from_jwk({"kty": "OKP", "crv": "X25519", "x": bad})


# --- small-order points ---


@pytest.mark.parametrize(
    "raw", LOW_ORDER, ids=[raw.hex()[:8] + raw.hex()[-4:] for raw in LOW_ORDER]
)
def test_small_order_points_are_refused(raw: bytes) -> None:
    # Ground truth: X25519 with this point is all zeros, which cryptography refuses.
    with pytest.raises(ValueError, match="shared key"):
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(raw))
    with pytest.raises(KeyRejected, match=r"small-order|canonical"):
        RecipientKey(raw)
    with pytest.raises(KeyRejected, match=r"small-order|canonical"):
        RecipientKey.from_jwk({"kty": "OKP", "crv": "X25519", "x": b64(raw)})


@pytest.mark.parametrize(
    "raw", LOW_ORDER, ids=[raw.hex()[:8] + raw.hex()[-4:] for raw in LOW_ORDER]
)
def test_seal_refuses_a_small_order_key_that_bypassed_the_constructor(
    raw: bytes, keys: list[SealingKey], sender: str
) -> None:
    # Defence in depth: should a RecipientKey ever hold such a point, the all-zero shared
    # secret is caught at seal time too.
    sneaky = object.__new__(RecipientKey)
    object.__setattr__(sneaky, "raw", raw)
    object.__setattr__(sneaky, "kid", "sneaky")
    object.__setattr__(sneaky, "_public", X25519PublicKey.from_public_bytes(raw))
    with pytest.raises(KeyRejected, match="small-order X25519 public key") as info:
        seal(b"secret", [keys[0].public, sneaky], sender_kid=sender)
    assert info.value.kid == "sneaky"


@pytest.mark.parametrize("u", [2, 3, 9, P - 2, P - 3, ORDER_8[0] + 1])
def test_points_next_to_small_order_ones_are_usable(u: int, sender: str) -> None:
    key = RecipientKey(u.to_bytes(32, "little"))
    jwe = seal(b"x", [key], sender_kid=sender)
    assert jwe["recipients"][0]["header"]["kid"] == key.kid


# --- round trips and shape ---


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("count", [1, 3, 10])
def test_round_trip(
    count: int, size: int, keys: list[SealingKey], outsider: SealingKey, sender: str
) -> None:
    plaintext = hashlib.shake_256(b"plaintext").digest(size) if size else b""
    recipients = keys[:count]
    jwe = seal(plaintext, [k.public for k in recipients], sender_kid=sender, context=CONTEXT)
    for key in recipients:
        assert open_seal(jwe, key, expected_sender_kid=sender, context=CONTEXT) == plaintext
    wire = json.loads(json.dumps(jwe))
    assert open_seal(wire, recipients[-1], expected_sender_kid=sender, context=CONTEXT) == (
        plaintext
    )
    refused(NotARecipient, jwe, outsider, sender, CONTEXT)


def test_shape(keys: list[SealingKey], sender: str) -> None:
    recipients = [k.public for k in keys[:3]]
    jwe = seal(b"hello", recipients, sender_kid=sender)
    assert list(jwe) == ["protected", "recipients", "iv", "ciphertext", "tag"]
    assert unb64(jwe["protected"]) == f'{{"enc":"A256GCM","skid":"{sender}"}}'.encode()
    assert len(unb64(jwe["iv"])) == 12
    assert len(unb64(jwe["tag"])) == 16
    assert len(unb64(jwe["ciphertext"])) == len(b"hello")
    epks = set()
    for entry, key in zip(jwe["recipients"], recipients, strict=True):
        assert list(entry) == ["header", "encrypted_key"]
        assert list(entry["header"]) == ["alg", "kid", "epk"]
        assert entry["header"]["alg"] == "ECDH-ES+A256KW"
        assert entry["header"]["kid"] == key.kid
        epk = entry["header"]["epk"]
        assert RecipientKey.from_jwk(epk).raw == unb64(epk["x"])
        epks.add(epk["x"])
        assert len(unb64(entry["encrypted_key"])) == 40
    assert len(epks) == 3  # a fresh ephemeral key per recipient
    with_context = seal(b"hello", recipients, sender_kid=sender, context=CONTEXT)
    assert list(with_context) == ["protected", "recipients", "aad", "iv", "ciphertext", "tag"]
    assert with_context["aad"] == b64(CONTEXT)


def test_every_seal_is_fresh(keys: list[SealingKey], sender: str) -> None:
    first = seal(PLAINTEXT, [keys[0].public], sender_kid=sender)
    second = seal(PLAINTEXT, [keys[0].public], sender_kid=sender)
    for member in ("iv", "ciphertext", "tag"):
        assert first[member] != second[member]
    one, two = first["recipients"][0], second["recipients"][0]
    assert one["header"]["epk"] != two["header"]["epk"]
    assert one["encrypted_key"] != two["encrypted_key"]


def test_recipient_order_does_not_matter(
    jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    jwe["recipients"].reverse()
    for key in keys[:3]:
        assert open_seal(jwe, key, expected_sender_kid=sender, context=CONTEXT) == PLAINTEXT


def test_max_recipients(sender: str) -> None:
    recipients = [sealing_key(f"many{index}") for index in range(MAX_RECIPIENTS + 1)]
    jwe = seal(b"x", [k.public for k in recipients[:MAX_RECIPIENTS]], sender_kid=sender)
    assert len(jwe["recipients"]) == MAX_RECIPIENTS
    assert open_seal(jwe, recipients[MAX_RECIPIENTS - 1], expected_sender_kid=sender) == b"x"
    with pytest.raises(InvalidRecipients, match="65 recipients > limit 64"):
        seal(b"x", [k.public for k in recipients], sender_kid=sender)
    # ...and a JWE with too many entries is refused when opened.
    extra = seal(b"x", [recipients[MAX_RECIPIENTS].public], sender_kid=sender)
    jwe["recipients"].append(extra["recipients"][0])
    refused(MalformedSeal, jwe, recipients[0], sender)


# --- seal-time refusals ---


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda keys: [], "at least one recipient"),
        (lambda keys: (), "at least one recipient"),
        (lambda keys: [keys[0].public, keys[1].public, keys[0].public], "listed twice"),
        (lambda keys: [keys[0].public, RecipientKey(keys[0].public.raw)], "listed twice"),
        (lambda keys: [keys[0]], "not private keys"),
        (lambda keys: [keys[0].public, keys[1].public.to_jwk()], "not private keys"),
        (lambda keys: keys[0].public, "must be a sequence"),
        (lambda keys: b"\x00" * 32, "must be a sequence"),
        (lambda keys: {keys[0].kid: keys[0].public}, "must be a sequence"),
    ],
)
def test_invalid_recipients(
    make: Callable[[list[SealingKey]], Any], message: str, keys: list[SealingKey], sender: str
) -> None:
    with pytest.raises(InvalidRecipients, match=message) as info:
        seal(b"x", make(keys), sender_kid=sender)
    assert info.value.reason == "invalid-recipients"
    assert str(info.value).startswith("invalid-recipients: ")
    assert isinstance(info.value, SecurityError)
    assert isinstance(info.value, ValueError)


def test_seal_argument_types(keys: list[SealingKey], sender: str) -> None:
    recipients = [keys[0].public]
    with pytest.raises(TypeError):
        seal("text", recipients, sender_kid=sender)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        seal(b"x", recipients, sender_kid=sender, context="ctx")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        seal(b"x", recipients, sender_kid=None)  # type: ignore[arg-type]
    for bad in ("", "k" * 129):
        with pytest.raises(ValueError, match="1 to 128 characters"):
            seal(b"x", recipients, sender_kid=bad)
    jwe = seal(b"x", recipients, sender_kid="k" * 128)
    assert open_seal(jwe, keys[0], expected_sender_kid="k" * 128) == b"x"


def test_open_argument_types(jwe: dict[str, Any], keys: list[SealingKey], sender: str) -> None:
    with pytest.raises(TypeError):
        open_seal(jwe, keys[0].public, expected_sender_kid=sender)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        open_seal(jwe, keys[0], expected_sender_kid=sender, context="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        open_seal(jwe, keys[0], expected_sender_kid=None)  # type: ignore[arg-type]


# --- recipients and keys on open ---


def test_non_recipient_cannot_open(
    jwe: dict[str, Any], outsider: SealingKey, keys: list[SealingKey], sender: str
) -> None:
    exc = refused(NotARecipient, jwe, outsider, sender, CONTEXT)
    assert exc.kid == outsider.kid
    refused(NotARecipient, jwe, keys[3], sender, CONTEXT)


def test_matching_kid_but_wrong_private_key(
    jwe: dict[str, Any], keys: list[SealingKey], outsider: SealingKey, sender: str
) -> None:
    # The outsider relabels keys[0]'s entry with its own kid: it still cannot unwrap.
    jwe["recipients"][0]["header"]["kid"] = outsider.kid
    exc = refused(SealBroken, jwe, outsider, sender, CONTEXT)
    assert exc.kid == outsider.kid
    refused(NotARecipient, jwe, keys[0], sender, CONTEXT)
    assert open_seal(jwe, keys[1], expected_sender_kid=sender, context=CONTEXT) == PLAINTEXT


@pytest.mark.parametrize(
    "path", [("encrypted_key",), ("header", "epk"), ("header", "kid"), ("header", "epk", "x")]
)
def test_swapped_between_recipients(
    path: tuple[str, ...], jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    first, second = jwe["recipients"][0], jwe["recipients"][1]
    *parents, leaf = path
    for name in parents:
        first, second = first[name], second[name]
    first[leaf], second[leaf] = second[leaf], first[leaf]
    refused(SealBroken, jwe, keys[0], sender, CONTEXT)
    refused(SealBroken, jwe, keys[1], sender, CONTEXT)
    assert open_seal(jwe, keys[2], expected_sender_kid=sender, context=CONTEXT) == PLAINTEXT


def test_entry_spliced_from_another_seal(
    jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    # The entry unwraps (it is a genuine entry for keys[0]) but to another content key.
    other = seal(b"other", [keys[0].public], sender_kid=sender, context=CONTEXT)
    jwe["recipients"][0] = other["recipients"][0]
    refused(SealBroken, jwe, keys[0], sender, CONTEXT)
    # ...and the other seal's body under this seal's entries.
    other.update({k: jwe[k] for k in ("iv", "ciphertext", "tag")})
    refused(SealBroken, other, keys[0], sender, CONTEXT)


# --- tampering ---


@pytest.mark.parametrize(
    "spot",
    [
        ("ciphertext", 0, 0),
        ("ciphertext", 31, 4),
        ("ciphertext", 63, 7),
        ("tag", 0, 0),
        ("tag", 15, 7),
        ("iv", 0, 0),
        ("iv", 11, 7),
    ],
)
def test_flipped_bit_in_body(
    spot: tuple[str, int, int], jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    member, index, bit = spot
    jwe[member] = flip(jwe[member], index, bit)
    for key in keys[:3]:
        refused(SealBroken, jwe, key, sender, CONTEXT)


@pytest.mark.parametrize(("index", "bit"), [(0, 0), (20, 3), (39, 7)])
def test_flipped_bit_in_encrypted_key(
    index: int, bit: int, jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    entry = jwe["recipients"][1]
    entry["encrypted_key"] = flip(entry["encrypted_key"], index, bit)
    refused(SealBroken, jwe, keys[1], sender, CONTEXT)
    assert open_seal(jwe, keys[0], expected_sender_kid=sender, context=CONTEXT) == PLAINTEXT


@pytest.mark.parametrize(("index", "bit"), [(0, 0), (0, 1), (16, 5), (31, 6)])
def test_flipped_bit_in_epk(
    index: int, bit: int, jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    epk = jwe["recipients"][0]["header"]["epk"]
    epk["x"] = flip(epk["x"], index, bit)
    refused(SealBroken, jwe, keys[0], sender, CONTEXT)


def test_epk_with_top_bit_set_is_malformed(
    jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    # X25519 ignores bit 255, so this alias would open: refused as non-canonical instead.
    epk = jwe["recipients"][0]["header"]["epk"]
    epk["x"] = flip(epk["x"], 31, 7)
    refused(MalformedSeal, jwe, keys[0], sender, CONTEXT)


@pytest.mark.parametrize("raw", LOW_ORDER[:5], ids=["0", "1", "order8a", "order8b", "p-1"])
def test_small_order_epk_is_broken(
    raw: bytes, jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    jwe["recipients"][0]["header"]["epk"]["x"] = b64(raw)
    refused(SealBroken, jwe, keys[0], sender, CONTEXT)


def test_every_bit_flip_of_the_protected_header_is_refused(
    jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    outcomes: Counter[str] = Counter()
    length = len(unb64(jwe["protected"]))
    for index in range(length):
        for bit in range(8):
            tampered = {**jwe, "protected": flip(jwe["protected"], index, bit)}
            with pytest.raises((MalformedSeal, SealSenderMismatch, SealBroken)) as info:
                open_seal(tampered, keys[0], expected_sender_kid=sender, context=CONTEXT)
            outcomes[type(info.value).__name__] += 1
    assert sum(outcomes.values()) == length * 8
    # Flips in the kid's characters name another sender; the rest break JSON or members.
    assert outcomes["SealSenderMismatch"] >= 43 * 5
    assert outcomes["MalformedSeal"] > 0


@pytest.mark.parametrize(
    "text",
    [
        '{"skid":"SENDER","enc":"A256GCM"}',
        '{"enc":"A256GCM", "skid":"SENDER"}',
        '{"enc":"A256GCM","skid":"SENDER"}\n',
        '{"enc":"A256G\\u0043M","skid":"SENDER"}',
    ],
)
def test_protected_header_re_encoded_with_same_meaning(
    text: str, jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    jwe["protected"] = header_b64(text.replace("SENDER", sender))
    refused(SealBroken, jwe, keys[0], sender, CONTEXT)


def test_protected_header_re_encoded_with_another_skid(
    jwe: dict[str, Any], keys: list[SealingKey], sender: str, bob: Identity
) -> None:
    jwe["protected"] = header_b64({"enc": "A256GCM", "skid": bob.kid})
    # Against the real sender the mismatch shows before any cryptography...
    exc = refused(SealSenderMismatch, jwe, keys[0], sender, CONTEXT)
    assert exc.kid == bob.kid
    # ...and the attacker's own kid as expected sender only gets it to the AEAD check.
    refused(SealBroken, jwe, keys[0], bob.kid, CONTEXT)


# --- sender binding: the re-signing attack ---


def test_resealing_under_another_sender_is_refused(
    jwe: dict[str, Any], keys: list[SealingKey], sender: str, bob: Identity
) -> None:
    exc = refused(SealSenderMismatch, jwe, keys[0], bob.kid, CONTEXT)
    assert exc.kid == sender
    assert sender in str(exc)
    assert bob.kid in str(exc)


def test_re_signing_attack_end_to_end(
    alice: Identity,
    bob: Identity,
    keyring: Keyring,
    keys: list[SealingKey],
    claims_of: Callable[..., dict[str, Any]],
) -> None:
    """Bob copies the sealed data of Alice's event into an event signed by himself."""
    data = seal(b"alice's secret", [keys[0].public], sender_kid=alice.kid, context=CONTEXT)
    genuine = verify(sign_claims(claims_of(alice, data=data), alice), keyring)
    sealed = genuine.claims["data"]
    expected = genuine.signer.kid
    assert open_seal(sealed, keys[0], expected_sender_kid=expected, context=CONTEXT) == (
        b"alice's secret"
    )
    forged = verify(sign_claims(claims_of(bob, data=data), bob), keyring)  # a valid signature
    sealed, expected = forged.claims["data"], forged.signer.kid
    exc = refused(SealSenderMismatch, sealed, keys[0], expected, CONTEXT)
    assert isinstance(exc, EnvelopeError)
    # Re-labelling the skid as Bob breaks the AEAD, as the protected header is authenticated.
    relabelled = {**data, "protected": header_b64({"enc": "A256GCM", "skid": bob.kid})}
    forged = verify(sign_claims(claims_of(bob, data=relabelled), bob), keyring)
    refused(SealBroken, forged.claims["data"], keys[0], forged.signer.kid, CONTEXT)


# --- context (aad) binding ---


def test_context_binding(jwe: dict[str, Any], keys: list[SealingKey], sender: str) -> None:
    for context in (b"", b"acme.orders.created/evt-0002", CONTEXT + b"\x00", CONTEXT[:-1]):
        refused(SealBroken, jwe, keys[0], sender, context)
    # Rewriting the aad member to match the attacker's context still fails the AEAD.
    other = b"acme.orders.created/evt-0002"
    refused(SealBroken, {**jwe, "aad": b64(other)}, keys[0], sender, other)
    # Dropping the aad member fails whatever the context.
    without = {k: v for k, v in jwe.items() if k != "aad"}
    refused(SealBroken, without, keys[0], sender, CONTEXT)
    refused(SealBroken, without, keys[0], sender, b"")


def test_no_context_means_no_aad(keys: list[SealingKey], sender: str) -> None:
    jwe = seal(b"x", [keys[0].public], sender_kid=sender)
    assert "aad" not in jwe
    assert open_seal(jwe, keys[0], expected_sender_kid=sender) == b"x"
    refused(SealBroken, jwe, keys[0], sender, CONTEXT)
    refused(SealBroken, {**jwe, "aad": b64(CONTEXT)}, keys[0], sender, CONTEXT)
    refused(MalformedSeal, {**jwe, "aad": ""}, keys[0], sender, b"")


def test_broken_says_nothing_about_what_failed(
    jwe: dict[str, Any], keys: list[SealingKey], outsider: SealingKey, sender: str
) -> None:
    cases = [
        {**jwe, "ciphertext": flip(jwe["ciphertext"], 0)},
        {**jwe, "tag": flip(jwe["tag"], 0)},
        {**jwe, "iv": flip(jwe["iv"], 0)},
        {**jwe, "aad": b64(b"other")},
        {**jwe, "recipients": [jwe["recipients"][1], jwe["recipients"][0]]},
    ]
    cases[-1]["recipients"] = copy.deepcopy(cases[-1]["recipients"])
    first, second = cases[-1]["recipients"]
    first["header"]["kid"], second["header"]["kid"] = keys[0].kid, keys[1].kid
    messages = {str(refused(SealBroken, case, keys[0], sender, CONTEXT)) for case in cases}
    assert messages == {
        "seal-broken: the sealed data does not open with this key, sender and context"
    }


# --- strictness ---


def set_member(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], Any]:
    def change(jwe: dict[str, Any]) -> Any:
        target: Any = jwe
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return jwe

    return change


def drop_member(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], Any]:
    def change(jwe: dict[str, Any]) -> Any:
        target: Any = jwe
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
        return jwe

    return change


def protected(**members: Any) -> Callable[[dict[str, Any]], Any]:
    """Re-encode the protected header with ``members`` (None drops one)."""

    def change(jwe: dict[str, Any]) -> Any:
        header = json.loads(unb64(jwe["protected"]))
        header.update(members)
        jwe["protected"] = header_b64({k: v for k, v in header.items() if v is not None})
        return jwe

    return change


def pad(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], Any]:
    def change(jwe: dict[str, Any]) -> Any:
        target: Any = jwe
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] += "=" * (-len(target[path[-1]]) % 4 or 4)
        return jwe

    return change


def standard_alphabet(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], Any]:
    def change(jwe: dict[str, Any]) -> Any:
        target: Any = jwe
        for step in path[:-1]:
            target = target[step]
        raw = unb64(target[path[-1]])
        # Re-encode with the standard alphabet; force a '+' or '/' if base64url had '-'/'_'.
        target[path[-1]] = base64.b64encode(raw).decode().rstrip("=") + "+"
        return jwe

    return change


H = ("recipients", 0, "header")
STRICT: dict[str, Callable[[dict[str, Any]], Any]] = {
    "unknown top-level member": set_member(("foo",), "bar"),
    "shared unprotected header": set_member(("unprotected",), {"cty": "json"}),
    "flattened member 'header'": set_member(("header",), {"alg": "ECDH-ES+A256KW"}),
    "flattened member 'encrypted_key'": set_member(("encrypted_key",), "AAAA"),
    "zip in protected": protected(zip="DEF"),
    "crit in protected": protected(crit=["exp"], exp=1),
    "alg in protected": protected(alg="ECDH-ES+A256KW"),
    "typ in protected": protected(typ="JWE"),
    "no skid": protected(skid=None),
    "no enc": protected(enc=None),
    "skid not a string": protected(skid=42),
    "empty skid": protected(skid=""),
    "enc A128GCM": protected(enc="A128GCM"),
    "enc A256CBC-HS512": protected(enc="A256CBC-HS512"),
    "protected not an object": lambda jwe: {**jwe, "protected": header_b64("[1]")},
    "protected not JSON": lambda jwe: {**jwe, "protected": b64(b"{enc")},
    "protected duplicate key": lambda jwe: {
        **jwe,
        "protected": header_b64('{"enc":"A256GCM","enc":"A256GCM","skid":"x"}'),
    },
    "protected too large": protected(skid="k" * 800),
    "protected not a string": set_member(("protected",), {"enc": "A256GCM"}),
    "alg ECDH-ES": set_member((*H, "alg"), "ECDH-ES"),
    "alg RSA-OAEP": set_member((*H, "alg"), "RSA-OAEP"),
    "alg ECDH-ES+A128KW": set_member((*H, "alg"), "ECDH-ES+A128KW"),
    "alg none": set_member((*H, "alg"), "none"),
    "alg missing": drop_member((*H, "alg")),
    "kid missing": drop_member((*H, "kid")),
    "kid not a string": set_member((*H, "kid"), 7),
    "epk missing": drop_member((*H, "epk")),
    "unknown header member": set_member((*H, "x5t"), "AAAA"),
    "enc in recipient header": set_member((*H, "enc"), "A256GCM"),
    "epk with d": set_member((*H, "epk", "d"), "AAAA"),
    "epk with kid": set_member((*H, "epk", "kid"), "AAAA"),
    "epk on X448": set_member((*H, "epk", "crv"), "X448"),
    "epk kty EC": set_member((*H, "epk", "kty"), "EC"),
    "epk x short": set_member((*H, "epk", "x"), b64(bytes(31))),
    "epk not an object": set_member((*H, "epk"), "AAAA"),
    "apu not base64url": set_member((*H, "apu"), "a+b"),
    "apu too long": set_member((*H, "apu"), b64(bytes(257))),
    "header not an object": set_member((*H,), [1]),
    "entry not an object": set_member(("recipients", 0), "x"),
    "entry extra member": set_member(("recipients", 0, "extra"), 1),
    "encrypted_key missing": drop_member(("recipients", 0, "encrypted_key")),
    "encrypted_key of 32 bytes": set_member(("recipients", 0, "encrypted_key"), b64(bytes(32))),
    "duplicate recipient kid": lambda jwe: {
        **jwe,
        "recipients": [*jwe["recipients"], copy.deepcopy(jwe["recipients"][0])],
    },
    "recipients empty": set_member(("recipients",), []),
    "recipients an object": set_member(("recipients",), {"0": 1}),
    "iv missing": drop_member(("iv",)),
    "tag missing": drop_member(("tag",)),
    "ciphertext missing": drop_member(("ciphertext",)),
    "protected missing": drop_member(("protected",)),
    "recipients missing": drop_member(("recipients",)),
    "iv of 16 bytes": set_member(("iv",), b64(bytes(16))),
    "tag truncated": set_member(("tag",), b64(bytes(12))),
    "iv an int": set_member(("iv",), 0),
    "ciphertext null": set_member(("ciphertext",), None),
    "iv padded": pad(("iv",)),
    "tag padded": pad(("tag",)),
    "ciphertext padded": pad(("ciphertext",)),
    "protected padded": pad(("protected",)),
    "aad padded": pad(("aad",)),
    "encrypted_key padded": pad(("recipients", 0, "encrypted_key")),
    "epk x padded": pad((*H, "epk", "x")),
    "ciphertext standard alphabet": standard_alphabet(("ciphertext",)),
    "iv non-ASCII": set_member(("iv",), "AAAAAAAAAAAAAAA\u00e9"),
    "tag non-canonical last char": lambda jwe: {**jwe, "tag": jwe["tag"][:-1] + "B"},
    "non-dict: None": lambda jwe: None,
    "non-dict: list": lambda jwe: [jwe],
    "non-dict: JSON text": json.dumps,
    "non-dict: bytes": lambda jwe: json.dumps(jwe).encode(),
}


@pytest.mark.parametrize("name", list(STRICT))
def test_strict_shape(name: str, jwe: dict[str, Any], keys: list[SealingKey], sender: str) -> None:
    tampered = STRICT[name](jwe)
    refused(MalformedSeal, tampered, keys[0], sender, CONTEXT)  # recipients[0] is keys[0]


def test_every_entry_is_checked_but_only_the_own_one_is_decoded(
    jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    # Members, alg and kid of every entry are checked by every recipient...
    jwe["recipients"][1]["header"]["alg"] = "RSA-OAEP"
    refused(MalformedSeal, jwe, keys[0], sender, CONTEXT)
    jwe["recipients"][1]["header"]["alg"] = "ECDH-ES+A256KW"
    # ...but the keys inside an entry are decoded only by its recipient, as only it uses them.
    jwe["recipients"][1]["header"]["epk"] = {"kty": "OKP", "crv": "X25519", "x": "!"}
    jwe["recipients"][1]["encrypted_key"] += "="
    assert open_seal(jwe, keys[0], expected_sender_kid=sender, context=CONTEXT) == PLAINTEXT
    refused(MalformedSeal, jwe, keys[1], sender, CONTEXT)


def test_standard_apu_apv_are_accepted_but_bound(
    jwe: dict[str, Any], keys: list[SealingKey], sender: str
) -> None:
    # seal never writes apu/apv; they are legitimate RFC 7518 members feeding the KDF, so
    # adding them changes the key-encryption key: refused as broken, not as malformed.
    jwe["recipients"][0]["header"]["apu"] = b64(b"Alice")
    refused(SealBroken, jwe, keys[0], sender, CONTEXT)
    jwe["recipients"][0]["header"]["apu"] = ""  # empty = absent, as in the RFC's KDF
    assert open_seal(jwe, keys[0], expected_sender_kid=sender, context=CONTEXT) == PLAINTEXT


def test_error_tree() -> None:
    for cls, reason in REASONS.items():
        assert issubclass(cls, SealError)
        assert issubclass(cls, EnvelopeError)
        assert cls.reason == reason
    assert issubclass(SealError, SecurityError)
    assert issubclass(InvalidRecipients, SecurityError)
    assert InvalidRecipients.reason == "invalid-recipients"


# --- fuzz: mutated JWEs open to exactly the original or are refused typed ---

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ODD_VALUES: list[Any] = [None, 0, True, "", "=", [], {}, "\u00e9", "A" * 2000]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for name, item in value.items():
            found.extend(paths(item, (*prefix, name)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(paths(item, (*prefix, index)))
    return found


def mutate(jwe: dict[str, Any], mutation: tuple[Any, ...]) -> dict[str, Any]:
    result = copy.deepcopy(jwe)
    every = paths(result)
    kind, which, first, second = mutation
    path = every[which % len(every)]
    parent: Any = result
    for step in path[:-1]:
        parent = parent[step]
    leaf = path[-1]
    value = parent[leaf]
    if kind == "drop":
        del parent[leaf]
    elif kind == "odd":
        parent[leaf] = ODD_VALUES[first % len(ODD_VALUES)]
    elif isinstance(value, str) and value:
        at = first % len(value)
        if kind == "char":
            parent[leaf] = value[:at] + B64URL[second % 64] + value[at + 1 :]
        elif kind == "flip" and all(c in B64URL for c in value) and len(value) % 4 != 1:
            raw = bytearray(unb64(value))
            if raw:
                raw[first % len(raw)] ^= 1 << (second % 8)
            parent[leaf] = b64(bytes(raw))
        elif kind == "truncate":
            parent[leaf] = value[:at]
    return result


_MUTATION = st.tuples(
    st.sampled_from(["drop", "odd", "char", "flip", "truncate"]),
    st.integers(0, 1 << 12),
    st.integers(0, 1 << 16),
    st.integers(0, 1 << 8),
)


@pytest.fixture(scope="module")
def original(keys: list[SealingKey], sender: str) -> dict[str, Any]:
    return seal(PLAINTEXT, [k.public for k in keys[:3]], sender_kid=sender, context=CONTEXT)


@FUZZ
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=3), reader=st.integers(0, 3))
def test_mutations_open_to_the_original_or_are_refused(
    mutations: list[tuple[Any, ...]],
    reader: int,
    original: dict[str, Any],
    keys: list[SealingKey],
    sender: str,
) -> None:
    jwe = original
    for mutation in mutations:
        jwe = mutate(jwe, mutation)
    try:
        result = open_seal(jwe, keys[reader], expected_sender_kid=sender, context=CONTEXT)
    except SealError as exc:
        refusal: SealError | None = exc
    else:
        refusal = None
        assert result == PLAINTEXT
        assert reader < 3
    assert refusal is None or type(refusal) in REASONS
