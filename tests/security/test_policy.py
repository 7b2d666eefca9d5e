"""Access-control policy: semantics, document errors, compiled checks, server permissions."""

from __future__ import annotations

import itertools
import json
import timeit
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventwire._consumer import durable_name
from eventwire_security import InvalidName, SecurityError
from eventwire_security._nats_permissions import (
    ServerConfigError,
    compile_permissions,
    consumer_filters,
    consumer_name,
    private_inbox_prefix,
    render_server_config,
)
from eventwire_security._policy import (
    Actor,
    Policy,
    PolicyDenied,
    PolicyError,
    Rule,
    check_pattern,
    pattern_contains,
    patterns_intersect,
    subject_matches,
)

if TYPE_CHECKING:
    from pathlib import Path

SUMMARIZER = Actor("acme", "summarizer", capabilities=("summarize",), roles=("worker",))
OTHER = Actor("acme", "other")

SAMPLE = """
version = 1

[[rule]]
principal = "agent:summarizer"
publish = ["task.*.completed", "knowledge.>"]
consume = ["capability.summarize.*", "knowledge.>"]

[[rule]]
principal = "capability:summarize"
consume = ["knowledge.ml"]                 # contained in knowledge.>: no extra consumer
deny_consume = ["knowledge.secret.*"]

[[rule]]
principal = "*"
publish = ["system.coordination.*"]        # entirely covered by the deny below
deny_publish = ["system.>", "system.coordination.*"]
"""


def policy_of(*rules: Rule) -> Policy:
    return Policy(rules)


# -- decisions --------------------------------------------------------------------------------


def test_deny_by_default() -> None:
    assert not Policy().allows(SUMMARIZER, "publish", "knowledge.ml")
    only_other = policy_of(Rule("agent:other", publish=(">",), consume=(">",)))
    for action in ("publish", "consume"):
        with pytest.raises(PolicyDenied) as info:
            only_other.check(SUMMARIZER, action, "knowledge.ml")
        assert info.value.reason == "no rule allows it"
        assert only_other.allows(OTHER, action, "knowledge.ml")


@pytest.mark.parametrize(
    "principal",
    ["agent:summarizer", "capability:summarize", "role:worker", "*"],
)
def test_principal_matches_agent_capability_role_or_anyone(principal: str) -> None:
    policy = policy_of(Rule(principal, publish=("knowledge.>",), consume=("task.*.completed",)))
    assert policy.allows(SUMMARIZER, "publish", "knowledge.ml")
    assert policy.allows(SUMMARIZER, "consume", "task.x.completed")
    assert not policy.allows(SUMMARIZER, "consume", "knowledge.ml")  # actions are separate
    assert policy.allows(OTHER, "publish", "knowledge.ml") is (principal == "*")


@pytest.mark.parametrize(
    "principal", ["agent:other", "capability:translate", "role:admin", "role:summarizer"]
)
def test_principal_that_does_not_name_the_actor(principal: str) -> None:
    policy = policy_of(Rule(principal, publish=(">",)))
    assert not policy.allows(SUMMARIZER, "publish", "knowledge.ml")


def test_explicit_deny_wins_across_rules_in_any_order() -> None:
    allow = Rule("agent:summarizer", publish=("system.>", "knowledge.>"))
    deny = Rule("*", deny_publish=("system.>",))
    for rules in [(allow, deny), (deny, allow)]:
        policy = Policy(rules)
        with pytest.raises(PolicyDenied) as info:
            policy.check(SUMMARIZER, "publish", "system.coordination.x")
        denied = info.value
        assert (denied.actor, denied.action, denied.subject) == (
            SUMMARIZER,
            "publish",
            "system.coordination.x",
        )
        index = rules.index(deny)
        assert denied.reason == f"denied by rule {index} (*: deny_publish 'system.>')"
        assert str(denied) == (
            f"acme/summarizer may not publish 'system.coordination.x': {denied.reason}"
        )
        assert isinstance(denied, SecurityError)
        policy.check(SUMMARIZER, "publish", "knowledge.ml")


