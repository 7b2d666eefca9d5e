"""One deployment that is both multi-tenant and a 3-node cluster, secured end to end.

Three nats-server processes on 127.0.0.1, each started from the config the deployment renders
for it (``Deployment.write_config`` with the TLS and cluster options that ``eventwire tls
cluster`` passes): accounts ``acme`` and ``globex`` with the users of conftest's deployment,
TLS with a client certificate required on the client ports, and mutual TLS on the routes.
The streams are replicated on all three nodes; agents run bind-only on different nodes.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import nats
import nats.errors
import nats.js.errors
import pytest

import eventwire
from eventwire import (
    TLS,
    Agent,
    CertificateFiles,
    Credentials,
    Deployment,
    Event,
    Identity,
    Keyring,
    KnowledgeShared,
    TLSFailed,
    init_certificates,
    provision_agent,
)
from eventwire_security import Actor, private_inbox_prefix
from tests._processes import free_ports, healthy, start, stop
from tests.compiled.conftest import AGENTS, ROOT, _deployment, violations
from tests.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from nats.aio.client import Client

NODES = ("n1", "n2", "n3")
STREAM = f"{ROOT}-events"
REFUSED = 0.5  # seconds to wait for an answer the server must never send
PATIENT = 60.0  # a connect timeout no test waits for


@dataclass
class Secured:
    """The running cluster, its deployment's credentials and keys, and the admin's bus."""

    ports: list[int]
    certs: CertificateFiles
    deployment: Deployment
    credentials: dict[str, Credentials]
    actors: dict[str, Actor]
    identities: dict[str, Identity] = field(default_factory=dict)
    keyring: Keyring = field(default_factory=Keyring)

    @property
    def tls(self) -> TLS:
        client = self.certs.clients[0]
        return TLS(ca=self.certs.ca, cert=client.cert, key=client.key)

    def url(self, who: str, nodes: tuple[int, ...] = (0, 1, 2)) -> str:
        login = self.credentials[who]
        return ",".join(login.url(f"nats://127.0.0.1:{self.ports[i]}") for i in nodes)

    def bus(self, agent: str, node: int) -> eventwire.Bus:
        """A bind-only bus of ``agent`` of acme, connected to node ``node`` only."""
        return eventwire.connect(
            self.url(agent, (node,)), tenant="acme", keyring=self.keyring, root=ROOT,
            provision=False, replicas=3, inbox_prefix=private_inbox_prefix(self.actors[agent]),
            policy=self.deployment.policy("acme"), name=agent, tls=self.tls,
        )  # fmt: skip

    async def raw(self, who: str) -> Client:
        """A raw nats-py connection as ``who`` over TLS (a client that skips the SDK)."""
        errors: list[Exception] = []

        async def on_error(error: Exception) -> None:
            errors.append(error)

        actor = self.actors.get(who)  # admins have every right of their account
        nc = await nats.connect(
            self.url(who).split(","), tls=self.tls.context(), error_cb=on_error,
            allow_reconnect=False,
            inbox_prefix=private_inbox_prefix(actor) if actor else "_INBOX",
        )  # fmt: skip
        nc.errors = errors  # type: ignore[attr-defined]
        return nc


def _write_configs(
    base: Path, deployment: Deployment, certs: CertificateFiles
) -> tuple[list[int], list[int]]:
    """Each node's config, as ``eventwire tls cluster`` renders them but on loopback ports;
    the client and the monitoring ports."""
    ports = free_ports(3 * len(NODES))
    client, route, monitor = ports[0::3], ports[1::3], ports[2::3]
    for index, name in enumerate(NODES):
        routes = [f"nats-route://127.0.0.1:{port}" for i, port in enumerate(route) if i != index]
        deployment.write_config(
            base / f"{name}.conf", str(base / name), port=client[index], server_name=name,
            cluster_name="ew", cluster_port=route[index], routes=routes,
            monitor_port=monitor[index], tls_cert=str(certs.server_cert),
            tls_key=str(certs.server_key), tls_ca=str(certs.ca), tls_verify=True,
        )  # fmt: skip
    return client, monitor


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    base = tmp_path_factory.mktemp("secured")
    certs = init_certificates(base / "certs", clients=["agents"])
    deployment, credentials, actors = _deployment(base)
    ports, monitors = _write_configs(base, deployment, certs)
    procs: list[asyncio.subprocess.Process] = []
    try:
        for name, port in zip(NODES, ports, strict=True):
            procs.append(await start(base / f"{name}.conf", base / f"{name}.log", port))
        await asyncio.gather(*(healthy(port) for port in monitors))
        yield Secured(ports, certs, deployment, credentials, actors)
    finally:
        await asyncio.gather(*(stop(proc) for proc in procs))


@pytest.fixture(scope="module")
async def secured(cluster: Secured) -> AsyncIterator[Secured]:
    """The cluster once acme's admin provisioned its replicated streams and consumers."""
    for agent in (*AGENTS, "eve"):
        tenant = cluster.actors[agent].tenant
        cluster.identities[agent] = identity = Identity.generate(tenant, agent)
        cluster.keyring.add(identity.trusted())
    admin_bus = eventwire.connect(
        cluster.url("admin"), tenant="acme", keyring=cluster.keyring, root=ROOT, replicas=3,
        name="admin", tls=cluster.tls,
    )  # fmt: skip
    async with admin_bus as admin:
        for agent in ("summarizer", "writer", "mallory"):
            await provision_agent(admin, cluster.actors[agent], cluster.deployment.policy("acme"))
        cluster.admin = admin  # type: ignore[attr-defined]
        yield cluster


