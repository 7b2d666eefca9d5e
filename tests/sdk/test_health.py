"""Health scores of buses and agents on a real server: the signals that lower them, the
probes' answers, and the agents' health seen from outside (the registry and consumers)."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

import eventwire
from eventwire import (
    Agent,
    CustomEvent,
    Event,
    HealthSettings,
    HealthSignal,
    InvalidArgument,
    RetryPolicy,
    agents_health,
)
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer, Health, Keyring

FAST = RetryPolicy(max_deliveries=2, initial_delay=0.01, jitter=0.0)


def names(health: Health) -> list[str]:
    return [reason.name for reason in health.reasons]


async def test_a_fresh_bus_is_healthy(bus: eventwire.Bus) -> None:
    health = await bus.health()
    assert (health.score, health.status, health.reasons) == (1.0, "ok", [])
    assert health.live
    assert health.ready
    assert health.to_dict()["status"] == "ok"


async def test_failing_handlers_raise_the_error_rate(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)

    async def broken(event: Event) -> None:
        raise RuntimeError("always")

    settings = HealthSettings(min_events=4)
    async with bus.subscribe("custom.broken", broken, durable="broken", retry=FAST) as sub:
        for _ in range(4):
            await bus.publish(CustomEvent("custom.broken", "b"), identity=alice)
        await wait_until(lambda: sub.stats.dead_lettered == 4)
        health = await bus.health(settings)
    [reason] = [r for r in health.reasons if r.name == "error_rate"]
    assert reason.value == 1.0
    assert reason.penalty == 1.0
    assert "8 of 8 handler runs failed" in reason.detail
    assert health.score == pytest.approx(1 - settings.error_rate.weight)
    assert health.status == "degraded"
    assert health.ready  # degraded still gets work


async def test_forged_events_raise_the_refusal_rate(bus: eventwire.Bus) -> None:
    mallory = make_identity("mallory")  # no key of the bus knows her

    async def handle(event: Event) -> None:
        return None

    settings = HealthSettings(min_events=3)
    async with bus.subscribe("custom.r", handle, durable="refusing") as sub:
        for _ in range(3):
            await bus.publish(CustomEvent("custom.r", "r"), identity=mallory)
        await wait_until(lambda: sub.stats.rejected == 3)
        health = await bus.health(settings)
    assert "refusal_rate" in names(health)
    assert health.status == "ok"  # 0.2 at most: one signal alone does not degrade


async def test_consumer_lag_and_ack_pending_from_consumer_info(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        await release.wait()

    settings = HealthSettings(
        consumer_lag=HealthSignal(2, 10, 0.3), ack_pending=HealthSignal(0, 1, 0.1)
    )
    async with bus.subscribe("custom.lag", slow, durable="lagging", batch=1) as sub:
        await bus.publish_many([CustomEvent("custom.lag", "l")] * 20, identity=alice)
        await wait_until(lambda: sub.stats.delivered >= 1)
        health = await bus.health(settings)
        release.set()
        await wait_until(lambda: sub.stats.handled == 20)
    lag = next(r for r in health.reasons if r.name == "consumer_lag")
    assert lag.value >= 10
    assert lag.penalty == 1.0
    assert "ack_pending" in names(health)


async def test_open_breakers_lower_the_score(bus: eventwire.Bus) -> None:
    for _ in range(5):
        bus.breakers.breaker("ghost").record_failure()
    health = await bus.health()
    [reason] = health.reasons
    assert (reason.name, reason.value, reason.detail) == (
        "open_breakers", 1, "open circuits: ghost"
    )  # fmt: skip


async def test_a_serving_agent_is_healthy_and_live_then_not_after_stopping(
    bus: eventwire.Bus,
) -> None:
    agent = Agent("healthy", identity=make_identity("healthy", bus.keyring), tenant=TENANT)
    before = await agent.health()
    assert (before.live, before.ready) == (True, False)  # not serving yet
    assert names(before) == ["state"]
    async with agent.serve(bus):
        health = await agent.health()
        assert (health.status, health.live, health.ready) == ("ok", True, True)
        assert health.subject == f"agent healthy ({agent.instance})"
        assert agent.last_beat is not None
    after = await agent.health()
    assert (after.score, after.status, after.live, after.ready) == (0.0, "failing", False, False)


async def test_a_silent_heartbeat_is_a_reason(bus: eventwire.Bus) -> None:
    agent = Agent("beating", identity=make_identity("beating", bus.keyring), tenant=TENANT)
    settings = HealthSettings(heartbeat_age=HealthSignal(0.0, 1e-6, 0.5))
    async with agent.serve(bus):
        await asyncio.sleep(0.05)
        health = await agent.health(settings)
    [reason] = [r for r in health.reasons if r.name == "heartbeat_age"]
    assert reason.value > 0
    assert "last registry heartbeat" in reason.detail


async def test_a_failed_agent_is_failing_and_not_live(
    nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    alice = make_identity("alice", keyring)
    worker = Agent("worker", identity=make_identity("worker", keyring), tenant=TENANT)
    entered, release = asyncio.Event(), asyncio.Event()

    @worker.on("custom.w")
    async def handle(event: Event) -> None:
        entered.set()
        await release.wait()

    bus = eventwire.connect(nats_server.url, tenant=TENANT, keyring=keyring, root=root)
    seen: list[Health] = []

    async def scenario() -> None:
        async with bus, worker.serve(bus):
            await bus.publish(CustomEvent("custom.w", "w"), identity=alice)
            await entered.wait()
            await bus.connection.close()  # the ack after the handler cannot be sent
            release.set()
            await wait_until(lambda: not worker.serving)
            seen.extend([await worker.health(), await bus.health()])

    with pytest.raises(eventwire.ResourceFailed):
        await scenario()
    health, bus_health = seen
    assert (health.score, health.status, health.live, health.ready) == (
        0.0, "failing", False, False,
    )  # fmt: skip
    assert health.reasons[0].name == "state"
    assert "failed" in health.reasons[0].detail
    assert (bus_health.live, bus_health.ready) == (False, False)


async def test_a_lost_server_makes_the_bus_not_ready_but_live(
    own_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    async with eventwire.connect(
        own_server.url, tenant=TENANT, keyring=keyring, root=root
    ) as connected:
        await own_server.kill()
        await wait_until(lambda: not connected.connection.is_connected)
        health = await connected.health()
        assert (health.live, health.ready) == (True, False)
        assert names(health) == ["connection"]
        assert health.reasons[0].detail == "reconnecting"
        await own_server.restart()
        await wait_until(lambda: connected.connection.is_connected)
        assert (await connected.health()).ready


async def test_a_closed_bus_answers_without_raising(
    nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root) as closing:
        pass
    health = await closing.health()
    assert (health.status, health.live, health.ready) == ("failing", False, False)
    assert "is closed" in health.reasons[0].detail


async def test_agents_health_from_the_registry_and_consumers(bus: eventwire.Bus) -> None:
    one = Agent("one", identity=make_identity("one", bus.keyring), tenant=TENANT)
    two = Agent("two", identity=make_identity("two", bus.keyring), tenant=TENANT)
    async with one.serve(bus), two.serve(bus):
        every = await agents_health(bus)
        only = await agents_health(bus, agent="two")
    assert sorted(h.subject for h in every) == [
        f"agent one ({one.instance})",
        f"agent two ({two.instance})",
    ]
    assert all((h.status, h.live) == ("ok", True) for h in every)
    assert [h.subject for h in only] == [f"agent two ({two.instance})"]


@pytest.mark.parametrize(
    ("threshold", "limit", "weight"), [(5, 5, 0.1), (-1, 2, 0.1), (0, 1, 1.5), (0, 1, -0.1)]
)
def test_a_bad_signal_is_refused(threshold: float, limit: float, weight: float) -> None:
    with pytest.raises(InvalidArgument, match="threshold < limit"):
        HealthSignal(threshold, limit, weight)


async def test_health_sets_the_gauges_scraped_over_http(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    release = asyncio.Event()

    async def slow(event: Event) -> None:
        await release.wait()

    with eventwire.serve_metrics(0) as endpoint:
        async with bus.subscribe("custom.g", slow, durable="gauged", batch=1) as sub:
            await bus.publish_many([CustomEvent("custom.g", "g")] * 5, identity=alice)
            await wait_until(lambda: sub.stats.delivered >= 1)
            for _ in range(5):
                bus.breakers.breaker("gone").record_failure()
            await bus.health()
            await agents_health(bus)
            release.set()
        text = await asyncio.to_thread(_scrape, endpoint.url)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    pending = samples["eventwire_consumer_pending_events", (("consumer", sub.durable),)]
    ack_pending = samples["eventwire_consumer_ack_pending_events", (("consumer", sub.durable),)]
    assert pending + ack_pending == 5
    assert ack_pending >= 1
    assert samples["eventwire_circuit_open", (("target", "gone"),)] == 1
    assert samples["eventwire_registry_agents", ()] == 0
    assert samples["eventwire_health_score", (("subject", f"bus {TENANT}/{bus.root}"),)] < 1


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@pytest.mark.parametrize(
    ("field", "value"), [("window", 0), ("window", True), ("min_events", 0), ("min_events", 1.5)]
)
def test_bad_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=field):
        HealthSettings(**{field: value})  # type: ignore[arg-type]


def test_the_health_of_several_agents_is_the_worst_with_every_reason_named() -> None:
    from eventwire import Health as Answer
    from eventwire import Reason, combine_health

    lag = Reason("consumer_lag", 5000.0, 1000.0, 0.3, "5000 stored", 0.44)
    good = Answer(1.0, "ok", [], live=True, ready=True, subject="agent a (1)")
    lagging = Answer(0.868, "ok", [lag], live=True, ready=True, subject="agent b (2)")
    down = Answer(0.0, "failing", [], live=True, ready=False, subject="agent c (3)")
    both = combine_health([good, lagging], "run (a, b)")
    assert (both.score, both.status, both.live, both.ready) == (0.868, "ok", True, True)
    assert [r.detail for r in both.reasons] == ["agent b (2): 5000 stored"]
    assert both.subject == "run (a, b)"
    worst = combine_health([good, lagging, down], "run (a, b, c)")
    assert (worst.score, worst.status, worst.live, worst.ready) == (0.0, "failing", True, False)
    assert combine_health([good], "run (a)") is good
    with pytest.raises(eventwire.InvalidArgument, match="at least one"):
        combine_health([], "run ()")
