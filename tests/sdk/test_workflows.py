"""Workflows and sagas on a real server: sequential steps, compensation, typed errors."""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING

import pytest

from eventwire import (
    Agent,
    InvalidArgument,
    Orchestrator,
    StepRetry,
    UntrustedHistory,
    WorkflowAlreadyStarted,
    WorkflowFinished,
    WorkflowNotFound,
    Workflows,
)
from tests.conftest import make_identity
from tests.sdk._workflow_worker import (
    WORKFLOWS,
    Done,
    Effects,
    Order,
    bycapability,
    fanout,
    impatient,
    saga,
    secret,
    wrongtype,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import eventwire
    from eventwire_security import Identity


@contextlib.asynccontextmanager
async def running(bus: eventwire.Bus) -> AsyncIterator[tuple[Workflows, Effects, Identity]]:
    """Workers w1..w3, an orchestrator and a control client on ``bus``."""
    effects = Effects()
    boss = make_identity("orchestrator", bus.keyring)
    for n in (1, 2, 3):
        who = make_identity(f"w{n}", bus.keyring)
        await bus.serve_requests(who, effects.worker(bus, f"w{n}").handle)
    user = make_identity("user", bus.keyring)
    retry = StepRetry(attempts=2, delay=0.05)
    async with Orchestrator(bus, boss, WORKFLOWS, compensation_retry=retry):
        yield Workflows(bus, user, orchestrators=[boss.principal.source]), effects, boss


async def test_three_steps_complete(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, effects, _):
        handle = await control.start(saga, "trip-1", Order(item="t"))
        receipt = await handle.result(timeout=20)
    assert receipt.refs == ["w1:t-1", "w2:t-2", "w3:t-3"]
    assert effects.done == {"t-1": 1, "t-2": 1, "t-3": 1}
    assert not effects.undone


async def test_third_step_fails_first_two_compensated_in_reverse(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, effects, boss):
        await control.start(saga, "trip-2", Order(item="t", fail_at=3))
        status = await control.wait("trip-2", timeout=20)
        timeline = await control.timeline("trip-2")
    assert status.state == "compensated"
    assert status.steps == {1: "compensated", 2: "compensated", 3: "failed"}
    assert effects.order == ["do t-1", "do t-2", "undo w2:t-2", "undo w1:t-1"]
    assert effects.undone == {"w1:t-1": 1, "w2:t-2": 1}
    assert {entry.source for entry in timeline} == {boss.principal.source}
    assert timeline[-1].kind == "compensated"


async def test_parallel_branch_fails_other_compensated(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, effects, _):
        await control.start(fanout, "fan-1", Order(item="f", fail_at=1))
        status = await control.wait("fan-1", timeout=20)
    assert status.state == "compensated"
    assert status.steps == {1: "failed", 2: "compensated"}
    assert effects.done == {"b": 1}
    assert effects.undone == {"w2:b": 1}


async def test_parallel_steps_join(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, _, _):
        handle = await control.start(fanout, "fan-2", Order(item="f"))
        assert (await handle.result(timeout=20)).refs == ["w1:a", "w2:b"]


async def test_step_result_of_wrong_type_fails_the_step(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, effects, _):
        await control.start(wrongtype, "wrong-1", Order(item="x"))
        status = await control.wait("wrong-1", timeout=20)
        timeline = await control.timeline("wrong-1")
    assert status.state == "compensated"
    failed = [e for e in timeline if e.kind == "step-failed"]
    assert len(failed) == 1
    assert isinstance(failed[0].data, dict)
    assert failed[0].data["reason"] == "invalid-result"
    assert effects.undone == {"w1:x": 1}


async def test_start_twice_returns_the_first_other_input_refused(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, effects, _):
        first = await control.start(saga, "dup-1", Order(item="d"))
        await first.wait(timeout=20)
        again = await control.start(saga, "dup-1", Order(item="d"))
        assert again.workflow_id == first.workflow_id
        assert (await again.result()).refs == ["w1:d-1", "w2:d-2", "w3:d-3"]
        with pytest.raises(WorkflowAlreadyStarted):
            await control.start(saga, "dup-1", Order(item="other"))
    assert effects.done == {"d-1": 1, "d-2": 1, "d-3": 1}


async def test_bad_control_inputs_are_typed_errors(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, _, _):
        with pytest.raises(WorkflowNotFound):
            await control.signal("nobody", "go")
        with pytest.raises(WorkflowNotFound):
            await control.status("nobody")
        with pytest.raises(InvalidArgument):
            await control.start(saga, "bad id", Order(item="x"))
        with pytest.raises(InvalidArgument):
            await control.start(saga, "x", Done(ref="not an order"))
        handle = await control.start(saga, "fin-1", Order(item="f"))
        await handle.wait(timeout=20)
        with pytest.raises(WorkflowFinished):
            await control.cancel("fin-1")
        with pytest.raises(WorkflowFinished):
            await control.retry("fin-1")
        with pytest.raises(InvalidArgument):
            await control.list(state="bogus")


async def test_history_signed_by_another_identity_is_refused(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, _, _):
        await (await control.start(saga, "trust-1", Order(item="f"))).wait(timeout=20)
        stranger = make_identity("stranger", bus.keyring)
        skeptic = Workflows(bus, stranger, orchestrators=[stranger.principal.source])
        with pytest.raises(UntrustedHistory) as caught:
            await skeptic.status("trust-1")
    assert caught.value.source.endswith("/orchestrator")


async def test_sealed_step_data_stays_sealed_in_history(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, effects, _):
        done = await control.start(secret, "seal-1", Order(item="4711"))
        assert (await done.result(timeout=20)).refs == ["w1"]
        await control.start(secret, "seal-2", Order(item="4712", fail_at=1))
        status = await control.wait("seal-2", timeout=20)
        timelines = [await control.timeline(each) for each in ("seal-1", "seal-2")]
    assert status.state == "compensated"
    assert effects.done == {"code-4711": 1, "code-4712": 1, "public": 1}
    assert effects.undone == {"w1:code-4712": 1}  # the compensation got the opened result
    stored = json.dumps([[entry.data for entry in timeline] for timeline in timelines])
    assert "code-47" not in stored
    assert stored.count('"$sealed"') == 4  # input and result of each sealed step


async def test_step_asks_a_capability(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, effects, _):
        booker = Agent(
            "booker", capabilities=["booking"], identity=make_identity("booker", bus.keyring)
        )
        booker.on_request(effects.worker(bus, "booker").handle)
        async with booker.serve(bus):
            handle = await control.start(bycapability, "cap-1", Order(item="k"))
            assert (await handle.result(timeout=20)).refs == ["booker:k"]


async def test_step_slower_than_its_timeout_runs_once_across_instances(
    bus: eventwire.Bus,
) -> None:
    async with running(bus) as (control, effects, _):
        w4 = make_identity("w4", bus.keyring)
        for _ in range(2):  # two instances sharing the agent's requests, each its own worker
            await bus.serve_requests(w4, effects.worker(bus, "w4").handle)
        handle = await control.start(impatient, "slow-1", Order(item="s"))
        assert (await handle.result(timeout=20)).refs == ["w4:s"]
    assert effects.done == {"s": 1}


async def test_compensation_that_keeps_failing_is_dead_lettered(bus: eventwire.Bus) -> None:
    async with running(bus) as (control, effects, _):
        effects.refuse.add("w1:u-1")
        await control.start(saga, "undo-1", Order(item="u", fail_at=3))
        status = await control.wait("undo-1", timeout=20)
        timeline = await control.timeline("undo-1")
    assert status.state == "failed-compensation"
    assert status.steps == {1: "compensation-failed", 2: "compensated", 3: "failed"}
    [letter] = [entry.data for entry in timeline if entry.kind == "compensation-failed"]
    assert isinstance(letter, dict)
    assert "cannot undo w1:u-1" in str(letter["reason"])
    assert effects.undone == {"w2:u-2": 1}
