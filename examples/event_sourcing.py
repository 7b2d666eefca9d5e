"""Event-sourced bank accounts on an embedded server: aggregates and a balance projection.

Run it with ``python examples/event_sourcing.py``: it starts a local nats-server, opens an
account, shows a stale write refused with the current version, loads the account from a
signed snapshot plus the events after it, asks for its balance as of an earlier version,
builds a read model of every balance (a projection), resumes it from its checkpoint,
rebuilds it from scratch, and exits 0.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Self

import eventwire
from eventwire import (
    AggregateStore,
    Change,
    ConcurrencyConflict,
    Event,
    Feed,
    Identity,
    Keyring,
    Projection,
    SnapshotPolicy,
)

if TYPE_CHECKING:
    from pydantic import JsonValue

TENANT = "acme"


class Account:
    """The state of one account, rebuilt from its events."""

    def __init__(self) -> None:
        self.balance = 0

    def apply(self, event: Event) -> None:
        assert isinstance(event.data, dict)
        amount = event.data["amount"]
        assert isinstance(amount, int)
        self.balance += amount if event.type == "deposited" else -amount

    def snapshot(self) -> JsonValue:
        return {"balance": self.balance}

    @classmethod
    def restore(cls, state: JsonValue) -> Self:
        assert isinstance(state, dict)
        account = cls()
        balance = state["balance"]
        assert isinstance(balance, int)
        account.balance = balance
        return account


class Balances:
    """A read model: the balance of every account, kept by a projection."""

    def __init__(self) -> None:
        self.balances: dict[str, JsonValue] = {}

    def apply(self, event: Event) -> None:
        assert isinstance(event.data, dict)
        amount, balance = event.data["amount"], self.balances.get(event.subject, 0)
        assert isinstance(amount, int)
        assert isinstance(balance, int)
        self.balances[event.subject] = balance + (amount if event.type == "deposited" else -amount)

    def snapshot(self) -> JsonValue:
        return self.balances

    @classmethod
    def restore(cls, state: JsonValue) -> Self:
        assert isinstance(state, dict)
        model = cls()
        model.balances = state
        return model


def withdraw(account: Account, amount: int) -> Change:
    """A command: decided on the loaded state, appended at the version it was loaded at."""
    if amount > account.balance:
        raise ValueError(f"cannot withdraw {amount}, balance {account.balance}")
    return Change("withdrew", {"amount": amount})


async def main() -> None:
    teller = Identity.generate(TENANT, "teller")
    async with eventwire.connect(tenant=TENANT, keyring=Keyring.of(teller)) as bus:
        accounts = AggregateStore(
            bus, Account, kind="account", identity=teller, snapshots=SnapshotPolicy(every=10)
        )
        deposits = [Change("deposited", {"amount": 10}) for _ in range(20)]
        version = await accounts.append("alice", deposits, expected=0)
        print(f"alice: {version} deposits appended")

        loaded = await accounts.load("alice")  # replays 20 events, stores a signed snapshot
        print(f"loaded at version {loaded.version}: balance {loaded.state.balance}")
        await accounts.append("alice", [withdraw(loaded.state, 50)], expected=loaded.version)
        try:  # a second withdrawal decided on the same, now stale, version
            await accounts.append("alice", [withdraw(loaded.state, 80)], expected=loaded.version)
        except ConcurrencyConflict as conflict:
            print(f"stale write refused: expected {conflict.expected}, now {conflict.current}")

        now = await accounts.load("alice")  # the snapshot at 20, then 1 event
        print(f"balance {now.state.balance} at version {now.version} ({now.replayed} replayed)")
        then = await accounts.load("alice", version=5)
        print(f"balance as of version 5: {then.state.balance}")
        assert (now.state.balance, now.replayed, then.state.balance) == (150, 1, 50)
        await accounts.append("bob", [Change("deposited", {"amount": 7})], expected=0)
        bob = await accounts.load("bob")
        await project(bus, teller, bob.seq)  # the stream sequence of the last event


async def project(bus: eventwire.Bus, teller: Identity, last: int) -> None:
    """A projection of every balance: catch up, stop, resume, then rebuild from scratch."""
    feed = Feed("custom.es.account.*", batch=10)
    balances = Projection(bus, Balances, name="balances", identity=teller, feed=feed)
    async with balances:
        await asyncio.wait_for(balances.wait_for(last), 30)
        print(f"projection: {balances.state.balances} after {balances.applied} events")
    async with balances:  # resumes from its checkpoint: nothing replayed
        print(f"resumed at stream sequence {balances.stored}, lag {await balances.lag()}")
    await balances.reset()
    async with balances:  # rebuilt from the first event
        await asyncio.wait_for(balances.wait_for(last), 30)
        print(f"rebuilt: {balances.applied} events applied again")
    assert balances.state.balances == {"custom.es.account.alice": 150, "custom.es.account.bob": 7}


if __name__ == "__main__":
    asyncio.run(main())
