"""Publish and subscribe on a real server: wildcards, acks, redelivery, order, durability."""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import nats
import pytest
from nats.js.api import StreamConfig

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    CustomEvent,
    Event,
    EventTooLarge,
    InvalidEvent,
    KnowledgeShared,
    NotRunning,
    PublishFailed,
    StreamConfigError,
    TaskCompleted,
    WrongTenant,
)
from eventwire_security import message_id
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer


class Recorder:
    """A handler that records subjects and can be told to fail the first N calls."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[Event] = []
        self.calls = 0
        self.fail_first = fail_first

    async def __call__(self, event: Event) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError(f"failure {self.calls}")
        self.events.append(event)

    @property
    def subjects(self) -> list[str]:
        return [event.subject for event in self.events]


async def test_wildcard_patterns_select_the_right_events(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    one, rest, done = Recorder(), Recorder(), Recorder()
    async with (
        bus.subscribe("knowledge.*", one, durable="one"),
        bus.subscribe("knowledge.>", rest, durable="rest"),
        bus.subscribe("task.*.completed", done, durable="done"),
    ):
        await bus.publish(KnowledgeShared(topic="ml", content="a"), identity=alice)
        await bus.publish(KnowledgeShared(topic="ml.vision", content="b"), identity=alice)
        await bus.publish(TaskCompleted(task_type="sum", task_id="1"), identity=alice)
        await wait_until(lambda: len(rest.events) == 2 and len(done.events) == 1)
        await asyncio.sleep(0.2)  # let anything unexpected arrive too
    assert one.subjects == ["knowledge.ml"]
    assert rest.subjects == ["knowledge.ml", "knowledge.ml.vision"]
    assert done.subjects == ["task.sum.completed"]


async def test_publish_ack_and_enrichment(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    seen = Recorder()
    async with bus.subscribe("custom.>", seen, durable="r"):
        first = await bus.publish(CustomEvent("custom.a", "com.acme.a", {"n": 1}), identity=alice)
        second = await bus.publish(
            CustomEvent("custom.a", "com.acme.a", {"n": 2}),
            identity=alice,
            correlation_id="corr-1",
            causation_id=first.event_id,
            partition_key="k1",
        )
        await wait_until(lambda: len(seen.events) == 2)
    assert (first.stream, first.seq, first.duplicate) == (bus.stream, 1, False)
    assert second.seq == 2
    a, b = seen.events
    assert (a.id, a.correlationid, a.causationid) == (first.event_id, first.event_id, None)
    assert (b.correlationid, b.causationid, b.partitionkey) == ("corr-1", first.event_id, "k1")
    assert a.source == f"{TENANT}/alice"
    assert a.tenant == TENANT
    assert a.signer_kid == alice.kid
    assert a.data == {"n": 1}
    assert a.root == bus.root
    assert a.exp is None  # no ttl: the event never expires


async def test_message_id_is_derived_from_the_signed_bytes(
    bus: eventwire.Bus, nats_server: EmbeddedServer
) -> None:
    alice = make_identity("alice", bus.keyring)
    ack = await bus.publish(KnowledgeShared(topic="ml", content="x"), identity=alice)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        stored = await js.get_msg(bus.stream, ack.seq)
        assert stored.data is not None
        assert stored.headers is not None
        signature = stored.headers[SIGNATURE_HEADER]
        assert stored.headers["Nats-Msg-Id"] == message_id(signature)
        assert stored.headers["content-type"] == "application/cloudevents+json"
        # Re-sending the same signed bytes (a retry, or a replay) is dropped by the stream.
        again = await js.publish(stored.subject or "", stored.data, headers=dict(stored.headers))
    finally:
        await nc.close()
    assert again.duplicate is True
    assert again.seq == ack.seq


async def test_failed_handler_is_retried_then_acked(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    flaky = Recorder(fail_first=1)
    async with bus.subscribe("knowledge.>", flaky, durable="flaky") as sub:
        await bus.publish(KnowledgeShared(topic="ml", content="x"), identity=alice)
        await wait_until(lambda: len(flaky.events) == 1)
    assert flaky.calls == 2
    assert (sub.stats.failed, sub.stats.handled) == (1, 1)


async def test_in_order_delivery_with_one_in_flight(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    items = [CustomEvent("custom.seq", "seq", {"i": i}) for i in range(300)]
    seen = Recorder()
    async with bus.subscribe("custom.seq", seen, durable="ordered", batch=32):
        acks = await bus.publish_many(items, identity=alice, window=64)
        await wait_until(lambda: len(seen.events) == 300)
    assert [ack.seq for ack in acks] == list(range(1, 301))
    assert [e.data for e in seen.events] == [{"i": i} for i in range(300)]


async def test_max_in_flight_bounds_concurrency(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    running = peak = handled = 0
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        nonlocal running, peak, handled
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        handled += 1

    items = [CustomEvent("custom.work", "w", i) for i in range(10)]
    async with bus.subscribe("custom.work", slow, durable="pool", max_in_flight=3):
        await bus.publish_many(items, identity=alice)
        await wait_until(lambda: running == 3)
        await asyncio.sleep(0.2)  # nobody else may start while three are running
        assert running == 3
        release.set()
        await wait_until(lambda: handled == 10)
    assert peak == 3


async def test_durable_resumes_where_it_stopped(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    first, second = Recorder(), Recorder()
    async with bus.subscribe("custom.d", first, durable="resume"):
        await bus.publish(CustomEvent("custom.d", "d", 1), identity=alice)
        await wait_until(lambda: len(first.events) == 1)
    await bus.publish(CustomEvent("custom.d", "d", 2), identity=alice)
    async with bus.subscribe("custom.d", second, durable="resume"):
        await wait_until(lambda: len(second.events) == 1)
        await asyncio.sleep(0.2)
    assert [e.data for e in second.events] == [2]


async def test_instances_sharing_a_durable_split_the_work(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    a, b = Recorder(), Recorder()
    async with (
        bus.subscribe("custom.s", a, durable="shared", batch=1),
        bus.subscribe("custom.s", b, durable="shared", batch=1),
    ):
        await bus.publish_many([CustomEvent("custom.s", "s", i) for i in range(50)], identity=alice)
        await wait_until(lambda: len(a.events) + len(b.events) == 50)
        await asyncio.sleep(0.2)
    assert sorted(e.data for e in a.events + b.events) == list(range(50))  # type: ignore[type-var]


async def test_graceful_stop_finishes_the_handler_in_flight(
    bus: eventwire.Bus, nats_server: EmbeddedServer
) -> None:
    alice = make_identity("alice", bus.keyring)
    started, finished = asyncio.Event(), asyncio.Event()

    async def slow(event: Event) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    sub = bus.subscribe("custom.g", slow, durable="graceful")
    await sub.start()
    await bus.publish(CustomEvent("custom.g", "g"), identity=alice)
    await asyncio.wait_for(started.wait(), 5)
    await sub.stop()
    assert finished.is_set()
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().consumer_info(bus.stream, sub.durable)
    finally:
        await nc.close()
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def test_bad_inputs_are_typed_errors(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)

    async def handler(event: Event) -> None:
        return None

    with pytest.raises(InvalidEvent) as bad_pattern:
        bus.subscribe("knowledge.>.x", handler, durable="x")
    assert bad_pattern.value.field == "pattern"
    with pytest.raises(InvalidEvent) as bad_durable:
        bus.subscribe("knowledge.>", handler, durable="no.dots")
    assert bad_durable.value.field == "durable"
    with pytest.raises(EventTooLarge) as too_large:
        await bus.publish(CustomEvent("custom.big", "big", "x" * 2_000_000), identity=alice)
    assert too_large.value.size > too_large.value.limit
    stranger = make_identity("mallory", bus.keyring, tenant="other")
    with pytest.raises(WrongTenant):
        await bus.publish(KnowledgeShared(topic="ml", content="x"), identity=stranger)


async def test_publish_without_a_stream_is_publish_failed(
    nats_server: EmbeddedServer, root: str
) -> None:
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root, leader_wait=1) as bus:
        alice = make_identity("alice", bus.keyring)
        await bus.jetstream.delete_stream(bus.stream)
        with pytest.raises(PublishFailed) as failed:
            await bus.publish(KnowledgeShared(topic="ml", content="x"), identity=alice, timeout=2)
    assert failed.value.subject == "knowledge.ml"
    assert "no responders" in str(failed.value)


async def test_stream_drift_is_a_readable_error(nats_server: EmbeddedServer, root: str) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(
            StreamConfig(name=f"{root}-events", subjects=[f"{root}.knowledge.>"])
        )
    finally:
        await nc.close()
    with pytest.raises(StreamConfigError, match="subjects: server has"):
        async with eventwire.connect(nats_server.url, root=root):
            pass


async def test_operations_on_a_closed_bus_raise_not_running(nats_server: EmbeddedServer) -> None:
    bus = eventwire.connect(nats_server.url)
    alice = make_identity("alice", bus.keyring, tenant="default")
    with pytest.raises(NotRunning):
        await bus.publish(KnowledgeShared(topic="ml", content="x"), identity=alice)


@pytest.mark.parametrize("field", ["registry_ttl", "dedupe_window"])
@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True, "5"])
def test_bad_durations_are_refused_before_connecting(field: str, value: object) -> None:
    with pytest.raises(eventwire.InvalidArgument) as caught:
        eventwire.connect("nats://127.0.0.1:1", tenant="acme", **{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field
