"""The SDK's side of the subject layout: the table, the grammar and the wildcard matcher
live in :mod:`eventwire_security._layout` (shared with the server-permission compiler);
this module re-exports what the SDK's modules use and raises the SDK's errors
(:class:`InvalidEvent`, :class:`ConfigError`) for input outside the grammar.
"""

from __future__ import annotations

from eventwire_security._layout import (
    DEFAULT_ROOT,
    FAMILIES,
    KEYED,
    MAX_PARTITIONS,
    MAX_TOKENS,
    arrived_as_signed,
    default_patterns,
    direct_subject,
    from_wire,
    key_token,
    keyed_filter,
    matches,
    partition_of,
    partition_transform,
    partitions_problem,
    pattern_problem,
    publish_subject,
    reply_subject,
    republish_subject,
    stored_subject,
    stream_subjects,
    subject_problem,
    to_wire,
    token_problem,
    unkeyed_filters,
)
from eventwire_security._layout import filter_subjects as consumer_filters

from ._errors import ConfigError, InvalidEvent

__all__ = [
    "DEFAULT_ROOT",
    "FAMILIES",
    "KEYED",
    "MAX_PARTITIONS",
    "MAX_TOKENS",
    "arrived_as_signed",
    "check_partitions",
    "check_pattern",
    "check_subject",
    "check_token",
    "consumer_filters",
    "default_patterns",
    "direct_subject",
    "from_wire",
    "key_token",
    "keyed_filter",
    "matches",
    "partition_of",
    "partition_transform",
    "publish_subject",
    "reply_subject",
    "republish_subject",
    "stored_subject",
    "stream_subjects",
    "to_wire",
    "unkeyed_filters",
]


def check_token(value: str, *, field: str) -> str:
    """A single subject token: 1-64 of ``A-Z a-z 0-9 _ -``."""
    problem = token_problem(value)
    if problem is not None:
        raise InvalidEvent(problem, field=field)
    return value


def check_subject(subject: str, *, field: str = "subject") -> str:
    """A logical subject: 2-16 dot-separated tokens under a known family, no wildcards."""
    problem = subject_problem(subject)
    if problem is not None:
        raise InvalidEvent(problem, field=field)
    return subject


def check_pattern(pattern: str) -> str:
    """A subscription pattern: a family or a wildcard first, ``*`` for one token, ``>``
    last for the rest."""
    problem = pattern_problem(pattern, families=True)
    if problem is not None:
        raise InvalidEvent(problem, field="pattern")
    return pattern


def check_partitions(value: object) -> int:
    """A partition count: 0 (not partitioned) to :data:`MAX_PARTITIONS`."""
    problem = partitions_problem(value)
    if problem is not None:
        raise ConfigError(problem)
    assert isinstance(value, int)
    return value
