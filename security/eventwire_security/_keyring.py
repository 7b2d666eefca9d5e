"""The set of public keys a receiver trusts, each bound to exactly one principal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ._errors import KeyNotValid, KeyRejected, UnknownKey
from ._keys import TrustedKey

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from ._keys import Identity, Principal


class Keyring:
    """Trusted public keys by ``kid``. A key belongs to exactly one ``(tenant, agent)``."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._keys: dict[str, TrustedKey] = {}
        for key in keys:
            self.add(key)

    @classmethod
    def of(cls, *identities: Identity) -> Keyring:
        """A keyring trusting the public keys of ``identities`` (handy in tests and demos)."""
        return cls(identity.trusted() for identity in identities)

    def add(self, key: TrustedKey) -> None:
        """Trust ``key``; re-adding updates its expiry. A kid can never change owner."""
        if not isinstance(key, TrustedKey):
            raise TypeError(f"expected TrustedKey, got {type(key).__name__}")
        known = self._keys.get(key.kid)
        if known is not None and known.principal != key.principal:
            raise KeyRejected(f"already bound to {known.principal.source}", key.kid)
        if known is not None and known.revoked and not key.revoked:
            raise KeyRejected("a revoked key cannot be trusted again", key.kid)
        self._keys[key.kid] = key

    def revoke(self, kid: str) -> None:
        """Stop trusting ``kid`` at once; it stays known so it cannot be re-added."""
        key = self.get(kid)
        self._keys[kid] = TrustedKey(key.public_key, key.principal, key.not_after, revoked=True)

    def get(self, kid: str) -> TrustedKey:
        """The entry for ``kid`` whatever its status; :class:`UnknownKey` if absent."""
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKey("kid is not in the keyring", kid=kid) from None

    def resolve(self, kid: str, when: datetime | None = None) -> TrustedKey:
        """The entry for ``kid`` if it may verify now; :class:`KeyNotValid` otherwise."""
        key = self.get(kid)
        if key.revoked:
            raise KeyNotValid("key was revoked", kid=kid)
        if key.not_after is not None and not key.valid_at(when or datetime.now(UTC)):
            raise KeyNotValid("key has expired", kid=kid)
        return key

    def keys_of(self, principal: Principal) -> list[TrustedKey]:
        return [key for key in self._keys.values() if key.principal == principal]

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(list(self._keys.values()))

    def __len__(self) -> int:
        return len(self._keys)
