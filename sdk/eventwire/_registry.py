"""The agent registry: a KV bucket of signed entries that expire when heartbeats stop."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
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

from ._breaker import CircuitState
from ._buckets import open_bucket
from ._choose import Load
from ._phi import phi
from ._streams import registry_config

if TYPE_CHECKING:
    from collections.abc import Mapping

    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from eventwire_security import Identity

    from ._codec import Codec

log = logging.getLogger("eventwire.registry")
SUSPECT_PHI = 8.0  # phi at which a silent instance is shown as suspected
_NO_CIRCUITS: Mapping[str, CircuitState] = {}


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
    load: Load = field(default_factory=Load)
    circuits: Mapping[str, CircuitState] = field(default_factory=dict)
    revision: int = 0
    phi: float = 0.0

    @property
    def suspected(self) -> bool:
        """Whether its heartbeat is late enough to suspect a failure (phi >= 8, with the
        expected heartbeat interval as the prior; observers keep a history too)."""
        return self.phi >= SUSPECT_PHI

    @property
    def open_circuits(self) -> tuple[str, ...]:
        """The targets this instance's calls fail fast to (circuit open)."""
        return tuple(t for t, s in self.circuits.items() if s is CircuitState.OPEN)


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
    load: Load | None = None,
    circuits: Mapping[str, CircuitState] | None = None,
) -> int:
    """Put (or refresh) this instance's signed entry: a heartbeat, with the instance's
    ``load`` and the ``circuits`` of its calls that are not closed. Returns the revision."""
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
    if load is not None:
        claims["load"] = {
            "in_flight": load.in_flight,
            "queue_depth": load.queue_depth,
            "capacity": load.capacity,
            "latency_ms": round(load.latency_ms, 3),
        }
    if circuits:
        claims["circuits"] = {target: str(state) for target, state in circuits.items()}
    return await kv.put(f"{principal.agent}.{instance}", sign_claims(claims, identity))


async def withdraw(kv: KeyValue, agent: str, instance: str) -> None:
    await kv.purge(f"{agent}.{instance}")


async def list_agents(
    js: JetStreamContext, root: str, kv: KeyValue, codec: Codec, *, interval: float | None = None
) -> list[AgentInfo]:
    """Every live, correctly signed entry of this tenant; bad entries are counted and skipped.
    With the heartbeat ``interval``, each gets its suspicion (``phi``) from its age.

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
        info = parse_entry(entry.value or b"", codec, revision=entry.revision or 0)
        if info is not None and interval is not None:
            info = dataclasses.replace(info, phi=suspicion(info, interval))
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda info: (info.name, info.started_at))


def suspicion(info: AgentInfo, interval: float, now: float | None = None) -> float:
    """The phi of an entry's age, its heartbeats expected every ``interval`` seconds."""
    age = (time.time() if now is None else now) - info.last_seen.timestamp()
    return phi(max(0.0, age), interval, max(interval / 4, 0.1))


def parse_entry(token: bytes, codec: Codec, *, revision: int = 0) -> AgentInfo | None:
    """The verified entry, or ``None`` (counted and logged) if it is refused or malformed."""
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
            load=Load(**claims["load"]) if "load" in claims else Load(),
            circuits=_circuits(claims.get("circuits")),
            revision=revision,
        )
    except EnvelopeError as exc:
        codec.stats.rejected[exc.reason] += 1
        log.warning("registry entry refused: %s", exc)
    except (KeyError, TypeError, ValueError, SecurityError) as exc:
        codec.stats.rejected["invalid-registry-entry"] += 1
        log.warning("registry entry malformed: %r", exc)
    return None


def _circuits(value: object) -> Mapping[str, CircuitState]:
    if value is None:
        return _NO_CIRCUITS
    if not isinstance(value, dict) or len(value) > 1000:
        raise TypeError("circuits must be a map of at most 1000 targets")
    return {str(target): CircuitState(state) for target, state in value.items()}


def _recipient(x: object) -> RecipientKey | None:
    if x is None:
        return None
    return RecipientKey.from_jwk({"kty": "OKP", "crv": "X25519", "x": str(x)})
