"""The streams and KV buckets of a deployment, declared once in code (:func:`declared`).

A bus creates what is missing (or, bound only, requires it) on connect, and ``eventwire
streams diff|apply`` compares every declared resource with a server and applies it. Names
and subjects come from the shared layout (``eventwire_security._layout``).

=============  ===========================  =========================================
role           resource                     settings the code declares
=============  ===========================  =========================================
events         stream ``<root>-events``     every family (and the keyed layout)
dead letters   stream ``<root>-dlq``        ``<root>.dlq.>``
audit          stream ``<root>-audit``      ``<root>.audit.>``, no delete, no purge
registry       bucket ``<root>-agents``     history 1, ttl = the registry ttl
keyring        bucket ``<root>-keyring``    history 10
replay claims  bucket ``<root>-seen``       history 1, ttl = the replay horizon
handled ids    bucket ``<root>-processed``  history 1, ttl = the dedupe window, direct
wf timers      stream ``<root>-wftimers``   ``<root>.wftimer.>``, message schedules, 1/subject
wf steps       bucket ``<root>-wfsteps``    history 1, ttl 7 days
projections    bucket ``<root>-projections``  history 1
snapshots      bucket ``<root>-snapshots``  history 1
cache          bucket ``<root>-cache``      history 1, ttl 1 hour (the default L2)
=============  ===========================  =========================================

The first seven are required on connect; the last five (``on_connect=False``) are made by
the feature that uses them on first use, or, bound only (``provision=False``), bound to
(:func:`open_declared`, :class:`NotProvisioned` if missing). ``streams apply`` makes all.

A KV bucket is the stream ``KV_<bucket>``; its settings are compared by their KV names
(``history``, ``ttl``, ``replicas``, ``direct``, ``storage``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

import nats.errors
import nats.js.errors
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)

from eventwire_security._layout import (
    audit_stream_name,
    audit_subjects,
    cache_bucket,
    dlq_stream_name,
    dlq_subjects,
    events_stream_name,
    keyring_bucket,
    kv_stream_name,
    partition_transform,
    processed_bucket,
    projections_bucket,
    registry_bucket,
    seen_bucket,
    snapshots_bucket,
    stream_subjects,
    wfsteps_bucket,
    wftimer_subjects,
    wftimers_stream_name,
)

from ._errors import NotProvisioned, StreamConfigError

log = logging.getLogger("eventwire.streams")

if TYPE_CHECKING:
    from collections.abc import Iterable

    from nats.js import JetStreamContext

__all__ = [
    "CACHE_TTL",
    "DUPLICATE_WINDOW_SECONDS",
    "KEYRING_HISTORY",
    "Applied",
    "Difference",
    "Resource",
    "apply_resource",
    "apply_stream",
    "audit_stream_config",
    "cache_config",
    "declared",
    "diff_resource",
    "diff_stream",
    "dlq_stream_config",
    "ensure_declared",
    "ensure_stream",
    "events_stream_config",
    "events_stream_name",
    "keyring_config",
    "open_declared",
    "processed_config",
    "projections_config",
    "registry_config",
    "seen_config",
    "snapshots_config",
    "wfsteps_config",
    "wftimers_stream_config",
]

DUPLICATE_WINDOW_SECONDS = 120.0
KEYRING_HISTORY = 10
CACHE_TTL = 3600.0  # the event cache's default L2 ttl
WFSTEPS_TTL = 7 * 24 * 3600.0  # step outcomes outlive any workflow retry

# -- the declaration -------------------------------------------------------------------------


def events_stream_config(root: str, *, replicas: int = 1, partitions: int = 0) -> StreamConfig:
    """The events stream; with ``partitions`` it also takes keyed subjects and assigns
    each to a partition with a subject transform (see ``_layout``)."""
    transform = None
    if partitions:
        source, destination = partition_transform(root, partitions)
        transform = SubjectTransform(src=source, dest=destination)
    return StreamConfig(
        name=events_stream_name(root),
        description="eventwire events (signed CloudEvents in compact JWS)",
        subjects=stream_subjects(root, partitions=partitions),
        subject_transform=transform,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
    )


def dlq_stream_config(root: str, *, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=dlq_stream_name(root),
        description="eventwire dead letters (original signed bytes + reason headers)",
        subjects=[dlq_subjects(root)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
    )


def audit_stream_config(root: str, *, replicas: int = 1) -> StreamConfig:
    """The audit log (see ``_audit_log``): nothing dropped, deleted, purged or rolled up."""
    return StreamConfig(
        name=audit_stream_name(root),
        description="eventwire audit log (hash-chained records; no delete, no purge)",
        subjects=[audit_subjects(root)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
        deny_delete=True,
        deny_purge=True,
        allow_rollup_hdrs=False,
    )


def registry_config(root: str, *, ttl: float, replicas: int = 1) -> KeyValueConfig:
    """Live agents; an entry expires ``ttl`` seconds after its last heartbeat."""
    return KeyValueConfig(
        bucket=registry_bucket(root), history=1, ttl=ttl, storage=StorageType.FILE,
        replicas=replicas,
    )  # fmt: skip


def keyring_config(root: str, *, replicas: int = 1) -> KeyValueConfig:
    """The signed keyring document, with the last versions (a rollback is visible)."""
    return KeyValueConfig(
        bucket=keyring_bucket(root), history=KEYRING_HISTORY, storage=StorageType.FILE,
        replicas=replicas,
    )  # fmt: skip


def seen_config(root: str, *, horizon: float, replicas: int = 1) -> KeyValueConfig:
    """Replay claims, kept for the replay window's horizon."""
    return KeyValueConfig(
        bucket=seen_bucket(root), history=1, ttl=horizon, storage=StorageType.FILE,
        replicas=replicas,
        direct=True,  # claims are read back by key: an agent's right covers its consumers' keys
    )  # fmt: skip


