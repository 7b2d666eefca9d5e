"""No signed event can stop a consumer. The attacker is a compromised agent: its key is in the
keyring, and it publishes with raw nats-py whatever it can sign. Every such event is either
handled or refused with a reason (counted, audited, terminated), and the consumer goes on
delivering the legitimate events published after it, with ``idempotent`` off and on.

The property-based test's example count comes from ``EVENTWIRE_FUZZ_EXAMPLES`` (default 100
per mode), e.g. ``EVENTWIRE_FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/sdk/test_hostile_claims.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import nats
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from nats.js.api import DiscardPolicy

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    CustomEvent,
    Event,
    InvalidEvent,
    RetryPolicy,
    SealingKey,
    Unprocessable,
)
from eventwire_security import seal
from eventwire_security.hazmat import sign_detached
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext

    from eventwire import EmbeddedServer, Identity, Subscription

EXAMPLES = int(os.environ.get("EVENTWIRE_FUZZ_EXAMPLES", "100"))
REASONS = {  # every reason a refusal of a signed event may give (see the README)
    "malformed-claims", "owner-mismatch", "wrong-tenant", "wrong-root", "subject-mismatch",
    "too-old", "from-the-future", "expired", "bad-times", "invalid-event", "already-seen",
    "malformed-seal", "seal-broken", "seal-mismatch", "not-sealed-by-sender",
}  # fmt: skip
POISON = {"eventwire-test": "poison"}  # data no generated example has (keys are shorter)
_CUSTOM_SUBJECT = re.compile(r"custom(\.[A-Za-z0-9_-]{1,64}){1,14}")


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()


@dataclass
class Plan:
    """What the attacker does to a valid event before signing it: sealed or not, then each
    (field, value) set in turn (``data.<member>`` reaches into sealed data), or a raw body."""

    sealed: bool = False
    mutations: list[tuple[str, Any]] = field(default_factory=list)
    raw: bytes | None = None


@dataclass
class World:
    """A bus consuming ``custom.>``, the attacker (mallory, raw nats-py), an honest agent."""

    bus: eventwire.Bus
    js: JetStreamContext
    mallory: Identity
    alice: Identity
    key: SealingKey
    idempotent: bool
    sub: Subscription | None = None
    legit: set[str] = field(default_factory=set)
    hostile: Counter[str] = field(default_factory=Counter)  # mallory's ids handled

    async def handler(self, event: Event) -> None:
        if event.data == POISON:
            raise Unprocessable("the handler cannot process this")
        if event.source == self.alice.principal.source:
            self.legit.add(event.id)
        else:
            self.hostile[event.id] += 1

    def base(self, *, sealed: bool) -> dict[str, Any]:
        """A valid event of mallory's, as the SDK would sign it (sealed to the consumer)."""
        event_id, now = str(uuid.uuid4()), time.time()
        claims: dict[str, Any] = {
            "specversion": "1.0",
            "id": event_id,
            "source": self.mallory.principal.source,
            "type": "custom.hostile",
            "subject": "custom.hostile",
            "time": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": {"n": 1},
            "tenant": TENANT,
            "root": self.bus.root,
            "iat": int(now),
            "correlationid": event_id,
        }
        if sealed:  # bound to the event as the SDK binds a seal: its id and subject
            context = f"eventwire-seal|{event_id}|custom.hostile".encode()
            claims["data"] = seal(
                b'{"n": 1}', [self.key.public], sender_kid=self.mallory.kid, context=context
            )
            claims["datacontenttype"] = "application/jose+json"
        return claims

    async def send(self, body: bytes, subject: str = "custom.hostile") -> None:
        """Publish ``body`` signed by mallory, straight to the stream with nats-py."""
        headers = {SIGNATURE_HEADER: sign_detached(body, self.mallory)}
        await self.js.publish(f"{self.bus.root}.{subject}", body, headers=headers)

    async def honest_event_gets_through(self) -> None:
        ack = await self.bus.publish(CustomEvent("custom.legit", "legit"), identity=self.alice)
        await wait_until(lambda: ack.event_id in self.legit)


@pytest.fixture(params=[False, True], ids=["plain", "idempotent"])
async def world(
    request: pytest.FixtureRequest, bus: eventwire.Bus, nats_server: EmbeddedServer
) -> AsyncIterator[World]:
    attacker: NatsClient = await nats.connect(nats_server.url, name="mallory")
    world = World(
        bus=bus,
        js=attacker.jetstream(),
        mallory=make_identity("mallory", bus.keyring),
        alice=make_identity("alice", bus.keyring),
        key=SealingKey.generate(),
        idempotent=request.param,
    )
    retry = RetryPolicy(max_deliveries=2, initial_delay=0.05, jitter=0)
    try:
        async with bus.subscribe(
            "custom.>", world.handler, durable="victim", idempotent=world.idempotent,
            sealing_key=world.key, retry=retry, ack_wait=5,
        ) as sub:  # fmt: skip
            world.sub = sub
            yield world
    finally:
        await attacker.close()


