"""SECURITY.md's attack tests, end to end on the server started from the compiled config.

The attacker is ``mallory``: a compromised agent of ``acme`` with its own valid NATS
credentials and a trusted signing key. It uses a raw nats-py connection (it skips the SDK)
wherever the server lets it; the victims are agents running the SDK bind-only. Each attack
is refused either by the server (a permissions violation, nothing stored) or by the
victim's SDK before any handler (counted by reason, terminated, and audited).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from eventwire import (
    SIGNATURE_HEADER,
    Event,
    Forbidden,
    Identity,
    KnowledgeShared,
    Rejection,
    TaskCompleted,
)
from eventwire._event import build_claims
from eventwire_security import SealingKey, consumer_name, message_id, sign_event
from eventwire_security.hazmat import sign_detached
from tests.compiled.conftest import ROOT, World, pull_by_hand, violations
from tests.conftest import wait_until
from tests.sdk.test_forgery import build_forgeries

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client

    from eventwire import Subscription

STREAM = f"{ROOT}-events"
Headers = dict[str, str]
REFUSED = 0.5  # seconds to wait for an answer the server must never send


class Victim:
    """``summarizer`` consuming ``knowledge.>`` bind-only: what it handled and refused."""

    def __init__(self) -> None:
        self.handled: list[Event] = []
        self.refused: list[Rejection] = []
        self.subscription: Subscription | None = None
        self.fail_once: set[str] = set()

    async def handle(self, event: Event) -> None:
        content = event.data.get("content") if event.readable else None
        if content in self.fail_once:
            self.fail_once.discard(content)
            raise RuntimeError("fails once, then works")
        self.handled.append(event)

    def contents(self) -> list[str]:
        return [e.data["content"] if e.readable else "<sealed>" for e in self.handled]

    def reasons_after(self, start: int) -> Counter[str]:
        return Counter(r.reason for r in self.refused[start:])


@pytest.fixture
async def victim(world: World) -> AsyncIterator[Victim]:
    victim = Victim()
    summarizer = world.actors["summarizer"]
    async with world.bus("summarizer", on_reject=victim.refused.append) as bus:
        victim.subscription = bus.subscribe(
            "knowledge.>", victim.handle, durable="summarizer", actor=summarizer,
            sealing_key=SealingKey.derive(world.identities["summarizer"]),
        )  # fmt: skip
        async with victim.subscription:
            yield victim


@pytest.fixture
async def mallory(world: World) -> AsyncIterator[Client]:
    nc = await world.raw("mallory")
    yield nc
    await nc.close()


def _claims(identity: Identity, topic: str, content: str, **changes: Any) -> dict[str, Any]:
    item = KnowledgeShared(topic=topic, content=content)
    claims = build_claims(item, identity.principal, root=ROOT)
    claims.update(changes)
    return claims


def _signed(claims: dict[str, Any], identity: Identity) -> tuple[bytes, Headers]:
    event = sign_event(claims, identity)
    return event.body, {SIGNATURE_HEADER: event.signature}


async def _send(
    nc: Client,
    subject: str,
    body: bytes,
    headers: Headers | None = None,
    msg_id: str | None = None,
) -> None:
    """Publish as the attacker, through JetStream, and require that the server stored it:
    ``headers`` without their message id (else a copy is dropped as a duplicate), and
    ``msg_id`` if given."""
    sent = {k: v for k, v in (headers or {}).items() if k != "Nats-Msg-Id"}
    if msg_id:
        sent["Nats-Msg-Id"] = msg_id
    ack = await nc.jetstream().publish(f"{ROOT}.{subject}", body, headers=sent, timeout=5)
    assert ack.stream == STREAM


async def _audited(world: World, reasons: Counter[str], since: int) -> None:
    """Every refusal in ``reasons`` was written to the audit log after ``since``."""

    async def found() -> Counter[str]:
        seen: Counter[str] = Counter()
        async for record in world.admin.audit.tail():
            if record.seq > since and record.action == "refused":
                seen[record.reason] += 1
        return seen

    async with asyncio.timeout(10):
        while (await found()) < reasons:  # noqa: ASYNC110 - polls the audit stream
            await asyncio.sleep(0.05)


async def _audit_head(world: World) -> int:
    last = 0
    async for record in world.admin.audit.tail():
        last = record.seq
    return last


def _parsing_attacks(mallory: Identity) -> list[tuple[str, bytes, str]]:
    good = json.dumps(_claims(mallory, "x", "parse")).encode()
    nested: Any = "deep"
    for _ in range(200):
        nested = [nested]
    return [
        ("duplicate key", good[:-1] + b',"source":"acme/writer"}', "malformed-claims"),
        ("NaN", json.dumps(_claims(mallory, "x", "n", data={"v": float("nan")})).encode(),
         "malformed-claims"),
        ("wrong type", json.dumps(_claims(mallory, "x", "t", iat="now")).encode(),
         "invalid-event"),  # claims are validated before their times are checked
        ("unknown field", json.dumps(_claims(mallory, "x", "u", admin=True)).encode(),
         "invalid-event"),
        ("deep nesting", json.dumps(_claims(mallory, "x", "d", data={"v": nested})).encode(),
         "malformed-claims"),
        ("invalid UTF-8", good.replace(b'"parse"', b'"\xff\xfe"'), "malformed-claims"),
    ]  # fmt: skip


async def test_forged_and_malformed_events_never_reach_a_handler(
    world: World, victim: Victim, mallory: Client
) -> None:
    ids = world.identities
    stranger = Identity.generate("acme", "stranger")  # never trusted
    attacks = build_forgeries(ids["mallory"], ids["writer"], ids["eve"], stranger, ROOT)
    signer = ids["mallory"]
    attacks += [
        (what, raw, {SIGNATURE_HEADER: sign_detached(raw, signer)}, why)
        for what, raw, why in _parsing_attacks(signer)
    ]
    expired, revoked = Identity.generate("acme", "old"), Identity.generate("acme", "gone")
    world.keyring.add(expired.trusted(not_after=datetime.now(UTC) - timedelta(days=1)))
    world.keyring.add(revoked.trusted())
    world.keyring.revoke(revoked.kid)
    body, headers = _signed(_claims(signer, "x", "cut"), signer)
    attacks += [
        ("expired key", *_signed(_claims(expired, "x", "e"), expired), "key-not-valid"),
        ("revoked key", *_signed(_claims(revoked, "x", "r"), revoked), "key-not-valid"),
        ("truncated", body[:-20], headers, "bad-signature"),
        ("truncated signature", body, {SIGNATURE_HEADER: headers[SIGNATURE_HEADER][:-20]},
         "malformed"),
    ]  # fmt: skip
    since, refused = await _audit_head(world), {}
    for what, body, headers, _why in attacks:  # one at a time, to know which refusal is whose
        start = len(victim.refused)
        await _send(mallory, "knowledge.x", body, headers)
        await wait_until(lambda: len(victim.refused) > start)  # noqa: B023 - awaited here
        refused[what] = victim.refused[start].reason
    assert refused == {what: why for what, *_, why in attacks}
    expected = Counter(refused.values())
    forged = {"forged", "gorged", "parse", "n", "t", "u", "d", "e", "r", "cut"}
    assert not forged & set(victim.contents())
    await _audited(world, expected, since)


async def _capture(world: World, nc: Client, topic: str) -> tuple[bytes, Headers]:
    """``writer`` publishes a knowledge event that mallory may read; mallory pulls its exact
    bytes from her own consumer (the only read the server allows her)."""
    writer = world.identities["writer"]
    await world.admin.publish(KnowledgeShared(topic=topic, content=topic), identity=writer)
    return await _pull_until(nc, topic)


async def _pull_until(nc: Client, topic: str) -> tuple[bytes, Headers]:
    """Pull (and ack) from mallory's own consumer until the event on ``topic`` arrives."""
    consumer = consumer_name("mallory", "knowledge.public.*")
    while True:
        msg = await pull_by_hand(nc, consumer)
        await msg.ack()
        if msg.subject == f"{ROOT}.knowledge.{topic}":
            return msg.data, dict(msg.headers or {})