def test_narrow_deny_inside_a_broad_allow() -> None:
    policy = policy_of(
        Rule("agent:summarizer", consume=("knowledge.>",)),
        Rule("*", deny_consume=("knowledge.secret.*",)),
    )
    compiled = policy.for_actor(SUMMARIZER)
    for subject, allowed in [
        ("knowledge.ml", True),
        ("knowledge.secret.x", False),
        ("knowledge.secret", True),  # '*' needs one more token
        ("knowledge.secret.x.y", True),  # and exactly one
        ("knowledge.public.x", True),
    ]:
        assert policy.allows(SUMMARIZER, "consume", subject) is allowed, subject
        assert compiled.may_consume(subject) is allowed, subject
        assert not compiled.may_publish(subject)


@pytest.mark.parametrize("subject", ["", "knowledge..ml", "knowledge.*", "knowledge.>", "a b.c"])
def test_subjects_with_wildcards_or_empty_tokens_are_never_allowed(subject: str) -> None:
    policy = policy_of(Rule("*", publish=(">",)))
    with pytest.raises(PolicyDenied, match="not a valid subject"):
        policy.check(SUMMARIZER, "publish", subject)
    assert not policy.for_actor(SUMMARIZER).may_publish(subject)


def test_unknown_action_is_a_programming_error() -> None:
    policy = policy_of(Rule("*", publish=(">",)))
    with pytest.raises(ValueError, match="action"):
        policy.allows(SUMMARIZER, "read", "knowledge.ml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="action"):
        policy.for_actor(SUMMARIZER).may("read", "knowledge.ml")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Actor"):
        policy.allows("acme/summarizer", "publish", "knowledge.ml")  # type: ignore[arg-type]


# -- wildcards, containment, intersection ----------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        ("knowledge.ml", "knowledge.ml", True),
        ("knowledge.ml", "knowledge.ml.x", False),
        ("knowledge.ml", "knowledge", False),
        ("knowledge.*", "knowledge.ml", True),
        ("knowledge.*", "knowledge", False),
        ("knowledge.*", "knowledge.ml.x", False),
        ("*.ml", "knowledge.ml", True),
        ("*.*", "a.b", True),
        ("*", "a", True),
        ("*", "a.b", False),
        ("knowledge.>", "knowledge.ml", True),
        ("knowledge.>", "knowledge.ml.deep.deeper", True),
        ("knowledge.>", "knowledge", False),
        ("knowledge.>", "knowledgeX.ml", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("task.*.completed", "task.sum.completed", True),
        ("task.*.completed", "task.sum.failed", False),
        ("task.*.completed", "task.a.b.completed", False),
        ("*.>", "a", False),
        ("*.>", "a.b", True),
    ],
)
def test_wildcard_semantics(pattern: str, subject: str, expected: bool) -> None:
    assert subject_matches(pattern, subject) is expected
    policy = policy_of(Rule("*", publish=(pattern,)))
    assert policy.allows(OTHER, "publish", subject) is expected
    assert policy.for_actor(OTHER).may_publish(subject) is expected


def _small_patterns() -> list[str]:
    found = []
    for length in (1, 2, 3):
        for tokens in itertools.product(["a", "b", "*", ">"], repeat=length):
            if ">" not in tokens[:-1]:
                found.append(".".join(tokens))
    return found


def test_containment_and_intersection_agree_with_brute_force() -> None:
    # 'q' is a literal no pattern uses, and 4 tokens outgrow every 3-token pattern: the
    # subjects below contain a witness for every non-containment and every intersection.
    subjects = [
        ".".join(tokens)
        for length in (1, 2, 3, 4)
        for tokens in itertools.product(["a", "b", "q"], repeat=length)
    ]
    patterns = _small_patterns()
    matched = {p: frozenset(s for s in subjects if subject_matches(p, s)) for p in patterns}
    for outer, inner in itertools.product(patterns, repeat=2):
        assert pattern_contains(outer, inner) is (matched[inner] <= matched[outer]), (outer, inner)
        assert patterns_intersect(outer, inner) is bool(matched[inner] & matched[outer]), (
            outer,
            inner,
        )


