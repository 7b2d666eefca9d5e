"""Replay protection on a real server: the same signed event again is refused, a JetStream
redelivery is not, and events outside their time window are refused."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import nats

import eventwire
from eventwire import CustomEvent, Event, RetryPolicy
from eventwire._event import build_claims
from eventwire_security import sign_claims
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer


async def test_replayed_event_is_refused_but_redelivery_is_processed(
    bus: eventwire.Bus, nats_server: EmbeddedServer
) -> None:
    alice = make_identity("alice", bus.keyring)
    seen: list[str] = []
    failed_once = False

    async def handler(event: Event) -> None:
        nonlocal failed_once
        if not failed_once:
            failed_once = True
            raise RuntimeError("transient")  # forces a JetStream redelivery
        seen.append(event.id)

    retry = RetryPolicy(initial_delay=0.05, jitter=0)
    async with bus.subscribe("custom.>", handler, durable="r", retry=retry) as sub:
        ack = await bus.publish(CustomEvent("custom.pay", "pay", 100), identity=alice)
        await wait_until(lambda: seen == [ack.event_id])
        # The attacker re-sends the captured bytes under a fresh message id, so the
        # stream's de-duplication does not catch it.
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            stored = await js.get_msg(bus.stream, ack.seq)
            replay = await js.publish(
                stored.subject or "", stored.data or b"", headers={"Nats-Msg-Id": "fresh-id"}
            )
        finally:
            await nc.close()
        assert replay.duplicate is not True
        await wait_until(lambda: sub.stats.rejected == 1)
        await asyncio.sleep(0.2)
    assert seen == [ack.event_id]
    assert bus.security.rejected == {"already-seen": 1}


async def test_events_outside_their_time_window_are_refused(
    bus: eventwire.Bus, nats_server: EmbeddedServer
) -> None:
    alice = make_identity("alice", bus.keyring)
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        handled.append(event)

    now = int(time.time())
    windows = {"expired": (now - 7200, now - 3600), "from-the-future": (now + 600, now + 4200)}
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        async with bus.subscribe("custom.>", handler, durable="w") as sub:
            for iat, exp in windows.values():
                claims = build_claims(CustomEvent("custom.old", "old"), alice.principal)
                claims.update(iat=iat, exp=exp)
                await js.publish(f"{bus.root}.custom.old", sign_claims(claims, alice))
            await wait_until(lambda: sub.stats.rejected == 2)
    finally:
        await nc.close()
    assert handled == []
    assert bus.security.rejected == {"expired": 1, "from-the-future": 1}


async def test_replay_check_can_be_turned_off_to_reread_history(
    nats_server: EmbeddedServer, root: str
) -> None:
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, root=root, replay_window=None
    ) as bus:
        alice = make_identity("alice", bus.keyring)
        await bus.publish(CustomEvent("custom.h", "h"), identity=alice)
        first: list[str] = []
        second: list[str] = []

        async def one(event: Event) -> None:
            first.append(event.id)

        async def two(event: Event) -> None:
            second.append(event.id)

        async with bus.subscribe("custom.>", one, durable="a"):
            await wait_until(lambda: len(first) == 1)
        async with bus.subscribe("custom.>", two, durable="b"):
            await wait_until(lambda: len(second) == 1)
    assert first == second


async def test_without_replay_protection_the_idempotent_helper_skips_a_resent_event(
    nats_server: EmbeddedServer, root: str
) -> None:
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, root=root, replay_window=None
    ) as bus:
        alice = make_identity("alice", bus.keyring)
        calls: list[str] = []

        async def handler(event: Event) -> None:
            calls.append(event.id)

        async with bus.subscribe("custom.>", handler, durable="i", idempotent=True) as sub:
            ack = await bus.publish(CustomEvent("custom.i", "i"), identity=alice)
            await wait_until(lambda: calls == [ack.event_id])
            stored = await bus._js_or_raise().get_msg(bus.stream, ack.seq)
            await bus._js_or_raise().publish(
                stored.subject or "", stored.data or b"", headers={"Nats-Msg-Id": "again"}
            )
            await wait_until(lambda: sub.stats.duplicates == 1)
    assert calls == [ack.event_id]
