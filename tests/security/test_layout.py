"""The shared layout: names, grammar and the NATS wildcard matcher (pure), and the matcher
against a real nats-server's own subject matching (one table, one server round)."""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventwire_security import (
    DEFAULT_ROOT,
    FAMILIES,
    Actor,
    LayoutError,
    Policy,
    SecurityError,
    audit_stream_name,
    audit_subject,
    compile_permissions,
    consumer_name,
    dlq_stream_name,
    dlq_subject,
    events_stream_name,
    from_wire,
    keyring_bucket,
    private_inbox_prefix,
    processed_bucket,
    registry_bucket,
    seen_bucket,
    to_wire,
)
from eventwire_security._layout import (
    MAX_TOKENS,
    inbox_prefix,
    is_subject,
    kv_stream_name,
    matches,
    pattern_problem,
    subject_problem,
    token_problem,
    tokens_match,
)
from tests.conftest import wait_until

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from eventwire import EmbeddedServer

# -- names -----------------------------------------------------------------------------------


def test_every_name_of_a_root() -> None:
    streams = [events_stream_name("ew"), dlq_stream_name("ew"), audit_stream_name("ew")]
    assert streams == ["ew-events", "ew-dlq", "ew-audit"]
    buckets = [registry_bucket("ew"), keyring_bucket("ew"), seen_bucket("ew")]
    assert buckets == ["ew-agents", "ew-keyring", "ew-seen"]
    assert processed_bucket("ew") == "ew-processed"
    assert kv_stream_name(seen_bucket("ew")) == "KV_ew-seen"
    assert audit_subject("ew") == "ew.audit.log"
    assert dlq_subject("ew", "bob-0123456789ab") == "ew.dlq.bob-0123456789ab"
    assert inbox_prefix("bob") == "_INBOX_bob"
    assert DEFAULT_ROOT == "ew"
    assert FAMILIES[0] == "knowledge"


def test_consumer_names_are_stable_and_per_pattern() -> None:
    # The scheme is a contract with provisioned deployments: never change these values.
    assert consumer_name("summarizer", "knowledge.>") == "summarizer-29bef4b53186"
    assert consumer_name("summarizer", "capability.summarize.*") == "summarizer-7b3f64209379"
    assert consumer_name("a", "x.y") != consumer_name("a", "x.z")


def test_the_sdk_uses_the_layouts_names() -> None:
    from eventwire._audit_log import audit_stream_name as sdk_audit
    from eventwire._consumer import durable_name
    from eventwire._keyring_store import keyring_bucket as sdk_keyring
    from eventwire._streams import events_stream_name as sdk_events
    from eventwire._subjects import matches as sdk_matches
    from eventwire._subjects import to_wire as sdk_to_wire

    assert (sdk_audit, sdk_keyring, sdk_events) == (
        audit_stream_name, keyring_bucket, events_stream_name
    )  # fmt: skip
    assert (durable_name, sdk_matches, sdk_to_wire) == (consumer_name, matches, to_wire)


def test_compiled_permissions_cover_every_declared_resource() -> None:
    """A bind-only agent checks every declared stream and bucket on connect: its NATS user
    may read each one's info, under the same names the SDK declares."""
    from eventwire._streams import declared

    actor = Actor("acme", "summarizer", capabilities=("summarize",))
    policy = Policy.from_toml('version = 1\n[[rule]]\nprincipal = "*"\nconsume = ["task.>"]')
    for root in ("ew", "t-1"):
        allow = compile_permissions(policy, actor, root=root)["publish"]["allow"]
        resources = declared(root, registry_ttl=1.0, replay_horizon=1.0, dedupe_window=1.0)
        resources = [r for r in resources if r.on_connect]  # the features' are on first use
        assert len(resources) == 7
        for resource in resources:
            assert f"$JS.API.STREAM.INFO.{resource.stream}" in allow, resource
        assert dlq_subject(root, consumer_name("summarizer", "task.>")) in allow
        assert audit_subject(root) in allow
    assert private_inbox_prefix(actor) == inbox_prefix("summarizer")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: events_stream_name("e.w"), "root"),
        (lambda: events_stream_name(""), "root"),
        (lambda: registry_bucket("ew*"), "root"),
        (lambda: seen_bucket("x" * 65), "root"),
        (lambda: audit_subject(None), "root"),
        (lambda: dlq_subject("ew", "a.b"), "consumer"),
        (lambda: dlq_subject("ew", "x" * 129), "consumer"),
        (lambda: consumer_name("a b", "knowledge.>"), "owner"),
        (lambda: consumer_name(">", "knowledge.>"), "owner"),
        (lambda: inbox_prefix("a.b"), "agent"),
        (lambda: kv_stream_name("a.b"), "bucket"),
    ],
)
def test_names_refuse_what_is_not_a_token(call: Any, field: str) -> None:
    with pytest.raises(LayoutError) as info:
        call()
    assert info.value.field == field
    assert isinstance(info.value, SecurityError)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"{field}: ")


def test_names_take_the_longest_valid_inputs() -> None:
    root = "r" * 64
    assert len(processed_bucket(root)) == 74
    assert kv_stream_name(processed_bucket(root)) == f"KV_{root}-processed"
    name = consumer_name("o" * 64, "knowledge.>")
    assert dlq_subject(root, f"{name}-p1023") == f"{root}.dlq.{name}-p1023"


