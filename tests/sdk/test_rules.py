"""CEL routing rules: checked when built, evaluated over a verified event's attributes and
data, a failing expression reported for that event alone (and dead-lettered by a consumer)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

import eventwire
from eventwire import (
    ConfigError,
    CustomEvent,
    Event,
    InvalidRule,
    Route,
    RuleFailed,
    Rules,
)
from tests.conftest import TENANT, make_identity, wait_until


def event(data: Any = None, **attributes: Any) -> Event:
    claims: dict[str, Any] = {
        "specversion": "1.0",
        "id": "0190a0f0-0000-7000-8000-000000000001",
        "source": f"{TENANT}/shop",
        "type": "com.example.order.placed",
        "subject": "custom.order.placed",
        "time": "2026-03-01T12:00:00Z",
        "datacontenttype": "application/json",
        "data": data,
        "tenant": TENANT,
        "root": "ew",
        "iat": 1772366400,
        "correlationid": "0190a0f0-0000-7000-8000-000000000001",
    }
    return Event.model_validate({**claims, **attributes})


RULES = Rules(
    [
        Route(when="has(data.amount) && data.amount > 1000", to="capability.review.help"),
        Route(when="type == 'com.example.order.cancelled'", to="custom.order.refund"),
        Route(when="event.source.endsWith('/partner')", to="custom.partner.orders", name="partner"),
    ]
)


@pytest.mark.parametrize(
    ("item", "target"),
    [
        (event({"amount": 1500}), "capability.review.help"),
        (event({"amount": 1000.5}), "capability.review.help"),  # CEL compares int and double
        (event({"amount": 10}), None),
        (event({"note": "no amount"}), None),
        (event({"amount": 5}, type="com.example.order.cancelled"), "custom.order.refund"),
        (event({}, source=f"{TENANT}/partner"), "custom.partner.orders"),
    ],
)
def test_first_matching_route_wins(item: Event, target: str | None) -> None:
    route = RULES.match(item)
    assert (route.to if route else None) == target


def test_rules_see_time_as_a_timestamp_and_absent_attributes_as_null() -> None:
    rules = Rules(
        [
            Route(when="time > timestamp('2026-01-01T00:00:00Z') && exp == null", to="custom.a.b"),
        ]
    )
    assert rules.match(event({})) == rules.routes[0]
    assert rules.match(event({}, time="2025-12-31T23:59:59Z")) is None


def test_comprehension_macros_may_bind_their_own_names() -> None:
    rules = Rules([Route(when="data.items.exists(item, item.sku == 'x1')", to="custom.a.b")])
    assert rules.match(event({"items": [{"sku": "a"}, {"sku": "x1"}]})) is not None


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (Route(when="data.amount >", to="custom.a.b"), r"route 1 \('data.amount >'\): .*Syntax"),
        (Route(when="", to="custom.a.b"), r"route 1 \(''\): `when` must be 1-4096 characters"),
        (Route(when="x" * 4097, to="custom.a.b"), r"`when` must be 1-4096"),
        (
            Route(when="amount > 1000", to="custom.a.b", name="big"),
            r"route 'big' \('amount > 1000'\): unknown name amount: a rule sees the event's "
            r"attributes .* fields of the data are under `data.`",
        ),
        (Route(when="foo == bar", to="custom.a.b"), r"unknown names bar, foo"),
        (Route(when="true", to="custom.a.*"), r"not a logical subject"),
        (Route(when="true", to="nowhere"), r"not a logical subject"),
    ],
)
def test_a_bad_rule_is_refused_when_built_naming_it(route: Route, message: str) -> None:
    with pytest.raises(InvalidRule, match=message) as refused:
        Rules([route])
    assert refused.value.expression == route.when
    assert isinstance(refused.value, ConfigError)


def test_the_failing_rule_is_named_by_its_position() -> None:
    with pytest.raises(InvalidRule) as refused:
        Rules([Route(when="true", to="custom.a.b"), Route(when="data.(", to="custom.a.b")])
    assert refused.value.rule == "route 2"


@pytest.mark.parametrize(
    ("when", "data", "reason"),
    [
        ("data.amount > 1000", {"note": "x"}, "KeyError: no such key: 'amount'"),
        ("data.amount > 1000", {"amount": "lots"}, "TypeError: No such overload"),
        ("data.amount / data.count > 1", {"amount": 1, "count": 0}, "ZeroDivisionError"),
        ("data.amount", {"amount": 3}, "the expression gave int 3, not a bool"),
    ],
)
def test_a_runtime_error_is_reported_for_that_event(
    when: str, data: dict[str, Any], reason: str
) -> None:
    rules = Rules([Route(when=when, to="custom.a.b")])
    with pytest.raises(RuleFailed) as failed:
        rules.match(event(data))
    assert failed.value.rule == "route 1"
    assert failed.value.event_id == "0190a0f0-0000-7000-8000-000000000001"
    assert failed.value.reason.startswith(reason)
    assert len(failed.value.reason) <= 300


def test_no_rules_match_nothing() -> None:
    assert Rules([]).match(event({"amount": 1})) is None
    assert len(RULES) == 3


def test_a_missing_cel_package_is_a_clear_config_error() -> None:
    probe = (
        "import sys; sys.modules['cel'] = None\n"
        "import eventwire\n"
        "try:\n"
        "    eventwire.Rules([eventwire.Route(when='true', to='custom.a.b')])\n"
        "except eventwire.ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'eventwire[routing]'" in out


def test_import_eventwire_does_not_load_cel() -> None:
    probe = "import eventwire, sys; print('cel' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_a_consumer_routes_verified_events_and_dead_letters_a_failing_one(
    bus: eventwire.Bus,
) -> None:
    shop = make_identity("shop", bus.keyring)
    rules = Rules([Route(when="data.amount > 1000", to="capability.review.help")])
    routed: list[tuple[int, str | None]] = []

    async def handle(item: Event) -> None:
        route = rules.match(item)  # RuleFailed is terminal below: dead-lettered at once
        assert isinstance(item.data, dict)
        routed.append((item.data["amount"], route.to if route else None))

    async with bus.subscribe(
        "custom.order.*", handle, durable="router", terminal=(RuleFailed,)
    ) as sub:
        for data in ({"amount": 5000}, {"total": 1}, {"amount": 7}):
            await bus.publish(CustomEvent("custom.order.placed", "order", data), identity=shop)
        await wait_until(lambda: len(routed) == 2 and sub.stats.dead_lettered == 1)
    letters = await bus.dead_letters.list()
    assert routed == [(5000, "capability.review.help"), (7, None)]
    assert [(d.reason, d.deliveries) for d in letters] == [("unprocessable", 1)]
    assert letters[0].error.startswith(
        "RuleFailed: route 1 ('data.amount > 1000') failed on event "
    )
    assert letters[0].error.endswith("KeyError: no such key: 'amount'")
