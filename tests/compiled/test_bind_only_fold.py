"""A bind-only agent whose handler pattern is narrower than what the policy grants (the
README's ``@agent.on("capability.summarize.help")`` under ``consume =
["capability.summarize.*"]``) binds to the broader provisioned consumer, and the SDK passes
it only the events its pattern matches. A pattern no grant covers names the grants."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from eventwire import (
    Agent,
    ConfigError,
    Event,
    HelpRequested,
    NotProvisioned,
    RetryPolicy,
)
from tests.conftest import wait_until

if TYPE_CHECKING:
    from tests.compiled.conftest import World


async def test_a_narrower_handler_pattern_rides_on_the_granted_consumer(world: World) -> None:
    summarizer = Agent(
        "summarizer", capabilities=["summarize"], identity=world.identities["summarizer"]
    )
    writer = Agent("writer", identity=world.identities["writer"])
    helped: list[Event] = []
    other: list[Event] = []

    @summarizer.on("capability.summarize.help")
    async def help_wanted(event: Event) -> None:
        helped.append(event)

    @summarizer.fallback
    async def rest(event: Event) -> None:
        other.append(event)

    async with world.bus("summarizer") as s_bus, world.bus("writer") as w_bus:
        async with summarizer.serve(s_bus), writer.serve(w_bus):
            ack = await writer.publish(HelpRequested(capability="summarize", question="tl;dr?"))
            await wait_until(lambda: any(event.id == ack.event_id for event in helped))
            assert all(event.subject == "capability.summarize.help" for event in helped)
            assert all(event.id != ack.event_id for event in other)
        assert not s_bus.security.rejected
    consumers = await world.admin.jetstream.consumers_info(world.admin.stream)
    names = {info.name for info in consumers if info.name.startswith("summarizer-")}
    assert len(names) == 3  # still only the provisioned ones


async def test_a_pattern_no_grant_covers_names_the_granted_ones(world: World) -> None:
    summarizer = Agent(
        "summarizer", capabilities=["summarize"], identity=world.identities["summarizer"]
    )

    @summarizer.on("capability.>")
    async def everything(event: Event) -> None:  # pragma: no cover - never subscribed
        raise AssertionError(event)

    async with world.bus("summarizer") as bus:
        with pytest.raises(NotProvisioned) as caught:
            async with summarizer.serve(bus):
                pass
    message = str(caught.value)
    assert "'capability.>'" in message
    assert "'capability.summarize.*'" in message  # the pattern to use instead


async def test_a_folded_handler_must_share_the_consumer_options(world: World) -> None:
    summarizer = Agent(
        "summarizer", capabilities=["summarize"], identity=world.identities["summarizer"]
    )

    @summarizer.on("capability.summarize.help", retry=RetryPolicy(max_deliveries=9))
    async def help_wanted(event: Event) -> None:  # pragma: no cover - never subscribed
        raise AssertionError(event)

    async with world.bus("summarizer") as bus:
        with pytest.raises(ConfigError, match=r"capability\.summarize\.\*"):
            async with summarizer.serve(bus):
                pass