async def test_replays_moves_and_bad_times_are_refused(
    world: World, victim: Victim, mallory: Client
) -> None:
    body, headers = await _capture(world, mallory, "public.news")
    await wait_until(lambda: "public.news" in victim.contents())
    signer, now = world.identities["mallory"], int(time.time())
    start = len(victim.refused)
    # the same bytes again
    await _send(mallory, "knowledge.public.news", body, headers, msg_id="a-new-id")
    await _send(mallory, "knowledge.moved", body, headers)  # signed for another subject
    future = _claims(signer, "x", "future", iat=now + 3600, exp=now + 7200)
    await _send(mallory, "knowledge.x", *_signed(future, signer))
    stale = _claims(signer, "x", "stale", iat=now - 7200, exp=now - 3600)
    await _send(mallory, "knowledge.x", *_signed(stale, signer))
    expected = Counter(
        {"already-seen": 1, "subject-mismatch": 1, "from-the-future": 1, "expired": 1}
    )
    await wait_until(lambda: len(victim.refused) - start == 4)
    assert victim.reasons_after(start) == expected
    assert victim.contents().count("public.news") == 1


async def test_a_jetstream_redelivery_is_not_a_replay(world: World, victim: Victim) -> None:
    victim.fail_once.add("retried")
    start = len(victim.refused)
    writer = world.identities["writer"]
    await world.admin.publish(KnowledgeShared(topic="public.r", content="retried"), identity=writer)
    await wait_until(lambda: "retried" in victim.contents())
    assert victim.contents().count("retried") == 1
    assert victim.refused[start:] == []


