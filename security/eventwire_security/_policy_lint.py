"""A lint for policy documents: what is valid but cannot be what the author meant.

:class:`Policy` refuses what is malformed; :func:`lint_policy` flags what it accepts yet
never takes effect, as typed :class:`PolicyFinding` values (pure: no I/O):

* ``never-matches``: a pattern no event subject can match: it starts with the subject root
  (patterns are logical subjects, ``knowledge.x`` not ``ew.knowledge.x``) or with a token
  that is not a family (``foo.bar``), or it has one token (subjects have two or more).
* ``reserved``: a pattern starting with ``keyed``, the partitioning layout's token.
* ``always-denied``: an allow pattern that a deny pattern of the same rule, or of a ``*``
  rule, contains entirely: it allows nothing.
* ``unknown-agent``: an ``agent:`` principal that is not one of the known agents;
  ``unknown-capability`` / ``unknown-role``: a ``capability:`` / ``role:`` principal that
  no known actor holds. Checked only when the agents (or actors) are given.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ._layout import DEFAULT_ROOT, FAMILIES, KEYED, tokens_contain

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from ._policy import Actor, Policy, Rule

__all__ = ["FINDING_KINDS", "PolicyFinding", "PolicyFindingKind", "lint_policy"]

PolicyFindingKind = Literal[
    "never-matches",
    "reserved",
    "always-denied",
    "unknown-agent",
    "unknown-capability",
    "unknown-role",
]
FINDING_KINDS: tuple[PolicyFindingKind, ...] = (
    "never-matches",
    "reserved",
    "always-denied",
    "unknown-agent",
    "unknown-capability",
    "unknown-role",
)
_LISTS = ("publish", "consume", "deny_publish", "deny_consume")
_ALLOWS = {"publish": "deny_publish", "consume": "deny_consume"}


@dataclass(frozen=True, slots=True)
class PolicyFinding:
    """One finding: ``kind``, where (``rule`` index from 0, ``field``, list ``item``), the
    ``value`` it is about (a pattern or a principal) and a ``message`` for people."""

    kind: PolicyFindingKind
    rule: int
    field: str
    item: int | None
    value: str
    message: str

    @property
    def location(self) -> str:
        """E.g. ``rule[1].consume[0]`` or ``rule[2].principal`` (as :class:`PolicyError`)."""
        where = f"rule[{self.rule}].{self.field}"
        return where if self.item is None else f"{where}[{self.item}]"

    def __str__(self) -> str:
        return f"{self.location}: {self.kind}: {self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "location": self.location,
            "rule": self.rule,
            "field": self.field,
            "item": self.item,
            "value": self.value,
            "message": self.message,
        }


def lint_policy(
    policy: Policy,
    *,
    root: str = DEFAULT_ROOT,
    agents: Iterable[str] | None = None,
    actors: Iterable[Actor] | None = None,
) -> tuple[PolicyFinding, ...]:
    """The findings of ``policy``, in document order (rule, then field, then item).

    ``root`` is the deployment's subject root (a pattern starting with it gets a hint).
    Principals are checked against ``agents`` and ``actors`` (the agents are their union);
    capabilities and roles only against ``actors``. With neither, principals are not checked.
    """
    known_actors = tuple(actors or ())
    names = None if agents is None and actors is None else set(agents or ())
    if names is not None:
        names |= {actor.agent for actor in known_actors}
    found: list[PolicyFinding] = []
    for index, rule in enumerate(policy.rules):
        held = known_actors if actors is not None else None
        found += _principal(index, rule.principal, names, held)
        found += _patterns(index, rule, root)
        found += _always_denied(index, rule, policy.rules)
    return tuple(found)


def _patterns(index: int, rule: Rule, root: str) -> Iterator[PolicyFinding]:
    for field in _LISTS:
        for item, pattern in enumerate(getattr(rule, field)):
            problem = _never_matches(pattern, root)
            if problem is not None:
                kind: PolicyFindingKind = "reserved" if problem[0] else "never-matches"
                yield PolicyFinding(kind, index, field, item, pattern, problem[1])


def _never_matches(pattern: str, root: str) -> tuple[bool, str] | None:
    """``(reserved, why)`` if no event subject matches ``pattern``, else ``None``."""
    tokens = pattern.split(".")
    first = tokens[0]
    if first == KEYED:
        return True, (
            f"{pattern!r}: {KEYED!r} is reserved for partitioning; write the event's own "
            f"subject (keyed events are matched by it)"
        )
    if first not in (*FAMILIES, "*", ">"):
        if first == root and len(tokens) > 1:
            rest = ".".join(tokens[1:])
            return False, (
                f"{pattern!r} starts with the subject root {root!r}: patterns are logical "
                f"subjects, write {rest!r}"
            )
        return False, f"{pattern!r} can never match: {first!r} is not a family ({_families()})"
    if len(tokens) == 1 and first != ">":
        return False, (
            f"{pattern!r} can never match: event subjects have at least two tokens "
            f"(e.g. {first + '.>'!r})"
        )
    return None


def _always_denied(index: int, rule: Rule, rules: tuple[Rule, ...]) -> Iterator[PolicyFinding]:
    for field, deny_field in _ALLOWS.items():
        denies = [
            (other_index, deny)
            for other_index, other in enumerate(rules)
            if other is rule or other.principal == "*"
            for deny in getattr(other, deny_field)
        ]
        for item, pattern in enumerate(getattr(rule, field)):
            for other_index, deny in denies:
                if tokens_contain(deny.split("."), pattern.split(".")):
                    where = "this rule" if other_index == index else f"rule {other_index} (*)"
                    message = f"{pattern!r} allows nothing: {deny_field} {deny!r} of {where}"
                    yield PolicyFinding("always-denied", index, field, item, pattern, message)
                    break


def _principal(
    index: int, principal: str, agents: set[str] | None, actors: tuple[Actor, ...] | None
) -> Iterator[PolicyFinding]:
    kind, _, name = principal.partition(":")
    if kind == "agent" and agents is not None and name not in agents:
        yield _unknown("unknown-agent", index, principal, name, agents)
    elif kind == "capability" and actors is not None:
        held = {capability for actor in actors for capability in actor.capabilities}
        if name not in held:
            yield _unknown("unknown-capability", index, principal, name, held)
    elif kind == "role" and actors is not None:
        held = {role for actor in actors for role in actor.roles}
        if name not in held:
            yield _unknown("unknown-role", index, principal, name, held)


def _unknown(
    kind: PolicyFindingKind, index: int, principal: str, name: str, known: set[str]
) -> PolicyFinding:
    noun = kind.removeprefix("unknown-")
    listed = ", ".join(sorted(known)) or "none"
    if noun == "agent":
        message = f"{principal!r} is not a known agent (known: {listed})"
    else:
        message = f"{principal!r}: no known agent holds this {noun} (held: {listed})"
    close = difflib.get_close_matches(name, sorted(known), n=1)
    if close:
        message += f"; did you mean '{noun}:{close[0]}'?"
    return PolicyFinding(kind, index, "principal", None, principal, message)


def _families() -> str:
    return ", ".join(FAMILIES)