def processed_config(root: str, *, window: float, replicas: int = 1) -> KeyValueConfig:
    """Handled event ids, kept for the dedupe window."""
    return KeyValueConfig(
        bucket=processed_bucket(root), history=1, ttl=window, storage=StorageType.FILE,
        replicas=replicas,
        direct=True,  # gets by key: an agent's right is scoped to its consumers' keys
    )  # fmt: skip


def wftimers_stream_config(root: str, *, replicas: int = 1) -> StreamConfig:
    """Workflow timers: message schedules (nats-server 2.12+), one per subject."""
    return StreamConfig(
        name=wftimers_stream_name(root),
        description="eventwire workflow timers (message schedules)",
        subjects=[wftimer_subjects(root)],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=1,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        num_replicas=replicas,
        allow_msg_schedules=True,
        allow_rollup_hdrs=True,  # the server turns it on with schedules
    )


def wfsteps_config(root: str, *, replicas: int = 1) -> KeyValueConfig:
    """Workflow step outcomes, by a hash of each step's idempotency key."""
    return KeyValueConfig(
        bucket=wfsteps_bucket(root), history=1, ttl=WFSTEPS_TTL, storage=StorageType.FILE,
        replicas=replicas,
    )  # fmt: skip


def snapshots_config(root: str, *, replicas: int = 1) -> KeyValueConfig:
    """The snapshots bucket: the latest snapshot of each aggregate (history 1)."""
    return KeyValueConfig(
        bucket=snapshots_bucket(root), history=1, storage=StorageType.FILE, replicas=replicas
    )


def projections_config(root: str, *, replicas: int = 1) -> KeyValueConfig:
    """The projections bucket: each projection's latest read model and checkpoint."""
    return KeyValueConfig(
        bucket=projections_bucket(root), history=1, storage=StorageType.FILE, replicas=replicas
    )


def cache_config(bucket: str, *, ttl: float = CACHE_TTL, replicas: int = 1) -> KeyValueConfig:
    """The L2 bucket: one value per key, entries expire after ``ttl`` seconds."""
    return KeyValueConfig(
        bucket=bucket, history=1, ttl=ttl, storage=StorageType.FILE, replicas=replicas
    )


