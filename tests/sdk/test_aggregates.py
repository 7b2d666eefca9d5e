"""Event-sourced aggregates on a real nats-server: append and load, optimistic concurrency,
signed snapshots, state as of a version or a time, and forged or replayed events refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Self

import nats
import pytest

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    AggregateCorrupted,
    AggregateStore,
    Change,
    ConcurrencyConflict,
    Event,
    Identity,
    InvalidArgument,
    Keyring,
    SnapshotPolicy,
)
from eventwire_security import sign_claims
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from pydantic import JsonValue

    from eventwire import EmbeddedServer


class Account:
    """A bank account: deposits and withdrawals, and how many of each."""

    def __init__(self) -> None:
        self.balance = 0
        self.moves = 0

    def apply(self, event: Event) -> None:
        data = event.data
        assert isinstance(data, dict)
        amount = data["amount"]
        assert isinstance(amount, int)
        self.balance += amount if event.type == "deposited" else -amount
        self.moves += 1

    def snapshot(self) -> JsonValue:
        return {"balance": self.balance, "moves": self.moves}

    @classmethod
    def restore(cls, state: JsonValue) -> Self:
        assert isinstance(state, dict)
        account = cls()
        balance, moves = state["balance"], state["moves"]
        assert isinstance(balance, int)
        assert isinstance(moves, int)
        account.balance, account.moves = balance, moves
        return account


def deposit(amount: int) -> Change:
    return Change("deposited", {"amount": amount})


def withdraw(amount: int) -> Change:
    return Change("withdrew", {"amount": amount})


@pytest.fixture
def teller(keyring: Keyring) -> Identity:
    return make_identity("teller", keyring)


def accounts(
    bus: eventwire.Bus, identity: Identity, snapshots: SnapshotPolicy | None = None
) -> AggregateStore[Account]:
    return AggregateStore(bus, Account, kind="account", identity=identity, snapshots=snapshots)


async def test_append_then_load_replays_every_event(bus: eventwire.Bus, teller: Identity) -> None:
    store = accounts(bus, teller)
    assert await store.append("acc-1", [deposit(100), withdraw(30)], expected=0) == 2
    assert await store.append("acc-1", [deposit(5)], expected=2) == 3

    loaded = await store.load("acc-1")

    assert (loaded.state.balance, loaded.version, loaded.replayed) == (75, 3, 3)
    assert await store.version("acc-1") == 3
    empty = await store.load("acc-2")
    assert (empty.state.balance, empty.version, empty.seq) == (0, 0, 0)


async def test_aggregate_events_are_ordinary_signed_events(
    bus: eventwire.Bus, teller: Identity
) -> None:
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    async with bus.subscribe("custom.es.account.*", handler, durable="projection"):
        await accounts(bus, teller).append("acc-1", [deposit(7)], expected=0)
        await wait_until(lambda: bool(seen))
    assert seen[0].subject == "custom.es.account.acc-1"
    assert (seen[0].type, seen[0].data, seen[0].source) == (
        "deposited",
        {"amount": 7},
        teller.principal.source,
    )


async def test_two_writers_on_one_version_one_wins_the_other_gets_the_current_version(
    nats_server: EmbeddedServer, bus: eventwire.Bus, root: str, keyring: Keyring, teller: Identity
) -> None:
    other = make_identity("other-teller", keyring)
    await accounts(bus, teller).append("acc-1", [deposit(100)], expected=0)
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, keyring=keyring, root=root
    ) as second_bus:
        first, second = accounts(bus, teller), accounts(second_bus, other)
        results = await asyncio.gather(
            first.append("acc-1", [withdraw(60)], expected=1),
            second.append("acc-1", [withdraw(70)], expected=1),
            return_exceptions=True,
        )
    wins = [result for result in results if result == 2]
    conflicts = [result for result in results if isinstance(result, ConcurrencyConflict)]
    assert len(wins) == 1
    assert len(conflicts) == 1
    assert (conflicts[0].expected, conflicts[0].current) == (1, 2)
    loaded = await first.load("acc-1")
    assert loaded.version == 2
    assert loaded.state.balance in (40, 30)


async def test_a_stale_version_is_a_conflict_with_the_current_version(
    bus: eventwire.Bus, teller: Identity
) -> None:
    store = accounts(bus, teller)
    await store.append("acc-1", [deposit(1), deposit(2), deposit(3)], expected=0)

    with pytest.raises(ConcurrencyConflict) as caught:
        await store.append("acc-1", [deposit(4)], expected=1)

    assert (caught.value.aggregate, caught.value.expected, caught.value.current) == (
        "custom.es.account.acc-1", 1, 3,
    )  # fmt: skip
    assert (await store.load("acc-1")).state.balance == 6


async def test_a_snapshot_is_signed_and_only_the_tail_is_replayed(
    bus: eventwire.Bus, teller: Identity
) -> None:
    store = accounts(bus, teller, SnapshotPolicy(every=5))
    await store.append("acc-1", [deposit(10)] * 12, expected=0)
    first = await store.load("acc-1")  # replays 12 >= 5: stores a snapshot at version 12
    await store.append("acc-1", [withdraw(1)] * 3, expected=12)

    tail = await store.load("acc-1")

    assert (first.version, first.replayed) == (12, 12)
    assert (tail.state.balance, tail.state.moves, tail.version, tail.replayed) == (117, 15, 15, 3)
    fresh = await accounts(bus, teller).load("acc-1")  # no snapshots: the whole log
    assert (fresh.state.balance, fresh.replayed) == (117, 15)


async def test_a_snapshot_signed_by_an_untrusted_writer_is_ignored(
    bus: eventwire.Bus, keyring: Keyring, teller: Identity
) -> None:
    store = accounts(bus, teller, SnapshotPolicy(every=2))
    await store.append("acc-1", [deposit(10)] * 3, expected=0)
    await store.load("acc-1")  # a genuine snapshot at version 3
    mallory = make_identity("mallory", keyring)  # trusted for events, not for snapshots
    forged = {
        "source": mallory.principal.source, "tenant": TENANT, "root": bus.root,
        "kind": "account", "aggregate": "acc-1", "version": 3, "seq": 10**6, "at": 0,
        "iat": 0, "state": {"balance": 10**9, "moves": 3},
    }  # fmt: skip
    snapshots = await bus.jetstream.key_value(f"{bus.root}-snapshots")
    await snapshots.put("account.acc-1", sign_claims(forged, mallory))

    loaded = await store.load("acc-1")

    assert (loaded.state.balance, loaded.replayed) == (30, 3)


async def test_state_as_of_a_version_and_as_of_a_time(bus: eventwire.Bus, teller: Identity) -> None:
    store = accounts(bus, teller, SnapshotPolicy(every=2))
    await store.append("acc-1", [deposit(1), deposit(2), deposit(4)], expected=0)
    await store.load("acc-1")  # a snapshot at version 3, which as-of-2 must not use
    cutoff = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await store.append("acc-1", [deposit(8), deposit(16)], expected=3)

    at_two = await store.load("acc-1", version=2)
    at_cutoff = await store.load("acc-1", as_of=cutoff)
    at_zero = await store.load("acc-1", version=0)

    assert (at_two.state.balance, at_two.version) == (3, 2)
    assert (at_cutoff.state.balance, at_cutoff.version) == (7, 3)
    assert (at_zero.state.balance, at_zero.version) == (0, 0)
    assert (await store.load("acc-1")).state.balance == 31


async def test_a_forged_event_on_the_aggregate_subject_is_refused_on_load(
    nats_server: EmbeddedServer, bus: eventwire.Bus, teller: Identity
) -> None:
    store = accounts(bus, teller)
    await store.append("acc-1", [deposit(100)], expected=0)
    genuine = await bus.jetstream.get_last_msg(bus.stream, f"{bus.root}.custom.es.account.acc-1")
    assert genuine.data is not None
    attacker = await nats.connect(nats_server.url)
    try:
        forged = genuine.data.replace(b'"amount":100', b'"amount":999')
        headers = {SIGNATURE_HEADER: (genuine.headers or {})[SIGNATURE_HEADER]}
        await attacker.jetstream().publish(
            f"{bus.root}.custom.es.account.acc-1", forged, headers=headers
        )
    finally:
        await attacker.close()

    with pytest.raises(AggregateCorrupted) as caught:
        await store.load("acc-1")

    assert caught.value.reason == "bad-signature"
    assert genuine.seq is not None
    assert caught.value.seq == genuine.seq + 1
    assert bus.security.rejected["bad-signature"] == 1


async def test_the_same_signed_event_stored_twice_is_refused_as_a_replay(
    nats_server: EmbeddedServer, bus: eventwire.Bus, teller: Identity
) -> None:
    store = accounts(bus, teller)
    await store.append("acc-1", [deposit(100)], expected=0)
    subject = f"{bus.root}.custom.es.account.acc-1"
    genuine = await bus.jetstream.get_last_msg(bus.stream, subject)
    assert genuine.data is not None
    attacker = await nats.connect(nats_server.url)
    try:
        headers = {SIGNATURE_HEADER: (genuine.headers or {})[SIGNATURE_HEADER]}
        await attacker.jetstream().publish(subject, genuine.data, headers=headers)
    finally:
        await attacker.close()

    with pytest.raises(AggregateCorrupted) as caught:
        await store.load("acc-1")

    assert caught.value.reason == "replay"


async def test_bad_arguments_are_typed_errors(bus: eventwire.Bus, teller: Identity) -> None:
    with pytest.raises(InvalidArgument) as bad_kind:
        AggregateStore(bus, Account, kind="bank account", identity=teller)
    store = accounts(bus, teller)
    with pytest.raises(InvalidArgument) as bad_id:
        await store.append("acc.1", [deposit(1)], expected=0)
    with pytest.raises(InvalidArgument) as negative:
        await store.append("acc-1", [deposit(1)], expected=-1)
    with pytest.raises(InvalidArgument) as nothing:
        await store.append("acc-1", [], expected=0)
    with pytest.raises(InvalidArgument) as naive:
        await store.load("acc-1", as_of=datetime(2026, 1, 1))  # naive, on purpose
    with pytest.raises(InvalidArgument) as bad_version:
        await store.load("acc-1", version=True)
    with pytest.raises(InvalidArgument) as bad_every:
        SnapshotPolicy(every=-1)
    fields = [
        error.value.field
        for error in (bad_kind, bad_id, negative, nothing, naive, bad_version, bad_every)
    ]
    assert fields == ["kind", "aggregate_id", "expected", "changes", "as_of", "version", "every"]
    assert await store.version("acc-1") == 0
