"""A real 3-node JetStream cluster on 127.0.0.1: the events stream replicated on every node,
and its leader killed with SIGKILL while events are published and consumed.

The first test checks EmbeddedCluster itself, so it always runs the binary; the others use
the ``nats_cluster`` fixture, of the backend ``EVENTWIRE_TEST_BACKEND`` selects."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import TYPE_CHECKING

import nats
import pytest

import eventwire
from eventwire import CustomEvent, EmbeddedCluster, Event, Identity, Keyring
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.js.api import StreamInfo

TOTAL = 3_000
KILL_AFTER = 1_000


@pytest.fixture
async def healthy_cluster(nats_cluster: EmbeddedCluster) -> AsyncIterator[EmbeddedCluster]:
    """The module's cluster (of EVENTWIRE_TEST_BACKEND: processes or containers) with every
    node running and caught up, before and after."""
    await nats_cluster.revive()
    yield nats_cluster
    await nats_cluster.revive()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _stream_info(cluster: EmbeddedCluster, stream: str) -> StreamInfo:
    nc = await nats.connect(servers=cluster.urls.split(","))
    try:
        return await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()


async def _client_node(cluster: EmbeddedCluster, client_name: str) -> int:
    """The index of the node a client (by its connection name) is connected to."""
    for index, node in enumerate(cluster.nodes):
        if node.running:
            connz = await cluster.monitor(index, "/connz")
            if any(c.get("name") == client_name for c in connz["connections"] or ()):
                return index
    raise AssertionError(f"no node has a connection named {client_name!r}")


async def test_cluster_listens_on_loopback_and_stops_every_node(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    async with EmbeddedCluster(base_dir=tmp_path_factory.mktemp("c")) as cluster:
        urls = cluster.urls.split(",")
        pids = [node.pid for node in cluster.nodes]
        jsz = await cluster.monitor(0, "/jsz")
        assert len(urls) == 3
        assert all(url.startswith("nats://127.0.0.1:") for url in urls)
        assert all(cluster.monitor_url(i).startswith("http://127.0.0.1:") for i in range(3))
        assert jsz["meta_cluster"]["cluster_size"] == 3
    assert all(pid is not None and not _alive(pid) for pid in pids)


async def test_events_stream_has_three_replicas(
    healthy_cluster: EmbeddedCluster, root: str, keyring: Keyring
) -> None:
    cluster, alice = healthy_cluster, make_identity("alice", keyring)
    async with eventwire.connect(
        cluster.urls, tenant=TENANT, keyring=keyring, root=root, replicas=3
    ) as bus:
        ack = await bus.publish(CustomEvent("custom.r", "r", 1), identity=alice)
        info = await _stream_info(cluster, bus.stream)
    assert ack.seq == 1
    assert info.config.num_replicas == 3
    assert info.cluster is not None
    assert info.cluster.leader in cluster.names
    replicas = info.cluster.replicas or []
    assert len(replicas) == 2
    assert {peer.name for peer in replicas} | {info.cluster.leader} == set(cluster.names)


async def test_opening_a_bus_waits_out_a_cluster_electing_its_meta_leader(
    healthy_cluster: EmbeddedCluster, root: str, keyring: Keyring
) -> None:
    """With two of three nodes down, JetStream answers nothing (no meta leader): a bus
    opening then asks again until the nodes are back, instead of failing at the first
    unanswered request (as it did when a loaded cluster was slow to answer a create)."""
    cluster, alice = healthy_cluster, make_identity("alice", keyring)
    await cluster.stop(1)
    await cluster.stop(2)
    opened: list[float] = []

    async def back_later() -> float:
        await asyncio.sleep(6.0)  # past nats-py's 5 s request timeout: one went unanswered
        await cluster.restart(1)
        await cluster.restart(2)
        return time.monotonic()

    url = cluster.urls.split(",")[0]
    async with asyncio.TaskGroup() as group:
        revived = group.create_task(back_later())
        async with eventwire.connect(url, tenant=TENANT, keyring=keyring, root=root) as bus:
            opened.append(time.monotonic())
            ack = await bus.publish(CustomEvent("custom.r", "r", 1), identity=alice)
    assert opened[0] >= revived.result()  # it waited for the quorum, it did not fail
    assert ack.seq == 1


class Run:
    """What the publisher and the counting subscriber saw."""

    def __init__(self) -> None:
        self.acked: list[str] = []
        self.ack_times: list[float] = []
        self.calls: Counter[str] = Counter()
        self.killed_at = 0.0  # wall clock, to compare with the server's leader_since
        self.elected_after = float("nan")

    async def handle(self, event: Event) -> None:
        self.calls[event.id] += 1

    def max_pause(self) -> float:
        return max(b - a for a, b in zip(self.ack_times, self.ack_times[1:], strict=False))

    def report(self, case: str, sub: eventwire.Subscription, started: float) -> str:
        return (
            f"\n{case}: acked {len(self.acked)}, handled {len(self.calls)} distinct, handler "
            f"calls {sum(self.calls.values())}, duplicates skipped {sub.stats.duplicates}, "
            f"max pause between publish acks {self.max_pause() * 1000:.0f} ms, new leader "
            f"elected {self.elected_after * 1000:.0f} ms after the kill, "
            f"{time.monotonic() - started:.1f} s"
        )


async def _publish_killing_the_leader(
    bus: eventwire.Bus, cluster: EmbeddedCluster, leader: int, alice: Identity, run: Run
) -> None:
    """Publish TOTAL events one by one; between two of them, SIGKILL the stream's leader."""
    killed = asyncio.Event()

    async def time_election() -> None:
        await killed.wait()
        await cluster.stream_leader(bus.stream)
        info = await _stream_info(cluster, bus.stream)
        assert info.cluster is not None
        assert info.cluster.leader_since is not None
        run.elected_after = info.cluster.leader_since.timestamp() - run.killed_at

    election = asyncio.create_task(time_election())
    try:
        for i in range(TOTAL):
            if i == KILL_AFTER:
                run.killed_at = time.time()
                await cluster.kill(leader)
                killed.set()
            ack = await bus.publish(CustomEvent("custom.f", "f", i), identity=alice)
            run.acked.append(ack.event_id)
            run.ack_times.append(time.monotonic())
        await election
    finally:
        election.cancel()


