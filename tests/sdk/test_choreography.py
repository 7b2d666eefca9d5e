"""Choreography tracking on a real nats-server: an overdue step is reported once per run
and step (two trackers, restarts), flows on time are not, late steps are recorded as
recovered, forged events and forged progress never count, bad definitions are refused."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    Choreography,
    ChoreographyTracker,
    CustomEvent,
    FlowStep,
    FlowStuck,
    Forbidden,
    Identity,
    InvalidArgument,
    InvalidChoreography,
    Keyring,
    NotFound,
    Policy,
    read_stuck,
)
from eventwire_security import sign_claims, sign_event
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

    from eventwire import Bus, EmbeddedServer

TICK = 0.1
BACKLOG = 200
ORDER = Choreography(
    "order",
    [
        FlowStep("custom.order.placed"),
        FlowStep("custom.payment.captured", within=1),
        FlowStep("custom.order.shipped", within=1),
    ],
)
SUBJECTS = [step.pattern for step in ORDER.steps]
STUCK = "system.coordination.stuck"


async def step(bus: Bus, who: Identity, index: int, correlation: str) -> None:
    event = CustomEvent(SUBJECTS[index], SUBJECTS[index], {"step": index})
    await bus.publish(event, identity=who, correlation_id=correlation)


async def stored_reports(bus: Bus, kind: str = "stuck") -> int:
    """How many reports of ``kind`` the events stream holds."""
    wire = f"{bus.root}.system.coordination.{kind}"
    info = await bus.jetstream.stream_info(bus.stream, subjects_filter=wire)
    return int((info.state.subjects or {}).get(wire, 0))


async def settle(seconds: float = 1.0) -> None:
    """Let trackers run a few more ticks past the deadlines, so that a second report
    would have been published by now."""
    await asyncio.sleep(seconds)


def tracker(bus: Bus, identity: Identity, **keywords: Any) -> ChoreographyTracker:
    return ChoreographyTracker(bus, [ORDER], identity=identity, tick=TICK, **keywords)


def total(trackers: list[ChoreographyTracker], field: str) -> Callable[[], int]:
    return lambda: sum(getattr(each.stats, field) for each in trackers)


async def test_an_overdue_step_is_reported_once_per_run_and_step_by_two_trackers(
    nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    connect = {"tenant": TENANT, "keyring": keyring, "root": root}
    async with (
        eventwire.connect(nats_server.url, **connect) as one,
        eventwire.connect(nats_server.url, **connect) as two,
        tracker(one, watcher) as first,
        tracker(two, watcher) as second,
    ):
        await step(one, shop, 0, "run-a")  # placed, never paid
        await step(one, shop, 0, "run-b")  # placed and paid, never shipped
        await step(one, shop, 1, "run-b")
        trackers = [first, second]
        await wait_until(lambda: total(trackers, "stuck")() == 2)
        await settle()
        assert total(trackers, "stuck")() == 2
        assert await stored_reports(one) == 2
        reports = sorted(await first.stuck(), key=lambda entry: entry.correlation)
    assert [(r.correlation, r.step, r.step_index, r.last_step) for r in reports] == [
        ("run-a", "custom.payment.captured", 1, "custom.order.placed"),
        ("run-b", "custom.order.shipped", 2, "custom.payment.captured"),
    ]
    for report in reports:
        assert report.flow == "order"
        assert report.signer == f"{TENANT}/watcher"
        assert report.deadline == pytest.approx(report.last_seen + 1)
        assert report.overdue_by >= 0
        assert report.recovered_at is None


async def test_a_flow_that_completes_in_time_is_never_reported(bus: Bus, keyring: Keyring) -> None:
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    async with tracker(bus, watcher) as observing:
        for index in range(3):
            await step(bus, shop, index, "run-ok")
        await wait_until(lambda: observing.stats.recorded == 3)
        await settle(1.5)  # past every deadline the run could have had
        progress = await observing.progress("order", "run-ok")
    assert progress is not None
    assert sorted(progress.seen) == [0, 1, 2]
    assert progress.stuck == {}
    assert observing.stats.stuck == observing.stats.duplicates == 0
    assert await stored_reports(bus) == 0
    assert await read_stuck(bus) == []


async def test_a_tracker_restarted_mid_flow_reports_once(bus: Bus, keyring: Keyring) -> None:
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    async with tracker(bus, watcher) as before:
        await step(bus, shop, 0, "run-r")
        await wait_until(lambda: before.stats.recorded == 1)
    await asyncio.sleep(1.2)  # the payment is overdue while no tracker runs
    async with tracker(bus, watcher) as after:
        await wait_until(lambda: after.stats.stuck == 1)
        await settle()
    async with tracker(bus, watcher) as again:  # the report is marked: not published again
        await settle()
    assert again.stats.stuck == again.stats.duplicates == 0
    assert await stored_reports(bus) == 1
    [report] = await read_stuck(bus)
    assert (report.correlation, report.step_index) == ("run-r", 1)


async def test_a_report_published_by_a_tracker_that_died_before_marking_it_is_not_repeated(
    bus: Bus, keyring: Keyring
) -> None:
    """A tracker published the report, then died before marking it in the progress: the
    next one publishes it again under the same message id, and the stream drops it."""
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    async with tracker(bus, watcher) as before:
        await step(bus, shop, 0, "run-d")
        await wait_until(lambda: before.stats.recorded == 1)
        progress = await before.progress("order", "run-d")
    assert progress is not None
    await asyncio.sleep(1.1)
    dead = FlowStuck(
        flow="order", correlation="run-d", step=SUBJECTS[1], step_index=1,
        last_step=SUBJECTS[0], last_step_index=0, last_seen=progress.seen[0].at,
        deadline=progress.seen[0].at + 1, overdue_by=0.1,
    )  # fmt: skip
    msg_id = f"{bus.root}.stuck.order.{hashlib.sha256(b'run-d').hexdigest()[:32]}.1"
    await bus.publish_report(dead, identity=watcher, key=msg_id)
    async with tracker(bus, watcher) as after:
        await wait_until(lambda: after.stats.duplicates == 1)
        await settle()
        progress = await after.progress("order", "run-d")
    assert (after.stats.stuck, after.stats.duplicates) == (0, 1)
    assert progress is not None
    assert set(progress.stuck) == {1}  # marked now: never published again
    assert await stored_reports(bus) == 1
    [report] = await read_stuck(bus)
    assert report.overdue_by == 0.1  # the dead tracker's


async def test_a_pre_claimed_report_id_does_not_silence_the_report(
    bus: Bus, keyring: Keyring
) -> None:
    """Mallory (a trusted agent, not a tracker) publishes a fake report under the id the
    real one will use: the tracker sees the duplicate is no report of a tracker and
    publishes its own under the id and the squatter's sequence."""
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    mallory = make_identity("mallory", keyring)
    fake = FlowStuck(
        flow="order", correlation="run-s", step=SUBJECTS[1], step_index=1,
        last_step=SUBJECTS[0], last_step_index=0, last_seen=0.0, deadline=1.0, overdue_by=0.0,
    )  # fmt: skip
    msg_id = f"{bus.root}.stuck.order.{hashlib.sha256(b'run-s').hexdigest()[:32]}.1"
    squat = await bus.publish_report(fake, identity=mallory, key=msg_id)
    async with tracker(bus, watcher) as observing:
        await step(bus, shop, 0, "run-s")
        await wait_until(lambda: observing.stats.stuck == 1)
        [report] = await observing.stuck()
        await settle()
    assert (observing.stats.claimed, observing.stats.duplicates) == (1, 0)
    assert (report.signer, report.correlation) == (f"{TENANT}/watcher", "run-s")
    assert report.last_seen > 0  # the real one
    assert await stored_reports(bus) == 2  # the fake, and the real one after it
    assert squat.seq < (await bus.jetstream.get_last_msg(bus.stream, f"{bus.root}.{STUCK}")).seq


