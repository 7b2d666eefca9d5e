"""The keyring as a signed, versioned document, so that a rolled-back keyring is refused.

An admin identity signs the document as a compact JWS (claims ``source``/``tenant`` name the
admin, ``type`` is ``eventwire.keyring/1``). Receivers verify it against a separate keyring of
admin keys and hold on to the highest version they accepted.

Version rule, with ``held`` the version a receiver already holds (0 if none; versions start
at 1):

* ``version < held``: refused, :class:`KeyringRollback` (an old document replayed).
* ``version == held``: accepted only if the content equals the held document (``current``):
  a re-delivery is harmless and idempotent. Different content under the same version means
  two admins (or one compromised admin) signed diverging documents: refused,
  :class:`KeyringConflict`, and so is an equal version when ``current`` is not given, since
  it cannot be told apart from equivocation. Receivers should keep the accepted document
  (e.g. its token) next to the version, so they can pass ``current`` after a restart.
* ``version > held``: accepted.

Content equality is over ``version``, ``issued_at`` and the ordered ``keys``; it does not
depend on which admin signed.

Entries are never dropped by :meth:`KeyringDocument.rotate` and :meth:`KeyringDocument.revoke`:
a revoked entry stays in every later version, so it cannot be trusted again by accident.
Any admin in the admin keyring may list keys of any tenant: pass only a tenant's own admin
keys when a document must be confined to one tenant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from ._b64 import b64url_decode, b64url_encode
from ._envelope import DEFAULT_MAX_BYTES, sign_claims, verify_envelope
from ._errors import EnvelopeError, KeyRejected, SecurityError, UnknownKey
from ._keyring import Keyring
from ._keys import Principal, PublicKey, TrustedKey
from ._rfc3339 import aware, format_utc, parse_utc

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._keys import Identity

KEYRING_TYPE = "eventwire.keyring/1"
MAX_VERSION = 2**53 - 1  # exact in every JSON implementation
Status = Literal["active", "revoked"]
_STATUSES = ("active", "revoked")
_DOCUMENT_FIELDS = frozenset({"source", "tenant", "type", "version", "issued_at", "keys"})
_ENTRY_FIELDS = frozenset({"tenant", "agent", "public_key", "kid", "not_after", "status"})


class KeyringDocumentInvalid(EnvelopeError):
    """A signed keyring document whose claims are not a well-formed keyring."""

    reason = "keyring-invalid"


class KeyringRollback(EnvelopeError):
    """The document's version ``have`` is below ``want``, the version already held."""

    reason = "keyring-rollback"

    def __init__(self, detail: str, *, have: int, want: int, kid: str | None = None) -> None:
        super().__init__(detail, kid=kid)
        self.have = have
        self.want = want


class KeyringConflict(KeyringRollback):
    """Same version as the held document, but other (or unknown) content: not accepted."""

    reason = "keyring-conflict"


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """One trusted public key of one ``(tenant, agent)`` with its expiry and status."""

    tenant: str
    agent: str
    public_key: bytes
    kid: str
    not_after: datetime | None = None
    status: Status = "active"

    def __post_init__(self) -> None:
        Principal(self.tenant, self.agent)  # InvalidName
        key = PublicKey(self.public_key)  # KeyRejected: length, small order
        if self.kid != key.kid:
            raise KeyRejected("kid is not the public key's thumbprint", self.kid)
        if self.not_after is not None:
            aware(self.not_after, "not_after")
        if self.status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {self.status!r}")

    @classmethod
    def from_trusted(cls, key: TrustedKey) -> KeyEntry:
        status: Status = "revoked" if key.revoked else "active"
        principal = key.principal
        raw = key.public_key.raw
        return cls(principal.tenant, principal.agent, raw, key.kid, key.not_after, status)

    @property
    def principal(self) -> Principal:
        return Principal(self.tenant, self.agent)

    def trusted(self) -> TrustedKey:
        """The keyring entry; a revoked entry comes out revoked."""
        key = PublicKey(self.public_key)
        return TrustedKey(key, self.principal, self.not_after, self.status == "revoked")

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "agent": self.agent,
            "public_key": b64url_encode(self.public_key).decode(),
            "kid": self.kid,
            "not_after": None if self.not_after is None else format_utc(self.not_after),
            "status": self.status,
        }

    @classmethod
    def from_json(cls, value: object) -> KeyEntry:
        """Parse one entry strictly; ``ValueError``/``SecurityError`` if malformed."""
        if not isinstance(value, dict) or set(value) != _ENTRY_FIELDS:
            raise ValueError(f"a key entry has exactly the fields {sorted(_ENTRY_FIELDS)}")
        for name in ("tenant", "agent", "public_key", "kid", "status"):
            if not isinstance(value[name], str):
                raise ValueError(f"key entry field {name!r} must be a string")
        not_after = value["not_after"]
        return cls(
            tenant=value["tenant"],
            agent=value["agent"],
            public_key=b64url_decode(value["public_key"].encode("ascii")),
            kid=value["kid"],
            not_after=None if not_after is None else parse_utc(not_after),
            status=value["status"],
        )