@dataclass(frozen=True, slots=True)
class Resource:
    """One declared stream or KV bucket, its configuration and what it is for;
    ``on_connect``: a bus requires it on connect (else its feature does, on first use)."""

    config: StreamConfig | KeyValueConfig
    role: str = ""
    on_connect: bool = True

    @property
    def kind(self) -> Literal["stream", "bucket"]:
        return "bucket" if isinstance(self.config, KeyValueConfig) else "stream"

    @property
    def name(self) -> str:
        """The stream's or the bucket's name."""
        if isinstance(self.config, KeyValueConfig):
            return self.config.bucket
        assert self.config.name is not None
        return self.config.name

    @property
    def stream(self) -> str:
        """The JetStream stream that holds it (``KV_<bucket>`` for a bucket)."""
        return kv_stream_name(self.name) if self.kind == "bucket" else self.name

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"


def declared(
    root: str,
    *,
    replicas: int = 1,
    partitions: int = 0,
    registry_ttl: float,
    replay_horizon: float | None,
    dedupe_window: float,
) -> list[Resource]:
    """Every stream and bucket of a deployment under ``root``, as the code declares them.
    ``replay_horizon=None`` (no replay protection) leaves out the replay claims bucket."""
    core = _core(root, replicas, partitions, registry_ttl=registry_ttl)
    if replay_horizon is not None:
        seen = seen_config(root, horizon=replay_horizon, replicas=replicas)
        core.append(Resource(seen, "replay claims"))
    processed = processed_config(root, window=dedupe_window, replicas=replicas)
    return [*core, Resource(processed, "handled ids"), *_features(root, replicas)]


def _core(root: str, replicas: int, partitions: int, *, registry_ttl: float) -> list[Resource]:
    return [
        Resource(events_stream_config(root, replicas=replicas, partitions=partitions), "events"),
        Resource(dlq_stream_config(root, replicas=replicas), "dead letters"),
        Resource(audit_stream_config(root, replicas=replicas), "audit"),
        Resource(registry_config(root, ttl=registry_ttl, replicas=replicas), "registry"),
        Resource(keyring_config(root, replicas=replicas), "keyring"),
    ]


def _features(root: str, replicas: int) -> list[Resource]:
    """The resources of workflows, projections, aggregates and the cache."""
    return [
        Resource(wftimers_stream_config(root, replicas=replicas), "wf timers", on_connect=False),
        Resource(wfsteps_config(root, replicas=replicas), "wf steps", on_connect=False),
        Resource(projections_config(root, replicas=replicas), "projections", on_connect=False),
        Resource(snapshots_config(root, replicas=replicas), "snapshots", on_connect=False),
        Resource(cache_config(cache_bucket(root), replicas=replicas), "cache", on_connect=False),
    ]


# -- comparing with a server -----------------------------------------------------------------

# Stream settings the code declares, with the server's value for "not set".
_STREAM_FIELDS: dict[str, object] = {
    "storage": None,
    "retention": None,
    "subjects": None,
    "num_replicas": 1,
    "discard": None,
    "duplicate_window": None,
    "subject_transform": None,
    "deny_delete": False,
    "deny_purge": False,
    "allow_rollup_hdrs": False,
    "max_msgs_per_subject": -1,
    "allow_msg_schedules": False,
}
# Bucket settings by their KV name: the stream setting behind each, and its "not set" value.
_BUCKET_FIELDS: dict[str, tuple[str, object]] = {
    "storage": ("storage", None),
    "history": ("max_msgs_per_subject", 1),
    "ttl": ("max_age", 0.0),
    "replicas": ("num_replicas", 1),
    "direct": ("allow_direct", False),
}
_FIXED = ("storage", "retention")  # the server cannot change these in place
# may be switched on in place, never off
_ONE_WAY = ("deny_delete", "deny_purge", "allow_msg_schedules")


@dataclass(frozen=True, slots=True)
class Difference:
    """One setting of a stream or bucket that is not what the code declares."""

    resource: str
    field: str
    server: object
    code: object
    updatable: bool

    def __str__(self) -> str:
        return f"{self.field}: server has {_show(self.server)}, code wants {_show(self.code)}"


def _show(value: object) -> str:
    return repr(value.value) if isinstance(value, Enum) else repr(value)


def _norm(value: object, unset: object) -> object:
    if value is None:
        value = unset
    if isinstance(value, list):
        return sorted(value)
    if isinstance(value, float):
        return round(value, 3)
    return value


