"""The two-level event cache on a real server: L1 in process, L2 in a KV bucket (verified
again on every read, so tampering is refused), invalidation by new events and checkpoints."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from prometheus_client import REGISTRY

import eventwire
from eventwire import (
    CustomEvent,
    EventCache,
    Identity,
    InvalidArgument,
    Keyring,
    Projection,
)
from tests.conftest import make_identity, wait_until
from tests.sdk.test_projections import FEED, Balances, expected, fill


async def _say(bus: eventwire.Bus, who: Identity, subject: str, text: str) -> str:
    return (await bus.publish(CustomEvent(subject, "said", {"text": text}), identity=who)).event_id


def _text(event: eventwire.Event | None) -> str:
    assert event is not None
    assert isinstance(event.data, dict)
    text = event.data["text"]
    assert isinstance(text, str)
    return text


async def test_latest_from_the_stream_then_l1_then_l2(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    await _say(bus, alice, "custom.room.a", "hello")
    async with EventCache(bus, "custom.>", capacity=8) as cache:
        assert _text(await cache.latest("custom.room.a")) == "hello"
        assert _text(await cache.latest("custom.room.a")) == "hello"
        assert await cache.latest("custom.room.empty") is None
        assert (cache.stats.source, cache.stats.l1, cache.stats.misses) == (1, 1, 1)
        labels = {"bucket": f"{bus.root}-cache", "level": "l1"}
        assert REGISTRY.get_sample_value("eventwire_cache_lookups_total", labels) == 1.0
    async with EventCache(bus, "custom.>", capacity=8) as other:  # another process, say
        assert _text(await other.latest("custom.room.a")) == "hello"
        assert (other.stats.l2, other.stats.source) == (1, 0)
        assert other.stats.hit_ratio == 1.0


async def test_a_new_event_evicts_its_subject_and_is_written_through(bus: eventwire.Bus) -> None:
    alice = make_identity("alice", bus.keyring)
    await _say(bus, alice, "custom.room.a", "one")
    async with EventCache(bus, "custom.>") as cache:
        assert _text(await cache.latest("custom.room.a")) == "one"
        event_id = await _say(bus, alice, "custom.room.a", "two")
        await wait_until(lambda: cache.stats.invalidated == 1 and cache.stats.written >= 4)
        assert _text(await cache.latest("custom.room.a")) == "two"
        assert cache.stats.l2 == 1  # written through: not read from the stream again
        assert _text(await cache.get(alice.principal.source, event_id)) == "two"
        assert _text(await cache.get(alice.principal.source, event_id)) == "two"
        assert await cache.get(alice.principal.source, "never-seen") is None
        assert (cache.stats.l1, cache.stats.misses) == (1, 1)


@pytest.mark.parametrize("tamper", ["bytes", "moved", "garbage"])
async def test_a_tampered_l2_entry_is_refused(bus: eventwire.Bus, tamper: str) -> None:
    alice = make_identity("alice", bus.keyring)
    await _say(bus, alice, "custom.room.a", "genuine")
    await _say(bus, alice, "custom.room.b", "elsewhere")
    async with EventCache(bus, "custom.>", bucket=f"{bus.root}-cache") as cache:
        assert _text(await cache.latest("custom.room.a")) == "genuine"
        assert _text(await cache.latest("custom.room.b")) == "elsewhere"
    kv = await bus.jetstream.key_value(f"{bus.root}-cache")
    keys = [key for key in await kv.keys() if key.startswith("subject.")]
    values = {key: (await kv.get(key)).value or b"" for key in keys}
    a_key = next(key for key, value in values.items() if b"room.a" in value)
    b_value = next(value for key, value in values.items() if key != a_key)
    if tamper == "bytes":
        record = json.loads(values[a_key])
        record["d"] = base64.b64encode(
            base64.b64decode(record["d"]).replace(b"genuine", b"forged!")
        ).decode()
        await kv.put(a_key, json.dumps(record).encode())
    elif tamper == "moved":  # a genuine event under another subject's key
        await kv.put(a_key, b_value)
    else:
        await kv.put(a_key, b"{not json")
    async with EventCache(bus, "custom.>") as cache:
        assert _text(await cache.latest("custom.room.a")) == "genuine"  # from the stream
        assert (cache.stats.refused, cache.stats.l2, cache.stats.source) == (1, 0, 1)
    if tamper == "bytes":
        assert bus.security.rejected == {"bad-signature": 1}


async def test_read_models_are_cached_until_the_next_checkpoint(
    bus: eventwire.Bus, keyring: Keyring
) -> None:
    teller = make_identity("teller", keyring)
    last = await fill(bus, teller, 4)
    async with (
        Projection(bus, Balances, name="balances", identity=teller, feed=FEED) as running,
        EventCache(bus, "custom.>") as cache,
    ):
        async with asyncio.timeout(10):
            await running.wait_for(last)
        signer = teller.principal.source
        model = await cache.read_model("balances", Balances, signer=signer)
        assert model is not None
        assert model.balances == expected(4)
        assert await cache.read_model("balances", Balances, signer=signer) is model
        assert await cache.read_model("nobody", Balances, signer=signer) is None
        last = await fill(bus, teller, 2, start=4)
        async with asyncio.timeout(10):
            await running.wait_for(last)
        await wait_until(lambda: cache.stats.invalidated >= 1)
        fresh = await cache.read_model("balances", Balances, signer=signer)
        assert fresh is not None
        assert fresh.balances == expected(6)
        # a checkpoint is used only if the given signer wrote it (L1 too is per signer)
        assert await cache.read_model("balances", Balances, signer="acme/somebody-else") is None


def test_the_l1_lru_keeps_the_most_recently_used() -> None:
    from eventwire._cache_lru import LRU  # noqa: TID251 - the unit under test

    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)  # b is the least recently used
    assert (lru.get("b"), lru.get("a"), lru.get("c"), lru.evicted, len(lru)) == (None, 1, 3, 1, 2)


async def test_bad_input_is_refused(bus: eventwire.Bus) -> None:
    with pytest.raises(InvalidArgument) as caught:
        EventCache(bus, "custom.>", capacity=0)
    assert caught.value.field == "capacity"
    with pytest.raises(InvalidArgument) as caught:
        EventCache(bus, "custom.>", ttl=-1)
    assert caught.value.field == "ttl"
    with pytest.raises(eventwire.InvalidEvent) as bad:
        EventCache(bus, "no such family.>")
    assert bad.value.field == "pattern"
    async with EventCache(bus, "custom.>") as cache:
        with pytest.raises(InvalidArgument):
            await cache.get("acme/alice", "")
        with pytest.raises(eventwire.InvalidEvent):
            await cache.latest("not a subject")
    async with EventCache(bus, "custom.room.*") as narrow:
        with pytest.raises(InvalidArgument) as outside:
            await narrow.latest("custom.other.a")  # never invalidated: refused
        assert outside.value.field == "subject"
