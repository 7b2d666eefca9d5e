"""The layout of an eventwire deployment: the subject grammar, NATS wildcard matching, and
every subject, stream, bucket, consumer and inbox name. Pure: no NATS, no I/O.

Both the SDK and the server-permission compiler take their names from here, so what an
agent's SDK uses and what its NATS user is granted cannot drift apart.

Logical subjects (what users write, e.g. ``knowledge.ml``) live under a root token (default
``ew``) on the wire: ``ew.knowledge.ml``. The events stream stores these families:

============  =====================================  =============================
family        logical subject                         published by
============  =====================================  =============================
knowledge     ``knowledge.<topic>``                   ``KnowledgeShared``
capability    ``capability.<name>.help``              ``HelpRequested``
task          ``task.<type>.completed``               ``TaskCompleted``
error         ``error.<severity>``                    ``ErrorReported``
status        ``status.<component>``                  ``StatusUpdate``
agent         ``agent.lifecycle.<started|stopped>``   the SDK, when an agent starts/stops
system        ``system.coordination.<...>``           coordination (sagas, workflows)
custom        ``custom.<...>``                        ``CustomEvent``
============  =====================================  =============================

Event-sourced aggregates (``AggregateStore``) keep each aggregate's events on one subject
of the custom family, ``custom.es.<kind>.<id>``, in the events stream; their signed
snapshots are in the KV bucket ``<root>-snapshots`` (key ``<kind>.<id>``). Projections keep
their read model and checkpoint in ``<root>-projections`` (key ``projection.<name>``).

Other subjects under the root, outside the events stream's families:

=====================================  ==================================================
``<root>.direct.<tenant>.<agent>``     direct requests to an agent (not stored)
``<root>.direct.<tenant>.<agent>.reply``  the subject signed into its replies
``<root>.keyed.<keytoken>.<subject>``  a keyed event on a partitioned bus (events stream)
``<root>.dlq.<consumer>``              dead letters of a consumer (DLQ stream)
``<root>.audit.log``                   audit records (audit stream)
``_INBOX_<agent>.>``                   an agent's private inbox (replies, pull deliveries)
=====================================  ==================================================

On a partitioned bus (``partitions=n``) an event with a partition key is published on
``<root>.keyed.<keytoken>.<subject>``, ``keytoken`` the first 16 hex digits of the SHA-256
of the key; the stream's subject transform ``<root>.keyed.*.>`` ->
``<root>.keyed.{{partition(n,1)}}.{{wildcard(1)}}.>`` stores it as
``<root>.keyed.<p>.<keytoken>.<subject>``, ``p`` = FNV-1a 32 of ``keytoken`` mod n (the
server's hash). ``keyed`` is reserved: no logical subject starts with it.

Streams and KV buckets of a root: ``<root>-events``, ``<root>-dlq``, ``<root>-audit``;
buckets ``<root>-agents`` (registry), ``<root>-keyring``, ``<root>-seen`` (replay claims),
``<root>-processed`` (handled ids). Used by features, made on first use (or bound): the
stream ``<root>-wftimers`` (workflow timers, ``<root>.wftimer.>``) and the buckets
``<root>-wfsteps`` (step outcomes), ``<root>-projections``, ``<root>-snapshots``,
``<root>-cache``. A workflow's history is ``custom.es.workflow.<id>``
(:func:`workflow_history_subjects`); only orchestrators may publish it and the timers.
A durable consumer of ``owner`` for ``pattern`` is
``<owner>-<first 12 hex digits of SHA-256(pattern)>``.

Grammar: a token is 1-64 of ``A-Z a-z 0-9 _ -`` (so ``$JS.API.>`` or ``_INBOX`` tricks
cannot be written); a pattern has at most 16 tokens, ``*`` for one token and ``>`` (last
only) for one or more. The ``*_problem`` functions say why a value is not valid (or return
``None``); each caller raises its own typed error with it. The name functions check their
inputs and raise :class:`LayoutError`.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

from ._errors import SecurityError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_ROOT",
    "FAMILIES",
    "KEYED",
    "MAX_PARTITIONS",
    "MAX_TOKENS",
    "SHARED_INBOX",
    "TIMERS_CONSUMER",
    "TOKEN_RE",
    "LayoutError",
    "aggregate_subject",
    "arrived_as_signed",
    "audit_stream_name",
    "audit_subject",
    "audit_subjects",
    "cache_bucket",
    "consumer_name",
    "default_patterns",
    "direct_subject",
    "dlq_stream_name",
    "dlq_subject",
    "dlq_subjects",
    "events_stream_name",
    "filter_subjects",
    "from_wire",
    "inbox_prefix",
    "is_name",
    "is_subject",
    "is_token",
    "key_token",
    "keyed_filter",
    "keyed_publish_pattern",
    "keyring_bucket",
    "kv_stream_name",
    "matches",
    "partition_of",
    "partition_transform",
    "partitions_problem",
    "pattern_problem",
    "processed_bucket",
    "projections_bucket",
    "publish_subject",
    "registry_bucket",
    "reply_subject",
    "republish_subject",
    "seen_bucket",
    "snapshot_key",
    "snapshots_bucket",
    "stored_subject",
    "stream_subjects",
    "subject_problem",
    "to_wire",
    "token_problem",
    "tokens_contain",
    "tokens_intersect",
    "tokens_match",
    "unkeyed_filters",
    "wfsteps_bucket",
    "wftimer_subjects",
    "wftimers_stream_name",
    "workflow_history_subjects",
]

DEFAULT_ROOT = "ew"
FAMILIES = ("knowledge", "capability", "task", "error", "status", "agent", "system", "custom")
KEYED = "keyed"  # reserved first token: keyed events on a partitioned bus
MAX_TOKENS = 16
MAX_PARTITIONS = 1024
SHARED_INBOX = "_INBOX"  # the NATS default inbox prefix, shared by every user of an account
TIMERS_CONSUMER = "wf-timers"  # the timers stream's consumer, shared by the orchestrators
TOKEN_RE = r"[A-Za-z0-9_-]{1,64}"
_TOKEN = re.compile(rf"\A{TOKEN_RE}\Z")
_TOKEN_RULE = "1-64 of A-Z a-z 0-9 _ -"
_NAME = re.compile(r"\A[A-Za-z0-9_-]{1,128}\Z")  # a stream, bucket or consumer name


class LayoutError(SecurityError, ValueError):
    """A name function was given a value outside the grammar; ``field`` says which input."""

    def __init__(self, detail: str, *, field: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.detail = detail
        self.field = field


# -- grammar ---------------------------------------------------------------------------------


def is_token(value: object) -> bool:
    """Whether ``value`` is one subject token: 1-64 of ``A-Z a-z 0-9 _ -``."""
    return isinstance(value, str) and _TOKEN.match(value) is not None


def is_name(value: object) -> bool:
    """Whether ``value`` is a stream, bucket or consumer name: 1-128 of ``A-Z a-z 0-9 _ -``
    (also a single subject token as far as NATS is concerned)."""
    return isinstance(value, str) and _NAME.match(value) is not None


def token_problem(value: object) -> str | None:
    """Why ``value`` is not a subject token, or ``None`` if it is one."""
    return None if is_token(value) else f"{value!r} is not a subject token ({_TOKEN_RULE})"


def is_subject(subject: object) -> bool:
    """A concrete logical subject of any family: tokens only, no wildcards, any length."""
    if not isinstance(subject, str) or not subject:
        return False
    return all(_TOKEN.match(token) for token in subject.split("."))


def subject_problem(subject: object) -> str | None:
    """Why ``subject`` is not an event subject (2-16 tokens under a family, no wildcards)."""
    if not isinstance(subject, str):
        return f"expected a string, got {type(subject).__name__}"
    tokens = subject.split(".")
    if len(tokens) < 2 or len(tokens) > MAX_TOKENS:
        return f"{subject!r} needs 2 to {MAX_TOKENS} tokens"
    if tokens[0] == KEYED:
        return f"{subject!r}: {KEYED!r} is reserved for partitioning"
    if tokens[0] not in FAMILIES:
        return f"{subject!r} must start with one of {', '.join(FAMILIES)}"
    for token in tokens:
        if not _TOKEN.match(token):
            return token_problem(token)
    return None


def pattern_problem(pattern: object, *, families: bool = False) -> str | None:
    """Why ``pattern`` is not a logical pattern, or ``None`` if it is one.

    At most 16 tokens, each a token, ``*`` or ``>`` (last only). With ``families`` (a
    subscription) the first token must also be a family or a wildcard.
    """
    if not isinstance(pattern, str):
        return f"expected a string, got {type(pattern).__name__}"
    if not pattern:
        return "empty pattern"
    tokens = pattern.split(".")
    if len(tokens) > MAX_TOKENS:
        return f"{pattern!r} has more than {MAX_TOKENS} tokens"
    if families and tokens[0] not in (*FAMILIES, "*", ">"):
        return f"{pattern!r} must start with one of {', '.join(FAMILIES)} or a wildcard"
    for index, token in enumerate(tokens):
        if token == ">" and index != len(tokens) - 1:
            return f"'>' must be the last token in {pattern!r}"
        if token not in ("*", ">") and not _TOKEN.match(token):
            shown = "an empty token" if not token else f"token {token!r}"
            return f"{shown} in {pattern!r}: tokens are {_TOKEN_RULE}, '*' or '>'"
    return None


def partitions_problem(value: object) -> str | None:
    """Why ``value`` is not a partition count (0, not partitioned, to 1024)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"partitions must be an int, got {type(value).__name__}"
    if not 0 <= value <= MAX_PARTITIONS:
        return f"partitions must be 0 to {MAX_PARTITIONS}, got {value}"
    return None


