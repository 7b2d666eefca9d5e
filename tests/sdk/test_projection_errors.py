"""A projection whose model raises, on a real nats-server: with ``on_error="dead-letter"``
the event goes to the dead-letter queue with the reason, the read model holds nothing of it
and the projection goes on; ``"stop"`` (the default) stops it; ``max_failures`` stops it
after that many dead letters in a row; refused events never stop it; bad settings."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, ClassVar

import pytest

from eventwire import (
    SIGNATURE_HEADER,
    CustomEvent,
    DeadLetterError,
    Event,
    Feed,
    Identity,
    InvalidArgument,
    Keyring,
    Projection,
    ProjectionFailed,
    ProjectionOnError,
)
from eventwire_security import verify_event
from tests.conftest import make_identity
from tests.sdk.test_projections import Balances, expected, fill

if TYPE_CHECKING:
    import eventwire

FEED = Feed("custom.es.account.*", batch=8)


class Poisoned(Balances):
    """Balances that raise on the events in ``poison`` (by id), after changing the model:
    a failed ``apply`` leaves a half-applied event behind unless it is undone."""

    poison: ClassVar[set[str]] = set()

    def apply(self, event: Event) -> None:
        super().apply(event)
        if event.id in Poisoned.poison:
            raise RuntimeError(f"cannot project {event.id}")


@pytest.fixture
def teller(keyring: Keyring) -> Identity:
    return make_identity("teller", keyring)


@pytest.fixture(autouse=True)
def no_poison() -> None:
    Poisoned.poison = set()
    Fickle.fickle, Fickle.applied = "", 0


async def poison(bus: eventwire.Bus, *seqs: int) -> list[str]:
    """Make the events at these stream sequences fail; their ids."""
    ids = []
    for seq in seqs:
        stored = await bus.jetstream.get_msg(bus.stream, seq)
        ids.append(json.loads(stored.data or b"")["id"])
    Poisoned.poison.update(ids)
    return ids


def without(count: int, *indexes: int) -> dict[str, int]:
    """``expected(count)`` without the deposits at these indexes (sequence = index + 1)."""
    totals = expected(count)
    for index in indexes:
        totals[f"acc-{index % 2}"] -= index + 1
    return totals


def projection(
    bus: eventwire.Bus,
    teller: Identity,
    model: type[Balances] = Poisoned,
    *,
    on_error: ProjectionOnError = "dead-letter",
    max_failures: int | None = None,
) -> Projection[Balances]:
    return Projection(
        bus, model, name="balances", identity=teller, feed=FEED,
        on_error=on_error, max_failures=max_failures,
    )  # fmt: skip


async def test_a_failing_event_is_dead_lettered_and_the_projection_goes_on(
    bus: eventwire.Bus, teller: Identity
) -> None:
    last = await fill(bus, teller, 50)
    [bad] = await poison(bus, 20)  # mid-batch: 4 events applied since the last checkpoint
    async with projection(bus, teller) as running:
        async with asyncio.timeout(10):
            await running.wait_for(last)
        assert running.state.balances == without(50, 19)  # nothing of it, even half-applied
        assert bad not in running.state.ids
        assert len(running.state.ids) == running.applied == 49
        assert (running.stats.dead_lettered, running.stats.failed, running.stats.refused) == (
            1, 1, 0,
        )  # fmt: skip
        assert running.stored == last

    [letter] = await bus.dead_letters.list()
    original = await bus.jetstream.get_msg(bus.stream, 20)
    assert (letter.reason, letter.stream_seq, letter.consumer) == (
        "projection-failed", 20, "projection-balances",
    )  # fmt: skip
    assert letter.error == f"RuntimeError: cannot project {bad}"
    assert (letter.subject, letter.data) == (original.subject, original.data)
    signature = letter.headers[SIGNATURE_HEADER]  # the original signed bytes and headers
    assert verify_event(letter.data, signature, bus.keyring).claims["id"] == bad

    async with projection(bus, teller) as restarted:
        assert restarted.applied == 49  # restored past it: not read, not dead-lettered again
        assert restarted.position == last
    assert restarted.stats.dead_lettered == restarted.stats.failed == 0
    assert len(await bus.dead_letters.list()) == 1


async def test_a_redriven_dead_letter_is_applied_once_the_model_is_fixed(
    bus: eventwire.Bus, teller: Identity
) -> None:
    last = await fill(bus, teller, 10)
    [bad] = await poison(bus, 4)
    async with projection(bus, teller) as running:
        async with asyncio.timeout(10):
            await running.wait_for(last)
        [letter] = await bus.dead_letters.list()
        Poisoned.poison.clear()  # the model is fixed

        again = await bus.dead_letters.redrive(letter.seq)
        async with asyncio.timeout(10):
            await running.wait_for(again)

    assert running.state.balances == expected(10)
    assert running.state.ids.count(bad) == 1
    assert running.state.ids[-1] == bad  # at its new place in the stream
    assert await bus.dead_letters.list() == []


@pytest.mark.parametrize("on_error", ["stop", None])
async def test_stop_is_the_default_and_stops_at_the_failing_event(
    bus: eventwire.Bus, teller: Identity, on_error: ProjectionOnError | None
) -> None:
    last = await fill(bus, teller, 20)
    await poison(bus, 12)
    broken: Projection[Balances]
    if on_error is None:
        broken = Projection(bus, Poisoned, name="balances", identity=teller, feed=FEED)
    else:
        broken = projection(bus, teller, on_error=on_error)
    await broken.__aenter__()
    with pytest.raises(ProjectionFailed) as failed:
        await asyncio.wait_for(broken.wait_for(last), 10)
    with pytest.raises(ProjectionFailed):
        await broken.__aexit__(None, None, None)

    assert failed.value.seq == 12
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert broken.stored == 8  # the checkpoint before it: a restart tries it again
    assert (broken.stats.failed, broken.stats.dead_lettered) == (1, 0)
    assert await bus.dead_letters.list() == []


async def test_max_failures_stops_after_that_many_dead_letters_in_a_row(
    bus: eventwire.Bus, teller: Identity
) -> None:
    last = await fill(bus, teller, 30)
    await poison(bus, 5, 6, 11, 12, 13, 14)  # 2 in a row, then 4 in a row
    broken = projection(bus, teller, max_failures=3)
    await broken.__aenter__()
    with pytest.raises(ProjectionFailed) as failed:
        await asyncio.wait_for(broken.wait_for(last), 10)
    with pytest.raises(ProjectionFailed):
        await broken.__aexit__(None, None, None)

    assert failed.value.seq == broken.stored == 13  # the third in a row, checkpointed
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert broken.stats.dead_lettered == 5
    letters = await bus.dead_letters.list()
    assert [letter.stream_seq for letter in letters] == [5, 6, 11, 12, 13]

    Poisoned.poison.clear()  # fixed: the restart goes on after the last dead letter
    async with projection(bus, teller, max_failures=3) as healed:
        assert healed.applied == 8
        async with asyncio.timeout(10):
            await healed.wait_for(last)
    assert healed.state.balances == without(30, 4, 5, 10, 11, 12)
    assert len(healed.state.ids) == 25


async def tamper(bus: eventwire.Bus, seq: int) -> int:
    """Store a copy of the event at ``seq`` with one byte of its data changed."""
    stored = await bus.jetstream.get_msg(bus.stream, seq)
    data = (stored.data or b"").replace(b'"amount":', b'"amount": ', 1)
    headers = {SIGNATURE_HEADER: (stored.headers or {})[SIGNATURE_HEADER], "Nats-Msg-Id": "x"}
    ack = await bus.jetstream.publish(stored.subject or "", data, headers=headers)
    return int(ack.seq)


@pytest.mark.parametrize("on_error", ["stop", "dead-letter"])
async def test_a_refused_event_never_stops_a_projection(
    bus: eventwire.Bus, teller: Identity, on_error: ProjectionOnError
) -> None:
    await fill(bus, teller, 10)
    last = forged = await tamper(bus, 3)
    async with projection(bus, teller, Balances, on_error=on_error) as running:
        async with asyncio.timeout(10):
            await running.wait_for(last)

    assert running.state.balances == expected(10)
    assert (running.stats.refused, running.stats.failed) == (1, 0)
    assert sum(bus.security.rejected.values()) == 1  # counted and audited by the bus
    letters = await bus.dead_letters.list()
    if on_error == "stop":
        assert letters == []
        return
    [letter] = letters
    assert (letter.reason, letter.stream_seq) == ("refused", forged)
    [reason] = bus.security.rejected
    assert letter.error.startswith(f"{reason}: ")
    assert running.stats.dead_lettered == 1


async def test_without_a_dead_letter_queue_the_projection_stops_before_the_event(
    bus: eventwire.Bus, teller: Identity
) -> None:
    await fill(bus, teller, 9)
    await bus.publish(CustomEvent("custom.other", "noise", None), identity=teller)  # seq 10
    last = await fill(bus, teller, 3, start=9)
    await poison(bus, 11)
    await bus.jetstream.delete_stream(f"{bus.root}-dlq")
    broken = projection(bus, teller)
    await broken.__aenter__()
    with pytest.raises(ProjectionFailed) as failed:
        await asyncio.wait_for(broken.wait_for(last), 30)
    with pytest.raises(ProjectionFailed):
        await broken.__aexit__(None, None, None)

    assert failed.value.seq == 11
    assert isinstance(failed.value.__cause__, DeadLetterError)
    assert broken.stored == 8  # not past the event it could not dead-letter
    assert broken.stats.dead_lettered == 0


class Fickle(Poisoned):
    """Poisoned, and fails on the event ``fickle`` the second time it applies it."""

    fickle: ClassVar[str] = ""
    applied: ClassVar[int] = 0

    def apply(self, event: Event) -> None:
        if event.id == Fickle.fickle:
            Fickle.applied += 1
            if Fickle.applied == 2:
                raise RuntimeError("not deterministic")
        super().apply(event)


async def test_a_model_that_fails_rebuilding_itself_stops_the_projection(
    bus: eventwire.Bus, teller: Identity
) -> None:
    last = await fill(bus, teller, 12)
    await poison(bus, 10)
    Fickle.fickle = Poisoned.poison.pop()  # 10 is applied (after the checkpoint at 8)...
    await poison(bus, 11)  # ...then 11 fails, and 10 fails when the model is rebuilt
    broken = projection(bus, teller, Fickle)
    await broken.__aenter__()
    with pytest.raises(ProjectionFailed) as failed:
        await asyncio.wait_for(broken.wait_for(last), 10)
    with pytest.raises(ProjectionFailed):
        await broken.__aexit__(None, None, None)

    assert failed.value.seq == 11
    assert str(failed.value.__cause__) == "not deterministic"
    assert broken.stored == 8  # not past the event dead-lettered: a restart reads it again
    assert [letter.stream_seq for letter in await bus.dead_letters.list()] == [11]

    async with projection(bus, teller) as restarted:  # like a crash after the dead letter
        async with asyncio.timeout(10):
            await restarted.wait_for(last)
    assert restarted.stats.dead_lettered == 1  # stored again: de-duplicated by JetStream
    assert [letter.stream_seq for letter in await bus.dead_letters.list()] == [11]
    assert restarted.state.balances == without(12, 10)


def test_bad_error_settings_are_typed_errors(bus: eventwire.Bus, teller: Identity) -> None:
    bad: list[dict[str, object]] = [
        {"on_error": "skip"},
        {"on_error": "dead-letter", "max_failures": 0},
        {"on_error": "dead-letter", "max_failures": True},
        {"on_error": "dead-letter", "max_failures": 2.5},
        {"on_error": "stop", "max_failures": 3},
    ]
    fields = []
    for settings in bad:
        with pytest.raises(InvalidArgument) as error:
            Projection(
                bus, Balances, name="balances", identity=teller, feed=FEED,
                **settings,  # type: ignore[arg-type]
            )  # fmt: skip
        fields.append(error.value.field)
    with pytest.raises(InvalidArgument) as long_name:
        Projection(bus, Balances, name="n" * 54, identity=teller, feed=FEED, on_error="dead-letter")
    Projection(bus, Balances, name="n" * 64, identity=teller, feed=FEED)  # "stop": any name

    assert fields == ["on_error", "max_failures", "max_failures", "max_failures", "max_failures"]
    assert long_name.value.field == "name"
