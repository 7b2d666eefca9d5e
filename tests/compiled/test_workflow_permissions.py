"""Workflow histories and timers under the compiled permissions, on a REAL nats-server.

Only an agent with the role ``orchestrator`` may append to ``<root>.custom.es.workflow.>``
and schedule timers on ``<root>.wftimer.at.>`` (and pull the due ones from ``wf-timers``).
``mallory`` is allowed ``custom.>`` by the policy and holds a trusted signing key: the server
refuses its forged history events and timers all the same (nothing stored), and a history
event written around the server (by an admin's connection) is still refused on load by the
signature check.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import ConsumerConfig

import eventwire
from eventwire import (
    CustomEvent,
    Deployment,
    Identity,
    Keyring,
    Orchestrator,
    UntrustedHistory,
    Workflows,
    find_nats_server,
)
from eventwire._streams import apply_resource, declared  # noqa: TID251 - `streams apply`
from eventwire_security import Actor, Policy, compile_permissions, private_inbox_prefix
from tests.compiled.conftest import violations
from tests.conftest import wait_until
from tests.sdk.test_tenants import _ready_url as ready_url
from tests.sdk.test_tenants import _stop as stop_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from nats.aio.client import Client

ROOT = "ew"
TIMERS = f"{ROOT}-wftimers"
TIMERS_CONSUMER = "wf-timers"  # shared by the orchestrators; compile_permissions grants it
POLICY = """\
version = 1

[[rule]]
principal = "*"
publish = ["custom.>", "agent.lifecycle.*"]
consume = ["agent.lifecycle.*"]
"""
ROLES = {"orch": ("orchestrator",), "mallory": ()}
REFUSED = 0.5  # seconds to wait for an answer the server must never send
SETTINGS: dict[str, Any] = {"registry_ttl": 15.0, "replay_horizon": 660.0, "dedupe_window": 600.0}


class Site:
    """The running deployment: URL, credentials, identities, the admin's bus."""

    def __init__(self, url: str, logins: dict[str, str], admin: eventwire.Bus) -> None:
        self.url, self.logins, self.admin = url, logins, admin
        self.keyring = admin.keyring
        self.identities: dict[str, Identity] = {}

    def bus(self, agent: str) -> eventwire.Bus:
        """A bind-only bus of ``agent`` under its compiled permissions."""
        return eventwire.connect(
            self.logins[agent], tenant="acme", keyring=self.keyring, root=ROOT,
            provision=False, inbox_prefix=private_inbox_prefix(Actor("acme", agent)), name=agent,
        )  # fmt: skip

    async def raw(self, agent: str) -> Client:
        errors: list[Exception] = []

        async def on_error(error: Exception) -> None:
            errors.append(error)

        nc = await nats.connect(
            self.logins[agent], inbox_prefix=private_inbox_prefix(Actor("acme", agent)),
            error_cb=on_error, allow_reconnect=False,
        )  # fmt: skip
        nc.errors = errors  # type: ignore[attr-defined]
        return nc


def _deployment(base: Path) -> tuple[Deployment, dict[str, Any]]:
    deployment = Deployment(base / "deployment")
    deployment.configure(root=ROOT, port=-1, store_dir=str(base / "jetstream"))
    credentials = {"admin": deployment.create_tenant("acme")}
    deployment.set_policy("acme", POLICY)
    for agent, roles in ROLES.items():
        credentials[agent] = deployment.add_agent("acme", agent, roles=roles)
    return deployment, credentials


