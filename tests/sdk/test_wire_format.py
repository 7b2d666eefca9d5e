"""Wire format v1 on a real server, read and written by tools that know nothing of eventwire:
nats-py for the message, the ``cloudevents`` SDK for the body, joserfc for the signature."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import nats
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from joserfc import jws
from joserfc.jwk import OKPKey

import eventwire
from eventwire import SIGNATURE_HEADER, CustomEvent, Event, Identity, KnowledgeShared
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer

ED25519 = ["Ed25519"]


def jwk(identity: Identity, *, private: bool = False) -> OKPKey:
    key: dict[str, str | list[str]] = {**identity.public_key.to_jwk()}
    if private:
        key["d"] = base64.urlsafe_b64encode(identity.seed).rstrip(b"=").decode()
    return OKPKey.import_key(key)


async def test_a_stored_event_is_a_cloudevent_with_a_detached_jws(
    bus: eventwire.Bus, nats_server: EmbeddedServer
) -> None:
    alice = make_identity("alice", bus.keyring)
    ack = await bus.publish(
        KnowledgeShared(topic="ml", content="plain JSON"), identity=alice, partition_key="k1"
    )
    nc = await nats.connect(nats_server.url)
    try:
        stored = await nc.jetstream().get_msg(bus.stream, ack.seq)
    finally:
        await nc.close()
    body, headers = stored.data or b"", dict(stored.headers or {})
    assert headers["content-type"] == "application/cloudevents+json"
    # joserfc checks the signature over the exact body, as RFC 7797 (b64: false) says
    signed = jws.deserialize_compact(
        headers[SIGNATURE_HEADER], jwk(alice), algorithms=ED25519, payload=body
    )
    assert signed.protected["kid"] == alice.kid
    # the cloudevents SDK reads the body as a CloudEvent, extensions and all
    event = JSONFormat().read(None, body)
    attributes = event.get_attributes()
    assert attributes["id"] == ack.event_id
    assert attributes["source"] == f"{TENANT}/alice"
    assert attributes["type"] == KnowledgeShared.event_type
    assert attributes["subject"] == "knowledge.ml"
    assert (attributes["tenant"], attributes["root"]) == (TENANT, bus.root)
    assert attributes["partitionkey"] == "k1"
    assert event.get_data() == {
        "topic": "ml",
        "content": "plain JSON",
        "confidence": None,
        "tags": [],
    }


async def test_an_event_made_by_other_tools_is_handled(bus: eventwire.Bus) -> None:
    """A producer with the cloudevents SDK, joserfc and nats-py, and no eventwire."""
    alice = make_identity("alice", bus.keyring)
    event_id = str(uuid.uuid4())
    attributes = {
        "specversion": "1.0",
        "id": event_id,
        "source": f"{TENANT}/alice",
        "type": "com.example.order",
        "subject": "custom.orders",
        "time": datetime.now(UTC),
        "datacontenttype": "application/json",
        "tenant": TENANT,
        "root": bus.root,
        "iat": int(time.time()),
        "correlationid": event_id,
    }
    body = JSONFormat().write(CloudEvent(attributes, {"order": 42}))
    header = {"alg": "Ed25519", "b64": False, "crit": ["b64"], "kid": alice.kid}
    signature = jws.serialize_compact(header, body, jwk(alice, private=True), algorithms=ED25519)
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        handled.append(event)

    async with bus.subscribe("custom.>", handler, durable="interop"):
        nc = await nats.connect(bus.url)
        try:
            headers = {SIGNATURE_HEADER: signature, "content-type": "application/cloudevents+json"}
            await nc.jetstream().publish(f"{bus.root}.custom.orders", body, headers=headers)
        finally:
            await nc.close()
        await wait_until(lambda: len(handled) == 1)
    [event] = handled
    assert (event.id, event.source, event.signer_kid) == (event_id, f"{TENANT}/alice", alice.kid)
    assert event.data == {"order": 42}
    assert bus.security.rejected == {}


async def test_direct_calls_and_dead_letters_carry_the_signature_header(
    bus: eventwire.Bus,
) -> None:
    alice, bob = make_identity("alice", bus.keyring), make_identity("bob", bus.keyring)

    async def answer(event: Event) -> CustomEvent:
        return CustomEvent("custom.answer", "answer", {"to": event.id})

    await bus.serve_requests(bob, answer)
    reply = await bus.request("bob", CustomEvent("custom.ask", "ask"), identity=alice)
    assert reply.source == f"{TENANT}/bob"
    assert reply.signer_kid == bob.kid

    async def fail(event: Event) -> None:
        raise eventwire.Unprocessable("never")

    async with bus.subscribe("custom.dead", fail, durable="dead") as sub:
        ack = await bus.publish(CustomEvent("custom.dead", "d"), identity=alice)
        await wait_until(lambda: sub.stats.dead_lettered == 1)
    [letter] = await bus.dead_letters.list()
    assert SIGNATURE_HEADER in letter.headers
    handled: list[str] = []

    async def works(event: Event) -> None:
        handled.append(event.id)

    async with bus.subscribe("custom.dead", works, durable="dead"):
        await bus.dead_letters.redrive(letter.seq)
        await wait_until(lambda: handled == [ack.event_id])
        await asyncio.sleep(0.1)
    assert handled == [ack.event_id]
