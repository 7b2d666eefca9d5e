"""Causal order on a real server: vector clocks in the signed claims, receivers that hold
an event until what it depends on was handled, a timeout for causes that never come, and
malformed clocks refused on publish and on receipt."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import REGISTRY

import eventwire
from eventwire import (
    SIGNATURE_HEADER,
    CausalOrder,
    CausalTimeout,
    Clock,
    CustomEvent,
    Event,
    EventTooLarge,
    InvalidArgument,
    InvalidEvent,
    RetryPolicy,
    compare_clocks,
)
from eventwire_security.hazmat import encode_claims, sign_detached
from tests.conftest import TENANT, make_identity, wait_until
from tests.sdk._causal_worker import (
    AGENTS,
    HOLD_ACK_WAIT,
    HOLD_IN_FLIGHT,
    PARTITIONS,
    expected,
    start_holder,
    until_ack_pending,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from eventwire import EmbeddedServer
    from eventwire_security import Identity, Keyring

ROOT_DIR = Path(__file__).resolve().parents[2]
ORIGINATE, DEPTH = 4, 3
HELD_TOO_LONG = "eventwire_causal_held_too_long_total"


def test_clocks_compare_and_tick() -> None:
    assert compare_clocks({"a/x": 1}, {"a/x": 2}) == "before"
    assert compare_clocks({"a/x": 2, "a/y": 1}, {"a/x": 2}) == "after"
    assert compare_clocks({"a/x": 1}, {"a/y": 1}) == "concurrent"
    assert compare_clocks({"a/x": 1, "a/y": 0}, {"a/x": 1}) == "equal"


async def test_a_clock_ticks_on_publish_and_merges_what_it_handled(
    bus: eventwire.Bus, keyring: Keyring
) -> None:
    alice, bob = make_identity("alice", keyring), make_identity("bob", keyring)
    a, b = Clock(alice.principal.source), Clock(bob.principal.source)
    got: list[Event] = []

    async def handle(event: Event) -> None:
        got.append(event)

    causal = CausalOrder(clock=b)
    async with bus.subscribe("custom.>", causal.wrap(handle), durable="bob"):
        await bus.publish(CustomEvent("custom.x", "x"), identity=alice, clock=a)
        await wait_until(lambda: len(got) == 1)
        await bus.publish(CustomEvent("custom.x", "x"), identity=bob, clock=b)
        await wait_until(lambda: len(got) == 2)
    assert got[0].vclock == {alice.principal.source: 1}
    assert got[1].vclock == {alice.principal.source: 1, bob.principal.source: 1}
    assert compare_clocks(got[0].vclock, got[1].vclock) == "before"
    assert causal.handled == {alice.principal.source: 1, bob.principal.source: 1}
    with pytest.raises(InvalidEvent):  # one clock per source
        await bus.publish(CustomEvent("custom.x", "x"), identity=alice, clock=b)
    assert a.entries == {alice.principal.source: 1}  # kept as it was


async def test_a_failed_publish_leaves_the_clock_as_it_was(
    bus: eventwire.Bus, keyring: Keyring
) -> None:
    alice = make_identity("alice", keyring)
    clock = Clock(alice.principal.source)
    huge = CustomEvent("custom.x", "x", "x" * 2_000_000)
    with pytest.raises(EventTooLarge):
        await bus.publish(huge, identity=alice, clock=clock)
    assert clock.entries == {}
    await bus.publish(CustomEvent("custom.x", "x"), identity=alice, clock=clock)
    assert clock.entries == {alice.principal.source: 1}  # no gap for receivers to wait on


async def test_an_effect_stored_before_its_cause_waits_for_it(
    bus: eventwire.Bus, keyring: Keyring
) -> None:
    alice = make_identity("alice", keyring)
    me = alice.principal.source
    for count in (3, 1, 2):  # stored out of causal order (clocks given as mappings)
        item = CustomEvent("custom.x", "x", count)
        await bus.publish(item, identity=alice, clock={me: count})
    order: list[int] = []

    async def handle(event: Event) -> None:
        assert isinstance(event.data, int)
        order.append(event.data)

    causal = CausalOrder(timeout=30.0)
    async with bus.subscribe("custom.>", causal.wrap(handle), durable="r", max_in_flight=8):
        await wait_until(lambda: len(order) == 3)
    assert order == [1, 2, 3]
    assert causal.stats.held >= 1  # 3 (and 2, if it came while 1 was handled)
    assert causal.stats.held_too_long == 0


async def test_a_failed_handler_holds_what_follows_until_its_retry(
    bus: eventwire.Bus, keyring: Keyring
) -> None:
    alice = make_identity("alice", keyring)
    me = alice.principal.source
    for count in (1, 2):
        await bus.publish(CustomEvent("custom.x", "x", count), identity=alice, clock={me: count})
    attempts: list[int] = []
    handled: list[int] = []

    async def handle(event: Event) -> None:
        assert isinstance(event.data, int)
        attempts.append(event.data)
        if attempts.count(1) == 1 and event.data == 1:
            raise RuntimeError("first attempt fails")
        handled.append(event.data)

    causal = CausalOrder(timeout=30.0)
    retry = RetryPolicy(max_deliveries=3, initial_delay=0.1, jitter=0)
    async with bus.subscribe(
        "custom.>", causal.wrap(handle), durable="r", max_in_flight=4, retry=retry
    ):
        await wait_until(lambda: len(handled) == 2)
    assert handled == [1, 2]
    assert attempts == [1, 1, 2]  # 2 was held, not handled, while 1 was retried
    assert causal.stats.held_too_long == 0


async def test_events_held_by_a_killed_consumer_come_back_in_causal_order(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    alice = make_identity("alice", keyring)
    me = alice.principal.source
    out = tmp_path / "held.txt"
    holder = await start_holder("causal", nats_server.url, root, alice, out)
    try:
        for count in (2, 3):  # their cause, alice's first, is not published yet
            item = CustomEvent("custom.x", "x", count)
            await bus.publish(item, identity=alice, clock={me: count})
        await until_ack_pending(bus, "held", 2)
    finally:
        holder.kill()  # SIGKILL, with both events held
        await holder.wait()
    assert out.read_text().split() == ["ready"]  # none handled, none acknowledged
    await bus.publish(CustomEvent("custom.x", "x", 1), identity=alice, clock={me: 1})
    order: list[int] = []

    async def handle(event: Event) -> None:
        assert isinstance(event.data, int)
        order.append(event.data)

    causal = CausalOrder(timeout=30.0)
    async with bus.subscribe(
        "custom.>",
        causal.wrap(handle),
        durable="held",
        max_in_flight=HOLD_IN_FLIGHT,
        ack_wait=HOLD_ACK_WAIT,
    ):
        await wait_until(lambda: len(order) == 3)
    assert order == [1, 2, 3]


@pytest.mark.parametrize("policy", ["deliver", "dead-letter"])
async def test_a_missing_cause_times_out_as_declared(
    bus: eventwire.Bus, keyring: Keyring, policy: CausalTimeout
) -> None:
    alice = make_identity("alice", keyring)
    me, ghost = alice.principal.source, f"{TENANT}/ghost"
    # alice's first event follows ghost's first, which is never published; her second
    # follows her first.
    await bus.publish(CustomEvent("custom.x", "x", 1), identity=alice, clock={me: 1, ghost: 1})
    await bus.publish(CustomEvent("custom.x", "x", 2), identity=alice, clock={me: 2, ghost: 1})
    handled: list[Event] = []

    async def handle(event: Event) -> None:
        handled.append(event)

    causal = CausalOrder(timeout=0.3, on_timeout=policy)
    too_long = REGISTRY.get_sample_value(HELD_TOO_LONG, {"policy": policy}) or 0.0
    async with bus.subscribe(
        "custom.>", causal.wrap(handle), durable="r", max_in_flight=4
    ) as subscription:
        await wait_until(lambda: len(handled) == (2 if policy == "deliver" else 1))
        if policy == "dead-letter":
            await wait_until(lambda: subscription.stats.dead_lettered == 1)
    assert causal.stats.held_too_long == 1
    assert REGISTRY.get_sample_value(HELD_TOO_LONG, {"policy": policy}) == too_long + 1
    assert causal.handled == {me: 2, ghost: 1}  # ghost's first is given up on
    if policy == "deliver":
        assert [e.data for e in handled] == [1, 2]
        assert causal.gap(handled[0]) == {ghost: 1}  # delivered anyway, flagged
        assert causal.gap(handled[1]) == {}
        assert causal.stats.forced == 1
    else:
        assert [e.data for e in handled] == [2]
        [letter] = await bus.dead_letters.list()
        assert "causal dependencies missing" in letter.error
        assert ghost in letter.error
        assert causal.stats.dead_lettered == 1


class Workers:
    """The three agent processes of ``tests/sdk/_causal_worker.py``."""

    def __init__(self, tmp: Path) -> None:
        self.outs = [tmp / f"w{i}.jsonl" for i in range(AGENTS)]
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, server: EmbeddedServer, root: str, seeds: list[bytes]) -> None:
        joined = ",".join(seed.hex() for seed in seeds)
        env = {**os.environ, "PYTHONPATH": str(ROOT_DIR)}
        for index, out in enumerate(self.outs):
            args = [server.url, root, TENANT, str(index), joined, str(out)]
            args += [str(ORIGINATE), str(DEPTH), root]  # the root seeds the random delays
            module = ["-m", "tests.sdk._causal_worker"]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *module, *args, cwd=ROOT_DIR, env=env
            )
            self.procs.append(proc)
        await wait_until(lambda: all(len(self.lines(i)) >= 1 for i in range(AGENTS)), 60)
        for out in self.outs:
            Path(f"{out}.go").touch()  # noqa: ASYNC240 - one small file, once

    def lines(self, index: int) -> list[dict[str, Any]]:
        out = self.outs[index]
        text = out.read_text() if out.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    def delivered(self, index: int) -> list[dict[str, Any]]:
        return [line for line in self.lines(index) if "id" in line]

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


def violations(delivered: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every pair handled in an order that contradicts their clocks."""
    return [
        (first["id"], later["id"])
        for first, later in itertools.combinations(delivered, 2)
        if compare_clocks(later["vclock"], first["vclock"]) == "before"
    ]


