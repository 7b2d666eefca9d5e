"""Access-control policy: who may publish and consume which logical subjects.

A policy is a TOML document (one per tenant, i.e. per NATS account)::

    version = 1

    [[rule]]
    principal = "agent:summarizer"          # or "capability:summarize", "role:admin", "*"
    publish = ["task.*.completed", "knowledge.>"]
    consume = ["capability.summarize.*"]

    [[rule]]
    principal = "capability:summarize"
    consume = ["knowledge.>"]
    deny_consume = ["knowledge.secret.*"]

    [[rule]]
    principal = "*"
    deny_publish = ["system.>"]

Semantics:

* Patterns are *logical* subjects (no ``<root>.`` prefix) with NATS wildcards: ``*`` is exactly
  one token, ``>`` one or more tokens and only as the last token. Tokens are 1-64 of
  ``A-Z a-z 0-9 _ -`` (so ``$JS.API.>`` or ``_INBOX`` tricks cannot be written), at most 16.
* A rule applies to an actor when its principal names the agent, one of the agent's
  capabilities, one of its roles, or is ``"*"``.
* Deny by default: an action is allowed only if an applicable rule's ``publish`` / ``consume``
  pattern matches the subject, and no applicable rule's ``deny_publish`` / ``deny_consume``
  pattern matches it. An explicit deny wins over any allow, whatever rule it comes from.
* Every malformed document raises :class:`PolicyError` naming the place (rule index from 0,
  field, list item).

:meth:`Policy.for_actor` precompiles the rules that apply to one actor into a single regular
expression per action (linear in the subject's length), for the per-event checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ._errors import InvalidName, SecurityError
from ._keys import check_name
from ._layout import (
    TOKEN_RE,
    is_subject,
    is_token,
    pattern_problem,
    tokens_contain,
    tokens_intersect,
    tokens_match,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "ACTIONS",
    "POLICY_VERSION",
    "Action",
    "Actor",
    "CompiledPolicy",
    "Grants",
    "Policy",
    "PolicyDenied",
    "PolicyError",
    "Rule",
    "check_pattern",
    "pattern_contains",
    "patterns_intersect",
    "subject_matches",
]

Action = Literal["publish", "consume"]
ACTIONS: tuple[Action, ...] = ("publish", "consume")
POLICY_VERSION = 1
NO_RULE = "no rule allows it"
_LISTS = ("publish", "consume", "deny_publish", "deny_consume")
_RULE_KEYS = ("principal", *_LISTS)
_TOP_KEYS = ("version", "rule")


class PolicyError(SecurityError, ValueError):
    """A malformed policy document. ``rule`` (0-based), ``field`` and ``item`` locate it."""

    def __init__(
        self,
        detail: str,
        *,
        rule: int | None = None,
        field: str | None = None,
        item: int | None = None,
    ) -> None:
        self.detail = detail
        self.rule = rule
        self.field = field
        self.item = item
        where = self.location
        super().__init__(f"policy {where}: {detail}" if where else f"policy: {detail}")

    @property
    def location(self) -> str:
        """E.g. ``rule[2].publish[0]``, ``version``, or ``""`` for the document as a whole."""
        where = f"rule[{self.rule}]" if self.rule is not None else ""
        if self.field is not None:
            where = f"{where}.{self.field}" if where else self.field
        if self.item is not None:
            where += f"[{self.item}]"
        return where


class PolicyDenied(SecurityError):
    """The policy refuses ``actor`` the ``action`` on ``subject``; ``reason`` says why."""

    def __init__(self, actor: Actor, action: Action, subject: str, reason: str) -> None:
        super().__init__(f"{actor.source} may not {action} {subject!r}: {reason}")
        self.actor = actor
        self.action = action
        self.subject = subject
        self.reason = reason


def _names(kind: str, values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(f"{kind} names must be a sequence of strings, not a string")
    names = tuple(values)
    for name in names:
        if not is_token(name):
            raise InvalidName(kind, name)
    return names


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an agent of a tenant, with the capabilities and roles it holds."""

    tenant: str
    agent: str
    capabilities: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name("tenant", self.tenant)
        check_name("agent", self.agent)
        object.__setattr__(self, "capabilities", _names("capability", self.capabilities))
        object.__setattr__(self, "roles", _names("role", self.roles))

    @property
    def source(self) -> str:
        return f"{self.tenant}/{self.agent}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``[[rule]]``: a principal and its allowed and denied patterns per action.

    A rule is validated when a :class:`Policy` is built from it (so errors carry its index).
    """

    principal: str
    publish: tuple[str, ...] = ()
    consume: tuple[str, ...] = ()
    deny_publish: tuple[str, ...] = ()
    deny_consume: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in _LISTS:
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))

    def applies_to(self, actor: Actor) -> bool:
        if self.principal == "*":
            return True
        kind, _, name = self.principal.partition(":")
        if kind == "agent":
            return name == actor.agent
        if kind == "capability":
            return name in actor.capabilities
        return kind == "role" and name in actor.roles

    def allowed(self, action: Action) -> tuple[str, ...]:
        return self.publish if action == "publish" else self.consume

    def denied(self, action: Action) -> tuple[str, ...]:
        return self.deny_publish if action == "publish" else self.deny_consume


# -- patterns ---------------------------------------------------------------------------------


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid logical pattern, else raise :class:`PolicyError`."""
    problem = pattern_problem(pattern)
    if problem is not None:
        raise PolicyError(problem, field="pattern")
    return pattern


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether the concrete ``subject`` matches ``pattern`` (NATS semantics), in O(tokens)."""
    check_pattern(pattern)
    return is_subject(subject) and tokens_match(pattern.split("."), subject.split("."))


def pattern_contains(outer: str, inner: str) -> bool:
    """Whether every subject ``inner`` matches is also matched by ``outer``."""
    check_pattern(outer)
    check_pattern(inner)
    return tokens_contain(outer.split("."), inner.split("."))


def patterns_intersect(a: str, b: str) -> bool:
    """Whether some subject matches both ``a`` and ``b``."""
    check_pattern(a)
    check_pattern(b)
    return tokens_intersect(a.split("."), b.split("."))


def _minimal(patterns: Iterable[str], *, drop_if_in: Sequence[str] = ()) -> tuple[str, ...]:
    """Distinct patterns in order, without those another one (or one of ``drop_if_in``) covers."""
    distinct = list(dict.fromkeys(patterns))
    split = {pattern: pattern.split(".") for pattern in (*distinct, *drop_if_in)}
    kept: list[str] = []
    for pattern in distinct:
        covers = [other for other in distinct if other != pattern] + list(drop_if_in)
        if not any(tokens_contain(split[other], split[pattern]) for other in covers):
            kept.append(pattern)
    return tuple(kept)


# -- documents --------------------------------------------------------------------------------


def _check_principal(index: int, principal: object) -> None:
    if not isinstance(principal, str):
        raise PolicyError(
            f"expected a string, got {type(principal).__name__}", rule=index, field="principal"
        )
    if principal == "*":
        return
    kind, sep, name = principal.partition(":")
    if not sep or kind not in ("agent", "capability", "role"):
        raise PolicyError(
            f"{principal!r} is not 'agent:<name>', 'capability:<name>', 'role:<name>' or '*'",
            rule=index,
            field="principal",
        )
    try:
        check_name(kind, name) if kind == "agent" else _names(kind, (name,))
    except InvalidName as exc:
        raise PolicyError(str(exc), rule=index, field="principal") from None


def _check_rule(index: int, rule: object) -> None:
    if not isinstance(rule, Rule):
        raise PolicyError(f"expected a Rule, got {type(rule).__name__}", rule=index)
    _check_principal(index, rule.principal)
    for name in _LISTS:
        patterns = getattr(rule, name)
        if not isinstance(patterns, tuple):
            kind = type(patterns).__name__
            raise PolicyError(f"expected a list of strings, got {kind}", rule=index, field=name)
        for item, pattern in enumerate(patterns):
            problem = pattern_problem(pattern)
            if problem is not None:
                raise PolicyError(problem, rule=index, field=name, item=item)


def _parse_rule(index: int, table: object) -> Rule:
    if not isinstance(table, dict):
        raise PolicyError(f"expected a table, got {type(table).__name__}", rule=index)
    for key in table:
        if key not in _RULE_KEYS:
            raise PolicyError(
                f"unknown key {key!r} (allowed: {', '.join(_RULE_KEYS)})", rule=index, field=key
            )
    if "principal" not in table:
        raise PolicyError("missing", rule=index, field="principal")
    return Rule(**table)


def _parse_document(data: dict[str, Any]) -> Policy:
    for key in data:
        if key not in _TOP_KEYS:
            raise PolicyError(f"unknown key {key!r} (allowed: version, rule)", field=key)
    if "version" not in data:
        raise PolicyError("missing (write `version = 1`)", field="version")
    tables = data.get("rule", [])
    if not isinstance(tables, list):
        raise PolicyError("expected an array of tables ([[rule]])", field="rule")
    return Policy(
        tuple(_parse_rule(index, table) for index, table in enumerate(tables)),
        version=data["version"],
    )


# -- policies ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grants:
    """What one actor is granted for one action, reduced to the patterns that matter.

    ``allow``: distinct allow patterns, without those another allow contains or an explicit
    deny contains entirely. ``deny``: distinct deny patterns, without those another contains.
    """

    allow: tuple[str, ...]
    deny: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """An access-control policy (see the module docstring for the document format)."""

    rules: tuple[Rule, ...] = ()
    version: int = POLICY_VERSION

    def __post_init__(self) -> None:
        if type(self.version) is not int:
            kind = type(self.version).__name__
            raise PolicyError(f"expected an integer, got {kind}", field="version")
        if self.version != POLICY_VERSION:
            raise PolicyError(
                f"unsupported version {self.version} (supported: {POLICY_VERSION})",
                field="version",
            )
        if isinstance(self.rules, list):
            object.__setattr__(self, "rules", tuple(self.rules))
        if not isinstance(self.rules, tuple):
            raise PolicyError(f"expected a tuple of rules, got {type(self.rules).__name__}")
        for index, rule in enumerate(self.rules):
            _check_rule(index, rule)

    @classmethod
    def from_toml(cls, text: str) -> Policy:
        """Parse a policy document; any problem is a :class:`PolicyError` with its location."""
        import tomllib

        if not isinstance(text, str):
            raise PolicyError(f"expected TOML text (str), got {type(text).__name__}")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"not valid TOML: {exc}") from None
        return _parse_document(data)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Read and parse a policy file (UTF-8 TOML); a file that cannot be read is a
        :class:`PolicyError` too (with the ``OSError`` as its cause)."""
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise PolicyError(f"cannot read policy file {str(path)!r}: {reason}") from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyError(f"not UTF-8: {exc}") from None
        return cls.from_toml(text)

    def rules_for(self, actor: Actor) -> tuple[tuple[int, Rule], ...]:
        """The rules that apply to ``actor``, with their index in the document."""
        if not isinstance(actor, Actor):
            raise TypeError(f"expected an Actor, got {type(actor).__name__}")
        return tuple(
            (index, rule) for index, rule in enumerate(self.rules) if rule.applies_to(actor)
        )

    def grants(self, actor: Actor, action: Action) -> Grants:
        """The reduced allow and deny patterns of ``actor`` for ``action``."""
        _check_action(action)
        rules = [rule for _, rule in self.rules_for(actor)]
        deny = _minimal(pattern for rule in rules for pattern in rule.denied(action))
        allow = _minimal(
            (pattern for rule in rules for pattern in rule.allowed(action)), drop_if_in=deny
        )
        return Grants(allow, deny)

    def refusal(self, actor: Actor, action: Action, subject: str) -> str | None:
        """Why ``actor`` may not do ``action`` on ``subject``, or ``None`` if it may.

        The reference decision: rule by rule, token by token, O(tokens) per pattern.
        """
        _check_action(action)
        if not is_subject(subject):
            return "not a valid subject (tokens of A-Z a-z 0-9 _ -, no wildcards)"
        have = subject.split(".")
        rules = self.rules_for(actor)
        for index, rule in rules:
            for pattern in rule.denied(action):
                if tokens_match(pattern.split("."), have):
                    return f"denied by rule {index} ({rule.principal}: deny_{action} {pattern!r})"
        for _, rule in rules:
            if any(tokens_match(pattern.split("."), have) for pattern in rule.allowed(action)):
                return None
        return NO_RULE

    def check(self, actor: Actor, action: Action, subject: str) -> None:
        """Return if allowed; raise :class:`PolicyDenied` otherwise."""
        reason = self.refusal(actor, action, subject)
        if reason is not None:
            raise PolicyDenied(actor, action, subject, reason)

    def allows(self, actor: Actor, action: Action, subject: str) -> bool:
        return self.refusal(actor, action, subject) is None

    def for_actor(self, actor: Actor) -> CompiledPolicy:
        """The rules of ``actor`` compiled for fast per-event checks."""
        return CompiledPolicy(
            policy=self,
            actor=actor,
            may_publish=_predicate(self.grants(actor, "publish")),
            may_consume=_predicate(self.grants(actor, "consume")),
        )


