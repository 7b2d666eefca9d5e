"""Subscription options are one checked value (``SubscribeOptions``) that travels unchanged
from where it is stated (``agent.on``, ``bus.subscribe`` keywords) to the server's consumer."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import TYPE_CHECKING, Any

import pytest

import eventwire
from eventwire import (
    Actor,
    Agent,
    ConfigError,
    DeliveryKeywords,
    Event,
    InvalidArgument,
    RetryPolicy,
    SubscribeKeywords,
    SubscribeOptions,
)
from eventwire_security import consumer_name
from tests.conftest import make_identity

if TYPE_CHECKING:
    from eventwire import Batch

BAD: list[tuple[str, Any]] = [
    ("max_in_flight", 0),
    ("max_in_flight", True),
    ("batch", 2.5),
    ("start", "old"),
    ("retry", 3),
    ("terminal", (int,)),
    ("terminal", [ValueError]),
    ("ack_wait", 0),
    ("ack_wait", math.inf),
    ("ack_wait", math.nan),
    ("ack_wait", "30"),
    ("idempotent", "yes"),
    ("replay_check", 1),
    ("key_order", None),
    ("actor", "acme/alice"),
    ("sealing_key", b"\0" * 32),
    ("partition", -1),
    ("partition", True),
    ("partition", "keyed"),
]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_a_bad_option_is_an_invalid_argument_naming_it(field: str, value: Any) -> None:
    with pytest.raises(InvalidArgument) as caught:
        SubscribeOptions(**{field: value})
    assert caught.value.field == field
    assert isinstance(caught.value, ConfigError | ValueError)


def test_the_keywords_are_exactly_the_options() -> None:
    options = typing.get_type_hints(SubscribeOptions)
    assert typing.get_type_hints(SubscribeKeywords) == options
    delivery = typing.get_type_hints(DeliveryKeywords)
    assert set(options) - set(delivery) == {"actor", "sealing_key", "partition"}
    assert all(options[name] == hint for name, hint in delivery.items())
    assert [field.name for field in dataclasses.fields(SubscribeOptions)] == list(options)


def test_options_are_values() -> None:
    retry = RetryPolicy(max_deliveries=2)
    options = SubscribeOptions(retry=retry, max_in_flight=4)
    assert options == SubscribeOptions(max_in_flight=4, retry=retry)
    assert options.but(batch=8) == SubscribeOptions(retry=retry, max_in_flight=4, batch=8)
    assert options.but() is options
    assert options.pull_batch == 64
    assert SubscribeOptions(max_in_flight=100).pull_batch == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch = 1  # type: ignore[misc]
    with pytest.raises(InvalidArgument) as caught:
        options.but(batch=0)
    assert caught.value.field == "batch"


async def test_keywords_build_one_options_object_for_the_consumer(bus: eventwire.Bus) -> None:
    async def handler(event: Event) -> None: ...

    base = SubscribeOptions(ack_wait=7.0, max_in_flight=2)
    sub = bus.subscribe("custom.o", handler, durable="o", options=base, max_in_flight=3)
    assert sub.options == base.but(max_in_flight=3)  # the keywords win
    async with sub:
        info = await bus.jetstream.consumer_info(bus.stream, sub.durable)
    assert (info.config.ack_wait, info.config.max_deliver) == (7.0, 5)
    with pytest.raises(InvalidArgument) as caught:
        bus.subscribe("custom.o", handler, durable="o", options={"batch": 1})  # type: ignore[arg-type]
    assert caught.value.field == "options"

    async def batches(batch: Batch) -> None: ...

    with pytest.raises(InvalidArgument) as caught:
        bus.subscribe_batch("custom.b", batches, durable="b", batch=3)
    assert caught.value.field == "batch"
    batched = bus.subscribe_batch("custom.b", batches, durable="b", max_size=3, ack_wait=9.0)
    assert (batched.options.batch, batched.options.ack_wait) == (3, 9.0)


async def test_an_agent_s_options_reach_its_consumer(bus: eventwire.Bus) -> None:
    agent = Agent("opt", identity=make_identity("opt", bus.keyring), max_in_flight=2)
    assert agent.defaults == SubscribeOptions(max_in_flight=2)

    @agent.on("custom.a", retry=RetryPolicy(max_deliveries=3), ack_wait=6.0)
    async def handle(event: Event) -> None: ...

    with pytest.raises(ConfigError, match="must share their options"):
        agent.on("custom.a", ack_wait=5.0)(handle)
    with pytest.raises(InvalidArgument) as caught:
        agent.on("custom.z", options=SubscribeOptions(actor=Actor("acme", "mallory")))
    assert caught.value.field == "actor"
    async with agent.serve(bus):
        info = await bus.jetstream.consumer_info(bus.stream, consumer_name("opt", "custom.a"))
        default = await bus.jetstream.consumer_info(
            bus.stream, consumer_name("opt", "agent.lifecycle.*")
        )
    assert (info.config.max_deliver, info.config.ack_wait) == (3, 6.0)
    assert (default.config.max_deliver, default.config.ack_wait) == (5, 30.0)
