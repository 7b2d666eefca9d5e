"""Capabilities that change while an agent serves (issue #13): it joins or leaves a
capability's one-of-N work and broadcasts without a restart, on a real server."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Literal

import pytest

import eventwire
from eventwire import (
    Agent,
    BusyResource,
    Event,
    Forbidden,
    HelpRequested,
    InvalidArgument,
    NotFound,
    Policy,
    ResourceState,
    TaskCompleted,
)
from tests.conftest import TENANT, make_identity, wait_until

QUESTION = HelpRequested(capability="summarize", question="tl;dr?")
WORK_SUBJECT = "capability.summarize.work.help"


def agent(name: str, bus: eventwire.Bus, *capabilities: str) -> Agent:
    return Agent(name, capabilities=capabilities, identity=make_identity(name, bus.keyring))


class Tally:
    """Who handled which one-of-N event (by event id), and the broadcasts each saw."""

    def __init__(self) -> None:
        self.by_id: Counter[str] = Counter()
        self.by_agent: Counter[str] = Counter()
        self.broadcast: Counter[str] = Counter()

    def watch(self, each: Agent) -> None:
        @each.on("capability.summarize.help")
        async def on_help(event: Event) -> None:
            if event.subject == WORK_SUBJECT:
                self.by_id[event.id] += 1
                self.by_agent[each.name] += 1
            else:
                self.broadcast[each.name] += 1

    def handled(self, ids: list[str]) -> int:
        return sum(1 for event_id in ids if self.by_id[event_id] >= 1)


async def ask(bus: eventwire.Bus, n: int, *, deliver: Literal["all", "one"] = "one") -> list[str]:
    asker = make_identity("asker", bus.keyring)
    return [
        (await bus.publish(QUESTION, identity=asker, deliver=deliver)).event_id for _ in range(n)
    ]


async def names_with(bus: eventwire.Bus, capability: str) -> list[str]:
    return [info.name for info in await bus.agents(capability=capability)]


async def test_an_agent_gains_a_capability_while_serving_and_takes_its_work(
    bus: eventwire.Bus,
) -> None:
    tally = Tally()
    late = agent("late", bus)
    tally.watch(late)
    async with late.serve(bus):
        before = await ask(bus, 5)
        assert (await bus.work_status("summarize")).nobody_serving
        await late.add_capability("summarize")
        assert late.capabilities == ("summarize",)
        assert await names_with(bus, "summarize") == ["late"]  # at once, no heartbeat
        after = await ask(bus, 5)
        await ask(bus, 1, deliver="all")
        await wait_until(lambda: tally.handled(before + after) == 10)
        await wait_until(lambda: tally.broadcast["late"] >= 1)
        status = await bus.work_status("summarize")
    assert all(tally.by_id[event_id] == 1 for event_id in before + after)
    assert (status.pending, status.serving) == (0, 1)


async def test_losing_a_capability_stops_new_work_while_another_agent_serves(
    bus: eventwire.Bus,
) -> None:
    tally = Tally()
    leaver, stayer = agent("leaver", bus, "summarize"), agent("stayer", bus, "summarize")
    tally.watch(leaver)
    tally.watch(stayer)
    async with leaver.serve(bus), stayer.serve(bus):
        first = await ask(bus, 40)
        await wait_until(lambda: tally.handled(first) == 40)
        await leaver.remove_capability("summarize")
        assert leaver.capabilities == ()
        assert await names_with(bus, "summarize") == ["stayer"]  # at once
        assert [i.name for i in await bus.agents()] == ["leaver", "stayer"]  # still serving
        handled_by_leaver = tally.by_agent["leaver"]
        second = await ask(bus, 40)
        await ask(bus, 1, deliver="all")
        await wait_until(lambda: tally.handled(second) == 40 and tally.broadcast["stayer"] == 1)
        status = await bus.work_status("summarize")
    assert tally.by_agent["leaver"] == handled_by_leaver  # nothing new went to it
    assert tally.broadcast["leaver"] == 0
    assert all(tally.by_id[event_id] == 1 for event_id in first + second)  # nothing lost
    assert (status.pending, status.in_progress, status.serving) == (0, 0, 1)


async def test_removing_lets_the_handler_in_flight_finish_and_loses_nothing(
    bus: eventwire.Bus,
) -> None:
    """A handler running when its capability goes finishes and is acked; what the leaving
    agent had pulled but not started is released to the other agent at once."""
    leaver = agent("leaver", bus, "summarize")
    stayer = agent("stayer", bus, "summarize")
    release, started = asyncio.Event(), asyncio.Event()
    handled: Counter[str] = Counter()
    by_leaver: list[str] = []

    @leaver.on("capability.summarize.help")
    async def slow(event: Event) -> None:
        started.set()
        await release.wait()
        handled[event.id] += 1
        by_leaver.append(event.id)

    @stayer.on("capability.summarize.help")
    async def quick(event: Event) -> None:
        handled[event.id] += 1

    async with leaver.serve(bus):
        try:
            ids = await ask(bus, 6)
            await started.wait()  # the leaver holds one, and has the rest pulled
            async with stayer.serve(bus):
                removing = asyncio.create_task(leaver.remove_capability("summarize"))
                await wait_until(lambda: sum(handled.values()) == 5)  # released to the stayer
                assert not removing.done()  # it waits for the handler in flight
                release.set()
                await removing
                status = await bus.work_status("summarize")
        finally:
            release.set()  # never leave the handler (and the stop) waiting
    assert len(by_leaver) == 1
    assert sorted(handled) == sorted(ids)
    assert set(handled.values()) == {1}
    assert (status.pending, status.in_progress) == (0, 0)  # the in-flight one was acked


async def test_a_second_agent_keeps_its_share_while_the_first_toggles(
    bus: eventwire.Bus,
) -> None:
    tally = Tally()
    toggler, steady = agent("toggler", bus, "summarize"), agent("steady", bus, "summarize")
    tally.watch(toggler)
    tally.watch(steady)
    every: list[str] = []
    shares: list[int] = []

    def all_handled() -> bool:
        return tally.handled(every) == len(every)

    async with toggler.serve(bus), steady.serve(bus):
        for _ in range(3):
            before = tally.by_agent["steady"]
            await toggler.remove_capability("summarize")
            every.extend(await ask(bus, 20))
            await wait_until(all_handled)
            shares.append(tally.by_agent["steady"] - before)
            await toggler.add_capability("summarize")
            every.extend(await ask(bus, 20))
            await wait_until(all_handled)
        assert await names_with(bus, "summarize") == ["steady", "toggler"]
    assert shares == [20, 20, 20]  # all of it while the toggler was out
    assert tally.by_agent["steady"] > 60  # and a share while it was in
    assert tally.by_agent["toggler"] > 0
    assert sum(tally.by_agent.values()) == len(every) == 120
    assert set(tally.by_id.values()) == {1}


async def test_capabilities_change_before_serving_and_the_serve_uses_them(
    bus: eventwire.Bus,
) -> None:
    tally = Tally()
    worker = agent("worker", bus, "translate")
    tally.watch(worker)
    await worker.add_capability("summarize")
    await worker.remove_capability("translate")
    assert worker.capabilities == ("summarize",)
    assert worker.actor.capabilities == ("summarize",)
    async with worker.serve(bus):
        assert await names_with(bus, "summarize") == ["worker"]
        assert await names_with(bus, "translate") == []
        ids = await ask(bus, 3)
        await wait_until(lambda: tally.handled(ids) == 3)
    await worker.remove_capability("summarize")  # stopped again: the list only
    assert list(worker.capabilities) == []


async def test_bad_capability_changes_are_refused(bus: eventwire.Bus) -> None:
    worker = agent("worker", bus, "summarize")
    for change in (worker.add_capability, worker.remove_capability):
        with pytest.raises(InvalidArgument, match=r"^capability: ") as bad:
            await change("no.dots")
        assert bad.value.field == "capability"
        with pytest.raises(InvalidArgument, match="capability"):
            await change("")
    with pytest.raises(InvalidArgument, match="has 'summarize' already"):
        await worker.add_capability("summarize")
    async with worker.serve(bus):
        with pytest.raises(InvalidArgument, match="has 'summarize' already"):
            await worker.add_capability("summarize")
        with pytest.raises(
            NotFound, match=r"does not have capability 'review' \(has 'summarize'\)"
        ):
            await worker.remove_capability("review")
    assert worker.capabilities == ("summarize",)


async def test_concurrent_changes_are_serialized(bus: eventwire.Bus) -> None:
    tally = Tally()
    worker = agent("worker", bus)
    tally.watch(worker)
    async with worker.serve(bus):
        results = await asyncio.gather(
            worker.add_capability("summarize"),
            worker.add_capability("summarize"),
            worker.add_capability("review"),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == ["NoneType", "InvalidArgument", "NoneType"]
        assert worker.capabilities == ("summarize", "review")
        work = [s for s in worker._subscriptions if s.pattern.endswith(".work.*")]
        assert sorted(s.pattern for s in work) == [
            "capability.review.work.*",
            "capability.summarize.work.*",
        ]
        removed = await asyncio.gather(
            worker.remove_capability("summarize"),
            worker.remove_capability("summarize"),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in removed] == ["NoneType", "NotFound"]
        assert await names_with(bus, "review") == ["worker"]
        assert await names_with(bus, "summarize") == []


async def test_a_handler_cannot_remove_the_capability_that_delivered_its_event(
    bus: eventwire.Bus,
) -> None:
    worker = agent("worker", bus, "summarize")
    refused: list[BaseException] = []

    @worker.on("capability.summarize.help")
    async def on_help(event: Event) -> None:
        try:
            await worker.remove_capability("summarize")
        except BusyResource as exc:
            refused.append(exc)

    async with worker.serve(bus):
        await ask(bus, 1)
        await wait_until(lambda: len(refused) == 1)
    assert "cannot change capability 'summarize': that stops the subscription" in str(refused[0])
    assert worker.capabilities == ("summarize",)


POLICY = Policy.from_toml(
    """
