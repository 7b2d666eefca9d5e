"""Partitions: keyed events assigned to partitions by the server's subject transform, one
consumer per partition, per-key order under concurrency and redelivery."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import nats
import pytest

import eventwire
from eventwire import (
    ConfigError,
    CustomEvent,
    Event,
    InvalidEvent,
    Keyring,
    RetryPolicy,
    StreamConfigError,
    Unprocessable,
)
from eventwire._codec import SIGNATURE_HEADER, Codec, Rejection
from eventwire._streams import apply_stream, diff_stream, events_stream_config
from eventwire._subjects import (
    check_pattern,
    consumer_filters,
    key_token,
    partition_of,
    publish_subject,
    republish_subject,
    stored_subject,
)
from tests.conftest import TENANT, make_identity, wait_until
from tests.sdk.test_cli import cli

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from eventwire import EmbeddedServer, Identity

N = 4
KEYS = [f"order-{i}" for i in range(24)]
PER_KEY = 12
FAST_RETRY = RetryPolicy(max_deliveries=6, initial_delay=0.01, jitter=0)


def connect(server: EmbeddedServer, root: str, keyring: Keyring, **options: Any) -> eventwire.Bus:
    return eventwire.connect(server.url, tenant=TENANT, keyring=keyring, root=root, **options)


@pytest.fixture
async def pbus(
    nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> AsyncIterator[eventwire.Bus]:
    async with connect(nats_server, root, keyring, partitions=N) as bus:
        yield bus


async def publish_rounds(bus: eventwire.Bus, alice: Identity, keys: list[str], rounds: int) -> None:
    """Event i of every key, for i in order: each key's events in increasing order."""
    for i in range(rounds):
        await asyncio.gather(
            *(
                bus.publish(CustomEvent("custom.order", "o", i), identity=alice, partition_key=key)
                for key in keys
            )
        )


# --- the layout, pure ----------------------------------------------------------------------


def test_the_keyed_layout_and_the_servers_hash() -> None:
    assert len(key_token("any key, with spaces.and.dots")) == 16
    assert key_token("a") == "ca978112ca1bbdca"  # sha256("a")[:16]
    # FNV-1a 32 test vectors (the hash nats-server's partition() uses)
    assert partition_of("a", 2**32) == 0xE40C292C
    assert partition_of("foobar", 2**32) == 0xBF9CF968
    assert publish_subject("ew", "custom.x", "a", 4) == "ew.keyed.ca978112ca1bbdca.custom.x"
    assert publish_subject("ew", "custom.x", "a", 0) == "ew.custom.x"
    assert publish_subject("ew", "custom.x", None, 4) == "ew.custom.x"
    stored = stored_subject("ew", "custom.x", "a", 4)
    assert stored == "ew.keyed.0.ca978112ca1bbdca.custom.x"  # probed on nats-server 2.15
    assert republish_subject("ew", stored) == publish_subject("ew", "custom.x", "a", 4)
    assert republish_subject("ew", "ew.custom.x") == "ew.custom.x"


@pytest.mark.parametrize(
    ("pattern", "filters"),
    [
        ("custom.>", ["r.custom.>", "r.keyed.*.*.custom.>"]),
        ("custom.*", ["r.custom.*", "r.keyed.*.*.custom.*"]),
        ("*.o", [*(f"r.{f}.o" for f in eventwire._subjects.FAMILIES), "r.keyed.*.*.*.o"]),
        (">", [*(f"r.{f}.>" for f in eventwire._subjects.FAMILIES), "r.keyed.*.*.>"]),
    ],
)
def test_filters_on_a_partitioned_bus_cover_both_layouts(pattern: str, filters: list[str]) -> None:
    assert consumer_filters("r", pattern, 4) == filters
    assert consumer_filters("r", pattern, 0) == [f"r.{pattern}"]


def test_keyed_is_a_reserved_first_token() -> None:
    with pytest.raises(InvalidEvent, match="reserved") as info:
        CustomEvent("keyed.x", "t", 1)
    assert info.value.field == "subject"
    with pytest.raises(InvalidEvent):
        check_pattern("keyed.>")


