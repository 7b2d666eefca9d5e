"""Policies enforced by the SDK: at publish before anything is sent, at consume before the
handler. (Server-side enforcement of the compiled policy: tests/security/test_policy_server.py.)"""

from __future__ import annotations

import asyncio

import pytest

import eventwire
from eventwire import (
    Agent,
    ConfigError,
    CustomEvent,
    Event,
    Forbidden,
    KnowledgeShared,
    Policy,
    TaskCompleted,
)
from tests.conftest import TENANT, make_identity, wait_until

POLICY = Policy.from_toml(
    """
version = 1
[[rule]]
principal = "*"
publish = ["agent.lifecycle.*"]
consume = ["agent.lifecycle.*"]
[[rule]]
principal = "capability:summarize"
publish = ["task.*.completed", "knowledge.>"]
consume = ["knowledge.public.>", "capability.summarize.*"]
deny_publish = ["knowledge.secret.>"]
[[rule]]
principal = "agent:librarian"
publish = ["knowledge.>"]
"""
)


@pytest.fixture
async def policed(nats_server: eventwire.EmbeddedServer, root: str) -> eventwire.Bus:
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root, policy=POLICY) as bus:
        yield bus  # type: ignore[misc]


def agent(name: str, bus: eventwire.Bus, capabilities: tuple[str, ...] = ()) -> Agent:
    return Agent(name, capabilities=capabilities, identity=make_identity(name, bus.keyring))


async def test_publish_is_refused_before_anything_is_sent(policed: eventwire.Bus) -> None:
    summarizer = agent("summarizer", policed, ("summarize",))
    async with summarizer.serve(policed):
        before = (await policed.jetstream.stream_info(policed.stream)).state.messages
        await summarizer.publish(TaskCompleted(task_type="sum", task_id="1"))
        with pytest.raises(Forbidden) as denied:
            await summarizer.publish(KnowledgeShared(topic="secret.plans", content="x"))
        with pytest.raises(Forbidden, match="no rule allows it"):
            await summarizer.publish(CustomEvent("system.coordination.halt", "halt"))
        after = (await policed.jetstream.stream_info(policed.stream)).state.messages
    assert (denied.value.action, denied.value.subject) == ("publish", "knowledge.secret.plans")
    assert "deny_publish" in denied.value.reason
    assert after == before + 1  # only the allowed event was stored


async def test_consume_is_refused_before_the_handler(policed: eventwire.Bus) -> None:
    summarizer = agent("summarizer", policed, ("summarize",))
    librarian = agent("librarian", policed)
    seen: list[str] = []

    @summarizer.on("knowledge.>")
    async def read(event: Event) -> None:
        seen.append(event.subject)

    async with summarizer.serve(policed), librarian.serve(policed):
        await librarian.publish(KnowledgeShared(topic="private.notes", content="x"))
        await librarian.publish(KnowledgeShared(topic="public.notes", content="y"))
        await wait_until(lambda: seen == ["knowledge.public.notes"])
        await wait_until(lambda: policed.security.rejected["policy-denied"] >= 1)
        await asyncio.sleep(0.2)
    assert seen == ["knowledge.public.notes"]


async def test_a_policy_bus_needs_to_know_who_subscribes(policed: eventwire.Bus) -> None:
    async def handler(event: Event) -> None:
        return None

    with pytest.raises(ConfigError, match="actor"):
        policed.subscribe("knowledge.>", handler, durable="anon")
