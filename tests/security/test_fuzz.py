"""Property-based fuzzing: every input is accepted as exactly an original event or refused typed.

The example count comes from ``EVENTWIRE_FUZZ_EXAMPLES`` (default 300), so a long run is e.g.
``EVENTWIRE_FUZZ_EXAMPLES=100000 .venv/bin/pytest tests/security/test_fuzz.py -s -k mutated``;
the mutation test prints how many inputs it ran and how each one ended.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventwire_security import (
    BadSignature,
    EnvelopeError,
    Identity,
    Keyring,
    MalformedClaims,
    OwnerMismatch,
    VerifiedEnvelope,
    sign_claims,
    verify_envelope,
)
from eventwire_security.hazmat import (
    sign_payload,
)

if TYPE_CHECKING:
    from collections.abc import Callable

EXAMPLES = int(os.environ.get("EVENTWIRE_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
INTERESTING = list(B64URL + b".=+/ \n\x00\x7f\x80\xff")


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@pytest.fixture(scope="module")
def ring(alice: Identity, bob: Identity, eve: Identity) -> Keyring:
    return Keyring.of(alice, bob, eve)


@pytest.fixture(scope="module")
def originals(
    alice: Identity, bob: Identity, eve: Identity, claims_of: Callable[..., dict[str, Any]]
) -> dict[bytes, tuple[dict[str, Any], Identity]]:
    """Valid tokens of three agents, each with the claims and signer it must verify as."""
    result: dict[bytes, tuple[dict[str, Any], Identity]] = {}
    for identity in (alice, bob, eve):
        for extra in ({}, {"id": "evt-2", "data": None}, {"data": "x" * 40}):
            claims = claims_of(identity, **extra)
            result[sign_claims(claims, identity)] = (claims, identity)
    return result


def check_accepted(
    result: VerifiedEnvelope, token: bytes, ring: Keyring, originals: dict[bytes, Any]
) -> None:
    assert token in originals, f"accepted a token that is not an original: {token!r}"
    claims, signer = originals[token]
    assert result.claims == claims
    assert result.signer == ring.get(signer.kid)
    assert result.token == token


# --- (a) random input ---


@FUZZ
@given(token=st.binary(max_size=2048))
def test_random_bytes(token: bytes, ring: Keyring) -> None:
    try:
        result = verify_envelope(token, ring)
    except EnvelopeError:
        return
    assert result.claims["source"] == result.signer.principal.source  # pragma: no cover


_SEGMENT = st.text(alphabet=B64URL.decode(), max_size=120).map(str.encode)


@FUZZ
@given(parts=st.lists(_SEGMENT, min_size=1, max_size=5))
def test_random_base64url_segments(parts: list[bytes], ring: Keyring) -> None:
    with pytest.raises(EnvelopeError):
        verify_envelope(b".".join(parts), ring)


@FUZZ
@given(payload=st.binary(max_size=300), signature=st.binary(min_size=64, max_size=64))
def test_random_signature_under_a_valid_header(
    payload: bytes, signature: bytes, alice: Identity, ring: Keyring
) -> None:
    header = sign_payload(b"", alice).split(b".")[0]
    with pytest.raises(BadSignature):
        verify_envelope(header + b"." + b64(payload) + b"." + b64(signature), ring)


_JSON_TEXT = st.recursive(
    st.sampled_from(["null", "true", "1", "-0", "1e400", "NaN", '"\\ud800"', '"x"', "1.5"]),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(st.sampled_from(['"a"', '"source"', '"tenant"', '"b"']), inner)).map(
            lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=12,
).map(str.encode)


@FUZZ
@given(payload=st.one_of(st.binary(max_size=200), _JSON_TEXT))
def test_signed_arbitrary_payloads(payload: bytes, alice: Identity, ring: Keyring) -> None:
    token = sign_payload(payload, alice)
    try:
        result = verify_envelope(token, ring)
    except (MalformedClaims, OwnerMismatch):
        return
    assert result.claims == json.loads(payload)
    assert result.claims["source"] == "acme/alice"
    assert result.claims["tenant"] == "acme"


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)


@FUZZ
@given(data=_JSON_VALUES, extra=st.dictionaries(st.text(max_size=8), _JSON_VALUES, max_size=3))
def test_claims_round_trip(
    data: Any, extra: dict[str, Any], alice: Identity, ring: Keyring
) -> None:
    claims = {**extra, "data": data, "source": "acme/alice", "tenant": "acme"}
    token = sign_claims(claims, alice)
    result = verify_envelope(token, ring)
    assert result.claims == claims
    assert json.dumps(result.claims, sort_keys=True) == json.dumps(claims, sort_keys=True)


# --- (b) mutations of valid tokens ---

_POS = st.integers(0, 1 << 16)
_MUTATION = st.one_of(
    st.tuples(st.just("flip"), _POS, st.integers(0, 7)),
    st.tuples(st.just("set"), _POS, st.sampled_from(INTERESTING)),
    st.tuples(
        st.just("insert"),
        _POS,
        st.binary(min_size=1, max_size=8)
        | st.lists(st.sampled_from(INTERESTING), min_size=1, max_size=8).map(bytes),
    ),
    st.tuples(st.just("delete"), _POS, st.integers(1, 16)),
    st.tuples(st.just("slice"), _POS, _POS),
    st.tuples(st.just("swap-part"), st.integers(0, 2), st.integers(0, 1 << 8)),
    st.tuples(st.just("duplicate"), _POS, st.integers(1, 16)),
)


def mutate(token: bytes, mutation: tuple[Any, ...], others: list[bytes]) -> bytes:
    kind, first, second = mutation
    data = bytearray(token)
    at = first % (len(data) + 1)
    if kind == "flip" and data:
        data[first % len(data)] ^= 1 << second
    elif kind == "set" and data:
        data[first % len(data)] = second
    elif kind == "insert":
        data[at:at] = second
    elif kind == "delete":
        del data[at : at + second]
    elif kind == "slice":
        end = second % (len(data) + 1)
        data = data[min(at, end) : max(at, end)]
    elif kind == "duplicate":
        data[at:at] = data[at : at + second]
    elif kind == "swap-part":
        parts = bytes(data).split(b".")
        donor = others[second % len(others)].split(b".")
        if first < len(parts):
            parts[first] = donor[first]
        data = bytearray(b".".join(parts))
    return bytes(data)


def test_mutated_envelopes_are_refused_or_identical(
    ring: Keyring, originals: dict[bytes, tuple[dict[str, Any], Identity]]
) -> None:
    tokens = list(originals)
    stats: Counter[str] = Counter()

    @FUZZ
    @given(
        token=st.sampled_from(tokens),
        mutations=st.lists(_MUTATION, min_size=1, max_size=4),
    )
    def run(token: bytes, mutations: list[tuple[Any, ...]]) -> None:
        mutated = token
        for mutation in mutations:
            mutated = mutate(mutated, mutation, tokens)
        stats["inputs"] += 1
        stats["changed" if mutated != token else "unchanged"] += 1
        try:
            result = verify_envelope(mutated, ring)
        except EnvelopeError as exc:
            stats[f"refused:{exc.reason}"] += 1
            return
        except Exception:
            stats["crashes"] += 1
            raise
        if mutated not in originals:
            stats["wrong-accepts"] += 1
        check_accepted(result, mutated, ring, originals)
        stats["accepted-original"] += 1

    run()
    summary = ", ".join(f"{key}={value}" for key, value in sorted(stats.items()))
    print(f"\n[fuzz] mutated envelopes (max_examples={EXAMPLES}): {summary}")
    assert stats["crashes"] == 0
    assert stats["wrong-accepts"] == 0
    assert stats["inputs"] >= min(EXAMPLES, 100)
    assert (
        stats["accepted-original"]
        + sum(value for key, value in stats.items() if key.startswith("refused:"))
        == stats["inputs"]
    )