# -- NATS wildcard matching ------------------------------------------------------------------


def tokens_match(want: Sequence[str], have: Sequence[str]) -> bool:
    """Whether the subject tokens ``have`` match the pattern tokens ``want`` (NATS rules:
    ``*`` is exactly one token, ``>`` one or more and only last), in O(tokens)."""
    for index, token in enumerate(want):
        if token == ">":
            return len(have) > index
        if index >= len(have) or (token != "*" and token != have[index]):
            return False
    return len(want) == len(have)


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching of ``subject`` against ``pattern`` (both unchecked)."""
    return tokens_match(pattern.split("."), subject.split("."))


def tokens_contain(outer: Sequence[str], inner: Sequence[str]) -> bool:
    """Whether every subject the pattern ``inner`` matches is matched by ``outer``."""
    for index, token in enumerate(outer):
        if token == ">":
            return len(inner) > index
        if index >= len(inner) or inner[index] == ">":
            return False
        if token != "*" and token != inner[index]:
            return False
    return len(outer) == len(inner)


def tokens_intersect(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether some subject matches both patterns ``a`` and ``b``."""
    for index in range(min(len(a), len(b))):
        x, y = a[index], b[index]
        if x == ">" or y == ">":
            return True
        if "*" not in (x, y) and x != y:
            return False
    return len(a) == len(b)


