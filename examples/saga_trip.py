"""A saga on the embedded server (``python examples/saga_trip.py``).

A trip is booked in three steps by three agents: a flight, a hotel, a car. The car agent
refuses (no cars left), so the saga compensates: the hotel is cancelled, then the flight,
in reverse order, each exactly once. Every transition is an event signed by the
orchestrator; the script prints the verified timeline with each signer and exits 0 when
the trip ended ``compensated`` with both cancellations done.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import eventwire
from eventwire import (
    Agent,
    Identity,
    Keyring,
    Orchestrator,
    StepRejected,
    StepWorker,
    WorkflowContext,
    Workflows,
    workflow,
)

TENANT = "travel"


class Trip(BaseModel):
    traveller: str
    city: str


class Booking(BaseModel):
    kind: str
    ref: str


class Itinerary(BaseModel):
    bookings: list[Booking]


@workflow("trip", input=Trip, output=Itinerary)
async def book_trip(ctx: WorkflowContext, trip: Trip) -> Itinerary:
    flight = await ctx.step("flights", "book", trip, output=Booking, compensate="cancel")
    hotel = await ctx.step("hotels", "book", trip, output=Booking, compensate="cancel")
    car = await ctx.step("cars", "book", trip, output=Booking, compensate="cancel")
    return Itinerary(bookings=[flight, hotel, car])


def provider(bus: eventwire.Bus, identity: Identity, log: list[str]) -> Agent:
    """An agent that books and cancels one kind of thing (cars: none left)."""
    kind = identity.principal.agent
    steps = StepWorker(bus)

    @steps.action("book", input=Trip)
    async def book(trip: Trip) -> Booking:
        if kind == "cars":
            raise StepRejected(f"no cars left in {trip.city}")
        log.append(f"booked {kind}")
        return Booking(kind=kind, ref=f"{kind[:1].upper()}-{trip.traveller}")

    @steps.action("cancel", input=Booking)
    async def cancel(booking: Booking) -> Booking:
        log.append(f"cancelled {booking.kind} {booking.ref}")
        return booking

    agent = Agent(kind, identity=identity)
    agent.on_request(steps.handle)
    return agent


async def main() -> int:
    names = ("orchestrator", "traveller", "flights", "hotels", "cars")
    ids = {name: Identity.generate(TENANT, name) for name in names}
    log: list[str] = []
    async with eventwire.connect(tenant=TENANT, keyring=Keyring.of(*ids.values())) as bus:
        agents = [provider(bus, ids[name], log) for name in ("flights", "hotels", "cars")]
        async with (
            agents[0].serve(bus), agents[1].serve(bus), agents[2].serve(bus),
            Orchestrator(bus, ids["orchestrator"], [book_trip]),
        ):  # fmt: skip
            control = Workflows(bus, ids["traveller"], orchestrators=["travel/orchestrator"])
            await control.start(book_trip, "trip-ada", Trip(traveller="ada", city="Lisbon"))
            status = await control.wait("trip-ada", timeout=30)
            timeline = await control.timeline("trip-ada")
    print(f"trip-ada ended {status.state}: {status.reason}")
    for entry in timeline:
        print(f"  {entry.position:2} {entry.kind:24} signed by {entry.source} ({entry.kid[:10]})")
    print("side effects:", "; ".join(log))
    expected = [
        "booked flights",
        "booked hotels",
        "cancelled hotels H-ada",
        "cancelled flights F-ada",
    ]
    return 0 if status.state == "compensated" and log == expected else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