async def test_a_restarted_tracker_handles_queued_steps_before_reporting(
    bus: Bus, keyring: Keyring
) -> None:
    """The payment arrived on time while no tracker ran, queued behind other runs' events:
    after the restart its deadline is past in the stored progress, but its event is not
    handled yet, so it is not reported stuck; shipping, due a second after it, is."""
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    async with tracker(bus, watcher) as before:
        await step(bus, shop, 0, "run-q")
        await wait_until(lambda: before.stats.recorded == 1)
    queued = [CustomEvent(SUBJECTS[1], "paid", {"n": n}) for n in range(BACKLOG)]
    await bus.publish_many(queued, identity=shop)  # each its own run, paid but never placed
    await step(bus, shop, 1, "run-q")
    await asyncio.sleep(1.2)  # every deadline passes while the events wait in the consumer
    async with tracker(bus, watcher) as after:
        await wait_until(lambda: after.stats.stuck >= BACKLOG + 1, timeout=30)
        await settle()
        progress = await after.progress("order", "run-q")
        await wait_until(lambda: after.waiting == 0)  # all reported: nothing more can fall due
    assert progress is not None
    assert (sorted(progress.seen), set(progress.stuck)) == ([0, 1], {2})
    reports = {(r.correlation, r.step_index) for r in await read_stuck(bus)}
    assert ("run-q", 2) in reports
    assert ("run-q", 1) not in reports
    assert len(reports) == BACKLOG + 1


