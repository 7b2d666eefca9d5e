"""Signatures of a fetched batch checked half on the caller's thread, half on the codec's
worker thread (``Codec.open_batch``): the same verdicts, in order, as on the event loop; a
bug on one message stays that message's; a closed codec checks on the caller's thread."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

import eventwire
from eventwire import CustomEvent, Event, Identity, Keyring
from eventwire._codec import THREAD_BATCH, Codec, Received, Rejection
from eventwire_security import DEFAULT_MAX_BYTES, PublicKey
from tests.conftest import make_identity, wait_until

SIZE = 2 * THREAD_BATCH + 8  # a batch large enough for the worker thread


@pytest.fixture
def codec(keyring: Keyring) -> Codec:
    return Codec(tenant="acme", root="ew", keyring=keyring, max_bytes=DEFAULT_MAX_BYTES)


@pytest.fixture
def checked_on(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each signature is checked on."""
    names: list[str] = []
    verify = PublicKey.verify

    def recording(key: PublicKey, message: bytes, signature: bytes) -> None:
        names.append(threading.current_thread().name)
        verify(key, message, signature)

    monkeypatch.setattr(PublicKey, "verify", recording)
    return names


def _items(codec: Codec, alice: Identity, stranger: Identity) -> list[Received]:
    signed = [codec.sign(CustomEvent("custom.x", "t", {"n": i}), alice) for i in range(SIZE)]
    items: list[Received] = [(s.body, s.headers, s.wire_subject, None) for s in signed]
    items[3] = (b"garbage", None, "ew.custom.x", None)
    items[7] = (signed[7].body, signed[7].headers, "ew.custom.nope", None)
    tampered = signed[11].body.replace(b'"n":11', b'"n":99')
    items[11] = (tampered, signed[11].headers, signed[11].wire_subject, None)
    forged = codec.sign(CustomEvent("custom.x", "t", {"n": 15}), stranger)
    items[15] = (forged.body, forged.headers, forged.wire_subject, None)
    return items


REFUSED = {3: "malformed", 7: "subject-mismatch", 11: "bad-signature", 15: "unknown-key"}


async def test_a_large_batch_is_checked_on_two_threads_with_the_same_verdicts_in_order(
    codec: Codec, keyring: Keyring, checked_on: list[str]
) -> None:
    alice, stranger = make_identity("alice", keyring, "acme"), Identity.generate("acme", "eve")
    items = _items(codec, alice, stranger)
    try:
        results = await codec.open_batch(items)
    finally:
        await codec.close()
    names = list(checked_on)
    inline = Codec(tenant="acme", root="ew", keyring=keyring, max_bytes=DEFAULT_MAX_BYTES)
    expected = inline.open_many(items)
    assert len(results) == SIZE
    for index, (result, same) in enumerate(zip(results, expected, strict=True)):
        if index in REFUSED:
            assert isinstance(result, Rejection), result
            assert result.reason == REFUSED[index]
            assert result == same
        else:
            assert isinstance(result, Event)
            assert isinstance(same, Event)
            assert (result.id, result.data) == (same.id, {"n": index})
    assert codec.stats.verified == SIZE - len(REFUSED)
    assert codec.stats.rejected == dict.fromkeys(REFUSED.values(), 1)
    # the caller's thread checks the first half, the worker the second (garbage and the
    # stranger's event never reach the check)
    assert len(names) == SIZE - 2
    caller, worker = threading.current_thread().name, "eventwire-verify_0"
    assert sorted(set(names)) == sorted({caller, worker})
    assert names.count(worker) == SIZE - SIZE // 2  # garbage and the stranger's: first half


async def test_a_small_batch_and_a_closed_codec_check_on_the_callers_thread(
    codec: Codec, keyring: Keyring, checked_on: list[str]
) -> None:
    alice = make_identity("alice", keyring, "acme")
    one = codec.sign(CustomEvent("custom.x", "t", {}), alice)
    small = [(one.body, one.headers, one.wire_subject, None)] * (THREAD_BATCH - 1)
    assert all(isinstance(r, Event) for r in await codec.open_batch(small))
    await codec.close()
    await codec.close()  # safe twice
    assert all(isinstance(r, Event) for r in await codec.open_batch(small * 3))
    assert set(checked_on) == {threading.current_thread().name}
    assert codec._worker is None