def _body(claims: dict[str, Any]) -> bytes:
    try:
        return json.dumps(claims, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: sent as an escape, which the parse refuses
        return json.dumps(claims).encode()


def _mutated(claims: dict[str, Any], plan: Plan) -> dict[str, Any]:
    claims = copy.deepcopy(claims)
    for where, value in plan.mutations:
        target: Any = claims.get("data") if where.startswith("data.") else claims
        name = where.removeprefix("data.")
        if not isinstance(target, dict):
            continue
        if value is DELETE:
            target.pop(name, None)
        else:
            target[name] = value
    return claims


# --- the regressions found from outside ---------------------------------------------------


async def test_an_empty_id_is_refused_and_the_consumer_goes_on(world: World) -> None:
    claims = world.base(sealed=False) | {"id": ""}
    await world.send(_body(claims))
    await world.honest_event_gets_through()
    assert world.bus.security.rejected == {"invalid-event": 1}
    assert world.hostile == {}


@pytest.mark.parametrize("odd", ["a b", "a..b", "a.b", "*", ">", "$KV.x", "ü 😀", "x" * 256])
async def test_odd_ids_are_handled_once_and_never_block_later_acks(world: World, odd: str) -> None:
    """Ids are never KV keys or subject tokens (a hash is): an event with any valid id is
    handled once and acknowledged, and the events after it are too, promptly."""
    await world.send(_body(world.base(sealed=False) | {"id": odd}))
    for _ in range(3):
        await world.honest_event_gets_through()
    assert world.hostile == {odd: 1}
    assert world.sub is not None
    name = world.sub.durable
    for _ in range(100):  # every one acknowledged (acks are one-way: applied a moment later)
        info = await world.bus.jetstream.consumer_info(world.bus.stream, name)
        if info.num_ack_pending == 0:
            break
        await wait_until(lambda: True)
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
    assert world.sub.stats.dead_lettered == world.sub.stats.errors == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("id", "x" * 257),
        ("id", "a\nb"),
        ("correlationid", "\x00"),
        ("type", ""),
        ("type", "t" * 257),
        ("subject", "custom." + "s" * 2000),
        ("root", "r" * 65),
        ("traceparent", "0" * 513),
        ("partitionkey", ["not", "a", "string"]),
        ("iat", -1),
        ("iat", 2**64),
        ("exp", "tomorrow"),
        ("time", "2026-02-30T00:00:00Z"),
        ("extra", 1),
    ],
)
async def test_claims_out_of_bounds_are_invalid_events(world: World, name: str, value: Any) -> None:
    await world.send(_body(world.base(sealed=False) | {name: value}))
    await world.honest_event_gets_through()
    assert world.bus.security.rejected == {"invalid-event": 1}
    assert world.hostile == {}


@pytest.mark.parametrize(
    ("name", "value"),
    [("correlation_id", "x" * 257), ("causation_id", "a\rb"), ("partition_key", "")],
)
async def test_publishing_refuses_what_receivers_would(
    bus: eventwire.Bus, name: str, value: str
) -> None:
    alice = make_identity("alice", bus.keyring)
    with pytest.raises(InvalidEvent) as info:
        await bus.publish(CustomEvent("custom.x", "x"), identity=alice, **{name: value})
    assert info.value.field == name.replace("_", "")


