"""Forged events and forged direct calls against a real nats-server.

The attacker is a raw nats-py client that may publish anything on the bus's subjects; the
victim is a bus subscription (or responder). Nothing forged may reach a handler, every
forgery is counted under its exact reason and terminated so it is never redelivered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections import Counter
from typing import TYPE_CHECKING, Any

import nats
import pytest

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    ErrorReported,
    Event,
    HelpRequested,
    Identity,
    KnowledgeShared,
    ReplyRejected,
    TaskCompleted,
)
from eventwire._event import build_claims
from eventwire._subjects import direct_subject, reply_subject
from eventwire_security import Principal, sign_event, verify_event
from eventwire_security.hazmat import encode_claims, sign_detached
from tests.conftest import TENANT, make_identity

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg

    from eventwire import EmbeddedServer


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


@pytest.fixture
async def attacker(nats_server: EmbeddedServer) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(nats_server.url, name="attacker")
    yield nc
    await nc.close()


def forged_claims(principal: Principal, topic: str = "x", *, root: str) -> dict[str, Any]:
    return build_claims(KnowledgeShared(topic=topic, content="forged"), principal, root=root)


def header(alg: str, kid: str) -> bytes:
    """A detached protected header (RFC 7797) with ``alg`` and ``kid``."""
    fields = {"alg": alg, "b64": False, "crit": ["b64"], "kid": kid}
    return b64(json.dumps(fields, separators=(",", ":")).encode())


def signed(claims: dict[str, Any], identity: Identity) -> tuple[bytes, dict[str, str]]:
    event = sign_event(claims, identity)
    return event.body, {SIGNATURE_HEADER: event.signature}


async def subscribed(nc: NatsClient) -> None:
    """Make sure ``nc``'s SUBs reached the server before another client publishes.

    nats-py 2.16 writes flush()'s PING straight to the socket, ahead of commands still in its
    pending buffer, so one flush can return before a fresh SUB was sent. The first round trip
    lets the flusher task write the SUB; the second PING then follows it.
    """
    await nc.flush()
    await nc.flush()


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if await predicate():
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"condition not met within {timeout}s")


Forgery = tuple[str, bytes, "dict[str, str] | None", str]


def build_forgeries(
    alice: Identity, bob: Identity, outsider: Identity, mallory: Identity, root: str
) -> list[Forgery]:
    """(what, body, headers, expected rejection reason) for every forgery, in publish order."""
    body, headers = signed(forged_claims(alice.principal, root=root), alice)
    h, _, s = headers[SIGNATURE_HEADER].encode().split(b".")

    flipped = bytearray(body)
    flipped[flipped.index(b'"forged"') + 1] ^= 0x01  # "forged" -> "gorged": still valid JSON
    signature = bytearray(unb64(s))
    signature[10] ^= 0x01
    reserialized = json.dumps(json.loads(body), separators=(", ", ": ")).encode()
    assert json.loads(reserialized) == json.loads(body)
    assert reserialized != body
    impersonation = encode_claims(forged_claims(bob.principal, root=root))  # signed by alice

    def jws(*parts: bytes) -> dict[str, str]:
        return {SIGNATURE_HEADER: b".".join(parts).decode()}

    return [
        ("a: unknown key", *signed(forged_claims(mallory.principal, root=root), mallory),
         "unknown-key"),
        ("b: body bit flip", bytes(flipped), headers, "bad-signature"),
        ("c: signature bit flip", body, jws(h, b"", b64(bytes(signature))), "bad-signature"),
        ("d: re-serialized body", reserialized, headers, "bad-signature"),
        ("e: alg none", body, jws(header("none", alice.kid), b"", b""), "malformed"),
        ("f: source is not the signer", impersonation,
         {SIGNATURE_HEADER: sign_detached(impersonation, alice)}, "owner-mismatch"),
        ("g: signed for knowledge.y",
         *signed(forged_claims(alice.principal, topic="y", root=root), alice), "subject-mismatch"),
        ("h: garbage", random.Random(20240501).randbytes(200), None, "malformed"),
        ("i: empty", b"", None, "malformed"),
        # and a few more from SECURITY.md's list
        ("j: kid of another agent", body, jws(header("Ed25519", bob.kid), b"", s), "bad-signature"),
        ("k: alg HS256", body, jws(header("HS256", alice.kid), b"", s), "malformed"),
        ("l: trusted key of another tenant",
         *signed(forged_claims(outsider.principal, root=root), outsider), "wrong-tenant"),
        ("m: signed under another root",
         *signed(forged_claims(alice.principal, root="staging"), alice), "wrong-root"),
        ("n: no signature header", body, None, "malformed"),
    ]  # fmt: skip


async def test_forged_events_never_reach_the_handler(
    bus: eventwire.Bus, root: str, attacker: NatsClient
) -> None:
    alice = make_identity("alice", bus.keyring)
    bob = make_identity("bob", bus.keyring)
    outsider = make_identity("alice", bus.keyring, tenant="other")  # trusted, other tenant
    mallory = Identity.generate("acme", "mallory")  # not in the keyring
    wire = f"{root}.knowledge.x"

    forgeries = build_forgeries(alice, bob, outsider, mallory, root)
    expected = Counter(reason for *_, reason in forgeries)
    assert expected == {
        "unknown-key": 1,
        "bad-signature": 4,
        "malformed": 5,
        "owner-mismatch": 1,
        "subject-mismatch": 1,
        "wrong-tenant": 1,
        "wrong-root": 1,
    }

    seen: list[Event] = []
    got_legit = asyncio.Event()

    async def handler(event: Event) -> None:
        seen.append(event)
        if isinstance(event.data, dict) and event.data.get("content") == "real":
            got_legit.set()

    js = attacker.jetstream()
    async with bus.subscribe("knowledge.>", handler, durable="victim") as sub:
        for what, data, headers, _ in forgeries:
            ack = await js.publish(wire, data, headers=headers)
            assert ack.stream == bus.stream, what
        legit = await bus.publish(KnowledgeShared(topic="x", content="real"), identity=alice)
        assert legit.seq == len(forgeries) + 1
        # The legitimate event is last in the stream and handled in order: once it arrived,
        # every forgery before it was processed.
        await asyncio.wait_for(got_legit.wait(), 10)

        async def settled() -> bool:
            info = await js.consumer_info(bus.stream, sub.durable)
            return info.ack_floor.stream_seq == legit.seq and info.num_ack_pending == 0

        await wait_for(settled)
        await asyncio.sleep(0.3)  # give a stray redelivery a chance to show up
        info = await js.consumer_info(bus.stream, sub.durable)

        assert [event.id for event in seen] == [legit.event_id]
        assert seen[0].source == "acme/alice"
        assert seen[0].signer_kid == alice.kid
        assert seen[0].body == KnowledgeShared(topic="x", content="real")
        assert bus.security.rejected == expected
        assert bus.security.verified == 1
        assert sub.stats.rejected == len(forgeries)
        assert sub.stats.delivered == len(forgeries) + 1
        assert sub.stats.handled == 1
        assert sub.stats.failed == 0
        assert info.num_ack_pending == 0
        assert info.num_redelivered == 0
        assert info.num_pending == 0
        assert info.delivered.stream_seq == legit.seq
        assert info.ack_floor.stream_seq == legit.seq


Request = tuple[bytes, "dict[str, str] | None"]


def forged_request(
    identity: Identity, subject: str, root: str, principal: Principal | None = None
) -> Request:
    claims = build_claims(
        HelpRequested(capability="search", question="give me your secrets"),
        principal or identity.principal,
        root=root,
    )
    claims["subject"] = subject
    body = encode_claims(claims)
    return body, {SIGNATURE_HEADER: sign_detached(body, identity)}


def _flip_signature(request: Request) -> Request:
    body, headers = request
    assert headers is not None
    h, _, s = headers[SIGNATURE_HEADER].encode().split(b".")
    signature = bytearray(unb64(s))
    signature[0] ^= 0x80
    return body, {SIGNATURE_HEADER: (h + b".." + b64(bytes(signature))).decode()}


@pytest.mark.parametrize(
    "attack",
    ["unknown-key", "owner-mismatch", "bad-signature", "subject-mismatch", "malformed"],
)
async def test_forged_direct_request_is_refused(
    bus: eventwire.Bus, root: str, attacker: NatsClient, attack: str
) -> None:
    bob = make_identity("bob", bus.keyring)
    alice = make_identity("alice", bus.keyring)
    mallory = Identity.generate("acme", "mallory")  # not in the keyring
    to_bob = direct_subject("acme", "bob")
    body, headers = {
        "unknown-key": lambda: forged_request(mallory, to_bob, root),
        "owner-mismatch": lambda: forged_request(alice, to_bob, root, Principal("acme", "carol")),
        "bad-signature": lambda: _flip_signature(forged_request(alice, to_bob, root)),
        "subject-mismatch": lambda: forged_request(alice, direct_subject("acme", "carol"), root),
        "malformed": lambda: (b"not an event", None),
    }[attack]()
    calls: list[Event] = []

    async def handler(event: Event) -> TaskCompleted:
        calls.append(event)
        return TaskCompleted(task_type="t", task_id="secret")

    await bus.serve_requests(bob, handler)
    await subscribed(bus.connection)

    reply = await attacker.request(f"{root}.direct.acme.bob", body, timeout=5, headers=headers)

    assert reply.headers is not None
    envelope = verify_event(reply.data, reply.headers[SIGNATURE_HEADER], bus.keyring)
    assert envelope.signer.kid == bob.kid
    claims = envelope.claims
    assert claims["source"] == "acme/bob"
    assert claims["tenant"] == "acme"
    assert claims["subject"] == reply_subject("acme", "bob")
    assert claims["type"] == ErrorReported.event_type
    assert claims["data"] == {
        "severity": "warning",
        "message": "request refused",
        "code": "refused",
        "details": {"reason": attack},
    }
    assert "causationid" not in claims
    assert claims["correlationid"] == claims["id"]
    assert calls == []
    assert bus.security.rejected == {attack: 1}
    assert bus.security.verified == 0


async def test_reply_from_an_impostor_is_rejected(
    bus: eventwire.Bus, root: str, attacker: NatsClient
) -> None:
    alice = make_identity("alice", bus.keyring)  # the caller
    make_identity("bob", bus.keyring)  # the target, not serving
    carol = make_identity("carol", bus.keyring)  # trusted, but not bob
    requests: list[dict[str, Any]] = []

    async def impostor(msg: Msg) -> None:
        request = json.loads(msg.data)
        requests.append(request)
        claims = build_claims(
            TaskCompleted(task_type="t", task_id="fake"),
            carol.principal,
            root=root,
            causation_id=request["id"],
            correlation_id=request["correlationid"],
        )
        claims["subject"] = reply_subject("acme", "bob")  # what the caller expects to be signed
        body, headers = signed(claims, carol)
        await attacker.publish(msg.reply, body, headers=headers)

    await attacker.subscribe(f"{root}.direct.acme.bob", cb=impostor)
    await subscribed(attacker)

    with pytest.raises(ReplyRejected) as info:
        await bus.request(
            "bob", HelpRequested(capability="search", question="q"), identity=alice, timeout=5
        )
    assert info.value.reason == "wrong-responder"
    assert info.value.target == "bob"
    assert "acme/carol" in str(info.value)
    assert isinstance(info.value, eventwire.RequestFailed)
    assert len(requests) == 1
    assert requests[0]["source"] == "acme/alice"
    assert requests[0]["subject"] == direct_subject("acme", "bob")


async def test_a_pre_claimed_message_id_cannot_drop_the_real_event(
    bus: eventwire.Bus, nats_server: EmbeddedServer
) -> None:
    """Nats-Msg-Id de-duplication is unauthenticated: whoever publishes an id first wins.
    eventwire's id is the hash of the signed bytes, which nobody has before the event is
    signed; an attacker claiming the ids a naive design would use changes nothing."""
    alice = make_identity("alice", bus.keyring)
    event = KnowledgeShared(topic="ml", content="real")
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for guess in ("1", "knowledge.ml", f"{TENANT}/alice"):
            await js.publish(
                f"{bus.root}.knowledge.ml", b"squatter", headers={"Nats-Msg-Id": guess}
            )
    finally:
        await nc.close()
    ack = await bus.publish(event, identity=alice)
    assert ack.duplicate is False
    assert ack.seq == 4
