"""Replay protection on a real server: the same signed event again is refused, a JetStream
redelivery is not, and events outside their time window are refused."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import nats

import eventwire
from eventwire import SIGNATURE_HEADER, CustomEvent, Event, RetryPolicy
from eventwire._event import build_claims
from eventwire_security import ReplayWindow, sign_event
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
            headers = {**(stored.headers or {}), "Nats-Msg-Id": "fresh-id"}
            replay = await js.publish(stored.subject or "", stored.data or b"", headers=headers)
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
    windows = {
        "expired": (now - 7200, now - 3600),
        "from-the-future": (now + 600, now + 4200),
        "too-old": (now - 2 * 86400, None),  # signed two days ago, stored now: a replay
    }
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        async with bus.subscribe("custom.>", handler, durable="w") as sub:
            for iat, exp in windows.values():
                claims = build_claims(
                    CustomEvent("custom.old", "old"), alice.principal, root=bus.root
                )
                claims.update(iat=iat, exp=exp)
                if exp is None:
                    del claims["exp"]
                event = sign_event(claims, alice)
                headers = {SIGNATURE_HEADER: event.signature}
                await js.publish(f"{bus.root}.custom.old", event.body, headers=headers)
            await wait_until(lambda: sub.stats.rejected == 3)
    finally:
        await nc.close()
    assert handled == []
    assert bus.security.rejected == {"expired": 1, "from-the-future": 1, "too-old": 1}


async def test_a_backlog_consumed_a_week_late_is_handled_and_a_replay_in_it_refused(
    nats_server: EmbeddedServer, root: str
) -> None:
    """Events wait in the stream until their consumer comes back, however late: they are
    judged by when the stream stored them (the server's clock), not by when they are read.
    A captured event stored again is refused as a replay, whenever it is read."""
    week = 7 * 24 * 3600.0
    window = ReplayWindow(max_age=24 * 3600.0, clock=lambda: time.time() + week)
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, root=root, replay_window=window
    ) as bus:
        alice = make_identity("alice", bus.keyring)
        acks = await bus.publish_many(
            [CustomEvent("custom.backlog", "b", {"n": n}) for n in range(50)], identity=alice
        )
        stored = await bus.jetstream.get_msg(bus.stream, acks[7].seq)
        headers = {**(stored.headers or {}), "Nats-Msg-Id": "replayed"}
        replay = await bus.jetstream.publish(
            stored.subject or "", stored.data or b"", headers=headers
        )
        assert replay.duplicate is not True
        handled: list[int] = []

        async def handler(event: Event) -> None:
            assert isinstance(event.data, dict)
            handled.append(event.data["n"])

        # the consumer comes back "a week later" (its clock runs a week ahead)
        async with bus.subscribe("custom.>", handler, durable="late") as sub:
            await wait_until(lambda: len(handled) == 50 and sub.stats.rejected == 1)
            await asyncio.sleep(0.2)
        assert sorted(handled) == list(range(50))
        assert bus.security.rejected == {"already-seen": 1}


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
            stored = await bus.jetstream.get_msg(bus.stream, ack.seq)
            headers = {**(stored.headers or {}), "Nats-Msg-Id": "again"}
            await bus.jetstream.publish(stored.subject or "", stored.data or b"", headers=headers)
            await wait_until(lambda: sub.stats.duplicates == 1)
    assert calls == [ack.event_id]
