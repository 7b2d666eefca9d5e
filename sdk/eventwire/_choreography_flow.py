"""Declared choreographies: the steps a flow is expected to take, each within a time limit.

A :class:`Choreography` is a name and an ordered list of :class:`FlowStep`. A step is a logical
subject pattern (NATS wildcards allowed, under a family: ``custom.order.placed``,
``task.payment.*``), optionally the agent that must publish it (``by``), and, for every
step but the first, ``within``: the seconds it may take after the previous step. Events
of one run of the flow share their ``correlationid``. Everything is checked here, at
construction, and refused with :class:`InvalidChoreography` (an :class:`InvalidArgument`): no
steps, a first step with a limit or a later one without, a limit that is not a positive
number, a subject outside the grammar, two steps one event could match, a step that
matches the trackers' own reports (``system.coordination.stuck`` / ``recovered``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from eventwire_security._layout import matches, pattern_problem, tokens_intersect

from ._errors import InvalidArgument, checked_name

__all__ = ["MAX_STEPS", "MAX_WITHIN", "Choreography", "FlowStep", "InvalidChoreography"]

MAX_STEPS = 64
MAX_WITHIN = 30 * 24 * 3600.0  # a step may wait at most 30 days
# what trackers publish: no step may be one of their own reports
REPORTS = ("system.coordination.stuck", "system.coordination.recovered")


class InvalidChoreography(InvalidArgument):
    """A flow or step definition is not valid; ``field`` names what (``steps``,
    ``steps[1].within``, ``name``...)."""


def _within(value: object, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidChoreography(f"must be a number of seconds, got {value!r}", field=field)
    if not 0 < value <= MAX_WITHIN or math.isnan(value):
        raise InvalidChoreography(
            f"must be > 0 and <= {MAX_WITHIN:.0f} seconds, got {value!r}", field=field
        )
    return float(value)


class FlowStep:
    """One expected event: its subject ``pattern``, at most ``within`` seconds after the
    previous step (required for every step but the first), published by agent ``by``
    (any trusted agent when ``None``)."""

    __slots__ = ("by", "pattern", "within")

    def __init__(self, pattern: str, *, within: float | None = None, by: str | None = None) -> None:
        problem = pattern_problem(pattern, families=True)
        if problem is not None:
            raise InvalidChoreography(problem, field="pattern")
        for report in REPORTS:
            if tokens_intersect(pattern.split("."), report.split(".")):
                raise InvalidChoreography(
                    f"{pattern!r} matches the trackers' {report!r}", field="pattern"
                )
        self.pattern = pattern
        self.within = _within(within, "within")
        self.by = None if by is None else checked_name("by", by)

    def accepts(self, subject: str, agent: str) -> bool:
        """Whether an event on ``subject`` signed by ``agent`` is this step."""
        return matches(self.pattern, subject) and (self.by is None or self.by == agent)

    def __repr__(self) -> str:
        within = "" if self.within is None else f", within={self.within:g}"
        by = "" if self.by is None else f", by={self.by!r}"
        return f"FlowStep({self.pattern!r}{within}{by})"


class Choreography:
    """An expected choreography named ``name`` (a token): ``steps`` in order."""

    __slots__ = ("name", "steps")

    def __init__(self, name: str, steps: Sequence[FlowStep]) -> None:
        try:
            self.name = checked_name("name", name)
        except InvalidArgument as exc:
            raise InvalidChoreography(str(exc).partition(": ")[2], field="name") from exc
        if isinstance(steps, str) or not isinstance(steps, Sequence):
            raise InvalidChoreography(
                f"must be a sequence of FlowStep, got {steps!r}", field="steps"
            )
        if not 2 <= len(steps) <= MAX_STEPS:
            raise InvalidChoreography(
                f"a flow has 2 to {MAX_STEPS} steps, got {len(steps)}", field="steps"
            )
        for index, step in enumerate(steps):
            _check_step(index, step, steps[:index])
        self.steps: tuple[FlowStep, ...] = tuple(steps)

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(step.pattern for step in self.steps)

    def step_of(self, subject: str, agent: str) -> int | None:
        """The index of the step an event on ``subject`` by ``agent`` is, if any."""
        for index, step in enumerate(self.steps):
            if step.accepts(subject, agent):
                return index
        return None

    def __repr__(self) -> str:
        return f"Choreography({self.name!r}, {list(self.steps)!r})"


def _check_step(index: int, step: object, before: Sequence[FlowStep]) -> None:
    field = f"steps[{index}]"
    if not isinstance(step, FlowStep):
        raise InvalidChoreography(f"must be a FlowStep, got {step!r}", field=field)
    if index == 0 and step.within is not None:
        raise InvalidChoreography(
            "the first step starts the flow: it has no limit", field=f"{field}.within"
        )
    if index > 0 and step.within is None:
        raise InvalidChoreography(
            "every step after the first needs within=seconds", field=f"{field}.within"
        )
    for other, earlier in enumerate(before):
        if tokens_intersect(earlier.pattern.split("."), step.pattern.split(".")):
            raise InvalidChoreography(
                f"{step.pattern!r} and step {other} {earlier.pattern!r} can match the same event",
                field=field,
            )


def check_flows(flows: Sequence[Choreography]) -> tuple[Choreography, ...]:
    """``flows`` if they are distinct :class:`Choreography` objects with distinct names."""
    if isinstance(flows, Choreography):
        flows = [flows]
    if not isinstance(flows, Sequence) or not flows:
        raise InvalidChoreography("track at least one Choreography", field="flows")
    names: set[str] = set()
    for index, flow in enumerate(flows):
        if not isinstance(flow, Choreography):
            raise InvalidChoreography(
                f"must be a Choreography, got {flow!r}", field=f"flows[{index}]"
            )
        if flow.name in names:
            raise InvalidChoreography(f"two flows are named {flow.name!r}", field=f"flows[{index}]")
        names.add(flow.name)
    return tuple(flows)