version = 1
[[rule]]
principal = "*"
publish = ["agent.lifecycle.*"]
consume = ["agent.lifecycle.*"]
[[rule]]
principal = "capability:summarize"
publish = ["task.*.completed"]
consume = ["capability.summarize.>"]
[[rule]]
principal = "agent:asker"
publish = ["capability.>"]
"""
)


async def test_the_policy_applies_to_the_capabilities_the_agent_holds_now(
    nats_server: eventwire.EmbeddedServer, root: str
) -> None:
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root, policy=POLICY) as bus:
        tally = Tally()
        worker = agent("worker", bus)
        tally.watch(worker)
        done = TaskCompleted(task_type="summarize", task_id="1")
        async with worker.serve(bus):
            with pytest.raises(Forbidden):
                await worker.publish(done)
            await worker.add_capability("summarize")
            await worker.publish(done)  # what the capability may publish
            ids = await ask(bus, 3)
            await ask(bus, 1, deliver="all")  # its handler's subscription was renewed
            await wait_until(lambda: tally.handled(ids) == 3 and tally.broadcast["worker"] == 1)
            await worker.remove_capability("summarize")
            with pytest.raises(Forbidden):
                await worker.publish(done)


async def test_a_handler_may_change_capabilities_while_a_removal_waits_for_it(
    bus: eventwire.Bus,
) -> None:
    worker = agent("worker", bus, "summarize")
    started, go = asyncio.Event(), asyncio.Event()

    @worker.on("capability.summarize.help")
    async def on_help(event: Event) -> None:
        started.set()
        await go.wait()
        await worker.add_capability("review")  # the removal holds no lock while it waits

    async with worker.serve(bus):
        await ask(bus, 1)
        await started.wait()
        removing = asyncio.create_task(worker.remove_capability("summarize"))
        await wait_until(lambda: "summarize" not in worker.capabilities)
        go.set()
        await removing
        assert worker.capabilities == ("review",)
        assert await names_with(bus, "review") == ["worker"]
        assert await names_with(bus, "summarize") == []


async def test_capabilities_do_not_change_while_the_agent_stops(bus: eventwire.Bus) -> None:
    worker = agent("worker", bus, "summarize")
    started, release = asyncio.Event(), asyncio.Event()
    refused: list[BusyResource] = []

    @worker.on("capability.summarize.help")
    async def on_help(event: Event) -> None:
        started.set()
        await release.wait()
        try:
            await worker.add_capability("review")
        except BusyResource as exc:
            refused.append(exc)

    async def release_when_closing() -> None:
        await wait_until(lambda: worker.state is ResourceState.CLOSING)
        release.set()

    async with asyncio.TaskGroup() as group, worker.serve(bus):
        await ask(bus, 1)
        await started.wait()
        group.create_task(release_when_closing())
    assert refused[0].state is ResourceState.CLOSING
    assert "is closing: change its capabilities when it serves or is stopped" in str(refused[0])
    assert worker.capabilities == ("summarize",)


async def test_broadcasts_sent_while_the_capability_was_lost_arrive_when_it_is_regained(
    bus: eventwire.Bus,
) -> None:
    """Leaving keeps the durable consumers, as a normal stop does: nothing is lost."""
    tally = Tally()
    worker = agent("worker", bus, "summarize")
    tally.watch(worker)
    async with worker.serve(bus):
        await worker.remove_capability("summarize")
        await ask(bus, 2, deliver="all")
        work = await ask(bus, 2)
        assert (await bus.work_status("summarize")).pending == 2  # waiting, not lost
        await worker.add_capability("summarize")
        await wait_until(lambda: tally.broadcast["worker"] == 2 and tally.handled(work) == 2)
