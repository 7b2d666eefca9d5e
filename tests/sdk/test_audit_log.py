"""The audit stream on a real server: chaining, resuming, concurrent writers; hostile
writers (garbage, copies, strangers' records appended with raw nats-py) that never stop a
writer or a reader; and edits and removals of valid records, still found."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections import Counter
from typing import TYPE_CHECKING

import nats
import nats.js.errors
import pytest

from eventwire import ConfigError, Identity, Keyring, StreamConfigError
from eventwire._audit_log import (
    MAX_REPORTED,
    AuditCorrupted,
    AuditFinding,
    AuditLog,
    AuditLogError,
    AuditReport,
    AuditWriteFailed,
    FindingKind,
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


def clean(report: AuditReport) -> int:
    """The number of records of a report without any finding."""
    assert (report.findings, report.rejected, report.broken) == ((), 0, 0), report.findings
    assert report.clean
    assert report.intact
    report.check()
    return report.records


async def test_records_chain_and_verify(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    first, second = await refuse(log, 1), await refuse(log, 2)
    assert (first.seq, second.seq, second.prev_hash) == (1, 2, first.hash)
    assert log.head == second
    assert clean(await log.verify()) == 2
    assert [record async for record in log.tail()] == [first, second]
    raw = await js.get_msg(audit_stream_name(root), 1)
    assert raw.data == first.to_json()
    assert raw.subject == audit_subject(root)


async def test_empty_log_verifies_and_tails_nothing(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    assert log.head is None
    assert clean(await log.verify()) == 0
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
    assert (third.seq, third.prev_seq, third.prev_hash) == (3, 2, last.hash)
    fourth = await refuse(one, 4)  # `one` is behind: refused by the server, re-reads, retries
    assert (fourth.seq, fourth.prev_hash) == (4, third.hash)
    assert clean(await (await AuditLog.open(js, None, root, create=False)).verify()) == 4


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
    assert clean(await log.verify()) == 1


async def test_a_stream_without_the_deny_flags_is_refused(js: JetStreamContext, root: str) -> None:
    lax = dataclasses.replace(audit_stream_config(root), deny_delete=False, deny_purge=False)
    await js.add_stream(lax)
    with pytest.raises(StreamConfigError, match="must deny deletes and purges"):
        await AuditLog.open(js, None, root, create=False)
    with pytest.raises(StreamConfigError):
        await AuditLog.open(js, None, root)


async def forge(js: JetStreamContext, root: str, data: bytes) -> int:
    """Write straight into the stream, as any agent allowed to append can."""
    return int((await js.publish(audit_subject(root), data)).seq)


async def stored(js: JetStreamContext, root: str, stream_seq: int) -> bytes:
    return (await js.get_msg(audit_stream_name(root), stream_seq)).data or b""


async def lax_log(js: JetStreamContext, root: str, messages: list[bytes], drop: int = 0) -> None:
    """A stream holding ``messages`` (minus stream seq ``drop``, deleted) that then denies
    deletes and purges: what an edit or a removal of stored records looks like."""
    lax = dataclasses.replace(audit_stream_config(root), deny_delete=False, deny_purge=False)
    await js.add_stream(lax)
    for data in messages:
        await forge(js, root, data)
    if drop:
        await js.delete_msg(audit_stream_name(root), drop)
    await js.update_stream(audit_stream_config(root))


def findings(report: AuditReport) -> list[tuple[int, FindingKind, str]]:
    return [(f.stream_seq, f.kind, f.reason) for f in report.findings]


# --- hostile writers: a bad message is a finding, never a reason to stop ---


@pytest.mark.parametrize(
    "garbage", [b"garbage", b'{"seq": 2, "seq": 2}', b"not.a.record", b"\xff\xfe", b""]
)
async def test_garbage_is_skipped_reported_and_audited(
    js: JetStreamContext,
    publisher: AckedPublisher,
    root: str,
    garbage: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = await refuse(await AuditLog.open(js, publisher, root), 1)
    assert await forge(js, root, garbage) == 2

    log = await AuditLog.open(js, publisher, root)  # the next honest writer: opens, reports

    assert log.stats.rejected == Counter({"audit-invalid": 1})
    assert log.stats.reported == 1
    assert "bad message at stream seq 2 skipped (audit-invalid)" in caplog.text
    finding = log.head
    assert finding is not None
    assert (finding.seq, finding.prev_seq, finding.prev_hash) == (3, 1, first.hash)
    assert (finding.action, finding.subject, finding.reason) == (
        "audit.rejected", log.stream, "audit-invalid",
    )  # fmt: skip
    assert finding.details["stream_seq"] == 2
    after = await refuse(log, 2)
    assert (after.seq, after.prev_seq) == (4, 3)

    report = await log.verify()
    assert (report.records, report.rejected, report.broken) == (3, 1, 0)
    assert findings(report) == [(2, FindingKind.REJECTED, "audit-invalid")]
    assert report.intact
    assert not report.clean
    report.check()  # nothing broken: no error
    items = [item async for item in log.tail(findings=True)]
    assert [type(item) for item in items] == [AuditRecord, AuditFinding, AuditRecord, AuditRecord]
    assert [r async for r in log.tail()] == [first, finding, after]
    again = await AuditLog.open(js, publisher, root)  # already reported: nothing more to say
    assert (again.head, again.stats.reported) == (after, 0)


async def test_a_copied_record_is_a_replay_wherever_it_lands(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    log = await AuditLog.open(js, publisher, root)
    first, second = await refuse(log, 1), await refuse(log, 2)
    await forge(js, root, await stored(js, root, 1))  # an old record, byte for byte
    await forge(js, root, await stored(js, root, 2))  # the head itself, again

    reopened = await AuditLog.open(js, publisher, root)

    assert reopened.stats.rejected == Counter({"audit-replayed": 2})
    reported = [r async for r in reopened.tail()][2:]  # one record for each copy
    assert [(r.seq, r.prev_seq, r.action) for r in reported] == [
        (5, 2, "audit.rejected"), (6, 5, "audit.rejected"),
    ]  # fmt: skip
    assert (reported[0].prev_hash, reported[0].details["stream_seq"]) == (second.hash, 3)
    report = await reopened.verify()
    assert findings(report) == [
        (3, FindingKind.REJECTED, "audit-replayed"),
        (4, FindingKind.REJECTED, "audit-replayed"),
    ]
    assert "a record of seq 1 stored at position 3" in report.findings[0].detail
    assert (report.records, report.intact) == (4, True)
    assert [r.seq async for r in reopened.tail()] == [first.seq, second.seq, 5, 6]


async def test_a_copied_signed_record_is_a_replay_too(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    writer = Identity.generate("acme", "auditor")
    log = await AuditLog.open(js, publisher, root, writer, writers=Keyring.of(writer))
    await refuse(log, 1)
    await forge(js, root, await stored(js, root, 1))  # validly signed, by a known writer

    reopened = await AuditLog.open(js, publisher, root, writer, writers=Keyring.of(writer))

    assert reopened.stats.rejected == Counter({"audit-replayed": 1})
    report = await reopened.verify()
    assert findings(report) == [(2, FindingKind.REJECTED, "audit-replayed")]
    assert (report.records, report.intact) == (2, True)


async def test_a_record_of_an_unknown_writer_does_not_count(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    writer, stranger = Identity.generate("acme", "auditor"), Identity.generate("acme", "mallory")
    writers = Keyring.of(writer)
    log = await AuditLog.open(js, publisher, root, writer, writers=writers)
    first = await refuse(log, 1)
    # Well chained, at the right position, validly signed: by a key the writers do not know.
    forged = AuditChain.resume(first).append("acme/auditor", "ok", "s", "all is well")
    await forge(js, root, sign_record(forged, stranger))

    reopened = await AuditLog.open(js, publisher, root, writer, writers=writers)

    assert reopened.stats.rejected == Counter({"unknown-key": 1})
    finding = reopened.head
    assert finding is not None
    assert (finding.seq, finding.prev_seq, finding.prev_hash) == (3, 1, first.hash)
    third = await refuse(reopened, 3)
    assert (third.seq, third.prev_seq, third.prev_hash) == (4, 3, finding.hash)
    report = await reopened.verify()
    assert findings(report) == [(2, FindingKind.REJECTED, "unknown-key")]
    assert (report.records, report.intact) == (3, True)
    # Read chain-only, the stranger's record counts, and the writers' record after it (which
    # skipped it) is a fork there: read a signed log with its writers.
    chain_only = await (await AuditLog.open(js, None, root)).verify()
    assert findings(chain_only) == [(3, FindingKind.BROKEN, "audit-broken")]


async def test_an_unsigned_record_does_not_count_where_writers_sign(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    writer = Identity.generate("acme", "auditor")
    writers = Keyring.of(writer)
    log = await AuditLog.open(js, publisher, root, writer, writers=writers)
    first = await refuse(log, 1)
    assert await stored(js, root, 1) == sign_record(first, writer)
    await forge(js, root, AuditChain.resume(first).append("acme/x", "ok", "s", "r").to_json())

    reopened = await AuditLog.open(js, publisher, root, writer, writers=writers)

    assert reopened.stats.rejected == Counter({"audit-invalid": 1})
    report = await reopened.verify()
    assert findings(report) == [(2, FindingKind.REJECTED, "audit-invalid")]
    assert "unsigned record where a signed one is required" in report.findings[0].detail


async def test_a_flood_is_reported_in_bounded_records(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    first = await refuse(await AuditLog.open(js, publisher, root), 1)
    for n in range(MAX_REPORTED + 8):
        await forge(js, root, b"junk %d" % n)

    log = await AuditLog.open(js, publisher, root)

    assert log.stats.rejected == Counter({"audit-invalid": MAX_REPORTED + 8})
    assert log.stats.reported == MAX_REPORTED + 1
    summary = log.head
    assert summary is not None
    assert (summary.reason, summary.details) == (
        "audit-many", {"first_seq": MAX_REPORTED + 2, "last_seq": MAX_REPORTED + 9, "count": 8}
    )  # fmt: skip
    report = await log.verify()
    assert (report.rejected, report.records, report.intact) == (MAX_REPORTED + 8, 34, True)
    assert report.findings[0].stream_seq == 2
    assert report.head == summary
    assert first.seq == 1


async def test_open_reads_at_most_max_scan_bad_messages_and_the_first_append_reads_on(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    first = await refuse(await AuditLog.open(js, publisher, root), 1)
    for _ in range(5):
        await forge(js, root, b"junk")

    log = await AuditLog.open(js, publisher, root, max_scan=3)

    assert (log.head, log.stats.unresolved) == (None, True)
    assert log.stats.rejected == Counter({"audit-invalid": 3})  # 6, 5, 4: read; 3, 2: not yet
    record = await refuse(log, 2)  # reads on, reports the five, then appends
    assert log.stats.rejected == Counter({"audit-invalid": 5})
    assert (log.stats.unresolved, log.stats.reported) == (False, 5)
    reported = [r async for r in log.tail()][1:6]
    assert sorted(r.details["stream_seq"] for r in reported) == [2, 3, 4, 5, 6]
    assert (reported[0].seq, reported[0].prev_seq, reported[0].prev_hash) == (7, 1, first.hash)
    assert (record.seq, record.prev_seq) == (12, 11)
    report = await log.verify()
    assert (report.records, report.rejected, report.intact) == (7, 5, True)


async def test_report_findings_reads_on_and_reports(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    await refuse(await AuditLog.open(js, publisher, root), 1)
    for _ in range(5):
        await forge(js, root, b"junk")
    log = await AuditLog.open(js, publisher, root, max_scan=3)

    assert await log.report_findings() == 5
    assert await log.report_findings() == 0
    assert log.head is not None
    assert (log.head.seq, log.head.action, log.stats.unresolved) == (11, "audit.rejected", False)
    with pytest.raises(AuditWriteFailed, match="read-only"):
        await (await AuditLog.open(js, None, root)).report_findings()


# --- the honest chain: an edit or a removal among valid records is still found ---


def honest(count: int) -> list[AuditRecord]:
    chain = AuditChain()
    return [chain.append("acme/gate", "refused", f"s.{n}", "r", {"n": n}) for n in range(count)]


async def test_a_removed_record_is_a_broken_chain(
    js: JetStreamContext, publisher: AckedPublisher, root: str, nats_server: EmbeddedServer
) -> None:
    records = honest(3)
    await lax_log(js, root, [r.to_json() for r in records], drop=2)

    log = await AuditLog.open(js, publisher, root, create=False)  # still opens

    assert log.head == records[2]
    report = await log.verify()
    assert findings(report) == [(3, FindingKind.BROKEN, "audit-gap")]
    error = report.findings[0].error
    assert isinstance(error, AuditGap)
    assert (error.expected, error.found) == (2, 3)
    assert report.findings[0].record == records[2]
    assert not report.intact
    with pytest.raises(AuditCorrupted) as caught:
        report.check()
    assert (caught.value.stream_seq, caught.value.reason, caught.value.seq) == (3, "audit-gap", 3)
    code, out = await cli("audit", "verify", "--url", nats_server.url, "--root", root)
    assert code == 3, out
    assert "2 records, chain BROKEN (1 broken links)" in out


async def test_an_edited_record_is_found_and_breaks_the_chain(
    js: JetStreamContext, root: str
) -> None:
    records = honest(3)
    edited = dataclasses.replace(records[1], reason="all fine")  # its hash no longer matches
    await lax_log(js, root, [records[0].to_json(), edited.to_json(), records[2].to_json()])

    report = await (await AuditLog.open(js, None, root, create=False)).verify()

    assert findings(report) == [
        (2, FindingKind.REJECTED, "audit-tampered"),
        (3, FindingKind.BROKEN, "audit-gap"),  # 3 follows 2, which is no valid record now
    ]
    assert not report.intact


async def test_an_edit_with_a_new_hash_breaks_the_next_link(
    js: JetStreamContext, root: str
) -> None:
    records = honest(3)
    edited = dataclasses.replace(records[1], reason="all fine")
    rehashed = dataclasses.replace(edited, hash=edited.compute_hash())
    await lax_log(js, root, [records[0].to_json(), rehashed.to_json(), records[2].to_json()])

    report = await (await AuditLog.open(js, None, root, create=False)).verify()

    assert findings(report) == [(3, FindingKind.BROKEN, "audit-broken")]
    assert isinstance(report.findings[0].error, AuditBroken)


async def test_concurrent_writers_never_fork_the_chain(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    one = await AuditLog.open(js, publisher, root)
    two = await AuditLog.open(js, publisher, root)
    records = await asyncio.gather(*(refuse(one if n % 2 else two, n) for n in range(50)))
    assert sorted(record.seq for record in records) == list(range(1, 51))
    assert clean(await one.verify()) == 50
    details = sorted([r.details["n"] async for r in one.tail()])
    assert details == list(range(50))


async def test_concurrent_writers_and_a_hostile_one(
    js: JetStreamContext, publisher: AckedPublisher, root: str
) -> None:
    one = await AuditLog.open(js, publisher, root)
    two = await AuditLog.open(js, publisher, root)

    async def hostile() -> None:
        for n in range(20):
            await forge(js, root, b"junk %d" % n)

    writes = [refuse(one if n % 2 else two, n) for n in range(30)]
    _, records = await asyncio.gather(hostile(), asyncio.gather(*writes))
    report = await one.verify()
    assert report.intact
    assert report.rejected == 20
    stored_hashes = {r.hash async for r in one.tail()}
    assert {record.hash for record in records} <= stored_hashes


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
    with pytest.raises(ConfigError, match="max_scan"):
        await AuditLog.open(js, publisher, root, max_scan=0)
    assert clean(await log.verify()) == 0


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
    edit = dataclasses.replace(last, seq=4, prev_seq=3, reason="nothing to see")
    await forge(js, root, edit.to_json())  # appended, not edited in place: its hash is wrong
    code, out = await cli("audit", "verify", *where)
    assert code == 2, out
    assert out.splitlines()[0].split()[:4] == ["4", "BAD", "rejected", "audit-tampered"]
    assert out.splitlines()[-1] == "3 records, 1 bad messages skipped, chain intact"
    code, out = await cli("audit", "tail", *where)
    assert code == 0, out
    assert out.splitlines()[3].split()[:4] == ["4", "BAD", "rejected", "audit-tampered"]


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
