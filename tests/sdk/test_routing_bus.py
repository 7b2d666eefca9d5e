"""Routing on a real server: one-of-N work by capability, requests by capability with load
and circuit breakers, CEL routes on agents, the registry's load and failure suspicion."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

import eventwire
from eventwire import (
    Agent,
    AgentFailed,
    BreakerPolicy,
    CircuitOpen,
    CircuitState,
    CustomEvent,
    Event,
    HelpRequested,
    InvalidArgument,
    InvalidRule,
    NobodyServing,
    Resiliency,
    TargetPolicy,
    TaskCompleted,
)
from eventwire_security import sign_claims
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer, Keyring

QUESTION = HelpRequested(capability="summarize", question="tl;dr?")


def agent(name: str, bus: eventwire.Bus, *capabilities: str) -> Agent:
    return Agent(name, capabilities=capabilities, identity=make_identity(name, bus.keyring))


async def test_one_of_n_work_is_handled_once_by_one_of_the_agents(bus: eventwire.Bus) -> None:
    handled: Counter[str] = Counter()
    broadcast: list[str] = []
    agents = [agent(f"s{n}", bus, "summarize") for n in range(3)]
    for each in agents:

        @each.on("capability.summarize.help")
        async def on_help(event: Event, name: str = each.name) -> None:
            if event.subject == "capability.summarize.work.help":
                handled[event.id] += 1
                handled[name] += 0  # who took part
            else:
                broadcast.append(name)

    asker = make_identity("asker", bus.keyring)
    async with agents[0].serve(bus), agents[1].serve(bus), agents[2].serve(bus):
        acks = [await bus.publish(QUESTION, identity=asker, deliver="one") for _ in range(30)]
        await bus.publish(QUESTION, identity=asker)  # broadcast: every agent sees it
        await wait_until(
            lambda: sum(handled[a.event_id] for a in acks) == 30 and len(broadcast) == 3
        )
        status = await bus.work_status("summarize")
    assert {ack.subject for ack in acks} == {"capability.summarize.work.help"}
    assert all(handled[ack.event_id] == 1 for ack in acks)
    assert sorted(broadcast) == ["s0", "s1", "s2"]
    assert (status.pending, status.serving, status.consumer) == (0, 3, True)


async def test_work_waits_durably_and_the_publisher_learns_nobody_serves(
    bus: eventwire.Bus,
) -> None:
    asker = make_identity("asker", bus.keyring)
    await bus.publish(QUESTION, identity=asker, deliver="one")
    with pytest.raises(NobodyServing) as nobody:
        await bus.until_served("summarize", timeout=0.3)
    assert nobody.value.capability == "summarize"
    assert "1 event(s) wait" in str(nobody.value)
    late = agent("late", bus, "summarize")
    got: list[str] = []

    @late.on("capability.summarize.help")
    async def on_help(event: Event) -> None:
        got.append(event.subject)

    async with late.serve(bus):
        status = await bus.until_served("summarize", timeout=5)
        await wait_until(lambda: got == ["capability.summarize.work.help"])
    assert status.serving == 1


async def test_one_of_n_needs_a_capability_subject(bus: eventwire.Bus) -> None:
    asker = make_identity("asker", bus.keyring)
    with pytest.raises(InvalidArgument, match=r"^deliver: one-of-N delivery is for"):
        await bus.publish(CustomEvent("custom.x.y", "t"), identity=asker, deliver="one")
    with pytest.raises(InvalidArgument, match=r"^deliver: must be 'all' or 'one'"):
        await bus.publish(QUESTION, identity=asker, deliver="some")  # type: ignore[arg-type]


async def test_request_by_capability_picks_the_idle_agent(bus: eventwire.Bus) -> None:
    busy, idle = agent("busy", bus, "summarize"), agent("idle", bus, "summarize")
    release = asyncio.Event()
    answered: list[str] = []
    for each in (busy, idle):

        @each.on_request
        async def answer(event: Event, name: str = each.name) -> TaskCompleted:
            answered.append(name)
            return TaskCompleted(task_type="summarize", task_id=event.id, result=name)

    @busy.on("custom.hold")
    async def hold(event: Event) -> None:
        await release.wait()

    asker = make_identity("asker", bus.keyring)
    async with busy.serve(bus), idle.serve(bus):
        await bus.publish(CustomEvent("custom.hold", "hold"), identity=asker)
        await wait_until(lambda: busy.load.in_flight == 1)
        await wait_until_reported(bus, "busy", in_flight=1)
        replies = [
            await bus.request(QUESTION, identity=asker, capability="summarize") for _ in range(3)
        ]
        release.set()
    assert [r.parse(TaskCompleted).result for r in replies] == ["idle"] * 3
    assert answered == ["idle"] * 3


async def wait_until_reported(bus: eventwire.Bus, name: str, *, in_flight: int) -> None:
    """Wait until ``name``'s registry heartbeat reports ``in_flight`` handlers."""
    async with asyncio.timeout(10):
        while True:
            infos = [i for i in await bus.agents() if i.name == name]
            if infos and infos[0].load.in_flight == in_flight:
                return
            await asyncio.sleep(0.1)


