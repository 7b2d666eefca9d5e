"""Consumers that die mid-handler: nothing acknowledged is lost, exhausted events are
dead-lettered from the server's advisory. Each worker is a real process, killed -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import eventwire
from eventwire import CustomEvent, Event, RetryPolicy
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from eventwire import EmbeddedServer, Identity

ROOT_DIR = Path(__file__).resolve().parents[2]
WORKER_RETRY = RetryPolicy(max_deliveries=2, initial_delay=0.1, jitter=0)


class Worker:
    """``tests/sdk/_worker.py`` in a subprocess; ``lines()`` is what it wrote so far."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, server: EmbeddedServer, root: str, signer: Identity) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.sdk._worker", server.url, root, TENANT,
            signer.principal.agent, signer.public_key.raw.hex(), str(self.out),
            cwd=ROOT_DIR, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
        )  # fmt: skip
        await wait_until(lambda: "ready" in self.lines(), timeout=30)

    def lines(self) -> list[str]:
        return self.out.read_text().split() if self.out.exists() else []

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()


async def test_killed_consumer_loses_nothing(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    alice = make_identity("alice", bus.keyring)
    worker = Worker(tmp_path / "a.txt")
    await worker.start(nats_server, root, alice)
    items = [CustomEvent("custom.w", "w", "quick") for _ in range(5)]
    items += [CustomEvent("custom.w", "w", "hang")]
    items += [CustomEvent("custom.w", "w", "quick") for _ in range(14)]
    acks = await bus.publish_many(items, identity=alice)
    hang_id = acks[5].event_id
    await wait_until(lambda: hang_id in worker.lines())
    await worker.kill()  # mid-handler, with the rest of its batch unacknowledged

    handled: list[str] = []

    async def survivor(event: Event) -> None:
        handled.append(event.id)

    async with bus.subscribe(
        "custom.>", survivor, durable="worker", retry=WORKER_RETRY, ack_wait=1
    ):
        await wait_until(lambda: len(handled) == 15)  # the hung one and the 14 after it
        await asyncio.sleep(0.3)
    done_by_worker = [a.event_id for a in acks[:5]]
    assert set(worker.lines()) >= set(done_by_worker)
    assert sorted(handled) == sorted(a.event_id for a in acks[5:])


async def test_consumer_dying_on_the_last_delivery_is_dead_lettered(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    alice = make_identity("alice", bus.keyring)
    ack = await bus.publish(CustomEvent("custom.w", "w", "hang"), identity=alice)
    first, second = Worker(tmp_path / "1.txt"), Worker(tmp_path / "2.txt")
    await first.start(nats_server, root, alice)
    await wait_until(lambda: ack.event_id in first.lines())
    await first.kill()
    await second.start(nats_server, root, alice)
    await wait_until(lambda: ack.event_id in second.lines())  # redelivery 2 of 2

    handled: list[str] = []

    async def listener(event: Event) -> None:
        handled.append(event.id)

    # A live instance of the same consumer; it must not see the event again.
    async with bus.subscribe(
        "custom.>", listener, durable="worker", retry=WORKER_RETRY, ack_wait=1
    ) as sub:
        await second.kill()
        await wait_until(lambda: sub.stats.dead_lettered == 1)
    [letter] = await bus.dead_letters.list()
    assert (letter.reason, letter.deliveries, letter.stream_seq) == ("max-deliveries", 2, ack.seq)
    assert "no outcome" in letter.error
    assert handled == []
