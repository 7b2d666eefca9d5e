"""The resiliency spec (TOML, shaped like Dapr's): named policies, targets, strict checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from eventwire import (
    BreakerPolicy,
    ConfigError,
    Resiliency,
    ResiliencySpecError,
    RetryPolicy,
    TargetPolicy,
    TimeoutPolicy,
)

if TYPE_CHECKING:
    from pathlib import Path

SPEC = """
[policies.timeouts]
general = "5s"
quick = 0.25

[policies.retries.important]
max_deliveries = 3
initial_delay = "200ms"
max_delay = "1m30s"
jitter = 0

[policies.circuit_breakers.fragile]
consecutive_failures = 2
failure_rate = 0.5
window = "1m"
open_for = "30s"

[targets.default]
timeout = "general"

[targets.agents.summarizer]
timeout = "quick"
retry = "important"
circuit_breaker = "fragile"

[targets.capabilities.summarize]
circuit_breaker = "fragile"
"""

FRAGILE = BreakerPolicy(consecutive_failures=2, failure_rate=0.5, window=60, open_for=30)


def test_targets_get_their_policies_and_fall_back_to_the_default() -> None:
    spec = Resiliency.from_toml(SPEC)
    assert spec.for_agent("summarizer") == TargetPolicy(
        timeout=TimeoutPolicy(0.25),
        retry=RetryPolicy(max_deliveries=3, initial_delay=0.2, max_delay=90, jitter=0),
        circuit_breaker=FRAGILE,
    )
    assert spec.for_capability("summarize") == TargetPolicy(TimeoutPolicy(5), None, FRAGILE)
    assert spec.for_agent("anyone") == TargetPolicy(timeout=TimeoutPolicy(5))


def test_the_same_spec_in_code() -> None:
    spec = Resiliency(
        agents={"summarizer": TargetPolicy(circuit_breaker=FRAGILE)},
        default=TargetPolicy(timeout=TimeoutPolicy(5)),
    )
    assert spec.for_agent("summarizer") == TargetPolicy(TimeoutPolicy(5), None, FRAGILE)
    assert Resiliency().for_capability("x") == TargetPolicy()


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "resiliency.toml"
    path.write_text(SPEC)
    assert Resiliency.load(path) == Resiliency.from_toml(SPEC)


def test_an_unreadable_file_names_itself(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ResiliencySpecError, match=r"nope.toml: cannot read"):
        Resiliency.load(missing)


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ("policies = [", "", "not valid TOML"),
        ("[spec]", "", "unknown key 'spec' .allowed: policies, targets."),
        ("[policies.timers]", "policies", "unknown key 'timers'"),
        ("[policies.timeouts]\ngeneral = '5 seconds'", "policies.timeouts.general", "not a dur"),
        ("[policies.timeouts]\ngeneral = 0", "policies.timeouts.general", "seconds out of range"),
        ("[policies.timeouts]\ngeneral = true", "policies.timeouts.general", "not a duration"),
        ("[policies.timeouts]\ngeneral = '-5s'", "policies.timeouts.general", "not a duration"),
        (
            "[policies.retries.r]\nmax_attempts = 3",
            "policies.retries.r",
            "unknown key 'max_attempts' .allowed: max_deliveries, initial_delay",
        ),
        ("[policies.retries.r]\nmax_deliveries = 0", "policies.retries.r", "max_deliveries"),
        (
            "[policies.retries.r]\ninitial_delay = 'soon'",
            "policies.retries.r.initial_delay",
            "'soon' is not",
        ),
        (
            "[policies.circuit_breakers.c]\nfailure_rate = 2.0",
            "policies.circuit_breakers.c",
            "BreakerPolicy.failure_rate out of range: 2.0",
        ),
        ("[policies.circuit_breakers]\nc = 1", "policies.circuit_breakers.c", "must be a table"),
        (
            "[targets.agents.summarizer]\nretry = 'important'",
            "targets.agents.summarizer.retry",
            r"unknown retry policy 'important' \(none defined\)",
        ),
        (
            "[policies.timeouts]\nq = 1\n[targets.default]\ntimeout = 'general'",
            "targets.default.timeout",
            r"unknown timeout policy 'general' \(q\)",
        ),
        ("[targets.default]\nbreaker = 'x'", "targets.default", "unknown key 'breaker'"),
        ("[targets.agents.'bad name']", "targets.agents.bad name", "not a valid agent name"),
        ("[targets.capabilities.'a.b']", "targets.capabilities.a.b", "not a valid capability"),
    ],
)
def test_a_bad_spec_is_refused_naming_where(spec: str, path: str, message: str) -> None:
    with pytest.raises(ResiliencySpecError, match=message) as refused:
        Resiliency.from_toml(spec, source="resiliency.toml")
    assert refused.value.path == path
    assert refused.value.source == "resiliency.toml"
    assert str(refused.value).startswith(f"resiliency.toml: {path}" if path else "resiliency")
    assert isinstance(refused.value, ConfigError)


def test_an_oversized_spec_is_refused() -> None:
    with pytest.raises(ResiliencySpecError, match="larger than"):
        Resiliency.from_toml("#" * (1 << 20 + 1))
