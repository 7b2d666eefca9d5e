"""Binding to the KV buckets the SDK keeps (registry, keyring, replay claims, handled ids)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.js.errors

from ._errors import NotProvisioned

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.api import KeyValueConfig
    from nats.js.kv import KeyValue


async def open_bucket(js: JetStreamContext, config: KeyValueConfig, *, create: bool) -> KeyValue:
    """Bind to ``config.bucket``; create it when absent if ``create``, else
    :class:`NotProvisioned` (an agent under compiled permissions may not create it)."""
    try:
        return await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            raise NotProvisioned.absent(f"KV bucket {config.bucket!r}") from None
    return await js.create_key_value(config)
