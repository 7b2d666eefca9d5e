"""The three publish -> consume pipelines of ``eventwire bench``, each on its own stream.

(a) raw nats-py JetStream, (b) the same with hand-written PyNaCl sign/verify of every
payload, (c) eventwire ``publish_many`` -> verified handler -> ack. Each returns the seconds
from the first publish to the last message consumed (acked, or handled for eventwire).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from time import perf_counter
from typing import TYPE_CHECKING

import nacl.signing
import nats.errors
from nats.js.api import StorageType, StreamConfig

import eventwire
from eventwire import DEFAULT_REPLAY_WINDOW, CustomEvent, Identity, Keyring

if TYPE_CHECKING:
    from collections.abc import Callable

    from nats.js import JetStreamContext

    from eventwire import Event

    Transform = Callable[[bytes], bytes]

TENANT = "bench"
_FETCH_TIMEOUT = 1.0


def filler(size: int) -> str:
    """The string ``s`` such that the compact JSON ``{"p":s}`` is ``size`` bytes."""
    return "x" * max(0, size - len('{"p":""}'))


def raw_payload(size: int) -> bytes:
    return json.dumps({"p": filler(size)}, separators=(",", ":")).encode()


def time_limit(count: int) -> float:
    """A generous bound so a lost message fails the run instead of hanging it."""
    return 60.0 + count / 100


async def raw_case(js: JetStreamContext, size: int, count: int, *, batch: int) -> float:
    """(a) Plain JetStream: ``publish_async`` pipelined, a pull consumer fetching and acking."""
    return await _pipeline(js, raw_payload(size), count, batch=batch, seal=None, unseal=None)


async def hand_signed_case(js: JetStreamContext, size: int, count: int, *, batch: int) -> float:
    """(b) As (a), signing every payload with PyNaCl on publish and verifying it on consume."""
    signing_key = nacl.signing.SigningKey.generate()
    verify_key = signing_key.verify_key

    def seal(payload: bytes) -> bytes:
        return signing_key.sign(payload)

    def unseal(data: bytes) -> bytes:
        return verify_key.verify(data)

    return await _pipeline(js, raw_payload(size), count, batch=batch, seal=seal, unseal=unseal)


async def _pipeline(
    js: JetStreamContext,
    payload: bytes,
    count: int,
    *,
    batch: int,
    seal: Transform | None,
    unseal: Transform | None,
) -> float:
    name = f"bench-{secrets.token_hex(5)}"
    subject = f"{name}.x"
    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.FILE))
    try:
        psub = await js.pull_subscribe(subject, durable="bench", stream=name)
        try:
            started = perf_counter()
            async with asyncio.timeout(time_limit(count)), asyncio.TaskGroup() as group:
                group.create_task(_publish(js, subject, payload, count, seal))
                consumed = group.create_task(_consume(psub, count, batch, unseal))
            return consumed.result() - started
        finally:
            await psub.unsubscribe()
    finally:
        await js.delete_stream(name)


async def _publish(
    js: JetStreamContext, subject: str, payload: bytes, count: int, seal: Transform | None
) -> None:
    """Publish ``count`` messages; ``js``'s pending limit is the window of unacked ones."""
    futures = []
    for _ in range(count):
        data = payload if seal is None else seal(payload)
        futures.append(await js.publish_async(subject, data))
    await asyncio.gather(*futures)


async def _consume(
    psub: JetStreamContext.PullSubscription, count: int, batch: int, unseal: Transform | None
) -> float:
    """Fetch, (verify,) ack until ``count`` messages; return the time of the last ack."""
    received = 0
    while received < count:
        try:
            msgs = await psub.fetch(batch, timeout=_FETCH_TIMEOUT)
        except nats.errors.TimeoutError:
            continue
        for msg in msgs:
            if unseal is not None:
                unseal(msg.data)
            await msg.ack()
        received += len(msgs)
    return perf_counter()


async def eventwire_case(
    url: str,
    js: JetStreamContext,
    size: int,
    count: int,
    *,
    window: int,
    batch: int,
    replay: bool = False,
) -> float:
    """(c) ``bus.publish_many`` (signs, pipelines) -> subscription verifying -> handler.

    Signed and verified as in (b); with ``replay`` also replay protection (the default of
    ``connect``), which (b) does not have: a KV claim per first delivery.
    """
    identity = Identity.generate(TENANT, "producer")
    text = filler(size)
    items = [CustomEvent(subject="custom.bench.x", type="bench", data={"p": text})] * count
    counter = _Counter(count)
    root = f"bench{secrets.token_hex(5)}"
    async with eventwire.connect(
        url,
        tenant=TENANT,
        root=root,
        keyring=Keyring.of(identity),
        name="eventwire-bench",
        replay_window=DEFAULT_REPLAY_WINDOW if replay else None,
    ) as bus:
        stream = bus.stream
        try:
            async with bus.subscribe("custom.bench.>", counter, durable="bench", batch=batch):
                started = perf_counter()
                async with asyncio.timeout(time_limit(count)), asyncio.TaskGroup() as group:
                    group.create_task(bus.publish_many(items, identity=identity, window=window))
                    group.create_task(counter.done.wait())
        finally:
            await js.delete_stream(stream)
    return counter.finished_at - started


class _Counter:
    """The handler: counts verified events and notes when the last one arrived."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.handled = 0
        self.finished_at = 0.0
        self.done = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.handled += 1
        if self.handled == self.count:
            self.finished_at = perf_counter()
            self.done.set()
