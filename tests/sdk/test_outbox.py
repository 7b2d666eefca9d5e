"""The outbox (``connect(outbox=path)``): publishing while the server is down queues the
signed event on disk; once the server is back it is stored exactly once. Real servers,
killed with SIGKILL and restarted on the same port and store (``own_server``)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import sys
from typing import TYPE_CHECKING

import pytest
from nats.js.api import DiscardPolicy

import eventwire
from eventwire import (
    ConfigError,
    Event,
    InvalidArgument,
    KnowledgeShared,
    OutboxBusy,
    OutboxFull,
    OutboxUnwritable,
    PublishFailed,
    PublishUnreachable,
    Rejection,
    ServerUnavailable,
)
from eventwire_security import ReplayWindow
from tests.conftest import TENANT, make_identity, wait_until

if TYPE_CHECKING:
    from pathlib import Path

    from eventwire import EmbeddedServer, Identity, Keyring, PublishAck


def item(n: int) -> KnowledgeShared:
    return KnowledgeShared(topic="ml", content=f"fact {n}")


async def publish_fast(bus: eventwire.Bus, alice: Identity, n: int) -> PublishAck:
    """Publish, giving up on an unreachable server quickly (2 attempts of 0.3 s)."""
    return await bus.publish(item(n), identity=alice, timeout=0.3, attempts=2)


async def stored(bus: eventwire.Bus) -> list[tuple[str, str]]:
    """(event id, Nats-Msg-Id) of every message in the events stream, in stream order."""
    info = await bus.jetstream.stream_info(bus.stream)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await bus.jetstream.get_msg(bus.stream, seq)
        assert msg.data is not None
        assert msg.headers is not None
        found.append((json.loads(msg.data)["id"], msg.headers["Nats-Msg-Id"]))
    return found


async def queue_while_down(
    server: EmbeddedServer, bus: eventwire.Bus, alice: Identity, count: int
) -> list[str]:
    """Kill the server, publish ``count`` events (each queued), return their ids."""
    await server.kill()
    ids = []
    for n in range(count):
        ack = await publish_fast(bus, alice, n)
        assert ack.queued
        assert (ack.seq, ack.duplicate, ack.stream) == (0, False, bus.stream)
        ids.append(ack.event_id)
    return ids


async def test_without_an_outbox_an_unreachable_server_is_a_clear_error(
    own_server: EmbeddedServer, root: str
) -> None:
    async with eventwire.connect(own_server.url, tenant=TENANT, root=root) as bus:
        alice = make_identity("alice", bus.keyring)
        assert bus.outbox is None
        await own_server.kill()
        with pytest.raises(PublishUnreachable) as caught:
            await publish_fast(bus, alice, 0)
    error = caught.value
    assert isinstance(error, PublishFailed)
    assert isinstance(error, ServerUnavailable)
    assert error.subject == "knowledge.ml"
    assert error.event_id in str(error)
    assert "knowledge.ml" in str(error)
    assert "after 2 attempt(s)" in str(error)
    assert "nothing is queued without an outbox" in str(error)
    assert error.__cause__ is not None


async def test_queued_while_down_then_stored_exactly_once_in_order(
    own_server: EmbeddedServer, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    alice = make_identity("alice", keyring)
    seen: list[str] = []

    async def handler(event: Event) -> None:
        seen.append(event.id)

    async with (
        eventwire.connect(
            own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=outbox
        ) as bus,
        bus.subscribe("knowledge.>", handler, durable="reader", replay_check=True),
    ):
        first = await bus.publish(item(-1), identity=alice)
        assert not first.queued
        ids = await queue_while_down(own_server, bus, alice, 3)
        assert bus.outbox is not None
        assert bus.outbox.pending == 3
        assert len(outbox.read_bytes().splitlines()) == 3  # on disk before publish returned
        await own_server.start()
        late = await bus.publish(item(99), identity=alice)  # queued behind them, or after
        await wait_until(lambda: bus.outbox is not None and bus.outbox.pending == 0, timeout=30)
        expected = [first.event_id, *ids, late.event_id]
        await wait_until(lambda: set(expected) <= set(seen), timeout=30)
        in_stream = await stored(bus)
    assert [event_id for event_id, _ in in_stream] == expected  # each once, in order
    # at least once, in order: the first event, delivered as the server went away, may be
    # handled again (its ack can be lost with the connection; the subscription is not
    # idempotent)
    assert list(dict.fromkeys(seen)) == expected
    assert outbox.read_bytes() == b""
    assert bus.outbox.flushed == (4 if late.queued else 3)


async def test_a_record_sent_twice_is_a_duplicate_not_a_second_copy(
    own_server: EmbeddedServer, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    """A crash after the stream stored a record but before it left the file: the next run
    sends it again with the same Nats-Msg-Id, and the stream drops it as a duplicate."""
    outbox = tmp_path / "outbox"
    alice = make_identity("alice", keyring)
    async with eventwire.connect(
        own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=outbox
    ) as bus:
        ids = await queue_while_down(own_server, bus, alice, 2)
        kept = outbox.read_bytes()
        await own_server.start()
        await wait_until(lambda: bus.outbox is not None and bus.outbox.pending == 0, timeout=30)
        before = await stored(bus)
    outbox.write_bytes(kept)  # as if the process died before removing them
    async with eventwire.connect(
        own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=outbox
    ) as again:
        assert again.outbox is not None
        await wait_until(lambda: again.outbox is not None and again.outbox.pending == 0, timeout=30)
        assert again.outbox.flushed == 2
        after = await stored(again)
    assert [event_id for event_id, _ in before] == ids
    assert after == before  # same ids, same message ids, no new sequence


async def test_a_new_bus_flushes_what_a_closed_one_left(
    own_server: EmbeddedServer, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    """600 records: more than one pipelined chunk of the flusher."""
    outbox = tmp_path / "outbox"
    alice = make_identity("alice", keyring)
    async with eventwire.connect(
        own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=outbox
    ) as bus:
        ids = await queue_while_down(own_server, bus, alice, 600)
    assert len(outbox.read_bytes().splitlines()) == 600  # closed: the records stay on disk
    await own_server.start()
    async with eventwire.connect(
        own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=outbox
    ) as later:
        await wait_until(lambda: later.outbox is not None and later.outbox.pending == 0, timeout=30)
        assert [event_id for event_id, _ in await stored(later)] == ids


async def test_corrupt_records_are_moved_aside_and_the_rest_is_flushed(
    own_server: EmbeddedServer,
    root: str,
    keyring: Keyring,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox = tmp_path / "outbox"
    alice = make_identity("alice", keyring)
    async with eventwire.connect(
        own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=outbox
    ) as bus:
        ids = await queue_while_down(own_server, bus, alice, 3)
    good, edited, last = outbox.read_bytes().splitlines()
    at = edited.index(b'"body":"') + 20  # one character of the base64 body, changed
    flipped = edited[:at] + (b"A" if edited[at : at + 1] != b"A" else b"B") + edited[at + 1 :]
    torn = last[: len(last) // 2]  # a crash in the middle of a write: no newline
    outbox.write_bytes(good + b"\nnot a record\n" + flipped + b"\n" + last + b"\n" + torn)
    await own_server.start()
    with caplog.at_level(logging.WARNING, logger="eventwire.outbox"):
        async with eventwire.connect(
            own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=outbox
        ) as later:
            assert later.outbox is not None
            assert later.outbox.corrupt == 3
            await wait_until(lambda: later.outbox is not None and later.outbox.pending == 0)
            in_stream = [event_id for event_id, _ in await stored(later)]
    assert in_stream == [ids[0], ids[2]]
    aside = (tmp_path / "outbox.corrupt").read_bytes().splitlines()
    assert aside == [b"not a record", flipped, torn]
    assert "unreadable" in caplog.text


async def test_a_full_outbox_is_a_typed_error(
    own_server: EmbeddedServer, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    alice = make_identity("alice", keyring)
    async with eventwire.connect(
        own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=outbox,
        outbox_max_bytes=4096,
    ) as bus:  # fmt: skip
        await own_server.kill()
        for queued in range(20):
            try:
                await publish_fast(bus, alice, queued)
            except OutboxFull as full:
                error = full
                break
        else:
            pytest.fail("the outbox never filled up")
        assert bus.outbox is not None
        assert bus.outbox.pending == queued > 0
        size = outbox.stat().st_size
    assert isinstance(error, PublishUnreachable)
    assert error.subject == "knowledge.ml"
    assert error.event_id in str(error)
    assert error.limit == 4096 < error.size
    assert size <= 4096
    assert "the server is unreachable and the outbox is full" in str(error)


async def test_an_error_the_server_states_is_raised_not_queued(
    nats_server: EmbeddedServer, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    alice = make_identity("alice", keyring)
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=tmp_path / "o"
    ) as bus:
        config = (await bus.jetstream.stream_info(bus.stream)).config
        config.max_msgs, config.discard = 1, DiscardPolicy.NEW
        await bus.jetstream.update_stream(config)
        await bus.publish(item(0), identity=alice)
        with pytest.raises(PublishFailed) as caught:
            await bus.publish(item(1), identity=alice)
        assert not isinstance(caught.value, PublishUnreachable)
        assert caught.value.code is not None
        assert bus.outbox is not None
        assert bus.outbox.pending == 0


async def test_bad_outbox_settings_are_typed_errors(
    nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument) as directory:
        eventwire.connect(nats_server.url, root=root, outbox=tmp_path)
    assert directory.value.field == "outbox"
    with pytest.raises(InvalidArgument) as missing:
        eventwire.connect(nats_server.url, root=root, outbox=tmp_path / "no" / "outbox")
    assert missing.value.field == "outbox"
    for size in (0, 10, True):
        with pytest.raises(InvalidArgument) as small:
            eventwire.connect(
                nats_server.url, root=root, outbox=tmp_path / "o", outbox_max_bytes=size
            )
        assert small.value.field == "outbox_max_bytes"
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidArgument, match="outbox"):
        async with eventwire.connect(nats_server.url, root=root, outbox=tmp_path / "link"):
            pass


async def test_one_bus_at_a_time_holds_an_outbox(
    nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    async with eventwire.connect(nats_server.url, root=root, outbox=outbox):
        with pytest.raises(OutboxBusy, match="held by another bus") as busy:
            async with eventwire.connect(nats_server.url, root=root, outbox=outbox):
                pass
        assert isinstance(busy.value, ConfigError)
    async with eventwire.connect(nats_server.url, root=root, outbox=outbox) as after:
        assert after.outbox is not None
        assert after.outbox.pending == 0


WORKER = """
import asyncio, sys
import eventwire
from eventwire import Identity, KnowledgeShared

