"""Refusals land in the tamper-evident audit stream, in order, chained."""

from __future__ import annotations

import nats
import pytest

import eventwire
from eventwire import SIGNATURE_HEADER, CustomEvent, Event, Forbidden, Identity, Policy
from eventwire_security import sign_event
from tests.conftest import TENANT, make_identity, wait_until


async def test_refusals_are_audited(
    bus: eventwire.Bus, nats_server: eventwire.EmbeddedServer
) -> None:
    alice = make_identity("alice", bus.keyring)
    stranger = Identity.generate(TENANT, "stranger")  # not trusted
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    async with bus.subscribe("custom.>", handler, durable="a") as sub:
        nc = await nats.connect(nats_server.url)
        try:
            claims = {"source": f"{TENANT}/stranger", "tenant": TENANT, "subject": "custom.x"}
            forged = sign_event(claims, stranger)
            headers = {SIGNATURE_HEADER: forged.signature}
            await nc.jetstream().publish(f"{bus.root}.custom.x", forged.body, headers=headers)
            await nc.jetstream().publish(f"{bus.root}.custom.x", b"garbage")
        finally:
            await nc.close()
        await bus.publish(CustomEvent("custom.ok", "ok"), identity=alice)
        await wait_until(lambda: len(seen) == 1 and sub.stats.rejected == 2)
        # the bus appends refusals from its own writer task, in order
        await wait_until(lambda: bus.audit.head is not None and bus.audit.head.seq == 2)
        records = [(r.action, r.reason) async for r in bus.audit.tail()]
    assert records == [("refused", "unknown-key"), ("refused", "malformed")]
    assert await bus.audit.verify() == 2


async def test_policy_denials_are_audited(nats_server: eventwire.EmbeddedServer, root: str) -> None:
    policy = Policy.from_toml('version = 1\n[[rule]]\nprincipal = "*"\npublish = ["custom.ok"]\n')
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root, policy=policy) as bus:
        alice = make_identity("alice", bus.keyring)
        with pytest.raises(Forbidden):
            await bus.publish(CustomEvent("custom.no", "no"), identity=alice)
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root) as reader:
        records = [r async for r in reader.audit.tail()]
    assert [(r.action, r.subject, r.reason) for r in records] == [
        ("refused", "custom.no", "policy-denied")
    ]
    assert records[0].details == {"actor": f"{TENANT}/alice"}
