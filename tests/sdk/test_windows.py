"""Windowed stream processing on a real nats-server: tumbling, sliding and session windows
aggregate per key and publish each closed window once; late events are counted; a slow
sink slows the pull with bounded state and loses nothing; a restart mid-window resumes;
bad parameters are typed errors.

Event times come from a signed data field (``event_time=``), so windows are exact."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from eventwire import (
    Aggregation,
    CustomEvent,
    Event,
    InvalidArgument,
    ProcessingStopped,
    Window,
    WindowedStream,
    WindowResult,
)
from tests.conftest import make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import Sequence

    from eventwire import Bus, Identity, Keyring

T0 = 1_800_000_000.0  # a multiple of every window size used here
WRONG: dict[str, Any] = {"text": "10", "none": None, "three": 3}  # typed wrong on purpose


def data_time(event: Event) -> float:
    assert isinstance(event.data, dict)
    at = event.data["at"]
    assert isinstance(at, float | int)
    return float(at)


async def emit(bus: Bus, who: Identity, key: str, at: float, **data: Any) -> int:
    item = CustomEvent("custom.sensor.reading", "reading", {"at": T0 + at, **data})
    return (await bus.publish(item, identity=who, partition_key=key)).seq


class Results:
    """A sink that keeps what it gets, as (key, start, end, value, count), times from T0."""

    def __init__(self) -> None:
        self.got: list[WindowResult] = []

    async def __call__(self, result: WindowResult) -> None:
        self.got.append(result)

    def table(self) -> list[tuple[str, float, float, Any, int]]:
        rows = [(r.key, r.start - T0, r.end - T0, r.value, r.count) for r in self.got]
        return sorted(rows)


def stream(bus: Bus, me: Identity, window: Window, aggregation: Aggregation, **kw: Any) -> Any:
    kw.setdefault("idle", None)
    return WindowedStream(
        bus, "custom.sensor.>", window=window, aggregate=aggregation, identity=me,
        name="temps", event_time=data_time, **kw,
    )  # fmt: skip


async def run(bus: Bus, keyring: Keyring, window: Window, aggregation: Aggregation,
              events: Sequence[tuple[str, float, float]]) -> Results:  # fmt: skip
    """Publish ``events`` (key, time, v), then one far later that closes their windows."""
    me, sensor = make_identity("proc", keyring), make_identity("sensor", keyring)
    results = Results()
    async with stream(bus, me, window, aggregation, sink=results) as windows:
        for key, at, value in events:
            await emit(bus, sensor, key, at, v=value)
        last = await emit(bus, sensor, "zz", 1000, v=0)
        async with asyncio.timeout(10):
            await windows.wait_for(last)
        assert windows.counters.published == len(results.got)
    return results


async def test_tumbling_windows_sum_per_key(bus: Bus, keyring: Keyring) -> None:
    events = [("a", 0, 1), ("a", 3, 2), ("b", 5, 7), ("a", 9.5, 3), ("a", 12, 10)]
    results = await run(bus, keyring, Window.tumbling(10), Aggregation.sum("v"), events)
    assert results.table() == [
        ("a", 0, 10, 6.0, 3), ("a", 10, 20, 10.0, 1), ("b", 0, 10, 7.0, 1),
    ]  # fmt: skip
    info = await bus.jetstream.stream_info(
        bus.stream, subjects_filter=f"{bus.root}.custom.window.>"
    )
    assert info.state.subjects == {f"{bus.root}.custom.window.temps": 3}


async def test_sliding_windows_hold_each_event_size_over_every_times(
    bus: Bus, keyring: Keyring
) -> None:
    events = [("a", 1, 4), ("a", 6, 9), ("a", 11, 2)]
    results = await run(bus, keyring, Window.sliding(10, every=5), Aggregation.max("v"), events)
    assert results.table() == [
        ("a", -5, 5, 4.0, 1), ("a", 0, 10, 9.0, 2), ("a", 5, 15, 9.0, 2), ("a", 10, 20, 2.0, 1),
    ]  # fmt: skip


async def test_session_windows_split_on_gaps(bus: Bus, keyring: Keyring) -> None:
    events = [("a", 0, 1), ("b", 1, 5), ("a", 3, 2), ("a", 7, 6), ("a", 20, 10), ("a", 22, 20)]
    results = await run(bus, keyring, Window.session(5), Aggregation.avg("v"), events)
    assert results.table() == [
        ("a", 0, 12, 3.0, 3), ("a", 20, 27, 15.0, 2), ("b", 1, 6, 5.0, 1),
    ]  # fmt: skip


async def test_a_user_reducer_and_count(bus: Bus, keyring: Keyring) -> None:
    def collect(acc: Any, event: Event) -> Any:
        assert isinstance(event.data, dict)
        return [*acc, event.data["v"]]

    events = [("a", 0, 3), ("a", 1, 1), ("a", 2, 2)]
    reduced = await run(bus, keyring, Window.tumbling(10), Aggregation.reduce(collect, []), events)
    assert reduced.table() == [("a", 0, 10, [3, 1, 2], 3)]


async def test_count_on_its_own(bus: Bus, keyring: Keyring) -> None:
    events = [("a", 0, 3), ("a", 1, 1), ("b", 2, 2)]
    counted = await run(bus, keyring, Window.tumbling(10), Aggregation.count(), events)
    assert counted.table() == [("a", 0, 10, 2, 2), ("b", 0, 10, 1, 1)]


async def test_late_events_are_counted_and_reported(bus: Bus, keyring: Keyring) -> None:
    me, sensor = make_identity("proc", keyring), make_identity("sensor", keyring)
    results = Results()
    window, total = Window.tumbling(10), Aggregation.sum("v")
    async with stream(bus, me, window, total, lateness=2, sink=results) as windows:
        await emit(bus, sensor, "a", 10, v=1)
        await emit(bus, sensor, "a", 9, v=2)  # out of order, within the lateness
        await emit(bus, sensor, "a", 5, v=4)  # later than the watermark (8): dropped
        await emit(bus, sensor, "a", 11, v=8, bad="no v")
        await emit(bus, sensor, "a", 11.5, nov=1)  # the aggregate cannot take it
        last = await emit(bus, sensor, "a", 30, v=0)
        async with asyncio.timeout(10):
            await windows.wait_for(last)
        assert (windows.counters.late, windows.unusable) == (1, 1)
    assert results.table() == [("a", 0, 10, 2.0, 1), ("a", 10, 20, 9.0, 2)]
    assert [r.late for r in results.got] == [1, 1]


async def test_a_slow_sink_slows_the_pull_with_bounded_state_and_loses_nothing(
    bus: Bus, keyring: Keyring
) -> None:
    me, sensor = make_identity("proc", keyring), make_identity("sensor", keyring)
    batch, total = 8, 60
    items = [
        CustomEvent("custom.sensor.reading", "reading", {"at": T0 + at, "v": at})
        for at in range(total)
    ]
    acks = await bus.publish_many(items, identity=me)
    held: list[int] = []
    pending: list[int] = []
    got: list[WindowResult] = []

    async def slow(result: WindowResult) -> None:
        held.append(windows.open_windows)
        [info] = await bus.jetstream.consumers_info(bus.stream)  # the stream's one consumer
        pending.append(info.num_ack_pending or 0)
        await asyncio.sleep(0.02)
        got.append(result)

    one_key = lambda event: "k"  # noqa: E731 - every event in one key
    async with stream(
        bus, sensor, Window.tumbling(1), Aggregation.sum("v"), batch=batch, sink=slow, key=one_key
    ) as windows:
        async with asyncio.timeout(30):
            await windows.wait_for(acks[-1].seq)
    assert [(r.start - T0, r.value, r.count) for r in got] == [
        (at, float(at), 1) for at in range(total - 1)
    ]  # every window but the last (still open), in order, once
    assert max(pending) <= batch
    assert max(held) <= batch + 1
    assert max(windows.counters.batches) <= batch


async def test_a_stream_closed_mid_window_resumes(bus: Bus, keyring: Keyring) -> None:
    me, sensor = make_identity("proc", keyring), make_identity("sensor", keyring)
    results = Results()
    window, total = Window.tumbling(10), Aggregation.sum("v")
    async with stream(bus, me, window, total, sink=results) as windows:
        await emit(bus, sensor, "a", 1, v=1)
        seq = await emit(bus, sensor, "a", 2, v=2)
        async with asyncio.timeout(10):
            await windows.wait_for(seq)
        assert windows.open_windows == 1
    async with stream(bus, me, window, total, sink=results) as windows:
        assert windows.open_windows == 1
        await emit(bus, sensor, "a", 3, v=4)
        seq = await emit(bus, sensor, "a", 25, v=0)
        async with asyncio.timeout(10):
            await windows.wait_for(seq)
        assert windows.counters.applied == 2
    assert results.table() == [("a", 0, 10, 7.0, 3)]  # [20, 30) is still open


async def test_idle_watermark_closes_windows_without_new_events(bus: Bus, keyring: Keyring) -> None:
    me, sensor = make_identity("proc", keyring), make_identity("sensor", keyring)
    results = Results()
    async with WindowedStream(
        bus, "custom.sensor.>", window=Window.tumbling(0.5), aggregate=Aggregation.count(),
        identity=me, name="live", idle=0.5, sink=results,
    ):  # fmt: skip
        await bus.publish(CustomEvent("custom.sensor.reading", "reading", {}), identity=sensor)
        await wait_until(lambda: len(results.got) == 1)
    assert results.got[0].count == 1


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Window.tumbling(0), "size"),
        (lambda: Window.tumbling(WRONG["text"]), "size"),
        (lambda: Window.sliding(10, every=20), "every"),
        (lambda: Window.sliding(10, every=0.001), "every"),
        (lambda: Window.sliding(10, every=-1), "every"),
        (lambda: Window.session(float("inf")), "gap"),
        (lambda: Aggregation.sum(""), "field"),
        (lambda: Aggregation.avg(WRONG["three"]), "field"),
        (lambda: Aggregation.reduce(WRONG["three"], 0), "function"),
        (lambda: Aggregation.reduce(max, 0, merge=WRONG["three"]), "merge"),
    ],
)
def test_bad_window_parameters_are_typed_errors(build: Any, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        build()
    assert raised.value.field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"pattern": "nofamily.x"}, "pattern"),
        ({"window": WRONG["text"]}, "window"),
        ({"aggregate": WRONG["none"]}, "aggregate"),
        ({"sink": WRONG["three"]}, "sink"),
        ({"name": "a.b"}, "name"),
        ({"lateness": float("nan")}, "lateness"),
        ({"batch": 100_001}, "batch"),
    ],
)
async def test_bad_stream_parameters_are_typed_errors(
    bus: Bus, changes: dict[str, Any], field: str
) -> None:
    arguments: dict[str, Any] = {
        "pattern": "custom.sensor.>", "window": Window.tumbling(1),
        "aggregate": Aggregation.count(), "name": "temps",
    } | changes  # fmt: skip
    with pytest.raises(InvalidArgument) as raised:
        WindowedStream(bus, arguments.pop("pattern"), identity=make_identity("p"), **arguments)
    assert raised.value.field == field


async def test_a_failing_sink_stops_the_stream_with_a_typed_error(
    bus: Bus, keyring: Keyring
) -> None:
    me, sensor = make_identity("proc", keyring), make_identity("sensor", keyring)

    async def broken(result: WindowResult) -> None:
        raise RuntimeError("the sink is down")

    async def until_stopped() -> None:
        async with stream(bus, me, Window.tumbling(10), Aggregation.count(), sink=broken) as w:
            await emit(bus, sensor, "a", 1)
            last = await emit(bus, sensor, "a", 30)
            async with asyncio.timeout(10):
                await w.wait_for(last)

    with pytest.raises(ProcessingStopped) as raised:
        await until_stopped()
    assert raised.value.name == "temps"
    assert isinstance(raised.value.__cause__, RuntimeError)


async def test_forged_events_are_refused_and_never_aggregated(bus: Bus, keyring: Keyring) -> None:
    me, sensor = make_identity("proc", keyring), make_identity("sensor", keyring)
    forger = make_identity("sensor")  # same name, a key nobody trusts
    results = Results()
    async with stream(bus, me, Window.tumbling(10), Aggregation.count(), sink=results) as windows:
        await emit(bus, sensor, "a", 1)
        await emit(bus, forger, "a", 2)
        last = await emit(bus, sensor, "a", 30)
        async with asyncio.timeout(10):
            await windows.wait_for(last)
        assert (windows.counters.refused, windows.counters.applied) == (1, 2)
    assert results.table() == [("a", 0, 10, 1, 1)]
