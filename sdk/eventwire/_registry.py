"""The agent registry: a KV bucket of signed entries that expire when heartbeats stop."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats.js.errors

from eventwire_security import (
    EnvelopeError,
    RecipientKey,
    SecurityError,
    registry_bucket,
    sign_claims,
    verify_envelope,
)

from ._buckets import open_bucket
from ._streams import registry_config

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from eventwire_security import Identity

    from ._codec import Codec

log = logging.getLogger("eventwire.registry")


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """One live agent instance as it announced itself (signature verified)."""

    name: str
    tenant: str
    instance: str
    capabilities: tuple[str, ...]
    kid: str
    started_at: datetime
    last_seen: datetime
    sealing_key: RecipientKey | None = None


async def open_registry(
    js: JetStreamContext, root: str, ttl: float, *, create: bool = True
) -> KeyValue:
    """Create (or bind to) the registry bucket; entries expire ``ttl`` seconds after a put."""
    return await open_bucket(js, registry_config(root, ttl=ttl), create=create)


async def announce(
    kv: KeyValue,
    identity: Identity,
    *,
    instance: str,
    capabilities: tuple[str, ...],
    started_at: float,
    sealing_key: RecipientKey,
) -> None:
    """Put (or refresh) this instance's signed entry: a heartbeat."""
    principal = identity.principal
    claims = {
        "source": principal.source,
        "tenant": principal.tenant,
        "instance": instance,
        "capabilities": list(capabilities),
        "started": started_at,
        "iat": time.time(),
        # the agent's sealing key, so others can seal data to it (bound by the signature)
        "seal": sealing_key.to_jwk()["x"],
    }
    await kv.put(f"{principal.agent}.{instance}", sign_claims(claims, identity))


async def withdraw(kv: KeyValue, agent: str, instance: str) -> None:
    await kv.purge(f"{agent}.{instance}")


async def list_agents(
    js: JetStreamContext, root: str, kv: KeyValue, codec: Codec
) -> list[AgentInfo]:
    """Every live, correctly signed entry of this tenant; bad entries are counted and skipped.

    The keys come from one stream-info request (the subjects the bucket holds), not from
    nats-py's ``kv.keys()``, whose ordered consumer can come back short under load."""
    bucket = registry_bucket(root)
    prefix = f"$KV.{bucket}."
    stream = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    keys = [subject[len(prefix) :] for subject in stream.state.subjects or {}]
    found: list[AgentInfo] = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            continue  # withdrawn (purged), or expired since the listing
        info = _parse_entry(entry.value or b"", codec)
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda info: (info.name, info.started_at))


def _parse_entry(token: bytes, codec: Codec) -> AgentInfo | None:
    try:
        envelope = verify_envelope(token, codec.keyring, max_bytes=codec.max_bytes)
        claims = envelope.claims
        principal = envelope.signer.principal
        if principal.tenant != codec.tenant:
            return None
        return AgentInfo(
            name=principal.agent,
            tenant=principal.tenant,
            instance=str(claims["instance"]),
            capabilities=tuple(str(c) for c in claims["capabilities"]),
            kid=envelope.signer.kid,
            started_at=datetime.fromtimestamp(float(claims["started"]), UTC),
            last_seen=datetime.fromtimestamp(float(claims["iat"]), UTC),
            sealing_key=_recipient(claims.get("seal")),
        )
    except EnvelopeError as exc:
        codec.stats.rejected[exc.reason] += 1
        log.warning("registry entry refused: %s", exc)
    except (KeyError, TypeError, ValueError, SecurityError) as exc:
        codec.stats.rejected["invalid-registry-entry"] += 1
        log.warning("registry entry malformed: %r", exc)
    return None


def _recipient(x: object) -> RecipientKey | None:
    if x is None:
        return None
    return RecipientKey.from_jwk({"kty": "OKP", "crv": "X25519", "x": str(x)})