@dataclass(frozen=True, slots=True)
class KeyringDocument:
    """Version ``version`` of a tenant's (or a deployment's) trusted public keys."""

    version: int
    issued_at: datetime
    keys: tuple[KeyEntry, ...] = ()

    def __post_init__(self) -> None:
        if type(self.version) is not int or not 1 <= self.version <= MAX_VERSION:
            raise ValueError(f"version must be an int in 1..{MAX_VERSION}")
        aware(self.issued_at, "issued_at")
        object.__setattr__(self, "keys", tuple(self.keys))
        seen: set[str] = set()
        for entry in self.keys:
            if not isinstance(entry, KeyEntry):
                raise TypeError(f"expected KeyEntry, got {type(entry).__name__}")
            if entry.kid in seen:
                raise KeyRejected("listed twice", entry.kid)
            seen.add(entry.kid)

    @classmethod
    def create(
        cls, keys: Iterable[KeyEntry] = (), *, now: datetime | None = None
    ) -> KeyringDocument:
        """Version 1 with ``keys``."""
        return cls(1, now or datetime.now(UTC), tuple(keys))

    def get(self, kid: str) -> KeyEntry:
        for entry in self.keys:
            if entry.kid == kid:
                return entry
        raise UnknownKey("kid is not in the keyring document", kid=kid)

    def __contains__(self, kid: object) -> bool:
        return any(entry.kid == kid for entry in self.keys)

    def _next(self, keys: Iterable[KeyEntry], now: datetime | None) -> KeyringDocument:
        return KeyringDocument(self.version + 1, now or datetime.now(UTC), tuple(keys))

    def add(self, entry: KeyEntry, *, now: datetime | None = None) -> KeyringDocument:
        """The next version, with ``entry`` added (a new agent's first key)."""
        if entry.kid in self:
            raise KeyRejected("already in the keyring document", entry.kid)
        return self._next((*self.keys, entry), now)

    def rotate(
        self,
        old_kid: str,
        new_entry: KeyEntry,
        grace_until: datetime,
        *,
        now: datetime | None = None,
    ) -> KeyringDocument:
        """The next version: ``new_entry`` active, ``old_kid`` valid until ``grace_until``.

        The old key keeps verifying until ``min(its not_after, grace_until)``, so events
        signed just before the switch are still accepted; it is not revoked.
        """
        old = self.get(old_kid)
        if old.status == "revoked":
            raise KeyRejected("a revoked key cannot be rotated", old_kid)
        if new_entry.principal != old.principal:
            raise KeyRejected(f"the new key must belong to {old.principal.source}", new_entry.kid)
        if new_entry.status != "active":
            raise KeyRejected("the new key must be active", new_entry.kid)
        if new_entry.kid in self:
            raise KeyRejected("already in the keyring document", new_entry.kid)
        grace_until = aware(grace_until, "grace_until")
        not_after = grace_until if old.not_after is None else min(old.not_after, grace_until)
        renewed = dataclasses.replace(old, not_after=not_after)
        keys = [renewed if entry.kid == old_kid else entry for entry in self.keys]
        return self._next((*keys, new_entry), now)

    def revoke(self, kid: str, *, now: datetime | None = None) -> KeyringDocument:
        """The next version with ``kid`` revoked: refused by receivers once they load it."""
        entry = self.get(kid)
        if entry.status == "revoked":
            raise KeyRejected("already revoked", kid)
        revoked = dataclasses.replace(entry, status="revoked")
        return self._next((revoked if e.kid == kid else e for e in self.keys), now)

    def to_keyring(self) -> Keyring:
        """A :class:`Keyring` of every entry; revoked entries are known, and stay revoked."""
        keyring = Keyring()
        for entry in self.keys:
            key = entry.trusted()
            keyring.add(dataclasses.replace(key, revoked=False))
            if key.revoked:
                keyring.revoke(key.kid)
        return keyring

    def claims(self, admin: Principal) -> dict[str, Any]:
        return {
            "source": admin.source,
            "tenant": admin.tenant,
            "type": KEYRING_TYPE,
            "version": self.version,
            "issued_at": format_utc(self.issued_at),
            "keys": [entry.to_json() for entry in self.keys],
        }

    def sign(self, admin: Identity) -> bytes:
        """This document as a compact JWS signed by ``admin``."""
        return sign_claims(self.claims(admin.principal), admin)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any]) -> KeyringDocument:
        """Parse verified claims strictly; ``ValueError``/``SecurityError`` if malformed."""
        if set(claims) != _DOCUMENT_FIELDS:
            raise ValueError(f"a keyring document has exactly {sorted(_DOCUMENT_FIELDS)}")
        if claims["type"] != KEYRING_TYPE:
            raise ValueError(f"type must be {KEYRING_TYPE!r}, got {claims['type']!r}")
        if not isinstance(claims["keys"], list):
            raise ValueError("keys must be a list")
        keys = tuple(KeyEntry.from_json(entry) for entry in claims["keys"])
        return cls(claims["version"], parse_utc(claims["issued_at"]), keys)

    @classmethod
    def verify(
        cls,
        token: bytes,
        admins: Keyring,
        *,
        min_version: int,
        current: KeyringDocument | None = None,
        now: datetime | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> KeyringDocument:
        """Verify ``token`` against ``admins`` and parse it; see the module doc for versions.

        ``min_version`` is the version already held (0 if none) and ``current`` the held
        document, needed only to accept a re-delivery of that same version.
        """
        if type(min_version) is not int or min_version < 0:
            raise ValueError(f"min_version must be an int >= 0, got {min_version!r}")
        if current is not None and current.version != min_version:
            raise ValueError("current.version must equal min_version")
        envelope = verify_envelope(token, admins, max_bytes=max_bytes, max_depth=4, now=now)
        kid = envelope.signer.kid
        try:
            document = cls.from_claims(envelope.claims)
        except (ValueError, TypeError, SecurityError) as exc:
            raise KeyringDocumentInvalid(str(exc), kid=kid) from None
        have = document.version
        if have < min_version:
            detail = f"version {have} is older than the held version {min_version}"
            raise KeyringRollback(detail, have=have, want=min_version, kid=kid)
        if have == min_version and document != current:
            detail = f"version {have} is already held with other (or unknown) content"
            raise KeyringConflict(detail, have=have, want=min_version, kid=kid)
        return document