@pytest.mark.parametrize("bad", [-1, 1025, 2.0, "4", True, None])
def test_bad_partition_counts_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="partitions"):
        eventwire.connect("nats://127.0.0.1:1", partitions=bad)  # type: ignore[arg-type]


def test_the_codec_accepts_only_the_servers_keyed_layout(keyring: Keyring) -> None:
    alice = make_identity("alice", keyring)
    codec = Codec(tenant=TENANT, root="r", keyring=keyring, max_bytes=65536, partitions=N)
    signed = codec.sign(CustomEvent("custom.x", "t", 1), alice, partition_key="k")
    token, right = key_token("k"), partition_of(key_token("k"), N)
    assert signed.wire_subject == f"r.keyed.{token}.custom.x"
    headers = signed.headers
    opened = codec.open(signed.body, headers, f"r.keyed.{right}.{token}.custom.x")
    assert not isinstance(opened, Rejection)
    wrong = [
        f"r.keyed.{(right + 1) % N}.{token}.custom.x",  # another partition
        f"r.keyed.{right + N}.{token}.custom.x",  # a partition the bus does not have
        f"r.keyed.0{right}.{token}.custom.x",  # not the server's spelling
        f"r.keyed.{right}.{key_token('other')}.custom.x",  # another key's token
        f"r.keyed.{right}.{token}.custom.y",  # another subject
        "r.custom.x",  # a keyed event outside the keyed layout
    ]
    for subject in wrong:
        refused = codec.open(signed.body, headers, subject)
        assert isinstance(refused, Rejection), subject
        assert refused.reason == "subject-mismatch"
    unkeyed = codec.sign(CustomEvent("custom.x", "t", 1), alice)
    assert unkeyed.wire_subject == "r.custom.x"
    refused = codec.open(unkeyed.body, unkeyed.headers, f"r.keyed.{right}.{token}.custom.x")
    assert isinstance(refused, Rejection)
    plain = Codec(tenant=TENANT, root="r", keyring=keyring, max_bytes=65536)
    refused = plain.open(signed.body, headers, f"r.keyed.{right}.{token}.custom.x")
    assert isinstance(refused, Rejection)  # an unpartitioned bus knows no keyed layout


# --- on a real server ---------------------------------------------------------------------


