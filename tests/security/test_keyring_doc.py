"""The signed, versioned keyring document: rollback, re-delivery, rotation and revocation."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pytest

from eventwire_security import (
    BadSignature,
    EnvelopeError,
    Identity,
    InvalidName,
    KeyNotValid,
    KeyRejected,
    Keyring,
    MalformedEnvelope,
    Principal,
    UnknownKey,
    sign_claims,
    verify_envelope,
)
from eventwire_security._keyring_doc import (
    KEYRING_TYPE,
    KeyEntry,
    KeyringConflict,
    KeyringDocument,
    KeyringDocumentInvalid,
    KeyringRollback,
)

if TYPE_CHECKING:
    from collections.abc import Callable

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
SMALL_ORDER = bytes([1]) + bytes(31)  # the neutral point


def _identity(tenant: str, agent: str) -> Identity:
    seed = hashlib.sha256(f"keyring-doc-test:{tenant}/{agent}".encode()).digest()
    return Identity(Principal(tenant, agent), seed)


@pytest.fixture(scope="module")
def admin() -> Identity:
    return _identity("acme", "admin")


@pytest.fixture(scope="module")
def admin2() -> Identity:
    return _identity("acme", "admin2")


@pytest.fixture(scope="module")
def alice2() -> Identity:
    """Alice's next key (same principal as the conftest ``alice``)."""
    return _identity("acme", "alice")


@pytest.fixture
def admins(admin: Identity, admin2: Identity) -> Keyring:
    return Keyring.of(admin, admin2)


def entry(identity: Identity, not_after: datetime | None = None) -> KeyEntry:
    return KeyEntry.from_trusted(identity.trusted(not_after=not_after))


@pytest.fixture
def v1(alice: Identity, bob: Identity) -> KeyringDocument:
    return KeyringDocument.create([entry(alice), entry(bob, NOW + 24 * HOUR)], now=NOW)


def payload_of(token: bytes) -> dict[str, Any]:
    part = token.split(b".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4)))
    return value


def test_round_trip(v1: KeyringDocument, admin: Identity, admins: Keyring) -> None:
    token = v1.sign(admin)
    assert KeyringDocument.verify(token, admins, min_version=0) == v1
    claims = payload_of(token)
    assert claims["source"] == "acme/admin"
    assert claims["tenant"] == "acme"
    assert claims["type"] == KEYRING_TYPE
    assert claims["version"] == 1
    assert claims["issued_at"] == "2030-06-01T12:00:00Z"
    first, second = claims["keys"]
    assert set(first) == {"tenant", "agent", "public_key", "kid", "not_after", "status"}
    assert (first["not_after"], first["status"]) == (None, "active")
    assert second["not_after"] == "2030-06-02T12:00:00Z"
    assert "=" not in first["public_key"]
    assert base64.urlsafe_b64decode(first["public_key"] + "=") == v1.keys[0].public_key


def test_version_rules(v1: KeyringDocument, admin: Identity, admins: Keyring) -> None:
    v2 = v1.revoke(v1.keys[1].kid, now=NOW + HOUR)
    t2 = v2.sign(admin)
    assert KeyringDocument.verify(t2, admins, min_version=1, current=v1) == v2
    assert KeyringDocument.verify(t2, admins, min_version=0) == v2  # may skip versions
    # Re-delivery of the held version: accepted, idempotent.
    assert KeyringDocument.verify(t2, admins, min_version=2, current=v2) == v2


def test_rollback_refused(v1: KeyringDocument, admin: Identity, admins: Keyring) -> None:
    v2 = v1.revoke(v1.keys[1].kid, now=NOW)
    with pytest.raises(KeyringRollback) as info:
        KeyringDocument.verify(v1.sign(admin), admins, min_version=2, current=v2)
    exc = info.value
    assert type(exc) is KeyringRollback
    assert (exc.reason, exc.have, exc.want, exc.kid) == ("keyring-rollback", 1, 2, admin.kid)
    assert isinstance(exc, EnvelopeError)
    with pytest.raises(KeyringRollback):
        KeyringDocument.verify(v1.sign(admin), admins, min_version=7)


def test_equal_version_needs_identical_content(
    v1: KeyringDocument, admin: Identity, admin2: Identity, admins: Keyring, bob: Identity
) -> None:
    # The same content signed by another admin is the same document.
    assert KeyringDocument.verify(v1.sign(admin2), admins, min_version=1, current=v1) == v1
    # Two different documents claiming version 1: equivocation, refused.
    other = KeyringDocument(1, NOW, (entry(bob),))
    with pytest.raises(KeyringConflict) as info:
        KeyringDocument.verify(other.sign(admin), admins, min_version=1, current=v1)
    assert (info.value.reason, info.value.have, info.value.want) == ("keyring-conflict", 1, 1)
    assert isinstance(info.value, KeyringRollback)
    later = dataclasses.replace(v1, issued_at=NOW + SECOND)
    with pytest.raises(KeyringConflict):
        KeyringDocument.verify(later.sign(admin), admins, min_version=1, current=v1)
    # Without the held content a re-delivery cannot be told from equivocation.
    with pytest.raises(KeyringConflict):
        KeyringDocument.verify(v1.sign(admin), admins, min_version=1)


def test_verify_arguments(v1: KeyringDocument, admin: Identity, admins: Keyring) -> None:
    token = v1.sign(admin)
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="min_version"):
            KeyringDocument.verify(token, admins, min_version=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="current"):
        KeyringDocument.verify(token, admins, min_version=3, current=v1)