async def test_three_agent_processes_deliver_in_causal_order(
    nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    async with eventwire.connect(nats_server.url, tenant=TENANT, root=root, partitions=PARTITIONS):
        pass  # the partitioned stream, before the agents bind to it
    workers = Workers(tmp_path)
    total = expected(ORIGINATE, DEPTH)
    try:
        await workers.start(nats_server, root, [secrets.token_bytes(32) for _ in range(AGENTS)])
        await wait_until(
            lambda: all(len(workers.delivered(i)) >= total for i in range(AGENTS)), 120
        )
    finally:
        await workers.stop()
    ids = [{line["id"] for line in workers.delivered(i)} for i in range(AGENTS)]
    assert ids[0] == ids[1] == ids[2]
    assert len(ids[0]) == total
    for index in range(AGENTS):
        delivered = workers.delivered(index)
        assert len(delivered) == total  # each once
        assert violations(delivered) == []
        [stats] = [line["stats"] for line in workers.lines(index) if "stats" in line]
        assert stats["held_too_long"] == 0


def hand_signed(identity: Identity, root: str, vclock: object) -> bytes:
    event_id, now = str(uuid.uuid4()), time.time()
    claims: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": identity.principal.source,
        "type": "x",
        "subject": "custom.x",
        "time": datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": None,
        "tenant": TENANT,
        "root": root,
        "iat": int(now),
        "correlationid": event_id,
        "vclock": vclock,
    }
    return encode_claims(claims)


