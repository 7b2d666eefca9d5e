"""The events stream: its settings live in code and are created or checked on connect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.js.errors
from nats.js.api import (
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from ._errors import NotProvisioned, StreamConfigError
from ._subjects import partition_transform, stream_subjects

if TYPE_CHECKING:
    from nats.js import JetStreamContext

DUPLICATE_WINDOW_SECONDS = 120.0


def events_stream_name(root: str) -> str:
    return f"{root}-events"


def events_stream_config(root: str, *, replicas: int = 1, partitions: int = 0) -> StreamConfig:
    """The events stream; with ``partitions`` it also takes keyed subjects and assigns
    each to a partition with a subject transform (see ``_subjects``)."""
    transform = None
    if partitions:
        source, destination = partition_transform(root, partitions)
        transform = SubjectTransform(src=source, dest=destination)
    return StreamConfig(
        name=events_stream_name(root),
        description="eventwire events (signed CloudEvents in compact JWS)",
        subjects=stream_subjects(root, partitions=partitions),
        subject_transform=transform,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
    )


# Settings the code declares; the server may not change the first two in place.
_FIXED = ("storage", "retention")
_CHECKED = (*_FIXED, "subjects", "num_replicas", "discard", "duplicate_window", "subject_transform")


@dataclass(frozen=True, slots=True)
class Difference:
    """One setting of a stream that is not what the code declares."""

    stream: str
    field: str
    server: object
    code: object
    updatable: bool

    def __str__(self) -> str:
        return f"{self.field}: server has {self.server!r}, code wants {self.code!r}"


async def diff_stream(js: JetStreamContext, wanted: StreamConfig) -> list[Difference] | None:
    """The differences between the server's stream and ``wanted``; None if it is absent."""
    assert wanted.name is not None
    try:
        info = await js.stream_info(wanted.name)
    except nats.js.errors.NotFoundError:
        return None
    return [
        Difference(wanted.name, name, getattr(info.config, name), getattr(wanted, name),
                   name not in _FIXED)
        for name in _CHECKED
        if _norm(getattr(info.config, name)) != _norm(getattr(wanted, name))
    ]  # fmt: skip


async def ensure_stream(js: JetStreamContext, wanted: StreamConfig, *, create: bool = True) -> None:
    """Create the stream if absent (or, without ``create``, raise :class:`NotProvisioned`);
    if present, refuse settings that differ from the code's."""
    diffs = await diff_stream(js, wanted)
    if diffs is None and not create:
        raise NotProvisioned.absent(f"stream {wanted.name!r}")
    if diffs is None:
        await js.add_stream(wanted)
    elif diffs:
        raise StreamConfigError(
            f"stream {wanted.name!r} differs: " + "; ".join(str(d) for d in diffs)
            + " (see `eventwire streams diff`)"
        )  # fmt: skip


async def apply_stream(js: JetStreamContext, wanted: StreamConfig) -> list[Difference]:
    """Create the stream, or update it to the code's settings; returns what changed.

    Storage and retention cannot change in place: :class:`StreamConfigError` names them.
    """
    diffs = await diff_stream(js, wanted)
    if diffs is None:
        await js.add_stream(wanted)
        return []
    fixed = [d for d in diffs if not d.updatable]
    if fixed:
        raise StreamConfigError(
            f"stream {wanted.name!r} cannot be changed in place: "
            + "; ".join(str(d) for d in fixed)
        )
    if diffs:
        await js.update_stream(wanted)
    return diffs


def _norm(value: object) -> object:
    if isinstance(value, list):
        return sorted(value)
    if value is None:
        return 1  # num_replicas defaults to 1 on the server
    if isinstance(value, float):
        return round(value, 3)
    return value