def test_receiver_flow(v1: KeyringDocument, admin: Identity, admins: Keyring) -> None:
    """A receiver holding the newest document it accepted, fed tokens in any order."""
    v2 = v1.revoke(v1.keys[1].kid, now=NOW)
    v3 = v2.add(entry(_identity("acme", "carol")), now=NOW)
    held: KeyringDocument | None = None
    accepted = []
    for doc in (v1, v2, v1, v3, v2, v3, v1):
        version = 0 if held is None else held.version
        try:
            held = KeyringDocument.verify(
                doc.sign(admin), admins, min_version=version, current=held
            )
        except KeyringRollback:
            continue
        accepted.append(doc.version)
    assert accepted == [1, 2, 3, 3]
    assert held == v3


def test_tampered_token_refused(
    v1: KeyringDocument, admin: Identity, admins: Keyring, alice: Identity
) -> None:
    token = v1.sign(admin)
    header, _, signature = token.split(b".")
    claims = payload_of(token)
    claims["version"] = 99
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    with pytest.raises(BadSignature):
        KeyringDocument.verify(header + b"." + forged + b"." + signature, admins, min_version=0)
    for index in (len(header) + 5, len(token) - 5):
        flipped = bytearray(token)
        flipped[index] = ord("A") if flipped[index] != ord("A") else ord("B")
        with pytest.raises((BadSignature, MalformedEnvelope)):
            KeyringDocument.verify(bytes(flipped), admins, min_version=0)
    with pytest.raises(MalformedEnvelope):
        KeyringDocument.verify(token[:-10], admins, min_version=0)


def test_non_admin_signer_refused(v1: KeyringDocument, admin: Identity, alice: Identity) -> None:
    with pytest.raises(UnknownKey):
        KeyringDocument.verify(v1.sign(alice), Keyring.of(admin), min_version=0)
    expired = Keyring([admin.trusted(not_after=NOW - SECOND)])
    with pytest.raises(KeyNotValid):
        KeyringDocument.verify(v1.sign(admin), expired, min_version=0, now=NOW)
    revoked = Keyring.of(admin)
    revoked.revoke(admin.kid)
    with pytest.raises(KeyNotValid):
        KeyringDocument.verify(v1.sign(admin), revoked, min_version=0, now=NOW)
    # Trusting the agent keys as admins would be a configuration error, not a bypass:
    # the document must still be signed by a key in the keyring passed as ``admins``.
    with pytest.raises(UnknownKey):
        KeyringDocument.verify(v1.sign(admin), v1.to_keyring(), min_version=0)


def _claims(admin: Identity, v1: KeyringDocument, change: Callable[[dict[str, Any]], None]) -> Any:
    claims = v1.claims(admin.principal)
    change(claims)
    return claims


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(claims: dict[str, Any]) -> None:
        target: Any = claims
        *parents, last = path.split("/")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        key: Any = int(last) if isinstance(target, list) else last
        if value is KeyError:
            del target[key]
        else:
            target[key] = value

    return change