async def main(url: str, root: str, outbox: str) -> None:
    alice = Identity.generate("acme", "alice")
    async with eventwire.connect(url, tenant="acme", root=root, outbox=outbox) as bus:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the server is killed meanwhile
        for n in range(3):
            item = KnowledgeShared(topic="ml", content=f"fact {n}")
            ack = await bus.publish(item, identity=alice, timeout=0.3, attempts=2)
            print(ack.event_id, ack.queued, flush=True)
        print("done", flush=True)
        await asyncio.sleep(3600)  # killed here: the bus is never closed

asyncio.run(main(*sys.argv[1:]))
"""


async def test_events_queued_by_a_killed_process_are_flushed_by_the_next(
    own_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    """A crash right after ``publish`` returned ``queued`` loses nothing: the record was
    fsync-ed, and the next bus on the same outbox stores it."""
    outbox = tmp_path / "outbox"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER, own_server.url, root, str(outbox),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            assert await proc.stdout.readline() == b"ready\n"
            await own_server.kill()
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            lines = [(await proc.stdout.readline()).decode().split() for _ in range(4)]
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert lines[3] == ["done"]
    assert all(queued == "True" for _, queued in lines[:3])
    ids = [event_id for event_id, _ in lines[:3]]
    await own_server.start()
    async with eventwire.connect(own_server.url, tenant=TENANT, root=root, outbox=outbox) as bus:
        await wait_until(lambda: bus.outbox is not None and bus.outbox.pending == 0, timeout=30)
        assert [event_id for event_id, _ in await stored(bus)] == ids


async def test_an_event_queued_longer_than_the_replay_window_is_refused_as_too_old(
    own_server: EmbeddedServer,
    root: str,
    keyring: Keyring,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The documented limit: the receiver checks ``iat`` against the stream's store time, so
    an event that waited in the outbox beyond the replay window is stored but refused (and
    the flusher warns)."""
    alice = make_identity("alice", keyring)
    refused: list[Rejection] = []
    handled: list[Event] = []

    async def handler(event: Event) -> None:
        handled.append(event)

    async with (
        eventwire.connect(
            own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=tmp_path / "o",
            replay_window=ReplayWindow(max_age=1.0, skew=0.0), on_reject=refused.append,
        ) as bus,
        bus.subscribe("knowledge.>", handler, durable="reader"),
    ):  # fmt: skip
        await queue_while_down(own_server, bus, alice, 1)
        await asyncio.sleep(2.5)  # older than the window (iat is whole seconds) when stored
        with caplog.at_level(logging.WARNING, logger="eventwire.outbox"):
            await own_server.start()
            await wait_until(lambda: bus.outbox is not None and bus.outbox.pending == 0)
        await wait_until(lambda: len(refused) == 1)
    assert refused[0].reason == "too-old"
    assert handled == []
    assert "will refuse them as too-old" in caplog.text


