"""A pattern detector SIGKILLed after publishing a match but before storing its state and
acknowledging: restarted, it finds the match again from its KV state and the redelivered
event, and the stream still holds the match once.

Run as a module (``python -m tests.sdk.test_patterns_crash URL ROOT TENANT SEED WEB_SEED
OUT``) it is the detector process (agent ``security``, trusting ``web``): on a match it
writes the matched ids to ``OUT`` and hangs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import eventwire
from eventwire import (
    CustomEvent,
    Identity,
    Keyring,
    PatternDetector,
    PatternMatch,
    Principal,
    Sequence,
    Step,
    Threshold,
)
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from eventwire import Bus, EmbeddedServer

ROOT_DIR = Path(__file__).parent.parent.parent
FRAUD = Sequence(
    Threshold(Step("custom.auth.login.failed"), at_least=3, within=60),
    Step("custom.auth.login.succeeded"),
    within=60,
)
ACK_WAIT = 1.0


def detector(
    bus: Bus, identity: Identity, on_match: Callable[[PatternMatch], Awaitable[None]]
) -> PatternDetector:
    return PatternDetector(
        bus, {"takeover": FRAUD}, identity=identity, name="fraud", ack_wait=ACK_WAIT,
        on_match=on_match,
    )  # fmt: skip


async def worker(args: list[str]) -> None:
    url, root, tenant, seed_hex, web_seed_hex, out = args
    identity = Identity(Principal(tenant, "security"), bytes.fromhex(seed_hex))
    web = Identity(Principal(tenant, "web"), bytes.fromhex(web_seed_hex))

    async def hang(match: PatternMatch) -> None:
        Path(out).write_text(" ".join(match.event_ids))  # noqa: ASYNC240 - a tiny file
        await asyncio.Event().wait()  # killed here: published, not stored, not acked

    async with (
        eventwire.connect(url, tenant=tenant, root=root, keyring=Keyring.of(identity, web)) as bus,
        detector(bus, identity, hang),
    ):
        await asyncio.Event().wait()


async def login(bus: Bus, web: Identity, outcome: str) -> int:
    item = CustomEvent(f"custom.auth.login.{outcome}", outcome, {})
    return (await bus.publish(item, identity=web, partition_key="alice")).seq


async def test_killed_between_publishing_and_storing_a_match_publishes_it_once(
    nats_server: EmbeddedServer, bus: Bus, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    web, me = make_identity("web", keyring), make_identity("security", keyring)
    out = tmp_path / "matched.txt"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.sdk.test_patterns_crash", nats_server.url, root, TENANT,
        me.seed.hex(), web.seed.hex(), str(out),
        cwd=ROOT_DIR, env={**os.environ, "PYTHONPATH": str(ROOT_DIR)},
    )  # fmt: skip
    try:
        failures = [await login(bus, web, "failed") for _ in range(3)]
        stored = 0

        async def acked() -> None:
            nonlocal stored
            infos = await bus.jetstream.consumers_info(bus.stream)
            stored = max((info.ack_floor.stream_seq for info in infos if info.ack_floor), default=0)

        async with asyncio.timeout(30):
            while stored < failures[-1]:  # the failures are stored in KV, then acked
                await acked()
                await asyncio.sleep(0.05)
        success = await login(bus, web, "succeeded")
        await wait_until(out.exists, 30)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    matched_by_the_dead = out.read_text().split()
    assert len(matched_by_the_dead) == 4
    assert await stored_matches(bus) == 1  # published by the dead, never stored nor acked

    again: list[PatternMatch] = []

    async def keep(match: PatternMatch) -> None:
        again.append(match)

    async with detector(bus, me, keep) as resumed:
        assert resumed.active_keys == 1  # the three failures, from KV
        async with asyncio.timeout(30):
            await resumed.wait_for(success)  # redelivered after ACK_WAIT
        assert resumed.counters.applied == 1
        assert resumed.active_keys == 0
    assert [list(match.event_ids) for match in again] == [matched_by_the_dead]
    assert await stored_matches(bus) == 1  # published again, stored once


async def stored_matches(bus: Bus) -> int:
    subject = f"{bus.root}.custom.pattern.fraud.takeover"
    info = await bus.jetstream.stream_info(bus.stream, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


if __name__ == "__main__":
    asyncio.run(worker(sys.argv[1:7]))


async def test_a_detector_keeps_going_across_a_server_crash(own_server: EmbeddedServer) -> None:
    """The server is SIGKILLed mid-window and started again on its port and store: the
    detector reconnects, resumes its consumer and completes the match once."""
    keyring = Keyring()
    web, me = make_identity("web", keyring), make_identity("security", keyring)
    async with (
        eventwire.connect(own_server.url, tenant=TENANT, keyring=keyring, root="crash") as bus,
        detector(bus, me, _ignore) as cep,
    ):
        for _ in range(2):
            seq = await login(bus, web, "failed")
        async with asyncio.timeout(30):
            await cep.wait_for(seq)
        await own_server.kill()
        await asyncio.sleep(0.3)
        await own_server.start()
        await login(bus, web, "failed")  # retried until the server answers
        success = await login(bus, web, "succeeded")
        async with asyncio.timeout(30):
            await cep.wait_for(success)
        assert cep.counters.published == 1
        assert cep.counters.applied == 4
        assert await stored_matches(bus) == 1


async def _ignore(match: PatternMatch) -> None:
    pass
