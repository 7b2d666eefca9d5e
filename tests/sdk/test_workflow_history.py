"""The history store on its own: a step left in flight by a dead orchestrator is resolved
(asked again with its key) before compensation; a forged event makes the history refused."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from eventwire import UntrustedHistory
from eventwire._workflow_history import HistoryStore
from tests.conftest import make_identity
from tests.sdk._workflow_worker import Order, saga
from tests.sdk.test_workflow_control import orchestrator, team

if TYPE_CHECKING:
    from pydantic import JsonValue

    import eventwire


async def test_step_in_flight_is_resolved_then_compensated_on_cancel(bus: eventwire.Bus) -> None:
    async with team(bus) as (control, effects, boss):
        store = HistoryStore(bus, boss)
        history = await store.load("h-1")  # as a dead orchestrator left it: step 1 sent
        started: JsonValue = {
            "workflow": "saga",
            "input": {"item": "h"},
            "by": "x",
            "command": "c0",
        }
        await store.append(history, "started", started)
        step: JsonValue = {"op": 1, "target": "w1", "action": "do", "input": {"item": "h-1"},
                "compensate": "undo", "timeout": 5.0}  # fmt: skip
        await store.append(history, "step-scheduled", step)
        async with orchestrator(bus, boss):
            await control.cancel("h-1")
            status = await control.wait("h-1", timeout=20)
    assert status.state == "cancelled"
    assert status.steps == {1: "compensated"}
    assert effects.done == {"h-1": 1}
    assert effects.undone == {"w1:h-1": 1}


async def test_event_appended_by_another_identity_refuses_the_history(
    bus: eventwire.Bus,
) -> None:
    async with team(bus) as (control, _, boss), orchestrator(bus, boss):
        await (await control.start(saga, "h-2", Order(item="f"))).wait(timeout=20)
        forger = make_identity("forger", bus.keyring)  # trusted as an agent, not to orchestrate
        mine = HistoryStore(bus, forger, trusted=[boss.principal.source, forger.principal.source])
        loaded = await mine.load("h-2")
        await mine.append(loaded, "retried", {"by": "forger", "command": "forged"})
        with pytest.raises(UntrustedHistory) as caught:
            await control.status("h-2")
    assert caught.value.source == forger.principal.source
    assert caught.value.seq == loaded.state.timeline[-1].position