def _differences(resource: Resource, server: StreamConfig) -> list[Difference]:
    wanted = resource.config
    if isinstance(wanted, KeyValueConfig):
        pairs = [
            (name, getattr(server, field), getattr(wanted, name), unset)
            for name, (field, unset) in _BUCKET_FIELDS.items()
        ]
    else:
        pairs = [
            (name, getattr(server, name), getattr(wanted, name), unset)
            for name, unset in _STREAM_FIELDS.items()
        ]
    return [
        Difference(resource.name, name, have, want, _updatable(name, want))
        for name, have, want, unset in pairs
        if _norm(have, unset) != _norm(want, unset)
    ]


def _updatable(field: str, wanted: object) -> bool:
    if field in _FIXED:
        return False
    return bool(wanted) if field in _ONE_WAY else True


async def _server_config(js: JetStreamContext, resource: Resource) -> StreamConfig | None:
    try:
        info = await js.stream_info(resource.stream)
    except nats.js.errors.NotFoundError:
        return None
    return info.config


async def diff_resource(js: JetStreamContext, resource: Resource) -> list[Difference] | None:
    """The differences between the server's resource and the declared one; None if absent."""
    server = await _server_config(js, resource)
    return None if server is None else _differences(resource, server)


async def diff_stream(js: JetStreamContext, wanted: StreamConfig) -> list[Difference] | None:
    """:func:`diff_resource` of one stream."""
    return await diff_resource(js, Resource(wanted))


# -- creating and updating -------------------------------------------------------------------


# A cluster that just lost or restarted a node refuses placements for a few seconds ("no
# suitable peers for placement"), or leaves requests unanswered while it elects a meta
# leader: creating and checking a resource wait that out. Asking again is safe: a create of
# a stream or bucket that was made after all, with this very config, just confirms it.
_NO_PEERS = 10005
_PLACEMENT_WAIT = 20.0


class _Patience:
    """Backoff from 0.1 s to 2 s, for at most :data:`_PLACEMENT_WAIT` seconds."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + _PLACEMENT_WAIT
        self.delay = 0.1

    def spent(self) -> bool:
        return self._loop.time() + self.delay > self._deadline

    async def pause(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, 2.0)


async def _create(js: JetStreamContext, resource: Resource) -> None:
    patience = _Patience()
    while True:
        try:
            await _create_once(js, resource)
            return
        except nats.js.errors.APIError as exc:
            transient = exc.err_code == _NO_PEERS or isinstance(
                exc, nats.js.errors.ServiceUnavailableError
            )
            if not transient or patience.spent():
                raise StreamConfigError(
                    f"the server refused to create {resource}: {exc.description}"
                ) from exc
            log.info(
                "creating %s: %s; retrying in %.1fs", resource, exc.description, patience.delay
            )
        await patience.pause()


async def _create_once(js: JetStreamContext, resource: Resource) -> None:
    if isinstance(resource.config, KeyValueConfig):
        await js.create_key_value(resource.config)
    else:
        await js.add_stream(resource.config)


async def ensure_stream(js: JetStreamContext, wanted: StreamConfig, *, create: bool = True) -> None:
    """Create the stream if absent (or, without ``create``, raise :class:`NotProvisioned`);
    if present, refuse settings that differ from the code's."""
    await _ensure(js, Resource(wanted), create=create)


async def _ensure(js: JetStreamContext, resource: Resource, *, create: bool) -> None:
    """:func:`_ensure_once`, asked again while JetStream does not answer or says it is
    temporarily unavailable (see above); after the wait, that error, which the caller maps."""
    patience = _Patience()
    while True:
        try:
            await _ensure_once(js, resource, create=create)
            return
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            if patience.spent():
                raise
            log.info("%s: %r; asking again in %.1fs", resource, exc, patience.delay)
        await patience.pause()


async def _ensure_once(js: JetStreamContext, resource: Resource, *, create: bool) -> None:
    server = await _server_config(js, resource)
    if server is None and not create:
        what = "KV bucket" if resource.kind == "bucket" else "stream"
        raise NotProvisioned.absent(f"{what} {resource.name!r}")
    if server is None:
        await _create(js, resource)
    elif resource.kind == "stream" and (diffs := _differences(resource, server)):
        raise StreamConfigError(
            f"{resource} differs: " + "; ".join(str(d) for d in diffs)
            + " (see `eventwire streams diff`)"
        )  # fmt: skip


