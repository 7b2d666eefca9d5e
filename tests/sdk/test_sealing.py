"""Sealed events on a real server: recipients read them, others see a sealed, unreadable
event, the stream never holds plaintext, and sealed data cannot be re-signed by another."""

from __future__ import annotations

import json

import pytest

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    Agent,
    Event,
    InvalidEvent,
    KnowledgeShared,
    SealedForOthers,
)
from eventwire_security import sign_event, verify_event
from tests.conftest import make_identity, wait_until

SECRET = "the launch code is 0000"


def agent(name: str, bus: eventwire.Bus, capabilities: tuple[str, ...] = ()) -> Agent:
    return Agent(name, capabilities=capabilities, identity=make_identity(name, bus.keyring))


async def test_only_recipients_read_sealed_data(bus: eventwire.Bus) -> None:
    alice, bob, carol = agent("alice", bus), agent("bob", bus), agent("carol", bus, ("ops",))
    got: dict[str, Event] = {}

    for reader in (alice, bob, carol):

        @reader.on("knowledge.>")
        async def read(event: Event, name: str = reader.name) -> None:
            got[name] = event

    async with alice.serve(bus), bob.serve(bus), carol.serve(bus):
        ack = await bob.publish(
            KnowledgeShared(topic="ops", content=SECRET), seal_to=["alice", "capability:ops"]
        )
        await wait_until(lambda: len(got) == 3)
        stored = await bus.jetstream.get_msg(bus.stream, ack.seq)
    assert got["alice"].readable
    assert got["alice"].parse(KnowledgeShared).content == SECRET
    assert got["carol"].parse(KnowledgeShared).content == SECRET
    sealed = got["bob"]  # the sender is not a recipient of its own sealed event
    assert (sealed.sealed, sealed.readable) == (True, False)
    assert SECRET not in json.dumps(sealed.data)
    with pytest.raises(SealedForOthers):
        sealed.parse(KnowledgeShared)
    assert sealed.body is None
    assert stored.headers is not None
    claims = verify_event(stored.data or b"", stored.headers[SIGNATURE_HEADER], bus.keyring).claims
    assert SECRET not in json.dumps(claims)
    assert claims["datacontenttype"] == "application/jose+json"


async def test_sealed_data_resigned_by_another_agent_is_refused(bus: eventwire.Bus) -> None:
    alice, bob = agent("alice", bus), agent("bob", bus)
    mallory = make_identity("mallory", bus.keyring)
    read: list[Event] = []

    @alice.on("knowledge.>")
    async def on_knowledge(event: Event) -> None:
        read.append(event)

    async with alice.serve(bus), bob.serve(bus):
        ack = await bob.publish(KnowledgeShared(topic="ops", content=SECRET), seal_to=["alice"])
        await wait_until(lambda: len(read) == 1)
        stored = await bus.jetstream.get_msg(bus.stream, ack.seq)
        # Mallory, a trusted agent, passes bob's sealed data off as her own.
        assert stored.headers is not None
        signature = stored.headers[SIGNATURE_HEADER]
        claims = verify_event(stored.data or b"", signature, bus.keyring).claims
        claims.update(source="acme/mallory", id="01a2139a-0000-7000-8000-000000000001")
        forged = sign_event(claims, mallory)
        headers = {SIGNATURE_HEADER: forged.signature}
        await bus.jetstream.publish(stored.subject or "", forged.body, headers=headers)
        await wait_until(lambda: bus.security.rejected["seal-sender-mismatch"] == 1)
    assert [event.id for event in read] == [ack.event_id]


async def test_sealing_to_nobody_known_is_a_typed_error(bus: eventwire.Bus) -> None:
    bob = agent("bob", bus)
    async with bob.serve(bus):
        with pytest.raises(InvalidEvent) as error:
            await bob.publish(KnowledgeShared(topic="x", content="y"), seal_to=["ghost"])
    assert error.value.field == "seal_to"
