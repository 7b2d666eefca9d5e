"""The one table that maps events to NATS subjects, and NATS wildcard matching.

Logical subjects (what users write, e.g. ``knowledge.ml``) live under a root token
(default ``ew``) on the wire: ``ew.knowledge.ml``. The events stream stores these families:

============  =====================================  =============================
family        logical subject                         published by
============  =====================================  =============================
knowledge     ``knowledge.<topic>``                   :class:`KnowledgeShared`
capability    ``capability.<name>.help``              :class:`HelpRequested`
task          ``task.<type>.completed``               :class:`TaskCompleted`
error         ``error.<severity>``                    :class:`ErrorReported`
status        ``status.<component>``                  :class:`StatusUpdate`
agent         ``agent.lifecycle.<started|stopped>``   the SDK, when an agent starts/stops
system        ``system.coordination.<...>``           coordination (sagas, workflows)
custom        ``custom.<...>``                        :class:`CustomEvent`
============  =====================================  =============================

Direct requests travel on ``<root>.direct.<tenant>.<agent>``, outside the stream.
"""

from __future__ import annotations

import re

from ._errors import InvalidEvent

DEFAULT_ROOT = "ew"
FAMILIES = ("knowledge", "capability", "task", "error", "status", "agent", "system", "custom")
_TOKEN = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")
MAX_TOKENS = 16


def check_token(value: str, *, field: str) -> str:
    """A single subject token: 1-64 of ``A-Z a-z 0-9 _ -``."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise InvalidEvent(
            f"{value!r} is not a subject token (1-64 of A-Z a-z 0-9 _ -)", field=field
        )
    return value


def check_subject(subject: str, *, field: str = "subject") -> str:
    """A logical subject: dot-separated tokens under a known family, no wildcards."""
    if not isinstance(subject, str):
        raise InvalidEvent(f"expected a string, got {type(subject).__name__}", field=field)
    tokens = subject.split(".")
    if len(tokens) < 2 or len(tokens) > MAX_TOKENS:
        raise InvalidEvent(f"{subject!r} needs 2 to {MAX_TOKENS} tokens", field=field)
    if tokens[0] not in FAMILIES:
        raise InvalidEvent(f"{subject!r} must start with one of {', '.join(FAMILIES)}", field=field)
    for token in tokens:
        check_token(token, field=field)
    return subject


def check_pattern(pattern: str) -> str:
    """A logical subscription pattern: tokens, ``*`` for one token, ``>`` last for the rest."""
    if not isinstance(pattern, str):
        raise InvalidEvent(f"expected a string, got {type(pattern).__name__}", field="pattern")
    tokens = pattern.split(".")
    if len(tokens) > MAX_TOKENS:
        raise InvalidEvent(f"{pattern!r} has more than {MAX_TOKENS} tokens", field="pattern")
    if tokens[0] not in (*FAMILIES, "*", ">"):
        raise InvalidEvent(
            f"{pattern!r} must start with one of {', '.join(FAMILIES)} or a wildcard",
            field="pattern",
        )
    for index, token in enumerate(tokens):
        if token == ">" and index != len(tokens) - 1:
            raise InvalidEvent(f"'>' must be the last token in {pattern!r}", field="pattern")
        if token not in ("*", ">"):
            check_token(token, field="pattern")
    return pattern


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching of a logical ``subject`` against ``pattern``."""
    want = pattern.split(".")
    have = subject.split(".")
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


def to_wire(root: str, logical: str) -> str:
    return f"{root}.{logical}"


def from_wire(root: str, wire: str) -> str | None:
    """The logical subject of a wire subject under ``root``, or ``None`` if it is not ours."""
    prefix = root + "."
    return wire[len(prefix) :] if wire.startswith(prefix) else None


def stream_subjects(root: str) -> list[str]:
    return [f"{root}.{family}.>" for family in FAMILIES]


def direct_subject(tenant: str, agent: str) -> str:
    """Logical subject of an agent's direct-request inbox (not stored in the stream)."""
    return f"direct.{tenant}.{agent}"


def reply_subject(tenant: str, agent: str) -> str:
    """Logical subject signed into a reply from ``agent``."""
    return f"direct.{tenant}.{agent}.reply"


def default_patterns(capabilities: tuple[str, ...] | list[str]) -> list[str]:
    """The subscriptions every agent has: coordination, its capabilities, lifecycle."""
    return [
        "system.coordination.*",
        *(f"capability.{name}.*" for name in capabilities),
        "agent.lifecycle.*",
    ]