async def test_a_late_step_is_recorded_as_recovered(bus: Bus, keyring: Keyring) -> None:
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    async with tracker(bus, watcher) as observing:
        await step(bus, shop, 0, "run-l")
        await wait_until(lambda: observing.stats.stuck == 1)
        await step(bus, shop, 1, "run-l")  # the payment, late
        await wait_until(lambda: observing.stats.recovered == 1)
        await step(bus, shop, 2, "run-l")  # shipped within a second of the payment
        await wait_until(lambda: observing.stats.recorded == 3)
        await settle()
        progress = await observing.progress("order", "run-l")
    assert progress is not None
    assert (sorted(progress.seen), set(progress.stuck), progress.recovered) == ([0, 1, 2], {1}, {1})
    [report] = await read_stuck(bus)
    assert report.recovered_at is not None
    assert report.recovered_at > report.deadline
    assert await read_stuck(bus, include_recovered=False) == []
    assert await stored_reports(bus, "recovered") == 1
    assert observing.stats.stuck == 1


async def test_forged_events_never_count_as_progress(bus: Bus, keyring: Keyring) -> None:
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    impostor = Identity.generate(TENANT, "shop")  # the shop's name, a key nobody trusts
    payments = Choreography(
        "paid",
        [FlowStep("custom.order.placed"), FlowStep("custom.payment.captured", within=1, by="bank")],
    )
    observing = ChoreographyTracker(bus, [ORDER, payments], identity=watcher, tick=TICK)
    async with observing:
        await step(bus, shop, 0, "run-f")
        await step(bus, impostor, 1, "run-f")  # forged: refused before the tracker sees it
        await wait_until(lambda: observing.stats.stuck == 2)  # in both flows
        await step(bus, shop, 1, "run-g")  # order: a payment before its order (kept)
        await step(bus, shop, 0, "run-g")  # paid: the shop is not the bank
        await wait_until(lambda: observing.stats.stuck == 4)
        progress = await observing.progress("order", "run-f")
        await settle()
    assert progress is not None
    assert sorted(progress.seen) == [0]
    assert bus.security.rejected["unknown-key"] >= 1
    reports = {(r.flow, r.correlation, r.step_index) for r in await read_stuck(bus)}
    assert reports == {
        ("order", "run-f", 1),
        ("paid", "run-f", 1),
        ("order", "run-g", 2),  # shipping is due a second after the payment
        ("paid", "run-g", 1),
    }


async def test_a_step_time_far_from_the_checked_iat_is_not_believed(
    bus: Bus, keyring: Keyring
) -> None:
    """The shop signs an order placed "an hour from now": its deadline counts from ``iat``
    (the claim the replay window checked), so the missing payment is reported now."""
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    now = int(time.time())
    claims = {
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": shop.principal.source,
        "type": "placed", "subject": SUBJECTS[0], "time": "2099-01-01T00:00:00Z",
        "datacontenttype": "application/json", "data": None, "tenant": TENANT,
        "root": bus.root, "iat": now, "correlationid": "run-t",
    }  # fmt: skip
    async with tracker(bus, watcher) as observing:
        signed = sign_event(claims, shop)
        await bus.jetstream.publish(
            f"{bus.root}.{SUBJECTS[0]}", signed.body, headers={SIGNATURE_HEADER: signed.signature}
        )
        await wait_until(lambda: observing.stats.stuck == 1)
        progress = await observing.progress("order", "run-t")
    assert progress is not None
    assert progress.seen[0].at == now
    [report] = await read_stuck(bus)
    assert report.deadline == now + 1


async def test_forged_progress_documents_are_ignored(bus: Bus, keyring: Keyring) -> None:
    """A trusted agent that is not a tracker overwrites the run's progress document with
    one claiming the payment arrived: the tracker ignores it, reports the step stuck and
    writes back the progress it trusted."""
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    mallory = make_identity("mallory", keyring)
    async with tracker(bus, watcher) as observing:
        await step(bus, shop, 0, "run-m")
        await wait_until(lambda: observing.stats.recorded == 1)
        key = "order." + hashlib.sha256(b"run-m").hexdigest()[:32]
        claims = {
            "source": mallory.principal.source, "tenant": TENANT, "root": bus.root,
            "kind": "choreography", "key": key, "iat": int(time.time()), "flow": "order",
            "correlation": "run-m", "seen": {"0": [time.time(), "x"], "1": [time.time(), "y"]},
            "stuck": {}, "recovered": [],
        }  # fmt: skip
        bucket = await bus.jetstream.key_value(f"{bus.root}-choreography")
        await bucket.put(key, sign_claims(claims, mallory))
        await wait_until(lambda: observing.stats.stuck == 1)
        progress = await observing.progress("order", "run-m")
    assert progress is not None
    assert (sorted(progress.seen), set(progress.stuck)) == ([0], {1})
    [report] = await read_stuck(bus)
    assert (report.correlation, report.step_index, report.signer) == ("run-m", 1, "acme/watcher")


