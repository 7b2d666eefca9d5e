"""The declared topology (every stream and KV bucket) on a real server: the bus provisions
it, a bound bus requires it, and diff/apply compare and fix every resource."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import nats
import nats.js.errors
import pytest
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

import eventwire
from eventwire import EventCache, NotProvisioned, Orchestrator, StepWorker, StreamConfigError
from eventwire._streams import (
    Resource,
    apply_resource,
    audit_stream_config,
    declared,
    diff_resource,
    dlq_stream_config,
    events_stream_config,
    keyring_config,
    wftimers_stream_config,
)
from eventwire_security import Keyring, ReplayWindow
from tests.conftest import TENANT, make_identity

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.js import JetStreamContext

    from eventwire import EmbeddedServer

SETTINGS: dict[str, Any] = {"registry_ttl": 2.0, "replay_horizon": 90.0, "dedupe_window": 60.0}
ROLES = ["events", "dead letters", "audit", "registry", "keyring", "replay claims", "handled ids"]
FEATURES = ["wf timers", "wf steps", "projections", "snapshots", "cache"]


@pytest.fixture
async def js(nats_server: EmbeddedServer) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


def _bus(server: EmbeddedServer, root: str, **options: Any) -> eventwire.Bus:
    return eventwire.connect(server.url, tenant=TENANT, root=root, **options)


async def _tamper(js: JetStreamContext, stream: str, **changes: Any) -> None:
    config = (await js.stream_info(stream)).config
    await js.update_stream(dataclasses.replace(config, **changes))


def test_the_declaration() -> None:
    resources = declared("ew", replicas=3, partitions=4, **SETTINGS)
    assert [r.role for r in resources] == ROLES + FEATURES
    assert [r.on_connect for r in resources] == [True] * 7 + [False] * 5
    assert [str(r) for r in resources] == [
        "stream 'ew-events'", "stream 'ew-dlq'", "stream 'ew-audit'", "bucket 'ew-agents'",
        "bucket 'ew-keyring'", "bucket 'ew-seen'", "bucket 'ew-processed'",
        "stream 'ew-wftimers'", "bucket 'ew-wfsteps'", "bucket 'ew-projections'",
        "bucket 'ew-snapshots'", "bucket 'ew-cache'",
    ]  # fmt: skip
    assert [r.stream for r in resources][3:] == [
        "KV_ew-agents", "KV_ew-keyring", "KV_ew-seen", "KV_ew-processed", "ew-wftimers",
        "KV_ew-wfsteps", "KV_ew-projections", "KV_ew-snapshots", "KV_ew-cache",
    ]  # fmt: skip
    timers = resources[7].config
    assert isinstance(timers, StreamConfig)
    assert (timers.subjects, timers.allow_msg_schedules, timers.max_msgs_per_subject) == (
        ["ew.wftimer.>"], True, 1
    )  # fmt: skip
    assert all(
        getattr(r.config, "num_replicas", None) == 3 or getattr(r.config, "replicas", None) == 3
        for r in resources
    )
    assert "ew.keyed.>" in (resources[0].config.subjects or [])  # type: ignore[union-attr]
    without_replay = declared("ew", **{**SETTINGS, "replay_horizon": None})
    assert "replay claims" not in [r.role for r in without_replay]


async def test_a_bus_provisions_every_declared_resource(
    nats_server: EmbeddedServer, root: str, js: JetStreamContext
) -> None:
    window = ReplayWindow(max_age=60.0, skew=15.0)  # horizon 90 s
    async with _bus(nats_server, root, registry_ttl=2.0, dedupe_window=60.0, replay_window=window):
        pass
    for resource in declared(root, **SETTINGS):
        # the features' resources are made on first use, not on connect
        expected = [] if resource.on_connect else None
        assert await diff_resource(js, resource) == expected, resource


async def test_a_bus_without_replay_protection_makes_no_claims_bucket(
    nats_server: EmbeddedServer, root: str, js: JetStreamContext
) -> None:
    async with _bus(nats_server, root, replay_window=None):
        pass
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.stream_info(f"KV_{root}-seen")
    await js.stream_info(f"KV_{root}-keyring")


async def test_a_bound_bus_names_what_is_missing_and_creates_nothing(
    nats_server: EmbeddedServer, root: str, js: JetStreamContext
) -> None:
    async with _bus(nats_server, root):
        pass
    await js.delete_key_value(f"{root}-keyring")
    with pytest.raises(NotProvisioned, match=f"KV bucket '{root}-keyring' does not exist"):
        async with _bus(nats_server, root, provision=False):
            pass
    with pytest.raises(nats.js.errors.NotFoundError):
        await js.stream_info(f"KV_{root}-keyring")
    async with _bus(nats_server, root):  # an admin's bus creates it again
        pass
    async with _bus(nats_server, root, provision=False):
        pass


async def test_diff_and_apply_create_every_resource(root: str, js: JetStreamContext) -> None:
    resources = declared(root, **SETTINGS)
    for resource in resources:
        assert await diff_resource(js, resource) is None, resource
    applied = [await apply_resource(js, resource) for resource in resources]
    assert [a.action for a in applied] == ["created"] * 12
    for resource in resources:
        assert await diff_resource(js, resource) == [], resource
    again = [await apply_resource(js, resource) for resource in resources]
    assert [(a.action, a.updated, a.kept) for a in again] == [("unchanged", (), ())] * 12
    timers = (await js.stream_info(f"{root}-wftimers")).config
    assert (timers.allow_msg_schedules, timers.max_msgs_per_subject) == (True, 1)


# (role, the JetStream setting changed behind the code's back, the setting diff names)
DRIFTS: list[tuple[str, dict[str, Any], str]] = [
    ("events", {"duplicate_window": 5.0}, "duplicate_window"),
    ("dead letters", {"discard": DiscardPolicy.NEW}, "discard"),
    ("audit", {"duplicate_window": 7.0}, "duplicate_window"),
    ("registry", {"max_age": 30.0}, "ttl"),
    ("keyring", {"max_msgs_per_subject": 3}, "history"),
    ("replay claims", {"max_age": 300.0}, "ttl"),
    ("handled ids", {"allow_direct": False}, "direct"),
    ("wf timers", {"max_msgs_per_subject": 5}, "max_msgs_per_subject"),
    ("wf steps", {"max_age": 300.0}, "ttl"),
    ("projections", {"max_msgs_per_subject": 4}, "history"),
    ("snapshots", {"max_msgs_per_subject": 2}, "history"),
    ("cache", {"max_age": 600.0}, "ttl"),
]


@pytest.mark.parametrize(("role", "changes", "field"), DRIFTS, ids=[d[0] for d in DRIFTS])
async def test_diff_names_the_drift_and_apply_fixes_it(
    root: str, js: JetStreamContext, role: str, changes: dict[str, Any], field: str
) -> None:
    resources = declared(root, **SETTINGS)
    for resource in resources:
        await apply_resource(js, resource)
    (resource,) = [r for r in resources if r.role == role]
    await _tamper(js, resource.stream, **changes)
    (drift,) = await diff_resource(js, resource) or []
    assert (drift.resource, drift.field, drift.updatable) == (resource.name, field, True)
    applied = await apply_resource(js, resource)
    assert (applied.action, [d.field for d in applied.updated], applied.kept) == (
        "updated", [field], ()
    )  # fmt: skip
    assert await diff_resource(js, resource) == []
    others = [r for r in resources if r is not resource]
    assert [await diff_resource(js, r) for r in others] == [[]] * 11


async def test_a_bucket_ttl_change_keeps_the_duplicate_window_inside_it(
    root: str, js: JetStreamContext
) -> None:
    resource = Resource(keyring_config(root), "keyring")
    await apply_resource(js, resource)  # no ttl: a 120 s duplicate window
    shorter = dataclasses.replace(keyring_config(root), ttl=10.0)
    applied = await apply_resource(js, Resource(shorter))
    assert [str(d) for d in applied.updated] == ["ttl: server has 0.0, code wants 10.0"]
    config = (await js.stream_info(f"KV_{root}-keyring")).config
    assert (config.max_age, config.duplicate_window) == (10.0, 10.0)


async def test_what_cannot_change_in_place_is_kept_and_named(
    root: str, js: JetStreamContext
) -> None:
    events = events_stream_config(root)
    memory = dataclasses.replace(events, storage=StorageType.MEMORY, discard=DiscardPolicy.NEW)
    await js.add_stream(memory)
    keyring = keyring_config(root)
    await js.create_key_value(dataclasses.replace(keyring, storage=StorageType.MEMORY))
    dlq = dlq_stream_config(root)
    await js.add_stream(dataclasses.replace(dlq, deny_delete=True))  # cannot be lifted
    on_events = await apply_resource(js, Resource(events))
    assert [str(d) for d in on_events.kept] == ["storage: server has 'memory', code wants 'file'"]
    assert [d.field for d in on_events.updated] == ["discard"]  # updated all the same
    on_keyring = await apply_resource(js, Resource(keyring))
    assert on_keyring.action == "unchanged"
    assert [(d.field, d.server, d.code) for d in on_keyring.kept] == [
        ("storage", "memory", StorageType.FILE)
    ]
    on_dlq = await apply_resource(js, Resource(dlq))
    assert [(d.field, d.updatable) for d in on_dlq.kept] == [("deny_delete", False)]
    assert (await js.stream_info(f"{root}-events")).config.storage == StorageType.MEMORY
    assert (await js.stream_info(f"KV_{root}-keyring")).config.storage == StorageType.MEMORY


async def test_apply_switches_the_audit_protection_on_but_never_off(
    root: str, js: JetStreamContext
) -> None:
    audit = audit_stream_config(root)
    await js.add_stream(dataclasses.replace(audit, deny_delete=False, deny_purge=False))
    diffs = await diff_resource(js, Resource(audit)) or []
    assert [(d.field, d.server, d.code, d.updatable) for d in diffs] == [
        ("deny_delete", False, True, True),
        ("deny_purge", False, True, True),
    ]
    applied = await apply_resource(js, Resource(audit))
    assert applied.action == "updated"
    config = (await js.stream_info(f"{root}-audit")).config
    assert (config.deny_delete, config.deny_purge) == (True, True)
    lax = Resource(dataclasses.replace(audit, deny_delete=False))
    (kept,) = (await apply_resource(js, lax)).kept
    assert (kept.field, kept.updatable) == ("deny_delete", False)
    assert (await js.stream_info(f"{root}-audit")).config.deny_delete is True


async def test_a_bound_bus_requires_the_features_resources_until_applied(
    nats_server: EmbeddedServer, root: str, js: JetStreamContext, keyring: Keyring
) -> None:
    """Workflows, the step worker and the cache make their resources on first use; bound
    only, each names what is missing and creates nothing, and works once they are applied
    (as `eventwire streams apply` does)."""
    identity = make_identity("orchestrator", keyring)
    async with _bus(nats_server, root, keyring=keyring):  # the core resources
        pass
    async with _bus(nats_server, root, keyring=keyring, provision=False) as bound:
        with pytest.raises(NotProvisioned, match=f"stream '{root}-wftimers' does not exist"):
            async with Orchestrator(bound, identity, []):
                pass
        with pytest.raises(NotProvisioned, match=f"KV bucket '{root}-wfsteps' does not exist"):
            await StepWorker(bound)._kv()
        with pytest.raises(NotProvisioned, match=f"KV bucket '{root}-cache' does not exist"):
            async with EventCache(bound, "custom.>"):
                pass
    resources = declared(root, **SETTINGS)
    features = [r for r in resources if not r.on_connect]
    assert [await diff_resource(js, r) for r in features] == [None] * 5  # nothing created
    for resource in resources:
        await apply_resource(js, resource)
    async with _bus(nats_server, root, keyring=keyring, provision=False) as bound:
        timers = Orchestrator(bound, identity, []).timers
        await timers.schedule("w1", 1, 4_000_000_000.0)  # binds, then schedules
        assert (await js.stream_info(f"{root}-wftimers")).state.messages == 1
        await StepWorker(bound)._kv()
        async with EventCache(bound, "custom.>") as cache:
            assert await cache.latest("custom.none") is None


async def test_a_provisioning_orchestrator_makes_the_declared_timers_stream(
    nats_server: EmbeddedServer, root: str, js: JetStreamContext, keyring: Keyring
) -> None:
    identity = make_identity("orchestrator", keyring)
    async with _bus(nats_server, root, keyring=keyring) as bus, Orchestrator(bus, identity, []):
        pass
    timers = Resource(wftimers_stream_config(root))
    assert await diff_resource(js, timers) == []


async def test_a_timers_stream_without_schedules_is_named_and_fixed(
    nats_server: EmbeddedServer, root: str, js: JetStreamContext, keyring: Keyring
) -> None:
    wanted = wftimers_stream_config(root)
    await js.add_stream(
        dataclasses.replace(wanted, allow_msg_schedules=None, allow_rollup_hdrs=False)
    )
    resource = Resource(wanted, "wf timers", on_connect=False)
    diffs = await diff_resource(js, resource) or []
    assert [(d.field, d.server, d.code, d.updatable) for d in diffs] == [
        ("allow_rollup_hdrs", False, True, True),
        ("allow_msg_schedules", None, True, True),
    ]
    async with _bus(nats_server, root, keyring=keyring) as bus:
        with pytest.raises(StreamConfigError, match="allow_msg_schedules: server has None"):
            await Orchestrator(bus, make_identity("orchestrator", keyring), []).timers.ensure()
    applied = await apply_resource(js, resource)
    assert [d.field for d in applied.updated] == ["allow_rollup_hdrs", "allow_msg_schedules"]
    assert await diff_resource(js, resource) == []
