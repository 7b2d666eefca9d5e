"""The audit stream on a real server: chaining, resuming, concurrent writers, and tampering
written straight into the stream with raw nats-py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from typing import TYPE_CHECKING

import nats
import nats.js.errors
import pytest

from eventwire import ConfigError, Identity, Keyring, StreamConfigError
from eventwire._audit_log import (
    AuditCorrupted,
    AuditLog,
    AuditLogError,
    AuditWriteFailed,
    InvalidAuditRecord,
    audit_stream_config,
    audit_stream_name,
    audit_subject,
)
from eventwire._publisher import AckedPublisher
from eventwire_security._audit import (
    AuditBroken,
    AuditChain,
    AuditGap,
    AuditRecord,
    AuditRecordInvalid,
    AuditTampered,
    sign_record,
)
from tests.sdk.test_keys_cli import CLI, cli

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext

    from eventwire import EmbeddedServer


@pytest.fixture
async def nc(nats_server: EmbeddedServer) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def js(nc: NatsClient) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
async def publisher(nc: NatsClient) -> AsyncIterator[AckedPublisher]:
    acked = AckedPublisher(nc)
    await acked.open()
    yield acked
    await acked.close()


async def refuse(log: AuditLog, n: int) -> AuditRecord:
    return await log.record("acme/gate", "refused", f"acme.orders.{n}", "bad-signature", {"n": n})


async def test_records_chain_and_verify(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    first, second = await refuse(log, 1), await refuse(log, 2)
    assert (first.seq, second.seq, second.prev_hash) == (1, 2, first.hash)
    assert log.head == second
    assert await log.verify() == 2
    assert [record async for record in log.tail()] == [first, second]
    raw = await js.get_msg(audit_stream_name(root), 1)
    assert raw.data == first.to_json()
    assert raw.subject == audit_subject(root)


async def test_empty_log_verifies_and_tails_nothing(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    assert log.head is None
    assert await log.verify() == 0
    assert [record async for record in log.tail()] == []


async def test_a_second_log_resumes_the_chain(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    one = await AuditLog.open(js, publisher, root)
    await refuse(one, 1)
    last = await refuse(one, 2)
    two = await AuditLog.open(js, publisher, root)
    assert two.head == last
    third = await refuse(two, 3)
    assert (third.seq, third.prev_hash) == (3, last.hash)
    fourth = await refuse(one, 4)  # `one` is behind: refused by the server, re-reads, retries
    assert (fourth.seq, fourth.prev_hash) == (4, third.hash)
    assert await (await AuditLog.open(js, None, root, create=False)).verify() == 4


async def test_the_server_refuses_deleting_purging_and_lifting_the_flags(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    await refuse(log, 1)
    with pytest.raises(nats.js.errors.APIError, match="delete not permitted"):
        await js.delete_msg(log.stream, 1)
    with pytest.raises(nats.js.errors.APIError, match="purge not permitted"):
        await js.purge_stream(log.stream)
    config = (await js.stream_info(log.stream)).config
    with pytest.raises(nats.js.errors.APIError, match="can not cancel deny"):
        await js.update_stream(dataclasses.replace(config, deny_delete=False))
    assert await log.verify() == 1


async def test_a_stream_without_the_deny_flags_is_refused(js: JetStreamContext, root: str) -> None:
    lax = dataclasses.replace(audit_stream_config(root), deny_delete=False, deny_purge=False)
    await js.add_stream(lax)
    with pytest.raises(StreamConfigError, match="must deny deletes and purges"):
        await AuditLog.open(js, None, root, create=False)
    with pytest.raises(StreamConfigError):
        await AuditLog.open(js, None, root)


async def forge(js: JetStreamContext, root: str, data: bytes) -> int:
    """Write straight into the stream, as an attacker with publish rights could."""
    return int((await js.publish(audit_subject(root), data)).seq)


async def corrupted(log: AuditLog) -> AuditCorrupted:
    with pytest.raises(AuditCorrupted) as caught:
        await log.verify()
    return caught.value


async def test_an_edited_record_is_detected(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    await refuse(log, 1)
    last = await refuse(log, 2)
    seq = await forge(js, root, dataclasses.replace(last, seq=3, reason="all fine").to_json())
    error = await corrupted(log)
    assert isinstance(error.error, AuditTampered)
    assert (error.stream_seq, error.seq, error.reason) == (seq, 3, "audit-tampered")
    with pytest.raises(AuditCorrupted, match="audit-tampered"):
        await AuditLog.open(js, publisher, root)  # nothing is chained to a forged head


async def test_a_gap_is_detected(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    last = await refuse(log, 1)
    chain = AuditChain.resume(last)
    chain.append("acme/x", "refused", "s", "r")
    skipped = chain.append("acme/x", "refused", "s", "r")  # seq 3, chained, but 2 is absent
    await forge(js, root, skipped.to_json())
    error = await corrupted(log)
    assert isinstance(error.error, AuditGap)
    assert (error.error.expected, error.error.found, error.stream_seq) == (2, 3, 2)


async def test_a_broken_link_is_detected(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    await refuse(log, 1)
    rechained = AuditChain().append("acme/x", "refused", "s", "r")  # seq 1 again, own hash ok
    relinked = dataclasses.replace(rechained, seq=2)
    relinked = dataclasses.replace(relinked, hash=relinked.compute_hash())
    await forge(js, root, relinked.to_json())
    error = await corrupted(log)
    assert isinstance(error.error, AuditBroken)
    assert error.stream_seq == 2


@pytest.mark.parametrize("garbage", [b'{"seq": 2, "seq": 2}', b"not.a.record", b"\xff\xfe"])
async def test_bytes_that_are_no_record_are_refused_at_their_stream_seq(
    js: JetStreamContext, publisher: AckedPublisher, root: str, garbage: bytes
) -> None:
    log = await AuditLog.open(js, publisher, root)
    await refuse(log, 1)
    seq = await forge(js, root, garbage)
    error = await corrupted(log)
    assert isinstance(error.error, AuditRecordInvalid)
    assert error.stream_seq == seq == 2
    with pytest.raises(AuditCorrupted):
        _ = [record async for record in log.tail()]


async def test_concurrent_writers_never_fork_the_chain(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    one = await AuditLog.open(js, publisher, root)
    two = await AuditLog.open(js, publisher, root)
    records = await asyncio.gather(*(refuse(one if n % 2 else two, n) for n in range(50)))
    assert sorted(record.seq for record in records) == list(range(1, 51))
    assert await one.verify() == 50
    details = sorted([r.details["n"] async for r in one.tail()])
    assert details == list(range(50))


async def test_signed_records_verify_against_the_writers(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    writer = Identity.generate("acme", "auditor")
    writers = Keyring.of(writer)
    log = await AuditLog.open(js, publisher, root, writer, writers=writers)
    first = await refuse(log, 1)
    raw = await js.get_msg(log.stream, 1)
    assert raw.data == sign_record(first, writer)
    # Well chained but unsigned: the chain alone accepts it, the writers' keyring does not.
    await forge(js, root, AuditChain.resume(first).append("acme/x", "ok", "s", "r").to_json())
    assert await (await AuditLog.open(js, None, root)).verify() == 2
    error = await corrupted(log)
    assert (error.reason, error.stream_seq) == ("audit-invalid", 2)


async def test_a_record_signed_by_a_stranger_is_refused(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    writer, stranger = Identity.generate("acme", "auditor"), Identity.generate("acme", "mallory")
    log = await AuditLog.open(js, publisher, root, writer, writers=Keyring.of(writer))
    first = await refuse(log, 1)
    forged = AuditChain.resume(first).append("acme/mallory", "ok", "s", "r")
    await forge(js, root, sign_record(forged, stranger))
    error = await corrupted(log)
    assert (error.reason, error.stream_seq) == ("unknown-key", 2)


async def test_tail_follows_new_records(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    await refuse(log, 0)
    seen: list[AuditRecord] = []
    arrived = asyncio.Event()

    async def follow() -> None:
        async with contextlib.aclosing(log.tail(follow=True)) as records:
            async for record in records:
                seen.append(record)
                if len(seen) == 3:
                    arrived.set()

    task = asyncio.create_task(follow())
    try:
        await refuse(log, 1)
        await refuse(log, 2)
        async with asyncio.timeout(10):
            await arrived.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [record.details["n"] for record in seen] == [0, 1, 2]


async def test_bad_input_and_read_only_use_are_typed_errors(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    with pytest.raises(AuditLogError, match="no audit stream"):
        await AuditLog.open(js, None, root, create=False)
    log = await AuditLog.open(js, publisher, root)
    with pytest.raises(InvalidAuditRecord, match="action"):
        await log.record("acme/x", "", "s", "r")
    with pytest.raises(InvalidAuditRecord):
        await log.record("acme/x", "a", "s", "r", {"bad": {1, 2}})
    reader = await AuditLog.open(js, None, root)
    with pytest.raises(AuditWriteFailed, match="read-only"):
        await reader.record("acme/x", "a", "s", "r")
    writer = Identity.generate("acme", "auditor")
    with pytest.raises(ConfigError, match="writer"):
        await AuditLog.open(js, publisher, root, writers=Keyring.of(writer))
    with pytest.raises(ConfigError, match="writer"):
        await AuditLog.open(js, publisher, root, writer, writers=Keyring())
    assert await log.verify() == 0


async def test_audit_verify_and_tail_commands(
    js: JetStreamContext, publisher: AckedPublisher, root: str, nats_server: EmbeddedServer
) -> None:
    where = ("--url", nats_server.url, "--root", root)
    code, out = await cli("audit", "verify", *where)
    assert (code, "no audit stream" in out) == (1, True), out
    log = await AuditLog.open(js, publisher, root)
    await refuse(log, 1)
    await log.record("acme/admin", "key.revoked", "acme/alice", "compromised", {"kid": "k1"})
    await log.record("acme/x", "refused", "acme.y", "[red]boom\x1b[2J")  # hostile text
    code, out = await cli("audit", "verify", *where)
    assert (code, out.strip()) == (0, "3 records, chain intact")
    code, out = await cli("audit", "tail", *where)
    assert code == 0, out
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[1].split()[2:] == ["acme/admin", "key.revoked", "acme/alice", "compromised"]
    assert lines[1].split()[0] == "2"
    assert "[red]boom\\x1b[2J" in lines[2]
    assert "\x1b" not in out

    last = log.head
    assert last is not None
    await forge(js, root, dataclasses.replace(last, seq=4, reason="nothing to see").to_json())
    code, out = await cli("audit", "verify", *where)
    assert code == 1
    assert "corrupted at stream seq 4: audit-tampered" in out


async def test_audit_tail_follow_prints_new_records(
    js: JetStreamContext, publisher: AckedPublisher, root: str, nats_server: EmbeddedServer
) -> None:
    log = await AuditLog.open(js, publisher, root)
    await refuse(log, 1)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLI, "audit", "tail", "--follow", "--url", nats_server.url,
        "--root", root, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(20):
            assert b"acme.orders.1" in await proc.stdout.readline()
            await refuse(log, 2)
            assert b"acme.orders.2" in await proc.stdout.readline()
    finally:
        proc.terminate()
        await proc.wait()
