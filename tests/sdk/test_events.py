"""Event kinds, claims, the Event model and the codec (pure: no server)."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from datetime import datetime
from typing import Any

import pydantic
import pytest

import eventwire
from eventwire import (
    AgentLifecycle,
    CustomEvent,
    ErrorReported,
    Event,
    EventTooLarge,
    HelpRequested,
    InvalidEvent,
    Keyring,
    KnowledgeShared,
    Rejection,
    StatusUpdate,
    TaskCompleted,
    WrongTenant,
)
from eventwire._codec import SIGNATURE_HEADER, Codec, Received, Signed
from eventwire._event import build_claims, event_from_claims
from eventwire._kinds import KINDS, TYPE_PREFIX, EventData
from eventwire._subjects import check_subject, matches
from eventwire_security import (
    DEFAULT_MAX_BYTES,
    Identity,
    Principal,
    message_id,
    sign_event,
    verify_event,
)
from eventwire_security.hazmat import encode_claims, sign_detached
from tests.conftest import make_identity

ALICE = Principal("acme", "alice")
RFC3339_UTC = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z\Z")


@pytest.fixture
def alice(keyring: Keyring) -> Identity:
    return make_identity("alice", keyring)


@pytest.fixture
def codec(keyring: Keyring) -> Codec:
    return Codec(tenant="acme", root="ew", keyring=keyring, max_bytes=DEFAULT_MAX_BYTES)


@pytest.fixture
def small_codec(keyring: Keyring) -> Codec:
    return Codec(tenant="acme", root="ew", keyring=keyring, max_bytes=1024)


def unb64(data: bytes) -> bytes:
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))


# --- the kinds and their subjects --------------------------------------------------------

# (item, subject, type, the pattern of its row in the _subjects table)
KIND_TABLE: list[tuple[Any, str, str, str]] = [
    (
        KnowledgeShared(topic="ml", content="attention", confidence=0.5, tags=("a", "b")),
        "knowledge.ml",
        "io.eventwire.knowledge.shared",
        "knowledge.>",
    ),
    (
        KnowledgeShared(topic="ml.nlp", content="x"),
        "knowledge.ml.nlp",
        "io.eventwire.knowledge.shared",
        "knowledge.>",
    ),
    (
        HelpRequested(capability="search", question="where?", context={"k": [1, "two", None]}),
        "capability.search.help",
        "io.eventwire.help.requested",
        "capability.*.help",
    ),
    (
        TaskCompleted(task_type="index", task_id="t-1", result={"docs": 3}),
        "task.index.completed",
        "io.eventwire.task.completed",
        "task.*.completed",
    ),
    *(
        (
            ErrorReported(severity=severity, message="m", code="c"),
            f"error.{severity}",
            "io.eventwire.error.reported",
            "error.*",
        )
        for severity in ("info", "warning", "error", "critical")
    ),
    (
        StatusUpdate(component="db", state="up", details={"lag": 0.5}),
        "status.db",
        "io.eventwire.status.update",
        "status.*",
    ),
    *(
        (
            AgentLifecycle(agent="alice", phase=phase, instance="i-1", capabilities=("search",)),
            f"agent.lifecycle.{phase}",
            "io.eventwire.agent.lifecycle",
            "agent.lifecycle.*",
        )
        for phase in ("started", "stopped")
    ),
    (
        CustomEvent("custom.orders.created", "com.example.order", {"id": 7}),
        "custom.orders.created",
        "com.example.order",
        "custom.>",
    ),
    (
        CustomEvent("system.coordination.saga", "com.example.saga", None),
        "system.coordination.saga",
        "com.example.saga",
        "system.coordination.>",
    ),
]


@pytest.mark.parametrize(("item", "subject", "event_type", "row"), KIND_TABLE)
def test_kind_subject_and_type(item: Any, subject: str, event_type: str, row: str) -> None:
    assert item.subject() == subject
    assert item.event_type == event_type
    assert check_subject(item.subject()) == subject
    assert matches(row, item.subject())


def test_kinds_registry() -> None:
    assert set(KINDS) == {
        "io.eventwire.knowledge.shared",
        "io.eventwire.help.requested",
        "io.eventwire.task.completed",
        "io.eventwire.error.reported",
        "io.eventwire.status.update",
        "io.eventwire.agent.lifecycle",
    }
    for event_type, kind in KINDS.items():
        assert event_type.startswith(TYPE_PREFIX)
        assert kind.event_type == event_type
        assert issubclass(kind, EventData)


def test_kind_data_is_json() -> None:
    item = KnowledgeShared(topic="ml", content="c", confidence=1, tags=("a",))
    assert item.data() == {"topic": "ml", "content": "c", "confidence": 1.0, "tags": ["a"]}
    assert TaskCompleted(task_type="t", task_id="1").data() == {
        "task_type": "t",
        "task_id": "1",
        "result": None,
    }
    assert ErrorReported(severity="info", message="m").data() == {
        "severity": "info",
        "message": "m",
        "code": None,
        "details": {},
    }


def test_kinds_are_frozen() -> None:
    item = KnowledgeShared(topic="ml", content="c")
    with pytest.raises(pydantic.ValidationError):
        item.content = "other"  # type: ignore[misc]


def test_custom_event_accessors() -> None:
    item = CustomEvent("custom.x", "t", [1, {"a": None}])
    assert item.subject() == "custom.x"
    assert item.event_type == "t"
    assert item.data() == [1, {"a": None}]
    assert repr(item) == "CustomEvent('custom.x', 't')"
    assert CustomEvent("custom.x", "t").data() is None
    assert CustomEvent("custom.x", "x" * 256).event_type == "x" * 256


def test_knowledge_topic_cannot_exceed_max_tokens() -> None:
    with pytest.raises(InvalidEvent):
        KnowledgeShared(topic=".".join(["a"] * 16), content="x")


# --- validation errors of the typed kinds: eventwire.InvalidEvent naming the field --------


@pytest.mark.parametrize(
    "topic", ["", "a..b", ".a", "a.", "a b", "a.*", ">", "café", "x" * 65, "a/b"]
)
def test_knowledge_bad_topic(topic: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        KnowledgeShared(topic=topic, content="x")
    assert info.value.field == "topic"


@pytest.mark.parametrize(
    "confidence", [-0.01, 1.01, -1, 2, float("nan"), float("inf"), float("-inf"), "0.5", True]
)
def test_knowledge_bad_confidence(confidence: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        KnowledgeShared(topic="ml", content="x", confidence=confidence)
    assert info.value.field is not None
    assert info.value.field.split(".")[0] == "confidence"


@pytest.mark.parametrize("confidence", [0, 0.0, 1, 1.0, 0.25, None])
def test_knowledge_confidence_bounds(confidence: Any) -> None:
    item = KnowledgeShared(topic="ml", content="x", confidence=confidence)
    assert item.confidence == confidence


@pytest.mark.parametrize(
    ("kind", "fields", "loc"),
    [
        # unknown fields (extra=forbid)
        (KnowledgeShared, {"topic": "ml", "content": "x", "source": "acme/bob"}, "source"),
        (HelpRequested, {"capability": "s", "question": "q", "extra": 1}, "extra"),
        (TaskCompleted, {"task_type": "t", "task_id": "1", "status": "ok"}, "status"),
        (ErrorReported, {"severity": "info", "message": "m", "level": 1}, "level"),
        (StatusUpdate, {"component": "db", "state": "up", "x": None}, "x"),
        (AgentLifecycle, {"agent": "a", "phase": "started", "instance": "i", "y": 1}, "y"),
        # wrong types (strict: no coercion)
        (KnowledgeShared, {"topic": 1, "content": "x"}, "topic"),
        (KnowledgeShared, {"topic": "ml", "content": 1}, "content"),
        (KnowledgeShared, {"topic": "ml", "content": b"x"}, "content"),
        (KnowledgeShared, {"topic": "ml", "content": "x", "tags": [1]}, "tags"),
        (HelpRequested, {"capability": "s", "question": None}, "question"),
        (HelpRequested, {"capability": "s", "question": "q", "context": []}, "context"),
        (TaskCompleted, {"task_type": "t", "task_id": 1}, "task_id"),
        (StatusUpdate, {"component": "db", "state": 1}, "state"),
        (AgentLifecycle, {"agent": "a", "phase": "started", "instance": 1}, "instance"),
        # missing fields
        (KnowledgeShared, {"topic": "ml"}, "content"),
        (TaskCompleted, {"task_type": "t"}, "task_id"),
        # bad tokens
        (HelpRequested, {"capability": "a.b", "question": "q"}, "capability"),
        (HelpRequested, {"capability": "", "question": "q"}, "capability"),
        (TaskCompleted, {"task_type": "x y", "task_id": "1"}, "task_type"),
        (StatusUpdate, {"component": "db.main", "state": "up"}, "component"),
        (StatusUpdate, {"component": "*", "state": "up"}, "component"),
        (AgentLifecycle, {"agent": "a b", "phase": "started", "instance": "i"}, "agent"),
        # literals
        (AgentLifecycle, {"agent": "a", "phase": "paused", "instance": "i"}, "phase"),
        # non-JSON values in JSON fields
        (HelpRequested, {"capability": "s", "question": "q", "context": {"k": {1}}}, "context"),
        (TaskCompleted, {"task_type": "t", "task_id": "1", "result": object()}, "result"),
    ],
)
def test_kind_validation_errors(kind: type[EventData], fields: dict[str, Any], loc: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        kind(**fields)
    assert info.value.field is not None
    assert info.value.field.split(".")[0] == loc


@pytest.mark.parametrize("severity", ["fatal", "INFO", "", "warn", None, 1])
def test_error_reported_bad_severity(severity: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        ErrorReported(severity=severity, message="m")
    assert info.value.field == "severity"


# --- CustomEvent validation (eventwire.InvalidEvent) -------------------------------------


@pytest.mark.parametrize(
    "subject",
    ["", "custom", "nope.x", "custom..x", "custom.*", "custom.>", "custom.a b", None, 7],
)
def test_custom_event_bad_subject(subject: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        CustomEvent(subject, "t")
    assert info.value.field == "subject"


@pytest.mark.parametrize("event_type", ["", "x" * 257, None, 1, b"t"])
def test_custom_event_bad_type(event_type: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        CustomEvent("custom.x", event_type)
    assert info.value.field == "type"
    assert str(info.value).startswith("type: ")


# --- build_claims ------------------------------------------------------------------------


def test_build_claims_shape() -> None:
    before = time.time()
    item = KnowledgeShared(topic="ml", content="c")
    claims = build_claims(item, ALICE)
    after = time.time()
    assert set(claims) == {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "data",
        "tenant",
        "root",
        "iat",
        "correlationid",
        "dataschema",
    }
    assert claims["specversion"] == "1.0"
    assert claims["source"] == "acme/alice"
    assert claims["tenant"] == "acme"
    assert claims["type"] == "io.eventwire.knowledge.shared"
    assert claims["subject"] == "knowledge.ml"
    assert claims["datacontenttype"] == "application/json"
    assert claims["data"] == item.data()
    assert claims["correlationid"] == claims["id"]
    assert int(before) <= claims["iat"] <= int(after)
    assert "exp" not in claims  # an expiry only when the publisher asks for one (ttl=)
    assert claims["root"] == "ew"
    assert RFC3339_UTC.match(claims["time"]), claims["time"]
    stamp = datetime.fromisoformat(claims["time"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None
    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert 0 <= stamp.timestamp() - claims["iat"] <= 1
    assert before - 1e-3 <= stamp.timestamp() <= after + 1e-3


def test_build_claims_id_is_uuid7() -> None:
    before_ms = time.time_ns() // 1_000_000
    event_id = build_claims(KnowledgeShared(topic="ml", content="c"), ALICE)["id"]
    after_ms = time.time_ns() // 1_000_000
    parsed = uuid.UUID(event_id)
    assert str(parsed) == event_id  # canonical lowercase hyphenated form
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert event_id[14] == "7"
    assert event_id[19] in "89ab"
    assert before_ms <= parsed.int >> 80 <= after_ms


def test_build_claims_ids_increase_over_time() -> None:
    item = KnowledgeShared(topic="ml", content="c")
    ids = []
    for _ in range(5):
        ids.append(build_claims(item, ALICE)["id"])
        time.sleep(0.003)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    assert [uuid.UUID(i).int for i in ids] == sorted(uuid.UUID(i).int for i in ids)


def test_build_claims_ids_are_unique() -> None:
    item = KnowledgeShared(topic="ml", content="c")
    assert len({build_claims(item, ALICE)["id"] for _ in range(1000)}) == 1000


def test_build_claims_context() -> None:
    claims = build_claims(
        TaskCompleted(task_type="t", task_id="1"),
        ALICE,
        correlation_id="corr-1",
        causation_id="cause-1",
        partition_key="pk",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ttl=60,
    )
    assert claims["correlationid"] == "corr-1"
    assert claims["correlationid"] != claims["id"]
    assert claims["causationid"] == "cause-1"
    assert claims["partitionkey"] == "pk"
    assert claims["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert claims["exp"] == claims["iat"] + 60


@pytest.mark.parametrize("name", ["causationid", "partitionkey", "traceparent"])
def test_build_claims_optional_only_when_given(name: str) -> None:
    arg = {"causationid": "causation_id", "partitionkey": "partition_key"}.get(name, name)
    others = {"causationid", "partitionkey", "traceparent"} - {name}
    claims = build_claims(KnowledgeShared(topic="ml", content="c"), ALICE, **{arg: "v"})
    assert claims[name] == "v"
    assert not others & set(claims)


@pytest.mark.parametrize(
    ("arg", "field", "value"),
    [
        ("causation_id", "causationid", ""),
        ("partition_key", "partitionkey", ""),
        ("traceparent", "traceparent", ""),
        ("causation_id", "causationid", 5),
        ("partition_key", "partitionkey", b"pk"),
        ("traceparent", "traceparent", ["x"]),
    ],
)
def test_build_claims_rejects_bad_context(arg: str, field: str, value: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        build_claims(KnowledgeShared(topic="ml", content="c"), ALICE, **{arg: value})
    assert info.value.field == field


def test_build_claims_rejects_non_string_correlation_id() -> None:
    with pytest.raises(InvalidEvent) as info:
        build_claims(KnowledgeShared(topic="ml", content="c"), ALICE, correlation_id=123)  # type: ignore[arg-type]
    assert info.value.field == "correlationid"


def test_build_claims_custom_event() -> None:
    claims = build_claims(CustomEvent("custom.x.y", "com.example.t", {"a": [1]}), ALICE)
    assert claims["type"] == "com.example.t"
    assert claims["subject"] == "custom.x.y"
    assert claims["data"] == {"a": [1]}


# --- event_from_claims and Event ---------------------------------------------------------


def test_event_from_claims_round_trip() -> None:
    item = KnowledgeShared(topic="ml", content="c", confidence=0.75, tags=("t",))
    claims = build_claims(item, ALICE, causation_id="c-1", partition_key="p")
    event = event_from_claims(claims, "kid-1")
    assert isinstance(event, eventwire.Event)
    assert event.id == claims["id"]
    assert event.source == "acme/alice"
    assert event.agent == "alice"
    assert event.tenant == "acme"
    assert event.type == KnowledgeShared.event_type
    assert event.subject == "knowledge.ml"
    assert event.data == claims["data"]
    assert event.iat == claims["iat"]
    assert event.exp is None
    assert event.root == claims["root"] == "ew"
    assert event.correlationid == claims["id"]
    assert event.causationid == "c-1"
    assert event.partitionkey == "p"
    assert event.traceparent is None
    assert event.signer_kid == "kid-1"
    assert event.time.tzinfo is not None
    assert event.time.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert event.time == datetime.fromisoformat(claims["time"].replace("Z", "+00:00"))
    assert event.model_dump(mode="json", exclude_none=True) == claims
    assert event.body == item
    assert event.parse(KnowledgeShared) == item
    with pytest.raises(pydantic.ValidationError):
        event.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("item", [row[0] for row in KIND_TABLE])
def test_event_body(item: Any) -> None:
    event = event_from_claims(build_claims(item, ALICE), "kid")
    if isinstance(item, CustomEvent):
        assert event.body is None
        assert event.data == item.data()
    else:
        assert event.body == item
        assert type(event.body) is type(item)


def test_event_body_none_for_unknown_io_type() -> None:
    event = event_from_claims(build_claims(CustomEvent("custom.x", "io.eventwire.nope"), ALICE), "")
    assert event.body is None
    assert event.signer_kid == ""


def test_event_parse_wrong_kind() -> None:
    event = event_from_claims(build_claims(KnowledgeShared(topic="ml", content="c"), ALICE), "k")
    with pytest.raises(InvalidEvent) as info:
        event.parse(TaskCompleted)
    assert info.value.field == "type"
    custom = event_from_claims(build_claims(CustomEvent("custom.x", "t", {}), ALICE), "k")
    with pytest.raises(InvalidEvent) as info:
        custom.parse(KnowledgeShared)
    assert info.value.field == "type"


def test_event_parse_bad_data() -> None:
    claims = build_claims(CustomEvent("knowledge.ml", KnowledgeShared.event_type, {"x": 1}), ALICE)
    event = event_from_claims(claims, "k")
    with pytest.raises(InvalidEvent) as info:
        event.parse(KnowledgeShared)
    assert info.value.field == "data"
    with pytest.raises(InvalidEvent) as info:
        _ = event.body
    assert info.value.field == "data"


def _claims() -> dict[str, Any]:
    return build_claims(KnowledgeShared(topic="ml", content="c"), ALICE)


@pytest.mark.parametrize(
    "name",
    [
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "tenant",
        "root",
        "iat",
        "correlationid",
    ],
)
def test_event_from_claims_missing_field(name: str) -> None:
    claims = _claims()
    del claims[name]
    with pytest.raises(InvalidEvent) as info:
        event_from_claims(claims, "k")
    assert str(info.value) == f"{name}: Field required"


def test_event_from_claims_missing_data_is_an_error() -> None:
    claims = _claims()
    del claims["data"]
    with pytest.raises(InvalidEvent) as info:
        event_from_claims(claims, "k")
    assert str(info.value) == "data: Field required"


@pytest.mark.parametrize("name", ["extra", "kid", "dataref", "Source"])
def test_event_from_claims_unknown_field(name: str) -> None:
    claims = {**_claims(), name: "x"}
    with pytest.raises(InvalidEvent) as info:
        event_from_claims(claims, "k")
    assert str(info.value) == f"{name}: Extra inputs are not permitted"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("specversion", "2.0"),
        ("specversion", 1.0),
        ("id", 5),
        ("source", None),
        ("type", ["t"]),
        ("subject", 1),
        ("datacontenttype", "text/plain"),
        ("tenant", {"a": 1}),
        ("iat", "1700000000"),
        ("iat", 1.5),
        ("iat", True),
        ("exp", "tomorrow"),
        ("correlationid", 1),
        ("causationid", 3),
        ("traceparent", False),
        ("partitionkey", []),
        ("time", "yesterday"),
        ("time", None),
    ],
)
def test_event_from_claims_wrong_type(name: str, value: Any) -> None:
    claims = {**_claims(), name: value}
    with pytest.raises(InvalidEvent) as info:
        event_from_claims(claims, "k")
    assert str(info.value).startswith(f"{name}: ")


@pytest.mark.parametrize(
    "value",
    [1700000000, 1.5, "1700000000", "2026-01-01", "2026-01-01T00:00:00"],
    ids=["int", "float", "numeric-str", "date-only", "no-offset"],
)
def test_event_from_claims_time_must_be_rfc3339(value: Any) -> None:
    with pytest.raises(InvalidEvent):
        event_from_claims({**_claims(), "time": value}, "k")


def test_event_from_claims_not_a_dict() -> None:
    with pytest.raises(InvalidEvent):
        event_from_claims([], "k")  # type: ignore[arg-type]


# --- Codec.sign --------------------------------------------------------------------------


def test_codec_sign_and_open(codec: Codec, alice: Identity) -> None:
    item = KnowledgeShared(topic="ml", content="c")
    signed = codec.sign(item, alice, causation_id="c-1")
    assert isinstance(signed, Signed)
    assert signed.subject == "knowledge.ml"
    assert signed.wire_subject == "ew.knowledge.ml"
    assert signed.msg_id == message_id(signed.signature)
    assert signed.headers == {
        SIGNATURE_HEADER: signed.signature,
        "content-type": "application/cloudevents+json",
        "Nats-Msg-Id": signed.msg_id,
    }
    envelope = verify_event(signed.body, signed.signature, codec.keyring)
    assert envelope.claims["id"] == signed.event_id
    assert envelope.claims["causationid"] == "c-1"
    assert envelope.claims["root"] == "ew"
    assert signed.body == encode_claims(envelope.claims)  # the body is the CloudEvent itself
    event = codec.open(signed.body, signed.headers, signed.wire_subject)
    assert isinstance(event, Event)
    assert event.id == signed.event_id
    assert event.signer_kid == alice.kid
    assert event.body == item
    assert codec.stats.verified == 0  # open() does not count; record() does
    codec.record(event)
    assert codec.stats.verified == 1
    assert codec.stats.rejected == {}


def test_codec_sign_subject_override(codec: Codec, alice: Identity) -> None:
    signed = codec.sign(ErrorReported(severity="info", message="m"), alice, subject="direct.acme.b")
    assert signed.subject == "direct.acme.b"
    assert signed.wire_subject == "ew.direct.acme.b"
    claims = verify_event(signed.body, signed.signature, codec.keyring).claims
    assert claims["subject"] == "direct.acme.b"


def test_codec_sign_each_event_is_new(codec: Codec, alice: Identity) -> None:
    item = KnowledgeShared(topic="ml", content="c")
    first, second = codec.sign(item, alice), codec.sign(item, alice)
    assert first.event_id != second.event_id
    assert first.body != second.body
    assert first.signature != second.signature
    assert first.msg_id != second.msg_id


def test_codec_sign_wrong_tenant(codec: Codec, keyring: Keyring) -> None:
    other = make_identity("alice", keyring, tenant="other")
    with pytest.raises(WrongTenant) as info:
        codec.sign(KnowledgeShared(topic="ml", content="c"), other)
    assert info.value.identity_tenant == "other"
    assert info.value.bus_tenant == "acme"
    assert isinstance(info.value, eventwire.EventwireError)


def test_codec_sign_too_large(small_codec: Codec, alice: Identity) -> None:
    small_codec.sign(CustomEvent("custom.x", "t", "x" * 100), alice)  # fits
    with pytest.raises(EventTooLarge) as info:
        small_codec.sign(CustomEvent("custom.x", "t", "x" * 2000), alice)
    assert info.value.limit == 1024
    assert info.value.size > 1024
    assert isinstance(info.value, InvalidEvent)


@pytest.mark.parametrize(
    "data",
    [
        {1, 2},
        {"v": float("nan")},
        [float("inf")],
        {"v": -float("inf")},
        {"v": object()},
        b"bytes",
        {("tuple", "key"): 1},
    ],
)
def test_codec_sign_non_json_data(codec: Codec, alice: Identity, data: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        codec.sign(CustomEvent("custom.x", "t", data), alice)
    assert info.value.field == "data"


def test_codec_sign_nan_in_typed_kind(codec: Codec, alice: Identity) -> None:
    item = HelpRequested(capability="s", question="q", context={"k": float("nan")})
    with pytest.raises(InvalidEvent) as info:
        codec.sign(item, alice)
    assert info.value.field == "data"


# --- Codec.open: rejections, never exceptions -------------------------------------------


def _rejected(result: Event | Rejection, reason: str, wire: str, kid: str | None) -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.wire_subject == wire
    assert result.kid == kid
    assert result.detail
    return result


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "bad-signature"),
        (b"garbage", "bad-signature"),
        (b"\x00\xff\xfe.\x80.\x01", "bad-signature"),
        (b"{}", "bad-signature"),
        ("not bytes", "malformed"),
        (None, "malformed"),
        (b"x" * (DEFAULT_MAX_BYTES + 1), "oversized"),
    ],
)
def test_codec_open_garbage(codec: Codec, alice: Identity, body: Any, reason: str) -> None:
    """Any body under a valid signature header of another event: refused, never raised."""
    signature = codec.sign(KnowledgeShared(topic="ml", content="c"), alice).signature
    kid = alice.kid if reason == "bad-signature" else None
    result = codec.open(body, {SIGNATURE_HEADER: signature}, "ew.knowledge.ml")
    _rejected(result, reason, "ew.knowledge.ml", kid)


@pytest.mark.parametrize(
    "signature",
    [None, "", "garbage", "a.b.c", "a..b", "...", "\u00e9..x", "x" * 10_000],
)
def test_codec_open_bad_signature_header(codec: Codec, alice: Identity, signature: Any) -> None:
    signed = codec.sign(KnowledgeShared(topic="ml", content="c"), alice)
    headers = None if signature is None else {SIGNATURE_HEADER: signature}
    result = codec.open(signed.body, headers, signed.wire_subject)
    _rejected(result, "malformed", signed.wire_subject, None)


def test_codec_open_signature_of_another_event(codec: Codec, alice: Identity) -> None:
    first = codec.sign(KnowledgeShared(topic="ml", content="a"), alice)
    second = codec.sign(KnowledgeShared(topic="ml", content="b"), alice)
    result = codec.open(second.body, {SIGNATURE_HEADER: first.signature}, second.wire_subject)
    _rejected(result, "bad-signature", second.wire_subject, alice.kid)


def test_codec_open_unknown_key(codec: Codec) -> None:
    mallory = Identity.generate("acme", "mallory")  # not in the keyring
    signed = codec.sign(KnowledgeShared(topic="ml", content="c"), mallory)
    _rejected(
        codec.open(signed.body, signed.headers, signed.wire_subject),
        "unknown-key",
        "ew.knowledge.ml",
        mallory.kid,
    )


def test_codec_open_revoked_key(codec: Codec, alice: Identity) -> None:
    signed = codec.sign(KnowledgeShared(topic="ml", content="c"), alice)
    codec.keyring.revoke(alice.kid)
    _rejected(
        codec.open(signed.body, signed.headers, signed.wire_subject),
        "key-not-valid",
        "ew.knowledge.ml",
        alice.kid,
    )


@pytest.mark.parametrize(
    "wire", ["ew.knowledge.other", "ew.knowledge.ml.x", "ew.status.ml", "other.knowledge.ml", "ew"]
)
def test_codec_open_subject_mismatch(codec: Codec, alice: Identity, wire: str) -> None:
    signed = codec.sign(KnowledgeShared(topic="ml", content="c"), alice)
    _rejected(codec.open(signed.body, signed.headers, wire), "subject-mismatch", wire, alice.kid)


@pytest.mark.parametrize("root", ["staging", "ew2", None])
def test_codec_open_event_of_another_root(codec: Codec, alice: Identity, root: str | None) -> None:
    claims = build_claims(KnowledgeShared(topic="ml", content="c"), alice.principal, root="ew")
    if root is None:
        del claims["root"]
    else:
        claims["root"] = root
    forged = sign_event(claims, alice)
    result = _rejected(
        codec.open(forged.body, {SIGNATURE_HEADER: forged.signature}, "ew.knowledge.ml"),
        "wrong-root" if root else "invalid-event",  # claims are validated before any use
        "ew.knowledge.ml",
        alice.kid,
    )
    assert (repr(root) if root else "root: Field required") in result.detail


def test_codec_open_wrong_tenant(codec: Codec, keyring: Keyring) -> None:
    other = make_identity("alice", keyring, tenant="other")
    forged = sign_event(
        build_claims(KnowledgeShared(topic="ml", content="c"), other.principal), other
    )
    envelope = verify_event(forged.body, forged.signature, keyring)
    assert envelope.signer.principal == Principal("other", "alice")
    result = _rejected(
        codec.open(forged.body, {SIGNATURE_HEADER: forged.signature}, "ew.knowledge.ml"),
        "wrong-tenant",
        "ew.knowledge.ml",
        other.kid,
    )
    assert "'other'" in result.detail


@pytest.mark.parametrize(
    "claims",
    [
        {"source": "acme/alice", "tenant": "acme", "root": "ew", "subject": "knowledge.ml"},
        {**_claims(), "extra": 1},
        {**_claims(), "iat": "now"},
        {**_claims(), "specversion": "0.3"},
    ],
)
def test_codec_open_invalid_event(codec: Codec, alice: Identity, claims: dict[str, Any]) -> None:
    forged = sign_event(claims, alice)
    headers = {SIGNATURE_HEADER: forged.signature}
    _rejected(
        codec.open(forged.body, headers, "ew.knowledge.ml"),
        "invalid-event",
        "ew.knowledge.ml",
        alice.kid,
    )


def test_codec_open_owner_mismatch(codec: Codec, alice: Identity, keyring: Keyring) -> None:
    make_identity("bob", keyring)
    claims = build_claims(KnowledgeShared(topic="ml", content="c"), Principal("acme", "bob"))
    body = encode_claims(claims)
    headers = {SIGNATURE_HEADER: sign_detached(body, alice)}
    _rejected(
        codec.open(body, headers, "ew.knowledge.ml"), "owner-mismatch", "ew.knowledge.ml", alice.kid
    )


def test_codec_open_malformed_claims(codec: Codec, alice: Identity) -> None:
    body = b'{"source":"acme/alice","source":"acme/alice"}'
    headers = {SIGNATURE_HEADER: sign_detached(body, alice)}
    _rejected(
        codec.open(body, headers, "ew.knowledge.ml"),
        "malformed-claims",
        "ew.knowledge.ml",
        alice.kid,
    )


def test_codec_open_oversized_for_small_codec(
    small_codec: Codec, codec: Codec, alice: Identity
) -> None:
    signed = codec.sign(CustomEvent("custom.x", "t", "x" * 2000), alice)
    _rejected(
        small_codec.open(signed.body, signed.headers, signed.wire_subject),
        "oversized",
        "ew.custom.x",
        None,
    )


def test_codec_record_counts_rejections(codec: Codec, alice: Identity) -> None:
    signed = codec.sign(KnowledgeShared(topic="ml", content="c"), alice)
    for body, wire in [
        (b"x", "ew.knowledge.ml"),
        (b"y", "ew.knowledge.ml"),
        (signed.body, "ew.knowledge.zz"),
        (signed.body, signed.wire_subject),
    ]:
        codec.record(codec.open(body, signed.headers, wire))
    assert codec.stats.verified == 1
    assert codec.stats.rejected == {"bad-signature": 2, "subject-mismatch": 1}


def test_codec_open_many_keeps_order(codec: Codec, alice: Identity) -> None:
    signed = [codec.sign(KnowledgeShared(topic="ml", content=str(i)), alice) for i in range(9)]
    items: list[Received] = [(s.body, s.headers, s.wire_subject, None) for s in signed]
    items[3] = (b"garbage", None, "ew.knowledge.ml", None)
    items[7] = (signed[7].body, signed[7].headers, "ew.knowledge.nope", None)
    results = codec.open_many(items)
    assert len(results) == 9
    for index, result in enumerate(results):
        if index == 3:
            _rejected(result, "malformed", "ew.knowledge.ml", None)
        elif index == 7:
            _rejected(result, "subject-mismatch", "ew.knowledge.nope", alice.kid)
        else:
            assert isinstance(result, Event)
            assert result.id == signed[index].event_id
    assert codec.stats.verified == 7
    assert codec.stats.rejected == {"malformed": 1, "subject-mismatch": 1}


def test_codec_sign_many_keeps_order(codec: Codec, alice: Identity) -> None:
    items = [KnowledgeShared(topic="ml", content=str(i)) for i in range(10)]
    signed = codec.sign_many(items, alice)
    contents = [json.loads(s.body)["data"]["content"] for s in signed]
    assert contents == [str(i) for i in range(10)]
    assert len({s.event_id for s in signed}) == 10