async def test_per_key_order_holds_across_partitions_under_failures_and_redelivery(
    pbus: eventwire.Bus, nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    """Two instances share the partitions; a handler fails at random and the server
    redelivers; every event is handled, each key's events in the order published."""
    alice = make_identity("alice", keyring)
    done: dict[str, list[int]] = defaultdict(list)
    attempts: dict[str, int] = defaultdict(int)
    running = peak = failures = 0
    rng = random.Random(5)

    async def handler(event: Event) -> None:
        nonlocal running, peak, failures
        assert isinstance(event.data, int)
        assert event.partitionkey is not None
        attempts[event.id] += 1
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(rng.uniform(0, 0.002))
            if attempts[event.id] < 3 and rng.random() < 0.2:
                failures += 1
                raise RuntimeError("random failure, redelivered by the server")
            done[event.partitionkey].append(event.data)
        finally:
            running -= 1

    async with (
        connect(nats_server, root, keyring, partitions=N) as other,
        pbus.subscribe_partitioned("custom.>", handler, durable="orders", retry=FAST_RETRY) as a,
        other.subscribe_partitioned("custom.>", handler, durable="orders", retry=FAST_RETRY) as b,
    ):
        await publish_rounds(pbus, alice, KEYS, PER_KEY)
        await wait_until(lambda: sum(map(len, done.values())) == len(KEYS) * PER_KEY, 30)
    assert {key: done[key] for key in KEYS} == {key: list(range(PER_KEY)) for key in KEYS}
    assert failures > 10
    assert peak > 1
    stats = [a.stats, b.stats]
    assert sum(s.failed for s in stats) == failures
    assert sum(s.handled for s in stats) == len(KEYS) * PER_KEY
    assert sum(s.dead_lettered + s.rejected for s in stats) == 0
    assert a.partitions == b.partitions == list(range(N))


async def test_events_land_in_the_partition_the_server_chose(pbus: eventwire.Bus) -> None:
    alice = make_identity("alice", pbus.keyring)
    handled: dict[int, set[str]] = defaultdict(set)
    js = pbus.jetstream
    acks = {
        key: await pbus.publish(CustomEvent("custom.p", "p", 1), identity=alice, partition_key=key)
        for key in KEYS
    }
    plain = await pbus.publish(CustomEvent("custom.p", "p", 2), identity=alice)
    used = set()
    for key, ack in acks.items():
        stored = (await js.get_msg(pbus.stream, ack.seq)).subject
        assert stored == stored_subject(pbus.root, "custom.p", key, N)
        used.add(int(stored.split(".")[2]))
    assert used == set(range(N))  # 24 keys spread over all 4 partitions
    assert (await js.get_msg(pbus.stream, plain.seq)).subject == f"{pbus.root}.custom.p"

    def recorder(partition: int) -> Any:
        async def handler(event: Event) -> None:
            handled[partition].add(event.partitionkey or "-")

        return handler

    # One handle per partition, to see which partition's consumer got which key.
    subs = [
        pbus.subscribe_partitioned(
            "custom.p", recorder(p), durable="where", partitions=[p], unkeyed=p == 0
        )
        for p in range(N)
    ]
    for sub in subs:
        await sub.start()
    await wait_until(lambda: sum(map(len, handled.values())) == len(KEYS) + 1)
    for sub in subs:
        await sub.stop()
    for key in KEYS:
        partition = partition_of(key_token(key), N)
        assert key in handled[partition]
    assert "-" in handled[0]  # the unkeyed event went to the unkeyed consumer


@pytest.mark.parametrize("pattern", ["custom.>", "custom.mix", "*.mix", ">"])
async def test_a_plain_subscription_on_a_partitioned_bus_sees_keyed_and_unkeyed_events(
    pbus: eventwire.Bus, pattern: str
) -> None:
    alice = make_identity("alice", pbus.keyring)
    seen: list[tuple[str | None, object]] = []

    async def handler(event: Event) -> None:
        seen.append((event.partitionkey, event.data))

    async with pbus.subscribe(pattern, handler, durable="plain") as sub:
        for i in range(6):
            key = None if i % 3 == 0 else f"k{i}"
            await pbus.publish(CustomEvent("custom.mix", "m", i), identity=alice, partition_key=key)
        await wait_until(lambda: len(seen) == 6)
        await asyncio.sleep(0.1)
    assert sorted(data for _, data in seen) == list(range(6))  # type: ignore[type-var]
    assert sub.stats.rejected == 0


async def test_a_keyed_event_moved_to_another_key_or_layout_is_refused(
    pbus: eventwire.Bus, nats_server: EmbeddedServer
) -> None:
    """Valid signed bytes republished under another key token (so another partition) or
    outside the keyed layout are refused before any handler."""
    alice = make_identity("alice", pbus.keyring)
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event.id)

    ack = await pbus.publish(CustomEvent("custom.f", "f", 1), identity=alice, partition_key="k")
    js = pbus.jetstream
    original = await js.get_msg(pbus.stream, ack.seq)
    data = original.data or b""
    # the signature goes along; a message id of its own, or the stream drops the copies
    signature = {SIGNATURE_HEADER: (original.headers or {})[SIGNATURE_HEADER]}
    other = next(k for k in ("x", "y", "z") if partition_of(key_token(k), N) != 0)
    right = f"{partition_of(key_token('k'), N)}.{key_token('k')}"
    nc = await nats.connect(nats_server.url)
    try:
        raw = nc.jetstream()
        other_key = f"{pbus.root}.keyed.{key_token(other)}.custom.f"
        await raw.publish(other_key, data, headers=signature)
        await raw.publish(f"{pbus.root}.custom.f", data, headers=signature)  # the plain layout
        # Publishing on a stored subject does not pick a partition: the server maps it again.
        posed = await raw.publish(f"{pbus.root}.keyed.{right}.custom.f", data, headers=signature)
    finally:
        await nc.close()
    stored = (await js.get_msg(pbus.stream, posed.seq)).subject
    assert stored.endswith(f".{right}.custom.f")
    assert stored.count(".") == 6
    async with pbus.subscribe("custom.f", handler, durable="forged") as sub:
        await wait_until(lambda: sub.stats.delivered == 3)
        await asyncio.sleep(0.1)
    assert handled == [ack.event_id]  # the original only
    assert (sub.stats.delivered, sub.stats.rejected) == (3, 2)
    assert pbus.security.rejected["subject-mismatch"] == 2


