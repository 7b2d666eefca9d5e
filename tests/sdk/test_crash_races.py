"""Server crashes at the worst moment, hit on purpose, not by luck: a proxy between the
consumer's bus and the server holds replies (or requests) back for 50 ms, and the server is
SIGKILLed while they are held, then started again on the same port and store.

A redelivery of the same stream sequence is never a replay, whatever its delivery count
says after the crash: nothing the publisher got an ack for is terminated unhandled, and
no handled event comes back as a false "already-seen".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

import eventwire
from eventwire import CustomEvent, Event, Keyring
from eventwire_security import consumer_name
from tests._proxy import FaultProxy
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from eventwire import EmbeddedServer, Identity

ROOT = "race"
HOLD = 0.05  # how long the proxy holds bytes back: the crash happens inside it
OUTAGE = 0.3
BURST = 200
BACKLOG = 3000


class Recorder:
    """A handler that counts calls per event id and notes when each first ran."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.first: dict[str, float] = {}

    async def __call__(self, event: Event) -> None:
        self.calls[event.id] += 1
        self.first.setdefault(event.id, time.monotonic())


async def _crash(server: EmbeddedServer, outage: float = OUTAGE) -> float:
    """SIGKILL the server, start it again on its port and store; when it answers again."""
    await server.kill()
    await asyncio.sleep(outage)
    await server.start()
    return time.monotonic()


@contextlib.asynccontextmanager
async def _buses(
    server: EmbeddedServer, keyring: Keyring
) -> AsyncIterator[tuple[FaultProxy, eventwire.Bus, eventwire.Bus]]:
    """A proxy, a publisher connected to the server itself and a consumer behind the proxy."""
    async with (
        FaultProxy(server.port) as proxy,
        eventwire.connect(server.url, tenant=TENANT, keyring=keyring, root=ROOT) as publisher,
        eventwire.connect(proxy.url, tenant=TENANT, keyring=keyring, root=ROOT) as consumer,
    ):
        yield proxy, publisher, consumer


async def _warm_up(publisher: eventwire.Bus, alice: Identity, recorder: Recorder) -> None:
    ack = await publisher.publish(CustomEvent("custom.warm", "warm"), identity=alice)
    await wait_until(lambda: ack.event_id in recorder.calls)


async def _settled(bus: eventwire.Bus, consumer: str) -> None:
    """Wait until the consumer has nothing pending or unacknowledged: every redelivery,
    also those the server sends after ``ack_wait``, has been dealt with."""
    for _ in range(300):
        info = await bus.jetstream.consumer_info(bus.stream, consumer)
        if info.num_ack_pending == info.num_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"consumer {consumer} did not settle: {info}")


async def test_a_claim_stored_before_a_crash_is_not_a_replay_after_it(
    own_server: EmbeddedServer,
) -> None:
    """The server stores the consumer's replay claim and dies before the claim's ack gets
    out; after the restart the event comes again (with delivery count 1 if the server lost
    its delivery state): the same stream sequence, so it is handled, not refused."""
    keyring = Keyring()
    alice = make_identity("alice", keyring)
    recorder = Recorder()
    async with (
        _buses(own_server, keyring) as (proxy, publisher, consumer),
        consumer.subscribe("custom.>", recorder, durable="c", idempotent=True, ack_wait=2) as sub,
    ):
        await _warm_up(publisher, alice, recorder)
        proxy.delay["replies"] = HOLD
        claimed = proxy.watch(f'"stream":"KV_{ROOT}-seen"'.encode())  # the claim's ack
        ack = await publisher.publish(CustomEvent("custom.pay", "pay", 1), identity=alice)
        await asyncio.wait_for(claimed.wait(), 10)
        back = await _crash(own_server)  # the claim is stored, its ack still in the proxy
        proxy.delay["replies"] = 0.0
        await wait_until(lambda: ack.event_id in recorder.calls, timeout=30)
        await _settled(publisher, consumer_name("c", "custom.>"))
        rejected = consumer.security.rejected
    print(f"\nclaim race: handled {recorder.first[ack.event_id] - back:.2f}s after the restart")
    assert recorder.calls[ack.event_id] == 1
    assert rejected == {}
    assert (sub.stats.rejected, sub.stats.dead_lettered, sub.stats.errors) == (0, 0, 0)


@pytest.mark.parametrize("idempotent", [False, True])
async def test_handled_events_whose_acks_die_with_the_server_are_not_replays(
    own_server: EmbeddedServer, idempotent: bool
) -> None:
    """The server is killed while the consumer's acks (and handled-id records) are held in
    the proxy: those events come back after the restart, as first deliveries or not. Each
    is a redelivery: handled again (or skipped as a duplicate), never refused."""
    keyring = Keyring()
    alice = make_identity("alice", keyring)
    recorder = Recorder()
    async with (
        _buses(own_server, keyring) as (proxy, publisher, consumer),
        consumer.subscribe(
            "custom.>", recorder, durable="b", idempotent=idempotent, batch=32, ack_wait=2
        ) as sub,
    ):
        await _warm_up(publisher, alice, recorder)
        acks = await publisher.publish_many(
            [CustomEvent("custom.burst", "burst", n) for n in range(BURST)], identity=alice
        )
        proxy.delay["requests"] = HOLD  # acks and records wait in the proxy
        await wait_until(lambda: len(recorder.calls) >= BURST // 2, timeout=30)
        await _crash(own_server)
        proxy.delay["requests"] = 0.0
        await wait_until(lambda: {a.event_id for a in acks} <= set(recorder.calls), timeout=30)
        await _settled(publisher, consumer_name("b", "custom.>"))
        rejected = consumer.security.rejected
    again = sum(calls - 1 for calls in recorder.calls.values())
    print(
        f"\nidempotent={idempotent}: {sub.stats.delivered - BURST - 1} came back, "
        f"handled again {again}, skipped as duplicates {sub.stats.duplicates}"
    )
    assert sub.stats.delivered > BURST + 1  # the crash did send handled events back
    assert rejected == {}
    assert (sub.stats.rejected, sub.stats.dead_lettered, sub.stats.errors) == (0, 0, 0)


async def test_a_consumer_goes_on_as_soon_as_the_server_is_back(
    own_server: EmbeddedServer,
) -> None:
    """A backlog is being consumed (claims and records in flight) when the server is
    killed; once it answers again the consumer goes on at once (the time from the restart
    to the next handled event is printed), and every event is handled, none refused."""
    keyring = Keyring()
    alice = make_identity("alice", keyring)
    recorder = Recorder()
    async with (
        eventwire.connect(own_server.url, tenant=TENANT, keyring=keyring, root=ROOT) as publisher,
        eventwire.connect(own_server.url, tenant=TENANT, keyring=keyring, root=ROOT) as consumer,
    ):
        acks = await publisher.publish_many(
            [CustomEvent("custom.backlog", "backlog", n) for n in range(BACKLOG)], identity=alice
        )
        async with consumer.subscribe("custom.>", recorder, durable="p", idempotent=True) as sub:
            await wait_until(lambda: len(recorder.calls) >= BACKLOG // 4, timeout=30)
            back = await _crash(own_server, outage=1.0)
            await wait_until(lambda: max(recorder.first.values()) > back, timeout=30)
            handled = min(t for t in recorder.first.values() if t > back)
            await wait_until(lambda: {a.event_id for a in acks} <= set(recorder.calls), 60)
        rejected = consumer.security.rejected
    print(f"\nserver back -> next event handled: {handled - back:.2f}s")
    assert rejected == {}
    assert (sub.stats.rejected, sub.stats.dead_lettered, sub.stats.errors) == (0, 0, 0)
