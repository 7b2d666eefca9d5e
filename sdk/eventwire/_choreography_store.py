"""Where choreography progress lives: the KV bucket ``<root>-choreography``.

One key per run, ``<flow>.<hash of the correlation id>`` (``correlation_key``), holding a
signed document (``eventwire_security.sign_claims``)::

    {"source", "tenant", "root", "kind": "choreography", "key", "iat",
     "flow", "correlation", "seen", "stuck", "recovered"}

A document is used only if its signature verifies, its signer is a trusted tracker (by
default the tracker's own agent) and it names this tenant, root and key; anything else is
ignored with a warning, and overwritten by the next write. Writes are optimistic: a put
names the revision it was decided on (KV create / update), so two trackers never lose
each other's steps or marks; :meth:`ProgressStore.change` retries on a conflict. Entries
expire ``retention`` seconds after their last write (the bucket's TTL).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType

from eventwire_security import EventwireError, sign_claims, verify_envelope

from ._buckets import open_bucket
from ._choreography_state import FlowProgress, correlation_key, progress_of_claims
from ._errors import TransportError, mapped_nats_errors

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping

    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from eventwire_security import Identity, Keyring

    from ._choreography_flow import Choreography

__all__ = ["ProgressStore", "choreography_bucket"]

log = logging.getLogger("eventwire.choreography")
_KIND = "choreography"
_ATTEMPTS = 32


def choreography_bucket(root: str) -> str:
    return f"{root}-choreography"


class ProgressStore:
    """Signed progress documents of the flows in ``flows`` (by name)."""

    def __init__(  # noqa: PLR0913 - the bucket, then who reads and writes
        self,
        bucket: KeyValue,
        *,
        root: str,
        identity: Identity,
        keyring: Keyring,
        trusted: Collection[str],
        flows: Mapping[str, Choreography],
    ) -> None:
        self.bucket = bucket
        self._root = root
        self._identity = identity
        self._keyring = keyring
        self._trusted = frozenset(trusted)
        self._flows = flows

    @classmethod
    async def open(  # noqa: PLR0913 - as __init__, plus the bucket's settings
        cls,
        js: JetStreamContext,
        *,
        root: str,
        identity: Identity,
        keyring: Keyring,
        trusted: Collection[str],
        flows: Mapping[str, Choreography],
        retention: float,
        replicas: int = 1,
        create: bool = True,
    ) -> ProgressStore:
        config = KeyValueConfig(
            bucket=choreography_bucket(root), history=1, ttl=retention,
            storage=StorageType.FILE, replicas=replicas,
        )  # fmt: skip
        with mapped_nats_errors(f"open the bucket {config.bucket!r}"):
            bucket = await open_bucket(js, config, create=create)
        return cls(
            bucket, root=root, identity=identity, keyring=keyring, trusted=trusted, flows=flows
        )

    def decode(self, key: str, token: bytes | None) -> FlowProgress | None:
        """The progress a stored value holds, or None (absent, or refused and logged)."""
        if not token:
            return None
        try:
            return self._checked(key, token)
        except (EventwireError, ValueError) as exc:
            log.warning("ignoring the choreography progress at %s: %s", key, exc)
            return None

    def _checked(self, key: str, token: bytes) -> FlowProgress:
        claims = verify_envelope(token, self._keyring).claims
        expected = {"tenant": self._identity.principal.tenant, "root": self._root, "kind": _KIND}
        for name, value in {**expected, "key": key}.items():
            if claims.get(name) != value:
                raise ValueError(f"{name} is {claims.get(name)!r}, not {value!r}")
        if claims.get("source") not in self._trusted:
            raise ValueError(f"signed by {claims.get('source')!r}, not a trusted tracker")
        flow = self._flows.get(str(claims.get("flow")))
        if flow is None:
            raise ValueError(f"flow {claims.get('flow')!r} is not tracked here")
        progress = progress_of_claims(claims, flow)
        if correlation_key(flow.name, progress.correlation) != key:
            raise ValueError("the correlation does not hash to the key")
        return progress

    async def load(self, key: str) -> tuple[FlowProgress | None, int]:
        """The progress at ``key`` and the revision it was read at (0: no entry)."""
        try:
            with mapped_nats_errors(f"read choreography progress {key}"):
                entry = await self.bucket.get(key)
        except EventwireError as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyNotFoundError):
                return None, 0
            raise
        return self.decode(key, entry.value), int(entry.revision or 0)

    async def save(self, key: str, progress: FlowProgress, revision: int) -> bool:
        """Write ``progress`` if ``key`` is still at ``revision``; False on a conflict."""
        principal = self._identity.principal
        claims = {
            "source": principal.source, "tenant": principal.tenant, "root": self._root,
            "kind": _KIND, "key": key, "iat": int(time.time()), **progress.claims(),
        }  # fmt: skip
        token = sign_claims(claims, self._identity)
        try:
            with mapped_nats_errors(f"write choreography progress {key}"):
                if revision:
                    await self.bucket.update(key, token, last=revision)
                else:
                    await self.bucket.create(key, token)
        except EventwireError as exc:
            if isinstance(exc.__cause__, nats.js.errors.KeyWrongLastSequenceError):
                return False
            raise
        return True

    async def change(
        self,
        flow: Choreography,
        correlation: str,
        edit: Callable[[FlowProgress], bool],
        *,
        known: FlowProgress | None = None,
    ) -> FlowProgress:
        """Apply ``edit`` to the run's latest progress and store it, again on a conflict;
        ``edit`` returns False for nothing to change. Where the stored value is absent or
        refused (forged), ``known`` (the last progress this tracker trusted) or a fresh
        progress is the base, and the write replaces the refused value. The progress
        stored (or left as it was); :class:`TransportError` if the entry kept changing
        under us (a handler retries it)."""
        key = correlation_key(flow.name, correlation)
        for _ in range(_ATTEMPTS):
            progress, revision = await self.load(key)
            if progress is None:
                progress = (
                    known.copy() if known is not None else FlowProgress(flow.name, correlation)
                )
            if not edit(progress):
                return progress
            if await self.save(key, progress, revision):
                return progress
        raise TransportError(f"choreography progress {key} kept changing: not written")