@pytest.mark.parametrize(
    ("outer", "inner", "contains", "intersect"),
    [
        ("knowledge.>", "knowledge.secret.*", True, True),
        ("knowledge.secret.*", "knowledge.>", False, True),
        ("knowledge.*", "knowledge.>", False, True),
        ("knowledge.>", "knowledge", False, False),
        ("a.*.c", "a.b.*", False, True),
        ("a.*", "b.*", False, False),
        (">", "anything.at.all", True, True),
    ],
)
def test_containment_examples(outer: str, inner: str, contains: bool, intersect: bool) -> None:
    assert pattern_contains(outer, inner) is contains
    assert patterns_intersect(outer, inner) is intersect
    assert patterns_intersect(inner, outer) is intersect


def test_helpers_refuse_bad_patterns() -> None:
    assert check_pattern("a.*.>") == "a.*.>"
    for bad in ("", "a..b", "a.>.b", "a b"):
        with pytest.raises(PolicyError):
            check_pattern(bad)
        with pytest.raises(PolicyError):
            pattern_contains(bad, "a")
        with pytest.raises(PolicyError):
            patterns_intersect("a", bad)
        with pytest.raises(PolicyError):
            subject_matches(bad, "a")


# -- documents -------------------------------------------------------------------------------


def test_sample_document_parses() -> None:
    policy = Policy.from_toml(SAMPLE)
    assert policy.version == 1
    assert policy.rules[0] == Rule(
        "agent:summarizer",
        publish=("task.*.completed", "knowledge.>"),
        consume=("capability.summarize.*", "knowledge.>"),
    )
    assert [rule.principal for rule in policy.rules] == [
        "agent:summarizer",
        "capability:summarize",
        "*",
    ]
    assert Policy.from_toml("version = 1") == Policy()
    assert hash(policy) == hash(Policy.from_toml(SAMPLE))


