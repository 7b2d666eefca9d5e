"""Agents on a real server: handlers, default subscriptions, lifecycle, registry, stop."""

from __future__ import annotations

import asyncio
import time

import pytest

import eventwire
from eventwire import (
    Agent,
    AgentLifecycle,
    CustomEvent,
    Event,
    HelpRequested,
    InvalidEvent,
    KnowledgeShared,
    NotRunning,
    SealingKey,
    TaskCompleted,
    WrongTenant,
)
from eventwire._registry import announce
from tests.conftest import TENANT, make_identity, wait_until


def agent(name: str, bus: eventwire.Bus, capabilities: tuple[str, ...] = ()) -> Agent:
    return Agent(name, capabilities=capabilities, identity=make_identity(name, bus.keyring))


async def test_default_subscriptions_and_fallback(bus: eventwire.Bus) -> None:
    worker = agent("worker", bus, ("summarize",))
    boss = agent("boss", bus)
    handled: list[str] = []
    fell_back: list[str] = []

    @worker.on("capability.summarize.help")
    async def on_help(event: Event) -> None:
        handled.append(event.subject)

    @worker.fallback
    async def other(event: Event) -> None:
        if not event.subject.startswith("agent.lifecycle"):
            fell_back.append(event.subject)

    assert worker.patterns() == [
        "capability.summarize.help",
        "system.coordination.*",
        "capability.summarize.*",
        "agent.lifecycle.*",
    ]
    async with worker.serve(bus), boss.serve(bus):
        await boss.publish(HelpRequested(capability="summarize", question="q"))
        await boss.publish(CustomEvent("capability.summarize.cancel", "cancel"))
        await boss.publish(CustomEvent("system.coordination.pause", "pause"))
        await boss.publish(KnowledgeShared(topic="ml", content="not subscribed"))
        await wait_until(lambda: len(fell_back) == 2 and len(handled) == 1)
        await asyncio.sleep(0.2)
    assert handled == ["capability.summarize.help"]
    assert sorted(fell_back) == ["capability.summarize.cancel", "system.coordination.pause"]


async def test_unhandled_default_events_are_counted(bus: eventwire.Bus) -> None:
    idle = agent("idle", bus)
    sender = agent("sender", bus)
    async with idle.serve(bus), sender.serve(bus):
        await sender.publish(CustomEvent("system.coordination.go", "go"))
        # idle sees: its own and sender's "started", and the coordination event
        await wait_until(lambda: idle.unhandled >= 3)


async def test_lifecycle_events_are_published(bus: eventwire.Bus) -> None:
    watcher = agent("watcher", bus)
    phases: list[tuple[str, str]] = []

    @watcher.on("agent.lifecycle.*")
    async def on_lifecycle(event: Event) -> None:
        body = event.parse(AgentLifecycle)
        phases.append((body.agent, body.phase))

    async with watcher.serve(bus):
        async with agent("visitor", bus, ("translate",)).serve(bus):
            await wait_until(lambda: ("visitor", "started") in phases)
        await wait_until(lambda: ("visitor", "stopped") in phases)
    assert phases.index(("visitor", "started")) < phases.index(("visitor", "stopped"))


async def test_registry_lists_live_agents_by_capability(bus: eventwire.Bus) -> None:
    a = agent("summarizer", bus, ("summarize", "translate"))
    b = agent("searcher", bus, ("search",))
    async with a.serve(bus), b.serve(bus):
        everyone = await bus.agents()
        summarizers = await bus.agents(capability="summarize")
        await asyncio.sleep(bus.registry_ttl * 1.5)  # heartbeats keep live agents listed
        later = await bus.agents()
    assert [(i.name, i.capabilities) for i in everyone] == [
        ("searcher", ("search",)),
        ("summarizer", ("summarize", "translate")),
    ]
    assert [i.name for i in summarizers] == ["summarizer"]
    assert [i.name for i in later] == ["searcher", "summarizer"]
    assert later[1].last_seen > everyone[1].last_seen
    assert await bus.agents() == []  # stopped agents withdraw at once


async def test_a_dead_agent_expires_from_the_registry(bus: eventwire.Bus) -> None:
    ghost = make_identity("ghost", bus.keyring)
    # What a crashed agent leaves behind: one announcement, and no more heartbeats.
    await announce(
        await bus.registry(), ghost, instance="i1", capabilities=("x",), started_at=time.time(),
        sealing_key=SealingKey.derive(ghost).public,
    )  # fmt: skip
    assert [i.name for i in await bus.agents()] == ["ghost"]
    await asyncio.sleep(bus.registry_ttl + 0.5)
    assert await bus.agents() == []


async def test_forged_registry_entry_is_ignored(bus: eventwire.Bus) -> None:
    intruder = make_identity("intruder")  # not in the keyring
    await announce(
        await bus.registry(), intruder, instance="i1", capabilities=("x",), started_at=0.0,
        sealing_key=SealingKey.derive(intruder).public,
    )  # fmt: skip
    assert await bus.agents() == []
    assert bus.security.rejected == {"unknown-key": 1}


async def test_events_published_in_a_handler_carry_causation(bus: eventwire.Bus) -> None:
    worker = agent("worker", bus, ("summarize",))
    boss = agent("boss", bus)
    results: list[Event] = []

    @worker.on("capability.summarize.help")
    async def on_help(event: Event) -> None:
        await worker.publish(TaskCompleted(task_type="summarize", task_id=event.id))

    @boss.on("task.*.completed")
    async def on_done(event: Event) -> None:
        results.append(event)

    async with worker.serve(bus), boss.serve(bus):
        ack = await boss.publish(HelpRequested(capability="summarize", question="q"))
        await wait_until(lambda: len(results) == 1)
    assert results[0].causationid == ack.event_id
    assert results[0].correlationid == ack.event_id
    assert results[0].source == f"{TENANT}/worker"


async def test_stop_finishes_in_flight_handlers(bus: eventwire.Bus) -> None:
    worker = agent("worker", bus)
    boss = agent("boss", bus)
    started, finished = asyncio.Event(), asyncio.Event()

    @worker.on("custom.slow")
    async def slow(event: Event) -> None:
        started.set()
        await asyncio.sleep(0.3)
        finished.set()

    async with boss.serve(bus):
        runner = asyncio.create_task(worker.run(bus))
        await wait_until(lambda: worker.serving)
        await boss.publish(CustomEvent("custom.slow", "slow"))
        await asyncio.wait_for(started.wait(), 5)
        worker.stop()
        await asyncio.wait_for(runner, 5)
    assert finished.is_set()
    with pytest.raises(NotRunning):
        _ = worker.bus


async def test_agent_configuration_errors_are_typed(bus: eventwire.Bus) -> None:
    with pytest.raises(InvalidEvent) as mismatch:
        Agent("alice", identity=make_identity("bob"))
    assert mismatch.value.field == "identity"
    with pytest.raises(InvalidEvent):
        Agent("alice", capabilities=["not a token"])
    with pytest.raises(ValueError, match=r"agent: .no spaces please. is not a valid name"):
        Agent("no spaces please")
    with pytest.raises(InvalidEvent):
        Agent("alice").on("knowledge.>.bad")
    outsider = Agent("outsider", tenant="elsewhere")
    with pytest.raises(WrongTenant):
        async with outsider.serve(bus):
            pass
    with pytest.raises(NotRunning):
        await Agent("alice", tenant=TENANT).publish(KnowledgeShared(topic="t", content="c"))
