"""Signed snapshots of event-sourced aggregates, kept in the KV bucket ``<root>-snapshots``.

A snapshot is a compact JWS (``eventwire_security.sign_claims``) of::

    {"source", "tenant", "root", "kind", "aggregate", "version", "seq", "at", "iat", "state"}

``version`` is how many events it covers, ``seq`` the stream sequence of the last of them,
``at`` when the stream stored that event (seconds since the epoch, the server's clock). On
load a snapshot is used only if its signature verifies, its signer is one the store trusts
for snapshots (by default its own agent), and it names this tenant, root, kind and id;
anything else is ignored with a warning and the aggregate is replayed from its first event.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.js.errors

from eventwire_security import EventwireError, sign_claims, verify_envelope
from eventwire_security._layout import snapshot_key

from ._buckets import open_bucket
from ._errors import mapped_nats_errors
from ._streams import projections_config, snapshots_config

if TYPE_CHECKING:
    from collections.abc import Collection

    from nats.js import JetStreamContext
    from nats.js.api import KeyValueConfig
    from nats.js.kv import KeyValue
    from pydantic import JsonValue

    from eventwire_security import Identity, Keyring

__all__ = [
    "Snapshot",
    "SnapshotPlace",
    "open_snapshots",
    "projections_config",  # declared in ``_streams``
    "read_snapshot",
    "snapshots_config",
    "write_snapshot",
]

log = logging.getLogger("eventwire.aggregates")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A verified snapshot: the state after ``version`` events, the last at stream
    sequence ``seq``, stored at ``at`` (seconds since the epoch)."""

    version: int
    seq: int
    at: float
    state: JsonValue


@dataclass(frozen=True, slots=True)
class SnapshotPlace:
    """Where an aggregate's snapshots live and who may sign them."""

    tenant: str
    root: str
    kind: str
    aggregate_id: str
    trusted: Collection[str]  # sources (``tenant/agent``) whose snapshots are used

    @property
    def key(self) -> str:
        return snapshot_key(self.kind, self.aggregate_id)


async def open_snapshots(js: JetStreamContext, config: KeyValueConfig, *, create: bool) -> KeyValue:
    """Bind to (or create) a bucket of signed states: snapshots or projections."""
    with mapped_nats_errors(f"open the bucket {config.bucket!r}"):
        return await open_bucket(js, config, create=create)


async def write_snapshot(
    bucket: KeyValue, place: SnapshotPlace, snapshot: Snapshot, identity: Identity
) -> None:
    """Sign ``snapshot`` as ``identity`` and store it as the aggregate's latest."""
    principal = identity.principal
    claims = {
        "source": principal.source,
        "tenant": principal.tenant,
        "root": place.root,
        "kind": place.kind,
        "aggregate": place.aggregate_id,
        "version": snapshot.version,
        "seq": snapshot.seq,
        "at": snapshot.at,
        "iat": int(time.time()),
        "state": snapshot.state,
    }
    token = sign_claims(claims, identity)
    with mapped_nats_errors(f"store the snapshot of {place.key}"):
        await bucket.put(place.key, token)


async def read_snapshot(
    bucket: KeyValue, place: SnapshotPlace, keyring: Keyring
) -> Snapshot | None:
    """The aggregate's verified snapshot, or None (absent, or refused and logged)."""
    try:
        with mapped_nats_errors(f"read the snapshot of {place.key}"):
            entry = await bucket.get(place.key)
    except EventwireError as exc:
        if isinstance(exc.__cause__, nats.js.errors.KeyNotFoundError):
            return None
        raise
    if entry.value is None:
        return None
    problem, snapshot = _checked(entry.value, place, keyring)
    if problem is not None:
        log.warning("ignoring the snapshot of %s: %s", place.key, problem)
    return snapshot


def _checked(
    token: bytes, place: SnapshotPlace, keyring: Keyring
) -> tuple[str | None, Snapshot | None]:
    try:
        claims = verify_envelope(token, keyring).claims
    except EventwireError as exc:
        return f"signature refused: {exc}", None
    expected = {
        "tenant": place.tenant, "root": place.root, "kind": place.kind,
        "aggregate": place.aggregate_id,
    }  # fmt: skip
    for name, value in expected.items():
        if claims.get(name) != value:
            return f"{name} is {claims.get(name)!r}, not {value!r}", None
    if claims.get("source") not in place.trusted:
        return f"signed by {claims.get('source')!r}, not a trusted snapshot writer", None
    version, seq, at = claims.get("version"), claims.get("seq"), claims.get("at")
    if not (_count(version) and _count(seq) and isinstance(at, int | float)):
        return "version, seq and at must be numbers >= 0", None
    assert isinstance(version, int)
    assert isinstance(seq, int)
    return None, Snapshot(version, seq, float(at), claims.get("state"))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