def _check_action(action: str) -> None:
    if action not in ACTIONS:
        raise ValueError(f"action must be 'publish' or 'consume', not {action!r}")


def _regex(pattern: str) -> str:
    parts = []
    for token in pattern.split("."):
        if token == "*":
            parts.append(TOKEN_RE)
        elif token == ">":
            parts.append(rf"{TOKEN_RE}(?:\.{TOKEN_RE})*")
        else:
            parts.append(re.escape(token))
    return r"\.".join(parts)


def _never(subject: str) -> bool:
    return False


def _predicate(grants: Grants) -> Callable[[str], bool]:
    """One compiled regular expression: not any deny, and some allow, over the whole subject.

    Tokens are a character class without ``.``, so matching is linear in the subject.
    """
    if not grants.allow:
        return _never
    allow = "|".join(_regex(pattern) for pattern in grants.allow)
    deny = "|".join(
        _regex(pattern)
        for pattern in grants.deny
        if any(tokens_intersect(pattern.split("."), other.split(".")) for other in grants.allow)
    )
    source = f"(?!(?:{deny})\\Z)(?:{allow})" if deny else f"(?:{allow})"
    fullmatch = re.compile(source).fullmatch

    def may(subject: str) -> bool:
        return fullmatch(subject) is not None

    return may


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A policy compiled for one actor: ``may_publish(subject)`` / ``may_consume(subject)``.

    Both are plain callables (one regular-expression match each) and agree with
    :meth:`Policy.allows`; :meth:`check` explains a refusal with the reference decision.
    """

    policy: Policy
    actor: Actor
    may_publish: Callable[[str], bool] = field(repr=False)
    may_consume: Callable[[str], bool] = field(repr=False)

    def may(self, action: Action, subject: str) -> bool:
        if action == "publish":
            return self.may_publish(subject)
        _check_action(action)
        return self.may_consume(subject)

    def check(self, action: Action, subject: str) -> None:
        """Return if allowed; raise :class:`PolicyDenied` (with the rule's reason) otherwise."""
        if not self.may(action, subject):
            reason = self.policy.refusal(self.actor, action, subject)
            raise PolicyDenied(self.actor, action, subject, reason or "refused by the policy")
