"""A projection reads from the event after its position with an ephemeral pull consumer; if
the server loses that consumer, it follows again from where it was: nothing skipped, nothing
applied twice."""

from __future__ import annotations

import asyncio

import eventwire
from eventwire import Keyring, Projection
from tests.conftest import make_identity
from tests.sdk.test_projections import FEED, Balances, expected, fill


async def test_a_lost_consumer_is_followed_again_from_the_position(
    bus: eventwire.Bus, keyring: Keyring
) -> None:
    teller = make_identity("teller", keyring)
    last = await fill(bus, teller, 5)
    async with Projection(bus, Balances, name="balances", identity=teller, feed=FEED) as running:
        async with asyncio.timeout(10):
            await running.wait_for(last)
        names = [info.name for info in await bus.jetstream.consumers_info(bus.stream)]
        assert names  # its ephemeral reader
        for name in names:
            await bus.jetstream.delete_consumer(bus.stream, name)
        last = await fill(bus, teller, 6, start=5)
        async with asyncio.timeout(20):
            await running.wait_for(last)
        assert running.state.balances == expected(11)
        assert len(running.state.ids) == len(set(running.state.ids)) == 11