async def test_an_open_circuit_is_skipped_then_probed_and_closed(
    nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    spec = Resiliency(
        default=TargetPolicy(circuit_breaker=BreakerPolicy(consecutive_failures=2, open_for=1))
    )
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, keyring=keyring, root=root, registry_ttl=3.0,
        resiliency=spec,
    ) as bus:  # fmt: skip
        flaky, steady = agent("flaky", bus, "summarize"), agent("steady", bus, "summarize")
        broken = True

        @flaky.on_request
        async def fail(event: Event) -> TaskCompleted:
            if broken:
                raise RuntimeError("out of memory")
            return TaskCompleted(task_type="summarize", task_id=event.id, result="flaky")

        @steady.on_request
        async def fine(event: Event) -> TaskCompleted:
            return TaskCompleted(task_type="summarize", task_id=event.id, result="steady")

        asker = make_identity("asker", bus.keyring)
        async with flaky.serve(bus), steady.serve(bus):
            for _ in range(2):
                with pytest.raises(eventwire.RemoteError):
                    await bus.request("flaky", QUESTION, identity=asker)
            assert bus.breakers.state("flaky") is CircuitState.OPEN
            with pytest.raises(CircuitOpen):
                await bus.request("flaky", QUESTION, identity=asker)
            chosen = [
                (await bus.request(QUESTION, identity=asker, capability="summarize",
                                   strategy="round-robin")).parse(TaskCompleted).result
                for _ in range(4)
            ]  # fmt: skip
            assert chosen == ["steady"] * 4  # the open circuit is skipped
            broken = False
            await asyncio.sleep(1.0)  # open_for: the next call is the probe
            reply = await bus.request("flaky", QUESTION, identity=asker)
            assert reply.parse(TaskCompleted).result == "flaky"
            assert bus.breakers.state("flaky") is CircuitState.CLOSED


async def test_request_by_capability_with_nobody_or_a_bad_strategy(bus: eventwire.Bus) -> None:
    asker = make_identity("asker", bus.keyring)
    with pytest.raises(NobodyServing):
        await bus.request(QUESTION, identity=asker, capability="summarize")
    with pytest.raises(InvalidArgument, match=r"^strategy: unknown strategy 'best'"):
        await bus.request(QUESTION, identity=asker, capability="summarize", strategy="best")
    with pytest.raises(InvalidArgument, match=r"^capability: "):
        await bus.request(QUESTION, identity=asker, capability="no.dots")
    with pytest.raises(InvalidArgument, match=r"^target: ask an agent, or a capability"):
        await bus.request(  # type: ignore[call-overload]
            "someone", QUESTION, identity=asker, capability="summarize"
        )


async def test_a_cel_route_republishes_with_the_original_as_cause(bus: eventwire.Bus) -> None:
    router, reviewer = agent("router", bus), agent("reviewer", bus, "review")
    router.route("custom.order.*", when="data.amount > 1000", to="capability.review.help")
    reviewed: list[Event] = []

    @reviewer.on("capability.review.help")
    async def review(event: Event) -> None:
        reviewed.append(event)

    shop = make_identity("shop", bus.keyring)
    async with router.serve(bus) as serving, reviewer.serve(bus):
        small = await bus.publish(
            CustomEvent("custom.order.placed", "order", {"amount": 5}), identity=shop
        )
        big = await bus.publish(
            CustomEvent("custom.order.placed", "order", {"amount": 5000}), identity=shop
        )
        bad = await bus.publish(
            CustomEvent("custom.order.placed", "order", {"total": 1}), identity=shop
        )
        await wait_until(lambda: len(reviewed) == 1)
        letters = []
        async with asyncio.timeout(10):
            while not letters:
                letters = await bus.dead_letters.list()
                await asyncio.sleep(0.05)
    assert serving is router
    (routed,) = reviewed
    assert routed.source == f"{TENANT}/router"
    assert (routed.causationid, routed.correlationid) == (big.event_id, big.event_id)
    assert (routed.type, routed.data) == ("order", {"amount": 5000})
    assert small.event_id not in {e.causationid for e in reviewed}
    assert [(d.reason, d.deliveries) for d in letters] == [("unprocessable", 1)]
    assert bad.event_id in letters[0].data.decode()
    assert letters[0].error.endswith("KeyError: no such key: 'amount'")


