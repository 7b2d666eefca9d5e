"""A REAL nats-server started from the config ``eventwire tenant`` compiles (no mocks).

One server for this package: tenants ``acme`` and ``globex`` are NATS accounts; every agent
logs in as its own user with ``compile_permissions`` of its tenant's policy (no
``$JS.API.>``, a private inbox). An admin of ``acme`` provisions the streams, buckets and
each agent's consumers; the agents then run the SDK with ``provision=False``.
``mallory`` is the compromised agent of the threat model: valid credentials and a valid
signing key of ``acme``, and nothing more.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats
import pytest

import eventwire
from eventwire import (
    Credentials,
    Deployment,
    Identity,
    Keyring,
    RetryPolicy,
    find_nats_server,
    provision_agent,
)
from eventwire_security import Actor, Policy, private_inbox_prefix
from tests.sdk.test_tenants import _ready_url as ready_url
from tests.sdk.test_tenants import _stop as stop_server

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from nats.aio.client import Client
    from nats.aio.msg import Msg

ROOT = "ew"
POLICY = """\
version = 1

[[rule]]
principal = "*"
publish = ["agent.lifecycle.*"]
consume = ["agent.lifecycle.*"]

[[rule]]
principal = "agent:summarizer"
publish = ["task.*.completed"]
consume = ["capability.summarize.*", "knowledge.>"]
deny_consume = ["knowledge.secret.*"]

[[rule]]
principal = "agent:writer"
publish = ["knowledge.>", "capability.summarize.*"]
consume = ["task.*.completed"]

[[rule]]
principal = "agent:mallory"
publish = ["knowledge.>"]
consume = ["knowledge.public.*"]

[[rule]]
principal = "agent:flaky"
consume = ["status.*"]
"""
AGENTS = {"summarizer": ("summarize",), "writer": (), "mallory": (), "flaky": ()}
# flaky's consumer: two deliveries, then the reserve one; a short ack wait for the test.
FLAKY_RETRY = RetryPolicy(max_deliveries=2, initial_delay=0.05, max_delay=0.1)
FLAKY_ACK_WAIT = 1.0


@dataclass
class World:
    """The running deployment: its server, credentials, keys and the admin's bus."""

    url: str
    deployment: Deployment
    policy: Policy
    credentials: dict[str, Credentials]
    identities: dict[str, Identity]
    keyring: Keyring
    admin: eventwire.Bus
    actors: dict[str, Actor] = field(default_factory=dict)

    def login(self, agent: str) -> str:
        return self.credentials[agent].url(self.url)

    def bus(self, agent: str, **options: Any) -> eventwire.Bus:
        """A bind-only bus logged in as ``agent``, under the tenant policy."""
        tenant = self.identities[agent].principal.tenant
        return eventwire.connect(
            self.login(agent), tenant=tenant, keyring=self.keyring, root=ROOT,
            provision=False, inbox_prefix=private_inbox_prefix(self.actors[agent]),
            policy=self.policy if tenant == "acme" else None, name=agent, **options,
        )  # fmt: skip

    async def raw(self, agent: str) -> Client:
        """A raw nats-py connection as ``agent`` (what a client that skips the SDK does)."""
        errors: list[Exception] = []

        async def on_error(error: Exception) -> None:
            errors.append(error)

        actor = self.actors.get(agent)  # admins have every right of their account
        inbox = private_inbox_prefix(actor) if actor else "_INBOX"
        nc = await nats.connect(
            self.login(agent), inbox_prefix=inbox, error_cb=on_error, allow_reconnect=False
        )
        nc.errors = errors  # type: ignore[attr-defined]
        return nc


def violations(nc: Client) -> list[str]:
    """The permissions violations the server reported to ``nc`` (via its error callback)."""
    found: list[Exception] = nc.errors  # type: ignore[attr-defined]
    return [str(e).lower() for e in found if "permissions violation" in str(e).lower()]


def _deployment(base: Path) -> tuple[Deployment, dict[str, Credentials], dict[str, Actor]]:
    deployment = Deployment(base / "deployment")
    deployment.configure(root=ROOT, port=-1, store_dir=str(base / "jetstream"))
    credentials = {"admin": deployment.create_tenant("acme")}
    deployment.set_policy("acme", POLICY)
    actors = {}
    for agent, capabilities in AGENTS.items():
        credentials[agent] = deployment.add_agent("acme", agent, capabilities)
        actors[agent] = Actor("acme", agent, capabilities)
    credentials["globex-admin"] = deployment.create_tenant("globex")
    credentials["eve"] = deployment.add_agent("globex", "eve")
    actors["eve"] = Actor("globex", "eve")
    return deployment, credentials, actors


@pytest.fixture(scope="package")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, Any]]:
    base = tmp_path_factory.mktemp("compiled")
    deployment, credentials, actors = _deployment(base)
    config = deployment.write_config()
    with (base / "nats-server.log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            str(find_nats_server()), "-c", str(config),
            "--ports_file_dir", str(deployment.path),
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    try:
        yield await ready_url(deployment, proc), (deployment, credentials, actors)
    finally:  # the finalizer stops the server by its PID, whatever the tests did
        await stop_server(proc)


async def pull_by_hand(nc: Client, consumer: str) -> Msg:
    """One delivery pulled from ``consumer`` with the raw JetStream API, not acknowledged.

    Not ``nc.request``: a JetStream delivery carries the event's subject, not the inbox's,
    so nats-py's request multiplexer would not match it."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        request = json.dumps({"batch": 1, "expires": 2_000_000_000}).encode()
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{ROOT}-events.{consumer}", request, inbox)
        return await sub.next_msg(timeout=5)
    finally:
        await sub.unsubscribe()


@pytest.fixture(scope="package")
async def world(server: tuple[str, Any]) -> AsyncIterator[World]:
    url, (deployment, credentials, actors) = server
    identities = {agent: Identity.generate("acme", agent) for agent in AGENTS}
    identities["eve"] = Identity.generate("globex", "eve")
    keyring = Keyring()
    for identity in identities.values():
        keyring.add(identity.trusted())
    policy = deployment.policy("acme")
    admin_bus = eventwire.connect(
        credentials["admin"].url(url), tenant="acme", keyring=keyring, root=ROOT, name="admin"
    )
    async with admin_bus as admin:
        for agent in ("summarizer", "writer", "mallory"):
            await provision_agent(admin, actors[agent], policy)
        await provision_agent(
            admin, actors["flaky"], policy, retry=FLAKY_RETRY, ack_wait=FLAKY_ACK_WAIT
        )
        yield World(url, deployment, policy, credentials, identities, keyring, admin, actors)
