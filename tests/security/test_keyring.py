"""Keyring: lookup, ownership binding, revocation, expiry and rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from eventwire_security import (
    Identity,
    KeyNotValid,
    KeyRejected,
    Keyring,
    Principal,
    TrustedKey,
    UnknownKey,
    sign_claims,
    verify_envelope,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire_security import EnvelopeError

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def test_empty_keyring() -> None:
    keyring = Keyring()
    assert len(keyring) == 0
    assert list(keyring) == []
    assert "anything" not in keyring
    with pytest.raises(UnknownKey) as info:
        keyring.get("anything")
    assert (info.value.reason, info.value.kid) == ("unknown-key", "anything")


def test_of_get_resolve_contains(alice: Identity, bob: Identity, eve: Identity) -> None:
    keyring = Keyring.of(alice, bob)
    assert len(keyring) == 2
    assert alice.kid in keyring
    assert bob.kid in keyring
    assert eve.kid not in keyring
    assert 42 not in keyring
    assert keyring.get(alice.kid) == alice.trusted()
    assert keyring.resolve(alice.kid) == alice.trusted()
    assert keyring.resolve(bob.kid, NOW).principal == Principal("acme", "bob")
    assert {key.kid for key in keyring} == {alice.kid, bob.kid}
    with pytest.raises(UnknownKey) as info:
        keyring.resolve(eve.kid)
    assert info.value.kid == eve.kid


def test_constructor_and_add(alice: Identity, eve: Identity) -> None:
    keyring = Keyring([alice.trusted()])
    keyring.add(eve.trusted())
    assert len(keyring) == 2
    assert keyring.get(eve.kid).principal == eve.principal
    with pytest.raises(TypeError):
        keyring.add(alice.public_key)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Keyring([alice])  # type: ignore[list-item]


def test_keys_of(alice: Identity, bob: Identity) -> None:
    rotated = Identity(alice.principal, bytes(range(32)))
    keyring = Keyring.of(alice, bob, rotated)
    assert [key.kid for key in keyring.keys_of(alice.principal)] == [alice.kid, rotated.kid]
    assert keyring.keys_of(Principal("acme", "bob")) == [bob.trusted()]
    assert keyring.keys_of(Principal("acme", "nobody")) == []


def test_kid_cannot_be_rebound_to_another_principal(alice: Identity) -> None:
    keyring = Keyring.of(alice)
    impostor = TrustedKey(alice.public_key, Principal("acme", "mallory"))
    with pytest.raises(KeyRejected) as info:
        keyring.add(impostor)
    assert info.value.reason == "already bound to acme/alice"
    assert info.value.kid == alice.kid
    assert keyring.get(alice.kid).principal == alice.principal
    other_tenant = TrustedKey(alice.public_key, Principal("evil", "alice"))
    with pytest.raises(KeyRejected):
        keyring.add(other_tenant)
    with pytest.raises(KeyRejected):
        Keyring([alice.trusted(), impostor])


def test_revoke_is_immediate(
    alice: Identity,
    bob: Identity,
    claims_of: Callable[..., dict[str, Any]],
    refused: Callable[..., EnvelopeError],
) -> None:
    keyring = Keyring.of(alice, bob)
    token = sign_claims(claims_of(alice), alice)
    assert verify_envelope(token, keyring).claims == claims_of(alice)
    keyring.revoke(alice.kid)
    exc = refused(token, keyring, KeyNotValid)
    assert exc.kid == alice.kid
    assert exc.detail == "key was revoked"
    with pytest.raises(KeyNotValid):
        keyring.resolve(alice.kid, NOW)
    # Still known (so it cannot come back), and the other key is untouched.
    assert alice.kid in keyring
    assert keyring.get(alice.kid).revoked is True
    assert len(keyring) == 2
    assert verify_envelope(sign_claims(claims_of(bob), bob), keyring).signer == bob.trusted()


def test_revoked_key_cannot_be_trusted_again(alice: Identity) -> None:
    keyring = Keyring.of(alice)
    keyring.revoke(alice.kid)
    for entry in (alice.trusted(), alice.trusted(not_after=NOW)):
        with pytest.raises(KeyRejected) as info:
            keyring.add(entry)
        assert info.value.reason == "a revoked key cannot be trusted again"
    assert keyring.get(alice.kid).revoked is True
    # Re-adding it as revoked is harmless and keeps it revoked.
    keyring.add(TrustedKey(alice.public_key, alice.principal, NOW, revoked=True))
    assert keyring.get(alice.kid).revoked is True
    with pytest.raises(KeyNotValid):
        keyring.resolve(alice.kid)
    # A fresh keyring can hold a revoked entry from the start.
    fresh = Keyring([TrustedKey(alice.public_key, alice.principal, revoked=True)])
    with pytest.raises(KeyNotValid):
        fresh.resolve(alice.kid)


def test_revoke_keeps_expiry_and_unknown_revoke_fails(alice: Identity) -> None:
    keyring = Keyring([alice.trusted(not_after=NOW)])
    keyring.revoke(alice.kid)
    assert keyring.get(alice.kid) == TrustedKey(alice.public_key, alice.principal, NOW, True)
    with pytest.raises(UnknownKey):
        keyring.revoke("no-such-kid")


def test_expiry(
    alice: Identity,
    claims_of: Callable[..., dict[str, Any]],
    refused: Callable[..., EnvelopeError],
) -> None:
    keyring = Keyring([alice.trusted(not_after=NOW)])
    token = sign_claims(claims_of(alice), alice)
    assert verify_envelope(token, keyring, now=NOW - timedelta(days=1)).signer.not_after == NOW
    assert verify_envelope(token, keyring, now=NOW).claims["source"] == "acme/alice"
    exc = refused(token, keyring, KeyNotValid, now=NOW + timedelta(microseconds=1))
    assert exc.detail == "key has expired"
    assert keyring.resolve(alice.kid, NOW) == alice.trusted(not_after=NOW)
    with pytest.raises(KeyNotValid):
        keyring.resolve(alice.kid, NOW + timedelta(seconds=1))


def test_expired_in_the_past_refused_with_default_clock(
    alice: Identity,
    claims_of: Callable[..., dict[str, Any]],
    refused: Callable[..., EnvelopeError],
) -> None:
    keyring = Keyring([alice.trusted(not_after=datetime(2001, 1, 1, tzinfo=UTC))])
    refused(sign_claims(claims_of(alice), alice), keyring, KeyNotValid)
    with pytest.raises(KeyNotValid):
        keyring.resolve(alice.kid)


def test_re_adding_updates_expiry(alice: Identity) -> None:
    keyring = Keyring([alice.trusted(not_after=NOW)])
    later = NOW + timedelta(days=30)
    keyring.add(alice.trusted(not_after=later))
    assert len(keyring) == 1
    assert keyring.get(alice.kid).not_after == later
    assert keyring.resolve(alice.kid, NOW + timedelta(days=1)).not_after == later


def test_rotation_keeps_the_old_key_until_its_expiry(
    alice: Identity,
    claims_of: Callable[..., dict[str, Any]],
    refused: Callable[..., EnvelopeError],
) -> None:
    new = Identity(alice.principal, bytes(range(32, 64)))
    keyring = Keyring([alice.trusted(not_after=NOW), new.trusted()])
    old_token = sign_claims(claims_of(alice), alice)
    new_token = sign_claims(claims_of(new), new)
    before, after = NOW - timedelta(hours=1), NOW + timedelta(hours=1)
    assert verify_envelope(old_token, keyring, now=before).signer.kid == alice.kid
    assert verify_envelope(new_token, keyring, now=before).signer.kid == new.kid
    refused(old_token, keyring, KeyNotValid, now=after)
    assert verify_envelope(new_token, keyring, now=after).signer.kid == new.kid


def test_iteration_is_a_snapshot(alice: Identity, bob: Identity) -> None:
    keyring = Keyring.of(alice, bob)
    for key in keyring:
        keyring.revoke(key.kid)
    assert all(key.revoked for key in keyring)
    assert len(keyring) == 2