async def ensure_declared(
    js: JetStreamContext, resources: Iterable[Resource], *, create: bool
) -> None:
    """Create each absent resource a bus needs on connect (``on_connect``; without
    ``create``: :class:`NotProvisioned`); refuse a stream whose settings differ. A present
    bucket is bound as it is: its ttl is a setting of the bus (``registry_ttl``...), which
    may differ between buses on one root. The others are left to :func:`open_declared`."""
    for resource in resources:
        if resource.on_connect:
            await _ensure(js, resource, create=create)


async def open_declared(
    js: JetStreamContext, config: StreamConfig | KeyValueConfig, *, create: bool
) -> None:
    """A feature's resource on first use: create it if absent (without ``create``:
    :class:`NotProvisioned`, naming it); a present stream whose settings differ is
    refused with :class:`StreamConfigError`, a present bucket is bound as it is."""
    await _ensure(js, Resource(config, on_connect=False), create=create)


@dataclass(frozen=True, slots=True)
class Applied:
    """What :func:`apply_resource` did: ``created`` it, found it ``unchanged``, or
    ``updated`` the ``updated`` settings; ``kept`` are differences the server cannot
    change in place (the resource must be recreated, losing its data, to change them)."""

    resource: Resource
    action: Literal["created", "unchanged", "updated"]
    updated: tuple[Difference, ...] = ()
    kept: tuple[Difference, ...] = ()


async def apply_resource(js: JetStreamContext, resource: Resource) -> Applied:
    """Create the resource, or update what may change in place to the code's settings.

    :class:`StreamConfigError` if the server refuses (e.g. replicas > 1 on one server).
    """
    server = await _server_config(js, resource)
    if server is None:
        await _create(js, resource)
        return Applied(resource, "created")
    diffs = _differences(resource, server)
    updated = tuple(d for d in diffs if d.updatable)
    kept = tuple(d for d in diffs if not d.updatable)
    if not updated:
        return Applied(resource, "unchanged", kept=kept)
    try:
        await js.update_stream(_updated_config(resource, server, updated))
    except nats.js.errors.APIError as exc:
        raise StreamConfigError(
            f"the server refused to update {resource}: {exc.description}"
        ) from exc
    return Applied(resource, "updated", updated, kept)


def _updated_config(
    resource: Resource, server: StreamConfig, diffs: Iterable[Difference]
) -> StreamConfig:
    """The server's config with the declared value of each updatable difference."""
    if isinstance(resource.config, StreamConfig):
        values: dict[str, Any] = {d.field: d.code for d in diffs}
        return dataclasses.replace(server, **values)
    config = resource.config
    ttl = config.ttl or 0.0
    settings: dict[str, dict[str, Any]] = {
        "history": {"max_msgs_per_subject": config.history},
        "replicas": {"num_replicas": config.replicas or 1},
        "direct": {"allow_direct": bool(config.direct)},
        # the duplicate window may not exceed max_age (nats-py creates it so too)
        "ttl": {"max_age": ttl, "duplicate_window": min(ttl, DUPLICATE_WINDOW_SECONDS) or (
            DUPLICATE_WINDOW_SECONDS
        )},
    }  # fmt: skip
    changes = {key: value for d in diffs for key, value in settings[d.field].items()}
    return dataclasses.replace(server, **changes)


async def apply_stream(js: JetStreamContext, wanted: StreamConfig) -> list[Difference]:
    """Create the stream, or update it to the code's settings; returns what changed.
    Settings that cannot change in place: :class:`StreamConfigError` names them, and
    nothing is changed."""
    resource = Resource(wanted)
    diffs = await diff_resource(js, resource)
    fixed = [d for d in diffs or [] if not d.updatable]
    if fixed:
        raise StreamConfigError(
            f"{resource} cannot be changed in place: " + "; ".join(str(d) for d in fixed)
        )
    return list((await apply_resource(js, resource)).updated)