@pytest.mark.slow
@pytest.mark.parametrize("client_on", ["leader", "follower"])
async def test_stream_leader_killed_while_publishing(
    healthy_cluster: EmbeddedCluster, root: str, keyring: Keyring, client_on: str
) -> None:
    """No acknowledged event is lost or handled twice when the stream's leader crashes,
    whether the publisher is connected to the crashing node or to another one."""
    cluster, alice, run = healthy_cluster, make_identity("alice", keyring), Run()
    async with (
        eventwire.connect(
            cluster.urls, tenant=TENANT, keyring=keyring, root=root, replicas=3, name=root
        ) as bus,
        bus.subscribe("custom.>", run.handle, durable="f", idempotent=True, ack_wait=2) as sub,
    ):
        client = await _client_node(cluster, root)
        to = client if client_on == "leader" else (client + 1) % len(cluster.nodes)
        leader = await cluster.step_down(bus.stream, to)
        started = time.monotonic()
        async with asyncio.timeout(60):
            await _publish_killing_the_leader(bus, cluster, leader, alice, run)
        await wait_until(lambda: set(run.acked) <= set(run.calls), timeout=30)
        await asyncio.sleep(0.5)  # let stragglers (redeliveries) arrive too
        await cluster.restart(leader)
        await cluster.wait_ready()  # the restarted node caught up
        info = await _stream_info(cluster, bus.stream)
        refused = dict(bus.security.rejected)

    case = f"client on {cluster.names[client]}, killed the leader {cluster.names[leader]}"
    print(run.report(case, sub, started))
    lost = [event_id for event_id in run.acked if event_id not in run.calls]
    twice = [event_id for event_id, n in run.calls.items() if n > 1]
    assert len(run.acked) == TOTAL
    assert lost == []
    assert twice == []
    assert refused == {}
    assert info.state.messages == TOTAL
    assert info.cluster is not None
    assert all(peer.current and not peer.offline for peer in info.cluster.replicas or ())