async def test_publish_many_while_down_queues_every_event_in_order(
    own_server: EmbeddedServer, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    alice = make_identity("alice", keyring)
    async with eventwire.connect(
        own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=tmp_path / "o"
    ) as bus:
        await own_server.kill()
        first = await bus.publish_many([item(n) for n in range(5)], identity=alice, timeout=0.3)
        behind = await bus.publish_many([item(n) for n in range(5, 8)], identity=alice)
        acks = first + behind
        assert all(ack.queued for ack in acks)
        assert bus.outbox is not None
        assert bus.outbox.pending == 8
        await own_server.start()
        await wait_until(lambda: bus.outbox is not None and bus.outbox.pending == 0, timeout=30)
        assert [event_id for event_id, _ in await stored(bus)] == [ack.event_id for ack in acks]


async def test_an_outbox_that_cannot_be_written_is_a_typed_error(
    own_server: EmbeddedServer, root: str, keyring: Keyring, tmp_path: Path
) -> None:
    alice = make_identity("alice", keyring)
    directory = tmp_path / "gone"
    directory.mkdir()
    async with eventwire.connect(
        own_server.url, tenant=TENANT, keyring=keyring, root=root, outbox=directory / "o"
    ) as bus:
        shutil.rmtree(directory)  # the disk under the outbox went away
        await own_server.kill()
        with pytest.raises(OutboxUnwritable) as caught:
            await publish_fast(bus, alice, 0)
        assert bus.outbox is not None
        assert bus.outbox.pending == 0
    error = caught.value
    assert isinstance(error, PublishUnreachable)
    assert error.event_id in str(error)
    assert "the outbox cannot be written" in str(error)
    assert isinstance(error.__cause__, FileNotFoundError)
