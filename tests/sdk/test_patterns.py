"""Complex event patterns on a real nats-server: sequence, absence and threshold fire
exactly once per match and never when the window is missed; a detector closed mid-window
resumes from its KV state; one rebuilt from scratch publishes no match twice; bad input.

Event times come from a signed data field (``event_time=``) so windows are exact without
waiting; one test uses the signed ``time`` claim and the idle wall-clock watermark."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

import eventwire
from eventwire import (
    MATCHED,
    Absence,
    CustomEvent,
    Event,
    InvalidArgument,
    InvalidEvent,
    Keyring,
    Pattern,
    PatternDetector,
    PatternMatch,
    Policy,
    Sequence,
    Step,
    Threshold,
)
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import Mapping

    from eventwire import Bus, EmbeddedServer, Identity

T0 = 1_800_000_000.0
FAILED = Step("custom.auth.login.failed")
SUCCESS = Step("custom.auth.login.succeeded")
WRONG: dict[str, Any] = {"text": "10", "half": 2.5, "none": None, "three": 3}  # typed wrong
FRAUD = Sequence(Threshold(FAILED, at_least=3, within=60), SUCCESS, within=60)


def data_time(event: Event) -> float:
    data = event.data
    assert isinstance(data, dict)
    at = data["at"]
    assert isinstance(at, float | int)
    return float(at)


async def emit(bus: Bus, who: Identity, subject: str, key: str, at: float, **data: Any) -> int:
    """Publish one event of ``key`` at event time ``at``; its stream sequence."""
    item = CustomEvent(subject, subject.rsplit(".", 1)[1], {"at": at, **data})
    ack = await bus.publish(item, identity=who, partition_key=key)
    return ack.seq


def detector(bus: Bus, patterns: Mapping[str, Pattern], me: Identity, **kw: Any) -> PatternDetector:
    kw.setdefault("idle", None)
    return PatternDetector(bus, patterns, identity=me, name="cep", event_time=data_time, **kw)


async def stored_matches(bus: Bus) -> dict[str, int]:
    """How many match events the stream holds, by subject."""
    info = await bus.jetstream.stream_info(
        bus.stream, subjects_filter=f"{bus.root}.custom.pattern.>"
    )
    return dict(info.state.subjects or {})


async def collect_matches(bus: Bus, expected: int) -> list[Event]:
    """The verified match events, once ``expected`` have arrived."""
    seen: list[Event] = []

    async def keep(event: Event) -> None:
        seen.append(event)

    async with bus.subscribe("custom.pattern.>", keep, durable="check"):
        await wait_until(lambda: len(seen) >= expected)
    return seen


async def test_sequence_of_a_threshold_then_a_step_fires_once_within_the_window(
    bus: Bus, keyring: Keyring
) -> None:
    me, user = make_identity("cep", keyring), make_identity("web", keyring)
    matched: list[PatternMatch] = []

    async def on_match(match: PatternMatch) -> None:
        matched.append(match)

    async with detector(bus, {"takeover": FRAUD}, me, on_match=on_match) as cep:
        for offset in (0, 10, 20):  # alice: three failures, then a success: a match
            await emit(bus, user, "custom.auth.login.failed", "alice", T0 + offset)
        await emit(bus, user, "custom.auth.login.succeeded", "alice", T0 + 30)
        for offset in (0, 10, 20):  # bob: the success comes too late
            await emit(bus, user, "custom.auth.login.failed", "bob", T0 + offset)
        await emit(bus, user, "custom.auth.login.succeeded", "bob", T0 + 100)
        for offset in (0, 10):  # carol: two failures are not enough
            await emit(bus, user, "custom.auth.login.failed", "carol", T0 + offset)
        last = await emit(bus, user, "custom.auth.login.succeeded", "carol", T0 + 110)
        async with asyncio.timeout(10):
            await cep.wait_for(last)
        assert cep.counters.published == 1
    assert await stored_matches(bus) == {f"{bus.root}.custom.pattern.cep.takeover": 1}
    [event] = await collect_matches(bus, 1)
    assert event.type == MATCHED
    assert event.source == me.principal.source
    data = event.data
    assert isinstance(data, dict)
    assert data["key"] == "alice"
    assert data["pattern"] == "takeover"
    events = data["events"]
    assert isinstance(events, list)
    assert len(events) == 4
    assert event.causationid == events[-1]
    assert event.correlationid == "alice"
    assert [m.event_ids for m in matched] == [tuple(events)]


async def test_absence_fires_for_unanswered_and_late_answers_only(
    bus: Bus, keyring: Keyring
) -> None:
    me, shop = make_identity("cep", keyring), make_identity("shop", keyring)
    unpaid = Absence(
        Step("custom.order.placed"), not_followed_by=Step("custom.order.paid"), within=30
    )
    async with detector(bus, {"unpaid": unpaid}, me) as cep:
        await emit(bus, shop, "custom.order.placed", "o1", T0)
        await emit(bus, shop, "custom.order.placed", "o2", T0)
        await emit(bus, shop, "custom.order.placed", "o3", T0 + 1)
        await emit(bus, shop, "custom.order.paid", "o1", T0 + 10)  # in time
        await emit(bus, shop, "custom.order.paid", "o3", T0 + 40)  # too late
        assert cep.counters.published == 0
        # time passes: a later event moves the watermark beyond the deadlines
        last = await emit(bus, shop, "custom.order.paid", "o9", T0 + 100)
        async with asyncio.timeout(10):
            await cep.wait_for(last)
        assert cep.counters.published == 2
    events = await collect_matches(bus, 2)
    keys = sorted(str(e.data["key"]) for e in events if isinstance(e.data, dict))
    assert keys == ["o2", "o3"]
    assert await stored_matches(bus) == {f"{bus.root}.custom.pattern.cep.unpaid": 2}


async def test_threshold_counts_matching_data_in_a_sliding_window(
    bus: Bus, keyring: Keyring
) -> None:
    me, sensor = make_identity("cep", keyring), make_identity("sensor", keyring)
    hot = Step("custom.sensor.reading", where=lambda data: data["level"] > 5)  # type: ignore[call-overload,index,operator]
    async with detector(bus, {"hot": Threshold(hot, at_least=3, within=10)}, me) as cep:
        for offset, level in ((0, 7), (2, 8), (4, 9), (5, 9), (6, 9)):  # 3 then 2 more
            await emit(bus, sensor, "custom.sensor.reading", "s1", T0 + offset, level=level)
        for offset in (0, 6, 12):  # never 3 within 10 s
            await emit(bus, sensor, "custom.sensor.reading", "s2", T0 + offset, level=9)
        for offset, level in ((0, 9), (1, 1), (2, 9)):  # one reading is not hot
            await emit(bus, sensor, "custom.sensor.reading", "s3", T0 + offset, level=level)
        last = await emit(bus, sensor, "custom.sensor.reading", "s4", T0 + 50, level=1)
        async with asyncio.timeout(10):
            await cep.wait_for(last)
        assert cep.counters.published == 1
    [event] = await collect_matches(bus, 1)
    assert isinstance(event.data, dict)
    assert event.data["key"] == "s1"


async def test_a_detector_closed_mid_window_resumes_and_matches_once(
    bus: Bus, keyring: Keyring
) -> None:
    me, user = make_identity("cep", keyring), make_identity("web", keyring)
    first = []
    async with detector(bus, {"takeover": FRAUD}, me) as cep:
        for offset in (0, 10):
            first.append(await emit(bus, user, "custom.auth.login.failed", "alice", T0 + offset))
        async with asyncio.timeout(10):
            await cep.wait_for(first[-1])
        assert cep.active_keys == 1
    async with detector(bus, {"takeover": FRAUD}, me) as cep:
        assert cep.active_keys == 1  # the partial match, read back from KV
        assert cep.position == first[-1]
        await emit(bus, user, "custom.auth.login.failed", "alice", T0 + 20)
        last = await emit(bus, user, "custom.auth.login.succeeded", "alice", T0 + 25)
        async with asyncio.timeout(10):
            await cep.wait_for(last)
        assert cep.counters.published == 1
        assert cep.counters.applied == 2  # nothing read twice
        assert cep.active_keys == 0
    [event] = await collect_matches(bus, 1)
    assert isinstance(event.data, dict)
    events = event.data["events"]
    assert isinstance(events, list)
    assert len(events) == 4


async def test_a_detector_rebuilt_from_scratch_publishes_no_match_twice(
    bus: Bus, keyring: Keyring
) -> None:
    """As after a crash between publishing and storing: same matches, same message ids."""
    me, user = make_identity("cep", keyring), make_identity("web", keyring)
    for offset in (0, 10, 20):
        await emit(bus, user, "custom.auth.login.failed", "alice", T0 + offset)
    last = await emit(bus, user, "custom.auth.login.succeeded", "alice", T0 + 30)
    async with detector(bus, {"takeover": FRAUD}, me) as cep:
        async with asyncio.timeout(10):
            await cep.wait_for(last)
        assert cep.counters.published == 1
    # forget everything the detector stored: its consumer and its states
    for consumer in await bus.jetstream.consumers_info(bus.stream):
        await bus.jetstream.delete_consumer(bus.stream, consumer.name)
    bucket = await bus.jetstream.key_value(f"{bus.root}-projections")
    await bucket.purge_deletes(olderthan=-1)
    for key in await bucket.keys():
        await bucket.purge(key)
    async with detector(bus, {"takeover": FRAUD}, me) as cep:
        async with asyncio.timeout(10):
            await cep.wait_for(last)
        assert cep.counters.published == 1  # published again ...
    assert await stored_matches(bus) == {f"{bus.root}.custom.pattern.cep.takeover": 1}  # once


async def test_late_events_are_counted_and_dropped(bus: Bus, keyring: Keyring) -> None:
    me, user = make_identity("cep", keyring), make_identity("web", keyring)
    async with detector(bus, {"takeover": FRAUD}, me, lateness=5) as cep:
        await emit(bus, user, "custom.auth.login.failed", "alice", T0 + 100)
        await emit(bus, user, "custom.auth.login.failed", "alice", T0 + 96)  # within lateness
        last = await emit(bus, user, "custom.auth.login.failed", "alice", T0 + 10)  # late
        async with asyncio.timeout(10):
            await cep.wait_for(last)
        assert (cep.counters.applied, cep.counters.late) == (2, 1)
        assert cep.watermark == T0 + 95


async def test_absence_fires_on_the_wall_clock_when_no_event_comes(
    bus: Bus, keyring: Keyring
) -> None:
    """Signed ``time`` claims and the idle watermark: no later event is needed."""
    me, shop = make_identity("cep", keyring), make_identity("shop", keyring)
    unpaid = Absence(
        Step("custom.order.placed"), not_followed_by=Step("custom.order.paid"), within=0.5
    )
    async with PatternDetector(bus, {"unpaid": unpaid}, identity=me, name="cep", idle=0.5) as cep:
        await bus.publish(CustomEvent("custom.order.placed", "placed", {}), identity=shop)
        await wait_until(lambda: cep.counters.published == 1 and cep.active_keys == 0)
    assert await stored_matches(bus) == {f"{bus.root}.custom.pattern.cep.unpaid": 1}


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Sequence(FAILED, within=10), "parts"),
        (lambda: Sequence(FAILED, WRONG["text"], within=10), "parts[1]"),
        (lambda: Sequence(FAILED, SUCCESS, within=0), "within"),
        (lambda: Sequence(FAILED, SUCCESS, within=-1), "within"),
        (lambda: Sequence(FAILED, SUCCESS, within=float("inf")), "within"),
        (lambda: Sequence(FAILED, SUCCESS, within=WRONG["text"]), "within"),
        (lambda: Threshold(FAILED, at_least=0, within=10), "at_least"),
        (lambda: Threshold(FAILED, at_least=WRONG["half"], within=10), "at_least"),
        (lambda: Threshold(FAILED, at_least=True, within=10), "at_least"),
        (lambda: Threshold(FAILED, at_least=3, within=float("nan")), "within"),
        (lambda: Absence(FAILED, not_followed_by=WRONG["none"], within=5), "not_followed_by"),
        (lambda: Step("nofamily.x"), "subject"),
        (lambda: Step("custom..x"), "subject"),
        (lambda: Step("custom.x", where=WRONG["three"]), "where"),
    ],
)
def test_bad_pattern_parameters_are_typed_errors(build: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        build()
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("changes", "field", "error"),
    [
        ({"patterns": {}}, "patterns", InvalidArgument),
        ({"patterns": {"ok": "custom.x"}}, "patterns", InvalidArgument),
        ({"patterns": {"bad name": FRAUD}}, "patterns", InvalidEvent),
        ({"name": "no spaces"}, "name", InvalidArgument),
        ({"lateness": -1}, "lateness", InvalidArgument),
        ({"idle": 0}, "idle", InvalidArgument),
        ({"batch": 0}, "batch", InvalidArgument),
        ({"start": "middle"}, "start", InvalidArgument),
        ({"key": "partitionkey"}, "key", InvalidArgument),
    ],
)
async def test_bad_detector_parameters_are_typed_errors(
    bus: Bus, changes: dict[str, Any], field: str, error: type[Exception]
) -> None:
    arguments: dict[str, Any] = {"patterns": {"takeover": FRAUD}, "name": "cep"} | changes
    me = make_identity("cep")
    with pytest.raises(error) as raised:
        PatternDetector(bus, arguments.pop("patterns"), identity=me, **arguments)
    assert getattr(raised.value, "field", None) == field


async def test_patterns_combine(bus: Bus, keyring: Keyring) -> None:
    """A three-step sequence, a sequence ending in an absence, a threshold of sequences."""
    me, app = make_identity("cep", keyring), make_identity("app", keyring)
    a, b, c = (Step(f"custom.flow.{name}") for name in "abc")
    patterns: dict[str, Pattern] = {
        "abc": Sequence(a, b, c, within=10),
        "a-then-b-unanswered": Sequence(a, Absence(b, not_followed_by=c, within=10), within=30),
        "twice-ab": Threshold(Sequence(a, b, within=5), at_least=2, within=60),
    }
    script = {
        "k1": [("a", 0), ("b", 2), ("c", 3)],  # abc
        "k2": [("a", 0), ("c", 1), ("b", 2), ("c", 3)],  # abc (the early c is not a step)
        "k3": [("a", 0), ("b", 2), ("c", 20)],  # a-then-b-unanswered (c came too late)
        "k4": [("a", 0), ("b", 1), ("a", 10), ("b", 11)],  # twice-ab, a-then-b-unanswered
        "k5": [("b", 5), ("c", 6)],  # nothing: no a
    }
    async with detector(bus, patterns, me) as cep:
        for index, (key, steps) in enumerate(script.items()):  # one key after the other
            for name, at in steps:
                await emit(bus, app, f"custom.flow.{name}", key, T0 + 100 * index + at)
        last = await emit(bus, app, "custom.flow.c", "tick", T0 + 1000)  # time passes
        async with asyncio.timeout(10):
            await cep.wait_for(last)
    events = await collect_matches(bus, cep.counters.published)
    found = sorted(
        (str(e.data["pattern"]), str(e.data["key"])) for e in events if isinstance(e.data, dict)
    )
    assert found == [
        ("a-then-b-unanswered", "k3"), ("a-then-b-unanswered", "k4"),
        ("abc", "k1"), ("abc", "k2"), ("twice-ab", "k4"),
    ]  # fmt: skip


async def test_a_replayed_copy_is_refused_and_never_counted(bus: Bus, keyring: Keyring) -> None:
    """An attacker publishes captured bytes again under a fresh message id: two failures
    and a copy of one are not three."""
    me, user = make_identity("cep", keyring), make_identity("web", keyring)
    three = {"three": Threshold(FAILED, at_least=3, within=60)}
    async with detector(bus, three, me) as cep:
        await emit(bus, user, "custom.auth.login.failed", "alice", T0)
        seq = await emit(bus, user, "custom.auth.login.failed", "alice", T0 + 1)
        stored = await bus.jetstream.get_msg(bus.stream, seq)
        headers = {**(stored.headers or {}), "Nats-Msg-Id": "replayed"}
        replay = await bus.jetstream.publish(
            stored.subject or "", stored.data or b"", headers=headers
        )
        assert replay.duplicate is not True
        async with asyncio.timeout(10):
            await cep.wait_for(replay.seq)
        assert (cep.counters.applied, cep.counters.refused) == (2, 1)
        assert cep.counters.published == 0
    assert bus.security.rejected == {"already-seen": 1}


POLICY = Policy.from_toml(
    """
