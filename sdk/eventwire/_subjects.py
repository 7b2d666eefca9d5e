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

On a partitioned bus (``partitions=n``) an event with a partition key is published on
``<root>.keyed.<keytoken>.<subject>``, ``keytoken`` the first 16 hex digits of the
SHA-256 of the key; the stream's subject transform ``<root>.keyed.*.>`` ->
``<root>.keyed.{{partition(n,1)}}.{{wildcard(1)}}.>`` stores it as
``<root>.keyed.<p>.<keytoken>.<subject>``, ``p`` = FNV-1a 32 of ``keytoken`` mod n (the
server's hash). ``keyed`` is reserved: no logical subject starts with it.
"""

from __future__ import annotations

import hashlib
import re

from ._errors import ConfigError, InvalidEvent

DEFAULT_ROOT = "ew"
FAMILIES = ("knowledge", "capability", "task", "error", "status", "agent", "system", "custom")
KEYED = "keyed"  # reserved first token: keyed events on a partitioned bus
MAX_PARTITIONS = 1024
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
    if tokens[0] == KEYED:
        raise InvalidEvent(f"{subject!r}: {KEYED!r} is reserved for partitioning", field=field)
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


def stream_subjects(root: str, *, partitions: int = 0) -> list[str]:
    keyed = [f"{root}.{KEYED}.>"] if partitions else []
    return [*(f"{root}.{family}.>" for family in FAMILIES), *keyed]


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


# --- partitions --------------------------------------------------------------------------


def check_partitions(value: object) -> int:
    """A partition count: 0 (not partitioned) to :data:`MAX_PARTITIONS`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"partitions must be an int, got {type(value).__name__}")
    if not 0 <= value <= MAX_PARTITIONS:
        raise ConfigError(f"partitions must be 0 to {MAX_PARTITIONS}, got {value}")
    return value


def key_token(key: str) -> str:
    """The subject token of a partition key: deterministic, NATS-safe, 16 hex digits."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def partition_of(token: str, partitions: int) -> int:
    """The partition nats-server's ``partition(n, ...)`` picks: FNV-1a 32 of the token mod n."""
    digest = 0x811C9DC5
    for byte in token.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % partitions


def publish_subject(root: str, logical: str, key: str | None, partitions: int) -> str:
    """Where an event is published: keyed on a partitioned bus when it has a key."""
    if partitions and key is not None:
        return f"{root}.{KEYED}.{key_token(key)}.{logical}"
    return to_wire(root, logical)


def stored_subject(root: str, logical: str, key: str, partitions: int) -> str:
    """Where the stream stores a keyed event (after its subject transform)."""
    token = key_token(key)
    return f"{root}.{KEYED}.{partition_of(token, partitions)}.{token}.{logical}"


def arrived_as_signed(root: str, wire: str, subject: object, key: object, partitions: int) -> bool:
    """Whether an event signed for ``subject`` (with partition ``key``) may arrive on
    ``wire``: ``<root>.<subject>`` when it has no key or the bus is not partitioned, else
    only the keyed layout with this key's token and the partition the server computes."""
    if not partitions or key is None:
        return from_wire(root, wire) == subject
    if not isinstance(key, str) or not isinstance(subject, str):
        return False
    return wire == stored_subject(root, subject, key, partitions)


def republish_subject(root: str, stored: str) -> str:
    """The subject to publish a stored event on again (the keyed layout loses ``<p>``)."""
    tokens = stored.split(".")
    if len(tokens) > 4 and tokens[0] == root and tokens[1] == KEYED:
        return ".".join([root, KEYED, *tokens[3:]])
    return stored


def partition_transform(root: str, partitions: int) -> tuple[str, str]:
    """The events stream's subject transform (source, destination) for ``partitions``."""
    source = f"{root}.{KEYED}.*.>"
    return source, f"{root}.{KEYED}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}.>"


def consumer_filters(root: str, pattern: str, partitions: int) -> list[str]:
    """Filter subjects for ``pattern``: ``<root>.<pattern>``, and on a partitioned bus
    its unkeyed and keyed layouts (:func:`unkeyed_filters`, :func:`keyed_filter`)."""
    if not partitions:
        return [to_wire(root, pattern)]
    return [*unkeyed_filters(root, pattern), keyed_filter(root, pattern, None)]


def unkeyed_filters(root: str, pattern: str) -> list[str]:
    """Filters for unkeyed events only: a leading wildcard is spelled out per family, so
    that no filter matches ``<root>.keyed...`` (the server refuses overlapping filters)."""
    head, _, rest = pattern.partition(".")
    if head == ">":
        return [f"{root}.{family}.>" for family in FAMILIES]
    if head == "*":
        return [f"{root}.{family}" + (f".{rest}" if rest else "") for family in FAMILIES]
    return [to_wire(root, pattern)]


def keyed_filter(root: str, pattern: str, partition: int | None) -> str:
    """Keyed events matching ``pattern``, in ``partition`` or in any."""
    where = "*" if partition is None else str(partition)
    return f"{root}.{KEYED}.{where}.*.{pattern}"