def test_load(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(SAMPLE, encoding="utf-8")
    assert Policy.load(path) == Policy.from_toml(SAMPLE)
    assert Policy.load(str(path)) == Policy.from_toml(SAMPLE)
    path.write_bytes(b"version = 1\n# \xff\n")
    with pytest.raises(PolicyError, match="not UTF-8"):
        Policy.load(path)
    with pytest.raises(PolicyError, match="cannot read policy file") as unreadable:
        Policy.load(tmp_path / "missing.toml")
    assert isinstance(unreadable.value.__cause__, FileNotFoundError)


R = "version = 1\n[[rule]]\n"

MALFORMED = [
    # (document, location, message fragment)
    ("version = 1\n[[rule]\n", "", "not valid TOML"),
    ("version = 1\nversion = 1\n", "", "not valid TOML"),
    ("", "version", "missing"),
    ('version = "1"', "version", "expected an integer, got str"),
    ("version = true", "version", "expected an integer, got bool"),
    ("version = 1.0", "version", "expected an integer, got float"),
    ("version = 2", "version", "unsupported version 2"),
    ("version = 1\nrules = []", "rules", "unknown key 'rules'"),
    ("version = 1\nrule = 3", "rule", "expected an array of tables"),
    ("version = 1\n[rule]\nprincipal = '*'", "rule", "expected an array of tables"),
    ("version = 1\nrule = [1]", "rule[0]", "expected a table, got int"),
    (R + "publish = ['a']", "rule[0].principal", "missing"),
    (R + "principal = '*'\npublsh = ['a']", "rule[0].publsh", "unknown key 'publsh'"),
    (R + "principal = '*'\n[[rule]]\nprincipal = 7", "rule[1].principal", "got int"),
    (R + "principal = 'summarizer'", "rule[0].principal", "is not 'agent:<name>'"),
    (R + "principal = 'user:bob'", "rule[0].principal", "is not 'agent:<name>'"),
    (R + "principal = 'agent:'", "rule[0].principal", "invalid agent name"),
    (R + "principal = 'agent:bad name'", "rule[0].principal", "invalid agent name"),
    (R + "principal = 'role:a.b'", "rule[0].principal", "invalid role name"),
    (R + "principal = 'capability:*'", "rule[0].principal", "invalid capability name"),
    (R + "principal = '**'", "rule[0].principal", "is not 'agent:<name>'"),
    (R + "principal = '*'\npublish = 'a.b'", "rule[0].publish", "got str"),
    (R + "principal = '*'\nconsume = {a = 1}", "rule[0].consume", "got dict"),
    (R + "principal = '*'\ndeny_publish = ['a', 1]", "rule[0].deny_publish[1]", "got int"),
    (R + "principal = '*'\ndeny_consume = ['']", "rule[0].deny_consume[0]", "empty pattern"),
    (R + "principal = '*'\npublish = ['a..b']", "rule[0].publish[0]", "an empty token"),
    (R + "principal = '*'\npublish = ['a.']", "rule[0].publish[0]", "an empty token"),
    (R + "principal = '*'\npublish = ['.a']", "rule[0].publish[0]", "an empty token"),
    (R + "principal = '*'\npublish = ['a.>.b']", "rule[0].publish[0]", "'>' must be the last"),
    (R + "principal = '*'\npublish = ['a. b']", "rule[0].publish[0]", "token ' b'"),
    (R + "principal = '*'\npublish = ['a b']", "rule[0].publish[0]", "token 'a b'"),
    (R + "principal = '*'\npublish = ['a.b*']", "rule[0].publish[0]", "token 'b*'"),
    (R + "principal = '*'\npublish = ['$JS.API.>']", "rule[0].publish[0]", "token '$JS'"),
    (R + f"principal = '*'\npublish = ['{'x' * 65}']", "rule[0].publish[0]", "token 'xxx"),
    (
        R + f"principal = '*'\nconsume = ['{'.'.join('a' * 17)}']",
        "rule[0].consume[0]",
        "more than 16",
    ),
]


@pytest.mark.parametrize(("document", "location", "fragment"), MALFORMED)
def test_malformed_documents_name_the_location(document: str, location: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(document)
    error = info.value
    assert error.location == location
    assert fragment in error.detail
    assert str(error).startswith(f"policy {location}: " if location else "policy: ")
    assert isinstance(error, SecurityError)
    assert isinstance(error, ValueError)


def test_error_fields_split_the_location() -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_toml(R + "principal = '*'\n[[rule]]\nprincipal = '*'\npublish = ['a', '']")
    assert (info.value.rule, info.value.field, info.value.item) == (1, "publish", 1)


def test_programmatic_policies_are_checked_too() -> None:
    with pytest.raises(PolicyError) as info:
        Policy((Rule("*"), Rule("*", publish=("a..b",))))
    assert info.value.location == "rule[1].publish[0]"
    with pytest.raises(PolicyError) as info:
        Policy(("*",))  # type: ignore[arg-type]
    assert info.value.location == "rule[0]"
    assert Policy([Rule("*", publish=["a"])]) == Policy((Rule("*", publish=("a",)),))  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="expected TOML text"):
        Policy.from_toml(b"version = 1")  # type: ignore[arg-type]


def test_actor_names_are_checked() -> None:
    assert Actor("acme", "a", ["x"], ["y"]) == Actor("acme", "a", ("x",), ("y",))  # type: ignore[arg-type]
    with pytest.raises(InvalidName):
        Actor("acme", "bad name")
    with pytest.raises(InvalidName):
        Actor("ac.me", "a")
    with pytest.raises(InvalidName):
        Actor("acme", "a", capabilities=("sum.marize",))
    with pytest.raises(InvalidName):
        Actor("acme", "a", roles=("",))
    with pytest.raises(TypeError, match="not a string"):
        Actor("acme", "a", capabilities="summarize")  # type: ignore[arg-type]


# -- compiled checks -------------------------------------------------------------------------

_TOKENS = ["a", "b", "c"]
_PRINCIPALS = ["*", "agent:me", "agent:other", "capability:x", "capability:y", "role:r"]


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    tokens = draw(st.lists(st.sampled_from([*_TOKENS, "*"]), min_size=0, max_size=3))
    if not tokens or draw(st.booleans()):
        tokens.append(">")
    return ".".join(tokens)


_PATTERN_LISTS = st.lists(_patterns(), max_size=3).map(tuple)
_RULES = st.builds(
    Rule,
    principal=st.sampled_from(_PRINCIPALS),
    publish=_PATTERN_LISTS,
    consume=_PATTERN_LISTS,
    deny_publish=_PATTERN_LISTS,
    deny_consume=_PATTERN_LISTS,
)
_ACTORS = st.builds(
    Actor,
    tenant=st.just("acme"),
    agent=st.sampled_from(["me", "other"]),
    capabilities=st.lists(st.sampled_from(["x", "y"]), unique=True).map(tuple),
    roles=st.lists(st.sampled_from(["r"]), max_size=1).map(tuple),
)
_SUBJECTS = st.one_of(
    st.lists(st.sampled_from([*_TOKENS, "d"]), min_size=1, max_size=5).map(".".join),
    st.lists(st.sampled_from(["a", "", "*", ">", "a b", "x" * 65]), max_size=3).map(".".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=st.lists(_RULES, max_size=6),
    actor=_ACTORS,
    subjects=st.lists(_SUBJECTS, min_size=1, max_size=20),
)
def test_compiled_checks_equal_the_reference(
    rules: list[Rule], actor: Actor, subjects: list[str]
) -> None:
    policy = Policy(tuple(rules))
    compiled = policy.for_actor(actor)
    for subject in subjects:
        for action in ("publish", "consume"):
            reason = policy.refusal(actor, action, subject)
            assert compiled.may(action, subject) is (reason is None), (action, subject, reason)
            if reason is None:
                compiled.check(action, subject)
            else:
                with pytest.raises(PolicyDenied) as info:
                    compiled.check(action, subject)
                assert info.value.reason == reason


def _twenty_rules() -> Policy:
    rules = [Rule("agent:summarizer", publish=("task.*.completed", "knowledge.>"))]
    for index in range(1, 16):
        principal = ["*", "capability:summarize", "role:worker"][index % 3]
        rules.append(
            Rule(
                principal,
                publish=(f"custom.app{index}.*", f"status.part{index}.>"),
                consume=(f"capability.cap{index}.*",),
            )
        )
    rules += [Rule("*", deny_publish=(f"knowledge.secret{index}.>",)) for index in range(3)]
    rules.append(Rule("*", deny_publish=("system.>",)))
    return Policy(tuple(rules))


def test_timing_report(capsys: pytest.CaptureFixture[str]) -> None:
    policy = _twenty_rules()
    assert len(policy.rules) == 20
    compiled = policy.for_actor(SUMMARIZER)
    cases = {
        "allowed, last alternative": "status.part15.deep.x",
        "allowed, first alternative": "task.sum.completed",
        "refused by a deny": "knowledge.secret2.x",
        "refused, no rule": "error.fatal",
    }
    number = 20_000
    lines = [f"policy check cost, 20 rules, best of 5 x {number} calls:"]
    for label, subject in cases.items():
        assert compiled.may_publish(subject) is policy.allows(SUMMARIZER, "publish", subject)
        names = {"may": compiled.may_publish, "allows": policy.allows, "who": SUMMARIZER}
        names["s"] = subject
        fast = min(timeit.repeat("may(s)", globals=names, number=number, repeat=5))
        slow = min(
            timeit.repeat("allows(who, 'publish', s)", globals=names, number=number // 10, repeat=3)
        )
        lines.append(
            f"  {label:28} compiled {fast / number * 1e6:6.3f} us   "
            f"reference {slow / (number // 10) * 1e6:6.2f} us"
        )
    build = min(timeit.repeat(lambda: policy.for_actor(SUMMARIZER), number=100, repeat=3)) / 100
    lines.append(f"  for_actor (compile once per agent): {build * 1e6:.0f} us")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# -- server permissions ----------------------------------------------------------------------


def test_consumer_names_follow_the_sdk_scheme() -> None:
    for pattern in ("knowledge.>", "capability.summarize.*"):
        assert consumer_name("summarizer", pattern) == durable_name("summarizer", pattern)


def test_consumer_filters() -> None:
    policy = Policy.from_toml(SAMPLE)
    assert consumer_filters(policy, SUMMARIZER) == ["capability.summarize.*", "knowledge.>"]
    assert consumer_filters(policy, SUMMARIZER, root="ew") == [
        "ew.capability.summarize.*",
        "ew.knowledge.>",
    ]
    assert consumer_filters(policy, OTHER) == []
    fully_denied = policy_of(Rule("*", consume=("a.b.*",), deny_consume=("a.>",)))
    assert consumer_filters(fully_denied, OTHER) == []


def _consumer_rights(stream: str, root: str, name: str) -> list[str]:
    return [
        f"$JS.API.CONSUMER.INFO.{stream}.{name}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
        f"$JS.ACK.{stream}.{name}.>",
        f"$KV.{root}-seen.{name}.>",
        f"$JS.API.DIRECT.GET.KV_{root}-seen.$KV.{root}-seen.{name}.>",
        f"$KV.{root}-processed.{name}.>",
        f"$JS.API.DIRECT.GET.KV_{root}-processed.$KV.{root}-processed.{name}.>",
        f"{root}.dlq.{name}",
    ]


def _bucket_rights(bucket: str) -> list[str]:
    return [
        f"$JS.API.STREAM.INFO.KV_{bucket}",
        f"$JS.API.DIRECT.GET.KV_{bucket}.>",
        f"$JS.API.STREAM.MSG.GET.KV_{bucket}",
        f"$JS.API.CONSUMER.CREATE.KV_{bucket}",
        f"$JS.API.CONSUMER.CREATE.KV_{bucket}.>",
        f"$JS.API.CONSUMER.INFO.KV_{bucket}.>",
        f"$JS.API.CONSUMER.DELETE.KV_{bucket}.>",
        f"$JS.FC.KV_{bucket}.>",
    ]


def _shared_rights(root: str, agent: str, consumers: list[str]) -> list[str]:
    rights = [
        f"$JS.API.STREAM.INFO.{root}-events",
        f"$JS.API.STREAM.INFO.{root}-dlq",
        f"$JS.API.STREAM.INFO.{root}-audit",
        f"$JS.API.STREAM.INFO.KV_{root}-seen",
        f"$JS.API.STREAM.INFO.KV_{root}-processed",
    ]
    for name in consumers:
        rights += _consumer_rights(f"{root}-events", root, name)
    rights += [f"{root}.audit.log", f"$JS.API.STREAM.MSG.GET.{root}-audit"]
    rights += _bucket_rights(f"{root}-agents") + _bucket_rights(f"{root}-keyring")
    return [*rights, f"$KV.{root}-agents.{agent}.>"]


EXPECTED_SUMMARIZER: dict[str, Any] = {
    "publish": {
        "allow": [
            "ew.task.*.completed",
            "ew.knowledge.>",
            "ew.direct.acme.*",
            *_shared_rights(
                "ew", "summarizer", ["summarizer-7b3f64209379", "summarizer-29bef4b53186"]
            ),
        ],
        "deny": ["ew.system.>", "ew.custom.es.workflow.>", "ew.wftimer.>"],  # + not orchestrator
    },
    "subscribe": {
        "allow": ["_INBOX_summarizer.>", "ew.direct.acme.summarizer"],
        "deny": ["ew.knowledge.secret.*"],
    },
    "allow_responses": True,
}


def test_compile_permissions_for_the_sample_policy() -> None:
    permissions = compile_permissions(Policy.from_toml(SAMPLE), SUMMARIZER)
    assert permissions == EXPECTED_SUMMARIZER
    assert not any(s.startswith("$JS.API.>") for s in permissions["publish"]["allow"])


def test_compile_permissions_options() -> None:
    policy = Policy.from_toml(SAMPLE)
    other = compile_permissions(policy, OTHER, root="t1", consumers=["other-a"])
    assert other["publish"]["allow"] == [
        "t1.direct.acme.*",
        *_shared_rights("t1", "other", ["other-a"]),
    ]
    shared = compile_permissions(policy, SUMMARIZER, private_inbox=False)
    assert "_INBOX.>" in shared["publish"]["allow"]
    assert "allow_responses" not in shared
    assert shared["subscribe"]["allow"] == ["_INBOX.>", "ew.direct.acme.summarizer"]
    private = compile_permissions(policy, SUMMARIZER, private_inbox=True)
    assert private_inbox_prefix(SUMMARIZER) == "_INBOX_summarizer"
    assert private["allow_responses"] is True
    assert "_INBOX.>" not in private["publish"]["allow"]
    assert private["subscribe"]["allow"] == ["_INBOX_summarizer.>", "ew.direct.acme.summarizer"]
    with pytest.raises(InvalidName):
        compile_permissions(policy, SUMMARIZER, root="e.w")
    for bad in ("x.y", "*", "a b"):
        with pytest.raises(ServerConfigError) as info:
            compile_permissions(policy, SUMMARIZER, consumers=[bad])
        assert info.value.field == "consumers"
    with pytest.raises(ServerConfigError):
        compile_permissions(policy, SUMMARIZER, consumers="summarizer-1")


def test_render_server_config() -> None:
    permissions = compile_permissions(Policy.from_toml(SAMPLE), SUMMARIZER)
    text = render_server_config(
        {"acme": [("summarizer", "s3cret", permissions)], "globex": []},
        store_dir="/var/lib/nats",
        port=4333,
    )
    head, accounts = text.split("accounts: ", 1)
    assert 'host: "127.0.0.1"\nport: 4333\njetstream: {store_dir: "/var/lib/nats"}' in head
    assert json.loads(accounts) == {
        "acme": {
            "jetstream": "enabled",
            "users": [{"user": "summarizer", "password": "s3cret", "permissions": permissions}],
        },
        "globex": {"jetstream": "enabled", "users": []},
    }


@pytest.mark.parametrize(
    ("accounts", "kwargs", "error", "field"),
    [
        ({"a.b": []}, {}, InvalidName, None),
        ({"acme": [("bad name", "pw", {})]}, {}, InvalidName, None),
        ({"acme": [("u", "pw", {})], "globex": [("u", "pw", {})]}, {}, ServerConfigError, "user"),
        ({"acme": [("u", 'p"w', {})]}, {}, ServerConfigError, "password"),
        ({"acme": [("u", "p w", {})]}, {}, ServerConfigError, "password"),
        ({"acme": [("u", "", {})]}, {}, ServerConfigError, "password"),
        ({"acme": [("u", "pw", [])]}, {}, ServerConfigError, "permissions"),
        ({}, {"port": 70000}, ServerConfigError, "port"),
        ({}, {"store_dir": 'a"b'}, ServerConfigError, "store_dir"),
        ({}, {"host": ""}, ServerConfigError, "host"),
    ],
)
def test_render_server_config_refuses_bad_input(
    accounts: dict[str, Any], kwargs: dict[str, Any], error: type[Exception], field: str | None
) -> None:
    with pytest.raises(error) as info:
        render_server_config(accounts, **{"store_dir": "/tmp/js", **kwargs})
    if field is not None:
        assert isinstance(info.value, ServerConfigError)
        assert info.value.field == field


def test_compile_permissions_for_a_partitioned_stream() -> None:
    permissions = compile_permissions(Policy.from_toml(SAMPLE), SUMMARIZER, partitioned=True)
    allow = permissions["publish"]["allow"]
    assert allow[:4] == [
        "ew.task.*.completed",
        "ew.keyed.*.task.*.completed",
        "ew.knowledge.>",
        "ew.keyed.*.knowledge.>",
    ]
    assert permissions["publish"]["deny"] == [
        "ew.system.>", "ew.keyed.*.system.>",  # the policy's, then: not an orchestrator
        "ew.custom.es.workflow.>", "ew.keyed.*.custom.es.workflow.>", "ew.wftimer.>",
    ]  # fmt: skip
