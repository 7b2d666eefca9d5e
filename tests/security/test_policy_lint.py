"""``lint_policy``: valid policies that cannot be what their author meant, as typed findings."""

from __future__ import annotations

import pytest

from eventwire_security import (
    FINDING_KINDS,
    Actor,
    Policy,
    PolicyFinding,
    Rule,
    lint_policy,
)

README_POLICY = """\
version = 1
[[rule]]
principal = "*"
publish = ["agent.lifecycle.*"]
consume = ["agent.lifecycle.*"]
[[rule]]
principal = "capability:summarize"
publish = ["task.*.completed", "knowledge.>"]
consume = ["capability.summarize.*", "knowledge.public.>"]
deny_publish = ["knowledge.secret.>"]
"""


def found(policy: Policy, **given: object) -> list[tuple[str, str, str]]:
    return [(f.kind, f.location, f.value) for f in lint_policy(policy, **given)]  # type: ignore[arg-type]


def test_the_readme_policy_is_clean() -> None:
    policy = Policy.from_toml(README_POLICY)
    summarizer = Actor("acme", "summarizer", ("summarize",))
    assert lint_policy(policy) == ()
    assert lint_policy(policy, agents=["summarizer"], actors=[summarizer]) == ()


def test_patterns_that_can_never_match() -> None:
    policy = Policy((
        Rule("*", publish=("ew.knowledge.x", "foo.bar", "knowledge", "*", ">", "*.x")),
        Rule("*", consume=("keyed.>", "knowledge.>"), deny_consume=("ew.>",)),
    ))  # fmt: skip
    assert found(policy) == [
        ("never-matches", "rule[0].publish[0]", "ew.knowledge.x"),
        ("never-matches", "rule[0].publish[1]", "foo.bar"),
        ("never-matches", "rule[0].publish[2]", "knowledge"),
        ("never-matches", "rule[0].publish[3]", "*"),
        ("reserved", "rule[1].consume[0]", "keyed.>"),
        ("never-matches", "rule[1].deny_consume[0]", "ew.>"),
    ]
    first = lint_policy(policy)[0]
    assert "starts with the subject root 'ew'" in first.message
    assert "write 'knowledge.x'" in first.message
    assert "'foo' is not a family (knowledge, capability" in lint_policy(policy)[1].message
    assert "at least two tokens (e.g. 'knowledge.>')" in lint_policy(policy)[2].message


def test_the_root_hint_follows_the_deployment_root() -> None:
    policy = Policy((Rule("*", publish=("t1.knowledge.x", "ew.knowledge.x")),))
    custom = lint_policy(policy, root="t1")
    assert [f.kind for f in custom] == ["never-matches", "never-matches"]
    assert "subject root 't1'" in custom[0].message
    assert "'ew' is not a family" in custom[1].message


def test_allows_that_a_deny_cancels() -> None:
    policy = Policy((
        Rule("*", deny_publish=("knowledge.secret.>",)),
        Rule("agent:a", publish=("knowledge.secret.x", "knowledge.>"),
             consume=("status.a",), deny_consume=("status.*",)),
        Rule("agent:b", deny_publish=("task.>",)),
        Rule("agent:c", publish=("task.x.completed",)),  # b's deny is not c's
    ))  # fmt: skip
    assert found(policy) == [
        ("always-denied", "rule[1].publish[0]", "knowledge.secret.x"),
        ("always-denied", "rule[1].consume[0]", "status.a"),
    ]
    messages = [f.message for f in lint_policy(policy)]
    assert "deny_publish 'knowledge.secret.>' of rule 0 (*)" in messages[0]
    assert "deny_consume 'status.*' of this rule" in messages[1]


def test_principals_are_checked_against_the_known_agents() -> None:
    policy = Policy((
        Rule("agent:summarizr", publish=("knowledge.>",)),
        Rule("agent:writer", publish=("knowledge.>",)),
        Rule("capability:summarize", publish=("knowledge.>",)),
        Rule("role:ops", publish=("status.>",)),
    ))  # fmt: skip
    assert found(policy) == []  # nothing known: principals unchecked
    assert found(policy, agents=["summarizer", "writer"]) == [
        ("unknown-agent", "rule[0].principal", "agent:summarizr"),
    ]
    (finding,) = lint_policy(policy, agents=["summarizer", "writer"])
    assert finding.message == (
        "'agent:summarizr' is not a known agent (known: summarizer, writer); "
        "did you mean 'agent:summarizer'?"
    )
    actors = [Actor("acme", "writer", ("summarise",), ("dev",))]
    assert found(policy, agents=["summarizer"], actors=actors) == [
        ("unknown-agent", "rule[0].principal", "agent:summarizr"),
        ("unknown-capability", "rule[2].principal", "capability:summarize"),
        ("unknown-role", "rule[3].principal", "role:ops"),
    ]
    capability = lint_policy(policy, actors=actors)[1]
    assert "held: summarise" in capability.message
    assert "did you mean 'capability:summarise'?" in capability.message
    assert [f.kind for f in lint_policy(policy, actors=[])] == [
        "unknown-agent", "unknown-agent", "unknown-capability", "unknown-role",
    ]  # fmt: skip


def test_a_finding_reads_and_serializes() -> None:
    policy = Policy((Rule("*", consume=("knowledge.x", "foo.bar")),))
    (finding,) = lint_policy(policy)
    assert isinstance(finding, PolicyFinding)
    assert finding.kind in FINDING_KINDS
    assert (finding.rule, finding.field, finding.item) == (0, "consume", 1)
    assert str(finding).startswith("rule[0].consume[1]: never-matches: 'foo.bar' can never")
    assert finding.to_json() == {
        "kind": "never-matches", "location": "rule[0].consume[1]", "rule": 0,
        "field": "consume", "item": 1, "value": "foo.bar", "message": finding.message,
    }  # fmt: skip


@pytest.mark.parametrize("pattern", ["knowledge.>", "capability.*.help", "*.x", ">", "custom.a.b"])
def test_patterns_that_can_match_are_not_flagged(pattern: str) -> None:
    assert lint_policy(Policy((Rule("*", publish=(pattern,), consume=(pattern,)),))) == ()