async def test_a_replay_in_a_batch_whose_claims_failed_is_still_refused(
    bus: eventwire.Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """The claim round of a batch fails (the replay bucket is full: it refuses new claims),
    the batch is naked, and its redeliveries (delivery count 2) are claimed again once the
    bucket takes claims: the replay in that batch is refused, the new event handled."""
    alice = make_identity("alice", bus.keyring)
    calls: Counter[str] = Counter()

    async def handler(event: Event) -> None:
        calls[event.id] += 1

    ack = await bus.publish(CustomEvent("custom.pay", "pay", 1), identity=alice)
    async with bus.subscribe("custom.>", handler, durable="r", ack_wait=1):
        await wait_until(lambda: calls[ack.event_id] == 1)
    seen = f"KV_{bus.root}-seen"
    info = await bus.jetstream.stream_info(seen)
    full = dataclasses.replace(info.config, max_msgs=info.state.messages, discard=DiscardPolicy.NEW)
    await bus.jetstream.update_stream(full)
    fresh = await bus.publish(CustomEvent("custom.pay", "pay", 2), identity=alice)
    stored = await bus.jetstream.get_msg(bus.stream, ack.seq)
    headers = {**(stored.headers or {}), "Nats-Msg-Id": "replayed"}
    await bus.jetstream.publish(stored.subject or "", stored.data or b"", headers=headers)
    with caplog.at_level(logging.WARNING, logger="eventwire.consumer"):
        async with bus.subscribe("custom.>", handler, durable="r", ack_wait=1) as sub:
            await wait_until(lambda: "replay claims failed" in caplog.text, timeout=15)
            await bus.jetstream.update_stream(info.config)  # claims are taken again
            await wait_until(lambda: calls[fresh.event_id] == 1 and sub.stats.rejected == 1)
    assert calls == {ack.event_id: 1, fresh.event_id: 1}
    assert bus.security.rejected == {"already-seen": 1}


async def test_a_failure_of_the_consumer_itself_dead_letters_that_event_only(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: whatever the consumer's own code raises on one event (here: opening
    its seal, made to fail) is logged, counted and dead-lettered; the loop goes on."""
    assert world.sub is not None
    unseal = world.sub._unseal
    poison = world.base(sealed=True)

    def failing(results: list[Any]) -> None:
        if any(getattr(result, "id", None) == poison["id"] for result in results):
            raise RuntimeError("a bug")
        unseal(results)

    monkeypatch.setattr(world.sub, "_unseal", failing)
    await world.send(_body(poison))
    await world.honest_event_gets_through()
    assert world.sub.stats.errors == world.sub.stats.dead_lettered == 1
    [letter] = await world.bus.dead_letters.list()
    assert (letter.reason, letter.error) == ("consumer-error", "RuntimeError: a bug")
    assert world.hostile == {}


async def test_a_handler_refusing_a_hostile_event_dead_letters_it(world: World) -> None:
    """The handler is the last judge: an event it cannot process is dead-lettered with the
    handler's reason, and the consumer goes on."""
    await world.send(_body(world.base(sealed=False) | {"data": POISON}))
    await world.honest_event_gets_through()
    [letter] = await world.bus.dead_letters.list()
    assert letter.reason == "unprocessable"


# --- any claims a keyring member can sign --------------------------------------------------

FIELDS = [
    "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data",
    "tenant", "root", "iat", "exp", "correlationid", "causationid", "traceparent",
    "partitionkey", "extra", "data.protected", "data.recipients", "data.iv",
    "data.ciphertext", "data.tag", "data.aad", "data.unprotected",
]  # fmt: skip
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
ODD = st.sampled_from(
    ["", " ", "a b", "a..b", "a.b", ".", "*", ">", "a\x00b", "\n", "\x7f", "\x85", "\u2028",
     "ü", "😀", "$KV.x.y", "x" * 257, "x" * 1040, "x" * 70_000, "\ud800", "1.0",
     "custom.other", "application/jose+json", "2026-01-01T00:00:00Z"]
)  # fmt: skip
NUMBERS = st.sampled_from([-1, 0, 1, 2**53, 2**53 + 1, 2**63, 10**30, int(time.time()), 1.5])
VALUE = st.one_of(JSON, ODD, st.text(max_size=300), NUMBERS, st.just(DELETE))


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    plan = Plan(sealed=draw(st.booleans()))
    plan.mutations = draw(st.lists(st.tuples(st.sampled_from(FIELDS), VALUE), max_size=4))
    if draw(st.booleans()):
        plan.mutations.append(("id", draw(ODD | st.text(max_size=300))))
    if draw(st.integers(0, 19)) == 0:
        plan.raw = draw(st.binary(max_size=64))
    return plan


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one consumer on purpose: it must survive them all
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(plan=plans())
@example(plan=Plan())
@example(plan=Plan(sealed=True))
@example(plan=Plan(mutations=[("id", "")]))
@example(plan=Plan(mutations=[("id", "a..b")]))
@example(plan=Plan(raw=b"not json"))
async def test_any_signed_claims_are_handled_or_refused_and_the_consumer_goes_on(
    world: World, plan: Plan
) -> None:
    assert world.sub is not None
    stats = world.sub.stats
    before = (stats.rejected, sum(world.hostile.values()), world.bus.security.rejected.copy())
    claims = _mutated(world.base(sealed=plan.sealed), plan)
    subject = claims.get("subject")
    on = subject if isinstance(subject, str) and _CUSTOM_SUBJECT.fullmatch(subject) else None
    await world.send(plan.raw if plan.raw is not None else _body(claims), on or "custom.hostile")
    await world.honest_event_gets_through()
    refused, handled = stats.rejected - before[0], sum(world.hostile.values()) - before[1]
    assert (refused, handled) in {(1, 0), (0, 1)}, f"refused {refused}, handled {handled}"
    reasons = world.bus.security.rejected - before[2]
    event(
        "handled" if handled else f"refused: {', '.join(reasons)}"
    )  # see --hypothesis-show-statistics
    assert set(world.bus.security.rejected) <= REASONS
    assert stats.errors == stats.dead_lettered == stats.failed == 0
    if not plan.mutations and plan.raw is None:
        assert handled == 1  # the unchanged event, sealed or not, is a valid one
