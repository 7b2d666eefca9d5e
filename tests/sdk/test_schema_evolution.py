"""Schema evolution on a real server: a newer publisher adds a field to an event kind; an
older receiver reads it tolerantly (the field kept in ``.extra``), a strict receiver refuses
it with a typed error (dead-lettered at once), and unknown *claims* are still refused."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    CustomEvent,
    Event,
    InvalidEvent,
    KnowledgeShared,
    Rejection,
    RetryPolicy,
)
from eventwire_security.hazmat import encode_claims, sign_detached
from tests.conftest import make_identity, wait_until

if TYPE_CHECKING:
    from eventwire.testing import Identities
    from eventwire_security import Identity

V1 = "urn:eventwire:schema:io.eventwire.knowledge.shared:1"
V2 = "urn:eventwire:schema:io.eventwire.knowledge.shared:2"


class KnowledgeSharedV2(KnowledgeShared):
    """What a newer publisher has: one more field (with a default), version 2."""

    schema_version: ClassVar[int] = 2
    summary: str = ""


def test_kinds_carry_their_schema_version_as_a_dataschema_uri() -> None:
    assert KnowledgeShared.dataschema() == V1
    assert KnowledgeSharedV2.dataschema() == V2
    assert KnowledgeSharedV2.event_type == KnowledgeShared.event_type  # the type stays

    class Pinned(KnowledgeShared):
        schema_uri: ClassVar[str | None] = "https://schemas.example.com/knowledge/3.json"

    assert Pinned.dataschema() == "https://schemas.example.com/knowledge/3.json"


@pytest.mark.parametrize("version", [0, -1, True, "2"])
def test_a_bad_schema_version_is_a_typed_error(version: object) -> None:
    class Bad(KnowledgeShared):
        schema_version: ClassVar[Any] = version

    with pytest.raises(InvalidEvent) as info:
        Bad.dataschema()
    assert info.value.field == "schema_version"


@pytest.mark.parametrize("uri", ["", "no-scheme", "urn:has space", "urn:\x00", "1x:y", "x" * 600])
def test_a_bad_dataschema_is_refused_when_built(uri: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        CustomEvent("custom.orders", "com.example.order", {}, dataschema=uri)
    assert info.value.field == "dataschema"

    class Bad(KnowledgeShared):
        schema_uri: ClassVar[str | None] = uri

    with pytest.raises(InvalidEvent) as built:
        Bad.dataschema()
    assert built.value.field == "schema_uri"


def test_building_a_kind_still_refuses_unknown_fields() -> None:
    """Only *received* data is read tolerantly: a typo in a constructor is an error."""
    with pytest.raises(InvalidEvent) as info:
        KnowledgeShared(topic="ml", content="c", summry="typo")  # type: ignore[call-arg]
    assert info.value.field == "summry"
    assert KnowledgeShared(topic="ml", content="c").extra == {}


async def _first(bus: eventwire.Bus, pattern: str, publish: Any) -> Event:
    """Publish with ``publish()`` and return the first verified event on ``pattern``."""
    got: list[Event] = []

    async def handler(event: Event) -> None:
        got.append(event)

    async with bus.subscribe(pattern, handler, durable="reader"):
        await publish()
        await wait_until(lambda: len(got) == 1)
    return got[0]


async def test_a_v1_receiver_accepts_v2_data_and_keeps_the_new_field(bus: eventwire.Bus) -> None:
    newer = make_identity("newer", bus.keyring)
    item = KnowledgeSharedV2(topic="ml", content="transformers", summary="attention is all")

    async def publish() -> None:
        await bus.publish(item, identity=newer)

    event = await _first(bus, "knowledge.>", publish)
    assert event.dataschema == V2
    old = event.parse(KnowledgeShared)
    assert (old.topic, old.content) == ("ml", "transformers")
    assert old.extra == {"summary": "attention is all"}
    assert isinstance(event.body, KnowledgeShared)
    assert event.body.extra == {"summary": "attention is all"}
    new = event.parse(KnowledgeSharedV2, strict=True)  # the newer reader knows the field
    assert (new.summary, new.extra) == ("attention is all", {})
    assert bus.security.rejected == {}


async def test_a_v2_receiver_reads_v1_data_with_the_new_fields_default(bus: eventwire.Bus) -> None:
    older = make_identity("older", bus.keyring)

    async def publish() -> None:
        await bus.publish(KnowledgeShared(topic="ml", content="c"), identity=older)

    event = await _first(bus, "knowledge.>", publish)
    assert event.dataschema == V1
    new = event.parse(KnowledgeSharedV2, strict=True)
    assert (new.content, new.summary, new.extra) == ("c", "", {})


async def test_a_strict_receiver_refuses_v2_data_and_dead_letters_it_at_once(
    bus: eventwire.Bus,
) -> None:
    newer = make_identity("newer", bus.keyring)
    errors: list[InvalidEvent] = []

    async def strict(event: Event) -> None:
        try:
            event.parse(KnowledgeShared, strict=True)
        except InvalidEvent as exc:
            errors.append(exc)
            raise

    retry = RetryPolicy(max_deliveries=5, initial_delay=0.01)
    async with bus.subscribe("knowledge.>", strict, durable="strict", retry=retry) as sub:
        await bus.publish(KnowledgeSharedV2(topic="ml", content="c", summary="s"), identity=newer)
        await wait_until(lambda: sub.stats.dead_lettered == 1)
    [error] = errors  # one delivery: InvalidEvent is terminal
    assert error.field == "data.summary"
    assert "unknown field(s) summary for KnowledgeShared (strict parse" in str(error)
    assert V2 in str(error)
    [letter] = await bus.dead_letters.list()
    assert letter.deliveries == 1


def _forged_claims(bus: eventwire.Bus, **more: Any) -> dict[str, Any]:
    event_id = str(uuid.uuid4())
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": f"{bus.tenant}/newer",
        "type": KnowledgeShared.event_type,
        "subject": "knowledge.ml",
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {"topic": "ml", "content": "c"},
        "tenant": bus.tenant,
        "root": bus.root,
        "iat": int(time.time()),
        "correlationid": event_id,
        **more,
    }


async def _send_raw(bus: eventwire.Bus, signer: Identity, claims: dict[str, Any]) -> None:
    """Sign ``claims`` with a trusted key and store them as the SDK would, by hand."""
    body = encode_claims(claims)
    headers = {SIGNATURE_HEADER: sign_detached(body, signer)}
    await bus.jetstream.publish(f"{bus.root}.{claims['subject']}", body, headers=headers)


@pytest.mark.parametrize(
    "more",
    [
        {"summary": "a data field put among the claims"},
        {"schemaversion": 2},
        {"dataschema": "not a uri"},
        {"dataschema": 2},
    ],
    ids=["unknown-claim", "unknown-version-claim", "dataschema-not-a-uri", "dataschema-int"],
)
async def test_unknown_or_bad_claims_are_still_refused(
    eventwire_bus: eventwire.Bus,
    eventwire_identity: Identities,
    eventwire_refused: list[Rejection],
    more: dict[str, Any],
) -> None:
    """Only ``data`` is read tolerantly: an unknown CloudEvents attribute, signed by a
    trusted key, is refused before any handler (``invalid-event``). (The bus, key and
    refusals come from the ``eventwire.testing`` plugin.)"""
    bus, newer, refused = eventwire_bus, eventwire_identity("newer"), eventwire_refused
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        handled.append(event)

    async with bus.subscribe("knowledge.>", handler, durable="reader"):
        await _send_raw(bus, newer, _forged_claims(bus, **more))
        good = _forged_claims(bus, dataschema=V2, data={"topic": "ml", "content": "c", "x": 1})
        await _send_raw(bus, newer, good)
        await wait_until(lambda: len(handled) == 1)
        await wait_until(lambda: bus.security.rejected["invalid-event"] == 1)
    [refusal] = refused
    assert refusal.reason == "invalid-event"
    assert refusal.detail.startswith(next(iter(more)))  # names the claim
    if more.get("dataschema") == "not a uri":
        assert "absolute URI" in refusal.detail
    [event] = handled
    assert event.id == good["id"]
    assert event.parse(KnowledgeShared).extra == {"x": 1}


async def test_data_that_is_not_an_object_is_still_an_invalid_event(bus: eventwire.Bus) -> None:
    newer = make_identity("newer", bus.keyring)

    async def publish() -> None:
        await _send_raw(bus, newer, _forged_claims(bus, data=["not", "an", "object"]))

    event = await _first(bus, "knowledge.>", publish)
    with pytest.raises(InvalidEvent) as info:
        event.parse(KnowledgeShared)
    assert info.value.field == "data"
