"""Resiliency policies per call target, in code or in a TOML file shaped like Dapr's
resiliency spec: named policies (timeouts, retries, circuit breakers), then targets (agents,
capabilities, a default) that refer to them by name.

    [policies.timeouts]
    general = "5s"

    [policies.retries.important]
    max_deliveries = 3          # attempts in all, for a direct call
    initial_delay = "200ms"

    [policies.circuit_breakers.fragile]
    consecutive_failures = 5
    open_for = "30s"

    [targets.default]
    timeout = "general"

    [targets.agents.summarizer]
    retry = "important"
    circuit_breaker = "fragile"

    [targets.capabilities.summarize]
    circuit_breaker = "fragile"

Durations are seconds (a number) or Go-style strings (``"250ms"``, ``"5s"``, ``"1m30s"``).
A target's unset fields fall back to ``[targets.default]``. Unknown keys, unknown policy
names and values out of range are refused with :class:`ResiliencySpecError` naming the path.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._breaker import BreakerPolicy, TimeoutPolicy
from ._errors import ConfigError, InvalidEvent
from ._retry import RetryPolicy
from ._subjects import check_token

if TYPE_CHECKING:
    from collections.abc import Mapping

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_MAX_SPEC = 1 << 20


class ResiliencySpecError(ConfigError):
    """A resiliency spec is not valid: ``path`` is where (``targets.agents.x.retry``)."""

    def __init__(self, path: str, message: str, *, source: str = "spec") -> None:
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")
        self.path = path
        self.source = source


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """What applies to calls to one target; ``None`` means none (or the default's)."""

    timeout: TimeoutPolicy | None = None
    retry: RetryPolicy | None = None
    circuit_breaker: BreakerPolicy | None = None

    def over(self, default: TargetPolicy) -> TargetPolicy:
        """This policy with its unset fields taken from ``default``."""
        return TargetPolicy(
            self.timeout or default.timeout,
            self.retry or default.retry,
            self.circuit_breaker or default.circuit_breaker,
        )


@dataclass(frozen=True, slots=True)
class Resiliency:
    """Policies per agent and per capability, falling back to ``default`` field by field."""

    agents: Mapping[str, TargetPolicy] = field(default_factory=dict)
    capabilities: Mapping[str, TargetPolicy] = field(default_factory=dict)
    default: TargetPolicy = field(default_factory=TargetPolicy)

    def for_agent(self, agent: str) -> TargetPolicy:
        return self.agents.get(agent, TargetPolicy()).over(self.default)

    def for_capability(self, capability: str) -> TargetPolicy:
        return self.capabilities.get(capability, TargetPolicy()).over(self.default)

    @classmethod
    def from_toml(cls, text: str, *, source: str = "spec") -> Resiliency:
        """Parse a spec (see the module docstring)."""
        if len(text) > _MAX_SPEC:
            raise ResiliencySpecError("", f"larger than {_MAX_SPEC} characters", source=source)
        import tomllib  # not at `import eventwire` (see tests/sdk/test_imports.py)

        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ResiliencySpecError("", f"not valid TOML: {exc}", source=source) from exc
        return _Parser(source).spec(document)

    @classmethod
    def load(cls, path: str | Path) -> Resiliency:
        """Read and parse the spec file at ``path``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ResiliencySpecError("", f"cannot read: {exc}", source=str(path)) from exc
        return cls.from_toml(text, source=str(path))


def parse_duration(value: object) -> float:
    """Seconds from a number or a Go-style duration string; ``ValueError`` otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        pieces = _DURATION.findall(value)
        if not pieces or "".join(n + u for n, u in pieces) != value:
            raise ValueError(f"{value!r} is not a duration (e.g. 250ms, 5s, 1m30s)")
        seconds = sum(float(n) * _UNITS[u] for n, u in pieces)
    else:
        raise ValueError(f"{value!r} is not a duration (e.g. 250ms, 5s, 1m30s, or seconds)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{value!r} is not a duration >= 0")
    return seconds


_DURATION_FIELDS = frozenset({"initial_delay", "max_delay", "window", "open_for"})
_SECTIONS = {
    "": ("policies", "targets"),
    "policies": ("timeouts", "retries", "circuit_breakers"),
    "targets": ("default", "agents", "capabilities"),
}
_TARGET_KEYS = ("timeout", "retry", "circuit_breaker")


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.named: dict[str, dict[str, Any]] = {}

    def fail(self, path: str, message: str) -> ResiliencySpecError:
        return ResiliencySpecError(path, message, source=self.source)

    def table(self, value: object, path: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table, got {type(value).__name__}")
        unknown = sorted(set(value) - set(allowed)) if allowed is not None else []
        if unknown:
            raise self.fail(
                path, f"unknown key {unknown[0]!r} (allowed: {', '.join(allowed or ())})"
            )
        return value

    def spec(self, document: dict[str, Any]) -> Resiliency:
        top = self.table(document, "", _SECTIONS[""])
        policies = self.table(top.get("policies", {}), "policies", _SECTIONS["policies"])
        timeouts = self.table(policies.get("timeouts", {}), "policies.timeouts", None)
        self.named["timeout"] = {
            name: self.timeout(value, f"policies.timeouts.{name}")
            for name, value in timeouts.items()
        }
        for kind, key, cls in (
            ("retries", "retry", RetryPolicy),
            ("circuit_breakers", "circuit_breaker", BreakerPolicy),
        ):
            section = self.table(policies.get(kind, {}), f"policies.{kind}", None)
            self.named[key] = {
                name: self.policy(cls, value, f"policies.{kind}.{name}")
                for name, value in section.items()
            }
        return self.targets(self.table(top.get("targets", {}), "targets", _SECTIONS["targets"]))

    def timeout(self, value: object, path: str) -> TimeoutPolicy:
        try:
            return TimeoutPolicy(parse_duration(value))
        except (ValueError, ConfigError) as exc:
            raise self.fail(path, str(exc)) from exc

    def policy(self, cls: type[Any], value: object, path: str) -> Any:
        names = tuple(f.name for f in fields(cls))
        table = self.table(value, path, names)
        kwargs: dict[str, Any] = {}
        for key, raw in table.items():
            try:
                kwargs[key] = parse_duration(raw) if key in _DURATION_FIELDS else raw
            except ValueError as exc:
                raise self.fail(f"{path}.{key}", str(exc)) from exc
        try:
            return cls(**kwargs)
        except (ConfigError, TypeError) as exc:
            raise self.fail(path, str(exc)) from exc

    def targets(self, section: dict[str, Any]) -> Resiliency:
        default = self.target(section.get("default", {}), "targets.default")
        groups: dict[str, dict[str, TargetPolicy]] = {}
        for kind, noun in (("agents", "agent"), ("capabilities", "capability")):
            table = self.table(section.get(kind, {}), f"targets.{kind}", None)
            groups[kind] = {}
            for name, value in table.items():
                path = f"targets.{kind}.{name}"
                try:
                    check_token(name, field=path)
                except InvalidEvent as exc:
                    raise self.fail(path, f"not a valid {noun} name: {exc}") from exc
                groups[kind][name] = self.target(value, path)
        return Resiliency(groups["agents"], groups["capabilities"], default)

    def target(self, value: object, path: str) -> TargetPolicy:
        table = self.table(value, path, _TARGET_KEYS)
        chosen: dict[str, Any] = {}
        for key, name in table.items():
            known = self.named[key]
            if not isinstance(name, str) or name not in known:
                listed = ", ".join(sorted(known)) or "none defined"
                raise self.fail(f"{path}.{key}", f"unknown {key} policy {name!r} ({listed})")
            chosen[key] = known[name]
        return TargetPolicy(**chosen)
