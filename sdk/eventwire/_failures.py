"""Which agent instances have failed: phi-accrual detectors over registry heartbeats.

Every observer (each serving agent) feeds the arrival of each registry entry update (a
heartbeat: the entry's KV revision) to a :class:`FailureWatch`. An instance that withdraws
(its entry is purged or deleted on a clean stop) is forgotten, never reported. One that
goes silent is reported once per silence by :meth:`FailureWatch.due`: the report names its
last heartbeat's revision, which every observer sees alike, so the ``agent.lifecycle.failed``
events that several observers publish carry the same ``Nats-Msg-Id`` (:func:`failure_msg_id`)
and JetStream stores one. Pure: time comes from the caller or an injectable clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from ._kinds import TYPE_PREFIX, EventData, Token
from ._phi import FailureDetectors, PhiSettings

if TYPE_CHECKING:
    from collections.abc import Callable

Key = tuple[str, str]  # (agent, instance)


@dataclass(frozen=True, slots=True)
class Failure:
    """An instance suspected to have failed: its last heartbeat (registry revision and the
    time it signed, seconds since the epoch) and the suspicion level when reported."""

    agent: str
    instance: str
    capabilities: tuple[str, ...]
    revision: int
    last_heartbeat: float
    phi: float


@dataclass(frozen=True, slots=True)
class Beat:
    """One registry entry update: whose, its KV revision, when it was signed (seconds
    since the epoch) and the capabilities it announced."""

    agent: str
    instance: str
    revision: int
    signed_at: float
    capabilities: tuple[str, ...] = ()


@dataclass(slots=True)
class _Last:
    revision: int
    signed_at: float
    capabilities: tuple[str, ...]
    reported: bool = False


class FailureWatch:
    """Heartbeats in, failures out, each failure once (until the instance beats again: then
    its detector starts a fresh history, since the silence was no normal interval)."""

    def __init__(
        self,
        settings: PhiSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._detectors: FailureDetectors[Key] = FailureDetectors(settings, clock=clock)
        self._last: dict[Key, _Last] = {}

    @property
    def settings(self) -> PhiSettings:
        return self._detectors.settings

    def heartbeat(self, beat: Beat, at: float | None = None) -> None:
        """A registry entry update arrived (``at``: now by default). A revision not newer
        than the last one seen (a replayed or reordered update) is ignored."""
        key = (beat.agent, beat.instance)
        last = self._last.get(key)
        if last is not None and beat.revision <= last.revision:
            return
        if last is not None and last.reported:
            # back after a reported failure: that silence is no sample of its interval
            self._detectors.forget(key)
        self._last[key] = _Last(beat.revision, beat.signed_at, beat.capabilities)
        self._detectors.heartbeat(key, at)

    def withdrawn(self, agent: str, instance: str) -> None:
        """The instance left cleanly (or its failure was handled): stop watching it."""
        self._last.pop((agent, instance), None)
        self._detectors.forget((agent, instance))

    def phi(self, agent: str, instance: str, now: float | None = None) -> float | None:
        """The current suspicion of an instance, ``None`` if it is not watched."""
        if (agent, instance) not in self._detectors:
            return None
        return self._detectors.suspicion((agent, instance), now).phi

    def due(self, now: float | None = None) -> list[Failure]:
        """Instances suspected now that were not reported for this silence yet."""
        found = []
        for suspect in self._detectors.suspects(now):
            last = self._last[suspect.key]
            if last.reported:
                continue
            last.reported = True
            agent, instance = suspect.key
            found.append(
                Failure(
                    agent, instance, last.capabilities, last.revision, last.signed_at, suspect.phi
                )
            )
        return found


class AgentFailed(EventData):
    """Published by an observer when an agent instance is suspected to have failed (subject
    ``agent.lifecycle.failed``): the instance, its capabilities, its last heartbeat (the
    registry revision and the time it signed it, seconds since the epoch) and the suspicion
    level. One event per failure: observers' reports share a message id."""

    event_type: ClassVar[str] = TYPE_PREFIX + "agent.failed"
    agent: Token
    instance: Token
    capabilities: list[str] = Field(default_factory=list, strict=False)
    revision: int
    last_heartbeat: float = Field(strict=False)
    phi: float = Field(strict=False)

    def subject(self) -> str:
        return "agent.lifecycle.failed"

    @classmethod
    def of(cls, failure: Failure) -> AgentFailed:
        return cls(
            agent=failure.agent,
            instance=failure.instance,
            capabilities=list(failure.capabilities),
            revision=failure.revision,
            last_heartbeat=failure.last_heartbeat,
            phi=min(failure.phi, 1e6),
        )


def failure_msg_id(root: str, failure: Failure) -> str:
    """The ``Nats-Msg-Id`` every observer gives its report of ``failure``."""
    return f"{root}.failed.{failure.agent}.{failure.instance}.{failure.revision}"