@pytest.fixture(scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    base = tmp_path_factory.mktemp("workflow-permissions")
    deployment, credentials = _deployment(base)
    config = deployment.write_config()
    with (base / "nats-server.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            str(find_nats_server()), "-c", str(config), "--ports_file_dir", str(deployment.path),
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    try:
        url = await ready_url(deployment, proc)
        logins = {agent: made.url(url) for agent, made in credentials.items()}
        keyring = Keyring()
        identities = {agent: Identity.generate("acme", agent) for agent in ROLES}
        for identity in identities.values():
            keyring.add(identity.trusted())
        admin_bus = eventwire.connect(logins["admin"], tenant="acme", keyring=keyring, root=ROOT)
        async with admin_bus as admin:
            await _provision(admin)
            made = Site(url, logins, admin)
            made.identities = identities
            yield made
    finally:
        await stop_server(proc)


async def _provision(admin: eventwire.Bus) -> None:
    """What `eventwire streams apply` and an admin do: every declared resource, and the
    timers consumer the orchestrators share."""
    js = admin.jetstream
    for resource in declared(ROOT, **SETTINGS):
        await apply_resource(js, resource)
    config = ConsumerConfig(durable_name=TIMERS_CONSUMER, filter_subject=f"{ROOT}.wftimer.due.>")
    await js.add_consumer(TIMERS, config)


async def _refused_publish(site: Site, nc: Client, subject: str, headers: dict[str, str]) -> None:
    """``subject`` is refused by the server: a permissions violation, no ack, nothing stored."""
    stream = TIMERS if ".wftimer." in subject else f"{ROOT}-events"
    with pytest.raises(nats.errors.TimeoutError):
        await nc.jetstream().publish(subject, b"{}", timeout=REFUSED, headers=headers)
    await wait_until(lambda: any(subject.lower() in v for v in violations(nc)))
    with pytest.raises(nats.js.errors.NotFoundError):
        await site.admin.jetstream.get_last_msg(stream, subject)


async def test_only_the_orchestrator_may_write_histories_and_timers(site: Site) -> None:
    mallory = await site.raw("mallory")
    try:
        at = {"Nats-Schedule": "@at 2100-01-01T00:00:00Z",
              "Nats-Schedule-Target": f"{ROOT}.wftimer.due.w1.1"}  # fmt: skip
        await _refused_publish(site, mallory, f"{ROOT}.custom.es.workflow.w1", {})
        await _refused_publish(site, mallory, f"{ROOT}.wftimer.at.w1.1", at)
        await _refused_publish(site, mallory, f"{ROOT}.wftimer.due.w1.1", {})
        ack = await mallory.jetstream().publish(f"{ROOT}.custom.notes.n1", b"{}")  # its policy
        assert ack.stream == f"{ROOT}-events"
    finally:
        await mallory.close()
    orch = await site.raw("orch")
    try:
        ack = await orch.jetstream().publish(f"{ROOT}.custom.es.workflow.w2", b"{}")
        assert ack.stream == f"{ROOT}-events"
        assert violations(orch) == []
    finally:
        await orch.close()


async def test_a_bound_orchestrator_schedules_and_receives_its_timers(site: Site) -> None:
    woken: list[str] = []

    async def wake(workflow_id: str) -> None:
        woken.append(workflow_id)

    async with site.bus("orch") as bus:
        timers = Orchestrator(bus, site.identities["orch"], []).timers
        await timers.schedule("w3", 1, time.time())  # due at the next second
        async with asyncio.TaskGroup() as group:
            task = group.create_task(timers.consume(wake, ack_wait=5.0))
            try:
                await wait_until(lambda: "w3" in woken, timeout=15.0)
            finally:
                task.cancel()
    stored = await site.admin.jetstream.get_last_msg(TIMERS, f"{ROOT}.wftimer.due.w3.1")
    assert stored.subject == f"{ROOT}.wftimer.due.w3.1"


async def test_a_history_event_written_around_the_server_is_refused_on_load(
    site: Site,
) -> None:
    """The second line of defence: an event on a history subject that the server did not
    stop (here an admin's connection) but not signed by a trusted orchestrator."""
    kind = "io.eventwire.workflow.cancel-requested"
    forged = CustomEvent("custom.es.workflow.w4", kind, {})
    await site.admin.publish(forged, identity=site.identities["mallory"])
    workflows = Workflows(site.admin, site.identities["orch"], orchestrators=["acme/orch"])
    with pytest.raises(UntrustedHistory, match="signed by acme/mallory"):
        await workflows.timeline("w4")


def test_the_compiled_workflow_rights() -> None:
    """The orchestrator role gets the history, the schedules and the timers consumer;
    anyone else the history and every timer subject as denies (also keyed, partitioned)."""
    policy = Policy.from_toml(POLICY)
    orch = compile_permissions(policy, Actor("acme", "orch", roles=("orchestrator",)), root="t1")
    assert {
        "t1.custom.es.workflow.>", "t1.wftimer.at.>", "$JS.API.STREAM.INFO.t1-wftimers",
        "$JS.API.CONSUMER.INFO.t1-wftimers.wf-timers",
        "$JS.API.CONSUMER.MSG.NEXT.t1-wftimers.wf-timers", "$JS.ACK.t1-wftimers.wf-timers.>",
    } <= set(orch["publish"]["allow"])  # fmt: skip
    assert orch["publish"]["deny"] == []
    assert not any("wftimer.due" in rule for rule in orch["publish"]["allow"])
    other = compile_permissions(policy, Actor("acme", "mallory"), root="t1", partitioned=True)
    assert other["publish"]["deny"] == [
        "t1.custom.es.workflow.>", "t1.keyed.*.custom.es.workflow.>", "t1.wftimer.>",
    ]  # fmt: skip
    assert not any("wftimer" in rule for rule in other["publish"]["allow"])
    assert "t1.custom.>" in other["publish"]["allow"]  # the policy's allow, which the deny beats