# -- subjects --------------------------------------------------------------------------------


def to_wire(root: str, logical: str) -> str:
    return f"{root}.{logical}"


def from_wire(root: str, wire: str) -> str | None:
    """The logical subject of a wire subject under ``root``, or ``None`` if it is not ours."""
    prefix = root + "."
    return wire[len(prefix) :] if wire.startswith(prefix) else None


def stream_subjects(root: str, *, partitions: int = 0) -> list[str]:
    """The events stream's subjects: every family, and the keyed layout when partitioned."""
    keyed = [f"{root}.{KEYED}.>"] if partitions else []
    return [*(f"{root}.{family}.>" for family in FAMILIES), *keyed]


def direct_subject(tenant: str, agent: str) -> str:
    """Logical subject of an agent's direct-request inbox (not stored in the stream)."""
    return f"direct.{tenant}.{agent}"


def reply_subject(tenant: str, agent: str) -> str:
    """Logical subject signed into a reply from ``agent``."""
    return f"direct.{tenant}.{agent}.reply"


def default_patterns(capabilities: Sequence[str]) -> list[str]:
    """The subscriptions every agent has: coordination, its capabilities, lifecycle."""
    return [
        "system.coordination.*",
        *(f"capability.{name}.*" for name in capabilities),
        "agent.lifecycle.*",
    ]


def dlq_subject(root: str, consumer: str) -> str:
    """Where the dead letters of ``consumer`` are published."""
    return f"{_root(root)}.dlq.{_name(consumer, 'consumer')}"


def dlq_subjects(root: str) -> str:
    """The DLQ stream's subjects."""
    return f"{_root(root)}.dlq.>"


def audit_subject(root: str) -> str:
    """Where audit records are published."""
    return f"{_root(root)}.audit.log"


def audit_subjects(root: str) -> str:
    """The audit stream's subjects."""
    return f"{_root(root)}.audit.>"


def inbox_prefix(agent: str) -> str:
    """An agent's own inbox prefix (instead of the account-wide ``_INBOX``)."""
    return f"{SHARED_INBOX}_{_token(agent, 'agent')}"


# -- partitions ------------------------------------------------------------------------------


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
    return f"{root}.{logical}"