version = 1
[[rule]]
principal = "agent:web"
publish = ["custom.auth.>"]
[[rule]]
principal = "agent:cep"
publish = ["custom.pattern.>"]
consume = ["custom.auth.public.>"]
"""
)


async def test_with_a_policy_the_detector_reads_only_what_its_agent_may_consume(
    nats_server: EmbeddedServer, root: str
) -> None:
    keyring = Keyring()
    me, user = make_identity("cep", keyring), make_identity("web", keyring)
    twice = {"twice": Threshold(Step("custom.auth.>"), at_least=2, within=60)}
    async with (
        eventwire.connect(
            nats_server.url, tenant=TENANT, root=root, keyring=keyring, policy=POLICY
        ) as bus,
        detector(bus, twice, me) as cep,
    ):
        await emit(bus, user, "custom.auth.public.login", "alice", T0)
        seq = await emit(bus, user, "custom.auth.secret.login", "alice", T0 + 1)
        async with asyncio.timeout(10):
            await cep.wait_for(seq)
        assert (cep.counters.applied, cep.counters.refused) == (1, 1)
        assert cep.counters.published == 0
        seq = await emit(bus, user, "custom.auth.public.login", "alice", T0 + 2)
        async with asyncio.timeout(10):
            await cep.wait_for(seq)
        assert cep.counters.published == 1  # allowed to publish its matches
    assert bus.security.rejected == {"policy-denied": 1}
