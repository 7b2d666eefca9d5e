"""Projections on a real nats-server: catch-up then live, the read model and its checkpoint
stored together, restarts that neither reprocess nor skip, a failing model, bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

import pytest

import eventwire
from eventwire import (
    AggregateStore,
    BusyResource,
    Change,
    Event,
    Feed,
    Identity,
    InvalidArgument,
    Keyring,
    Projection,
    ProjectionFailed,
)
from tests.conftest import TENANT, make_identity, wait_until
from tests.sdk.test_aggregates import Account

if TYPE_CHECKING:
    from pydantic import JsonValue

    from eventwire import EmbeddedServer

FEED = Feed("custom.es.account.*", batch=3)
ROOT_DIR = Path(__file__).parent.parent.parent


class Balances:
    """A read model: every account's balance, and the ids of the events applied."""

    def __init__(self) -> None:
        self.balances: dict[str, int] = {}
        self.ids: list[str] = []

    def apply(self, event: Event) -> None:
        data = event.data
        assert isinstance(data, dict)
        amount = data["amount"]
        assert isinstance(amount, int)
        account = event.subject.rsplit(".", 1)[1]
        change = amount if event.type == "deposited" else -amount
        self.balances[account] = self.balances.get(account, 0) + change
        self.ids.append(event.id)

    def snapshot(self) -> JsonValue:
        return {"balances": dict(self.balances), "ids": list(self.ids)}

    @classmethod
    def restore(cls, state: JsonValue) -> Self:
        assert isinstance(state, dict)
        balances, ids = state["balances"], state["ids"]
        assert isinstance(balances, dict)
        assert isinstance(ids, list)
        model = cls()
        model.balances = {name: value for name, value in balances.items() if isinstance(value, int)}
        model.ids = [value for value in ids if isinstance(value, str)]
        return model


class Fragile(Balances):
    """Balances that raise on the n-th event they see in this process."""

    fail_at: ClassVar[int] = 0
    seen: ClassVar[int] = 0

    def apply(self, event: Event) -> None:
        Fragile.seen += 1
        if Fragile.seen == Fragile.fail_at:
            raise RuntimeError("the read model's database is down")
        super().apply(event)


@pytest.fixture
def teller(keyring: Keyring) -> Identity:
    return make_identity("teller", keyring)


async def fill(bus: eventwire.Bus, teller: Identity, count: int, *, start: int = 0) -> int:
    """Deposit 1, 2, 3... into two accounts; returns the stream sequence of the last."""
    store = AggregateStore(bus, Account, kind="account", identity=teller)
    for index in range(start, start + count):
        account = f"acc-{index % 2}"
        await store.append(
            account, [Change("deposited", {"amount": index + 1})], expected=index // 2
        )
    info = await bus.jetstream.stream_info(bus.stream)
    return int(info.state.last_seq)


def expected(count: int) -> dict[str, int]:
    totals: dict[str, int] = {}
    for index in range(count):
        totals[f"acc-{index % 2}"] = totals.get(f"acc-{index % 2}", 0) + index + 1
    return totals


def projection(
    bus: eventwire.Bus, teller: Identity, model: type[Balances] = Balances
) -> Projection[Balances]:
    return Projection(bus, model, name="balances", identity=teller, feed=FEED)


async def test_catches_up_then_follows_live(bus: eventwire.Bus, teller: Identity) -> None:
    last = await fill(bus, teller, 7)
    async with projection(bus, teller) as running:
        async with asyncio.timeout(10):
            await running.wait_for(last)
        assert running.state.balances == expected(7)
        last = await fill(bus, teller, 4, start=7)
        async with asyncio.timeout(10):
            await running.wait_for(last)
        assert running.state.balances == expected(11)
        assert running.stored == last  # caught up: the checkpoint is written
        assert await running.lag() == 0


async def test_a_restart_resumes_from_the_checkpoint_without_reprocessing(
    bus: eventwire.Bus, teller: Identity
) -> None:
    last = await fill(bus, teller, 5)
    async with projection(bus, teller) as first:
        async with asyncio.timeout(10):
            await first.wait_for(last)
    last = await fill(bus, teller, 6, start=5)

    async with projection(bus, teller) as second:
        assert second.applied == 5  # restored, not replayed
        async with asyncio.timeout(10):
            await second.wait_for(last)

    assert second.state.balances == expected(11)
    assert len(second.state.ids) == len(set(second.state.ids)) == 11


