"""Retries with backoff, the dead-letter queue and redrive, on a real server."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    ConfigError,
    CustomEvent,
    DeadLetterError,
    Event,
    RetryPolicy,
    Unprocessable,
)
from eventwire_security import verify_event
from tests.conftest import make_identity, wait_until

FAST = RetryPolicy(max_deliveries=3, initial_delay=0.05, multiplier=2.0, max_delay=1.0, jitter=0)


async def test_poison_event_is_dead_lettered_after_max_deliveries_then_redriven(
    bus: eventwire.Bus,
) -> None:
    alice = make_identity("alice", bus.keyring)
    attempts: list[str] = []
    fixed = False

    async def handler(event: Event) -> None:
        attempts.append(event.id)
        if not fixed:
            raise RuntimeError("model unavailable")

    async with bus.subscribe("custom.job", handler, durable="jobs", retry=FAST) as sub:
        ack = await bus.publish(CustomEvent("custom.job", "job", {"n": 1}), identity=alice)
        await wait_until(lambda: sub.stats.dead_lettered == 1)
        [letter] = await bus.dead_letters.list()
        assert attempts == [ack.event_id] * 3
        assert (letter.reason, letter.deliveries, letter.stream_seq) == ("max-deliveries", 3, 1)
        assert letter.error == "RuntimeError: model unavailable"
        assert letter.subject == f"{bus.root}.custom.job"
        assert letter.consumer == sub.durable
        assert "Nats-Msg-Id" in letter.headers
        # The stored bytes are the original signed event: the signature still verifies.
        signature = letter.headers[SIGNATURE_HEADER]
        assert verify_event(letter.data, signature, bus.keyring).claims["id"] == ack.event_id

        fixed = True
        await bus.dead_letters.redrive(letter.seq)
        await wait_until(lambda: sub.stats.handled == 1)
    assert attempts == [ack.event_id] * 4
    assert await bus.dead_letters.list() == []


async def test_unprocessable_and_terminal_errors_skip_the_retries(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    calls = 0

    async def handler(event: Event) -> None:
        nonlocal calls
        calls += 1
        if event.data == "bad":
            raise Unprocessable("cannot parse the request")
        raise KeyError("missing field")

    async with bus.subscribe(
        "custom.t", handler, durable="t", retry=FAST, terminal=(KeyError,)
    ) as sub:
        await bus.publish(CustomEvent("custom.t", "t", "bad"), identity=alice)
        await bus.publish(CustomEvent("custom.t", "t", "worse"), identity=alice)
        await wait_until(lambda: sub.stats.dead_lettered == 2)
    letters = await bus.dead_letters.list()
    assert calls == 2
    assert [(d.reason, d.deliveries) for d in letters] == [("unprocessable", 1)] * 2
    assert [d.error for d in letters] == [
        "Unprocessable: cannot parse the request",
        "KeyError: 'missing field'",
    ]


async def test_retry_delays_follow_the_policy(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    policy = RetryPolicy(max_deliveries=4, initial_delay=0.2, multiplier=2.0, jitter=0.1)
    seen: list[float] = []

    async def handler(event: Event) -> None:
        seen.append(time.monotonic())
        raise RuntimeError("again")

    async with bus.subscribe("custom.r", handler, durable="r", retry=policy) as sub:
        await bus.publish(CustomEvent("custom.r", "r"), identity=alice)
        await wait_until(lambda: sub.stats.dead_lettered == 1)
    gaps = [later - earlier for earlier, later in itertools.pairwise(seen)]
    expected = [0.2, 0.4, 0.8]
    assert len(gaps) == 3
    for gap, want in zip(gaps, expected, strict=True):
        # jitter ±10%, plus scheduling slack: a band, not a millisecond assertion
        assert want * 0.9 - 0.02 <= gap <= want * 1.1 + 0.25, (gaps, expected)


def test_retry_policy_delays_and_validation() -> None:
    policy = RetryPolicy(initial_delay=1, multiplier=3, max_delay=5, jitter=0)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1, 3, 5, 5]
    assert policy.exhausted(5)
    assert not policy.exhausted(4)
    with pytest.raises(ConfigError, match="max_deliveries"):
        RetryPolicy(max_deliveries=0)
    with pytest.raises(ConfigError, match="jitter"):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ConfigError, match="max_delay"):
        RetryPolicy(initial_delay=10, max_delay=1)
    with pytest.raises(ConfigError):
        policy.delay(0)


async def test_long_handler_is_kept_alive_not_redelivered(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    calls = 0

    async def slow(event: Event) -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(2.5)

    async with bus.subscribe("custom.long", slow, durable="long", ack_wait=1.0) as sub:
        await bus.publish(CustomEvent("custom.long", "long"), identity=alice)
        await wait_until(lambda: sub.stats.handled == 1)
    assert calls == 1


async def test_dead_letter_queue_errors_and_purge(bus: eventwire.Bus) -> None:
    with pytest.raises(DeadLetterError, match="no dead letter 42"):
        await bus.dead_letters.get(42)
    with pytest.raises(DeadLetterError):
        await bus.dead_letters.redrive(42)
    assert await bus.dead_letters.purge() == 0
