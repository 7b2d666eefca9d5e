"""The subject table and NATS wildcard matching (pure, no server)."""

from __future__ import annotations

from typing import Any

import pytest

from eventwire import InvalidEvent
from eventwire._subjects import (
    DEFAULT_ROOT,
    FAMILIES,
    MAX_TOKENS,
    check_pattern,
    check_subject,
    check_token,
    default_patterns,
    direct_subject,
    from_wire,
    matches,
    reply_subject,
    stream_subjects,
    to_wire,
)

# --- check_token -------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["a", "Z", "0", "_", "-", "ml", "A-b_9", "x" * 64])
def test_check_token_accepts(token: str) -> None:
    assert check_token(token, field="f") == token


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x" * 65,
        "a.b",
        "*",
        ">",
        "a b",
        " a",
        "a\n",
        "a\t",
        "café",
        "\uff4d\uff4c",  # fullwidth letters
        "٣",  # Arabic-Indic digit: \d would match it, the token rule must not
        "a/b",
        "a$",
        "a\x00",
    ],
)
def test_check_token_rejects(token: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        check_token(token, field="topic")
    assert info.value.field == "topic"
    assert str(info.value).startswith("topic: ")


@pytest.mark.parametrize("value", [None, 1, b"ml", ["ml"]])
def test_check_token_rejects_non_str(value: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        check_token(value, field="name")
    assert info.value.field == "name"


# --- check_subject -----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_check_subject_accepts_every_family(family: str) -> None:
    subject = f"{family}.x"
    assert check_subject(subject) == subject


@pytest.mark.parametrize(
    "subject",
    [
        "knowledge.ml",
        "knowledge.ml.nlp",
        "capability.search.help",
        "task.index.completed",
        "error.critical",
        "status.db",
        "agent.lifecycle.started",
        "system.coordination.saga-1",
        "custom.a_b.C-9",
        "knowledge." + ".".join(["t"] * (MAX_TOKENS - 1)),  # exactly MAX_TOKENS tokens
        "knowledge." + "x" * 64,
    ],
)
def test_check_subject_accepts(subject: str) -> None:
    assert check_subject(subject) == subject


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "knowledge",  # one token only
        "nope.x",  # unknown family
        "Knowledge.x",  # families are case-sensitive
        "direct.acme.bob",  # direct subjects are not stream families
        "ew.knowledge.x",  # a wire subject is not a logical one
        "knowledge..x",  # empty token
        ".knowledge.x",
        "knowledge.x.",
        "knowledge.*",  # wildcards are for patterns only
        "knowledge.>",
        "knowledge.a.*.b",
        "*.x",
        ">",
        "knowledge." + ".".join(["t"] * MAX_TOKENS),  # MAX_TOKENS + 1 tokens
        "knowledge.a b",
        "knowledge. x",
        "knowledge.café",
        "knowledge.x\n",
        "knowledge." + "x" * 65,
    ],
)
def test_check_subject_rejects(subject: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        check_subject(subject)
    assert info.value.field == "subject"


def test_check_subject_field_name_is_passed_through() -> None:
    with pytest.raises(InvalidEvent) as info:
        check_subject("knowledge..x", field="where")
    assert info.value.field == "where"


@pytest.mark.parametrize("value", [None, 42, b"knowledge.x", ("knowledge", "x")])
def test_check_subject_rejects_non_str(value: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        check_subject(value)
    assert info.value.field == "subject"
    assert type(value).__name__ in str(info.value)


# --- check_pattern -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        ">",
        "*",
        "*.>",
        "*.*",
        "knowledge.>",
        "knowledge.*",
        "knowledge.ml",
        "knowledge.*.nlp",
        "capability.*.help",
        "agent.lifecycle.*",
        "knowledge",  # a bare family is a valid (if narrow) pattern
        *(f"{family}.>" for family in FAMILIES),
        "knowledge." + ".".join(["*"] * (MAX_TOKENS - 1)),
    ],
)
def test_check_pattern_accepts(pattern: str) -> None:
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "nope.>",  # unknown family
        "direct.>",
        ">.x",  # '>' not last
        "knowledge.>.x",
        "knowledge.>.>",
        "knowledge..x",  # empty token
        "knowledge.",
        "knowledge.**",  # a wildcard must be a whole token
        "knowledge.a*",
        "knowledge.>x",
        "knowledge.a b",
        "knowledge.ü",
        "knowledge." + ".".join(["*"] * MAX_TOKENS),  # too many tokens
    ],
)
def test_check_pattern_rejects(pattern: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        check_pattern(pattern)
    assert info.value.field == "pattern"


@pytest.mark.parametrize("value", [None, 3, b"knowledge.>", ["knowledge", ">"]])
def test_check_pattern_rejects_non_str(value: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        check_pattern(value)
    assert info.value.field == "pattern"


# --- matches -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "subject", "expected"),
    [
        # exact
        ("knowledge.ml", "knowledge.ml", True),
        ("knowledge.ml", "knowledge.nlp", False),
        ("knowledge.ml", "status.ml", False),
        # '*' matches exactly one token
        ("knowledge.*", "knowledge.ml", True),
        ("knowledge.*", "knowledge", False),
        ("knowledge.*", "knowledge.ml.nlp", False),
        ("*.ml", "knowledge.ml", True),
        ("*.ml", "knowledge.nlp", False),
        ("capability.*.help", "capability.search.help", True),
        ("capability.*.help", "capability.search.done", False),
        ("capability.*.help", "capability.help", False),
        ("*.*", "a.b", True),
        ("*.*", "a", False),
        ("*", "a", True),
        ("*", "a.b", False),
        # '>' matches one or more tokens, never zero
        ("knowledge.>", "knowledge.ml", True),
        ("knowledge.>", "knowledge.ml.nlp.deep", True),
        ("knowledge.>", "knowledge", False),
        ("knowledge.>", "status.ml", False),
        (">", "a", True),
        (">", "a.b.c", True),
        ("*.>", "a", False),
        ("*.>", "a.b", True),
        ("knowledge.*.>", "knowledge.ml", False),
        ("knowledge.*.>", "knowledge.ml.nlp", True),
        # different lengths
        ("knowledge.ml.nlp", "knowledge.ml", False),
        ("knowledge.ml", "knowledge.ml.nlp", False),
        # tokens compare exactly (no prefix, no case folding)
        ("knowledge.ml", "knowledge.mlx", False),
        ("knowledge.ML", "knowledge.ml", False),
    ],
)
def test_matches(pattern: str, subject: str, expected: bool) -> None:
    assert matches(pattern, subject) is expected


# --- wire subjects -----------------------------------------------------------------------


@pytest.mark.parametrize("root", [DEFAULT_ROOT, "t0123456789", "a-b_c"])
@pytest.mark.parametrize("logical", ["knowledge.ml", "capability.search.help", "custom.a.b.c"])
def test_wire_round_trip(root: str, logical: str) -> None:
    wire = to_wire(root, logical)
    assert wire == f"{root}.{logical}"
    assert from_wire(root, wire) == logical


def test_default_root() -> None:
    assert DEFAULT_ROOT == "ew"
    assert to_wire(DEFAULT_ROOT, "knowledge.ml") == "ew.knowledge.ml"


@pytest.mark.parametrize(
    "wire",
    [
        "other.knowledge.ml",  # another root
        "ewx.knowledge.ml",  # the root is a whole token, not a prefix
        "e.knowledge.ml",
        "knowledge.ml",  # no root at all
        "ew",  # the root alone
        "EW.knowledge.ml",
        "",
    ],
)
def test_from_wire_foreign_roots(wire: str) -> None:
    assert from_wire("ew", wire) is None


def test_direct_and_reply_subjects() -> None:
    assert direct_subject("acme", "bob") == "direct.acme.bob"
    assert reply_subject("acme", "bob") == "direct.acme.bob.reply"
    assert to_wire("ew", direct_subject("acme", "bob")) == "ew.direct.acme.bob"


# --- default patterns and stream subjects ------------------------------------------------


def test_default_patterns() -> None:
    assert default_patterns(("search", "summarize")) == [
        "system.coordination.*",
        "capability.search.*",
        "capability.summarize.*",
        "agent.lifecycle.*",
    ]
    assert default_patterns([]) == ["system.coordination.*", "agent.lifecycle.*"]
    for pattern in default_patterns(["search"]):
        assert check_pattern(pattern) == pattern


def test_default_patterns_match_what_agents_must_hear() -> None:
    patterns = default_patterns(["search"])
    assert any(matches(p, "capability.search.help") for p in patterns)
    assert any(matches(p, "agent.lifecycle.started") for p in patterns)
    assert any(matches(p, "system.coordination.saga") for p in patterns)
    assert not any(matches(p, "capability.other.help") for p in patterns)
    assert not any(matches(p, "knowledge.ml") for p in patterns)


def test_families() -> None:
    assert FAMILIES == (
        "knowledge",
        "capability",
        "task",
        "error",
        "status",
        "agent",
        "system",
        "custom",
    )


def test_stream_subjects_cover_every_family() -> None:
    subjects = stream_subjects("ew")
    assert subjects == [f"ew.{family}.>" for family in FAMILIES]
    assert len(subjects) == len(set(subjects)) == len(FAMILIES)
    for family in FAMILIES:
        wire = to_wire("ew", f"{family}.x.y")
        assert sum(matches(s, wire) for s in subjects) == 1
    # Direct requests and foreign roots are not stored in the stream.
    assert not any(matches(s, "ew.direct.acme.bob") for s in subjects)
    assert not any(matches(s, "other.knowledge.ml") for s in subjects)
    assert not any(matches(s, "ew.knowledge") for s in subjects)