async def test_a_model_that_fails_stops_the_projection_and_a_restart_applies_each_event_once(
    bus: eventwire.Bus, teller: Identity
) -> None:
    last = await fill(bus, teller, 10)
    Fragile.fail_at, Fragile.seen = 8, 0  # batches of 3: stored after 3 and 6 events

    broken = projection(bus, teller, Fragile)
    await broken.__aenter__()
    with pytest.raises(ProjectionFailed) as failed:
        await asyncio.wait_for(broken.wait_for(last), 10)
    with pytest.raises(ProjectionFailed):
        await broken.__aexit__(None, None, None)  # leaving the block raises it too
    assert isinstance(failed.value.__cause__, RuntimeError)
    assert broken.stored == broken.position - 1  # the 7th event was never stored

    async with projection(bus, teller) as healed:
        assert healed.applied == 6
        async with asyncio.timeout(10):
            await healed.wait_for(last)
    single_pass = Balances()
    async with Projection(bus, Balances, name="single", identity=teller, feed=FEED) as once:
        async with asyncio.timeout(10):
            await once.wait_for(last)
        single_pass = once.state
    assert healed.state.balances == single_pass.balances == expected(10)
    assert healed.state.ids == single_pass.ids
    assert len(set(healed.state.ids)) == 10


async def test_reset_rebuilds_from_the_first_event(bus: eventwire.Bus, teller: Identity) -> None:
    last = await fill(bus, teller, 5)
    balances = projection(bus, teller)
    async with balances:
        async with asyncio.timeout(10):
            await balances.wait_for(last)
        with pytest.raises(BusyResource):
            await balances.reset()

    await balances.reset()

    assert (balances.applied, balances.state.balances) == (0, {})
    async with balances:
        assert balances.applied == 0  # nothing restored
        async with asyncio.timeout(10):
            await balances.wait_for(last)
    assert balances.state.balances == expected(5)
    assert len(balances.state.ids) == 5


async def test_a_forged_checkpoint_is_ignored(
    bus: eventwire.Bus, keyring: Keyring, teller: Identity
) -> None:
    last = await fill(bus, teller, 4)
    mallory = make_identity("mallory", keyring)
    async with Projection(bus, Balances, name="balances", identity=mallory, feed=FEED) as forged:
        async with asyncio.timeout(10):
            await forged.wait_for(last)  # mallory's own checkpoint, under the same name

    async with projection(bus, teller) as honest:
        assert honest.applied == 0  # not signed by the teller: rebuilt from the start
        async with asyncio.timeout(10):
            await honest.wait_for(last)
    assert honest.state.balances == expected(4)


def test_bad_projection_settings_are_typed_errors(bus: eventwire.Bus, teller: Identity) -> None:
    with pytest.raises(InvalidArgument) as bad_pattern:
        Feed("custom..x")
    with pytest.raises(InvalidArgument) as bad_batch:
        Feed("custom.>", batch=0)
    with pytest.raises(InvalidArgument) as bad_name:
        Projection(bus, Balances, name="my balances", identity=teller, feed=FEED)
    fields = [error.value.field for error in (bad_pattern, bad_batch, bad_name)]
    assert fields == ["pattern", "batch", "name"]


async def test_a_projection_killed_mid_catch_up_resumes_without_reprocessing_or_skipping(
    nats_server: EmbeddedServer, bus: eventwire.Bus, root: str, teller: Identity, tmp_path: Path
) -> None:
    last = await fill(bus, teller, 300)
    out = tmp_path / "applied.txt"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sdk._projection_worker", nats_server.url, root, TENANT,
        teller.principal.agent, teller.seed.hex(), str(out),
        cwd=ROOT_DIR, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
    )  # fmt: skip
    try:
        await wait_until(lambda: out.exists() and len(out.read_text().split()) >= 60, 30)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    applied_by_the_dead = out.read_text().split()
    assert len(applied_by_the_dead) < 300  # killed mid-catch-up

    async with projection(bus, teller) as resumed:
        assert 0 < resumed.applied <= len(applied_by_the_dead)  # its last checkpoint
        assert resumed.state.ids == applied_by_the_dead[: resumed.applied]
        async with asyncio.timeout(30):
            await resumed.wait_for(last)
    async with Projection(bus, Balances, name="single", identity=teller, feed=FEED) as once:
        async with asyncio.timeout(30):
            await once.wait_for(last)

    assert resumed.state.balances == once.state.balances == expected(300)
    assert resumed.state.ids == once.state.ids  # each event once, in stream order
