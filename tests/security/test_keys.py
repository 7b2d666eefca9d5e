"""Principals, names, identities and public keys (small-order and non-canonical points)."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventwire_security import (
    BadSignature,
    Identity,
    InvalidName,
    KeyRejected,
    Principal,
    PublicKey,
    SecurityError,
    TrustedKey,
    check_name,
)

# --- a tiny, slow, independent Ed25519 point model (RFC 8032 sections 5.1.3 and 5.1.4) ---

P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
L = 2**252 + 27742317777372353535851937790883648493
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)
IDENTITY: Point = (0, 1, 1, 0)


def decode_point(raw: bytes) -> Point | None:
    number = int.from_bytes(raw, "little")
    sign, y = number >> 255, number & ((1 << 255) - 1)
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P or (x == 0 and sign):
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def decode_valid(raw: bytes) -> Point:
    point = decode_point(raw)
    assert point is not None
    return point


def add(p: Point, q: Point) -> Point:
    a = (p[1] - p[0]) * (q[1] - q[0]) % P
    b = (p[1] + p[0]) * (q[1] + q[0]) % P
    c = 2 * D * p[3] * q[3] % P
    d = 2 * p[2] * q[2] % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def mul(k: int, p: Point) -> Point:
    result = IDENTITY
    while k:
        if k & 1:
            result = add(result, p)
        p, k = add(p, p), k >> 1
    return result


def encode_point(p: Point) -> bytes:
    inverse = pow(p[2], P - 2, P)
    x, y = p[0] * inverse % P, p[1] * inverse % P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def is_identity(p: Point) -> bool:
    return p[0] % P == 0 and (p[1] - p[2]) % P == 0


def acceptable(raw: bytes) -> bool:
    """Canonical, on the curve, and in the prime-order subgroup."""
    point = decode_point(raw)
    return point is not None and is_identity(mul(L, point))


def torsion_points() -> list[bytes]:
    """The 8 points of order dividing 8, derived from the curve rather than copied."""
    for y in range(2, 100):
        point = decode_point(y.to_bytes(32, "little"))
        if point is not None:
            torsion = mul(L, point)
            if not is_identity(mul(4, torsion)):
                return [encode_point(mul(k, torsion)) for k in range(8)]
    raise AssertionError("no point of order 8 found")


# The small-order encodings as listed by libsodium (ge25519_has_small_order) and Wycheproof.
LIBSODIUM_SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
POINT_REJECTED = "small-order or non-canonical Ed25519 point"


def rejected(raw: object) -> KeyRejected:
    with pytest.raises(KeyRejected) as info:
        PublicKey(raw)  # type: ignore[arg-type]
    assert info.value.kid is None
    return info.value


def test_derived_torsion_matches_the_published_list() -> None:
    derived = torsion_points()
    assert len(set(derived)) == 8
    published = {bytes.fromhex(h) for h in LIBSODIUM_SMALL_ORDER[:5]}
    with_sign_bit = {raw[:31] + bytes([raw[31] | 0x80]) for raw in published}
    # (0, 1) and (0, -1) have x = 0, so only 6 of the 10 sign variants are points.
    assert set(derived) <= published | with_sign_bit
    assert published <= set(derived)


@pytest.mark.parametrize("hex_key", LIBSODIUM_SMALL_ORDER)
@pytest.mark.parametrize("sign_bit", [0x00, 0x80])
def test_small_order_public_keys_are_rejected(hex_key: str, sign_bit: int) -> None:
    raw = bytearray.fromhex(hex_key)
    raw[31] |= sign_bit
    assert rejected(bytes(raw)).reason == POINT_REJECTED


def test_every_torsion_point_is_rejected() -> None:
    for raw in torsion_points():
        assert rejected(raw).reason == POINT_REJECTED


def test_non_canonical_encodings_are_rejected() -> None:
    # y = p .. 2^255 - 1 are the 19 non-canonical y values; each with both x sign bits.
    encodings = [
        (y | sign << 255).to_bytes(32, "little") for y in range(P, 2**255) for sign in (0, 1)
    ]
    assert len(encodings) == 38
    for raw in encodings:
        assert rejected(raw).reason == POINT_REJECTED


def test_mixed_order_point_is_rejected(alice: Identity) -> None:
    public = decode_valid(alice.public_key.raw)
    assert acceptable(alice.public_key.raw)
    for torsion in torsion_points()[1:]:
        mixed = encode_point(add(public, decode_valid(torsion)))
        assert not acceptable(mixed)
        assert rejected(mixed).reason == POINT_REJECTED


def test_point_not_on_the_curve_is_rejected() -> None:
    off_curve = next(
        y.to_bytes(32, "little")
        for y in range(2, 100)
        if decode_point(y.to_bytes(32, "little")) is None
    )
    assert rejected(off_curve).reason == POINT_REJECTED


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_wrong_length_public_keys_are_rejected(length: int) -> None:
    assert rejected(bytes(range(length))).reason == "an Ed25519 public key is 32 bytes"


@pytest.mark.parametrize("value", [None, "a" * 32, 42])
def test_non_bytes_public_keys_are_rejected(value: object, alice: Identity) -> None:
    assert rejected(value).reason == "an Ed25519 public key is 32 bytes"
    assert rejected(bytearray(alice.public_key.raw)).reason == "an Ed25519 public key is 32 bytes"


_VALID_KEYS = st.binary(min_size=32, max_size=32).map(
    lambda seed: Identity(Principal("t", "a"), seed).public_key.raw
)
_TORSION = [decode_valid(raw) for raw in torsion_points()]
_MIXED = st.tuples(_VALID_KEYS, st.integers(1, 7)).map(
    lambda pair: encode_point(add(decode_valid(pair[0]), _TORSION[pair[1]]))
)


def _flip(raw: bytes, bit: int) -> bytes:
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << bit % 8
    return bytes(flipped)


_FLIPPED = st.tuples(_VALID_KEYS, st.integers(0, 255)).map(lambda pair: _flip(*pair))


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.binary(min_size=32, max_size=32), _VALID_KEYS, _MIXED, _FLIPPED))
def test_public_key_accepted_exactly_when_the_model_says_so(raw: bytes) -> None:
    if acceptable(raw):
        key = PublicKey(raw)
        assert key.raw == raw
    else:
        assert rejected(raw).reason == POINT_REJECTED


# --- principals and names ---

VALID_NAMES = ["a", "Z", "0", "acme", "Agent_7", "a-b_c", "9lives", "x" * 64]
INVALID_NAMES = [
    "",
    "x" * 65,
    "a.b",
    "a b",
    " a",
    "a ",
    "*",
    ">",
    "a*",
    "orders.>",
    "café",
    "ａ",  # noqa: RUF001 - fullwidth letter on purpose
    "-a",
    "_a",
    "a/b",
    "a\n",
    "\na",
    "a\x00",
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name: str) -> None:
    assert check_name("agent", name) == name
    principal = Principal(name, name)
    assert principal.source == f"{name}/{name}"


@pytest.mark.parametrize("name", [*INVALID_NAMES, None, 7])
@pytest.mark.parametrize("kind", ["tenant", "agent"])
def test_invalid_names(name: str, kind: str) -> None:
    with pytest.raises(InvalidName) as info:
        check_name(kind, name)
    exc = info.value
    assert isinstance(exc, ValueError)
    assert isinstance(exc, SecurityError)
    assert (exc.kind, exc.value) == (kind, name)
    assert str(exc).startswith(f"invalid {kind} name {name!r}")
    args = ("acme", name) if kind == "agent" else (name, "alice")
    with pytest.raises(InvalidName) as info:
        Principal(*args)
    assert info.value.kind == kind


def test_principal_source_round_trip() -> None:
    principal = Principal("acme", "alice")
    assert principal.source == "acme/alice"
    assert Principal.from_source("acme/alice") == principal
    assert Principal.from_source(principal.source) is not principal
    assert hash(Principal.from_source("acme/alice")) == hash(principal)
    assert Principal("acme", "bob") != principal
    with pytest.raises(AttributeError):
        principal.agent = "bob"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        *(("acme", "source"), ("", "source"), ("/alice", "tenant"), ("acme/", "agent")),
        *(("acme/alice/x", "agent"), ("acme//alice", "agent"), ("a.b/alice", "tenant")),
    ],
)
def test_from_source_rejects(source: str, kind: str) -> None:
    with pytest.raises(InvalidName) as info:
        Principal.from_source(source)
    assert info.value.kind == kind


# --- identities and trusted keys ---


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), bytes(64), bytearray(32), "0" * 32])
def test_wrong_seeds_are_rejected(seed: object) -> None:
    with pytest.raises(KeyRejected) as info:
        Identity(Principal("t", "a"), seed)  # type: ignore[arg-type]
    assert info.value.reason == "an Ed25519 seed is 32 bytes"


def test_identity_basics(alice: Identity) -> None:
    seed = hashlib.sha256(b"eventwire-test-seed:acme/alice").digest()
    assert alice.seed == seed
    again = Identity(Principal("acme", "alice"), seed)
    assert again.kid == alice.kid
    assert again.public_key == alice.public_key
    assert alice.sign(b"m") == again.sign(b"m")
    assert len(alice.sign(b"m")) == 64
    alice.public_key.verify(b"m", alice.sign(b"m"))
    for bad in (b"short", alice.sign(b"other"), b"\x00" * 64):
        with pytest.raises(BadSignature) as info:
            alice.public_key.verify(b"m", bad)
        assert info.value.kid == alice.kid
    assert seed.hex() not in repr(alice)
    assert repr(alice) == f"Identity('acme/alice', kid={alice.kid!r})"


def test_generated_identities_are_distinct() -> None:
    first, second = Identity.generate("acme", "a"), Identity.generate("acme", "a")
    assert first.kid != second.kid
    assert first.seed != second.seed
    assert first.principal == second.principal == Principal("acme", "a")
    with pytest.raises(InvalidName):
        Identity.generate("acme", "a.b")


def test_kid_is_the_rfc7638_thumbprint(alice: Identity) -> None:
    x = alice.public_key.to_jwk()["x"]
    canonical = f'{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}'.encode()
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    assert alice.kid == expected
    assert len(alice.kid) == 43


def test_trusted_key_validity(alice: Identity) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    forever = alice.trusted()
    assert (forever.kid, forever.principal, forever.not_after, forever.revoked) == (
        alice.kid,
        alice.principal,
        None,
        False,
    )
    assert forever.valid_at(now) is True
    assert forever.valid_at() is True
    bounded = alice.trusted(not_after=now)
    assert bounded.valid_at(now) is True
    assert bounded.valid_at(now + timedelta(microseconds=1)) is False
    assert alice.trusted(not_after=datetime(2000, 1, 1, tzinfo=UTC)).valid_at() is False
    revoked = TrustedKey(alice.public_key, alice.principal, None, revoked=True)
    assert revoked.valid_at(now) is False