POLICY = """
version = 1
[[rule]]
principal = "agent:shop"
publish = ["custom.>"]
[[rule]]
principal = "agent:watcher"
consume = ["custom.>"]
publish = ["system.coordination.stuck", "system.coordination.recovered"]
[[rule]]
principal = "agent:blind"
consume = ["custom.>"]
"""


async def test_under_a_policy_the_tracker_acts_as_its_agent(
    nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    shop, watcher = make_identity("shop", keyring), make_identity("watcher", keyring)
    blind = make_identity("blind", keyring)
    policy = Policy.from_toml(POLICY)
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, keyring=keyring, root=root, policy=policy
    ) as policed:
        with pytest.raises(Forbidden) as denied:
            async with tracker(policed, blind):
                pass  # never entered: it may not publish its reports
        async with tracker(policed, watcher) as observing:
            await step(policed, shop, 0, "run-p")
            await wait_until(lambda: observing.stats.stuck == 1)
    assert (denied.value.subject, denied.value.action) == ("system.coordination.stuck", "publish")


def test_a_flow_without_steps_is_refused() -> None:
    with pytest.raises(InvalidChoreography) as caught:
        Choreography("empty", [])
    assert caught.value.field == "steps"
    assert isinstance(caught.value, InvalidArgument)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Choreography("one", [FlowStep("custom.a")]), "steps"),
        (
            lambda: Choreography(
                "bad name!", [FlowStep("custom.a"), FlowStep("custom.b", within=1)]
            ),
            "name",
        ),
        (
            lambda: Choreography("dup", [FlowStep("custom.a"), FlowStep("custom.a", within=1)]),
            "steps[1]",
        ),
        (
            lambda: Choreography(
                "overlap", [FlowStep("custom.a.*"), FlowStep("custom.a.b", within=1)]
            ),
            "steps[1]",
        ),
        (
            lambda: Choreography(
                "first", [FlowStep("custom.a", within=1), FlowStep("custom.b", within=1)]
            ),
            "steps[0].within",
        ),
        (
            lambda: Choreography("nolimit", [FlowStep("custom.a"), FlowStep("custom.b")]),
            "steps[1].within",
        ),
        (lambda: Choreography("types", [FlowStep("custom.a"), "custom.b"]), "steps[1]"),
        (lambda: Choreography("text", "custom.a"), "steps"),  # type: ignore[arg-type]
        (lambda: FlowStep("custom.b", within=0), "within"),
        (lambda: FlowStep("custom.b", within=-2), "within"),
        (lambda: FlowStep("custom.b", within=float("nan")), "within"),
        (lambda: FlowStep("custom.b", within=True), "within"),
        (lambda: FlowStep("custom.b", within="5"), "within"),  # type: ignore[arg-type]
        (lambda: FlowStep("order.placed"), "pattern"),  # no family
        (lambda: FlowStep("custom..placed"), "pattern"),
        (lambda: FlowStep("custom.>.placed"), "pattern"),
        (lambda: FlowStep("custom.a", by="not a name"), "by"),
        (lambda: FlowStep("system.coordination.*"), "pattern"),  # the trackers' own reports
        (lambda: FlowStep("system.>"), "pattern"),
    ],
)
def test_bad_flow_definitions_are_typed_errors(build: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        build()
    assert caught.value.field == field


async def test_bad_tracker_settings_are_typed_errors(bus: Bus, keyring: Keyring) -> None:
    watcher = make_identity("watcher", keyring)
    for keywords, field in [
        ({"tick": 0}, "tick"),
        ({"retention": 1}, "retention"),
        ({"start": "later"}, "start"),
        ({"name": "two words"}, "name"),
    ]:
        with pytest.raises(InvalidArgument) as caught:
            ChoreographyTracker(bus, [ORDER], identity=watcher, **keywords)
        assert caught.value.field == field
    for flows, field in [([], "flows"), ([ORDER, ORDER], "flows[1]"), (["order"], "flows[0]")]:
        with pytest.raises(InvalidChoreography) as caught:
            ChoreographyTracker(bus, flows, identity=watcher)  # type: ignore[arg-type]
        assert caught.value.field == field
    with pytest.raises(InvalidChoreography):
        await ChoreographyTracker(bus, [ORDER], identity=watcher).progress("other", "x")


async def test_a_tracker_whose_bucket_is_deleted_under_it_fails_loudly_on_exit(
    bus: Bus, keyring: Keyring
) -> None:
    observing = tracker(bus, make_identity("watcher", keyring))

    async def run() -> None:
        async with observing:
            await bus.jetstream.delete_key_value(f"{bus.root}-choreography")
            await wait_until(lambda: not observing.running)

    with pytest.raises(NotFound, match="watch the choreography progress") as failed:
        await run()
    assert observing.error is failed.value
