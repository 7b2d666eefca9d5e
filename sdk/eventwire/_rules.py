"""Content-based routing rules in CEL (the Common Expression Language, as in Dapr's pub/sub
routing and CloudEvents subscriptions).

A :class:`Route` says ``when`` (a CEL expression over one verified event) and ``to`` (the
logical subject the event is routed to). :class:`Rules` compiles every expression when it
is built, so a bad one is an :class:`InvalidRule` naming it before any event flows; at run
time the first route whose expression is true wins. An expression that fails on one event
(a missing field, a type mismatch) raises :class:`RuleFailed` for that event only; the
caller dead-letters it with the reason and goes on.

Names an expression can use: the CloudEvents attributes and eventwire's extensions as
top-level variables (``type``, ``source``, ``subject``, ``time`` (a timestamp), ``data``,
``tenant``, ``correlationid``...), and the same map as ``event`` (``event.data.amount``, as
Dapr writes it). Absent optional attributes are ``null``; data sealed for others is ``null``.
Use ``has(data.amount)`` before reading a field that some events lack.

CEL comes from the optional ``common-expression-language`` package (Rust's ``cel`` crate),
imported on first use: ``pip install 'eventwire[routing]'``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._errors import ConfigError, EventwireError, InvalidArgument, InvalidEvent
from ._subjects import check_subject
from ._work import check_deliver, work_subject

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

    from ._event import Event

ATTRIBUTES = (
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
    "tenant",
    "root",
    "iat",
    "exp",
    "correlationid",
    "causationid",
    "traceparent",
    "partitionkey",
)
NAMES = frozenset((*ATTRIBUTES, "event"))
# Names bound by CEL's comprehension macros: ``list.exists(x, x > 1)`` binds ``x``.
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_MAX_EXPRESSION = 4096
_MAX_REASON = 300


class InvalidRule(ConfigError):
    """A routing rule cannot be used: ``rule`` names it, ``expression`` is its ``when``,
    ``reason`` says what is wrong (a syntax error, an unknown name, a bad target)."""

    def __init__(self, rule: str, expression: str, reason: str) -> None:
        super().__init__(f"{rule} ({expression!r}): {reason}")
        self.rule = rule
        self.expression = expression
        self.reason = reason


class RuleFailed(EventwireError):
    """A rule's expression failed on one event (``event_id``); ``reason`` is what CEL said.
    The event is dead-lettered with it; other events keep flowing."""

    def __init__(self, rule: str, expression: str, event_id: str, reason: str) -> None:
        super().__init__(f"{rule} ({expression!r}) failed on event {event_id}: {reason}")
        self.rule = rule
        self.expression = expression
        self.event_id = event_id
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Route:
    """Route events for which ``when`` is true to the logical subject ``to``, to every
    agent there (``deliver="all"``) or to one of them (``"one"``, a capability subject)."""

    when: str
    to: str
    name: str | None = None
    deliver: str = "all"


@functools.cache
def _cel() -> ModuleType:
    try:
        import cel
    except ImportError as exc:
        raise ConfigError(
            "routing rules need the `common-expression-language` package: "
            "pip install 'eventwire[routing]'"
        ) from exc
    return cel


@dataclass(frozen=True, slots=True)
class _Compiled:
    route: Route
    label: str
    program: Any  # cel.Program


class Rules:
    """Ordered routing rules, compiled and checked when built; the first true one wins."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self._compiled = tuple(_compile(route, i) for i, route in enumerate(routes, 1))

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(c.route for c in self._compiled)

    def __len__(self) -> int:
        return len(self._compiled)

    def match(self, event: Event) -> Route | None:
        """The first route whose expression is true for ``event``, or ``None``;
        :class:`RuleFailed` if an expression fails or is not a bool for this event."""
        if not self._compiled:
            return None
        variables = activation(event)
        for compiled in self._compiled:
            if _evaluate(compiled, variables, event.id):
                return compiled.route
        return None


def activation(event: Event) -> dict[str, Any]:
    """The variables a rule sees for ``event``."""
    attributes: dict[str, Any] = {name: getattr(event, name) for name in ATTRIBUTES}
    if not event.readable:
        attributes["data"] = None
    return {**attributes, "event": attributes}


def _evaluate(compiled: _Compiled, variables: dict[str, Any], event_id: str) -> bool:
    try:
        result = compiled.program.execute(variables)
    except Exception as exc:  # whatever CEL raises is this event's problem, not the bus's
        raise RuleFailed(compiled.label, compiled.route.when, event_id, _reason(exc)) from exc
    if not isinstance(result, bool):
        reason = f"the expression gave {type(result).__name__} {result!r}, not a bool"
        raise RuleFailed(compiled.label, compiled.route.when, event_id, reason)
    return result


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or "no detail"
    if isinstance(exc, KeyError):
        text = f"no such key: {text}"
    text = text.split(". ", 1)[0]  # the first sentence: the CEL crate adds long advice
    return f"{type(exc).__name__}: {text}"[:_MAX_REASON]


def _compile(route: Route, index: int) -> _Compiled:
    if not isinstance(route, Route):
        raise InvalidRule(f"route {index}", repr(route), "not a Route")
    label = f"route {route.name!r}" if route.name else f"route {index}"
    when = route.when
    if not isinstance(when, str) or not when.strip() or len(when) > _MAX_EXPRESSION:
        raise InvalidRule(label, str(when), f"`when` must be 1-{_MAX_EXPRESSION} characters")
    try:
        check_subject(route.to, field="to")
    except InvalidEvent as exc:
        raise InvalidRule(label, when, f"not a logical subject: {exc}") from exc
    try:
        if check_deliver(route.deliver) == "one":
            work_subject(route.to)
    except InvalidArgument as exc:
        raise InvalidRule(label, when, str(exc)) from exc
    try:
        program = _cel().compile(when)
    except (ValueError, RuntimeError) as exc:
        raise InvalidRule(label, when, str(exc).strip()) from exc
    unknown = sorted(set(program.variables()) - NAMES - set(_BOUND.findall(when)))
    if unknown:
        raise InvalidRule(
            label,
            when,
            f"unknown name{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: a rule sees "
            f"the event's attributes ({', '.join(ATTRIBUTES)}) and `event`; "
            "fields of the data are under `data.`",
        )
    return _Compiled(route, label, program)
