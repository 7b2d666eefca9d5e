"""``eventwire tail`` and ``read_events``: stored events verified as a consumer would, read-only."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import nats
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

import eventwire
from eventwire import CustomEvent, Event, InvalidArgument, NotFound, read_events
from eventwire_security import (
    KeyEntry,
    KeyringDocument,
    SealingKey,
    audit_stream_name,
    seen_bucket,
)
from tests.conftest import TENANT, make_identity, wait_until
from tests.sdk.test_cli import cli

if TYPE_CHECKING:
    from pathlib import Path

    from nats.js import JetStreamContext

    from eventwire import EmbeddedServer, Identity


def key_file(tmp_path: Path, identity: Identity) -> str:
    path = tmp_path / f"{identity.principal.agent}.json"
    path.write_text(json.dumps(KeyEntry.from_trusted(identity.trusted()).to_json()))
    return str(path)


def json_lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(text) for text in out.splitlines() if text.startswith("{")]


async def claim_keys(js: JetStreamContext, root: str) -> list[str]:
    kv = await js.key_value(seen_bucket(root))
    try:
        return sorted(await kv.keys())
    except nats.js.errors.NoKeysError:
        return []


async def footprint(bus: eventwire.Bus, durable: str) -> tuple[int, int, int, list[str], int]:
    """What reading could change: the durable consumer's pending, ack-pending and delivered
    counts, the replay claims, the audit records."""
    info = await bus.jetstream.consumer_info(bus.stream, durable)
    audit = await bus.jetstream.stream_info(audit_stream_name(bus.root))
    claims = await claim_keys(bus.jetstream, bus.root)
    pending = (info.num_pending or 0, info.num_ack_pending or 0)
    return *pending, info.delivered.stream_seq or 0, claims, audit.state.messages or 0


async def publish_tampered(url: str, bus: eventwire.Bus, seq: int) -> None:
    """A copy of the event at ``seq`` with its body changed, published with plain nats-py."""
    stored = await bus.jetstream.get_msg(bus.stream, seq)
    tampered = (stored.data or b"").replace(b'"n":2', b'"n":9')
    headers = {**(stored.headers or {}), "Nats-Msg-Id": "tampered-copy"}
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(stored.subject or "", tampered, headers=headers)
    finally:
        await nc.close()


async def test_tail_shows_forgeries_refused_and_consumes_nothing(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    alice = make_identity("alice", bus.keyring)
    mallory = make_identity("mallory")  # a key no keyring trusts
    # a durable consumer whose agent is down: every event waits for it
    watcher = ConsumerConfig(
        durable_name="watcher", ack_policy=AckPolicy.EXPLICIT, filter_subject=f"{root}.custom.x"
    )
    await bus.jetstream.add_consumer(bus.stream, watcher)
    first = await bus.publish(CustomEvent("custom.x", "x.made", {"n": 1}), identity=alice)
    good = await bus.publish(CustomEvent("custom.x", "x.made", {"n": 2}), identity=alice)
    await bus.publish(CustomEvent("custom.x", "x.made", {"n": 3}), identity=mallory)
    await publish_tampered(nats_server.url, bus, good.seq)
    before = await footprint(bus, "watcher")

    code, out = await cli(
        "tail", "custom.>", "--url", nats_server.url, "--root", root, "--tenant", TENANT,
        "--keyring", key_file(tmp_path, alice), "--json",
    )  # fmt: skip

    assert code == 0, out
    rows = json_lines(out)
    assert [row["seq"] for row in rows] == [first.seq, good.seq, good.seq + 1, good.seq + 2]
    assert [row["verified"] for row in rows] == [True, True, False, False]
    assert (rows[1]["source"], rows[1]["kid"]) == (f"{TENANT}/alice", alice.kid)
    assert rows[1]["type"] == "x.made"
    assert (rows[2]["refusal"]["reason"], rows[2]["kid"]) == ("unknown-key", mallory.kid)
    assert rows[2]["claimed"]["source"] == f"{TENANT}/mallory"  # claimed, shown, not trusted
    assert rows[3]["refusal"]["reason"] == "bad-signature"
    assert before[:3] == (4, 0, 0)  # four events wait, none delivered
    assert await footprint(bus, "watcher") == before  # not consumed, claimed or audited
    # a consumer that does take them: handles two, refuses two, claims and audits
    handled: list[str] = []

    async def handle(event: Event) -> None:
        handled.append(event.id)

    async with bus.subscribe("custom.x", handle, durable="checker") as checker:
        await wait_until(lambda: checker.stats.delivered == 4)
    assert (checker.stats.rejected, len(handled)) == (2, 2)
    async with asyncio.timeout(10):  # the audit writer stores refusals in the background
        while (await footprint(bus, "watcher"))[4] == before[4]:  # noqa: ASYNC110 - polls the server
            await asyncio.sleep(0.05)
    assert len((await footprint(bus, "watcher"))[3]) > len(before[3])


async def test_tail_table_names_the_signer_and_the_refusal(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    alice = make_identity("alice", bus.keyring)
    await bus.publish(CustomEvent("custom.t", "t.made", {"n": 1}), identity=alice)
    await bus.publish(CustomEvent("custom.t", "t.made", {"n": 2}), identity=make_identity("eve"))
    code, out = await cli(
        "tail", "--url", nats_server.url, "--root", root, "--tenant", TENANT,
        "--keyring", key_file(tmp_path, alice),
    )  # fmt: skip
    assert code == 0, out
    assert "2 events on >, 1 refused" in out
    assert f"{TENANT}/alice ({alice.kid[:12]})" in out
    assert "REFUSED unknown-key" in out
    assert f"{TENANT}/eve?" in out  # what a refused event claims is marked unverified


async def publish_numbered(
    bus: eventwire.Bus, identity: Identity, subject: str, n: int
) -> list[int]:
    seqs = []
    for index in range(n):
        ack = await bus.publish(CustomEvent(subject, "n", index), identity=identity)
        seqs.append(ack.seq)
    return seqs


async def test_tail_selects_by_pattern_last_seq_and_since(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    alice = make_identity("alice", bus.keyring)
    early = await publish_numbered(bus, alice, "custom.a", 3)
    await publish_numbered(bus, alice, "custom.b", 2)
    boundary = datetime.now(UTC)
    late = await publish_numbered(bus, alice, "custom.a", 2)
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT, "--json")
    keys = ("--keyring", key_file(tmp_path, alice))

    async def seqs(*args: str) -> list[int]:
        code, out = await cli("tail", *args, *where, *keys)
        assert code == 0, out
        rows = json_lines(out)
        assert all(row["verified"] for row in rows), rows
        return [row["seq"] for row in rows]

    assert await seqs("custom.a") == early + late
    assert await seqs("custom.a", "--last", "2") == late
    assert await seqs("custom.a", "--last", "100") == early + late
    assert await seqs("custom.a", "--seq", str(early[2])) == [early[2], *late]
    assert await seqs("custom.a", "--since", boundary.isoformat()) == late
    assert await seqs("custom.a", "--since", "5m") == early + late
    assert await seqs("custom.zzz") == []
    assert await seqs("custom.a", "--seq", str(late[-1] + 10)) == []


async def test_tail_follow_prints_new_events(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    alice = make_identity("alice", bus.keyring)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eventwire.cli import main; main()", "tail", "custom.f",
        "--follow", "--json", "--url", nats_server.url, "--root", root, "--tenant", TENANT,
        "--keyring", key_file(tmp_path, alice),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        ack = await bus.publish(CustomEvent("custom.f", "f", 1), identity=alice)
        async with asyncio.timeout(15):
            first = json.loads(await proc.stdout.readline())
        ack2 = await bus.publish(CustomEvent("custom.f", "f", 2), identity=alice)
        async with asyncio.timeout(15):
            second = json.loads(await proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            await proc.wait()
    assert (first["seq"], first["id"], first["verified"]) == (ack.seq, ack.event_id, True)
    assert (second["seq"], second["id"]) == (ack2.seq, ack2.event_id)
    assert proc.returncode == 130


async def test_read_events_api_refuses_bad_starts_and_missing_streams(
    bus: eventwire.Bus, root: str
) -> None:
    with pytest.raises(InvalidArgument) as both:
        read_events(bus.connection, root=root, seq=1, last=2)
    assert both.value.field == "last"
    with pytest.raises(InvalidArgument) as zero:
        read_events(bus.connection, root=root, last=0)
    assert zero.value.field == "last"
    with pytest.raises(InvalidArgument) as negative:
        read_events(bus.connection, root=root, since=timedelta(seconds=-1))
    assert negative.value.field == "since"
    with pytest.raises(InvalidArgument) as naive:
        read_events(bus.connection, root=root, since=datetime(2026, 1, 1))
    assert naive.value.field == "since"
    with pytest.raises(eventwire.InvalidEvent):
        read_events(bus.connection, root=root, pattern="not..a.pattern")
    with pytest.raises(NotFound):
        async with read_events(bus.connection, root="nosuchroot"):
            pass


async def test_read_events_api_yields_verified_events(bus: eventwire.Bus, root: str) -> None:
    alice = make_identity("alice", bus.keyring)
    acks = await publish_numbered(bus, alice, "custom.api", 3)
    async with read_events(
        bus.connection, tenant=TENANT, root=root, keyring=bus.keyring, pattern="custom.api"
    ) as events:
        found = [item async for item in events]
    assert [item.seq for item in found] == acks
    assert all(item.event is not None and item.event.source == f"{TENANT}/alice" for item in found)


async def test_tail_bad_inputs_are_one_line_errors(nats_server: EmbeddedServer) -> None:
    code, out = await cli("tail", "--url", nats_server.url, "--since", "5 parsecs")
    assert code == 2
    assert "neither a duration" in out
    code, out = await cli("tail", "--url", nats_server.url, "--seq", "1", "--last", "2")
    assert code == 1
    assert out.startswith("error:")
    assert "choose one of since, seq and last" in out
    code, out = await cli("tail", "--url", nats_server.url, "--root", "nosuchroot")
    assert code == 1
    assert "no events stream 'nosuchroot-events'" in out
    assert "Traceback" not in out


async def test_tail_verifies_keyed_events_of_a_partitioned_stream_and_shows_sealing(
    nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    keyring = eventwire.Keyring()
    alice = make_identity("alice", keyring)
    async with eventwire.connect(
        nats_server.url, tenant=TENANT, keyring=keyring, root=root, partitions=4
    ) as partitioned:
        keyed = await partitioned.publish(
            CustomEvent("custom.k", "k", 1), identity=alice, partition_key="order-7"
        )
        sealed = await partitioned.publish(
            CustomEvent("custom.k", "k", "secret"),
            identity=alice,
            seal_to=[SealingKey.generate().public],
        )
    code, out = await cli(
        "tail", "custom.k", "--url", nats_server.url, "--root", root, "--tenant", TENANT,
        "--keyring", key_file(tmp_path, alice),
    )  # fmt: skip
    assert code == 0, out
    assert "2 events on custom.k, 0 refused" in out
    code, out = await cli(
        "tail", "custom.k", "--url", nats_server.url, "--root", root, "--tenant", TENANT,
        "--keyring", key_file(tmp_path, alice), "--json",
    )  # fmt: skip
    rows = json_lines(out)
    assert [(row["seq"], row["verified"]) for row in rows] == [
        (keyed.seq, True),
        (sealed.seq, True),
    ]
    assert rows[0]["wire_subject"].startswith(f"{root}.keyed.")
    assert [row["sealed"] for row in rows] == [False, True]
    assert "secret" not in out  # sealed data is never shown (nor opened)


async def test_follow_with_last_starts_with_the_last_stored(bus: eventwire.Bus, root: str) -> None:
    alice = make_identity("alice", bus.keyring)
    stored = await publish_numbered(bus, alice, "custom.l", 4)
    seen: list[int] = []
    async with read_events(
        bus.connection, tenant=TENANT, root=root, keyring=bus.keyring, pattern="custom.l",
        last=2, follow=True,
    ) as events:  # fmt: skip
        async for item in events:
            seen.append(item.seq)
            if len(seen) == 2:
                new = await publish_numbered(bus, alice, "custom.l", 1)
            if len(seen) == 3:
                break
    assert seen == [*stored[2:], *new]


async def test_a_reader_that_is_not_open_is_a_closed_resource(bus: eventwire.Bus) -> None:
    reader = read_events(bus.connection, root=bus.root)
    with pytest.raises(eventwire.ClosedResource):
        async for _ in reader:
            pass


async def test_tail_and_trace_trust_the_published_keyring_with_admin(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    admin = make_identity("admin")
    alice, bob = make_identity("alice", bus.keyring), make_identity("bob", bus.keyring)
    document = KeyringDocument.create([KeyEntry.from_trusted(alice.trusted())])
    admins = eventwire.Keyring.of(admin)
    await eventwire.publish_keyring(bus.jetstream, root, document.sign(admin), admins=admins)
    by_alice = await bus.publish(CustomEvent("custom.a", "a", 1), identity=alice)
    await bus.publish(CustomEvent("custom.a", "a", 2), identity=bob)  # not in the document
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT)

    code, out = await cli("tail", *where, "--admin", key_file(tmp_path, admin), "--json")
    code_trace, out_trace = await cli(
        "trace", by_alice.event_id, *where, "--admin", key_file(tmp_path, admin), "--json"
    )

    assert code == 0, out
    rows = json_lines(out)
    assert [(row["source"] if row["verified"] else row["refusal"]["reason"]) for row in rows] == [
        f"{TENANT}/alice",
        "unknown-key",
    ]
    assert code_trace == 0, out_trace
    assert json.loads(out_trace)["tree"][0]["source"] == f"{TENANT}/alice"


async def test_tail_shows_a_replayed_copy_as_already_seen(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str, tmp_path: Path
) -> None:
    alice = make_identity("alice", bus.keyring)
    original = await bus.publish(CustomEvent("custom.r", "r", 1), identity=alice)
    stored = await bus.jetstream.get_msg(bus.stream, original.seq)
    headers = {**(stored.headers or {}), "Nats-Msg-Id": "a-fresh-id-for-the-same-event"}
    copy = await bus.jetstream.publish(f"{root}.custom.r", stored.data or b"", headers=headers)
    code, out = await cli(
        "tail", "custom.r", "--url", nats_server.url, "--root", root, "--tenant", TENANT,
        "--keyring", key_file(tmp_path, alice), "--json",
    )  # fmt: skip
    assert code == 0, out
    first, replay = json_lines(out)
    assert (first["seq"], first["verified"]) == (original.seq, True)
    assert (replay["seq"], replay["refusal"]["reason"]) == (copy.seq, "already-seen")
    assert replay["kid"] == alice.kid


async def test_what_a_forgery_claims_reaches_the_terminal_without_control_characters(
    bus: eventwire.Bus, nats_server: EmbeddedServer, root: str
) -> None:
    body = json.dumps(
        {"id": "x\x1b[2J", "source": "acme/\x1b]0;pwned\x07mallory", "type": "t\r\nfake line"}
    ).encode()
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().publish(f"{root}.custom.evil", body, headers={"Ew-Signature": "x"})
    finally:
        await nc.close()
    where = ("--url", nats_server.url, "--root", root, "--tenant", TENANT)
    for args in (("--json",), (), ("--follow",)):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "from eventwire.cli import main; main()", "tail", *where, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            out = (
                await proc.stdout.readline() if args == ("--follow",) else await proc.stdout.read()
            )
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            await proc.wait()
        assert b"\x1b" not in out
        assert b"\x07" not in out
        assert b"\r" not in out
        assert b"\nfake line" not in out  # no line of its own
        assert b"malformed" in out