def keyed_publish_pattern(root: str, pattern: str) -> str:
    """The wire pattern of keyed publishes whose logical subject matches ``pattern``."""
    return f"{root}.{KEYED}.*.{pattern}"


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


def filter_subjects(root: str, pattern: str, partitions: int) -> list[str]:
    """A consumer's filter subjects for ``pattern``: ``<root>.<pattern>``, and on a
    partitioned bus its unkeyed and keyed layouts (:func:`unkeyed_filters`,
    :func:`keyed_filter`)."""
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


# -- streams, buckets, consumers -------------------------------------------------------------


def events_stream_name(root: str) -> str:
    return f"{_root(root)}-events"


def dlq_stream_name(root: str) -> str:
    return f"{_root(root)}-dlq"


def audit_stream_name(root: str) -> str:
    return f"{_root(root)}-audit"


def registry_bucket(root: str) -> str:
    """The KV bucket of live agents (signed entries that expire without heartbeats)."""
    return f"{_root(root)}-agents"


def keyring_bucket(root: str) -> str:
    """The KV bucket holding the signed keyring document."""
    return f"{_root(root)}-keyring"


def seen_bucket(root: str) -> str:
    """The KV bucket of replay claims (event ids each consumer has seen)."""
    return f"{_root(root)}-seen"


def processed_bucket(root: str) -> str:
    """The KV bucket of handled event ids (idempotent consumers)."""
    return f"{_root(root)}-processed"


def snapshots_bucket(root: str) -> str:
    """The KV bucket of signed aggregate snapshots (key ``<kind>.<id>``)."""
    return f"{_root(root)}-snapshots"


def projections_bucket(root: str) -> str:
    """The KV bucket of projections: each one's signed read model and checkpoint together
    (key ``projection.<name>``)."""
    return f"{_root(root)}-projections"


def cache_bucket(root: str) -> str:
    """The default L2 bucket of the event cache (``EventCache``)."""
    return f"{_root(root)}-cache"


def wftimers_stream_name(root: str) -> str:
    """The stream of durable workflow timers (JetStream message schedules)."""
    return f"{_root(root)}-wftimers"


def wftimer_subjects(root: str) -> str:
    """The timers stream's subjects: ``<root>.wftimer.at.<id>.<op>`` (a schedule) and
    ``<root>.wftimer.due.<id>.<op>`` (what the server produces at its time)."""
    return f"{_root(root)}.wftimer.>"


def wfsteps_bucket(root: str) -> str:
    """The KV bucket of workflow step outcomes (keyed by a hash of the idempotency key)."""
    return f"{_root(root)}-wfsteps"


def workflow_history_subjects(root: str) -> str:
    """The wire subjects of every workflow's history (``custom.es.workflow.<id>``)."""
    return f"{_root(root)}.custom.es.workflow.>"


def aggregate_subject(kind: str, aggregate_id: str) -> str:
    """The logical subject of one event-sourced aggregate's events: ``custom.es.<kind>.<id>``
    (stored in the events stream, under ``<root>.custom.es.<kind>.<id>``)."""
    return f"custom.es.{_token(kind, 'kind')}.{_token(aggregate_id, 'aggregate_id')}"


def snapshot_key(kind: str, aggregate_id: str) -> str:
    """The key of an aggregate's snapshot in :func:`snapshots_bucket`."""
    return f"{_token(kind, 'kind')}.{_token(aggregate_id, 'aggregate_id')}"


def kv_stream_name(bucket: str) -> str:
    """The JetStream stream behind a KV bucket."""
    return f"KV_{_name(bucket, 'bucket')}"


def consumer_name(owner: str, pattern: str) -> str:
    """The durable consumer name of ``owner`` (an agent, or a subscription's ``durable``)
    for the logical ``pattern``: ``<owner>-<12 hex digits>``, stable across restarts."""
    digest = hashlib.sha256(pattern.encode()).hexdigest()[:12]
    return f"{_token(owner, 'owner')}-{digest}"


def _root(root: str) -> str:
    return _token(root, "root")


def _token(value: str, field: str) -> str:
    if not isinstance(value, str) or _TOKEN.match(value) is None:
        raise LayoutError(f"{value!r} is not a subject token ({_TOKEN_RULE})", field=field)
    return value


def _name(value: str, field: str) -> str:
    if not is_name(value):
        raise LayoutError(f"{value!r} is not a name (1-128 of A-Z a-z 0-9 _ -)", field=field)
    return value
