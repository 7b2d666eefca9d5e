"""Durable timers across restarts, signals, cancel and retry, on real servers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import eventwire
from eventwire import Orchestrator, StepRetry, WorkflowNotFound, Workflows
from tests.conftest import TENANT, make_identity, wait_until
from tests.sdk._workflow_worker import WORKFLOWS, Effects, Order, approval, saga

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from eventwire import EmbeddedServer, Keyring
    from eventwire_security import Identity


@contextlib.asynccontextmanager
async def team(bus: eventwire.Bus) -> AsyncIterator[tuple[Workflows, Effects, Identity]]:
    """Workers w1..w3 and a control client on ``bus`` (no orchestrator)."""
    effects = Effects()
    boss = make_identity("orchestrator", bus.keyring)
    for n in (1, 2, 3):
        who = make_identity(f"w{n}", bus.keyring)
        await bus.serve_requests(who, effects.worker(bus, f"w{n}").handle)
    user = make_identity("user", bus.keyring)
    yield Workflows(bus, user, orchestrators=[boss.principal.source]), effects, boss


def orchestrator(bus: eventwire.Bus, boss: Identity) -> Orchestrator:
    return Orchestrator(bus, boss, WORKFLOWS, compensation_retry=StepRetry(attempts=2, delay=0.05))


async def kinds(control: Workflows, workflow_id: str) -> list[str]:
    """The kinds of the workflow's history events (none before it has started)."""
    with contextlib.suppress(WorkflowNotFound):
        return [entry.kind for entry in await control.timeline(workflow_id)]
    return []


async def steps(control: Workflows, workflow_id: str) -> dict[int, str]:
    with contextlib.suppress(WorkflowNotFound):
        return (await control.status(workflow_id)).steps
    return {}


async def test_timer_survives_orchestrator_and_server_restart(
    own_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    async with (
        eventwire.connect(own_server.url, tenant=TENANT, keyring=keyring, root=root) as bus,
        team(bus) as (control, effects, boss),
    ):
        async with orchestrator(bus, boss):
            await control.start(saga, "nap-1", Order(item="n", sleep=4))
            async with asyncio.timeout(15):
                while "timer-set" not in await kinds(control, "nap-1"):
                    await _tick()
        await own_server.kill()  # the sleeping workflow's server dies; then it comes back
        await own_server.start()
        async with orchestrator(bus, boss):
            status = await control.wait("nap-1", timeout=30)
        timeline = await kinds(control, "nap-1")
    assert status.state == "completed"
    assert timeline.count("timer-fired") == 1
    assert effects.done == {"n-1": 1, "n-2": 1, "n-3": 1}


async def test_signal_wakes_a_waiting_workflow(bus: eventwire.Bus) -> None:
    async with team(bus) as (control, _, boss), orchestrator(bus, boss):
        handle = await control.start(approval, "sig-1", Order(item="s"))
        async with asyncio.timeout(15):
            while await steps(control, "sig-1") != {1: "completed"}:
                await _tick()
        await control.signal("sig-1", "ignored", "x")
        await control.signal("sig-1", "approve", "yes")
        assert (await handle.result(timeout=20)).refs == ["w1:s", "yes"]


async def test_signal_wait_times_out_on_a_durable_timer(bus: eventwire.Bus) -> None:
    async with team(bus) as (control, _, boss), orchestrator(bus, boss):
        handle = await control.start(approval, "sig-2", Order(item="s", sleep=1.5))
        assert (await handle.result(timeout=20)).refs == ["w1:s", "timeout"]


async def test_cancel_compensates_a_waiting_workflow(bus: eventwire.Bus) -> None:
    async with team(bus) as (control, effects, boss), orchestrator(bus, boss):
        await control.start(approval, "can-1", Order(item="c"))
        async with asyncio.timeout(15):
            while await steps(control, "can-1") != {1: "completed"}:
                await _tick()
        await control.cancel("can-1")
        status = await control.wait("can-1", timeout=20)
    assert status.state == "cancelled"
    assert effects.undone == {"w1:c": 1}


async def test_retry_runs_a_compensated_workflow_again(bus: eventwire.Bus) -> None:
    async with team(bus) as (control, effects, boss), orchestrator(bus, boss):
        effects.refuse.add("r-3")
        await control.start(saga, "re-1", Order(item="r"))
        assert (await control.wait("re-1", timeout=20)).state == "compensated"
        effects.refuse.clear()
        await control.retry("re-1")
        await wait_until(lambda: effects.done["r-3"] == 1, timeout=20)
        status = await control.wait("re-1", timeout=20)
    assert status.state == "completed"
    assert effects.done == {"r-1": 2, "r-2": 2, "r-3": 1}  # 1 and 2 were undone, so redone
    assert effects.undone == {"w1:r-1": 1, "w2:r-2": 1}


async def until_steps(control: Workflows, workflow_id: str, expected: dict[int, str]) -> None:
    """Wait until the workflow's steps are in the ``expected`` states."""
    async with asyncio.timeout(20):
        while await steps(control, workflow_id) != expected:
            await _tick()


async def _tick() -> None:
    await asyncio.sleep(0.05)