async def test_pre_claimed_message_ids_cannot_hide_an_event(
    world: World, victim: Victim, mallory: Client
) -> None:
    # mallory claims every id she can know or guess: the hash of each token she has seen,
    # ids of her own events, the event ids and names a naive scheme would use. The id of
    # writer's next event is the hash of bytes nobody has before writer signs them.
    _, seen = await _capture(world, mallory, "public.before")
    guesses = [message_id(seen[SIGNATURE_HEADER]), "knowledge.public.next", "1", "0"]
    for guess in guesses:
        await _send(mallory, "knowledge.public.junk", b"junk", msg_id=guess)
    ack = await world.admin.publish(
        KnowledgeShared(topic="public.next", content="next"), identity=world.identities["writer"]
    )
    assert not ack.duplicate
    await wait_until(lambda: "next" in victim.contents())


async def _stored_on(world: World, subject: str) -> int:
    """How many messages the stream holds on ``subject`` (other tests' traffic on other
    subjects of the shared stream does not count)."""
    info = await world.admin.jetstream.stream_info(STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_policy_denials_in_the_sdk_and_by_the_server(
    world: World, victim: Victim, mallory: Client
) -> None:
    ids, since = world.identities, await _audit_head(world)
    async with world.bus("mallory") as bus:  # publish: the SDK refuses before sending
        with pytest.raises(Forbidden):
            await bus.publish(
                TaskCompleted(task_type="t", task_id="1"), identity=ids["mallory"],
                actor=world.actors["mallory"],
            )  # fmt: skip
    await _audited(world, Counter({"policy-denied": 1}), since)
    target = f"{ROOT}.task.t.completed"
    before = await _stored_on(world, target)
    with pytest.raises(nats.errors.TimeoutError):  # publish: the server refuses a raw client
        await mallory.jetstream().publish(target, b"x", timeout=REFUSED)
    await wait_until(lambda: any("ew.task.t.completed" in v for v in violations(mallory)))
    assert await _stored_on(world, target) == before
    start = len(victim.refused)  # consume: narrower deny than the consumer's filter
    secret = KnowledgeShared(topic="secret.plan", content="secret")
    await world.admin.publish(secret, identity=ids["writer"])
    await wait_until(lambda: len(victim.refused) > start)
    assert victim.reasons_after(start) == Counter({"policy-denied": 1})
    assert "secret" not in victim.contents()


async def _refused_request(nc: Client, subject: str, payload: bytes = b"") -> None:
    with pytest.raises(nats.errors.TimeoutError):
        await nc.request(subject, payload, timeout=REFUSED)
    await wait_until(lambda: any(subject.lower() in v for v in violations(nc)))


async def test_an_agent_cannot_read_beyond_its_own_consumers(world: World, mallory: Client) -> None:
    theirs = consumer_name("summarizer", "knowledge.>")
    config = ConsumerConfig(name="sneaky", filter_subject=f"{ROOT}.>", ack_policy=AckPolicy.NONE)
    with pytest.raises(nats.errors.TimeoutError):  # its own consumer through $JS.API
        await mallory.jetstream().add_consumer(STREAM, config, timeout=REFUSED)
    await wait_until(lambda: any("consumer.create" in v for v in violations(mallory)))
    processed = f"{ROOT}-processed"
    for subject in (
        f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{theirs}",  # another agent's consumer
        f"$JS.API.STREAM.MSG.GET.{STREAM}",  # the stream itself
        f"$JS.API.DIRECT.GET.{STREAM}",
        f"$JS.API.DIRECT.GET.KV_{processed}.$KV.{processed}.{theirs}.x",  # its handled ids
        f"$JS.API.DIRECT.GET.KV_{ROOT}-seen.$KV.{ROOT}-seen.{theirs}.x",  # its replay claims
        f"$JS.API.STREAM.PURGE.{ROOT}-audit",  # erase its tracks
        f"$JS.API.STREAM.DELETE.{ROOT}-audit",
    ):
        await _refused_request(mallory, subject, b'{"seq":1}')
    for subject in (
        f"$KV.{ROOT}-seen.{theirs}.x",  # a claim in another agent's replay record
        f"$KV.{ROOT}-processed.{theirs}.x",  # an id another agent "handled"
        f"$KV.{ROOT}-keyring.keyring",  # a rolled-back or forged keyring document
        f"$KV.{ROOT}-agents.writer.i1",  # another agent's registry entry
        f"{ROOT}.dlq.{theirs}",  # a dead letter in another agent's name
    ):
        with pytest.raises(nats.errors.TimeoutError):
            await mallory.jetstream().publish(subject, b"", timeout=REFUSED)
        await wait_until(lambda: any(subject.lower() in v for v in violations(mallory)))  # noqa: B023


async def test_tenants_are_isolated(world: World, mallory: Client) -> None:
    target = f"{ROOT}.knowledge.x"
    before = await _stored_on(world, target)
    eve = await world.raw("eve")
    globex_admin = await world.raw("globex-admin")
    try:
        with pytest.raises(nats.errors.TimeoutError):  # eve's policy has no such right
            await eve.jetstream().publish(target, b"x", timeout=REFUSED)
        # globex's admin has every right in globex, and still no view of acme's stream
        with pytest.raises(nats.js.errors.NotFoundError):
            await globex_admin.jetstream().stream_info(STREAM)
        await globex_admin.publish(target, b"from globex")
        await globex_admin.flush()
    finally:
        await eve.close()
        await globex_admin.close()
    assert await _stored_on(world, target) == before


async def test_sealed_data_stays_sealed(world: World, victim: Victim, mallory: Client) -> None:
    writer, thief = world.identities["writer"], world.identities["mallory"]
    async with world.bus("writer") as bus:
        await bus.publish(
            KnowledgeShared(topic="public.plans", content="for summarizer only"),
            identity=writer, actor=world.actors["writer"],
            seal_to=[SealingKey.derive(world.identities["summarizer"]).public],
        )  # fmt: skip
    body, _ = await _pull_until(mallory, "public.plans")
    claims = json.loads(body)  # the event is plain CloudEvents JSON: its data is a JWE
    assert "for summarizer only" not in json.dumps(claims)  # mallory reads only ciphertext
    await wait_until(lambda: "for summarizer only" in victim.contents())
    # mallory signs writer's sealed event as her own: the seal names its sender, so no
    start = len(victim.refused)
    fresh = _claims(thief, "public.stolen", "x")
    stolen = {**claims, **{k: fresh[k] for k in ("id", "source", "subject", "correlationid")}}
    await _send(mallory, "knowledge.public.stolen", *_signed(stolen, thief))
    await wait_until(lambda: len(victim.refused) > start)
    assert victim.reasons_after(start) == Counter({"seal-sender-mismatch": 1})