async def _stored(secured: Secured) -> int:
    admin: eventwire.Bus = secured.admin  # type: ignore[attr-defined]
    return (await admin.jetstream.stream_info(STREAM)).state.messages


async def test_agents_on_different_nodes_exchange_a_signed_event(secured: Secured) -> None:
    admin: eventwire.Bus = secured.admin  # type: ignore[attr-defined]
    info = await admin.jetstream.stream_info(STREAM)
    assert info.config.num_replicas == 3
    assert info.cluster is not None
    assert len(info.cluster.replicas or ()) == 2  # on every node: the routes are up
    summarizer = Agent(
        "summarizer", capabilities=["summarize"], identity=secured.identities["summarizer"]
    )
    seen: list[Event] = []

    @summarizer.on("knowledge.>")
    async def learn(event: Event) -> None:
        seen.append(event)

    async with secured.bus("summarizer", 2) as s_bus, secured.bus("writer", 0) as w_bus:
        async with summarizer.serve(s_bus):
            news = KnowledgeShared(topic="public.cluster", content="over TLS")
            ack = await w_bus.publish(news, identity=secured.identities["writer"])
            await wait_until(lambda: any(event.id == ack.event_id for event in seen))
        assert s_bus.security.rejected == {}
    event = next(event for event in seen if event.id == ack.event_id)
    assert (event.source, event.data["content"]) == ("acme/writer", "over TLS")


async def test_a_client_needs_a_certificate_of_the_ca(
    secured: Secured, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = secured.url("writer", (1,))
    cases: list[Any] = [TLS(ca=secured.certs.ca)]  # no client certificate
    foreign = init_certificates(tmp_path_factory.mktemp("foreign"), clients=["writer"])
    client = foreign.clients[0]
    cases.append(TLS(ca=secured.certs.ca, cert=client.cert, key=client.key))  # another CA's
    for tls in cases:
        with pytest.raises(TLSFailed) as refused:
            async with eventwire.connect(url, tenant="acme", tls=tls, connect_timeout=PATIENT):
                pass  # pragma: no cover - never connected
        assert "client certificate" in refused.value.reason
        assert secured.credentials["writer"].password not in str(refused.value)
        assert isinstance(refused.value.__cause__, ssl.SSLError)


async def test_a_user_of_another_tenant_cannot_see_the_stream(secured: Secured) -> None:
    before = await _stored(secured)
    globex_admin = await secured.raw("globex-admin")
    try:
        with pytest.raises(nats.js.errors.NotFoundError):  # globex has every right in globex
            await globex_admin.jetstream().stream_info(STREAM)
        await globex_admin.publish(f"{ROOT}.knowledge.public.x", b"from globex")
        await globex_admin.flush()
    finally:
        await globex_admin.close()
    assert await _stored(secured) == before


async def test_the_servers_refuse_a_publish_outside_the_agents_policy(secured: Secured) -> None:
    before = await _stored(secured)
    mallory = await secured.raw("mallory")
    try:
        with pytest.raises(nats.errors.TimeoutError):  # mallory may publish knowledge.> only
            await mallory.jetstream().publish(f"{ROOT}.task.t.completed", b"x", timeout=REFUSED)
        await wait_until(lambda: any("ew.task.t.completed" in v for v in violations(mallory)))
    finally:
        await mallory.close()
    assert await _stored(secured) == before
