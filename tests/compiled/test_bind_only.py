"""Agents run the SDK with ``provision=False`` under the permissions the server enforces.

Everything here goes through a real nats-server started from the compiled config (see
``conftest.py``): an agent's NATS user can bind to its own consumers, claim, record,
dead-letter, audit, announce and list agents, and nothing else.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

import pytest

import eventwire
from eventwire import (
    Agent,
    Event,
    HelpRequested,
    KnowledgeShared,
    NotProvisioned,
    StatusUpdate,
    TaskCompleted,
    Unprocessable,
)
from eventwire_security import consumer_filters, consumer_name
from tests.compiled.conftest import FLAKY_ACK_WAIT, FLAKY_RETRY, World, pull_by_hand, violations
from tests.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client
    from nats.aio.msg import Msg


def _collect(into: list[Event]) -> Callable[[Event], Awaitable[None]]:
    async def handler(event: Event) -> None:
        into.append(event)

    return handler


async def test_agents_work_under_compiled_permissions(world: World) -> None:
    summarizer = Agent(
        "summarizer", capabilities=["summarize"], identity=world.identities["summarizer"]
    )
    writer = Agent("writer", identity=world.identities["writer"])
    answers: list[Event] = []

    @summarizer.on("capability.summarize.*")
    async def summarize(event: Event) -> None:
        await summarizer.publish(TaskCompleted(task_type="summary", task_id=event.id))

    @summarizer.on_request
    async def ping(event: Event) -> StatusUpdate:
        return StatusUpdate(component="summarizer", state="ready")

    @writer.on("task.*.completed")
    async def completed(event: Event) -> None:
        answers.append(event)

    async with world.bus("summarizer") as s_bus, world.bus("writer") as w_bus:
        async with summarizer.serve(s_bus), writer.serve(w_bus):
            ask = HelpRequested(capability="summarize", question="tl;dr?")
            asked = await writer.publish(ask)
            await wait_until(lambda: len(answers) == 1)
            assert answers[0].causationid == asked.event_id
            assert answers[0].source == "acme/summarizer"
            reply = await writer.request("summarizer", StatusUpdate(component="w", state="?"))
            assert reply.data["state"] == "ready"
            live = {info.name for info in await w_bus.agents()}
            assert live == {"summarizer", "writer"}
            sealed = KnowledgeShared(topic="public.sealed", content="for summarizer only")
            await writer.publish(sealed, seal_to=["summarizer"])
        assert not s_bus.security.rejected


async def test_default_subscriptions_the_policy_does_not_grant_are_left_out(
    world: World,
) -> None:
    # writer's defaults: system.coordination.* and agent.lifecycle.*; only the latter is
    # provisioned (its policy grants it), so the agent serves without the former.
    writer = Agent("writer", identity=world.identities["writer"])
    async with world.bus("writer") as bus, writer.serve(bus):
        assert writer.serving


async def test_a_handler_on_a_pattern_nobody_provisioned_is_an_error(world: World) -> None:
    writer = Agent("writer", identity=world.identities["writer"])

    @writer.on("status.*")
    async def status(event: Event) -> None:  # pragma: no cover - never subscribed
        raise AssertionError(event)

    async with world.bus("writer", connect_timeout=5.0) as bus:
        with pytest.raises(NotProvisioned, match="status"):
            async with writer.serve(bus):
                pass


async def test_bind_only_bus_checks_the_provisioned_consumer(world: World) -> None:
    # The admin provisioned flaky's consumer with max 2 deliveries and a 1 s ack wait.
    async with world.bus("flaky") as bus:
        sub = bus.subscribe("status.*", _collect([]), durable="flaky", actor=world.actors["flaky"])
        with pytest.raises(eventwire.StreamConfigError, match="max_deliver"):
            await sub.start()


async def test_nothing_is_created_by_a_bind_only_bus(world: World) -> None:
    # mallory may not create streams or consumers: a bus of hers that would have to fails
    # clearly, and the server holds no consumer of hers beyond the admin's.
    consumers = await world.admin.jetstream.consumers_info(world.admin.stream)
    mine = {info.name for info in consumers if info.name.startswith("mallory-")}
    granted = consumer_filters(world.policy, world.actors["mallory"])
    assert mine == {consumer_name("mallory", pattern) for pattern in granted}
    async with world.bus("mallory") as bus:
        sub = bus.subscribe(
            "knowledge.>", _collect([]), durable="mallory", actor=world.actors["mallory"]
        )
        with pytest.raises(NotProvisioned):
            await sub.start()
    after = await world.admin.jetstream.consumers_info(world.admin.stream)
    assert len(after) == len(consumers)


async def test_poison_event_is_dead_lettered_by_a_bind_only_agent(world: World) -> None:
    seen: list[Event] = []

    async def poison(event: Event) -> None:
        seen.append(event)
        raise Unprocessable("cannot summarize this")

    async with world.bus("summarizer") as bus, world.bus("writer") as w_bus:
        sub = bus.subscribe(
            "capability.summarize.*", poison, durable="summarizer",
            actor=world.actors["summarizer"],
        )  # fmt: skip
        async with sub:
            ack = await w_bus.publish(
                HelpRequested(capability="summarize", question="poison"),
                identity=world.identities["writer"],
                actor=world.actors["writer"],
            )
            await wait_until(lambda: sub.stats.dead_lettered == 1)
    letters = [d for d in await world.admin.dead_letters.list() if d.stream_seq == ack.seq]
    assert [(d.reason, d.consumer) for d in letters] == [
        ("unprocessable", consumer_name("summarizer", "capability.summarize.*"))
    ]


async def test_reserve_delivery_dead_letters_after_a_crash(world: World) -> None:
    """A consumer that died on the last delivery leaves no outcome; the next instance gets
    the reserve delivery and dead-letters it without calling the handler (an agent may not
    read the stream, so the server's advisory is not its way)."""
    name = consumer_name("flaky", "status.*")
    ack = await world.admin.publish(
        StatusUpdate(component="db", state="down"), identity=world.identities["writer"]
    )
    raw = await world.raw("flaky")
    try:
        for _ in range(FLAKY_RETRY.max_deliveries):  # two deliveries, no outcome: "crashes"
            delivered = await _pull_one(raw, name)
            assert delivered.metadata.sequence.stream == ack.seq
            await asyncio.sleep(FLAKY_ACK_WAIT + 0.2)
    finally:
        await raw.close()
    handled: list[Event] = []
    async with world.bus("flaky") as bus:
        sub = bus.subscribe(
            "status.*", _collect(handled), durable="flaky", actor=world.actors["flaky"],
            retry=FLAKY_RETRY, ack_wait=FLAKY_ACK_WAIT,
        )  # fmt: skip
        async with sub:
            await wait_until(lambda: sub.stats.dead_lettered == 1)
    assert handled == []
    letters = [d for d in await world.admin.dead_letters.list() if d.stream_seq == ack.seq]
    assert [(d.reason, d.deliveries) for d in letters] == [("max-deliveries", 2)]


async def _pull_one(nc: Client, consumer: str) -> Msg:
    """One delivery pulled by hand, never acknowledged (a consumer that then crashed)."""
    msg = await pull_by_hand(nc, consumer)
    assert not violations(nc)
    return msg


async def test_the_cli_provisions_a_tenant_for_bind_only_agents(world: World) -> None:
    eve = Agent("eve", identity=world.identities["eve"])
    with pytest.raises(NotProvisioned, match="ew-events"):  # nothing provisioned in globex
        async with world.bus("eve"):
            pass
    args = ["provision", "globex", "--dir", str(world.deployment.path)]
    for _ in range(2):  # and again: provisioning is idempotent
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from eventwire.cli._tenant import app; app()", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin",
                 "EVENTWIRE_URL": world.login("globex-admin")},
        )  # fmt: skip
        out = (await proc.communicate())[0].decode()
        assert (proc.returncode, consumer_name("eve", "agent.lifecycle.*") in out) == (0, True), out
    async with world.bus("eve") as bus, eve.serve(bus):
        assert [info.name for info in await bus.agents()] == ["eve"]
