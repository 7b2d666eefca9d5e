"""The progress of one run of a flow (one correlation), and what is due about it.

Pure: no NATS. :class:`FlowProgress` records which steps were seen (when the event was signed,
and its id), which overdue steps were reported stuck, and which of those were reported
recovered. Steps may be recorded in any order (each step pattern has its own consumer):
the flow stands at its *furthest* step seen, and the step after it is due ``within``
seconds after that one. What to publish is derived from the progress alone
(:func:`actions`), so a tracker that restarts, or a second tracker, decides alike.

In the KV bucket (``_choreography_store``) a progress is a signed document; the encoding
here (:meth:`FlowProgress.claims`, :func:`progress_of_claims`) refuses anything that does not
fit with :class:`ValueError`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._choreography_flow import Choreography

__all__ = ["Action", "FlowProgress", "Seen", "actions", "correlation_key", "progress_of_claims"]

MAX_CORRELATION_CHARS = 256


def correlation_key(flow: str, correlation: str) -> str:
    """The KV key of a run: the flow name and a hash of its correlation id (which may hold
    any character and is never used raw as a key or subject token)."""
    digest = hashlib.sha256(correlation.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{flow}.{digest}"


@dataclass(frozen=True, slots=True)
class Seen:
    """A step's event: when it was signed (seconds since the epoch) and its id."""

    at: float
    event_id: str


@dataclass(slots=True)
class FlowProgress:
    """How far one correlation of one flow got (see the module doc)."""

    flow: str
    correlation: str
    seen: dict[int, Seen] = field(default_factory=dict)
    stuck: dict[int, float] = field(default_factory=dict)  # step -> the deadline reported
    recovered: set[int] = field(default_factory=set)

    def record(self, step: int, at: float, event_id: str) -> bool:
        """Record step ``step``'s event; False if a step event was recorded for it already
        (a redelivery, or a second event for the same step: the first one counts)."""
        if step in self.seen:
            return False
        self.seen[step] = Seen(at, event_id)
        return True

    def copy(self) -> FlowProgress:
        return FlowProgress(
            self.flow, self.correlation, dict(self.seen), dict(self.stuck), set(self.recovered)
        )

    @property
    def furthest(self) -> int:
        return max(self.seen, default=-1)

    def next_due(self, flow: Choreography) -> float | None:
        """When something may next fall due about this run without a new write (seconds
        since the epoch; 0: now), or None. Due now: a stuck step reached but not reported
        recovered; later: the next step's deadline, unless it was reported already."""
        last, following = self.furthest, self.furthest + 1
        if any(step not in self.recovered and step <= last for step in self.stuck):
            return 0.0
        if last < 0 or following >= len(flow.steps) or following in self.stuck:
            return None
        within = flow.steps[following].within
        assert within is not None  # every step after the first has a limit
        return self.seen[last].at + within

    def claims(self) -> dict[str, Any]:
        return {
            "flow": self.flow,
            "correlation": self.correlation,
            "seen": {str(step): [seen.at, seen.event_id] for step, seen in self.seen.items()},
            "stuck": {str(step): deadline for step, deadline in self.stuck.items()},
            "recovered": sorted(self.recovered),
        }


@dataclass(frozen=True, slots=True)
class Action:
    """Something to publish about a run: ``stuck`` (step ``step`` is overdue since
    ``deadline``) or ``recovered`` (step ``step``, reported stuck, was reached at ``at``)."""

    kind: Literal["stuck", "recovered"]
    flow: str
    correlation: str
    step: int
    last_step: int  # the furthest step seen (-1: none)
    last_at: float  # when it was signed
    deadline: float
    at: float  # stuck: now; recovered: when the step (or a later one) was signed


def actions(flow: Choreography, progress: FlowProgress, now: float) -> list[Action]:
    """What is due about ``progress`` at ``now``: the overdue step not reported yet, and
    the stuck steps reached since they were reported."""
    found: list[Action] = []
    last = progress.furthest
    last_at = progress.seen[last].at if last >= 0 else 0.0
    for step, deadline in sorted(progress.stuck.items()):
        if step in progress.recovered or last < step:
            continue
        reached = min(seen.at for index, seen in progress.seen.items() if index >= step)
        found.append(
            Action(
                "recovered", flow.name, progress.correlation, step, last, last_at, deadline, reached
            )
        )
    following = last + 1
    if last >= 0 and following < len(flow.steps) and following not in progress.stuck:
        within = flow.steps[following].within
        assert within is not None  # every step after the first has a limit
        deadline = last_at + within
        if now > deadline:
            found.append(
                Action(
                    "stuck",
                    flow.name,
                    progress.correlation,
                    following,
                    last,
                    last_at,
                    deadline,
                    now,
                )
            )
    return found


def progress_of_claims(claims: dict[str, Any], flow: Choreography) -> FlowProgress:
    """The progress a verified document holds; :class:`ValueError` if it does not fit
    ``flow`` (unknown steps, wrong types, numbers that are not finite)."""
    correlation = claims.get("correlation")
    if not isinstance(correlation, str) or not 0 < len(correlation) <= MAX_CORRELATION_CHARS:
        raise ValueError("correlation must be a non-empty string of at most 256 chars")
    progress = FlowProgress(flow.name, correlation)
    for step, value in _steps(claims.get("seen"), flow).items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
            raise ValueError("a seen step is [signed at, event id]")
        progress.seen[step] = Seen(_seconds(value[0]), value[1])
    progress.stuck = {
        step: _seconds(value) for step, value in _steps(claims.get("stuck"), flow).items()
    }
    recovered = claims.get("recovered")
    if not isinstance(recovered, list):
        raise ValueError("recovered must be a list of steps")
    progress.recovered = {_step(value, flow) for value in recovered}
    return progress


def _steps(value: object, flow: Choreography) -> dict[int, object]:
    if not isinstance(value, dict):
        raise ValueError("seen and stuck must be objects keyed by step")
    return {_step(int(key) if key.isdigit() else -1, flow): item for key, item in value.items()}


def _step(value: object, flow: Choreography) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(flow.steps):
        raise ValueError(f"{value!r} is not a step of flow {flow.name!r}")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a time in seconds")
    return float(value)