MALFORMED = {
    "extra-claim": _set("extra", 1),
    "missing-keys": _set("keys", KeyError),
    "other-type": _set("type", "eventwire.audit/1"),
    "version-str": _set("version", "2"),
    "version-bool": _set("version", True),
    "version-float": _set("version", 2.0),
    "version-zero": _set("version", 0),
    "version-huge": _set("version", 2**60),
    "issued-at-naive": _set("issued_at", "2030-06-01T12:00:00"),
    "issued-at-offset": _set("issued_at", "2030-06-01T12:00:00+02:00"),
    "issued-at-date": _set("issued_at", "2030-06-01"),
    "issued-at-month-13": _set("issued_at", "2030-13-01T12:00:00Z"),
    "keys-object": _set("keys", {}),
    "entry-extra": _set("keys/0/comment", "x"),
    "entry-missing": _set("keys/0/status", KeyError),
    "entry-not-object": _set("keys/0", "key"),
    "entry-kid-mismatch": _set("keys/0/kid", "A" * 43),
    "entry-bad-b64": _set("keys/0/public_key", "not base64!"),
    "entry-padded-b64": _set("keys/0/public_key", "AAAA="),
    "entry-short-key": _set("keys/0/public_key", "AAAA"),
    "entry-small-order": _set(
        "keys/0/public_key", base64.urlsafe_b64encode(SMALL_ORDER).rstrip(b"=").decode()
    ),
    "entry-status": _set("keys/0/status", "suspended"),
    "entry-status-int": _set("keys/0/status", 1),
    "entry-not-after": _set("keys/0/not_after", 1900000000),
    "entry-tenant": _set("keys/0/tenant", "ac.me"),
    "entry-agent-null": _set("keys/0/agent", None),
    "duplicate-kid": lambda claims: claims["keys"].append(dict(claims["keys"][0])),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_document_refused(
    v1: KeyringDocument, admin: Identity, admins: Keyring, name: str
) -> None:
    token = sign_claims(_claims(admin, v1, MALFORMED[name]), admin)
    with pytest.raises(KeyringDocumentInvalid) as info:
        KeyringDocument.verify(token, admins, min_version=0)
    assert (info.value.reason, info.value.kid) == ("keyring-invalid", admin.kid)


def test_other_signed_things_are_not_keyrings(admin: Identity, admins: Keyring) -> None:
    event = {"source": "acme/admin", "tenant": "acme", "id": "e1", "version": 5, "keys": []}
    with pytest.raises(KeyringDocumentInvalid):
        KeyringDocument.verify(sign_claims(event, admin), admins, min_version=0)
    deep = {"source": "acme/admin", "tenant": "acme", "keys": [[[[[]]]]]}
    with pytest.raises(EnvelopeError):
        KeyringDocument.verify(sign_claims(deep, admin), admins, min_version=0)


def test_rotation_keeps_old_key_until_grace(
    v1: KeyringDocument,
    admin: Identity,
    alice: Identity,
    alice2: Identity,
    claims_of: Callable[..., dict[str, Any]],
) -> None:
    admins = Keyring.of(admin)
    grace = NOW + HOUR
    v2 = v1.rotate(alice.kid, entry(alice2), grace, now=NOW)
    assert (v2.version, v2.issued_at) == (2, NOW)
    assert v2.get(alice.kid).not_after == grace
    assert v2.get(alice.kid).status == "active"
    assert v2.get(alice2.kid) == entry(alice2)
    assert v1.get(alice.kid).not_after is None  # the old version is untouched
    keyring = KeyringDocument.verify(v2.sign(admin), admins, min_version=1, current=v1).to_keyring()
    assert keyring.resolve(alice.kid, NOW + HOUR / 2).principal == alice.principal
    assert keyring.resolve(alice.kid, grace).kid == alice.kid  # inclusive
    with pytest.raises(KeyNotValid):
        keyring.resolve(alice.kid, grace + SECOND)
    assert keyring.resolve(alice2.kid, grace + 1000 * HOUR).kid == alice2.kid
    old_event = sign_claims(claims_of(alice), alice)
    assert verify_envelope(old_event, keyring, now=NOW + HOUR / 2).signer.kid == alice.kid
    with pytest.raises(KeyNotValid):
        verify_envelope(old_event, keyring, now=grace + SECOND)
    assert verify_envelope(sign_claims(claims_of(alice2), alice2), keyring, now=grace + HOUR)


def test_rotation_keeps_an_earlier_expiry(v1: KeyringDocument, bob: Identity) -> None:
    bob2 = _identity("acme", "bob")
    expiry = NOW + 24 * HOUR
    later = v1.rotate(bob.kid, entry(bob2), expiry + HOUR, now=NOW)
    assert later.get(bob.kid).not_after == expiry
    sooner = v1.rotate(bob.kid, entry(bob2), NOW + HOUR, now=NOW)
    assert sooner.get(bob.kid).not_after == NOW + HOUR


def test_rotation_errors(
    v1: KeyringDocument, alice: Identity, alice2: Identity, bob: Identity, eve: Identity
) -> None:
    with pytest.raises(UnknownKey):
        v1.rotate(eve.kid, entry(alice2), NOW)
    with pytest.raises(KeyRejected, match="must belong to acme/alice"):
        v1.rotate(alice.kid, entry(eve), NOW)
    with pytest.raises(KeyRejected, match="already in"):
        v1.rotate(alice.kid, entry(alice), NOW)
    revoked_new = dataclasses.replace(entry(alice2), status="revoked")
    with pytest.raises(KeyRejected, match="must be active"):
        v1.rotate(alice.kid, revoked_new, NOW)
    with pytest.raises(KeyRejected, match="revoked key cannot be rotated"):
        v1.revoke(alice.kid).rotate(alice.kid, entry(alice2), NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        v1.rotate(alice.kid, entry(alice2), datetime(2030, 1, 1))


def test_revocation_is_immediate(
    v1: KeyringDocument, admin: Identity, admins: Keyring, bob: Identity
) -> None:
    before = v1.to_keyring()
    assert before.resolve(bob.kid, NOW).kid == bob.kid
    v2 = v1.revoke(bob.kid, now=NOW)
    assert (v2.version, v2.get(bob.kid).status) == (2, "revoked")
    assert v2.get(bob.kid).not_after == NOW + 24 * HOUR
    keyring = KeyringDocument.verify(v2.sign(admin), admins, min_version=1, current=v1).to_keyring()
    with pytest.raises(KeyNotValid, match="revoked"):
        keyring.resolve(bob.kid, NOW)
    with pytest.raises(KeyRejected, match="cannot be trusted again"):
        keyring.add(bob.trusted())
    with pytest.raises(KeyRejected, match="already revoked"):
        v2.revoke(bob.kid)
    with pytest.raises(UnknownKey):
        v2.revoke("no-such-kid")
    # A revoked entry stays in every later version.
    v3 = v2.add(entry(_identity("acme", "carol")))
    assert v3.get(bob.kid).status == "revoked"
    assert v3.version == 3


def test_to_keyring(v1: KeyringDocument, alice: Identity, bob: Identity) -> None:
    keyring = v1.revoke(alice.kid).to_keyring()
    assert len(keyring) == 2
    assert keyring.get(alice.kid).revoked
    assert keyring.get(alice.kid).principal == alice.principal
    assert keyring.get(bob.kid) == bob.trusted(not_after=NOW + 24 * HOUR)
    assert keyring.keys_of(Principal("acme", "bob")) == [keyring.get(bob.kid)]
    assert len(KeyringDocument.create(now=NOW).to_keyring()) == 0


def test_entry_validation(alice: Identity, bob: Identity) -> None:
    raw = alice.public_key.raw
    assert entry(alice).principal == alice.principal
    assert entry(alice).trusted() == alice.trusted()
    with pytest.raises(KeyRejected, match="thumbprint"):
        KeyEntry("acme", "alice", raw, bob.kid)
    with pytest.raises(KeyRejected):
        KeyEntry("acme", "alice", SMALL_ORDER, alice.kid)
    with pytest.raises(KeyRejected):
        KeyEntry("acme", "alice", raw[:31], alice.kid)
    with pytest.raises(InvalidName):
        KeyEntry("acme", "al.ice", raw, alice.kid)
    with pytest.raises(ValueError, match="timezone-aware"):
        KeyEntry("acme", "alice", raw, alice.kid, datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="status"):
        KeyEntry("acme", "alice", raw, alice.kid, None, "paused")  # type: ignore[arg-type]
    revoked = KeyEntry.from_trusted(dataclasses.replace(alice.trusted(), revoked=True))
    assert revoked.status == "revoked"
    assert revoked.trusted().revoked


def test_document_validation(alice: Identity) -> None:
    for version in (0, -1, True, 1.5, 2**53):
        with pytest.raises(ValueError, match="version"):
            KeyringDocument(version, NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        KeyringDocument(1, datetime(2030, 1, 1))
    with pytest.raises(KeyRejected, match="listed twice"):
        KeyringDocument(1, NOW, (entry(alice), entry(alice)))
    with pytest.raises(TypeError):
        KeyringDocument(1, NOW, (alice.trusted(),))  # type: ignore[arg-type]
    with pytest.raises(KeyRejected, match="already in"):
        KeyringDocument(1, NOW, (entry(alice),)).add(entry(alice))
    listed = KeyringDocument(1, NOW, [entry(alice)])  # type: ignore[arg-type]
    assert listed.keys == (entry(alice),)
    assert alice.kid in listed
    assert "nope" not in listed
    offset = datetime(2030, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert KeyringDocument(1, offset).claims(alice.principal)["issued_at"] == (
        "2030-06-01T12:00:00Z"
    )
