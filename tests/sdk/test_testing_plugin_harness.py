"""The pytest plugin's fixtures, used by the project's own tests (the plugin is registered by
its ``pytest11`` entry point): an agent harness on a real server, where a failing handler is
redelivered by JetStream, dead-lettered and redriven, and forged events are refused."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from eventwire import (
    Agent,
    Event,
    HelpRequested,
    InvalidArgument,
    InvalidEvent,
    KnowledgeShared,
    RetryPolicy,
    TaskCompleted,
)
from eventwire.testing import Harness, Identities, NotReceived

if TYPE_CHECKING:
    import eventwire
    from eventwire import Keyring, Rejection

QUICK = RetryPolicy(max_deliveries=3, initial_delay=0.05, multiplier=2, max_delay=0.2)


def _summarizer(harness: Harness) -> Agent:
    agent = harness.agent("summarizer", capabilities=["summarize"])

    @agent.on("capability.summarize.help")
    async def answer(event: Event) -> None:
        question = event.parse(HelpRequested).question
        await agent.publish(TaskCompleted(task_type="summarize", task_id=event.id, result=question))

    return agent


async def test_an_agent_under_the_harness_answers_a_request(eventwire_harness: Harness) -> None:
    async with eventwire_harness.run(_summarizer(eventwire_harness)) as agent:
        ack = await eventwire_harness.publish(
            HelpRequested(capability="summarize", question="why?"), as_="researcher"
        )
        [done] = await eventwire_harness.received("task.summarize.completed", timeout=10)
        assert agent.serving
    assert done.source == "default/summarizer"
    assert done.causationid == ack.event_id
    assert done.parse(TaskCompleted).result == "why?"
    [asked] = await eventwire_harness.received("capability.summarize.help")
    assert (asked.id, asked.source) == (ack.event_id, "default/researcher")
    assert eventwire_harness.refused == []


async def test_a_failing_handler_is_redelivered_then_dead_lettered_then_redriven(
    eventwire_harness: Harness, eventwire_bus: eventwire.Bus
) -> None:
    agent = eventwire_harness.agent("worker")
    deliveries: list[str] = []
    fixed = asyncio.Event()

    @agent.on("task.>", retry=QUICK)
    async def work(event: Event) -> None:
        deliveries.append(event.id)
        if not fixed.is_set():
            raise RuntimeError("the model is down")

    async with eventwire_harness.run(agent):
        ack = await eventwire_harness.publish(TaskCompleted(task_type="index", task_id="1"))
        [letter] = await eventwire_harness.dead_letters(1)
        assert deliveries == [ack.event_id] * 3  # JetStream redelivered it twice
        assert (letter.reason, letter.deliveries) == ("max-deliveries", 3)
        assert "the model is down" in letter.error
        fixed.set()
        await eventwire_bus.dead_letters.redrive(letter.seq)
        async with asyncio.timeout(10):
            while len(deliveries) < 4:  # noqa: ASYNC110 - the handler announces nothing
                await asyncio.sleep(0.01)
    assert deliveries == [ack.event_id] * 4
    assert await eventwire_bus.dead_letters.list() == []


async def test_events_of_an_untrusted_key_are_refused_before_any_handler(
    eventwire_harness: Harness, eventwire_identity: Identities
) -> None:
    agent = eventwire_harness.agent("reader")
    handled: list[Event] = []

    @agent.on("knowledge.>")
    async def read(event: Event) -> None:
        handled.append(event)

    mallory = eventwire_identity("mallory", trusted=False)
    async with eventwire_harness.run(agent):
        await eventwire_harness.publish(KnowledgeShared(topic="x", content="lie"), as_=mallory)
        await eventwire_harness.publish(KnowledgeShared(topic="x", content="true"), as_="alice")
        [good] = await eventwire_harness.received("knowledge.>")
    assert good.source == "default/alice"
    assert [event.id for event in handled] == [good.id]
    reasons = {(r.reason, r.kid) for r in eventwire_harness.refused}
    assert reasons == {("unknown-key", mallory.kid)}  # one per consumer that saw it


async def test_not_received_says_what_arrived_and_what_was_refused(
    eventwire_harness: Harness, eventwire_identity: Identities
) -> None:
    stranger = eventwire_identity("stranger", trusted=False)
    await eventwire_harness.publish(KnowledgeShared(topic="a", content="c"), as_="alice")
    await eventwire_harness.publish(KnowledgeShared(topic="b", content="c"), as_=stranger)
    with pytest.raises(NotReceived) as info:
        await eventwire_harness.received("knowledge.>", n=2, timeout=0.5)
    assert isinstance(info.value, AssertionError)  # a failed test reads as a failed assert
    message = str(info.value)
    assert "expected 2 event(s) on 'knowledge.>', got 1 (knowledge.a)" in message
    assert f"refused: unknown-key on {eventwire_harness.bus.root}.knowledge.b" in message
    with pytest.raises(NotReceived, match=r"expected 1 dead letter\(s\), got 0 \(nothing\)"):
        await eventwire_harness.dead_letters(1, timeout=0.2)


def test_identities_are_made_once_per_name_and_trusted_unless_asked(
    eventwire_identity: Identities, eventwire_keyring: Keyring
) -> None:
    alice = eventwire_identity("alice")
    assert eventwire_identity("alice") is alice
    assert alice.principal.source == "default/alice"
    assert alice.kid in eventwire_keyring
    mallory = eventwire_identity("mallory", trusted=False)
    assert mallory.kid not in eventwire_keyring


async def test_each_test_has_its_own_bus_root_and_refusals(
    eventwire_bus: eventwire.Bus, eventwire_root: str, eventwire_refused: list[Rejection]
) -> None:
    assert eventwire_bus.root == eventwire_root
    assert eventwire_bus.tenant == "default"
    assert eventwire_refused == []
    assert await eventwire_bus.dead_letters.list() == []


@pytest.mark.parametrize(
    ("n", "timeout", "field"),
    [(0, 1.0, "n"), (1.5, 1.0, "n"), (True, 1.0, "n"), (1, 0, "timeout"), (1, -1, "timeout")],
)
async def test_bad_waits_are_typed_errors(
    eventwire_harness: Harness, n: int, timeout: float, field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        await eventwire_harness.received("knowledge.>", n, timeout=timeout)
    assert info.value.field == field
    with pytest.raises(InvalidArgument) as dead:
        await eventwire_harness.dead_letters(n, timeout=timeout)
    assert dead.value.field == field


async def test_bad_harness_input_is_a_typed_error(eventwire_harness: Harness) -> None:
    with pytest.raises(InvalidArgument) as signer:
        await eventwire_harness.publish(KnowledgeShared(topic="a", content="c"), as_=42)  # type: ignore[arg-type]
    assert signer.value.field == "as_"
    with pytest.raises(InvalidArgument) as agent:
        async with eventwire_harness.run("summarizer"):  # type: ignore[arg-type]
            pass
    assert agent.value.field == "agent"
    with pytest.raises(InvalidEvent) as pattern:
        await eventwire_harness.received("knowledge..x")
    assert pattern.value.field == "pattern"


async def test_agents_of_the_harness_are_of_the_bus_tenant_and_sign_as_themselves(
    eventwire_harness: Harness, eventwire_keyring: Keyring
) -> None:
    agent = eventwire_harness.agent("worker", capabilities=["index"], max_in_flight=2)
    assert (agent.tenant, agent.capabilities) == ("default", ("index",))
    assert agent.defaults.max_in_flight == 2
    assert agent.identity.kid in eventwire_keyring
    ack = await eventwire_harness.publish(KnowledgeShared(topic="a", content="c"), as_=agent)
    [event] = await eventwire_harness.received("knowledge.a")
    assert (event.id, event.signer_kid) == (ack.event_id, agent.identity.kid)