async def test_a_redriven_keyed_event_returns_to_its_partition(pbus: eventwire.Bus) -> None:
    alice = make_identity("alice", pbus.keyring)
    outcomes: list[str] = []

    async def handler(event: Event) -> None:
        outcomes.append(event.id)
        if len(outcomes) == 1:
            raise Unprocessable("not yet")

    ack = await pbus.publish(CustomEvent("custom.r", "r", 1), identity=alice, partition_key="k")
    async with pbus.subscribe_partitioned("custom.r", handler, durable="redrive") as sub:
        await wait_until(lambda: sub.stats.dead_lettered == 1)
        (letter,) = await pbus.dead_letters.list()
        assert letter.subject == stored_subject(pbus.root, "custom.r", "k", N)
        seq = await pbus.dead_letters.redrive(letter.seq)
        await wait_until(lambda: len(outcomes) == 2)
    stored = (await pbus.jetstream.get_msg(pbus.stream, seq)).subject
    assert stored == letter.subject
    assert outcomes == [ack.event_id, ack.event_id]
    assert sub.subscriptions[partition_of(key_token("k"), N)].stats.handled == 1


async def test_drift_is_found_when_the_partition_count_changes(
    nats_server: EmbeddedServer, root: str, keyring: Keyring
) -> None:
    async with connect(nats_server, root, keyring, partitions=4):
        pass
    for other in (8, 0):
        with pytest.raises(StreamConfigError, match="subject_transform"):
            async with connect(nats_server, root, keyring, partitions=other):
                pass
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        (diff,) = await diff_stream(js, events_stream_config(root, partitions=8)) or []
        assert (diff.field, diff.updatable) == ("subject_transform", True)
        assert "partition(8,1)" in str(diff)
        await apply_stream(js, events_stream_config(root, partitions=8))
        assert await diff_stream(js, events_stream_config(root, partitions=8)) == []
    finally:
        await nc.close()
    where = ("--url", nats_server.url, "--root", root)
    code, out = await cli("streams", "diff", *where, "--partitions", "8")
    assert (code, "no drift" in out) == (0, True), out
    code, out = await cli("streams", "diff", *where, "--partitions", "2")
    assert (code, "subject_transform" in out) == (1, True), out
    code, out = await cli("streams", "diff", *where, "--partitions", "-1")
    assert code == 2, out


async def test_partition_options_are_checked(pbus: eventwire.Bus) -> None:
    async def handler(event: Event) -> None: ...

    bus = eventwire.connect("nats://127.0.0.1:1")  # not partitioned; checked before connecting

    with pytest.raises(ConfigError, match="partitioned bus"):
        bus.subscribe_partitioned("custom.>", handler, durable="d")
    with pytest.raises(ConfigError, match="partitioned bus"):
        bus.subscribe("custom.>", handler, durable="d", partition=0)
    for bad in ([N], [-1], ["0"], 3):
        with pytest.raises(ConfigError, match="partitions"):
            pbus.subscribe_partitioned("custom.>", handler, durable="d", partitions=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_in_flight"):
        pbus.subscribe_partitioned("custom.>", handler, durable="d", max_in_flight=4)
    with pytest.raises(ConfigError, match="partition must be"):
        pbus.subscribe("custom.>", handler, durable="d", partition=N)
