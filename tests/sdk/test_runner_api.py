"""The runner's library side in-process (``serve_agents``, ``run_agents``, ``serve(...,
drain_timeout=)``), the identity an agent takes, public key files, and the checks that moved
to construction: an agent's tenant, a custom event's data."""

from __future__ import annotations

import asyncio
import json
import math
import signal
from typing import TYPE_CHECKING

import pytest

import eventwire
from eventwire import (
    Agent,
    AgentLifecycle,
    BusyResource,
    CustomEvent,
    Event,
    Identity,
    InvalidArgument,
    InvalidEvent,
    KeyringError,
    ResourceState,
    WrongTenant,
    keyring_of_entries,
    read_key_entry,
    run_agents,
    serve_agents,
    write_key_entry,
)
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from pathlib import Path


def test_an_agent_of_one_tenant_with_a_key_of_another_is_an_error() -> None:
    acme_key = Identity.generate("acme", "alice")
    with pytest.raises(InvalidArgument) as caught:
        Agent("alice", identity=acme_key, tenant="globex")
    assert caught.value.field == "tenant"
    assert "'acme', not 'globex'" in str(caught.value)
    assert Agent("alice", identity=acme_key, tenant="acme").tenant == "acme"
    assert Agent("alice", identity=acme_key).tenant == "acme"
    assert Agent("alice").tenant == "default"
    with pytest.raises(InvalidArgument) as bad:
        Agent("alice", tenant="no spaces")
    assert bad.value.field == "tenant"


async def test_use_identity_checks_the_owner_and_not_while_serving(bus: eventwire.Bus) -> None:
    alice = Agent("alice", tenant=TENANT)
    with pytest.raises(InvalidEvent) as other:
        alice.use_identity(Identity.generate(TENANT, "bob"))
    assert other.value.field == "identity"
    with pytest.raises(InvalidArgument, match="tenant"):
        alice.use_identity(Identity.generate("globex", "alice"))
    key = make_identity("alice", bus.keyring)
    alice.use_identity(key)
    assert (alice.identity, alice.actor.agent, alice.tenant) == (key, "alice", TENANT)
    async with alice.serve(bus):
        with pytest.raises(BusyResource):
            alice.use_identity(make_identity("alice"))
    assert alice.identity is key


@pytest.mark.parametrize(
    "data",
    [b"bytes", {1, 2}, math.nan, math.inf, "\ud800", {"nested": [object()]}],
    ids=["bytes", "set", "nan", "inf", "lone-surrogate", "object"],
)
def test_custom_event_data_that_is_not_json_fails_at_construction(data: object) -> None:
    with pytest.raises(InvalidEvent) as caught:
        CustomEvent("custom.x", "t", data)  # type: ignore[arg-type]
    assert caught.value.field == "data"


async def test_custom_event_json_data_publishes_as_given(bus: eventwire.Bus) -> None:
    sender = make_identity("sender", bus.keyring)
    data = {"list": [1, 2.5, None, True], "text": "é", "tuple": (1, 2)}
    got: list[Event] = []

    async def collect(event: Event) -> None:
        got.append(event)

    async with bus.subscribe("custom.>", collect, durable="reader"):
        await bus.publish(CustomEvent("custom.x", "t", data), identity=sender)  # type: ignore[arg-type]
        await wait_until(lambda: len(got) == 1)
    assert got[0].data == {"list": [1, 2.5, None, True], "text": "é", "tuple": [1, 2]}


async def test_serve_agents_handles_signals_only_while_it_runs(bus: eventwire.Bus) -> None:
    alice = Agent("alice", identity=make_identity("alice", bus.keyring))
    before = [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)]
    task = asyncio.create_task(serve_agents(bus, alice))
    await wait_until(lambda: alice.serving)
    during = [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)]
    assert all(handler not in before for handler in during)
    alice.stop()
    await asyncio.wait_for(task, 10)
    assert [signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)] == before
    assert alice.state is ResourceState.CLOSED


async def test_one_agent_that_cannot_start_stops_the_others(bus: eventwire.Bus) -> None:
    alice = Agent("alice", identity=make_identity("alice", bus.keyring))
    outsider = Agent("outsider", tenant="elsewhere")
    with pytest.raises(WrongTenant):
        await asyncio.wait_for(serve_agents(bus, [alice, outsider], signals=False), 20)
    assert alice.state is ResourceState.CLOSED


async def test_a_drain_timeout_cancels_handlers_and_the_stop_is_still_announced(
    bus: eventwire.Bus,
) -> None:
    worker = Agent("worker", identity=make_identity("worker", bus.keyring))
    boss = make_identity("boss", bus.keyring)
    running, cancelled = asyncio.Event(), asyncio.Event()
    phases: list[str] = []

    @worker.on("custom.hang")
    async def hang(event: Event) -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def lifecycle(event: Event) -> None:
        phases.append(event.parse(AgentLifecycle).phase)

    async with bus.subscribe("agent.lifecycle.*", lifecycle, durable="observer"):
        async with worker.serve(bus, drain_timeout=0.2):
            await bus.publish(CustomEvent("custom.hang", "hang"), identity=boss)
            await asyncio.wait_for(running.wait(), 10)
        assert cancelled.is_set()
        await wait_until(lambda: phases == ["started", "stopped"])


@pytest.mark.parametrize(
    ("agents", "keywords", "field"),
    [
        ([], {}, "agents"),
        ("alice", {}, "agents"),
        ([Agent("twin"), Agent("twin")], {}, "agents"),
        (Agent("alice"), {"drain_timeout": -1.0}, "drain_timeout"),
        (Agent("alice"), {"drain_timeout": math.inf}, "drain_timeout"),
        (Agent("alice"), {"log_level": "loud"}, "log_level"),
        (Agent("alice"), {"tenant": "globex"}, "tenant"),
        ([Agent("a", tenant="one"), Agent("b", tenant="two")], {}, "tenant"),
        (Agent("alice"), {"identities": [Identity.generate("default", "bob")]}, "identities"),
    ],
)
async def test_run_agents_refuses_bad_input_before_connecting(
    agents: object, keywords: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await run_agents(agents, "nats://127.0.0.1:1", **keywords)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_public_key_files_round_trip(tmp_path: Path) -> None:
    alice, bob = Identity.generate(TENANT, "alice"), Identity.generate(TENANT, "bob")
    written = write_key_entry(str(tmp_path / "alice.json"), alice)
    write_key_entry(str(tmp_path / "bob.json"), bob.trusted())
    document = json.loads((tmp_path / "alice.json").read_text())
    assert set(document) == {"tenant", "agent", "public_key", "kid", "not_after", "status"}
    assert read_key_entry(str(tmp_path / "alice.json")) == written
    keyring = keyring_of_entries([str(tmp_path / "alice.json"), str(tmp_path / "bob.json")])
    assert {alice.kid, bob.kid} <= {key.kid for key in keyring}
    assert (tmp_path / "alice.json").stat().st_mode & 0o777 == 0o644
    with pytest.raises(KeyringError) as exists:
        write_key_entry(str(tmp_path / "alice.json"), bob)
    assert exists.value.reason == "keyring-exists"
    with pytest.raises(KeyringError) as missing:
        write_key_entry(str(tmp_path / "no" / "dir.json"), bob)
    assert missing.value.reason == "keyring-file"