# -- grammar ---------------------------------------------------------------------------------


def test_problems_name_the_fault() -> None:
    assert token_problem("ok_1-A") is None
    assert token_problem("a.b") == "'a.b' is not a subject token (1-64 of A-Z a-z 0-9 _ -)"
    assert subject_problem("knowledge.ml") is None
    assert subject_problem("keyed.x") == "'keyed.x': 'keyed' is reserved for partitioning"
    assert subject_problem("direct.a.b") is not None
    assert subject_problem(3) == "expected a string, got int"
    assert pattern_problem("direct.>") is None  # a policy may name any subject
    assert pattern_problem("direct.>", families=True) is not None  # a subscription may not
    assert pattern_problem("*.>", families=True) is None
    assert pattern_problem("a.>.b") == "'>' must be the last token in 'a.>.b'"
    assert pattern_problem("") == "empty pattern"
    assert pattern_problem(".".join(["a"] * (MAX_TOKENS + 1))) == (
        f"'{'.'.join(['a'] * (MAX_TOKENS + 1))}' has more than {MAX_TOKENS} tokens"
    )
    assert [is_subject(s) for s in ("a.b", "a.*", "a.>", "a..b", "")] == [True] + [False] * 4


@pytest.mark.parametrize("wire", ["ew.knowledge.ml", "ew.a"])
def test_wire_round_trip(wire: str) -> None:
    logical = from_wire("ew", wire)
    assert logical is not None
    assert to_wire("ew", logical) == wire
    assert from_wire("ewx", wire) is None


# -- the matcher, against an independent reference -------------------------------------------

_ALPHABET = ["a", "b", "c"]


def _reference(pattern: str, subject: str) -> bool:
    """NATS matching written as a regular expression over the whole subject."""
    parts = [
        "[^.]+" if token == "*" else "[^.]+(?:\\.[^.]+)*" if token == ">" else re.escape(token)
        for token in pattern.split(".")
    ]
    return re.fullmatch("\\.".join(parts), subject) is not None


_subjects = st.lists(st.sampled_from(_ALPHABET), min_size=1, max_size=5).map(".".join)
_patterns = st.lists(st.sampled_from([*_ALPHABET, "*"]), min_size=0, max_size=4).flatmap(
    lambda head: st.sampled_from(["", ">", "*", "a"]).map(
        lambda last: ".".join([*head, last] if last else head) or ">"
    )
)


@given(_patterns, _subjects)
def test_matcher_agrees_with_the_reference(pattern: str, subject: str) -> None:
    assert pattern_problem(pattern) is None
    assert matches(pattern, subject) is _reference(pattern, subject)
    assert tokens_match(pattern.split("."), subject.split(".")) is _reference(pattern, subject)


# -- the matcher, against nats-server --------------------------------------------------------


def _table() -> tuple[list[str], list[str]]:
    """Every pattern of up to 4 tokens over a, b, *, > and every subject of up to 5 tokens
    over a, b, q: each (pattern, subject) pair is a case, 58,080 in all."""
    patterns = [
        ".".join(tokens)
        for length in (1, 2, 3, 4)
        for tokens in itertools.product(["a", "b", "*", ">"], repeat=length)
        if ">" not in tokens[:-1]
    ]
    subjects = [
        ".".join(tokens)
        for length in (1, 2, 3, 4, 5)
        for tokens in itertools.product(["a", "b", "q"], repeat=length)
    ]
    return patterns, subjects


def _sentinel(pattern: str) -> str:
    """A subject ``pattern`` matches (its wildcards made 'z')."""
    return ".".join("z" if token in ("*", ">") else token for token in pattern.split("."))


async def test_matcher_agrees_with_nats_server(nats_server: EmbeddedServer, root: str) -> None:
    """Subscribe with every pattern, publish every subject, and compare what arrived with
    the matcher. Order holds from one publisher to one subscriber, so once a subscription
    has its own sentinel (an "end" message, published last) it has every test subject it
    will ever get."""
    patterns, subjects = _table()
    arrived: dict[str, set[str]] = {pattern: set() for pattern in patterns}
    done: set[str] = set()
    nc = await nats.connect(nats_server.url)
    try:

        def collect(pattern: str) -> Any:
            async def on_msg(msg: Msg) -> None:
                logical = from_wire(root, msg.subject)
                assert logical is not None
                if msg.data != b"end":
                    arrived[pattern].add(logical)
                elif logical == _sentinel(pattern):
                    done.add(pattern)

            return on_msg

        for pattern in patterns:
            await nc.subscribe(to_wire(root, pattern), cb=collect(pattern))
        for subject in subjects:
            await nc.publish(to_wire(root, subject), b"")
        for pattern in patterns:
            await nc.publish(to_wire(root, _sentinel(pattern)), b"end")
        await nc.flush()
        await wait_until(lambda: len(done) == len(patterns))
    finally:
        await nc.close()
    assert len(patterns) * len(subjects) == 58_080
    for pattern in patterns:
        expected = {subject for subject in subjects if matches(pattern, subject)}
        assert arrived[pattern] == expected, pattern
