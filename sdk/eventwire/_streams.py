"""The events stream: its settings live in code and are created or checked on connect."""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from ._errors import StreamConfigError
from ._subjects import stream_subjects

if TYPE_CHECKING:
    from nats.js import JetStreamContext

DUPLICATE_WINDOW_SECONDS = 120.0


def events_stream_name(root: str) -> str:
    return f"{root}-events"


def events_stream_config(root: str, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=events_stream_name(root),
        description="eventwire events (signed CloudEvents in compact JWS)",
        subjects=stream_subjects(root),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
    )


async def ensure_stream(js: JetStreamContext, wanted: StreamConfig) -> None:
    """Create the stream if absent; if present, refuse settings that differ from the code's."""
    assert wanted.name is not None
    try:
        info = await js.stream_info(wanted.name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(wanted)
        return
    have = info.config
    diffs = [
        f"{name}: server has {getattr(have, name)!r}, code wants {getattr(wanted, name)!r}"
        for name in ("subjects", "storage", "retention", "num_replicas")
        if _norm(getattr(have, name)) != _norm(getattr(wanted, name))
    ]
    if diffs:
        raise StreamConfigError(f"stream {wanted.name!r} differs: " + "; ".join(diffs))


def _norm(value: object) -> object:
    if isinstance(value, list):
        return sorted(value)
    if value is None:
        return 1  # num_replicas defaults to 1 on the server
    return value
