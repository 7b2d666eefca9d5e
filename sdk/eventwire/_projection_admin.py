"""What an operator sees of projections: their checkpoints, lag and signers, and a reset.

Each projection keeps one signed document in the KV bucket ``<root>-projections`` under
``projection.<name>`` (see ``_projections``). :func:`projection_infos` lists them from one
stream-info request (the keys the bucket holds), :func:`projection_info` reads one, and
:func:`reset_projection` purges one, so that the projection rebuilds from the first event
on its next start. The signer is read from the document; ``verified`` says whether its
signature checks out against the bus's keyring (None: the signer's key is not in it).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats.js.errors

from eventwire_security import EventwireError, UnknownKey, verify_envelope
from eventwire_security._layout import events_stream_name, projections_bucket

from ._errors import NotFound, checked_name, mapped_nats_errors
from ._snapshots import open_snapshots, projections_config

if TYPE_CHECKING:
    from nats.js.kv import KeyValue

    from ._bus import Bus

__all__ = ["ProjectionInfo", "projection_info", "projection_infos", "reset_projection"]

_PREFIX = "projection."


@dataclass(frozen=True, slots=True)
class ProjectionInfo:
    """A projection's stored checkpoint: the stream sequence ``seq`` its read model
    reflects, ``applied`` events, when it was written and by whom, and ``lag`` (stream
    sequences behind the events stream's last one). ``reset``: purged, rebuilds on start."""

    name: str
    seq: int
    applied: int
    updated_at: datetime | None
    signer: str | None
    verified: bool | None
    lag: int
    stream_last_seq: int
    reset: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "seq": self.seq,
            "applied": self.applied,
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "signer": self.signer,
            "verified": self.verified,
            "lag": self.lag,
            "stream_last_seq": self.stream_last_seq,
            "reset": self.reset,
        }


async def _bucket(bus: Bus) -> KeyValue:
    config = projections_config(bus.root, replicas=bus.replicas)
    return await open_snapshots(bus.jetstream, config, create=bus.provisions)


async def _last_seq(bus: Bus) -> int:
    with mapped_nats_errors("read the events stream"):
        info = await bus.jetstream.stream_info(events_stream_name(bus.root))
    return int(info.state.last_seq)


async def projection_infos(bus: Bus) -> list[ProjectionInfo]:
    """Every projection with a checkpoint (or a reset one) in the bus's root, by name."""
    bucket = projections_bucket(bus.root)
    prefix = f"$KV.{bucket}.{_PREFIX}"
    with mapped_nats_errors(f"list the projections in {bucket!r}"):
        await _bucket(bus)
        stream = await bus.jetstream.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    names = sorted(subject[len(prefix) :] for subject in stream.state.subjects or {})
    return [await projection_info(bus, name) for name in names]


async def projection_info(bus: Bus, name: str) -> ProjectionInfo:
    """The checkpoint of projection ``name``; :class:`NotFound` if it never wrote one."""
    checked_name("name", name)
    bucket = await _bucket(bus)
    last = await _last_seq(bus)
    with mapped_nats_errors(f"read projection {name!r}"):
        try:
            entry = await bucket.get(_PREFIX + name)
        except nats.js.errors.KeyNotFoundError as exc:
            if exc.op is None:  # never written (a purged key names its operation)
                raise NotFound(f"no projection {name!r} in {bus.root!r}") from None
            return ProjectionInfo(name, 0, 0, None, None, None, last, last, reset=True)
    claims, verified = _claims(entry.value or b"", bus)
    seq, applied = claims.get("seq"), claims.get("version")
    seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else 0
    iat = claims.get("iat")
    updated = datetime.fromtimestamp(iat, UTC) if isinstance(iat, int | float) else None
    signer = claims.get("source")
    return ProjectionInfo(
        name, seq, applied if isinstance(applied, int) else 0, updated,
        signer if isinstance(signer, str) else None, verified, max(0, last - seq), last,
    )  # fmt: skip


def _claims(token: bytes, bus: Bus) -> tuple[dict[str, object], bool | None]:
    """The document's claims (verified if the signer's key is known) and the verdict."""
    try:
        return dict(verify_envelope(token, bus.keyring).claims), True
    except EventwireError as exc:
        verdict = None if isinstance(exc, UnknownKey) else False
    try:
        payload = token.split(b".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}, False
    return (claims if isinstance(claims, dict) else {}), verdict


async def reset_projection(bus: Bus, name: str) -> bool:
    """Forget projection ``name``'s read model and checkpoint (it rebuilds from the first
    event on its next start); False if it had none. Stop it first: a running projection
    writes its checkpoint again."""
    checked_name("name", name)
    bucket = await _bucket(bus)
    with mapped_nats_errors(f"reset projection {name!r}"):
        try:
            await bucket.get(_PREFIX + name)
        except nats.js.errors.KeyNotFoundError:  # never written, or purged already
            return False
        await bucket.purge(_PREFIX + name)
    return True