def test_a_bad_route_is_refused_when_declared() -> None:
    router = Agent("router")
    with pytest.raises(InvalidRule, match=r"route 1 \('data.amount >'\)"):
        router.route("custom.order.*", when="data.amount >", to="capability.review.help")
    with pytest.raises(InvalidRule, match="one-of-N delivery is for"):
        router.route("custom.order.*", when="true", to="custom.a.b", deliver="one")


async def test_a_silent_instance_is_suspected_and_reported_once(
    nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, keyring=keyring, root=root, registry_ttl=1.5
    ) as bus:
        watchers = [agent(f"w{n}", bus) for n in range(2)]
        leaver = agent("leaver", bus, "summarize")
        doomed = agent("doomed", bus, "summarize")
        seen: list[Event] = []

        @watchers[0].on("agent.lifecycle.failed")
        async def failed(event: Event) -> None:
            seen.append(event)

        async with watchers[0].serve(bus), watchers[1].serve(bus):
            async with leaver.serve(bus):
                await asyncio.sleep(1.5)  # a few heartbeats
            await simulate_crash(bus, doomed)  # beats, then silence as after a SIGKILL
            await wait_until(lambda: len(seen) == 1, timeout=10)
            infos = {i.name: i for i in await bus.agents()}
            await asyncio.sleep(1.0)  # the other observer's report is a duplicate
        reports = [w.observer.reported for w in watchers if w.observer is not None]
    report = seen[0].parse(AgentFailed)
    assert (report.agent, report.instance, report.capabilities) == (
        "doomed",
        doomed.instance,
        ["summarize"],
    )
    assert report.phi >= 8
    assert len(seen) == 1  # one event, however many observers; the clean leaver none
    assert {r.instance for rs in reports for r in rs} == {doomed.instance}
    assert "doomed" not in infos or infos["doomed"].suspected


async def simulate_crash(bus: eventwire.Bus, victim: Agent) -> None:
    """Registry heartbeats of ``victim`` (signed by it, as its SDK writes them), then none."""
    kv = await bus.registry()
    for _ in range(5):
        claims = {
            "source": victim.identity.principal.source,
            "tenant": victim.tenant,
            "instance": victim.instance,
            "capabilities": list(victim.capabilities),
            "started": time.time(),
            "iat": time.time(),
            "seal": victim.sealing_key.public.to_jwk()["x"],
        }
        await kv.put(f"{victim.name}.{victim.instance}", sign_claims(claims, victim.identity))
        await asyncio.sleep(bus.registry_ttl / 3)


async def test_an_event_that_fails_verification_is_never_routed(bus: eventwire.Bus) -> None:
    router, reviewer = agent("router", bus), agent("reviewer", bus, "review")
    router.route("custom.order.*", when="data.amount > 1000", to="capability.review.help")
    reviewed: list[Event] = []

    @reviewer.on("capability.review.help")
    async def review(event: Event) -> None:
        reviewed.append(event)

    shop = make_identity("shop", bus.keyring)
    order = CustomEvent("custom.order.placed", "order", {"amount": 5000})
    async with router.serve(bus), reviewer.serve(bus):
        genuine = await bus.publish(order, identity=shop)
        await wait_until(lambda: len(reviewed) == 1)
        # the same bytes with the amount changed: the signature no longer matches
        stored = await bus.jetstream.get_msg(bus.stream, genuine.seq)
        forged = (stored.data or b"").replace(b'"amount":5000', b'"amount":9000')
        headers = {k: v for k, v in (stored.headers or {}).items() if k != "Nats-Msg-Id"}
        await bus.connection.publish(stored.subject or "", forged, headers=headers)
        await wait_until(lambda: sum(bus.security.rejected.values()) >= 1)
        await asyncio.sleep(0.5)
    assert [e.causationid for e in reviewed] == [genuine.event_id]
    assert set(bus.security.rejected) == {"bad-signature"}