BAD_CLOCKS: list[Any] = [
    {},
    [["tenant/a", 1]],
    "tenant/a:1",
    {"SELF": 0},
    {"SELF": -1},
    {"SELF": True},
    {"SELF": 1.5},
    {"SELF": 2**53 + 1},
    {"SELF": 1, "other/x\n": 1},
    {"SELF": 1, "": 1},
    {"SELF": 1, "x" * 200: 1},
    {"other/x": 1},
    {"SELF": 1, **{f"t/a{i}": 1 for i in range(64)}},
]


def _bad(value: Any, source: str) -> Any:
    if not isinstance(value, dict):
        return value
    return {(source if key == "SELF" else key): count for key, count in value.items()}


@pytest.mark.parametrize("vclock", BAD_CLOCKS)
async def test_a_malformed_clock_is_refused_on_publish_and_on_receipt(
    bus: eventwire.Bus, keyring: Keyring, vclock: Mapping[str, int]
) -> None:
    alice = make_identity("alice", keyring)
    bad = _bad(vclock, alice.principal.source)
    with pytest.raises(InvalidEvent) as caught:
        await bus.publish(CustomEvent("custom.x", "x"), identity=alice, clock=bad)
    assert caught.value.field == "vclock"
    handled: list[Event] = []

    async def handle(event: Event) -> None:
        handled.append(event)

    async with bus.subscribe("custom.>", handle, durable="r") as subscription:
        body = hand_signed(alice, bus.root, bad)
        headers = {SIGNATURE_HEADER: sign_detached(body, alice)}
        await bus.jetstream.publish(f"{bus.root}.custom.x", body, headers=headers)
        await bus.publish(CustomEvent("custom.x", "x"), identity=alice)  # goes on
        await wait_until(lambda: len(handled) == 1 and subscription.stats.rejected == 1)
    assert bus.security.rejected["invalid-event"] == 1
    assert handled[0].vclock is None


@pytest.mark.parametrize(
    ("keywords", "field"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"on_timeout": "drop"}, "on_timeout"),
    ],
)
def test_bad_causal_settings_are_refused(keywords: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        CausalOrder(**keywords)
    assert caught.value.field == field


def test_a_clock_needs_a_source() -> None:
    with pytest.raises(InvalidArgument):
        Clock("alice")
    for entries in ({"t/alice": -1}, {"t/alice": "1"}, {"t/bob": True}, {"t/bob\x00": 1}):
        with pytest.raises(InvalidEvent):
            Clock("t/alice", entries)  # type: ignore[arg-type] # bad on purpose
    assert Clock("t/alice", {"t/alice": 2, "t/bob": 1}).entries == {"t/alice": 2, "t/bob": 1}
