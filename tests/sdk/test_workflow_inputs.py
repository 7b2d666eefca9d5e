"""Bad arguments to the workflow API are typed errors naming the field."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from eventwire import InvalidArgument, Orchestrator, StepRetry, StepWorker, Workflows, workflow
from tests.conftest import make_identity
from tests.sdk._workflow_worker import WORKFLOWS, Order, saga

if TYPE_CHECKING:
    import eventwire


class Plain(BaseModel):
    x: int = 0


@pytest.mark.parametrize(
    ("keywords", "field"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": 1.5}, "attempts"),
        ({"delay": -1}, "delay"),
        ({"backoff": 0.5}, "backoff"),
        ({"max_delay": "1"}, "max_delay"),
    ],
)
def test_bad_retry_policy(keywords: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        StepRetry(**keywords)
    assert caught.value.field == field


def test_bad_workflow_declarations() -> None:
    with pytest.raises(InvalidArgument) as caught:
        workflow("bad name", input=Plain, output=Plain)
    assert caught.value.field == "name"
    with pytest.raises(InvalidArgument) as caught:
        workflow("ok", input=dict, output=Plain)  # type: ignore[type-var] # on purpose
    assert caught.value.field == "input"


async def test_bad_control_and_worker_arguments(bus: eventwire.Bus) -> None:
    user = make_identity("user", bus.keyring)
    with pytest.raises(InvalidArgument) as caught:
        Workflows(bus, user, orchestrators=[])
    assert caught.value.field == "orchestrators"
    control = Workflows(bus, user, orchestrators=["acme/orchestrator"])
    with pytest.raises(InvalidArgument) as caught:
        await control.start(saga, "x" * 129, Order(item="x"))
    assert caught.value.field == "workflow_id"
    with pytest.raises(InvalidArgument) as caught:
        await control.signal("x", "")
    assert caught.value.field == "name"
    steps = StepWorker(bus)
    with pytest.raises(InvalidArgument) as caught:
        steps.action("", input=Plain)
    assert caught.value.field == "name"
    with pytest.raises(InvalidArgument) as caught:
        steps.action("go", input=int)  # type: ignore[arg-type] # on purpose
    assert caught.value.field == "input"


@workflow("misuse", input=Order, output=Order)
async def misuse(ctx: Any, order: Order) -> Order:
    """Bad ``ctx`` arguments fail the workflow with the typed error as its reason."""
    if order.item == "timeout":
        await ctx.step("w1", "do", order, output=Order, timeout=0)
    elif order.item == "request":
        await ctx.step("w1", "do", {"item": "x"}, output=Order)
    elif order.item == "sleep":
        await ctx.sleep(-1)
    else:
        await ctx.wait_signal("go", timeout=-2)
    return order


@pytest.mark.parametrize(("case", "field"), [
    ("timeout", "timeout"), ("request", "request"), ("sleep", "seconds"), ("signal", "timeout"),
])  # fmt: skip
async def test_bad_context_arguments_fail_the_workflow(
    bus: eventwire.Bus, case: str, field: str
) -> None:
    boss = make_identity("orchestrator", bus.keyring)
    control = Workflows(
        bus, make_identity("user", bus.keyring), orchestrators=[boss.principal.source]
    )
    async with Orchestrator(bus, boss, [*WORKFLOWS, misuse]):
        await control.start(misuse, f"m-{case}", Order(item=case))
        status = await control.wait(f"m-{case}", timeout=20)
    assert status.state == "failed"
    assert status.reason is not None
    assert status.reason.startswith(f"{field}: must be")