async def test_a_bug_on_one_message_on_the_worker_is_that_messages_only(
    codec: Codec, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = make_identity("alice", keyring, "acme")
    signed = [codec.sign(CustomEvent("custom.x", "t", {"n": i}), alice) for i in range(SIZE)]
    poison = signed[5].body
    verify = PublicKey.verify

    def buggy(key: PublicKey, message: bytes, signature: bytes) -> None:
        if message.endswith(poison):
            raise RuntimeError("a bug")
        verify(key, message, signature)

    monkeypatch.setattr(PublicKey, "verify", buggy)
    try:
        results = await codec.open_batch(
            [(s.body, s.headers, s.wire_subject, None) for s in signed]
        )
    finally:
        await codec.close()
    assert isinstance(results[5], RuntimeError)
    assert all(isinstance(r, Event) for i, r in enumerate(results) if i != 5)
    assert codec.stats.verified == SIZE - 1
    assert not codec.stats.rejected


async def test_a_consumer_dead_letters_only_the_event_its_verifying_thread_failed_on(
    bus: eventwire.Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = make_identity("writer", bus.keyring)
    acks = await bus.publish_many(
        [CustomEvent("custom.batch", "t", {"n": i}) for i in range(SIZE)], identity=writer
    )
    poison = acks[9].event_id
    verify = PublicKey.verify

    def buggy(key: PublicKey, message: bytes, signature: bytes) -> None:
        if poison.encode() in message:
            raise RuntimeError("a bug")
        verify(key, message, signature)

    monkeypatch.setattr(PublicKey, "verify", buggy)
    handled: list[str] = []

    async def handler(event: Event) -> None:
        handled.append(event.id)

    async with bus.subscribe("custom.batch", handler, durable="batched", batch=SIZE) as sub:
        await wait_until(lambda: len(handled) == SIZE - 1 and sub.stats.dead_lettered == 1)
        await asyncio.sleep(0.1)
    assert sorted(handled) == sorted(a.event_id for a in acks if a.event_id != poison)
    assert sub.stats.errors == 1
    [letter] = await bus.dead_letters.list()
    assert (letter.reason, letter.error) == ("consumer-error", "RuntimeError: a bug")
    assert json.loads(letter.data)["id"] == poison  # the signed bytes, kept to be redriven


async def test_a_large_chunk_is_signed_on_two_threads_and_each_signature_verifies(
    codec: Codec, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = make_identity("alice", keyring, "acme")
    names: list[str] = []
    sign = Identity.sign

    def recording(identity: Identity, message: bytes) -> bytes:
        names.append(threading.current_thread().name)
        return sign(identity, message)

    monkeypatch.setattr(Identity, "sign", recording)
    items = [CustomEvent("custom.x", "t", {"n": i}) for i in range(SIZE)]
    try:
        signed = await codec.sign_batch(items, alice)
    finally:
        await codec.close()
    assert sorted(set(names)) == sorted({threading.current_thread().name, "eventwire-verify_0"})
    assert names.count("eventwire-verify_0") == SIZE - SIZE // 2
    opened = codec.open_many([(s.body, s.headers, s.wire_subject, None) for s in signed])
    assert [e.data for e in opened if isinstance(e, Event)] == [{"n": i} for i in range(SIZE)]


async def test_a_bad_item_in_a_chunk_raises_before_anything_is_signed(
    codec: Codec, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = make_identity("alice", keyring, "acme")
    signed: list[bytes] = []
    sign = Identity.sign

    def recording(identity: Identity, message: bytes) -> bytes:
        signed.append(message)
        return sign(identity, message)

    monkeypatch.setattr(Identity, "sign", recording)
    items = [CustomEvent("custom.x", "t", {"n": i}) for i in range(SIZE)]
    data: dict[str, object] = {"n": 0}
    items[SIZE - 1] = CustomEvent("custom.x", "t", data)
    data["n"] = float("nan")  # changed after the item checked it: refused when signed
    with pytest.raises(eventwire.InvalidEvent):
        await codec.sign_batch(items, alice)
    assert signed == []
